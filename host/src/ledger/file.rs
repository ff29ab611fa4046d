//! [`FileLedger`]: the ledger in a redb file, written by one group-committing thread.
//!
//! Three tables, all written in the same transactions so they never disagree:
//!
//! - `ledger_entries`: `(handler, event_id)` → version byte + postcard value. A redb tuple key
//!   length-prefixes its parts, so no handler/event-id pair can be mistaken for another.
//! - `ledger_by_age`: `(handler, at_ms, event_id)` → `()`. Ordered by handler, then age: a
//!   handler's expired entries are one range from its start, and the oldest ones to evict are
//!   its first keys. A sweep reads what it removes, nothing else.
//! - `ledger_counts`: `handler` → number of entries, so `len` and the size cap need no scan.
//!
//! Writes go through the journal (`journal.rs`): the writer appends each batch of records to
//! the journal in one write and syncs it, keeps the records in memory ([`Recent`]) and
//! answers; now and then a *checkpoint* puts what memory holds into redb in one durable commit
//! and empties the journal. Checkpoints run on a thread of their own, with the records frozen
//! at its start and the second journal taking new ones meanwhile (see [`run_writer`]). A
//! record's path is one `pwrite` and one `fdatasync`; redb sees a transaction per checkpoint,
//! not per batch. (Applying each batch to redb before syncing the journal, as the writer first
//! did, cost more than the sync itself: a non-durable redb commit and a fresh read transaction
//! per batch, 0.1–0.7 ms, on a path where the pipeline waits for every record.) Opening
//! replays both journals first. See `journal.rs` for the crash cases.
//!
//! Reads (`get`, `len`) run on the caller's thread: first in [`Recent`] (the records since the
//! last freeze, then those of the checkpoint under way), then in a *snapshot*
//! of redb, a read transaction the checkpoint opens right after its commit and publishes
//! (`arc-swap`) before it forgets the records the checkpoint took. So every entry whose
//! `record` has returned is visible, and a lookup never opens a read transaction of its own:
//! opening one waits while a commit holds the database header, and the pipeline measured
//! every lookup waiting out an fsync that way. A lookup is a hash probe or a few B-tree pages
//! almost always in redb's cache — microseconds, cheaper than the hop to a blocking thread that
//! `spawn_blocking` would add on every record. If a checkpoint cannot open a snapshot, it
//! withdraws the published one and reads fall back to their own transactions.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow};
use arc_swap::ArcSwapOption;
use async_trait::async_trait;
use redb::{
    Builder, Database, Durability, ReadTransaction, ReadableDatabase, ReadableTable, Table,
    TableDefinition, WriteTransaction,
};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use crate::now_ms;

use super::journal::{
    CHECKPOINT_BATCHES, CHECKPOINT_BYTES, CHECKPOINT_INTERVAL, Journal, JournalRecord,
};
use super::{
    FORMAT_VERSION, Ledger, LedgerEntry, LedgerOutcome, abbreviate, check_key, retention_cutoff,
};

/// The most operations the writer puts in one batch (one journal sync).
pub const MAX_BATCH: usize = 1024;

/// Requests queued for the writer beyond this wait (asynchronously) in `record`.
const QUEUE_CAPACITY: usize = 4 * MAX_BATCH;

/// redb's page cache. Its default (1 GiB) is sized for a database that owns the machine; the
/// ledger shares it with handlers, and its hot set is the recent entries.
const CACHE_BYTES: usize = 128 * 1024 * 1024;

const ENTRIES: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("ledger_entries");
const BY_AGE: TableDefinition<(&str, i64, &str), ()> = TableDefinition::new("ledger_by_age");
const COUNTS: TableDefinition<&str, u64> = TableDefinition::new("ledger_counts");

/// A [`Ledger`] in an embedded redb file; see the module docs for the design.
///
/// Dropping it stops the writer thread after the batch in hand is committed, and closes the
/// file. A `record` call cancelled after sending may still be committed.
pub struct FileLedger {
    path: PathBuf,
    db: Arc<Database>,
    queue: Option<mpsc::Sender<Op>>,
    writer: Option<JoinHandle<()>>,
    shared: Arc<Shared>,
    /// What lookups read (see the module docs).
    views: Arc<Views>,
}

/// What lookups read, kept up to date by the writer and the checkpoint thread.
struct Views {
    /// The records made durable in the active journal since the last freeze.
    recent: RwLock<Recent>,
    /// The records a checkpoint under way is putting into redb (empty between checkpoints).
    frozen: RwLock<Recent>,
    /// redb as of the last checkpoint; `None` if the writer could not open one.
    snapshot: ArcSwapOption<ReadTransaction>,
}

impl Views {
    /// The records since the last checkpoint. A panic elsewhere while it was held leaves a map
    /// that is still whole (each insert is one `HashMap` call), so poisoning is ignored.
    fn recent(&self) -> RwLockReadGuard<'_, Recent> {
        self.recent.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// The same, to change (the writer only).
    fn recent_mut(&self) -> RwLockWriteGuard<'_, Recent> {
        self.recent.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// The records of the checkpoint under way (poisoning ignored, as for `recent`). Taken
    /// after `recent` where both are held.
    fn frozen(&self) -> RwLockReadGuard<'_, Recent> {
        self.frozen.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn frozen_mut(&self) -> RwLockWriteGuard<'_, Recent> {
        self.frozen.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// Hand what `recent` holds to a checkpoint: it becomes `frozen` (empty before) in one
    /// step under both locks, so a lookup finds each record in one or the other.
    fn freeze(&self) {
        let mut recent = self.recent_mut();
        let mut frozen = self.frozen_mut();
        std::mem::swap(&mut *recent, &mut *frozen);
    }

