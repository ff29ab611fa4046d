//! The partition worker: the path of one record, in partition order.
//!
//! For each record: identify → ledger lookup (skip if already done, whatever the record is) →
//! size/decode checks → run the handler → on `ok`, write its publishes and wait for every
//! acknowledgement → record `ok` in the ledger → report the offset done. A `retryable` failure,
//! or a host-side one (publishing, instantiating), is retried with exponential backoff and
//! jitter while the partition waits (its intake fills and the consumer loop pauses it); when
//! attempts run out, or at once for `fatal`, `trap`, `timeout`, `out-of-memory` and
//! `undecodable`, the record is dead-lettered: the write is awaited, retried for as long as it
//! fails (the partition holds at this offset and readiness reports it), then recorded in the
//! ledger, then reported done. Nothing is ever reported done before it is handled, skipped or
//! dead-lettered.
//!
//! The ledger write of a record handled `ok` may overlap the next records: with the handler's
//! `pending_ledger_writes` = N > 1, the worker goes on to the next record while up to N records
//! become durable (a durable commit takes milliseconds and the writer group-commits everything
//! that arrives meanwhile); the default N = 1 waits for each write, so a crash repeats at most
//! one record per partition. With N > 1 the worker gathers the records it handles into groups
//! (written when the intake has nothing more at once, when the N records are reached, or at
//! N / 4 records) and hands each group to the ledger as one request, settled by one task: a
//! task, a ledger request and a wake-up per group rather than per record. Either way a record
//! is reported done only once its entry is durable, so no offset moves ahead of the ledger,
//! and a later record with the same event id is skipped while the first one's write is in
//! flight, as the ledger would. On revoke and shutdown the worker writes its open group and
//! waits for the writes in flight before it stops.
//!
//! With N > 1 the acknowledgements of a record's publishes overlap the next records too: the
//! publishes are queued in order and the background task awaits them before the ledger write.
//! A publish the producer gives up on is then sent again by itself, without running the handler
//! again (the next records have run; the outputs are the same), each re-send an attempt of the
//! retry policy, and dead-lettered when attempts run out. With N = 1 a failed publish is
//! retried by running the handler again, as any retryable failure.

use std::borrow::Cow;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::config::{HandlerConfig, PayloadFormat};
use crate::event::Event;
use crate::kafka::producer::{OutRecord, Pending};
use crate::ledger::{LedgerEntry, LedgerOutcome};
use crate::runtime::{FailureKind, Outcome};

use super::dlq::{self, DlqKind, Failure, Provenance};
use super::{HandlerCtx, Record, now_ms};

/// How processing a record ended: done now, or handled `ok` with its publishes queued and
/// its ledger write to come (it joins the partition's open group).
enum Finish {
    Now,
    Later(Box<Staged>),
}

/// A record handled `ok` whose publishes are queued and whose ledger entry is not written.
struct Staged {
    /// Its ledger key (the event id, or the replay's key).
    key: String,
    record: Record,
    event_id: String,
    sent: Sent,
}

/// What the worker waits for next.
enum Next {
    Stop,
    Again,
    Durable(Result<Result<(), Abandoned>, tokio::task::JoinError>),
    Record(Record),
}

/// A group of handled records, in offset order, whose ledger write is in flight: one task
/// awaits their publishes and makes their entries durable with one ledger request.
struct PendingWrite {
    completions: Vec<Completion>,
    keys: Vec<String>,
    task: tokio::task::JoinHandle<Result<(), Abandoned>>,
}

/// The most records in one group. A group is written when the intake has nothing more to
/// give at once, when the partition's window is full, or at this size: a quarter of the
/// window, so that while one group's write is in flight the next ones are being handled.
fn group_cap(window: usize) -> usize {
    (window / 4).clamp(1, MAX_GROUP)
}

/// The upper bound of [`group_cap`], whatever the window.
const MAX_GROUP: usize = 256;

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

/// Why processing a record stopped without finishing it.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Abandoned;

