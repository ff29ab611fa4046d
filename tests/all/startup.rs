//! Starting and stopping as a newcomer and an operator do: `kasm dev` stopped with Ctrl-C,
//! the README's `[kafka]` example, several hosts started at once against one database, and a
//! host killed right after it dead-lettered records whose offsets it had not committed.

use std::collections::HashMap;
use std::process::Command;
use std::time::{Duration, Instant};

use kasm_tests::broker::{Rec, TestBroker, produce, read_topic};
use kasm_tests::hostproc::HostProcess;
use kasm_tests::{
    KAFKA_TEST_PROPS, Setup, component, count_sources, events, kasm_bin, publisher_body, root,
};
use kasm_tests::{shared_cache_dir, write_config};

/// Output lines that a clean run must not print.
fn errors_in(output: &str) -> Vec<&str> {
    output
        .lines()
        .filter(|l| l.contains("ERROR") || l.contains("CONFWARN"))
        .collect()
}

#[test]
fn kasm_dev_stops_on_ctrl_c_without_an_error() {
    let mut command = Command::new(kasm_bin());
    command
        .args([
            "dev",
            "--admin",
            "127.0.0.1:0",
            "--rate",
            "40",
            "--handlers-dir",
        ])
        .arg(root().join("handlers").join("dist"))
        .env("KASM_CACHE_DIR", shared_cache_dir())
        .env_remove("RUST_LOG");
    let mut dev = HostProcess::spawn(command, "kasm dev: admin at http://");
    dev.wait_status("/readyz", 200, Duration::from_secs(120));
    // Demo traffic through every handler, so that every client is in use at the signal.
    std::thread::sleep(Duration::from_secs(3));
    dev.signal("INT");
    let status = dev.wait_exit(Duration::from_secs(60));
    let output = dev.printed();
    assert!(status.success(), "kasm dev exited {status}:\n{output}");
    assert!(output.contains("kasm dev: shutting down"), "{output}");
    let processed = output
        .lines()
        .filter(|l| l.trim_start().starts_with("audit "))
        .filter_map(|l| l.split_whitespace().nth(2)?.parse::<u64>().ok())
        .max()
        .unwrap_or(0);
    assert!(processed > 0, "demo events were handled:\n{output}");
    let bad = errors_in(&output);
    assert!(
        bad.is_empty(),
        "a clean shutdown prints no error: {bad:#?}\n{output}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_kafka_example_starts_without_a_librdkafka_warning() {
    let s = Setup::new(TestBroker::from_env(), 1).await;
    // The README's example property is consumer-only; a producer-only one beside it.
    let body = publisher_body(&s, "", "\"linger.ms\" = 1\n", "");
    assert!(KAFKA_TEST_PROPS.contains("session.timeout.ms"));
    let cfg = write_config(s.dir.path(), &body);
    let mut host = HostProcess::start_logged(&cfg, &s.broker.bootstrap(), "warn");
    host.wait_status("/readyz", 200, Duration::from_secs(60));
    // A record through the consumer and the producer.
    produce(&s.broker.producer(), &s.topic, &events("ev", 0..1, &s.out)).await;
    let got = read_topic(&s.broker.bootstrap(), &s.out, 1, Duration::from_secs(30));
    assert_eq!(got.len(), 1);
    host.signal("TERM");
    let status = host.wait_exit(Duration::from_secs(30));
    let output = host.printed();
    assert!(status.success(), "{output}");
    let bad = errors_in(&output);
    assert!(bad.is_empty(), "no warning about a property: {bad:#?}");
}

/// Migrations that fail if any is applied twice (no `IF NOT EXISTS`) and count themselves.
fn counting_migrations(dir: &std::path::Path) -> std::path::PathBuf {
    let m = dir.join("migrations");
    std::fs::create_dir_all(&m).unwrap();
    std::fs::write(
        m.join("001_applied.sql"),
        "CREATE TABLE applied (n INTEGER NOT NULL); INSERT INTO applied (n) VALUES (1);",
    )
    .unwrap();
    std::fs::write(
        m.join("002_t.sql"),
        "CREATE TABLE t (id TEXT PRIMARY KEY); INSERT INTO applied (n) VALUES (2);",
    )
    .unwrap();
    std::fs::write(
        m.join("003_more.sql"),
        "CREATE TABLE more (id TEXT PRIMARY KEY); INSERT INTO applied (n) VALUES (3);",
    )
    .unwrap();
    m
}

/// Start `n` hosts at the same moment, each with a data folder of its own and the fixture-sql
/// handler granted `sql` (table `grant`), all in one group; every one must become ready.
fn start_together(s: &Setup, n: usize, grant: &str, env: &[(&str, &str)]) -> Vec<HostProcess> {
    let migrations = counting_migrations(s.dir.path());
    let configs: Vec<_> = (0..n)
        .map(|i| {
            let dir = s.dir.path().join(format!("host-{i}"));
            std::fs::create_dir_all(&dir).unwrap();
            let body = format!(
                "[kafka]\n{KAFKA_TEST_PROPS}\n[handlers.sql]\ncomponent = \"{c}\"\n\
                 topics = [\"{t}\"]\ngroup_id = \"{g}\"\n\
                 grants = {{ sql = {{ {grant}, migrations = \"{m}\" }} }}\n",
                c = component(kasm_tests::components::FIXTURE_SQL).display(),
                t = s.topic,
                g = s.group,
                m = migrations.display(),
            );
            write_config(&dir, &body)
        })
        .collect();
    // Spawned one after another without waiting: they migrate at the same moment.
    let handles: Vec<_> = configs
        .into_iter()
        .map(|cfg| {
            let (bootstrap, env) = (
                s.broker.bootstrap(),
                env.iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect::<Vec<_>>(),
            );
            std::thread::spawn(move || {
                let env: Vec<(&str, &str)> =
                    env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                HostProcess::start_with_env(&cfg, &bootstrap, "warn", &env)
            })
        })
        .collect();
    let mut hosts: Vec<HostProcess> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    for h in &mut hosts {
        h.wait_status("/readyz", 200, Duration::from_secs(120));
    }
    hosts
}

fn stop_all(hosts: Vec<HostProcess>) {
    for h in &hosts {
        h.signal("TERM");
    }
    for mut h in hosts {
        let status = h.wait_exit(Duration::from_secs(60));
        assert!(status.success(), "{}", h.printed());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hosts_started_at_once_on_a_fresh_postgres_migrate_it_once() {
    let s = Setup::new(TestBroker::from_env(), 4).await;
    let url = super::sql::pg_schema().await;
    let hosts = start_together(
        &s,
        5,
        "url_env = \"KASM_TEST_SQL_URL\"",
        &[("KASM_TEST_SQL_URL", url.as_str())],
    );
    stop_all(hosts);
    let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let applied: Vec<i32> = client
        .query("SELECT n FROM applied ORDER BY n", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(applied, [1, 2, 3], "every migration applied exactly once");
    let recorded: i64 = client
        .query_one(
            "SELECT count(*) FROM kasm_migrations WHERE handler = 'sql'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(recorded, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hosts_started_at_once_on_one_sqlite_file_migrate_it_once() {
    let s = Setup::new(TestBroker::from_env(), 4).await;
    let file = s.dir.path().join("shared.sqlite");
    let hosts = start_together(&s, 5, &format!("sqlite = \"{}\"", file.display()), &[]);
    stop_all(hosts);
    let db = rusqlite::Connection::open(&file).unwrap();
    let applied: Vec<i64> = db
        .prepare("SELECT n FROM applied ORDER BY n")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(applied, [1, 2, 3], "every migration applied exactly once");
    let recorded: i64 = db
        .query_row("SELECT count(*) FROM kasm_migrations", [], |r| r.get(0))
        .unwrap();
    assert_eq!(recorded, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_record_redelivered_after_a_kill_is_not_dead_lettered_again() {
    // One partition, so the marker produced after the restart proves the poison records
    // before it were delivered to the new host again.
    let s = Setup::new(TestBroker::from_env(), 1).await;
    let dlq = format!("{}.dlq", s.topic);
    let body = publisher_body(&s, "commit_interval = \"1h\"", "", "payload = \"json\"");
    let cfg = write_config(s.dir.path(), &body);
    let poison = 12;
    let mut records = Vec::new();
    for i in 0..poison {
        records.extend(events("good", i..i + 1, &s.out));
        records.push(Rec {
            payload: format!("not json {i} {{").into_bytes(),
            headers: vec![("event-id".into(), format!("poison-{i}").into_bytes())],
            ..Rec::default()
        });
    }
    // The last record is a good one: once its output exists, every record before it in the
    // partition is finished (dead letters written and recorded), none of them committed.
    records.extend(events("tail", 0..1, &s.out));
    produce(&s.broker.producer(), &s.topic, &records).await;

    let host = HostProcess::start(&cfg, &s.broker.bootstrap());
    let out = read_topic(
        &s.broker.bootstrap(),
        &s.out,
        poison + 1,
        Duration::from_secs(60),
    );
    assert!(
        count_sources(&out).contains_key("tail-0"),
        "{} outputs",
        out.len()
    );
    let dead = read_topic(&s.broker.bootstrap(), &dlq, poison, Duration::from_secs(30));
    assert_eq!(dead.len(), poison, "every poison record dead-lettered");
    // Nothing was committed ("1h"): the whole partition comes again after the kill.
    host.kill();

    let host = HostProcess::start(&cfg, &s.broker.bootstrap());
    produce(
        &s.broker.producer(),
        &s.topic,
        &events("marker", 0..1, &s.out),
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let out = read_topic(
            &s.broker.bootstrap(),
            &s.out,
            usize::MAX,
            Duration::from_secs(2),
        );
        if count_sources(&out).contains_key("marker-0") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the marker after the poison records was never handled"
        );
    }
    let dead = read_topic(
        &s.broker.bootstrap(),
        &dlq,
        usize::MAX,
        Duration::from_secs(5),
    );
    let mut per_id: HashMap<String, usize> = HashMap::new();
    for d in &dead {
        let id = d.headers.get("event-id").cloned().unwrap_or_default();
        *per_id.entry(id).or_default() += 1;
    }
    let twice: Vec<_> = per_id.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        twice.is_empty(),
        "dead-lettered again after the restart: {twice:?}"
    );
    assert_eq!(per_id.len(), poison, "{per_id:?}");
    drop(host);
}
