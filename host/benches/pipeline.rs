//! Pipeline throughput, side by side in one run against one embedded Kafka cluster.
//!
//! For each of `KASM_BENCH_RUNS` rounds (default 3), every contender reads its own fresh
//! topic of `KASM_BENCH_RECORDS` records (default 20,000; 4 partitions; ~100-byte JSON events
//! with an `event-id` header):
//!
//! - **baseline**: a plain rdkafka consumer loop, commit after each poll batch, no Wasm, no
//!   ledger — the ceiling;
//! - **kasm fresh** / **kasm reused**: the kasm host in process with the trivial `fixture`
//!   handler (`{"action":"ok"}`: decode, return ok), ledger on, a fresh instance per record or
//!   reused instances;
//! - **peer**: `bench/peer.py`, the aiokafka consumer people write today (manual commit after
//!   each batch, a set of seen ids, a DLQ), installed from PyPI into `target/bench/venv`.
//!
//! Each figure is records per second from the first record received to the last one done
//! (consumer-group joins are not counted), reported as the median of the rounds with the
//! spread. Then the peak RSS of `target/release/kasm run` (a separate process) on the same
//! workload. Run with `make bench`; numbers go in BENCHMARKS.md.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stderr,
    missing_docs
)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use kasm_host::kafka::mock::EmbeddedCluster;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Message as _};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn unique(prefix: &str) -> String {
    format!("{prefix}-{:08x}", rand::random::<u32>())
}