/// Run the worker of one partition until its intake closes or `drain` is cancelled (then the
/// record in hand is finished and no new one is taken). `stop` abandons even the record in
/// hand at its next wait (backoff, dead-letter retry). While `hold` is true (the group is
/// rebalancing) records stay in the intake.
pub(crate) async fn run(
    ctx: Arc<HandlerCtx>,
    mut intake: mpsc::Receiver<Record>,
    done: std::sync::mpsc::Sender<Completion>,
    drain: CancellationToken,
    stop: CancellationToken,
    mut hold: tokio::sync::watch::Receiver<bool>,
) {
    // The version this worker last handled a record with: the swap history wants the first
    // offset of each new version per partition, which only changes when the version does.
    let mut last_version = String::new();
    let window = ctx.config.pending_ledger_writes.max(1);
    let cap = group_cap(window);
    let mut groups = Groups::default();
    // Report the oldest group once durable; false when the worker must stop.
    let finish_oldest = |groups: &mut Groups,
                         result: Result<Result<(), Abandoned>, tokio::task::JoinError>|
     -> bool {
        let Some(completions) = groups.finish_oldest() else {
            return true;
        };
        match result {
            Ok(Ok(())) => completions.into_iter().all(|c| done.send(c).is_ok()),
            // Abandoned at shutdown, or the task failed: not done, redelivered later.
            _ => false,
        }
    };
    loop {
        // Writes already durable are reported without waiting.
        while groups.pending.front().is_some_and(|p| p.task.is_finished()) {
            let result = match groups.pending.front_mut() {
                Some(p) => (&mut p.task).await,
                None => break,
            };
            if !finish_oldest(&mut groups, result) {
                return;
            }
        }
        let full = groups.records >= window;
        let held = *hold.borrow_and_update();
        // The open group goes to the ledger before the worker waits for anything, and when
        // it reaches its size.
        if !groups.open.is_empty()
            && (full || held || groups.open.len() >= cap || intake.is_empty())
        {
            groups.submit(&ctx, &stop);
        }
        let next = tokio::select! {
            biased;
            () = drain.cancelled() => Next::Stop,
            result = async {
                match groups.pending.front_mut() {
                    Some(p) => (&mut p.task).await,
                    None => std::future::pending().await,
                }
            } => Next::Durable(result),
            r = intake.recv(), if !full && !held => match r { Some(r) => Next::Record(r), None => Next::Stop },
            // Look again when the hold is lifted (or the loop is gone: then the intake closes).
            r = hold.changed(), if held => if r.is_ok() { Next::Again } else { Next::Stop },
        };
        let record = match next {
            Next::Stop => break,
            Next::Durable(result) => {
                if !finish_oldest(&mut groups, result) {
                    return;
                }
                continue;
            }
            Next::Record(r) => r,
            Next::Again => continue,
        };
        let span = tracing::info_span!(
            "record",
            handler = %ctx.name,
            topic = %record.topic,
            partition = record.partition,
            offset = record.offset
        );
        let completion = Completion {
            topic: record.topic.clone(),
            partition: record.partition,
            offset: record.offset,
        };
        match process(&ctx, record, &mut last_version, &stop, &groups.in_flight)
            .instrument(span)
            .await
        {
            Ok(Finish::Now) => {
                if done.send(completion).is_err() {
                    break;
                }
            }
            Ok(Finish::Later(staged)) => groups.stage(completion, *staged),
            Err(Abandoned) => break,
        }
    }
    // Drained or the intake closed: the open group is written, the writes in flight finish
    // (they retry a failing ledger until `stop`), and what became durable is reported before
    // the worker ends.
    if !groups.open.is_empty() {
        groups.submit(&ctx, &stop);
    }
    while let Some(p) = groups.pending.front_mut() {
        let result = (&mut p.task).await;
        if !finish_oldest(&mut groups, result) {
            break;
        }
    }
}

