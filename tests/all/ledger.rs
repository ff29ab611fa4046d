//! The ledger follows the partition: hosts in one group, hosts killed, hosts whose data folder
//! is new, and still no event whose ledger entry was acknowledged runs again.

use std::time::{Duration, Instant};

use kasm_tests::broker::{TestBroker, committed_offsets, produce, read_topic};
use kasm_tests::chaos::group::{GroupConfig, GroupFault, run_group};
use kasm_tests::hostproc::{HostProcess, http_get};
use kasm_tests::{
    KAFKA_TEST_PROPS, Setup, assert_each_once, component, count_sources, events, publisher_body,
    sqlite_ids, write_config,
};

/// A config for the publisher fixture in folder `data` (a data folder of its own, empty).
fn config(s: &Setup, data: &str, extra_top: &str) -> std::path::PathBuf {
    let dir = s.dir.path().join(data);
    std::fs::create_dir_all(&dir).unwrap();
    write_config(&dir, &publisher_body(s, extra_top, "", ""))
}

/// Counter `name` of handler `pub` by the host's admin API (0 when it does not answer).
fn counter(h: &HostProcess, name: &str) -> u64 {
    counter_of(h, "pub", name)
}

/// Counter `name` of `handler` by the host's admin API (0 when it does not answer).
fn counter_of(h: &HostProcess, handler: &str, name: &str) -> u64 {
    let (_, body) = http_get(&h.admin, &format!("/v1/handlers/{handler}"));
    serde_json::from_str::<serde_json::Value>(&body).unwrap_or_default()["counters"][name]
        .as_u64()
        .unwrap_or(0)
}