/// A fresh topic holding `n` ~100-byte events.
async fn fill(cluster: &EmbeddedCluster, n: usize) -> String {
    let topic = unique("bench");
    cluster.create_topic(&topic, 4).unwrap();
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", cluster.bootstrap_servers())
        .set("linger.ms", "5")
        .set("queue.buffering.max.messages", "1000000")
        .create()
        .unwrap();
    let mut sends = Vec::with_capacity(n);
    for i in 0..n {
        let id = format!("b-{i:08}");
        let payload = format!(
            r#"{{"action":"ok","event_id":"{id}","pad":"{}"}}"#,
            "x".repeat(44)
        );
        let key = format!("k{i}");
        let headers = OwnedHeaders::new().insert(Header {
            key: "event-id",
            value: Some(id.as_bytes()),
        });
        let record = FutureRecord::to(&topic)
            .key(key.as_bytes())
            .payload(payload.as_bytes())
            .headers(headers);
        // Enqueued now (the queue holds a million), delivery awaited below.
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
    topic
}

/// The baseline: poll, decode nothing, commit after each batch of what was polled.
fn baseline(bootstrap: &str, topic: &str, n: usize) -> f64 {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", unique("baseline"))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    consumer.subscribe(&[topic]).unwrap();
    let mut done = 0;
    let mut first = None;
    let mut since_commit = 0;
    let deadline = Instant::now() + Duration::from_secs(300);
    while done < n && Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                first.get_or_insert_with(Instant::now);
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
    consumer.commit_consumer_state(CommitMode::Sync).unwrap();
    assert_eq!(done, n, "baseline read everything");
    rate(n, first.unwrap().elapsed())
}

fn rate(n: usize, took: Duration) -> f64 {
    n as f64 / took.as_secs_f64()
}

/// A kasm config with the trivial handler on `topic`.
fn kasm_config(dir: &Path, topic: &str, reuse: u32, pending: usize) -> PathBuf {
    let body = format!(
        "data_dir = \"{data}\"\ncommit_interval = \"1s\"\n[admin]\nlisten = \"127.0.0.1:0\"\n\
         [handlers.trivial]\ncomponent = \"{c}\"\ntopics = [\"{topic}\"]\ngroup_id = \"{g}\"\n\
         payload = \"json\"\ninstance_reuse = {reuse}\npending_ledger_writes = {pending}\n\
         grants = {{ producer = [\"bench-out\"], kv = true }}\n",
        data = dir.join("data").display(),
        c = root().join("handlers/dist/fixture.wasm").display(),
        g = unique("kasm"),
    );
    let path = dir.join("kasm.toml");
    std::fs::write(&path, body).unwrap();
    path
}

async fn kasm(bootstrap: &str, topic: &str, n: usize, reuse: u32, pending: usize) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let config =
        kasm_host::config::Config::load(&kasm_config(dir.path(), topic, reuse, pending)).unwrap();
    let env = kasm_host::config::KafkaEnv {
        bootstrap_servers: Some(bootstrap.to_owned()),
        ..Default::default()
    };
    let host = kasm_host::app::start(&config, &env).await.unwrap();
    let stats = &host.handlers[0].stats;
    let deadline = Instant::now() + Duration::from_secs(600);
    let done = || {
        let s = stats.snapshot();
        (s.processed + s.skipped + s.dead_lettered) as usize
    };
    while done() == 0 {
        assert!(Instant::now() < deadline, "kasm made no progress");
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
    let first = Instant::now();
    while done() < n {
        assert!(Instant::now() < deadline, "kasm did not finish");
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
    let r = rate(n, first.elapsed());
    assert_eq!(
        stats.snapshot().processed as usize,
        n,
        "every record handled ok"
    );
    host.shutdown().await.unwrap();
    r
}

/// `target/bench/venv` with aiokafka, or why not.
fn peer_python() -> Result<PathBuf, String> {
    let venv = root().join("target/bench/venv");
    let python = venv.join("bin/python");
    if !python.is_file() {
        let ok = std::process::Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .status()
            .map_err(|e| format!("python3: {e}"))?;
        if !ok.success() {
            return Err("python3 -m venv failed".into());
        }
    }
    let has = std::process::Command::new(&python)
        .args(["-c", "import aiokafka"])
        .status()
        .map_err(|e| e.to_string())?;
    if !has.success() {
        let ok = std::process::Command::new(&python)
            .args(["-m", "pip", "install", "--quiet", "aiokafka==0.12.0"])
            .status()
            .map_err(|e| e.to_string())?;
        if !ok.success() {
            return Err("pip install aiokafka failed".into());
        }
    }
    Ok(python)
}

fn peer(python: &Path, bootstrap: &str, topic: &str, n: usize) -> Result<f64, String> {
    let out = std::process::Command::new(python)
        .arg(root().join("bench/peer.py"))
        .args(["--bootstrap", bootstrap, "--topic", topic])
        .args(["--group", &unique("peer"), "--records", &n.to_string()])
        .output()
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).map_err(|e| format!("peer output: {e}"))?;
    let records = v["records"].as_f64().unwrap_or(0.0);
    let seconds = v["seconds"].as_f64().unwrap_or(f64::INFINITY);
    Ok(records / seconds)
}

/// Peak RSS (VmHWM) of a `kasm run` process handling `n` records of `topic`, in MiB.
fn kasm_process_rss(bootstrap: &str, topic: &str, n: usize) -> Result<(f64, f64), String> {
    let bin = root().join("target/release/kasm");
    if !bin.is_file() {
        return Err(format!("{} not built", bin.display()));
    }
    let dir = tempfile::tempdir().unwrap();
    let config = kasm_config(dir.path(), topic, 0, 1);
    let mut child = std::process::Command::new(&bin)
        .args(["run", "--config"])
        .arg(&config)
        .env("KAFKA_BOOTSTRAP_SERVERS", bootstrap)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map_err(|e| e.to_string())?;
    let status = format!("/proc/{}/status", child.id());
    let kib = |field: &str| -> f64 {
        std::fs::read_to_string(&status)
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with(field))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|v| v.parse::<f64>().ok())
            })
            .unwrap_or(0.0)
    };
    // Done when the group's committed offsets cover the topic.
    let text = std::fs::read_to_string(&config).unwrap();
    let group = text
        .lines()
        .find_map(|l| l.strip_prefix("group_id = \""))
        .map(|g| g.trim_end_matches('"').to_owned())
        .unwrap();
    let probe: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", &group)
        .create()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let mut tpl = rdkafka::TopicPartitionList::new();
        for p in 0..4 {
            tpl.add_partition(topic, p);
        }
        let committed: i64 = probe
            .committed_offsets(tpl, Duration::from_secs(5))
            .map(|t| {
                t.elements()
                    .iter()
                    .filter_map(|e| e.offset().to_raw())
                    .filter(|o| *o > 0)
                    .sum()
            })
            .unwrap_or(0);
        if committed as usize >= n || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let (hwm, rss) = (kib("VmHWM:") / 1024.0, kib("VmRSS:") / 1024.0);
    let _ = child.kill();
    let _ = child.wait();
    Ok((hwm, rss))
}

