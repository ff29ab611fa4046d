//! The `kasm` command line: `validate` and `invoke` (the handler author's inner loop).
//!
//! Exit codes: 0 success; 1 the handler ran and did not return `ok`; 2 the command could not
//! run (bad arguments, a refused component, an unreadable file).

// Printing to stdout and stderr is this module's job.
#![allow(clippy::print_stderr, clippy::print_stdout)]

use std::collections::BTreeSet;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::{Args, Parser, Subcommand};
use serde::Serialize;

use crate::capabilities::{Grants, TopicGrant};
use crate::event::Event;
use crate::runtime::{
    ComponentInfo, HandlerSpec, ImportKind, Invocation, LoadReport, LoadSource, Outcome, Runtime,
    RuntimeConfig,
};

/// kasm: consume Kafka and run each record through a sandboxed WebAssembly component.
#[derive(Debug, Parser)]
#[command(name = "kasm", version, about, propagate_version = true)]
pub struct Cli {
    /// Folder for precompiled component artifacts (keyed by component sha256 and engine).
    /// `validate`/`invoke` default to the user's cache folder; `run` and `dev` to
    /// `<data_dir>/artifacts`. Hosts may share one.
    #[arg(long, global = true, env = "KASM_CACHE_DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Do not read or write precompiled artifacts.
    #[arg(long, global = true)]
    pub no_cache: bool,
    /// The largest component `validate` and `invoke` accept, in MiB (`kasm run` takes
    /// `max_component_mib` from its config file).
    #[arg(long, global = true, default_value_t = crate::runtime::DEFAULT_MAX_COMPONENT_BYTES >> 20,
          value_parser = clap::value_parser!(u64).range(1..=4096))]
    pub max_component_mib: u64,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check a component: print its world, imports, exports, size and hash, or why it is refused.
    Validate(ValidateArgs),
    /// Run one event through a handler without Kafka and print the outcome and every effect.
    Invoke(InvokeArgs),
    /// Consume Kafka with the handlers of a config file (connection from KAFKA_* variables).
    Run(RunArgs),
    /// Publish events (JSON, one value or JSON lines, from a file or stdin) the way a producing
    /// service should: acks=all, idempotent, an event-id on each, keyed by user; prints where
    /// each landed once the broker acknowledged it.
    Produce(ProduceArgs),
    /// Run the task app on an embedded Kafka cluster, with demo events and a live view.
    Dev(DevArgs),
    /// Talk to a running host's admin API (handlers, handler, deploy, rollback, pause, resume,
    /// dlq): see [`crate::client`].
    #[command(flatten)]
    Admin(crate::client::AdminCommand),
}

/// `kasm run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The configuration file.
    #[arg(long, short, default_value = "kasm.toml")]
    pub config: PathBuf,
}

/// `kasm produce`.
#[derive(Debug, Args)]
pub struct ProduceArgs {
    /// The topic.
    pub topic: String,
    /// File holding the event(s) (`-` for stdin): one JSON value, or one per line.
    #[arg(default_value = "-")]
    pub events: PathBuf,
    /// Record key. Default: each event's `user_id` field.
    #[arg(long)]
    pub key: Option<String>,
    /// Extra header `name=value`; repeatable. `event-id=...` sets the id (one event only).
    #[arg(long = "header", value_name = "NAME=VALUE")]
    pub headers: Vec<String>,
    /// Print one JSON object per event instead of text.
    #[arg(long)]
    pub json: bool,
}

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

/// Grant options shared by `validate` and `invoke`.
#[derive(Debug, Args)]
pub struct GrantArgs {
    /// Grant a capability: `producer` (any topic), `producer=topic-a,topic-b`, `kv`, `sql`,
    /// `websocket`, `http` (any host), `http=host:port,...` or `log`.
    /// Repeatable. Without any `--grant`, every capability is granted.
    #[arg(long = "grant", value_name = "CAPABILITY[=TOPICS]")]
    pub grants: Vec<String>,
}

