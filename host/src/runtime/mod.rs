//! The WebAssembly runtime: one engine for the process, component loading, handler calls.
//!
//! - One [`wasmtime::Engine`] per process, with the pooling instance allocator (instances,
//!   memories and stacks come from pre-reserved slots and pages stay resident between uses,
//!   so a fresh instance per batch costs microseconds) and epoch interruption.
//! - An epoch ticker thread advances the engine's epoch every [`RuntimeConfig::epoch_tick`].
//!   Each call records its deadline and arms the epoch *before* instantiation (instantiation
//!   runs guest code too); at every tick the running guest yields to the async executor (so a
//!   guest that spins cannot hold an executor thread, and other handlers keep running) and is
//!   interrupted once its deadline has passed. A host import that never returns is invisible
//!   to the epoch, so every call is also bounded by a tokio timeout slightly past its deadline.
//! - Loading ([`Runtime::load`]) is blocking (cranelift): call it off the async hot path,
//!   e.g. in `spawn_blocking`. It checks bytes, compiles or loads the precompiled artifact,
//!   checks the world and the grants, and pre-instantiates. Calls ([`LoadedHandler::invoke`])
//!   are async. [`Runtime::in_background`] runs a load on low-priority threads, for
//!   deploys while records flow.

mod background;
mod batch;
mod cache;
mod capture;
pub mod component;
mod invoke;
mod outcome;
mod store;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use wasmtime::component::Linker;
use wasmtime::{
    Config, Enabled, Engine, InstanceAllocationStrategy, OptLevel, PoolingAllocationConfig,
};

pub use batch::Batch;
pub use cache::ArtifactCache;
pub use component::{
    ComponentInfo, ImportInfo, ImportKind, LoadError, LoadReport, LoadSource, sha256_hex,
};
pub use invoke::{HandlerSpec, INTERPRETED_INSTANCE_REUSE, LoadedHandler, default_instance_reuse};
pub use outcome::{FailureKind, HandlerFailure, Invocation, Outcome};

use store::HostState;

/// The largest component accepted unless configured otherwise (see
/// [`crate::config::DEFAULT_MAX_COMPONENT_MIB`]).
pub const DEFAULT_MAX_COMPONENT_BYTES: u64 = crate::config::DEFAULT_MAX_COMPONENT_MIB << 20;

/// Process-wide runtime settings.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// Most instances alive at once across all handlers (pool slots).
    pub max_instances: u32,
    /// Largest linear memory any instance may have; per-handler caps must not exceed it.
    pub max_memory_bytes: usize,
    /// Linear memory kept resident per pool slot between uses (speeds up fresh instances).
    pub memory_keep_resident: usize,
    /// Largest component accepted, in bytes.
    pub max_component_bytes: u64,
    /// Epoch tick: the resolution of call deadlines.
    pub epoch_tick: Duration,
    /// Where precompiled artifacts are cached; `None` disables the cache.
    pub cache_dir: Option<PathBuf>,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            max_instances: 256,
            max_memory_bytes: 256 << 20,
            memory_keep_resident: 2 << 20,
            max_component_bytes: DEFAULT_MAX_COMPONENT_BYTES,
            epoch_tick: Duration::from_millis(5),
            cache_dir: None,
        }
    }
}

/// Advances the engine's epoch until dropped.
#[derive(Debug)]
struct EpochTicker {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl EpochTicker {
    fn start(engine: Engine, tick: Duration) -> anyhow::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("kasm-epoch".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    std::thread::sleep(tick);
                    engine.increment_epoch();
                }
            })
            .context("starting the epoch ticker thread")?;
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The engine, the linker with every host import, and the artifact cache.
#[derive(Debug, Clone)]
pub struct Runtime {
    inner: Arc<RuntimeInner>,
}

struct RuntimeInner {
    engine: Engine,
    linker: Linker<HostState>,
    cache: Option<ArtifactCache>,
    config: RuntimeConfig,
    background: background::BackgroundPool,
    _ticker: EpochTicker,
}

