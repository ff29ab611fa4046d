use std::path::Path;
use std::time::Duration;

use super::*;

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn setup() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "a.wasm", "x");
    dir
}

fn errors(dir: &Path, text: &str) -> String {
    let p = write(dir, "kasm.toml", text);
    match Config::load(&p) {
        Ok(_) => panic!("expected errors"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn a_minimal_file_takes_the_defaults() {
    let dir = setup();
    let p = write(
        dir.path(),
        "kasm.toml",
        "[handlers.audit]\ncomponent = \"a.wasm\"\ntopics = [\"task-events\"]\n",
    );
    let c = Config::load(&p).unwrap();
    let h = &c.handlers["audit"];
    assert_eq!(h.group_id("audit"), "kasm.audit");
    assert_eq!(h.dlq_topic_for("task-events"), "task-events.dlq");
    assert_eq!(h.ledger_topic_for("audit"), "kasm.audit.ledger");
    assert_eq!(c.ledger_store, LedgerStore::Kafka);
    assert_eq!(h.retry, RetryPolicy::default());
    assert_eq!(h.component, dir.path().join("a.wasm"));
    assert_eq!(c.data_dir, dir.path().join(".kasm"));
    assert_eq!(c.drain_timeout, Duration::from_secs(10));
}

#[test]
fn an_unknown_key_names_key_and_file() {
    let dir = setup();
    let e = errors(
        dir.path(),
        "[handlers.audit]\ncomponent = \"a.wasm\"\ntopics = [\"t\"]\nretires = 3\n",
    );
    assert!(
        e.contains("kasm.toml") && e.contains("handlers.audit.retires"),
        "{e}"
    );
    assert!(e.contains("unknown field"), "{e}");
}

#[test]
fn an_unknown_key_names_the_line_it_is_on() {
    let dir = setup();
    // The misspelt key is on line 6, at the start of the line.
    let e = errors(
        dir.path(),
        "data_dir = \".kasm\"\n\n[handlers.audit]\ncomponent = \"a.wasm\"\ntopics = [\"t\"]\n\
         retires = 3\ndeadline = \"1s\"\n",
    );
    assert!(e.contains("handlers.audit.retires"), "{e}");
    assert!(e.contains("(line 6)"), "{e}");
    // A key in the middle of a line (an inline table) is on that line too.
    let e = errors(
        dir.path(),
        "[handlers.audit]\ncomponent = \"a.wasm\"\ntopics = [\"t\"]\n\
         retry = { attempts = 3, tries = 2 }\n",
    );
    assert!(e.contains("(line 4)"), "{e}");
}

#[test]
fn duplicate_group_ids_are_refused() {
    let dir = setup();
    let e = errors(
        dir.path(),
        "[handlers.a]\ncomponent = \"a.wasm\"\ntopics = [\"t\"]\ngroup_id = \"g\"\n\
         [handlers.b]\ncomponent = \"a.wasm\"\ntopics = [\"u\"]\ngroup_id = \"g\"\n",
    );
    assert!(
        e.contains("kasm.toml: handlers.b.group_id: group id `g` is also used by handler `a`"),
        "{e}"
    );
}

#[test]
fn a_missing_component_and_nonsense_values_are_all_reported() {
    let dir = setup();
    let e = errors(
        dir.path(),
        "drain_timeout = \"60s\"\n[handlers.a]\ncomponent = \"missing.wasm\"\ntopics = [\"t\", \"bad topic\"]\n\
         retry = { attempts = 0, jitter = 3.0 }\nmemory_mib = 0\n",
    );
    for needle in [
        "handlers.a.component: component file",
        "missing.wasm does not exist",
        "`bad topic` is not a valid topic name",
        "handlers.a.retry.attempts",
        "handlers.a.retry.jitter",
        "handlers.a.memory_mib",
        "drain_timeout: 60s must be shorter than the consumer session timeout",
    ] {
        assert!(e.contains(needle), "missing `{needle}` in:\n{e}");
    }
}

#[test]
fn credentials_are_refused_in_the_file() {
    let dir = setup();
    let e = errors(
        dir.path(),
        "[kafka]\n\"sasl.password\" = \"hunter2\"\n[handlers.a]\ncomponent = \"a.wasm\"\ntopics = [\"t\"]\n",
    );
    assert!(
        e.contains("kafka.\"sasl.password\": set it in the environment (KAFKA_SASL_PASSWORD)"),
        "{e}"
    );
    assert!(!e.contains("hunter2"), "the secret is not echoed: {e}");
}

#[test]
fn secrets_never_show_in_debug_output() {
    let env = KafkaEnv::from_lookup(|k| match k {
        "KAFKA_BOOTSTRAP_SERVERS" => Some("b:9092".into()),
        "KAFKA_SASL_USERNAME" => Some("alice".into()),
        "KAFKA_SASL_PASSWORD" => Some("hunter2".into()),
        _ => None,
    });
    let dbg = format!("{env:?}");
    assert!(!dbg.contains("hunter2") && !dbg.contains("alice"), "{dbg}");
    assert!(
        env.properties()
            .contains(&("sasl.password", "hunter2".to_owned()))
    );
}

#[test]
fn backoff_doubles_up_to_the_cap_with_bounded_jitter() {
    let p = RetryPolicy {
        attempts: 6,
        initial_backoff: Duration::from_millis(100),
        max_backoff: Duration::from_millis(500),
        jitter: 0.2,
    };
    assert_eq!(p.base_backoff(2), Duration::from_millis(100));
    assert_eq!(p.base_backoff(3), Duration::from_millis(200));
    assert_eq!(p.base_backoff(4), Duration::from_millis(400));
    assert_eq!(p.base_backoff(5), Duration::from_millis(500));
    assert_eq!(p.backoff(3, 0.0), Duration::from_millis(160));
    assert_eq!(p.backoff(3, 0.5), Duration::from_millis(200));
    assert!(p.backoff(3, 0.999) <= Duration::from_millis(240));
}

#[test]
fn ledger_topics_are_valid_and_each_handler_has_its_own() {
    let dir = setup();
    let e = errors(
        dir.path(),
        "[handlers.a]\ncomponent = \"a.wasm\"\ntopics = [\"t\"]\nledger_topic = \"shared\"\n\
         [handlers.b]\ncomponent = \"a.wasm\"\ntopics = [\"t\"]\nledger_topic = \"shared\"\n\
         [handlers.c]\ncomponent = \"a.wasm\"\ntopics = [\"t\"]\nledger_topic = \"t\"\n\
         [handlers.d]\ncomponent = \"a.wasm\"\ntopics = [\"t\"]\ngroup_id = \"a group\"\n",
    );
    assert!(
        e.contains("handlers.b.ledger_topic: ledger topic `shared` is also used by handler `a`"),
        "{e}"
    );
    assert!(
        e.contains("handlers.c.ledger_topic: the ledger topic must be a topic of its own"),
        "{e}"
    );
    assert!(
        e.contains("handlers.d.ledger_topic: the default ledger topic `a group.ledger`"),
        "{e}"
    );
    // With the file store the topics are not used, and not checked for clashes.
    let p = write(
        dir.path(),
        "kasm.toml",
        "ledger_store = \"file\"\n[handlers.a]\ncomponent = \"a.wasm\"\ntopics = [\"t\"]\nledger_topic = \"shared\"\n\
         [handlers.b]\ncomponent = \"a.wasm\"\ntopics = [\"t\"]\nledger_topic = \"shared\"\n",
    );
    assert_eq!(Config::load(&p).unwrap().ledger_store, LedgerStore::File);
}
