//! Handlers written in JavaScript (`handlers/js/`, built with `guest-sdk-js`) under the real
//! host: the live-updates service held to the same end-to-end test as the Rust one, the
//! capability wrappers reaching the host, and what every interpreted handler must do
//! (`interpreted.rs`).

use std::time::Duration;

use kasm_tests::broker::{Rec, TestBroker, produce, read_topic};
use kasm_tests::hostproc::HostProcess;
use kasm_tests::{KAFKA_TEST_PROPS, Setup, write_config};

use super::interpreted::{self, Guest, turn};
use super::services;

const JAVASCRIPT: Guest = Guest {
    prefix: "js",
    language: "javascript",
    version: "js",
    // The error, then its stack: the function that threw and the SDK's call into it.
    trap_holds: &[
        "RangeError: event bug-1 has a quantity but no order",
        "handleOrder@",
        "kasm: the handler threw RangeError",
    ],
    producer_only: kasm_tests::components::JS_PRODUCER_ONLY,
    raises: kasm_tests::components::JS_RAISES,
    retryable: kasm_tests::components::JS_RETRYABLE,
    loops: kasm_tests::components::JS_LOOPS,
    grows: kasm_tests::components::JS_GROWS,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn javascript_live_updates_reach_only_their_user_and_a_stalled_client_is_dropped() {
    let _turn = turn().await;
    services::live_updates_reach_only_their_user(kasm_tests::components::JS_LIVE_UPDATES).await;
}

/// A task event the JavaScript live-updates handler cannot use is dead-lettered once, as
/// `fatal`, with its provenance and the reason: one that is not a task event, one without a
/// user. A record that is not JSON at all is the host's `undecodable`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn javascript_live_updates_dead_letter_a_poison_record_once_with_its_provenance() {
    let _turn = turn().await;
    let s = Setup::new(TestBroker::from_env(), 1).await;
    let body = format!(
        "[kafka]\n{KAFKA_TEST_PROPS}\n[handlers.live]\ncomponent = \"{c}\"\n\
         topics = [\"{t}\"]\ngroup_id = \"{g}\"\npayload = \"json\"\n\
         grants = {{ websocket = true }}\n",
        c = kasm_tests::component(kasm_tests::components::JS_LIVE_UPDATES).display(),
        t = s.topic,
        g = s.group,
    );
    let rec = |id: &str, payload: &[u8]| Rec {
        key: Some(b"u1".to_vec()),
        payload: payload.to_vec(),
        headers: vec![("event-id".into(), id.as_bytes().to_vec())],
        partition: None,
    };
    let no_user = serde_json::json!({
        "event_id": "poison-2", "event_type": "task.created", "task_id": "t-1", "user_id": " ",
        "timestamp": "2026-11-27T09:15:00Z", "task": {"title": "a"}
    });
    produce(
        &s.broker.producer(),
        &s.topic,
        &[
            rec(
                "poison-1",
                br#"{"event_type": "task.completed", "nope": 1}"#,
            ),
            rec("poison-2", no_user.to_string().as_bytes()),
            rec("poison-3", b"{not json"),
        ],
    )
    .await;
    let cfg = write_config(s.dir.path(), &body);
    let mut host = HostProcess::start(&cfg, &s.broker.bootstrap());
    let dlq = read_topic(
        &s.broker.bootstrap(),
        &format!("{}.dlq", s.topic),
        3,
        Duration::from_secs(120),
    );
    kasm_tests::wait_committed(&s, &s.group, 3, Duration::from_secs(60)).await;
    host.signal("TERM");
    assert!(host.wait_exit(Duration::from_secs(30)).success());
    assert_eq!(dlq.len(), 3, "each poison record dead-lettered once");
    let (undecodable, no_user, not_json) = (&dlq[0].headers, &dlq[1].headers, &dlq[2].headers);
    assert_eq!(undecodable["kasm-dlq-event-id"], "poison-1");
    assert_eq!(
        undecodable["kasm-dlq-error-kind"], "fatal",
        "{undecodable:?}"
    );
    assert_eq!(
        undecodable["kasm-dlq-error-message"],
        "undecodable payload: missing field `event_id`"
    );
    assert_eq!(undecodable["kasm-dlq-source-offset"], "0");
    assert_eq!(undecodable["kasm-dlq-handler"], "live");
    assert_eq!(undecodable["kasm-dlq-attempts"], "1");
    assert_eq!(no_user["kasm-dlq-error-kind"], "fatal", "{no_user:?}");
    assert_eq!(
        no_user["kasm-dlq-error-message"],
        "task event poison-2 has an empty user_id"
    );
    assert_eq!(no_user["kasm-dlq-source-offset"], "1");
    assert_eq!(not_json["kasm-dlq-event-id"], "poison-3");
    assert_eq!(not_json["kasm-dlq-error-kind"], "undecodable");
}

