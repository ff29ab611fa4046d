//! The `sql` capability with a real component on real databases: SQLite files and the
//! PostgreSQL on this machine (`KASM_TEST_PG_URL`, default
//! `postgresql://postgres@127.0.0.1:5432/test`; each test works in a schema of its own).
//! One transaction per call: committed on `ok`, rolled back on anything else.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use kasm_host::capabilities::sql::{self, SqlTarget};
use kasm_host::capabilities::{Grants, SqlDatabase};
use kasm_host::runtime::LoadError;
use kasm_host::{Event, FailureKind, LoadedHandler, Outcome};
use kasm_tests::{component_bytes, load, runtime, unique};

pub use kasm_tests::pg_schema;

/// Count rows with a statement on the database directly.
async fn count(db: &dyn SqlDatabase, table: &str) -> i64 {
    let mut tx = db.begin().await.unwrap();
    let rows = tx
        .query(&format!("SELECT count(*) FROM {table}"), &[])
        .await
        .unwrap();
    match rows.rows[0][0] {
        kasm_host::capabilities::SqlValue::Integer(n) => n,
        ref other => panic!("count(*) gave {other:?}"),
    }
}

const SCHEMA: &str = "CREATE TABLE t (id TEXT PRIMARY KEY, n BIGINT, r DOUBLE PRECISION, \
                      b BYTEA, s TEXT);";

async fn database(target: &SqlTarget, migrations: &Path) -> Arc<dyn SqlDatabase> {
    std::fs::create_dir_all(migrations).unwrap();
    std::fs::write(migrations.join("001_t.sql"), SCHEMA).unwrap();
    let db = sql::open(target, "fx").unwrap();
    let applied = sql::migrate(db.as_ref(), "fx", migrations).await.unwrap();
    assert_eq!(applied, ["001_t.sql"]);
    db
}

fn handler(db: &Arc<dyn SqlDatabase>) -> Arc<LoadedHandler> {
    let grants = Grants {
        sql: true,
        ..Grants::none()
    };
    let db = db.clone();
    load(
        &runtime(),
        kasm_tests::components::FIXTURE_SQL,
        grants,
        move |s| {
            s.sql = Some(db);
            s.deadline = Duration::from_millis(500);
        },
    )
}

async fn call(h: &LoadedHandler, script: serde_json::Value) -> kasm_host::Invocation {
    let e = Event::from_parts(
        "t",
        0,
        1,
        None,
        serde_json::to_vec(&script).unwrap(),
        vec![("event-id".into(), unique("ev").into_bytes())],
        None,
    );
    h.invoke(&e).await.unwrap()
}

fn insert(id: &str) -> serde_json::Value {
    serde_json::json!({
        "execute": "INSERT INTO t (id, n, r, b, s) VALUES ($1, $2, $3, $4, $5)",
        "params": [id, -7, 2.5, {"blob": "00ff10"}, null]
    })
}

fn failure(o: &Outcome) -> (FailureKind, String) {
    match o {
        Outcome::Failed(f) => (f.kind, f.message.clone()),
        Outcome::Ok => panic!("expected a failure, got ok"),
    }
}

