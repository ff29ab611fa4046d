//! Dead letters, read back: list what a dead-letter topic holds, and replay chosen dead letters
//! to the topic they came from.
//!
//! **Reading.** A group-less consumer (`assign` + start offsets; librdkafka wants a `group.id`,
//! so it gets a random throwaway one, and it never commits) reads the dead-letter topic from
//! per-partition start offsets up to the end of each partition *as of the call*. The end is
//! found in two steps, because a broker's answer cannot always be trusted: Tansu answers a
//! ListOffsets "latest" query with the start of the newest batch + 1, short of the real end.
//!
//! 1. A partition has *reached* its end when the reader got to the high watermark queried at
//!    the start, or when the broker said it has nothing more (librdkafka's partition EOF: this
//!    also covers offsets no record will ever have, such as transaction markers or compacted
//!    records at the end of a partition).
//! 2. It is *settled* once it has reached its end and then [`SETTLE`] (500 ms) passed without a
//!    record for it, counted only while the reader waits for records (time spent by the caller
//!    between records, e.g. writing a replay, does not count). Records past the watermark are
//!    thus taken while they keep coming, for at most [`TAIL_MAX`] after the end was reached, so
//!    a partition written to without pause still ends a read.
//!
//! A partition that starts at or past its queried watermark needs an answer from the broker
//! (a record or end of partition) before it can settle, since the watermark may be short; one
//! that gets none within [`ANSWER_WAIT`] is taken as ended (Tansu answers a fetch past the end
//! with nothing at all). A partition that neither reaches its end nor gets a record for
//! [`STALL`] (waiting time) stops the read with an error naming it (a broker down, a partition
//! without a leader).
//!
//! **Listing** returns records in (partition, offset) order, at most `limit`, with a
//! [`Cursor`] (per-partition start offsets) where the next page starts. It reads no more than it
//! needs: a partition stops at `limit + 1` records, and once the partitions before one hold more
//! than `limit` records, that one is not read.
//!
//! **Replaying** writes a dead letter to its source topic (`kasm-dlq-source-topic`) with its
//! original key, payload and headers, minus every `kasm-dlq-*` header, and with
//! [`REPLAY_COUNT_HEADER`] set to one more than the dead letter carried. The worker keys a
//! replayed record in its ledger by event id *and* replay count, so the replay runs even though
//! the original is recorded as dead-lettered; if it fails again, its new dead letter keeps the
//! count, and a record whose count reached the limit is refused, so a record that keeps failing
//! cannot loop forever. A dead letter that cannot be replayed is *refused* with a reason, and the
//! others are still replayed; a write that fails stops the replay (every later write would most
//! likely fail the same way), and the report says where. The partitioner places a replayed
//! record by its key, as for any new record; a tombstone that was dead-lettered comes back as an
//! empty payload (a dead letter cannot carry a null payload).

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use rdkafka::consumer::{Consumer as _, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Headers as _, Message as _};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};

use crate::kafka::producer::{KafkaProducer, OutRecord};

/// How many times a record was replayed from a dead-letter topic (absent: never).
pub const REPLAY_COUNT_HEADER: &str = "kasm-replay-count";

/// The prefix of the headers a dead letter adds (see [`super::dlq`]).
pub const DLQ_HEADER_PREFIX: &str = "kasm-dlq-";

/// Longest payload preview in a listing, in bytes of the returned text.
pub const PREVIEW_LIMIT: usize = 4 << 10;

/// Most records one [`list`] call returns (a larger `limit` is lowered to it).
pub const MAX_LIST_LIMIT: usize = 1000;

/// Quiet (waiting) time after which a partition that reached its end is done.
pub const SETTLE: Duration = Duration::from_millis(500);

/// Longest time records past the queried high watermark are taken from one partition.
pub const TAIL_MAX: Duration = Duration::from_secs(10);

/// Waiting time without any record or end-of-partition event after which a read fails.
pub const STALL: Duration = Duration::from_secs(10);

/// Waiting time after which a partition that starts at or past its queried high watermark
/// is taken as ended although the broker sent neither a record nor an end-of-partition event
/// for it (Tansu, asked for an offset past the end, answers with nothing).
pub const ANSWER_WAIT: Duration = Duration::from_secs(3);

/// Bound of each metadata and watermark query.
const QUERY_TIMEOUT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------------
// What a listing returns
// ---------------------------------------------------------------------------------------------

/// One dead letter, decoded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeadLetter {
    /// Partition of the dead-letter topic.
    pub partition: i32,
    /// Offset in that partition.
    pub offset: i64,
    /// The dead letter's timestamp (when it was written), ms since the Unix epoch.
    pub timestamp_ms: Option<i64>,
    /// Key, as UTF-8 (invalid bytes replaced).
    pub key: Option<String>,
    /// Payload preview: the text if the payload is UTF-8, else its bytes in hex; at most
    /// [`PREVIEW_LIMIT`] bytes of text.
    pub payload: String,
    /// How [`Self::payload`] shows the bytes.
    pub payload_encoding: PayloadEncoding,
    /// Whether the preview is shorter than the payload.
    pub payload_truncated: bool,
    /// Size of the whole payload, in bytes.
    pub payload_bytes: usize,
    /// The `kasm-dlq-*` headers.
    pub provenance: Provenance,
    /// Value of [`REPLAY_COUNT_HEADER`] (0 if absent).
    pub replay_count: u32,
    /// Every other header (the source record's own), in order, values as UTF-8 (invalid bytes
    /// replaced). A `kasm-dlq-*` or replay-count header whose value does not parse is kept here
    /// rather than dropped.
    pub headers: Vec<(String, String)>,
}

/// How a payload preview shows the bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PayloadEncoding {
    /// The payload is UTF-8 text.
    Utf8,
    /// The payload is not UTF-8: lowercase hex, two characters per byte.
    Hex,
}

/// The `kasm-dlq-*` headers of a dead letter, decoded (each absent if the record lacks it).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Provenance {
    /// `kasm-dlq-source-topic`.
    pub source_topic: Option<String>,
    /// `kasm-dlq-source-partition`.
    pub source_partition: Option<i32>,
    /// `kasm-dlq-source-offset`.
    pub source_offset: Option<i64>,
    /// `kasm-dlq-source-timestamp`, ms since the Unix epoch.
    pub source_timestamp_ms: Option<i64>,
    /// `kasm-dlq-handler`.
    pub handler: Option<String>,
    /// `kasm-dlq-group`.
    pub group: Option<String>,
    /// `kasm-dlq-component` (sha256 of the component version).
    pub component: Option<String>,
    /// `kasm-dlq-event-id`.
    pub event_id: Option<String>,
    /// `kasm-dlq-error-kind`.
    pub error_kind: Option<String>,
    /// `kasm-dlq-error-message`.
    pub error_message: Option<String>,
    /// `kasm-dlq-attempts`.
    pub attempts: Option<u32>,
    /// `kasm-dlq-first-failure`, ms since the Unix epoch.
    pub first_failure_ms: Option<i64>,
    /// `kasm-dlq-last-failure`, ms since the Unix epoch.
    pub last_failure_ms: Option<i64>,
}

