//! `kasm dev`: the whole task app on one machine, no Kafka install needed.
//!
//! Starts the embedded Kafka cluster (librdkafka's mock cluster, in this process, on a
//! loopback port any Kafka client can join), creates the task-app topics, loads the four
//! handlers from `handlers/dist/`, produces a stream of demo task events (with the odd
//! duplicate and malformed record, to show deduplication and dead-lettering), and shows one
//! progress line per handler until Ctrl-C.

// Printing to stdout and stderr is this module's job.
#![allow(clippy::print_stderr, clippy::print_stdout)]

use std::collections::BTreeMap;
use std::io::{IsTerminal as _, Write as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;

use crate::config::{
    AdminConfig, Config, GrantsConfig, HandlerConfig, KafkaEnv, PayloadFormat, RetryPolicy,
    SqlGrantConfig,
};
use crate::kafka::mock::EmbeddedCluster;
use crate::kafka::producer::{KafkaProducer, OutRecord};

/// `kasm dev`.
#[derive(Debug, Args)]
pub struct DevArgs {
    /// Folder holding the built handlers (notification.wasm, recurring.wasm, ...).
    #[arg(long, default_value = "handlers/dist")]
    pub handlers_dir: PathBuf,
    /// Demo task events per second (0 for none).
    #[arg(long, default_value_t = 5.0)]
    pub rate: f64,
    /// Admin server address (the API, health, metrics and the web console at `/`).
    #[arg(long, default_value = "127.0.0.1:9464")]
    pub admin: std::net::SocketAddr,
    /// Post the notification handler's webhooks to `http://<host:port>/hook` (a receiver of
    /// yours) instead of the one `kasm dev` runs.
    #[arg(long, value_name = "HOST:PORT")]
    pub webhook: Option<std::net::SocketAddr>,
}

impl DevArgs {
    /// Run the task app until Ctrl-C.
    pub async fn execute(&self, cli: &super::Cli) -> anyhow::Result<std::process::ExitCode> {
        run(DevOptions {
            handlers_dir: self.handlers_dir.clone(),
            rate: self.rate,
            admin: self.admin,
            webhook: self.webhook,
            artifacts: super::artifacts(cli),
        })
        .await
        .map(|()| std::process::ExitCode::SUCCESS)
    }
}

/// `kasm dev` options.
#[derive(Debug, Clone)]
pub struct DevOptions {
    /// Folder with the built handlers (`notification.wasm`, ...).
    pub handlers_dir: PathBuf,
    /// Demo events per second (0: none).
    pub rate: f64,
    /// Admin server address.
    pub admin: std::net::SocketAddr,
    /// Where the notification handler posts (`None`: a receiver `kasm dev` runs).
    pub webhook: Option<std::net::SocketAddr>,
    /// Where precompiled artifacts are kept.
    pub artifacts: crate::config::Artifacts,
}

const SOURCE_TOPICS: [(&str, i32); 3] = [("task-events", 4), ("task-updates", 4), ("reminders", 2)];
const OUTPUT_TOPICS: [&str; 1] = ["notifications"];

fn handler(dir: &Path, name: &str, topic: &str, publish_to: &str) -> HandlerConfig {
    HandlerConfig {
        component: dir.join(format!("{name}.wasm")),
        topics: vec![topic.to_owned()],
        group_id: None,
        dlq_topic: None,
        payload: PayloadFormat::Json,
        max_payload_bytes: 1 << 20,
        deadline: Duration::from_secs(1),
        memory_mib: 64,
        partition_buffer: 1024,
        retry: RetryPolicy {
            attempts: 3,
            ..RetryPolicy::default()
        },
        grants: GrantsConfig {
            producer: Some(vec![publish_to.to_owned()]),
            kv: false,
            sql: None,
            websocket: false,
            http: None,
        },
        ledger_retention: Duration::from_secs(24 * 3600),
        ledger_max_entries: 1_000_000,
        max_replays: 3,
        settings: BTreeMap::new(),
        instance_reuse: None,
        ledger: true,
        ledger_topic: None,
        max_batch: crate::config::defaults::max_batch(),
        max_batch_bytes: crate::config::defaults::max_batch_bytes(),
        batch_linger: Duration::ZERO,
    }
}

/// The dev configuration: the four task-app handlers; notifications go to `webhook`.
pub fn dev_config(
    handlers_dir: &Path,
    data_dir: &Path,
    admin: std::net::SocketAddr,
    webhook: std::net::SocketAddr,
) -> Config {
    let mut handlers = BTreeMap::new();
    // Notifications go to the webhook receiver `kasm dev` runs.
    let mut notification = handler(handlers_dir, "notification", "reminders", "notifications");
    notification.grants = GrantsConfig {
        producer: None,
        kv: false,
        sql: None,
        websocket: false,
        http: Some(vec![webhook.to_string()]),
    };
    notification
        .settings
        .insert("webhook_url".into(), format!("http://{webhook}/hook"));
    handlers.insert("notification".into(), notification);
    handlers.insert(
        "recurring".into(),
        handler(handlers_dir, "recurring", "task-events", "task-events"),
    );
    // The audit log is a table in SQLite (in the dev data folder), schema from the handler's
    // migrations next to its source.
    let mut audit = handler(handlers_dir, "audit", "task-events", "audit-log");
    audit.grants = GrantsConfig {
        producer: None,
        websocket: false,
        http: None,
        kv: false,
        sql: Some(SqlGrantConfig {
            sqlite: None,
            url_env: None,
            migrations: Some(
                handlers_dir
                    .parent()
                    .unwrap_or(handlers_dir)
                    .join("audit")
                    .join("migrations"),
            ),
        }),
    };
    handlers.insert("audit".into(), audit);
    let mut live = handler(handlers_dir, "live-updates", "task-updates", "live-updates");
    live.grants = GrantsConfig {
        producer: None,
        kv: false,
        sql: None,
        websocket: true,
        http: None,
    };
    handlers.insert("live-updates".into(), live);
    Config {
        data_dir: data_dir.to_owned(),
        ledger_store: crate::config::LedgerStore::default(),
        drain_timeout: Duration::from_secs(5),
        commit_interval: Duration::from_millis(500),
        max_component_mib: crate::runtime::DEFAULT_MAX_COMPONENT_BYTES >> 20,
        admin: AdminConfig { listen: admin },
        kafka: BTreeMap::new(),
        handlers,
        source: PathBuf::from("(kasm dev)"),
        artifacts: crate::config::Artifacts::default(),
    }
}

/// Run `kasm dev` until Ctrl-C / SIGTERM.
pub async fn run(opts: DevOptions) -> anyhow::Result<()> {
    for name in ["notification", "recurring", "audit", "live-updates"] {
        let p = opts.handlers_dir.join(format!("{name}.wasm"));
        if !p.is_file() {
            anyhow::bail!(
                "{} is missing: build the handlers first (`make handlers`)",
                p.display()
            );
        }
    }
    let cluster = EmbeddedCluster::start(1)?;
    for (t, n) in SOURCE_TOPICS {
        cluster.create_topic(t, n)?;
        cluster.create_topic(&format!("{t}.dlq"), 1)?;
    }
    for t in OUTPUT_TOPICS {
        cluster.create_topic(t, 4)?;
    }
    let data = tempfile::tempdir().context("creating the dev data folder")?;
    let (webhook, webhooks_received) = match opts.webhook {
        Some(addr) => (addr, None),
        None => {
            let (addr, count) = spawn_webhook_receiver().await?;
            (addr, Some(count))
        }
    };
    let mut config = dev_config(&opts.handlers_dir, data.path(), opts.admin, webhook);
    config.artifacts = opts.artifacts.clone();
    config.validate()?;
    // The embedded cluster has no CreateTopics: each handler's ledger topic is made here,
    // partitioned like its source.
    for (name, h) in &config.handlers {
        let partitions = h
            .topics
            .iter()
            .filter_map(|t| SOURCE_TOPICS.iter().find(|(s, _)| s == t).map(|(_, n)| *n))
            .max()
            .unwrap_or(1);
        cluster.create_topic(&h.ledger_topic_for(name), partitions)?;
    }
    let env = KafkaEnv {
        bootstrap_servers: Some(cluster.bootstrap_servers().to_owned()),
        ..KafkaEnv::default()
    };

    // Live updates: the secret from KASM_WS_SECRET, else a random one for this run.
    let ws_secret = crate::config::environment::ws_secret()
        .unwrap_or_else(|| crate::config::Secret::new(uuid::Uuid::new_v4().simple().to_string()));
    let hub = Arc::new(crate::capabilities::websocket::Hub::new(
        Some(ws_secret.clone()),
        crate::capabilities::websocket::DEFAULT_CLIENT_BUFFER,
        crate::capabilities::websocket::DEFAULT_MAX_CLIENTS,
    ));
    let admin_token = crate::config::environment::admin_token();
    let host = crate::app::start_with_hub(&config, &env, admin_token, hub).await?;
    println!(
        "kasm dev: embedded Kafka at {}  (any Kafka client can connect)",
        cluster.bootstrap_servers()
    );
    println!(
        "kasm dev: admin at http://{}  (the console at /; /healthz, /readyz, /metrics)",
        host.admin_addr
    );
    println!(
        "kasm dev: live updates of user u1: ws://{}/ws?channel=user:u1&token={}",
        host.admin_addr,
        crate::capabilities::websocket::channel_token(ws_secret.expose().as_bytes(), "user:u1")
    );
    println!(
        "kasm dev: topics: task-events, task-updates, reminders -> notifications (+ .dlq); audit log in SQLite"
    );
    println!("kasm dev: Ctrl-C to stop\n");

    let (watcher, watch_task) = watch_handlers(&opts.handlers_dir, host.deployer.clone())?;
    println!(
        "kasm dev: watching {} — a rebuilt handler is swapped in live",
        opts.handlers_dir.display()
    );
    let producer = KafkaProducer::new(&env, &[])?;
    let demo = tokio::spawn(demo_stream(producer, opts.rate));
    let app = AppView {
        handlers: host.handlers.clone(),
        webhooks: webhooks_received.clone(),
        ws: host.ws.clone(),
    };
    if app.webhooks.is_some() {
        println!(
            "kasm dev: webhook receiver at http://{webhook}/hook (the notification handler posts there)\n"
        );
    } else {
        println!("kasm dev: the notification handler posts to http://{webhook}/hook (--webhook)\n");
    }
    let view = tokio::spawn(live_view(app.clone()));
    crate::app::wait_for_signal().await?;
    demo.abort();
    view.abort();
    let _ = demo.await;
    let _ = view.await;
    println!("\nkasm dev: shutting down");
    print_lines(&app).await;
    // Every Kafka client goes before the embedded cluster does (a client that outlives it logs
    // "all brokers down"): the host's, then those the watcher (through the deployer) and the
    // live view still hold.
    let shutdown = host.shutdown().await;
    drop(watcher);
    let _ = watch_task.await;
    drop(app);
    shutdown?;
    drop(cluster);
    Ok(())
}

/// Watch the handlers folder; when a handler's `.wasm` changes, deploy it (debounced: a
/// build writes the file in several steps). Keep the returned value alive.
/// Dropping the watcher ends the returned task.
fn watch_handlers(
    dir: &Path,
    deployer: Arc<crate::admin::deploy::Deployer>,
) -> anyhow::Result<(
    notify_debouncer_mini::Debouncer<notify_debouncer_mini::notify::RecommendedWatcher>,
    tokio::task::JoinHandle<()>,
)> {
    use notify_debouncer_mini::notify::RecursiveMode;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<PathBuf>();
    let mut debouncer = notify_debouncer_mini::new_debouncer(
        Duration::from_millis(500),
        move |res: notify_debouncer_mini::DebounceEventResult| {
            if let Ok(events) = res {
                for e in events {
                    let _ = tx.send(e.path);
                }
            }
        },
    )
    .context("starting the handlers folder watcher")?;
    debouncer
        .watcher()
        .watch(dir, RecursiveMode::NonRecursive)
        .with_context(|| format!("watching {}", dir.display()))?;
    let task = tokio::spawn(async move {
        // Reading a file is itself an event for some watchers: act once per content.
        let mut seen: std::collections::HashMap<String, String> = std::collections::HashMap::new();
        while let Some(path) = rx.recv().await {
            if path.extension().is_none_or(|e| e != "wasm") {
                continue;
            }
            let Some(name) = path.file_stem().map(|s| s.to_string_lossy().into_owned()) else {
                continue;
            };
            let Ok(bytes) = tokio::fs::read(&path).await else {
                continue;
            };
            let sha = crate::runtime::sha256_hex(&bytes);
            if seen.insert(name.clone(), sha.clone()).as_deref() == Some(sha.as_str()) {
                continue;
            }
            match deployer.deploy_as(&name, bytes, "watch").await {
                Ok(r) if r.previous == r.active => {}
                Ok(r) => println!(
                    "\nkasm dev: {name} swapped {}… → {}… (compiled in {:.0} ms)\n",
                    &r.previous[..12.min(r.previous.len())],
                    &r.active[..12.min(r.active.len())],
                    r.compile_ms
                ),
                Err(crate::admin::deploy::DeployError::UnknownHandler(_)) => {}
                Err(e) => println!("\nkasm dev: {name}: new version not deployed: {e}\n"),
            }
        }
    });
    Ok((debouncer, task))
}

/// What the live view shows.
#[derive(Clone)]
struct AppView {
    handlers: Vec<Arc<crate::handler::HandlerCtx>>,
    /// Webhooks the receiver `kasm dev` runs got (`None` with `--webhook`).
    webhooks: Option<Arc<std::sync::atomic::AtomicU64>>,
    ws: Arc<crate::capabilities::websocket::Hub>,
}

/// A webhook receiver on loopback for the notification handler: answers 200 and counts.
async fn spawn_webhook_receiver()
-> anyhow::Result<(std::net::SocketAddr, Arc<std::sync::atomic::AtomicU64>)> {
    let count = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let c = count.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move || {
            let c = c.clone();
            async move {
                c.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .context("binding the dev webhook receiver")?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok((addr, count))
}

/// Rows in the audit handler's `audit_log`, if it has a database.
async fn audit_rows(handlers: &[Arc<crate::handler::HandlerCtx>]) -> Option<i64> {
    let db = handlers
        .iter()
        .find(|h| h.name == "audit")?
        .resources
        .sql
        .clone()?;
    let mut tx = db.begin().await.ok()?;
    let rows = tx.query("SELECT count(*) FROM audit_log", &[]).await.ok()?;
    match rows.rows.first()?.first()? {
        crate::capabilities::SqlValue::Integer(n) => Some(*n),
        _ => None,
    }
}

async fn print_lines(app: &AppView) {
    for h in &app.handlers {
        let s = h.stats.snapshot();
        println!(
            "  {:<13} processed {:>6}   duplicates skipped {:>4}   retried {:>4}   dead-lettered {:>4}",
            h.name, s.processed, s.skipped, s.retried, s.dead_lettered
        );
    }
    let next = app
        .handlers
        .iter()
        .find(|h| h.name == "recurring")
        .map_or(0, |h| h.stats.snapshot().published);
    let rows = audit_rows(&app.handlers)
        .await
        .map_or_else(|| "-".to_owned(), |n| n.to_string());
    println!(
        "  app           audit rows {rows:>6}   next occurrences {next:>4}   webhooks received {:>4}   pushes {:>5} ({} clients)     ",
        app.webhooks.as_ref().map_or_else(
            || "-".to_owned(),
            |w| w.load(std::sync::atomic::Ordering::Relaxed).to_string()
        ),
        app.ws
            .stats
            .delivered
            .load(std::sync::atomic::Ordering::Relaxed),
        app.ws.clients()
    );
}

async fn live_view(app: AppView) {
    let tty = std::io::stdout().is_terminal();
    let mut tick = tokio::time::interval(if tty {
        Duration::from_millis(500)
    } else {
        Duration::from_secs(5)
    });
    let mut first = true;
    loop {
        tick.tick().await;
        if tty && !first {
            print!("\x1b[{}A", app.handlers.len() + 1);
        }
        first = false;
        print_lines(&app).await;
        let _ = std::io::stdout().flush();
    }
}

/// Demo task events: users creating, updating and completing tasks (one weekly recurring),
/// reminders, a duplicate now and then, and a malformed record now and then.
async fn demo_stream(producer: KafkaProducer, rate: f64) {
    if rate <= 0.0 {
        return;
    }
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    let mut n: u64 = 0;
    loop {
        tick.tick().await;
        n += 1;
        let user = format!("user-{}", n % 5);
        let task = format!("task-{}", n / 3);
        let kind = ["task.created", "task.updated", "task.completed"][(n % 3) as usize];
        let recurring = n % 9 == 8;
        let recurrence = if recurring {
            serde_json::json!({"frequency": "weekly", "interval": 1, "weekdays": ["mon", "thu"]})
        } else {
            serde_json::Value::Null
        };
        let event = serde_json::json!({
            "event_id": format!("demo-{n}"),
            "event_type": kind,
            "task_id": task,
            "user_id": user,
            "task": {
                "title": format!("Demo task {}", n / 3),
                "due_date": "2026-12-03",
                "completed": kind == "task.completed",
                "recurrence": recurrence,
            },
            "timestamp": "2026-11-27T09:00:00Z",
        });
        let payload = event.to_string().into_bytes();
        let key = user.clone().into_bytes();
        let mut sends = vec![
            ("task-events", payload.clone()),
            ("task-updates", payload.clone()),
        ];
        if n.is_multiple_of(7) {
            // A duplicate: the same event id again, at a new offset.
            sends.push(("task-events", payload.clone()));
        }
        if n.is_multiple_of(25) {
            sends.push(("task-events", b"{not json".to_vec()));
        }
        if n.is_multiple_of(4) {
            let reminder = serde_json::json!({
                "event_id": format!("rem-{n}"),
                "task_id": task,
                "user_id": user,
                "title": format!("Demo task {}", n / 3),
                "due_at": "2026-12-03T17:00:00Z",
                "remind_at": "2026-12-03T16:00:00Z",
            });
            sends.push(("reminders", reminder.to_string().into_bytes()));
        }
        for (topic, payload) in sends {
            let r = OutRecord {
                topic,
                key: Some(&key),
                payload: &payload,
                headers: &[],
                partition: None,
            };
            if let Err(e) = producer.send(r).await {
                tracing::warn!(error = %format!("{e:#}"), "demo producer");
            }
        }
    }
}
