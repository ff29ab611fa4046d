//! The partition worker: batches of one partition's records, in partition order.
//!
//! # The batch
//!
//! The worker takes what its partition has ready — up to `max_batch` records and
//! `max_batch_bytes` of payload, waiting `batch_linger` (default 0) for more when the batch is
//! not full — and runs the records through the handler one after another, on one instance
//! (fresh per batch unless `instance_reuse` is set), inside one SQL transaction with a savepoint
//! per record, with the kv writes staged. For each record, in order: identify → the ledger
//! first (a record this handler already finished, whatever it is, is skipped; so is a second
//! copy of one earlier in the batch) → size and JSON checks (`undecodable`) → the handler.
//! A record's publishes and dead letter are staged; nothing waits per record.
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

use std::borrow::Cow;
use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::Histogram;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::capabilities::{Effects, Publish};
use crate::config::{HandlerConfig, PayloadFormat};
use crate::event::Event;
use crate::kafka::producer::{OutRecord, Pending};
use crate::ledger::{LedgerEntry, LedgerOutcome};
use crate::runtime::{Batch, FailureKind, Outcome};
use crate::telemetry::trace::{ChildSpan, RecordFacts, RecordSpan};

use crate::dlq::letter::{self as dlq, DlqKind, Failure, Provenance};
use crate::dlq::{REPLAY_COUNT_HEADER, REPLAY_HANDLER_HEADER, REPLAY_ID_HEADER, last_header};
use crate::handler::HandlerCtx;
use crate::kafka::Record;
use crate::now_ms;

/// A record the worker finished (handled, skipped or dead-lettered).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Completion {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
}

/// Why processing stopped without finishing what was in hand.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Abandoned;

/// A record taken from the intake and not finished, with what its earlier attempts left.
struct Queued {
    record: Record,
    /// The attempt it runs as next (1 for a record that never ran).
    attempt: u32,
    first_failure: Option<i64>,
    /// Not before this (a retry's backoff).
    not_before: Option<Instant>,
    /// Runs in a batch of its own (it cut a batch's transaction off before).
    alone: bool,
}

impl Queued {
    fn new(record: Record) -> Self {
        Self {
            record,
            attempt: 1,
            first_failure: None,
            not_before: None,
            alone: false,
        }
    }
}

/// The partition's counters and histogram, resolved once (no labels built per record).
struct Telemetry {
    ok: Counter,
    skipped: Counter,
    retried: Counter,
    calls: Histogram,
}

impl Telemetry {
    fn new(ctx: &HandlerCtx, topic: &str) -> Self {
        Self {
            ok: ctx.metrics.records_counter(&ctx.name, topic, "ok"),
            skipped: ctx.metrics.records_counter(&ctx.name, topic, "skipped"),
            retried: ctx.metrics.records_counter(&ctx.name, topic, "retried"),
            calls: ctx.metrics.call_histogram(&ctx.name),
        }
    }
}

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
                queue.push_back(Queued::new(r));
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
        ctx.stats
            .received
            .fetch_add(taken.len() as u64, Ordering::Relaxed);
        let t = telemetry.get_or_insert_with(|| Telemetry::new(&ctx, &taken[0].record.topic));
        let span = tracing::info_span!(
            "batch",
            handler = %ctx.name,
            topic = %taken[0].record.topic,
            partition = taken[0].record.partition,
            first_offset = taken[0].record.offset,
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
        let size = r.payload.as_ref().map_or(0, Vec::len);
        queue.push_back(Queued::new(r));
        if n > 0 && bytes + size > config.max_batch_bytes {
            // It leads the next batch.
            return n;
        }
        n += 1;
        bytes += size;
    }
}