/// The records of one partition handled `ok` whose ledger entries are not durable yet: the
/// open group (still growing) and the groups whose write is in flight, oldest first.
#[derive(Default)]
struct Groups {
    open: Vec<(Completion, Staged)>,
    pending: std::collections::VecDeque<PendingWrite>,
    /// Records in `open` and `pending`.
    records: usize,
    /// Ledger keys of those records, with how many of them have each: a later record with
    /// the same key is skipped, as the ledger would once their write lands.
    in_flight: std::collections::HashMap<String, usize>,
}

impl Groups {
    fn stage(&mut self, completion: Completion, staged: Staged) {
        *self.in_flight.entry(staged.key.clone()).or_insert(0) += 1;
        self.records += 1;
        self.open.push((completion, staged));
    }

    /// Start the open group's write.
    fn submit(&mut self, ctx: &Arc<HandlerCtx>, stop: &CancellationToken) {
        let n = self.open.len();
        let mut completions = Vec::with_capacity(n);
        let mut keys = Vec::with_capacity(n);
        let mut group = Vec::with_capacity(n);
        for (completion, staged) in self.open.drain(..) {
            completions.push(completion);
            keys.push(staged.key.clone());
            group.push(staged);
        }
        let task = tokio::spawn({
            let (ctx, stop) = (ctx.clone(), stop.clone());
            async move { settle_group(&ctx, group, &stop).await }
        });
        self.pending.push_back(PendingWrite {
            completions,
            keys,
            task,
        });
    }

    /// Forget the oldest group in flight (its task has ended); its completions.
    fn finish_oldest(&mut self) -> Option<Vec<Completion>> {
        let p = self.pending.pop_front()?;
        self.records -= p.completions.len();
        for key in &p.keys {
            if let Some(n) = self.in_flight.get_mut(key) {
                *n -= 1;
                if *n == 0 {
                    self.in_flight.remove(key);
                }
            }
        }
        Some(p.completions)
    }
}

