//! Hostile components are contained: each attack in `handlers/fixtures/hostile` (and the
//! components that attack at instantiation or through their imports) ends classified,
//! dead-lettered or refused, with the host unharmed — the next call on the same handler
//! succeeds and the process's memory did not jump — and, in the pipeline, a well-behaved
//! handler next to the attacker processes all of its events.
//!
//! Memory is checked on the whole test process (`VmRSS`), so the bound is generous: other
//! tests run alongside. Each bound sits far below what the attack would cost if it were not
//! contained (a GiB or more).

use std::time::{Duration, Instant};

use kasm_host::capabilities::{Grants, TopicGrant};
use kasm_host::runtime::{HandlerSpec, LoadError};
use kasm_host::{Event, FailureKind, Invocation, LoadedHandler, Outcome};
use kasm_tests::{component_bytes, load, runtime};

fn event(payload: serde_json::Value) -> Event {
    Event::from_parts(
        "hostile-in",
        0,
        7,
        None,
        serde_json::to_vec(&payload).unwrap(),
        vec![],
        None,
    )
}

/// Resident memory of this process, in MiB.
fn rss_mib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kib / 1024
}

/// Most the process's resident memory may grow during one contained attack.
const RSS_SLACK_MIB: u64 = 192;

/// What an attack did, and what it cost the host.
struct Attack {
    inv: Invocation,
    took: Duration,
}

/// Run `payload` on `h`, then check the host is unharmed: memory did not jump and the next
/// call on the same handler succeeds.
async fn attack(h: &LoadedHandler, payload: serde_json::Value) -> Attack {
    let before = rss_mib();
    let start = Instant::now();
    let inv = h.invoke(&event(payload.clone())).await.unwrap();
    let took = start.elapsed();
    let after = rss_mib();
    eprintln!(
        "hostile {payload}: {} in {took:?}, rss {before} -> {after} MiB",
        inv.outcome.label()
    );
    assert!(
        after <= before + RSS_SLACK_MIB,
        "host memory jumped from {before} MiB to {after} MiB during {payload}"
    );
    let next = h
        .invoke(&event(serde_json::json!({"action": "ok"})))
        .await
        .unwrap();
    assert_eq!(
        next.outcome,
        Outcome::Ok,
        "the next call on the same handler succeeds"
    );
    Attack { inv, took }
}

fn failure(outcome: &Outcome) -> (FailureKind, String) {
    match outcome {
        Outcome::Failed(f) => (f.kind, f.message.clone()),
        Outcome::Ok => panic!("expected a failure, got ok"),
    }
}

fn hostile(tweak: impl FnOnce(&mut HandlerSpec)) -> std::sync::Arc<LoadedHandler> {
    let rt = runtime();
    load(&rt, kasm_tests::components::HOSTILE, Grants::all(), tweak)
}

#[tokio::test]
async fn unbounded_recursion_is_a_stack_overflow_trap() {
    let h = hostile(|_| {});
    let a = attack(&h, serde_json::json!({"action": "recurse"})).await;
    let (kind, msg) = failure(&a.inv.outcome);
    assert_eq!(kind, FailureKind::Trap, "{msg}");
    assert!(msg.contains("call stack exhausted"), "{msg}");
}

#[tokio::test]
async fn memory_leaking_call_after_call_hits_the_cap_and_the_instance_is_replaced() {
    let cap = 16usize << 20;
    let h = hostile(|s| {
        s.memory_bytes = cap;
        s.instance_reuse = Some(1000);
    });
    let before = rss_mib();
    let grow = serde_json::json!({"action": "grow", "kib": 1024});
    let mut ok_calls = 0;
    let oom = loop {
        let inv = h.invoke(&event(grow.clone())).await.unwrap();
        match inv.outcome {
            Outcome::Ok => {
                ok_calls += 1;
                assert!(ok_calls < 64, "a 16 MiB cap let 64 MiB leak");
            }
            Outcome::Failed(f) => break (f, inv.reused_instance),
        }
    };
    eprintln!(
        "hostile grow: {ok_calls} calls of 1 MiB each on one instance, then {}",
        oom.0
    );
    assert_eq!(oom.0.kind, FailureKind::OutOfMemory, "{}", oom.0);
    assert!(oom.0.message.contains(&cap.to_string()), "{}", oom.0);
    assert!(oom.1, "the leak accumulated on a reused instance");
    assert!(ok_calls >= 8, "memory grew gradually: {ok_calls} calls");

    let next = h
        .invoke(&event(serde_json::json!({"action": "ok"})))
        .await
        .unwrap();
    assert_eq!(next.outcome, Outcome::Ok);
    assert!(
        !next.reused_instance,
        "the instance that ran out of memory was dropped"
    );
    let after = rss_mib();
    assert!(
        after <= before + RSS_SLACK_MIB,
        "rss {before} -> {after} MiB"
    );
}

