//! Listing a dead-letter topic: a listing returns records in (partition, offset) order, at most `limit`, with a
//! [`Cursor`] (per-partition start offsets) where the next page starts. It reads no more than it
//! needs: a partition stops at `limit + 1` records, and once the partitions before one hold more
//! than `limit` records, that one is not read.
//!

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use anyhow::Context as _;
use rdkafka::ClientConfig;
use serde::{Deserialize, Serialize};

use super::decode::{DeadLetter, decode};
use super::reader::Reader;

/// Most records one [`list`] call returns (a larger `limit` is lowered to it).
pub const MAX_LIST_LIMIT: usize = 1000;

/// One page of a listing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[schema(as = DeadLetterPage)]
pub struct Page {
    /// The dead letters, in (partition, offset) order.
    pub records: Vec<DeadLetter>,
    /// Where the next page starts; `None` when this page holds every dead letter there was
    /// (as of the call) from the requested start. Text: `partition:offset` pairs joined by
    /// commas, e.g. `0:12,1:7`.
    #[schema(value_type = Option<String>)]
    pub next: Option<Cursor>,
}

/// Per-partition start offsets of a read. A partition it does not name starts at the
/// beginning (its low watermark); an offset below the low watermark (deleted by retention)
/// starts there too.
///
/// Its text form, used in JSON and meant for query strings, is `partition:offset` pairs joined
/// by commas in partition order, e.g. `0:12,1:7`; the empty string is the beginning.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cursor {
    /// Start offset per partition.
    pub offsets: BTreeMap<i32, i64>,
}

impl fmt::Display for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (p, o)) in self.offsets.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{p}:{o}")?;
        }
        Ok(())
    }
}

impl FromStr for Cursor {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> anyhow::Result<Self> {
        let mut offsets = BTreeMap::new();
        for pair in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (p, o) = pair
                .split_once(':')
                .with_context(|| format!("cursor {s:?}: {pair:?} is not partition:offset"))?;
            let p: i32 = p
                .trim()
                .parse()
                .with_context(|| format!("cursor {s:?}: bad partition in {pair:?}"))?;
            let o: i64 = o
                .trim()
                .parse()
                .with_context(|| format!("cursor {s:?}: bad offset in {pair:?}"))?;
            anyhow::ensure!(p >= 0 && o >= 0, "cursor {s:?}: {pair:?} is negative");
            anyhow::ensure!(
                offsets.insert(p, o).is_none(),
                "cursor {s:?}: partition {p} appears twice"
            );
        }
        Ok(Self { offsets })
    }
}

impl Serialize for Cursor {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Cursor {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse()
            .map_err(|e| serde::de::Error::custom(format!("{e:#}")))
    }
}

/// List dead letters of `dlq_topic` from `from` (default: the beginning of every partition),
/// at most `limit` records (1 to [`MAX_LIST_LIMIT`]), in (partition, offset) order. Reads with a
/// group-less consumer up to the end of each partition as of the call (see the module notes on
/// how the end is found).
pub async fn list(
    client_config: ClientConfig,
    dlq_topic: &str,
    from: Option<&Cursor>,
    limit: usize,
) -> anyhow::Result<Page> {
    let limit = limit.clamp(1, MAX_LIST_LIMIT);
    let mut reader = Reader::connect(client_config, dlq_topic)
        .await
        .with_context(|| format!("listing dead letters of topic {dlq_topic}"))?;
    let starts: BTreeMap<i32, i64> = reader
        .marks
        .iter()
        .map(|(&p, m)| {
            let want = from
                .and_then(|c| c.offsets.get(&p).copied())
                .unwrap_or(m.low);
            (p, want.max(m.low))
        })
        .collect();
    let plan = starts.iter().map(|(&p, &s)| (p, (s, None))).collect();
    let read = read_page(&mut reader, plan, limit).await;
    let positions: BTreeMap<i32, i64> = starts
        .keys()
        .filter_map(|&p| reader.position(p).map(|o| (p, o)))
        .collect();
    reader.close().await;
    let got = read.with_context(|| format!("listing dead letters of topic {dlq_topic}"))?;

    let mut records: Vec<DeadLetter> = got.into_values().flatten().collect();
    if records.len() <= limit {
        return Ok(Page {
            records,
            next: None,
        });
    }
    records.truncate(limit);
    let (last_p, last_o) = records
        .last()
        .map(|r| (r.partition, r.offset))
        .context("a full page has a last record")?;
    // Partitions before the last record's were read to their end (see `read_page`), so the
    // next page starts where the reader stopped in them; the last record's partition continues
    // after it; later ones start where this page started.
    let offsets = starts
        .iter()
        .map(|(&p, &s)| {
            let o = if p < last_p {
                positions.get(&p).copied().unwrap_or(s)
            } else if p == last_p {
                last_o + 1
            } else {
                s
            };
            (p, o)
        })
        .collect();
    Ok(Page {
        records,
        next: Some(Cursor { offsets }),
    })
}

/// Read what a page of `limit` needs: per partition, records in offset order, every partition
/// whose records can be on the page read to its end or to `limit + 1` records.
async fn read_page(
    reader: &mut Reader,
    plan: BTreeMap<i32, (i64, Option<i64>)>,
    limit: usize,
) -> anyhow::Result<BTreeMap<i32, Vec<DeadLetter>>> {
    reader.start(plan)?;
    let mut got: BTreeMap<i32, Vec<DeadLetter>> = BTreeMap::new();
    while let Some(r) = reader.next().await? {
        let p = r.partition;
        let n = {
            let v = got.entry(p).or_default();
            v.push(decode(&r));
            v.len()
        };
        if n > limit {
            reader.finish(p);
        }
        // Counts only grow: once the partitions up to `q` hold more than `limit` records, no
        // record of a later partition can be on the page.
        let mut sum = 0;
        let mut cut = None;
        for (&q, v) in &got {
            sum += v.len();
            if sum > limit {
                cut = Some(q);
                break;
            }
        }
        if let Some(q) = cut {
            let later: Vec<i32> = reader.active().filter(|&x| x > q).collect();
            for x in later {
                reader.finish(x);
            }
        }
    }
    Ok(got)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_text_form() {
        let c: Cursor = " 0:12, 1:7 ,".parse().unwrap();
        assert_eq!(c.offsets, BTreeMap::from([(0, 12), (1, 7)]));
        assert_eq!(c.to_string(), "0:12,1:7");
        assert_eq!(serde_json::to_string(&c).unwrap(), r#""0:12,1:7""#);
        let back: Cursor = serde_json::from_str(r#""0:12,1:7""#).unwrap();
        assert_eq!(back, c);
        assert_eq!("".parse::<Cursor>().unwrap(), Cursor::default());
        for bad in ["0", "a:1", "0:x", "0:-1", "0:1,0:2"] {
            assert!(bad.parse::<Cursor>().is_err(), "{bad}");
        }
    }
}
