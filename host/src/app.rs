//! `kasm run`: load the handlers, serve health, run the pipeline, shut down gracefully.
//!
//! Shutdown (SIGTERM or SIGINT): readiness turns false → each consumer loop stops fetching →
//! in-flight records finish within `drain_timeout` (the rest are abandoned uncommitted and
//! redelivered to the next owner) → done offsets are committed synchronously → the consumer
//! leaves its group → the producer is flushed → the admin server closes → exit 0. Every step
//! that waits on something else is bounded by `drain_timeout`: the records in hand, the final
//! commit, leaving the group, the flush and the admin server's open connections, so a
//! shutdown while the brokers are unreachable still ends within five drain timeouts (a flush
//! that could not finish makes the exit status non-zero and says how many records it left).
//! A second signal exits at once with status 130, committing nothing more.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use arc_swap::ArcSwap;
use tokio_util::sync::CancellationToken;

use crate::admin::deploy::Deployer;
use crate::config::{Config, KafkaEnv, LedgerStore, Secret};
use crate::handler::HandlerCtx;
use crate::kafka::producer::KafkaProducer;
use crate::ledger::{FileLedger, KafkaLedger, Ledger};
use crate::pipeline::Pipeline;
use crate::runtime::{Runtime, RuntimeConfig};
use crate::telemetry::health::Health;
use crate::telemetry::trace::{TraceConfig, Tracing};

