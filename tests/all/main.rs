//! All of kasm's end-to-end tests, linked as one binary (one link step on 2 cores).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stderr
)]

mod admin;
mod admin_cli;
mod admin_uploads;
mod batches;
mod chaos;
mod cli;
mod dlq;
mod faults;
mod fuzz_regressions;
mod hostile;
mod interpreted;
mod javascript;
mod ledger;
mod loading;
mod pipeline;
mod process;
mod python;
mod sandbox;
mod services;
mod sql;
mod startup;
mod traces;

/// The fuzz targets' checks (`fuzz/src/checks.rs`), replayed by [`fuzz_regressions`].
#[path = "../../fuzz/src/checks.rs"]
mod fuzz_checks;
