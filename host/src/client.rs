//! The operator's side of the admin API: `kasm handlers`, `handler`, `deploy`, `rollback`,
//! `pause`, `resume` and `dlq`, talking to a running host over HTTP.
//!
//! Each command is one request to `/v1/...` (see [`crate::admin`]) and a rendering of its
//! answer; `--json` prints the server's answer as it came, for scripts. The client speaks plain
//! HTTP only (the admin server does not serve TLS; it listens on loopback by default), so an
//! `https://` URL is refused up front rather than failing deep inside the HTTP library.
//!
//! The token comes from `--token` or `KASM_ADMIN_TOKEN`, travels only in the `Authorization`
//! header and is held as a [`Secret`], so it never shows in `--help`, `Debug` output or an error.
//!
//! Exit codes follow [`crate::cli`]: 0 done; 1 the request ran but not everything happened
//! (a DLQ replay that refused some records or stopped early); 2 the command could not run — the host is
//! unreachable, the token is wrong, or the server answered 4xx/5xx (its `error` message is
//! shown, and with `--json` its JSON answer is printed too).
//!
//! The DLQ answers are rendered from the JSON without a fixed schema (fields are looked up
//! under a few likely names), so the client keeps working while those routes settle.

// Printing to stdout is this module's job.
#![allow(clippy::print_stdout)]

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::{Args, Subcommand};
use serde::Deserialize;
use serde_json::Value;

use crate::config::Secret;

/// Where the admin API listens unless `--admin` or `KASM_ADMIN_URL` says otherwise.
pub const DEFAULT_ADMIN_URL: &str = "http://127.0.0.1:9464";

/// Message for a 401: the only fix is on the caller's side.
const TOKEN_MESSAGE: &str = "the admin token is missing or wrong (set KASM_ADMIN_TOKEN or --token)";

/// Largest answer read (a DLQ page or a long handler list stays far below).
const MAX_ANSWER_BYTES: u64 = 64 << 20;

/// Commands that talk to a running host's admin API.
#[derive(Debug, Clone, Subcommand)]
pub enum AdminCommand {
    /// List the handlers of a running host: status, version, partitions, lag, counters.
    Handlers(HandlersArgs),
    /// Show one handler of a running host: version history, partitions, counters.
    Handler(NameArgs),
    /// Upload a component to a running host and swap it in; the old version keeps serving if
    /// the new one is refused.
    Deploy(DeployArgs),
    /// Switch a handler back to the version it ran before the last deploy.
    Rollback(NameArgs),
    /// Stop fetching for a handler (offsets stay put) until `kasm resume`.
    Pause(NameArgs),
    /// Resume a paused handler.
    Resume(NameArgs),
    /// A handler's dead letters: list them, replay them to their source topic.
    #[command(subcommand)]
    Dlq(DlqCommand),
}

/// `kasm dlq ...`.
#[derive(Debug, Clone, Subcommand)]
pub enum DlqCommand {
    /// List dead letters: position, source, error kind, attempts, replays, message.
    List(DlqListArgs),
    /// Re-publish dead letters to their source topic.
    Replay(DlqReplayArgs),
}

/// Where the admin API is and how to talk to it (every admin command takes these).
#[derive(Debug, Clone, Args)]
pub struct AdminArgs {
    /// Admin API of the running host: `http://HOST:PORT` (plain HTTP; `HOST:PORT` also works).
    #[arg(long = "admin", value_name = "URL", env = "KASM_ADMIN_URL", default_value = DEFAULT_ADMIN_URL)]
    pub url: String,
    /// Admin bearer token (the host's KASM_ADMIN_TOKEN). The variable is safer than the flag,
    /// which other users can see in the process list.
    #[arg(long, env = "KASM_ADMIN_TOKEN", hide_env_values = true, value_parser = parse_secret)]
    pub token: Option<Secret>,
    /// Print the server's JSON answer as is.
    #[arg(long)]
    pub json: bool,
}

fn parse_secret(s: &str) -> Result<Secret, std::convert::Infallible> {
    Ok(Secret::new(s))
}

/// `kasm handlers`.
#[derive(Debug, Clone, Args)]
pub struct HandlersArgs {
    /// The admin API.
    #[command(flatten)]
    pub admin: AdminArgs,
}

/// A command about one handler.
#[derive(Debug, Clone, Args)]
pub struct NameArgs {
    /// Handler name.
    pub handler: String,
    /// The admin API.
    #[command(flatten)]
    pub admin: AdminArgs,
}

/// `kasm deploy`.
#[derive(Debug, Clone, Args)]
pub struct DeployArgs {
    /// Handler name.
    pub handler: String,
    /// The component file (.wasm).
    pub component: PathBuf,
    /// The admin API.
    #[command(flatten)]
    pub admin: AdminArgs,
}

