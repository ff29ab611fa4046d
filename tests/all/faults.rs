//! Broker faults and health, on the embedded cluster (its fault controls): brokers down,
//! errors injected on produce, offset commit and group join, a dead-letter topic that cannot
//! be written, a consumer loop that dies.

use std::time::{Duration, Instant};

use kasm_host::config::Config;
use kasm_tests::broker::{Rec, TestBroker, committed_offsets, end_offsets, produce, read_topic};
use kasm_tests::hostproc::http_get;
use kasm_tests::{Setup, component, count_sources, events, write_config};
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};

fn load(s: &Setup, fixture: kasm_tests::components::Component, extra: &str, kafka: &str) -> Config {
    load_with_top(s, fixture, "", extra, kafka)
}

/// [`load`] with top-level keys `top` (before the first table).
fn load_with_top(
    s: &Setup,
    fixture: kasm_tests::components::Component,
    top: &str,
    extra: &str,
    kafka: &str,
) -> Config {
    let body = format!(
        "{top}\n[kafka]\n{kafka}\n[handlers.h]\ncomponent = \"{c}\"\ntopics = [\"{t}\"]\ngroup_id = \"{g}\"\n\
         grants = {{ producer = [\"{o}\"], kv = true }}\n{extra}\n",
        c = component(fixture).display(),
        t = s.topic,
        g = s.group,
        o = s.out,
    );
    Config::load(&write_config(s.dir.path(), &body)).unwrap()
}

