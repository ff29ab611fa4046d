//! Shared helpers for kasm's end-to-end tests.
//!
//! Guest components are built once per run by `make handlers` into `handlers/dist/`; tests
//! name them by the constants of [`components`], which the build generates from
//! `components.toml` and refuses to generate when one is missing or unclassified. The `kasm` binary is built by
//! `make build` (`cargo build -p kasm-host --bins`) before the tests run.
//!
//! This crate is test support: failing loudly (panicking) is its job.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stderr
)]

pub mod broker;
pub mod chaos;
pub mod components;
pub mod hostproc;
pub mod receiver;

use std::path::PathBuf;
use std::sync::Arc;

use kasm_host::capabilities::Grants;
use kasm_host::runtime::{HandlerSpec, LoadedHandler, Runtime, RuntimeConfig};

/// The workspace root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Path of a built component in `handlers/dist/`.
pub fn component(c: components::Component) -> PathBuf {
    c.path()
}

/// Bytes of a built component.
pub fn component_bytes(c: components::Component) -> Vec<u8> {
    std::fs::read(c.path()).expect("read component")
}

/// The `kasm` binary built by `make build`.
pub fn kasm_bin() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"));
    let p = target.join("debug").join("kasm");
    assert!(
        p.is_file(),
        "kasm binary {} is missing: run `make build` first",
        p.display()
    );
    p
}

/// Artifact cache shared by the tests of one run, so each component compiles once.
pub fn shared_cache_dir() -> PathBuf {
    root().join("target").join("kasm-test-cache")
}

/// A runtime for tests: small pool, shared artifact cache.
pub fn runtime() -> Runtime {
    Runtime::new(RuntimeConfig {
        max_instances: 32,
        cache_dir: Some(shared_cache_dir()),
        ..RuntimeConfig::default()
    })
    .expect("runtime")
}

/// Load component `name` as handler `handler` with `grants`, other settings from `tweak`.
pub fn load(
    rt: &Runtime,
    c: components::Component,
    grants: Grants,
    tweak: impl FnOnce(&mut HandlerSpec),
) -> Arc<LoadedHandler> {
    let name = c.name();
    let mut spec = HandlerSpec::new(name);
    spec.grants = grants;
    tweak(&mut spec);
    Arc::new(
        rt.load(&component_bytes(c), spec)
            .unwrap_or_else(|e| panic!("load {name}: {e}")),
    )
}

/// A short random suffix for names that must not collide between tests.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{:08x}", rand::random::<u32>())
}

/// librdkafka settings for test configs: short sessions, so group joins (Tansu holds a join
/// for half the session timeout) and the eviction of a killed host take seconds, and short
/// fetch waits, so an idle consumer sees new records quickly.
pub const KAFKA_TEST_PROPS: &str =
    "\"session.timeout.ms\" = 6000\n\"heartbeat.interval.ms\" = 500\n\"fetch.wait.max.ms\" = 100\n";

/// librdkafka settings for hosts on the embedded cluster while retriable errors are injected
/// into produce requests: one request in flight per broker connection. The idempotent
/// producer takes the success of a partition's later request as proof that its earlier ones
/// were stored (a Kafka broker refuses a sequence with a gap), and so reports the records of
/// an earlier, refused request as delivered. The embedded cluster checks the sequences of
/// transactional producers only: it stores the later request, and the records reported
/// delivered were never written. With one request in flight there is no later request.
pub const MOCK_PRODUCE_FAULT_PROPS: &str = "\"max.in.flight.requests.per.connection\" = 1\n";