impl Provenance {
    /// Take header `kasm-dlq-{name}`; false if the name is unknown or the value does not parse.
    fn set(&mut self, name: &str, value: &str) -> bool {
        fn text(slot: &mut Option<String>, v: &str) -> bool {
            *slot = Some(v.to_owned());
            true
        }
        fn num<T: FromStr>(slot: &mut Option<T>, v: &str) -> bool {
            match v.trim().parse() {
                Ok(n) => {
                    *slot = Some(n);
                    true
                }
                Err(_) => false,
            }
        }
        match name {
            "source-topic" => text(&mut self.source_topic, value),
            "source-partition" => num(&mut self.source_partition, value),
            "source-offset" => num(&mut self.source_offset, value),
            "source-timestamp" => num(&mut self.source_timestamp_ms, value),
            "handler" => text(&mut self.handler, value),
            "group" => text(&mut self.group, value),
            "component" => text(&mut self.component, value),
            "event-id" => text(&mut self.event_id, value),
            "error-kind" => text(&mut self.error_kind, value),
            "error-message" => text(&mut self.error_message, value),
            "attempts" => num(&mut self.attempts, value),
            "first-failure" => num(&mut self.first_failure_ms, value),
            "last-failure" => num(&mut self.last_failure_ms, value),
            _ => false,
        }
    }
}

/// One page of a listing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Page {
    /// The dead letters, in (partition, offset) order.
    pub records: Vec<DeadLetter>,
    /// Where the next page starts; `None` when this page holds every dead letter there was
    /// (as of the call) from the requested start.
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

// ---------------------------------------------------------------------------------------------
// What a replay returns
// ---------------------------------------------------------------------------------------------

/// Which dead letters to replay.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Selection {
    /// Every dead letter in the topic (as of the call).
    All,
    /// These `(partition, offset)` positions of the dead-letter topic (repeats count once).
    Records(Vec<(i32, i64)>),
}

/// The outcome of a replay.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ReplayReport {
    /// Dead letters written back to their source topic, in (partition, offset) order.
    pub replayed: Vec<Replayed>,
    /// Dead letters not written, in (partition, offset) order.
    pub refused: Vec<Refused>,
    /// Set when the replay stopped before the end of the selection (a write failed, or the
    /// dead-letter topic could not be read further): why. Under [`Selection::All`] the dead
    /// letters after that point are in neither list.
    pub stopped: Option<String>,
}

/// A dead letter written back to its source topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Replayed {
    /// Partition of the dead letter.
    pub dlq_partition: i32,
    /// Offset of the dead letter.
    pub dlq_offset: i64,
    /// Its event id (`kasm-dlq-event-id`), if it has one.
    pub event_id: Option<String>,
    /// The topic it was written to.
    pub topic: String,
    /// Where the new record landed.
    pub partition: i32,
    /// Where the new record landed.
    pub offset: i64,
    /// The new record's [`REPLAY_COUNT_HEADER`].
    pub replay_count: u32,
}

/// A dead letter that was not replayed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Refused {
    /// Partition of the dead letter.
    pub dlq_partition: i32,
    /// Offset of the dead letter.
    pub dlq_offset: i64,
    /// Why, as a kind to branch on.
    pub kind: RefusalKind,
    /// Why, in words.
    pub reason: String,
}

/// Why a dead letter was not replayed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RefusalKind {
    /// No record at the selected position (never written, deleted, or a partition that does
    /// not exist).
    NotFound,
    /// Its replay count reached the limit.
    ReplayLimit,
    /// Its replay-count header is not a number.
    InvalidReplayCount,
    /// It has no `kasm-dlq-source-topic` header.
    NoSourceTopic,
    /// Its source topic does not exist (any more).
    SourceTopicMissing,
    /// Its source topic is the dead-letter topic itself.
    SourceIsDeadLetterTopic,
    /// Writing it failed (the replay stopped there).
    WriteFailed,
    /// Selected but not reached: the replay stopped earlier.
    NotAttempted,
}

// ---------------------------------------------------------------------------------------------
// list and replay
// ---------------------------------------------------------------------------------------------

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

/// Re-publish the selected dead letters of `dlq_topic` to their source topic
/// (`kasm-dlq-source-topic`): original key, payload and headers, minus every `kasm-dlq-*`
/// header, with [`REPLAY_COUNT_HEADER`] = the dead letter's count + 1 (replacing any). Each
/// write is awaited before the next.
///
/// Refused, and the others still replayed: a dead letter whose count is `max_replays` or more,
/// one without a source topic, or whose source topic does not exist, or is `dlq_topic`; a
/// selected position without a record. `Err` only when the topic cannot be read at all; a
/// failure after that (a failed write, a partition that stops answering) ends the replay with
/// [`ReplayReport::stopped`] set and the report of what was done.
pub async fn replay(
    client_config: ClientConfig,
    producer: &KafkaProducer,
    dlq_topic: &str,
    selection: &Selection,
    max_replays: u32,
) -> anyhow::Result<ReplayReport> {
    let mut reader = Reader::connect(client_config, dlq_topic)
        .await
        .with_context(|| format!("replaying dead letters of topic {dlq_topic}"))?;
    let mut report = ReplayReport::default();

    // For a list of positions: what is still wanted per partition.
    let mut wanted: Option<BTreeMap<i32, BTreeSet<i64>>> = None;
    let plan: BTreeMap<i32, (i64, Option<i64>)> = match selection {
        Selection::All => reader
            .marks
            .iter()
            .map(|(&p, m)| (p, (m.low, None)))
            .collect(),
        Selection::Records(positions) => {
            let mut w: BTreeMap<i32, BTreeSet<i64>> = BTreeMap::new();
            for &(p, o) in positions {
                w.entry(p).or_default().insert(o);
            }
            let mut plan = BTreeMap::new();
            for (p, offsets) in &mut w {
                let Some(m) = reader.marks.get(p) else {
                    for &o in offsets.iter() {
                        report.refuse(*p, o, RefusalKind::NotFound, format!(
                            "no record at partition {p} offset {o}: topic {dlq_topic} has no partition {p}"
                        ));
                    }
                    offsets.clear();
                    continue;
                };
                let gone: Vec<i64> = offsets.range(..m.low).copied().collect();
                for o in gone {
                    offsets.remove(&o);
                    report.refuse(*p, o, RefusalKind::NotFound, format!(
                        "no record at partition {p} offset {o}: the partition starts at offset {}",
                        m.low
                    ));
                }
                if let (Some(&first), Some(&last)) = (offsets.first(), offsets.last()) {
                    plan.insert(*p, (first, Some(last)));
                }
            }
            wanted = Some(w);
            plan
        }
    };

    let mut sources = SourceTopics::default();
    if let Err(e) = reader.start(plan) {
        report.stopped = Some(format!("{e:#}"));
    }
    while report.stopped.is_none() {
        let r = match reader.next().await {
            Ok(Some(r)) => r,
            Ok(None) => break,
            Err(e) => {
                report.stopped = Some(format!("reading topic {dlq_topic}: {e:#}"));
                break;
            }
        };
        if let Some(w) = &mut wanted
            && !w.get_mut(&r.partition).is_some_and(|s| s.remove(&r.offset))
        {
            continue;
        }
        replay_one(
            &reader,
            producer,
            dlq_topic,
            &r,
            max_replays,
            &mut sources,
            &mut report,
        )
        .await;
    }

    if let Some(w) = wanted {
        for (p, offsets) in w {
            for o in offsets {
                match &report.stopped {
                    Some(why) => report.refuse(
                        p,
                        o,
                        RefusalKind::NotAttempted,
                        format!("not attempted: the replay stopped before it ({why})"),
                    ),
                    None => report.refuse(
                        p,
                        o,
                        RefusalKind::NotFound,
                        format!("no record at partition {p} offset {o} of topic {dlq_topic}"),
                    ),
                }
            }
        }
    }
    reader.close().await;
    report
        .replayed
        .sort_by_key(|r| (r.dlq_partition, r.dlq_offset));
    report
        .refused
        .sort_by_key(|r| (r.dlq_partition, r.dlq_offset));
    Ok(report)
}