/// `kasm dlq list`.
#[derive(Debug, Clone, Args)]
pub struct DlqListArgs {
    /// Handler name.
    pub handler: String,
    /// At most this many dead letters (the server's default without it).
    #[arg(long)]
    pub limit: Option<u32>,
    /// Start at this cursor (printed after the previous page).
    #[arg(long, value_name = "CURSOR")]
    pub from: Option<String>,
    /// The source topic whose dead letters to list (default: the handler's first topic).
    #[arg(long)]
    pub topic: Option<String>,
    /// The admin API.
    #[command(flatten)]
    pub admin: AdminArgs,
}

/// `kasm dlq replay`.
#[derive(Debug, Clone, Args)]
#[command(group(clap::ArgGroup::new("which").required(true).args(["all", "offsets"])))]
pub struct DlqReplayArgs {
    /// Handler name.
    pub handler: String,
    /// Replay every dead letter of the handler.
    #[arg(long)]
    pub all: bool,
    /// Replay the dead letter at this DLQ-topic position; repeatable.
    #[arg(long = "offset", value_name = "PARTITION:OFFSET", value_parser = parse_position)]
    pub offsets: Vec<Position>,
    /// The source topic whose dead letters to replay (default: the handler's first topic).
    #[arg(long)]
    pub topic: Option<String>,
    /// The admin API.
    #[command(flatten)]
    pub admin: AdminArgs,
}

/// A record position in the dead-letter topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
}

fn parse_position(s: &str) -> Result<Position, String> {
    let (p, o) = s
        .split_once(':')
        .ok_or_else(|| format!("`{s}`: expected PARTITION:OFFSET, e.g. 0:42"))?;
    let partition = p
        .trim()
        .parse()
        .map_err(|e| format!("`{s}`: partition `{p}`: {e}"))?;
    let offset = o
        .trim()
        .parse()
        .map_err(|e| format!("`{s}`: offset `{o}`: {e}"))?;
    if partition < 0 || offset < 0 {
        return Err(format!("`{s}`: partition and offset cannot be negative"));
    }
    Ok(Position { partition, offset })
}

/// Run an admin command. The HTTP calls block, so they run off the async runtime.
pub async fn run(cmd: AdminCommand) -> anyhow::Result<ExitCode> {
    tokio::task::spawn_blocking(move || run_blocking(&cmd))
        .await
        .context("the admin command task failed")?
}

/// Run an admin command on the current thread.
pub fn run_blocking(cmd: &AdminCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        AdminCommand::Handlers(a) => handlers(&a.admin),
        AdminCommand::Handler(a) => handler(a),
        AdminCommand::Deploy(a) => deploy(a),
        AdminCommand::Rollback(a) => rollback(a),
        AdminCommand::Pause(a) => set_paused(a, true),
        AdminCommand::Resume(a) => set_paused(a, false),
        AdminCommand::Dlq(DlqCommand::List(a)) => dlq_list(a),
        AdminCommand::Dlq(DlqCommand::Replay(a)) => dlq_replay(a),
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP

/// A connection to one admin API.
struct Client {
    base: String,
    token: Option<Secret>,
    json: bool,
    agent: ureq::Agent,
}

/// The admin API's methods.
#[derive(Clone, Copy)]
enum Verb {
    Get,
    Put,
    Post,
}

impl Verb {
    fn as_str(self) -> &'static str {
        match self {
            Verb::Get => "GET",
            Verb::Put => "PUT",
            Verb::Post => "POST",
        }
    }
}

/// What a request sends.
enum Body<'a> {
    Empty,
    Wasm(&'a [u8]),
    Json(Value),
}