async fn process(
    ctx: &Arc<HandlerCtx>,
    record: Record,
    last_version: &mut String,
    stop: &CancellationToken,
    in_flight: &std::collections::HashMap<String, usize>,
) -> Result<Finish, Abandoned> {
    // The record's parts move into the event (and back for what follows the call): a
    // payload is copied once, into the guest's memory.
    let tombstone = record.payload.is_none();
    let mut event = Event::from_record(
        record.topic,
        record.partition,
        record.offset,
        record.key,
        record.payload.unwrap_or_default(),
        record.headers,
        record.timestamp_ms,
    );
    // The version active when the record starts handles it to the end, retries included: a
    // swap affects the next record, never one in flight.
    let component = ctx.component.load_full();
    let sha = component.info().sha256.clone();
    if *last_version != sha {
        ctx.note_handled(&sha, &event.topic, event.partition, event.offset);
        last_version.clone_from(&sha);
    }

    if let Some((_, target)) = event
        .headers
        .iter()
        .rev()
        .find(|(k, _)| k == REPLAY_HANDLER_HEADER)
        && target.as_slice() != ctx.name.as_bytes()
    {
        ctx.stats.skipped.fetch_add(1, Ordering::Relaxed);
        ctx.metrics.record(&ctx.name, &event.topic, "skipped");
        tracing::debug!(event_id = %event.id, "a replay for another handler: skipped");
        return Ok(Finish::Now);
    }
    // The ledger first, for every record, whatever it would otherwise become: a record this
    // handler finished — handled, or dead-lettered as undecodable — is skipped when it comes
    // again (a redelivery after a crash), so it is never dead-lettered twice.
    let key = stored_key(&event.id, &event.headers);
    let known = if in_flight.contains_key(key.as_ref()) {
        // Handled moments ago; its entry is on its way to the ledger.
        Ok(Some(()))
    } else {
        ctx.ledger.get(&ctx.name, &key).await.map(|e| e.map(|_| ()))
    };
    match known {
        Ok(Some(())) => {
            ctx.stats.skipped.fetch_add(1, Ordering::Relaxed);
            ctx.metrics.record(&ctx.name, &event.topic, "skipped");
            tracing::debug!(event_id = %event.id, "already done: skipped");
            return Ok(Finish::Now);
        }
        Ok(None) => {}
        // Not knowing is not a reason to skip: run it (at-least-once) and say so.
        Err(e) => {
            tracing::warn!(event_id = %event.id, error = %format!("{e:#}"), "ledger lookup failed; processing anyway")
        }
    }

    if let Some(reason) = undecodable(&ctx.config, &event) {
        let now = now_ms();
        let f = Failure {
            kind: DlqKind::Failure(FailureKind::Undecodable),
            message: reason,
            attempts: 0,
            first_failure_ms: now,
            last_failure_ms: now,
        };
        let (record, id) = into_record(event, tombstone);
        return dead_letter(ctx, &record, &id, &sha, f, stop)
            .await
            .map(|()| Finish::Now);
    }

    let policy = ctx.config.retry;
    let mut first_failure: Option<i64> = None;
    let mut attempt = 1u32;
    loop {
        event.attempt = attempt;
        let result = component.invoke(&event).await;
        if let Ok(inv) = &result {
            ctx.metrics.call(&ctx.name, inv.duration.as_secs_f64());
        }
        let (kind, message) = match result {
            Err(e) => (
                FailureKind::Retryable,
                format!("host failure running the handler: {e:#}"),
            ),
            Ok(inv) => match inv.outcome {
                // Records in flight overlap: queue the publishes now (in order) and let the
                // background task await their acknowledgements before the ledger write.
                Outcome::Ok if ctx.config.pending_ledger_writes > 1 => {
                    let queued = enqueue_all(ctx, &inv.effects.publishes).await;
                    let key = stored_key(&event.id, &event.headers).into_owned();
                    let (record, event_id) = into_record(event, tombstone);
                    return Ok(Finish::Later(Box::new(Staged {
                        key,
                        record,
                        event_id,
                        sent: Sent {
                            sha: component.info().sha256.clone(),
                            effects: inv.effects,
                            queued,
                            attempt,
                            first_failure,
                        },
                    })));
                }
                Outcome::Ok => match publish_all(ctx, &inv.effects.publishes).await {
                    Ok(()) => {
                        // One record in flight: the next waits for this entry anyway, so
                        // it is awaited here rather than in a task of its own (a task hop
                        // less per record).
                        let (record, id) = into_record(event, tombstone);
                        finish_ok(ctx, &record, &id, sha, &inv.effects, stop).await?;
                        return Ok(Finish::Now);
                    }
                    Err(e) => (
                        FailureKind::Retryable,
                        format!("publishing the handler's records failed: {e:#}"),
                    ),
                },
                Outcome::Failed(f) => (f.kind, f.message),
            },
        };
        let now = now_ms();
        let first = *first_failure.get_or_insert(now);
        // A failure that retrying cannot mend goes to the DLQ as what it is; a retryable one
        // once the attempts are used up.
        if !kind.is_retryable() || attempt >= policy.attempts {
            let f = Failure {
                kind: if kind.is_retryable() {
                    DlqKind::RetriesExhausted
                } else {
                    DlqKind::Failure(kind)
                },
                message,
                attempts: attempt,
                first_failure_ms: first,
                last_failure_ms: now,
            };
            let (record, id) = into_record(event, tombstone);
            return dead_letter(ctx, &record, &id, &sha, f, stop)
                .await
                .map(|()| Finish::Now);
        }
        attempt += 1;
        ctx.stats.retried.fetch_add(1, Ordering::Relaxed);
        ctx.metrics.record(&ctx.name, &event.topic, "retried");
        let wait = policy.backoff(attempt, rand::random::<f64>());
        tracing::info!(event_id = %event.id, attempt, ?wait, reason = %message, "retrying");
        sleep_or_stop(wait, stop).await?;
    }
}

