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

pub mod kv;
pub mod log;
pub mod producer;

use std::collections::BTreeSet;
use std::fmt;

use serde::Serialize;

pub use kv::{KvStore, MemoryKv};
pub use log::LogLine;
pub use producer::{Publish, derive_event_id};

/// A host capability a handler can be granted. Each maps to one WIT interface of
/// `kasm:handler`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Capability {
    /// `kasm:handler/producer`: publish records to granted topics.
    Producer,
    /// `kasm:handler/kv`: a key-value store private to the handler.
    Kv,
    /// `kasm:handler/log`: structured logging; always granted.
    Log,
}

impl Capability {
    /// Every capability, in a stable order.
    pub const ALL: [Capability; 3] = [Capability::Producer, Capability::Kv, Capability::Log];

    /// The WIT interface name inside the `kasm:handler` package.
    pub fn interface(self) -> &'static str {
        match self {
            Capability::Producer => "producer",
            Capability::Kv => "kv",
            Capability::Log => "log",
        }
    }

    /// The capability behind a `kasm:handler` interface name, if it is one.
    pub fn from_interface(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.interface() == name)
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
}

impl Grants {
    /// Only `log`.
    pub fn none() -> Self {
        Self {
            producer: None,
            kv: false,
        }
    }

    /// Everything, publishing to any topic.
    pub fn all() -> Self {
        Self {
            producer: Some(TopicGrant::Any),
            kv: true,
        }
    }

    /// Whether `cap` is granted.
    pub fn allows(&self, cap: Capability) -> bool {
        match cap {
            Capability::Producer => self.producer.is_some(),
            Capability::Kv => self.kv,
            Capability::Log => true,
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
}