    /// Publish a read transaction of redb as it is now.
    fn publish_snapshot(&self, db: &Database) {
        match db.begin_read() {
            Ok(txn) => self.snapshot.store(Some(Arc::new(txn))),
            Err(e) => {
                tracing::warn!(error = %e, "ledger snapshot after a checkpoint failed; lookups open their own");
                self.snapshot.store(None);
            }
        }
    }
}

/// Records that are durable in the journal and not yet in redb: handler → event id → entry.
#[derive(Debug, Default)]
struct Recent(HashMap<String, HashMap<String, Journaled>>);

/// One record as redb will hold it.
#[derive(Debug)]
struct Journaled {
    at_ms: i64,
    value: Vec<u8>,
}

impl Recent {
    fn get(&self, handler: &str, event_id: &str) -> Option<&Journaled> {
        self.0.get(handler)?.get(event_id)
    }

    /// Keep a record; a later one for the same key replaces it, as in redb.
    fn insert(&mut self, handler: String, event_id: String, entry: Journaled) {
        match self.0.get_mut(handler.as_str()) {
            Some(entries) => entries.insert(event_id, entry),
            None => self.0.entry(handler).or_default().insert(event_id, entry),
        };
    }

    fn is_empty(&self) -> bool {
        self.0.values().all(HashMap::is_empty)
    }
}

/// What the writer has done so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WriterStats {
    /// Batches made durable (each one journal `fdatasync`).
    pub commits: u64,
    /// Operations (records and sweeps) in those batches.
    pub operations: u64,
    /// Durable redb commits that emptied the journal.
    pub checkpoints: u64,
}

#[derive(Debug, Default)]
struct Shared {
    commits: AtomicU64,
    operations: AtomicU64,
    checkpoints: AtomicU64,
    /// Why the writer stopped, once it has.
    failure: OnceLock<String>,
}

/// A request to the writer thread.
enum Op {
    /// One or more entries of one handler, answered together.
    Record {
        handler: String,
        entries: Vec<Encoded>,
        reply: oneshot::Sender<anyhow::Result<()>>,
    },
    Sweep {
        handler: String,
        retention: Duration,
        max_entries: u64,
        reply: oneshot::Sender<anyhow::Result<u64>>,
    },
    /// Makes the batch fail as a storage error would.
    #[cfg(test)]
    Fail {
        reply: oneshot::Sender<anyhow::Result<u64>>,
    },
}

/// An entry ready for the journal: its event id, time and stored value.
struct Encoded {
    event_id: String,
    at_ms: i64,
    value: Vec<u8>,
}

impl Op {
    /// Answer the caller: `Ok(n)` (sweep count; ignored for a record) once committed, or the
    /// writer's failure. A caller that stopped waiting is not an error.
    fn finish(self, result: Result<u64, &str>) {
        let failed = |cause: &str| anyhow!("ledger writer failed: {cause}");
        match self {
            Op::Record { reply, .. } => {
                let _ = reply.send(result.map(|_| ()).map_err(failed));
            }
            Op::Sweep { reply, .. } => {
                let _ = reply.send(result.map_err(failed));
            }
            #[cfg(test)]
            Op::Fail { reply } => {
                let _ = reply.send(result.map_err(failed));
            }
        }
    }
}

impl FileLedger {
    /// Open the ledger at `path` (and its journal next to it, `<file name>-journal`),
    /// creating the files (and their parent folders) if needed, replay the journal, and start
    /// the writer thread.
    pub fn open(path: &Path) -> anyhow::Result<Self> {
        Self::open_with(path, Checkpoints::DEFAULT)
    }

    /// Open with checkpoints only at close: every entry stays in the journal until then, as
    /// a crash test wants it.
    #[cfg(test)]
    pub(super) fn open_without_checkpoints(path: &Path) -> anyhow::Result<Self> {
        Self::open_with(
            path,
            Checkpoints {
                bytes: u64::MAX,
                batches: u32::MAX,
                interval: Duration::MAX,
            },
        )
    }

    /// Open with a checkpoint after every batch: entries move from memory to redb as often
    /// as they can, as a test of lookups across checkpoints wants it.
    #[cfg(test)]
    pub(super) fn open_checkpointing_every_batch(path: &Path) -> anyhow::Result<Self> {
        Self::open_with(
            path,
            Checkpoints {
                bytes: u64::MAX,
                batches: 1,
                interval: Duration::MAX,
            },
        )
    }

