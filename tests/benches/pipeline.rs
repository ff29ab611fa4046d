//! The pipeline benchmark (`make bench`): kasm side by side with the raw client and the usual
//! Python consumers, in one run, against one broker.
//!
//! Broker: an embedded mock cluster (one broker), or the broker at `KASM_TEST_BOOTSTRAP`
//! (`make bench-tansu` starts Tansu and points the benchmark at it).
//!
//! Sections (`KASM_BENCH_ONLY=throughput,latency,swap,rss` picks some; default all):
//!
//! - **throughput**: for each of `KASM_BENCH_RUNS` rounds (default 3) every contender reads its
//!   own fresh topic of `KASM_BENCH_RECORDS` records (default 20,000; 4 partitions; ~100-byte
//!   JSON events with an `event-id` header), in interleaved order so drift hits all alike
//!   (`CONTENDERS` names the rows):
//!   - *baseline (rdkafka, no Wasm, no ledger)*: a plain rdkafka consumer loop committing after
//!     each batch — the ceiling;
//!   - *kasm defaults*: the host in process with the trivial `fixture` handler
//!     (`{"action":"ok"}`: decode, return ok) and no `max_batch`, `max_batch_bytes`,
//!     `batch_linger`, `instance_reuse` or `ledger` key in its config, so the host's defaults
//!     decide;
//!   - *kasm defaults, traced (OTLP to a local receiver)*: the same with traces on, every
//!     span exported over OTLP/HTTP to a receiver in the bench process: beside *kasm defaults*
//!     (traces off, the default) it is what tracing costs, and *kasm defaults* against the
//!     earlier runs is what being able to trace costs when it is off;
//!   - *kasm max_batch = 1 (one at a time)*, *kasm ledger = false*, *kasm instance_reuse =
//!     1000*: the defaults with that one key set;
//!   - *kasm audit on SQLite (defaults)*: the audit handler writing one SQLite row per task
//!     event, with the defaults;
//!   - *kasm Python trivial handler (defaults)*: `py-ok` (`handlers/python/fixtures/ok.py`:
//!     decode the JSON payload, return), the Python twin of `fixture`, with the defaults
//!     (for a Python component: `instance_reuse = 1000`);
//!   - *kasm JavaScript trivial handler (defaults)*: `js-ok` (`handlers/js/fixtures/ok.js`),
//!     the same in JavaScript, with the same defaults;
//!   - *peer, commit per batch (aiokafka)*: `bench/peer.py`, manual commit after each batch
//!     `getmany` returns, a set of seen ids, a DLQ;
//!   - *peer, commit per message (aiokafka)*: `bench/peer_per_message.py`, the same work with
//!     `await consumer.commit()` after every message. Both peers run in `target/bench/venv`,
//!     with aiokafka installed from PyPI.
//!
//!   A figure is records per second from the first record received to the last one done
//!   (consumer-group joins are not counted); the table gives the median and the spread, each
//!   row's median against the baseline's and each peer's, and the CPU time per record over the
//!   same window. For the baseline and kasm that is the whole bench process (every thread:
//!   kasm, librdkafka, the embedded mock broker), from `/proc/self/stat`; for a peer it is the
//!   peer process alone, the user + system time it reports from `getrusage(RUSAGE_SELF)` over
//!   its window (so it leaves out the broker's share). Under the table the targets: defaults
//!   ≥ 0.5 × baseline, ≥ 10 × the commit-per-message peer, ≥ 2 × the commit-per-batch peer,
//!   CPU per record ≤ the baseline's + 2 µs; audit ≥ 100,000 records/s. `KASM_BENCH_PERF_CTL=
//!   <fifo>` lets `perf record -D -1 --control fifo:<fifo>` sample only those windows (see
//!   `perf_ctl`).
//! - **latency**: produce → handled at fixed rates (`KASM_BENCH_RATES`, default
//!   10,1000,5000,50000 records/s): the `fixture` handler echoes each event to an output topic;
//!   a probe consumer on that topic takes the time each output arrives against the send time in
//!   the event (one clock, one process) and the table gives p50, p99 and max per route and
//!   rate. The same probe reading the input topic directly gives the floor of the method (one
//!   produce → consume hop); a *relay* — a plain rdkafka consumer producing each record to the
//!   output topic with kasm's producer settings, no Wasm, no ledger — gives the floor of a
//!   consume → produce hop on the same broker, beside kasm. kasm runs with its defaults; on the
//!   mock cluster its consumers (and the relay's) get `fetch.wait.max.ms = 1` like the probe
//!   (the mock answers a fetch only when the wait is over, where a real broker answers as soon
//!   as records arrive). A run lasts `KASM_BENCH_LATENCY_SECONDS` (default 2: the mock's fetch
//!   cost grows with the length of the log, and at 5k/s it saturates the mock's thread within
//!   about 4 s), or as long as 200 records take at that rate where that is longer (20 s at
//!   10/s), at most 60 s; each route runs `KASM_BENCH_RUNS` times, interleaved.
//!   `KASM_BENCH_CONTENDERS` picks the routes too (`floor`, `relay`, `kasm echo`).
//! - **swap**: the 1k/s latency run (defaults) with a new version deployed in the middle
//!   (`KASM_BENCH_SWAP_TO=py-echo` or `js-echo` deploys the echo's Python or JavaScript twin
//!   instead of a new `fixture`: an interpreted component's compile off the hot path): the
//!   worst latency of the records sent around the swap against the steady p99, and the longest
//!   gap between two outputs around the swap against the longest elsewhere. Each deploy run has
//!   its control (before it every other round), the same run with nothing deployed and a window
//!   as long as the deploy's marked at the same place: a stall the machine or the broker causes
//!   anyway shows in the control as often, one the deploy causes only beside it.
//! - **rss**: peak RSS of `target/release/kasm run` with the four task-app handlers
//!   (notification posting to a local receiver, recurring, audit on SQLite, live updates)
//!   working off a backlog at full speed, and with the one trivial handler, each on the
//!   handler defaults.
//!
//! `KASM_BENCH_CONTENDERS=kasm defaults,peer` runs only the throughput rows and latency routes
//! whose name contains one of the terms (see `picked`); a term ending in `$` names one row
//! whole (`kasm defaults$` leaves out *kasm defaults, traced*). For experiments,
//! `KASM_BENCH_HANDLER` adds handler keys to every in-process kasm, `KASM_BENCH_KAFKA`
//! librdkafka properties to every kasm's `[kafka]` table. `KASM_BENCH_LOG=kasm_host=info` prints the in-process hosts' log lines.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stderr,
    clippy::print_stdout,
    missing_docs
)]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use kasm_host::kafka::mock::EmbeddedCluster;
use kasm_tests::broker::TestBroker;
use kasm_tests::components::{self, Component};
use kasm_tests::{component, root};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, FutureProducer, FutureRecord, Producer as _};
use rdkafka::{ClientConfig, Message as _};

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn unique(prefix: &str) -> String {
    format!("{prefix}-{:08x}", rand::random::<u32>())
}

/// Microseconds since the benchmark started: the one clock senders and probes share.
fn now_us() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_micros() as u64
}

struct Bench {
    broker: TestBroker,
    rt: tokio::runtime::Runtime,
}

impl Bench {
    fn bootstrap(&self) -> String {
        self.broker.bootstrap()
    }

    /// librdkafka settings for every client: short sessions on an external broker (Tansu
    /// answers a join after session.timeout / 2).
    fn client(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", self.bootstrap());
        if self.broker.is_external() {
            c.set("session.timeout.ms", "6000")
                .set("heartbeat.interval.ms", "500");
        }
        c
    }

