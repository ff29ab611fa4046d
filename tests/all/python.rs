//! Handlers written in Python (`handlers/python/`, built with `guest-sdk-python`) under the
//! real host: the task-app services held to the same end-to-end tests as the Rust ones, and
//! what every interpreted handler must do (`interpreted.rs`).

use std::time::Duration;

use kasm_host::capabilities::sql::SqlTarget;
use kasm_tests::broker::{Rec, TestBroker, produce, read_topic};
use kasm_tests::hostproc::HostProcess;
use kasm_tests::{KAFKA_TEST_PROPS, Setup, write_config};

use super::interpreted::{self, Guest, turn};
use super::services;

const PYTHON: Guest = Guest {
    prefix: "py",
    language: "python",
    version: "py",
    trap_holds: &[
        "Traceback",
        "ValueError: event bug-1 has a quantity but no order",
    ],
    producer_only: kasm_tests::components::PY_PRODUCER_ONLY,
    raises: kasm_tests::components::PY_RAISES,
    retryable: kasm_tests::components::PY_RETRYABLE,
    loops: kasm_tests::components::PY_LOOPS,
    grows: kasm_tests::components::PY_GROWS,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_audit_on_sqlite_writes_exactly_one_row_per_event() {
    let _turn = turn().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("audit.sqlite");
    let grant = format!("sqlite = \"{}\"", file.display());
    services::audit_writes_one_row_per_event(
        kasm_tests::components::PY_AUDIT,
        SqlTarget::Sqlite(file),
        &grant,
        &[],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_audit_on_postgres_writes_exactly_one_row_per_event() {
    let _turn = turn().await;
    let url = super::sql::pg_schema().await;
    services::audit_writes_one_row_per_event(
        kasm_tests::components::PY_AUDIT,
        SqlTarget::Postgres(url.clone()),
        "url_env = \"AUDIT_DATABASE_URL\"",
        &[("AUDIT_DATABASE_URL", &url)],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_task_events_are_audited_and_recurring_tasks_continue() {
    let _turn = turn().await;
    services::audited_and_continued(
        kasm_tests::components::PY_AUDIT,
        kasm_tests::components::PY_RECURRING,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_notification_posts_each_reminder_once_with_its_idempotency_key() {
    let _turn = turn().await;
    services::posted_once(kasm_tests::components::PY_NOTIFICATION).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_notification_retries_a_503_until_delivered() {
    let _turn = turn().await;
    services::delivered_on_the_third_try(kasm_tests::components::PY_NOTIFICATION).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_notification_dead_letters_a_400_as_fatal() {
    let _turn = turn().await;
    services::dead_lettered_on_a_400(kasm_tests::components::PY_NOTIFICATION).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_handler_granted_only_producer_starts_and_publishes_every_event() {
    let _turn = turn().await;
    interpreted::granted_only_producer_publishes_every_event(&PYTHON).await;
}

#[test]
fn a_python_component_says_it_is_python_and_defaults_to_reused_instances() {
    interpreted::says_its_language_and_defaults_to_reused_instances(&PYTHON);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_failures_end_as_trap_retry_timeout_and_out_of_memory() {
    let _turn = turn().await;
    interpreted::failures_end_as_trap_retry_timeout_and_out_of_memory(&PYTHON).await;
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
        c = kasm_tests::component(kasm_tests::components::PY_AUDIT).display(),
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rust_handler_is_swapped_for_its_python_twin_while_records_flow() {
    let _turn = turn().await;
    interpreted::swapped_from_rust_while_records_flow(&PYTHON).await;
}
