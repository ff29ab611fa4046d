//! The partition worker: batches of one partition's records, in partition order.
//!
//! # The batch
//!
//! The worker takes what its partition has ready — up to `max_batch` records and
//! `max_batch_bytes` of payload, waiting `batch_linger` (default 0) for more when the batch is
//! not full — and runs the records through the handler one after another, on one instance
//! (fresh per batch unless `instance_reuse` is set), inside one SQL transaction with a savepoint
//! per record, with the kv writes staged. A record is identified once, when it enters the
//! worker's queue: its [`Event`] (which owns it), its ledger key and whether the host refuses
//! it (`undecodable`), kept however often it runs. Then, for each record of a batch, in order:
//! the ledger first (a record this handler already finished, whatever it is, is skipped; so is
//! a second copy of one earlier in the batch) → the refusal, if any → the handler. A record's
//! publishes and dead letter are staged; nothing waits per record.
//!
//! Then the batch commits, in an order that can never lose an output:
//! 1. its publishes and dead letters queued together, in record order, and every
//!    acknowledgement awaited; what the producer gave up on is sent again together, after one
//!    wait, without running the handler again (each re-send an attempt of the record's retry
//!    policy; when attempts run out the record is dead-lettered as `retries-exhausted`; a dead
//!    letter that fails is written again for as long as it fails: the partition holds and
//!    readiness says so);
//! 2. the SQL transaction committed (one fsync for the batch);
//! 3. the kv writes of the records that ended `ok` applied in one store transaction;
//! 4. one ledger write for every entry of the batch (one journal sync);
//! 5. the offsets reported done.
//!
//! A record is reported done only when its effects and its ledger entry are durable. A crash
//! therefore repeats at most one batch per partition, and the repeated outputs carry the same
//! event ids.
//!
//! # Failures inside a batch
//!
//! `fatal`, `trap`, `timeout`, `out-of-memory` and `undecodable` dead-letter that record alone:
//! its savepoint is rolled back (the others' writes stay), its dead letter carries its own
//! provenance, and a trapped instance is dropped (the rest of the batch runs on a fresh one).
//! A `retryable` failure — or a host-side one — *splits* the batch: the records before it
//! commit, then it is retried with backoff while the records after it wait (order holds); when
//! its attempts run out it is dead-lettered as `retries-exhausted`.
//!
//! A record whose SQL writes are lost before the commit — the transaction failed to commit, a
//! statement did not answer in time, or a record of the batch that wrote SQL had its publishes
//! dead-lettered (its writes cannot be taken out of the transaction alone) — is not done: it goes back to the front of the partition's queue and
//! runs again (its publishes, already acknowledged, are sent again with the same event ids).
//! A record that cut its batch's transaction off (a statement that never answered) runs again
//! alone, so that it cannot take another batch's writes with it twice.
//!
//! On drain (revoke, shutdown) the batch in hand is finished and no new one is taken; `stop`
//! abandons it at its next wait (a backoff, a dead-letter or ledger retry): nothing of it is
//! reported done, and it runs again wherever the partition goes.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::config::HandlerConfig;
use crate::dlq::letter::{DlqKind, Failure};
use crate::handler::HandlerCtx;
use crate::kafka::Record;
use crate::now_ms;
use crate::runtime::{FailureKind, Outcome};
use crate::telemetry::trace::RecordFacts;

use super::batch::{Abandoned, Completion, Fate, Handled, Queued, Settled, Slot};
use super::commit::{AfterFailure, after_failure, commit, forget_sql_writes};
use super::record::replay_for_another;
use super::telemetry::Telemetry;