    /// Top-level kasm settings: with 6 s sessions the drain must be shorter.
    fn drain(&self) -> &'static str {
        if self.broker.is_external() {
            "drain_timeout = \"4s\"\n"
        } else {
            ""
        }
    }

    /// The `[kafka]` table of a kasm config.
    fn kafka_table(&self) -> String {
        let mut t = String::from("[kafka]\n");
        if self.broker.is_external() {
            t.push_str("\"session.timeout.ms\" = 6000\n\"heartbeat.interval.ms\" = 500\n");
        }
        // Extra librdkafka properties for kasm's consumers, `name=value;...` (experiments).
        for kv in std::env::var("KASM_BENCH_KAFKA")
            .unwrap_or_default()
            .split(';')
        {
            if let Some((k, v)) = kv.split_once('=') {
                t.push_str(&format!("\"{}\" = \"{}\"\n", k.trim(), v.trim()));
            }
        }
        t
    }

    fn topic(&self, prefix: &str, partitions: i32) -> String {
        let t = unique(prefix);
        self.rt.block_on(self.broker.create_topic(&t, partitions));
        t
    }

    /// A fresh topic holding `n` records made by `make(i)` → (event id, key, payload).
    fn fill(
        &self,
        prefix: &str,
        n: usize,
        make: impl Fn(usize) -> (String, String, Vec<u8>),
    ) -> String {
        let topic = self.topic(prefix, 4);
        let producer: FutureProducer = self
            .client()
            .set("linger.ms", "5")
            .set("queue.buffering.max.messages", "1000000")
            .create()
            .unwrap();
        self.rt.block_on(async {
            let mut sends = Vec::with_capacity(5000);
            for i in 0..n {
                let (id, key, payload) = make(i);
                let headers = OwnedHeaders::new().insert(Header {
                    key: "event-id",
                    value: Some(id.as_bytes()),
                });
                let record = FutureRecord::to(&topic)
                    .key(key.as_bytes())
                    .payload(&payload)
                    .headers(headers);
                sends.push(producer.send_result(record).map_err(|(e, _)| e).unwrap());
                if sends.len() >= 5000 {
                    for s in futures::future::join_all(sends.drain(..)).await {
                        s.unwrap().map_err(|(e, _)| e).unwrap();
                    }
                }
            }
            for s in futures::future::join_all(sends).await {
                s.unwrap().map_err(|(e, _)| e).unwrap();
            }
        });
        topic
    }
}

/// ~100-byte trivial events.
fn trivial(i: usize) -> (String, String, Vec<u8>) {
    let id = format!("b-{i:08}");
    let payload = format!(
        r#"{{"action":"ok","event_id":"{id}","pad":"{}"}}"#,
        "x".repeat(44)
    );
    (id, format!("k{i}"), payload.into_bytes())
}

/// Task events as the task app publishes them (the audit handler's input).
fn task_event(i: usize) -> (String, String, Vec<u8>) {
    let kinds = [
        "task.created",
        "task.updated",
        "task.completed",
        "task.deleted",
    ];
    let id = format!("t-{i:08}");
    let user = format!("u{}", i % 7);
    let payload = serde_json::json!({
        "event_id": id, "event_type": kinds[i % 4], "task_id": format!("task-{}", i / 4),
        "user_id": user, "timestamp": "2026-11-27T09:15:00Z",
        "task": {"title": format!("task {i}"), "tags": [], "completed": i % 4 == 2}
    });
    (id, user, serde_json::to_vec(&payload).unwrap())
}

fn rate(n: usize, took: Duration) -> f64 {
    n as f64 / took.as_secs_f64()
}

/// CPU seconds this process has used so far, all threads together (kasm, librdkafka's threads,
/// the embedded mock broker, the bench): `utime + stime` of `/proc/self/stat`, in clock ticks.
fn cpu_seconds() -> f64 {
    static TICK: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    let tick = *TICK.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(100.0)
    });
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which may hold spaces): state is field 3, utime 14, stime 15.
    let fields: Vec<f64> = stat
        .rsplit_once(')')
        .map_or("", |(_, rest)| rest)
        .split_whitespace()
        .map(|f| f.parse().unwrap_or(0.0))
        .collect();
    fields
        .get(11)
        .zip(fields.get(12))
        .map_or(0.0, |(u, s)| (u + s) / tick)
}

/// Profile only what is measured: with `KASM_BENCH_PERF_CTL=<fifo>`, a throughput run writes
/// `enable` / `disable` to that fifo when its measured window opens and closes — for
/// `perf record -D -1 --control fifo:<fifo> …`, which then samples the windows and not the
/// filling of topics or the starting of hosts.
fn perf_ctl(command: &str) {
    if let Ok(path) = std::env::var("KASM_BENCH_PERF_CTL") {
        let _ = std::fs::OpenOptions::new()
            .write(true)
            .open(path)
            .and_then(|mut f| std::io::Write::write_all(&mut f, format!("{command}\n").as_bytes()));
    }
}

/// What one throughput run measured: records/s, and CPU µs per record over the same window
/// (the whole process; NaN where not measured).
#[derive(Clone, Copy)]
struct Run {
    rate: f64,
    cpu_us: f64,
}

/// A throughput run's measured window: opened at the first record, closed at the last.
struct Window {
    start: Instant,
    cpu: f64,
}

impl Window {
    fn open() -> Self {
        perf_ctl("enable");
        Window {
            start: Instant::now(),
            cpu: cpu_seconds(),
        }
    }

    /// Close it over `n` records.
    fn close(self, n: usize) -> Run {
        let took = self.start.elapsed();
        let cpu = cpu_seconds() - self.cpu;
        perf_ctl("disable");
        Run {
            rate: rate(n, took),
            cpu_us: cpu * 1e6 / n as f64,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Throughput contenders

/// `KASM_BENCH_CONTENDERS=kasm defaults,peer`: only the contenders (and latency routes) whose
/// name contains one of these; all when unset. With a `|` in it the filter is split on `|`
/// instead, so that a name with commas can be picked alone (`peer, commit per batch|baseline`).
fn picked(name: &str) -> bool {
    let filter = std::env::var("KASM_BENCH_CONTENDERS").unwrap_or_default();
    let sep = if filter.contains('|') { '|' } else { ',' };
    // A term ending in `$` names one row whole.
    filter.is_empty()
        || filter
            .split(sep)
            .map(str::trim)
            .any(|f| match f.strip_suffix('$') {
                Some(whole) => name == whole,
                None => name.contains(f),
            })
}

/// The baseline: poll, decode nothing, commit after each batch of what was polled.
fn baseline(b: &Bench, topic: &str, n: usize) -> Run {
    let consumer: BaseConsumer = b
        .client()
        .set("group.id", unique("baseline"))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    consumer.subscribe(&[topic]).unwrap();
    let mut done = 0;
    let mut window = None;
    let mut since_commit = 0;
    let deadline = Instant::now() + Duration::from_secs(300);
    while done < n && Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                window.get_or_insert_with(Window::open);
                std::hint::black_box(m.payload());
                consumer.store_offset_from_message(&m).unwrap();
                done += 1;
                since_commit += 1;
                if since_commit >= 500 {
                    consumer.commit_consumer_state(CommitMode::Async).unwrap();
                    since_commit = 0;
                }
            }
            Some(Err(e)) => panic!("baseline consumer: {e}"),
            None => {
                if since_commit > 0 {
                    consumer.commit_consumer_state(CommitMode::Async).unwrap();
                    since_commit = 0;
                }
            }
        }
    }
    let run = window.map(|w| w.close(n));
    if since_commit > 0 {
        consumer.commit_consumer_state(CommitMode::Sync).unwrap();
    }
    assert_eq!(done, n, "baseline read everything");
    run.unwrap()
}

/// How a kasm contender's handler is set up: each key left `None` is left out of the config,
/// so the host's default applies.
#[derive(Clone, Copy, PartialEq, Eq)]
struct KasmOpts {
    /// `max_batch`.
    max_batch: Option<usize>,
    /// `instance_reuse`.
    instance_reuse: Option<u32>,
    /// `ledger`.
    ledger: Option<bool>,
    /// The audit handler on SQLite instead of the trivial fixture.
    audit: bool,
    /// The trivial handler in an interpreted language (`py-ok`, `js-ok`) instead of the Rust
    /// fixture.
    interpreted: Option<Component>,
    /// `ledger_store = "file"` (the default is `"kafka"`).
    file_ledger: bool,
    /// Traces on, exported over OTLP to a receiver in the bench process (off by default).
    traced: bool,
}

const DEFAULTS: KasmOpts = KasmOpts {
    max_batch: None,
    instance_reuse: None,
    ledger: None,
    audit: false,
    interpreted: None,
    file_ledger: false,
    traced: false,
};

