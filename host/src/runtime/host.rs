//! The store data of one handler instance and the host side of the `kasm:handler` imports.
//!
//! A [`HostState`] lives in one `Store`: the WASI context (no preopens, no environment, no
//! arguments, no network; stdout and stderr go to a bounded capture), the resource table
//! (capped), the memory limiter, and the per-call state that the imports write into.

use std::sync::Arc;
use std::time::Duration;

use wasmtime::component::ResourceTable;
use wasmtime::{ResourceLimiter, StoreLimits, StoreLimitsBuilder};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use crate::capabilities::log::{MAX_LOG_LINE, MAX_LOG_LINES, truncate_utf8};
use crate::capabilities::producer::CAUSATION_HEADER;
use crate::capabilities::{Effects, Grants, KvStore, LogLine, Publish, derive_event_id};
use crate::event::EVENT_ID_HEADER;

use super::capture::OutputCapture;

wasmtime::component::bindgen!({
    path: "../wit",
    world: "handler",
    imports: {
        "kasm:handler/kv": async,
        default: tracing,
    },
    exports: { default: async },
});

pub(crate) use kasm::handler::types::{Event as WitEvent, HandlerError as WitHandlerError, Level};

/// Per-handler settings the imports need; shared by every instance of the handler.
#[derive(Debug)]
pub(crate) struct HandlerEnv {
    pub name: String,
    pub grants: Grants,
    pub kv: Arc<dyn KvStore>,
    pub max_publishes: usize,
    pub max_record_bytes: usize,
    pub kv_timeout: Duration,
}

/// The event being handled, as the imports tag their work with it.
#[derive(Debug, Default)]
pub(crate) struct CallState {
    pub event_id: String,
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub effects: Effects,
}

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
    wasi: WasiCtx,
    table: ResourceTable,
    pub limiter: Limiter,
    pub output: OutputCapture,
    pub env: Arc<HandlerEnv>,
    pub call: CallState,
}

/// Most resources (streams, pollables) a guest may hold at once.
const MAX_RESOURCES: usize = 1024;

impl HostState {
    pub fn new(env: Arc<HandlerEnv>, memory_bytes: usize, output_bytes: usize) -> Self {
        let output = OutputCapture::new(output_bytes);
        // Nothing is granted: no preopened directories, no environment, no arguments, no
        // network (TCP, UDP and name lookup are off and every address is refused), stdin
        // closed. Clocks and randomness stay: std needs them and they grant no access.
        let wasi = WasiCtxBuilder::new()
            .stdout(output.clone())
            .stderr(output.clone())
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .socket_addr_check(|_, _| Box::pin(async { false }))
            .build();
        let mut table = ResourceTable::new();
        table.set_max_capacity(MAX_RESOURCES);
        Self {
            wasi,
            table,
            limiter: Limiter::new(memory_bytes),
            output,
            env,
            call: CallState::default(),
        }
    }

    /// Prepare for a new call: forget the previous call's effects and output.
    pub fn begin_call(&mut self, event_id: &str, topic: &str, partition: i32, offset: i64) {
        self.call = CallState {
            event_id: event_id.to_owned(),
            topic: topic.to_owned(),
            partition,
            offset,
            effects: Effects::default(),
        };
        self.limiter.memory_denied = false;
        self.output.clear();
    }
}

impl std::fmt::Debug for HostState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostState")
            .field("handler", &self.env.name)
            .finish_non_exhaustive()
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl kasm::handler::types::Host for HostState {}

