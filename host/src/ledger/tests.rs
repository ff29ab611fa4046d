use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::JoinSet;

use super::*;
use crate::now_ms;

const DAY: Duration = Duration::from_secs(24 * 60 * 60);
const WEEK: Duration = Duration::from_secs(7 * 24 * 60 * 60);

fn entry(at_ms: i64, offset: i64) -> LedgerEntry {
    LedgerEntry {
        outcome: LedgerOutcome::Ok,
        at_ms,
        component_sha256: "ab".repeat(32),
        topic: "task-events".into(),
        partition: 3,
        offset,
    }
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap()
}

fn open_temp() -> (tempfile::TempDir, FileLedger) {
    let dir = tempfile::tempdir().unwrap();
    let ledger = FileLedger::open(&dir.path().join("state/ledger.redb")).unwrap();
    (dir, ledger)
}

// ---- the contract, run against both backends ----

async fn round_trip(ledger: &dyn Ledger) {
    assert_eq!(ledger.get("audit", "e1").await.unwrap(), None);
    assert_eq!(ledger.len("audit").await.unwrap(), 0);

    let first = entry(now_ms(), 7);
    ledger.record("audit", "e1", first.clone()).await.unwrap();
    assert_eq!(ledger.get("audit", "e1").await.unwrap(), Some(first));

    let second = LedgerEntry {
        outcome: LedgerOutcome::DeadLettered,
        at_ms: now_ms() + 1,
        component_sha256: "cd".repeat(32),
        // The partition the Kafka backend's hosts own in these tests (it writes nothing for
        // a partition it does not own).
        topic: "task-events".into(),
        partition: 3,
        offset: i64::MAX,
    };
    ledger.record("audit", "e1", second.clone()).await.unwrap();
    assert_eq!(ledger.get("audit", "e1").await.unwrap(), Some(second));
    assert_eq!(
        ledger.len("audit").await.unwrap(),
        1,
        "an overwrite is not a new entry"
    );

    // Empty and odd ids are ids like any other.
    for id in ["", "a/b/0", "ünïcödé", "x\0y"] {
        ledger.record("audit", id, entry(1, 1)).await.unwrap();
        assert_eq!(
            ledger.get("audit", id).await.unwrap(),
            Some(entry(1, 1)),
            "{id:?}"
        );
    }
    assert_eq!(ledger.len("audit").await.unwrap(), 5);

    let too_long = "e".repeat(MAX_KEY_PART_BYTES + 1);
    let err = ledger
        .record("audit", &too_long, entry(1, 1))
        .await
        .unwrap_err();
    assert!(format!("{err:#}").contains("handler=audit"), "{err:#}");
}

async fn handlers_are_namespaces(ledger: &dyn Ledger) {
    assert_eq!(
        ledger.contains_many("audit", &[]).await.unwrap(),
        Vec::<bool>::new()
    );
    ledger.record("audit", "same", entry(1, 1)).await.unwrap();
    assert_eq!(
        ledger
            .contains_many("audit", &["same", "other", "same"])
            .await
            .unwrap(),
        [true, false, true]
    );
    assert_eq!(
        ledger
            .contains_many("notification", &["same"])
            .await
            .unwrap(),
        [false],
        "another handler's entry is not this one's"
    );
    ledger
        .record("notification", "same", entry(2, 2))
        .await
        .unwrap();
    // A pair whose concatenation equals another's must not collide.
    ledger.record("ab", "c", entry(3, 3)).await.unwrap();
    assert_eq!(ledger.get("a", "bc").await.unwrap(), None);

    assert_eq!(
        ledger.get("audit", "same").await.unwrap(),
        Some(entry(1, 1))
    );
    assert_eq!(
        ledger.get("notification", "same").await.unwrap(),
        Some(entry(2, 2))
    );
    assert_eq!(ledger.get("recurring", "same").await.unwrap(), None);
    assert_eq!(ledger.len("audit").await.unwrap(), 1);
    assert_eq!(ledger.len("notification").await.unwrap(), 1);

    assert_eq!(ledger.sweep("audit", WEEK, 0).await.unwrap(), 1);
    assert_eq!(ledger.get("audit", "same").await.unwrap(), None);
    assert_eq!(
        ledger.get("notification", "same").await.unwrap(),
        Some(entry(2, 2))
    );
}