impl KasmOpts {
    /// The `[handlers.h]` lines for the keys that are set, nothing for the others.
    fn keys(&self) -> String {
        let mut lines = String::new();
        if let Some(v) = self.max_batch {
            lines.push_str(&format!("max_batch = {v}\n"));
        }
        if let Some(v) = self.instance_reuse {
            lines.push_str(&format!("instance_reuse = {v}\n"));
        }
        if let Some(v) = self.ledger {
            lines.push_str(&format!("ledger = {v}\n"));
        }
        lines
    }
}

/// A kasm config with one handler `h` on `topic`.
fn kasm_config(b: &Bench, dir: &Path, topic: &str, o: KasmOpts) -> PathBuf {
    let (component_path, grants) = if o.audit {
        (
            component(components::AUDIT),
            format!(
                "grants = {{ sql = {{ migrations = \"{}\" }} }}",
                root().join("handlers/audit/migrations").display()
            ),
        )
    } else if let Some(name) = o.interpreted {
        (component(name), String::new())
    } else {
        (
            component(components::FIXTURE),
            "grants = { producer = [\"bench-out\"], kv = true }".to_owned(),
        )
    };
    let body = format!(
        "data_dir = \"{data}\"\n{store}{drain}[admin]\nlisten = \"127.0.0.1:0\"\n{kafka}\
         [handlers.h]\ncomponent = \"{c}\"\ntopics = [\"{topic}\"]\ngroup_id = \"{g}\"\n\
         payload = \"json\"\n{keys}{grants}\n{extra}",
        data = dir.join("data").display(),
        store = if o.file_ledger {
            "ledger_store = \"file\"\n"
        } else {
            ""
        },
        kafka = b.kafka_table(),
        drain = b.drain(),
        c = component_path.display(),
        g = unique("kasm"),
        keys = o.keys(),
        extra = extra_handler_settings(),
    );
    let path = dir.join("kasm.toml");
    std::fs::write(&path, body).unwrap();
    path
}

fn kasm_env(b: &Bench) -> kasm_host::config::KafkaEnv {
    kasm_host::config::KafkaEnv {
        bootstrap_servers: Some(b.bootstrap()),
        ..Default::default()
    }
}

/// Extra handler settings for experiments: `KASM_BENCH_HANDLER`, `name = value` lines
/// separated by `;`, added to every kasm handler the throughput and latency parts configure.
fn extra_handler_settings() -> String {
    std::env::var("KASM_BENCH_HANDLER")
        .unwrap_or_default()
        .split(';')
        .map(|l| format!("{}\n", l.trim()))
        .collect()
}

/// kasm in process on `topic`: records/s from the first record done to the last.
fn kasm(b: &Bench, topic: &str, n: usize, o: KasmOpts) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let config = kasm_host::config::Config::load(&kasm_config(b, dir.path(), topic, o)).unwrap();
    // Traced: every span goes to a collector of this process's (a receiver answering 200).
    let collector = o
        .traced
        .then(|| kasm_tests::receiver::Receiver::start(&[200]));
    let trace = collector
        .as_ref()
        .map(|c| kasm_host::telemetry::trace::TraceConfig {
            endpoint: Some(format!("http://{}/v1/traces", c.addr)),
        });
    b.rt.block_on(async {
        let host = kasm_host::app::start_traced(
            &config,
            &kasm_env(b),
            None,
            std::sync::Arc::new(kasm_host::capabilities::websocket::Hub::from_env()),
            trace,
        )
        .await
        .unwrap();
        let stats = &host.handlers[0].stats;
        let deadline = Instant::now() + Duration::from_secs(600);
        let done = || {
            let s = stats.snapshot();
            (s.processed + s.skipped + s.dead_lettered) as usize
        };
        // From the first record a partition worker takes (as the baseline's window opens at
        // its first record): a batch is done only when it commits.
        while stats.snapshot().received == 0 {
            assert!(Instant::now() < deadline, "kasm made no progress");
            tokio::time::sleep(Duration::from_micros(100)).await;
        }
        let window = Window::open();
        while done() < n {
            assert!(Instant::now() < deadline, "kasm did not finish");
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        let r = window.close(n);
        let s = stats.snapshot();
        assert_eq!(
            s.processed as usize, n,
            "every record handled ok (skipped as already handled: {}, dead-lettered: {})",
            s.skipped, s.dead_lettered
        );
        host.shutdown().await.unwrap();
        if let Some(c) = &collector {
            eprintln!(
                "traced: the collector got {} spans for {n} records (the SDK drops what its \
                 bounded queue cannot take)",
                exported_spans(c)
            );
        }
        r
    })
}

/// Spans in every OTLP request `c` received.
fn exported_spans(c: &kasm_tests::receiver::Receiver) -> usize {
    use prost::Message as _;
    c.received
        .lock()
        .map(|got| {
            got.iter()
                .filter_map(|r| {
                    opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest::decode(
                        r.body.as_slice(),
                    )
                    .ok()
                })
                .flat_map(|req| req.resource_spans)
                .flat_map(|rs| rs.scope_spans)
                .map(|ss| ss.spans.len())
                .sum()
        })
        .unwrap_or(0)
}

/// `target/bench/venv` with aiokafka, or why not.
fn peer_python() -> Result<PathBuf, String> {
    let venv = root().join("target/bench/venv");
    let python = venv.join("bin/python");
    let run = |cmd: &mut std::process::Command, what: &str| -> Result<(), String> {
        match cmd.status() {
            Ok(s) if s.success() => Ok(()),
            Ok(s) => Err(format!("{what}: {s}")),
            Err(e) => Err(format!("{what}: {e}")),
        }
    };
    if !python.is_file() {
        run(
            std::process::Command::new("python3")
                .args(["-m", "venv"])
                .arg(&venv),
            "python3 -m venv",
        )?;
    }
    if run(
        std::process::Command::new(&python).args(["-c", "import aiokafka"]),
        "import aiokafka",
    )
    .is_err()
    {
        run(
            std::process::Command::new(&python).args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "aiokafka==0.12.0",
            ]),
            "pip install aiokafka==0.12.0",
        )?;
    }
    Ok(python)
}

/// A Python peer, one script of `bench/`.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Peer {
    /// `bench/peer.py`: commits after each batch `getmany` returns.
    PerBatch,
    /// `bench/peer_per_message.py`: awaits a commit after every message.
    PerMessage,
}

impl Peer {
    fn script(self) -> PathBuf {
        root().join(match self {
            Peer::PerBatch => "bench/peer.py",
            Peer::PerMessage => "bench/peer_per_message.py",
        })
    }
}

/// Run `peer` over `topic`: its records/s, and its own CPU per record (the user + system time
/// the peer reports from `getrusage(RUSAGE_SELF)` over its window).
fn peer(b: &Bench, python: &Path, which: Peer, topic: &str, n: usize) -> Result<Run, String> {
    let out = std::process::Command::new(python)
        .arg(which.script())
        .args(["--bootstrap", &b.bootstrap(), "--topic", topic])
        .args(["--group", &unique("peer"), "--records", &n.to_string()])
        // No `bench/__pycache__` in the source tree.
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).map_err(|e| format!("peer output: {e}"))?;
    let records = v["records"].as_f64().unwrap_or(0.0);
    let seconds = v["seconds"].as_f64().unwrap_or(f64::INFINITY);
    let cpu = v["cpu_seconds"].as_f64().unwrap_or(f64::NAN);
    Ok(Run {
        rate: records / seconds,
        cpu_us: cpu * 1e6 / records,
    })
}

fn median_spread(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(f64::total_cmp);
    (v[v.len() / 2], v[0], v[v.len() - 1])
}

/// What reads a throughput topic.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Contender {
    /// The plain rdkafka loop (`baseline`).
    Baseline,
    Kasm(KasmOpts),
    Peer(Peer),
}

