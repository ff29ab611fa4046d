//! The pipeline end to end, in process: a real broker (embedded, or `KASM_TEST_BOOTSTRAP`),
//! the real components, the real ledger.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use kasm_host::config::Config;
use kasm_tests::broker::{Rec, TestBroker, produce, read_topic};
use kasm_tests::{KAFKA_TEST_PROPS, Setup, component, count_sources, events, write_config};

/// An expected dead letter: error kind and attempts.
type Expected = (&'static str, u32);

fn publisher_config(s: &Setup, extra: &str) -> Config {
    let body = format!(
        "[kafka]\n{k}\n[handlers.pub]\ncomponent = \"{c}\"\ntopics = [\"{t}\"]\ngroup_id = \"{g}\"\n\
         grants = {{ producer = [\"{o}\"] }}\n{extra}\n",
        k = KAFKA_TEST_PROPS,
        c = component(kasm_tests::components::FIXTURE_PUBLISHER).display(),
        t = s.topic,
        g = s.group,
        o = s.out,
    );
    Config::load(&write_config(s.dir.path(), &body)).unwrap()
}

async fn wait_committed(
    s: &Setup,
    records: usize,
    timeout: Duration,
) -> (HashMap<i32, i64>, HashMap<i32, i64>) {
    kasm_tests::wait_committed(s, &s.group, records, timeout).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_events_each_handled_exactly_once_and_committed() {
    let s = Setup::new(TestBroker::from_env(), 4).await;
    let n = 10_000;
    produce(&s.broker.producer(), &s.topic, &events("e", 0..n, &s.out)).await;
    let config = publisher_config(&s, "");
    let host = kasm_host::app::start(&config, &s.env()).await.unwrap();

    let outputs = read_topic(&s.broker.bootstrap(), &s.out, n, Duration::from_secs(240));
    kasm_tests::assert_each_once(&count_sources(&outputs), "e", n);
    assert_eq!(outputs.len(), n);

    let (end, committed) = wait_committed(&s, n, Duration::from_secs(30)).await;
    assert_eq!(committed, end, "committed offsets equal the end offsets");
    let stats = host.handlers[0].stats.snapshot();
    assert_eq!(stats.processed, n as u64);
    assert_eq!(stats.dead_lettered, 0);
    host.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_event_id_at_two_offsets_is_handled_once() {
    let n = 200;
    let (counts, processed, skipped) = the_same_events_twice(n, "").await;
    assert_eq!(counts.len(), n);
    assert!(
        counts.values().all(|c| *c == 1),
        "every event id handled once"
    );
    assert_eq!((processed, skipped), (n as u64, n as u64));
}

/// `ledger = false` is plain at-least-once: nothing is looked up, so an event id that comes
/// again at a later offset is handled again, and every record is committed all the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_ledger_off_the_same_event_id_at_two_offsets_is_handled_twice() {
    let n = 200;
    let (counts, processed, skipped) = the_same_events_twice(n, "ledger = false").await;
    assert_eq!(counts.len(), n);
    assert!(
        counts.values().all(|c| *c == 2),
        "every event id handled at each of its offsets: {counts:?}"
    );
    assert_eq!((processed, skipped), (2 * n as u64, 0));
}

/// `n` events over 2 partitions, then the same event ids again at later offsets (under another
/// key); once the handler has seen all `2 n` records and they are committed: how many outputs
/// each event id has, and the handler's processed and skipped counts.
async fn the_same_events_twice(n: usize, extra: &str) -> (HashMap<String, usize>, u64, u64) {
    let s = Setup::new(TestBroker::from_env(), 2).await;
    let mut recs = events("dup", 0..n, &s.out);
    // The same events again, later in the topic, at new offsets (other partitions too).
    let mut again = events("dup", 0..n, &s.out);
    for r in &mut again {
        r.key = Some(b"other-key".to_vec());
    }
    recs.extend(again);
    produce(&s.broker.producer(), &s.topic, &recs).await;
    let config = publisher_config(&s, extra);
    let host = kasm_host::app::start(&config, &s.env()).await.unwrap();

    let deadline = Instant::now() + Duration::from_secs(120);
    while host.handlers[0].stats.snapshot().processed + host.handlers[0].stats.snapshot().skipped
        < 2 * n as u64
    {
        assert!(
            Instant::now() < deadline,
            "not all records seen: {:?}",
            host.handlers[0].stats.snapshot()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (end, committed) = wait_committed(&s, 2 * n, Duration::from_secs(30)).await;
    assert_eq!(committed, end, "every record committed");
    let outputs = read_topic(&s.broker.bootstrap(), &s.out, 4 * n, Duration::from_secs(5));
    let stats = host.handlers[0].stats.snapshot();
    host.shutdown().await.unwrap();
    (count_sources(&outputs), stats.processed, stats.skipped)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_records_are_dead_lettered_with_provenance_and_the_partition_moves_on() {
    let s = Setup::new(TestBroker::from_env(), 1).await;
    let body = format!(
        "[kafka]\n{k}\n[handlers.fx]\ncomponent = \"{c}\"\ntopics = [\"{t}\"]\ngroup_id = \"{g}\"\npayload = \"json\"\n\
         max_payload_bytes = 4096\ndeadline = \"300ms\"\nmemory_mib = 16\n\
         grants = {{ producer = [\"{o}\"], kv = true }}\n\
         retry = {{ attempts = 3, initial_backoff = \"100ms\", max_backoff = \"1s\", jitter = 0.0 }}\n",
        k = KAFKA_TEST_PROPS,
        c = component(kasm_tests::components::FIXTURE).display(),
        t = s.topic,
        g = s.group,
        o = s.out,
    );
    let config = Config::load(&write_config(s.dir.path(), &body)).unwrap();
    let echo = |n: u32| format!(r#"{{"action":"echo","topic":"{}","n":{n}}}"#, s.out).into_bytes();
    let big = format!(r#"{{"action":"echo","pad":"{}"}}"#, "x".repeat(5000)).into_bytes();
    // (payload, expected dead letter: error kind and attempts)
    let cases: Vec<(Vec<u8>, Option<Expected>)> = vec![
        (echo(1), None),
        (b"{not json".to_vec(), Some(("undecodable", 0))),
        (big, Some(("undecodable", 0))),
        (
            br#"{"action":"fatal","message":"no such task"}"#.to_vec(),
            Some(("fatal", 1)),
        ),
        (
            br#"{"action":"panic","message":"boom-42"}"#.to_vec(),
            Some(("trap", 1)),
        ),
        (br#"{"action":"loop"}"#.to_vec(), Some(("timeout", 1))),
        (br#"{"action":"oom"}"#.to_vec(), Some(("out-of-memory", 1))),
        (
            br#"{"action":"retryable","message":"still down"}"#.to_vec(),
            Some(("retries-exhausted", 3)),
        ),
        (echo(2), None),
    ];
    let recs: Vec<Rec> = cases
        .iter()
        .enumerate()
        .map(|(i, (p, _))| Rec {
            key: Some(format!("key-{i}").into_bytes()),
            payload: p.clone(),
            headers: vec![("trace".into(), format!("t{i}").into_bytes())],
            partition: Some(0),
        })
        .collect();
    produce(&s.broker.producer(), &s.topic, &recs).await;
    let host = kasm_host::app::start(&config, &s.env()).await.unwrap();

    let dlq = read_topic(
        &s.broker.bootstrap(),
        &format!("{}.dlq", s.topic),
        7,
        Duration::from_secs(60),
    );
    let expected: Vec<(usize, &str, u32)> = cases
        .iter()
        .enumerate()
        .filter_map(|(i, (_, e))| e.map(|(k, a)| (i, k, a)))
        .collect();
    assert_eq!(
        dlq.len(),
        expected.len(),
        "one dead letter per poison record: {dlq:#?}"
    );
    for (d, (offset, kind, attempts)) in dlq.iter().zip(&expected) {
        let h = &d.headers;
        assert_eq!(h["kasm-dlq-error-kind"], *kind, "{h:#?}");
        assert_eq!(h["kasm-dlq-attempts"], attempts.to_string(), "{h:#?}");
        assert_eq!(h["kasm-dlq-source-topic"], s.topic);
        assert_eq!(h["kasm-dlq-source-partition"], "0");
        assert_eq!(h["kasm-dlq-source-offset"], offset.to_string());
        assert_eq!(h["kasm-dlq-handler"], "fx");
        assert_eq!(h["kasm-dlq-group"], s.group);
        assert_eq!(h["kasm-dlq-component"].len(), 64);
        assert_eq!(h["trace"], format!("t{offset}"), "original headers kept");
        assert_eq!(
            d.key.as_deref(),
            Some(format!("key-{offset}").as_bytes()),
            "original key kept"
        );
        assert_eq!(d.payload, cases[*offset].0, "original payload kept");
    }
    assert!(
        dlq[3].headers["kasm-dlq-error-message"].contains("boom-42"),
        "panic message kept"
    );
    // Retries followed the policy: attempts 2 and 3 waited 100 ms and 200 ms.
    let r = &dlq[6].headers;
    let spread: i64 = r["kasm-dlq-last-failure"].parse::<i64>().unwrap()
        - r["kasm-dlq-first-failure"].parse::<i64>().unwrap();
    assert!(
        spread >= 300,
        "retries were spaced by the backoff: {spread} ms"
    );
    assert!(spread < 3000, "and not much more: {spread} ms");

    // The records around the poison were processed, in order.
    let outputs = read_topic(&s.broker.bootstrap(), &s.out, 2, Duration::from_secs(30));
    let ns: Vec<i64> = outputs
        .iter()
        .map(|o| o.json()["n"].as_i64().unwrap_or(-1))
        .collect();
    assert_eq!(ns, [1, 2]);
    let stats = host.handlers[0].stats.snapshot();
    assert_eq!(stats.dead_lettered, 7);
    assert_eq!(stats.retried, 2);
    let (end, committed) = wait_committed(&s, cases.len(), Duration::from_secs(10)).await;
    assert_eq!(committed, end);
    host.shutdown().await.unwrap();
}

/// A partition whose backlog waits in librdkafka (more than the worker's intake, in the
/// partition's own queue) when a rebalance takes it away must still be consumed when it comes
/// back: its queue is split again after the assignment (and it is never left paused:
/// librdkafka keeps an application pause through revoke and re-assign).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_with_a_backlog_is_consumed_again_after_a_rebalance() {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let s = Setup::new(TestBroker::from_env(), 4).await;
    let n = 4_000;
    produce(&s.broker.producer(), &s.topic, &events("bp", 0..n, &s.out)).await;
    // A small intake and prefetch: every partition's backlog waits in librdkafka.
    let config = publisher_config(&s, "partition_buffer = 4\n");
    let host = kasm_host::app::start(&config, &s.env()).await.unwrap();
    kasm_tests::wait_processed(&host, 200).await;
    // Another member joins the group (everything is revoked and split), holds its share
    // without committing, then leaves (everything comes back to the host).
    let bootstrap = s.broker.bootstrap();
    let (group, topic) = (s.group.clone(), s.topic.clone());
    tokio::task::spawn_blocking(move || {
        let intruder: BaseConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .set("group.id", &group)
            .set("enable.auto.commit", "false")
            .set("session.timeout.ms", "6000")
            .set("heartbeat.interval.ms", "500")
            .create()
            .unwrap();
        intruder.subscribe(&[&topic]).unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        while intruder.assignment().map(|a| a.count()).unwrap_or(0) == 0 {
            assert!(
                Instant::now() < deadline,
                "the second member got no partition"
            );
            let _ = intruder.poll(Duration::from_millis(100));
        }
        intruder.unsubscribe();
    })
    .await
    .unwrap();

    let outputs = read_topic(&s.broker.bootstrap(), &s.out, n, Duration::from_secs(120));
    let counts = count_sources(&outputs);
    let missing = (0..n)
        .filter(|i| !counts.contains_key(&format!("bp-{i}")))
        .count();
    assert_eq!(
        missing, 0,
        "events never handled after the rebalance: {missing} of {n}"
    );
    host.shutdown().await.unwrap();
}

/// With ledger writes overlapping the next records (`pending_ledger_writes` > 1), every event is
/// still handled once — a duplicate right behind its original is skipped while the original's
/// entry is in flight — and the offsets reach the end only through durable entries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlapping_ledger_writes_keep_exactly_once_and_commit_everything() {
    let s = Setup::new(TestBroker::from_env(), 4).await;
    let n = 5_000;
    let mut recs = Vec::new();
    for chunk in events("ov", 0..n, &s.out).chunks(50) {
        recs.extend_from_slice(chunk);
        // The chunk's first event again, keyed like the original (same partition, right behind).
        recs.push(chunk[0].clone());
    }
    let total = recs.len();
    produce(&s.broker.producer(), &s.topic, &recs).await;
    let config = publisher_config(&s, "pending_ledger_writes = 512\n");
    let host = kasm_host::app::start(&config, &s.env()).await.unwrap();
    let outputs = read_topic(&s.broker.bootstrap(), &s.out, n, Duration::from_secs(240));
    let counts = count_sources(&outputs);
    assert_eq!(counts.len(), n, "every event handled");
    assert!(counts.values().all(|c| *c == 1), "each once");
    let (end, committed) = wait_committed(&s, total, Duration::from_secs(60)).await;
    assert_eq!(committed, end, "committed offsets equal the end offsets");
    let stats = host.handlers[0].stats.snapshot();
    assert_eq!(
        (stats.processed, stats.skipped),
        (n as u64, (total - n) as u64)
    );
    host.shutdown().await.unwrap();
}
