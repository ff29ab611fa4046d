//! The task-app services end to end, as their users see them: the real components on a real
//! broker, a separate `kasm run` process, real databases.

use std::time::{Duration, Instant};

use kasm_host::capabilities::SqlValue;
use kasm_host::capabilities::sql::{self, SqlTarget};
use kasm_tests::broker::{Rec, TestBroker, produce};
use kasm_tests::hostproc::HostProcess;
use kasm_tests::{KAFKA_TEST_PROPS, Setup, root, unique, write_config};

/// `n` task events with ids `{prefix}-{i}`, keyed by user.
fn task_events(prefix: &str, n: usize) -> Vec<Rec> {
    let kinds = [
        "task.created",
        "task.updated",
        "task.completed",
        "task.deleted",
    ];
    (0..n)
        .map(|i| {
            let user = format!("u{}", i % 7);
            let payload = serde_json::json!({
                "event_id": format!("{prefix}-{i}"),
                "event_type": kinds[i % kinds.len()],
                "task_id": format!("t-{}", i / 4),
                "user_id": user,
                "timestamp": "2026-11-27T09:15:00Z",
                "task": {"title": format!("task {i}"), "tags": [], "completed": i % 4 == 2}
            });
            Rec {
                key: Some(user.into_bytes()),
                payload: serde_json::to_vec(&payload).unwrap(),
                ..Rec::default()
            }
        })
        .collect()
}

async fn audit_rows(target: &SqlTarget) -> i64 {
    let db = sql::open(target, "audit").unwrap();
    let Ok(mut tx) = db.begin().await else {
        return -1;
    };
    match tx.query("SELECT count(*) FROM audit_log", &[]).await {
        Ok(rows) => match rows.rows[0][0] {
            SqlValue::Integer(n) => n,
            _ => -1,
        },
        Err(_) => -1,
    }
}

/// A `kasm run` with the audit handler (component `component` of `handlers/dist/`) on
/// `sql_grant`, reading `topic` as `group`.
fn audit_host(
    s: &Setup,
    component: kasm_tests::components::Component,
    data: &str,
    group: &str,
    sql_grant: &str,
    env: &[(&str, &str)],
) -> HostProcess {
    let dir = s.dir.path().join(data);
    std::fs::create_dir_all(&dir).unwrap();
    let body = format!(
        "[kafka]\n{k}\n[handlers.audit]\ncomponent = \"{c}\"\ntopics = [\"{t}\"]\n\
         group_id = \"{group}\"\npayload = \"json\"\n\
         grants = {{ sql = {{ {sql_grant}, migrations = \"{m}\" }} }}\n",
        k = KAFKA_TEST_PROPS,
        c = kasm_tests::component(component).display(),
        t = s.topic,
        m = root().join("handlers/audit/migrations").display(),
        sql_grant = sql_grant,
    );
    let cfg = write_config(&dir, &body);
    HostProcess::start_with_env(&cfg, &s.broker.bootstrap(), "warn", env)
}

/// Wait (bounded) until `group` has committed everything the topic holds.
async fn wait_committed(s: &Setup, group: &str, records: usize) {
    let (end, c) = kasm_tests::wait_committed(s, group, records, Duration::from_secs(120)).await;
    assert!(
        end.iter().all(|(p, e)| *e == 0 || c.get(p) == Some(e)),
        "{group} committed {c:?}, end {end:?}"
    );
}

