//! `kasm run`: consume Kafka with the handlers of a configuration file.

// Printing to stdout and stderr is this module's job.
#![allow(clippy::print_stderr, clippy::print_stdout)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use super::{Cli, artifacts};

/// `kasm run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The configuration file.
    #[arg(long, short, default_value = "kasm.toml")]
    pub config: PathBuf,
}

impl RunArgs {
    /// Load the configuration and run the host until a signal stops it.
    pub async fn execute(&self, cli: &Cli) -> anyhow::Result<ExitCode> {
        run_host(cli, self).await
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
