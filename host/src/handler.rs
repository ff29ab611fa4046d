//! A handler, as every layer sees it: its configuration, its active component version, the
//! resources its versions share (kv store, SQL database, WebSocket hub), its counters and its
//! version history. The pipeline's workers, hot swap and the admin API all hold one
//! [`HandlerCtx`] per handler; this module sits below all three so none of them depends on
//! another for it.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use arc_swap::ArcSwap;

use crate::capabilities::websocket::Hub;
use crate::capabilities::{KvStore, SqlDatabase};
use crate::config::HandlerConfig;
use crate::kafka::producer::KafkaProducer;
use crate::ledger::Ledger;
use crate::now_ms;
use crate::runtime::{HandlerSpec, LoadedHandler};
use crate::telemetry::health::Health;
use crate::telemetry::metrics::Metrics;
use crate::telemetry::trace::Tracer;

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
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    serde::Serialize,
    serde::Deserialize,
    utoipa::ToSchema,
)]
#[serde(default)]
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
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct SwapRecord {
    /// The version before (none at startup).
    pub from: Option<String>,
    /// The version after.
    pub to: String,
    /// When, ms since the epoch.
    pub at_ms: i64,
    /// `startup`, `deploy`, `rollback` or `watch`.
    #[schema(value_type = String)]
    pub reason: std::borrow::Cow<'static, str>,
    /// The first offset the new version handled, per `topic/partition`.
    pub first_offsets: BTreeMap<String, i64>,
}

/// An assigned partition as the loop last saw it.
#[derive(Debug, Clone, Copy, Default, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
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
    pub metrics: Arc<Metrics>,
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
    pub resources: HandlerResources,
    /// Ledger keys of the records in a batch of this handler that is not committed yet
    /// (see [`HandlerCtx::claim`]).
    pub claims: Mutex<HashSet<String>>,
    /// Makes the records' spans when tracing is on (see [`crate::telemetry::trace`]).
    pub tracer: Option<Tracer>,
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
        taken: &mut HashSet<String>,
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
                reason: reason.into(),
                first_offsets: BTreeMap::new(),
            });
            // Bounded: the last 100 changes.
            let excess = h.len().saturating_sub(100);
            h.drain(..excess);
        }
    }
}

/// What a handler keeps across its versions: its kv store and its SQL database (opened once,
/// when the host starts).
#[derive(Debug, Clone)]
pub struct HandlerResources {
    /// Backend of the `kv` capability.
    pub kv: Arc<dyn KvStore>,
    /// The database of the `sql` capability, when granted.
    pub sql: Option<Arc<dyn SqlDatabase>>,
    /// Migrations applied to `sql` before each version runs.
    pub migrations: Option<PathBuf>,
    /// Where `websocket` broadcasts go (shared by the host's handlers).
    pub ws: Arc<Hub>,
}

impl HandlerResources {
    /// Open the resources of handler `name` on the host's `kv` store (a database is
    /// connected lazily).
    pub fn open(
        name: &str,
        hc: &HandlerConfig,
        data: &crate::config::DataDir,
        kv: Arc<dyn KvStore>,
        ws: Arc<Hub>,
    ) -> anyhow::Result<Self> {
        let (sql, migrations) = match &hc.grants.sql {
            Some(g) => {
                let target = crate::capabilities::SqlTarget::of_grant(g, name, data)?;
                (
                    Some(crate::capabilities::sql::open(&target, name)?),
                    g.migrations.clone(),
                )
            }
            None => (None, None),
        };
        Ok(Self {
            kv,
            sql,
            migrations,
            ws,
        })
    }

    /// Apply the handler's pending migrations (before a version starts running).
    pub async fn migrate(&self, name: &str) -> anyhow::Result<()> {
        let Some(db) = &self.sql else {
            return Ok(());
        };
        crate::capabilities::sql::ensure_inbox(db.as_ref())
            .await
            .with_context(|| format!("handler={name}: preparing {}", db.describe()))?;
        let Some(dir) = &self.migrations else {
            return Ok(());
        };
        let applied = crate::capabilities::sql::migrate(db.as_ref(), name, dir)
            .await
            .with_context(|| format!("handler={name}: migrating {}", db.describe()))?;
        if !applied.is_empty() {
            tracing::info!(handler = %name, database = %db.describe(), ?applied, "sql migrations applied");
        }
        Ok(())
    }
}

/// The runtime spec of handler `name` from its configuration.
pub fn spec_for(name: &str, hc: &HandlerConfig, res: &HandlerResources) -> HandlerSpec {
    let mut spec = HandlerSpec::new(name.to_owned());
    spec.grants = crate::capabilities::Grants::of_config(&hc.grants);
    spec.deadline = hc.deadline;
    spec.memory_bytes = hc.memory_mib.saturating_mul(1 << 20);
    spec.kv = res.kv.clone();
    spec.sql = res.sql.clone();
    spec.settings = hc.settings.clone();
    spec.instance_reuse = hc.instance_reuse;
    spec
}
