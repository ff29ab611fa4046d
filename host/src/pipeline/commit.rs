//! A batch's commit, in the order the worker's notes give (see [`super::worker`]): the
//! publishes and dead letters sent together and every acknowledgement awaited, what the
//! producer gave up on sent again without running the handler, the SQL transaction, the kv
//! writes, one ledger write, then the offsets. Also the helpers that retry a write until it is
//! acknowledged or the worker is stopped, and that turn a failed record into its dead letter.

use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::capabilities::Publish;
use crate::config::RetryPolicy;
use crate::dlq::letter::{self as dlq, DlqKind, Failure, Provenance};
use crate::handler::HandlerCtx;
use crate::kafka::Record;
use crate::kafka::producer::{OutRecord, Pending};
use crate::ledger::{LedgerEntry, LedgerOutcome};
use crate::now_ms;
use crate::runtime::{Batch, FailureKind};
use crate::telemetry::trace::ChildSpan;

use super::batch::{Abandoned, Completion, Fate, Settled, Slot};
use super::telemetry::Telemetry;

/// After the batch's transaction was lost: every record whose SQL writes were in it is to run
/// again; whether there was any.
pub(super) fn forget_sql_writes(slots: &mut [Slot]) -> bool {
    let mut any = false;
    for s in slots.iter_mut() {
        if let Fate::Ok(h) = &s.fate
            && h.wrote_sql
        {
            s.fate = Fate::Again;
            any = true;
        }
    }
    any
}