async fn sweep_rules(ledger: &dyn Ledger) {
    let now = now_ms();
    // Three older than the week, five within it (oldest first: f0 .. f4), for "h".
    for (i, id) in ["old-a", "old-b", "old-c"].iter().enumerate() {
        ledger
            .record("h", id, entry(now - ms(8 * DAY) - i as i64, 0))
            .await
            .unwrap();
    }
    for i in 0..5_i64 {
        let at = now - ms(DAY) + i * 1000;
        ledger
            .record("h", &format!("f{i}"), entry(at, i))
            .await
            .unwrap();
    }
    // Another handler's old entries are not "h"'s business.
    ledger
        .record("other", "old", entry(now - ms(30 * DAY), 0))
        .await
        .unwrap();
    // "i" sorts just after "h"'s keys in the file's index; eviction must stop at "h"'s end.
    ledger.record("i", "young", entry(now, 0)).await.unwrap();
    assert_eq!(ledger.len("h").await.unwrap(), 8);

    assert_eq!(ledger.sweep("h", WEEK, 100).await.unwrap(), 3, "retention");
    assert_eq!(ledger.len("h").await.unwrap(), 5);
    for id in ["old-a", "old-b", "old-c"] {
        assert_eq!(ledger.get("h", id).await.unwrap(), None);
    }
    assert_eq!(
        ledger.sweep("h", WEEK, 100).await.unwrap(),
        0,
        "nothing left to expire"
    );

    assert_eq!(ledger.sweep("h", WEEK, 2).await.unwrap(), 3, "size cap");
    assert_eq!(ledger.len("h").await.unwrap(), 2);
    for i in 0..3 {
        assert_eq!(
            ledger.get("h", &format!("f{i}")).await.unwrap(),
            None,
            "f{i} was oldest"
        );
    }
    for i in 3..5 {
        assert!(
            ledger.get("h", &format!("f{i}")).await.unwrap().is_some(),
            "f{i} is newest"
        );
    }

    // Same age: the event id breaks the tie, so eviction is deterministic.
    ledger.record("t", "b", entry(now, 0)).await.unwrap();
    ledger.record("t", "a", entry(now, 0)).await.unwrap();
    ledger.record("t", "c", entry(now, 0)).await.unwrap();
    assert_eq!(ledger.sweep("t", WEEK, 2).await.unwrap(), 1);
    assert_eq!(ledger.get("t", "a").await.unwrap(), None);

    // Re-recording an old entry makes it young.
    ledger
        .record("h", "f3", entry(now - ms(9 * DAY), 3))
        .await
        .unwrap();
    ledger.record("h", "f3", entry(now - 1, 3)).await.unwrap();
    assert_eq!(ledger.sweep("h", WEEK, 100).await.unwrap(), 0);
    assert_eq!(ledger.len("h").await.unwrap(), 2);

    assert_eq!(
        ledger.sweep("h", Duration::ZERO, 100).await.unwrap(),
        2,
        "zero retention"
    );
    assert_eq!(ledger.len("h").await.unwrap(), 0);
    assert_eq!(
        ledger.sweep("h", WEEK, 0).await.unwrap(),
        0,
        "empty handler"
    );
    assert_eq!(ledger.sweep("nobody", WEEK, 0).await.unwrap(), 0);

    assert_eq!(ledger.len("other").await.unwrap(), 1);
    assert_eq!(ledger.len("i").await.unwrap(), 1);
}

#[tokio::test]
async fn memory_contract() {
    round_trip(&MemoryLedger::new()).await;
    handlers_are_namespaces(&MemoryLedger::new()).await;
    sweep_rules(&MemoryLedger::new()).await;
}

