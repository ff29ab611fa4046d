//! One handler call, fresh instance versus reused instance, side by side in one run.
//!
//! Component: `handlers/dist/fixture.wasm` (built by `make handlers`) with the payload
//! `{"action":"ok"}` (decode the JSON payload, return ok), and the `audit` handler on its
//! demo event (decode a task event, build an audit entry, insert it into SQLite in one
//! transaction; after the first call the row exists, so each call is an idempotent no-op
//! insert plus BEGIN/COMMIT); and the `live-updates` and `recurring` handlers on their demo
//! events (decode a task event, push a channel message / compute the next occurrence and queue
//! its publish).
//! Run with `make bench`; the numbers and the method go in BENCHMARKS.md.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::path::PathBuf;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use kasm_host::capabilities::Grants;
use kasm_host::runtime::{HandlerSpec, Runtime, RuntimeConfig};
use kasm_host::{Event, Outcome};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn component(name: &str) -> Vec<u8> {
    let p = root().join("handlers/dist").join(format!("{name}.wasm"));
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e} (run `make handlers`)", p.display()))
}

fn bench_calls(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let runtime = Runtime::new(RuntimeConfig {
        max_instances: 16,
        ..RuntimeConfig::default()
    })
    .unwrap();

    let cases = [
        ("fixture-ok", "fixture", br#"{"action":"ok"}"#.to_vec()),
        // A large event: what copying the payload on its way into the guest costs.
        (
            "fixture-ok-64KiB",
            "fixture",
            format!(r#"{{"action":"ok","pad":"{}"}}"#, "x".repeat(64 << 10)).into_bytes(),
        ),
        (
            "audit-demo",
            "audit",
            std::fs::read(root().join("handlers/audit/demo/event.json")).unwrap(),
        ),
        // Task-app handlers without a database: what a production handler's call costs.
        (
            "live-updates-demo",
            "live-updates",
            std::fs::read(root().join("handlers/live-updates/demo/event.json")).unwrap(),
        ),
        (
            "recurring-demo",
            "recurring",
            std::fs::read(root().join("handlers/recurring/demo/event.json")).unwrap(),
        ),
        // The same handlers in Python: an interpreter's call, fresh and reused.
        ("py-ok", "py-ok", br#"{"action":"ok"}"#.to_vec()),
        (
            "py-recurring-demo",
            "py-recurring",
            std::fs::read(root().join("handlers/recurring/demo/event.json")).unwrap(),
        ),
        // And in JavaScript.
        ("js-ok", "js-ok", br#"{"action":"ok"}"#.to_vec()),
        (
            "js-live-updates-demo",
            "js-live-updates",
            std::fs::read(root().join("handlers/live-updates/demo/event.json")).unwrap(),
        ),
    ];
    // The audit handler's SQLite database, schema from its migrations.
    let db_dir = tempfile::tempdir().unwrap();
    let db = kasm_host::capabilities::sql::open(
        &kasm_host::capabilities::SqlTarget::Sqlite(db_dir.path().join("audit.sqlite")),
        "audit",
    )
    .unwrap();
    rt.block_on(kasm_host::capabilities::sql::migrate(
        db.as_ref(),
        "audit",
        &root().join("handlers/audit/migrations"),
    ))
    .unwrap();
    let mut group = c.benchmark_group("handler_call");
    group.measurement_time(Duration::from_secs(5));
    for (label, name, payload) in cases {
        let bytes = component(name);
        let event = Event::from_parts("task-events", 0, 1, None, payload, vec![], Some(0));
        for (mode, reuse) in [("fresh", 0u32), ("reused", u32::MAX)] {
            let mut spec = HandlerSpec::new(name);
            spec.grants = Grants::all();
            spec.instance_reuse = Some(reuse);
            spec.sql = Some(db.clone());
            let handler = runtime.load(&bytes, spec).unwrap();
            // Warm up and check the call really succeeds.
            let inv = rt.block_on(handler.invoke(&event)).unwrap();
            assert_eq!(inv.outcome, Outcome::Ok, "{label}: {:?}", inv.outcome);
            group.bench_function(format!("{label}/{mode}"), |b| {
                b.iter(|| {
                    let inv = rt.block_on(handler.invoke(&event)).unwrap();
                    std::hint::black_box(inv);
                })
            });
        }
    }
    group.finish();
}

/// The ledger on its own: a durable `record` by one caller (one commit each), 4 callers at
/// once (what 4 partitions with one write in flight each give the group commit), and a lookup.
fn bench_ledger(c: &mut Criterion) {
    use kasm_host::ledger::{FileLedger, Ledger, LedgerEntry, LedgerOutcome};
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ledger = std::sync::Arc::new(FileLedger::open(&dir.path().join("ledger.redb")).unwrap());
    let entry = |offset: i64| LedgerEntry {
        outcome: LedgerOutcome::Ok,
        at_ms: 1_700_000_000_000 + offset,
        component_sha256: "0".repeat(64),
        topic: "bench".into(),
        partition: 0,
        offset,
    };
    let mut group = c.benchmark_group("ledger");
    group.measurement_time(Duration::from_secs(5));
    let mut next = 0i64;
    group.bench_function("record/1-caller", |b| {
        b.iter(|| {
            next += 1;
            rt.block_on(ledger.record("h", &format!("e-{next}"), entry(next)))
                .unwrap();
        })
    });
    group.bench_function("record/4-callers", |b| {
        b.iter(|| {
            next += 4;
            rt.block_on(async {
                let calls = (0..4).map(|i| {
                    let ledger = ledger.clone();
                    let id = format!("e-{}", next + i);
                    let e = entry(next + i);
                    tokio::spawn(async move { ledger.record("h", &id, e).await })
                });
                for r in futures::future::join_all(calls).await {
                    r.unwrap().unwrap();
                }
            })
        })
    });
    group.bench_function("get/hit", |b| {
        b.iter(|| {
            let e = rt.block_on(ledger.get("h", "e-1")).unwrap();
            std::hint::black_box(e);
        })
    });
    group.finish();
}

criterion_group!(benches, bench_calls, bench_ledger);
criterion_main!(benches);