    fn open_with(path: &Path, checkpoints: Checkpoints) -> anyhow::Result<Self> {
        let what = || format!("open ledger {}", path.display());
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).with_context(what)?;
        }
        let db = Builder::new()
            .set_cache_size(CACHE_BYTES)
            .create(path)
            .with_context(what)?;
        create_tables(&db).with_context(what)?;
        let journals = replay_journals(&db, path).with_context(what)?;
        let views = Arc::new(Views {
            recent: RwLock::default(),
            frozen: RwLock::default(),
            snapshot: ArcSwapOption::new(Some(Arc::new(db.begin_read().with_context(what)?))),
        });
        let db = Arc::new(db);
        let shared = Arc::new(Shared::default());
        let (queue, requests) = mpsc::channel(QUEUE_CAPACITY);
        let writer = std::thread::Builder::new()
            .name("kasm-ledger-writer".into())
            .spawn({
                let db = Arc::clone(&db);
                let shared = Arc::clone(&shared);
                let views = Arc::clone(&views);
                move || run_writer(&db, journals, checkpoints, requests, &shared, &views)
            })
            .with_context(|| format!("start the writer thread of ledger {}", path.display()))?;
        Ok(Self {
            path: path.to_owned(),
            db,
            queue: Some(queue),
            writer: Some(writer),
            shared,
            views,
        })
    }

    /// The file this ledger lives in.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Commits and operations so far; `operations / commits` is the mean batch size.
    pub fn stats(&self) -> WriterStats {
        WriterStats {
            commits: self.shared.commits.load(Ordering::Relaxed),
            operations: self.shared.operations.load(Ordering::Relaxed),
            checkpoints: self.shared.checkpoints.load(Ordering::Relaxed),
        }
    }

    /// Why the writer stopped, if it has: from then on every `record` and `sweep` fails.
    pub fn failure(&self) -> Option<&str> {
        self.shared.failure.get().map(String::as_str)
    }

    /// Hand `op` to the writer and wait for its answer.
    async fn submit<T>(
        &self,
        op: Op,
        answer: oneshot::Receiver<anyhow::Result<T>>,
    ) -> anyhow::Result<T> {
        let queue = self
            .queue
            .as_ref()
            .ok_or_else(|| anyhow!("ledger {} is closed", self.path.display()))?;
        if queue.send(op).await.is_err() {
            return Err(self.stopped());
        }
        answer.await.unwrap_or_else(|_| Err(self.stopped()))
    }

    fn stopped(&self) -> anyhow::Error {
        match self.failure() {
            Some(cause) => anyhow!(
                "ledger writer of {} stopped after a failure: {cause}",
                self.path.display()
            ),
            None => anyhow!("ledger writer of {} stopped", self.path.display()),
        }
    }

    /// Make the writer fail as a storage error would, with whatever else is in its batch.
    #[cfg(test)]
    pub(super) async fn inject_failure(&self) -> anyhow::Result<u64> {
        let (reply, answer) = oneshot::channel();
        self.submit(Op::Fail { reply }, answer).await
    }

    /// The published snapshot, else a read transaction of its own.
    fn reader(&self) -> anyhow::Result<Arc<ReadTransaction>> {
        match self.views.snapshot.load_full() {
            Some(txn) => Ok(txn),
            None => Ok(Arc::new(self.db.begin_read()?)),
        }
    }

    fn read_entry(&self, handler: &str, event_id: &str) -> anyhow::Result<Option<LedgerEntry>> {
        // Newest first: `recent`, then `frozen`, then the snapshot. A freeze moves `recent`
        // into `frozen` under both locks, and a checkpoint publishes its snapshot before it
        // empties `frozen`, so a record is always in one of the three when its turn comes.
        if let Some(entry) = self.views.recent().get(handler, event_id) {
            return decode(&entry.value).map(Some);
        }
        if let Some(entry) = self.views.frozen().get(handler, event_id) {
            return decode(&entry.value).map(Some);
        }
        let txn = self.reader()?;
        let table = txn.open_table(ENTRIES)?;
        let Some(value) = table.get((handler, event_id))? else {
            return Ok(None);
        };
        decode(value.value()).map(Some)
    }

    /// Which of `event_ids` have an entry: the in-memory maps under one pair of read locks
    /// (taken in the same order as a freeze takes them), then what they do not hold in one
    /// snapshot table, in key order so the B-tree is walked forwards. The order of the three
    /// reads is `read_entry`'s, so the same argument holds.
    fn read_many(&self, handler: &str, event_ids: &[&str]) -> anyhow::Result<Vec<bool>> {
        let mut found = vec![false; event_ids.len()];
        let mut rest: Vec<usize> = Vec::new();
        {
            let recent = self.views.recent();
            let frozen = self.views.frozen();
            let (newer, older) = (recent.0.get(handler), frozen.0.get(handler));
            for (i, id) in event_ids.iter().enumerate() {
                if newer.is_some_and(|m| m.contains_key(*id))
                    || older.is_some_and(|m| m.contains_key(*id))
                {
                    found[i] = true;
                } else {
                    rest.push(i);
                }
            }
        }
        if rest.is_empty() {
            return Ok(found);
        }
        rest.sort_unstable_by_key(|&i| event_ids[i]);
        let txn = self.reader()?;
        let table = txn.open_table(ENTRIES)?;
        for i in rest {
            found[i] = table.get((handler, event_ids[i]))?.is_some();
        }
        Ok(found)
    }

    /// redb's count plus the records in memory redb does not hold yet. `recent` and `frozen`
    /// are held while the snapshot is read: whichever side of a checkpoint the snapshot is
    /// from, a record already in it is not counted twice (nor one in both maps).
    fn read_count(&self, handler: &str) -> anyhow::Result<u64> {
        let recent = self.views.recent();
        let frozen = self.views.frozen();
        let txn = self.reader()?;
        let mut n = txn
            .open_table(COUNTS)?
            .get(handler)?
            .map_or(0, |n| n.value());
        let newer = recent.0.get(handler);
        let older = frozen
            .0
            .get(handler)
            .into_iter()
            .flat_map(|entries| entries.keys())
            .filter(|id| newer.is_none_or(|m| !m.contains_key(id.as_str())));
        let in_memory = newer.into_iter().flat_map(|m| m.keys()).chain(older);
        let stored = txn.open_table(ENTRIES)?;
        for event_id in in_memory {
            if stored.get((handler, event_id.as_str()))?.is_none() {
                n += 1;
            }
        }
        Ok(n)
    }
}

