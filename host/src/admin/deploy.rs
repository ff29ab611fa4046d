//! Hot swap: deploy a new component version for a handler while it runs, roll back, and keep
//! the active versions across restarts.
//!
//! A deploy hashes, validates and compiles the upload off the request path, on low-priority
//! threads (`Runtime::in_background`: the work yields the cores to the records still flowing,
//! and no thread of the async runtime that the partition workers share waits for it; the
//! replaced version is dropped there too),
//! with the handler's own grants and limits, exactly as at startup; a refusal leaves the active
//! version untouched and says why. On success the bytes are stored content-addressed
//! (`data_dir/components/<sha256>.wasm`), the active set is persisted
//! (`data_dir/active.json`, written atomically), and the handler's `ArcSwap` is switched.
//! Workers read the active version once per record, so a record that started on the old
//! version finishes on it (retries included) and the next one runs on the new one: every
//! record is handled by exactly one version. Each change is appended to the handler's history
//! with the first offset the new version handled on each partition.
//!
//! Deploys and rollbacks of all handlers are serialized by one lock: they are rare, and it
//! keeps the persisted state and the active versions in step.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

use crate::config::{DataDir, HandlerConfig};
use crate::handler::HandlerCtx;
use crate::handler::{HandlerResources, spec_for};
use crate::runtime::{LoadError, LoadedHandler, Runtime, sha256_hex};

/// Why a deploy or rollback did not happen.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    /// No handler of that name.
    #[error("no handler named `{0}`")]
    UnknownHandler(String),
    /// The component was refused; the old version keeps serving.
    #[error("component refused, the active version keeps serving: {0}")]
    Refused(#[from] LoadError),
    /// Nothing to roll back to.
    #[error("handler `{0}` has no previous version to roll back to")]
    NoPrevious(String),
    /// Storage or another host-side failure.
    #[error("{0:#}")]
    Internal(#[from] anyhow::Error),
}

/// What a deploy or rollback did.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SwapReport {
    /// Handler.
    pub handler: String,
    /// Version before.
    pub previous: String,
    /// Version now active.
    pub active: String,
    /// Whether the new version was compiled or came from the artifact cache.
    pub load: crate::runtime::LoadSource,
    /// Validation + compile (or cache load) time.
    pub compile_ms: f64,
    /// Time to switch the active version (after compiling and persisting).
    pub swap_us: f64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Persisted {
    /// Per handler: the active version and the versions before it (most recent last).
    handlers: BTreeMap<String, PersistedHandler>,
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct PersistedHandler {
    active: String,
    #[serde(default)]
    previous: Vec<String>,
}

/// Deploys and rolls back handler versions.
#[derive(Debug)]
pub struct Deployer {
    runtime: Runtime,
    components_dir: PathBuf,
    state_path: PathBuf,
    handlers: BTreeMap<String, (Arc<HandlerCtx>, HandlerConfig)>,
    lock: tokio::sync::Mutex<Persisted>,
}

/// The component a handler starts with: the persisted active version if there is one (a
/// deploy survives a restart), else the configured file. Blocking.
pub fn startup_component(
    runtime: &Runtime,
    data: &DataDir,
    name: &str,
    hc: &HandlerConfig,
    res: &HandlerResources,
) -> anyhow::Result<LoadedHandler> {
    let persisted = read_state(&data.active_versions()).unwrap_or_default();
    if let Some(p) = persisted.handlers.get(name) {
        let path = data.component(&p.active);
        match runtime.load_file(&path, spec_for(name, hc, res)) {
            Ok(loaded) => return Ok(loaded),
            Err(e) => tracing::warn!(handler = %name, version = %p.active, error = %e,
                "the deployed version cannot be loaded; starting with the configured component"),
        }
    }
    runtime
        .load_file(&hc.component, spec_for(name, hc, res))
        .with_context(|| format!("handler `{name}`: component {}", hc.component.display()))
}

fn read_state(path: &Path) -> anyhow::Result<Persisted> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

/// Run file work (reads, writes and their fsyncs) on tokio's blocking threads: a deploy is
/// served on the same runtime as the partition workers, and an fsync that waits tens of
/// milliseconds for a busy disk must not hold one of their threads.
async fn off_runtime<T, F>(what: &str, job: F) -> anyhow::Result<T>
where
    F: FnOnce() -> anyhow::Result<T> + Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(job)
        .await
        .with_context(|| format!("{what}: the file task ended without an answer"))?
}

fn write_atomic(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let dir = path.parent().context("state path has no folder")?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir).context("creating a temporary file")?;
    std::io::Write::write_all(&mut tmp, bytes).context("writing a temporary file")?;
    tmp.as_file()
        .sync_all()
        .context("syncing a temporary file")?;
    tmp.persist(path)
        .with_context(|| format!("replacing {}", path.display()))?;
    Ok(())
}

