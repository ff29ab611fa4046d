//! One handler call: a store, an instance, a deadline, a memory cap, and an outcome.
//!
//! By default every call gets a fresh `Store` and instance from the pre-instantiated
//! component, so no state leaks from one record to the next and a misbehaving call cannot
//! poison the following ones. With `instance_reuse = N` an instance serves up to N calls
//! (faster, but module globals and memory persist between records: only for handlers that
//! are written for it). Either way an instance whose call did not end `ok` or with the
//! guest's own `retryable`/`fatal` error — a trap, a timeout, out-of-memory — is dropped
//! and never entered again.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use wasmtime::{Store, Trap, UpdateDeadline};

use crate::capabilities::log::truncate_utf8;
use crate::capabilities::sql::SqlTx;
use crate::capabilities::{Grants, KvStore, MemoryKv, SqlDatabase, SqlError};
use crate::event::Event;

use super::Runtime;
use super::component::{ComponentInfo, LoadReport};
use crate::capabilities::sql::savepoint_name;
use crate::capabilities::state::HandlerEnv;

use super::bindings::{Handler, HandlerPre, WitEvent, WitHandlerError};
use super::outcome::{FailureKind, HandlerFailure, Invocation, Outcome};
use super::store::HostState;

/// How a handler is run: its name, grants and limits.
#[derive(Debug, Clone)]
pub struct HandlerSpec {
    /// Handler name (tags logs, namespaces kv, seeds output event ids).
    pub name: String,
    /// What the handler may do.
    pub grants: Grants,
    /// Longest a call may run, instantiation included.
    pub deadline: Duration,
    /// Memory cap per instance, in bytes.
    pub memory_bytes: usize,
    /// Most records one call may publish.
    pub max_publishes: usize,
    /// Largest record (key + value + headers) a call may publish, in bytes.
    pub max_record_bytes: usize,
    /// Most bytes one call may queue in records and WebSocket pushes together (what the host
    /// holds for a call until it ends).
    pub max_call_output_bytes: usize,
    /// Guest stdout/stderr kept per call, in bytes (the tail).
    pub output_bytes: usize,
    /// 0: a fresh instance per batch (per call outside a batch). N > 0: an instance serves
    /// up to N calls. `None`: by what the component is ([`default_instance_reuse`]).
    pub instance_reuse: Option<u32>,
    /// Idle reusable instances kept (with `instance_reuse` > 0).
    pub max_idle_instances: usize,
    /// Backend of the `kv` capability.
    pub kv: Arc<dyn KvStore>,
    /// Bound on one kv backend call.
    pub kv_timeout: Duration,
    /// The handler's database (with `sql` granted).
    pub sql: Option<Arc<dyn SqlDatabase>>,
    /// The handler's settings (`settings` interface).
    pub settings: std::collections::BTreeMap<String, String>,
}

impl HandlerSpec {
    /// Defaults: nothing granted but `log`, 1 s deadline, 64 MiB memory, fresh instances.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            grants: Grants::none(),
            deadline: Duration::from_secs(1),
            memory_bytes: 64 << 20,
            max_publishes: 1000,
            max_record_bytes: 1 << 20,
            max_call_output_bytes: 64 << 20,
            output_bytes: 16 << 10,
            instance_reuse: None,
            max_idle_instances: 8,
            kv: Arc::new(MemoryKv::default()),
            kv_timeout: Duration::from_secs(5),
            sql: None,
            settings: std::collections::BTreeMap::new(),
        }
    }
}

struct Warm {
    store: Store<HostState>,
    bindings: Handler,
    calls: u32,
}

/// How many calls an instance serves when the handler's configuration does not say: 0 (a
/// fresh instance per batch) for a compiled component; [`INTERPRETED_INSTANCE_REUSE`] for an
/// interpreter (a component whose `kasm:guest` section names Python or JavaScript), whose
/// fresh instance costs milliseconds (the interpreter's start) where a compiled one costs
/// microseconds: at a low rate, where every record is a batch of its own, a fresh instance per
/// batch would be one per record.
pub fn default_instance_reuse(info: &ComponentInfo) -> u32 {
    match info.language.as_deref() {
        Some("python" | "javascript") => INTERPRETED_INSTANCE_REUSE,
        _ => 0,
    }
}