#[async_trait]
impl Ledger for FileLedger {
    async fn get(&self, handler: &str, event_id: &str) -> anyhow::Result<Option<LedgerEntry>> {
        self.read_entry(handler, event_id).with_context(|| {
            format!(
                "ledger get handler={handler} event_id={} ({})",
                abbreviate(event_id),
                self.path.display()
            )
        })
    }

    async fn contains_many(&self, handler: &str, event_ids: &[&str]) -> anyhow::Result<Vec<bool>> {
        self.read_many(handler, event_ids).with_context(|| {
            format!(
                "ledger lookup of {} event ids handler={handler} ({})",
                event_ids.len(),
                self.path.display()
            )
        })
    }

    async fn record(
        &self,
        handler: &str,
        event_id: &str,
        entry: LedgerEntry,
    ) -> anyhow::Result<()> {
        self.record_many(handler, vec![(event_id.to_owned(), entry)])
            .await
    }

    /// One request to the writer for the whole group: it lands in one journal sync (with
    /// whatever else is queued) and is answered once.
    async fn record_many(
        &self,
        handler: &str,
        entries: Vec<(String, LedgerEntry)>,
    ) -> anyhow::Result<()> {
        let what = |event_id: &str| {
            format!(
                "ledger record handler={handler} event_id={} ({})",
                abbreviate(event_id),
                self.path.display()
            )
        };
        let first = entries
            .first()
            .map(|(id, _)| id.clone())
            .unwrap_or_default();
        let n = entries.len();
        let mut encoded = Vec::with_capacity(n);
        for (event_id, entry) in entries {
            check_key(handler, &event_id).with_context(|| what(&event_id))?;
            let at_ms = entry.at_ms;
            let value = encode(entry).with_context(|| what(&event_id))?;
            encoded.push(Encoded {
                event_id,
                at_ms,
                value,
            });
        }
        if encoded.is_empty() {
            return Ok(());
        }
        let (reply, answer) = oneshot::channel();
        let op = Op::Record {
            handler: handler.to_owned(),
            entries: encoded,
            reply,
        };
        self.submit(op, answer).await.with_context(|| match n {
            1 => what(&first),
            _ => format!("{} and {} more in the same write", what(&first), n - 1),
        })
    }

    async fn sweep(
        &self,
        handler: &str,
        retention: Duration,
        max_entries: u64,
    ) -> anyhow::Result<u64> {
        let (reply, answer) = oneshot::channel();
        let op = Op::Sweep {
            handler: handler.to_owned(),
            retention,
            max_entries,
            reply,
        };
        self.submit(op, answer)
            .await
            .with_context(|| format!("ledger sweep handler={handler} ({})", self.path.display()))
    }

    async fn len(&self, handler: &str) -> anyhow::Result<u64> {
        self.read_count(handler)
            .with_context(|| format!("ledger len handler={handler} ({})", self.path.display()))
    }
}

impl fmt::Debug for FileLedger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileLedger")
            .field("path", &self.path)
            .field("stats", &self.stats())
            .field("failure", &self.failure())
            .finish_non_exhaustive()
    }
}

impl Drop for FileLedger {
    fn drop(&mut self) {
        // The queue's only sender: once it is gone the writer drains what is queued and returns.
        drop(self.queue.take());
        if let Some(writer) = self.writer.take()
            && writer.join().is_err()
        {
            tracing::error!(path = %self.path.display(), "ledger writer thread panicked");
        }
        // The snapshot's read transaction goes before the database it reads.
        self.views.snapshot.store(None);
    }
}

/// Create the tables, so that readers find them even before the first record.
fn create_tables(db: &Database) -> anyhow::Result<()> {
    let txn = db.begin_write()?;
    txn.open_table(ENTRIES)?;
    txn.open_table(BY_AGE)?;
    txn.open_table(COUNTS)?;
    txn.commit()?;
    Ok(())
}

/// When the writer commits redb durably and empties the journal (whichever comes first).
#[derive(Debug, Clone, Copy)]
struct Checkpoints {
    bytes: u64,
    batches: u32,
    interval: Duration,
}

