//! `kasm.toml`: what kasm runs, and how.
//!
//! Precedence: built-in defaults → the file → the environment (Kafka connection and
//! credentials, which never live in the file) → command-line flags. Every field is documented
//! here because this is the user's reference; unknown keys are refused (`deny_unknown_fields`),
//! and [`Config::validate`] checks the rules that span fields, naming the key and the file.
//!
//! ```toml
//! data_dir = ".kasm"            # local state: kv, SQLite, the active versions, artifacts
//! ledger_store = "kafka"        # the dedup ledger follows each partition through Kafka
//! drain_timeout = "10s"
//!
//! [admin]
//! listen = "127.0.0.1:9464"
//!
//! [kafka]                       # any librdkafka property, passed through
//! "session.timeout.ms" = 45000
//!
//! [handlers.audit]
//! component = "handlers/dist/audit.wasm"
//! topics = ["task-events"]
//! payload = "json"
//! grants = { sql = { migrations = "handlers/audit/migrations" } }
//! retry = { attempts = 5, initial_backoff = "200ms", max_backoff = "30s", jitter = 0.2 }
//! ```

mod data_dir;
pub mod environment;
mod kafka_env;
mod load;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

pub use data_dir::DataDir;
pub use kafka_env::{KafkaEnv, Secret};
pub use load::{ConfigError, ConfigErrors, valid_topic};

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Folder for kasm's local state: the kv store, SQLite databases, the active component
    /// versions, the precompiled artifact cache, and the ledger when `ledger_store = "file"`.
    /// Relative paths are resolved against the config file's folder. It may start empty (a
    /// new pod): with the default ledger store nothing in it is needed for correct dedup.
    #[serde(default = "defaults::data_dir")]
    pub data_dir: PathBuf,
    /// Where the dedup ledger is durable. `"kafka"` (default): each handler's entries go to a
    /// compacted ledger topic partitioned like its sources (`ledger_topic`), and a host
    /// restores a partition's entries when it is assigned the partition, so several hosts in
    /// one group, and hosts whose data folder is lost, still skip what another one finished.
    /// `"file"`: a redb file in `data_dir`, for one host per group on a persistent disk.
    #[serde(default)]
    pub ledger_store: LedgerStore,
    /// On SIGTERM/SIGINT, how long in-flight records may take to finish before kasm commits
    /// what is done and exits. Must be shorter than the consumer session timeout.
    #[serde(default = "defaults::drain_timeout", with = "humantime_serde")]
    pub drain_timeout: Duration,
    /// How often done offsets are committed (they are also committed on revoke and shutdown).
    #[serde(default = "defaults::commit_interval", with = "humantime_serde")]
    pub commit_interval: Duration,
    /// The largest component accepted, in MiB: at start, from the handlers folder and by an
    /// upload (`PUT /v1/handlers/{name}/component`), which is refused before its body is read
    /// when its `Content-Length` is larger. Interpreted handlers (Python, JavaScript) carry
    /// their interpreter: 12–20 MB before any package of their own. 1–4096.
    #[serde(default = "defaults::max_component_mib")]
    pub max_component_mib: u64,
    /// The admin/health HTTP server.
    #[serde(default)]
    pub admin: AdminConfig,
    /// librdkafka properties passed to every consumer and producer (strings, numbers or
    /// booleans). Connection and credentials come from the environment, not from here.
    #[serde(default)]
    pub kafka: BTreeMap<String, toml::Value>,
    /// The handlers, by name.
    #[serde(default)]
    pub handlers: BTreeMap<String, HandlerConfig>,
    /// Where this configuration was read from (set by [`Config::load`]).
    #[serde(skip)]
    pub source: PathBuf,
    /// Where precompiled component artifacts are kept; set from the command line
    /// (`--cache-dir` / `KASM_CACHE_DIR`, `--no-cache`), not from the file.
    #[serde(skip)]
    pub artifacts: Artifacts,
}

/// Where precompiled component artifacts (keyed by component sha256 and engine) are kept.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Artifacts {
    /// `<data_dir>/artifacts`.
    #[default]
    InDataDir,
    /// A folder of its own, which several hosts may share.
    At(PathBuf),
    /// None: every start compiles its components.
    Off,
}