impl GrantArgs {
    fn grants(&self) -> anyhow::Result<Grants> {
        if self.grants.is_empty() {
            return Ok(Grants::all());
        }
        let mut g = Grants::none();
        for spec in &self.grants {
            let (cap, topics) = match spec.split_once('=') {
                Some((c, t)) => (c.trim(), Some(t)),
                None => (spec.trim(), None),
            };
            match (cap, topics) {
                ("producer", None) => g.producer = Some(TopicGrant::Any),
                ("producer", Some(t)) => {
                    let set: BTreeSet<String> = t
                        .split(',')
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                        .map(str::to_owned)
                        .collect();
                    g.producer = Some(TopicGrant::Only(set));
                }
                ("kv", None) => g.kv = true,
                ("sql", None) => g.sql = true,
                ("websocket", None) => g.websocket = true,
                ("http", None) => g.http = Some(crate::capabilities::HostGrant::Any),
                ("http", Some(h)) => {
                    let set: BTreeSet<String> = h
                        .split(',')
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                        .map(str::to_owned)
                        .collect();
                    g.http = Some(crate::capabilities::HostGrant::Only(set));
                }
                ("log", None) => {}
                (other, _) => bail!(
                    "--grant `{spec}`: unknown capability `{other}` (known: producer[=topics], kv, sql, websocket, http[=hosts], log)"
                ),
            }
        }
        Ok(g)
    }
}