fn payload_len(q: &Queued) -> usize {
    q.record.payload.as_ref().map_or(0, Vec::len)
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

/// What became of one record of a batch.
enum Fate {
    /// Already finished (ledger, an earlier copy in the batch, a replay for another handler).
    Skipped,
    /// Handled `ok`: its publishes queued.
    Ok(Box<Handled>),
    /// To be dead-lettered (done once its dead letter is acknowledged).
    Dead(Failure),
    /// Not finished in this batch: runs again (a split, or its SQL writes were lost).
    Again,
}

/// A record handled `ok` whose effects are not committed yet.
struct Handled {
    effects: Effects,
    /// Its SQL savepoint in the batch's transaction, if it wrote.
    savepoint: Option<u32>,
}

/// One record of a batch, as it goes through.
struct Slot {
    queued: Queued,
    event_id: String,
    /// Its ledger key (see [`stored_key`]).
    key: String,
    fate: Fate,
    /// Its span, when tracing is on: ended with its fate when the batch settles (in
    /// [`commit`]).
    span: Option<RecordSpan>,
}

/// The outcome of a batch: what is done, and what goes back to the front of the queue.
struct Settled {
    done: Vec<Completion>,
    again: Vec<Queued>,
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
        let first = &taken[0].record;
        ctx.note_handled(&sha, &first.topic, first.partition, first.offset);
        last_version.clone_from(&sha);
    }
    let mut batch = component.batch();
    let policy = ctx.config.retry;
    // Each record identified once: its event, ledger key, and whether it is a replay meant
    // for another handler (skipped without a claim or a lookup).
    let mut prepared: Vec<Prepared> = taken
        .into_iter()
        .map(|mut q| {
            let tombstone = q.record.payload.is_none();
            let event = into_event(std::mem::take(&mut q.record), q.attempt);
            let key = stored_key(&event.id, &event.headers).into_owned();
            let elsewhere = replay_for_another(&event, &ctx.name);
            Prepared {
                q,
                event,
                key,
                tombstone,
                elsewhere,
            }
        })
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
            prepared
                .iter()
                .map(|p| (!p.elsewhere).then_some(p.key.as_str())),
            &mut claims.keys,
        );
        let ask: Vec<&str> = prepared
            .iter()
            .take(claimed)
            .map(|p| p.key.as_str())
            .collect();
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
            let unknown: Vec<&str> = ask
                .iter()
                .zip(&known)
                .filter(|(_, k)| !**k)
                .map(|(a, _)| *a)
                .collect();
            match crate::capabilities::sql::inbox_contains(db.as_ref(), &ctx.group_id, &unknown)
                .await
            {
                Ok(found) if !found.is_empty() => {
                    for (a, k) in ask.iter().zip(known.iter_mut()) {
                        *k |= found.contains(*a);
                    }
                }
                Ok(_) => {}
                // Running them could apply their writes twice: they wait, and ask again.
                Err(e) => {
                    tracing::warn!(records = unknown.len(), error = %e, "inbox lookup failed; the batch waits and asks again");
                    inbox_down = true;
                }
            }
        }
        (claimed, known)
    } else {
        (usize::MAX, Vec::new())
    };
    let mut slots: Vec<Slot> = Vec::with_capacity(prepared.len());
    // Keys finished (handled or dead-lettered) earlier in this batch: a second copy is
    // skipped, as the ledger will once the batch is written.
    let mut finished: HashSet<String> = HashSet::new();
    let mut split = false;
    for (i, p) in prepared.drain(..).enumerate() {
        let Prepared {
            mut q,
            mut event,
            key,
            tombstone,
            elsewhere,
        } = p;
        // A hold (a commit refused for a rebalance, a pause) stops the batch where it is: what
        // ran commits, no new record starts.
        split |= *hold.borrow() || stop.is_cancelled();
        let mut fate = if split {
            Some(Fate::Again)
        } else if elsewhere || (ctx.config.ledger && finished.contains(&key)) {
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
            && let Some(reason) = undecodable(&ctx.config, &event)
        {
            let now = now_ms();
            fate = Some(Fate::Dead(Failure {
                kind: DlqKind::Failure(FailureKind::Undecodable),
                message: reason,
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
            ctx.tracer.as_ref().map(|t| {
                t.record(
                    RecordFacts {
                        handler: &ctx.name,
                        group: &ctx.group_id,
                        topic: &event.topic,
                        partition: event.partition,
                        offset: event.offset,
                        event_id: &event.id,
                    },
                    &event.headers,
                )
            })
        };
        let fate = match fate {
            Some(f) => f,
            None => {
                batch.set_trace(span.clone());
                let failed = match batch.invoke(&event).await {
                    Err(e) => Err((
                        FailureKind::Retryable,
                        format!("host failure running the handler: {e:#}"),
                    )),
                    Ok(inv) => {
                        t.calls.observe(inv.duration.as_secs_f64());
                        match inv.outcome {
                            Outcome::Ok => Ok(inv),
                            Outcome::Failed(f) => Err((f.kind, f.message)),
                        }
                    }
                };
                match failed {
                    Ok(inv) => Fate::Ok(Box::new(Handled {
                        effects: inv.effects,
                        savepoint: inv.savepoint,
                    })),
                    Err((kind, message)) => {
                        let now = now_ms();
                        let first = *q.first_failure.get_or_insert(now);
                        // A failure that retrying cannot mend goes to the DLQ as what it is; a
                        // retryable one once the attempts are used up.
                        if !kind.is_retryable() || q.attempt >= policy.attempts {
                            let failure = Failure {
                                kind: if kind.is_retryable() {
                                    DlqKind::RetriesExhausted
                                } else {
                                    DlqKind::Failure(kind)
                                },
                                message,
                                attempts: q.attempt,
                                first_failure_ms: first,
                                last_failure_ms: now,
                            };
                            Fate::Dead(failure)
                        } else {
                            q.attempt += 1;
                            let wait = policy.backoff(q.attempt, rand::random::<f64>());
                            q.not_before = Some(Instant::now() + wait);
                            ctx.stats.retried.fetch_add(1, Ordering::Relaxed);
                            t.retried.inc();
                            tracing::info!(event_id = %event.id, attempt = q.attempt, ?wait, reason = %message, "retrying");
                            if let Some(s) = &span {
                                s.note_retry(q.attempt, &message);
                            }
                            split = true;
                            Fate::Again
                        }
                    }
                }
            }
        };
        let event_id = std::mem::take(&mut event.id);
        q.record = into_record(event, tombstone);
        let mut slot = Slot {
            queued: q,
            event_id,
            key,
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
            finished.insert(slot.key.clone());
        }
        slots.push(slot);
    }
    let settled = commit(ctx, t, &mut batch, &sha, slots, stop).await;
    batch.finish();
    drop(claims);
    settled
}

/// How long a batch waits when its handler's inbox could not be read.
const INBOX_WAIT: Duration = Duration::from_millis(500);

/// How long a record whose event is in another batch waits before it looks again.
const CLAIM_WAIT: Duration = Duration::from_millis(2);

/// The ledger keys a batch claimed (see [`HandlerCtx::claim`]); given back on drop, after the
/// batch's ledger write or when it is abandoned.
struct Claims<'a> {
    ctx: &'a HandlerCtx,
    keys: HashSet<String>,
}

impl Drop for Claims<'_> {
    fn drop(&mut self) {
        self.ctx.release(self.keys.iter());
    }
}

/// A record of a batch, identified, before it runs.
struct Prepared {
    q: Queued,
    event: Event,
    key: String,
    tombstone: bool,
    /// A replay meant for another handler.
    elsewhere: bool,
}

/// After the batch's transaction was lost: every record whose SQL writes were in it is to run
/// again; whether there was any.
fn forget_sql_writes(slots: &mut [Slot]) -> bool {
    let mut any = false;
    for s in slots.iter_mut() {
        if let Fate::Ok(h) = &s.fate
            && h.savepoint.is_some()
        {
            s.fate = Fate::Again;
            any = true;
        }
    }
    any
}

/// Commit a batch whose records ran: publishes, dead letters, SQL, kv, ledger, then what is
/// done.
async fn commit(
    ctx: &HandlerCtx,
    t: &Telemetry,
    batch: &mut Batch<'_>,
    sha: &str,
    mut slots: Vec<Slot>,
    stop: &CancellationToken,
) -> Result<Settled, Abandoned> {
    // 1. Publishes and dead letters, queued together in record order once the batch has run
    //    (a crash while it runs leaves no output behind), then every acknowledgement awaited.
    deliver(ctx, t, batch, sha, &mut slots, stop).await?;
    // 2. The SQL transaction: one commit for the batch, with the inbox rows of the records
    //    that wrote in it (with the ledger on): an event whose writes committed is never run
    //    again on this database.
    let inbox: Vec<&str> = if ctx.config.ledger {
        slots
            .iter()
            .filter(|s| matches!(&s.fate, Fate::Ok(h) if h.savepoint.is_some()))
            .map(|s| s.key.as_str())
            .collect()
    } else {
        Vec::new()
    };
    let sql = match batch.note_inbox(&ctx.group_id, &inbox, now_ms()).await {
        Ok(()) => batch.commit_sql().await,
        Err(e) => Err(e),
    };
    drop(inbox);
    if let Err(e) = sql {
        tracing::warn!(error = %e, "the batch's sql did not commit; its records run again");
        if forget_sql_writes(&mut slots) {
            let wait = ctx.config.retry.backoff(2, rand::random::<f64>());
            if let Some(s) = slots.iter_mut().find(|s| matches!(s.fate, Fate::Again)) {
                s.queued.not_before = Some(Instant::now() + wait);
            }
        }
    }
    // 3. kv: the writes of the records handled ok, in one store transaction.
    let writes: Vec<_> = slots
        .iter()
        .filter_map(|s| match &s.fate {
            Fate::Ok(h) => Some(h.effects.kv_writes.iter().cloned()),
            _ => None,
        })
        .flatten()
        .collect();
    if !writes.is_empty() {
        retry_until_stopped("kv write", stop, || {
            ctx.resources.kv.apply(&ctx.name, writes.clone())
        })
        .await?;
    }
    // 4. The ledger: one write for every entry of the batch.
    let at_ms = now_ms();
    let entries: Vec<(String, LedgerEntry)> = slots
        .iter()
        .filter_map(|s| {
            let outcome = match s.fate {
                Fate::Ok(_) => LedgerOutcome::Ok,
                Fate::Dead(..) => LedgerOutcome::DeadLettered,
                Fate::Skipped | Fate::Again => return None,
            };
            let r = &s.queued.record;
            Some((
                s.key.clone(),
                LedgerEntry {
                    outcome,
                    at_ms,
                    component_sha256: sha.to_owned(),
                    topic: r.topic.clone(),
                    partition: r.partition,
                    offset: r.offset,
                },
            ))
        })
        .collect();
    // A partition this host lost while the batch ran records nothing more: its new owner
    // runs what is not recorded.
    if stop.is_cancelled() {
        return Err(Abandoned);
    }
    if !entries.is_empty() {
        retry_until_stopped("ledger write", stop, || async {
            let written = ctx.ledger.record_many(&ctx.name, entries.clone()).await;
            if written.is_err() {
                ctx.metrics.ledger_write_failed(&ctx.name);
            }
            written
        })
        .await?;
    }
    // 5. Done: counted, pushes delivered (best effort), offsets reported.
    let mut settled = Settled {
        done: Vec::with_capacity(slots.len()),
        again: Vec::new(),
    };
    let (mut ok, mut skipped, mut published) = (0u64, 0u64, 0u64);
    for s in slots {
        if let Some(span) = s.span {
            match &s.fate {
                Fate::Ok(_) => span.end("ok", None),
                Fate::Skipped => span.end("skipped", None),
                Fate::Dead(f) => span.end("dead-lettered", Some(&f.message)),
                Fate::Again => span.end("again", None),
            }
        }
        match s.fate {
            Fate::Again => {
                settled.again.push(s.queued);
                continue;
            }
            Fate::Ok(h) => {
                ok += 1;
                published += h.effects.publishes.len() as u64;
                for b in &h.effects.broadcasts {
                    ctx.resources.ws.broadcast(&b.channel, &b.message);
                }
            }
            Fate::Skipped => {
                skipped += 1;
                tracing::debug!(event_id = %s.event_id, "already done: skipped");
            }
            Fate::Dead(f) => {
                ctx.stats.dead_lettered.fetch_add(1, Ordering::Relaxed);
                ctx.metrics
                    .dead_letter(&ctx.name, &s.queued.record.topic, f.kind.as_str());
            }
        }
        let r = s.queued.record;
        settled.done.push(Completion {
            topic: r.topic,
            partition: r.partition,
            offset: r.offset,
        });
    }
    ctx.stats.processed.fetch_add(ok, Ordering::Relaxed);
    ctx.stats.skipped.fetch_add(skipped, Ordering::Relaxed);
    ctx.stats.published.fetch_add(published, Ordering::Relaxed);
    t.ok.inc_by(ok);
    t.skipped.inc_by(skipped);
    Ok(settled)
}

/// One output of a batch in flight: a publish of a record handled `ok`, or a record's dead
/// letter.
struct Out {
    slot: usize,
    /// The publish's index among its record's publishes; `None` for the dead letter.
    publish: Option<usize>,
    sent: anyhow::Result<Pending>,
    /// The publish's `send` span, when tracing is on.
    span: Option<ChildSpan>,
}

/// What of one record's outputs failed in a round.
struct Missed {
    publishes: Vec<usize>,
    dead_letter: bool,
    error: anyhow::Error,
}

/// Deliver the batch's outputs: queue every publish and dead letter in record order, await
/// every acknowledgement, then send again *together*, after one wait, whatever the producer
/// gave up on, until nothing is missing. Each re-send of a record's publishes is an attempt of
/// the retry policy (the handler does not run again); a record whose attempts run out is
/// dead-lettered as `retries-exhausted` in the next round. A dead letter that fails is written
/// again for as long as it fails (the partition holds at it, and readiness says so). One
/// refused produce request costs the batch one wait, not one wait per record it held.
async fn deliver(
    ctx: &HandlerCtx,
    t: &Telemetry,
    batch: &mut Batch<'_>,
    sha: &str,
    slots: &mut [Slot],
    stop: &CancellationToken,
) -> Result<(), Abandoned> {
    let mut wanted: Vec<(usize, Option<usize>)> = Vec::new();
    for (i, s) in slots.iter().enumerate() {
        match &s.fate {
            Fate::Ok(h) => wanted.extend((0..h.effects.publishes.len()).map(|j| (i, Some(j)))),
            Fate::Dead(_) => wanted.push((i, None)),
            Fate::Skipped | Fate::Again => {}
        }
    }
    let policy = ctx.config.retry;
    let mut attempts: Vec<u32> = slots.iter().map(|s| s.queued.attempt).collect();
    let mut first_failure: Vec<Option<i64>> =
        slots.iter().map(|s| s.queued.first_failure).collect();
    let mut dead_letter_wait = Duration::from_millis(100);
    loop {
        let outs = send_all(ctx, sha, slots, &wanted).await;
        // Every acknowledgement, in order; what failed, by record.
        let mut missed: std::collections::BTreeMap<usize, Missed> = Default::default();
        for out in outs {
            let result = match out.sent {
                Ok(pending) => pending.acknowledged().await,
                Err(e) => Err(e),
            };
            if let Some(span) = out.span {
                match &result {
                    Ok(d) => {
                        span.set(
                            "messaging.destination.partition.id",
                            d.partition.to_string(),
                        );
                        span.set("messaging.kafka.offset", d.offset);
                        span.end(None);
                    }
                    Err(e) => span.end(Some(&format!("{e:#}"))),
                }
            }
            match result {
                Ok(d) => {
                    if out.publish.is_none() {
                        dead_lettered(ctx, &slots[out.slot], d.offset);
                    }
                }
                Err(e) => {
                    let m = missed.entry(out.slot).or_insert_with(|| Missed {
                        publishes: Vec::new(),
                        dead_letter: false,
                        error: e,
                    });
                    match out.publish {
                        Some(j) => m.publishes.push(j),
                        None => m.dead_letter = true,
                    }
                }
            }
        }
        if missed.is_empty() {
            return Ok(());
        }
        wanted.clear();
        let mut wait = Duration::ZERO;
        let mut dead_letter_failed = false;
        for (i, m) in missed {
            if matches!(slots[i].fate, Fate::Again) {
                // Its SQL writes were given up with another record's: it runs again, and
                // its publishes go then.
                continue;
            }
            let message = format!("{:#}", m.error);
            let slot = &slots[i];
            let r = &slot.queued.record;
            if m.dead_letter {
                tracing::error!(event_id = %slot.event_id, dlq_topic = %ctx.config.dlq_topic_for(&r.topic), error = %message, "dead-letter write failed; holding the partition and retrying");
                ctx.health
                    .stuck(&ctx.name, &r.topic, r.partition, Some(message));
                dead_letter_failed = true;
                wait = wait.max(dead_letter_wait);
                wanted.push((i, None));
                continue;
            }
            let message = format!("publishing the handler's records failed: {message}");
            let now = now_ms();
            let first = *first_failure[i].get_or_insert(now);
            if attempts[i] >= policy.attempts {
                let wrote = matches!(&slot.fate, Fate::Ok(h) if h.savepoint.is_some());
                slots[i].fate = Fate::Dead(Failure {
                    kind: DlqKind::RetriesExhausted,
                    message,
                    attempts: attempts[i],
                    first_failure_ms: first,
                    last_failure_ms: now,
                });
                // Its SQL writes go: they are in the batch's transaction with the others',
                // which is given up; the records that wrote in it run again.
                if wrote {
                    batch.abandon_sql();
                    forget_sql_writes(slots);
                }
                wanted.push((i, None));
                continue;
            }
            attempts[i] += 1;
            ctx.stats.retried.fetch_add(1, Ordering::Relaxed);
            t.retried.inc();
            let backoff = policy.backoff(attempts[i], rand::random::<f64>());
            tracing::info!(event_id = %slot.event_id, attempt = attempts[i], wait = ?backoff, reason = %message, "sending the handler's records again");
            wait = wait.max(backoff);
            wanted.extend(m.publishes.into_iter().map(|j| (i, Some(j))));
        }
        // A record turned `Again` after its re-sends were chosen sends nothing now.
        wanted.retain(|(i, _)| !matches!(slots[*i].fate, Fate::Again));
        sleep_or_stop(wait, stop).await?;
        if dead_letter_failed {
            dead_letter_wait = (dead_letter_wait * 2).min(Duration::from_secs(5));
        }
    }
}

/// Queue the chosen outputs in order without waiting for acknowledgements. A record's publish
/// that the producer refuses at once holds back that record's later ones (they fail with it
/// and go again in order next round).
async fn send_all(
    ctx: &HandlerCtx,
    sha: &str,
    slots: &[Slot],
    wanted: &[(usize, Option<usize>)],
) -> Vec<Out> {
    let mut outs = Vec::with_capacity(wanted.len());
    let mut refused: Option<usize> = None;
    for &(i, publish) in wanted {
        let slot = &slots[i];
        let mut span = None;
        let sent = match (&slot.fate, publish) {
            (Fate::Ok(h), Some(j)) => match h.effects.publishes.get(j) {
                Some(_) if refused == Some(i) => Err(anyhow::anyhow!(
                    "held back: an earlier publish of this record was refused"
                )),
                Some(p) => match &slot.span {
                    // The record's trace goes on with the record it publishes.
                    Some(record_span) => {
                        let send = record_span.send(&p.topic);
                        let headers = crate::telemetry::trace::with_traceparent(
                            &p.headers,
                            &send.traceparent(),
                        );
                        span = Some(send);
                        ctx.producer
                            .enqueue(OutRecord {
                                headers: &headers,
                                ..out_record(p)
                            })
                            .await
                    }
                    None => ctx.producer.enqueue(out_record(p)).await,
                },
                None => continue,
            },
            (Fate::Dead(failure), None) => {
                let r = &slot.queued.record;
                let (topic, mut headers) = dead_letter_parts(ctx, sha, r, &slot.event_id, failure);
                if let Some(record_span) = &slot.span {
                    headers = crate::telemetry::trace::with_traceparent(
                        &headers,
                        &record_span.traceparent(),
                    );
                }
                ctx.producer.enqueue(dlq_record(r, &topic, &headers)).await
            }
            _ => continue,
        };
        if sent.is_err() && publish.is_some() {
            refused = Some(i);
        }
        outs.push(Out {
            slot: i,
            publish,
            sent,
            span,
        });
    }
    outs
}

/// A record's dead letter was acknowledged at `dlq_offset`: said once, and its partition is
/// no longer held.
fn dead_lettered(ctx: &HandlerCtx, slot: &Slot, dlq_offset: i64) {
    let r = &slot.queued.record;
    ctx.health.stuck(&ctx.name, &r.topic, r.partition, None);
    if let Fate::Dead(failure) = &slot.fate {
        tracing::warn!(
            event_id = %slot.event_id, dlq_topic = %ctx.config.dlq_topic_for(&r.topic), dlq_offset,
            kind = failure.kind.as_str(), attempts = failure.attempts, reason = %failure.message,
            "dead-lettered"
        );
    }
}

/// The dead-letter topic and headers of `record`.
fn dead_letter_parts(
    ctx: &HandlerCtx,
    sha: &str,
    record: &Record,
    event_id: &str,
    failure: &Failure,
) -> (String, Vec<(String, Vec<u8>)>) {
    let p = Provenance {
        handler: &ctx.name,
        group: &ctx.group_id,
        component: sha,
        event_id,
    };
    (
        ctx.config.dlq_topic_for(&record.topic),
        dlq::headers(record, p, failure),
    )
}

fn dlq_record<'a>(
    r: &'a Record,
    topic: &'a str,
    headers: &'a [(String, Vec<u8>)],
) -> OutRecord<'a> {
    OutRecord {
        topic,
        key: r.key.as_deref(),
        payload: r.payload.as_deref().unwrap_or_default(),
        headers,
        partition: None,
    }
}

