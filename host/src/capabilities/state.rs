//! What the `kasm:handler` imports of one handler instance work on: the handler's settings
//! ([`HandlerEnv`], shared by all its instances) and the call in progress ([`CallState`]: the
//! event it handles, the effects queued so far, the batch's SQL transaction). Each capability's
//! `Host` impl is on [`CapabilityState`]; the runtime's store holds one and links the imports
//! to it, so no capability depends on the store.

use std::sync::Arc;
use std::time::Duration;

use crate::wit as bindings;

use super::http::HttpHooks;
use super::sql::SqlTx;
use super::{Effects, Grants, KvStore, SqlDatabase, SqlError};

/// Per-handler settings the imports need; shared by every instance of the handler.
#[derive(Debug)]
pub(crate) struct HandlerEnv {
    pub name: String,
    pub grants: Grants,
    pub kv: Arc<dyn KvStore>,
    pub max_publishes: usize,
    pub max_record_bytes: usize,
    /// Most bytes one call may queue in records and WebSocket pushes together.
    pub max_call_output_bytes: usize,
    pub kv_timeout: Duration,
    /// The handler's database, when `sql` is granted.
    pub sql: Option<Arc<dyn SqlDatabase>>,
    /// Bound on one SQL statement (and on opening the call's transaction).
    pub sql_timeout: Duration,
    /// The handler's settings (the `settings` interface).
    pub settings: Arc<std::collections::BTreeMap<String, String>>,
    /// Bound on each phase of an outbound HTTP request (connect, first byte, between bytes).
    pub http_timeout: Duration,
}

/// The event being handled, as the imports tag their work with it.
#[derive(Default)]
pub(crate) struct CallState {
    pub event_id: String,
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub effects: Effects,
    /// The call's SQL transaction, opened at its first statement; committed by the caller
    /// when the call ends `ok`, rolled back when dropped.
    pub sql: Option<Box<dyn SqlTx>>,
    /// The first SQL failure of the call: its transaction is gone and it cannot commit.
    pub sql_failed: Option<SqlError>,
    /// Bytes queued so far in records and WebSocket pushes (bounded by
    /// `max_call_output_bytes`: each record is under its own limit, but a guest can repeat one
    /// a thousand times).
    pub queued_bytes: usize,
    /// When the call must end; checked at every epoch tick (see `LoadedHandler::new_store`).
    pub deadline: Option<std::time::Instant>,
    /// The kv writes of the records before this one in its batch that ended `ok` (key →
    /// value, `None` deleted): what this call reads before the store.
    pub kv_batch: std::collections::HashMap<String, Option<Vec<u8>>>,
    /// Whether this call took its savepoint in the batch's transaction (at its first
    /// statement).
    pub savepoint_open: bool,
    /// The batch's transaction is unusable (a statement did not answer in time): the batch
    /// cannot commit, and what it wrote is gone.
    pub sql_lost: bool,
}

impl std::fmt::Debug for CallState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallState")
            .field("event_id", &self.event_id)
            .field("sql_open", &self.sql.is_some())
            .field("sql_failed", &self.sql_failed)
            .finish_non_exhaustive()
    }
}

/// The state behind the imports of one instance.
#[derive(Debug)]
pub(crate) struct CapabilityState {
    pub env: Arc<HandlerEnv>,
    pub call: CallState,
    /// Outbound HTTP policy (`wasi:http`), with the span of the record being handled.
    pub http: HttpHooks,
}

impl CapabilityState {
    pub fn new(env: Arc<HandlerEnv>) -> Self {
        let http = HttpHooks::new(&env.name, env.grants.http.clone(), env.http_timeout);
        Self {
            env,
            call: CallState::default(),
            http,
        }
    }

    /// Prepare for a new call: forget the previous call's effects and span.
    pub fn begin_call(&mut self, event_id: &str, topic: &str, partition: i32, offset: i64) {
        self.call = CallState {
            event_id: event_id.to_owned(),
            topic: topic.to_owned(),
            partition,
            offset,
            ..CallState::default()
        };
        self.http.trace = None;
    }
}

impl bindings::kasm::handler::types::Host for CapabilityState {}
