//! Reading a topic to its end, as of the call. A group-less consumer (`assign` + start offsets; librdkafka wants a `group.id`,
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

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use rdkafka::consumer::{Consumer as _, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message as _;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use crate::kafka::Record;

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
pub(super) const QUERY_TIMEOUT: Duration = Duration::from_secs(10);

/// Watermarks of a partition as queried when the reader connected.
#[derive(Debug, Clone, Copy)]
pub(super) struct Marks {
    pub(super) low: i64,
    pub(super) high: i64,
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
pub(super) struct Reader {
    pub(super) consumer: Arc<StreamConsumer>,
    topic: String,
    pub(super) marks: BTreeMap<i32, Marks>,
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
    pub(super) async fn connect(mut config: ClientConfig, topic: &str) -> anyhow::Result<Self> {
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
    pub(super) fn start(&mut self, plan: BTreeMap<i32, (i64, Option<i64>)>) -> anyhow::Result<()> {
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
    pub(super) fn active(&self) -> impl Iterator<Item = i32> + '_ {
        self.parts.iter().filter(|(_, s)| !s.done).map(|(&p, _)| p)
    }

    /// One past the last offset read from `partition` (its start before any).
    pub(super) fn position(&self, partition: i32) -> Option<i64> {
        self.parts.get(&partition).map(|s| s.next)
    }

    /// Stop reading `partition`.
    pub(super) fn finish(&mut self, partition: i32) {
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
    pub(super) async fn next(&mut self) -> anyhow::Result<Option<Record>> {
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
                let record = keep.then(|| Record::from_message(&m));
                drop(m);
                self.finish(p);
                match record {
                    Some(r) => return Ok(Some(r)),
                    None => continue,
                }
            }
            return Ok(Some(Record::from_message(&m)));
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
    pub(super) async fn close(self) {
        let consumer = self.consumer;
        if let Err(e) = tokio::task::spawn_blocking(move || drop(consumer)).await {
            tracing::debug!(error = %e, "closing the dead-letter reader");
        }
    }
}