/// The whole contract on one database.
async fn one_transaction_per_call(db: Arc<dyn SqlDatabase>) {
    let h = handler(&db);
    let what = db.describe();

    // ok: committed, and every type round-trips.
    let inv = call(
        &h,
        serde_json::json!({"steps": [insert("a"),
            {"query": "SELECT id, n, r, b, s FROM t WHERE id = $1", "params": ["a"]}]}),
    )
    .await;
    assert_eq!(inv.outcome, Outcome::Ok, "{what}: {inv:?}");
    assert_eq!(inv.effects.sql_rows_changed, 1);
    assert_eq!(
        inv.effects.logs[0].message, r#"{"rows":[["a",-7,2.5,{"blob":"00ff10"},null]]}"#,
        "{what}: values round-trip with their types"
    );
    assert_eq!(count(db.as_ref(), "t").await, 1, "{what}: committed");

    // Anything but ok rolls back what the call wrote.
    for (then, kind) in [
        ("fatal", FailureKind::Fatal),
        ("panic", FailureKind::Trap),
        ("loop", FailureKind::Timeout),
    ] {
        let id = format!("rolled-back-{then}");
        let inv = call(
            &h,
            serde_json::json!({"steps": [insert(&id)], "then": then}),
        )
        .await;
        assert_eq!(failure(&inv.outcome).0, kind, "{what}: then {then}");
        assert_eq!(
            count(db.as_ref(), "t").await,
            1,
            "{what}: {then} rolled back"
        );
    }

    // A statement the database refuses is fatal, with its reason.
    let inv = call(
        &h,
        serde_json::json!({"steps": [{"execute": "INSERT INTO no_such_table VALUES (1)"}]}),
    )
    .await;
    let (kind, message) = failure(&inv.outcome);
    assert_eq!(kind, FailureKind::Fatal, "{what}: {message}");
    assert!(
        message.contains("rejected") && message.contains("no_such_table"),
        "{what}: {message}"
    );
    // A duplicate key too.
    let inv = call(&h, serde_json::json!({"steps": [insert("a")]})).await;
    assert_eq!(failure(&inv.outcome).0, FailureKind::Fatal, "{what}");

    // A handler that swallows a failed statement and returns ok commits nothing.
    let inv = call(
        &h,
        serde_json::json!({"steps": [insert("b"), {"execute": "NOT SQL"}, insert("c")],
                           "then": "ignore-errors"}),
    )
    .await;
    let (kind, message) = failure(&inv.outcome);
    assert_eq!(kind, FailureKind::Fatal, "{what}: {message}");
    assert!(
        message.contains("returned ok after a failed sql statement"),
        "{message}"
    );
    assert_eq!(
        count(db.as_ref(), "t").await,
        1,
        "{what}: nothing of that call"
    );

    // Parameters are bound, never spliced: a hostile string is stored as text.
    let evil = "x'); DROP TABLE t; --";
    let inv = call(&h, serde_json::json!({"steps": [insert(evil)]})).await;
    assert_eq!(inv.outcome, Outcome::Ok, "{what}: {inv:?}");
    assert_eq!(
        count(db.as_ref(), "t").await,
        2,
        "{what}: the table is still there"
    );

    // Concurrent calls (one transaction each) all land.
    let mut tasks = Vec::new();
    for i in 0..8 {
        let h = h.clone();
        tasks.push(tokio::spawn(async move {
            call(&h, serde_json::json!({"steps": [insert(&format!("p{i}"))]})).await
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap().outcome, Outcome::Ok, "{what}");
    }
    assert_eq!(count(db.as_ref(), "t").await, 10, "{what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_one_transaction_per_call() {
    let dir = tempfile::tempdir().unwrap();
    let target = SqlTarget::Sqlite(dir.path().join("fx.sqlite"));
    one_transaction_per_call(database(&target, &dir.path().join("m")).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_one_transaction_per_call() {
    let dir = tempfile::tempdir().unwrap();
    let target = SqlTarget::Postgres(pg_schema().await);
    one_transaction_per_call(database(&target, &dir.path().join("m")).await).await;
}

/// Two transactions that both applied one event (a host that has not learnt yet that it lost
/// the partition, and its successor): the second one's inbox row conflicts, so it cannot
/// commit, and its writes go with it.
async fn a_second_transaction_for_an_inboxed_event_cannot_commit(db: Arc<dyn SqlDatabase>) {
    use kasm_host::capabilities::SqlValue;
    sql::ensure_inbox(db.as_ref()).await.unwrap();
    let insert = "INSERT INTO t (id) VALUES ($1)";
    let mut first = db.begin().await.unwrap();
    first
        .execute(insert, &[SqlValue::Text("first".into())])
        .await
        .unwrap();
    sql::inbox_insert(first.as_mut(), "g", &["ev-1"], 1)
        .await
        .unwrap();
    first.commit().await.unwrap();
    let mut second = db.begin().await.unwrap();
    second
        .execute(insert, &[SqlValue::Text("second".into())])
        .await
        .unwrap();
    let refused = sql::inbox_insert(second.as_mut(), "g", &["ev-1"], 2).await;
    assert!(refused.is_err(), "the second inbox row was taken");
    drop(second);
    assert_eq!(count(db.as_ref(), "t").await, 1);
    assert_eq!(
        sql::inbox_contains(db.as_ref(), "g", &["ev-1", "ev-2"])
            .await
            .unwrap()
            .len(),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_a_second_transaction_for_an_inboxed_event_cannot_commit() {
    let dir = tempfile::tempdir().unwrap();
    let target = SqlTarget::Sqlite(dir.path().join("fx.sqlite"));
    a_second_transaction_for_an_inboxed_event_cannot_commit(
        database(&target, &dir.path().join("m")).await,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_second_transaction_for_an_inboxed_event_cannot_commit() {
    let dir = tempfile::tempdir().unwrap();
    let target = SqlTarget::Postgres(pg_schema().await);
    a_second_transaction_for_an_inboxed_event_cannot_commit(
        database(&target, &dir.path().join("m")).await,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_database_is_retryable() {
    let db = sql::open(
        &SqlTarget::Postgres("postgresql://postgres@127.0.0.1:1/test".into()),
        "fx",
    )
    .unwrap();
    let h = handler(&db);
    let inv = call(&h, serde_json::json!({"steps": [insert("a")]})).await;
    let (kind, message) = failure(&inv.outcome);
    assert_eq!(kind, FailureKind::Retryable, "{message}");
    assert!(message.contains("unavailable"), "{message}");
}

#[test]
fn a_component_importing_sql_without_the_grant_is_refused() {
    let rt = runtime();
    let mut spec = kasm_host::HandlerSpec::new("nosql");
    spec.grants = Grants::all();
    spec.grants.sql = false;
    let e = rt
        .load(&component_bytes(kasm_tests::components::FIXTURE_SQL), spec)
        .map(|_| ())
        .unwrap_err();
    assert!(matches!(e, LoadError::NotGranted { .. }), "{e}");
    assert!(e.to_string().contains("kasm:handler/sql"), "{e}");
}