/// The record an event was made from, and the event id: the parts move back (a tombstone's
/// payload is `None` again).
fn into_record(event: Event, tombstone: bool) -> (Record, String) {
    let Event {
        id,
        topic,
        partition,
        offset,
        key,
        payload,
        headers,
        timestamp_ms,
        ..
    } = event;
    let record = Record {
        topic,
        partition,
        offset,
        key,
        payload: (!tombstone).then_some(payload),
        headers,
        timestamp_ms,
    };
    (record, id)
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

async fn publish_all(
    ctx: &HandlerCtx,
    publishes: &[crate::capabilities::Publish],
) -> anyhow::Result<()> {
    // Queue all, then await all: one round trip for the batch, order kept per partition by
    // the idempotent producer.
    let sends = publishes.iter().map(|p| ctx.producer.send(out_record(p)));
    for r in futures::future::join_all(sends).await {
        r?;
    }
    Ok(())
}

/// Queue every publish in order without waiting for acknowledgements. When one cannot be
/// queued (the producer refuses it at once), it and the ones after it are left for
/// [`settle`] to send again, in order.
async fn enqueue_all(ctx: &HandlerCtx, publishes: &[crate::capabilities::Publish]) -> Queued {
    let mut acks = Vec::with_capacity(publishes.len());
    for p in publishes {
        match ctx.producer.enqueue(out_record(p)).await {
            Ok(ack) => acks.push(ack),
            Err(e) => {
                return Queued {
                    acks,
                    refused: Some(e),
                };
            }
        }
    }
    Queued {
        acks,
        refused: None,
    }
}

/// The publishes of one record as queued: `acks` for the first ones; `refused` says why the
/// next one (and so the rest) could not be queued, if so.
struct Queued {
    acks: Vec<Pending>,
    refused: Option<anyhow::Error>,
}

fn out_record(p: &crate::capabilities::Publish) -> OutRecord<'_> {
    OutRecord {
        topic: &p.topic,
        key: p.key.as_deref(),
        payload: &p.payload,
        headers: &p.headers,
    }
}

/// A record handled `ok` whose publishes are queued and not yet acknowledged.
struct Sent {
    sha: String,
    effects: crate::capabilities::Effects,
    queued: Queued,
    /// The handler attempt that produced the publishes.
    attempt: u32,
    first_failure: Option<i64>,
}

/// Finish a group of records whose publishes were queued (records in flight overlap): settle
/// each in order, then record those handled `ok` in the ledger with one request, then count
/// them. Their completions are reported by the worker once this returns `Ok`.
async fn settle_group(
    ctx: &HandlerCtx,
    group: Vec<Staged>,
    stop: &CancellationToken,
) -> Result<(), Abandoned> {
    let mut settled = Vec::with_capacity(group.len());
    for s in group {
        if let Some(sha) = settle(ctx, &s.record, &s.event_id, s.sent, stop).await? {
            settled.push((s.key, s.record, sha));
        }
    }
    if settled.is_empty() {
        return Ok(());
    }
    let mut wait = Duration::from_millis(50);
    loop {
        let at_ms = now_ms();
        let entries = settled
            .iter()
            .map(|(key, record, sha)| {
                let entry = LedgerEntry {
                    outcome: LedgerOutcome::Ok,
                    at_ms,
                    component_sha256: sha.clone(),
                    topic: record.topic.clone(),
                    partition: record.partition,
                    offset: record.offset,
                };
                (key.clone(), entry)
            })
            .collect();
        match ctx.ledger.record_many(&ctx.name, entries).await {
            Ok(()) => break,
            Err(e) => {
                tracing::error!(records = settled.len(), error = %format!("{e:#}"), "ledger write failed; retrying");
                sleep_or_stop(wait, stop).await?;
                wait = (wait * 2).min(Duration::from_secs(5));
            }
        }
    }
    for (_, record, _) in &settled {
        ctx.stats.processed.fetch_add(1, Ordering::Relaxed);
        ctx.metrics.record(&ctx.name, &record.topic, "ok");
    }
    Ok(())
}