/// Wait (bounded) until the group's committed offsets of the source add up to `n`.
fn wait_committed(s: &Setup, n: i64, timeout: Duration) -> i64 {
    let deadline = Instant::now() + timeout;
    loop {
        let c: i64 = committed_offsets(&s.broker.bootstrap(), &s.group, &s.topic)
            .values()
            .sum();
        if c >= n || Instant::now() > deadline {
            return c;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `n` events `<prefix>-<i>` (in the `event-id` header, key `k<i>`), payload `payload(i)`.
fn keyed_events(
    prefix: &str,
    n: usize,
    payload: impl Fn(usize) -> serde_json::Value,
) -> Vec<kasm_tests::broker::Rec> {
    (0..n)
        .map(|i| kasm_tests::broker::Rec {
            key: Some(format!("k{i}").into_bytes()),
            payload: payload(i).to_string().into_bytes(),
            headers: vec![("event-id".into(), format!("{prefix}-{i}").into_bytes())],
            partition: None,
        })
        .collect()
}

/// From now on the embedded cluster refuses every write (`refuse`), or takes them again: a
/// batch's effects commit while its ledger entries never reach the ledger topic.
fn refuse_writes(s: &Setup, refuse: bool) {
    use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
    let cluster = s.broker.cluster();
    if refuse {
        cluster
            .request_errors(
                RDKafkaApiKey::Produce,
                &vec![RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS; 100_000],
            )
            .unwrap();
    } else {
        cluster
            .clear_request_errors(RDKafkaApiKey::Produce)
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_sigkill_a_host_on_an_empty_data_folder_runs_nothing_the_killed_one_recorded() {
    let s = Setup::new(TestBroker::from_env(), 4).await;
    let n = 4_000;
    let dups = 400;
    produce(&s.broker.producer(), &s.topic, &events("ev", 0..n, &s.out)).await;
    // Host a never commits on its own: when it is killed, everything it did is in the ledger
    // topic and nothing is committed, so the next owner is redelivered all of it.
    let a = HostProcess::start(
        &config(&s, "a", "commit_interval = \"1h\""),
        &s.broker.bootstrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(90);
    while a.processed("pub") < n as u64 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        a.processed("pub"),
        n as u64,
        "host a did not handle every event in 90 s"
    );
    a.kill();
    // Business duplicates: the same event ids again, at new offsets, after the kill.
    produce(
        &s.broker.producer(),
        &s.topic,
        &events("ev", 0..dups, &s.out),
    )
    .await;
    // Host b: another data folder, empty — a new pod.
    let mut b = HostProcess::start_logged(
        &config(&s, "b", ""),
        &s.broker.bootstrap(),
        "warn,kasm_host=info",
    );
    let total = (n + dups) as i64;
    let committed = wait_committed(&s, total, Duration::from_secs(120));
    assert_eq!(
        committed,
        total,
        "host b committed {committed} of {total}\n{}\nreadyz: {}",
        b.printed(),
        http_get(&b.admin, "/readyz").1
    );
    let (processed, skipped) = (counter(&b, "processed"), counter(&b, "skipped"));
    for l in b.printed().lines().filter(|l| l.contains("ledger restore")) {
        eprintln!("host b: {l}");
    }
    let outputs = read_topic(&s.broker.bootstrap(), &s.out, n, Duration::from_secs(30));
    let counts = count_sources(&outputs);
    eprintln!(
        "after the kill: host b ran {processed}, skipped {skipped}; {} outputs for {} events",
        outputs.len(),
        counts.len()
    );
    assert_each_once(&counts, "ev", n);
    assert_eq!(processed, 0, "host b ran events host a had recorded");
    assert_eq!(skipped, total as u64);
    let restored = b.find_line("ledger restored").unwrap_or_default();
    assert!(
        restored.contains("entries="),
        "no restore logged: {restored}"
    );
    let (_, metrics) = http_get(&b.admin, "/metrics");
    assert!(
        metrics.contains("kasm_ledger_restores_total{handler=\"pub\"} 4"),
        "four partitions restored:\n{}",
        metrics
            .lines()
            .filter(|l| l.contains("ledger_"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    b.signal("TERM");
    assert!(b.wait_exit(Duration::from_secs(30)).success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_moving_between_three_hosts_repeat_no_recorded_event() {
    // The embedded cluster: on Tansu 0.6 the joins and leaves of three members take longer
    // than this test waits.
    let s = Setup::new(TestBroker::embedded(), 4).await;
    let n = 9_000;
    let log = "warn,kasm_host=info";
    // A third of the events, then hosts join one by one while the rest arrive: every join
    // moves partitions, each new owner restores what the last one recorded.
    let all = events("ev", 0..n, &s.out);
    produce(&s.broker.producer(), &s.topic, &all[..n / 3]).await;
    let mut hosts = vec![HostProcess::start_logged(
        &config(&s, "h0", ""),
        &s.broker.bootstrap(),
        log,
    )];
    let deadline = Instant::now() + Duration::from_secs(60);
    while hosts[0].processed("pub") < 1_000 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    for (i, part) in [(1, &all[n / 3..2 * n / 3]), (2, &all[2 * n / 3..])] {
        hosts.push(HostProcess::start_logged(
            &config(&s, &format!("h{i}"), ""),
            &s.broker.bootstrap(),
            log,
        ));
        produce(&s.broker.producer(), &s.topic, part).await;
        std::thread::sleep(Duration::from_millis(500));
    }
    // Then the first one leaves (its partitions move again) and a duplicate of every tenth
    // event arrives.
    let mut first = hosts.remove(0);
    first.signal("TERM");
    assert!(first.wait_exit(Duration::from_secs(30)).success());
    let dups: Vec<_> = all.iter().step_by(10).cloned().collect();
    produce(&s.broker.producer(), &s.topic, &dups).await;
    let total = (n + dups.len()) as i64;
    let committed = wait_committed(&s, total, Duration::from_secs(180));
    let logs = || {
        hosts
            .iter()
            .chain(std::iter::once(&first))
            .map(|h| h.output.join("\n"))
            .collect::<Vec<_>>()
            .join("\n----\n")
    };
    assert_eq!(
        committed,
        total,
        "committed {committed} of {total}\n{}",
        logs()
    );
    let outputs = read_topic(&s.broker.bootstrap(), &s.out, n, Duration::from_secs(30));
    let counts = count_sources(&outputs);
    let restores: usize = hosts
        .iter_mut()
        .chain(std::iter::once(&mut first))
        .map(|h| h.printed().matches("ledger restored").count())
        .sum();
    eprintln!(
        "three hosts: {} outputs for {} events, {restores} partition restores",
        outputs.len(),
        counts.len()
    );
    assert_each_once(&counts, "ev", n);
    for mut h in hosts {
        h.signal("TERM");
        assert!(h.wait_exit(Duration::from_secs(30)).success());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_effects_committed_before_a_kill_that_lost_their_ledger_entries_apply_once() {
    let s = Setup::new(TestBroker::embedded(), 2).await;
    let migrations = s.dir.path().join("migrations");
    std::fs::create_dir_all(&migrations).unwrap();
    // No key, no ON CONFLICT: a second run of an event shows as a second row.
    std::fs::write(
        migrations.join("001_t.sql"),
        "CREATE TABLE t (id TEXT NOT NULL);",
    )
    .unwrap();
    let db = s.dir.path().join("shared.sqlite");
    let n = 400;
    let recs = keyed_events("sql", n, |i| {
        serde_json::json!({
            "steps": [{"execute": "INSERT INTO t (id) VALUES ($1)", "params": [format!("r-{i}")]}],
        })
    });
    produce(&s.broker.producer(), &s.topic, &recs).await;
    // From now on every write to the broker is refused: the handler's transactions commit,
    // their ledger entries never reach the ledger topic.
    refuse_writes(&s, true);
    let host_config = |data: &str| {
        let dir = s.dir.path().join(data);
        std::fs::create_dir_all(&dir).unwrap();
        let body = format!(
            "[kafka]\n{KAFKA_TEST_PROPS}\n[handlers.sql]\ncomponent = \"{c}\"\ntopics = [\"{t}\"]\n\
             group_id = \"{g}\"\npayload = \"json\"\n\
             grants = {{ sql = {{ sqlite = \"{db}\", migrations = \"{m}\" }} }}\n",
            c = component(kasm_tests::components::FIXTURE_SQL).display(),
            t = s.topic,
            g = s.group,
            db = db.display(),
            m = migrations.display(),
        );
        write_config(&dir, &body)
    };
    let mut a = HostProcess::start_logged(
        &host_config("a"),
        &s.broker.bootstrap(),
        "warn,kasm_host=info",
    );
    // Each partition commits its first batch's transaction, then waits on its ledger write
    // for good: wait until the rows stop growing.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut before = 0;
    loop {
        std::thread::sleep(Duration::from_millis(1500));
        let now = sqlite_ids(&db).len();
        if (now > 0 && now == before) || Instant::now() > deadline {
            break;
        }
        before = now;
    }
    assert!(
        before > 0,
        "host a committed no transaction\n{}",
        a.printed()
    );
    a.kill();
    refuse_writes(&s, false);
    // Host b knows nothing: an empty data folder, and a ledger topic without these events.
    let mut b = HostProcess::start_logged(
        &host_config("b"),
        &s.broker.bootstrap(),
        "warn,kasm_host=info",
    );
    let committed = wait_committed(&s, n as i64, Duration::from_secs(90));
    assert_eq!(
        committed,
        n as i64,
        "host b committed {committed} of {n}\n{}",
        b.printed()
    );
    let rows = sqlite_ids(&db);
    let twice: Vec<_> = rows.iter().filter(|(_, c)| **c > 1).collect();
    eprintln!(
        "sql inbox: host a committed {before} rows; then {} rows for {n} events, {} written twice; host b skipped {}",
        rows.values().sum::<usize>(),
        twice.len(),
        counter_of(&b, "sql", "skipped")
    );
    assert_eq!(rows.len(), n);
    assert!(
        twice.is_empty(),
        "{} events' rows written twice, e.g. {:?}",
        twice.len(),
        twice.first()
    );
    // What host a's transactions committed, host b skipped through the inbox; the rest it ran.
    assert_eq!(counter_of(&b, "sql", "skipped"), before as u64);
    assert_eq!(counter_of(&b, "sql", "processed"), (n - before) as u64);
    b.signal("TERM");
    assert!(b.wait_exit(Duration::from_secs(30)).success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hosts_through_kills_rolling_restarts_scaling_and_wiped_folders_rerun_no_recorded_event()
 {
    // The short version of `make chaos`'s multi-host rounds: one round, one fault of each kind,
    // on the embedded cluster, or on the broker of KASM_TEST_BOOTSTRAP (CI runs it on Tansu
    // too). Tansu 0.6 keeps a group waiting, without assignments, for a leader that left it by
    // SIGTERM during a rebalance (its JoinGroup answers keep naming the departed member as
    // leader for minutes): there every stop is a SIGKILL, and the round's faults are the two
    // kinds made of kills (the group forgets a killed host when its session expires).
    let external = std::env::var("KASM_TEST_BOOTSTRAP").is_ok_and(|b| !b.trim().is_empty());
    let (kinds, leaves) = if external {
        (vec![GroupFault::Sigkill, GroupFault::WipedRestart], false)
    } else {
        (GroupFault::ALL.to_vec(), true)
    };
    let cfg = GroupConfig {
        rounds: 1,
        events: 1_500,
        faults_per_round: GroupFault::ALL.len(),
        duplicates: 0.03,
        seed: rand::random(),
        max_duration: Duration::from_secs(600),
        partitions: 4,
        summary_file: "group-short-summary.txt".into(),
        kinds: kinds.clone(),
        leaves,
    }
    .from_env();
    let rt = tokio::runtime::Handle::current();
    let events = cfg.events;
    let summary = tokio::task::spawn_blocking(move || run_group(&cfg, TestBroker::from_env, &rt))
        .await
        .unwrap();
    summary.assert_clean(&kinds, events, GroupFault::ALL.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_writes_applied_before_a_kill_that_lost_their_ledger_entries_are_not_run_again() {
    use kasm_host::capabilities::{FileKv, KvStore as _};
    let s = Setup::new(TestBroker::embedded(), 2).await;
    let n = 300;
    let recs = keyed_events(
        "kv",
        n,
        |i| serde_json::json!({"action": "kv", "key": format!("k{i}"), "value": "v"}),
    );
    produce(&s.broker.producer(), &s.topic, &recs).await;
    // Every write to the broker is refused from now on: the batches' kv writes are applied,
    // their ledger entries never reach the ledger topic.
    refuse_writes(&s, true);
    // One pod, restarted on its own disk: the kv store is in its data folder.
    let dir = s.dir.path().join("pod");
    std::fs::create_dir_all(&dir).unwrap();
    let body = format!(
        "[kafka]\n{KAFKA_TEST_PROPS}\n[handlers.kv]\ncomponent = \"{c}\"\ntopics = [\"{t}\"]\n\
         group_id = \"{g}\"\nmax_batch = 50\ngrants = {{ kv = true, producer = [\"{o}\"] }}\n",
        c = component(kasm_tests::components::FIXTURE).display(),
        t = s.topic,
        g = s.group,
        o = s.out,
    );
    let config = write_config(&dir, &body);
    let kv_path = dir.join("data").join("kv.redb");
    let ids: Vec<String> = (0..n).map(|i| format!("kv-{i}")).collect();
    let id_refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    let mut a = HostProcess::start_logged(&config, &s.broker.bootstrap(), "warn,kasm_host=info");
    // Each partition applies its first batch's kv writes (50 records), then waits on its
    // ledger write for good; give it the time to get there.
    std::thread::sleep(Duration::from_secs(6));
    let printed = a.printed();
    a.kill();
    let applied = FileKv::open(&kv_path)
        .unwrap()
        .applied("kv", &id_refs)
        .await
        .unwrap();
    assert!(
        !applied.is_empty() && applied.len() < n,
        "host a applied {} events' kv writes\n{printed}",
        applied.len()
    );
    refuse_writes(&s, false);
    let mut b = HostProcess::start_logged(&config, &s.broker.bootstrap(), "warn,kasm_host=info");
    let committed = wait_committed(&s, n as i64, Duration::from_secs(90));
    assert_eq!(
        committed,
        n as i64,
        "host b committed {committed} of {n}\n{}",
        b.printed()
    );
    let (processed, skipped) = (
        counter_of(&b, "kv", "processed"),
        counter_of(&b, "kv", "skipped"),
    );
    eprintln!(
        "kv inbox: host a applied {} events' writes; the restarted host skipped {skipped}, ran {processed}",
        applied.len()
    );
    // What host a applied, the restarted host skipped through the inbox; the rest it ran.
    assert_eq!(skipped, applied.len() as u64);
    assert_eq!(processed, (n - applied.len()) as u64);
    b.signal("TERM");
    assert!(b.wait_exit(Duration::from_secs(30)).success());
    let kv = FileKv::open(&kv_path).unwrap();
    assert_eq!(kv.applied("kv", &id_refs).await.unwrap().len(), n);
    assert_eq!(kv.get("kv", "k0").await.unwrap(), Some(b"v".to_vec()));
}
