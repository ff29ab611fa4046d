//! What a handler may do beyond computing: the host side of the WIT imports.
//!
//! Every capability is granted per handler ([`Grants`]). A component that imports an
//! interface its handler was not granted is refused when it is loaded (see
//! `runtime::component`), and the host functions check the grant again on every call (a
//! topic not granted to `producer`), so a grant is enforced at both ends.
//!
//! Effects are *collected* during a call ([`Effects`]) rather than applied as they happen:
//! a publish is queued, and the caller (the pipeline, or `kasm invoke`) applies the queue
//! only when the handler returned `ok`. A handler that fails half way therefore leaves
//! nothing behind, and "the event is done" can wait for every effect to be acknowledged.
//!
//! Each capability owns its whole host side in its own module: the `Host` impl of its WIT
//! interface (on [`state::CapabilityState`], the part of a handler instance's store the
//! imports see), its backend and its limits. `producer`, `kv`, `sql/` (SQLite, PostgreSQL,
//! migrations, the inbox), `websocket`, `http` (the `wasi:http` hook), `log` and `settings`.
//! A new capability is a new module here, its interface in `wit/`, its grant in [`Grants`] and
//! `config::GrantsConfig`, and one line where `runtime` links the imports.

pub mod http;
pub mod kv;
pub mod log;
pub mod producer;
pub mod settings;
pub mod sql;
pub(crate) mod state;
pub mod websocket;

use std::collections::BTreeSet;
use std::fmt;

use serde::{Deserialize, Serialize};

pub use kv::{FileKv, KvStore, KvWrite, MemoryKv};
pub use log::LogLine;
pub use producer::{Publish, derive_event_id};
pub use sql::{SqlDatabase, SqlError, SqlRows, SqlTarget, SqlValue};

/// A host capability a handler can be granted. Each maps to one WIT interface of
/// `kasm:handler`.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum Capability {
    /// `kasm:handler/producer`: publish records to granted topics.
    Producer,
    /// `kasm:handler/kv`: a key-value store private to the handler.
    Kv,
    /// `kasm:handler/sql`: statements on the handler's SQL database.
    Sql,
    /// `kasm:handler/websocket`: push to the clients of `GET /ws`.
    Websocket,
    /// `kasm:handler/settings`: the handler's own configured values; always granted.
    Settings,
    /// `wasi:http/outgoing-handler`: HTTP requests to the granted hosts.
    Http,
    /// `kasm:handler/log`: structured logging; always granted.
    Log,
}

impl Capability {
    /// Every capability, in a stable order.
    pub const ALL: [Capability; 7] = [
        Capability::Producer,
        Capability::Kv,
        Capability::Sql,
        Capability::Websocket,
        Capability::Http,
        Capability::Settings,
        Capability::Log,
    ];

    /// The WIT interface name inside the `kasm:handler` package.
    pub fn interface(self) -> &'static str {
        match self {
            Capability::Producer => "producer",
            Capability::Kv => "kv",
            Capability::Sql => "sql",
            Capability::Websocket => "websocket",
            Capability::Settings => "settings",
            Capability::Http => "http",
            Capability::Log => "log",
        }
    }

    /// The capability behind a `kasm:handler` interface name, if it is one.
    pub fn from_interface(name: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .filter(|c| *c != Capability::Http)
            .find(|c| c.interface() == name)
    }
}

impl fmt::Display for Capability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.interface())
    }
}

/// Which topics a handler may publish to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopicGrant {
    /// Any topic (used by `kasm invoke`, the author's inner loop).
    Any,
    /// Exactly these topics.
    Only(BTreeSet<String>),
}

impl TopicGrant {
    /// Whether `topic` may be published to.
    pub fn allows(&self, topic: &str) -> bool {
        match self {
            TopicGrant::Any => true,
            TopicGrant::Only(set) => set.contains(topic),
        }
    }
}

impl fmt::Display for TopicGrant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TopicGrant::Any => f.write_str("any topic"),
            TopicGrant::Only(set) if set.is_empty() => f.write_str("no topic"),
            TopicGrant::Only(set) => {
                let names: Vec<&str> = set.iter().map(String::as_str).collect();
                write!(f, "{}", names.join(", "))
            }
        }
    }
}