/// Settle a record whose publishes were queued: await every acknowledgement, then count them
/// and deliver its pushes; `Some(component sha256)` then, for its ledger entry. A publish the
/// producer gave up on is sent again on its own, not the handler run again (later records of
/// the partition have run meanwhile, and the outputs are the same), following the retry
/// policy: each re-send is an attempt, and when attempts run out the record is dead-lettered
/// (and recorded so in the ledger): `None`. The offset does not move before either, as for
/// any record.
async fn settle(
    ctx: &HandlerCtx,
    record: &Record,
    event_id: &str,
    sent: Sent,
    stop: &CancellationToken,
) -> Result<Option<String>, Abandoned> {
    let Sent {
        sha,
        effects,
        queued,
        mut attempt,
        mut first_failure,
    } = sent;
    let mut failed = Vec::new();
    let mut error = None;
    let n_queued = queued.acks.len();
    for (i, ack) in queued.acks.into_iter().enumerate() {
        if let Err(e) = ack.acknowledged().await {
            failed.push(i);
            error.get_or_insert(e);
        }
    }
    if let Some(e) = queued.refused {
        failed.extend(n_queued..effects.publishes.len());
        error.get_or_insert(e);
    }
    let policy = ctx.config.retry;
    while let Some(e) = error.take() {
        let message = format!("publishing the handler's records failed: {e:#}");
        let now = now_ms();
        let first = *first_failure.get_or_insert(now);
        if attempt >= policy.attempts {
            let f = Failure {
                kind: DlqKind::RetriesExhausted,
                message,
                attempts: attempt,
                first_failure_ms: first,
                last_failure_ms: now,
            };
            return dead_letter(ctx, record, event_id, &sha, f, stop)
                .await
                .map(|()| None);
        }
        attempt += 1;
        ctx.stats.retried.fetch_add(1, Ordering::Relaxed);
        ctx.metrics.record(&ctx.name, &record.topic, "retried");
        let wait = policy.backoff(attempt, rand::random::<f64>());
        tracing::info!(event_id, attempt, ?wait, reason = %message, "sending the handler's records again");
        sleep_or_stop(wait, stop).await?;
        // Those still unacknowledged, in their order; the handler does not run again.
        let again = std::mem::take(&mut failed);
        for i in again {
            let Some(p) = effects.publishes.get(i) else {
                continue;
            };
            if let Err(e) = ctx.producer.send(out_record(p)).await {
                failed.push(i);
                error.get_or_insert(e);
            }
        }
    }
    acknowledged(ctx, &effects);
    Ok(Some(sha))
}

/// A record handled `ok` whose publishes are all acknowledged: count them and deliver its
/// pushes (best effort, never waiting: see `crate::websocket`).
fn acknowledged(ctx: &HandlerCtx, effects: &crate::capabilities::Effects) {
    ctx.stats
        .published
        .fetch_add(effects.publishes.len() as u64, Ordering::Relaxed);
    for b in &effects.broadcasts {
        ctx.resources.ws.broadcast(&b.channel, &b.message);
    }
}

/// A record handled `ok` whose publishes are all acknowledged, alone in flight: count its
/// effects, record it in the ledger, count it.
async fn finish_ok(
    ctx: &HandlerCtx,
    record: &Record,
    event_id: &str,
    sha: String,
    effects: &crate::capabilities::Effects,
    stop: &CancellationToken,
) -> Result<(), Abandoned> {
    acknowledged(ctx, effects);
    record_ledger(ctx, record, event_id, sha, LedgerOutcome::Ok, stop).await?;
    ctx.stats.processed.fetch_add(1, Ordering::Relaxed);
    ctx.metrics.record(&ctx.name, &record.topic, "ok");
    Ok(())
}

async fn sleep_or_stop(wait: Duration, stop: &CancellationToken) -> Result<(), Abandoned> {
    tokio::select! {
        () = stop.cancelled() => Err(Abandoned),
        () = tokio::time::sleep(wait) => Ok(()),
    }
}

