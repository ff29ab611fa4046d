//! The batch as the unit of work, with the shipped defaults: a record that fails in the middle
//! of a batch, a kill while batches run, publishes refused while a batch commits.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use kasm_host::config::Config;
use kasm_tests::broker::{Got, Rec, TestBroker, committed_offsets, produce, read_topic};
use kasm_tests::hostproc::HostProcess;
use kasm_tests::{
    KAFKA_TEST_PROPS, Setup, component, count_sources, events, publisher_body, sqlite_ids,
    write_config,
};
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};

/// The partition every record of these tests is on.
const P: i32 = 0;

/// A fixture-sql record inserting row `r-{i}` into `t`, then ending as `then` says.
fn insert(i: usize, then: &str) -> Rec {
    let script = serde_json::json!({
        "steps": [{"execute": "INSERT INTO t (id) VALUES ($1)", "params": [format!("r-{i}")]}],
        "then": then,
    });
    Rec {
        payload: script.to_string().into_bytes(),
        headers: vec![("event-id".into(), format!("b-{i}").into_bytes())],
        partition: Some(P),
        ..Rec::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_failing_mid_batch_is_rolled_back_alone_and_the_offset_waits_for_it() {
    let s = Setup::new(TestBroker::from_env(), 1).await;
    let migrations = s.dir.path().join("migrations");
    std::fs::create_dir_all(&migrations).unwrap();
    // No key: a row inserted twice would show as two.
    std::fs::write(
        migrations.join("001_t.sql"),
        "CREATE TABLE t (id TEXT NOT NULL);",
    )
    .unwrap();
    let db = s.dir.path().join("batch.sqlite");
    let n = 60;
    let (fatal, trap, retried) = (20, 30, 40);
    let recs: Vec<Rec> = (0..n)
        .map(|i| match i {
            _ if i == fatal => insert(i, "fatal"),
            _ if i == trap => insert(i, "panic"),
            _ if i == retried => insert(i, "retryable-once"),
            _ => insert(i, "ok"),
        })
        .collect();
    // All there before the host starts: the first batch takes them together.
    produce(&s.broker.producer(), &s.topic, &recs).await;
    let body = format!(
        "[kafka]\n{KAFKA_TEST_PROPS}\n[handlers.sql]\ncomponent = \"{c}\"\ntopics = [\"{t}\"]\n\
         group_id = \"{g}\"\npayload = \"json\"\n\
         retry = {{ attempts = 3, initial_backoff = \"400ms\", max_backoff = \"1s\", jitter = 0.0 }}\n\
         grants = {{ sql = {{ sqlite = \"{db}\", migrations = \"{m}\" }} }}\n",
        c = component(kasm_tests::components::FIXTURE_SQL).display(),
        t = s.topic,
        g = s.group,
        db = db.display(),
        m = migrations.display(),
    );
    let config = Config::load(&write_config(s.dir.path(), &body)).unwrap();
    let host = kasm_host::app::start(&config, &s.env()).await.unwrap();

    // While it runs: the committed position never passes the retried record before its row
    // exists, nor a dead-lettered one before its dead letter does.
    let dlq = format!("{}.dlq", s.topic);
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut samples = 0;
    loop {
        let committed = committed_offsets(&s.broker.bootstrap(), &s.group, &s.topic)
            .get(&P)
            .copied()
            .unwrap_or(0);
        let now_rows = sqlite_ids(&db);
        if committed > retried as i64 {
            assert_eq!(
                now_rows.get(&format!("r-{retried}")),
                Some(&1),
                "committed {committed}, past the retried record, before its row existed"
            );
        }
        if committed > fatal as i64 {
            let dead = read_topic(&s.broker.bootstrap(), &dlq, 2, Duration::from_millis(500));
            assert!(
                dead.iter()
                    .any(|d| d.headers["kasm-dlq-event-id"] == format!("b-{fatal}")),
                "committed {committed}, past the failed record, before its dead letter existed"
            );
        }
        samples += 1;
        if committed == n as i64 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not everything committed: {committed} of {n}"
        );
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    let stats = host.handlers[0].stats.snapshot();
    host.shutdown().await.unwrap();
    eprintln!("{samples} samples of the committed position; stats {stats:?}");

    // The failed records' writes are rolled back, every other row is there exactly once.
    let rows = sqlite_ids(&db);
    for i in 0..n {
        let want = usize::from(i != fatal && i != trap);
        assert_eq!(
            rows.get(&format!("r-{i}")).copied().unwrap_or(0),
            want,
            "row r-{i}"
        );
    }
    assert!(
        stats.retried >= 1,
        "the retryable record was retried: {stats:?}"
    );
    // Dead-lettered alone, each with its own provenance.
    let dead = read_topic(&s.broker.bootstrap(), &dlq, 2, Duration::from_secs(10));
    assert_eq!(
        dead.len(),
        2,
        "the fatal and the trapped record, nothing else"
    );
    let by_id: HashMap<&str, &Got> = dead
        .iter()
        .map(|d| (d.headers["kasm-dlq-event-id"].as_str(), d))
        .collect();
    for (i, kind) in [(fatal, "fatal"), (trap, "trap")] {
        let d = by_id[format!("b-{i}").as_str()];
        assert_eq!(d.headers["kasm-dlq-error-kind"], kind);
        assert_eq!(d.headers["kasm-dlq-source-offset"], i.to_string());
        assert_eq!(d.headers["kasm-dlq-source-partition"], P.to_string());
        assert_eq!(d.headers["kasm-dlq-attempts"], "1");
    }
}

/// Outputs per source event, and whether every output of one source carries one event id.
fn repeated_with_other_ids(outputs: &[Got]) -> Vec<String> {
    let mut ids: HashMap<String, HashSet<String>> = HashMap::new();
    for o in outputs {
        let source = o.json()["source"].as_str().unwrap_or_default().to_owned();
        ids.entry(source)
            .or_default()
            .insert(o.headers.get("event-id").cloned().unwrap_or_default());
    }
    ids.into_iter()
        .filter(|(_, ids)| ids.len() > 1)
        .map(|(s, _)| s)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_batches_loses_nothing_and_repeats_at_most_a_batch_per_partition() {
    let partitions = 4;
    let s = Setup::new(TestBroker::from_env(), partitions).await;
    let n = 30_000;
    let max_batch = kasm_host::config::defaults::max_batch();
    // Never commit periodically: at every kill everything done so far is only in the ledger.
    let dir = s.dir.path().join("host");
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = write_config(
        &dir,
        &publisher_body(&s, "commit_interval = \"1h\"", "", ""),
    );
    let outputs_so_far = || {
        read_topic(
            &s.broker.bootstrap(),
            &s.out,
            usize::MAX,
            Duration::from_millis(800),
        )
        .len()
    };
    // Each round brings new events, so that every kill lands while batches run: the host is
    // killed moments after its first new output.
    let kills = 3;
    let per_round = n / kills;
    for k in 0..kills {
        produce(
            &s.broker.producer(),
            &s.topic,
            &events("ev", k * per_round..(k + 1) * per_round, &s.out),
        )
        .await;
        let host = HostProcess::start(&cfg, &s.broker.bootstrap());
        // Its own count (the admin API answers at once): killed a few batches in.
        let deadline = Instant::now() + Duration::from_secs(60);
        while host.processed("pub") == 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(2));
        }
        std::thread::sleep(Duration::from_millis(rand::random::<u64>() % 100));
        host.kill();
        eprintln!(
            "kill {}: {} of {} outputs",
            k + 1,
            outputs_so_far(),
            (k + 1) * per_round
        );
    }
    let mut host = HostProcess::start(&cfg, &s.broker.bootstrap());
    host.wait_status("/readyz", 200, Duration::from_secs(60));
    let deadline = Instant::now() + Duration::from_secs(240);
    let outputs = loop {
        let got = read_topic(
            &s.broker.bootstrap(),
            &s.out,
            usize::MAX,
            Duration::from_secs(3),
        );
        if count_sources(&got).len() >= n || Instant::now() > deadline {
            break got;
        }
    };
    host.signal("TERM");
    assert!(host.wait_exit(Duration::from_secs(30)).success());

    let counts = count_sources(&outputs);
    let lost: Vec<String> = (0..n)
        .map(|i| format!("ev-{i}"))
        .filter(|id| !counts.contains_key(id))
        .collect();
    assert!(
        lost.is_empty(),
        "{} events lost, e.g. {:?}",
        lost.len(),
        &lost[..lost.len().min(5)]
    );
    let repeats: usize = counts.values().map(|c| c - 1).sum();
    let bound = kills * partitions as usize * max_batch;
    eprintln!(
        "{kills} kills: {repeats} repeated executions (bound: a batch per partition per kill, {bound})"
    );
    assert!(
        repeats <= bound,
        "{repeats} repeats, more than a batch per partition per kill"
    );
    let other = repeated_with_other_ids(&outputs);
    assert!(
        other.is_empty(),
        "repeated outputs with new event ids: {other:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_refused_in_a_batch_hold_the_offset_before_the_first_unacknowledged_record() {
    let s = Setup::new(TestBroker::embedded(), 1).await;
    let n = 3_000;
    produce(&s.broker.producer(), &s.topic, &events("ev", 0..n, &s.out)).await;
    let body = publisher_body(
        &s,
        "",
        "",
        "retry = { attempts = 30, initial_backoff = \"300ms\", max_backoff = \"300ms\", jitter = 0.0 }",
    );
    // The first produce requests of the host are refused for good (not retried by the
    // producer): publishes of its first batches fail and are sent again.
    s.broker
        .cluster()
        .request_errors(
            RDKafkaApiKey::Produce,
            &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED; 6],
        )
        .unwrap();
    let config = Config::load(&write_config(s.dir.path(), &body)).unwrap();
    let host = kasm_host::app::start(&config, &s.env()).await.unwrap();
    // On one fresh partition ev-i is at offset i: whatever the committed position c, every
    // ev-j with j < c must already have its output.
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut samples = 0;
    loop {
        let committed = committed_offsets(&s.broker.bootstrap(), &s.group, &s.topic)
            .get(&0)
            .copied()
            .unwrap_or(0)
            .max(0) as usize;
        let outputs = count_sources(&read_topic(
            &s.broker.bootstrap(),
            &s.out,
            usize::MAX,
            Duration::from_millis(700),
        ));
        let missing: Vec<String> = (0..committed)
            .map(|j| format!("ev-{j}"))
            .filter(|id| !outputs.contains_key(id))
            .collect();
        assert!(
            missing.is_empty(),
            "committed {committed} while {} records before it had no acknowledged output, e.g. {:?}",
            missing.len(),
            &missing[..missing.len().min(5)]
        );
        samples += 1;
        if committed == n {
            break;
        }
        assert!(Instant::now() < deadline, "committed {committed} of {n}");
    }
    let stats = host.handlers[0].stats.snapshot();
    host.shutdown().await.unwrap();
    eprintln!("{samples} samples; stats {stats:?}");
    assert!(
        stats.retried > 0,
        "some publish was refused and sent again: {stats:?}"
    );
    assert_eq!(stats.processed, n as u64);
}
