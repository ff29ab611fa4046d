//! One handler call: a store, an instance, a deadline, a memory cap, and an outcome.
//!
//! By default every call gets a fresh `Store` and instance from the pre-instantiated
//! component, so no state leaks from one record to the next and a misbehaving call cannot
//! poison the following ones. With `instance_reuse = N` an instance serves up to N calls
//! (faster, but module globals and memory persist between records: only for handlers that
//! are written for it). Either way an instance whose call did not end `ok` or with the
//! guest's own `retryable`/`fatal` error — a trap, a timeout, out-of-memory — is dropped
//! and never entered again.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use wasmtime::{Store, Trap, UpdateDeadline};

use crate::capabilities::log::truncate_utf8;
use crate::capabilities::{Grants, KvStore, MemoryKv, SqlDatabase, SqlError};
use crate::event::Event;

use super::Runtime;
use super::component::{ComponentInfo, LoadReport};
use super::host::{Handler, HandlerEnv, HandlerPre, HostState, WitEvent, WitHandlerError};
use super::outcome::{FailureKind, HandlerFailure, Invocation, Outcome};

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
    /// 0: a fresh instance per call. N > 0: an instance serves up to N calls.
    pub instance_reuse: u32,
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
            instance_reuse: 0,
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
        Self {
            runtime,
            pre,
            info,
            report,
            env,
            deadline: spec.deadline,
            memory_bytes: spec.memory_bytes,
            output_bytes: spec.output_bytes,
            instance_reuse: spec.instance_reuse,
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

    fn give_back(&self, mut warm: Warm) {
        warm.calls += 1;
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

    /// Run `event` through the handler.
    ///
    /// `Ok` carries the outcome (including guest failures, traps, timeouts and
    /// out-of-memory); `Err` is a host-side failure to run the call at all (for example no
    /// free instance slot), which the caller should treat as retryable.
    pub async fn invoke(&self, event: &Event) -> anyhow::Result<Invocation> {
        let start = Instant::now();
        let (mut store, bindings, calls, reused) = match self.take_warm() {
            Some(w) => (w.store, Some(w.bindings), w.calls, true),
            None => (self.new_store(), None, 0, false),
        };
        store
            .data_mut()
            .begin_call(&event.id, &event.topic, event.partition, event.offset);
        // Arm the deadline before instantiating: instantiation runs guest code.
        store.data_mut().call.deadline = Some(start + self.deadline);
        store.set_epoch_deadline(1);
        // Borrowed, not copied: wasmtime lowers these bytes into the guest's memory directly.
        let headers: Vec<(&str, &[u8])> = event
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_slice()))
            .collect();
        let wit_event = to_wit(event, &headers);

        // The epoch stops guest code; this stops a host import that never returns.
        let hard_limit = self.deadline + self.deadline / 4 + Duration::from_millis(50);
        let pre = &self.pre;
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

        let outcome = match result {
            Err(_elapsed) => Outcome::Failed(HandlerFailure::new(
                FailureKind::Timeout,
                format!(
                    "handler did not finish within {:?} (a host call did not return)",
                    self.deadline
                ),
            )),
            Ok(Ok((bindings, guest_result))) => {
                let outcome = match guest_result {
                    Ok(()) => self.commit_sql(&mut store).await,
                    Err(WitHandlerError::Retryable(m)) => Outcome::Failed(HandlerFailure::new(
                        FailureKind::Retryable,
                        guest_message(m),
                    )),
                    Err(WitHandlerError::Fatal(m)) => {
                        Outcome::Failed(HandlerFailure::new(FailureKind::Fatal, guest_message(m)))
                    }
                };
                let invocation = self.finish(&mut store, outcome, start, reused);
                // A call that returned normally leaves a sound instance behind.
                if self.instance_reuse > 0 {
                    self.give_back(Warm {
                        store,
                        bindings,
                        calls,
                    });
                }
                return Ok(invocation);
            }
            Ok(Err((e, instantiating))) => {
                match self.classify(&e, store.data()) {
                    Some(failure) => Outcome::Failed(failure),
                    // Not the guest's doing: e.g. the instance pool is exhausted.
                    None if instantiating => {
                        return Err(anyhow::Error::from(e)).with_context(|| {
                            format!(
                                "handler={} event_id={}: instantiating",
                                self.env.name, event.id
                            )
                        });
                    }
                    None => Outcome::Failed(HandlerFailure::new(
                        FailureKind::Trap,
                        with_output(format!("{e:#}"), &store.data().output.text()),
                    )),
                }
            }
        };
        // The store is dropped here: a trapped or timed-out instance is never entered again.
        Ok(self.finish(&mut store, outcome, start, reused))
    }

    /// The call returned `ok`: commit its SQL transaction, if it opened one. A call that hit
    /// an SQL error (and went on to return `ok` anyway) cannot commit: its outcome becomes that
    /// error (`unavailable` → retryable, `rejected` → fatal).
    async fn commit_sql(&self, store: &mut Store<HostState>) -> Outcome {
        let call = &mut store.data_mut().call;
        if let Some(e) = call.sql_failed.take() {
            call.sql = None;
            let message = format!(
                "returned ok after a failed sql statement (its transaction was rolled back): {e}"
            );
            let kind = match e {
                SqlError::Unavailable(_) => FailureKind::Retryable,
                SqlError::Rejected(_) => FailureKind::Fatal,
            };
            return Outcome::Failed(HandlerFailure::new(kind, message));
        }
        let Some(tx) = call.sql.take() else {
            return Outcome::Ok;
        };
        let limit = self.env.sql_timeout;
        match tokio::time::timeout(limit, tx.commit()).await {
            Ok(Ok(())) => Outcome::Ok,
            Ok(Err(e)) => Outcome::Failed(HandlerFailure::new(
                FailureKind::Retryable,
                format!("committing the sql transaction failed: {e}"),
            )),
            Err(_) => Outcome::Failed(HandlerFailure::new(
                FailureKind::Retryable,
                format!("committing the sql transaction took longer than {limit:?}"),
            )),
        }
    }

    fn finish(
        &self,
        store: &mut Store<HostState>,
        outcome: Outcome,
        start: Instant,
        reused: bool,
    ) -> Invocation {
        let state = store.data_mut();
        // Whatever was not committed is rolled back now, not when the instance is next used.
        state.call.sql = None;
        let effects = std::mem::take(&mut state.call.effects);
        let guest_output = state.output.text();
        Invocation {
            outcome,
            effects,
            guest_output,
            duration: start.elapsed(),
            reused_instance: reused,
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