impl Client {
    fn new(args: &AdminArgs) -> anyhow::Result<Self> {
        let agent = ureq::Agent::config_builder()
            // 4xx/5xx are answers to render, not transport errors.
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(5)))
            // A deploy compiles the component before answering (seconds in a debug host).
            .timeout_global(Some(Duration::from_secs(300)))
            .user_agent(concat!("kasm/", env!("CARGO_PKG_VERSION")))
            .build()
            .new_agent();
        Ok(Self {
            base: base_url(&args.url)?,
            token: args.token.clone(),
            json: args.json,
            agent,
        })
    }

    /// Send a request; a 2xx answer's body, else an error that says what the server said.
    /// With `--json`, an error answer's JSON body is printed first, for scripts.
    fn send(
        &self,
        verb: Verb,
        path: &str,
        query: &[(&str, String)],
        body: Body<'_>,
    ) -> anyhow::Result<String> {
        let method = verb.as_str();
        let url = format!("{}{path}", self.base);
        let auth = self
            .token
            .as_ref()
            .map(|t| format!("Bearer {}", t.expose()));
        let pairs = query.iter().map(|(k, v)| (*k, v.as_str()));
        let with_body = |req: ureq::RequestBuilder<ureq::typestate::WithBody>| {
            let mut req = req.query_pairs(pairs.clone());
            if let Some(a) = &auth {
                req = req.header("Authorization", a);
            }
            match body {
                Body::Empty => Ok(req.send_empty()),
                Body::Wasm(bytes) => Ok(req.content_type("application/wasm").send(bytes)),
                Body::Json(v) => serde_json::to_vec(&v)
                    .context("encoding the request body")
                    .map(|b| req.content_type("application/json").send(b)),
            }
        };
        let sent = match verb {
            Verb::Get => {
                let mut req = self.agent.get(&url).query_pairs(pairs.clone());
                if let Some(a) = &auth {
                    req = req.header("Authorization", a);
                }
                req.call()
            }
            Verb::Put => with_body(self.agent.put(&url))?,
            Verb::Post => with_body(self.agent.post(&url))?,
        };
        let mut response = sent.map_err(|e| self.transport_error(method, &url, e))?;
        let status = response.status();
        let text = response
            .body_mut()
            .with_config()
            .limit(MAX_ANSWER_BYTES)
            .lossy_utf8(true)
            .read_to_string()
            .with_context(|| format!("{method} {url}: reading the answer ({status})"))?;
        if status.is_success() {
            return Ok(text);
        }
        if status == ureq::http::StatusCode::UNAUTHORIZED {
            bail!("{TOKEN_MESSAGE}");
        }
        let parsed: Option<Value> = serde_json::from_str(&text).ok();
        if self.json
            && let Some(v) = &parsed
        {
            println!("{v}");
        }
        match parsed
            .as_ref()
            .and_then(|v| v.get("error"))
            .and_then(Value::as_str)
        {
            Some(message) => bail!("{message} ({status})"),
            None => bail!(
                "{method} {url} answered {status}{}",
                if text.trim().is_empty() {
                    String::new()
                } else {
                    format!(": {}", short(&text, 200))
                }
            ),
        }
    }

    fn transport_error(&self, method: &str, url: &str, e: ureq::Error) -> anyhow::Error {
        let base = &self.base;
        let hint = "is the host running, and is that its [admin] listen address? set KASM_ADMIN_URL or --admin";
        match e {
            ureq::Error::Io(io) if io.kind() == std::io::ErrorKind::ConnectionRefused => {
                anyhow::anyhow!(
                    "cannot reach the kasm admin API at {base}: connection refused ({hint})"
                )
            }
            ureq::Error::ConnectionFailed => {
                anyhow::anyhow!(
                    "cannot reach the kasm admin API at {base}: connection failed ({hint})"
                )
            }
            ureq::Error::HostNotFound => {
                anyhow::anyhow!(
                    "cannot reach the kasm admin API at {base}: host not found ({hint})"
                )
            }
            ureq::Error::Timeout(t) => {
                anyhow::anyhow!(
                    "the kasm admin API at {base} did not answer {method} {url} in time ({t})"
                )
            }
            other => anyhow::Error::new(other).context(format!("{method} {url}")),
        }
    }

    /// Print a 2xx answer as is (`--json`). Returns whether it did.
    fn print_raw(&self, text: &str) -> bool {
        if self.json {
            println!("{}", text.trim_end());
        }
        self.json
    }
}

/// The base URL from `--admin`: `http://` added when no scheme is given, `https://` refused,
/// no trailing slash.
fn base_url(raw: &str) -> anyhow::Result<String> {
    let raw = raw.trim();
    let rest = match raw.split_once("://") {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("http") => rest,
        Some((scheme, _)) if scheme.eq_ignore_ascii_case("https") => bail!(
            "--admin {raw}: https is not supported: the admin API is plain HTTP (loopback by default) \
             and this client has no TLS; use an http:// URL, e.g. through an SSH tunnel"
        ),
        Some((scheme, _)) => {
            bail!("--admin {raw}: unsupported scheme `{scheme}` (expected http://HOST:PORT)")
        }
        None => raw,
    };
    let rest = rest.trim_end_matches('/');
    if rest.is_empty() || rest.starts_with('/') {
        bail!("--admin `{raw}`: no host (expected http://HOST:PORT)");
    }
    Ok(format!("http://{rest}"))
}

/// A handler name as one URL path segment.
fn segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

fn handler_path(name: &str, rest: &str) -> String {
    format!("/v1/handlers/{}{rest}", segment(name))
}

fn parse<T: serde::de::DeserializeOwned>(text: &str, what: &str) -> anyhow::Result<T> {
    serde_json::from_str(text).with_context(|| {
        format!(
            "the admin API's answer to {what} is not what this kasm expects: {}",
            short(text, 200)
        )
    })
}

// ---------------------------------------------------------------------------------------------
// What the server sends (mirrors of the `Serialize` types in `admin`, `deploy` and `pipeline`;
// tolerant of missing fields so an older or newer host still renders).

#[derive(Debug, Deserialize)]
struct HandlerView {
    name: String,
    #[serde(default)]
    group_id: String,
    #[serde(default)]
    topics: Vec<String>,
    #[serde(default)]
    status: String,
    active_version: VersionView,
    #[serde(default)]
    history: Vec<SwapView>,
    #[serde(default)]
    partitions: BTreeMap<String, PartitionView>,
    #[serde(default)]
    counters: Counters,
}

#[derive(Debug, Deserialize)]
struct VersionView {
    sha256: String,
    #[serde(default)]
    size: u64,
    #[serde(default)]
    capabilities: Vec<String>,
}

