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

fn invoke_demo(handler: &str, topic: &str) -> serde_json::Value {
    let wasm = component(handler).display().to_string();
    let (code, out, err) = kasm(&[
        "invoke",
        &wasm,
        &demo(handler),
        "--name",
        handler,
        "--topic",
        topic,
        "--json",
    ]);
    assert_eq!(code, 0, "kasm invoke {handler} failed: {out}\n{err}");
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
    let wasm = component("audit").display().to_string();
    let (code, out, err) = kasm(&["validate", &wasm]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("world      kasm:handler/handler@0.1.0"),
        "{out}"
    );
    assert!(out.contains("kasm:handler/producer@0.1.0"), "{out}");
    assert!(out.contains("exports    handle"), "{out}");
    let bytes = std::fs::read(component("audit")).unwrap();
    assert!(
        out.contains(&kasm_host::runtime::sha256_hex(&bytes)),
        "{out}"
    );
    assert!(
        out.contains(&format!("size       {} bytes", bytes.len())),
        "{out}"
    );
}

#[test]
fn validate_names_the_reason_of_a_refusal() {
    let wasm = component("other-world").display().to_string();
    let (code, out, _) = kasm(&["validate", &wasm]);
    assert_eq!(code, 2);
    assert!(
        out.contains("refused") && out.contains("another world"),
        "{out}"
    );

    let wasm = component("fixture").display().to_string();
    let (code, out, _) = kasm(&["validate", &wasm, "--grant", "producer", "--grant", "log"]);
    assert_eq!(code, 2);
    assert!(
        out.contains("kasm:handler/kv@0.1.0") && out.contains("not granted"),
        "{out}"
    );
}

#[test]
fn invoke_notification_demo_emits_a_notification() {
    let report = invoke_demo("notification", "reminders");
    let p = single_publish(&report, "notifications");
    let reminder = demo_json("notification");
    assert_eq!(
        p["payload"]["idempotency_key"], reminder["event_id"],
        "{p:#}"
    );
    assert_eq!(p["payload"]["user_id"], reminder["user_id"], "{p:#}");
    assert!(
        p["payload"]["body"]
            .as_str()
            .unwrap()
            .contains(reminder["title"].as_str().unwrap())
    );
}

#[test]
fn invoke_recurring_demo_emits_the_next_occurrence() {
    let report = invoke_demo("recurring", "task-events");
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
fn invoke_audit_demo_emits_an_audit_entry() {
    let report = invoke_demo("audit", "task-events");
    let p = single_publish(&report, "audit-log");
    let source = demo_json("audit");
    assert_eq!(p["payload"]["event_id"], source["event_id"], "{p:#}");
    assert_eq!(p["payload"]["task_id"], source["task_id"]);
}

#[test]
fn invoke_live_updates_demo_targets_the_user_channel() {
    let report = invoke_demo("live-updates", "task-updates");
    let p = single_publish(&report, "live-updates");
    let source = demo_json("live-updates");
    let channel = format!("user:{}", source["user_id"].as_str().unwrap());
    assert_eq!(p["payload"]["channel"], channel.as_str(), "{p:#}");
}

#[test]
fn invoke_text_output_shows_outcome_and_effects() {
    let wasm = component("notification").display().to_string();
    let (code, out, err) = kasm(&[
        "invoke",
        &wasm,
        &demo("notification"),
        "--topic",
        "reminders",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("outcome    ok"), "{out}");
    assert!(out.contains("publish    #0 topic=notifications"), "{out}");
}

#[test]
fn invoke_reports_a_failure_with_exit_code_1() {
    let dir = tempfile::tempdir().unwrap();
    let payload = dir.path().join("p.json");
    std::fs::write(&payload, r#"{"action":"fatal","message":"no such task"}"#).unwrap();
    let wasm = component("fixture").display().to_string();
    let (code, out, _) = kasm(&["invoke", &wasm, payload.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("outcome    fatal") && out.contains("no such task"),
        "{out}"
    );
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
