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
//! Exit codes follow [`crate::commands`]: 0 done; 1 the request ran but not everything happened
//! (a DLQ replay that refused some records or stopped early); 2 the command could not run — the host is
//! unreachable, the token is wrong, or the server answered 4xx/5xx (its `error` message is
//! shown, and with `--json` its JSON answer is printed too).
//!
//! The DLQ answers are rendered from the JSON without a fixed schema (fields are looked up
//! under a few likely names), so the client keeps working while those routes settle.

#![allow(clippy::print_stderr, clippy::print_stdout)]
// Printing to stdout and stderr is this module's job.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use clap::{Args, Subcommand};
use serde::Deserialize;
use serde_json::Value;

use crate::config::Secret;

mod client;
mod render;

use client::{Body, Client, Verb, handler_path, parse};
use render::{
    render_dlq_list, render_handler, render_replay, render_swap, replay_incomplete, short_sha,
    table, total_lag,
};

/// Where the admin API listens unless `--admin` or `KASM_ADMIN_URL` says otherwise.
pub const DEFAULT_ADMIN_URL: &str = "http://127.0.0.1:9464";

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

// ---------------------------------------------------------------------------------------------
// Rendering helpers

#[cfg(test)]
mod tests {
    use super::client::{base_url, segment};
    use super::render::{field, utc};
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
