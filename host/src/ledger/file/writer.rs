//! The ledger's writer thread (group commit: a batch of records → one journal append and
//! sync) and its checkpoint thread (what memory holds → redb in one durable commit, then the
//! journal emptied), and the replay of the journals when the ledger opens.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use redb::{Database, Durability};
use tokio::sync::mpsc;

use crate::ledger::journal::{
    CHECKPOINT_BATCHES, CHECKPOINT_BYTES, CHECKPOINT_INTERVAL, Journal, JournalRecord,
};
use crate::ledger::{abbreviate, retention_cutoff};
use crate::now_ms;

use super::tables::*;
use super::*;

/// When the writer commits redb durably and empties the journal (whichever comes first).
#[derive(Debug, Clone, Copy)]
pub(super) struct Checkpoints {
    pub(super) bytes: u64,
    pub(super) batches: u32,
    pub(super) interval: Duration,
}
impl Checkpoints {
    pub(super) const DEFAULT: Self = Self {
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
pub(in crate::ledger) fn journal_paths(path: &Path) -> [PathBuf; 2] {
    let first = journal_path(path);
    let mut name = first.file_name().unwrap_or_default().to_owned();
    name.push("-2");
    let second = first.with_file_name(name);
    [first, second]
}
/// Open both journals, put what they hold into redb durably (the older generation first, so
/// the last record of an id wins), then empty them: the first to take records (the active
/// journal), the second with a higher generation (the spare).
pub(super) fn replay_journals(db: &Database, path: &Path) -> anyhow::Result<[Journal; 2]> {
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
pub(super) struct Job {
    pub(super) journal: Journal,
    pub(super) sweeps: Vec<Op>,
    pub(super) next_generation: u64,
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
pub(super) fn run_writer(
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
pub(super) const CHECKPOINTER_GONE: &str = "the ledger checkpoint thread stopped";
/// The journal may grow to this while a checkpoint is under way; past it the writer waits for
/// the checkpoint.
pub(super) const MAX_JOURNAL_BYTES: u64 = 4 * CHECKPOINT_BYTES;
/// The writer's failure: record the cause, answer `pending` and everything queued or still to
/// come with it.
pub(super) fn fail(
    shared: &Shared,
    cause: String,
    pending: &mut Vec<Op>,
    requests: &mut mpsc::Receiver<Op>,
) {
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
pub(super) fn run_checkpointer(
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
pub(super) fn journal_records(
    journal: &mut Journal,
    batch: &mut [Op],
    views: &Views,
) -> anyhow::Result<()> {
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
pub(super) fn checkpoint(db: &Database, views: &Views, sweeps: &[Op]) -> anyhow::Result<Vec<u64>> {
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
pub(super) fn sweep_all(tables: &mut Tables<'_>, sweeps: &[Op]) -> anyhow::Result<Vec<u64>> {
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