/// Run the worker of one partition until its intake closes or `drain` is cancelled (then the
/// batch in hand is finished and no new one is taken). `stop` abandons even the batch in hand
/// at its next wait. While `hold` is true (the group is rebalancing, or the handler paused) no
/// new batch starts.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn run(
    ctx: Arc<HandlerCtx>,
    (topic, partition): (String, i32),
    mut intake: mpsc::Receiver<Record>,
    done: std::sync::mpsc::Sender<Completion>,
    drain: CancellationToken,
    stop: CancellationToken,
    mut hold: tokio::sync::watch::Receiver<bool>,
) {
    if ctx.config.ledger
        && restore(&ctx, &topic, partition, &drain, &stop)
            .await
            .is_err()
    {
        return;
    }
    let mut queue: VecDeque<Queued> = VecDeque::new();
    let mut telemetry: Option<Telemetry> = None;
    // The version this worker last handled a record with: the swap history wants the first
    // offset of each new version per partition, which only changes when the version does.
    let mut last_version = String::new();
    loop {
        if drain.is_cancelled() {
            break;
        }
        let held = *hold.borrow_and_update();
        if held || queue.is_empty() {
            let next = tokio::select! {
                biased;
                () = drain.cancelled() => break,
                r = intake.recv(), if !held && queue.is_empty() => match r {
                    Some(r) => Some(r),
                    None => break,
                },
                r = hold.changed(), if held => if r.is_ok() { None } else { break },
            };
            if let Some(r) = next {
                queue.push_back(Queued::new(&ctx.config, r));
            }
            continue;
        }
        let n = fill(&ctx.config, &mut queue, &mut intake, &drain).await;
        // A record waiting for its retry's backoff.
        if let Some(at) = queue.front().and_then(|q| q.not_before) {
            let wait = at.saturating_duration_since(Instant::now());
            if !wait.is_zero() {
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(wait) => {}
                }
            }
        }
        let taken: Vec<Queued> = queue.drain(..n).collect();
        let first = &taken[0].event.record;
        let t = telemetry.get_or_insert_with(|| Telemetry::new(&ctx, &first.topic));
        t.received(taken.len());
        let span = tracing::info_span!(
            "batch",
            handler = %ctx.name,
            topic = %first.topic,
            partition = first.partition,
            first_offset = first.offset,
            records = taken.len(),
        );
        let result = run_batch(&ctx, t, taken, &mut last_version, &hold, &stop)
            .instrument(span)
            .await;
        match result {
            Ok(Settled {
                done: finished,
                again,
            }) => {
                for c in finished {
                    if done.send(c).is_err() {
                        return;
                    }
                }
                for q in again.into_iter().rev() {
                    queue.push_front(q);
                }
            }
            Err(Abandoned) => return,
        }
    }
}

/// Restore the partition's ledger before its first record (see [`crate::ledger::Ledger::restore`]),
/// trying again until it succeeds: readiness is false meanwhile. `Err` if the partition is
/// given up first.
async fn restore(
    ctx: &HandlerCtx,
    topic: &str,
    partition: i32,
    drain: &CancellationToken,
    stop: &CancellationToken,
) -> Result<(), Abandoned> {
    let mut wait = Duration::from_millis(200);
    ctx.health.restoring(&ctx.name, topic, partition, true);
    let result = loop {
        let started = Instant::now();
        let attempt = tokio::select! {
            () = drain.cancelled() => break Err(Abandoned),
            () = stop.cancelled() => break Err(Abandoned),
            r = ctx.ledger.restore(&ctx.name, topic, partition) => r,
        };
        match attempt {
            Ok(None) => break Ok(()),
            Ok(Some(r)) => {
                let took = started.elapsed();
                ctx.metrics
                    .restored(&ctx.name, r.entries, took.as_secs_f64());
                tracing::info!(
                    handler = %ctx.name, topic, partition, entries = r.entries,
                    ledger_from = r.from, ledger_to = r.to, ms = took.as_millis() as u64,
                    "ledger restored"
                );
                break Ok(());
            }
            Err(e) => {
                tracing::warn!(handler = %ctx.name, topic, partition, error = %format!("{e:#}"), ?wait, "ledger restore failed; the partition waits and tries again");
                tokio::select! {
                    () = drain.cancelled() => break Err(Abandoned),
                    () = stop.cancelled() => break Err(Abandoned),
                    () = tokio::time::sleep(wait) => {}
                }
                wait = (wait * 2).min(Duration::from_secs(5));
            }
        }
    };
    ctx.health.restoring(&ctx.name, topic, partition, false);
    result
}