/// Run `f` until it succeeds or `stop`, with growing waits (the offsets must not move before
/// what it writes is durable).
async fn retry_until_stopped<F, Fut>(
    what: &str,
    stop: &CancellationToken,
    mut f: F,
) -> Result<(), Abandoned>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let mut wait = Duration::from_millis(50);
    loop {
        match f().await {
            Ok(()) => return Ok(()),
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), "{what} failed; retrying");
                sleep_or_stop(wait, stop).await?;
                wait = (wait * 2).min(Duration::from_secs(5));
            }
        }
    }
}

async fn sleep_or_stop(wait: Duration, stop: &CancellationToken) -> Result<(), Abandoned> {
    tokio::select! {
        () = stop.cancelled() => Err(Abandoned),
        () = tokio::time::sleep(wait) => Ok(()),
    }
}

fn out_record(p: &Publish) -> OutRecord<'_> {
    OutRecord {
        topic: &p.topic,
        key: p.key.as_deref(),
        payload: &p.payload,
        headers: &p.headers,
        partition: None,
    }
}

/// Whether `event` is a replay meant for another handler (one consuming the same topic that
/// dead-lettered it): this one already handled the original.
fn replay_for_another(event: &Event, handler: &str) -> bool {
    last_header(&event.headers, REPLAY_HANDLER_HEADER)
        .is_some_and(|target| target != handler.as_bytes())
}

