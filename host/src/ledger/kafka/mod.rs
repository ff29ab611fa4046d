//! [`KafkaLedger`]: the ledger durable in Kafka, so that it follows each partition to whichever
//! host owns it.
//!
//! # Where an entry lives
//!
//! Each handler has a ledger topic (`<group_id>.ledger` unless configured), compacted and
//! partitioned like its source topics: the entries of a batch read from source partition `p`
//! are written to ledger partition `p` as one record (see [`record`] for its format).
//! [`Ledger::record_many`] returns once every record is acknowledged by the broker (`acks=all`,
//! through the host's idempotent producer); only then does the pipeline report the batch's
//! offsets done, so an offset is committed only behind acknowledged ledger writes.
//!
//! # The local cache
//!
//! The host keeps in memory the entries it wrote and the ones it restored: lookups never leave
//! the process. When a partition is assigned, [`Ledger::restore`] reads the ledger partition
//! from where this process last applied it (a partition it owned before) or from the start of
//! the log (a partition new to it, or a new process with an empty data folder), up to the end
//! it had when the read began. The previous owner has finished and recorded its batch before
//! the group hands the partition on (a revoke drains first), so that end covers everything it
//! recorded. Entries outside the retention window are not applied; the topic itself forgets
//! them through `cleanup.policy=compact,delete` with `retention.ms` = the handler's
//! `ledger_retention`.
//!
//! Entries are facts ("this handler finished this event"), true whichever host wrote them, so
//! the cache keeps a released partition's entries (they still catch a business duplicate that
//! arrives on a partition this host owns); sweeps bound it by age and count like any ledger.
//!
//! # Zombies
//!
//! A host that lost a partition (its session expired, it was too slow to poll) is told by its
//! consumer at the next rebalance callback; from then on [`Ledger::release`] has removed the
//! partition from the owned set and every write for it is refused. What the lost host wrote
//! between the broker's decision and its own discovery of it is not read by the new owner if
//! the new owner's restore had already passed it: that window is stated in the README.

mod record;
mod restore;
mod topic;

pub use record::{Batch, Decoded, Item, decode};

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use async_trait::async_trait;
use rdkafka::ClientConfig;

use crate::config::KafkaEnv;
use crate::kafka::producer::{KafkaProducer, OutRecord};
use crate::kafka::{Role, base_config};
use crate::ledger::{
    Ledger, LedgerEntry, LedgerOutcome, Restored, abbreviate, check_key, retention_cutoff,
};
use crate::now_ms;

use restore::*;

/// Metadata and watermark requests.
pub(super) const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// One remembered event, as the cache keeps it: the topic and the component version are
/// shared between entries.
#[derive(Debug, Clone)]
pub(super) struct Slim {
    pub(super) at_ms: i64,
    pub(super) offset: i64,
    pub(super) partition: i32,
    pub(super) outcome: LedgerOutcome,
    pub(super) topic: Arc<str>,
    pub(super) sha: Arc<str>,
}

/// One handler's entries.
#[derive(Debug, Default)]
pub(super) struct HandlerCache {
    pub(super) map: HashMap<Box<str>, Slim>,
    /// Topic names and component versions, one copy each.
    pub(super) interned: HashSet<Arc<str>>,
}

impl HandlerCache {
    pub(super) fn intern(&mut self, s: &str) -> Arc<str> {
        if let Some(a) = self.interned.get(s) {
            return a.clone();
        }
        let a: Arc<str> = Arc::from(s);
        self.interned.insert(a.clone());
        a
    }

    pub(super) fn insert(&mut self, key: &str, e: &LedgerEntry) {
        let slim = Slim {
            at_ms: e.at_ms,
            offset: e.offset,
            partition: e.partition,
            outcome: e.outcome,
            topic: self.intern(&e.topic),
            sha: self.intern(&e.component_sha256),
        };
        self.put(key, slim);
    }

    fn put(&mut self, key: &str, slim: Slim) {
        match self.map.get_mut(key) {
            Some(old) => *old = slim,
            None => {
                self.map.insert(Box::from(key), slim);
            }
        }
    }

