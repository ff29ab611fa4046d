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

use wasmtime::{Store, Trap, UpdateDeadline};

use crate::capabilities::{Grants, KvStore, MemoryKv, SqlDatabase};
use crate::event::Event;

use super::Runtime;
use super::component::{ComponentInfo, LoadReport};
use crate::capabilities::state::HandlerEnv;

use super::outcome::{FailureKind, HandlerFailure, Invocation, Outcome};
use super::store::HostState;
use crate::wit::{Handler, HandlerPre};

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

pub(super) struct Warm {
    pub(super) store: Store<HostState>,
    pub(super) bindings: Handler,
    pub(super) calls: u32,
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
    pub(super) runtime: Runtime,
    pub(super) pre: HandlerPre<HostState>,
    pub(super) info: ComponentInfo,
    pub(super) report: LoadReport,
    pub(super) env: Arc<HandlerEnv>,
    pub(super) deadline: Duration,
    pub(super) memory_bytes: usize,
    pub(super) output_bytes: usize,
    pub(super) instance_reuse: u32,
    pub(super) max_idle: usize,
    pub(super) warm: Mutex<Vec<Warm>>,
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

    pub(super) fn take_warm(&self) -> Option<Warm> {
        if self.instance_reuse == 0 {
            return None;
        }
        self.warm.lock().ok()?.pop()
    }

    /// An instance that served its calls soundly: kept for the next call (with
    /// `instance_reuse`, until it served that many; without, for the rest of its batch).
    pub(super) fn give_back(&self, warm: Warm) {
        if warm.calls >= self.instance_reuse {
            return;
        }
        if let Ok(mut idle) = self.warm.lock()
            && idle.len() < self.max_idle
        {
            idle.push(warm);
        }
    }

    pub(super) fn new_store(&self) -> Store<HostState> {
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
                .apply(
                    &self.env.name,
                    inv.effects.kv_writes.clone(),
                    Vec::new(),
                    crate::now_ms(),
                )
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

    pub(super) fn finish(
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
            wrote_sql: false,
        }
    }

    /// Turn a wasmtime error from instantiation or the call into a handler failure, or
    /// `None` if it is not the guest's doing.
    pub(super) fn classify(
        &self,
        e: &wasmtime::Error,
        state: &HostState,
    ) -> Option<HandlerFailure> {
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

pub(super) fn root_message(e: &wasmtime::Error) -> String {
    match e.downcast_ref::<Trap>() {
        Some(t) => t.to_string(),
        None => format!("{e:#}"),
    }
}

pub(super) fn with_output(message: String, output: &str) -> String {
    if output.is_empty() {
        message
    } else {
        format!("{message}; guest output: {output}")
    }
}