impl ReplayReport {
    fn refuse(&mut self, partition: i32, offset: i64, kind: RefusalKind, reason: String) {
        self.refused.push(Refused {
            dlq_partition: partition,
            dlq_offset: offset,
            kind,
            reason,
        });
    }
}

/// Check and write one dead letter; a failed write sets `report.stopped`.
async fn replay_one(
    reader: &Reader,
    producer: &KafkaProducer,
    dlq_topic: &str,
    r: &RawRecord,
    max_replays: u32,
    sources: &mut SourceTopics,
    report: &mut ReplayReport,
) {
    let (p, o) = (r.partition, r.offset);
    let count = match replay_count(&r.headers) {
        Ok(n) => n,
        Err(v) => {
            return report.refuse(
                p,
                o,
                RefusalKind::InvalidReplayCount,
                format!("header {REPLAY_COUNT_HEADER} is {v:?}, not a number"),
            );
        }
    };
    if count >= max_replays {
        return report.refuse(
            p,
            o,
            RefusalKind::ReplayLimit,
            format!("its replay count is {count}; the limit is {max_replays}"),
        );
    }
    let topic = match last_header(&r.headers, "kasm-dlq-source-topic")
        .map(|v| String::from_utf8_lossy(v).trim().to_owned())
    {
        Some(t) if !t.is_empty() => t,
        _ => {
            return report.refuse(
                p,
                o,
                RefusalKind::NoSourceTopic,
                "no kasm-dlq-source-topic header: not a kasm dead letter".to_owned(),
            );
        }
    };
    if topic == dlq_topic {
        return report.refuse(
            p,
            o,
            RefusalKind::SourceIsDeadLetterTopic,
            format!("its source topic is the dead-letter topic {dlq_topic} itself"),
        );
    }
    if !sources.exists(reader, &topic).await {
        return report.refuse(
            p,
            o,
            RefusalKind::SourceTopicMissing,
            format!("its source topic {topic} does not exist"),
        );
    }
    let headers = replay_headers(&r.headers, count + 1);
    let out = OutRecord {
        topic: &topic,
        key: r.key.as_deref(),
        payload: r.payload.as_deref().unwrap_or_default(),
        headers: &headers,
        partition: None,
    };
    match producer.send(out).await {
        Ok(d) => report.replayed.push(Replayed {
            dlq_partition: p,
            dlq_offset: o,
            event_id: last_header(&r.headers, "kasm-dlq-event-id")
                .map(|v| String::from_utf8_lossy(v).into_owned()),
            topic,
            partition: d.partition,
            offset: d.offset,
            replay_count: count + 1,
        }),
        Err(e) => {
            let why = format!("{e:#}");
            tracing::warn!(dlq_topic, dlq_partition = p, dlq_offset = o, error = %why, "replay write failed; stopping the replay");
            report.refuse(
                p,
                o,
                RefusalKind::WriteFailed,
                format!("writing it failed: {why}"),
            );
            report.stopped = Some(format!(
                "writing partition {p} offset {o} to topic {topic} failed: {why}"
            ));
        }
    }
}

/// The topics the cluster has, asked once per replay, the first time a source topic is
/// checked. The query asks for every topic rather than the source topic by name, because some
/// brokers (Tansu) create a topic a metadata request names.
#[derive(Debug, Default)]
struct SourceTopics {
    /// `None` before the query; `Some(None)` if it failed (then nothing is refused on this
    /// ground: the write says what is wrong).
    known: Option<Option<HashSet<String>>>,
}

impl SourceTopics {
    /// False only when the cluster's topic list lacks `topic`.
    async fn exists(&mut self, reader: &Reader, topic: &str) -> bool {
        if self.known.is_none() {
            let consumer = reader.consumer.clone();
            let names = tokio::task::spawn_blocking(move || {
                consumer.fetch_metadata(None, QUERY_TIMEOUT).map(|md| {
                    md.topics()
                        .iter()
                        .map(|t| t.name().to_owned())
                        .collect::<HashSet<String>>()
                })
            })
            .await
            .map_err(anyhow::Error::from)
            .and_then(|r| r.map_err(anyhow::Error::from));
            self.known = Some(match names {
                Ok(n) => Some(n),
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "listing topics before a replay failed; not checking source topics");
                    None
                }
            });
        }
        match &self.known {
            Some(Some(names)) => names.contains(topic),
            _ => true,
        }
    }
}

/// The headers of a replay: `headers` without `kasm-dlq-*` and replay-count ones, then
/// [`REPLAY_COUNT_HEADER`] = `count`.
pub fn replay_headers(headers: &[(String, Vec<u8>)], count: u32) -> Vec<(String, Vec<u8>)> {
    use super::worker::{REPLAY_HANDLER_HEADER, REPLAY_ID_HEADER};
    // The handler that dead-lettered it: only that one runs the replay (others consuming the
    // source topic handled the original already).
    let handler = last_header(headers, "kasm-dlq-handler").map(<[u8]>::to_vec);
    let mut h: Vec<(String, Vec<u8>)> = headers
        .iter()
        .filter(|(k, _)| {
            !k.starts_with(DLQ_HEADER_PREFIX)
                && k != REPLAY_COUNT_HEADER
                && k != REPLAY_ID_HEADER
                && k != REPLAY_HANDLER_HEADER
        })
        .cloned()
        .collect();
    h.push((
        REPLAY_COUNT_HEADER.to_owned(),
        count.to_string().into_bytes(),
    ));
    // A fresh id per replay: the worker's ledger key for it, so the replay runs although the
    // original is recorded as dead-lettered, and a redelivery of this replay does not.
    h.push((
        REPLAY_ID_HEADER.to_owned(),
        uuid::Uuid::new_v4().to_string().into_bytes(),
    ));
    if let Some(handler) = handler {
        h.push((REPLAY_HANDLER_HEADER.to_owned(), handler));
    }
    h
}