impl std::fmt::Debug for RuntimeInner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Runtime {
    /// Build the engine (pooling allocator, epoch interruption), link WASI and the
    /// `kasm:handler` imports, open the artifact cache and start the epoch ticker.
    pub fn new(config: RuntimeConfig) -> anyhow::Result<Self> {
        let engine = build_engine(&config)?;
        let mut linker: Linker<HostState> = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)
            .map_err(anyhow::Error::from)
            .context("linking WASI p2")?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)
            .map_err(anyhow::Error::from)
            .context("linking wasi:http")?;
        // The imports work on the store's capability state: each capability's `Host` impl
        // is on it, and none of them sees the rest of the store.
        crate::wit::Handler::add_to_linker::<
            HostState,
            wasmtime::component::HasSelf<crate::capabilities::state::CapabilityState>,
        >(&mut linker, |s| &mut s.caps)
        .map_err(anyhow::Error::from)
        .context("linking the kasm:handler imports")?;
        let cache = match &config.cache_dir {
            Some(dir) => Some(ArtifactCache::open(dir, &engine)?),
            None => None,
        };
        let ticker = EpochTicker::start(engine.clone(), config.epoch_tick)?;
        Ok(Self {
            inner: Arc::new(RuntimeInner {
                engine,
                linker,
                cache,
                config,
                background: background::BackgroundPool::default(),
                _ticker: ticker,
            }),
        })
    }

    /// The engine.
    pub fn engine(&self) -> &Engine {
        &self.inner.engine
    }

    /// The runtime settings.
    pub fn config(&self) -> &RuntimeConfig {
        &self.inner.config
    }

    /// The artifact cache, if enabled.
    pub fn cache(&self) -> Option<&ArtifactCache> {
        self.inner.cache.as_ref()
    }

    /// Read and load the component at `path` for `spec` (blocking).
    pub fn load_file(
        &self,
        path: &std::path::Path,
        spec: HandlerSpec,
    ) -> Result<LoadedHandler, LoadError> {
        let bytes = read_component(path, self.inner.config.max_component_bytes)?;
        self.load(&bytes, spec)
    }

    /// Check, compile (or load from the cache) and pre-instantiate a component for the
    /// handler described by `spec` (blocking: run it off the async hot path).
    pub fn load(&self, bytes: &[u8], spec: HandlerSpec) -> Result<LoadedHandler, LoadError> {
        let inner = &self.inner;
        component::check_bytes(bytes, inner.config.max_component_bytes)?;
        if spec.memory_bytes > inner.config.max_memory_bytes {
            return Err(LoadError::Invalid(format!(
                "handler `{}` asks for a memory cap of {} bytes, over the runtime's maximum of {} bytes",
                spec.name, spec.memory_bytes, inner.config.max_memory_bytes
            )));
        }
        let sha256 = sha256_hex(bytes);
        let (component, report) =
            component::compile(&inner.engine, bytes, &sha256, inner.cache.as_ref())?;
        let mut info = component::check_world(
            &inner.engine,
            &component,
            sha256,
            bytes.len() as u64,
            &spec.name,
            &spec.grants,
        )?;
        info.language = component::guest_language(bytes);
        let pre = inner
            .linker
            .instantiate_pre(&component)
            .map_err(|e| LoadError::Link(format!("{e:#}")))?;
        let pre = crate::wit::HandlerPre::new(pre)
            .map_err(|e| LoadError::WrongExport(format!("{e:#}")))?;
        Ok(LoadedHandler::new(self.clone(), pre, info, report, spec))
    }

    /// Run `job` on a low-priority compile thread, for work on a component while records flow
    /// (a deploy's hash and load, a rollback): it takes the CPU the handlers leave instead of
    /// competing with them for it, and it holds none of the async runtime's threads that the
    /// partition workers run on. The error is a host failure (no thread, a panic).
    pub async fn in_background<T, F>(&self, job: F) -> anyhow::Result<T>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        self.inner.background.run(job).await
    }

    /// Drop a replaced version on a low-priority thread: unmapping its code and its pooled
    /// instances' memory is a few milliseconds for an interpreter-sized component, which a
    /// partition worker would otherwise wait for. Whoever still holds the version (a record
    /// that started on it) lets go of it later, wherever that is.
    pub fn release_in_background(&self, version: Arc<LoadedHandler>) {
        self.inner.background.detach(move || drop(version));
    }

    /// Check a component as `kasm validate` does: every capability granted unless `grants`
    /// says otherwise; nothing is kept.
    pub fn inspect(
        &self,
        bytes: &[u8],
        grants: crate::capabilities::Grants,
    ) -> Result<(ComponentInfo, LoadReport), LoadError> {
        let mut spec = HandlerSpec::new("validate");
        spec.grants = grants;
        let loaded = self.load(bytes, spec)?;
        Ok((loaded.info().clone(), *loaded.load_report()))
    }
}

/// Read a component file, refusing it before reading when it is over `limit`.
pub fn read_component(path: &std::path::Path, limit: u64) -> Result<Vec<u8>, LoadError> {
    let io = |source| LoadError::Io {
        path: path.display().to_string(),
        source,
    };
    let size = std::fs::metadata(path).map_err(io)?.len();
    if size > limit {
        return Err(LoadError::TooLarge { size, limit });
    }
    std::fs::read(path).map_err(io)
}

fn build_engine(config: &RuntimeConfig) -> anyhow::Result<Engine> {
    let mut pool = PoolingAllocationConfig::new();
    let n = config.max_instances;
    pool.total_component_instances(n)
        // A Rust component holds a handful of core instances (the program and small shims).
        .total_core_instances(n.saturating_mul(8))
        .total_memories(n.saturating_mul(2))
        .total_tables(n.saturating_mul(4))
        .total_stacks(n)
        .max_memory_size(config.max_memory_bytes)
        .linear_memory_keep_resident(config.memory_keep_resident)
        .table_keep_resident(64 << 10)
        .async_stack_keep_resident(64 << 10)
        .pagemap_scan(Enabled::Auto);

    let mut cfg = Config::new();
    cfg.wasm_component_model(true)
        .epoch_interruption(true)
        .cranelift_opt_level(OptLevel::Speed)
        .max_wasm_stack(1 << 20)
        .async_stack_size(2 << 20)
        .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    Engine::new(&cfg)
        .map_err(anyhow::Error::from)
        .context("creating the wasmtime engine")
}