/// Granted only `producer`, the JavaScript fixture publishes every event once; its payload is
/// written by an npm package the build bundled (`canonicalize`: keys sorted, RFC 8785).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_javascript_handler_granted_only_producer_starts_and_publishes_every_event() {
    let _turn = turn().await;
    let outputs = interpreted::granted_only_producer_publishes_every_event(&JAVASCRIPT).await;
    for o in &outputs {
        let j = o.json();
        let canonical = format!(
            "{{\"offset\":{},\"partition\":{},\"source\":{},\"version\":\"js\"}}",
            j["offset"], j["partition"], j["source"]
        );
        assert_eq!(String::from_utf8_lossy(&o.payload), canonical);
    }
}

#[test]
fn a_javascript_component_says_it_is_javascript_and_defaults_to_reused_instances() {
    interpreted::says_its_language_and_defaults_to_reused_instances(&JAVASCRIPT);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn javascript_failures_end_as_trap_retry_timeout_and_out_of_memory() {
    let _turn = turn().await;
    interpreted::failures_end_as_trap_retry_timeout_and_out_of_memory(&JAVASCRIPT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rust_handler_is_swapped_for_its_javascript_twin_while_records_flow() {
    let _turn = turn().await;
    interpreted::swapped_from_rust_while_records_flow(&JAVASCRIPT).await;
}

/// Every capability wrapper of the JavaScript SDK reaches its host import: one `kasm invoke`
/// of the fixture that calls them all shows the kv value read back and deleted, the SQL row
/// with every value type, the setting, the push and the publish.
#[test]
fn every_javascript_capability_wrapper_reaches_the_host() {
    let dir = tempfile::tempdir().unwrap();
    let payload = dir.path().join("event.json");
    std::fs::write(&payload, br#"{"a":1}"#).unwrap();
    let out = std::process::Command::new(kasm_tests::kasm_bin())
        .arg("invoke")
        .arg(kasm_tests::component(
            kasm_tests::components::JS_CAPABILITIES,
        ))
        .arg(&payload)
        .args(["--key", "k", "--offset", "5", "--setting", "greeting=hello"])
        .args(["--grant", "producer", "--grant", "kv", "--grant", "sql"])
        .args(["--grant", "websocket", "--json"])
        .env("KASM_CACHE_DIR", kasm_tests::shared_cache_dir())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["outcome"], "ok", "{report:#}");
    let publishes = report["publishes"].as_array().unwrap();
    assert_eq!(publishes.len(), 1, "{report:#}");
    assert_eq!(publishes[0]["topic"], "out");
    assert_eq!(publishes[0]["key"], "k");
    assert_eq!(
        publishes[0]["payload"],
        serde_json::json!({
            "kv": "{\"a\":1}",
            "kv_deleted": true,
            "sql": {"event_id": "invoke/0/5", "n": 5, "x": 0.5, "raw": "{\"a\":1}", "note": null},
            "columns": ["event_id", "n", "x", "raw", "note"],
            "setting": "hello"
        })
    );
    assert_eq!(
        report["broadcasts"],
        serde_json::json!([{"channel": "user:u1", "message": "{\"seen\":\"invoke/0/5\"}"}])
    );
    assert_eq!(report["logs"][0]["message"], "1 row(s) for invoke/0/5");
    assert_eq!(report["sql"]["committed"], true);
}