fn median_spread(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(f64::total_cmp);
    (v[v.len() / 2], v[0], v[v.len() - 1])
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let n = env_or("KASM_BENCH_RECORDS", 20_000);
    let runs = env_or("KASM_BENCH_RUNS", 3);
    let cluster = EmbeddedCluster::start(1).unwrap();
    let bootstrap = cluster.bootstrap_servers().to_owned();
    let python = peer_python();
    if let Err(e) = &python {
        eprintln!("peer unavailable: {e}");
    }
    let names = [
        "baseline",
        "kasm fresh",
        "kasm reused",
        "kasm fresh, 1024 pending ledger writes",
        "peer",
    ];
    let mut results: Vec<Vec<f64>> = vec![Vec::new(); names.len()];
    for round in 0..runs {
        for (i, name) in names.iter().enumerate() {
            let topic = rt.block_on(fill(&cluster, n));
            let r = match i {
                0 => baseline(&bootstrap, &topic, n),
                1 => rt.block_on(kasm(&bootstrap, &topic, n, 0, 1)),
                2 => rt.block_on(kasm(&bootstrap, &topic, n, 10_000, 1)),
                3 => rt.block_on(kasm(&bootstrap, &topic, n, 0, 1024)),
                _ => match &python {
                    Ok(py) => match peer(py, &bootstrap, &topic, n) {
                        Ok(r) => r,
                        Err(e) => {
                            eprintln!("peer failed: {e}");
                            continue;
                        }
                    },
                    Err(_) => continue,
                },
            };
            eprintln!("round {}: {name:<40} {r:>10.0} records/s", round + 1);
            results[i].push(r);
        }
    }
    println!("\npipeline throughput: {n} records x {runs} rounds, 4 partitions, embedded cluster");
    println!(
        "{:<12} {:>12} {:>12} {:>12}",
        "", "median/s", "min/s", "max/s"
    );
    let mut medians = Vec::new();
    for (name, r) in names.iter().zip(&results) {
        if r.is_empty() {
            println!("{name:<40} {:>12}", "n/a");
            medians.push(f64::NAN);
            continue;
        }
        let (m, lo, hi) = median_spread(r.clone());
        println!("{name:<40} {m:>12.0} {lo:>12.0} {hi:>12.0}");
        medians.push(m);
    }
    for (i, name) in names.iter().enumerate().skip(1).take(3) {
        println!(
            "ratios (medians): {name}: / baseline {:.5}, / peer {:.4}",
            medians[i] / medians[0],
            medians[i] / medians[4]
        );
    }
    let topic = rt.block_on(fill(&cluster, n));
    match kasm_process_rss(&bootstrap, &topic, n) {
        Ok((hwm, rss)) => println!(
            "kasm run (one trivial handler, fresh instances): peak RSS {hwm:.1} MiB, RSS at the end {rss:.1} MiB"
        ),
        Err(e) => println!("kasm run RSS: not measured ({e})"),
    }
}
