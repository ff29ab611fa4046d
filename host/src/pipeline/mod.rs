//! The Kafka pipeline: consume, run the handler, write effects and dead letters, record the
//! outcome, commit — at least once, in partition order, never dropping a record.
//!
//! - [`consumer`]: one consumer loop per handler on its own thread (poll, dispatch, pause,
//!   commit, rebalance).
//! - [`worker`]: one task per assigned partition (the path of one record).
//! - [`offsets`]: which position of a partition may be committed.
//! - [`dlq`]: what a dead letter carries.
//!
//! [`Pipeline`] starts a loop per handler and stops them all on shutdown.

pub mod consumer;
pub mod dlq;
pub mod offsets;
pub mod replay;
pub mod worker;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use arc_swap::ArcSwap;

use crate::config::{HandlerConfig, KafkaEnv};
use crate::health::{Health, LoopState};
use crate::kafka::producer::KafkaProducer;
use crate::ledger::Ledger;
use crate::runtime::LoadedHandler;

/// A consumed record, detached from the consumer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Record {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
    /// Key.
    pub key: Option<Vec<u8>>,
    /// Value (`None` for a tombstone).
    pub payload: Option<Vec<u8>>,
    /// Headers.
    pub headers: Vec<(String, Vec<u8>)>,
    /// Timestamp, ms since the epoch.
    pub timestamp_ms: Option<i64>,
}

impl Record {
    /// Bytes of key, payload and headers (what holding the record costs, roughly).
    pub fn size(&self) -> usize {
        self.key.as_ref().map_or(0, Vec::len)
            + self.payload.as_ref().map_or(0, Vec::len)
            + self
                .headers
                .iter()
                .map(|(k, v)| k.len() + v.len())
                .sum::<usize>()
    }
}

/// Counters per handler (for the live view and metrics).
#[derive(Debug, Default)]
pub struct Stats {
    /// Records the partition workers took into a batch (a record that runs again counts
    /// again).
    pub received: AtomicU64,
    /// Records the handler finished with `ok`.
    pub processed: AtomicU64,
    /// Records skipped because the ledger already had their event id.
    pub skipped: AtomicU64,
    /// Retries (second and later attempts).
    pub retried: AtomicU64,
    /// Records dead-lettered.
    pub dead_lettered: AtomicU64,
    /// Records the handler published (acknowledged), over all its `ok` calls.
    pub published: AtomicU64,
}

/// A snapshot of [`Stats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct StatsSnapshot {
    /// See [`Stats::received`].
    pub received: u64,
    /// See [`Stats::processed`].
    pub processed: u64,
    /// See [`Stats::skipped`].
    pub skipped: u64,
    /// See [`Stats::retried`].
    pub retried: u64,
    /// See [`Stats::dead_lettered`].
    pub dead_lettered: u64,
    /// See [`Stats::published`].
    pub published: u64,
}

impl Stats {
    /// Read all counters.
    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            received: self.received.load(Ordering::Relaxed),
            processed: self.processed.load(Ordering::Relaxed),
            skipped: self.skipped.load(Ordering::Relaxed),
            retried: self.retried.load(Ordering::Relaxed),
            dead_lettered: self.dead_lettered.load(Ordering::Relaxed),
            published: self.published.load(Ordering::Relaxed),
        }
    }
}

/// One version change of a handler.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SwapRecord {
    /// The version before (none at startup).
    pub from: Option<String>,
    /// The version after.
    pub to: String,
    /// When, ms since the epoch.
    pub at_ms: i64,
    /// `startup`, `deploy`, `rollback` or `watch`.
    pub reason: &'static str,
    /// The first offset the new version handled, per `topic/partition`.
    pub first_offsets: BTreeMap<String, i64>,
}

/// An assigned partition as the loop last saw it.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct PartitionView {
    /// Last committed position (next offset to read), if any.
    pub committed: Option<i64>,
    /// High watermark from the latest fetch response, if known.
    pub high_watermark: Option<i64>,
    /// `high_watermark - position` (records not yet done), if known.
    pub lag: Option<i64>,
    /// Records dispatched and not yet done.
    pub in_flight: usize,
    /// Whether the partition is paused (handler paused, or its intake full).
    pub paused: bool,
}

/// Everything the loop and the workers of one handler share.
#[derive(Debug)]
pub struct HandlerCtx {
    /// Handler name.
    pub name: String,
    /// Consumer group id.
    pub group_id: String,
    /// Its configuration.
    pub config: HandlerConfig,
    /// The active component version; swapped atomically, calls in flight keep theirs.
    pub component: ArcSwap<LoadedHandler>,
    /// Dedup ledger.
    pub ledger: Arc<dyn Ledger>,
    /// Producer for effects and dead letters.
    pub producer: KafkaProducer,
    /// Health registry.
    pub health: Arc<Health>,
    /// Counters.
    pub stats: Stats,
    /// Prometheus metrics (shared by the host).
    pub metrics: Arc<crate::metrics::Metrics>,
    /// How long in-flight records may take on revoke and shutdown.
    pub drain_timeout: Duration,
    /// Periodic commit interval.
    pub commit_interval: Duration,
    /// Set by the admin API: stop fetching (offsets stay put) until cleared.
    pub paused: AtomicBool,
    /// Version history, oldest first.
    pub history: Mutex<Vec<SwapRecord>>,
    /// Assigned partitions (`topic/partition`), as the loop last saw them.
    pub partitions: Mutex<BTreeMap<String, PartitionView>>,
    /// Its kv store and SQL database, shared by all its versions.
    pub resources: crate::deploy::HandlerResources,
    /// Ledger keys of the records in a batch of this handler that is not committed yet
    /// (see [`HandlerCtx::claim`]).
    pub claims: Mutex<std::collections::HashSet<String>>,
    /// Makes the records' spans when tracing is on (see [`crate::trace`]).
    pub tracer: Option<crate::trace::Tracer>,
}