#[tokio::test]
async fn one_huge_allocation_is_out_of_memory() {
    let h = hostile(|s| s.memory_bytes = 64 << 20);
    let a = attack(&h, serde_json::json!({"action": "alloc", "mib": 1024})).await;
    let (kind, msg) = failure(&a.inv.outcome);
    assert_eq!(kind, FailureKind::OutOfMemory, "{msg}");
    assert!(msg.contains(&(64u64 << 20).to_string()), "{msg}");
}

#[tokio::test]
async fn an_infinite_loop_at_instantiation_times_out_every_record() {
    let rt = runtime();
    let deadline = Duration::from_millis(300);
    let h = load(
        &rt,
        kasm_tests::components::HOSTILE_INIT,
        Grants::none(),
        |s| s.deadline = deadline,
    );
    for _ in 0..2 {
        let start = Instant::now();
        let inv = h
            .invoke(&event(serde_json::json!({"action": "ok"})))
            .await
            .unwrap();
        let took = start.elapsed();
        let (kind, msg) = failure(&inv.outcome);
        eprintln!("hostile-init: {kind} in {took:?}: {msg}");
        assert_eq!(kind, FailureKind::Timeout, "{msg}");
        assert!(took >= deadline, "stopped before its deadline: {took:?}");
        assert!(
            took < deadline + Duration::from_secs(2),
            "stopped too late: {took:?}"
        );
    }
    // The runtime is unharmed: another handler in it runs.
    let other = load(&rt, kasm_tests::components::HOSTILE, Grants::all(), |_| {});
    let inv = other
        .invoke(&event(serde_json::json!({"action": "ok"})))
        .await
        .unwrap();
    assert_eq!(inv.outcome, Outcome::Ok);
}

#[tokio::test]
async fn busy_waiting_on_the_clock_times_out_at_the_deadline() {
    let deadline = Duration::from_millis(300);
    let h = hostile(|s| s.deadline = deadline);
    let a = attack(&h, serde_json::json!({"action": "busy-clock"})).await;
    let (kind, msg) = failure(&a.inv.outcome);
    assert_eq!(kind, FailureKind::Timeout, "{msg}");
    assert!(a.took >= deadline, "{:?}", a.took);
    assert!(a.took < deadline + Duration::from_secs(2), "{:?}", a.took);
}

#[tokio::test]
async fn sleeping_inside_a_host_call_times_out() {
    let deadline = Duration::from_millis(300);
    let h = hostile(|s| s.deadline = deadline);
    let a = attack(&h, serde_json::json!({"action": "sleep"})).await;
    let (kind, msg) = failure(&a.inv.outcome);
    assert_eq!(kind, FailureKind::Timeout, "{msg}");
    assert!(a.took >= deadline, "{:?}", a.took);
    assert!(a.took < deadline + Duration::from_secs(2), "{:?}", a.took);
}

#[tokio::test]
async fn a_huge_error_message_is_fatal_and_truncated() {
    let h = hostile(|_| {});
    let a = attack(&h, serde_json::json!({"action": "big-error", "mib": 32})).await;
    let (kind, msg) = failure(&a.inv.outcome);
    assert_eq!(kind, FailureKind::Fatal);
    assert!(msg.starts_with("EEEE"), "the guest's message is kept");
    assert!(
        msg.len() <= 16 << 10,
        "a {} byte message was kept whole",
        msg.len()
    );
    assert!(
        msg.contains("truncated"),
        "says it was cut: {}",
        &msg[msg.len() - 100..]
    );
}

#[tokio::test]
async fn publishing_a_gigabyte_is_refused_and_what_is_queued_stays_bounded() {
    let h = hostile(|s| {
        s.grants = Grants {
            producer: Some(TopicGrant::Any),
            ..Grants::none()
        };
        s.deadline = Duration::from_secs(20);
    });
    let a = attack(
        &h,
        serde_json::json!({"action": "big-publish", "topic": "out", "count": 1000, "kib": 1000}),
    )
    .await;
    let queued: usize = a
        .inv
        .effects
        .publishes
        .iter()
        .map(|p| p.payload.len())
        .sum();
    eprintln!(
        "hostile big-publish: {} records, {} bytes queued",
        a.inv.effects.publishes.len(),
        queued
    );
    let (kind, msg) = failure(&a.inv.outcome);
    assert_eq!(kind, FailureKind::Fatal, "{msg}");
    assert!(msg.contains("limit"), "names the limit: {msg}");
    assert!(queued <= 64 << 20, "{queued} bytes queued by one call");
}