/// Calls an interpreted component's instance serves by default (see
/// [`default_instance_reuse`]).
pub const INTERPRETED_INSTANCE_REUSE: u32 = 1000;

/// A component loaded for one handler, ready to be called.
pub struct LoadedHandler {
    runtime: Runtime,
    pre: HandlerPre<HostState>,
    info: ComponentInfo,
    report: LoadReport,
    env: Arc<HandlerEnv>,
    deadline: Duration,
    memory_bytes: usize,
    output_bytes: usize,
    instance_reuse: u32,
    max_idle: usize,
    warm: Mutex<Vec<Warm>>,
}

impl std::fmt::Debug for LoadedHandler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedHandler")
            .field("handler", &self.env.name)
            .field("sha256", &self.info.sha256)
            .finish_non_exhaustive()
    }
}

impl LoadedHandler {
    pub(super) fn new(
        runtime: Runtime,
        pre: HandlerPre<HostState>,
        info: ComponentInfo,
        report: LoadReport,
        spec: HandlerSpec,
    ) -> Self {
        let env = Arc::new(HandlerEnv {
            name: spec.name,
            grants: spec.grants,
            kv: spec.kv,
            max_publishes: spec.max_publishes,
            max_record_bytes: spec.max_record_bytes,
            max_call_output_bytes: spec.max_call_output_bytes,
            kv_timeout: spec.kv_timeout,
            sql: spec.sql,
            // A slow database answers the handler with an `unavailable` error (retryable)
            // before the call's own deadline stops it as a timeout.
            sql_timeout: spec.deadline,
            settings: Arc::new(spec.settings),
            // Like SQL: a slow server answers the guest with a timeout error (retryable)
            // before the call's deadline stops it.
            http_timeout: spec.deadline,
        });
        let instance_reuse = spec
            .instance_reuse
            .unwrap_or_else(|| default_instance_reuse(&info));
        Self {
            runtime,
            pre,
            info,
            report,
            env,
            deadline: spec.deadline,
            memory_bytes: spec.memory_bytes,
            output_bytes: spec.output_bytes,
            instance_reuse,
            max_idle: spec.max_idle_instances,
            warm: Mutex::new(Vec::new()),
        }
    }

    /// The handler's name.
    pub fn name(&self) -> &str {
        &self.env.name
    }

    /// What was loaded (hash, imports, exports, capabilities).
    pub fn info(&self) -> &ComponentInfo {
        &self.info
    }

    /// Whether the load compiled or hit the artifact cache, and how long it took.
    pub fn load_report(&self) -> &LoadReport {
        &self.report
    }

    /// The grants this handler runs with.
    pub fn grants(&self) -> &Grants {
        &self.env.grants
    }

    fn take_warm(&self) -> Option<Warm> {
        if self.instance_reuse == 0 {
            return None;
        }
        self.warm.lock().ok()?.pop()
    }

    /// An instance that served its calls soundly: kept for the next call (with
    /// `instance_reuse`, until it served that many; without, for the rest of its batch).
    fn give_back(&self, warm: Warm) {
        if warm.calls >= self.instance_reuse {
            return;
        }
        if let Ok(mut idle) = self.warm.lock()
            && idle.len() < self.max_idle
        {
            idle.push(warm);
        }
    }

    fn new_store(&self) -> Store<HostState> {
        let state = HostState::new(self.env.clone(), self.memory_bytes, self.output_bytes);
        let mut store = Store::new(self.runtime.engine(), state);
        store.limiter(|s| &mut s.limiter);
        // At every epoch tick a running guest yields to the async executor, then goes on
        // until its call's deadline, where it is interrupted (a `timeout`). Without the yield
        // a guest that spins would hold its executor thread for its whole deadline, and on a
        // two-core machine two spinning guests stall every other handler of the host.
        store.epoch_deadline_callback(|store| {
            let due = store
                .data()
                .caps
                .call
                .deadline
                .is_none_or(|d| Instant::now() >= d);
            Ok(if due {
                UpdateDeadline::Interrupt
            } else {
                UpdateDeadline::Yield(1)
            })
        });
        store
    }