#[derive(Debug, Deserialize)]
struct SwapView {
    from: Option<String>,
    to: String,
    #[serde(default)]
    at_ms: i64,
    #[serde(default)]
    reason: String,
    #[serde(default)]
    first_offsets: BTreeMap<String, i64>,
}

#[derive(Debug, Default, Deserialize)]
struct PartitionView {
    committed: Option<i64>,
    lag: Option<i64>,
    #[serde(default)]
    in_flight: u64,
    #[serde(default)]
    paused: bool,
}

#[derive(Debug, Default, Deserialize)]
struct Counters {
    #[serde(default)]
    processed: u64,
    #[serde(default)]
    skipped: u64,
    #[serde(default)]
    retried: u64,
    #[serde(default)]
    dead_lettered: u64,
}

#[derive(Debug, Deserialize)]
struct SwapReport {
    handler: String,
    previous: String,
    active: String,
    #[serde(default)]
    load: String,
    #[serde(default)]
    compile_ms: f64,
    #[serde(default)]
    swap_us: f64,
}

// ---------------------------------------------------------------------------------------------
// Commands

fn handlers(args: &AdminArgs) -> anyhow::Result<ExitCode> {
    let client = Client::new(args)?;
    let text = client.send(Verb::Get, "/v1/handlers", &[], Body::Empty)?;
    if client.print_raw(&text) {
        return Ok(ExitCode::SUCCESS);
    }
    let list: Vec<HandlerView> = parse(&text, "GET /v1/handlers")?;
    if list.is_empty() {
        println!("no handlers");
        return Ok(ExitCode::SUCCESS);
    }
    let rows = list
        .iter()
        .map(|h| {
            vec![
                h.name.clone(),
                h.status.clone(),
                short_sha(&h.active_version.sha256).to_owned(),
                h.partitions.len().to_string(),
                total_lag(&h.partitions),
                h.counters.processed.to_string(),
                h.counters.skipped.to_string(),
                h.counters.retried.to_string(),
                h.counters.dead_lettered.to_string(),
            ]
        })
        .collect();
    print!(
        "{}",
        table(
            &[
                "NAME",
                "STATUS",
                "VERSION",
                "PARTITIONS",
                "LAG",
                "PROCESSED",
                "SKIPPED",
                "RETRIED",
                "DEAD-LETTERED",
            ],
            &[false, false, false, true, true, true, true, true, true],
            rows,
        )
    );
    Ok(ExitCode::SUCCESS)
}

fn handler(args: &NameArgs) -> anyhow::Result<ExitCode> {
    let client = Client::new(&args.admin)?;
    let text = client
        .send(
            Verb::Get,
            &handler_path(&args.handler, ""),
            &[],
            Body::Empty,
        )
        .with_context(|| format!("handler `{}`", args.handler))?;
    if client.print_raw(&text) {
        return Ok(ExitCode::SUCCESS);
    }
    let h: HandlerView = parse(&text, "GET /v1/handlers/{name}")?;
    print!("{}", render_handler(&h));
    Ok(ExitCode::SUCCESS)
}

fn render_handler(h: &HandlerView) -> String {
    let mut out = String::new();
    let v = &h.active_version;
    let caps = if v.capabilities.is_empty() {
        "no capability".to_owned()
    } else {
        v.capabilities.join(", ")
    };
    let _ = writeln!(out, "handler    {} ({})", h.name, h.status);
    let _ = writeln!(out, "group      {}", h.group_id);
    let _ = writeln!(out, "topics     {}", h.topics.join(", "));
    let _ = writeln!(out, "version    {}", v.sha256);
    let _ = writeln!(
        out,
        "           {:.1} KiB, needs {caps}",
        v.size as f64 / 1024.0
    );
    let c = &h.counters;
    let _ = writeln!(
        out,
        "counters   processed {}  skipped {}  retried {}  dead-lettered {}",
        c.processed, c.skipped, c.retried, c.dead_lettered
    );

    let _ = writeln!(out, "\nhistory (oldest first)");
    if h.history.is_empty() {
        let _ = writeln!(out, "  none");
    }
    let rows = h
        .history
        .iter()
        .map(|s| {
            let from = s.from.as_deref().map_or("-", short_sha);
            let mut firsts: Vec<(&String, &i64)> = s.first_offsets.iter().collect();
            firsts.sort_by_key(|(k, _)| partition_key(k));
            let firsts: Vec<String> = firsts.iter().map(|(k, o)| format!("{k}@{o}")).collect();
            vec![
                utc(s.at_ms),
                s.reason.clone(),
                format!("{from} → {}", short_sha(&s.to)),
                if firsts.is_empty() {
                    "-".to_owned()
                } else {
                    firsts.join(" ")
                },
            ]
        })
        .collect::<Vec<_>>();
    if !rows.is_empty() {
        out.push_str(&indent(&table(
            &["TIME (UTC)", "REASON", "FROM → TO", "FIRST OFFSETS"],
            &[false; 4],
            rows,
        )));
    }

    let _ = writeln!(out, "\npartitions");
    if h.partitions.is_empty() {
        let _ = writeln!(out, "  none assigned");
    } else {
        let mut parts: Vec<(&String, &PartitionView)> = h.partitions.iter().collect();
        parts.sort_by_key(|(k, _)| partition_key(k));
        let rows = parts
            .iter()
            .map(|(k, p)| {
                vec![
                    (*k).clone(),
                    opt(p.committed),
                    opt(p.lag),
                    p.in_flight.to_string(),
                    if p.paused { "yes" } else { "no" }.to_owned(),
                ]
            })
            .collect();
        out.push_str(&indent(&table(
            &["PARTITION", "COMMITTED", "LAG", "IN FLIGHT", "PAUSED"],
            &[false, true, true, true, false],
            rows,
        )));
    }
    out
}