/// The throughput rows, in the order they run in each round and print. The kasm rows other
/// than the defaults each set one key.
const CONTENDERS: [(&str, Contender); 12] = [
    (
        "baseline (rdkafka, no Wasm, no ledger)",
        Contender::Baseline,
    ),
    ("kasm defaults", Contender::Kasm(DEFAULTS)),
    (
        "kasm defaults, traced (OTLP to a local receiver)",
        Contender::Kasm(KasmOpts {
            traced: true,
            ..DEFAULTS
        }),
    ),
    (
        "kasm max_batch = 1 (one at a time)",
        Contender::Kasm(KasmOpts {
            max_batch: Some(1),
            ..DEFAULTS
        }),
    ),
    (
        "kasm ledger_store = \"file\"",
        Contender::Kasm(KasmOpts {
            file_ledger: true,
            ..DEFAULTS
        }),
    ),
    (
        "kasm ledger = false",
        Contender::Kasm(KasmOpts {
            ledger: Some(false),
            ..DEFAULTS
        }),
    ),
    (
        "kasm instance_reuse = 1000",
        Contender::Kasm(KasmOpts {
            instance_reuse: Some(1000),
            ..DEFAULTS
        }),
    ),
    (
        "kasm audit on SQLite (defaults)",
        Contender::Kasm(KasmOpts {
            audit: true,
            ..DEFAULTS
        }),
    ),
    (
        "kasm Python trivial handler (defaults)",
        Contender::Kasm(KasmOpts {
            interpreted: Some(components::PY_OK),
            ..DEFAULTS
        }),
    ),
    (
        "kasm JavaScript trivial handler (defaults)",
        Contender::Kasm(KasmOpts {
            interpreted: Some(components::JS_OK),
            ..DEFAULTS
        }),
    ),
    (
        "peer, commit per batch (aiokafka)",
        Contender::Peer(Peer::PerBatch),
    ),
    (
        "peer, commit per message (aiokafka)",
        Contender::Peer(Peer::PerMessage),
    ),
];

fn throughput(b: &Bench) {
    let n = env_or("KASM_BENCH_RECORDS", 20_000);
    let runs = env_or("KASM_BENCH_RUNS", 3);
    let python = peer_python();
    if let Err(e) = &python {
        eprintln!("peers unavailable: {e}");
    }
    let mut results: Vec<Vec<Run>> = vec![Vec::new(); CONTENDERS.len()];
    for round in 0..runs {
        for (i, (name, contender)) in CONTENDERS.iter().enumerate() {
            if !picked(name) {
                continue;
            }
            let make = match contender {
                Contender::Kasm(o) if o.audit => task_event,
                _ => trivial,
            };
            let topic = b.fill("bench", n, make);
            let r = match contender {
                Contender::Baseline => baseline(b, &topic, n),
                Contender::Kasm(o) => kasm(b, &topic, n, *o),
                Contender::Peer(which) => {
                    let Ok(py) = &python else { continue };
                    match peer(b, py, *which, &topic, n) {
                        Ok(r) => r,
                        Err(e) => {
                            eprintln!("{name} failed: {e}");
                            continue;
                        }
                    }
                }
            };
            eprintln!(
                "round {}: {name:<40} {:>10.0} records/s {:>7.2} CPU µs/record",
                round + 1,
                r.rate,
                r.cpu_us
            );
            results[i].push(r);
        }
    }
    // Median records/s and CPU µs/record per row; NaN where the row did not run.
    let medians: Vec<(f64, f64)> = results
        .iter()
        .map(|r| {
            if r.is_empty() {
                (f64::NAN, f64::NAN)
            } else {
                (
                    median_spread(r.iter().map(|x| x.rate).collect()).0,
                    median_spread(r.iter().map(|x| x.cpu_us).collect()).0,
                )
            }
        })
        .collect();
    let of = |c: Contender| {
        CONTENDERS
            .iter()
            .position(|(_, x)| *x == c)
            .map_or((f64::NAN, f64::NAN), |i| medians[i])
    };
    let base = of(Contender::Baseline);
    let per_batch = of(Contender::Peer(Peer::PerBatch));
    let per_message = of(Contender::Peer(Peer::PerMessage));
    println!(
        "\n## throughput: {n} records x {runs} rounds, 4 partitions, {}",
        broker_name(b)
    );
    println!(
        "kasm rows: no batch, instance or ledger key in kasm.toml (the defaults), or the one named; \
         the fixture handler, but for audit"
    );
    println!(
        "CPU: kasm and baseline the whole bench process (the embedded broker's threads too); a \
         peer its own process only"
    );
    println!(
        "{:<42} {:>10} {:>10} {:>10} {:>11} {:>12} {:>12} {:>11}",
        "contender",
        "median/s",
        "min/s",
        "max/s",
        "× baseline",
        "× peer/batch",
        "× peer/msg",
        "CPU µs/rec"
    );
    for ((name, _), (r, (m, cpu))) in CONTENDERS.iter().zip(results.iter().zip(&medians)) {
        if r.is_empty() {
            println!("{name:<42} {:>10}", "n/a");
            continue;
        }
        let (_, lo, hi) = median_spread(r.iter().map(|x| x.rate).collect());
        println!(
            "{name:<42} {m:>10.0} {lo:>10.0} {hi:>10.0} {:>11.3} {:>12.2} {:>12.2} {cpu:>11.2}",
            m / base.0,
            m / per_batch.0,
            m / per_message.0,
        );
    }
    let defaults = of(Contender::Kasm(DEFAULTS));
    let audit = of(Contender::Kasm(KasmOpts {
        audit: true,
        ..DEFAULTS
    }));
    let file = of(Contender::Kasm(KasmOpts {
        file_ledger: true,
        ..DEFAULTS
    }));
    println!("\ntargets (medians)");
    let target = |what: &str, value: f64, shown: String, met: bool| {
        let verdict = if value.is_nan() {
            "n/a"
        } else if met {
            "met"
        } else {
            "MISSED"
        };
        println!("  {what:<52} {shown:>14}  {verdict}");
    };
    let ratio = defaults.0 / base.0;
    target(
        "kasm defaults ≥ 0.5 × baseline",
        ratio,
        format!("{ratio:.3} ×"),
        ratio >= 0.5,
    );
    let ratio = defaults.0 / per_message.0;
    target(
        "kasm defaults ≥ 10 × peer, commit per message",
        ratio,
        format!("{ratio:.2} ×"),
        ratio >= 10.0,
    );
    let ratio = defaults.0 / per_batch.0;
    target(
        "kasm defaults ≥ 2 × peer, commit per batch",
        ratio,
        format!("{ratio:.2} ×"),
        ratio >= 2.0,
    );
    let extra = defaults.1 - base.1;
    target(
        "kasm defaults CPU/record ≤ baseline's + 2 µs",
        extra,
        format!("{extra:+.2} µs"),
        extra <= 2.0,
    );
    let ratio = defaults.0 / file.0;
    target(
        "kasm defaults (Kafka ledger) ≥ 0.8 × ledger_store = \"file\"",
        ratio,
        format!("{ratio:.2} ×"),
        ratio >= 0.8,
    );
    target(
        "kasm audit on SQLite ≥ 100,000 records/s",
        audit.0,
        format!("{:.0}/s", audit.0),
        audit.0 >= 100_000.0,
    );
}

fn broker_name(b: &Bench) -> String {
    if b.broker.is_external() {
        format!("external broker {}", b.bootstrap())
    } else {
        "embedded mock cluster".into()
    }
}

// ---------------------------------------------------------------------------------------------
// Latency and swap

/// What a fixed-rate run measured.
struct LatencyRun {
    /// Latencies (µs) of records sent outside the swap window, sorted.
    steady: Vec<u64>,
    /// Latencies (µs) of records sent inside the swap window, sorted.
    swap: Vec<u64>,
    /// Longest gap (µs) between two outputs arriving inside the swap window.
    swap_gap_us: u64,
    /// Longest gap (µs) between two outputs arriving outside it.
    steady_gap_us: u64,
    /// compile + switch of the deploy, as the deployer reported it.
    swap_report: Option<String>,
    /// How long the window's deploy (or sham) took, from its start to its end.
    window_len: Option<Duration>,
    /// When the window's longest gap began, in ms from the start of the deploy (or sham).
    swap_gap_from_ms: f64,
    /// Records the probe never saw.
    missing: usize,
}

