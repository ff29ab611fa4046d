//! The `kasm` binary: see `kasm --help`.

use std::process::ExitCode;

use clap::Parser;

#[allow(clippy::print_stderr)]
fn main() -> ExitCode {
    let cli = kasm_host::commands::Cli::parse();
    kasm_host::commands::init_tracing(&cli);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    runtime.block_on(kasm_host::commands::run(cli))
}
