//! The fuzz targets' checks, as a library so that each `fuzz_targets/*.rs` is one line.
#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

pub mod checks;
