//! One handler call, fresh instance versus reused instance, side by side in one run.
//!
//! Component: `handlers/dist/fixture.wasm` (built by `make handlers`) with the payload
//! `{"action":"ok"}` (decode the JSON payload, return ok), and the `audit` handler on its
//! demo event (decode a task event, build an audit entry, insert it into SQLite in one
//! transaction; after the first call the row exists, so each call is an idempotent no-op
//! insert plus BEGIN/COMMIT).
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
        (
            "audit-demo",
            "audit",
            std::fs::read(root().join("handlers/audit/demo/event.json")).unwrap(),
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
        let event = Event::from_record("task-events", 0, 1, None, payload, vec![], Some(0));
        for (mode, reuse) in [("fresh", 0u32), ("reused", u32::MAX)] {
            let mut spec = HandlerSpec::new(name);
            spec.grants = Grants::all();
            spec.instance_reuse = reuse;
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

criterion_group!(benches, bench_calls);
criterion_main!(benches);