fn pct(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i] as f64 / 1000.0
}

/// The probe: read `topic` from the start and note when each `seq` arrives.
fn probe(b: &Bench, topic: &str, expect: usize, stop: &AtomicBool) -> Vec<(u64, u64, u64)> {
    let consumer: BaseConsumer = b
        .client()
        .set("group.id", unique("probe"))
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("fetch.wait.max.ms", "1")
        .create()
        .unwrap();
    consumer.subscribe(&[topic]).unwrap();
    let mut seen = Vec::with_capacity(expect);
    while seen.len() < expect && !stop.load(Ordering::SeqCst) {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(10)) {
            let at = now_us();
            let Some(v) = m
                .payload()
                .and_then(|p| serde_json::from_slice::<serde_json::Value>(p).ok())
            else {
                continue;
            };
            let (Some(seq), Some(sent)) = (v["seq"].as_u64(), v["sent_us"].as_u64()) else {
                continue;
            };
            seen.push((seq, sent, at));
        }
    }
    seen
}

/// Send `n` echo events to `topic` at `per_sec`, each carrying its send time; returns when
/// all are acknowledged. `warm` events go first, slowly, until `ready` (the probe sees them).
fn paced_send(b: &Bench, topic: &str, out: &str, n: usize, per_sec: f64) {
    // A producer at a steady rate batches what a millisecond brings (one request per record
    // would measure the mock broker's request rate, not the pipeline).
    let producer: BaseProducer = b
        .client()
        .set("linger.ms", "1")
        .set("queue.buffering.max.messages", "1000000")
        .create()
        .unwrap();
    // Each wake-up sends what is due by then and sleeps to the next record's time (at least
    // a fraction of a millisecond): no spinning, which on 2 cores would take the CPU the host
    // under test needs (at 5k/s the records are 200 µs apart). Each record carries the time
    // it was actually sent.
    let start = Instant::now();
    for i in 0..n {
        let due = start + Duration::from_secs_f64(i as f64 / per_sec);
        let now = Instant::now();
        if due > now {
            std::thread::sleep((due - now).max(Duration::from_micros(500)));
        }
        let id = format!("lat-{i:08}");
        let payload = format!(
            r#"{{"topic":"{out}","event_id":"{id}","seq":{i},"sent_us":{},"pad":"{}"}}"#,
            now_us(),
            "x".repeat(24)
        );
        let key = format!("k{i}");
        let mut record = BaseRecord::to(topic)
            .key(key.as_bytes())
            .payload(payload.as_bytes());
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((_, r)) => {
                    producer.poll(Duration::from_millis(1));
                    record = r;
                }
            }
        }
        producer.poll(Duration::ZERO);
    }
    producer.flush(Duration::from_secs(30)).unwrap();
}

/// A fresh-component version of `bytes`: the same code with a custom section naming `tag`,
/// so its sha256 (the version) differs and the behavior does not.
fn retagged(bytes: &[u8], tag: &str) -> Vec<u8> {
    fn leb(mut v: usize, out: &mut Vec<u8>) {
        loop {
            let byte = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                out.push(byte);
                return;
            }
            out.push(byte | 0x80);
        }
    }
    let name = b"kasm-bench-version";
    let mut body = Vec::new();
    leb(name.len(), &mut body);
    body.extend_from_slice(name);
    body.extend_from_slice(tag.as_bytes());
    let mut out = bytes.to_vec();
    out.push(0); // custom section
    leb(body.len(), &mut out);
    out.extend_from_slice(&body);
    out
}

/// The relay: consume `input` and produce each record's payload to `output` as it arrives,
/// with the consumer and producer settings kasm uses (`fetch.wait.max.ms = 1` on the mock
/// cluster, as kasm gets here; `acks = all`, idempotent, `linger.ms = 0`), committing every
/// 100 ms. No Wasm, no ledger, no waiting for acknowledgements: what any consume → produce
/// service costs on this broker at this rate.
fn relay(b: &Bench, input: &str, output: &str, stop: &AtomicBool) {
    let mut config = b.client();
    if !b.broker.is_external() {
        config.set("fetch.wait.max.ms", "1");
    }
    let consumer: BaseConsumer = config
        .set("group.id", unique("relay"))
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("isolation.level", "read_committed")
        .create()
        .unwrap();
    let producer: BaseProducer = b
        .client()
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("linger.ms", "0")
        .create()
        .unwrap();
    consumer.subscribe(&[input]).unwrap();
    let mut last_commit = Instant::now();
    while !stop.load(Ordering::SeqCst) {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(10)) {
            let payload = m.payload().unwrap_or_default();
            let mut record = BaseRecord::<[u8], [u8]>::to(output).payload(payload);
            if let Some(k) = m.key() {
                record = record.key(k);
            }
            while let Err((e, r)) = producer.send(record) {
                assert!(
                    matches!(
                        e.rdkafka_error_code(),
                        Some(rdkafka::types::RDKafkaErrorCode::QueueFull)
                    ),
                    "relay produce: {e}"
                );
                producer.poll(Duration::from_millis(1));
                record = r;
            }
        }
        producer.poll(Duration::ZERO);
        if last_commit.elapsed() >= Duration::from_millis(100) {
            let _ = consumer.commit_consumer_state(CommitMode::Async);
            last_commit = Instant::now();
        }
    }
    producer.flush(Duration::from_secs(10)).unwrap();
}

/// What carries the records from the input topic to the one the probe reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    /// Nothing: the probe reads the input topic (one produce → consume hop, the method's floor).
    Direct,
    /// A plain rdkafka consumer that produces each record to the output topic as it arrives,
    /// with kasm's producer settings: the floor of a consume → produce hop on this broker.
    Relay,
    /// kasm's echo handler with its defaults (and `KASM_BENCH_HANDLER`).
    Kasm,
}

/// What happens half-way through a latency run.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Midway {
    /// Nothing: every record counts as steady.
    Nothing,
    /// A new version of the handler is deployed.
    Deploy,
    /// The control: nothing is deployed, but a window as long as a deploy is marked where one
    /// would be, and measured the same way.
    Sham(Duration),
}

