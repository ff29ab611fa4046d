//! The records of a ledger topic: one Kafka record per batch and source partition.
//!
//! A batch's entries share their source topic, partition and component version, so a record
//! holds those once and then, per entry, the event id, the outcome, the time and the source
//! offset. Writing one record per batch instead of one per entry is what keeps the Kafka
//! ledger's cost per record near the file ledger's: the producer, the broker and a restore
//! each handle a few records per thousand entries.
//!
//! The value is a tag byte, then postcard:
//! - [`BATCH_TAG`]: a [`Batch`];
//! - [`FORMAT_VERSION`]: one [`LedgerEntry`] keyed by its event id, as earlier versions of
//!   kasm wrote them (read, never written).
//!
//! The key is unique per write (`<topic>/<partition>/<first>-<last>/<random>`): compaction
//! never removes a batch record, so a record rewritten for the same offsets (a batch run
//! again) cannot hide one that holds entries the rewrite lacks. What bounds the topic is its
//! retention (`retention.ms` = the handler's ledger window, `cleanup.policy=compact,delete`).

use anyhow::{Context as _, bail};
use serde::{Deserialize, Serialize};

use crate::ledger::{FORMAT_VERSION, LedgerEntry, LedgerOutcome};

/// The tag byte of a [`Batch`] record.
pub const BATCH_TAG: u8 = 2;
/// A record's value stays under this many bytes (the broker's default limit is 1 MB); a
/// larger batch is split into several records.
pub(super) const MAX_RECORD_BYTES: usize = 256 * 1024;

/// The entries of one batch of one source partition, run by one component version.
#[derive(Debug, Serialize, Deserialize)]
pub struct Batch<'a> {
    /// The source topic.
    pub topic: &'a str,
    /// The source partition (and the ledger partition).
    pub partition: i32,
    /// The component version that ran the batch.
    pub component_sha256: &'a str,
    /// The entries, in the order they were recorded.
    #[serde(borrow)]
    pub items: Vec<Item<'a>>,
}

/// One entry of a [`Batch`].
#[derive(Debug, Serialize, Deserialize)]
pub struct Item<'a> {
    /// The event id.
    pub key: &'a str,
    /// How the event ended.
    pub outcome: LedgerOutcome,
    /// When the entry was recorded, unix milliseconds.
    pub at_ms: i64,
    /// The source record's offset.
    pub offset: i64,
}

/// One record to produce: the source partition it belongs to (which is its ledger partition),
/// its key and its value.
#[derive(Debug)]
pub(super) struct Encoded {
    pub(super) partition: i32,
    pub(super) key: String,
    pub(super) value: Vec<u8>,
}

/// The batches that hold `entries`: consecutive entries of one source partition and component
/// version go in one batch, split where its record's value would pass [`MAX_RECORD_BYTES`].
pub(super) fn batches(entries: &[(String, LedgerEntry)]) -> Vec<Batch<'_>> {
    let mut out = Vec::new();
    let mut rest = entries;
    while let Some((_, first)) = rest.first() {
        let mut size = 16 + first.topic.len() + first.component_sha256.len();
        let n = rest
            .iter()
            .take_while(|(k, e)| {
                size += k.len() + 24;
                e.topic == first.topic
                    && e.partition == first.partition
                    && e.component_sha256 == first.component_sha256
                    && (size <= MAX_RECORD_BYTES)
            })
            .count()
            // One entry always fits (an event id is at most 1 KiB).
            .max(1);
        let (run, tail) = rest.split_at(n);
        rest = tail;
        out.push(Batch {
            topic: &first.topic,
            partition: first.partition,
            component_sha256: &first.component_sha256,
            items: run
                .iter()
                .map(|(k, e)| Item {
                    key: k,
                    outcome: e.outcome,
                    at_ms: e.at_ms,
                    offset: e.offset,
                })
                .collect(),
        });
    }
    out
}

/// The records to produce for `batches`, one each.
pub(super) fn encode(batches: &[Batch<'_>]) -> anyhow::Result<Vec<Encoded>> {
    batches
        .iter()
        .map(|b| {
            let (lo, hi) = b.items.iter().fold((i64::MAX, i64::MIN), |(lo, hi), i| {
                (lo.min(i.offset), hi.max(i.offset))
            });
            let mut value = vec![BATCH_TAG];
            value.extend(postcard::to_allocvec(b).context("encoding ledger entries")?);
            Ok(Encoded {
                partition: b.partition,
                key: format!(
                    "{}/{}/{lo}-{hi}/{:016x}",
                    b.topic,
                    b.partition,
                    rand::random::<u64>()
                ),
                value,
            })
        })
        .collect()
}

/// What one ledger-topic record holds.
#[derive(Debug)]
pub enum Decoded<'a> {
    /// A batch record.
    Batch(Batch<'a>),
    /// An entry written alone, keyed by its event id.
    One(String, LedgerEntry),
}

impl Decoded<'_> {
    /// How many entries the record holds.
    pub fn len(&self) -> usize {
        match self {
            Decoded::Batch(b) => b.items.len(),
            Decoded::One(..) => 1,
        }
    }

    /// Whether the record holds no entry.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The entries, each with its event id.
    pub fn entries(&self) -> Vec<(String, LedgerEntry)> {
        match self {
            Decoded::Batch(b) => b
                .items
                .iter()
                .map(|i| {
                    (
                        i.key.to_owned(),
                        LedgerEntry {
                            outcome: i.outcome,
                            at_ms: i.at_ms,
                            component_sha256: b.component_sha256.to_owned(),
                            topic: b.topic.to_owned(),
                            partition: b.partition,
                            offset: i.offset,
                        },
                    )
                })
                .collect(),
            Decoded::One(k, e) => vec![(k.clone(), e.clone())],
        }
    }
}