impl HandlerCtx {
    /// Claim the ledger keys of a batch's records, in order, under one lock, up to the first
    /// key that another batch holds; how many records were claimed (a `None` — a record that
    /// needs no claim — and a key repeated within the batch count as claimed). The keys this
    /// call took go into `taken`, to be given back with [`HandlerCtx::release`]. Two copies of
    /// one event on two partitions must not run at once: the second waits until the first's
    /// batch is committed (then the ledger skips it) or gives it back.
    pub fn claim<'k>(
        &self,
        keys: impl IntoIterator<Item = Option<&'k str>>,
        taken: &mut std::collections::HashSet<String>,
    ) -> usize {
        let Ok(mut held) = self.claims.lock() else {
            // A panic while the set was held: nothing is excluded any more (the ledger still
            // skips what was recorded).
            return usize::MAX;
        };
        let mut n = 0;
        for key in keys {
            let Some(key) = key else {
                n += 1;
                continue;
            };
            if !held.contains(key) {
                held.insert(key.to_owned());
                taken.insert(key.to_owned());
            } else if !taken.contains(key) {
                return n;
            }
            n += 1;
        }
        n
    }

    /// Give claimed keys back (their batch committed, or gave them up).
    pub fn release<'k>(&self, keys: impl Iterator<Item = &'k String>) {
        if let Ok(mut c) = self.claims.lock() {
            for k in keys {
                c.remove(k);
            }
        }
    }

    /// Note that `version` handled `offset` of `topic/partition` (workers call it when their
    /// version changes): the first such offset after a swap goes into the history.
    pub fn note_handled(&self, version: &str, topic: &str, partition: i32, offset: i64) {
        let Ok(mut h) = self.history.lock() else {
            return;
        };
        if let Some(last) = h.last_mut()
            && last.to == version
        {
            last.first_offsets
                .entry(format!("{topic}/{partition}"))
                .or_insert(offset);
        }
    }

    /// Record a version change.
    pub fn push_history(&self, from: Option<String>, to: String, reason: &'static str) {
        if let Ok(mut h) = self.history.lock() {
            h.push(SwapRecord {
                from,
                to,
                at_ms: now_ms(),
                reason,
                first_offsets: BTreeMap::new(),
            });
            // Bounded: the last 100 changes.
            let excess = h.len().saturating_sub(100);
            h.drain(..excess);
        }
    }
}

/// The running consumer loops.
#[derive(Debug)]
pub struct Pipeline {
    loops: Vec<(Arc<HandlerCtx>, std::thread::JoinHandle<()>)>,
    stop: Arc<AtomicBool>,
}

impl Pipeline {
    /// Start a consumer loop (thread) per handler.
    pub fn start(
        handlers: Vec<Arc<HandlerCtx>>,
        env: &KafkaEnv,
        passthrough: &[(String, String)],
        rt: tokio::runtime::Handle,
    ) -> anyhow::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let mut loops = Vec::new();
        for ctx in handlers {
            ctx.health.register(&ctx.name);
            let cfg = crate::kafka::consumer_config(env, passthrough, &ctx.group_id);
            let (c, rt, stop2) = (ctx.clone(), rt.clone(), stop.clone());
            let thread = std::thread::Builder::new()
                .name(format!("kasm-consume-{}", ctx.name))
                .spawn(move || {
                    let name = c.name.clone();
                    if let Err(e) = consumer::run_loop(c.clone(), rt, cfg, stop2) {
                        tracing::error!(handler = %name, error = %format!("{e:#}"), "consumer loop failed");
                        c.health.set_state(&name, LoopState::Failed(format!("{e:#}")));
                    }
                })
                .with_context(|| format!("handler={}: starting the consumer thread", ctx.name))?;
            loops.push((ctx, thread));
        }
        Ok(Self { loops, stop })
    }

    /// The handlers' shared state (stats, component).
    pub fn handlers(&self) -> impl Iterator<Item = &Arc<HandlerCtx>> {
        self.loops.iter().map(|(c, _)| c)
    }

    /// Stop every loop: stop fetching, drain in flight within the drain timeout, commit,
    /// leave the group. Blocks until done (call it from a blocking context).
    pub fn stop(self) {
        self.stop.store(true, Ordering::SeqCst);
        for (ctx, thread) in self.loops {
            if thread.join().is_err() {
                tracing::error!(handler = %ctx.name, "consumer loop thread panicked");
            }
        }
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
