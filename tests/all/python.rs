//! Handlers written in Python (`handlers/python/`, built with `guest-sdk-python`) under the
//! real host: the task-app services held to the same end-to-end tests as the Rust ones, a
//! narrow world accepted with only the grant it needs, and every failure kind a Python
//! handler can end in.
//!
//! Python components are ~18 MB and take seconds to compile; `kasm run` keeps the compiled
//! artifact in `KASM_CACHE_DIR` (the hosts tests start share one), so each is compiled once per run. The
//! tests here take turns (one lock), so that no two compile the same component at once.

use std::time::Duration;

use tokio::sync::{Mutex, MutexGuard};

use kasm_host::capabilities::sql::SqlTarget;
use kasm_tests::broker::{Rec, TestBroker, produce, read_topic};
use kasm_tests::hostproc::HostProcess;
use kasm_tests::{KAFKA_TEST_PROPS, Setup, count_sources, events, unique, write_config};

use super::services;

static TURN: Mutex<()> = Mutex::const_new(());

/// This test's turn among the Python tests (a test that fails passes the turn on).
async fn turn() -> MutexGuard<'static, ()> {
    TURN.lock().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_audit_on_sqlite_writes_exactly_one_row_per_event() {
    let _turn = turn().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("audit.sqlite");
    let grant = format!("sqlite = \"{}\"", file.display());
    services::audit_writes_one_row_per_event("py-audit", SqlTarget::Sqlite(file), &grant, &[])
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_audit_on_postgres_writes_exactly_one_row_per_event() {
    let _turn = turn().await;
    let url = super::sql::pg_schema().await;
    services::audit_writes_one_row_per_event(
        "py-audit",
        SqlTarget::Postgres(url.clone()),
        "url_env = \"AUDIT_DATABASE_URL\"",
        &[("AUDIT_DATABASE_URL", &url)],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_task_events_are_audited_and_recurring_tasks_continue() {
    let _turn = turn().await;
    services::audited_and_continued("py-audit", "py-recurring").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_notification_posts_each_reminder_once_with_its_idempotency_key() {
    let _turn = turn().await;
    services::posted_once("py-notification").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_notification_retries_a_503_until_delivered() {
    let _turn = turn().await;
    services::delivered_on_the_third_try("py-notification").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_notification_dead_letters_a_400_as_fatal() {
    let _turn = turn().await;
    services::dead_lettered_on_a_400("py-notification").await;
}

/// The component built for `producer` imports nothing else that needs a grant: it starts
/// where only `producer` is granted, and publishes one output per event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_handler_granted_only_producer_starts_and_publishes_every_event() {
    let _turn = turn().await;
    let s = Setup::new(TestBroker::from_env(), 4).await;
    let n = 500;
    produce(&s.broker.producer(), &s.topic, &events("ev", 0..n, &s.out)).await;
    let body = format!(
        "[kafka]\n{KAFKA_TEST_PROPS}\n[handlers.pub]\ncomponent = \"{c}\"\ntopics = [\"{t}\"]\n\
         group_id = \"{g}\"\ngrants = {{ producer = [\"{o}\"] }}\n",
        c = kasm_tests::component("py-producer-only").display(),
        t = s.topic,
        g = s.group,
        o = s.out,
    );
    let cfg = write_config(s.dir.path(), &body);
    let mut host = HostProcess::start(&cfg, &s.broker.bootstrap());
    let outputs = read_topic(&s.broker.bootstrap(), &s.out, n, Duration::from_secs(120));
    host.signal("TERM");
    assert!(host.wait_exit(Duration::from_secs(30)).success());
    let counts = count_sources(&outputs);
    kasm_tests::assert_each_once(&counts, "ev", n);
    assert!(
        outputs.iter().all(|o| o.json()["version"] == "py"),
        "every output is the Python handler's"
    );
    // The compiled artifact went to the shared cache the host was pointed at
    // (`KASM_CACHE_DIR`), not to its data folder.
    let bytes = std::fs::read(kasm_tests::component("py-producer-only")).unwrap();
    let sha = kasm_host::runtime::sha256_hex(&bytes);
    let cached = std::fs::read_dir(kasm_tests::shared_cache_dir())
        .unwrap()
        .filter_map(Result::ok)
        .any(|e| e.file_name().to_string_lossy().starts_with(&sha));
    assert!(cached, "no artifact for {sha} in the shared cache");
    assert!(!s.dir.path().join("data/artifacts").exists());
}

/// `kasm validate` names a Python component's language and the instance policy it gets by
/// default (the one the host applies when `instance_reuse` is not set); a Rust one has none.
#[test]
fn a_python_component_says_it_is_python_and_defaults_to_reused_instances() {
    let validate = |name: &str| {
        let out = std::process::Command::new(kasm_tests::kasm_bin())
            .args(["validate", "--grant", "producer"])
            .arg(kasm_tests::component(name))
            .env("KASM_CACHE_DIR", kasm_tests::shared_cache_dir())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let py = validate("py-producer-only");
    assert!(
        py.contains(&format!(
            "language   python (an instance serves {} records",
            kasm_host::runtime::INTERPRETED_INSTANCE_REUSE
        )),
        "{py}"
    );
    let rust = validate("fixture-publisher");
    assert!(!rust.contains("language"), "{rust}");
}

/// One topic per failing fixture, with its dead-letter topic.
struct Failing {
    topic: String,
    handler: &'static str,
}

/// A handler with a bug traps, with its Python traceback in the dead letter; one whose
/// dependency is down is retried (and handled once it is back, or dead-lettered when its
/// attempts run out); one that never returns times out; one that keeps allocating is stopped
/// at its memory cap. Each dead letter carries its provenance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_failures_end_as_trap_retry_timeout_and_out_of_memory() {
    let _turn = turn().await;
    let broker = TestBroker::from_env();
    let dir = tempfile::tempdir().unwrap();
    let group = unique("py-failures");
    let mut failing = Vec::new();
    let mut tables = String::new();
    for (handler, component, extra) in [
        ("raises", "py-raises", ""),
        (
            "retryable",
            "py-retryable",
            "retry = { attempts = 3, initial_backoff = \"50ms\", max_backoff = \"100ms\" }\n",
        ),
        ("loops", "py-loops", "deadline = \"500ms\"\n"),
        ("grows", "py-grows", "memory_mib = 32\n"),
    ] {
        let topic = unique(&format!("py-{handler}"));
        broker.create_topic(&topic, 1).await;
        broker.create_topic(&format!("{topic}.dlq"), 1).await;
        tables.push_str(&format!(
            "[handlers.{handler}]\ncomponent = \"{c}\"\ntopics = [\"{topic}\"]\n\
             group_id = \"{group}-{handler}\"\n{extra}\n",
            c = kasm_tests::component(component).display(),
        ));
        failing.push(Failing { topic, handler });
    }
    let record = |id: &str, payload: &str| Rec {
        key: Some(b"k".to_vec()),
        payload: payload.as_bytes().to_vec(),
        headers: vec![("event-id".into(), id.as_bytes().to_vec())],
        partition: None,
    };
    let producer = broker.producer();
    produce(&producer, &failing[0].topic, &[record("bug-1", "3")]).await;
    produce(
        &producer,
        &failing[1].topic,
        &[
            record("down-1", "{}"),
            record("back-1", "{\"succeed_on_attempt\": 2}"),
        ],
    )
    .await;
    produce(&producer, &failing[2].topic, &[record("spin-1", "{}")]).await;
    produce(&producer, &failing[3].topic, &[record("hog-1", "{}")]).await;

    let cfg = write_config(
        dir.path(),
        &format!("[kafka]\n{KAFKA_TEST_PROPS}\n{tables}"),
    );
    let mut host = HostProcess::start(&cfg, &broker.bootstrap());
    let dead = |f: &Failing| {
        read_topic(
            &broker.bootstrap(),
            &format!("{}.dlq", f.topic),
            1,
            Duration::from_secs(120),
        )
    };
    let dlqs: Vec<_> = failing.iter().map(dead).collect();
    // The retried record that succeeds is committed after the one before it is dead-lettered.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while kasm_tests::broker::committed_offsets(
        &broker.bootstrap(),
        &format!("{group}-retryable"),
        &failing[1].topic,
    )
    .get(&0)
    .copied()
    .unwrap_or(0)
        < 2
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the retried record was never committed; kasm's output:\n{}",
            host.printed()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    host.signal("TERM");
    assert!(host.wait_exit(Duration::from_secs(30)).success());
    let output = host.printed();

    for (f, dlq) in failing.iter().zip(&dlqs) {
        assert_eq!(
            dlq.len(),
            1,
            "{}: one dead letter; kasm's output:\n{output}",
            f.handler
        );
        let h = &dlq[0].headers;
        assert_eq!(h["kasm-dlq-handler"], f.handler);
        assert_eq!(h["kasm-dlq-group"], format!("{group}-{}", f.handler));
        assert_eq!(h["kasm-dlq-source-topic"], f.topic);
        assert_eq!(h["kasm-dlq-component"].len(), 64, "{h:?}");
    }
    let (trap, retried, timeout, oom) = (
        &dlqs[0][0].headers,
        &dlqs[1][0].headers,
        &dlqs[2][0].headers,
        &dlqs[3][0].headers,
    );
    assert_eq!(trap["kasm-dlq-error-kind"], "trap", "{trap:?}");
    let message = &trap["kasm-dlq-error-message"];
    assert!(
        message.contains("Traceback")
            && message.contains("ValueError: event bug-1 has a quantity but no order"),
        "the trap carries the Python traceback: {message}"
    );
    assert_eq!(trap["kasm-dlq-event-id"], "bug-1");
    assert_eq!(
        retried["kasm-dlq-error-kind"], "retries-exhausted",
        "{retried:?}"
    );
    assert_eq!(retried["kasm-dlq-attempts"], "3");
    assert_eq!(retried["kasm-dlq-event-id"], "down-1");
    assert!(
        retried["kasm-dlq-error-message"].contains("the dependency is unavailable"),
        "{retried:?}"
    );
    assert_eq!(timeout["kasm-dlq-error-kind"], "timeout", "{timeout:?}");
    assert_eq!(oom["kasm-dlq-error-kind"], "out-of-memory", "{oom:?}");
    // The record whose dependency came back was handled on its second attempt.
    let line = host.wait_line("kasm: handler retryable:", Duration::from_secs(5));
    assert!(
        line.contains("processed 1 ") && line.contains("dead-lettered 1"),
        "{line}"
    );
}

/// A task event the Python audit handler cannot decode is dead-lettered once, as `fatal`, with
/// its provenance and the reason; the good events around it are audited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_audit_dead_letters_a_poison_record_once_with_its_provenance() {
    let _turn = turn().await;
    let s = Setup::new(TestBroker::from_env(), 1).await;
    let db = s.dir.path().join("audit.sqlite");
    let body = format!(
        "[kafka]\n{KAFKA_TEST_PROPS}\n[handlers.audit]\ncomponent = \"{c}\"\n\
         topics = [\"{t}\"]\ngroup_id = \"{g}\"\npayload = \"json\"\n\
         grants = {{ sql = {{ sqlite = \"{db}\", migrations = \"{m}\" }} }}\n",
        c = kasm_tests::component("py-audit").display(),
        t = s.topic,
        g = s.group,
        db = db.display(),
        m = kasm_tests::root()
            .join("handlers/audit/migrations")
            .display(),
    );
    let poison = Rec {
        key: Some(b"u1".to_vec()),
        payload: br#"{"event_type": "task.completed", "nope": 1}"#.to_vec(),
        headers: vec![("event-id".into(), b"poison-1".to_vec())],
        partition: None,
    };
    let not_json = Rec {
        key: Some(b"u1".to_vec()),
        payload: b"{not json".to_vec(),
        headers: vec![("event-id".into(), b"poison-2".to_vec())],
        partition: None,
    };
    produce(&s.broker.producer(), &s.topic, &[poison, not_json]).await;
    let cfg = write_config(s.dir.path(), &body);
    let mut host = HostProcess::start(&cfg, &s.broker.bootstrap());
    let dlq = read_topic(
        &s.broker.bootstrap(),
        &format!("{}.dlq", s.topic),
        2,
        Duration::from_secs(120),
    );
    kasm_tests::wait_committed(&s, &s.group, 2, Duration::from_secs(60)).await;
    host.signal("TERM");
    assert!(host.wait_exit(Duration::from_secs(30)).success());
    assert_eq!(dlq.len(), 2, "each poison record dead-lettered once");
    let fatal = &dlq[0].headers;
    assert_eq!(fatal["kasm-dlq-event-id"], "poison-1");
    assert_eq!(fatal["kasm-dlq-error-kind"], "fatal", "{fatal:?}");
    assert!(
        fatal["kasm-dlq-error-message"].contains("undecodable payload"),
        "{fatal:?}"
    );
    assert_eq!(fatal["kasm-dlq-source-offset"], "0");
    assert_eq!(fatal["kasm-dlq-handler"], "audit");
    assert_eq!(fatal["kasm-dlq-attempts"], "1");
    let undecodable = &dlq[1].headers;
    assert_eq!(undecodable["kasm-dlq-event-id"], "poison-2");
    assert_eq!(undecodable["kasm-dlq-error-kind"], "undecodable");
    assert_eq!(undecodable["kasm-dlq-source-offset"], "1");
}

/// A Rust handler swapped for its Python twin while records flow: the 18 MB component compiles
/// off the hot path (records keep flowing on the old version meanwhile), every event is
/// handled, and every event produced after the deploy answered runs on the Python version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rust_handler_is_swapped_for_its_python_twin_while_records_flow() {
    let _turn = turn().await;
    const TOKEN: &str = "python-swap-token";
    let s = Setup::new(TestBroker::from_env(), 4).await;
    let n = 2_000;
    produce(&s.broker.producer(), &s.topic, &events("ev", 0..n, &s.out)).await;
    let cfg = write_config(s.dir.path(), &kasm_tests::publisher_body(&s, "", "", ""));
    let mut host = HostProcess::start_with_env(
        &cfg,
        &s.broker.bootstrap(),
        "warn",
        &[("KASM_ADMIN_TOKEN", TOKEN)],
    );
    let bytes = std::fs::read(kasm_tests::component("py-producer-only")).unwrap();
    let started = std::time::Instant::now();
    let (status, body) = kasm_tests::hostproc::http_request(
        &host.admin,
        "PUT",
        "/v1/handlers/pub/component",
        Some(TOKEN),
        &bytes,
    );
    assert_eq!(status, 200, "{body}");
    eprintln!(
        "deploy of {} bytes answered in {:?}",
        bytes.len(),
        started.elapsed()
    );
    produce(
        &s.broker.producer(),
        &s.topic,
        &events("ev", n..2 * n, &s.out),
    )
    .await;
    let outputs = read_topic(
        &s.broker.bootstrap(),
        &s.out,
        2 * n,
        Duration::from_secs(120),
    );
    host.signal("TERM");
    assert!(host.wait_exit(Duration::from_secs(30)).success());
    let counts = count_sources(&outputs);
    kasm_tests::assert_each_once(&counts, "ev", 2 * n);
    let late_on_old: Vec<_> = outputs
        .iter()
        .filter(|o| {
            let j = o.json();
            let i: usize = j["source"]
                .as_str()
                .and_then(|s| s.strip_prefix("ev-"))
                .and_then(|i| i.parse().ok())
                .unwrap_or(0);
            i >= n && j["version"] != "py"
        })
        .collect();
    assert!(
        late_on_old.is_empty(),
        "{} events produced after the deploy ran on the old version",
        late_on_old.len()
    );
}
