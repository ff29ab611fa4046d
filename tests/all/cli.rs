//! `kasm validate` and `kasm invoke`, run as a user runs them.

use std::process::Command;

use kasm_tests::{component, kasm_bin, root, shared_cache_dir};

fn kasm(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(kasm_bin())
        .args(args)
        .env("KASM_CACHE_DIR", shared_cache_dir())
        .output()
        .expect("run kasm");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn demo(handler: &str) -> String {
    root()
        .join("handlers")
        .join(handler)
        .join("demo")
        .join("event.json")
        .display()
        .to_string()
}

fn invoke_demo(handler: kasm_tests::components::Component, topic: &str) -> serde_json::Value {
    let wasm = component(handler).display().to_string();
    let (code, out, err) = kasm(&[
        "invoke",
        &wasm,
        &demo(handler.name()),
        "--name",
        handler.name(),
        "--topic",
        topic,
        "--json",
    ]);
    assert_eq!(
        code,
        0,
        "kasm invoke {} failed: {out}\n{err}",
        handler.name()
    );
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
}

fn demo_json(handler: &str) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(demo(handler)).unwrap()).unwrap()
}

fn single_publish(report: &serde_json::Value, topic: &str) -> serde_json::Value {
    assert_eq!(report["outcome"], "ok", "{report:#}");
    let publishes = report["publishes"].as_array().unwrap();
    assert_eq!(publishes.len(), 1, "{report:#}");
    assert_eq!(publishes[0]["topic"], topic, "{report:#}");
    assert!(
        publishes[0]["event_id"]
            .as_str()
            .is_some_and(|s| s.len() == 36)
    );
    publishes[0].clone()
}

#[test]
fn validate_prints_world_imports_size_and_hash() {
    let wasm = component(kasm_tests::components::AUDIT)
        .display()
        .to_string();
    let (code, out, err) = kasm(&["validate", &wasm]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("world      kasm:handler/handler@0.1.0"),
        "{out}"
    );
    assert!(
        out.contains("kasm:handler/sql@0.1.0 (capability sql)"),
        "{out}"
    );
    assert!(out.contains("exports    handle"), "{out}");
    let bytes = std::fs::read(component(kasm_tests::components::AUDIT)).unwrap();
    assert!(
        out.contains(&kasm_host::runtime::sha256_hex(&bytes)),
        "{out}"
    );
    assert!(
        out.contains(&format!("size       {} bytes", bytes.len())),
        "{out}"
    );
}

/// A real component grown to `mib` MiB by a custom section at its end (as an interpreted
/// handler is grown by its interpreter).
fn padded_component(dir: &std::path::Path, mib: usize) -> String {
    let mut bytes = std::fs::read(component(kasm_tests::components::FIXTURE_PUBLISHER)).unwrap();
    let name = b"kasm-test-padding";
    let data_len = (mib << 20) - bytes.len();
    let mut body = Vec::new();
    body.push(name.len() as u8);
    body.extend_from_slice(name);
    body.resize(body.len() + data_len, 0);
    bytes.push(0); // custom section
    let mut n = body.len();
    loop {
        let b = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            bytes.push(b);
            break;
        }
        bytes.push(b | 0x80);
    }
    bytes.extend_from_slice(&body);
    let path = dir.join(format!("padded-{mib}.wasm"));
    std::fs::write(&path, bytes).unwrap();
    path.display().to_string()
}

#[test]
fn a_component_over_32_mib_is_accepted_and_the_cap_is_a_setting() {
    let dir = tempfile::tempdir().unwrap();
    let wasm = padded_component(dir.path(), 40);
    let (code, out, err) = kasm(&["validate", &wasm, "--no-cache"]);
    assert_eq!(
        code, 0,
        "a 40 MiB component is under the default cap: {out}{err}"
    );
    let (code, out, _) = kasm(&["validate", &wasm, "--no-cache", "--max-component-mib", "16"]);
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("refused") && out.contains(&(16u64 << 20).to_string()),
        "{out}"
    );
}