fn deploy(args: &DeployArgs) -> anyhow::Result<ExitCode> {
    let client = Client::new(&args.admin)?;
    let bytes = std::fs::read(&args.component)
        .with_context(|| format!("reading component file {}", args.component.display()))?;
    if bytes.is_empty() {
        bail!("component file {} is empty", args.component.display());
    }
    let text = client
        .send(
            Verb::Put,
            &handler_path(&args.handler, "/component"),
            &[],
            Body::Wasm(&bytes),
        )
        .with_context(|| {
            format!(
                "deploying {} to handler `{}`",
                args.component.display(),
                args.handler
            )
        })?;
    if client.print_raw(&text) {
        return Ok(ExitCode::SUCCESS);
    }
    let r: SwapReport = parse(&text, "PUT /v1/handlers/{name}/component")?;
    print!("{}", render_swap(&r, "deploy"));
    Ok(ExitCode::SUCCESS)
}

fn rollback(args: &NameArgs) -> anyhow::Result<ExitCode> {
    let client = Client::new(&args.admin)?;
    let text = client
        .send(
            Verb::Post,
            &handler_path(&args.handler, "/rollback"),
            &[],
            Body::Empty,
        )
        .with_context(|| format!("rolling back handler `{}`", args.handler))?;
    if client.print_raw(&text) {
        return Ok(ExitCode::SUCCESS);
    }
    let r: SwapReport = parse(&text, "POST /v1/handlers/{name}/rollback")?;
    print!("{}", render_swap(&r, "rollback"));
    Ok(ExitCode::SUCCESS)
}

fn render_swap(r: &SwapReport, what: &str) -> String {
    let mut out = String::new();
    if r.active == r.previous {
        let _ = writeln!(out, "unchanged  {} already runs this version", r.handler);
        let _ = writeln!(out, "active     {}", r.active);
        return out;
    }
    let load = match r.load.as_str() {
        "cache" => "loaded precompiled artifact",
        "" | "compiled" => "compiled",
        other => other,
    };
    let _ = writeln!(out, "{what:<10} {} (done)", r.handler);
    let _ = writeln!(out, "active     {}", r.active);
    let _ = writeln!(out, "previous   {}", r.previous);
    let _ = writeln!(out, "load       {load} in {:.1} ms", r.compile_ms);
    let _ = writeln!(out, "swap       {:.1} µs", r.swap_us);
    out
}

fn set_paused(args: &NameArgs, pause: bool) -> anyhow::Result<ExitCode> {
    let client = Client::new(&args.admin)?;
    let (route, verb) = if pause {
        ("/pause", "pausing")
    } else {
        ("/resume", "resuming")
    };
    let text = client
        .send(
            Verb::Post,
            &handler_path(&args.handler, route),
            &[],
            Body::Empty,
        )
        .with_context(|| format!("{verb} handler `{}`", args.handler))?;
    if client.print_raw(&text) {
        return Ok(ExitCode::SUCCESS);
    }
    let h: HandlerView = parse(&text, &format!("POST /v1/handlers/{{name}}{route}"))?;
    println!("{}  {}", h.name, h.status);
    Ok(ExitCode::SUCCESS)
}

fn dlq_list(args: &DlqListArgs) -> anyhow::Result<ExitCode> {
    let client = Client::new(&args.admin)?;
    let mut query = Vec::new();
    if let Some(n) = args.limit {
        query.push(("limit", n.to_string()));
    }
    if let Some(from) = &args.from {
        query.push(("from", from.clone()));
    }
    if let Some(topic) = &args.topic {
        query.push(("topic", topic.clone()));
    }
    let text = client
        .send(
            Verb::Get,
            &handler_path(&args.handler, "/dlq"),
            &query,
            Body::Empty,
        )
        .with_context(|| format!("listing dead letters of handler `{}`", args.handler))?;
    if client.print_raw(&text) {
        return Ok(ExitCode::SUCCESS);
    }
    let v: Value = parse(&text, "GET /v1/handlers/{name}/dlq")?;
    print!("{}", render_dlq_list(&v));
    Ok(ExitCode::SUCCESS)
}

