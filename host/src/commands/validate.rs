//! `kasm validate`: check a component against the grants it would run with.

// Printing to stdout and stderr is this module's job.
#![allow(clippy::print_stderr, clippy::print_stdout)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use serde::Serialize;

use crate::runtime::{ComponentInfo, HandlerSpec, ImportKind, LoadReport, LoadSource};

use super::{Cli, GrantArgs, file_stem, load_blocking, runtime_for};

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

impl ValidateArgs {
    /// Load the component and print what it is, or why it is refused.
    pub async fn execute(&self, cli: &Cli) -> anyhow::Result<ExitCode> {
        validate(cli, self).await
    }
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

pub(crate) fn describe_load(r: &LoadReport) -> String {
    let how = match r.source {
        LoadSource::Compiled => "compiled",
        LoadSource::Cache => "loaded precompiled artifact",
    };
    format!(
        "load       {how} in {:.1} ms",
        r.elapsed.as_secs_f64() * 1000.0
    )
}
