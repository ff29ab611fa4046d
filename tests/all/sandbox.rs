//! A handler call is classified and contained: panics, infinite loops, memory bombs and the
//! guest's own errors each end in their own outcome, and the host goes on.

use std::time::{Duration, Instant};

use kasm_host::capabilities::{Grants, TopicGrant};
use kasm_host::{Event, FailureKind, Invocation, LoadedHandler, Outcome};
use kasm_tests::{load, runtime};

fn event(payload: serde_json::Value) -> Event {
    Event::from_parts(
        "fixtures",
        0,
        42,
        Some(b"k".to_vec()),
        serde_json::to_vec(&payload).unwrap(),
        vec![],
        Some(1_700_000_000_000),
    )
}

/// Run one call with a JSON payload.
async fn call(h: &LoadedHandler, payload: serde_json::Value) -> Invocation {
    h.invoke(&event(payload)).await.unwrap()
}

/// The handler still works after whatever happened before.
async fn assert_next_call_ok(h: &LoadedHandler) {
    let inv = call(h, serde_json::json!({"action": "ok"})).await;
    assert_eq!(
        inv.outcome,
        Outcome::Ok,
        "the next call on the same handler succeeds"
    );
}

fn failure(outcome: &Outcome) -> (FailureKind, String) {
    match outcome {
        Outcome::Failed(f) => (f.kind, f.message.clone()),
        Outcome::Ok => panic!("expected a failure, got ok"),
    }
}

#[tokio::test]
async fn panic_is_a_trap_with_its_message_and_the_next_call_succeeds() {
    let rt = runtime();
    let h = load(&rt, kasm_tests::components::FIXTURE, Grants::all(), |_| {});
    let inv = h
        .invoke(&event(
            serde_json::json!({"action": "panic", "message": "kaboom-7731"}),
        ))
        .await
        .unwrap();
    let (kind, msg) = failure(&inv.outcome);
    assert_eq!(kind, FailureKind::Trap);
    assert!(
        msg.contains("kaboom-7731"),
        "the panic message is kept: {msg}"
    );
    assert!(
        msg.starts_with("wasm trap: ") && msg.matches("wasm trap").count() == 1,
        "the trap is named once: {msg}"
    );

    assert_next_call_ok(&h).await;
}

#[tokio::test]
async fn infinite_loop_times_out_at_the_deadline_and_the_host_goes_on() {
    let rt = runtime();
    let deadline = Duration::from_millis(300);
    let h = load(&rt, kasm_tests::components::FIXTURE, Grants::all(), |s| {
        s.deadline = deadline
    });
    let start = Instant::now();
    let inv = call(&h, serde_json::json!({"action": "loop"})).await;
    let took = start.elapsed();
    let (kind, msg) = failure(&inv.outcome);
    assert_eq!(kind, FailureKind::Timeout, "{msg}");
    assert!(took >= deadline, "stopped before its deadline: {took:?}");
    // Generous margin: this is a containment check, not a benchmark.
    assert!(
        took < deadline + Duration::from_secs(2),
        "stopped too late: {took:?}"
    );

    assert_next_call_ok(&h).await;
}

#[tokio::test]
async fn memory_bomb_is_out_of_memory_and_the_host_goes_on() {
    let rt = runtime();
    let h = load(&rt, kasm_tests::components::FIXTURE, Grants::all(), |s| {
        s.memory_bytes = 16 << 20
    });
    let inv = call(&h, serde_json::json!({"action": "oom"})).await;
    let (kind, msg) = failure(&inv.outcome);
    assert_eq!(kind, FailureKind::OutOfMemory, "{msg}");
    assert!(
        msg.contains(&(16u64 << 20).to_string()),
        "names the cap: {msg}"
    );

    assert_next_call_ok(&h).await;
}

#[tokio::test]
async fn guest_errors_keep_their_kind_and_message() {
    let rt = runtime();
    let h = load(&rt, kasm_tests::components::FIXTURE, Grants::all(), |_| {});
    let inv = h
        .invoke(&event(
            serde_json::json!({"action": "retryable", "message": "db busy 42"}),
        ))
        .await
        .unwrap();
    assert_eq!(
        failure(&inv.outcome),
        (FailureKind::Retryable, "db busy 42".to_owned())
    );
    let inv = h
        .invoke(&event(
            serde_json::json!({"action": "fatal", "message": "bad task 7"}),
        ))
        .await
        .unwrap();
    assert_eq!(
        failure(&inv.outcome),
        (FailureKind::Fatal, "bad task 7".to_owned())
    );
}