#[test]
fn validate_names_the_reason_of_a_refusal() {
    let wasm = component(kasm_tests::components::OTHER_WORLD)
        .display()
        .to_string();
    let (code, out, _) = kasm(&["validate", &wasm]);
    assert_eq!(code, 2);
    assert!(
        out.contains("refused") && out.contains("another world"),
        "{out}"
    );

    let wasm = component(kasm_tests::components::FIXTURE)
        .display()
        .to_string();
    let (code, out, _) = kasm(&["validate", &wasm, "--grant", "producer", "--grant", "log"]);
    assert_eq!(code, 2);
    assert!(
        out.contains("kasm:handler/kv@0.1.0") && out.contains("not granted"),
        "{out}"
    );
}

#[test]
fn invoke_notification_demo_posts_to_the_webhook_with_the_idempotency_key() {
    let receiver = kasm_tests::receiver::Receiver::start(&[200]);
    let wasm = component(kasm_tests::components::NOTIFICATION)
        .display()
        .to_string();
    let setting = format!("webhook_url={}", receiver.url());
    let (code, out, err) = kasm(&[
        "invoke",
        &wasm,
        &demo("notification"),
        "--name",
        "notification",
        "--topic",
        "reminders",
        "--setting",
        &setting,
        "--json",
    ]);
    assert_eq!(code, 0, "{out}\n{err}");
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["outcome"], "ok", "{report:#}");
    let reminder = demo_json("notification");
    let got = receiver.requests();
    assert_eq!(got.len(), 1, "one POST");
    assert_eq!(
        (got[0].method.as_str(), got[0].path.as_str()),
        ("POST", "/hook")
    );
    assert_eq!(
        got[0].header("idempotency-key"),
        reminder["event_id"].as_str(),
        "{:?}",
        got[0].headers
    );
    let body: serde_json::Value = serde_json::from_slice(&got[0].body).unwrap();
    assert_eq!(body["user_id"], reminder["user_id"]);
    assert!(
        body["body"]
            .as_str()
            .unwrap()
            .contains(reminder["title"].as_str().unwrap())
    );
}

#[test]
fn invoke_notification_to_a_host_not_granted_is_denied_without_a_connection() {
    let receiver = kasm_tests::receiver::Receiver::start(&[200]);
    let wasm = component(kasm_tests::components::NOTIFICATION)
        .display()
        .to_string();
    let setting = format!("webhook_url={}", receiver.url());
    let (code, out, _) = kasm(&[
        "invoke",
        &wasm,
        &demo("notification"),
        "--grant",
        "http=hooks.example.com:443",
        "--grant",
        "log",
        "--setting",
        &setting,
    ]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("outcome    fatal") && out.contains("denied"),
        "{out}"
    );
    assert_eq!(
        *receiver.connections.lock().unwrap(),
        0,
        "no connection was made"
    );
}

#[test]
fn invoke_recurring_demo_emits_the_next_occurrence() {
    let report = invoke_demo(kasm_tests::components::RECURRING, "task-events");
    let p = single_publish(&report, "task-events");
    let source = demo_json("recurring");
    assert_eq!(p["payload"]["event_type"], "task.created", "{p:#}");
    assert_eq!(p["payload"]["user_id"], source["user_id"]);
    assert_eq!(
        p["payload"]["event_id"], p["event_id"],
        "payload carries the derived id"
    );
    assert_ne!(p["payload"]["task"]["due_date"], source["task"]["due_date"]);
}