    /// Start a batch: the records run through [`Batch::invoke`] share an instance, one SQL
    /// transaction and their staged kv writes until the batch ends.
    pub fn batch(&self) -> Batch<'_> {
        Batch {
            handler: self,
            warm: None,
            sql: None,
            sql_lost: false,
            kv: HashMap::new(),
            calls: 0,
            trace: None,
        }
    }

    /// Run `event` through the handler on its own: a batch of one, its SQL committed and its
    /// kv writes applied when it ends `ok` (`kasm invoke`, tests).
    ///
    /// `Ok` carries the outcome (including guest failures, traps, timeouts and
    /// out-of-memory); `Err` is a host-side failure to run the call at all (for example no
    /// free instance slot), which the caller should treat as retryable.
    pub async fn invoke(&self, event: &Event) -> anyhow::Result<Invocation> {
        let mut batch = self.batch();
        let mut inv = batch.invoke(event).await?;
        if inv.outcome == Outcome::Ok {
            if let Err(e) = batch.commit_sql().await {
                inv.outcome = Outcome::Failed(HandlerFailure::new(FailureKind::Retryable, e));
            } else if let Err(e) = self
                .env
                .kv
                .apply(&self.env.name, inv.effects.kv_writes.clone())
                .await
            {
                inv.outcome = Outcome::Failed(HandlerFailure::new(
                    FailureKind::Retryable,
                    format!("applying the kv writes failed: {e:#}"),
                ));
            }
        }
        batch.finish();
        Ok(inv)
    }

    fn finish(
        &self,
        store: &mut Store<HostState>,
        outcome: Outcome,
        start: Instant,
        reused: bool,
    ) -> Invocation {
        let state = store.data_mut();
        let effects = std::mem::take(&mut state.caps.call.effects);
        let guest_output = state.output.text();
        Invocation {
            outcome,
            effects,
            guest_output,
            duration: start.elapsed(),
            reused_instance: reused,
            savepoint: None,
        }
    }

    /// Turn a wasmtime error from instantiation or the call into a handler failure, or
    /// `None` if it is not the guest's doing.
    fn classify(&self, e: &wasmtime::Error, state: &HostState) -> Option<HandlerFailure> {
        let output = state.output.text();
        if state.limiter.memory_denied {
            return Some(HandlerFailure::new(
                FailureKind::OutOfMemory,
                with_output(
                    format!(
                        "memory growth past the cap of {} bytes was refused, then: {}",
                        self.memory_bytes,
                        root_message(e)
                    ),
                    &output,
                ),
            ));
        }
        if let Some(trap) = e.downcast_ref::<Trap>() {
            if *trap == Trap::Interrupt {
                return Some(HandlerFailure::new(
                    FailureKind::Timeout,
                    with_output(
                        format!("handler ran past its deadline of {:?}", self.deadline),
                        &output,
                    ),
                ));
            }
            return Some(HandlerFailure::new(
                FailureKind::Trap,
                // wasmtime's `Trap` reads "wasm trap: …" by itself.
                with_output(trap.to_string(), &output),
            ));
        }
        if let Some(exit) = e.downcast_ref::<wasmtime_wasi::I32Exit>() {
            return Some(HandlerFailure::new(
                FailureKind::Trap,
                with_output(format!("guest called exit({})", exit.0), &output),
            ));
        }
        None
    }
}

/// One batch's share of a handler: the instance its records run on, the SQL transaction
/// they write in (a savepoint per record) and the kv writes of those that ended `ok`.
///
/// Records run one after another ([`Batch::invoke`]); a call that does not end `ok` has its
/// savepoint rolled back, so the records before it keep their writes. An instance that
/// trapped, timed out or ran out of memory is dropped and the next record gets a fresh one.
/// The caller commits ([`Batch::commit_sql`]) once the batch's publishes are acknowledged, or
/// gives the transaction up ([`Batch::abandon_sql`]). Dropping the batch rolls back what it
/// did not commit.
pub struct Batch<'h> {
    handler: &'h LoadedHandler,
    warm: Option<Warm>,
    sql: Option<Box<dyn SqlTx>>,
    sql_lost: bool,
    kv: HashMap<String, Option<Vec<u8>>>,
    calls: u32,
    /// The span of the next record, when tracing is on (see [`Batch::set_trace`]).
    trace: Option<crate::telemetry::trace::RecordSpan>,
}

