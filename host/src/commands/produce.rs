//! `kasm produce`: publish events the way a producing service should.

// Printing to stdout and stderr is this module's job.
#![allow(clippy::print_stderr, clippy::print_stdout)]

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use clap::Args;

use super::{parse_headers, read_payload};

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

impl ProduceArgs {
    /// Publish every event and print where each landed.
    pub async fn execute(&self) -> anyhow::Result<ExitCode> {
        produce(self).await
    }
}

async fn produce(args: &ProduceArgs) -> anyhow::Result<ExitCode> {
    if !crate::config::valid_topic(&args.topic) {
        bail!("`{}` is not a valid topic name", args.topic);
    }
    let text =
        String::from_utf8(read_payload(&args.events)?).context("the events are not UTF-8 text")?;
    let events = crate::kafka::produce::parse_events(&text)
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
        let p = crate::kafka::produce::prepare(event, args.key.clone(), headers.clone())
            .with_context(|| format!("event #{}", i + 1))?;
        let d = crate::kafka::produce::send(&producer, &args.topic, &p)
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