/// The replay count of a record (its last [`REPLAY_COUNT_HEADER`], as the worker reads it;
/// 0 if absent), or the value that is not a number.
fn replay_count(headers: &[(String, Vec<u8>)]) -> Result<u32, String> {
    match last_header(headers, REPLAY_COUNT_HEADER) {
        None => Ok(0),
        Some(v) => {
            let s = String::from_utf8_lossy(v);
            s.trim().parse().map_err(|_| s.into_owned())
        }
    }
}

fn last_header<'a>(headers: &'a [(String, Vec<u8>)], key: &str) -> Option<&'a [u8]> {
    headers
        .iter()
        .rev()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_slice())
}

// ---------------------------------------------------------------------------------------------
// Decoding
// ---------------------------------------------------------------------------------------------

/// A record of a dead-letter topic as read, detached from the consumer (public so that the
/// fuzz target `dlq_headers` and its regression test decode exactly what a listing decodes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawRecord {
    /// Partition of the dead-letter topic.
    pub partition: i32,
    /// Offset in that partition.
    pub offset: i64,
    /// Timestamp, ms since the Unix epoch.
    pub timestamp_ms: Option<i64>,
    /// Key.
    pub key: Option<Vec<u8>>,
    /// Value (`None`: a tombstone).
    pub payload: Option<Vec<u8>>,
    /// Headers in order; a null header value is read as empty.
    pub headers: Vec<(String, Vec<u8>)>,
}

impl RawRecord {
    fn from_message(m: &BorrowedMessage<'_>) -> Self {
        let headers = m
            .headers()
            .map(|hs| {
                hs.iter()
                    .map(|h| (h.key.to_owned(), h.value.unwrap_or_default().to_vec()))
                    .collect()
            })
            .unwrap_or_default();
        Self {
            partition: m.partition(),
            offset: m.offset(),
            timestamp_ms: m.timestamp().to_millis(),
            key: m.key().map(<[u8]>::to_vec),
            payload: m.payload().map(<[u8]>::to_vec),
            headers,
        }
    }
}

/// Decode a dead letter: the `kasm-dlq-*` and replay-count headers into [`Provenance`] and
/// [`DeadLetter::replay_count`] (kept as plain headers when they do not parse), a bounded
/// payload preview. Total: any bytes decode.
pub fn decode(r: &RawRecord) -> DeadLetter {
    let mut provenance = Provenance::default();
    let mut replay_count = 0;
    let mut headers = Vec::new();
    for (k, v) in &r.headers {
        let value = String::from_utf8_lossy(v);
        let taken = if let Some(name) = k.strip_prefix(DLQ_HEADER_PREFIX) {
            provenance.set(name, &value)
        } else if k == REPLAY_COUNT_HEADER {
            value.trim().parse().map(|n| replay_count = n).is_ok()
        } else {
            false
        };
        if !taken {
            headers.push((k.clone(), value.into_owned()));
        }
    }
    let bytes = r.payload.as_deref().unwrap_or_default();
    let (payload, payload_encoding, payload_truncated) = preview(bytes);
    DeadLetter {
        partition: r.partition,
        offset: r.offset,
        timestamp_ms: r.timestamp_ms,
        key: r
            .key
            .as_deref()
            .map(|k| String::from_utf8_lossy(k).into_owned()),
        payload,
        payload_encoding,
        payload_truncated,
        payload_bytes: bytes.len(),
        provenance,
        replay_count,
        headers,
    }
}

