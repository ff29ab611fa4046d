//! kasm host: consume Kafka and run each record through a sandboxed WebAssembly component.
//!
//! The crate is laid out along the path of one record (see `ARCHITECTURE.md`):
//!
//! - [`event`]: what a record becomes before a handler sees it, and how its event id is chosen.
//! - [`runtime`]: the one wasmtime engine, component loading and validation, the precompiled
//!   artifact cache, and a handler call with its deadline, memory cap and outcome.
//! - [`capabilities`]: what a handler may do (publish, kv, log), granted per handler.
//! - [`config`]: `kasm.toml` and the Kafka connection from the environment.
//! - [`cli`]: the `kasm` command line; [`client`]: its commands that talk to a running host's
//!   admin API.

pub mod admin;
pub mod app;
pub mod capabilities;
pub mod cli;
pub mod client;
pub mod config;
pub mod deploy;
pub mod dev;
pub mod event;
pub mod health;
pub mod kafka;
pub mod ledger;
pub mod metrics;
pub mod openapi;
pub mod pipeline;
pub mod produce;
pub mod runtime;
pub mod trace;
pub mod websocket;

pub use event::{Event, identify_event_id};
pub use runtime::{
    ComponentInfo, FailureKind, HandlerFailure, HandlerSpec, Invocation, LoadError, LoadedHandler,
    Outcome, Runtime, RuntimeConfig,
};