#[test]
fn invoke_audit_demo_writes_one_row_and_a_second_run_none() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("audit.sqlite");
    let migrations = root().join("handlers/audit/migrations");
    let wasm = component(kasm_tests::components::AUDIT)
        .display()
        .to_string();
    let run = || {
        let (code, out, err) = kasm(&[
            "invoke",
            &wasm,
            &demo("audit"),
            "--name",
            "audit",
            "--topic",
            "task-events",
            "--sqlite",
            db.to_str().unwrap(),
            "--migrations",
            migrations.to_str().unwrap(),
            "--json",
        ]);
        assert_eq!(code, 0, "kasm invoke audit failed: {out}\n{err}");
        serde_json::from_str::<serde_json::Value>(&out).unwrap()
    };
    let first = run();
    assert_eq!(first["outcome"], "ok", "{first:#}");
    assert_eq!(first["sql"]["rows_changed"], 1, "{first:#}");
    assert_eq!(first["sql"]["committed"], true);
    assert!(first["publishes"].as_array().unwrap().is_empty());
    let again = run();
    assert_eq!(again["sql"]["rows_changed"], 0, "same event id: {again:#}");

    let conn = rusqlite::Connection::open(&db).unwrap();
    let source = demo_json("audit");
    let (n, summary, task_id): (i64, String, String) = conn
        .query_row(
            "SELECT count(*), max(summary), max(task_id) FROM audit_log WHERE event_id = ?1",
            [source["event_id"].as_str().unwrap()],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    assert_eq!(n, 1);
    assert_eq!(task_id, source["task_id"].as_str().unwrap());
    assert_eq!(summary, r#"task "Buy milk" completed by user u1"#);
}

#[test]
fn invoke_live_updates_demo_targets_the_user_channel() {
    let report = invoke_demo(kasm_tests::components::LIVE_UPDATES, "task-updates");
    assert_eq!(report["outcome"], "ok", "{report:#}");
    assert!(report["publishes"].as_array().unwrap().is_empty());
    let pushes = report["broadcasts"].as_array().unwrap();
    assert_eq!(pushes.len(), 1, "{report:#}");
    let source = demo_json("live-updates");
    let channel = format!("user:{}", source["user_id"].as_str().unwrap());
    assert_eq!(pushes[0]["channel"], channel.as_str(), "{report:#}");
    let message: serde_json::Value =
        serde_json::from_str(pushes[0]["message"].as_str().unwrap()).unwrap();
    assert_eq!(message["task_id"], source["task_id"], "{message:#}");
}

#[test]
fn invoke_text_output_shows_outcome_and_effects() {
    let wasm = component(kasm_tests::components::RECURRING)
        .display()
        .to_string();
    let (code, out, err) = kasm(&[
        "invoke",
        &wasm,
        &demo("recurring"),
        "--topic",
        "task-events",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("outcome    ok"), "{out}");
    assert!(out.contains("publish    #0 topic=task-events"), "{out}");
}

#[test]
fn invoke_reports_a_failure_with_exit_code_1() {
    let dir = tempfile::tempdir().unwrap();
    let payload = dir.path().join("p.json");
    std::fs::write(&payload, r#"{"action":"fatal","message":"no such task"}"#).unwrap();
    let wasm = component(kasm_tests::components::FIXTURE)
        .display()
        .to_string();
    let (code, out, _) = kasm(&["invoke", &wasm, payload.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("outcome    fatal") && out.contains("no such task"),
        "{out}"
    );
}

#[test]
fn invoke_names_a_trap_once() {
    let dir = tempfile::tempdir().unwrap();
    let payload = dir.path().join("p.json");
    std::fs::write(&payload, r#"{"action":"panic","message":"kaboom-4410"}"#).unwrap();
    let wasm = component(kasm_tests::components::FIXTURE)
        .display()
        .to_string();
    let (code, out, _) = kasm(&["invoke", &wasm, payload.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("outcome    trap"), "{out}");
    assert_eq!(
        out.matches("wasm trap").count(),
        1,
        "the prefix once: {out}"
    );
    assert!(out.contains("kaboom-4410"), "{out}");
}

#[test]
fn every_subcommand_has_help() {
    for args in [
        vec!["--help"],
        vec!["validate", "--help"],
        vec!["invoke", "--help"],
    ] {
        let (code, out, _) = kasm(&args);
        assert_eq!(code, 0, "{args:?}");
        assert!(out.contains("Usage:"), "{out}");
    }
}