impl Checkpoints {
    const DEFAULT: Self = Self {
        bytes: CHECKPOINT_BYTES,
        batches: CHECKPOINT_BATCHES,
        interval: CHECKPOINT_INTERVAL,
    };
}

/// The first journal of the ledger file at `path` (`<file name>-journal`).
pub(super) fn journal_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_owned();
    name.push("-journal");
    path.with_file_name(name)
}

/// Both journals of the ledger file at `path`: records go to one while a checkpoint puts the
/// other's into redb (see [`run_writer`]).
pub(super) fn journal_paths(path: &Path) -> [PathBuf; 2] {
    let first = journal_path(path);
    let mut name = first.file_name().unwrap_or_default().to_owned();
    name.push("-2");
    let second = first.with_file_name(name);
    [first, second]
}

/// Open both journals, put what they hold into redb durably (the older generation first, so
/// the last record of an id wins), then empty them: the first to take records (the active
/// journal), the second with a higher generation (the spare).
fn replay_journals(db: &Database, path: &Path) -> anyhow::Result<[Journal; 2]> {
    let [first, second] = journal_paths(path);
    let (a, a_records) = Journal::open(&first)?;
    let (b, b_records) = Journal::open(&second)?;
    let newest = a.generation().max(b.generation());
    let mut both = [(a, a_records), (b, b_records)];
    both.sort_by_key(|(j, _)| j.generation());
    let total: usize = both.iter().map(|(_, r)| r.len()).sum();
    if total > 0 {
        let txn = db.begin_write().context("begin journal replay")?;
        {
            let mut tables = Tables::open(&txn)?;
            for r in both.iter().flat_map(|(_, records)| records) {
                tables
                    .insert(&r.handler, &r.event_id, r.at_ms, &r.value)
                    .with_context(|| {
                        format!(
                            "replay handler={} event_id={}",
                            r.handler,
                            abbreviate(&r.event_id)
                        )
                    })?;
            }
            tables.close()?;
        }
        txn.commit()
            .with_context(|| format!("commit {total} replayed journal records"))?;
        tracing::info!(journal = %first.display(), records = total, "ledger journal replayed");
    }
    // Only now that redb holds them durably may the journals forget them.
    let [(mut active, _), (mut spare, _)] = both;
    active.reset_to(newest.wrapping_add(1))?;
    spare.reset_to(newest.wrapping_add(2))?;
    Ok([active, spare])
}

/// A checkpoint for the checkpoint thread: put `frozen` (and the sweeps) into redb, then empty
/// `journal` (which holds `frozen`'s records) to `next_generation` and give it back.
struct Job {
    journal: Journal,
    sweeps: Vec<Op>,
    next_generation: u64,
}