/// The body of a config (for [`write_config`]) with one handler `pub` running the publisher
/// fixture on `s`'s topics: `top` (top-level keys), the test `[kafka]` properties and `kafka`
/// (more of them), then `handler` (more keys of the handler).
pub fn publisher_body(s: &Setup, top: &str, kafka: &str, handler: &str) -> String {
    format!(
        "{top}\n[kafka]\n{KAFKA_TEST_PROPS}{kafka}\n\
         [handlers.pub]\ncomponent = \"{c}\"\ntopics = [\"{t}\"]\ngroup_id = \"{g}\"\n\
         grants = {{ producer = [\"{o}\"] }}\n{handler}\n",
        c = component(components::FIXTURE_PUBLISHER).display(),
        t = s.topic,
        g = s.group,
        o = s.out,
    )
}

/// Write `kasm.toml` in `dir` with `body` (handler tables etc.), the data folder inside `dir`,
/// an admin server on a free port, and fast commits. Top-level keys in `body` must come
/// before its first table; they override the defaults here.
pub fn write_config(dir: &std::path::Path, body: &str) -> PathBuf {
    let first_table = body.find("\n[").map_or(0, |i| i + 1);
    let first_table = if body.starts_with('[') {
        0
    } else {
        first_table
    };
    let (top, tables) = body.split_at(first_table);
    let mut defaults = String::new();
    if !top.contains("commit_interval") {
        defaults.push_str("commit_interval = \"200ms\"\n");
    }
    if !top.contains("drain_timeout") {
        defaults.push_str("drain_timeout = \"5s\"\n");
    }
    let text = format!(
        "data_dir = \"{data}\"\n{defaults}{top}\n[admin]\nlisten = \"127.0.0.1:0\"\n\n{tables}",
        data = dir.join("data").display()
    );
    let path = dir.join("kasm.toml");
    std::fs::write(&path, text).expect("write config");
    path
}

/// How many rows each id has in table `t` (column `id`) of the SQLite file at `path`: the
/// fixture-sql tests insert one row per run of an event, so a count over 1 is a second run.
pub fn sqlite_ids(path: &std::path::Path) -> std::collections::HashMap<String, usize> {
    let mut m = std::collections::HashMap::new();
    let Ok(db) = rusqlite::Connection::open(path) else {
        return m;
    };
    let Ok(mut st) = db.prepare("SELECT id FROM t") else {
        return m;
    };
    if let Ok(ids) = st.query_map([], |r| r.get::<_, String>(0)) {
        for id in ids.flatten() {
            *m.entry(id).or_insert(0) += 1;
        }
    }
    m
}

/// What most end-to-end tests start from: a broker with a source topic, an output topic and
/// the source's dead-letter topic (random names), a temporary folder and a random group id.
#[derive(Debug)]
pub struct Setup {
    /// The broker.
    pub broker: broker::TestBroker,
    /// Config and data folder.
    pub dir: tempfile::TempDir,
    /// Source topic.
    pub topic: String,
    /// Output topic.
    pub out: String,
    /// Consumer group of the handler under test.
    pub group: String,
}

impl Setup {
    /// Create the topics (each with `partitions` partitions; the DLQ with one) on `broker`.
    pub async fn new(broker: broker::TestBroker, partitions: i32) -> Self {
        log_if_asked();
        let (topic, out) = (unique("in"), unique("out"));
        broker.create_topic(&topic, partitions).await;
        broker.create_topic(&out, partitions).await;
        broker.create_topic(&format!("{topic}.dlq"), 1).await;
        Setup {
            broker,
            dir: tempfile::tempdir().expect("tempdir"),
            topic,
            out,
            group: unique("group"),
        }
    }

    /// The Kafka connection of a host under test.
    pub fn env(&self) -> kasm_host::config::KafkaEnv {
        kasm_host::config::KafkaEnv {
            bootstrap_servers: Some(self.broker.bootstrap()),
            ..Default::default()
        }
    }
}

/// With `KASM_TEST_LOG` set (an `EnvFilter`, e.g. `kasm_host=info`), the in-process hosts of
/// the tests log to stderr: what a failing test's host did, without a debugger.
pub fn log_if_asked() {
    if let Ok(filter) = std::env::var("KASM_TEST_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_writer(std::io::stderr)
            .try_init();
    }
}