impl Config {
    /// The data folder and the paths in it.
    pub fn data(&self) -> DataDir {
        DataDir::new(&self.data_dir)
    }

    /// The artifact folder, if artifacts are kept.
    pub fn artifact_dir(&self) -> Option<PathBuf> {
        match &self.artifacts {
            Artifacts::InDataDir => Some(self.data().artifacts()),
            Artifacts::At(dir) => Some(dir.clone()),
            Artifacts::Off => None,
        }
    }
}

/// Where the dedup ledger is durable (see [`Config::ledger_store`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LedgerStore {
    /// A ledger topic per handler; the host keeps the entries of its partitions in memory.
    #[default]
    Kafka,
    /// A redb file in the data folder.
    File,
}

/// The admin/health HTTP server.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Address to listen on. Port 0 picks a free port (printed at start).
    #[serde(default = "defaults::admin_listen")]
    pub listen: SocketAddr,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            listen: defaults::admin_listen(),
        }
    }
}

/// How a handler's payloads are decoded before it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum PayloadFormat {
    /// Any bytes.
    #[default]
    Bytes,
    /// Must be valid JSON; anything else is dead-lettered as `undecodable` without running
    /// the handler.
    Json,
}

/// One handler.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HandlerConfig {
    /// The component file (`.wasm`). Relative to the config file's folder.
    pub component: PathBuf,
    /// Topics to consume.
    pub topics: Vec<String>,
    /// Consumer group id; default `kasm.<handler>`. Must be unique across handlers.
    pub group_id: Option<String>,
    /// Dead-letter topic; default `<source-topic>.dlq` for each source topic.
    pub dlq_topic: Option<String>,
    /// Payload decoding checked by the host before the handler runs.
    #[serde(default)]
    pub payload: PayloadFormat,
    /// Largest payload accepted; larger records are dead-lettered as `undecodable`.
    #[serde(default = "defaults::max_payload_bytes")]
    pub max_payload_bytes: usize,
    /// Longest one call may run.
    #[serde(default = "defaults::deadline", with = "humantime_serde")]
    pub deadline: Duration,
    /// Memory cap per instance, in MiB.
    #[serde(default = "defaults::memory_mib")]
    pub memory_mib: usize,
    /// Records prefetched per partition ahead of its worker: librdkafka stops fetching a
    /// partition when this many (or 8 MiB) wait in its queue — librdkafka's
    /// `queued.min.messages` and `queued.max.messages.kbytes`, unless the `[kafka]` table
    /// sets them. Default 4096. The worker's intake holds a quarter of it (at least 64, at
    /// most 1024).
    #[serde(default = "defaults::partition_buffer")]
    pub partition_buffer: usize,
    /// Retry policy for `retryable` failures and host-side failures.
    #[serde(default)]
    pub retry: RetryPolicy,
    /// Capabilities granted to the handler.
    #[serde(default)]
    pub grants: GrantsConfig,
    /// How long the ledger remembers a finished event id (dedup window).
    #[serde(default = "defaults::ledger_retention", with = "humantime_serde")]
    pub ledger_retention: Duration,
    /// Most event ids the ledger keeps for this handler; the oldest are evicted first.
    #[serde(default = "defaults::ledger_max_entries")]
    pub ledger_max_entries: u64,
    /// How many times one dead letter may be replayed to its source topic (the
    /// `kasm-replay-count` header guards against replay loops).
    #[serde(default = "defaults::max_replays")]
    pub max_replays: u32,
    /// Most records in one batch. A partition's worker takes what its partition has ready, up
    /// to this many records (and `max_batch_bytes`), runs them through the handler in order,
    /// then commits the batch's effects together: its publishes and dead letters acknowledged,
    /// one SQL transaction, one kv transaction, one ledger write, then the offsets. A crash
    /// repeats at most one batch per partition (its outputs carry the same event ids). Default
    /// 1024; 1 handles one record at a time. (`pending_ledger_writes` is accepted for it.)
    #[serde(default = "defaults::max_batch", alias = "pending_ledger_writes")]
    pub max_batch: usize,
    /// Most payload bytes in one batch (a batch always takes at least one record). Default
    /// 1 MiB.
    #[serde(default = "defaults::max_batch_bytes")]
    pub max_batch_bytes: usize,
    /// How long a batch that is not full may wait for more records before it runs. Default
    /// 0: a batch is what the partition has ready, so a lone record at a low rate is never
    /// held back, and under load batches grow by themselves while the previous one commits.
    #[serde(default, with = "humantime_serde")]
    pub batch_linger: Duration,
    /// 0: a fresh instance per batch — records of one batch share an instance (its module
    /// state), batches never do; an instance that trapped, timed out or ran out of memory is
    /// dropped and the rest of the batch runs on a fresh one. N > 0: an instance serves up to
    /// N records across batches. Unset (default): 0 for a compiled component, 1000 for an
    /// interpreted one (Python, JavaScript: its `kasm:guest` section says so), whose fresh
    /// instance costs milliseconds.
    #[serde(default)]
    pub instance_reuse: Option<u32>,
    /// true (default): the dedup ledger skips event ids this handler already finished. false:
    /// no ledger at all — plain at-least-once, a redelivered or re-sent event runs again (for
    /// handlers whose effects are idempotent on their own); offsets still move only after
    /// processing.
    #[serde(default = "defaults::ledger")]
    pub ledger: bool,
    /// The ledger topic of this handler (`ledger_store = "kafka"`): default
    /// `<group_id>.ledger`. Created at start if absent — compacted, with the handler's
    /// `ledger_retention`, and as many partitions as its largest source topic; entry `k` of
    /// source partition `p` is written to its partition `p`.
    pub ledger_topic: Option<String>,
    /// Values the handler reads through the `settings` interface (a webhook URL, a channel
    /// prefix). Not for secrets: the file is not a secret store.
    #[serde(default)]
    pub settings: BTreeMap<String, String>,
}