/// At most [`PREVIEW_LIMIT`] bytes of text showing `bytes`, and whether some were left out.
fn preview(bytes: &[u8]) -> (String, PayloadEncoding, bool) {
    match std::str::from_utf8(bytes) {
        Ok(s) => {
            let mut end = s.len().min(PREVIEW_LIMIT);
            while !s.is_char_boundary(end) {
                end -= 1;
            }
            (s[..end].to_owned(), PayloadEncoding::Utf8, end < s.len())
        }
        Err(_) => {
            let n = bytes.len().min(PREVIEW_LIMIT / 2);
            (
                hex::encode(&bytes[..n]),
                PayloadEncoding::Hex,
                n < bytes.len(),
            )
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The reader
// ---------------------------------------------------------------------------------------------

/// Watermarks of a partition as queried when the reader connected.
#[derive(Debug, Clone, Copy)]
struct Marks {
    low: i64,
    high: i64,
}

/// Read state of one assigned partition.
#[derive(Debug)]
struct PartState {
    /// One past the last offset read (the start offset before any).
    next: i64,
    /// The high watermark queried at the start.
    high: i64,
    /// The last offset wanted, if bounded.
    stop_at: Option<i64>,
    /// When the partition reached its end (see the module notes).
    reached_at: Option<Instant>,
    /// Whether the broker answered a fetch for it (a record or end of partition).
    answered: bool,
    /// Waiting time since its last record or end-of-partition event.
    idle: Duration,
    done: bool,
}

/// A group-less reader of one topic.
struct Reader {
    consumer: Arc<StreamConsumer>,
    topic: String,
    marks: BTreeMap<i32, Marks>,
    parts: BTreeMap<i32, PartState>,
    last_error: Option<String>,
}

impl fmt::Debug for Reader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reader")
            .field("topic", &self.topic)
            .field("parts", &self.parts)
            .finish_non_exhaustive()
    }
}

impl Reader {
    /// Create the consumer, find the topic's partitions and their watermarks.
    async fn connect(mut config: ClientConfig, topic: &str) -> anyhow::Result<Self> {
        config
            .set(
                "group.id",
                format!("kasm-dlq-reader-{}", uuid::Uuid::new_v4()),
            )
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("enable.partition.eof", "true")
            .set("auto.offset.reset", "earliest");
        let t = topic.to_owned();
        // Metadata and watermark queries block; the consumer is created on the blocking thread
        // too (a `StreamConsumer` needs the runtime context, which blocking threads have).
        let (consumer, marks) = tokio::task::spawn_blocking(move || {
            let consumer: StreamConsumer =
                config.create().context("creating the dead-letter reader")?;
            let md = consumer
                .fetch_metadata(Some(&t), QUERY_TIMEOUT)
                .with_context(|| format!("topic={t}: reading its metadata"))?;
            let found = md
                .topics()
                .iter()
                .find(|x| x.name() == t)
                .with_context(|| format!("topic={t}: not in the broker's metadata"))?;
            if let Some(e) = found.error() {
                anyhow::bail!("topic={t}: {}", RDKafkaErrorCode::from(e));
            }
            anyhow::ensure!(!found.partitions().is_empty(), "topic={t}: no partitions");
            let mut marks = BTreeMap::new();
            for p in found.partitions() {
                let (low, high) = consumer
                    .fetch_watermarks(&t, p.id(), QUERY_TIMEOUT)
                    .with_context(|| {
                        format!("topic={t} partition={}: reading its watermarks", p.id())
                    })?;
                marks.insert(p.id(), Marks { low, high });
            }
            Ok((consumer, marks))
        })
        .await
        .context("the dead-letter reader's setup task failed")??;
        Ok(Self {
            consumer: Arc::new(consumer),
            topic: topic.to_owned(),
            marks,
            parts: BTreeMap::new(),
            last_error: None,
        })
    }

    /// Start reading: per partition, from a start offset up to an optional last offset.
    fn start(&mut self, plan: BTreeMap<i32, (i64, Option<i64>)>) -> anyhow::Result<()> {
        let mut tpl = TopicPartitionList::new();
        for (p, (start, stop_at)) in plan {
            let Some(m) = self.marks.get(&p) else {
                continue;
            };
            let nothing = stop_at.is_some_and(|s| s < start);
            if !nothing {
                tpl.add_partition_offset(&self.topic, p, Offset::Offset(start))
                    .with_context(|| format!("topic={} partition={p}: assigning", self.topic))?;
            }
            self.parts.insert(
                p,
                PartState {
                    next: start,
                    high: m.high,
                    stop_at,
                    reached_at: (start >= m.high).then(Instant::now),
                    answered: false,
                    idle: Duration::ZERO,
                    done: nothing,
                },
            );
        }
        self.consumer
            .assign(&tpl)
            .with_context(|| format!("topic={}: assigning its partitions", self.topic))
    }

    /// Partitions still being read.
    fn active(&self) -> impl Iterator<Item = i32> + '_ {
        self.parts.iter().filter(|(_, s)| !s.done).map(|(&p, _)| p)
    }

    /// One past the last offset read from `partition` (its start before any).
    fn position(&self, partition: i32) -> Option<i64> {
        self.parts.get(&partition).map(|s| s.next)
    }

    /// Stop reading `partition`.
    fn finish(&mut self, partition: i32) {
        if let Some(s) = self.parts.get_mut(&partition)
            && !s.done
        {
            s.done = true;
            let mut tpl = TopicPartitionList::new();
            if tpl
                .add_partition_offset(&self.topic, partition, Offset::Invalid)
                .is_ok()
                && let Err(e) = self.consumer.pause(&tpl)
            {
                // Only an optimisation: its records are dropped when they come anyway.
                tracing::debug!(topic = %self.topic, partition, error = %e, "pausing a finished partition");
            }
        }
    }

    /// The next record, or `None` once every partition is done.
    async fn next(&mut self) -> anyhow::Result<Option<RawRecord>> {
        loop {
            self.settle()?;
            if self.parts.values().all(|s| s.done) {
                return Ok(None);
            }
            let wait = self.wait_time();
            let began = Instant::now();
            let got = tokio::time::timeout(wait, self.consumer.recv()).await;
            let waited = began.elapsed();
            for s in self.parts.values_mut().filter(|s| !s.done) {
                s.idle += waited;
            }
            let m = match got {
                Err(_) => continue,
                Ok(Err(KafkaError::PartitionEOF(p))) => {
                    if let Some(s) = self.parts.get_mut(&p) {
                        s.answered = true;
                        s.idle = Duration::ZERO;
                        s.reached_at.get_or_insert_with(Instant::now);
                    }
                    continue;
                }
                Ok(Err(e)) => {
                    // librdkafka retries what it can; keep the last error for a stall report.
                    tracing::debug!(topic = %self.topic, error = %e, "dead-letter reader");
                    self.last_error = Some(e.to_string());
                    continue;
                }
                Ok(Ok(m)) => m,
            };
            if m.topic() != self.topic {
                continue;
            }
            let Some(s) = self.parts.get_mut(&m.partition()) else {
                continue;
            };
            if s.done {
                continue;
            }
            let offset = m.offset();
            s.answered = true;
            s.idle = Duration::ZERO;
            if offset < s.next {
                continue;
            }
            s.next = offset + 1;
            if s.next >= s.high {
                s.reached_at.get_or_insert_with(Instant::now);
            }
            if let Some(stop) = s.stop_at
                && offset >= stop
            {
                let p = m.partition();
                let keep = offset == stop;
                let record = keep.then(|| RawRecord::from_message(&m));
                drop(m);
                self.finish(p);
                match record {
                    Some(r) => return Ok(Some(r)),
                    None => continue,
                }
            }
            return Ok(Some(RawRecord::from_message(&m)));
        }
    }

    /// Mark settled partitions done; fail on a stalled one.
    fn settle(&mut self) -> anyhow::Result<()> {
        for (&p, s) in self.parts.iter_mut().filter(|(_, s)| !s.done) {
            match s.reached_at {
                Some(at) if s.answered && (s.idle >= SETTLE || at.elapsed() >= TAIL_MAX) => {
                    s.done = true;
                }
                Some(_) if !s.answered && s.idle >= ANSWER_WAIT => {
                    s.done = true;
                }
                Some(_) => {}
                None if s.idle >= STALL => {
                    let mut msg = format!(
                        "topic={} partition={p}: nothing read for {STALL:?} at offset {} (high watermark {})",
                        self.topic, s.next, s.high
                    );
                    if let Some(e) = &self.last_error {
                        msg.push_str(&format!("; last error: {e}"));
                    }
                    anyhow::bail!(msg);
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// How long the next wait for a record may last before some partition must be looked at.
    fn wait_time(&self) -> Duration {
        let mut wait = STALL;
        for s in self.parts.values().filter(|s| !s.done) {
            let left = match s.reached_at {
                Some(at) if s.answered => SETTLE
                    .saturating_sub(s.idle)
                    .min(TAIL_MAX.saturating_sub(at.elapsed())),
                Some(_) => ANSWER_WAIT.saturating_sub(s.idle),
                None => STALL.saturating_sub(s.idle),
            };
            wait = wait.min(left);
        }
        wait.max(Duration::from_millis(1))
    }

    /// Close the consumer off the async threads (closing can block briefly).
    async fn close(self) {
        let consumer = self.consumer;
        if let Err(e) = tokio::task::spawn_blocking(move || drop(consumer)).await {
            tracing::debug!(error = %e, "closing the dead-letter reader");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    use rdkafka::consumer::{BaseConsumer, Consumer as _};
    use rdkafka::message::{Header, Headers as _, Message as _, OwnedHeaders};
    use rdkafka::producer::{FutureProducer, FutureRecord};
    use rdkafka::{ClientConfig, Offset, TopicPartitionList};

    use super::*;
    use crate::config::KafkaEnv;
    use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};

    use crate::kafka::mock::EmbeddedCluster;
    use crate::pipeline::Record;
    use crate::pipeline::dlq::{self, DlqKind, Failure};
    use crate::runtime::FailureKind;

    fn unique(prefix: &str) -> String {
        format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
    }

    fn env(bootstrap: &str) -> KafkaEnv {
        KafkaEnv {
            bootstrap_servers: Some(bootstrap.to_owned()),
            ..KafkaEnv::default()
        }
    }

    fn config(bootstrap: &str) -> ClientConfig {
        crate::kafka::base_config(&env(bootstrap), &[], crate::kafka::Role::Consumer)
    }

    /// The dead letter kasm writes for `record`.
    fn dead_letter_headers(record: &Record, i: usize) -> Vec<(String, Vec<u8>)> {
        let failure = Failure {
            kind: if i.is_multiple_of(2) {
                DlqKind::RetriesExhausted
            } else {
                DlqKind::Failure(FailureKind::Trap)
            },
            message: format!("boom {i}"),
            attempts: i as u32,
            first_failure_ms: 1_000 + i as i64,
            last_failure_ms: 2_000 + i as i64,
        };
        let p = dlq::Provenance {
            handler: "audit",
            group: "kasm.audit",
            component: "abc123",
            event_id: &format!("e{i}"),
        };
        dlq::headers(record, p, &failure)
    }

    /// A record to write: partition, key, payload, headers.
    type Letter = (i32, Option<Vec<u8>>, Vec<u8>, Vec<(String, Vec<u8>)>);

    /// Write `records` to `topic`; where they landed.
    async fn write(bootstrap: &str, topic: &str, records: &[Letter]) -> Vec<(i32, i64)> {
        // All at once with a linger, so that one partition's records share a batch: on Tansu,
        // a ListOffsets "latest" query then answers short of the end (the reader must not
        // trust it).
        let producer: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("acks", "all")
            .set("linger.ms", "50")
            .create()
            .unwrap();
        let sends = records.iter().map(|(p, key, payload, headers)| {
            let mut hs = OwnedHeaders::new();
            for (k, v) in headers {
                hs = hs.insert(Header {
                    key: k,
                    value: Some(v),
                });
            }
            let mut fr = FutureRecord::<[u8], [u8]>::to(topic)
                .partition(*p)
                .payload(payload)
                .headers(hs);
            if let Some(k) = key {
                fr = fr.key(k);
            }
            producer.send(fr, Duration::from_secs(10))
        });
        futures::future::join_all(sends)
            .await
            .into_iter()
            .map(|r| {
                let d = r.map_err(|(e, _)| e).unwrap();
                (d.partition, d.offset)
            })
            .collect()
    }

    /// Every record of `topic`: poll until `want` arrived and then 1 s of quiet, or 20 s.
    async fn read_all(bootstrap: &str, topic: &str, want: usize) -> Vec<RawRecord> {
        let (bootstrap, topic) = (bootstrap.to_owned(), topic.to_owned());
        tokio::task::spawn_blocking(move || {
            let c: BaseConsumer = ClientConfig::new()
                .set("bootstrap.servers", &bootstrap)
                .set("group.id", unique("test-reader"))
                .set("enable.auto.commit", "false")
                .create()
                .unwrap();
            let md = c
                .fetch_metadata(Some(&topic), Duration::from_secs(10))
                .unwrap();
            let mut tpl = TopicPartitionList::new();
            for p in md.topics()[0].partitions() {
                tpl.add_partition_offset(&topic, p.id(), Offset::Beginning)
                    .unwrap();
            }
            c.assign(&tpl).unwrap();
            let mut out = Vec::new();
            let deadline = std::time::Instant::now() + Duration::from_secs(20);
            let mut quiet_since = std::time::Instant::now();
            while std::time::Instant::now() < deadline {
                if out.len() >= want && quiet_since.elapsed() > Duration::from_secs(1) {
                    break;
                }
                if let Some(Ok(m)) = c.poll(Duration::from_millis(100)) {
                    quiet_since = std::time::Instant::now();
                    let headers = m
                        .headers()
                        .map(|hs| {
                            hs.iter()
                                .map(|h| (h.key.to_owned(), h.value.unwrap_or_default().to_vec()))
                                .collect()
                        })
                        .unwrap_or_default();
                    out.push(RawRecord {
                        partition: m.partition(),
                        offset: m.offset(),
                        timestamp_ms: None,
                        key: m.key().map(<[u8]>::to_vec),
                        payload: m.payload().map(<[u8]>::to_vec),
                        headers,
                    });
                }
            }
            out
        })
        .await
        .unwrap()
    }

    fn header<'a>(headers: &'a [(String, Vec<u8>)], key: &str) -> Vec<&'a [u8]> {
        headers
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.as_slice())
            .collect()
    }

    /// Create `topic` on the embedded cluster, else through the admin API of `bootstrap`.
    async fn create_topic(
        cluster: Option<&EmbeddedCluster>,
        bootstrap: &str,
        topic: &str,
        partitions: i32,
    ) {
        if let Some(c) = cluster {
            return c.create_topic(topic, partitions).unwrap();
        }
        let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .create()
            .unwrap();
        let t = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
        let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
        for r in admin.create_topics([&t], &opts).await.unwrap() {
            r.unwrap();
        }
        // Until metadata shows every partition.
        let c: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .create()
            .unwrap();
        for _ in 0..200 {
            let n = c
                .fetch_metadata(Some(topic), Duration::from_secs(2))
                .ok()
                .and_then(|m| m.topics().first().map(|t| t.partitions().len()))
                .unwrap_or(0);
            if n == partitions as usize {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("topic {topic} did not show {partitions} partitions");
    }

    /// The broker of `KASM_TEST_BOOTSTRAP` (e.g. Tansu), else an embedded cluster of 3 brokers,
    /// with a source topic (3 partitions) and its dead-letter topic
    /// (2 partitions) holding 5 dead letters: 3 in partition 0, 2 in partition 1. Payloads:
    /// JSON, except #1 (not UTF-8) and #3 (8 KiB).
    struct Fixture {
        /// The embedded cluster, unless the tests run against an external broker.
        cluster: Option<EmbeddedCluster>,
        bootstrap: String,
        source: String,
        dlq: String,
        /// The source records, by index; dead letter `i` is at `positions[i]`.
        records: Vec<Record>,
        positions: Vec<(i32, i64)>,
    }

    impl Fixture {
        async fn new() -> Self {
            let (cluster, bootstrap) = match std::env::var("KASM_TEST_BOOTSTRAP") {
                Ok(b) if !b.trim().is_empty() => (None, b.trim().to_owned()),
                _ => {
                    let c = EmbeddedCluster::start(3).unwrap();
                    let b = c.bootstrap_servers().to_owned();
                    (Some(c), b)
                }
            };
            let source = unique("orders");
            let dlq = format!("{source}.dlq");
            create_topic(cluster.as_ref(), &bootstrap, &source, 3).await;
            create_topic(cluster.as_ref(), &bootstrap, &dlq, 2).await;
            let mut records = Vec::new();
            let mut letters = Vec::new();
            for i in 0..5usize {
                let payload = match i {
                    1 => vec![0xff, 0x00, 0xfe, b'x'],
                    3 => "é".repeat(4 << 10).into_bytes(),
                    _ => format!(r#"{{"event_id":"e{i}","n":{i}}}"#).into_bytes(),
                };
                let record = Record {
                    topic: source.clone(),
                    partition: (i % 3) as i32,
                    offset: 10 + i as i64,
                    key: Some(format!("k{i}").into_bytes()),
                    payload: Some(payload.clone()),
                    headers: vec![
                        ("event-id".to_owned(), format!("e{i}").into_bytes()),
                        ("trace".to_owned(), format!("t{i}").into_bytes()),
                    ],
                    timestamp_ms: Some(1_700_000_000_000 + i as i64),
                };
                letters.push((
                    i32::from(i >= 3),
                    record.key.clone(),
                    payload,
                    dead_letter_headers(&record, i),
                ));
                records.push(record);
            }
            let positions = write(&bootstrap, &dlq, &letters).await;
            assert_eq!(positions, vec![(0, 0), (0, 1), (0, 2), (1, 0), (1, 1)]);
            Self {
                cluster,
                bootstrap,
                source,
                dlq,
                records,
                positions,
            }
        }

        fn bootstrap(&self) -> &str {
            &self.bootstrap
        }

        fn producer(&self) -> KafkaProducer {
            KafkaProducer::new(&env(self.bootstrap()), &[]).unwrap()
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn list_decodes_every_dead_letter_in_order_and_pages_walk_them_once() {
        let f = Fixture::new().await;
        let page = list(config(f.bootstrap()), &f.dlq, None, 100)
            .await
            .unwrap();
        assert_eq!(page.next, None);
        let got: Vec<(i32, i64)> = page
            .records
            .iter()
            .map(|r| (r.partition, r.offset))
            .collect();
        assert_eq!(got, f.positions);
        for (i, (dl, rec)) in page.records.iter().zip(&f.records).enumerate() {
            let p = &dl.provenance;
            assert_eq!(p.source_topic.as_deref(), Some(f.source.as_str()));
            assert_eq!(p.source_partition, Some(rec.partition));
            assert_eq!(p.source_offset, Some(rec.offset));
            assert_eq!(p.source_timestamp_ms, rec.timestamp_ms);
            assert_eq!(p.handler.as_deref(), Some("audit"));
            assert_eq!(p.group.as_deref(), Some("kasm.audit"));
            assert_eq!(p.component.as_deref(), Some("abc123"));
            assert_eq!(p.event_id, Some(format!("e{i}")));
            let kind = if i.is_multiple_of(2) {
                "retries-exhausted"
            } else {
                "trap"
            };
            assert_eq!(p.error_kind.as_deref(), Some(kind));
            assert_eq!(p.error_message, Some(format!("boom {i}")));
            assert_eq!(p.attempts, Some(i as u32));
            assert_eq!(p.first_failure_ms, Some(1_000 + i as i64));
            assert_eq!(p.last_failure_ms, Some(2_000 + i as i64));
            assert_eq!(dl.replay_count, 0);
            assert_eq!(
                dl.headers,
                vec![
                    ("event-id".to_owned(), format!("e{i}")),
                    ("trace".to_owned(), format!("t{i}")),
                ]
            );
            assert_eq!(dl.key, Some(format!("k{i}")));
            assert!(dl.timestamp_ms.is_some());
            let bytes = rec.payload.as_deref().unwrap();
            assert_eq!(dl.payload_bytes, bytes.len());
            match i {
                1 => {
                    assert_eq!(dl.payload, "ff00fe78");
                    assert_eq!(dl.payload_encoding, PayloadEncoding::Hex);
                    assert!(!dl.payload_truncated);
                }
                3 => {
                    assert_eq!(dl.payload_encoding, PayloadEncoding::Utf8);
                    assert!(dl.payload_truncated);
                    assert_eq!(dl.payload, "é".repeat(PREVIEW_LIMIT / 2));
                }
                _ => {
                    assert_eq!(dl.payload.as_bytes(), bytes);
                    assert!(!dl.payload_truncated);
                }
            }
        }

        // Pages of 2: (0,0) (0,1) | (0,2) (1,0) | (1,1), each record exactly once.
        let mut seen = Vec::new();
        let mut cursor: Option<Cursor> = None;
        let mut pages = 0;
        loop {
            pages += 1;
            assert!(pages <= 10, "paging does not end");
            let page = list(config(f.bootstrap()), &f.dlq, cursor.as_ref(), 2)
                .await
                .unwrap();
            assert!(page.records.len() <= 2);
            seen.extend(page.records.iter().map(|r| (r.partition, r.offset)));
            match page.next {
                // The cursor survives its text form (JSON, query strings).
                Some(c) => cursor = Some(c.to_string().parse().unwrap()),
                None => break,
            }
        }
        assert_eq!(seen, f.positions);
        assert_eq!(pages, 3);

        // A cursor past the end: an empty last page.
        let end: Cursor = "0:3,1:2".parse().unwrap();
        let page = list(config(f.bootstrap()), &f.dlq, Some(&end), 2)
            .await
            .unwrap();
        assert!(page.records.is_empty());
        assert_eq!(page.next, None);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn replay_all_restores_the_records_and_the_limit_stops_a_loop() {
        let f = Fixture::new().await;
        let producer = f.producer();
        let report = replay(config(f.bootstrap()), &producer, &f.dlq, &Selection::All, 2)
            .await
            .unwrap();
        assert_eq!(report.stopped, None);
        assert!(report.refused.is_empty(), "{:?}", report.refused);
        let done: Vec<(i32, i64)> = report
            .replayed
            .iter()
            .map(|r| (r.dlq_partition, r.dlq_offset))
            .collect();
        assert_eq!(done, f.positions);
        assert!(
            report
                .replayed
                .iter()
                .all(|r| r.topic == f.source && r.replay_count == 1)
        );

        let back = read_all(f.bootstrap(), &f.source, 5).await;
        assert_eq!(back.len(), 5);
        for r in &back {
            let event_id = String::from_utf8(header(&r.headers, "event-id")[0].to_vec()).unwrap();
            let i: usize = event_id[1..].parse().unwrap();
            let original = &f.records[i];
            assert_eq!(r.key, original.key);
            assert_eq!(r.payload, original.payload);
            let mut want = original.headers.clone();
            want.push((REPLAY_COUNT_HEADER.to_owned(), b"1".to_vec()));
            // Then the replay id (fresh) and the handler it is for.
            let (ids, rest): (Vec<_>, Vec<_>) = r
                .headers
                .iter()
                .cloned()
                .partition(|(k, _)| k == "kasm-replay-id");
            assert_eq!(ids.len(), 1, "one replay id");
            let rest: Vec<_> = rest
                .into_iter()
                .filter(|(k, _)| k != "kasm-replay-handler")
                .collect();
            assert_eq!(rest, want, "record e{i}: kasm-dlq-* removed, the rest kept");
            let entry = report
                .replayed
                .iter()
                .find(|x| x.event_id.as_deref() == Some(event_id.as_str()))
                .unwrap();
            assert_eq!((entry.partition, entry.offset), (r.partition, r.offset));
        }

        // The replays fail again: their dead letters carry kasm-replay-count = 1.
        let again: Vec<_> = back
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let rec = Record {
                    topic: f.source.clone(),
                    partition: r.partition,
                    offset: r.offset,
                    key: r.key.clone(),
                    payload: r.payload.clone(),
                    headers: r.headers.clone(),
                    timestamp_ms: None,
                };
                (
                    0,
                    r.key.clone(),
                    r.payload.clone().unwrap(),
                    dead_letter_headers(&rec, i),
                )
            })
            .collect();
        let positions = write(f.bootstrap(), &f.dlq, &again).await;
        let listed = list(config(f.bootstrap()), &f.dlq, None, 100)
            .await
            .unwrap();
        assert_eq!(
            listed
                .records
                .iter()
                .filter(|r| r.replay_count == 1)
                .count(),
            5
        );

        // At the limit (1): refused, nothing written.
        let sel = Selection::Records(positions.clone());
        let report = replay(config(f.bootstrap()), &producer, &f.dlq, &sel, 1)
            .await
            .unwrap();
        assert!(report.replayed.is_empty());
        assert_eq!(report.refused.len(), 5);
        for r in &report.refused {
            assert_eq!(r.kind, RefusalKind::ReplayLimit);
            assert!(r.reason.contains("limit is 1"), "{}", r.reason);
        }

        // Under a higher limit one goes through, with count 2 and a single count header.
        let sel = Selection::Records(vec![positions[0]]);
        let report = replay(config(f.bootstrap()), &producer, &f.dlq, &sel, 2)
            .await
            .unwrap();
        assert_eq!(report.replayed.len(), 1, "{report:?}");
        assert_eq!(report.replayed[0].replay_count, 2);
        let back = read_all(f.bootstrap(), &f.source, 6).await;
        assert_eq!(back.len(), 6, "only the one replay was written");
        let last = back
            .iter()
            .find(|r| {
                (r.partition, r.offset) == (report.replayed[0].partition, report.replayed[0].offset)
            })
            .unwrap();
        assert_eq!(
            header(&last.headers, REPLAY_COUNT_HEADER),
            vec![b"2".as_slice()]
        );
        assert!(
            last.headers
                .iter()
                .all(|(k, _)| !k.starts_with(DLQ_HEADER_PREFIX))
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn replay_refuses_what_does_not_exist_or_has_no_source_and_writes_nothing() {
        let f = Fixture::new().await;
        // Partition 1 offset 2: not a dead letter. Offset 3: from a topic that is gone.
        let gone = Record {
            topic: unique("deleted"),
            partition: 0,
            offset: 0,
            key: None,
            payload: Some(b"x".to_vec()),
            headers: Vec::new(),
            timestamp_ms: None,
        };
        let extra = vec![
            (
                1,
                None,
                b"plain".to_vec(),
                vec![("trace".to_owned(), b"t".to_vec())],
            ),
            (1, None, b"x".to_vec(), dead_letter_headers(&gone, 9)),
        ];
        assert_eq!(
            write(f.bootstrap(), &f.dlq, &extra).await,
            vec![(1, 2), (1, 3)]
        );

        let producer = f.producer();
        let sel = Selection::Records(vec![(0, 999), (7, 0), (1, 2), (1, 3), (0, 999)]);
        let report = replay(config(f.bootstrap()), &producer, &f.dlq, &sel, 3)
            .await
            .unwrap();
        assert!(report.replayed.is_empty(), "{report:?}");
        assert_eq!(report.stopped, None);
        let kinds: Vec<(i32, i64, RefusalKind)> = report
            .refused
            .iter()
            .map(|r| (r.dlq_partition, r.dlq_offset, r.kind))
            .collect();
        assert_eq!(
            kinds,
            vec![
                (0, 999, RefusalKind::NotFound),
                (1, 2, RefusalKind::NoSourceTopic),
                (1, 3, RefusalKind::SourceTopicMissing),
                (7, 0, RefusalKind::NotFound),
            ]
        );
        assert!(read_all(f.bootstrap(), &f.source, 0).await.is_empty());
        assert!(read_all(f.bootstrap(), &gone.topic, 0).await.is_empty());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_write_stops_the_replay_and_the_report_says_where() {
        let f = Fixture::new().await;
        let Some(cluster) = &f.cluster else {
            return; // fault injection needs the embedded cluster
        };
        let producer = f.producer();
        cluster
            .request_errors(
                RDKafkaApiKey::Produce,
                &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED; 10],
            )
            .unwrap();
        let sel = Selection::Records(vec![(0, 0), (0, 1), (1, 0)]);
        let report = replay(config(f.bootstrap()), &producer, &f.dlq, &sel, 3)
            .await
            .unwrap();
        cluster
            .clear_request_errors(RDKafkaApiKey::Produce)
            .unwrap();
        assert!(report.replayed.is_empty(), "{report:?}");
        let stopped = report.stopped.clone().unwrap();
        assert!(stopped.contains(&f.source), "{stopped}");
        let failed: Vec<_> = report
            .refused
            .iter()
            .filter(|r| r.kind == RefusalKind::WriteFailed)
            .collect();
        assert_eq!(failed.len(), 1, "{report:?}");
        assert_eq!(report.refused.len(), 3);
        assert!(
            report
                .refused
                .iter()
                .all(|r| matches!(r.kind, RefusalKind::WriteFailed | RefusalKind::NotAttempted))
        );
        assert!(read_all(f.bootstrap(), &f.source, 0).await.is_empty());
    }

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

    #[test]
    fn replay_headers_drop_dlq_ones_and_replace_the_count() {
        let h = vec![
            ("a".to_owned(), b"1".to_vec()),
            (REPLAY_COUNT_HEADER.to_owned(), b"1".to_vec()),
            ("kasm-dlq-source-topic".to_owned(), b"t".to_vec()),
            (REPLAY_COUNT_HEADER.to_owned(), b"2".to_vec()),
        ];
        assert_eq!(replay_count(&h), Ok(2));
        let mut h2 = h.clone();
        h2.push(("kasm-dlq-handler".to_owned(), b"audit".to_vec()));
        let out = replay_headers(&h2, 3);
        assert_eq!(
            out[..2].to_vec(),
            vec![
                ("a".to_owned(), b"1".to_vec()),
                (REPLAY_COUNT_HEADER.to_owned(), b"3".to_vec()),
            ]
        );
        assert_eq!(out[2].0, "kasm-replay-id");
        assert_ne!(replay_headers(&h2, 3)[2], out[2], "a fresh id per replay");
        assert_eq!(
            out[3],
            ("kasm-replay-handler".to_owned(), b"audit".to_vec())
        );
        assert_eq!(out.len(), 4);
        let bad = vec![(REPLAY_COUNT_HEADER.to_owned(), b"many".to_vec())];
        assert_eq!(replay_count(&bad), Err("many".to_owned()));
        assert_eq!(replay_count(&[]), Ok(0));
    }

    #[test]
    fn decode_keeps_unparsable_kasm_headers_visible() {
        let r = RawRecord {
            partition: 0,
            offset: 0,
            timestamp_ms: None,
            key: None,
            payload: None,
            headers: vec![
                ("kasm-dlq-attempts".to_owned(), b"lots".to_vec()),
                ("kasm-dlq-new-thing".to_owned(), b"v".to_vec()),
                (REPLAY_COUNT_HEADER.to_owned(), b"4".to_vec()),
            ],
        };
        let d = decode(&r);
        assert_eq!(d.provenance.attempts, None);
        assert_eq!(d.replay_count, 4);
        assert_eq!(
            d.headers,
            vec![
                ("kasm-dlq-attempts".to_owned(), "lots".to_owned()),
                ("kasm-dlq-new-thing".to_owned(), "v".to_owned()),
            ]
        );
        assert_eq!((d.payload.as_str(), d.payload_bytes), ("", 0));
    }
}