#[tokio::test]
async fn gigabytes_of_logs_are_truncated_and_capped() {
    let h = hostile(|s| s.deadline = Duration::from_secs(30));
    let a = attack(
        &h,
        serde_json::json!({"action": "big-log", "count": 2000, "kib": 512}),
    )
    .await;
    assert_eq!(a.inv.outcome, Outcome::Ok, "{:?}", a.inv.outcome);
    let logs = &a.inv.effects.logs;
    assert_eq!(logs.len(), 1000, "lines capped");
    assert_eq!(a.inv.effects.logs_dropped, 1000);
    let kept: usize = logs.iter().map(|l| l.message.len()).sum();
    assert!(kept <= 1000 * (4096 + 4), "{kept} bytes of log kept");
}

#[tokio::test]
async fn a_flood_of_stdout_is_kept_to_its_tail() {
    let h = hostile(|s| {
        s.output_bytes = 16 << 10;
        // Lifting 32 MiB out of the guest takes a few hundred ms in a debug build.
        s.deadline = Duration::from_secs(10);
    });
    let a = attack(&h, serde_json::json!({"action": "big-output", "mib": 32})).await;
    assert_eq!(a.inv.outcome, Outcome::Ok, "{:?}", a.inv.outcome);
    let out = &a.inv.guest_output;
    assert!(out.len() <= (16 << 10) + 64, "{} bytes kept", out.len());
    assert!(
        out.ends_with("last words of big-output"),
        "the tail is kept"
    );
    assert!(out.starts_with("["), "says bytes were dropped");
}

#[tokio::test]
async fn asking_the_host_for_a_gigabyte_of_random_bytes_is_refused() {
    let h = hostile(|_| {});
    for mib in [1024, 4] {
        let a = attack(&h, serde_json::json!({"action": "big-random", "mib": mib})).await;
        let (kind, msg) = failure(&a.inv.outcome);
        assert_eq!(kind, FailureKind::Trap, "{msg}");
        assert!(msg.contains("exceeds limit"), "{msg}");
    }
}

#[tokio::test]
async fn files_environment_and_network_are_denied_at_the_wasi_level() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let h = hostile(|_| {});
    let a = attack(&h, serde_json::json!({"action": "escape", "addr": addr})).await;
    assert_eq!(a.inv.outcome, Outcome::Ok, "{:?}", a.inv.outcome);
    let seen: serde_json::Value = serde_json::from_str(&a.inv.effects.logs[0].message).unwrap();
    eprintln!("hostile escape: {seen:#}");
    let mut attempts: Vec<(String, String)> = ["preopens", "create_file", "env", "args", "cwd"]
        .iter()
        .chain(&["tcp", "udp", "dns", "std_connect"])
        .map(|k| (k.to_string(), seen[k].as_str().unwrap().to_owned()))
        .collect();
    for f in seen["files"].as_array().unwrap() {
        attempts.push(("files".into(), f.as_str().unwrap().to_owned()));
    }
    assert_eq!(attempts.len(), 13);
    for (what, got) in attempts {
        assert!(got.starts_with("denied"), "{what}: {got}");
    }
    assert!(
        matches!(listener.accept(), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "no connection reached the listener"
    );
}

/// A component that exports a `handle` function and imports `import` (WAT text).
fn component_importing(import: &str) -> Vec<u8> {
    wat::parse_str(format!(
        r#"(component
             {import}
             (core module $m (func (export "handle")))
             (core instance $i (instantiate $m))
             (func (export "handle") (canon lift (core func $i "handle"))))"#
    ))
    .unwrap()
}