    /// Insert what a ledger-topic record holds, leaving out entries older than `cutoff_ms`;
    /// returns how many went in.
    pub(super) fn insert_decoded(&mut self, d: &Decoded<'_>, cutoff_ms: i64) -> u64 {
        match d {
            Decoded::One(key, e) if e.at_ms >= cutoff_ms => {
                self.insert(key, e);
                1
            }
            Decoded::One(..) => 0,
            Decoded::Batch(b) => self.insert_batch(b, cutoff_ms),
        }
    }

    /// Insert a batch's entries (its topic and component version interned once), leaving out
    /// those older than `cutoff_ms`; returns how many went in.
    pub(super) fn insert_batch(&mut self, b: &Batch<'_>, cutoff_ms: i64) -> u64 {
        let (topic, sha) = (self.intern(b.topic), self.intern(b.component_sha256));
        let mut n = 0;
        for i in b.items.iter().filter(|i| i.at_ms >= cutoff_ms) {
            let slim = Slim {
                at_ms: i.at_ms,
                offset: i.offset,
                partition: b.partition,
                outcome: i.outcome,
                topic: topic.clone(),
                sha: sha.clone(),
            };
            self.put(i.key, slim);
            n += 1;
        }
        n
    }
}

/// A source partition a host owns: `(handler, topic, partition)`.
pub(super) type Owned = (String, String, i32);

/// A [`Ledger`] durable in a ledger topic per handler, with the entries of the host's
/// partitions cached in memory; see the module docs.
pub struct KafkaLedger {
    producer: KafkaProducer,
    /// What restore consumers and the admin client are made from.
    env: KafkaEnv,
    passthrough: Vec<(String, String)>,
    /// Ledger topic and retention of each handler.
    topics: RwLock<HashMap<String, (String, Duration)>>,
    cache: Arc<RwLock<HashMap<String, HandlerCache>>>,
    /// `(handler, ledger partition)` → the ledger-topic offset below which everything is in
    /// the cache.
    positions: Mutex<HashMap<(String, i32), i64>>,
    /// The source partitions writes are taken for.
    owned: Mutex<HashSet<Owned>>,
    /// Whether the broker is librdkafka's embedded cluster (asked once).
    embedded: std::sync::OnceLock<bool>,
}

impl std::fmt::Debug for KafkaLedger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaLedger")
            .field("topics", &self.topics)
            .finish_non_exhaustive()
    }
}

impl KafkaLedger {
    /// A ledger writing through `producer`, reading with clients made from `env` and the
    /// `[kafka]` properties.
    pub fn new(producer: KafkaProducer, env: &KafkaEnv, passthrough: &[(String, String)]) -> Self {
        Self {
            producer,
            env: env.clone(),
            passthrough: passthrough.to_vec(),
            topics: RwLock::new(HashMap::new()),
            cache: Arc::new(RwLock::new(HashMap::new())),
            positions: Mutex::new(HashMap::new()),
            owned: Mutex::new(HashSet::new()),
            embedded: std::sync::OnceLock::new(),
        }
    }

    /// A consumer that reads ledger partitions by assignment (no group, nothing committed).
    pub(super) fn reader_config(&self) -> ClientConfig {
        let mut c = base_config(&self.env, &self.passthrough, Role::Consumer);
        for key in ["group.instance.id", "isolation.level"] {
            c.remove(key);
        }
        // librdkafka assigns only in a consumer with a group id; this one never joins the
        // group (no subscribe) and never commits.
        c.set("group.id", "kasm-ledger-reader")
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("enable.partition.eof", "true")
            .set("auto.offset.reset", "earliest")
            .set("allow.auto.create.topics", "false")
            .set("fetch.wait.max.ms", "10")
            // A fetch refused (a topic just created, whose partition's leader is not known
            // yet) is tried again after this, not librdkafka's 500 ms: the partition's first
            // record waits for the restore.
            .set("fetch.error.backoff.ms", "10")
            .set("topic.metadata.refresh.fast.interval.ms", "10")
            .set("max.partition.fetch.bytes", "16777216")
            .set("fetch.max.bytes", "67108864")
            .set("queued.max.messages.kbytes", "262144");
        c
    }