/// The writer thread: take what is queued, make its records durable in the active journal,
/// keep them in `recent`, answer. When a checkpoint is due (and at a sweep) it *freezes*:
/// `recent` becomes `frozen`, the active journal goes with it to the checkpoint thread, and the
/// spare journal (empty, a higher generation) takes the records from then on. The checkpoint
/// thread puts `frozen` into redb in one durable commit, publishes a snapshot, empties
/// `frozen` and the journal and hands it back as the next spare. So records are made durable
/// while redb commits (a checkpoint of 100 ms of records at 100 k/s took 40–110 ms, during
/// which the writer used to sync nothing). One checkpoint at a time: while one runs, a due
/// one waits, and records go on into the active journal up to [`MAX_JOURNAL_BYTES`].
///
/// On a failure it stops for good — after a failed sync above all, the state on disk is not
/// known — and answers every queued and later request with the cause.
fn run_writer(
    db: &Database,
    journals: [Journal; 2],
    checkpoints: Checkpoints,
    mut requests: mpsc::Receiver<Op>,
    shared: &Shared,
    views: &Views,
) {
    let [mut active, spare] = journals;
    let (jobs, job_rx) = std::sync::mpsc::channel::<Job>();
    let (done_tx, done) = std::sync::mpsc::channel::<Result<Journal, String>>();
    std::thread::scope(|scope| {
        let checkpointer = std::thread::Builder::new()
            .name("kasm-ledger-checkpoint".into())
            .spawn_scoped(scope, || {
                run_checkpointer(db, views, shared, job_rx, done_tx)
            });
        if let Err(e) = checkpointer {
            let cause = format!("start the ledger checkpoint thread: {e}");
            return fail(shared, cause, &mut Vec::new(), &mut requests);
        }
        let mut spare = Some(spare);
        let mut batch = Vec::with_capacity(MAX_BATCH);
        // Sweeps of the batches so far: they run in the next checkpoint.
        let mut sweeps = Vec::new();
        let mut last_checkpoint = Instant::now();
        let mut batches_since_checkpoint = 0_u32;
        while requests.blocking_recv_many(&mut batch, MAX_BATCH) > 0 {
            batches_since_checkpoint += 1;
            if let Err(err) = journal_records(&mut active, &mut batch, views) {
                return fail(shared, format!("{err:#}"), &mut batch, &mut requests);
            }
            shared.commits.fetch_add(1, Ordering::Relaxed);
            shared
                .operations
                .fetch_add(batch.len() as u64, Ordering::Relaxed);
            for op in batch.drain(..) {
                match op {
                    Op::Record { .. } => op.finish(Ok(0)),
                    other => sweeps.push(other),
                }
            }
            if spare.is_none() {
                match done.try_recv() {
                    Ok(Ok(journal)) => spare = Some(journal),
                    Ok(Err(cause)) => return fail(shared, cause, &mut sweeps, &mut requests),
                    Err(std::sync::mpsc::TryRecvError::Empty) => {}
                    Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                        let cause = CHECKPOINTER_GONE.to_owned();
                        return fail(shared, cause, &mut sweeps, &mut requests);
                    }
                }
            }
            let due = !sweeps.is_empty()
                || active.len() >= checkpoints.bytes
                || batches_since_checkpoint >= checkpoints.batches
                || last_checkpoint.elapsed() >= checkpoints.interval;
            if !due {
                continue;
            }
            let next = match spare.take() {
                Some(journal) => journal,
                // A checkpoint is under way: records go on into the active journal unless
                // a sweep waits or the journal is full.
                None if sweeps.is_empty() && active.len() < MAX_JOURNAL_BYTES => continue,
                None => match done.recv() {
                    Ok(Ok(journal)) => journal,
                    Ok(Err(cause)) => return fail(shared, cause, &mut sweeps, &mut requests),
                    Err(_) => {
                        let cause = CHECKPOINTER_GONE.to_owned();
                        return fail(shared, cause, &mut sweeps, &mut requests);
                    }
                },
            };
            views.freeze();
            let frozen = std::mem::replace(&mut active, next);
            let job = Job {
                journal: frozen,
                sweeps: std::mem::take(&mut sweeps),
                next_generation: active.generation().wrapping_add(1),
            };
            if let Err(std::sync::mpsc::SendError(job)) = jobs.send(job) {
                let mut sweeps = job.sweeps;
                let cause = CHECKPOINTER_GONE.to_owned();
                return fail(shared, cause, &mut sweeps, &mut requests);
            }
            last_checkpoint = Instant::now();
            batches_since_checkpoint = 0;
        }
        // Closing: wait for the checkpoint under way, then leave redb complete and both
        // journals empty, so the next open replays nothing.
        drop(jobs);
        if spare.is_none() {
            match done.recv() {
                Ok(Ok(journal)) => spare = Some(journal),
                Ok(Err(cause)) => {
                    tracing::error!(error = %cause, "ledger checkpoint failed at close; the journals are replayed at the next open");
                    return;
                }
                Err(_) => return,
            }
        }
        if views.recent().is_empty() {
            return;
        }
        views.freeze();
        let closing = checkpoint(db, views, &[]).and_then(|_| {
            let next = spare.as_ref().map_or(0, Journal::generation);
            active.reset_to(next.wrapping_add(1))
        });
        match closing {
            Ok(()) => {
                shared.checkpoints.fetch_add(1, Ordering::Relaxed);
            }
            Err(err) => tracing::error!(
                error = %format!("{err:#}"),
                "ledger checkpoint at close failed; the journal is replayed at the next open"
            ),
        }
    });
}

/// The writer's failure when the checkpoint thread is gone without saying why.
const CHECKPOINTER_GONE: &str = "the ledger checkpoint thread stopped";

/// The journal may grow to this while a checkpoint is under way; past it the writer waits for
/// the checkpoint.
const MAX_JOURNAL_BYTES: u64 = 4 * CHECKPOINT_BYTES;

/// The writer's failure: record the cause, answer `pending` and everything queued or still to
/// come with it.
fn fail(shared: &Shared, cause: String, pending: &mut Vec<Op>, requests: &mut mpsc::Receiver<Op>) {
    tracing::error!(error = %cause, "ledger writer failed; records fail until restart");
    // Before closing: a caller that finds the queue closed reads the cause.
    let _ = shared.failure.set(cause.clone());
    requests.close();
    for op in pending.drain(..) {
        op.finish(Err(&cause));
    }
    while let Some(op) = requests.blocking_recv() {
        op.finish(Err(&cause));
    }
}

/// The checkpoint thread: run each job, answer its sweeps, empty its journal and hand it back;
/// on a failure say why and stop.
fn run_checkpointer(
    db: &Database,
    views: &Views,
    shared: &Shared,
    jobs: std::sync::mpsc::Receiver<Job>,
    done: std::sync::mpsc::Sender<Result<Journal, String>>,
) {
    for mut job in jobs {
        let result = checkpoint(db, views, &job.sweeps).and_then(|removed| {
            // Only now that redb holds the frozen records durably may their journal forget
            // them.
            job.journal.reset_to(job.next_generation)?;
            Ok(removed)
        });
        match result {
            Ok(removed) => {
                // Counted before a sweep's caller hears of it.
                shared.checkpoints.fetch_add(1, Ordering::Relaxed);
                for (op, n) in job.sweeps.drain(..).zip(removed) {
                    op.finish(Ok(n));
                }
                if done.send(Ok(job.journal)).is_err() {
                    return;
                }
            }
            Err(err) => {
                let cause = format!("{err:#}");
                for op in job.sweeps.drain(..) {
                    op.finish(Err(&cause));
                }
                let _ = done.send(Err(cause));
                return;
            }
        }
    }
}

