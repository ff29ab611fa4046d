//! [`KafkaLedger`]: the ledger durable in Kafka, so that it follows each partition to whichever
//! host owns it.
//!
//! # Where an entry lives
//!
//! Each handler has a ledger topic (`<group_id>.ledger` unless configured), compacted and
//! partitioned like its source topics: the entry of an event read from source partition `p` is
//! written to ledger partition `p`, keyed by the event's ledger key, its value the version byte
//! and the postcard encoding of the [`LedgerEntry`] (the same value the file ledger stores).
//! [`Ledger::record_many`] returns once every entry is acknowledged by the broker (`acks=all`,
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

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};
use async_trait::async_trait;
use rdkafka::admin::{AdminClient, AdminOptions, NewPartitions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message as _;
use rdkafka::producer::{BaseProducer, Producer as _};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use crate::now_ms;

use super::{
    FORMAT_VERSION, Ledger, LedgerEntry, LedgerOutcome, Restored, abbreviate, check_key,
    retention_cutoff,
};
use crate::config::KafkaEnv;
use crate::kafka::producer::{KafkaProducer, OutRecord};
use crate::kafka::{Role, base_config};

/// How long a restore may go without reading anything before it fails (and is tried again).
const RESTORE_STALL: Duration = Duration::from_secs(30);

/// Entries applied to the cache per lock taken during a restore.
const RESTORE_CHUNK: usize = 16 * 1024;

/// How librdkafka's embedded (mock) cluster's id begins.
const EMBEDDED_CLUSTER_ID: &str = "mockCluster";

/// Metadata and watermark requests.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// The value stored for `entry`: the version byte, then postcard.
pub fn encode_value(entry: &LedgerEntry) -> anyhow::Result<Vec<u8>> {
    let mut v = vec![FORMAT_VERSION];
    v.extend(postcard::to_allocvec(entry).context("encoding a ledger entry")?);
    Ok(v)
}

/// The entry a stored value holds (see [`encode_value`]).
pub fn decode_value(v: &[u8]) -> anyhow::Result<LedgerEntry> {
    match v.split_first() {
        Some((&FORMAT_VERSION, rest)) => {
            postcard::from_bytes(rest).context("decoding a ledger entry")
        }
        Some((other, _)) => bail!(
            "ledger entry format version {other} is not known to this kasm (it knows {FORMAT_VERSION}); upgrade kasm"
        ),
        None => bail!("empty ledger entry"),
    }
}

/// One remembered event, as the cache keeps it: the topic and the component version are
/// shared between entries.
#[derive(Debug, Clone)]
struct Slim {
    at_ms: i64,
    offset: i64,
    partition: i32,
    outcome: LedgerOutcome,
    topic: Arc<str>,
    sha: Arc<str>,
}

/// One handler's entries.
#[derive(Debug, Default)]
struct HandlerCache {
    map: HashMap<Box<str>, Slim>,
    /// Topic names and component versions, one copy each.
    interned: HashSet<Arc<str>>,
}

impl HandlerCache {
    fn intern(&mut self, s: &str) -> Arc<str> {
        if let Some(a) = self.interned.get(s) {
            return a.clone();
        }
        let a: Arc<str> = Arc::from(s);
        self.interned.insert(a.clone());
        a
    }

    fn insert(&mut self, key: &str, e: &LedgerEntry) {
        let slim = Slim {
            at_ms: e.at_ms,
            offset: e.offset,
            partition: e.partition,
            outcome: e.outcome,
            topic: self.intern(&e.topic),
            sha: self.intern(&e.component_sha256),
        };
        match self.map.get_mut(key) {
            Some(old) => *old = slim,
            None => {
                self.map.insert(Box::from(key), slim);
            }
        }
    }
}

/// A source partition a host owns: `(handler, topic, partition)`.
type Owned = (String, String, i32);

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

    /// Use `ledger_topic` for `handler`, creating it if absent: compacted, entries kept for
    /// `retention`, with as many partitions as the largest of `sources`.
    pub async fn register(
        &self,
        handler: &str,
        ledger_topic: &str,
        sources: &[String],
        retention: Duration,
    ) -> anyhow::Result<()> {
        let admin_config = base_config(&self.env, &self.passthrough, Role::Producer);
        let probe = self.metadata_consumer()?;
        let (topic, sources2) = (ledger_topic.to_owned(), sources.to_vec());
        let (existing, needed) = tokio::task::spawn_blocking(move || {
            let needed = sources2
                .iter()
                .map(|s| partition_count(&probe, s))
                .collect::<anyhow::Result<Vec<_>>>()?
                .into_iter()
                .flatten()
                .max()
                .unwrap_or(1);
            anyhow::Ok((partition_count(&probe, &topic)?, needed))
        })
        .await
        .context("ledger topic check task failed")?
        .with_context(|| format!("handler={handler}: checking ledger topic {ledger_topic}"))?;
        match existing {
            Some(n) if n >= needed => {}
            Some(n) => {
                grow_topic(&admin_config, ledger_topic, needed)
                    .await
                    .with_context(|| {
                        format!(
                            "handler={handler}: ledger topic {ledger_topic} has {n} partitions and its sources {sources:?} have {needed}; \
                             it must have at least as many"
                        )
                    })?;
            }
            None => {
                self.create_topic(&admin_config, ledger_topic, needed, retention)
                    .await
                    .with_context(|| {
                        format!("handler={handler}: creating ledger topic {ledger_topic}")
                    })?;
                tracing::info!(
                    handler,
                    topic = ledger_topic,
                    partitions = needed,
                    "ledger topic created"
                );
            }
        }
        self.topics
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(handler.to_owned(), (ledger_topic.to_owned(), retention));
        Ok(())
    }

    async fn create_topic(
        &self,
        admin_config: &ClientConfig,
        topic: &str,
        partitions: i32,
        retention: Duration,
    ) -> anyhow::Result<()> {
        let admin: AdminClient<DefaultClientContext> =
            admin_config.create().context("creating an admin client")?;
        let retention_ms = retention.as_millis().to_string();
        let opts = AdminOptions::new()
            .operation_timeout(Some(REQUEST_TIMEOUT))
            .request_timeout(Some(REQUEST_TIMEOUT));
        let mut last = None;
        // librdkafka's embedded cluster (`kasm dev`, the tests) has no CreateTopics: a request
        // would wait out its timeout. It names itself in its cluster id.
        let embedded = match self.embedded.get() {
            Some(e) => *e,
            None => {
                let probe = self.metadata_consumer()?;
                let e = tokio::task::spawn_blocking(move || {
                    probe
                        .client()
                        .fetch_cluster_id(REQUEST_TIMEOUT)
                        .is_some_and(|id| id.starts_with(EMBEDDED_CLUSTER_ID))
                })
                .await
                .unwrap_or(false);
                *self.embedded.get_or_init(|| e)
            }
        };
        if embedded {
            last = Some(anyhow!("the embedded cluster has no CreateTopics"));
        }
        // The broker's default replication first; a broker that does not take -1 gets 1.
        for replication in [-1, 1].into_iter().filter(|_| !embedded) {
            let t = NewTopic::new(topic, partitions, TopicReplication::Fixed(replication))
                .set("cleanup.policy", "compact,delete")
                .set("retention.ms", &retention_ms);
            let results = match admin.create_topics([&t], &opts).await {
                Ok(r) => r,
                Err(e) => {
                    last = Some(anyhow::Error::new(e));
                    break;
                }
            };
            match results.into_iter().next() {
                Some(Ok(_)) => return self.wait_for_partitions(topic, partitions).await,
                Some(Err((_, RDKafkaErrorCode::TopicAlreadyExists))) => {
                    return self.wait_for_partitions(topic, partitions).await;
                }
                Some(Err((_, RDKafkaErrorCode::InvalidReplicationFactor))) => {
                    last = Some(anyhow!("replication factor {replication} refused"));
                }
                Some(Err((_, code))) => {
                    last = Some(anyhow::Error::new(KafkaError::AdminOp(code)));
                    break;
                }
                None => {
                    last = Some(anyhow!("the broker answered nothing for the topic"));
                    break;
                }
            }
        }
        // A broker without CreateTopics (the embedded development cluster) creates a topic
        // when a producer asks for its metadata; it must then have the partitions needed.
        // (A producer's metadata requests always allow auto-creation.)
        let producer: BaseProducer = admin_config
            .create()
            .context("creating a metadata client")?;
        let topic2 = topic.to_owned();
        let n = tokio::task::spawn_blocking(move || {
            let m = producer
                .client()
                .fetch_metadata(Some(&topic2), REQUEST_TIMEOUT)?;
            anyhow::Ok(
                m.topics()
                    .first()
                    .filter(|t| t.error().is_none())
                    .map_or(0, |t| t.partitions().len()),
            )
        })
        .await
        .context("metadata task failed")??;
        if i32::try_from(n).unwrap_or(0) >= partitions {
            tracing::warn!(
                topic,
                partitions = n,
                "the broker did not create the ledger topic on request (CreateTopics: {}); it exists by auto-creation, without compaction or retention settings",
                last.as_ref().map_or_else(String::new, |e| format!("{e:#}"))
            );
            return Ok(());
        }
        Err(last.unwrap_or_else(|| anyhow!("the topic was not created"))).with_context(|| {
            format!(
                "{topic} needs {partitions} partitions (create it with cleanup.policy=compact,delete)"
            )
        })
    }

    async fn wait_for_partitions(&self, topic: &str, partitions: i32) -> anyhow::Result<()> {
        let probe = self.metadata_consumer()?;
        let topic = topic.to_owned();
        tokio::task::spawn_blocking(move || {
            let deadline = Instant::now() + REQUEST_TIMEOUT;
            loop {
                if partition_count(&probe, &topic)?.unwrap_or(0) >= partitions {
                    return Ok(());
                }
                if Instant::now() > deadline {
                    bail!("{topic} was created but its {partitions} partitions did not appear in the metadata within {REQUEST_TIMEOUT:?}");
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        })
        .await
        .context("metadata task failed")?
    }

    fn metadata_consumer(&self) -> anyhow::Result<Reader> {
        self.reader_config()
            .create_with_context(ReaderContext)
            .context("creating a ledger reader")
    }

    /// A consumer that reads ledger partitions by assignment (no group, nothing committed).
    fn reader_config(&self) -> ClientConfig {
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
            .set("max.partition.fetch.bytes", "16777216")
            .set("fetch.max.bytes", "67108864")
            .set("queued.max.messages.kbytes", "262144");
        c
    }

    fn topic_of(&self, handler: &str) -> anyhow::Result<(String, Duration)> {
        self.topics
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(handler)
            .cloned()
            .ok_or_else(|| anyhow!("handler {handler} has no ledger topic registered"))
    }

    fn is_owned(&self, handler: &str, topic: &str, partition: i32) -> bool {
        self.owned
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(&(handler.to_owned(), topic.to_owned(), partition))
    }

    fn apply(&self, handler: &str, entries: &[(String, LedgerEntry)]) {
        let mut cache = self.cache.write().unwrap_or_else(PoisonError::into_inner);
        let h = cache.entry(handler.to_owned()).or_default();
        for (k, e) in entries {
            h.insert(k, e);
        }
    }

    /// After this host wrote ledger offsets `written` of partition `lp`: if they directly
    /// follow what the cache had, the cache now has everything below the last of them.
    fn advance(&self, handler: &str, lp: i32, mut written: Vec<i64>) {
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

/// The consumer that reads ledger partitions.
type Reader = BaseConsumer<ReaderContext>;

/// A reader's callbacks: the end of a partition is how a restore knows it is done, not an
/// error to log (librdkafka also reports it to the client's error callback).
struct ReaderContext;

impl rdkafka::client::ClientContext for ReaderContext {
    fn error(&self, error: KafkaError, reason: &str) {
        if !matches!(
            error,
            KafkaError::PartitionEOF(_) | KafkaError::Global(RDKafkaErrorCode::PartitionEOF)
        ) {
            tracing::warn!(%error, reason, "ledger reader: kafka client error");
        }
    }
}

impl rdkafka::consumer::ConsumerContext for ReaderContext {}

/// Partitions of `topic`, `None` if it does not exist.
fn partition_count(probe: &Reader, topic: &str) -> anyhow::Result<Option<i32>> {
    let m = probe
        .fetch_metadata(Some(topic), REQUEST_TIMEOUT)
        .with_context(|| format!("reading the metadata of topic {topic}"))?;
    let Some(t) = m.topics().first() else {
        return Ok(None);
    };
    match t.error() {
        None => Ok(Some(
            i32::try_from(t.partitions().len()).unwrap_or(i32::MAX),
        )),
        Some(e)
            if matches!(
                RDKafkaErrorCode::from(e),
                RDKafkaErrorCode::UnknownTopicOrPartition | RDKafkaErrorCode::UnknownTopic
            ) =>
        {
            Ok(None)
        }
        Some(e) => Err(anyhow::Error::new(KafkaError::MetadataFetch(e.into())))
            .with_context(|| format!("reading the metadata of topic {topic}")),
    }
}

async fn grow_topic(
    admin_config: &ClientConfig,
    topic: &str,
    partitions: i32,
) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> =
        admin_config.create().context("creating an admin client")?;
    let n = usize::try_from(partitions).unwrap_or(1);
    let opts = AdminOptions::new().operation_timeout(Some(REQUEST_TIMEOUT));
    let results = admin
        .create_partitions([&NewPartitions::new(topic, n)], &opts)
        .await
        .context("adding partitions")?;
    for r in results {
        r.map_err(|(t, code)| anyhow!("adding partitions to {t}: {code}"))?;
    }
    Ok(())
}

/// Read ledger partition `lp` of `topic` from `from` (the log start if `None` or before it) to
/// its end; `apply` gets the entries in chunks. Returns where the read started and ended.
///
/// The end is where the consumer reaches partition EOF, and at least the high watermark
/// asked for first: a broker's ListOffsets may lag what it has acknowledged (Tansu 0.6 answers
/// hundreds of records short right after a burst of writes), so the watermark alone could stop
/// a restore short of entries whose writes were acknowledged.
fn read_partition(
    config: &ClientConfig,
    topic: &str,
    lp: i32,
    from: Option<i64>,
    mut apply: impl FnMut(&[(String, LedgerEntry)]),
) -> anyhow::Result<(i64, i64)> {
    let c: Reader = config
        .create_with_context(ReaderContext)
        .context("creating a ledger reader")?;
    let (low, high) = c
        .fetch_watermarks(topic, lp, REQUEST_TIMEOUT)
        .with_context(|| format!("reading the ends of {topic}/{lp}"))?;
    let start = from.map_or(low, |f| f.max(low));
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, lp, Offset::Offset(start))
        .context("building the assignment")?;
    c.assign(&tpl).context("assigning the ledger partition")?;
    let mut chunk: Vec<(String, LedgerEntry)> = Vec::with_capacity(RESTORE_CHUNK);
    let mut next = start;
    let mut last_progress = Instant::now();
    loop {
        match c.poll(Duration::from_millis(100)) {
            None => {
                if last_progress.elapsed() > RESTORE_STALL {
                    bail!(
                        "reading {topic}/{lp}: nothing for {RESTORE_STALL:?} at offset {next} (high watermark {high})"
                    );
                }
            }
            Some(Err(KafkaError::PartitionEOF(_))) if next >= high => break,
            Some(Err(KafkaError::PartitionEOF(_))) => {}
            Some(Err(e)) => {
                return Err(anyhow::Error::new(e)).with_context(|| format!("reading {topic}/{lp}"));
            }
            Some(Ok(m)) => {
                last_progress = Instant::now();
                let offset = m.offset();
                next = next.max(offset + 1);
                if let (Some(k), Some(v)) = (m.key(), m.payload()) {
                    let key = std::str::from_utf8(k).with_context(|| {
                        format!("{topic}/{lp} offset {offset}: key is not UTF-8")
                    })?;
                    let entry =
                        decode_value(v).with_context(|| format!("{topic}/{lp} offset {offset}"))?;
                    chunk.push((key.to_owned(), entry));
                    if chunk.len() >= RESTORE_CHUNK {
                        apply(&chunk);
                        chunk.clear();
                    }
                }
            }
        }
    }
    apply(&chunk);
    Ok((start, next))
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
        let owned_first = entries
            .first()
            .is_some_and(|(_, e)| self.is_owned(handler, &e.topic, e.partition));
        let mut pending = Vec::with_capacity(entries.len());
        for (key, entry) in &entries {
            check_key(handler, key).with_context(|| {
                format!(
                    "ledger record handler={handler} event_id={}",
                    abbreviate(key)
                )
            })?;
            // A batch's entries share one source partition: the owned set is asked once.
            let known = entries
                .first()
                .is_some_and(|(_, f)| f.topic == entry.topic && f.partition == entry.partition);
            let owned =
                (known && owned_first) || self.is_owned(handler, &entry.topic, entry.partition);
            if !owned {
                bail!(
                    "handler={handler}: {}/{} is not assigned to this host (any more): its ledger entries are not written",
                    entry.topic,
                    entry.partition
                );
            }
            let value = encode_value(entry)?;
            let p = self
                .producer
                .enqueue(OutRecord {
                    topic: &topic,
                    key: Some(key.as_bytes()),
                    payload: &value,
                    headers: &[],
                    partition: Some(entry.partition),
                })
                .await
                .with_context(|| {
                    format!(
                        "handler={handler}: writing ledger entry {}",
                        abbreviate(key)
                    )
                })?;
            pending.push((entry.partition, p));
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
        self.apply(handler, &entries);
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

/// Where a restore applies what it reads.
struct RestoreTarget {
    cache: Arc<RwLock<HashMap<String, HandlerCache>>>,
    handler: String,
    cutoff_ms: i64,
    applied: u64,
}

impl RestoreTarget {
    fn apply(&mut self, chunk: &[(String, LedgerEntry)]) {
        if chunk.is_empty() {
            return;
        }
        let mut cache = self.cache.write().unwrap_or_else(PoisonError::into_inner);
        let h = cache.entry(self.handler.clone()).or_default();
        for (k, e) in chunk {
            if e.at_ms >= self.cutoff_ms {
                h.insert(k, e);
                self.applied += 1;
            }
        }
    }
}
