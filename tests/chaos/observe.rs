//! What the campaign sees of the broker: every record of the round's topics, read
//! incrementally, and snapshots of committed offsets and topic ends.
//!
//! A snapshot reads the group's committed offsets *first* and the ends of the output and
//! dead-letter topics *after*: the host writes a record's output (or dead letter) and waits for
//! the acknowledgement before its offset can be committed, so everything that was committed at
//! the snapshot has its output below the ends read afterwards, and anything at or past those
//! ends was written after the snapshot.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use crate::broker::Got;

/// Every record of a few topics, read from the beginning and kept up to date on demand.
pub struct TopicLog {
    consumer: BaseConsumer,
    partitions: Vec<(String, i32)>,
    next: HashMap<(String, i32), i64>,
    records: HashMap<String, Vec<Got>>,
}

impl std::fmt::Debug for TopicLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TopicLog")
            .field("partitions", &self.partitions)
            .finish_non_exhaustive()
    }
}

impl TopicLog {
    /// Read `topics` (name, partition count) on `bootstrap` from the beginning.
    pub fn new(bootstrap: &str, topics: &[(&str, i32)]) -> anyhow::Result<Self> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("group.id", crate::unique("chaos-reader"))
            .set("enable.auto.commit", "false")
            .set("reconnect.backoff.max.ms", "1000")
            .set("fetch.wait.max.ms", "50")
            .create()
            .context("creating the reader")?;
        let mut tpl = TopicPartitionList::new();
        let mut partitions = Vec::new();
        for (t, n) in topics {
            for p in 0..*n {
                tpl.add_partition_offset(t, p, Offset::Beginning)
                    .context("building the assignment")?;
                partitions.push(((*t).to_owned(), p));
            }
        }
        consumer.assign(&tpl).context("assigning the reader")?;
        Ok(Self {
            consumer,
            partitions,
            next: HashMap::new(),
            records: HashMap::new(),
        })
    }

    /// High watermarks (one past the last record) of `topic`'s partitions.
    pub fn ends(&self, topic: &str, timeout: Duration) -> anyhow::Result<HashMap<i32, i64>> {
        let mut out = HashMap::new();
        for (t, p) in self.partitions.iter().filter(|(t, _)| t == topic) {
            let (_, high) = self
                .consumer
                .fetch_watermarks(t, *p, timeout)
                .with_context(|| format!("watermarks of {t}/{p}"))?;
            out.insert(*p, high);
        }
        Ok(out)
    }

    /// Read until every partition is at the end it had when this was called; false if
    /// `timeout` passed first (or the ends could not be read).
    pub fn catch_up(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut ends = HashMap::new();
        let topics: Vec<String> = {
            let mut t: Vec<String> = self.partitions.iter().map(|(t, _)| t.clone()).collect();
            t.dedup();
            t
        };
        for t in &topics {
            match self.ends(t, Duration::from_secs(5)) {
                Ok(e) => {
                    for (p, h) in e {
                        ends.insert((t.clone(), p), h);
                    }
                }
                Err(_) => return false,
            }
        }
        loop {
            let behind = ends
                .iter()
                .any(|(tp, h)| self.next.get(tp).copied().unwrap_or(0) < *h);
            if !behind {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            if let Some(Ok(m)) = self.consumer.poll(Duration::from_millis(100)) {
                use rdkafka::message::Message as _;
                let topic = m.topic().to_owned();
                self.next
                    .insert((topic.clone(), m.partition()), m.offset() + 1);
                self.records
                    .entry(topic)
                    .or_default()
                    .push(Got::from_message(&m));
            }
        }
    }

    /// The records of `topic` read so far, in the order read (per partition: offset order).
    pub fn records(&self, topic: &str) -> &[Got] {
        self.records.get(topic).map_or(&[], Vec::as_slice)
    }
}

/// A client that reads the committed offsets of one group (it never joins the group).
pub struct Committed {
    client: BaseConsumer,
    topic: String,
    partitions: i32,
}

impl std::fmt::Debug for Committed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Committed")
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

impl Committed {
    /// For `group` on `topic` (`partitions` partitions).
    pub fn new(bootstrap: &str, group: &str, topic: &str, partitions: i32) -> anyhow::Result<Self> {
        let client: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("reconnect.backoff.max.ms", "1000")
            .create()
            .context("creating the committed-offsets client")?;
        Ok(Self {
            client,
            topic: topic.to_owned(),
            partitions,
        })
    }

    /// End offset (high watermark) per partition of the topic.
    pub fn ends(&self, timeout: Duration) -> anyhow::Result<HashMap<i32, i64>> {
        let mut out = HashMap::new();
        for p in 0..self.partitions {
            let (_, high) = self
                .client
                .fetch_watermarks(&self.topic, p, timeout)
                .with_context(|| format!("watermarks of {}/{p}", self.topic))?;
            out.insert(p, high);
        }
        Ok(out)
    }

    /// Committed offset per partition (0 where nothing is committed yet).
    pub fn get(&self, timeout: Duration) -> anyhow::Result<HashMap<i32, i64>> {
        let mut tpl = TopicPartitionList::new();
        for p in 0..self.partitions {
            tpl.add_partition(&self.topic, p);
        }
        let got = self
            .client
            .committed_offsets(tpl, timeout)
            .with_context(|| format!("committed offsets on {}", self.topic))?;
        let mut out = HashMap::new();
        for e in got.elements() {
            e.error()
                .with_context(|| format!("committed offset of {}/{}", self.topic, e.partition()))?;
            let o = match e.offset() {
                Offset::Offset(o) => o,
                _ => 0,
            };
            out.insert(e.partition(), o);
        }
        Ok(out)
    }
}
