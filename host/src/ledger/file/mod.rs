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
//! Writes go through the journal (`ledger/journal.rs`): the writer appends each batch of records to
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

mod tables;
mod writer;

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context as _, anyhow};
use arc_swap::ArcSwapOption;
use async_trait::async_trait;
use redb::{Builder, Database, ReadTransaction, ReadableDatabase};
use tokio::sync::{mpsc, oneshot};

use crate::ledger::{Ledger, LedgerEntry, abbreviate, check_key};

use tables::*;
use writer::*;

#[cfg(test)]
pub(super) use tables::{decode, encode};
#[cfg(test)]
pub(super) use writer::journal_paths;

/// The most operations the writer puts in one batch (one journal sync).
pub const MAX_BATCH: usize = 1024;

/// Requests queued for the writer beyond this wait (asynchronously) in `record`.
pub(super) const QUEUE_CAPACITY: usize = 4 * MAX_BATCH;

/// redb's page cache. Its default (1 GiB) is sized for a database that owns the machine; the
/// ledger shares it with handlers, and its hot set is the recent entries.
pub(super) const CACHE_BYTES: usize = 128 * 1024 * 1024;

/// A [`Ledger`] in an embedded redb file; see the module docs for the design.
///
/// Dropping it stops the writer thread after the batch in hand is committed, and closes the
/// file. A `record` call cancelled after sending may still be committed.
pub struct FileLedger {
    pub(super) path: PathBuf,
    pub(super) db: Arc<Database>,
    pub(super) queue: Option<mpsc::Sender<Op>>,
    pub(super) writer: Option<JoinHandle<()>>,
    pub(super) shared: Arc<Shared>,
    /// What lookups read (see the module docs).
    pub(super) views: Arc<Views>,
}

/// What lookups read, kept up to date by the writer and the checkpoint thread.
pub(super) struct Views {
    /// The records made durable in the active journal since the last freeze.
    pub(super) recent: RwLock<Recent>,
    /// The records a checkpoint under way is putting into redb (empty between checkpoints).
    pub(super) frozen: RwLock<Recent>,
    /// redb as of the last checkpoint; `None` if the writer could not open one.
    pub(super) snapshot: ArcSwapOption<ReadTransaction>,
}

impl Views {
    /// The records since the last checkpoint. A panic elsewhere while it was held leaves a map
    /// that is still whole (each insert is one `HashMap` call), so poisoning is ignored.
    pub(super) fn recent(&self) -> RwLockReadGuard<'_, Recent> {
        self.recent.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// The same, to change (the writer only).
    pub(super) fn recent_mut(&self) -> RwLockWriteGuard<'_, Recent> {
        self.recent.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// The records of the checkpoint under way (poisoning ignored, as for `recent`). Taken
    /// after `recent` where both are held.
    pub(super) fn frozen(&self) -> RwLockReadGuard<'_, Recent> {
        self.frozen.read().unwrap_or_else(PoisonError::into_inner)
    }

    pub(super) fn frozen_mut(&self) -> RwLockWriteGuard<'_, Recent> {
        self.frozen.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// Hand what `recent` holds to a checkpoint: it becomes `frozen` (empty before) in one
    /// step under both locks, so a lookup finds each record in one or the other.
    pub(super) fn freeze(&self) {
        let mut recent = self.recent_mut();
        let mut frozen = self.frozen_mut();
        std::mem::swap(&mut *recent, &mut *frozen);
    }

    /// Publish a read transaction of redb as it is now.
    pub(super) fn publish_snapshot(&self, db: &Database) {
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
pub(super) struct Recent(HashMap<String, HashMap<String, Journaled>>);

/// One record as redb will hold it.
#[derive(Debug)]
pub(super) struct Journaled {
    pub(super) at_ms: i64,
    pub(super) value: Vec<u8>,
}

impl Recent {
    pub(super) fn get(&self, handler: &str, event_id: &str) -> Option<&Journaled> {
        self.0.get(handler)?.get(event_id)
    }

    /// Keep a record; a later one for the same key replaces it, as in redb.
    pub(super) fn insert(&mut self, handler: String, event_id: String, entry: Journaled) {
        match self.0.get_mut(handler.as_str()) {
            Some(entries) => entries.insert(event_id, entry),
            None => self.0.entry(handler).or_default().insert(event_id, entry),
        };
    }

    pub(super) fn is_empty(&self) -> bool {
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
pub(super) struct Shared {
    pub(super) commits: AtomicU64,
    pub(super) operations: AtomicU64,
    pub(super) checkpoints: AtomicU64,
    /// Why the writer stopped, once it has.
    pub(super) failure: OnceLock<String>,
}

/// A request to the writer thread.
pub(super) enum Op {
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
pub(super) struct Encoded {
    pub(super) event_id: String,
    pub(super) at_ms: i64,
    pub(super) value: Vec<u8>,
}

impl Op {
    /// Answer the caller: `Ok(n)` (sweep count; ignored for a record) once committed, or the
    /// writer's failure. A caller that stopped waiting is not an error.
    pub(super) fn finish(self, result: Result<u64, &str>) {
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
