//! `kasm invoke`: run one event through a handler, without Kafka, and print every effect.

// Printing to stdout and stderr is this module's job.
#![allow(clippy::print_stderr, clippy::print_stdout)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::Args;
use serde::Serialize;

use crate::event::Event;
use crate::now_ms;
use crate::runtime::{HandlerSpec, Invocation, Outcome};

use super::validate::describe_load;
use super::{Cli, GrantArgs, file_stem, load_blocking, parse_headers, read_payload, runtime_for};

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

impl InvokeArgs {
    /// Run the event through the handler and print the outcome.
    pub async fn execute(&self, cli: &Cli) -> anyhow::Result<ExitCode> {
        invoke(cli, self).await
    }
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
    let mut event = Event::from_parts(
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
            event.record.topic, event.record.partition, event.record.offset
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
        event.id, event.record.topic, event.record.partition, event.record.offset, event.attempt
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