/// A started host: what [`start`] returns and [`Host::shutdown`] stops.
#[derive(Debug)]
pub struct Host {
    /// Health registry.
    pub health: Arc<Health>,
    /// Admin server address.
    pub admin_addr: std::net::SocketAddr,
    /// Every `(method, path)` the admin server serves.
    pub admin_routes: Vec<(&'static str, String)>,
    /// The handlers (stats, active component).
    pub handlers: Vec<Arc<HandlerCtx>>,
    /// Hot swap.
    pub deployer: Arc<Deployer>,
    pipeline: Pipeline,
    producer: KafkaProducer,
    admin_stop: CancellationToken,
    admin_task: tokio::task::JoinHandle<()>,
    sweeper: tokio::task::JoinHandle<()>,
    /// Bounds each step of the shutdown that waits on others (see [`Host::shutdown`]).
    drain_timeout: Duration,
    /// The WebSocket clients (`GET /ws`).
    pub ws: Arc<crate::capabilities::websocket::Hub>,
    /// The trace exporter, when tracing is on (shut down last, after the spans ended).
    pub tracing: Option<Tracing>,
}

/// Load everything and start consuming; the admin token comes from `KASM_ADMIN_TOKEN`.
pub async fn start(config: &Config, env: &KafkaEnv) -> anyhow::Result<Host> {
    start_with(config, env, crate::config::environment::admin_token()).await
}

/// Load everything and start consuming, with the admin token given (the WebSocket secret
/// from `KASM_WS_SECRET`).
pub async fn start_with(
    config: &Config,
    env: &KafkaEnv,
    admin_token: Option<Secret>,
) -> anyhow::Result<Host> {
    start_with_hub(
        config,
        env,
        admin_token,
        Arc::new(crate::capabilities::websocket::Hub::from_env()),
    )
    .await
}

/// Load everything and start consuming, with the admin token and the WebSocket hub given
/// (traces as the `OTEL_*` environment says: see [`crate::telemetry::trace`]).
pub async fn start_with_hub(
    config: &Config,
    env: &KafkaEnv,
    admin_token: Option<Secret>,
    ws: Arc<crate::capabilities::websocket::Hub>,
) -> anyhow::Result<Host> {
    start_traced(config, env, admin_token, ws, TraceConfig::from_env()).await
}

/// [`start_with_hub`] with traces exported as `trace` says (`None`: off).
pub async fn start_traced(
    config: &Config,
    env: &KafkaEnv,
    admin_token: Option<Secret>,
    ws: Arc<crate::capabilities::websocket::Hub>,
    trace: Option<TraceConfig>,
) -> anyhow::Result<Host> {
    let tracing = match trace {
        Some(t) => Some(
            tokio::task::spawn_blocking(move || Tracing::start(&t))
                .await
                .context("starting the trace exporter")??,
        ),
        None => None,
    };
    let tracer = tracing.as_ref().map(Tracing::tracer);
    let runtime = Runtime::new(RuntimeConfig {
        cache_dir: config.artifact_dir(),
        max_component_bytes: config.max_component_bytes(),
        ..RuntimeConfig::default()
    })?;
    let props = config.kafka_properties();
    let producer = KafkaProducer::new(env, &props)?;
    let ledger = open_ledger(config, env, &props, &producer).await?;
    let health = Arc::new(Health::default());
    let metrics = Arc::new(crate::telemetry::metrics::Metrics::new());

    let data = config.data();
    let kv_path = data.kv();
    let kv: Arc<dyn crate::capabilities::KvStore> =
        Arc::new(crate::capabilities::FileKv::open(&kv_path)?);
    let mut handlers = Vec::new();
    for (name, hc) in &config.handlers {
        let resources =
            crate::handler::HandlerResources::open(name, hc, &data, kv.clone(), ws.clone())?;
        resources.migrate(name).await?;
        let (rt2, dir, n2, hc2, res2) = (
            runtime.clone(),
            data.clone(),
            name.clone(),
            hc.clone(),
            resources.clone(),
        );
        let loaded = tokio::task::spawn_blocking(move || {
            crate::admin::deploy::startup_component(&rt2, &dir, &n2, &hc2, &res2)
        })
        .await
        .context("component loading task failed")??;
        tracing::info!(handler = %name, sha256 = %loaded.info().sha256, "component loaded");
        handlers.push(Arc::new(HandlerCtx {
            name: name.clone(),
            group_id: hc.group_id(name),
            config: hc.clone(),
            component: ArcSwap::from_pointee(loaded),
            ledger: if hc.ledger {
                ledger.clone()
            } else {
                Arc::new(crate::ledger::NoLedger)
            },
            producer: producer.clone(),
            health: health.clone(),
            stats: Default::default(),
            drain_timeout: config.drain_timeout,
            commit_interval: config.commit_interval,
            metrics: metrics.clone(),
            paused: Default::default(),
            history: Default::default(),
            partitions: Default::default(),
            claims: Default::default(),
            resources,
            tracer: tracer.clone(),
        }));
    }

    for h in &handlers {
        let sha = h.component.load().info().sha256.clone();
        metrics.active_version(&h.name, &sha);
        h.push_history(None, sha, "startup");
    }
    let deployer = Arc::new(Deployer::new(
        runtime.clone(),
        &data,
        handlers
            .iter()
            .map(|h| (h.clone(), h.config.clone()))
            .collect(),
    ));
    deployer.store_startup_versions()?;
    let token = admin_token.map(|t| t.expose().to_owned());
    if token.is_none() {
        tracing::warn!("KASM_ADMIN_TOKEN is not set: the admin API is read-only");
    }
    let state = crate::admin::AdminState {
        health: health.clone(),
        handlers: handlers.clone(),
        deployer: deployer.clone(),
        metrics: metrics.clone(),
        token: token.map(Arc::from),
        max_component_bytes: usize::try_from(runtime.config().max_component_bytes)
            .unwrap_or(usize::MAX),
        kafka: Arc::new((env.clone(), props.clone())),
        producer: producer.clone(),
        ws: ws.clone(),
        activity: Arc::default(),
    };
    let admin_stop = CancellationToken::new();
    let served = crate::admin::serve(config.admin.listen, state, admin_stop.clone()).await?;
    let (admin_addr, admin_task, admin_routes) = (served.addr, served.task, served.routes);

    let pipeline = Pipeline::start(
        handlers.clone(),
        env,
        &props,
        tokio::runtime::Handle::current(),
    )?;
    let sweeper = tokio::spawn(sweep_ledger(ledger, handlers.clone()));
    Ok(Host {
        health,
        admin_addr,
        admin_routes,
        handlers,
        deployer,
        pipeline,
        producer,
        admin_stop,
        admin_task,
        sweeper,
        drain_timeout: config.drain_timeout,
        ws,
        tracing,
    })
}

/// The dedup ledger `config.ledger_store` names; with Kafka, each handler's ledger topic
/// checked (and created if absent).
async fn open_ledger(
    config: &Config,
    env: &KafkaEnv,
    props: &[(String, String)],
    producer: &KafkaProducer,
) -> anyhow::Result<Arc<dyn Ledger>> {
    Ok(match config.ledger_store {
        LedgerStore::File => {
            let path = config.data().ledger();
            Arc::new(
                FileLedger::open(&path)
                    .with_context(|| format!("opening the ledger {}", path.display()))?,
            )
        }
        LedgerStore::Kafka => {
            let ledger = KafkaLedger::new(producer.clone(), env, props);
            // Every handler's topic at once: each check is a few broker round trips.
            let topics: Vec<(&String, String, &crate::config::HandlerConfig)> = config
                .handlers
                .iter()
                .filter(|(_, h)| h.ledger)
                .map(|(name, h)| (name, h.ledger_topic_for(name), h))
                .collect();
            futures::future::try_join_all(topics.iter().map(|(name, topic, h)| {
                ledger.register(name, topic, &h.topics, h.ledger_retention)
            }))
            .await?;
            Arc::new(ledger)
        }
    })
}

/// Remove expired and excess ledger entries, every minute.
async fn sweep_ledger(ledger: Arc<dyn Ledger>, handlers: Vec<Arc<HandlerCtx>>) {
    let mut tick = tokio::time::interval(Duration::from_secs(60));
    loop {
        tick.tick().await;
        for h in &handlers {
            match ledger
                .sweep(
                    &h.name,
                    h.config.ledger_retention,
                    h.config.ledger_max_entries,
                )
                .await
            {
                Ok(0) => {}
                Ok(n) => tracing::info!(handler = %h.name, removed = n, "ledger swept"),
                Err(e) => {
                    tracing::warn!(handler = %h.name, error = %format!("{e:#}"), "ledger sweep failed")
                }
            }
            if let Some(db) = &h.resources.sql {
                let cutoff = crate::now_ms().saturating_sub(
                    i64::try_from(h.config.ledger_retention.as_millis()).unwrap_or(i64::MAX),
                );
                if let Err(e) =
                    crate::capabilities::sql::inbox_sweep(db.as_ref(), &h.group_id, cutoff).await
                {
                    tracing::warn!(handler = %h.name, error = %e, "inbox sweep failed");
                }
            }
            if h.config.grants.kv {
                let cutoff = crate::now_ms().saturating_sub(
                    i64::try_from(h.config.ledger_retention.as_millis()).unwrap_or(i64::MAX),
                );
                if let Err(e) = h.resources.kv.sweep_applied(&h.name, cutoff).await {
                    tracing::warn!(handler = %h.name, error = %format!("{e:#}"), "kv inbox sweep failed");
                }
            }
        }
    }
}

impl Host {
    /// The graceful shutdown sequence (see the module docs).
    pub async fn shutdown(self) -> anyhow::Result<()> {
        self.health.shutting_down();
        // Aborted, then awaited: the task holds the handlers (and through them the kv store
        // and the databases) until it is dropped, and a host started next on the same data
        // folder must find them closed.
        self.sweeper.abort();
        let _ = self.sweeper.await;
        let pipeline = self.pipeline;
        let stopped = tokio::task::spawn_blocking(move || pipeline.stop())
            .await
            .context("stopping the consumer loops");
        let producer = self.producer.clone();
        let flush_timeout = self.drain_timeout;
        let flushed = tokio::task::spawn_blocking(move || producer.flush(flush_timeout))
            .await
            .context("flushing the producer")
            .and_then(|r| r);
        // The rest runs whatever happened above: a failed flush is reported, not a reason to
        // leave the admin server (and the ledger it holds) running.
        // WebSocket clients hold their connections open: let them go first.
        self.ws.close_all();
        self.admin_stop.cancel();
        // The admin server finishes the requests in hand; a client that keeps a connection
        // open does not hold the shutdown past the drain timeout.
        let mut admin = self.admin_task;
        if tokio::time::timeout(self.drain_timeout, &mut admin)
            .await
            .is_err()
        {
            tracing::warn!(timeout = ?self.drain_timeout, "admin connections still open at the drain timeout: closing them");
            admin.abort();
        }
        // The spans of what was handled, exported before the process goes.
        if let Some(t) = self.tracing {
            let _ = tokio::task::spawn_blocking(move || t.shutdown()).await;
        }
        stopped.and(flushed)
    }
}

/// `kasm run`: start, print where the admin server listens, wait for a signal, shut down.
pub async fn run(config: Config, env: KafkaEnv) -> anyhow::Result<()> {
    let host = start(&config, &env).await?;
    println!("kasm: admin listening on http://{}", host.admin_addr);
    println!(
        "kasm: consuming with {} handler(s): {}",
        host.handlers.len(),
        host.handlers
            .iter()
            .map(|h| h.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );
    wait_for_signal().await?;
    // Not ready from this moment on, before anything else happens.
    host.health.shutting_down();
    println!("kasm: shutting down (a second signal exits at once)");
    tokio::spawn(async {
        if wait_for_signal().await.is_ok() {
            println!("kasm: second signal: exiting now");
            std::process::exit(130);
        }
    });
    let handlers = host.handlers.clone();
    host.shutdown().await?;
    for h in &handlers {
        let st = h.stats.snapshot();
        println!(
            "kasm: handler {}: processed {} skipped {} retried {} dead-lettered {}",
            h.name, st.processed, st.skipped, st.retried, st.dead_lettered
        );
    }
    println!("kasm: stopped cleanly");
    Ok(())
}

/// Wait for SIGTERM or SIGINT.
pub async fn wait_for_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    tokio::select! {
        _ = term.recv() => {},
        _ = int.recv() => {},
    }
    Ok(())
}