/// Decode a ledger-topic record (see the module docs); `None` for a tombstone.
pub fn decode<'a>(key: Option<&[u8]>, value: &'a [u8]) -> anyhow::Result<Option<Decoded<'a>>> {
    match value.split_first() {
        None => Ok(None),
        Some((&BATCH_TAG, rest)) => Ok(Some(Decoded::Batch(
            postcard::from_bytes(rest).context("decoding a batch of ledger entries")?,
        ))),
        Some((&FORMAT_VERSION, rest)) => {
            let key = key.context("a ledger entry without a key")?;
            let key = std::str::from_utf8(key).context("a ledger entry's key is not UTF-8")?;
            let entry = postcard::from_bytes(rest).context("decoding a ledger entry")?;
            Ok(Some(Decoded::One(key.to_owned(), entry)))
        }
        Some((other, _)) => bail!(
            "ledger record format {other} is not known to this kasm (it knows {FORMAT_VERSION} and {BATCH_TAG}); upgrade kasm"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(topic: &str, partition: i32, offset: i64, sha: &str) -> LedgerEntry {
        LedgerEntry {
            outcome: if offset % 3 == 0 {
                LedgerOutcome::DeadLettered
            } else {
                LedgerOutcome::Ok
            },
            at_ms: 1_700_000_000_000 + offset,
            component_sha256: sha.to_owned(),
            topic: topic.to_owned(),
            partition,
            offset,
        }
    }

    fn roundtrip(records: &[Encoded]) -> Vec<(String, LedgerEntry)> {
        records
            .iter()
            .flat_map(|r| {
                decode(Some(r.key.as_bytes()), &r.value)
                    .unwrap()
                    .unwrap()
                    .entries()
            })
            .collect()
    }

    #[test]
    fn a_batch_of_one_partition_is_one_record_and_reads_back_whole() {
        let entries: Vec<_> = (0..1000)
            .map(|i| (format!("evt-{i}"), entry("orders", 3, 500 + i, "ab")))
            .collect();
        let records = encode(&batches(&entries)).unwrap();
        assert_eq!(records.len(), 1);
        assert_eq!(records[0].partition, 3);
        assert!(records[0].key.starts_with("orders/3/500-1499/"));
        assert_eq!(roundtrip(&records), entries);
    }

    #[test]
    fn partitions_and_component_versions_get_records_of_their_own_in_order() {
        let entries = vec![
            ("a".to_owned(), entry("t", 0, 1, "v1")),
            ("b".to_owned(), entry("t", 0, 2, "v2")),
            ("c".to_owned(), entry("t", 1, 3, "v2")),
            ("d".to_owned(), entry("u", 1, 4, "v2")),
        ];
        let records = encode(&batches(&entries)).unwrap();
        assert_eq!(records.len(), 4);
        assert_eq!(
            records.iter().map(|r| r.partition).collect::<Vec<_>>(),
            [0, 0, 1, 1]
        );
        assert_eq!(roundtrip(&records), entries);
    }

    #[test]
    fn a_batch_too_large_for_one_record_is_split_under_the_limit() {
        let long = "x".repeat(1000);
        let entries: Vec<_> = (0..2000)
            .map(|i| (format!("{long}{i}"), entry("t", 0, i, "v")))
            .collect();
        let records = encode(&batches(&entries)).unwrap();
        assert!(records.len() >= 8, "{} records", records.len());
        assert!(records.iter().all(|r| r.value.len() <= MAX_RECORD_BYTES));
        assert_eq!(roundtrip(&records), entries);
    }

    #[test]
    fn two_writes_of_the_same_offsets_get_different_keys() {
        let entries = vec![("a".to_owned(), entry("t", 0, 7, "v"))];
        let (a, b) = (
            encode(&batches(&entries)).unwrap(),
            encode(&batches(&entries)).unwrap(),
        );
        assert_ne!(a[0].key, b[0].key);
    }

    #[test]
    fn an_entry_written_alone_by_an_earlier_kasm_is_read() {
        let e = entry("t", 2, 9, "v");
        let mut value = vec![FORMAT_VERSION];
        value.extend(postcard::to_allocvec(&e).unwrap());
        let d = decode(Some(b"evt-9"), &value).unwrap().unwrap();
        assert_eq!(d.entries(), vec![("evt-9".to_owned(), e)]);
    }

    #[test]
    fn a_tombstone_holds_nothing_and_an_unknown_format_is_refused_by_name() {
        assert!(decode(Some(b"k"), &[]).unwrap().is_none());
        let err = decode(Some(b"k"), &[9, 0]).unwrap_err().to_string();
        assert!(err.contains("format 9"), "{err}");
    }
}