/// Events `{prefix}-{i}` for `i` in `range` (header `event-id`, key `k{i}`), each asking the
/// publisher fixture to write its output to `out` (header `out-topic`).
pub fn events(prefix: &str, range: std::ops::Range<usize>, out: &str) -> Vec<broker::Rec> {
    range
        .map(|i| broker::Rec {
            key: Some(format!("k{i}").into_bytes()),
            payload: format!("{{\"n\":{i}}}").into_bytes(),
            headers: vec![
                ("event-id".into(), format!("{prefix}-{i}").into_bytes()),
                ("out-topic".into(), out.as_bytes().to_vec()),
            ],
            partition: None,
        })
        .collect()
}

/// How many outputs each source event id has (the fixtures write `{"source": <id>}`).
pub fn count_sources(outputs: &[broker::Got]) -> std::collections::HashMap<String, usize> {
    let mut m = std::collections::HashMap::new();
    for o in outputs {
        *m.entry(o.json()["source"].as_str().unwrap_or_default().to_owned())
            .or_insert(0) += 1;
    }
    m
}

/// Assert that each of the events `{prefix}-0` … `{prefix}-{n-1}` has exactly one output in
/// `counts` (outputs per source event, from [`count_sources`]).
pub fn assert_each_once(counts: &std::collections::HashMap<String, usize>, prefix: &str, n: usize) {
    let missing: Vec<String> = (0..n)
        .map(|i| format!("{prefix}-{i}"))
        .filter(|id| !counts.contains_key(id))
        .collect();
    assert!(
        missing.is_empty(),
        "{} events never handled, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    let twice: Vec<_> = counts.iter().filter(|(_, c)| **c > 1).collect();
    assert!(
        twice.is_empty(),
        "{} events handled more than once, e.g. {:?}",
        twice.len(),
        twice.first()
    );
}

/// Wait until the first handler of `host` has processed `records` records (fails after 60 s
/// without them).
pub async fn wait_processed(host: &kasm_host::app::Host, records: u64) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while host.handlers[0].stats.snapshot().processed < records {
        assert!(
            std::time::Instant::now() < deadline,
            "the host made no progress: {:?}",
            host.handlers[0].stats.snapshot()
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}

/// Wait (bounded by `timeout`) until `group` has committed the end of `s.topic`, which holds
/// `records` records; returns (end offsets, committed offsets) either way.
pub async fn wait_committed(
    s: &Setup,
    group: &str,
    records: usize,
    timeout: std::time::Duration,
) -> (
    std::collections::HashMap<i32, i64>,
    std::collections::HashMap<i32, i64>,
) {
    let deadline = std::time::Instant::now() + timeout;
    let end = broker::end_offsets(&s.broker.bootstrap(), &s.topic, records);
    loop {
        let committed = broker::committed_offsets(&s.broker.bootstrap(), group, &s.topic);
        let done = end
            .iter()
            .all(|(p, e)| *e == 0 || committed.get(p) == Some(e));
        if done || std::time::Instant::now() > deadline {
            return (end, committed);
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// The PostgreSQL the tests use.
pub fn pg_base_url() -> String {
    std::env::var("KASM_TEST_PG_URL")
        .unwrap_or_else(|_| "postgresql://postgres@127.0.0.1:5432/test".into())
}

/// A fresh schema in the test PostgreSQL; returns a URL whose connections work in it.
pub async fn pg_schema() -> String {
    let schema = unique("kasm").replace('-', "_");
    let (client, conn) = tokio_postgres::connect(&pg_base_url(), tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL at {} (KASM_TEST_PG_URL): {e}", pg_base_url()));
    tokio::spawn(conn);
    client
        .batch_execute(&format!("CREATE SCHEMA {schema}"))
        .await
        .unwrap();
    let sep = if pg_base_url().contains('?') {
        '&'
    } else {
        '?'
    };
    format!("{}{sep}options=-csearch_path%3D{schema}", pg_base_url())
}