impl kasm::handler::producer::Host for HostState {
    fn publish(
        &mut self,
        topic: String,
        key: Option<Vec<u8>>,
        payload: Vec<u8>,
        headers: Vec<(String, Vec<u8>)>,
    ) -> Result<String, String> {
        let env = &self.env;
        let Some(grant) = &env.grants.producer else {
            return Err(format!(
                "the producer capability is not granted to handler `{}`",
                env.name
            ));
        };
        if !grant.allows(&topic) {
            return Err(format!(
                "topic `{topic}` is not granted to handler `{}` (granted: {grant})",
                env.name
            ));
        }
        let publishes = &mut self.call.effects.publishes;
        if publishes.len() >= env.max_publishes {
            return Err(format!(
                "handler `{}` already queued {} records in this call, the limit",
                env.name, env.max_publishes
            ));
        }
        let size = payload.len()
            + key.as_ref().map_or(0, Vec::len)
            + headers
                .iter()
                .map(|(k, v)| k.len() + v.len())
                .sum::<usize>();
        if size > env.max_record_bytes {
            return Err(format!(
                "record for topic `{topic}` is {size} bytes, over the limit of {} bytes",
                env.max_record_bytes
            ));
        }
        let index = u32::try_from(publishes.len()).unwrap_or(u32::MAX);
        let event_id = derive_event_id(&self.call.event_id, &env.name, index);
        // The host owns the identity headers: a handler cannot forge another event's id.
        let mut headers: Vec<(String, Vec<u8>)> = headers
            .into_iter()
            .filter(|(k, _)| k != EVENT_ID_HEADER && k != CAUSATION_HEADER)
            .collect();
        headers.push((EVENT_ID_HEADER.to_owned(), event_id.clone().into_bytes()));
        headers.push((
            CAUSATION_HEADER.to_owned(),
            self.call.event_id.clone().into_bytes(),
        ));
        publishes.push(Publish {
            topic,
            key,
            payload,
            headers,
            event_id: event_id.clone(),
        });
        Ok(event_id)
    }

    fn next_event_id(&mut self) -> String {
        let index = u32::try_from(self.call.effects.publishes.len()).unwrap_or(u32::MAX);
        derive_event_id(&self.call.event_id, &self.env.name, index)
    }
}

impl kasm::handler::kv::Host for HostState {
    async fn get(&mut self, key: String) -> Result<Option<Vec<u8>>, String> {
        let (kv, ns, limit) = self.kv_parts()?;
        bounded(limit, kv.get(&ns, &key)).await
    }

    async fn set(
        &mut self,
        key: String,
        value: Vec<u8>,
        ttl_ms: Option<u64>,
    ) -> Result<(), String> {
        let (kv, ns, limit) = self.kv_parts()?;
        bounded(
            limit,
            kv.set(&ns, &key, value, ttl_ms.map(Duration::from_millis)),
        )
        .await
    }

    async fn delete(&mut self, key: String) -> Result<bool, String> {
        let (kv, ns, limit) = self.kv_parts()?;
        bounded(limit, kv.delete(&ns, &key)).await
    }
}

impl HostState {
    fn kv_parts(&self) -> Result<(Arc<dyn KvStore>, String, Duration), String> {
        if !self.env.grants.kv {
            return Err(format!(
                "the kv capability is not granted to handler `{}`",
                self.env.name
            ));
        }
        Ok((
            self.env.kv.clone(),
            self.env.name.clone(),
            self.env.kv_timeout,
        ))
    }
}

/// Run a backend call with a timeout: a host import that never returns is invisible to the
/// epoch deadline, so it gets its own bound.
async fn bounded<T>(
    limit: Duration,
    fut: impl std::future::Future<Output = anyhow::Result<T>>,
) -> Result<T, String> {
    match tokio::time::timeout(limit, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(format!("kv backend error: {e:#}")),
        Err(_) => Err(format!("kv backend did not answer within {limit:?}")),
    }
}

impl kasm::handler::log::Host for HostState {
    fn log(&mut self, level: Level, message: String) {
        let effects = &mut self.call.effects;
        if effects.logs.len() >= MAX_LOG_LINES {
            effects.logs_dropped = effects.logs_dropped.saturating_add(1);
            return;
        }
        let message = truncate_utf8(message, MAX_LOG_LINE);
        let c = &self.call;
        let h = self.env.name.as_str();
        macro_rules! emit {
            ($lvl:ident) => {
                tracing::$lvl!(
                    target: "kasm::guest",
                    handler = h, topic = %c.topic, partition = c.partition,
                    offset = c.offset, event_id = %c.event_id, "{message}"
                )
            };
        }
        let name = match level {
            Level::Trace => {
                emit!(trace);
                "trace"
            }
            Level::Debug => {
                emit!(debug);
                "debug"
            }
            Level::Info => {
                emit!(info);
                "info"
            }
            Level::Warn => {
                emit!(warn);
                "warn"
            }
            Level::Error => {
                emit!(error);
                "error"
            }
        };
        self.call.effects.logs.push(LogLine {
            level: name,
            message,
        });
    }
}