/// Append the batch's records to the journal and sync it, then move them into `recent`
/// (lookups see them from then on). The ops keep only their replies.
fn journal_records(journal: &mut Journal, batch: &mut [Op], views: &Views) -> anyhow::Result<()> {
    #[cfg(test)]
    if batch.iter().any(|op| matches!(op, Op::Fail { .. })) {
        anyhow::bail!("injected failure");
    }
    journal.append(
        batch
            .iter()
            .filter_map(|op| match op {
                Op::Record {
                    handler, entries, ..
                } => Some((handler, entries)),
                _ => None,
            })
            .flat_map(|(handler, entries)| {
                entries.iter().map(move |e| JournalRecord {
                    handler: handler.into(),
                    event_id: e.event_id.as_str().into(),
                    at_ms: e.at_ms,
                    value: e.value.as_slice().into(),
                })
            }),
    )?;
    let mut recent = views.recent_mut();
    for op in batch {
        if let Op::Record {
            handler, entries, ..
        } = op
        {
            for e in entries.drain(..) {
                let entry = Journaled {
                    at_ms: e.at_ms,
                    value: e.value,
                };
                recent.insert(handler.clone(), e.event_id, entry);
            }
        }
    }
    Ok(())
}

/// Put the records in `frozen` into redb and run `sweeps` (after them), in one durable commit;
/// publish a snapshot with them, then empty `frozen`. Returns what each sweep removed.
fn checkpoint(db: &Database, views: &Views, sweeps: &[Op]) -> anyhow::Result<Vec<u64>> {
    let mut txn = db.begin_write().context("begin ledger checkpoint")?;
    txn.set_durability(Durability::Immediate)
        .context("set ledger checkpoint durability")?;
    let removed = {
        let mut tables = Tables::open(&txn)?;
        for (handler, entries) in &views.frozen().0 {
            for (event_id, entry) in entries {
                tables
                    .insert(handler, event_id, entry.at_ms, &entry.value)
                    .with_context(|| {
                        format!("write handler={handler} event_id={}", abbreviate(event_id))
                    })?;
            }
        }
        let removed = sweep_all(&mut tables, sweeps)?;
        tables.close()?;
        removed
    };
    txn.commit().context("commit ledger checkpoint")?;
    // Published before the records leave `frozen`: a lookup finds them in one or the other.
    views.publish_snapshot(db);
    // Emptied, not dropped: the maps keep their capacity (a freeze swaps them into `recent`).
    views.frozen_mut().0.values_mut().for_each(HashMap::clear);
    Ok(removed)
}

/// Run the sweeps; one count of removed entries per op (0 for an op that is not a sweep), so
/// the counts line up with the ops whatever they hold.
fn sweep_all(tables: &mut Tables<'_>, sweeps: &[Op]) -> anyhow::Result<Vec<u64>> {
    let now = now_ms();
    sweeps
        .iter()
        .map(|op| match op {
            Op::Sweep {
                handler,
                retention,
                max_entries,
                ..
            } => tables
                .sweep(handler, retention_cutoff(now, *retention), *max_entries)
                .with_context(|| format!("sweep handler={handler}")),
            _ => Ok(0),
        })
        .collect()
}

/// The ledger's tables, open in one write transaction. [`Tables::close`] must be called
/// before the transaction commits: the handlers' counts are kept here while entries are
/// inserted and removed (one table write per handler and transaction, not two per entry) and
/// written then.
struct Tables<'txn> {
    entries: Table<'txn, (&'static str, &'static str), &'static [u8]>,
    by_age: Table<'txn, (&'static str, i64, &'static str), ()>,
    counts: Table<'txn, &'static str, u64>,
    /// Each handler's count as this transaction has changed it.
    changed_counts: HashMap<String, u64>,
}

impl<'txn> Tables<'txn> {
    fn open(txn: &'txn WriteTransaction) -> anyhow::Result<Self> {
        Ok(Self {
            entries: txn.open_table(ENTRIES)?,
            by_age: txn.open_table(BY_AGE)?,
            counts: txn.open_table(COUNTS)?,
            changed_counts: HashMap::new(),
        })
    }

    /// Write the changed counts.
    fn close(mut self) -> anyhow::Result<()> {
        for (handler, n) in std::mem::take(&mut self.changed_counts) {
            if n == 0 {
                self.counts.remove(handler.as_str())?;
            } else {
                self.counts.insert(handler.as_str(), n)?;
            }
        }
        Ok(())
    }

    fn insert(
        &mut self,
        handler: &str,
        event_id: &str,
        at_ms: i64,
        value: &[u8],
    ) -> anyhow::Result<()> {
        let previous = self
            .entries
            .insert((handler, event_id), value)?
            .map(|old| old.value().to_vec());
        match previous {
            None => {
                let n = self.count(handler)?;
                self.set_count(handler, n + 1);
            }
            Some(old) => match decode(&old) {
                Ok(old) => {
                    self.by_age.remove((handler, old.at_ms, event_id))?;
                }
                Err(err) => {
                    // Not readable, so its age is unknown: find its index key the slow way.
                    tracing::warn!(
                        handler,
                        event_id,
                        error = %format!("{err:#}"),
                        "overwriting an unreadable ledger entry"
                    );
                    self.unindex_by_scan(handler, event_id)?;
                }
            },
        }
        self.by_age.insert((handler, at_ms, event_id), ())?;
        Ok(())
    }