/// Write the dead letter (retrying until it succeeds or a shutdown), then the ledger.
async fn dead_letter(
    ctx: &HandlerCtx,
    record: &Record,
    event_id: &str,
    component: &str,
    failure: Failure,
    stop: &CancellationToken,
) -> Result<(), Abandoned> {
    let dlq_topic = ctx.config.dlq_topic_for(&record.topic);
    let p = Provenance {
        handler: &ctx.name,
        group: &ctx.group_id,
        component,
        event_id,
    };
    let headers = dlq::headers(record, p, &failure);
    let payload = record.payload.clone().unwrap_or_default();
    let mut wait = Duration::from_millis(100);
    loop {
        let out = OutRecord {
            topic: &dlq_topic,
            key: record.key.as_deref(),
            payload: &payload,
            headers: &headers,
        };
        match ctx.producer.send(out).await {
            Ok(d) => {
                ctx.health
                    .stuck(&ctx.name, &record.topic, record.partition, None);
                tracing::warn!(
                    event_id, dlq_topic = %dlq_topic, dlq_offset = d.offset,
                    kind = failure.kind.as_str(), attempts = failure.attempts, reason = %failure.message,
                    "dead-lettered"
                );
                break;
            }
            Err(e) => {
                let msg = format!("{e:#}");
                tracing::error!(event_id, dlq_topic = %dlq_topic, error = %msg, "dead-letter write failed; holding the partition and retrying");
                ctx.health
                    .stuck(&ctx.name, &record.topic, record.partition, Some(msg));
                sleep_or_stop(wait, stop).await?;
                wait = (wait * 2).min(Duration::from_secs(5));
            }
        }
    }
    record_ledger(
        ctx,
        record,
        event_id,
        component.to_owned(),
        LedgerOutcome::DeadLettered,
        stop,
    )
    .await?;
    ctx.stats.dead_lettered.fetch_add(1, Ordering::Relaxed);
    ctx.metrics
        .dead_letter(&ctx.name, &record.topic, failure.kind.as_str());
    Ok(())
}

pub use super::replay::REPLAY_COUNT_HEADER;
/// Header naming one replay (unique per replayed record).
pub const REPLAY_ID_HEADER: &str = "kasm-replay-id";
/// Header naming the handler a replay is for: the one that dead-lettered the record. Other
/// handlers consuming the same topic already handled the original and skip it.
pub const REPLAY_HANDLER_HEADER: &str = "kasm-replay-handler";

/// The ledger key of a record: its event id; for a replayed dead letter, the event id and the
/// replay (`kasm-replay-id`, else `kasm-replay-count`). The original is recorded as
/// dead-lettered, so under its plain id a replay would be skipped; under its own key it runs,
/// and a redelivery of that same replay is still deduplicated.
fn ledger_key<'a>(event_id: &'a str, headers: &[(String, Vec<u8>)]) -> Cow<'a, str> {
    let header = |name: &str| {
        headers
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .and_then(|(_, v)| std::str::from_utf8(v).ok())
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

/// Record the outcome, retrying a failing ledger (the offset must not move before it).
async fn record_ledger(
    ctx: &HandlerCtx,
    record: &Record,
    event_id: &str,
    component_sha256: String,
    outcome: LedgerOutcome,
    stop: &CancellationToken,
) -> Result<(), Abandoned> {
    let key = stored_key(event_id, &record.headers);
    let event_id = key.as_ref();
    let entry = LedgerEntry {
        outcome,
        at_ms: now_ms(),
        component_sha256,
        topic: record.topic.clone(),
        partition: record.partition,
        offset: record.offset,
    };
    let mut wait = Duration::from_millis(50);
    loop {
        match ctx.ledger.record(&ctx.name, event_id, entry.clone()).await {
            Ok(()) => return Ok(()),
            Err(e) => {
                tracing::error!(event_id, error = %format!("{e:#}"), "ledger write failed; retrying");
                sleep_or_stop(wait, stop).await?;
                wait = (wait * 2).min(Duration::from_secs(5));
            }
        }
    }
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
