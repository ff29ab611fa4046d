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
//! Writes go through the journal (`journal.rs`): each batch is applied to redb without a sync,
//! appended to the journal in one write and synced there; redb is committed durably now and
//! then and the journal emptied. Opening replays the journal first. See `journal.rs` for why
//! and for the crash cases.
//!
//! Reads (`get`, `len`) run on the caller's thread against a *snapshot*: a read transaction the
//! writer opens right after each commit, before it answers that commit's callers, and
//! publishes (`arc-swap`). So every entry whose `record` has returned is visible, as with a
//! fresh read transaction, but a lookup never opens one: opening a redb read transaction
//! waits while a commit holds the database header, and the pipeline measured every lookup
//! waiting out an fsync that way (`make bench`: the trivial handler with the ledger on ran
//! at the pace of the commits even with 64 writes in flight). A lookup is a few B-tree pages,
//! almost always in redb's cache — microseconds, cheaper than the hop to a blocking thread
//! that `spawn_blocking` would add on every record. If the writer cannot open a snapshot, it
//! withdraws the published one and reads fall back to their own transactions.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
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

use super::journal::{
    CHECKPOINT_BATCHES, CHECKPOINT_BYTES, CHECKPOINT_INTERVAL, Journal, JournalRecord,
};
use super::{
    FORMAT_VERSION, Ledger, LedgerEntry, LedgerOutcome, abbreviate, check_key, now_ms,
    retention_cutoff,
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
    /// The state after the latest commit, for lookups (see the module docs).
    snapshot: Arc<ArcSwapOption<ReadTransaction>>,
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
    Record {
        handler: String,
        event_id: String,
        at_ms: i64,
        value: Vec<u8>,
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
        let journal = replay_journal(&db, &journal_path(path)).with_context(what)?;
        let snapshot = Arc::new(ArcSwapOption::new(Some(Arc::new(
            db.begin_read().with_context(what)?,
        ))));
        let db = Arc::new(db);
        let shared = Arc::new(Shared::default());
        let (queue, requests) = mpsc::channel(QUEUE_CAPACITY);
        let writer = std::thread::Builder::new()
            .name("kasm-ledger-writer".into())
            .spawn({
                let db = Arc::clone(&db);
                let shared = Arc::clone(&shared);
                let snapshot = Arc::clone(&snapshot);
                move || run_writer(&db, journal, checkpoints, requests, &shared, &snapshot)
            })
            .with_context(|| format!("start the writer thread of ledger {}", path.display()))?;
        Ok(Self {
            path: path.to_owned(),
            db,
            queue: Some(queue),
            writer: Some(writer),
            shared,
            snapshot,
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
        match self.snapshot.load_full() {
            Some(txn) => Ok(txn),
            None => Ok(Arc::new(self.db.begin_read()?)),
        }
    }

    fn read_entry(&self, handler: &str, event_id: &str) -> anyhow::Result<Option<LedgerEntry>> {
        let txn = self.reader()?;
        let table = txn.open_table(ENTRIES)?;
        let Some(value) = table.get((handler, event_id))? else {
            return Ok(None);
        };
        decode(value.value()).map(Some)
    }

    fn read_count(&self, handler: &str) -> anyhow::Result<u64> {
        let txn = self.reader()?;
        let table = txn.open_table(COUNTS)?;
        Ok(table.get(handler)?.map_or(0, |n| n.value()))
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

    async fn record(
        &self,
        handler: &str,
        event_id: &str,
        entry: LedgerEntry,
    ) -> anyhow::Result<()> {
        let what = || {
            format!(
                "ledger record handler={handler} event_id={} ({})",
                abbreviate(event_id),
                self.path.display()
            )
        };
        check_key(handler, event_id).with_context(what)?;
        let at_ms = entry.at_ms;
        let value = encode(entry).with_context(what)?;
        let (reply, answer) = oneshot::channel();
        let op = Op::Record {
            handler: handler.to_owned(),
            event_id: event_id.to_owned(),
            at_ms,
            value,
            reply,
        };
        self.submit(op, answer).await.with_context(what)
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
        self.snapshot.store(None);
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

/// The journal of the ledger file at `path`.
pub(super) fn journal_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_owned();
    name.push("-journal");
    path.with_file_name(name)
}

/// Open the journal and put what it holds into redb durably, then empty it.
fn replay_journal(db: &Database, path: &Path) -> anyhow::Result<Journal> {
    let (mut journal, records) = Journal::open(path)?;
    if records.is_empty() {
        return Ok(journal);
    }
    let txn = db.begin_write().context("begin journal replay")?;
    {
        let mut tables = Tables::open(&txn)?;
        for r in &records {
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
    }
    txn.commit()
        .with_context(|| format!("commit {} replayed journal records", records.len()))?;
    journal.reset()?;
    tracing::info!(
        journal = %path.display(),
        records = records.len(),
        "ledger journal replayed"
    );
    Ok(journal)
}

/// The writer thread: take what is queued, apply it to redb, make it durable in the journal,
/// answer; checkpoint now and then and when the queue closes.
///
/// On a failure it stops for good — after a failed sync above all, the state on disk is not
/// known — and answers every queued and later request with the cause.
fn run_writer(
    db: &Database,
    mut journal: Journal,
    checkpoints: Checkpoints,
    mut requests: mpsc::Receiver<Op>,
    shared: &Shared,
    snapshot: &ArcSwapOption<ReadTransaction>,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    let mut last_checkpoint = Instant::now();
    // redb holds commits that are not durable in redb itself (journaled records, sweeps).
    let mut dirty = false;
    let mut batches_since_checkpoint = 0_u32;
    let fail = |cause: String, batch: &mut Vec<Op>, requests: &mut mpsc::Receiver<Op>| {
        tracing::error!(error = %cause, "ledger writer failed; records fail until restart");
        // Before closing: a caller that finds the queue closed reads the cause.
        let _ = shared.failure.set(cause.clone());
        requests.close();
        for op in batch.drain(..) {
            op.finish(Err(&cause));
        }
        while let Some(op) = requests.blocking_recv() {
            op.finish(Err(&cause));
        }
    };
    while requests.blocking_recv_many(&mut batch, MAX_BATCH) > 0 {
        dirty = true;
        batches_since_checkpoint += 1;
        let results = match write_batch(db, &mut journal, &batch) {
            Ok(results) => results,
            Err(err) => return fail(format!("{err:#}"), &mut batch, &mut requests),
        };
        // Before anyone hears "durable": lookups must see what was just written.
        match db.begin_read() {
            Ok(txn) => snapshot.store(Some(Arc::new(txn))),
            Err(e) => {
                tracing::warn!(error = %e, "ledger snapshot after a commit failed; lookups open their own");
                snapshot.store(None);
            }
        }
        shared.commits.fetch_add(1, Ordering::Relaxed);
        shared
            .operations
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        for (op, n) in batch.drain(..).zip(results) {
            op.finish(Ok(n));
        }
        if journal.len() >= checkpoints.bytes
            || batches_since_checkpoint >= checkpoints.batches
            || last_checkpoint.elapsed() >= checkpoints.interval
        {
            if let Err(err) = checkpoint(db, &mut journal) {
                return fail(format!("{err:#}"), &mut batch, &mut requests);
            }
            shared.checkpoints.fetch_add(1, Ordering::Relaxed);
            last_checkpoint = Instant::now();
            batches_since_checkpoint = 0;
            dirty = false;
        }
    }
    if !dirty {
        return;
    }
    // Closing: leave redb complete and the journal empty, so the next open replays nothing.
    match checkpoint(db, &mut journal) {
        Ok(()) => {
            shared.checkpoints.fetch_add(1, Ordering::Relaxed);
        }
        Err(err) => tracing::error!(
            error = %format!("{err:#}"),
            "ledger checkpoint at close failed; the journal is replayed at the next open"
        ),
    }
}

/// Apply `batch` to redb (not yet durable), then append its records to the journal and sync
/// it. Returns one number per operation: the entries a sweep removed, 0 for a record.
fn write_batch(db: &Database, journal: &mut Journal, batch: &[Op]) -> anyhow::Result<Vec<u64>> {
    let mut txn = db.begin_write().context("begin ledger write")?;
    txn.set_durability(Durability::None)
        .context("set ledger write durability")?;
    let results = apply(&txn, batch)?;
    txn.commit()
        .with_context(|| format!("commit ledger batch of {}", batch.len()))?;
    journal.append(batch.iter().filter_map(|op| match op {
        Op::Record {
            handler,
            event_id,
            at_ms,
            value,
            ..
        } => Some(JournalRecord {
            handler: handler.into(),
            event_id: event_id.into(),
            at_ms: *at_ms,
            value: value.into(),
        }),
        _ => None,
    }))?;
    Ok(results)
}

/// Make everything applied so far durable in redb, then empty the journal.
fn checkpoint(db: &Database, journal: &mut Journal) -> anyhow::Result<()> {
    let mut txn = db.begin_write().context("begin ledger checkpoint")?;
    txn.set_durability(Durability::Immediate)
        .context("set ledger checkpoint durability")?;
    txn.commit().context("commit ledger checkpoint")?;
    journal.reset()
}

fn apply(txn: &WriteTransaction, batch: &[Op]) -> anyhow::Result<Vec<u64>> {
    let mut tables = Tables::open(txn)?;
    let now = now_ms();
    let mut results = Vec::with_capacity(batch.len());
    for op in batch {
        let n = match op {
            Op::Record {
                handler,
                event_id,
                at_ms,
                value,
                ..
            } => {
                tables
                    .insert(handler, event_id, *at_ms, value)
                    .with_context(|| format!("write handler={handler} event_id={event_id}"))?;
                0
            }
            Op::Sweep {
                handler,
                retention,
                max_entries,
                ..
            } => tables
                .sweep(handler, retention_cutoff(now, *retention), *max_entries)
                .with_context(|| format!("sweep handler={handler}"))?,
            #[cfg(test)]
            Op::Fail { .. } => anyhow::bail!("injected failure"),
        };
        results.push(n);
    }
    Ok(results)
}

/// The ledger's tables, open in one write transaction.
struct Tables<'txn> {
    entries: Table<'txn, (&'static str, &'static str), &'static [u8]>,
    by_age: Table<'txn, (&'static str, i64, &'static str), ()>,
    counts: Table<'txn, &'static str, u64>,
}

impl<'txn> Tables<'txn> {
    fn open(txn: &'txn WriteTransaction) -> anyhow::Result<Self> {
        Ok(Self {
            entries: txn.open_table(ENTRIES)?,
            by_age: txn.open_table(BY_AGE)?,
            counts: txn.open_table(COUNTS)?,
        })
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
                self.set_count(handler, n + 1)?;
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
        self.set_count(handler, n.saturating_sub(removed))?;
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
        Ok(self.counts.get(handler)?.map_or(0, |n| n.value()))
    }

    fn set_count(&mut self, handler: &str, n: u64) -> anyhow::Result<()> {
        if n == 0 {
            self.counts.remove(handler)?;
        } else {
            self.counts.insert(handler, n)?;
        }
        Ok(())
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