/// Take records from the intake into `queue` until the next batch is full or nothing more is
/// ready (waiting up to `batch_linger` for more); the size of the next batch.
async fn fill(
    config: &HandlerConfig,
    queue: &mut VecDeque<Queued>,
    intake: &mut mpsc::Receiver<Record>,
    drain: &CancellationToken,
) -> usize {
    let max = config.max_batch.max(1);
    let linger_until =
        (!config.batch_linger.is_zero()).then(|| Instant::now() + config.batch_linger);
    // What the queue already holds (records that run again), then each record taken counted
    // as it comes: a fresh record neither waits for a backoff nor runs alone.
    let (mut n, full) = batch_len(config, queue, max);
    if full || n < queue.len() {
        return n;
    }
    let mut bytes: usize = queue.iter().map(payload_len).sum();
    loop {
        if n >= max || bytes >= config.max_batch_bytes {
            return n;
        }
        let r = match intake.try_recv() {
            Ok(r) => r,
            Err(mpsc::error::TryRecvError::Disconnected) => return n,
            Err(mpsc::error::TryRecvError::Empty) => {
                let Some(until) = linger_until else {
                    return n;
                };
                let left = until.saturating_duration_since(Instant::now());
                if left.is_zero() || drain.is_cancelled() {
                    return n;
                }
                match tokio::time::timeout(left, intake.recv()).await {
                    Ok(Some(r)) => r,
                    _ => return n,
                }
            }
        };
        let size = r.payload().len();
        queue.push_back(Queued::new(config, r));
        if n > 0 && bytes + size > config.max_batch_bytes {
            // It leads the next batch.
            return n;
        }
        n += 1;
        bytes += size;
    }
}

fn payload_len(q: &Queued) -> usize {
    q.event.payload().len()
}

/// How many of `queue`'s first records form the next batch, and whether that batch is full
/// (by records, bytes, or a record that runs alone).
fn batch_len(config: &HandlerConfig, queue: &VecDeque<Queued>, max: usize) -> (usize, bool) {
    let mut bytes = 0usize;
    for (i, q) in queue.iter().enumerate() {
        if i == max {
            return (i, true);
        }
        if q.alone {
            return if i == 0 { (1, true) } else { (i, true) };
        }
        let size = payload_len(q);
        if i > 0 && bytes + size > config.max_batch_bytes {
            return (i, true);
        }
        bytes += size;
        // A record waiting for a backoff leads its batch: nothing overtakes it.
        if i > 0 && q.not_before.is_some() {
            return (i, true);
        }
    }
    (
        queue.len(),
        queue.len() >= max || bytes >= config.max_batch_bytes,
    )
}