fn render_dlq_list(v: &Value) -> String {
    let empty = Vec::new();
    let records = v
        .as_array()
        .or_else(|| {
            ["records", "items", "entries", "dead_letters"]
                .iter()
                .find_map(|k| v.get(*k).and_then(Value::as_array))
        })
        .unwrap_or(&empty);
    let mut out = String::new();
    if records.is_empty() {
        let _ = writeln!(out, "no dead letters");
    } else {
        let rows = records
            .iter()
            .map(|r| {
                let f = |paths: &[&str]| field(r, paths).unwrap_or_else(|| "-".to_owned());
                let source = format!(
                    "{}/{}@{}",
                    f(&[
                        "provenance.source_topic",
                        "source.topic",
                        "source_topic",
                        "headers.kasm-dlq-source-topic",
                    ]),
                    f(&[
                        "provenance.source_partition",
                        "source.partition",
                        "source_partition",
                        "headers.kasm-dlq-source-partition",
                    ]),
                    f(&[
                        "provenance.source_offset",
                        "source.offset",
                        "source_offset",
                        "headers.kasm-dlq-source-offset",
                    ]),
                );
                let message = f(&[
                    "provenance.error_message",
                    "error_message",
                    "error.message",
                    "message",
                    "reason",
                    "error",
                    "headers.kasm-dlq-error-message",
                ]);
                vec![
                    format!(
                        "{}:{}",
                        f(&[
                            "partition",
                            "dlq_partition",
                            "dlq.partition",
                            "position.partition"
                        ]),
                        f(&["offset", "dlq_offset", "dlq.offset", "position.offset"]),
                    ),
                    source,
                    f(&[
                        "provenance.error_kind",
                        "error_kind",
                        "error.kind",
                        "kind",
                        "headers.kasm-dlq-error-kind",
                    ]),
                    f(&[
                        "provenance.attempts",
                        "attempts",
                        "error.attempts",
                        "headers.kasm-dlq-attempts",
                    ]),
                    f(&["replay_count", "replays", "headers.kasm-replay-count"]),
                    short(&message, 80),
                ]
            })
            .collect();
        out.push_str(&table(
            &["DLQ", "SOURCE", "KIND", "ATTEMPTS", "REPLAYS", "MESSAGE"],
            &[false, false, false, true, true, false],
            rows,
        ));
    }
    if let Some(next) =
        field(v, &["next", "next_cursor", "next_from", "cursor"]).filter(|n| !n.is_empty())
    {
        let _ = writeln!(out, "more: --from {next}");
    }
    out
}

