//! Every input the fuzz targets (`fuzz/`, `make fuzz`) ever needed to keep, replayed through
//! the very check that found it (`fuzz/src/checks.rs`, compiled into this binary as
//! `crate::fuzz_checks`): a regression reappears here, in `make test`, without libFuzzer.
//!
//! `fuzz/regressions/<target>/` holds the inputs that made a target fail (each fixed since);
//! `fuzz/seeds/<target>/` the hand-written starting inputs, replayed too because they are cheap.

use std::path::PathBuf;

use crate::fuzz_checks;

fn replay(target: &str, check: fn(&[u8])) {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    let mut replayed = 0;
    for kind in ["regressions", "seeds"] {
        let dir = root.join(kind).join(target);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        let mut files: Vec<PathBuf> = entries.map(|e| e.unwrap().path()).collect();
        files.sort();
        for file in files.into_iter().filter(|f| f.is_file()) {
            let data = std::fs::read(&file).unwrap();
            let outcome = std::panic::catch_unwind(|| check(&data));
            assert!(outcome.is_ok(), "{target}: {} fails again", file.display());
            replayed += 1;
        }
    }
    assert!(
        replayed > 0,
        "no inputs found for fuzz target {target} under {}",
        root.display()
    );
}

#[test]
fn record() {
    replay("record", fuzz_checks::record);
}

#[test]
fn dlq_headers() {
    replay("dlq_headers", fuzz_checks::dlq_headers);
}

#[test]
fn config() {
    replay("config", fuzz_checks::config);
}

#[test]
fn admin_bodies() {
    replay("admin_bodies", fuzz_checks::admin_bodies);
}