#[tokio::test]
async fn file_contract() {
    let (_dir, ledger) = open_temp();
    round_trip(&ledger).await;
    let (_dir, ledger) = open_temp();
    handlers_are_namespaces(&ledger).await;
    let (_dir, ledger) = open_temp();
    sweep_rules(&ledger).await;
}

// ---- the file backend ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_entries_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ledger.redb");
    let ledger = Arc::new(FileLedger::open(&path).unwrap());
    let base = now_ms() - 1_000_000;
    let mut tasks = JoinSet::new();
    for i in 0..1000_i64 {
        let ledger = Arc::clone(&ledger);
        tasks.spawn(async move {
            ledger
                .record("audit", &format!("e{i}"), entry(base + i, i))
                .await
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap().unwrap();
    }
    // Dropping joins the writer and closes the file; reopening would fail otherwise.
    drop(Arc::into_inner(ledger).unwrap());

    let ledger = FileLedger::open(&path).unwrap();
    assert_eq!(ledger.len("audit").await.unwrap(), 1000);
    for i in 0..1000_i64 {
        let got = ledger.get("audit", &format!("e{i}")).await.unwrap();
        assert_eq!(got, Some(entry(base + i, i)));
    }
    // The index and counts came back too: evicting goes by age.
    assert_eq!(ledger.sweep("audit", WEEK, 10).await.unwrap(), 990);
    assert_eq!(ledger.get("audit", "e989").await.unwrap(), None);
    assert!(ledger.get("audit", "e990").await.unwrap().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_concurrent_records_share_commits() {
    let (_dir, ledger) = open_temp();
    let ledger = Arc::new(ledger);
    let before = ledger.stats();
    let mut tasks = JoinSet::new();
    for t in 0..8 {
        let ledger = Arc::clone(&ledger);
        tasks.spawn(async move {
            let mut writes = JoinSet::new();
            for i in 0..500_i64 {
                let ledger = Arc::clone(&ledger);
                writes.spawn(async move {
                    ledger
                        .record("live-updates", &format!("t{t}-e{i}"), entry(i, i))
                        .await
                });
            }
            while let Some(done) = writes.join_next().await {
                done.unwrap().unwrap();
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
    let stats = ledger.stats();
    let commits = stats.commits - before.commits;
    let records = stats.operations - before.operations;
    println!("8 x 500 concurrent records: {records} records in {commits} commits");
    assert_eq!(records, 4000);
    assert!(
        commits < records,
        "group commit batched nothing: {commits} commits"
    );
    assert_eq!(ledger.len("live-updates").await.unwrap(), 4000);
    for t in 0..8 {
        for i in 0..500_i64 {
            let got = ledger
                .get("live-updates", &format!("t{t}-e{i}"))
                .await
                .unwrap();
            assert_eq!(got, Some(entry(i, i)));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_writer_failure_fails_records_without_hanging() {
    let (_dir, ledger) = open_temp();
    let ledger = Arc::new(ledger);
    ledger.record("audit", "before", entry(1, 1)).await.unwrap();

    let mut tasks = JoinSet::new();
    for i in 0..200_i64 {
        let ledger = Arc::clone(&ledger);
        tasks.spawn(async move { ledger.record("audit", &format!("e{i}"), entry(i, i)).await });
    }
    let failed = ledger.inject_failure().await.unwrap_err();
    assert!(
        format!("{failed:#}").contains("injected failure"),
        "{failed:#}"
    );
    let outcomes = tokio::time::timeout(Duration::from_secs(10), async {
        let mut outcomes = Vec::new();
        while let Some(done) = tasks.join_next().await {
            outcomes.push(done.unwrap());
        }
        outcomes
    })
    .await
    .expect("a record hung after the writer failed");
    // Those committed before the failing batch are fine; the rest name the cause.
    for outcome in &outcomes {
        if let Err(err) = outcome {
            let msg = format!("{err:#}");
            assert!(
                msg.contains("injected failure") && msg.contains("handler=audit"),
                "{msg}"
            );
        }
    }

    let later = ledger
        .record("audit", "after", entry(2, 2))
        .await
        .unwrap_err();
    let msg = format!("{later:#}");
    assert!(
        msg.contains("stopped after a failure") && msg.contains("injected failure"),
        "{msg}"
    );
    assert!(ledger.sweep("audit", WEEK, 0).await.is_err());
    assert!(ledger.failure().is_some());
    // Reads still work; what was committed is still there.
    assert_eq!(
        ledger.get("audit", "before").await.unwrap(),
        Some(entry(1, 1))
    );
    assert_eq!(ledger.get("audit", "after").await.unwrap(), None);
}

/// What a killed process leaves on disk: both files as they are between two writes, with the
/// entries since the last checkpoint only in the journal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_entries_only_in_the_journal_survive_a_kill() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ledger.redb");
    let ledger = Arc::new(FileLedger::open_without_checkpoints(&path).unwrap());
    let base = now_ms();
    // One at a time and in a burst: small batches and big ones.
    for i in 0..20_i64 {
        ledger
            .record("audit", &format!("e{i}"), entry(base + i, i))
            .await
            .unwrap();
    }
    let mut tasks = JoinSet::new();
    for i in 20..2000_i64 {
        let ledger = Arc::clone(&ledger);
        tasks.spawn(async move {
            ledger
                .record("audit", &format!("e{i}"), entry(base + i, i))
                .await
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap().unwrap();
    }
    assert_eq!(ledger.stats().checkpoints, 0);
    // The writer is idle: copying the files now is what a SIGKILL would leave.
    let crashed = tempfile::tempdir().unwrap();
    let copy = copy_as_killed(&path, crashed.path());

    // redb alone, without the journal, has none of them: the journal is what made them durable.
    {
        let db = redb::Database::open(&copy).unwrap();
        let txn = redb::ReadableDatabase::begin_read(&db).unwrap();
        let table = txn
            .open_table(redb::TableDefinition::<(&str, &str), &[u8]>::new(
                "ledger_entries",
            ))
            .unwrap();
        assert!(
            redb::ReadableTable::get(&table, ("audit", "e0"))
                .unwrap()
                .is_none()
        );
    }
    let reopened = FileLedger::open(&copy).unwrap();
    assert_eq!(reopened.len("audit").await.unwrap(), 2000);
    for i in 0..2000_i64 {
        assert_eq!(
            reopened.get("audit", &format!("e{i}")).await.unwrap(),
            Some(entry(base + i, i)),
            "e{i}"
        );
    }
    // Replayed into redb and the journal emptied: a second open finds them in redb.
    drop(reopened);
    for journal in file::journal_paths(&copy) {
        let (_, left) = journal::Journal::open(&journal).unwrap();
        assert!(
            left.is_empty(),
            "{} records left in {}",
            left.len(),
            journal.display()
        );
    }
    let again = FileLedger::open(&copy).unwrap();
    assert_eq!(again.len("audit").await.unwrap(), 2000);
    // The index came back with them: eviction goes by age.
    assert_eq!(again.sweep("audit", WEEK, 10).await.unwrap(), 1990);
    assert!(again.get("audit", "e1990").await.unwrap().is_some());
    assert_eq!(again.get("audit", "e1989").await.unwrap(), None);
}

#[tokio::test]
async fn file_unknown_format_version_is_an_error_not_a_miss() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ledger.redb");
    let ledger = FileLedger::open(&path).unwrap();
    ledger.record("audit", "future", entry(5, 5)).await.unwrap();
    ledger.record("audit", "other", entry(6, 6)).await.unwrap();
    drop(ledger);

    // A newer kasm wrote this one.
    {
        let db = redb::Database::open(&path).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut table = txn
                .open_table(redb::TableDefinition::<(&str, &str), &[u8]>::new(
                    "ledger_entries",
                ))
                .unwrap();
            table
                .insert(("audit", "future"), [9_u8, 1, 2, 3].as_slice())
                .unwrap();
        }
        txn.commit().unwrap();
    }

    let ledger = FileLedger::open(&path).unwrap();
    let err = ledger.get("audit", "future").await.unwrap_err();
    let msg = format!("{err:#}");
    assert!(
        msg.contains("format version 9") && msg.contains("event_id=future"),
        "{msg}"
    );

    // Overwriting it still keeps the index right (its age had to be found by a scan).
    ledger
        .record("audit", "future", entry(now_ms(), 5))
        .await
        .unwrap();
    assert_eq!(ledger.len("audit").await.unwrap(), 2);
    assert_eq!(
        ledger.sweep("audit", WEEK, 100).await.unwrap(),
        1,
        "only 'other' is old"
    );
    assert_eq!(ledger.sweep("audit", WEEK, 0).await.unwrap(), 1);
    assert_eq!(ledger.len("audit").await.unwrap(), 0);
}

#[test]
fn format_starts_with_version_byte() {
    let ledger_entry = entry(1_700_000_000_000, 42);
    let bytes = file::encode(ledger_entry.clone()).unwrap();
    assert_eq!(bytes[0], FORMAT_VERSION);
    assert_eq!(file::decode(&bytes).unwrap(), ledger_entry);
    assert!(file::decode(&[]).is_err());
    assert!(file::decode(&[FORMAT_VERSION]).is_err(), "truncated");
}

/// Not an assertion: how fast group commit is on this machine (`--nocapture` to see).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_throughput_report() {
    let (_dir, ledger) = open_temp();
    let ledger = Arc::new(ledger);

    let one_by_one = 200;
    let start = Instant::now();
    for i in 0..one_by_one {
        ledger
            .record("seq", &format!("e{i}"), entry(now_ms(), i))
            .await
            .unwrap();
    }
    let seq = start.elapsed();

    let n = 10_000_i64;
    let before = ledger.stats();
    let start = Instant::now();
    let mut tasks = JoinSet::new();
    for i in 0..n {
        let ledger = Arc::clone(&ledger);
        tasks.spawn(async move {
            let id = format!(
                "{:032x}",
                u128::from(i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
            );
            ledger.record("bench", &id, entry(now_ms(), i)).await
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap().unwrap();
    }
    let concurrent = start.elapsed();
    let stats = ledger.stats();
    let commits = stats.commits - before.commits;

    let lookups = 10_000_i64;
    let start = Instant::now();
    for i in 0..lookups {
        let id = format!(
            "{:032x}",
            u128::from(i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
        );
        assert!(ledger.get("bench", &id).await.unwrap().is_some());
    }
    let gets = start.elapsed();

    println!(
        "ledger: one at a time {:.0} records/s ({:.2} ms per durable commit); \
         {n} concurrent: {:.0} records/s in {commits} commits (mean batch {:.0}); \
         get {:.1} µs",
        one_by_one as f64 / seq.as_secs_f64(),
        seq.as_secs_f64() * 1e3 / one_by_one as f64,
        n as f64 / concurrent.as_secs_f64(),
        n as f64 / commits as f64,
        gets.as_secs_f64() * 1e6 / lookups as f64,
    );
    assert_eq!(ledger.len("bench").await.unwrap(), 10_000);
}

/// Entries move from memory to redb at each checkpoint while lookups run on other threads: an
/// entry is found from the moment its `record` returns, whichever side of a checkpoint the
/// lookup lands on, and counted once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_lookups_find_every_entry_across_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    let ledger =
        Arc::new(FileLedger::open_checkpointing_every_batch(&dir.path().join("l.redb")).unwrap());
    let base = now_ms();
    let mut writers = JoinSet::new();
    for t in 0..4_i64 {
        let ledger = Arc::clone(&ledger);
        writers.spawn(async move {
            for i in 0..300_i64 {
                let id = format!("t{t}-e{i}");
                ledger.record("h", &id, entry(base + i, i)).await.unwrap();
                assert_eq!(
                    ledger.get("h", &id).await.unwrap(),
                    Some(entry(base + i, i)),
                    "{id} not found right after its record returned"
                );
                // Every earlier entry of this writer too, now perhaps moved to redb.
                let earlier = format!("t{t}-e{}", i / 2);
                assert!(
                    ledger.get("h", &earlier).await.unwrap().is_some(),
                    "{earlier} lost"
                );
                // And asked as a batch: the new one, an earlier one, one never recorded.
                let missing = format!("t{t}-never-{i}");
                let batch = [missing.as_str(), id.as_str(), earlier.as_str()];
                assert_eq!(
                    ledger.contains_many("h", &batch).await.unwrap(),
                    [false, true, true],
                    "{batch:?} as a batch"
                );
            }
        });
    }
    // Counting while entries move: never more than were recorded.
    let counter = {
        let ledger = Arc::clone(&ledger);
        tokio::spawn(async move {
            let mut last = 0;
            while last < 1200 {
                let n = ledger.len("h").await.unwrap();
                assert!(n >= last && n <= 1200, "count went from {last} to {n}");
                last = n;
                tokio::task::yield_now().await;
            }
        })
    };
    while let Some(done) = writers.join_next().await {
        done.unwrap();
    }
    tokio::time::timeout(Duration::from_secs(10), counter)
        .await
        .expect("the count never reached 1200")
        .unwrap();
    // A checkpoint was due after every batch; one runs at a time, beside the writer, so the
    // entries moved from memory to redb (through `frozen`) many times while they were looked up.
    let stats = ledger.stats();
    assert!(stats.checkpoints >= 10, "{stats:?}");
    assert_eq!(ledger.sweep("h", WEEK, 1000).await.unwrap(), 200);
    assert_eq!(ledger.len("h").await.unwrap(), 1000);
}

/// A sweep takes in what only memory holds: the checkpoint it runs in puts those entries into
/// redb first, and the sweep evicts them by age like any other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_a_sweep_sees_entries_not_yet_in_redb() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = FileLedger::open_without_checkpoints(&dir.path().join("l.redb")).unwrap();
    let base = now_ms();
    for i in 0..10_i64 {
        ledger
            .record("h", &format!("e{i}"), entry(base + i, i))
            .await
            .unwrap();
    }
    assert_eq!(ledger.stats().checkpoints, 0);
    assert_eq!(ledger.len("h").await.unwrap(), 10);
    assert_eq!(ledger.sweep("h", WEEK, 4).await.unwrap(), 6);
    assert_eq!(ledger.stats().checkpoints, 1);
    assert_eq!(ledger.len("h").await.unwrap(), 4);
    assert_eq!(ledger.get("h", "e5").await.unwrap(), None);
    assert_eq!(
        ledger.get("h", "e6").await.unwrap(),
        Some(entry(base + 6, 6))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_a_group_is_one_sync_and_survives_a_kill() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ledger.redb");
    let ledger = FileLedger::open_without_checkpoints(&path).unwrap();
    let base = now_ms();
    let before = ledger.stats();
    let group: Vec<_> = (0..300_i64)
        .map(|i| (format!("g{i}"), entry(base + i, i)))
        .collect();
    ledger.record_many("audit", group).await.unwrap();
    let stats = ledger.stats();
    assert_eq!(
        (
            stats.commits - before.commits,
            stats.operations - before.operations
        ),
        (1, 1),
        "a group of 300 is one request in one journal sync"
    );
    // A later entry for the same id in a group replaces the earlier one, as `record` would.
    ledger
        .record_many(
            "audit",
            vec![("g0".into(), entry(base, 7)), ("g0".into(), entry(base, 8))],
        )
        .await
        .unwrap();
    assert_eq!(
        ledger.get("audit", "g0").await.unwrap(),
        Some(entry(base, 8))
    );
    // A key the ledger refuses fails the whole group before anything is written.
    let long = "x".repeat(crate::ledger::MAX_KEY_PART_BYTES + 1);
    let err = ledger
        .record_many(
            "audit",
            vec![("fine".into(), entry(base, 1)), (long, entry(base, 2))],
        )
        .await
        .unwrap_err();
    assert!(format!("{err:#}").contains("event id is"), "{err:#}");
    assert_eq!(ledger.get("audit", "fine").await.unwrap(), None);
    assert_eq!(ledger.stats().checkpoints, 0);

    // What a SIGKILL would leave: every entry of the group comes back from the journal.
    let crashed = tempfile::tempdir().unwrap();
    let copy = copy_as_killed(&path, crashed.path());
    let reopened = FileLedger::open(&copy).unwrap();
    assert_eq!(reopened.len("audit").await.unwrap(), 300);
    for i in 1..300_i64 {
        assert_eq!(
            reopened.get("audit", &format!("g{i}")).await.unwrap(),
            Some(entry(base + i, i)),
            "g{i}"
        );
    }
    assert_eq!(
        reopened.get("audit", "g0").await.unwrap(),
        Some(entry(base, 8))
    );
}

#[tokio::test]
async fn memory_record_many_is_every_record() {
    let ledger = MemoryLedger::default();
    ledger
        .record_many(
            "audit",
            vec![("a".into(), entry(1, 1)), ("b".into(), entry(2, 2))],
        )
        .await
        .unwrap();
    assert_eq!(ledger.get("audit", "a").await.unwrap(), Some(entry(1, 1)));
    assert_eq!(ledger.get("audit", "b").await.unwrap(), Some(entry(2, 2)));
    assert_eq!(ledger.len("audit").await.unwrap(), 2);
}

/// Copy the ledger at `path` (the redb file and both journals) into `dir` as a SIGKILL would
/// leave them: call it while the writer is idle. Returns the copy's path.
fn copy_as_killed(path: &std::path::Path, dir: &std::path::Path) -> std::path::PathBuf {
    let copy = dir.join("ledger.redb");
    std::fs::copy(path, &copy).unwrap();
    for (from, to) in file::journal_paths(path)
        .into_iter()
        .zip(file::journal_paths(&copy))
    {
        std::fs::copy(from, to).unwrap();
    }
    copy
}

/// A kill while a checkpoint is under way leaves records in both journals: the frozen one
/// (older generation) and the active one. Replay takes the older first, so the newer entry
/// for an id wins, whichever of the two files holds it.
#[tokio::test]
async fn file_a_kill_during_a_checkpoint_replays_both_journals_oldest_first() {
    for newer_in_first_file in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.redb");
        drop(FileLedger::open(&path).unwrap());
        let [first, second] = file::journal_paths(&path);
        let (mut a, _) = journal::Journal::open(&first).unwrap();
        let (mut b, _) = journal::Journal::open(&second).unwrap();
        let (old, new) = if newer_in_first_file {
            (&mut b, &mut a)
        } else {
            (&mut a, &mut b)
        };
        old.reset_to(40).unwrap();
        new.reset_to(41).unwrap();
        let frame = |id: &str, i: i64| journal::JournalRecord {
            handler: "audit".into(),
            event_id: id.to_owned().into(),
            at_ms: 1_000 + i,
            value: file::encode(entry(1_000 + i, i)).unwrap().into(),
        };
        old.append([frame("x", 1), frame("only-old", 2)]).unwrap();
        new.append([frame("x", 3), frame("only-new", 4)]).unwrap();
        drop((a, b));

        let ledger = FileLedger::open(&path).unwrap();
        assert_eq!(
            ledger.get("audit", "x").await.unwrap(),
            Some(entry(1_003, 3))
        );
        assert!(ledger.get("audit", "only-old").await.unwrap().is_some());
        assert!(ledger.get("audit", "only-new").await.unwrap().is_some());
        assert_eq!(ledger.len("audit").await.unwrap(), 3);
        // Both journals are empty after the replay, and records go on as usual.
        ledger.record("audit", "y", entry(2_000, 5)).await.unwrap();
        drop(ledger);
        let again = FileLedger::open(&path).unwrap();
        assert_eq!(again.len("audit").await.unwrap(), 4);
        assert_eq!(
            again.get("audit", "x").await.unwrap(),
            Some(entry(1_003, 3))
        );
    }
}

// ---- the Kafka backend (on an embedded cluster in this process) ----

/// A cluster with the source topic of [`entry`] (`task-events`, 4 partitions).
fn kafka_cluster() -> crate::kafka::mock::EmbeddedCluster {
    let c = crate::kafka::mock::EmbeddedCluster::start(1).unwrap();
    c.create_topic("task-events", 4).unwrap();
    c
}

/// A host's ledger on `cluster`: every handler the contract uses registered, with a ledger
/// topic of its own under `prefix`, and partition 3 of `task-events` (where [`entry`] comes
/// from) restored, so that it takes writes for it.
async fn kafka_ledger(cluster: &crate::kafka::mock::EmbeddedCluster, prefix: &str) -> KafkaLedger {
    let env = crate::config::KafkaEnv {
        bootstrap_servers: Some(cluster.bootstrap_servers().to_owned()),
        ..Default::default()
    };
    let producer = crate::kafka::producer::KafkaProducer::new(&env, &[]).unwrap();
    let ledger = KafkaLedger::new(producer, &env, &[]);
    for h in [
        "audit",
        "notification",
        "recurring",
        "other",
        "i",
        "nobody",
        "a",
        "ab",
        "h",
        "t",
    ] {
        ledger
            .register(
                h,
                &format!("{prefix}.{h}.ledger"),
                &["task-events".to_owned()],
                WEEK,
            )
            .await
            .unwrap();
        ledger.restore(h, "task-events", 3).await.unwrap();
    }
    ledger
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_contract() {
    let cluster = kafka_cluster();
    round_trip(&kafka_ledger(&cluster, "a").await).await;
    handlers_are_namespaces(&kafka_ledger(&cluster, "b").await).await;
    sweep_rules(&kafka_ledger(&cluster, "c").await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_entries_follow_the_partition_to_another_host_and_a_released_one_writes_nothing() {
    let cluster = kafka_cluster();
    let first = kafka_ledger(&cluster, "g").await;
    let entries: Vec<(String, LedgerEntry)> = (0..500)
        .map(|i| (format!("e{i}"), entry(now_ms(), i)))
        .collect();
    first.record_many("audit", entries.clone()).await.unwrap();
    // The partition moves: the first host lets it go, the next one restores it from the
    // topic with nothing of its own.
    first.release("audit", "task-events", 3);
    let err = first
        .record("audit", "late", entry(now_ms(), 999))
        .await
        .unwrap_err();
    assert!(
        format!("{err:#}").contains("not assigned to this host"),
        "{err:#}"
    );
    let next = kafka_ledger(&cluster, "g").await;
    assert_eq!(next.len("audit").await.unwrap(), 500);
    let ids: Vec<&str> = entries.iter().map(|(k, _)| k.as_str()).collect();
    assert!(
        next.contains_many("audit", &ids)
            .await
            .unwrap()
            .iter()
            .all(|k| *k)
    );
    assert_eq!(
        next.get("audit", "e7").await.unwrap(),
        Some(entries[7].1.clone())
    );
    assert_eq!(
        next.get("audit", "late").await.unwrap(),
        None,
        "a released host wrote nothing"
    );
    // It writes on; a third restore from where the second left off reads only what is new.
    next.record("audit", "e500", entry(now_ms(), 500))
        .await
        .unwrap();
    let r = next
        .restore("audit", "task-events", 3)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        r.entries, 0,
        "its own writes were in its cache already: {r:?}"
    );
    // The first host, given the partition back, reads from where its own writes ended.
    first.restore("audit", "task-events", 3).await.unwrap();
    assert_eq!(first.len("audit").await.unwrap(), 501);
}
