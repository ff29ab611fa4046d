//! What every interpreted handler (Python: `handlers/python/`, JavaScript: `handlers/js/`)
//! must do under the real host, written once and run for each language by `python.rs` and
//! `javascript.rs`: a narrow world accepted with only the grant it needs, the language and
//! instance policy `kasm validate` reports, every failure kind, and a hot swap from Rust.
//!
//! Interpreted components are 12-19 MB and take seconds to compile; `kasm run` keeps the
//! compiled artifact in `KASM_CACHE_DIR` (the hosts tests start share one), so each is
//! compiled once per run. The tests of both languages take turns (one lock), so that no two
//! compile at once.

use std::time::Duration;

use tokio::sync::{Mutex, MutexGuard};

use kasm_tests::broker::{Rec, TestBroker, produce, read_topic};
use kasm_tests::components::Component;
use kasm_tests::hostproc::HostProcess;
use kasm_tests::{KAFKA_TEST_PROPS, Setup, count_sources, events, unique, write_config};

static TURN: Mutex<()> = Mutex::const_new(());

/// This test's turn among the interpreted-handler tests (a test that fails passes it on).
pub(super) async fn turn() -> MutexGuard<'static, ()> {
    TURN.lock().await
}

/// An interpreted language's fixtures: `<prefix>-producer-only`, `<prefix>-raises`, ...
pub(super) struct Guest {
    /// The components' name prefix in `handlers/dist/`: `py`, `js`.
    pub prefix: &'static str,
    /// What `kasm validate` calls the language: `python`, `javascript`.
    pub language: &'static str,
    /// The `version` field the producer-only fixture publishes.
    pub version: &'static str,
    /// Texts the `<prefix>-raises` trap message must hold: the language's stack trace.
    pub trap_holds: &'static [&'static str],
    /// `<prefix>-producer-only`: imports `producer` and nothing else that needs a grant.
    pub producer_only: Component,
    /// `<prefix>-raises`, `-retryable`, `-loops`, `-grows`: the ways a handler fails.
    pub raises: Component,
    pub retryable: Component,
    pub loops: Component,
    pub grows: Component,
}

/// The component built for `producer` imports nothing else that needs a grant: it starts
/// where only `producer` is granted, and publishes one output per event. Returns the outputs.
pub(super) async fn granted_only_producer_publishes_every_event(
    guest: &Guest,
) -> Vec<kasm_tests::broker::Got> {
    let component = guest.producer_only;
    let s = Setup::new(TestBroker::from_env(), 4).await;
    let n = 500;
    produce(&s.broker.producer(), &s.topic, &events("ev", 0..n, &s.out)).await;
    let body = format!(
        "[kafka]\n{KAFKA_TEST_PROPS}\n[handlers.pub]\ncomponent = \"{c}\"\ntopics = [\"{t}\"]\n\
         group_id = \"{g}\"\ngrants = {{ producer = [\"{o}\"] }}\n",
        c = kasm_tests::component(component).display(),
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
        outputs.iter().all(|o| o.json()["version"] == guest.version),
        "every output is the {} handler's",
        guest.language
    );
    // The compiled artifact went to the shared cache the host was pointed at
    // (`KASM_CACHE_DIR`), not to its data folder.
    let bytes = std::fs::read(kasm_tests::component(component)).unwrap();
    let sha = kasm_host::runtime::sha256_hex(&bytes);
    let cached = std::fs::read_dir(kasm_tests::shared_cache_dir())
        .unwrap()
        .filter_map(Result::ok)
        .any(|e| e.file_name().to_string_lossy().starts_with(&sha));
    assert!(cached, "no artifact for {sha} in the shared cache");
    assert!(!s.dir.path().join("data/artifacts").exists());
    outputs
}

/// `kasm validate` names the component's language and the instance policy it gets by default
/// (the one the host applies when `instance_reuse` is not set); a Rust one has none.
pub(super) fn says_its_language_and_defaults_to_reused_instances(guest: &Guest) {
    let validate = |name: Component| {
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
    let interpreted = validate(guest.producer_only);
    assert!(
        interpreted.contains(&format!(
            "language   {} (an instance serves {} records",
            guest.language,
            kasm_host::runtime::INTERPRETED_INSTANCE_REUSE
        )),
        "{interpreted}"
    );
    let rust = validate(kasm_tests::components::FIXTURE_PUBLISHER);
    assert!(!rust.contains("language"), "{rust}");
}

/// One topic per failing fixture, with its dead-letter topic.
struct Failing {
    topic: String,
    handler: &'static str,
}

/// A handler with a bug traps, with its stack trace in the dead letter; one whose dependency
/// is down is retried (and handled once it is back, or dead-lettered when its attempts run
/// out); one that never returns times out; one that keeps allocating is stopped at its memory
/// cap. Each dead letter carries its provenance.
pub(super) async fn failures_end_as_trap_retry_timeout_and_out_of_memory(guest: &Guest) {
    let broker = TestBroker::from_env();
    let dir = tempfile::tempdir().unwrap();
    let group = unique(&format!("{}-failures", guest.prefix));
    let mut failing = Vec::new();
    let mut tables = String::new();
    for (handler, component, extra) in [
        ("raises", guest.raises, ""),
        (
            "retryable",
            guest.retryable,
            "retry = { attempts = 3, initial_backoff = \"50ms\", max_backoff = \"100ms\" }\n",
        ),
        ("loops", guest.loops, "deadline = \"500ms\"\n"),
        ("grows", guest.grows, "memory_mib = 32\n"),
    ] {
        let topic = unique(&format!("{}-{handler}", guest.prefix));
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
    for holds in guest.trap_holds {
        assert!(
            message.contains(holds),
            "the trap carries the {} stack trace ({holds:?} missing): {message}",
            guest.language
        );
    }
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

/// A Rust handler swapped for its interpreted twin while records flow: the big component
/// compiles off the hot path (records keep flowing on the old version meanwhile), every event
/// is handled, and every event produced after the deploy answered runs on the new version.
pub(super) async fn swapped_from_rust_while_records_flow(guest: &Guest) {
    const TOKEN: &str = "interpreted-swap-token";
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
    let bytes = std::fs::read(kasm_tests::component(guest.producer_only)).unwrap();
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
            i >= n && j["version"] != guest.version
        })
        .collect();
    assert!(
        late_on_old.is_empty(),
        "{} events produced after the deploy ran on the old version",
        late_on_old.len()
    );
}
