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

mod kafka_env;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

pub use kafka_env::{KafkaEnv, Secret};

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
    /// The artifact folder, if artifacts are kept.
    pub fn artifact_dir(&self) -> Option<PathBuf> {
        match &self.artifacts {
            Artifacts::InDataDir => Some(self.data_dir.join("artifacts")),
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

/// A configuration error, naming the file and the key.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {key}: {message}")]
pub struct ConfigError {
    /// The config file.
    pub file: String,
    /// The offending key, dotted (`handlers.audit.retry.attempts`).
    pub key: String,
    /// What is wrong.
    pub message: String,
}

/// Several configuration errors, one per line.
#[derive(Debug, thiserror::Error)]
#[error("{}", .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("\n"))]
pub struct ConfigErrors(pub Vec<ConfigError>);

/// The largest component accepted unless `max_component_mib` says otherwise: room for an
/// interpreted handler (CPython or StarlingMonkey inside, 12–20 MB) and its packages.
pub const DEFAULT_MAX_COMPONENT_MIB: u64 = 64;

/// The largest `max_batch`: a batch is held in memory with its effects until it commits.
pub const MAX_BATCH: usize = 10_000;

/// librdkafka properties that carry connection details or secrets: they come from the
/// environment only.
const ENV_ONLY_PROPERTIES: [(&str, &str); 6] = [
    ("bootstrap.servers", "KAFKA_BOOTSTRAP_SERVERS"),
    ("security.protocol", "KAFKA_SECURITY_PROTOCOL"),
    ("sasl.mechanism", "KAFKA_SASL_MECHANISM"),
    ("sasl.mechanisms", "KAFKA_SASL_MECHANISM"),
    ("sasl.username", "KAFKA_SASL_USERNAME"),
    ("sasl.password", "KAFKA_SASL_PASSWORD"),
];

/// Properties kasm sets itself because its guarantees depend on them.
const HOST_OWNED_PROPERTIES: [&str; 6] = [
    "enable.auto.offset.store",
    "enable.auto.commit",
    "group.id",
    "enable.idempotence",
    "acks",
    "isolation.level",
];

impl Config {
    /// Read, parse and validate `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigErrors> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigErrors(vec![ConfigError {
                file: file.clone(),
                key: "(file)".into(),
                message: e.to_string(),
            }])
        })?;
        let mut config = Self::parse(&text, &file)?;
        config.source = path.to_owned();
        let base = path.parent().map(Path::to_owned).unwrap_or_default();
        if config.data_dir.is_relative() {
            config.data_dir = base.join(&config.data_dir);
        }
        for h in config.handlers.values_mut() {
            if h.component.is_relative() {
                h.component = base.join(&h.component);
            }
            if let Some(m) = h.grants.sql.as_mut().and_then(|g| g.migrations.as_mut())
                && m.is_relative()
            {
                *m = base.join(&*m);
            }
        }
        config.validate()?;
        Ok(config)
    }

    /// Parse TOML text (no validation). `file` names the source in errors.
    pub fn parse(text: &str, file: &str) -> Result<Self, ConfigErrors> {
        toml::from_str::<Config>(text).map_err(|e| {
            let key = e
                .span()
                .map(|s| key_at(text, s.start))
                .unwrap_or_else(|| "(file)".into());
            let line = e.span().map(|s| line_of(text, s.start));
            let message = match line {
                Some(l) => format!("{} (line {l})", e.message()),
                None => e.message().to_owned(),
            };
            ConfigErrors(vec![ConfigError {
                file: file.to_owned(),
                key,
                message,
            }])
        })
    }

    /// Check the rules that span fields. All problems are reported at once.
    pub fn validate(&self) -> Result<(), ConfigErrors> {
        let file = self.source.display().to_string();
        let mut errors = Vec::new();
        let mut err = |key: String, message: String| {
            errors.push(ConfigError {
                file: file.clone(),
                key,
                message,
            });
        };
        if self.handlers.is_empty() {
            err("handlers".into(), "no handler configured".into());
        }
        if self.max_component_mib == 0 || self.max_component_mib > 4096 {
            err(
                "max_component_mib".into(),
                format!("must be 1–4096 (MiB), not {}", self.max_component_mib),
            );
        }
        if self.drain_timeout.is_zero() {
            err("drain_timeout".into(), "must be more than 0".into());
        }
        if self.commit_interval.is_zero() {
            err("commit_interval".into(), "must be more than 0".into());
        }
        for (key, env) in ENV_ONLY_PROPERTIES {
            if self.kafka.contains_key(key) {
                err(
                    format!("kafka.\"{key}\""),
                    format!("set it in the environment ({env}), never in the file"),
                );
            }
        }
        for key in HOST_OWNED_PROPERTIES {
            if self.kafka.contains_key(key) {
                err(
                    format!("kafka.\"{key}\""),
                    "kasm sets this itself; its delivery guarantees depend on it".into(),
                );
            }
        }
        let session_ms = self
            .kafka
            .get("session.timeout.ms")
            .and_then(toml_as_u64)
            .unwrap_or(45_000);
        if self.drain_timeout >= Duration::from_millis(session_ms) {
            err(
                "drain_timeout".into(),
                format!(
                    "{:?} must be shorter than the consumer session timeout ({session_ms} ms)",
                    self.drain_timeout
                ),
            );
        }
        let mut groups: BTreeMap<String, &str> = BTreeMap::new();
        let mut ledger_topics: BTreeMap<String, &str> = BTreeMap::new();
        for (name, h) in &self.handlers {
            let k = |field: &str| format!("handlers.{name}.{field}");
            if !valid_name(name) {
                err(
                    format!("handlers.{name}"),
                    "a handler name is letters, digits, `-` and `_`".into(),
                );
            }
            if !h.component.is_file() {
                err(
                    k("component"),
                    format!("component file {} does not exist", h.component.display()),
                );
            }
            if h.topics.is_empty() {
                err(k("topics"), "at least one topic is needed".into());
            }
            let unique: BTreeSet<&String> = h.topics.iter().collect();
            if unique.len() != h.topics.len() {
                err(k("topics"), "a topic is listed twice".into());
            }
            for t in &h.topics {
                if !valid_topic(t) {
                    err(k("topics"), format!("`{t}` is not a valid topic name"));
                }
            }
            if let Some(d) = &h.dlq_topic {
                if !valid_topic(d) {
                    err(k("dlq_topic"), format!("`{d}` is not a valid topic name"));
                }
                if h.topics.contains(d) {
                    err(
                        k("dlq_topic"),
                        "the dead-letter topic cannot be a source topic".into(),
                    );
                }
            }
            if let Some(l) = &h.ledger_topic {
                if !valid_topic(l) {
                    err(
                        k("ledger_topic"),
                        format!("`{l}` is not a valid topic name"),
                    );
                }
                if h.topics.contains(l) || h.dlq_topic.as_ref() == Some(l) {
                    err(
                        k("ledger_topic"),
                        "the ledger topic must be a topic of its own, not a source or dead-letter topic"
                            .into(),
                    );
                }
            }
            let ledger_topic = h.ledger_topic_for(name);
            if h.ledger && self.ledger_store == LedgerStore::Kafka {
                if h.ledger_topic.is_none() && !valid_topic(&ledger_topic) {
                    err(
                        k("ledger_topic"),
                        format!(
                            "the default ledger topic `{ledger_topic}` (from the group id) is not a valid topic name; set ledger_topic"
                        ),
                    );
                }
                if let Some(other) = ledger_topics.insert(ledger_topic.clone(), name) {
                    err(
                        k("ledger_topic"),
                        format!(
                            "ledger topic `{ledger_topic}` is also used by handler `{other}`; each handler needs its own"
                        ),
                    );
                }
            }
            let group = h.group_id(name);
            if let Some(other) = groups.insert(group.clone(), name) {
                err(
                    k("group_id"),
                    format!(
                        "group id `{group}` is also used by handler `{other}`; group ids must be unique"
                    ),
                );
            }
            if h.deadline.is_zero() || h.deadline > Duration::from_secs(600) {
                err(
                    k("deadline"),
                    format!(
                        "{:?} is out of range (more than 0, at most 10m)",
                        h.deadline
                    ),
                );
            }
            if h.memory_mib == 0 || h.memory_mib > 4096 {
                err(
                    k("memory_mib"),
                    format!("{} is out of range (1 to 4096)", h.memory_mib),
                );
            }
            if h.max_payload_bytes == 0 {
                err(k("max_payload_bytes"), "must be more than 0".into());
            }
            if h.max_batch == 0 || h.max_batch > MAX_BATCH {
                err(
                    k("max_batch"),
                    format!("{} is out of range (1 to {MAX_BATCH})", h.max_batch),
                );
            }
            if h.max_batch_bytes == 0 {
                err(k("max_batch_bytes"), "must be at least 1".into());
            }
            if h.batch_linger > Duration::from_secs(1) {
                err(
                    k("batch_linger"),
                    format!("{:?} is over the limit of 1s", h.batch_linger),
                );
            }
            if h.partition_buffer == 0 || h.partition_buffer > 100_000 {
                err(
                    k("partition_buffer"),
                    format!("{} is out of range (1 to 100000)", h.partition_buffer),
                );
            }
            let r = &h.retry;
            if r.attempts == 0 {
                err(
                    k("retry.attempts"),
                    "must be at least 1 (the first attempt counts)".into(),
                );
            }
            if r.initial_backoff > r.max_backoff {
                err(
                    k("retry.initial_backoff"),
                    format!(
                        "{:?} is more than retry.max_backoff {:?}",
                        r.initial_backoff, r.max_backoff
                    ),
                );
            }
            if !(0.0..=1.0).contains(&r.jitter) {
                err(
                    k("retry.jitter"),
                    format!("{} is out of range (0.0 to 1.0)", r.jitter),
                );
            }
            if h.ledger_retention.is_zero() {
                err(k("ledger_retention"), "must be more than 0".into());
            }
            if h.ledger_max_entries == 0 {
                err(k("ledger_max_entries"), "must be more than 0".into());
            }
            if let Some(sql) = &h.grants.sql {
                if sql.sqlite.is_some() && sql.url_env.is_some() {
                    err(
                        k("grants.sql"),
                        "give either `sqlite` (a file) or `url_env` (PostgreSQL), not both".into(),
                    );
                }
                if let Some(var) = &sql.url_env {
                    if !valid_env_name(var) {
                        err(
                            k("grants.sql.url_env"),
                            format!(
                                "`{var}` is not an environment variable name (the URL itself goes in the environment)"
                            ),
                        );
                    } else if std::env::var_os(var).is_none_or(|v| v.is_empty()) {
                        err(
                            k("grants.sql.url_env"),
                            format!("environment variable {var} is not set"),
                        );
                    }
                }
                if let Some(m) = &sql.migrations
                    && !m.is_dir()
                {
                    err(
                        k("grants.sql.migrations"),
                        format!("migrations folder {} does not exist", m.display()),
                    );
                }
            }
            if let Some(hosts) = &h.grants.http {
                for host in hosts {
                    let bad = host.is_empty()
                        || host.contains(['/', '@', ' '])
                        || host.contains("://")
                        || host.rsplit_once(':').is_some_and(|(_, p)| {
                            !p.is_empty() && p.parse::<u16>().is_err() && !host.starts_with('[')
                        });
                    if bad {
                        err(
                            k("grants.http"),
                            format!(
                                "`{host}` is not a host (`name` or `name:port`, no scheme or path)"
                            ),
                        );
                    }
                }
            }
            if let Some(topics) = &h.grants.producer {
                for t in topics {
                    if !valid_topic(t) {
                        err(
                            k("grants.producer"),
                            format!("`{t}` is not a valid topic name"),
                        );
                    }
                }
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(ConfigErrors(errors))
        }
    }

    /// The largest component accepted, in bytes (`max_component_mib`).
    pub fn max_component_bytes(&self) -> u64 {
        self.max_component_mib.saturating_mul(1 << 20)
    }

    /// The `[kafka]` properties as strings for librdkafka.
    pub fn kafka_properties(&self) -> Vec<(String, String)> {
        self.kafka
            .iter()
            .map(|(k, v)| {
                let v = match v {
                    toml::Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                (k.clone(), v)
            })
            .collect()
    }
}

fn toml_as_u64(v: &toml::Value) -> Option<u64> {
    match v {
        toml::Value::Integer(i) => u64::try_from(*i).ok(),
        toml::Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 100
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// `[A-Za-z_][A-Za-z0-9_]*`.
fn valid_env_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Kafka's rule: 1–249 characters of `[a-zA-Z0-9._-]`, not `.` or `..`.
pub fn valid_topic(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 249
        && s != "."
        && s != ".."
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// The 1-based line that byte `pos` of `text` is on (a position just after a newline is on
/// the next line, where the key it points at starts).
fn line_of(text: &str, pos: usize) -> usize {
    let pos = pos.min(text.len());
    text.as_bytes()[..pos]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// The dotted key path of the TOML item at byte `pos` (best effort, for error messages).
fn key_at(text: &str, pos: usize) -> String {
    let pos = pos.min(text.len());
    let mut table = String::new();
    for line in text[..pos].lines() {
        let t = line.trim();
        if t.starts_with('[') && !t.starts_with("[[") {
            table = t.trim_matches(|c| c == '[' || c == ']').trim().to_owned();
        }
    }
    let line_start = text[..pos].rfind('\n').map_or(0, |i| i + 1);
    let line = text[line_start..].lines().next().unwrap_or("");
    let key = line
        .split('=')
        .next()
        .unwrap_or("")
        .trim()
        .trim_matches('"');
    match (table.is_empty(), key.is_empty() || key.starts_with('[')) {
        (true, true) => "(top level)".to_owned(),
        (true, false) => key.to_owned(),
        (false, true) => table,
        (false, false) => format!("{table}.{key}"),
    }
}

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
