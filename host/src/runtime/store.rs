//! The store data of one handler instance: the WASI context (no preopens, no environment, no
//! arguments, no network; stdout and stderr go to a bounded capture), the resource table
//! (capped), the memory limiter, and the state the `kasm:handler` imports work on
//! ([`CapabilityState`], whose `Host` impls live with each capability).
//!
//! The WASI context is built on the guest's first WASI call, not with the store: building one
//! seeds its RNGs and boxes its defaults twice (`WasiCtxBuilder::build` leaves a fresh builder
//! behind), measured at 0.6–0.8 µs of a 22–33 µs fresh call, and a handler that only uses the
//! `kasm:handler` imports (the `fixture` and `fixture-publisher` components, a guest that does
//! not panic or print) makes no WASI call at all. Every WASI import reaches the context
//! through [`WasiView::ctx`], so a guest that does call WASI gets the same sandboxed context.

use std::sync::Arc;

use wasmtime::component::ResourceTable;
use wasmtime::{ResourceLimiter, StoreLimits, StoreLimitsBuilder};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use crate::capabilities::state::{CapabilityState, HandlerEnv};

use super::capture::OutputCapture;

/// A `StoreLimits` that remembers whether a memory growth was refused, which is how a trap
/// is told apart as `out-of-memory`.
#[derive(Debug)]
pub(crate) struct Limiter {
    limits: StoreLimits,
    pub memory_denied: bool,
}

impl Limiter {
    pub fn new(memory_bytes: usize) -> Self {
        let limits = StoreLimitsBuilder::new()
            .memory_size(memory_bytes)
            .table_elements(100_000)
            .instances(64)
            .tables(64)
            .memories(8)
            .trap_on_grow_failure(false)
            .build();
        Self {
            limits,
            memory_denied: false,
        }
    }
}

impl ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let allowed = self.limits.memory_growing(current, desired, maximum)?;
        if !allowed {
            self.memory_denied = true;
        }
        Ok(allowed)
    }

    fn memory_grow_failed(&mut self, _error: wasmtime::Error) -> wasmtime::Result<()> {
        self.memory_denied = true;
        Ok(())
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        self.limits.table_growing(current, desired, maximum)
    }

    fn instances(&self) -> usize {
        self.limits.instances()
    }

    fn tables(&self) -> usize {
        self.limits.tables()
    }

    fn memories(&self) -> usize {
        self.limits.memories()
    }
}

/// Everything a handler instance's `Store` holds.
pub(crate) struct HostState {
    /// Built on first use, by [`WasiView::ctx`].
    wasi: Option<WasiCtx>,
    http: wasmtime_wasi_http::WasiHttpCtx,
    table: ResourceTable,
    pub limiter: Limiter,
    pub output: OutputCapture,
    /// What the `kasm:handler` imports (and the `wasi:http` hook) work on.
    pub caps: CapabilityState,
}

/// Most random bytes a guest may ask for in one call to `wasi:random`.
const MAX_RANDOM_BYTES: u64 = 1 << 20;

/// Most resources (streams, pollables) a guest may hold at once.
const MAX_RESOURCES: usize = 1024;

impl HostState {
    pub fn new(env: Arc<HandlerEnv>, memory_bytes: usize, output_bytes: usize) -> Self {
        let output = OutputCapture::new(output_bytes);
        let mut table = ResourceTable::new();
        table.set_max_capacity(MAX_RESOURCES);
        Self {
            wasi: None,
            http: wasmtime_wasi_http::WasiHttpCtx::new(),
            table,
            limiter: Limiter::new(memory_bytes),
            output,
            caps: CapabilityState::new(env),
        }
    }

    /// The span of the record this call handles (after [`Self::begin_call`]).
    pub fn set_trace(&mut self, span: Option<crate::telemetry::trace::RecordSpan>) {
        self.caps.http.trace = span;
    }

    /// Prepare for a new call: forget the previous call's effects and output.
    pub fn begin_call(&mut self, event_id: &str, topic: &str, partition: i32, offset: i64) {
        self.caps.begin_call(event_id, topic, partition, offset);
        self.limiter.memory_denied = false;
        self.output.clear();
    }
}

impl std::fmt::Debug for HostState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostState")
            .field("handler", &self.caps.env.name)
            .finish_non_exhaustive()
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        let output = &self.output;
        WasiCtxView {
            ctx: self.wasi.get_or_insert_with(|| sandboxed_wasi(output)),
            table: &mut self.table,
        }
    }
}

/// The WASI context of every handler instance.
fn sandboxed_wasi(output: &OutputCapture) -> WasiCtx {
    // Nothing is granted: no preopened directories, no environment, no arguments, no
    // network (TCP, UDP and name lookup are off and every address is refused), stdin
    // closed. Clocks and randomness stay: std needs them and they grant no access.
    WasiCtxBuilder::new()
        .stdout(output.clone())
        .stderr(output.clone())
        .allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false)
        .socket_addr_check(|_, _| Box::pin(async { false }))
        // wasmtime allows 64 MiB per `get-random-bytes` call, allocated on the host
        // before the guest's memory is even asked; no handler needs more than a little.
        .max_random_size(MAX_RANDOM_BYTES)
        .build()
}

impl wasmtime_wasi_http::WasiHttpView for HostState {
    fn http(&mut self) -> wasmtime_wasi_http::WasiHttpCtxView<'_> {
        wasmtime_wasi_http::WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.caps.http,
        }
    }
}