fn dlq_replay(args: &DlqReplayArgs) -> anyhow::Result<ExitCode> {
    let client = Client::new(&args.admin)?;
    let mut body = if args.all {
        serde_json::json!({ "all": true })
    } else {
        let records: Vec<Value> = args
            .offsets
            .iter()
            .map(|p| serde_json::json!({ "partition": p.partition, "offset": p.offset }))
            .collect();
        serde_json::json!({ "records": records })
    };
    if let Some(topic) = &args.topic {
        body["topic"] = Value::String(topic.clone());
    }
    let text = client
        .send(
            Verb::Post,
            &handler_path(&args.handler, "/dlq/replay"),
            &[],
            Body::Json(body),
        )
        .with_context(|| format!("replaying dead letters of handler `{}`", args.handler))?;
    let v: Value = if client.json {
        client.print_raw(&text);
        serde_json::from_str(&text).unwrap_or(Value::Null)
    } else {
        let v = parse(&text, "POST /v1/handlers/{name}/dlq/replay")?;
        print!("{}", render_replay(&v));
        v
    };
    Ok(if replay_incomplete(&v) {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

fn render_replay(v: &Value) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "replayed   {}", count(v.get("replayed")));
    let refused = v.get("refused");
    let _ = writeln!(out, "refused    {}", count(refused));
    let reasons: Vec<String> = match refused {
        Some(Value::Array(items)) => items
            .iter()
            .map(|r| match r {
                Value::Object(_) => {
                    let at = match (
                        field(r, &["dlq_partition", "partition"]),
                        field(r, &["dlq_offset", "offset"]),
                    ) {
                        (Some(p), Some(o)) => format!("{p}:{o}"),
                        _ => "-".to_owned(),
                    };
                    let why =
                        field(r, &["reason", "error", "message"]).unwrap_or_else(|| r.to_string());
                    match field(r, &["kind"]) {
                        Some(kind) => format!("{at}  {kind}: {why}"),
                        None => format!("{at}  {why}"),
                    }
                }
                other => scalar(other).unwrap_or_else(|| other.to_string()),
            })
            .collect(),
        Some(Value::Object(m)) => m
            .iter()
            .map(|(k, r)| format!("{k}  {}", scalar(r).unwrap_or_else(|| r.to_string())))
            .collect(),
        _ => Vec::new(),
    };
    for r in reasons {
        let _ = writeln!(out, "           {r}");
    }
    if let Some(why) = field(v, &["stopped"]) {
        let _ = writeln!(out, "stopped    {why}");
    }
    out
}

/// Whether a replay did less than asked: some dead letters refused, or it stopped early.
fn replay_incomplete(v: &Value) -> bool {
    count(v.get("refused")) > 0 || field(v, &["stopped"]).is_some()
}

// ---------------------------------------------------------------------------------------------
// Rendering helpers

/// A count from a number, or the length of an array or object.
fn count(v: Option<&Value>) -> u64 {
    match v {
        Some(Value::Number(n)) => n.as_u64().unwrap_or(0),
        Some(Value::Array(a)) => a.len() as u64,
        Some(Value::Object(m)) => m.len() as u64,
        _ => 0,
    }
}

/// A string, number or bool as text.
fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// The first of `paths` (dot-separated) that holds a scalar in `v`, as text. A step into an
/// array of `[name, value]` pairs (how headers may come) takes the last pair of that name.
fn field(v: &Value, paths: &[&str]) -> Option<String> {
    paths.iter().find_map(|path| {
        let mut cur = v;
        for k in path.split('.') {
            cur = match cur {
                Value::Array(pairs) => pairs
                    .iter()
                    .rev()
                    .find(|p| p.get(0).and_then(Value::as_str) == Some(k))
                    .and_then(|p| p.get(1))?,
                other => other.get(k)?,
            };
        }
        scalar(cur)
    })
}

/// At most `max` characters of `s` on one line.
fn short(s: &str, max: usize) -> String {
    let one_line: String = s
        .trim()
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if one_line.chars().count() <= max {
        return one_line;
    }
    let mut cut: String = one_line.chars().take(max.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

fn short_sha(sha: &str) -> &str {
    sha.get(..12).unwrap_or(sha)
}

fn opt(v: Option<i64>) -> String {
    v.map_or_else(|| "-".to_owned(), |v| v.to_string())
}

fn total_lag(parts: &BTreeMap<String, PartitionView>) -> String {
    let known: Vec<i64> = parts.values().filter_map(|p| p.lag).collect();
    if known.is_empty() {
        "-".to_owned()
    } else {
        known.iter().sum::<i64>().to_string()
    }
}

/// Sort key of `topic/partition`: by topic, then partition number (so 2 comes before 10).
fn partition_key(k: &str) -> (String, i64) {
    match k.rsplit_once('/') {
        Some((t, p)) => (t.to_owned(), p.parse().unwrap_or(i64::MAX)),
        None => (k.to_owned(), i64::MAX),
    }
}

/// Columns padded to their widest cell, two spaces apart; `right[i]` right-aligns column `i`.
fn table(headers: &[&str], right: &[bool], rows: Vec<Vec<String>>) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let header: Vec<String> = headers.iter().map(|h| (*h).to_owned()).collect();
    for row in std::iter::once(header).chain(rows) {
        let mut line = String::new();
        for (i, (cell, w)) in row.iter().zip(&widths).enumerate() {
            if i > 0 {
                line.push_str("  ");
            }
            let pad = w.saturating_sub(cell.chars().count());
            if right.get(i).copied().unwrap_or(false) {
                line.push_str(&" ".repeat(pad));
                line.push_str(cell);
            } else {
                line.push_str(cell);
                line.push_str(&" ".repeat(pad));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("  {l}\n")).collect()
}

/// `YYYY-MM-DD HH:MM:SS` (UTC) of ms since the Unix epoch.
fn utc(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_urls() {
        assert_eq!(base_url("127.0.0.1:9464").unwrap(), "http://127.0.0.1:9464");
        assert_eq!(base_url("http://h:1/").unwrap(), "http://h:1");
        assert_eq!(base_url("HTTP://h:1/x/").unwrap(), "http://h:1/x");
        assert!(base_url("HTTPS://h").is_err());
        let e = base_url("https://h:1").unwrap_err().to_string();
        assert!(e.contains("https is not supported"), "{e}");
        assert!(base_url("ftp://h").is_err());
        assert!(base_url("http://").is_err());
    }

    #[test]
    fn positions() {
        assert_eq!(
            parse_position("2:40").unwrap(),
            Position {
                partition: 2,
                offset: 40
            }
        );
        assert!(parse_position("2").is_err());
        assert!(parse_position("a:1").is_err());
        assert!(parse_position("-1:1").is_err());
    }

    #[test]
    fn segments_are_escaped() {
        assert_eq!(segment("pub_1-a"), "pub_1-a");
        assert_eq!(segment("a/b c"), "a%2Fb%20c");
    }

    #[test]
    fn utc_dates() {
        assert_eq!(utc(0), "1970-01-01 00:00:00");
        assert_eq!(utc(951_782_400_000), "2000-02-29 00:00:00");
        assert_eq!(utc(1_767_225_599_000), "2025-12-31 23:59:59");
    }

    #[test]
    fn dlq_lists_render_from_several_shapes() {
        let v = serde_json::json!({
            "records": [
                {"partition": 0, "offset": 7, "source": {"topic": "in", "partition": 3, "offset": 41},
                 "error_kind": "fatal", "attempts": 1, "replay_count": 0, "error_message": "bad\ninput"},
                {"partition": 0, "offset": 8, "headers": {"kasm-dlq-source-topic": "in",
                 "kasm-dlq-source-partition": "1", "kasm-dlq-source-offset": "9",
                 "kasm-dlq-error-kind": "trap", "kasm-dlq-attempts": "3",
                 "kasm-dlq-error-message": "unreachable"}}
            ],
            "next": "0:9"
        });
        let out = render_dlq_list(&v);
        assert!(
            out.contains("0:7") && out.contains("in/3@41") && out.contains("fatal"),
            "{out}"
        );
        assert!(out.contains("bad input"), "{out}");
        assert!(
            out.contains("in/1@9") && out.contains("trap") && out.contains("unreachable"),
            "{out}"
        );
        assert!(out.contains("more: --from 0:9"), "{out}");
        assert_eq!(render_dlq_list(&serde_json::json!([])), "no dead letters\n");

        // Provenance in its own object, headers as [name, value] pairs, a cursor per partition.
        let v = serde_json::json!({
            "records": [{"partition": 1, "offset": 2, "replay_count": 1,
                "provenance": {"source_topic": "orders", "source_partition": 4, "source_offset": 99,
                               "error_kind": "timeout", "attempts": 5, "error_message": "deadline"},
                "headers": [["kasm-dlq-error-kind", "ignored"], ["x", "y"]]}],
            "next": "0:3,1:3"
        });
        let out = render_dlq_list(&v);
        let line = out.lines().nth(1).unwrap();
        for want in ["1:2", "orders/4@99", "timeout", "5", "1", "deadline"] {
            assert!(line.contains(want), "{want}: {out}");
        }
        assert!(out.contains("more: --from 0:3,1:3"), "{out}");
        let pairs = serde_json::json!({"headers": [["a", "1"], ["b", "2"], ["a", "3"]]});
        assert_eq!(field(&pairs, &["headers.a"]).as_deref(), Some("3"));
    }

    #[test]
    fn replay_answers_render_counts_and_reasons() {
        let v = serde_json::json!({
            "replayed": 2,
            "refused": [{"partition": 0, "offset": 3, "reason": "replay limit reached"}]
        });
        let out = render_replay(&v);
        assert!(out.contains("replayed   2"), "{out}");
        assert!(out.contains("refused    1"), "{out}");
        assert!(out.contains("0:3  replay limit reached"), "{out}");
        assert!(replay_incomplete(&v));

        let v = serde_json::json!({
            "replayed": [{"dlq_partition": 0, "dlq_offset": 1, "topic": "in", "partition": 0,
                          "offset": 10, "replay_count": 1}],
            "refused": [{"dlq_partition": 0, "dlq_offset": 2, "kind": "write-failed",
                         "reason": "broker down"}],
            "stopped": "writing 0:2 failed"
        });
        let out = render_replay(&v);
        assert!(out.contains("replayed   1"), "{out}");
        assert!(out.contains("0:2  write-failed: broker down"), "{out}");
        assert!(out.contains("stopped    writing 0:2 failed"), "{out}");
        let done = serde_json::json!({"replayed": [], "refused": [], "stopped": null});
        assert!(!replay_incomplete(&done));
    }

    #[test]
    fn handler_details_sort_partitions_numerically_and_sum_lag() {
        let h: HandlerView = serde_json::from_value(serde_json::json!({
            "name": "pub", "group_id": "g", "topics": ["in"], "status": "running",
            "active_version": {"sha256": "ab".repeat(32), "size": 2048, "capabilities": ["producer"]},
            "history": [{"from": null, "to": "ab".repeat(32), "at_ms": 0, "reason": "startup",
                         "first_offsets": {"in/10": 5, "in/2": 7}}],
            "partitions": {
                "in/10": {"committed": 5, "high_watermark": 9, "lag": 4, "in_flight": 1, "paused": false},
                "in/2": {"committed": null, "high_watermark": null, "lag": null, "in_flight": 0, "paused": true}
            },
            "counters": {"processed": 3, "skipped": 1, "retried": 2, "dead_lettered": 0}
        }))
        .unwrap();
        let out = render_handler(&h);
        let two = out.find("  in/2 ").unwrap();
        let ten = out.find("  in/10 ").unwrap();
        assert!(two < ten, "{out}");
        assert!(out.contains("in/2@7 in/10@5"), "{out}");
        assert!(out.contains("2.0 KiB, needs producer"), "{out}");
        assert!(
            out.contains("processed 3  skipped 1  retried 2  dead-lettered 0"),
            "{out}"
        );
        assert_eq!(total_lag(&h.partitions), "4");
    }

    #[test]
    fn tables_align() {
        let t = table(
            &["A", "N"],
            &[false, true],
            vec![
                vec!["long-name".into(), "1".into()],
                vec!["x".into(), "100".into()],
            ],
        );
        assert_eq!(t, "A            N\nlong-name    1\nx          100\n");
    }
}