/// Carry the records along `route` at `per_sec` for `seconds`; half-way, do what `midway`
/// says (a deploy of a new version of the kasm handler, or the control's empty window).
fn latency_run(b: &Bench, per_sec: f64, seconds: f64, midway: Midway, route: Route) -> LatencyRun {
    let input = b.topic("lat-in", 4);
    let out = if route == Route::Direct {
        input.clone()
    } else {
        b.topic("lat-out", 4)
    };
    let n = (per_sec * seconds) as usize;
    let dir = tempfile::tempdir().unwrap();
    let host = if route == Route::Kasm {
        let body = format!(
            "data_dir = \"{data}\"\n{drain}[admin]\nlisten = \"127.0.0.1:0\"\n{kafka}{wait}\
             [handlers.echo]\ncomponent = \"{c}\"\ntopics = [\"{input}\"]\ngroup_id = \"{g}\"\n\
             payload = \"json\"\n\
             grants = {{ producer = [\"{out}\"], kv = true }}\n{extra}",
            extra = extra_handler_settings(),
            data = dir.path().join("data").display(),
            kafka = b.kafka_table(),
            drain = b.drain(),
            // The mock cluster answers a fetch only when its wait is over, even if records
            // arrive meanwhile (a real broker answers at once): a short wait, as the probe's.
            wait = if b.broker.is_external() {
                ""
            } else {
                "\"fetch.wait.max.ms\" = 1\n"
            },
            c = component(components::FIXTURE).display(),
            g = unique("kasm"),
        );
        let path = dir.path().join("kasm.toml");
        std::fs::write(&path, body).unwrap();
        let config = kasm_host::config::Config::load(&path).unwrap();
        let host =
            b.rt.block_on(kasm_host::app::start(&config, &kasm_env(b)))
                .unwrap();
        // Wait for the group to settle: the handler has its partitions.
        let deadline = Instant::now() + Duration::from_secs(60);
        while !host.health.report(true).0 {
            assert!(Instant::now() < deadline, "kasm never became ready");
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(host)
    } else {
        None
    };
    let stop = AtomicBool::new(false);
    let swap_window = std::sync::Mutex::new(None::<(u64, u64, String)>);
    let seen = std::thread::scope(|s| {
        let probe_thread = s.spawn(|| probe(b, &out, n, &stop));
        let relay_thread =
            (route == Route::Relay).then(|| s.spawn(|| relay(b, &input, &out, &stop)));
        // Give the probe its assignment before the clock starts.
        std::thread::sleep(Duration::from_secs(if b.broker.is_external() {
            8
        } else {
            2
        }));
        let swapper = host
            .as_ref()
            .filter(|_| midway != Midway::Nothing)
            .map(|h| {
                let deployer = h.deployer.clone();
                let handle = b.rt.handle().clone();
                let window = &swap_window;
                // The new version's bytes are ready before the clock starts: reading and
                // tagging 18 MB is the bench's work, not the deploy's, and must fall neither in
                // the window measured around it nor in the steady part of the run.
                let bytes = (midway == Midway::Deploy)
                    .then(|| retagged(&std::fs::read(component(swap_to())).unwrap(), &unique("v")));
                s.spawn(move || {
                    std::thread::sleep(Duration::from_secs_f64(seconds / 2.0));
                    let t0 = now_us();
                    let what = if let Midway::Sham(len) = midway {
                        std::thread::sleep(len);
                        format!("sham: nothing deployed, window of {} ms", len.as_millis())
                    } else {
                        let bytes = bytes.unwrap();
                        // On the runtime's threads, beside the partition workers, as the admin
                        // API serves a deploy.
                        let deploy = async move { deployer.deploy("echo", bytes).await };
                        let report = handle.block_on(handle.spawn(deploy)).unwrap().unwrap();
                        format!(
                            "compile {:.0} ms, switch {:.0} µs, deploy {:.0} ms",
                            report.compile_ms,
                            report.swap_us,
                            (now_us() - t0) as f64 / 1000.0
                        )
                    };
                    *window.lock().unwrap() = Some((t0, now_us(), what));
                })
            });
        paced_send(b, &input, &out, n, per_sec);
        if let Some(t) = swapper {
            t.join().unwrap();
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        while !probe_thread.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        stop.store(true, Ordering::SeqCst);
        if let Some(t) = relay_thread {
            t.join().unwrap();
        }
        probe_thread.join().unwrap()
    });
    if let Some(h) = host {
        b.rt.block_on(h.shutdown()).unwrap();
    }
    let window = swap_window.lock().unwrap().clone();
    // Around the swap: from 100 ms before the deploy starts to 1 s after it ends.
    let in_window = |t: u64| {
        window
            .as_ref()
            .is_some_and(|(t0, t1, _)| t + 100_000 >= *t0 && t <= *t1 + 1_000_000)
    };
    let mut unique_seqs = std::collections::HashSet::new();
    let (mut steady, mut swap_lat) = (Vec::new(), Vec::new());
    let mut arrivals: Vec<u64> = Vec::new();
    for (seq, sent, at) in &seen {
        if !unique_seqs.insert(*seq) {
            continue;
        }
        let l = at.saturating_sub(*sent);
        if in_window(*sent) {
            swap_lat.push(l);
        } else {
            steady.push(l);
        }
        arrivals.push(*at);
    }
    arrivals.sort_unstable();
    let (mut swap_gap, mut steady_gap, mut swap_gap_from) = (0, 0, 0);
    for w in arrivals.windows(2) {
        let gap = w[1] - w[0];
        if in_window(w[1]) {
            if gap > swap_gap {
                (swap_gap, swap_gap_from) = (gap, w[0]);
            }
        } else {
            steady_gap = steady_gap.max(gap);
        }
    }
    steady.sort_unstable();
    swap_lat.sort_unstable();
    LatencyRun {
        steady,
        swap: swap_lat,
        swap_gap_us: swap_gap,
        steady_gap_us: steady_gap,
        window_len: window.as_ref().map(|w| Duration::from_micros(w.1 - w.0)),
        swap_gap_from_ms: window
            .as_ref()
            .map_or(0.0, |w| (swap_gap_from as f64 - w.0 as f64) / 1000.0),
        swap_report: window.map(|w| w.2),
        missing: n - unique_seqs.len(),
    }
}

/// Fewest records a latency run carries: enough that its p99 is not simply its worst record
/// (of 200, the third-worst).
const LATENCY_MIN_RECORDS: f64 = 200.0;

/// Longest a latency run is stretched to reach `LATENCY_MIN_RECORDS`.
const LATENCY_MAX_SECONDS: f64 = 60.0;

/// How long a latency run at `per_sec` lasts: `base` seconds, or longer where that gives fewer
/// than `LATENCY_MIN_RECORDS` records, up to `LATENCY_MAX_SECONDS`.
fn latency_seconds(base: f64, per_sec: f64) -> f64 {
    base.max((LATENCY_MIN_RECORDS / per_sec).min(LATENCY_MAX_SECONDS))
}

fn latency(b: &Bench) {
    // Short runs: the mock cluster finds a fetch's offset by walking the partition's message
    // sets from the start, so at 5k/s its one thread saturates within a few seconds, relay or
    // kasm alike (BENCHMARKS.md, "Latency").
    let base = env_or("KASM_BENCH_LATENCY_SECONDS", 2) as f64;
    println!(
        "\n## latency produce → handled (output seen by a probe), {base} s per rate or as long as \
         {LATENCY_MIN_RECORDS} records take (at most {LATENCY_MAX_SECONDS} s), {}",
        broker_name(b)
    );
    let runs = env_or("KASM_BENCH_RUNS", 3);
    println!(
        "each figure: median of {runs} runs [min – max]; configurations interleaved per round"
    );
    println!(
        "{:<38} {:>8} {:>22} {:>22} {:>22} {:>8}",
        "", "records", "p50 ms", "p99 ms", "max ms", "missing"
    );
    let rates: Vec<f64> = std::env::var("KASM_BENCH_RATES")
        .ok()
        .map(|v| v.split(',').filter_map(|r| r.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![10.0, 1000.0, 5000.0, 50000.0]);
    let configs = [Route::Direct, Route::Relay, Route::Kasm];
    for per_sec in rates {
        let seconds = latency_seconds(base, per_sec);
        // Per configuration, one entry per round.
        let mut got: Vec<Vec<Round>> = vec![Vec::new(); configs.len()];
        let label = |route: &Route| match route {
            Route::Direct => format!("floor (direct probe) at {per_sec:.0}/s"),
            Route::Relay => format!("relay (rdkafka in → out) at {per_sec:.0}/s"),
            Route::Kasm => format!("kasm echo, defaults at {per_sec:.0}/s"),
        };
        for _ in 0..runs {
            for (i, route) in configs.iter().enumerate() {
                if !picked(&label(route)) {
                    continue;
                }
                let r = latency_run(b, per_sec, seconds, Midway::Nothing, *route);
                got[i].push((
                    pct(&r.steady, 0.5),
                    pct(&r.steady, 0.99),
                    pct(&r.steady, 1.0),
                    r.steady.len(),
                    r.missing,
                ));
            }
        }
        for (route, runs) in configs.iter().zip(got) {
            if runs.is_empty() {
                continue;
            }
            let label = label(route);
            let fmt = |v: Vec<f64>| {
                let (med, lo, hi) = median_spread(v);
                format!("{med:.2} [{lo:.2} – {hi:.2}]")
            };
            println!(
                "{label:<38} {:>8} {:>22} {:>22} {:>22} {:>8}",
                runs.iter().map(|r| r.3).min().unwrap_or(0),
                fmt(runs.iter().map(|r| r.0).collect()),
                fmt(runs.iter().map(|r| r.1).collect()),
                fmt(runs.iter().map(|r| r.2).collect()),
                runs.iter().map(|r| r.4).max().unwrap_or(0),
            );
        }
    }
}

/// One latency run: (p50, p99, max, records, missing).
type Round = (f64, f64, f64, usize, usize);

/// The component the swap section deploys: `KASM_BENCH_SWAP_TO` (`py-echo`, `js-echo`: the
/// echo in Python or JavaScript, an interpreted component of 12-19 MB), default `fixture` (a
/// new version of the running one).
fn swap_to() -> Component {
    match std::env::var("KASM_BENCH_SWAP_TO") {
        Ok(name) => Component::named(&name).unwrap_or_else(|| {
            panic!("KASM_BENCH_SWAP_TO={name}: no such component in handlers/dist/")
        }),
        Err(_) => components::FIXTURE,
    }
}

fn swap(b: &Bench) {
    let runs = env_or("KASM_BENCH_RUNS", 3);
    let seconds = env_or("KASM_BENCH_LATENCY_SECONDS", 5).max(4) as f64;
    let to = swap_to();
    let size = std::fs::metadata(component(to)).map_or(0, |m| m.len());
    println!(
        "\n## hot swap at 1,000 records/s, defaults ({seconds} s runs, deploy at the middle), {}",
        broker_name(b)
    );
    println!(
        "deployed: {to} ({:.1} MB), over the running `fixture`",
        size as f64 / 1e6
    );
    println!(
        "each deploy run has its control: the same run with nothing deployed and a window as long \
         as the deploy's marked at the same place (every other round, the control runs first)"
    );
    println!(
        "{:<10} {:>8} {:>8} {:>13} {:>13} {:>13} {:>10} {:>8}  deploy",
        "run",
        "p99 ms",
        "max ms",
        "window max ms",
        "steady gap ms",
        "window gap ms",
        "growth ms",
        "gap at"
    );
    // Per kind (deploy, sham): the longest gap's growth over the steady one, and whether it
    // was longer than the run's steady p99.
    let mut growth: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    let mut over = [0usize; 2];
    // The control's window is as long as the last deploy took; every other round runs the
    // control first, so drift within the invocation weighs on both alike.
    let mut len = Duration::from_millis(250);
    for run in 1..=runs {
        let sham_first = run % 2 == 0;
        let sham_run = |len| latency_run(b, 1000.0, seconds, Midway::Sham(len), Route::Kasm);
        let early = sham_first.then(|| sham_run(len));
        let real = latency_run(b, 1000.0, seconds, Midway::Deploy, Route::Kasm);
        len = real.window_len.unwrap_or(len);
        let sham = early.unwrap_or_else(|| sham_run(len));
        for (k, (name, r)) in [("deploy", real), ("sham", sham)].into_iter().enumerate() {
            let p99 = pct(&r.steady, 0.99);
            let g = (r.swap_gap_us as f64 - r.steady_gap_us as f64) / 1000.0;
            growth[k].push(g);
            if g > p99 {
                over[k] += 1;
            }
            println!(
                "{:<10} {p99:>8.2} {:>8.2} {:>13.2} {:>13.2} {:>13.2} {g:>10.2} {:>8.0}  {} (missing {})",
                format!("{run} {name}"),
                pct(&r.steady, 1.0),
                pct(&r.swap, 1.0),
                r.steady_gap_us as f64 / 1000.0,
                r.swap_gap_us as f64 / 1000.0,
                r.swap_gap_from_ms,
                r.swap_report.unwrap_or_else(|| "no swap".into()),
                r.missing
            );
        }
    }
    for (k, name) in ["deploy", "sham (control)"].iter().enumerate() {
        let (m, lo, hi) = median_spread(growth[k].clone());
        println!(
            "{name:<15} gap growth median {m:.2} ms [{lo:.2} – {hi:.2}], longer than the run's p99 in {} of {runs}",
            over[k]
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Peak RSS of `kasm run`

fn kib(pid: u32, field: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<f64>().ok())
        })
        .unwrap_or(0.0)
}

/// Start `target/release/kasm run` on `body`, wait until every `(group, topic, records)` is
/// committed, return (peak RSS MiB, RSS at the end MiB, seconds).
fn kasm_process(
    b: &Bench,
    body: &str,
    work: &[(String, String, usize)],
) -> Result<(f64, f64, f64), String> {
    let bin = root().join("target/release/kasm");
    if !bin.is_file() {
        return Err(format!(
            "{} not built (make bench builds it)",
            bin.display()
        ));
    }
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("kasm.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = \"{}\"\ncommit_interval = \"500ms\"\n{}[admin]\nlisten = \"127.0.0.1:0\"\n{}{body}",
            dir.path().join("data").display(),
            b.drain(),
            b.kafka_table()
        ),
    )
    .unwrap();
    let mut child = std::process::Command::new(&bin)
        .args(["run", "--config"])
        .arg(&config)
        .env("KAFKA_BOOTSTRAP_SERVERS", b.bootstrap())
        .env("KASM_WS_SECRET", "bench-secret")
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map_err(|e| e.to_string())?;
    let pid = child.id();
    let start = Instant::now();
    let probes: Vec<(BaseConsumer, &str, usize)> = work
        .iter()
        .map(|(group, topic, n)| {
            let c: BaseConsumer = b.client().set("group.id", group).create().unwrap();
            (c, topic.as_str(), *n)
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(600);
    let result = loop {
        let done = probes.iter().all(|(c, topic, n)| {
            let mut tpl = rdkafka::TopicPartitionList::new();
            for p in 0..4 {
                tpl.add_partition(topic, p);
            }
            let committed: i64 = c
                .committed_offsets(tpl, Duration::from_secs(5))
                .map(|t| {
                    t.elements()
                        .iter()
                        .filter_map(|e| e.offset().to_raw())
                        .filter(|o| *o > 0)
                        .sum()
                })
                .unwrap_or(0);
            committed as usize >= *n
        });
        if let Ok(Some(status)) = child.try_wait() {
            break Err(format!("kasm run exited early: {status}"));
        }
        if done {
            break Ok((
                kib(pid, "VmHWM:") / 1024.0,
                kib(pid, "VmRSS:") / 1024.0,
                start.elapsed().as_secs_f64(),
            ));
        }
        if Instant::now() > deadline {
            break Err("kasm run did not finish in 600 s".into());
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let _ = child.kill();
    let _ = child.wait();
    result
}

fn rss(b: &Bench) {
    let n = env_or("KASM_BENCH_RECORDS", 20_000);
    println!(
        "\n## peak RSS of `kasm run` (release) working off a backlog, {}",
        broker_name(b)
    );
    // One trivial handler.
    let topic = b.fill("rss", n, trivial);
    let group = unique("rss");
    let body = format!(
        "[handlers.h]\ncomponent = \"{c}\"\ntopics = [\"{topic}\"]\ngroup_id = \"{group}\"\n\
         payload = \"json\"\ngrants = {{ producer = [\"bench-out\"], kv = true }}\n",
        c = component(components::FIXTURE).display(),
    );
    match kasm_process(b, &body, &[(group, topic, n)]) {
        Ok((hwm, end, s)) => println!(
            "one trivial handler, {n} records: peak {hwm:.1} MiB, at the end {end:.1} MiB ({s:.0} s)"
        ),
        Err(e) => println!("one trivial handler: not measured ({e})"),
    }

    // The four task-app handlers, each with a backlog of its own events: the Rust ones, then
    // their Python and JavaScript twins.
    four_services(
        b,
        n,
        [
            components::NOTIFICATION,
            components::RECURRING,
            components::AUDIT,
            components::LIVE_UPDATES,
        ],
        "",
    );
    let twins = [
        components::PY_NOTIFICATION,
        components::PY_RECURRING,
        components::PY_AUDIT,
        components::JS_LIVE_UPDATES,
    ];
    // Compiled once beforehand, into the artifact cache the host reads (`KASM_CACHE_DIR`): a
    // host on a cold cache compiles every component before it is ready, and the peak would be
    // the compiles' (BENCHMARKS.md reports those apart).
    for c in twins {
        let status = std::process::Command::new(root().join("target/release/kasm"))
            .arg("validate")
            .arg(component(c))
            .args([
                "--grant",
                "producer",
                "--grant",
                "sql",
                "--grant",
                "websocket",
            ])
            .args(["--grant", "http"])
            .stdout(std::process::Stdio::null())
            .status();
        if !status.is_ok_and(|s| s.success()) {
            println!(
                "interpreted task-app handlers: not measured ({} did not validate)",
                c.name()
            );
            return;
        }
    }
    four_services(b, n, twins, " in Python and JavaScript (artifacts cached)");
}

/// Peak RSS of `kasm run` with the four task-app handlers `names` (notification, recurring,
/// audit, live updates), each with a backlog of its own events.
fn four_services(b: &Bench, n: usize, names: [Component; 4], label: &str) {
    let receiver = kasm_tests::receiver::Receiver::start(&[200]);
    let tasks = b.fill("rss-tasks", n, task_event);
    let updates = b.fill("rss-updates", n, task_event);
    let m = n / 4; // reminders go out over HTTP one by one: a smaller backlog
    let reminders = b.fill("rss-reminders", m, |i| {
        let id = format!("r-{i:08}");
        let payload = serde_json::json!({
            "event_id": id, "task_id": format!("t-{i}"), "user_id": "u1",
            "title": format!("task {i}"), "due_at": "2026-11-27T09:00:00Z",
            "remind_at": "2026-11-27T08:30:00Z", "channel": "push"
        });
        (id, "u1".into(), serde_json::to_vec(&payload).unwrap())
    });
    let groups: Vec<String> = (0..4).map(|i| unique(&format!("rss{i}"))).collect();
    let body = format!(
        "[handlers.notification]\ncomponent = \"{notif}\"\ntopics = [\"{reminders}\"]\ngroup_id = \"{g0}\"\n\
         payload = \"json\"\ngrants = {{ http = [\"{addr}\"] }}\nsettings = {{ webhook_url = \"{url}\" }}\n\
         [handlers.recurring]\ncomponent = \"{rec}\"\ntopics = [\"{tasks}\"]\ngroup_id = \"{g1}\"\n\
         payload = \"json\"\ngrants = {{ producer = [\"{tasks}\"] }}\n\
         [handlers.audit]\ncomponent = \"{audit}\"\ntopics = [\"{tasks}\"]\ngroup_id = \"{g2}\"\n\
         payload = \"json\"\ngrants = {{ sql = {{ migrations = \"{mig}\" }} }}\n\
         [handlers.live-updates]\ncomponent = \"{live}\"\ntopics = [\"{updates}\"]\ngroup_id = \"{g3}\"\n\
         payload = \"json\"\ngrants = {{ websocket = true }}\n",
        notif = component(names[0]).display(),
        rec = component(names[1]).display(),
        audit = component(names[2]).display(),
        live = component(names[3]).display(),
        mig = root().join("handlers/audit/migrations").display(),
        addr = receiver.addr,
        url = receiver.url(),
        g0 = groups[0],
        g1 = groups[1],
        g2 = groups[2],
        g3 = groups[3],
    );
    let work = [
        (groups[0].clone(), reminders, m),
        (groups[1].clone(), tasks.clone(), n),
        (groups[2].clone(), tasks, n),
        (groups[3].clone(), updates, n),
    ];
    match kasm_process(b, &body, &work) {
        Ok((hwm, end, s)) => println!(
            "four task-app handlers{label}, {} records: peak {hwm:.1} MiB, at the end {end:.1} MiB ({s:.0} s, {} webhooks received)",
            3 * n + m,
            receiver.requests().len()
        ),
        Err(e) => println!("four task-app handlers{label}: not measured ({e})"),
    }
}

fn main() {
    // `KASM_BENCH_LOG=<filter>` (e.g. `kasm_host=info`): the in-process hosts' log lines on
    // stderr, to see what a slow round did.
    if let Ok(filter) = std::env::var("KASM_BENCH_LOG") {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_writer(std::io::stderr)
            .init();
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let broker = match std::env::var("KASM_TEST_BOOTSTRAP") {
        Ok(addr) if !addr.trim().is_empty() => TestBroker::External(addr.trim().to_owned()),
        _ => TestBroker::Embedded(EmbeddedCluster::start(1).unwrap()),
    };
    let b = Bench { broker, rt };
    now_us();
    let only = std::env::var("KASM_BENCH_ONLY").unwrap_or_default();
    let wanted = |s: &str| only.is_empty() || only.split(',').any(|o| o.trim() == s);
    println!(
        "kasm pipeline benchmark, {} cores, {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        broker_name(&b)
    );
    if wanted("throughput") {
        throughput(&b);
    }
    if wanted("latency") {
        latency(&b);
    }
    if wanted("swap") {
        swap(&b);
    }
    if wanted("rss") {
        rss(&b);
    }
    if wanted("restore") {
        restore(&b);
    }
}

/// How long a host takes to restore one partition's ledger from its ledger topic: entries
/// written to partition 0 of a fresh ledger topic, then [`Ledger::restore`] timed, as a host
/// does it when it is assigned the partition. On an external broker 1,000,000 entries
/// (`KASM_BENCH_RESTORE_ENTRIES`); the embedded cluster keeps only about 5 MiB per partition,
/// so there the row is 80,000 entries and the 1,000,000 figure is a projection from its rate.
fn restore(b: &Bench) {
    use kasm_host::ledger::{KafkaLedger, Ledger as _, LedgerEntry, LedgerOutcome};
    let external = b.broker.is_external();
    let n: usize = std::env::var("KASM_BENCH_RESTORE_ENTRIES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if external { 1_000_000 } else { 80_000 });
    let source = b.topic("restore-src", 1);
    let ledger_topic = format!("{source}.ledger");
    let env = kasm_env(b);
    let retention = Duration::from_secs(7 * 86_400);
    let new_ledger = || {
        let kprod = kasm_host::kafka::producer::KafkaProducer::new(&env, &[]).unwrap();
        KafkaLedger::new(kprod, &env, &[])
    };
    // The entries are written as a host writes them: batches of the default size, through
    // the ledger's own write path, with event ids shaped like UUIDs.
    let writer = new_ledger();
    let now = kasm_host::now_ms();
    let written = Instant::now();
    b.rt.block_on(async {
        writer
            .register("h", &ledger_topic, std::slice::from_ref(&source), retention)
            .await
            .unwrap();
        writer.restore("h", &source, 0).await.unwrap();
        let batch = kasm_host::config::defaults::max_batch();
        for start in (0..n).step_by(batch) {
            let entries: Vec<(String, LedgerEntry)> = (start..n.min(start + batch))
                .map(|i| {
                    let id = format!("{:032x}", rand::random::<u128>());
                    let key = format!(
                        "{}-{}-{}-{}-{}",
                        &id[..8],
                        &id[8..12],
                        &id[12..16],
                        &id[16..20],
                        &id[20..]
                    );
                    let entry = LedgerEntry {
                        outcome: LedgerOutcome::Ok,
                        at_ms: now,
                        component_sha256: "a".repeat(64),
                        topic: source.clone(),
                        partition: 0,
                        offset: i as i64,
                    };
                    (key, entry)
                })
                .collect();
            writer.record_many("h", entries).await.unwrap();
        }
    });
    let write_secs = written.elapsed().as_secs_f64();
    let ledger = new_ledger();
    let (restored, secs) = b.rt.block_on(async {
        ledger
            .register("h", &ledger_topic, std::slice::from_ref(&source), retention)
            .await
            .unwrap();
        let t = Instant::now();
        let r = ledger.restore("h", &source, 0).await.unwrap().unwrap();
        (r, t.elapsed().as_secs_f64())
    });
    let held = b.rt.block_on(ledger.len("h")).unwrap();
    println!(
        "\n## ledger restore: one partition, {n} entries written ({write_secs:.1} s), {}",
        broker_name(b)
    );
    println!(
        "restored {} entries (cache holds {held}) in {secs:.2} s: {:.0} entries/s",
        restored.entries,
        restored.entries as f64 / secs
    );
    let per_million = secs / restored.entries.max(1) as f64 * 1e6;
    if restored.entries >= 1_000_000 {
        let verdict = if secs <= 5.0 { "met" } else { "MISSED" };
        println!("  target: 1,000,000 entries restored in ≤ 5 s: {secs:.2} s  {verdict}");
    } else {
        println!(
            "  target: 1,000,000 entries restored in ≤ 5 s: projected {per_million:.2} s at this rate \
             (not measured: this broker held {} entries)",
            restored.entries
        );
    }
}