impl std::fmt::Debug for Batch<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batch")
            .field("handler", &self.handler.env.name)
            .field("calls", &self.calls)
            .field("sql_open", &self.sql.is_some())
            .field("sql_lost", &self.sql_lost)
            .finish_non_exhaustive()
    }
}

impl Batch<'_> {
    /// The span the next [`Batch::invoke`] runs under: its HTTP requests and log lines carry
    /// its trace.
    pub fn set_trace(&mut self, span: Option<crate::telemetry::trace::RecordSpan>) {
        self.trace = span;
    }

    /// Run `event` as the batch's next record. See [`LoadedHandler::invoke`] for what `Ok`
    /// and `Err` mean; on `Ok(ok)` the call's kv writes are visible to the records after it.
    pub async fn invoke(&mut self, event: &Event) -> anyhow::Result<Invocation> {
        let h = self.handler;
        let start = Instant::now();
        let warm = self.warm.take().or_else(|| h.take_warm());
        let (mut store, bindings, calls, reused) = match warm {
            Some(w) => (w.store, Some(w.bindings), w.calls, w.calls > 0),
            None => (h.new_store(), None, 0, false),
        };
        let savepoint = self.calls;
        self.calls = self.calls.wrapping_add(1);
        {
            let state = store.data_mut();
            state.begin_call(&event.id, &event.topic, event.partition, event.offset);
            state.set_trace(self.trace.take());
            // The batch's transaction and staged kv, lent to the call and taken back after.
            state.caps.call.sql = self.sql.take();
            state.caps.call.kv_batch = std::mem::take(&mut self.kv);
            state.caps.call.savepoint = savepoint;
            state.caps.call.sql_lost = self.sql_lost;
            // Arm the deadline before instantiating: instantiation runs guest code.
            state.caps.call.deadline = Some(start + h.deadline);
        }
        store.set_epoch_deadline(1);
        // Borrowed, not copied: wasmtime lowers these bytes into the guest's memory directly.
        let headers: Vec<(&str, &[u8])> = event
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_slice()))
            .collect();
        let wit_event = to_wit(event, &headers);

        // The epoch stops guest code; this stops a host import that never returns.
        let hard_limit = h.deadline + h.deadline / 4 + Duration::from_millis(50);
        let pre = &h.pre;
        let run = async {
            let bindings = match bindings {
                Some(b) => b,
                None => match pre.instantiate_async(&mut store).await {
                    Ok(b) => b,
                    Err(e) => return Err((e, true)),
                },
            };
            match bindings.call_handle(&mut store, wit_event).await {
                Ok(r) => Ok((bindings, r)),
                Err(e) => Err((e, false)),
            }
        };
        let result = tokio::time::timeout(hard_limit, run).await;
        // A call cut off by the hard limit may have left a statement running.
        let cut_off = result.is_err();

        let (outcome, keep) = match result {
            Err(_elapsed) => (
                Outcome::Failed(HandlerFailure::new(
                    FailureKind::Timeout,
                    format!(
                        "handler did not finish within {:?} (a host call did not return)",
                        h.deadline
                    ),
                )),
                None,
            ),
            Ok(Ok((bindings, guest_result))) => {
                let outcome = match guest_result {
                    Ok(()) => sql_outcome(&mut store),
                    Err(WitHandlerError::Retryable(m)) => Outcome::Failed(HandlerFailure::new(
                        FailureKind::Retryable,
                        guest_message(m),
                    )),
                    Err(WitHandlerError::Fatal(m)) => {
                        Outcome::Failed(HandlerFailure::new(FailureKind::Fatal, guest_message(m)))
                    }
                };
                // A call that returned normally leaves a sound instance behind.
                (outcome, Some(bindings))
            }
            Ok(Err((e, instantiating))) => match h.classify(&e, store.data()) {
                Some(failure) => (Outcome::Failed(failure), None),
                // Not the guest's doing: e.g. the instance pool is exhausted.
                None if instantiating => {
                    self.take_back(&mut store, false);
                    return Err(anyhow::Error::from(e)).with_context(|| {
                        format!(
                            "handler={} event_id={}: instantiating",
                            h.env.name, event.id
                        )
                    });
                }
                None => (
                    Outcome::Failed(HandlerFailure::new(
                        FailureKind::Trap,
                        with_output(format!("{e:#}"), &store.data().output.text()),
                    )),
                    None,
                ),
            },
        };
        let ok = outcome == Outcome::Ok;
        let wrote = self.take_back(&mut store, cut_off);
        let mut invocation = h.finish(&mut store, outcome, start, reused);
        if ok {
            for w in &invocation.effects.kv_writes {
                self.kv.insert(w.key.clone(), w.value.clone());
            }
            invocation.savepoint = wrote.then_some(savepoint);
            // Its writes join the batch's transaction: the savepoint goes (in the next trip),
            // so that savepoints never nest (SQLite journals every page again for each level).
            if wrote && let Some(tx) = self.sql.as_mut() {
                tx.defer(&format!("RELEASE SAVEPOINT {}", savepoint_name(savepoint)));
            }
        } else if wrote && let Err(e) = self.rollback_to(savepoint).await {
            tracing::warn!(handler = %h.env.name, event_id = %event.id, error = %e,
                "rolling back a failed call's savepoint failed; the batch's transaction is dropped");
            self.lose_sql();
        }
        // A trapped or timed-out instance is never entered again: its store is dropped.
        if let Some(bindings) = keep {
            self.warm = Some(Warm {
                store,
                bindings,
                calls: calls.saturating_add(1),
            });
        }
        Ok(invocation)
    }

    /// Take the transaction and staged kv back from a call's store; whether the call took a
    /// savepoint (wrote under it). `cut_off`: the call was stopped while it may have been
    /// inside a statement, so the transaction cannot be trusted.
    fn take_back(&mut self, store: &mut Store<HostState>, cut_off: bool) -> bool {
        let call = &mut store.data_mut().caps.call;
        self.sql = call.sql.take();
        self.kv = std::mem::take(&mut call.kv_batch);
        self.sql_lost |= call.sql_lost;
        let wrote = call.savepoint_open;
        if cut_off && wrote {
            self.lose_sql();
        }
        wrote
    }

    fn lose_sql(&mut self) {
        self.sql = None;
        self.sql_lost = true;
    }

    async fn rollback_to(&mut self, savepoint: u32) -> Result<(), SqlError> {
        let limit = self.handler.env.sql_timeout;
        let Some(tx) = self.sql.as_mut() else {
            return Ok(());
        };
        let name = savepoint_name(savepoint);
        let statement = format!("ROLLBACK TO SAVEPOINT {name}; RELEASE SAVEPOINT {name}");
        match tokio::time::timeout(limit, tx.batch(&statement)).await {
            Ok(r) => r,
            Err(_) => Err(SqlError::Unavailable(format!(
                "the database did not answer within {limit:?}"
            ))),
        }
    }

    /// Whether the batch's transaction was lost (a statement did not answer in time, or a
    /// rollback failed): what the batch's records wrote is gone, and they must run again.
    pub fn sql_lost(&self) -> bool {
        self.sql_lost
    }

    /// Give up the batch's SQL transaction (rolled back): every record that wrote in it runs
    /// again. For a record dead-lettered after it ran `ok` (its publishes could not be sent):
    /// its savepoint was released into the batch's transaction, which cannot undo it alone.
    pub fn abandon_sql(&mut self) {
        self.lose_sql();
    }

    /// Add `keys` (the records that wrote) to consumer group `group`'s inbox rows inside the batch's SQL
    /// transaction, so that they commit, or not, with the writes. Nothing without a
    /// transaction (no record wrote).
    pub async fn note_inbox(
        &mut self,
        group: &str,
        keys: &[&str],
        at_ms: i64,
    ) -> Result<(), String> {
        if self.sql_lost || keys.is_empty() {
            return Ok(());
        }
        let limit = self.handler.env.sql_timeout;
        let Some(tx) = self.sql.as_mut() else {
            return Ok(());
        };
        let insert = crate::capabilities::sql::inbox_insert(tx.as_mut(), group, keys, at_ms);
        match tokio::time::timeout(limit, insert).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => {
                self.lose_sql();
                Err(format!("writing the inbox rows failed: {e}"))
            }
            Err(_) => {
                self.lose_sql();
                Err(format!("writing the inbox rows took longer than {limit:?}"))
            }
        }
    }

    /// Commit the batch's SQL transaction, if its records wrote any. Afterwards the batch has
    /// no transaction; a later record opens a new one.
    pub async fn commit_sql(&mut self) -> Result<(), String> {
        if self.sql_lost {
            return Err("the batch's sql transaction was lost; its writes were rolled back".into());
        }
        let Some(tx) = self.sql.take() else {
            return Ok(());
        };
        let limit = self.handler.env.sql_timeout;
        match tokio::time::timeout(limit, tx.commit()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(format!("committing the sql transaction failed: {e}")),
            Err(_) => Err(format!(
                "committing the sql transaction took longer than {limit:?}"
            )),
        }
    }

    /// Forget the SQL transaction (rolled back) and the staged kv: the records of the batch
    /// run again.
    pub fn reset(&mut self) {
        self.sql = None;
        self.sql_lost = false;
        self.kv.clear();
    }

    /// End the batch: an instance that may serve more calls goes back to the handler's pool
    /// (with `instance_reuse`); anything not committed is rolled back.
    pub fn finish(mut self) {
        if let Some(w) = self.warm.take() {
            self.handler.give_back(w);
        }
    }
}