/// The event a record becomes: its parts move (a payload is copied once, into the guest's
/// memory).
fn into_event(record: Record, attempt: u32) -> Event {
    let mut event = Event::from_record(
        record.topic,
        record.partition,
        record.offset,
        record.key,
        record.payload.unwrap_or_default(),
        record.headers,
        record.timestamp_ms,
    );
    event.attempt = attempt;
    event
}

/// The record an event was made from: the parts move back (a tombstone's payload is `None`
/// again). The event's id has been taken.
fn into_record(event: Event, tombstone: bool) -> Record {
    let Event {
        topic,
        partition,
        offset,
        key,
        payload,
        headers,
        timestamp_ms,
        ..
    } = event;
    Record {
        topic,
        partition,
        offset,
        key,
        payload: (!tombstone).then_some(payload),
        headers,
        timestamp_ms,
    }
}

/// Why the host refuses to run the handler on this record, if it does (an over-long event id
/// or ledger key, a payload over `max_payload_bytes`, not JSON where the handler declares JSON).
pub fn undecodable(config: &HandlerConfig, event: &Event) -> Option<String> {
    let max_key = crate::ledger::MAX_KEY_PART_BYTES;
    if event.id.len() > max_key {
        return Some(format!(
            "event id is {} bytes, over the limit of {max_key} bytes",
            event.id.len(),
        ));
    }
    // A replay's ledger key is the event id and the replay: an id near the limit takes the key
    // over it, and a key the ledger refuses could never be recorded (the partition would stop).
    let key = ledger_key(&event.id, &event.headers);
    if key.len() > max_key {
        return Some(format!(
            "ledger key of this replay (event id and replay id) is {} bytes, over the limit of \
             {max_key} bytes",
            key.len(),
        ));
    }
    let max = config.max_payload_bytes;
    if event.payload.len() > max {
        return Some(format!(
            "payload is {} bytes, over the limit of {max} bytes",
            event.payload.len()
        ));
    }
    if config.payload == PayloadFormat::Json {
        // UTF-8 first: skipping a string, `IgnoredAny` does not check its bytes, so invalid
        // UTF-8 inside a JSON string would pass and reach a handler that declared JSON.
        let text = match std::str::from_utf8(&event.payload) {
            Ok(text) => text,
            Err(e) => return Some(format!("payload is not valid JSON: not UTF-8: {e}")),
        };
        if let Err(e) = serde_json::from_str::<serde::de::IgnoredAny>(text) {
            return Some(format!("payload is not valid JSON: {e}"));
        }
    }
    None
}

