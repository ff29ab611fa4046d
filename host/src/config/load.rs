//! Reading `kasm.toml`: parse, then check every rule across keys, and report each problem
//! with the file, the key and, where the file cannot have the key, its line.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use super::*;

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
                    } else if !environment::is_set(var) {
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