/// Commit a batch whose records ran: publishes, dead letters, SQL, kv, ledger, then what is
/// done.
pub(super) async fn commit(
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
            .filter(|s| matches!(&s.fate, Fate::Ok(h) if h.wrote_sql))
            .map(|s| s.queued.key.as_str())
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
    // 3. kv: the writes of the records handled ok, in one store transaction with the inbox
    //    notes of the records that wrote (with the ledger on).
    let mut writes = Vec::new();
    let mut wrote = Vec::new();
    for s in &slots {
        if let Fate::Ok(h) = &s.fate
            && !h.effects.kv_writes.is_empty()
        {
            writes.extend(h.effects.kv_writes.iter().cloned());
            if ctx.config.ledger {
                wrote.push(s.queued.key.clone());
            }
        }
    }
    if !writes.is_empty() {
        let at_ms = now_ms();
        retry_until_stopped("kv write", stop, || {
            ctx.resources
                .kv
                .apply(&ctx.name, writes.clone(), wrote.clone(), at_ms)
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
            let r = &s.queued.event.record;
            Some((
                s.queued.key.clone(),
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
                tracing::debug!(event_id = %s.queued.event.id, "already done: skipped");
            }
            Fate::Dead(f) => t.dead_lettered(f.kind.as_str()),
        }
        let r = s.queued.event.record;
        settled.done.push(Completion {
            topic: r.topic,
            partition: r.partition,
            offset: r.offset,
        });
    }
    t.settled(ok, skipped, published);
    Ok(settled)
}

/// One output of a batch in flight: a publish of a record handled `ok`, or a record's dead
/// letter.
pub(super) struct Out {
    pub(super) slot: usize,
    /// The publish's index among its record's publishes; `None` for the dead letter.
    pub(super) publish: Option<usize>,
    pub(super) sent: anyhow::Result<Pending>,
    /// The publish's `send` span, when tracing is on.
    pub(super) span: Option<ChildSpan>,
}

/// What of one record's outputs failed in a round.
pub(super) struct Missed {
    pub(super) publishes: Vec<usize>,
    pub(super) dead_letter: bool,
    pub(super) error: anyhow::Error,
}

/// Deliver the batch's outputs: queue every publish and dead letter in record order, await
/// every acknowledgement, then send again *together*, after one wait, whatever the producer
/// gave up on, until nothing is missing. Each re-send of a record's publishes is an attempt of
/// the retry policy (the handler does not run again); a record whose attempts run out is
/// dead-lettered as `retries-exhausted` in the next round. A dead letter that fails is written
/// again for as long as it fails (the partition holds at it, and readiness says so). One
/// refused produce request costs the batch one wait, not one wait per record it held.
pub(super) async fn deliver(
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
    let mut attempts: Vec<u32> = slots.iter().map(|s| s.queued.event.attempt).collect();
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
            let r = &slot.queued.event.record;
            if m.dead_letter {
                tracing::error!(event_id = %slot.queued.event.id, dlq_topic = %ctx.config.dlq_topic_for(&r.topic), error = %message, "dead-letter write failed; holding the partition and retrying");
                ctx.health
                    .stuck(&ctx.name, &r.topic, r.partition, Some(message));
                dead_letter_failed = true;
                wait = wait.max(dead_letter_wait);
                wanted.push((i, None));
                continue;
            }
            let message = format!("publishing the handler's records failed: {message}");
            match after_failure(
                &policy,
                &mut attempts[i],
                &mut first_failure[i],
                FailureKind::Retryable,
                message,
            ) {
                AfterFailure::Dead(failure) => {
                    let wrote = matches!(&slot.fate, Fate::Ok(h) if h.wrote_sql);
                    slots[i].fate = Fate::Dead(failure);
                    // Its SQL writes go: they are in the batch's transaction with the others',
                    // which is given up; the records that wrote in it run again.
                    if wrote {
                        batch.abandon_sql();
                        forget_sql_writes(slots);
                    }
                    wanted.push((i, None));
                }
                AfterFailure::Retry {
                    wait: backoff,
                    reason,
                } => {
                    let slot = &slots[i];
                    t.retried(
                        &slot.queued.event.id,
                        attempts[i],
                        backoff,
                        &reason,
                        "sending the handler's records again",
                        None,
                    );
                    wait = wait.max(backoff);
                    wanted.extend(m.publishes.into_iter().map(|j| (i, Some(j))));
                }
            }
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
pub(super) async fn send_all(
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
                let r = &slot.queued.event.record;
                let (topic, mut headers) =
                    dead_letter_parts(ctx, sha, r, &slot.queued.event.id, failure);
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
pub(super) fn dead_lettered(ctx: &HandlerCtx, slot: &Slot, dlq_offset: i64) {
    let r = &slot.queued.event.record;
    ctx.health.stuck(&ctx.name, &r.topic, r.partition, None);
    if let Fate::Dead(failure) = &slot.fate {
        tracing::warn!(
            event_id = %slot.queued.event.id, dlq_topic = %ctx.config.dlq_topic_for(&r.topic), dlq_offset,
            kind = failure.kind.as_str(), attempts = failure.attempts, reason = %failure.message,
            "dead-lettered"
        );
    }
}

/// The dead-letter topic and headers of `record`.
pub(super) fn dead_letter_parts(
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

pub(super) fn dlq_record<'a>(
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

/// What a failed attempt of a record leads to.
pub(super) enum AfterFailure {
    /// Try again after `wait` (the attempt number has moved on); `reason` is the failure.
    Retry { wait: Duration, reason: String },
    /// Dead-letter it with this failure.
    Dead(Failure),
}

/// The one retry-or-dead-letter decision, for a handler's failure and for publishes the
/// producer gave up on alike: a failure that retrying cannot mend is dead-lettered as what it
/// is; a retryable one is tried again with the policy's backoff until its attempts are used
/// up, then dead-lettered as `retries-exhausted`. `attempt` is the attempt that failed (the
/// next one on a retry); `first_failure` is set by the first failure.
pub(super) fn after_failure(
    policy: &RetryPolicy,
    attempt: &mut u32,
    first_failure: &mut Option<i64>,
    kind: FailureKind,
    message: String,
) -> AfterFailure {
    let now = now_ms();
    let first = *first_failure.get_or_insert(now);
    if !kind.is_retryable() || *attempt >= policy.attempts {
        return AfterFailure::Dead(Failure {
            kind: if kind.is_retryable() {
                DlqKind::RetriesExhausted
            } else {
                DlqKind::Failure(kind)
            },
            message,
            attempts: *attempt,
            first_failure_ms: first,
            last_failure_ms: now,
        });
    }
    *attempt += 1;
    AfterFailure::Retry {
        wait: policy.backoff(*attempt, rand::random::<f64>()),
        reason: message,
    }
}

/// Run `f` until it succeeds or `stop`, with growing waits (the offsets must not move before
/// what it writes is durable).
pub(super) async fn retry_until_stopped<F, Fut>(
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

pub(super) async fn sleep_or_stop(
    wait: Duration,
    stop: &CancellationToken,
) -> Result<(), Abandoned> {
    tokio::select! {
        () = stop.cancelled() => Err(Abandoned),
        () = tokio::time::sleep(wait) => Ok(()),
    }
}

pub(super) fn out_record(p: &Publish) -> OutRecord<'_> {
    OutRecord {
        topic: &p.topic,
        key: p.key.as_deref(),
        payload: &p.payload,
        headers: &p.headers,
        partition: None,
    }
}