impl Deployer {
    /// A deployer for `handlers`, storing in `data`.
    pub fn new(
        runtime: Runtime,
        data: &DataDir,
        handlers: Vec<(Arc<HandlerCtx>, HandlerConfig)>,
    ) -> Self {
        let state_path = data.active_versions();
        let persisted = read_state(&state_path).unwrap_or_default();
        Self {
            runtime,
            components_dir: data.components(),
            state_path,
            handlers: handlers
                .into_iter()
                .map(|(c, h)| (c.name.clone(), (c, h)))
                .collect(),
            lock: tokio::sync::Mutex::new(persisted),
        }
    }

    fn handler(&self, name: &str) -> Result<&(Arc<HandlerCtx>, HandlerConfig), DeployError> {
        self.handlers
            .get(name)
            .ok_or_else(|| DeployError::UnknownHandler(name.to_owned()))
    }

    /// Validate, compile, persist and activate `bytes` for handler `name`.
    pub async fn deploy(&self, name: &str, bytes: Vec<u8>) -> Result<SwapReport, DeployError> {
        self.deploy_as(name, bytes, "deploy").await
    }

    /// [`Deployer::deploy`], recording `reason` (`deploy`, `watch`) in the history. Deploying
    /// the version already active changes nothing.
    pub async fn deploy_as(
        &self,
        name: &str,
        bytes: Vec<u8>,
        reason: &'static str,
    ) -> Result<SwapReport, DeployError> {
        let (ctx, _) = self.handler(name)?;
        let mut state = self.lock.lock().await;
        // Hashing an 18 MB component takes ~10 ms: not on a thread the workers run on.
        let (bytes, sha) = self
            .runtime
            .in_background(move || {
                let sha = sha256_hex(&bytes);
                (bytes, sha)
            })
            .await
            .map_err(DeployError::Internal)?;
        let current = ctx.component.load().info().sha256.clone();
        if sha == current {
            return Ok(SwapReport {
                handler: name.to_owned(),
                previous: current.clone(),
                active: current,
                load: ctx.component.load().load_report().source,
                compile_ms: 0.0,
                swap_us: 0.0,
            });
        }
        self.activate(&mut state, name, bytes, reason, true).await
    }

    /// Return handler `name` to the version before the active one.
    pub async fn rollback(&self, name: &str) -> Result<SwapReport, DeployError> {
        let (ctx, _) = self.handler(name)?;
        let mut state = self.lock.lock().await;
        let entry = state
            .handlers
            .get(name)
            .cloned()
            .unwrap_or_else(|| PersistedHandler {
                active: ctx.component.load().info().sha256.clone(),
                previous: Vec::new(),
            });
        // The previous version: the persisted stack, else the history of this run.
        let target = entry.previous.last().cloned().or_else(|| {
            ctx.history
                .lock()
                .ok()
                .and_then(|h| h.last().and_then(|r| r.from.clone()))
        });
        let Some(target) = target else {
            return Err(DeployError::NoPrevious(name.to_owned()));
        };
        let path = self.components_dir.join(format!("{target}.wasm"));
        let bytes = off_runtime("rollback", move || {
            std::fs::read(&path)
                .with_context(|| format!("reading stored version {}", path.display()))
        })
        .await
        .map_err(DeployError::Internal)?;
        self.activate(&mut state, name, bytes, "rollback", false)
            .await
    }