#[test]
fn components_importing_unknown_interfaces_are_refused_naming_the_import() {
    let rt = runtime();
    let cases = [
        (
            r#"(import "acme:backdoor/exfil@1.0.0" (instance (export "send" (func (param "data" string)))))"#,
            "acme:backdoor/exfil@1.0.0",
        ),
        (
            r#"(import "wasi:keyvalue/store@0.2.0-draft" (instance))"#,
            "wasi:keyvalue/store@0.2.0-draft",
        ),
        (r#"(import "backdoor" (func))"#, "backdoor"),
        // Known packages, unknown interface or function: refused by the link, still named.
        (
            r#"(import "wasi:filesystem/raw-disk@0.2.0" (instance (export "read" (func))))"#,
            "wasi:filesystem/raw-disk@0.2.0",
        ),
        (
            r#"(import "kasm:handler/kv@0.1.0" (instance (export "dump-all" (func))))"#,
            "kasm:handler/kv@0.1.0",
        ),
        (
            r#"(import "kasm:handler/admin@0.1.0" (instance (export "shutdown" (func))))"#,
            "kasm:handler/admin@0.1.0",
        ),
    ];
    for (import, name) in cases {
        let mut spec = HandlerSpec::new("under-attack");
        spec.grants = Grants::all();
        let e = match rt.load(&component_importing(import), spec) {
            Ok(_) => panic!("a component importing {name} was loaded"),
            Err(e) => e,
        };
        eprintln!("hostile import {name}: {e}");
        assert!(
            matches!(e, LoadError::UnknownImport { .. } | LoadError::Link(_)),
            "{name}: {e:?}"
        );
        assert!(e.to_string().contains(name), "names {name}: {e}");
    }
    // The runtime goes on loading well-formed components.
    let mut spec = HandlerSpec::new("after");
    spec.grants = Grants::all();
    rt.load(&component_bytes(kasm_tests::components::HOSTILE), spec)
        .unwrap();
}

/// What each hostile action sent through the pipeline must end as: the dead letter's
/// `kasm-dlq-error-kind`, or `None` when the call succeeds (the attack was absorbed).
const PIPELINE_ATTACKS: [(&str, Option<&str>); 10] = [
    (r#"{"action":"recurse"}"#, Some("trap")),
    (r#"{"action":"alloc","mib":1024}"#, Some("out-of-memory")),
    (r#"{"action":"busy-clock"}"#, Some("timeout")),
    (r#"{"action":"sleep"}"#, Some("timeout")),
    (r#"{"action":"big-error","mib":8}"#, Some("fatal")),
    (r#"{"action":"big-random","mib":1024}"#, Some("trap")),
    // Absorbed attacks stay small enough to finish within the deadline on a loaded machine
    // (lifting a raw stdout write costs ~13 ms per MiB in a debug build).
    (r#"{"action":"big-log","count":200,"kib":64}"#, None),
    (r#"{"action":"big-output","mib":1}"#, None),
    (r#"{"action":"escape"}"#, None),
    (r#"{"action":"ok"}"#, None),
];

/// Wait until `h` has processed (handled ok) `target` records; the time it took.
async fn wait_processed(h: &kasm_host::handler::HandlerCtx, target: u64) -> Duration {
    let start = Instant::now();
    loop {
        let done = h.stats.snapshot().processed;
        if done >= target {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < Duration::from_secs(240),
            "handler {} processed {done} of {target} records",
            h.name
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_handler_is_dead_lettered_while_a_good_one_next_to_it_processes_everything() {
    use kasm_tests::broker::{Rec, TestBroker, produce, read_topic};
    use kasm_tests::{KAFKA_TEST_PROPS, Setup, component, count_sources, events, unique};

    let s = Setup::new(TestBroker::from_env(), 4).await;
    let (good_in, good_out) = (unique("good-in"), unique("good-out"));
    s.broker.create_topic(&good_in, 4).await;
    s.broker.create_topic(&good_out, 4).await;
    s.broker.create_topic(&format!("{good_in}.dlq"), 1).await;
    let body = format!(
        "[kafka]\n{k}\n\
         [handlers.hostile]\ncomponent = \"{hostile}\"\ntopics = [\"{t}\"]\ngroup_id = \"{g}-hostile\"\n\
         deadline = \"300ms\"\nmemory_mib = 32\ngrants = {{ producer = [\"{o}\"] }}\n\n\
         [handlers.good]\ncomponent = \"{good}\"\ntopics = [\"{gi}\"]\ngroup_id = \"{g}-good\"\n\
         grants = {{ producer = [\"{go}\"] }}\n",
        k = KAFKA_TEST_PROPS,
        hostile = component(kasm_tests::components::HOSTILE).display(),
        good = component(kasm_tests::components::FIXTURE_PUBLISHER).display(),
        t = s.topic,
        o = s.out,
        g = s.group,
        gi = good_in,
        go = good_out,
    );
    let config =
        kasm_host::config::Config::load(&kasm_tests::write_config(s.dir.path(), &body)).unwrap();
    let host = kasm_host::app::start(&config, &s.env()).await.unwrap();
    let handler = |name: &str| {
        host.handlers
            .iter()
            .find(|h| h.name == name)
            .unwrap()
            .clone()
    };
    let (hostile, good) = (handler("hostile"), handler("good"));
    let producer = s.broker.producer();

    // Warm up: both groups joined, both components compiled.
    let warm = 8;
    produce(&producer, &good_in, &events("warm", 0..warm, &good_out)).await;
    let ok = |p: i32| Rec {
        payload: br#"{"action":"ok"}"#.to_vec(),
        partition: Some(p),
        ..Rec::default()
    };
    produce(&producer, &s.topic, &(0..4).map(ok).collect::<Vec<_>>()).await;
    wait_processed(&good, warm as u64).await;
    wait_processed(&hostile, 4).await;

    // Without an attack.
    let n = 2000;
    let start = Instant::now();
    produce(&producer, &good_in, &events("base", 0..n, &good_out)).await;
    wait_processed(&good, (warm + n) as u64).await;
    let base = start.elapsed();

    // During an attack: every partition of the hostile handler works through rounds of
    // attacks while the good handler gets the same load as before.
    let rounds = 3;
    let attacks: Vec<Rec> = (0..rounds * PIPELINE_ATTACKS.len() * 4)
        .map(|i| Rec {
            payload: PIPELINE_ATTACKS[(i / 4) % PIPELINE_ATTACKS.len()]
                .0
                .as_bytes()
                .to_vec(),
            partition: Some((i % 4) as i32),
            ..Rec::default()
        })
        .collect();
    produce(&producer, &s.topic, &attacks).await;
    let start = Instant::now();
    produce(&producer, &good_in, &events("attack", 0..n, &good_out)).await;
    wait_processed(&good, (warm + 2 * n) as u64).await;
    let during = start.elapsed();
    let attacked = hostile.stats.snapshot();

    let rate = |d: Duration| n as f64 / d.as_secs_f64();
    eprintln!(
        "hostile pipeline: good handler {n} records without attack in {base:?} ({:.0}/s), \
         during the attack in {during:?} ({:.0}/s), ratio {:.2}; the hostile handler had \
         dead-lettered {} and processed {} of {} attack records by then",
        rate(base),
        rate(during),
        rate(during) / rate(base),
        attacked.dead_lettered,
        attacked.processed - 4,
        attacks.len(),
    );

    // Every hostile record that failed is dead-lettered with its kind; the others were handled.
    let expected_dlq = attacks.len() / PIPELINE_ATTACKS.len()
        * PIPELINE_ATTACKS.iter().filter(|(_, k)| k.is_some()).count();
    let dlq = read_topic(
        &s.broker.bootstrap(),
        &format!("{}.dlq", s.topic),
        expected_dlq,
        Duration::from_secs(120),
    );
    assert_eq!(
        dlq.len(),
        expected_dlq,
        "one dead letter per failing attack"
    );
    for d in &dlq {
        let (_, kind) = PIPELINE_ATTACKS
            .iter()
            .find(|(p, _)| p.as_bytes() == d.payload.as_slice())
            .unwrap();
        assert_eq!(
            Some(d.headers["kasm-dlq-error-kind"].as_str()),
            *kind,
            "{}: {:?}",
            String::from_utf8_lossy(&d.payload),
            d.headers
        );
        assert!(d.headers["kasm-dlq-error-message"].len() <= (8 << 10) + 3);
        assert_eq!(d.headers["kasm-dlq-handler"], "hostile");
    }
    let hostile_ok = attacks.len() - expected_dlq;
    wait_processed(&hostile, (4 + hostile_ok) as u64).await;

    // The good handler handled every one of its events exactly once.
    let total = warm + 2 * n;
    let outputs = read_topic(
        &s.broker.bootstrap(),
        &good_out,
        total,
        Duration::from_secs(120),
    );
    let counts = count_sources(&outputs);
    assert_eq!(counts.len(), total, "every good event was handled");
    assert!(counts.values().all(|c| *c == 1), "and only once");
    let stats = good.stats.snapshot();
    assert_eq!((stats.processed, stats.dead_lettered), (total as u64, 0));
    host.shutdown().await.unwrap();
}