    pub(super) fn topic_of(&self, handler: &str) -> anyhow::Result<(String, Duration)> {
        self.topics
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(handler)
            .cloned()
            .ok_or_else(|| anyhow!("handler {handler} has no ledger topic registered"))
    }

    pub(super) fn is_owned(&self, handler: &str, topic: &str, partition: i32) -> bool {
        self.owned
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(&(handler.to_owned(), topic.to_owned(), partition))
    }

    pub(super) fn apply(&self, handler: &str, batches: &[Batch<'_>]) {
        let mut cache = self.cache.write().unwrap_or_else(PoisonError::into_inner);
        let h = cache.entry(handler.to_owned()).or_default();
        for b in batches {
            h.insert_batch(b, i64::MIN);
        }
    }

    /// After this host wrote ledger offsets `written` of partition `lp`: if they directly
    /// follow what the cache had, the cache now has everything below the last of them.
    pub(super) fn advance(&self, handler: &str, lp: i32, mut written: Vec<i64>) {
        written.sort_unstable();
        let (Some(&first), Some(&last)) = (written.first(), written.last()) else {
            return;
        };
        let mut positions = self
            .positions
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(pos) = positions.get_mut(&(handler.to_owned(), lp))
            && *pos == first
            && usize::try_from(last - first + 1).ok() == Some(written.len())
        {
            *pos = last + 1;
        }
    }
}

#[async_trait]
impl Ledger for KafkaLedger {
    async fn get(&self, handler: &str, event_id: &str) -> anyhow::Result<Option<LedgerEntry>> {
        let cache = self.cache.read().unwrap_or_else(PoisonError::into_inner);
        Ok(cache
            .get(handler)
            .and_then(|h| h.map.get(event_id))
            .map(|s| LedgerEntry {
                outcome: s.outcome,
                at_ms: s.at_ms,
                component_sha256: s.sha.to_string(),
                topic: s.topic.to_string(),
                partition: s.partition,
                offset: s.offset,
            }))
    }

    async fn contains_many(&self, handler: &str, event_ids: &[&str]) -> anyhow::Result<Vec<bool>> {
        let cache = self.cache.read().unwrap_or_else(PoisonError::into_inner);
        Ok(match cache.get(handler) {
            Some(h) => event_ids.iter().map(|id| h.map.contains_key(*id)).collect(),
            None => vec![false; event_ids.len()],
        })
    }

    async fn record(
        &self,
        handler: &str,
        event_id: &str,
        entry: LedgerEntry,
    ) -> anyhow::Result<()> {
        self.record_many(handler, vec![(event_id.to_owned(), entry)])
            .await
    }

    async fn record_many(
        &self,
        handler: &str,
        entries: Vec<(String, LedgerEntry)>,
    ) -> anyhow::Result<()> {
        let (topic, _) = self.topic_of(handler)?;
        let mut asked: Option<(&str, i32)> = None;
        for (key, entry) in &entries {
            check_key(handler, key).with_context(|| {
                format!(
                    "ledger record handler={handler} event_id={}",
                    abbreviate(key)
                )
            })?;
            // A batch's entries share one source partition: the owned set is asked once.
            if asked == Some((entry.topic.as_str(), entry.partition)) {
                continue;
            }
            if !self.is_owned(handler, &entry.topic, entry.partition) {
                bail!(
                    "handler={handler}: {}/{} is not assigned to this host (any more): its ledger entries are not written",
                    entry.topic,
                    entry.partition
                );
            }
            asked = Some((entry.topic.as_str(), entry.partition));
        }
        let batches = record::batches(&entries);
        let mut pending = Vec::new();
        for r in record::encode(&batches)
            .with_context(|| format!("handler={handler}: encoding ledger entries"))?
        {
            let p = self
                .producer
                .enqueue(OutRecord {
                    topic: &topic,
                    key: Some(r.key.as_bytes()),
                    payload: &r.value,
                    headers: &[],
                    partition: Some(r.partition),
                })
                .await
                .with_context(|| format!("handler={handler}: writing ledger entries {}", r.key))?;
            pending.push((r.partition, p));
        }
        let mut written: HashMap<i32, Vec<i64>> = HashMap::new();
        let mut failed = None;
        for (lp, p) in pending {
            match p.acknowledged().await {
                Ok(d) => written.entry(lp).or_default().push(d.offset),
                Err(e) => failed = Some(e),
            }
        }
        if let Some(e) = failed {
            return Err(e).with_context(|| format!("handler={handler}: writing ledger entries"));
        }
        self.apply(handler, &batches);
        for (lp, offsets) in written {
            self.advance(handler, lp, offsets);
        }
        Ok(())
    }