/// 1,000 task events → 1,000 rows. Then the same events again (new offsets) → still 1,000.
/// Then a second host with a fresh ledger and its own group, which runs the handler on every
/// event again (its ledger only skips the second copies) → still 1,000 rows: the event id is
/// the table's key.
pub(super) async fn audit_writes_one_row_per_event(
    component: kasm_tests::components::Component,
    target: SqlTarget,
    sql_grant: &str,
    env: &[(&str, &str)],
) {
    let s = Setup::new(TestBroker::from_env(), 4).await;
    let n = 1_000;
    let events = task_events(&unique("task"), n);
    produce(&s.broker.producer(), &s.topic, &events).await;

    let first_group = unique("audit");
    let mut host = audit_host(&s, component, "a", &first_group, sql_grant, env);
    let deadline = Instant::now() + Duration::from_secs(120);
    while audit_rows(&target).await < n as i64 {
        if Instant::now() >= deadline {
            // What the host said (warnings: retries, dead letters) tells a lost record from
            // one that failed.
            panic!(
                "rows: {} of {n}; kasm's output:\n{}",
                audit_rows(&target).await,
                host.printed()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The same events again, at new offsets.
    produce(&s.broker.producer(), &s.topic, &events).await;
    wait_committed(&s, &first_group, 2 * n).await;
    assert_eq!(
        audit_rows(&target).await,
        n as i64,
        "redelivered ids add no row"
    );
    host.signal("TERM");
    assert!(host.wait_exit(Duration::from_secs(30)).success());

    // A host that remembers nothing runs every record through the handler again.
    let second_group = unique("audit-again");
    let mut again = audit_host(&s, component, "b", &second_group, sql_grant, env);
    wait_committed(&s, &second_group, 2 * n).await;
    again.signal("TERM");
    assert!(again.wait_exit(Duration::from_secs(30)).success());
    // Its own ledger skips the second copies; the first ones all ran the handler again.
    let line = again.wait_line("kasm: handler audit:", Duration::from_secs(5));
    assert!(
        line.contains(&format!("processed {n} skipped {n} ")),
        "{line}"
    );
    assert_eq!(
        audit_rows(&target).await,
        n as i64,
        "a replay inserts nothing new"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_on_sqlite_writes_exactly_one_row_per_event() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("audit.sqlite");
    let grant = format!("sqlite = \"{}\"", file.display());
    audit_writes_one_row_per_event(
        kasm_tests::components::AUDIT,
        SqlTarget::Sqlite(file),
        &grant,
        &[],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_on_postgres_writes_exactly_one_row_per_event() {
    let url = super::sql::pg_schema().await;
    audit_writes_one_row_per_event(
        kasm_tests::components::AUDIT,
        SqlTarget::Postgres(url.clone()),
        "url_env = \"AUDIT_DATABASE_URL\"",
        &[("AUDIT_DATABASE_URL", &url)],
    )
    .await;
}

/// `kasm produce`, as a producing service would publish, with its stdin as the event.
fn kasm_produce(
    bootstrap: &str,
    topic: &str,
    event: &serde_json::Value,
    args: &[&str],
) -> serde_json::Value {
    use std::io::Write as _;
    let mut child = std::process::Command::new(kasm_tests::kasm_bin())
        .args(["produce", topic, "-", "--json"])
        .args(args)
        .env("KAFKA_BOOTSTRAP_SERVERS", bootstrap)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(event.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "kasm produce: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.trim()).unwrap()
}

/// A completed weekly task (Mondays and Fridays, until `until`), due `due`, without an id.
fn completion(task_id: &str, due: &str, until: &str) -> serde_json::Value {
    serde_json::json!({
        "event_type": "task.completed",
        "task_id": task_id,
        "user_id": "u1",
        "timestamp": "2026-11-27T18:04:12Z",
        "task": {
            "title": "Water the plants", "tags": ["home"], "completed": true, "due_date": due,
            "recurrence": {"frequency": "weekly", "interval": 1, "weekdays": ["mon", "fri"],
                           "until": until}
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn produced_task_events_are_audited_and_recurring_tasks_continue() {
    audited_and_continued(
        kasm_tests::components::AUDIT,
        kasm_tests::components::RECURRING,
    )
    .await;
}

/// Task events produced with `kasm produce`, run through the audit and recurring handlers
/// (components `audit` and `recurring` of `handlers/dist/`): one audit row per distinct event,
/// one next occurrence per completion with a deterministic id, none after the series ends.
pub(super) async fn audited_and_continued(
    audit: kasm_tests::components::Component,
    recurring: kasm_tests::components::Component,
) {
    let s = Setup::new(TestBroker::from_env(), 4).await;
    let db = s.dir.path().join("audit.sqlite");
    let body = format!(
        "[kafka]\n{k}\n\
         [handlers.audit]\ncomponent = \"{audit}\"\ntopics = [\"{t}\"]\ngroup_id = \"{g}-audit\"\n\
         payload = \"json\"\ngrants = {{ sql = {{ sqlite = \"{db}\", migrations = \"{m}\" }} }}\n\
         [handlers.recurring]\ncomponent = \"{rec}\"\ntopics = [\"{t}\"]\ngroup_id = \"{g}-rec\"\n\
         payload = \"json\"\ngrants = {{ producer = [\"{t}\"] }}\n",
        k = KAFKA_TEST_PROPS,
        audit = kasm_tests::component(audit).display(),
        rec = kasm_tests::component(recurring).display(),
        t = s.topic,
        g = s.group,
        db = db.display(),
        m = root().join("handlers/audit/migrations").display(),
    );
    let cfg = write_config(s.dir.path(), &body);
    let mut host = HostProcess::start(&cfg, &s.broker.bootstrap());
    host.wait_status("/readyz", 200, Duration::from_secs(60));
    let bootstrap = s.broker.bootstrap();

    // A completion: acknowledged with its partition and offset, a generated event id, keyed by user.
    let first = kasm_produce(
        &bootstrap,
        &s.topic,
        &completion("t-42", "2026-11-27", "2027-06-30"),
        &[],
    );
    let id = first["event_id"].as_str().unwrap().to_owned();
    assert!(uuid_like(&id), "{first}");
    assert!(first["partition"].as_i64().unwrap() >= 0 && first["offset"].as_i64().unwrap() >= 0);
    // The same completion again (a producer retrying with the same id).
    kasm_produce(
        &bootstrap,
        &s.topic,
        &completion("t-42", "2026-11-27", "2027-06-30"),
        &["--header", &format!("event-id={id}")],
    );
    // A completion of the last occurrence before the series ends.
    let last = kasm_produce(
        &bootstrap,
        &s.topic,
        &completion("t-50", "2027-06-28", "2027-06-30"),
        &[],
    );
    let last_id = last["event_id"].as_str().unwrap().to_owned();

    // 4 records: the three produced and one next occurrence; all committed by both handlers.
    wait_committed(&s, &format!("{}-audit", s.group), 4).await;
    wait_committed(&s, &format!("{}-rec", s.group), 4).await;
    host.signal("TERM");
    assert!(host.wait_exit(Duration::from_secs(30)).success());

    let records = kasm_tests::broker::read_topic(&bootstrap, &s.topic, 4, Duration::from_secs(30));
    assert_eq!(
        records.len(),
        4,
        "no more than one next occurrence, and none after the end"
    );
    assert!(
        records.iter().all(|r| r.key.as_deref() == Some(&b"u1"[..])),
        "keyed by user"
    );
    let next: Vec<_> = records
        .iter()
        .filter(|r| {
            r.headers
                .iter()
                .any(|(k, v)| k == "kasm-causation-id" && *v == id)
        })
        .collect();
    assert_eq!(
        next.len(),
        1,
        "exactly one next occurrence of the completion"
    );
    let next = next[0].json();
    assert_eq!(next["event_type"], "task.created");
    assert_eq!(
        next["task"]["due_date"], "2026-11-30",
        "Friday → the next Monday"
    );
    assert!(
        !records.iter().any(|r| r
            .headers
            .iter()
            .any(|(k, v)| k == "kasm-causation-id" && *v == last_id)),
        "nothing after the end date"
    );

    // Audit: one row per distinct event (the two completions and the next occurrence).
    let target = SqlTarget::Sqlite(db);
    assert_eq!(audit_rows(&target).await, 3);
}

fn uuid_like(s: &str) -> bool {
    s.len() == 36 && s.chars().filter(|c| *c == '-').count() == 4
}

type Ws = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

/// Connect to `GET /ws` of `admin` for `channel` with `token`; `small_window` shrinks the
/// client's TCP receive buffer (a client that does not read then fills up quickly).
async fn ws_connect(
    admin: &str,
    channel: &str,
    token: &str,
    small_window: bool,
) -> Result<Ws, tokio_tungstenite::tungstenite::Error> {
    let addr: std::net::SocketAddr = admin.parse().unwrap();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    if small_window {
        socket.set_recv_buffer_size(4096).unwrap();
    }
    let stream = socket.connect(addr).await.unwrap();
    let url = format!("ws://{admin}/ws?channel={channel}&token={token}");
    tokio_tungstenite::client_async(url, stream)
        .await
        .map(|(ws, _)| ws)
}

/// Read text messages from `ws` until `n` arrived (bounded), returning them.
async fn ws_read(ws: &mut Ws, n: usize, timeout: Duration) -> Vec<serde_json::Value> {
    use futures::StreamExt as _;
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + timeout;
    while got.len() < n {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Ok(Some(Ok(tokio_tungstenite::tungstenite::Message::Text(t)))) => {
                got.push(serde_json::from_str(t.as_str()).unwrap());
            }
            Ok(Some(Ok(_))) => {}
            Ok(Some(Err(_)) | None) | Err(_) => break,
        }
    }
    got
}

/// Task updates for `user`, ids `{prefix}-{i}`, each with a title of `pad` bytes.
fn updates(user: &str, prefix: &str, range: std::ops::Range<usize>, pad: usize) -> Vec<Rec> {
    range
        .map(|i| {
            let payload = serde_json::json!({
                "event_id": format!("{prefix}-{i}"), "event_type": "task.updated",
                "task_id": format!("{prefix}-{i}"), "user_id": user,
                "timestamp": "2026-11-27T09:15:00Z",
                "task": {"title": "x".repeat(pad), "tags": [], "completed": false}
            });
            Rec {
                // Spread over the partitions (the handler picks the channel from the payload).
                key: Some(format!("{prefix}-{i}").into_bytes()),
                payload: serde_json::to_vec(&payload).unwrap(),
                ..Rec::default()
            }
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_updates_reach_only_their_user_and_a_stalled_client_is_dropped() {
    live_updates_reach_only_their_user(kasm_tests::components::LIVE_UPDATES).await;
}

/// Two users' updates reach each one's own clients only; a client that stops reading is
/// dropped while the others keep receiving everything.
pub(super) async fn live_updates_reach_only_their_user(
    component: kasm_tests::components::Component,
) {
    let s = Setup::new(TestBroker::from_env(), 4).await;
    let secret = unique("ws-secret");
    let body = format!(
        "[kafka]\n{k}\n[handlers.live]\ncomponent = \"{c}\"\ntopics = [\"{t}\"]\n\
         group_id = \"{g}\"\npayload = \"json\"\ngrants = {{ websocket = true }}\n",
        k = KAFKA_TEST_PROPS,
        c = kasm_tests::component(component).display(),
        t = s.topic,
        g = s.group,
    );
    let cfg = write_config(s.dir.path(), &body);
    let mut host = HostProcess::start_with_env(
        &cfg,
        &s.broker.bootstrap(),
        "warn",
        &[("KASM_WS_SECRET", &secret)],
    );
    host.wait_status("/readyz", 200, Duration::from_secs(60));
    let token = |ch: &str| kasm_host::capabilities::websocket::channel_token(secret.as_bytes(), ch);
    let admin = host.admin.clone();

    // A token opens its own channel only.
    let wrong = ws_connect(&admin, "user:b", &token("user:a"), false).await;
    match wrong {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status(), 401),
        other => panic!("a wrong token must be refused with 401, got {other:?}"),
    }
    let mut a = ws_connect(&admin, "user:a", &token("user:a"), false)
        .await
        .unwrap();
    let mut b = ws_connect(&admin, "user:b", &token("user:b"), false)
        .await
        .unwrap();

    // Two users' updates, interleaved: each client gets exactly its own.
    let mut recs = updates("a", "ua", 0..40, 10);
    recs.extend(updates("b", "ub", 0..40, 10));
    produce(&s.broker.producer(), &s.topic, &recs).await;
    let got_a = ws_read(&mut a, 40, Duration::from_secs(60)).await;
    let got_b = ws_read(&mut b, 40, Duration::from_secs(60)).await;
    let ids = |got: &[serde_json::Value]| -> std::collections::BTreeSet<String> {
        got.iter()
            .map(|m| m["task_id"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(
        ids(&got_a),
        (0..40).map(|i| format!("ua-{i}")).collect(),
        "a gets a's"
    );
    assert_eq!(
        ids(&got_b),
        (0..40).map(|i| format!("ub-{i}")).collect(),
        "b gets b's"
    );
    assert!(got_a.iter().all(|m| m["channel"] == "user:a"));
    // Nothing else is waiting for b.
    assert!(
        ws_read(&mut b, 1, Duration::from_millis(500))
            .await
            .is_empty()
    );

    // A client of a's channel that never reads (and has a small window) falls behind and is
    // dropped; a keeps receiving everything meanwhile.
    let mut stalled = ws_connect(&admin, "user:a", &token("user:a"), true)
        .await
        .unwrap();
    let (chunk, pad) = (100, 8 * 1024);
    let mut sent = 0;
    let dropped = loop {
        produce(
            &s.broker.producer(),
            &s.topic,
            &updates("a", "big", sent..sent + chunk, pad),
        )
        .await;
        sent += chunk;
        let got = ws_read(&mut a, chunk, Duration::from_secs(60)).await;
        assert_eq!(
            got.len(),
            chunk,
            "the reading client keeps up ({sent} sent)"
        );
        if let Some(line) = host.find_line("websocket client too slow: disconnected") {
            break line;
        }
        assert!(sent < 3000, "the stalled client was never dropped");
    };
    eprintln!("stalled client dropped after {sent} messages: {dropped}");
    // The stalled client gets what was already on its way, then the end of the stream.
    let leftovers = ws_read(&mut stalled, sent, Duration::from_secs(20)).await;
    assert!(leftovers.len() < sent, "{} of {sent}", leftovers.len());

    // b is unaffected.
    produce(
        &s.broker.producer(),
        &s.topic,
        &updates("b", "ub", 40..50, 10),
    )
    .await;
    assert_eq!(ws_read(&mut b, 10, Duration::from_secs(60)).await.len(), 10);
    host.signal("TERM");
    assert!(host.wait_exit(Duration::from_secs(30)).success());
}

/// `n` reminders with ids `{prefix}-{i}`.
fn reminders(prefix: &str, n: usize) -> Vec<Rec> {
    (0..n)
        .map(|i| {
            let payload = serde_json::json!({
                "event_id": format!("{prefix}-{i}"), "task_id": format!("t-{i}"), "user_id": "u1",
                "title": format!("task {i}"), "due_at": "2026-11-27T09:00:00Z",
                "remind_at": "2026-11-27T08:30:00Z", "channel": "push"
            });
            Rec {
                key: Some(b"u1".to_vec()),
                payload: serde_json::to_vec(&payload).unwrap(),
                ..Rec::default()
            }
        })
        .collect()
}

/// A `kasm run` with the notification handler (component `component`) posting to `receiver`.
fn notification_host(
    s: &Setup,
    component: kasm_tests::components::Component,
    receiver: &kasm_tests::receiver::Receiver,
) -> HostProcess {
    let body = format!(
        "[kafka]\n{k}\n[handlers.notification]\ncomponent = \"{c}\"\ntopics = [\"{t}\"]\n\
         group_id = \"{g}\"\npayload = \"json\"\ngrants = {{ http = [\"{addr}\"] }}\n\
         settings = {{ webhook_url = \"{url}\" }}\n\
         retry = {{ attempts = 4, initial_backoff = \"50ms\", max_backoff = \"200ms\" }}\n",
        k = KAFKA_TEST_PROPS,
        c = kasm_tests::component(component).display(),
        t = s.topic,
        g = s.group,
        addr = receiver.addr,
        url = receiver.url(),
    );
    let cfg = write_config(s.dir.path(), &body);
    HostProcess::start(&cfg, &s.broker.bootstrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_reminder_is_posted_once_with_its_idempotency_key() {
    posted_once(kasm_tests::components::NOTIFICATION).await;
}

/// 20 reminders: one POST each, with the reminder's event id as its Idempotency-Key.
pub(super) async fn posted_once(component: kasm_tests::components::Component) {
    let s = Setup::new(TestBroker::from_env(), 4).await;
    let receiver = kasm_tests::receiver::Receiver::start(&[200]);
    let n = 20;
    produce(&s.broker.producer(), &s.topic, &reminders("rem", n)).await;
    let mut host = notification_host(&s, component, &receiver);
    wait_committed(&s, &s.group, n).await;
    host.signal("TERM");
    assert!(host.wait_exit(Duration::from_secs(30)).success());
    let got = receiver.requests();
    let keys: std::collections::BTreeSet<&str> = got
        .iter()
        .filter_map(|r| r.header("idempotency-key"))
        .collect();
    assert_eq!(got.len(), n, "one POST per reminder");
    assert_eq!(
        keys,
        (0..n)
            .map(|i| format!("rem-{i}"))
            .collect::<Vec<_>>()
            .iter()
            .map(String::as_str)
            .collect()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_answering_503_twice_gets_the_reminder_on_the_third_try() {
    delivered_on_the_third_try(kasm_tests::components::NOTIFICATION).await;
}

/// A webhook answering 503, 503, 200: retried until delivered, nothing dead-lettered.
pub(super) async fn delivered_on_the_third_try(component: kasm_tests::components::Component) {
    let s = Setup::new(TestBroker::from_env(), 1).await;
    let receiver = kasm_tests::receiver::Receiver::start(&[503, 503, 200]);
    produce(&s.broker.producer(), &s.topic, &reminders("retry", 1)).await;
    let mut host = notification_host(&s, component, &receiver);
    wait_committed(&s, &s.group, 1).await;
    host.signal("TERM");
    assert!(host.wait_exit(Duration::from_secs(30)).success());
    let got = receiver.requests();
    let statuses: Vec<u16> = got.iter().map(|r| r.status).collect();
    assert_eq!(statuses, [503, 503, 200], "retried until delivered");
    assert!(
        got.iter()
            .all(|r| r.header("idempotency-key") == Some("retry-0"))
    );
    let line = host.wait_line("kasm: handler notification:", Duration::from_secs(5));
    assert!(
        line.contains("processed 1 ")
            && line.contains("retried 2 ")
            && line.contains("dead-lettered 0"),
        "{line}"
    );
    let dlq = kasm_tests::broker::read_topic(
        &s.broker.bootstrap(),
        &format!("{}.dlq", s.topic),
        1,
        Duration::from_secs(2),
    );
    assert!(dlq.is_empty(), "nothing dead-lettered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_answering_400_dead_letters_the_reminder_as_fatal() {
    dead_lettered_on_a_400(kasm_tests::components::NOTIFICATION).await;
}

/// A webhook answering 400: the reminder is dead-lettered as `fatal` with its provenance, and
/// not retried.
pub(super) async fn dead_lettered_on_a_400(component: kasm_tests::components::Component) {
    let s = Setup::new(TestBroker::from_env(), 1).await;
    let receiver = kasm_tests::receiver::Receiver::start(&[400]);
    produce(&s.broker.producer(), &s.topic, &reminders("bad", 1)).await;
    let mut host = notification_host(&s, component, &receiver);
    let dlq = kasm_tests::broker::read_topic(
        &s.broker.bootstrap(),
        &format!("{}.dlq", s.topic),
        1,
        Duration::from_secs(60),
    );
    host.signal("TERM");
    assert!(host.wait_exit(Duration::from_secs(30)).success());
    assert_eq!(dlq.len(), 1, "the reminder is dead-lettered");
    assert_eq!(dlq[0].headers["kasm-dlq-error-kind"], "fatal");
    assert!(
        dlq[0].headers["kasm-dlq-error-message"].contains("HTTP 400"),
        "{:?}",
        dlq[0].headers
    );
    assert_eq!(dlq[0].headers["kasm-dlq-event-id"], "bad-0");
    assert_eq!(receiver.requests().len(), 1, "a 4xx is not retried");
}