/// Exponential backoff with jitter.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryPolicy {
    /// Total attempts, the first one included (1 = no retry).
    #[serde(default = "defaults::attempts")]
    pub attempts: u32,
    /// Wait before the second attempt; doubles each time.
    #[serde(default = "defaults::initial_backoff", with = "humantime_serde")]
    pub initial_backoff: Duration,
    /// Upper bound of one wait.
    #[serde(default = "defaults::max_backoff", with = "humantime_serde")]
    pub max_backoff: Duration,
    /// Random spread, as a fraction of the wait: 0.2 means ±20 %.
    #[serde(default = "defaults::jitter")]
    pub jitter: f64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            attempts: defaults::attempts(),
            initial_backoff: defaults::initial_backoff(),
            max_backoff: defaults::max_backoff(),
            jitter: defaults::jitter(),
        }
    }
}

impl RetryPolicy {
    /// The wait before attempt `next_attempt` (2 = first retry), without jitter.
    pub fn base_backoff(&self, next_attempt: u32) -> Duration {
        let exp = next_attempt.saturating_sub(2).min(30);
        self.initial_backoff
            .saturating_mul(1u32 << exp)
            .min(self.max_backoff)
    }

    /// The wait before attempt `next_attempt`, with jitter drawn from `unit` in [0, 1).
    pub fn backoff(&self, next_attempt: u32, unit: f64) -> Duration {
        let base = self.base_backoff(next_attempt).as_secs_f64();
        let factor = 1.0 + self.jitter * (2.0 * unit.clamp(0.0, 1.0) - 1.0);
        // A wait near `Duration::MAX` (a max_backoff of centuries) times a factor over 1 does
        // not fit a Duration: `from_secs_f64` would panic, so it is capped instead.
        Duration::try_from_secs_f64((base * factor).max(0.0))
            .map_or(self.max_backoff, |d| d.min(self.max_backoff))
    }
}

/// Capabilities granted to a handler. `log` is always granted.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrantsConfig {
    /// Topics the handler may publish to (the `producer` capability). Absent: not granted.
    pub producer: Option<Vec<String>>,
    /// Whether the handler may use its private key-value store.
    #[serde(default)]
    pub kv: bool,
    /// The handler's SQL database (the `sql` capability). Absent: not granted.
    pub sql: Option<SqlGrantConfig>,
    /// Whether the handler may push to the WebSocket clients of `GET /ws`.
    #[serde(default)]
    pub websocket: bool,
    /// Hosts outbound HTTP may reach: `"host"` (any port) or `"host:port"`. Absent: no
    /// outbound HTTP. A request to any other host is refused before a connection is made.
    pub http: Option<Vec<String>>,
}

