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
//! Every answer is read into the very types the server writes (`admin::HandlerView`,
//! `admin::deploy::SwapReport`, `dlq::list::Page`, `dlq::replay::ReplayReport`), and the replay
//! request is the server's own `ReplayBody`: client and server cannot disagree on a field.

#![allow(clippy::print_stderr, clippy::print_stdout)]
// Printing to stdout and stderr is this module's job.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use clap::{Args, Subcommand};

use crate::admin::HandlerView;
use crate::admin::deploy::SwapReport;
use crate::admin::requests::{ReplayBody, ReplayPosition};
use crate::config::Secret;
use crate::dlq::list::Page;
use crate::dlq::replay::ReplayReport;

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
                h.status.as_str().to_owned(),
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
    println!("{}  {}", h.name, h.status.as_str());
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
    let page: Page = parse(&text, "GET /v1/handlers/{name}/dlq")?;
    print!("{}", render_dlq_list(&page));
    Ok(ExitCode::SUCCESS)
}

fn dlq_replay(args: &DlqReplayArgs) -> anyhow::Result<ExitCode> {
    let client = Client::new(&args.admin)?;
    let body = ReplayBody {
        all: args.all,
        records: args
            .offsets
            .iter()
            .map(|p| ReplayPosition {
                partition: p.partition,
                offset: p.offset,
            })
            .collect(),
        topic: args.topic.clone(),
    };
    let body = serde_json::to_value(&body).context("encoding the replay request")?;
    let text = client
        .send(
            Verb::Post,
            &handler_path(&args.handler, "/dlq/replay"),
            &[],
            Body::Json(body),
        )
        .with_context(|| format!("replaying dead letters of handler `{}`", args.handler))?;
    let report: ReplayReport = if client.json {
        client.print_raw(&text);
        parse(&text, "POST /v1/handlers/{name}/dlq/replay")?
    } else {
        let report = parse(&text, "POST /v1/handlers/{name}/dlq/replay")?;
        print!("{}", render_replay(&report));
        report
    };
    Ok(if replay_incomplete(&report) {
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
    use super::render::utc;
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
    fn dlq_lists_render_what_the_server_sends() {
        // Dead letters as the server decodes them, through JSON as the client receives them.
        let letter = |offset: i64, headers: &[(&str, &str)]| {
            crate::dlq::decode::decode(&crate::kafka::Record {
                topic: "in.dlq".to_owned(),
                partition: 0,
                offset,
                headers: headers
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), v.as_bytes().to_vec()))
                    .collect(),
                ..Default::default()
            })
        };
        let page = Page {
            records: vec![
                letter(
                    7,
                    &[
                        ("kasm-dlq-source-topic", "in"),
                        ("kasm-dlq-source-partition", "3"),
                        ("kasm-dlq-source-offset", "41"),
                        ("kasm-dlq-error-kind", "fatal"),
                        ("kasm-dlq-attempts", "1"),
                        ("kasm-dlq-error-message", "bad\ninput"),
                    ],
                ),
                letter(
                    8,
                    &[
                        ("kasm-dlq-source-topic", "in"),
                        ("kasm-dlq-source-partition", "1"),
                        ("kasm-dlq-source-offset", "9"),
                        ("kasm-dlq-error-kind", "trap"),
                        ("kasm-dlq-attempts", "3"),
                        ("kasm-dlq-error-message", "unreachable"),
                        ("kasm-replay-count", "1"),
                    ],
                ),
            ],
            next: Some("0:9".parse().unwrap()),
        };
        let page: Page = serde_json::from_str(&serde_json::to_string(&page).unwrap()).unwrap();
        let out = render_dlq_list(&page);
        assert!(
            out.contains("0:7") && out.contains("in/3@41") && out.contains("fatal"),
            "{out}"
        );
        assert!(out.contains("bad input"), "{out}");
        let line = out.lines().find(|l| l.starts_with("0:8")).unwrap();
        for want in ["in/1@9", "trap", "3", "1", "unreachable"] {
            assert!(line.contains(want), "{want}: {out}");
        }
        // Column by column: attempts 3 and one replay, where the table puts them.
        let columns: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(
            columns,
            ["0:8", "in/1@9", "trap", "3", "1", "unreachable"],
            "{out}"
        );
        assert!(out.contains("more: --from 0:9"), "{out}");
        let empty = Page {
            records: Vec::new(),
            next: None,
        };
        assert_eq!(render_dlq_list(&empty), "no dead letters\n");
    }

    #[test]
    fn replay_answers_render_counts_and_reasons() {
        use crate::dlq::replay::{RefusalKind, Refused, Replayed};
        let refused = |offset: i64, kind: RefusalKind, reason: &str| Refused {
            dlq_partition: 0,
            dlq_offset: offset,
            kind,
            reason: reason.to_owned(),
        };
        let r = ReplayReport {
            replayed: Vec::new(),
            refused: vec![refused(3, RefusalKind::ReplayLimit, "replay limit reached")],
            stopped: None,
        };
        let out = render_replay(&r);
        assert!(out.contains("replayed   0"), "{out}");
        assert!(out.contains("refused    1"), "{out}");
        assert!(
            out.contains("0:3  replay-limit: replay limit reached"),
            "{out}"
        );
        assert!(replay_incomplete(&r));

        let r = ReplayReport {
            replayed: vec![Replayed {
                dlq_partition: 0,
                dlq_offset: 1,
                event_id: None,
                topic: "in".to_owned(),
                partition: 0,
                offset: 10,
                replay_count: 1,
            }],
            refused: vec![refused(2, RefusalKind::WriteFailed, "broker down")],
            stopped: Some("writing 0:2 failed".to_owned()),
        };
        let r: ReplayReport = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        let out = render_replay(&r);
        assert!(out.contains("replayed   1"), "{out}");
        assert!(out.contains("0:2  write-failed: broker down"), "{out}");
        assert!(out.contains("stopped    writing 0:2 failed"), "{out}");
        let done = ReplayReport::default();
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