    fn sweep(&mut self, handler: &str, cutoff: i64, max_entries: u64) -> anyhow::Result<u64> {
        // Every key in this range has `handler` as its first part.
        let expired = self
            .by_age
            .range((handler, i64::MIN, "")..(handler, cutoff, ""))?
            .map(|item| item.map(|(key, _)| age_key(&key.value())))
            .collect::<Result<Vec<_>, _>>()?;
        let mut removed = self.remove(handler, &expired)?;

        let left = self.count(handler)?;
        if left > max_entries {
            let excess = left - max_entries;
            let mut oldest = Vec::new();
            for item in self.by_age.range((handler, i64::MIN, "")..)? {
                if oldest.len() as u64 >= excess {
                    break;
                }
                let (key, _) = item?;
                let key = key.value();
                if key.0 != handler {
                    break;
                }
                oldest.push(age_key(&key));
            }
            removed += self.remove(handler, &oldest)?;
        }
        Ok(removed)
    }

    /// Remove `handler`'s entries at these `(at_ms, event_id)`; returns how many.
    fn remove(&mut self, handler: &str, keys: &[(i64, String)]) -> anyhow::Result<u64> {
        if keys.is_empty() {
            return Ok(0);
        }
        for (at_ms, event_id) in keys {
            self.by_age.remove((handler, *at_ms, event_id.as_str()))?;
            self.entries.remove((handler, event_id.as_str()))?;
        }
        let removed = keys.len() as u64;
        let n = self.count(handler)?;
        self.set_count(handler, n.saturating_sub(removed));
        Ok(removed)
    }

    /// Remove every index key of `(handler, event_id)`, whatever its age.
    fn unindex_by_scan(&mut self, handler: &str, event_id: &str) -> anyhow::Result<()> {
        let mut ages = Vec::new();
        for item in self.by_age.range((handler, i64::MIN, "")..)? {
            let (key, _) = item?;
            let (h, at_ms, id) = key.value();
            if h != handler {
                break;
            }
            if id == event_id {
                ages.push(at_ms);
            }
        }
        for at_ms in ages {
            self.by_age.remove((handler, at_ms, event_id))?;
        }
        Ok(())
    }

    fn count(&self, handler: &str) -> anyhow::Result<u64> {
        if let Some(n) = self.changed_counts.get(handler) {
            return Ok(*n);
        }
        Ok(self.counts.get(handler)?.map_or(0, |n| n.value()))
    }

    fn set_count(&mut self, handler: &str, n: u64) {
        match self.changed_counts.get_mut(handler) {
            Some(count) => *count = n,
            None => {
                self.changed_counts.insert(handler.to_owned(), n);
            }
        }
    }
}

fn age_key(key: &(&str, i64, &str)) -> (i64, String) {
    (key.1, key.2.to_owned())
}

/// Format version 1 of a stored entry. The field order and the outcome's variant order are
/// the on-disk format: change them only together with a new [`FORMAT_VERSION`].
#[derive(Serialize, Deserialize)]
struct StoredV1 {
    outcome: StoredOutcomeV1,
    at_ms: i64,
    component_sha256: String,
    topic: String,
    partition: i32,
    offset: i64,
}

#[derive(Serialize, Deserialize)]
enum StoredOutcomeV1 {
    Ok,
    DeadLettered,
}

/// The version byte of [`StoredV1`]; a new version keeps reading this one.
const VERSION_1: u8 = 1;
const _: () = assert!(
    FORMAT_VERSION == VERSION_1,
    "encode() writes the current version"
);

pub(super) fn encode(entry: LedgerEntry) -> anyhow::Result<Vec<u8>> {
    let stored = StoredV1 {
        outcome: match entry.outcome {
            LedgerOutcome::Ok => StoredOutcomeV1::Ok,
            LedgerOutcome::DeadLettered => StoredOutcomeV1::DeadLettered,
        },
        at_ms: entry.at_ms,
        component_sha256: entry.component_sha256,
        topic: entry.topic,
        partition: entry.partition,
        offset: entry.offset,
    };
    postcard::to_extend(&stored, vec![FORMAT_VERSION]).context("encode ledger entry")
}

pub(super) fn decode(bytes: &[u8]) -> anyhow::Result<LedgerEntry> {
    match bytes.split_first() {
        Some((&VERSION_1, rest)) => {
            let stored: StoredV1 =
                postcard::from_bytes(rest).context("decode ledger entry (format version 1)")?;
            Ok(LedgerEntry {
                outcome: match stored.outcome {
                    StoredOutcomeV1::Ok => LedgerOutcome::Ok,
                    StoredOutcomeV1::DeadLettered => LedgerOutcome::DeadLettered,
                },
                at_ms: stored.at_ms,
                component_sha256: stored.component_sha256,
                topic: stored.topic,
                partition: stored.partition,
                offset: stored.offset,
            })
        }
        Some((version, _)) => Err(anyhow!(
            "ledger entry has format version {version}; this kasm reads version {FORMAT_VERSION}"
        )),
        None => Err(anyhow!("empty ledger entry")),
    }
}