/// What one handler is allowed to do. `log` is always granted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grants {
    /// Topics for `producer`; `None` when `producer` is not granted at all.
    pub producer: Option<TopicGrant>,
    /// Whether `kv` is granted.
    pub kv: bool,
    /// Whether `sql` is granted (the database itself comes with the handler's spec).
    pub sql: bool,
    /// Whether `websocket` is granted.
    pub websocket: bool,
    /// Hosts (`host` or `host:port`) outbound HTTP may reach; `None`: `http` not granted.
    pub http: Option<HostGrant>,
}

/// The hosts a handler may send HTTP requests to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostGrant {
    /// Any host (used by `kasm invoke`).
    Any,
    /// These entries: `host` (any port) or `host:port`, compared case-insensitively.
    Only(BTreeSet<String>),
}

impl HostGrant {
    /// Whether a request to `host` on `port` may go out.
    pub fn allows(&self, host: &str, port: u16) -> bool {
        match self {
            HostGrant::Any => true,
            HostGrant::Only(set) => {
                let host = host.to_ascii_lowercase();
                let host = host.trim_start_matches('[').trim_end_matches(']');
                set.iter().any(|g| {
                    let g = g.to_ascii_lowercase();
                    match g.rsplit_once(':').filter(|(_, p)| p.parse::<u16>().is_ok()) {
                        Some((h, p)) => {
                            h.trim_start_matches('[').trim_end_matches(']') == host
                                && p.parse() == Ok(port)
                        }
                        None => g == host,
                    }
                })
            }
        }
    }
}

impl fmt::Display for HostGrant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostGrant::Any => f.write_str("any host"),
            HostGrant::Only(set) if set.is_empty() => f.write_str("no host"),
            HostGrant::Only(set) => {
                let v: Vec<&str> = set.iter().map(String::as_str).collect();
                f.write_str(&v.join(", "))
            }
        }
    }
}

impl Grants {
    /// The grants a handler's `grants` table gives (`log` is always granted).
    pub fn of_config(c: &crate::config::GrantsConfig) -> Self {
        Self {
            producer: c
                .producer
                .as_ref()
                .map(|t| TopicGrant::Only(t.iter().cloned().collect())),
            kv: c.kv,
            sql: c.sql.is_some(),
            websocket: c.websocket,
            http: c
                .http
                .as_ref()
                .map(|h| HostGrant::Only(h.iter().cloned().collect())),
        }
    }

    /// Only `log`.
    pub fn none() -> Self {
        Self {
            producer: None,
            kv: false,
            sql: false,
            websocket: false,
            http: None,
        }
    }

    /// Everything, publishing to any topic.
    pub fn all() -> Self {
        Self {
            producer: Some(TopicGrant::Any),
            kv: true,
            sql: true,
            websocket: true,
            http: Some(HostGrant::Any),
        }
    }

    /// Whether `cap` is granted.
    pub fn allows(&self, cap: Capability) -> bool {
        match cap {
            Capability::Producer => self.producer.is_some(),
            Capability::Kv => self.kv,
            Capability::Sql => self.sql,
            Capability::Websocket => self.websocket,
            Capability::Http => self.http.is_some(),
            Capability::Settings | Capability::Log => true,
        }
    }

    /// The granted capabilities, in a stable order.
    pub fn granted(&self) -> Vec<Capability> {
        Capability::ALL
            .into_iter()
            .filter(|c| self.allows(*c))
            .collect()
    }
}

impl Default for Grants {
    fn default() -> Self {
        Self::none()
    }
}

/// Everything a handler asked for during one call, in call order per kind.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Effects {
    /// Records queued for publishing; sent only if the call returns `ok`.
    pub publishes: Vec<Publish>,
    /// Log lines, already forwarded to the host's tracing as they were written.
    pub logs: Vec<LogLine>,
    /// Log lines dropped because the call went over its line limit.
    pub logs_dropped: u32,
    /// SQL statements run (successful ones), in the call's transaction.
    pub sql_statements: u32,
    /// Rows changed by those statements; committed only if the call returns `ok`.
    pub sql_rows_changed: u64,
    /// WebSocket pushes queued; delivered only if the call returns `ok`.
    pub broadcasts: Vec<Broadcast>,
    /// kv writes, in call order; applied (with the batch's) only if the call returns `ok`.
    #[serde(skip)]
    pub kv_writes: Vec<KvWrite>,
}

/// One queued WebSocket push.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Broadcast {
    /// The channel.
    pub channel: String,
    /// The message.
    pub message: String,
}