    async fn sweep(
        &self,
        handler: &str,
        retention: Duration,
        max_entries: u64,
    ) -> anyhow::Result<u64> {
        let cutoff = retention_cutoff(now_ms(), retention);
        let mut cache = self.cache.write().unwrap_or_else(PoisonError::into_inner);
        let Some(h) = cache.get_mut(handler) else {
            return Ok(0);
        };
        let before = h.map.len();
        h.map.retain(|_, s| s.at_ms >= cutoff);
        let max = usize::try_from(max_entries).unwrap_or(usize::MAX);
        if h.map.len() > max {
            // The oldest go: find the age of the `max`-th newest, drop what is older (and, among
            // entries of that same age, as many as needed, by key).
            let mut ages: Vec<(i64, &str)> =
                h.map.iter().map(|(k, s)| (s.at_ms, k.as_ref())).collect();
            let excess = ages.len() - max;
            ages.select_nth_unstable(excess - 1);
            let doomed: Vec<Box<str>> = ages[..excess].iter().map(|(_, k)| Box::from(*k)).collect();
            for k in doomed {
                h.map.remove(&k);
            }
        }
        if h.map.len() < h.map.capacity() / 4 {
            h.map.shrink_to_fit();
        }
        Ok((before - h.map.len()) as u64)
    }

    async fn len(&self, handler: &str) -> anyhow::Result<u64> {
        let cache = self.cache.read().unwrap_or_else(PoisonError::into_inner);
        Ok(cache.get(handler).map_or(0, |h| h.map.len() as u64))
    }

    async fn restore(
        &self,
        handler: &str,
        topic: &str,
        partition: i32,
    ) -> anyhow::Result<Option<Restored>> {
        let (ledger_topic, retention) = self.topic_of(handler)?;
        let from = self
            .positions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&(handler.to_owned(), partition))
            .copied();
        let config = self.reader_config();
        let mut target = RestoreTarget {
            cache: self.cache.clone(),
            handler: handler.to_owned(),
            // Entries already outside the window are not applied (a sweep would drop them).
            cutoff_ms: retention_cutoff(now_ms(), retention),
            applied: 0,
        };
        let lt = ledger_topic.clone();
        let (start, end, entries) = tokio::task::spawn_blocking(move || {
            let (start, end) =
                read_partition(&config, &lt, partition, from, |chunk| target.apply(chunk))?;
            anyhow::Ok((start, end, target.applied))
        })
        .await
        .context("ledger restore task failed")?
        .with_context(|| {
            format!(
                "handler={handler}: restoring the ledger of {topic}/{partition} from {ledger_topic}"
            )
        })?;
        {
            let mut positions = self
                .positions
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let pos = positions
                .entry((handler.to_owned(), partition))
                .or_insert(end);
            *pos = (*pos).max(end);
        }
        self.owned
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert((handler.to_owned(), topic.to_owned(), partition));
        Ok(Some(Restored {
            entries,
            from: start,
            to: end,
        }))
    }

    fn release(&self, handler: &str, topic: &str, partition: i32) {
        self.owned
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&(handler.to_owned(), topic.to_owned(), partition));
    }
}
