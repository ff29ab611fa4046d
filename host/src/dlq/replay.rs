//! Replaying: a replay writes a dead letter to its source topic (`kasm-dlq-source-topic`) with its
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

use anyhow::Context as _;
use rdkafka::ClientConfig;
use rdkafka::consumer::Consumer as _;
use serde::{Deserialize, Serialize};

use crate::kafka::Record;
use crate::kafka::producer::{KafkaProducer, OutRecord};

use super::reader::{QUERY_TIMEOUT, Reader};
use super::{
    DLQ_HEADER_PREFIX, REPLAY_COUNT_HEADER, REPLAY_HANDLER_HEADER, REPLAY_ID_HEADER, last_header,
};

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
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
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

impl RefusalKind {
    /// Its JSON name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NotFound => "not-found",
            Self::ReplayLimit => "replay-limit",
            Self::InvalidReplayCount => "invalid-replay-count",
            Self::NoSourceTopic => "no-source-topic",
            Self::SourceTopicMissing => "source-topic-missing",
            Self::SourceIsDeadLetterTopic => "source-is-dead-letter-topic",
            Self::WriteFailed => "write-failed",
            Self::NotAttempted => "not-attempted",
        }
    }
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
    r: &Record,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusal_kind_names_are_their_json_names() {
        for k in [
            RefusalKind::NotFound,
            RefusalKind::ReplayLimit,
            RefusalKind::InvalidReplayCount,
            RefusalKind::NoSourceTopic,
            RefusalKind::SourceTopicMissing,
            RefusalKind::SourceIsDeadLetterTopic,
            RefusalKind::WriteFailed,
            RefusalKind::NotAttempted,
        ] {
            assert_eq!(
                serde_json::to_string(&k).unwrap(),
                format!("\"{}\"", k.as_str())
            );
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
}
