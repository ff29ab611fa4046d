//! The `kasm` command line: one file per subcommand, each an `Args` type with an `execute`.
//!
//! - [`run`]: consume Kafka with a configuration file; [`dev`]: the task app on an embedded
//!   cluster.
//! - [`validate`] and [`invoke`]: the handler author's inner loop, without Kafka.
//! - [`produce`]: publish events the way a producing service should.
//! - [`admin`]: the commands that talk to a running host's admin API.
//!
//! A new subcommand is a new file here and a variant of [`Command`]. Exit codes: 0 success; 1 the handler ran and did not return `ok`; 2 the command could not
//! run (bad arguments, a refused component, an unreadable file).

// Printing to stdout and stderr is this module's job.
#![allow(clippy::print_stderr, clippy::print_stdout)]

pub mod admin;
pub mod dev;
pub mod invoke;
pub mod produce;
pub mod run;
pub mod validate;

use std::collections::BTreeSet;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use clap::{Args, Parser, Subcommand};

use crate::capabilities::{Grants, TopicGrant};
use crate::runtime::{HandlerSpec, Runtime, RuntimeConfig};

pub use dev::DevArgs;
pub use invoke::InvokeArgs;
pub use produce::ProduceArgs;
pub use run::RunArgs;
pub use validate::ValidateArgs;

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
    /// dlq): see [`crate::commands::admin`].
    #[command(flatten)]
    Admin(crate::commands::admin::AdminCommand),
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
        Command::Validate(args) => args.execute(&cli).await,
        Command::Invoke(args) => args.execute(&cli).await,
        Command::Run(args) => args.execute(&cli).await,
        Command::Produce(args) => args.execute().await,
        Command::Dev(args) => args.execute(&cli).await,
        Command::Admin(cmd) => admin::run(cmd.clone()).await,
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
pub(crate) fn artifacts(cli: &Cli) -> crate::config::Artifacts {
    use crate::config::Artifacts;
    match (&cli.cache_dir, cli.no_cache) {
        (_, true) => Artifacts::Off,
        (Some(dir), false) => Artifacts::At(dir.clone()),
        (None, false) => Artifacts::InDataDir,
    }
}

fn default_cache_dir() -> Option<PathBuf> {
    let base = crate::config::environment::user_cache_dir()?;
    Some(base.join("kasm").join("artifacts"))
}

pub(crate) fn runtime_for(cli: &Cli) -> anyhow::Result<Runtime> {
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

pub(crate) async fn load_blocking(
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

pub(crate) fn file_stem(p: &Path) -> String {
    p.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "handler".to_owned())
}

pub(crate) fn read_payload(path: &Path) -> anyhow::Result<Vec<u8>> {
    if path == Path::new("-") {
        let mut buf = Vec::new();
        std::io::stdin()
            .read_to_end(&mut buf)
            .context("reading the payload from stdin")?;
        return Ok(buf);
    }
    std::fs::read(path).with_context(|| format!("reading payload file {}", path.display()))
}

pub(crate) fn parse_headers(raw: &[String]) -> anyhow::Result<Vec<(String, Vec<u8>)>> {
    raw.iter()
        .map(|h| match h.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() => {
                Ok((k.trim().to_owned(), v.as_bytes().to_vec()))
            }
            _ => bail!("--header `{h}`: expected NAME=VALUE"),
        })
        .collect()
}