/// The ledger key of a record: its event id; for a replayed dead letter, the event id and the
/// replay (`kasm-replay-id`, else `kasm-replay-count`). The original is recorded as
/// dead-lettered, so under its plain id a replay would be skipped; under its own key it runs,
/// and a redelivery of that same replay is still deduplicated.
fn ledger_key<'a>(event_id: &'a str, headers: &[(String, Vec<u8>)]) -> Cow<'a, str> {
    let header = |name: &str| {
        last_header(headers, name)
            .and_then(|v| std::str::from_utf8(v).ok())
            .map(str::trim)
            .filter(|v| !v.is_empty() && *v != "0")
    };
    match header(REPLAY_ID_HEADER).or_else(|| header(REPLAY_COUNT_HEADER)) {
        Some(replay) => Cow::Owned(format!("{event_id}\u{1f}replay-{replay}")),
        None => Cow::Borrowed(event_id),
    }
}

/// The key a record is looked up and recorded under: its [`ledger_key`], or, when that is
/// over the ledger's limit (an over-long event id, dead-lettered as undecodable), a digest of
/// it. Every record then has an entry the ledger takes, so a redelivered over-long one is
/// recognised like any other.
fn stored_key<'a>(event_id: &'a str, headers: &[(String, Vec<u8>)]) -> Cow<'a, str> {
    let key = ledger_key(event_id, headers);
    if key.len() <= crate::ledger::MAX_KEY_PART_BYTES {
        return key;
    }
    use sha2::Digest as _;
    Cow::Owned(format!(
        "sha256:{}",
        hex::encode(sha2::Sha256::digest(key.as_bytes()))
    ))
}
#[cfg(test)]
mod tests {
    use super::*;

    fn event(id: &str, headers: Vec<(String, Vec<u8>)>) -> Event {
        let mut e = Event::from_record("t", 0, 7, None, b"{}".to_vec(), headers, None);
        e.id = id.to_owned();
        e
    }

    #[test]
    fn a_replay_whose_ledger_key_is_over_the_limit_is_refused_not_stuck() {
        let config: HandlerConfig =
            toml::from_str("component = \"x.wasm\"\ntopics = [\"t\"]").unwrap();
        let id = "e".repeat(crate::ledger::MAX_KEY_PART_BYTES - 10);
        assert_eq!(undecodable(&config, &event(&id, Vec::new())), None);
        let replay = vec![(REPLAY_ID_HEADER.to_owned(), b"0123456789abcdef".to_vec())];
        let reason = undecodable(&config, &event(&id, replay.clone())).unwrap();
        assert!(reason.contains("ledger key of this replay"), "{reason}");
        // The key the ledger would have been asked to take is the one measured.
        let key = ledger_key(&id, &replay);
        assert!(reason.contains(&key.len().to_string()), "{reason}");
        assert!(crate::ledger::check_key("h", &key).is_err());
        // A short id replays as before.
        assert_eq!(undecodable(&config, &event("short", replay)), None);
    }
}