/// The call returned `ok`: it may still have hit an SQL error (and returned `ok` anyway), in
/// which case it cannot commit: its outcome becomes that error (`unavailable` → retryable,
/// `rejected` → fatal).
fn sql_outcome(store: &mut Store<HostState>) -> Outcome {
    let call = &mut store.data_mut().caps.call;
    let Some(e) = call.sql_failed.take() else {
        return Outcome::Ok;
    };
    let message =
        format!("returned ok after a failed sql statement (its writes were rolled back): {e}");
    let kind = match e {
        SqlError::Unavailable(_) => FailureKind::Retryable,
        SqlError::Rejected(_) => FailureKind::Fatal,
    };
    Outcome::Failed(HandlerFailure::new(kind, message))
}

/// Longest error message kept from what a guest returns, in bytes: with the truncation marker
/// it still fits the 8 KiB a dead letter keeps.
const MAX_GUEST_MESSAGE: usize = (8 << 10) - 64;

/// The guest's own error message, cut to [`MAX_GUEST_MESSAGE`]: a guest can return a message
/// as large as its memory, which would otherwise be held, logged on every retry and carried
/// to the dead-letter writer.
fn guest_message(message: String) -> String {
    let len = message.len();
    if len <= MAX_GUEST_MESSAGE {
        return message;
    }
    let kept = truncate_utf8(message, MAX_GUEST_MESSAGE);
    format!("{kept} [{len} bytes, truncated]")
}

fn root_message(e: &wasmtime::Error) -> String {
    match e.downcast_ref::<Trap>() {
        Some(t) => t.to_string(),
        None => format!("{e:#}"),
    }
}

fn with_output(message: String, output: &str) -> String {
    if output.is_empty() {
        message
    } else {
        format!("{message}; guest output: {output}")
    }
}

fn to_wit<'a>(e: &'a Event, headers: &'a [(&'a str, &'a [u8])]) -> WitEvent<'a> {
    WitEvent {
        id: &e.id,
        topic: &e.topic,
        partition: e.partition,
        offset: e.offset,
        key: e.key.as_deref(),
        payload: &e.payload,
        headers,
        timestamp_ms: e.timestamp_ms,
        attempt: e.attempt,
    }
}