    async fn activate(
        &self,
        state: &mut Persisted,
        name: &str,
        bytes: Vec<u8>,
        reason: &'static str,
        push_previous: bool,
    ) -> Result<SwapReport, DeployError> {
        let (ctx, hc) = self.handler(name)?;
        let spec = spec_for(name, hc, &ctx.resources);
        let started = Instant::now();
        let runtime = self.runtime.clone();
        // The bytes go to the compile thread and come back, to be stored: no copy.
        let (bytes, loaded) = self
            .runtime
            .in_background(move || {
                let loaded = runtime.load(&bytes, spec);
                (bytes, loaded)
            })
            .await
            .context("component loading task failed")
            .map_err(DeployError::Internal)?;
        let loaded = loaded?;
        let sha = loaded.info().sha256.clone();
        let compile = started.elapsed();
        let load = loaded.load_report().source;
        // The schema the new version runs on (new migration files are applied now; a failure
        // refuses the deploy and the active version keeps serving).
        ctx.resources
            .migrate(name)
            .await
            .map_err(DeployError::Internal)?;

        // Store the bytes (content-addressed, written once) and the new active set.
        let path = self.components_dir.join(format!("{sha}.wasm"));
        off_runtime("storing the component", move || {
            if !path.is_file() {
                write_atomic(&path, &bytes)?;
            }
            Ok(())
        })
        .await
        .map_err(DeployError::Internal)?;
        let previous = ctx.component.load().info().sha256.clone();
        let entry = state
            .handlers
            .entry(name.to_owned())
            .or_insert_with(|| PersistedHandler {
                active: previous.clone(),
                previous: Vec::new(),
            });
        if push_previous {
            if entry.active != sha {
                entry.previous.push(entry.active.clone());
                let excess = entry.previous.len().saturating_sub(20);
                entry.previous.drain(..excess);
            }
        } else {
            entry.previous.pop();
        }
        entry.active = sha.clone();
        // The old version must be on disk too, for a rollback after a restart.
        let old_path = self.components_dir.join(format!("{previous}.wasm"));
        if !old_path.is_file() {
            tracing::warn!(handler = %name, version = %previous, "previous version not stored; rollback to it will need a redeploy");
        }
        let json = serde_json::to_vec_pretty(&*state)
            .context("encoding the active set")
            .map_err(DeployError::Internal)?;
        let state_path = self.state_path.clone();
        off_runtime("writing the active set", move || {
            write_atomic(&state_path, &json)
        })
        .await
        .map_err(DeployError::Internal)?;

        let swap_start = Instant::now();
        let replaced = ctx.component.swap(Arc::new(loaded));
        let swap = swap_start.elapsed();
        self.runtime.release_in_background(replaced);
        ctx.push_history(Some(previous.clone()), sha.clone(), reason);
        ctx.metrics.swapped(name, compile.as_secs_f64());
        ctx.metrics.active_version(name, &sha);
        tracing::info!(handler = %name, from = %previous, to = %sha, reason, ?compile, ?swap, "component swapped");
        Ok(SwapReport {
            handler: name.to_owned(),
            previous,
            active: sha,
            load,
            compile_ms: ms(compile),
            swap_us: swap.as_secs_f64() * 1e6,
        })
    }

    /// Store the bytes of the version each handler starts with, so a rollback to it works
    /// after a restart. Called once at startup.
    pub fn store_startup_versions(&self) -> anyhow::Result<()> {
        for (name, (ctx, hc)) in &self.handlers {
            let sha = ctx.component.load().info().sha256.clone();
            let path = self.components_dir.join(format!("{sha}.wasm"));
            if path.is_file() {
                continue;
            }
            let bytes = std::fs::read(&hc.component)
                .with_context(|| format!("handler `{name}`: reading {}", hc.component.display()))?;
            if sha256_hex(&bytes) == sha {
                write_atomic(&path, &bytes)?;
            }
        }
        Ok(())
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