/// Run one batch and commit it: see the module doc for the order.
async fn run_batch(
    ctx: &Arc<HandlerCtx>,
    t: &Telemetry,
    taken: Vec<Queued>,
    last_version: &mut String,
    hold: &tokio::sync::watch::Receiver<bool>,
    stop: &CancellationToken,
) -> Result<Settled, Abandoned> {
    // The version active when the batch starts handles it to the end, retries included: a
    // swap affects the next batch, never one in flight.
    let component = ctx.component.load_full();
    let sha = component.info().sha256.clone();
    if *last_version != sha {
        let first = &taken[0].event.record;
        ctx.note_handled(&sha, &first.topic, first.partition, first.offset);
        last_version.clone_from(&sha);
    }
    let mut batch = component.batch();
    let policy = ctx.config.retry;
    // A replay meant for another handler is skipped without a claim or a lookup.
    let elsewhere: Vec<bool> = taken
        .iter()
        .map(|q| replay_for_another(&q.event, &ctx.name))
        .collect();
    // This batch's claims on its keys, given back when it ends however it ends; then the
    // ledger asked about every claimed key at once. The claim comes first: a key another
    // batch holds is looked up only after that batch has recorded it.
    let mut claims = Claims {
        ctx,
        keys: HashSet::new(),
    };
    let mut inbox_down = false;
    let (claimed, known) = if ctx.config.ledger {
        let claimed = ctx.claim(
            taken
                .iter()
                .zip(&elsewhere)
                .map(|(q, elsewhere)| (!elsewhere).then_some(q.key.as_str())),
            &mut claims.keys,
        );
        let ask: Vec<&str> = taken.iter().take(claimed).map(|q| q.key.as_str()).collect();
        let mut known = match ctx.ledger.contains_many(&ctx.name, &ask).await {
            Ok(known) => known,
            // Not knowing is not a reason to skip: run them (at-least-once) and say so.
            Err(e) => {
                tracing::warn!(records = ask.len(), error = %format!("{e:#}"), "ledger lookup failed; processing anyway");
                vec![false; ask.len()]
            }
        };
        // The handler's database has the last word on its own effects: an event whose
        // transaction committed there (its inbox row) is done, even if its ledger entry was
        // never written (a crash between the two, on this host or another one).
        if let Some(db) = &ctx.resources.sql {
            let unknown = unknown_keys(&ask, &known);
            match crate::capabilities::sql::inbox_contains(db.as_ref(), &ctx.group_id, &unknown)
                .await
            {
                Ok(found) => mark_known(&ask, &mut known, &found),
                // Running them could apply their writes twice: they wait, and ask again.
                Err(e) => {
                    tracing::warn!(records = unknown.len(), error = %e, "inbox lookup failed; the batch waits and asks again");
                    inbox_down = true;
                }
            }
        }
        // Likewise the kv store: an event whose kv writes were applied (its inbox note, made
        // in the same store transaction) is done.
        if ctx.config.grants.kv && !inbox_down {
            let unknown = unknown_keys(&ask, &known);
            match ctx.resources.kv.applied(&ctx.name, &unknown).await {
                Ok(found) => mark_known(&ask, &mut known, &found),
                Err(e) => {
                    tracing::warn!(records = unknown.len(), error = %format!("{e:#}"), "kv inbox lookup failed; the batch waits and asks again");
                    inbox_down = true;
                }
            }
        }
        (claimed, known)
    } else {
        (usize::MAX, Vec::new())
    };
    let mut slots: Vec<Slot> = Vec::with_capacity(taken.len());
    // Keys finished (handled or dead-lettered) earlier in this batch: a second copy is
    // skipped, as the ledger will once the batch is written.
    let mut finished: HashSet<String> = HashSet::new();
    let mut split = false;
    for (i, (mut q, elsewhere)) in taken.into_iter().zip(elsewhere).enumerate() {
        // A hold (a commit refused for a rebalance, a pause) stops the batch where it is: what
        // ran commits, no new record starts.
        split |= *hold.borrow() || stop.is_cancelled();
        let mut fate = if split {
            Some(Fate::Again)
        } else if elsewhere || (ctx.config.ledger && finished.contains(&q.key)) {
            Some(Fate::Skipped)
        } else if inbox_down {
            q.not_before = Some(Instant::now() + INBOX_WAIT);
            split = true;
            Some(Fate::Again)
        } else if i >= claimed {
            // A copy of this event is in a batch not yet committed (another partition's):
            // this record and the ones after it wait for it, and the ledger then tells.
            q.not_before = Some(Instant::now() + CLAIM_WAIT);
            split = true;
            Some(Fate::Again)
        } else if known.get(i).copied().unwrap_or(false) {
            // The ledger first, for every record, whatever it would otherwise become: a record
            // this handler finished — handled, or dead-lettered as undecodable — is skipped
            // when it comes again, so it is never dead-lettered twice.
            Some(Fate::Skipped)
        } else {
            None
        };
        if fate.is_none()
            && let Some(reason) = &q.refused
        {
            let now = now_ms();
            fate = Some(Fate::Dead(Failure {
                kind: DlqKind::Failure(FailureKind::Undecodable),
                message: reason.clone(),
                attempts: 0,
                first_failure_ms: now,
                last_failure_ms: now,
            }));
        }
        // A span for what this batch does with the record; none for one it only puts back
        // (a split, a claim or inbox wait): its next batch gives it one.
        let span = if matches!(fate, Some(Fate::Again)) {
            None
        } else {
            let (event, r) = (&q.event, &q.event.record);
            ctx.tracer.as_ref().map(|t| {
                t.record(
                    RecordFacts {
                        handler: &ctx.name,
                        group: &ctx.group_id,
                        topic: &r.topic,
                        partition: r.partition,
                        offset: r.offset,
                        event_id: &event.id,
                    },
                    &r.headers,
                )
            })
        };
        let fate = match fate {
            Some(f) => f,
            None => {
                batch.set_trace(span.clone());
                let failed = match batch.invoke(&q.event).await {
                    Err(e) => Err((
                        FailureKind::Retryable,
                        format!("host failure running the handler: {e:#}"),
                    )),
                    Ok(inv) => {
                        t.call(inv.duration);
                        match inv.outcome {
                            Outcome::Ok => Ok(inv),
                            Outcome::Failed(f) => Err((f.kind, f.message)),
                        }
                    }
                };
                match failed {
                    Ok(inv) => Fate::Ok(Box::new(Handled {
                        effects: inv.effects,
                        wrote_sql: inv.wrote_sql,
                    })),
                    Err((kind, message)) => match after_failure(
                        &policy,
                        &mut q.event.attempt,
                        &mut q.first_failure,
                        kind,
                        message,
                    ) {
                        AfterFailure::Dead(failure) => Fate::Dead(failure),
                        AfterFailure::Retry { wait, reason } => {
                            q.not_before = Some(Instant::now() + wait);
                            t.retried(
                                &q.event.id,
                                q.event.attempt,
                                wait,
                                &reason,
                                "retrying",
                                span.as_ref(),
                            );
                            split = true;
                            Fate::Again
                        }
                    },
                }
            }
        };
        let mut slot = Slot {
            queued: q,
            fate,
            span,
        };
        if batch.sql_lost() {
            // What the records before this one wrote is gone with the transaction: those run
            // again (the others keep their fate), and so does everything after this one, in
            // order. This record runs alone next time if it took others with it (else what it
            // became stands).
            if forget_sql_writes(&mut slots) {
                slot.queued.alone = true;
                slot.fate = Fate::Again;
                split = true;
            }
            batch.reset();
        }
        if matches!(slot.fate, Fate::Ok(_) | Fate::Dead(..)) {
            finished.insert(slot.queued.key.clone());
        }
        slots.push(slot);
    }
    let settled = commit(ctx, t, &mut batch, &sha, slots, stop).await;
    batch.finish();
    drop(claims);
    settled
}

/// The keys of `ask` that `known` does not mark.
fn unknown_keys<'a>(ask: &[&'a str], known: &[bool]) -> Vec<&'a str> {
    ask.iter()
        .zip(known)
        .filter(|(_, k)| !**k)
        .map(|(a, _)| *a)
        .collect()
}

/// Mark in `known` the keys of `ask` that an inbox `found`.
fn mark_known(ask: &[&str], known: &mut [bool], found: &HashSet<String>) {
    for (a, k) in ask.iter().zip(known.iter_mut()) {
        *k |= found.contains(*a);
    }
}

/// How long a batch waits when its handler's inbox could not be read.
pub(super) const INBOX_WAIT: Duration = Duration::from_millis(500);

/// How long a record whose event is in another batch waits before it looks again.
pub(super) const CLAIM_WAIT: Duration = Duration::from_millis(2);

/// The ledger keys a batch claimed (see [`HandlerCtx::claim`]); given back on drop, after the
/// batch's ledger write or when it is abandoned.
pub(super) struct Claims<'a> {
    pub(super) ctx: &'a HandlerCtx,
    pub(super) keys: HashSet<String>,
}

impl Drop for Claims<'_> {
    fn drop(&mut self) {
        self.ctx.release(self.keys.iter());
    }
}