#[tokio::test]
async fn a_failed_instance_is_never_reused() {
    let rt = runtime();
    let h = load(&rt, kasm_tests::components::FIXTURE, Grants::all(), |s| {
        s.instance_reuse = Some(100)
    });
    let ok = serde_json::json!({"action": "ok"});
    let first = h.invoke(&event(ok.clone())).await.unwrap();
    assert!(!first.reused_instance);
    let second = h.invoke(&event(ok.clone())).await.unwrap();
    assert!(
        second.reused_instance,
        "a sound instance is reused when reuse is on"
    );
    let trap = h
        .invoke(&event(
            serde_json::json!({"action": "panic", "message": "x"}),
        ))
        .await
        .unwrap();
    assert!(trap.reused_instance);
    assert_eq!(failure(&trap.outcome).0, FailureKind::Trap);
    let after = h.invoke(&event(ok)).await.unwrap();
    assert_eq!(after.outcome, Outcome::Ok);
    assert!(
        !after.reused_instance,
        "the trapped instance must have been dropped"
    );
}

#[tokio::test]
async fn publishes_get_deterministic_ids_and_only_granted_topics() {
    let rt = runtime();
    let grants = Grants {
        producer: Some(TopicGrant::Only(["out".to_owned()].into())),
        kv: true,
        sql: false,
        websocket: false,
        http: None,
    };
    let h = load(&rt, kasm_tests::components::FIXTURE, grants, |_| {});
    let e = event(serde_json::json!({"action": "publish", "topic": "out", "count": 3}));
    let a = h.invoke(&e).await.unwrap();
    assert_eq!(a.outcome, Outcome::Ok);
    assert_eq!(a.effects.publishes.len(), 3);
    let b = h.invoke(&e).await.unwrap();
    let ids = |inv: &kasm_host::Invocation| {
        inv.effects
            .publishes
            .iter()
            .map(|p| p.event_id.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(ids(&a), ids(&b), "a re-run publishes the same ids");
    let unique: std::collections::HashSet<_> = ids(&a).into_iter().collect();
    assert_eq!(unique.len(), 3);
    for p in &a.effects.publishes {
        let header = |n: &str| {
            p.headers
                .iter()
                .find(|(k, _)| k == n)
                .map(|(_, v)| String::from_utf8(v.clone()).unwrap())
        };
        assert_eq!(header("event-id").as_deref(), Some(p.event_id.as_str()));
        assert_eq!(header("kasm-causation-id").as_deref(), Some(e.id.as_str()));
    }

    let denied = h
        .invoke(&event(
            serde_json::json!({"action": "publish", "topic": "secret", "count": 1}),
        ))
        .await
        .unwrap();
    let (_, msg) = failure(&denied.outcome);
    assert!(
        msg.contains("secret") && msg.contains("not granted"),
        "{msg}"
    );
    assert!(
        denied.effects.publishes.is_empty(),
        "nothing queued for an ungranted topic"
    );
}

#[tokio::test]
async fn logs_are_collected_and_kv_round_trips() {
    let rt = runtime();
    let h = load(&rt, kasm_tests::components::FIXTURE, Grants::all(), |_| {});
    let inv = h
        .invoke(&event(
            serde_json::json!({"action": "log", "message": "hello from the guest"}),
        ))
        .await
        .unwrap();
    assert_eq!(inv.outcome, Outcome::Ok);
    assert!(
        inv.effects
            .logs
            .iter()
            .any(|l| l.message == "hello from the guest" && l.level == "info")
    );

    let inv = h
        .invoke(&event(
            serde_json::json!({"action": "kv", "key": "a", "value": "b"}),
        ))
        .await
        .unwrap();
    assert_eq!(inv.outcome, Outcome::Ok, "{:?}", inv.outcome);
}

#[tokio::test]
async fn concurrent_calls_on_fresh_instances() {
    let rt = runtime();
    let h = load(&rt, kasm_tests::components::FIXTURE, Grants::all(), |_| {});
    let mut tasks = Vec::new();
    for i in 0..64 {
        let h = h.clone();
        tasks.push(tokio::spawn(async move {
            let action = if i % 8 == 0 { "panic" } else { "ok" };
            let inv = h
                .invoke(&event(
                    serde_json::json!({"action": action, "message": "m"}),
                ))
                .await
                .unwrap();
            (action, inv.outcome)
        }));
    }
    for t in tasks {
        let (action, outcome) = t.await.unwrap();
        match action {
            "ok" => assert_eq!(outcome, Outcome::Ok),
            _ => assert_eq!(failure(&outcome).0, FailureKind::Trap),
        }
    }
}

#[tokio::test]
async fn files_environment_arguments_and_sockets_are_denied_even_with_every_grant() {
    let rt = runtime();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let h = load(&rt, kasm_tests::components::HOSTILE, Grants::all(), |_| {});
    let inv = call(&h, serde_json::json!({"action": "probe", "addr": addr})).await;
    assert_eq!(inv.outcome, Outcome::Ok, "{inv:?}");
    let seen: serde_json::Value = serde_json::from_str(&inv.effects.logs[0].message).unwrap();
    for attempt in [
        "read_file",
        "list_dir",
        "create_file",
        "env_vars",
        "env_home",
        "args",
        "tcp_connect",
        "dns",
    ] {
        assert!(
            seen[attempt].as_str().unwrap().starts_with("denied"),
            "{attempt}: {}",
            seen[attempt]
        );
    }
    assert!(
        matches!(listener.accept(), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "no connection reached the listener"
    );
}