/// Poll `GET path` until `pred(status, body)` holds (bounded); returns the body.
async fn wait_http(
    addr: &str,
    path: &str,
    timeout: Duration,
    pred: impl Fn(u16, &str) -> bool,
) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        let (code, body) = http_get(addr, path);
        if pred(code, &body) {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "{path} never matched; last: {code} {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn brokers_down_and_injected_errors_lose_nothing() {
    let s = Setup::new(TestBroker::embedded(), 4).await;
    let n = 3_000;
    produce(&s.broker.producer(), &s.topic, &events("ev", 0..n, &s.out)).await;
    let config = load(
        &s,
        kasm_tests::components::FIXTURE_PUBLISHER,
        "",
        kasm_tests::MOCK_PRODUCE_FAULT_PROPS,
    );
    let host = kasm_host::app::start(&config, &s.env()).await.unwrap();
    let admin = host.admin_addr.to_string();
    kasm_tests::wait_processed(&host, 300).await;

    // Every broker down for a few seconds.
    let c = s.broker.cluster();
    for id in 1..=3 {
        c.broker_down(id).unwrap();
    }
    tokio::time::sleep(Duration::from_secs(4)).await;
    for id in 1..=3 {
        c.broker_up(id).unwrap();
    }
    // Then errors on produce (retriable: the producer retries them) and on offset commit.
    c.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS; 10],
    )
    .unwrap();
    c.request_errors(
        RDKafkaApiKey::OffsetCommit,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT; 5],
    )
    .unwrap();

    let mut got = read_topic(&s.broker.bootstrap(), &s.out, n, Duration::from_secs(120));
    let mut sources = count_sources(&got);
    // A repeated output (allowed: at-least-once, and the mock cluster may store a re-sent
    // batch twice after its brokers come back) takes the place of one not read yet: read on
    // until every event has an output or the time is up (dead letters are checked below).
    let deadline = Instant::now() + Duration::from_secs(20);
    while sources.len() < n && Instant::now() < deadline {
        let want = got.len() + (n - sources.len());
        got = read_topic(&s.broker.bootstrap(), &s.out, want, Duration::from_secs(5));
        sources = count_sources(&got);
    }
    // Handled, or dead-lettered with the reason (a publish that kept failing): never lost.
    let dead: Vec<_> = read_topic(
        &s.broker.bootstrap(),
        &format!("{}.dlq", s.topic),
        usize::MAX,
        Duration::from_secs(3),
    );
    let dead_ids: std::collections::HashMap<String, String> = dead
        .iter()
        .map(|d| {
            (
                d.headers
                    .get("kasm-dlq-event-id")
                    .cloned()
                    .unwrap_or_default(),
                format!(
                    "{}: {}",
                    d.headers
                        .get("kasm-dlq-error-kind")
                        .cloned()
                        .unwrap_or_default(),
                    d.headers
                        .get("kasm-dlq-error-message")
                        .cloned()
                        .unwrap_or_default()
                ),
            )
        })
        .collect();
    let missing: Vec<String> = (0..n)
        .map(|i| format!("ev-{i}"))
        .filter(|id| !sources.contains_key(id) && !dead_ids.contains_key(id))
        .collect();
    assert!(
        missing.is_empty(),
        "{} lost, e.g. {:?}; stats {:?}; committed {:?}; dead letters {dead_ids:?}",
        missing.len(),
        &missing[..missing.len().min(5)],
        host.handlers[0].stats.snapshot(),
        committed_offsets(&s.broker.bootstrap(), &s.group, &s.topic),
    );
    if !dead_ids.is_empty() {
        eprintln!("faults: dead-lettered under injected errors: {dead_ids:?}");
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let end = end_offsets(&s.broker.bootstrap(), &s.topic, n);
    loop {
        let committed = committed_offsets(&s.broker.bootstrap(), &s.group, &s.topic);
        if committed == end {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "offsets never committed to the end: committed {committed:?}, end {end:?}, stats {:?}",
            host.handlers[0].stats.snapshot()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    wait_http(&admin, "/readyz", Duration::from_secs(30), |c, _| c == 200).await;
    host.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_dead_letter_write_holds_the_partition_and_readiness_until_it_succeeds() {
    let s = Setup::new(TestBroker::embedded(), 1).await;
    let recs = vec![
        Rec {
            payload: br#"{"action":"fatal","message":"bad"}"#.to_vec(),
            partition: Some(0),
            ..Rec::default()
        },
        Rec {
            payload: format!(r#"{{"action":"echo","topic":"{}","n":1}}"#, s.out).into_bytes(),
            partition: Some(0),
            ..Rec::default()
        },
    ];
    produce(&s.broker.producer(), &s.topic, &recs).await;
    // The next produce requests are refused for good: the dead-letter write fails.
    s.broker
        .cluster()
        .request_errors(
            RDKafkaApiKey::Produce,
            &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED; 4],
        )
        .unwrap();
    let config = load(&s, kasm_tests::components::FIXTURE, "", "");
    let host = kasm_host::app::start(&config, &s.env()).await.unwrap();
    let admin = host.admin_addr.to_string();

    let body = wait_http(&admin, "/readyz", Duration::from_secs(30), |c, b| {
        c == 503 && b.contains("dead-letter write failing")
    })
    .await;
    assert!(
        body.contains(&format!("{}/0", s.topic)),
        "names the held partition: {body}"
    );
    assert_eq!(
        host.handlers[0].stats.snapshot().processed,
        0,
        "the record after it waits"
    );

    wait_http(&admin, "/readyz", Duration::from_secs(60), |c, _| c == 200).await;
    let dlq = read_topic(
        &s.broker.bootstrap(),
        &format!("{}.dlq", s.topic),
        1,
        Duration::from_secs(30),
    );
    assert_eq!(dlq.len(), 1);
    assert_eq!(dlq[0].headers["kasm-dlq-error-kind"], "fatal");
    let out = read_topic(&s.broker.bootstrap(), &s.out, 1, Duration::from_secs(30));
    assert_eq!(
        out.len(),
        1,
        "the partition moved on after the dead letter was written"
    );
    host.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_ready_before_the_first_assignment() {
    let s = Setup::new(TestBroker::embedded(), 2).await;
    // The group coordinator answers "not available" for a while: no assignment yet.
    s.broker
        .cluster()
        .request_errors(
            RDKafkaApiKey::FindCoordinator,
            &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_COORDINATOR_NOT_AVAILABLE; 15],
        )
        .unwrap();
    let config = load(&s, kasm_tests::components::FIXTURE_PUBLISHER, "", "");
    let host = kasm_host::app::start(&config, &s.env()).await.unwrap();
    let admin = host.admin_addr.to_string();
    let (code, body) = http_get(&admin, "/readyz");
    assert_eq!(code, 503, "{body}");
    assert!(
        body.contains("waiting for the first partition assignment"),
        "{body}"
    );
    let (code, _) = http_get(&admin, "/healthz");
    assert_eq!(code, 200, "live while waiting");
    wait_http(&admin, "/readyz", Duration::from_secs(60), |c, _| c == 200).await;
    host.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_fails_when_a_consumer_loop_dies() {
    let s = Setup::new(TestBroker::embedded(), 1).await;
    // Settings the producer accepts but the consumer refuses (fetch.max.bytes must be at least
    // message.max.bytes): the consumer loop cannot start and exits.
    let config = load(
        &s,
        kasm_tests::components::FIXTURE_PUBLISHER,
        "",
        "\"fetch.max.bytes\" = 1000\n\"message.max.bytes\" = 100000",
    );
    let host = kasm_host::app::start(&config, &s.env()).await.unwrap();
    let admin = host.admin_addr.to_string();
    let body = wait_http(&admin, "/healthz", Duration::from_secs(30), |c, _| c == 503).await;
    assert!(body.contains("consumer loop failed"), "{body}");
    let (code, _) = http_get(&admin, "/readyz");
    assert_eq!(code, 503);
    host.shutdown().await.unwrap();
}

/// How many times the handler `h` was called, from `/metrics`.
fn calls(admin: &str) -> u64 {
    metric(admin, "kasm_handler_call_seconds_count", &["handler=\"h\""])
}

/// The value of the first series of `/metrics` named `name` whose labels include `labels`.
fn metric(admin: &str, name: &str, labels: &[&str]) -> u64 {
    let (code, text) = http_get(admin, "/metrics");
    assert_eq!(code, 200, "{text}");
    text.lines()
        .find(|l| l.starts_with(name) && labels.iter().all(|w| l.contains(w)))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

/// With records in flight (`pending_ledger_writes` > 1), failed publishes. Produces `n` events
/// on one partition, starts the host with the ledger in `ledger_store`, injects `errors`
/// refused produce requests once it is under way, and returns what came out: (outputs per
/// source event, dead letters, handler calls, stats). With `ledger_store = "kafka"` the
/// refusals can hit the batches' ledger writes as well as their publishes (both are produce
/// requests).
async fn publishes_refused_in_flight(
    s: &Setup,
    ledger_store: &str,
    n: usize,
    attempts: u32,
    errors: usize,
) -> (
    std::collections::HashMap<String, usize>,
    Vec<kasm_tests::broker::Got>,
    u64,
    kasm_host::handler::StatsSnapshot,
    u64,
) {
    produce(&s.broker.producer(), &s.topic, &events("ev", 0..n, &s.out)).await;
    let extra = format!(
        "pending_ledger_writes = 32\n\
         retry = {{ attempts = {attempts}, initial_backoff = \"50ms\", max_backoff = \"200ms\", jitter = 0.0 }}\n"
    );
    let top = format!("ledger_store = \"{ledger_store}\"");
    let config = load_with_top(
        s,
        kasm_tests::components::FIXTURE_PUBLISHER,
        &top,
        &extra,
        "",
    );
    let host = kasm_host::app::start(&config, &s.env()).await.unwrap();
    let admin = host.admin_addr.to_string();
    kasm_tests::wait_processed(&host, 100).await;
    // Refused for good (not retried by the producer): the publishes in those requests fail.
    s.broker
        .cluster()
        .request_errors(
            RDKafkaApiKey::Produce,
            &vec![RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED; errors],
        )
        .unwrap();
    let (end, committed) =
        kasm_tests::wait_committed(s, &s.group, n, Duration::from_secs(90)).await;
    assert_eq!(
        committed, end,
        "every offset committed once handled or dead-lettered"
    );
    let outputs = count_sources(&read_topic(
        &s.broker.bootstrap(),
        &s.out,
        usize::MAX,
        Duration::from_secs(3),
    ));
    let dead = read_topic(
        &s.broker.bootstrap(),
        &format!("{}.dlq", s.topic),
        usize::MAX,
        Duration::from_secs(3),
    );
    let calls = calls(&admin);
    let ledger_write_errors = metric(&admin, "kasm_ledger_write_errors_total", &["handler=\"h\""]);
    let stats = host.handlers[0].stats.snapshot();
    host.shutdown().await.unwrap();
    (outputs, dead, calls, stats, ledger_write_errors)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_records_in_flight_a_refused_publish_is_sent_again_without_running_the_handler() {
    // The file ledger: every refused produce request is one of the handler's publishes.
    refused_writes_are_sent_again_without_running_the_handler("file").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_ledger_write_is_sent_again_without_running_the_handler() {
    // The Kafka ledger (the default): the refusals hit publishes and ledger writes alike.
    refused_writes_are_sent_again_without_running_the_handler("kafka").await;
}

async fn refused_writes_are_sent_again_without_running_the_handler(ledger_store: &str) {
    let s = Setup::new(TestBroker::embedded(), 1).await;
    let n = 2_000;
    let (outputs, dead, calls, stats, ledger_write_errors) =
        publishes_refused_in_flight(&s, ledger_store, n, 20, 4).await;
    let missing: Vec<String> = (0..n)
        .map(|i| format!("ev-{i}"))
        .filter(|id| !outputs.contains_key(id))
        .collect();
    assert!(
        missing.is_empty(),
        "{} events have no output, e.g. {:?}; dead letters {}; stats {stats:?}",
        missing.len(),
        &missing[..missing.len().min(5)],
        dead.len()
    );
    assert!(
        dead.is_empty(),
        "nothing dead-lettered with attempts to spare"
    );
    assert_eq!(
        calls, n as u64,
        "the handler ran once per event; the refused publishes were sent again on their own"
    );
    // Every event ran or was recognised. With the Kafka ledger a refused write can be
    // acknowledged in part, so a record may show as skipped when its batch is taken up again.
    assert_eq!(stats.processed + stats.skipped, n as u64, "{stats:?}");
    if ledger_store == "file" {
        assert!(
            stats.retried > 0,
            "some publish was refused and sent again: {stats:?}"
        );
        assert_eq!(stats.processed, n as u64, "{stats:?}");
        assert_eq!(
            ledger_write_errors, 0,
            "the file ledger writes no produce request"
        );
    } else {
        // Each refusal hit a publish (sent again: `retried`) or a ledger write (counted).
        eprintln!(
            "publishes retried {}, ledger writes refused {ledger_write_errors}",
            stats.retried
        );
        assert!(
            stats.retried + ledger_write_errors > 0,
            "the refusals hit nothing: {stats:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_records_in_flight_a_publish_refused_past_the_attempts_is_dead_lettered() {
    let s = Setup::new(TestBroker::embedded(), 1).await;
    let n = 2_000;
    // The file ledger: every refused request is one of the handler's publishes, whose
    // attempts it uses up.
    let (outputs, dead, calls, stats, _) = publishes_refused_in_flight(&s, "file", n, 1, 3).await;
    assert!(
        !dead.is_empty(),
        "a refused publish with no attempt left is dead-lettered"
    );
    let mut dead_ids = std::collections::HashSet::new();
    for d in &dead {
        let h = &d.headers;
        assert_eq!(h["kasm-dlq-error-kind"], "retries-exhausted", "{h:#?}");
        assert_eq!(h["kasm-dlq-attempts"], "1", "{h:#?}");
        assert!(
            h["kasm-dlq-error-message"].contains("publishing the handler's records failed"),
            "{h:#?}"
        );
        assert_eq!(h["kasm-dlq-source-topic"], s.topic);
        dead_ids.insert(h["kasm-dlq-event-id"].clone());
    }
    let missing: Vec<String> = (0..n)
        .map(|i| format!("ev-{i}"))
        .filter(|id| !outputs.contains_key(id) && !dead_ids.contains(id))
        .collect();
    assert!(
        missing.is_empty(),
        "{} events neither handled nor dead-lettered, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    assert_eq!(calls, n as u64, "the handler ran once per event");
    assert_eq!(
        stats.processed + stats.dead_lettered,
        n as u64,
        "each event counted once, handled or dead-lettered: {stats:?}"
    );
}

/// The `kasm_offset_commits_total` of handler `h` with `result`.
fn commits(admin: &str, result: &str) -> u64 {
    let result = format!("result=\"{result}\"");
    metric(
        admin,
        "kasm_offset_commits_total",
        &["handler=\"h\"", &result],
    )
}

/// A commit refused because the group is rebalancing means the next owner of the partitions
/// will start from the last accepted commit: the host handles no new record until the
/// rebalance reaches it — or, when none comes (here the refusals are injected), until a
/// commit is accepted again. Nothing is lost or run twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_refused_for_a_rebalance_holds_records_until_a_commit_is_accepted() {
    let s = Setup::new(TestBroker::embedded(), 4).await;
    // Enough records that some are left when the second refusal comes (two commit intervals
    // after the first 200 are handled), however fast the batches go.
    let n = 40_000;
    produce(&s.broker.producer(), &s.topic, &events("ev", 0..n, &s.out)).await;
    let config = load(&s, kasm_tests::components::FIXTURE_PUBLISHER, "", "");
    let host = kasm_host::app::start(&config, &s.env()).await.unwrap();
    let admin = host.admin_addr.to_string();
    let processed = || host.handlers[0].stats.snapshot().processed;
    kasm_tests::wait_processed(&host, 200).await;
    let refusals = 15;
    s.broker
        .cluster()
        .request_errors(
            RDKafkaApiKey::OffsetCommit,
            &vec![RDKafkaRespErr::RD_KAFKA_RESP_ERR_REBALANCE_IN_PROGRESS; refusals],
        )
        .unwrap();
    // Two refusals seen: the records in hand at the first are done by now.
    let deadline = Instant::now() + Duration::from_secs(30);
    while commits(&admin, "rebalancing") < 2 {
        assert!(Instant::now() < deadline, "no commit refused");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (p1, ok1) = (processed(), commits(&admin, "ok"));
    eprintln!("processed {p1} of {n} at the second refusal");
    tokio::time::sleep(Duration::from_millis(600)).await;
    let (p2, ok2, refused) = (
        processed(),
        commits(&admin, "ok"),
        commits(&admin, "rebalancing"),
    );
    assert!(
        (p1 as usize) < n,
        "records were left to hold back: processed {p1} of {n} at the second refusal"
    );
    if ok2 == ok1 {
        assert_eq!(
            p2, p1,
            "records handled while every commit was refused for a rebalance \
             ({refused} refused, none accepted)"
        );
    }
    // The refusals run out, a commit is accepted, and the rest is handled.
    let (end, committed) =
        kasm_tests::wait_committed(&s, &s.group, n, Duration::from_secs(60)).await;
    assert_eq!(committed, end, "every offset committed");
    let outputs = count_sources(&read_topic(
        &s.broker.bootstrap(),
        &s.out,
        n,
        Duration::from_secs(30),
    ));
    kasm_tests::assert_each_once(&outputs, "ev", n);
    assert_eq!(
        commits(&admin, "rebalancing"),
        refusals as u64,
        "each refused commit is counted"
    );
    host.shutdown().await.unwrap();
}