/// `kasm validate`.
#[derive(Debug, Args)]
pub struct ValidateArgs {
    /// The component file.
    pub component: PathBuf,
    /// Capabilities to check the component against.
    #[command(flatten)]
    pub grants: GrantArgs,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// `kasm invoke`.
#[derive(Debug, Args)]
pub struct InvokeArgs {
    /// The component file.
    pub component: PathBuf,
    /// File holding the record payload (`-` for stdin).
    pub payload: PathBuf,
    /// Handler name (tags logs, seeds output event ids). Default: the file stem.
    #[arg(long)]
    pub name: Option<String>,
    /// Topic the record pretends to come from.
    #[arg(long, default_value = "invoke")]
    pub topic: String,
    /// Partition the record pretends to come from.
    #[arg(long, default_value_t = 0)]
    pub partition: i32,
    /// Offset the record pretends to have.
    #[arg(long, default_value_t = 0)]
    pub offset: i64,
    /// Record key (UTF-8).
    #[arg(long)]
    pub key: Option<String>,
    /// Record header `name=value`; repeatable. `event-id=...` sets the event id.
    #[arg(long = "header", value_name = "NAME=VALUE")]
    pub headers: Vec<String>,
    /// Attempt number the handler sees.
    #[arg(long, default_value_t = 1)]
    pub attempt: u32,
    /// Call deadline in milliseconds.
    #[arg(long, default_value_t = 1000)]
    pub deadline_ms: u64,
    /// Memory cap in MiB.
    #[arg(long, default_value_t = 64)]
    pub memory_mib: usize,
    /// Capabilities granted to the handler.
    #[command(flatten)]
    pub grants: GrantArgs,
    /// SQLite file behind the `sql` capability (kept after the call). Default: a temporary
    /// file, removed afterwards.
    #[arg(long, value_name = "FILE")]
    pub sqlite: Option<PathBuf>,
    /// Folder of `*.sql` migrations applied to that database first.
    #[arg(long, value_name = "DIR")]
    pub migrations: Option<PathBuf>,
    /// A handler setting `key=value` (the `settings` interface); repeatable.
    #[arg(long = "setting", value_name = "KEY=VALUE")]
    pub settings: Vec<String>,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Set up logging to stderr; `RUST_LOG` overrides the default: `info` for `kasm run`, errors
/// only for `kasm dev` (its live view is the output), warnings otherwise.
pub fn init_tracing(cli: &Cli) {
    let default = match cli.command {
        Command::Run(_) => "info",
        Command::Dev(_) => "error",
        _ => "warn",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    // Colours only on a terminal: a log file or a collector gets plain text.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

/// Run a parsed command line.
pub async fn run(cli: Cli) -> ExitCode {
    let result = match &cli.command {
        Command::Validate(args) => validate(&cli, args).await,
        Command::Invoke(args) => invoke(&cli, args).await,
        Command::Run(args) => run_host(&cli, args).await,
        Command::Produce(args) => produce(args).await,
        Command::Dev(args) => crate::dev::run(crate::dev::DevOptions {
            handlers_dir: args.handlers_dir.clone(),
            rate: args.rate,
            admin: args.admin,
            webhook: args.webhook,
            artifacts: artifacts(&cli),
        })
        .await
        .map(|()| ExitCode::SUCCESS),
        Command::Admin(cmd) => crate::client::run(cmd.clone()).await,
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Where `run` and `dev` keep artifacts: the global `--cache-dir` / `KASM_CACHE_DIR` when given,
/// else the data folder's `artifacts/`; none with `--no-cache`.
fn artifacts(cli: &Cli) -> crate::config::Artifacts {
    use crate::config::Artifacts;
    match (&cli.cache_dir, cli.no_cache) {
        (_, true) => Artifacts::Off,
        (Some(dir), false) => Artifacts::At(dir.clone()),
        (None, false) => Artifacts::InDataDir,
    }
}

async fn run_host(cli: &Cli, args: &RunArgs) -> anyhow::Result<ExitCode> {
    let mut config = match crate::config::Config::load(&args.config) {
        Ok(c) => c,
        Err(errors) => {
            for e in &errors.0 {
                eprintln!("config error: {e}");
            }
            return Ok(ExitCode::from(2));
        }
    };
    config.artifacts = artifacts(cli);
    crate::app::run(config, crate::config::KafkaEnv::from_env()).await?;
    Ok(ExitCode::SUCCESS)
}

async fn produce(args: &ProduceArgs) -> anyhow::Result<ExitCode> {
    if !crate::config::valid_topic(&args.topic) {
        bail!("`{}` is not a valid topic name", args.topic);
    }
    let text =
        String::from_utf8(read_payload(&args.events)?).context("the events are not UTF-8 text")?;
    let events = crate::produce::parse_events(&text)
        .map_err(|e| anyhow::anyhow!("{}: {e}", args.events.display()))?;
    if events.is_empty() {
        bail!("{}: no event to publish", args.events.display());
    }
    let headers: std::collections::BTreeMap<String, String> = parse_headers(&args.headers)?
        .into_iter()
        .map(|(k, v)| (k, String::from_utf8_lossy(&v).into_owned()))
        .collect();
    if events.len() > 1 && headers.contains_key(crate::event::EVENT_ID_HEADER) {
        bail!(
            "--header event-id=... names one event, but {} were given",
            events.len()
        );
    }
    let env = crate::config::KafkaEnv::from_env();
    if env.bootstrap_servers.is_none() {
        bail!("KAFKA_BOOTSTRAP_SERVERS is not set");
    }
    let producer = crate::kafka::producer::KafkaProducer::new(&env, &[])?;
    for (i, event) in events.into_iter().enumerate() {
        let p = crate::produce::prepare(event, args.key.clone(), headers.clone())
            .with_context(|| format!("event #{}", i + 1))?;
        let d = crate::produce::send(&producer, &args.topic, &p)
            .await
            .with_context(|| format!("event #{} (event-id {})", i + 1, p.event_id))?;
        if args.json {
            let v = serde_json::json!({
                "topic": args.topic, "partition": d.partition, "offset": d.offset,
                "event_id": p.event_id,
            });
            println!("{v}");
        } else {
            println!(
                "produced   topic={} partition={} offset={} event-id={}",
                args.topic, d.partition, d.offset, p.event_id
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn default_cache_dir() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("kasm").join("artifacts"))
}

fn runtime_for(cli: &Cli) -> anyhow::Result<Runtime> {
    let cache_dir = if cli.no_cache {
        None
    } else {
        cli.cache_dir.clone().or_else(default_cache_dir)
    };
    Runtime::new(RuntimeConfig {
        cache_dir,
        max_instances: 16,
        max_component_bytes: cli.max_component_mib << 20,
        ..RuntimeConfig::default()
    })
}

async fn load_blocking(
    runtime: &Runtime,
    path: &Path,
    spec: HandlerSpec,
) -> anyhow::Result<Result<crate::runtime::LoadedHandler, crate::runtime::LoadError>> {
    let runtime = runtime.clone();
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || runtime.load_file(&path, spec))
        .await
        .context("component loading task failed")
}

#[derive(Serialize)]
struct ValidateReport<'a> {
    file: String,
    #[serde(flatten)]
    info: &'a ComponentInfo,
    load: &'a LoadReport,
}

async fn validate(cli: &Cli, args: &ValidateArgs) -> anyhow::Result<ExitCode> {
    let runtime = runtime_for(cli)?;
    let mut spec = HandlerSpec::new(file_stem(&args.component));
    spec.grants = args.grants.grants()?;
    let loaded = match load_blocking(&runtime, &args.component, spec).await? {
        Ok(l) => l,
        Err(e) => {
            if args.json {
                let v = serde_json::json!({ "file": args.component.display().to_string(), "refused": e.to_string() });
                println!("{v}");
            } else {
                println!("refused    {}", args.component.display());
                println!("reason     {e}");
            }
            return Ok(ExitCode::from(2));
        }
    };
    let info = loaded.info();
    if args.json {
        let report = ValidateReport {
            file: args.component.display().to_string(),
            info,
            load: loaded.load_report(),
        };
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!("valid      {}", args.component.display());
    println!("world      {}", info.world);
    if let Some(language) = &info.language {
        let reuse = crate::runtime::default_instance_reuse(info);
        println!(
            "language   {language} (an instance serves {reuse} records unless instance_reuse says otherwise)"
        );
    }
    println!("sha256     {}", info.sha256);
    println!(
        "size       {} bytes ({:.1} KiB)",
        info.size,
        info.size as f64 / 1024.0
    );
    let caps: Vec<String> = info.capabilities.iter().map(|c| c.to_string()).collect();
    println!(
        "needs      {}",
        if caps.is_empty() {
            "no capability".to_owned()
        } else {
            caps.join(", ")
        }
    );
    for (i, imp) in info.imports.iter().enumerate() {
        let what = match &imp.kind {
            ImportKind::Capability { capability } => format!("capability {capability}"),
            ImportKind::ContractTypes => "contract types".to_owned(),
            ImportKind::Wasi => "WASI, nothing granted".to_owned(),
        };
        let label = if i == 0 { "imports" } else { "" };
        println!("{label:<10} {} ({what})", imp.name);
    }
    println!("exports    {}", info.exports.join(", "));
    println!("{}", describe_load(loaded.load_report()));
    Ok(ExitCode::SUCCESS)
}

fn describe_load(r: &LoadReport) -> String {
    let how = match r.source {
        LoadSource::Compiled => "compiled",
        LoadSource::Cache => "loaded precompiled artifact",
    };
    format!(
        "load       {how} in {:.1} ms",
        r.elapsed.as_secs_f64() * 1000.0
    )
}

fn file_stem(p: &Path) -> String {
    p.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "handler".to_owned())
}

fn read_payload(path: &Path) -> anyhow::Result<Vec<u8>> {
    if path == Path::new("-") {
        let mut buf = Vec::new();
        std::io::stdin()
            .read_to_end(&mut buf)
            .context("reading the payload from stdin")?;
        return Ok(buf);
    }
    std::fs::read(path).with_context(|| format!("reading payload file {}", path.display()))
}

fn parse_headers(raw: &[String]) -> anyhow::Result<Vec<(String, Vec<u8>)>> {
    raw.iter()
        .map(|h| match h.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() => {
                Ok((k.trim().to_owned(), v.as_bytes().to_vec()))
            }
            _ => bail!("--header `{h}`: expected NAME=VALUE"),
        })
        .collect()
}

/// Bytes shown as text when they are UTF-8, else summarized.
fn show_bytes(b: &[u8]) -> String {
    match std::str::from_utf8(b) {
        Ok(s) => s.to_owned(),
        Err(_) => format!(
            "<{} bytes, not UTF-8: {}…>",
            b.len(),
            hex::encode(&b[..b.len().min(16)])
        ),
    }
}

#[derive(Serialize)]
struct PublishView {
    topic: String,
    key: Option<String>,
    event_id: String,
    headers: Vec<(String, String)>,
    payload: serde_json::Value,
}

#[derive(Serialize)]
struct InvokeReport<'a> {
    handler: &'a str,
    sha256: &'a str,
    event_id: &'a str,
    #[serde(flatten)]
    outcome: &'a Outcome,
    duration_us: u128,
    publishes: Vec<PublishView>,
    logs: &'a [crate::capabilities::LogLine],
    sql: SqlView,
    broadcasts: &'a [crate::capabilities::Broadcast],
    guest_output: &'a str,
}

#[derive(Serialize)]
struct SqlView {
    statements: u32,
    rows_changed: u64,
    committed: bool,
}

fn payload_value(b: &[u8]) -> serde_json::Value {
    serde_json::from_slice(b).unwrap_or_else(|_| serde_json::Value::String(show_bytes(b)))
}

async fn invoke(cli: &Cli, args: &InvokeArgs) -> anyhow::Result<ExitCode> {
    let payload = read_payload(&args.payload)?;
    let headers = parse_headers(&args.headers)?;
    let runtime = runtime_for(cli)?;
    let name = args
        .name
        .clone()
        .unwrap_or_else(|| file_stem(&args.component));
    let mut spec = HandlerSpec::new(name.clone());
    spec.grants = args.grants.grants()?;
    spec.deadline = Duration::from_millis(args.deadline_ms);
    spec.memory_bytes = args.memory_mib.saturating_mul(1 << 20);
    for kv in &args.settings {
        let Some((k, v)) = kv.split_once('=') else {
            bail!("--setting `{kv}`: expected KEY=VALUE");
        };
        spec.settings.insert(k.trim().to_owned(), v.to_owned());
    }
    // The `sql` capability: the file given, or a temporary one (kept alive until the end).
    let scratch = tempfile::tempdir().context("creating a temporary folder")?;
    if spec.grants.sql {
        let path = args
            .sqlite
            .clone()
            .unwrap_or_else(|| scratch.path().join(format!("{name}.sqlite")));
        let db =
            crate::capabilities::sql::open(&crate::capabilities::SqlTarget::Sqlite(path), &name)?;
        if let Some(dir) = &args.migrations {
            crate::capabilities::sql::migrate(db.as_ref(), &name, dir)
                .await
                .with_context(|| format!("applying the migrations in {}", dir.display()))?;
        }
        spec.sql = Some(db);
    }
    let handler = match load_blocking(&runtime, &args.component, spec).await? {
        Ok(h) => h,
        Err(e) => bail!("component {} refused: {e}", args.component.display()),
    };
    let mut event = Event::from_record(
        args.topic.clone(),
        args.partition,
        args.offset,
        args.key.as_ref().map(|k| k.as_bytes().to_vec()),
        payload,
        headers,
        Some(now_ms()),
    );
    event.attempt = args.attempt;
    let inv = handler.invoke(&event).await.with_context(|| {
        format!(
            "handler={name} topic={} partition={} offset={}",
            event.topic, event.partition, event.offset
        )
    })?;
    let code = if matches!(inv.outcome, Outcome::Ok) {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    };
    if args.json {
        print_invoke_json(&handler, &event, &inv)?;
    } else {
        print_invoke_text(&handler, &event, &inv);
    }
    Ok(code)
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn print_invoke_json(
    handler: &crate::runtime::LoadedHandler,
    event: &Event,
    inv: &Invocation,
) -> anyhow::Result<()> {
    let publishes = inv
        .effects
        .publishes
        .iter()
        .map(|p| PublishView {
            topic: p.topic.clone(),
            key: p.key.as_deref().map(show_bytes),
            event_id: p.event_id.clone(),
            headers: p
                .headers
                .iter()
                .map(|(k, v)| (k.clone(), show_bytes(v)))
                .collect(),
            payload: payload_value(&p.payload),
        })
        .collect();
    let report = InvokeReport {
        handler: handler.name(),
        sha256: &handler.info().sha256,
        event_id: &event.id,
        outcome: &inv.outcome,
        duration_us: inv.duration.as_micros(),
        publishes,
        logs: &inv.effects.logs,
        sql: SqlView {
            statements: inv.effects.sql_statements,
            rows_changed: inv.effects.sql_rows_changed,
            committed: inv.effects.sql_statements > 0 && matches!(inv.outcome, Outcome::Ok),
        },
        broadcasts: &inv.effects.broadcasts,
        guest_output: &inv.guest_output,
    };
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}

fn print_invoke_text(handler: &crate::runtime::LoadedHandler, event: &Event, inv: &Invocation) {
    let sha = &handler.info().sha256;
    println!(
        "handler    {} (sha256 {}…)",
        handler.name(),
        &sha[..sha.len().min(12)]
    );
    println!("{}", describe_load(handler.load_report()));
    println!(
        "event      id={} topic={} partition={} offset={} attempt={}",
        event.id, event.topic, event.partition, event.offset, event.attempt
    );
    let took = format!("{:.2} ms", inv.duration.as_secs_f64() * 1000.0);
    match &inv.outcome {
        Outcome::Ok => println!("outcome    ok in {took}"),
        Outcome::Failed(f) => println!("outcome    {} in {took}: {}", f.kind, f.message),
    }
    for (i, p) in inv.effects.publishes.iter().enumerate() {
        let key = p
            .key
            .as_deref()
            .map(show_bytes)
            .unwrap_or_else(|| "none".to_owned());
        println!(
            "publish    #{i} topic={} key={key} event-id={}",
            p.topic, p.event_id
        );
        println!("           {}", show_bytes(&p.payload));
    }
    if !inv.effects.publishes.is_empty() && !matches!(inv.outcome, Outcome::Ok) {
        println!("           (not sent: effects are applied only when the handler returns ok)");
    }
    for l in &inv.effects.logs {
        println!("log        {:<5} {}", l.level, l.message);
    }
    if inv.effects.logs_dropped > 0 {
        println!(
            "log        ({} lines dropped over the per-call limit)",
            inv.effects.logs_dropped
        );
    }
    for b in &inv.effects.broadcasts {
        println!("push       channel={}", b.channel);
        println!("           {}", b.message);
    }
    if !inv.effects.broadcasts.is_empty() && !matches!(inv.outcome, Outcome::Ok) {
        println!("           (not pushed: effects are applied only when the handler returns ok)");
    }
    if inv.effects.sql_statements > 0 {
        let fate = if matches!(inv.outcome, Outcome::Ok) {
            "committed"
        } else {
            "rolled back"
        };
        println!(
            "sql        {} statements, {} rows changed, {fate}",
            inv.effects.sql_statements, inv.effects.sql_rows_changed
        );
    }
    if inv.effects.publishes.is_empty()
        && inv.effects.logs.is_empty()
        && inv.effects.sql_statements == 0
        && inv.effects.broadcasts.is_empty()
    {
        println!("effects    none");
    }
    if !inv.guest_output.is_empty() && matches!(inv.outcome, Outcome::Ok) {
        println!("output     {}", inv.guest_output);
    }
}