/// The `sql` grant: which database, and its schema.
///
/// ```toml
/// grants = { sql = {} }                                    # SQLite in the data folder
/// grants = { sql = { sqlite = "audit.db", migrations = "handlers/audit/migrations" } }
/// grants = { sql = { url_env = "AUDIT_DATABASE_URL", migrations = "handlers/audit/migrations" } }
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SqlGrantConfig {
    /// An SQLite file, relative to `data_dir`. Default: `<data_dir>/sql/<handler>.sqlite`.
    pub sqlite: Option<PathBuf>,
    /// The name of an environment variable holding a PostgreSQL URL
    /// (`postgresql://user:password@host:5432/db`): credentials never live in the file.
    pub url_env: Option<String>,
    /// A folder of `*.sql` files applied in name order, once each, before the handler runs
    /// (at start and at every deploy). Relative to the config file's folder.
    pub migrations: Option<PathBuf>,
}

impl HandlerConfig {
    /// The consumer group id of handler `name`.
    pub fn group_id(&self, name: &str) -> String {
        self.group_id
            .clone()
            .unwrap_or_else(|| format!("kasm.{name}"))
    }

    /// The ledger topic of handler `name` (see [`HandlerConfig::ledger_topic`]).
    pub fn ledger_topic_for(&self, name: &str) -> String {
        self.ledger_topic
            .clone()
            .unwrap_or_else(|| format!("{}.ledger", self.group_id(name)))
    }

    /// The dead-letter topic for records from `source_topic`.
    pub fn dlq_topic_for(&self, source_topic: &str) -> String {
        self.dlq_topic
            .clone()
            .unwrap_or_else(|| format!("{source_topic}.dlq"))
    }
}

/// The largest component accepted unless `max_component_mib` says otherwise: room for an
/// interpreted handler (CPython or StarlingMonkey inside, 12–20 MB) and its packages.
pub const DEFAULT_MAX_COMPONENT_MIB: u64 = 64;

/// The largest `max_batch`: a batch is held in memory with its effects until it commits.
pub const MAX_BATCH: usize = 10_000;

/// The default of each key that has one (named after the key).
#[allow(missing_docs)]
pub mod defaults {
    use std::net::{Ipv4Addr, SocketAddr};
    use std::path::PathBuf;
    use std::time::Duration;

    pub fn data_dir() -> PathBuf {
        PathBuf::from(".kasm")
    }
    pub fn drain_timeout() -> Duration {
        Duration::from_secs(10)
    }
    pub fn max_component_mib() -> u64 {
        super::DEFAULT_MAX_COMPONENT_MIB
    }
    pub fn commit_interval() -> Duration {
        Duration::from_secs(1)
    }
    pub fn admin_listen() -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, 9464))
    }
    pub fn max_payload_bytes() -> usize {
        1 << 20
    }
    pub fn deadline() -> Duration {
        Duration::from_secs(1)
    }
    pub fn memory_mib() -> usize {
        64
    }
    pub fn partition_buffer() -> usize {
        4096
    }
    pub fn ledger() -> bool {
        true
    }
    pub fn max_batch() -> usize {
        1024
    }
    pub fn max_batch_bytes() -> usize {
        1 << 20
    }
    pub fn attempts() -> u32 {
        5
    }
    pub fn initial_backoff() -> Duration {
        Duration::from_millis(200)
    }
    pub fn max_backoff() -> Duration {
        Duration::from_secs(30)
    }
    pub fn jitter() -> f64 {
        0.2
    }
    pub fn ledger_retention() -> Duration {
        Duration::from_secs(7 * 24 * 3600)
    }
    pub fn ledger_max_entries() -> u64 {
        1_000_000
    }
    pub fn max_replays() -> u32 {
        3
    }
}

#[cfg(test)]
mod tests;
