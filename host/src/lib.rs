//! kasm host: consume Kafka and run each record through a sandboxed WebAssembly component.
//!
//! The modules are three layers (`ARCHITECTURE.md` walks through them):
//!
//! - **The process**: [`commands`] (one file per `kasm` subcommand) and [`app`] (a running
//!   host, wired from a configuration).
//! - **The control plane**: [`admin`] (the admin HTTP API and web console, hot swap in
//!   [`admin::deploy`], the OpenAPI document) and [`telemetry`] (health, metrics and traces,
//!   which the data plane reports and the admin server serves).
//! - **The data plane**, in the order a record meets it: [`config`] → [`kafka`] (clients,
//!   the owned record) → [`pipeline`] (consumer loop, partition workers, offsets) →
//!   [`event`] (what a handler sees) → [`runtime`] (wasmtime: load, call) →
//!   [`capabilities`] (what a handler may do) → [`ledger`] (what has run) → [`dlq`] (what
//!   failed). [`handler`] is the per-handler state that the pipeline, hot swap and the admin
//!   API share; `wit` is the WIT world's generated Rust side, which the runtime and the
//!   capabilities both use and which uses nothing.

pub mod admin;
pub mod app;
pub mod capabilities;
pub mod commands;
pub mod config;
pub mod dlq;
pub mod event;
pub mod handler;
pub mod kafka;
pub mod ledger;
pub mod pipeline;
pub mod runtime;
pub mod telemetry;
pub(crate) mod wit;

pub use event::{Event, identify_event_id};
pub use runtime::{
    ComponentInfo, FailureKind, HandlerFailure, HandlerSpec, Invocation, LoadError, LoadedHandler,
    Outcome, Runtime, RuntimeConfig,
};

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}
