//! What a handler's consumer loop keeps per assigned partition, and how it answers the group.
//!
//! [`LoopContext`] is the consumer's context: librdkafka calls its rebalance and commit
//! callbacks from `poll` on the loop's thread. It holds the partition table (each assigned
//! partition's worker, intake and [`OffsetTracker`]), starts a worker when a partition is
//! assigned, drains and commits when partitions are revoked (the group waits for it), commits
//! each partition's done position, and pauses a partition whose held records are over its
//! bound. See [`super::consumer`] for the loop around it.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::handler::HandlerCtx;
use crate::kafka::Record;
use crate::kafka::consumer::{commit_async_reported, commit_sync_bounded};

use super::batch::Completion;
use super::offsets::OffsetTracker;
use super::worker;

pub(super) type Tp = (String, i32);

/// Most payload bytes the loop holds for one partition before pausing it, whatever
/// `partition_buffer` says (large records must not multiply into gigabytes).
pub const MAX_HELD_BYTES: usize = 8 << 20;

/// The intake of a partition's worker holds a quarter of `partition_buffer`, at least 64 (or
/// the whole buffer when it is smaller) and at most this many records; the rest is held by the
/// loop. The loop moves held records into the intake only when it comes round (every
/// millisecond while any are held, at best), so a worker with records in flight that empties
/// a small intake waits for the loop: with an intake of 64, 64 records in flight and nothing
/// else arriving, the workers spent 70 % of a run waiting for records (`make bench`).
pub(super) const MAX_INTAKE: usize = 1024;

/// How many records a partition's intake holds for `partition_buffer`.
pub(super) fn intake_capacity(partition_buffer: usize) -> usize {
    (partition_buffer / 4).clamp(partition_buffer.clamp(1, 64), MAX_INTAKE)
}

pub(super) struct PartitionState {
    pub(super) intake: Option<mpsc::Sender<Record>>,
    pub(super) drain: CancellationToken,
    pub(super) stop: CancellationToken,
    pub(super) task: Option<tokio::task::JoinHandle<()>>,
    pub(super) tracker: OffsetTracker,
    pub(super) paused: bool,
    pub(super) held: VecDeque<Record>,
    /// Payload bytes in `held`.
    pub(super) held_bytes: usize,
}

impl PartitionState {
    pub(super) fn hold(&mut self, record: Record) {
        self.held_bytes += record.size();
        self.held.push_back(record);
    }

    pub(super) fn unhold(&mut self) -> Option<Record> {
        let r = self.held.pop_front()?;
        self.held_bytes = self.held_bytes.saturating_sub(r.size());
        Some(r)
    }

    pub(super) fn clear_held(&mut self) {
        self.held.clear();
        self.held_bytes = 0;
    }

    /// Whether the held records are enough to pause fetching.
    pub(super) fn over_high_water(&self, limit: usize) -> bool {
        self.held.len() >= limit || self.held_bytes >= MAX_HELD_BYTES
    }

    /// Whether the held records are few enough to fetch again.
    pub(super) fn under_low_water(&self, limit: usize) -> bool {
        self.held.len() <= limit / 2 && self.held_bytes <= MAX_HELD_BYTES / 2
    }
}

/// Consumer callbacks plus the partition table they share with the loop.
pub(crate) struct LoopContext {
    pub(super) ctx: Arc<HandlerCtx>,
    pub(super) rt: tokio::runtime::Handle,
    pub(super) partitions: Mutex<HashMap<Tp, PartitionState>>,
    pub(super) done_tx: std::sync::mpsc::Sender<Completion>,
    pub(super) done_rx: Mutex<std::sync::mpsc::Receiver<Completion>>,
    pub(super) broker_down: AtomicBool,
    /// Whether the loop has applied an admin pause (mirrors `HandlerCtx::paused`).
    pub(super) handler_paused: AtomicBool,
    /// The broker refused a commit because the group is rebalancing: until the rebalance
    /// reaches this consumer (or a commit is accepted again) new records are held, not
    /// handled — the next owner of a partition starts from its last accepted commit and
    /// would run them again. Workers watch it too and take nothing from their intakes while
    /// it is set.
    pub(super) rebalancing: tokio::sync::watch::Sender<bool>,
    /// High watermarks from librdkafka's statistics (taken from fetch responses).
    pub(super) high_watermarks: Mutex<HashMap<Tp, i64>>,
    /// Counts the changes of the partitions owned (assigned or released), so that the loop
    /// splits their queues again.
    pub(super) assignments: std::sync::atomic::AtomicU64,
}

impl ClientContext for LoopContext {
    fn stats(&self, stats: rdkafka::Statistics) {
        let Ok(mut hw) = self.high_watermarks.lock() else {
            return;
        };
        for (topic, t) in stats.topics {
            for (p, part) in t.partitions {
                if p >= 0 && part.hi_offset >= 0 {
                    hw.insert((topic.clone(), p), part.hi_offset);
                }
            }
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        let all_down = matches!(error, KafkaError::Global(RDKafkaErrorCode::AllBrokersDown));
        tracing::warn!(handler = %self.ctx.name, %error, reason, "kafka client error");
        if all_down {
            self.broker_down.store(true, Ordering::SeqCst);
            self.ctx
                .health
                .broker(&self.ctx.name, false, Some(format!("{error}: {reason}")));
        }
    }
}

impl ConsumerContext for LoopContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            let tps: Vec<Tp> = tpl
                .elements()
                .iter()
                .map(|e| (e.topic().to_owned(), e.partition()))
                .collect();
            if consumer.assignment_lost() {
                tracing::warn!(handler = %self.ctx.name, partitions = ?tps, "partitions lost (the group gave them to another member): stopping them at once, committing nothing");
                self.abandon(&tps);
            } else {
                tracing::info!(handler = %self.ctx.name, partitions = ?tps, "partitions revoked: draining");
                self.release(consumer, &tps);
            }
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if self.rebalancing.send_replace(false) {
            tracing::info!(handler = %self.ctx.name, "rebalance reached this consumer: handling records again");
        }
        match rebalance {
            Rebalance::Assign(tpl) => {
                let tps: Vec<Tp> = tpl
                    .elements()
                    .iter()
                    .map(|e| (e.topic().to_owned(), e.partition()))
                    .collect();
                tracing::info!(handler = %self.ctx.name, partitions = ?tps, "partitions assigned");
                let fresh = self.assign(&tps);
                if self.handler_paused.load(Ordering::SeqCst) {
                    self.pause_all(consumer);
                } else {
                    self.resume_fresh(consumer, &fresh);
                }
                let n = consumer
                    .assignment()
                    .map(|a| a.count())
                    .unwrap_or(tps.len());
                self.ctx.health.assigned(&self.ctx.name, n);
            }
            Rebalance::Revoke(_) => {
                let n = consumer.assignment().map(|a| a.count()).unwrap_or(0);
                self.ctx.health.assigned(&self.ctx.name, n);
            }
            Rebalance::Error(e) => {
                tracing::error!(handler = %self.ctx.name, error = %e, "rebalance error")
            }
        }
    }

    fn commit_callback(
        &self,
        result: rdkafka::error::KafkaResult<()>,
        offsets: &TopicPartitionList,
    ) {
        if let Err(e) = &result {
            tracing::warn!(handler = %self.ctx.name, error = %e, offsets = ?offsets, "offset commit failed; will retry");
        }
        let mut rebalancing = result.as_ref().err().is_some_and(refused_for_rebalance);
        let mut any_failed = result.is_err();
        // An asynchronous commit was recorded as sent: note each position accepted, and take
        // back each one that failed (all of them, or one partition's), so the next commit
        // sends it again.
        {
            let mut parts = self.lock();
            for el in offsets.elements() {
                let part_err = el.error().err();
                rebalancing |= part_err.as_ref().is_some_and(refused_for_rebalance);
                any_failed |= part_err.is_some();
                let failed = result.is_err() || part_err.is_some();
                let (Offset::Offset(o), Some(st)) = (
                    el.offset(),
                    parts.get_mut(&(el.topic().to_owned(), el.partition())),
                ) else {
                    continue;
                };
                if !failed {
                    st.tracker.accepted(o);
                    continue;
                }
                if result.is_ok() {
                    tracing::warn!(handler = %self.ctx.name, topic = el.topic(), partition = el.partition(), error = ?part_err, "offset commit failed for a partition; will retry");
                }
                st.tracker.commit_failed(o);
            }
        }
        let outcome = match (rebalancing, any_failed) {
            (true, _) => "rebalancing",
            (false, true) => "failed",
            (false, false) => "ok",
        };
        self.ctx.metrics.commit(&self.ctx.name, outcome);
        if rebalancing {
            if !self.rebalancing.send_replace(true) {
                tracing::info!(handler = %self.ctx.name, "the group is rebalancing: holding new records until the rebalance reaches this consumer");
            }
        } else if !any_failed && self.rebalancing.send_replace(false) {
            tracing::info!(handler = %self.ctx.name, "a commit was accepted again: handling records again");
        }
    }
}

impl LoopContext {
    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Tp, PartitionState>> {
        // Only the loop thread takes this lock; poisoning would need a panic on that thread.
        self.partitions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether records are held rather than handed to workers: an admin pause, or a rebalance
    /// under way.
    pub(super) fn holding(&self) -> bool {
        self.handler_paused.load(Ordering::SeqCst) || *self.rebalancing.borrow()
    }

    /// Start a worker for each partition of `tps` not already ours; returns those.
    pub(super) fn assign(&self, tps: &[Tp]) -> Vec<Tp> {
        let mut parts = self.lock();
        let mut fresh = Vec::new();
        for tp in tps {
            if parts.contains_key(tp) {
                continue;
            }
            fresh.push(tp.clone());
            let (tx, rx) = mpsc::channel(intake_capacity(self.ctx.config.partition_buffer));
            let drain = CancellationToken::new();
            let stop = CancellationToken::new();
            let task = self.rt.spawn(worker::run(
                self.ctx.clone(),
                tp.clone(),
                rx,
                self.done_tx.clone(),
                drain.clone(),
                stop.clone(),
                self.rebalancing.subscribe(),
            ));
            parts.insert(
                tp.clone(),
                PartitionState {
                    intake: Some(tx),
                    drain,
                    stop,
                    task: Some(task),
                    tracker: OffsetTracker::default(),
                    paused: false,
                    held: VecDeque::new(),
                    held_bytes: 0,
                },
            );
        }
        self.assignments.fetch_add(1, Ordering::SeqCst);
        fresh
    }

    /// librdkafka keeps an application pause on a partition through revoke and re-assign
    /// (only its own library pause is reset), so a partition paused for backpressure when it
    /// was revoked would come back paused for good. A partition that is new to this loop
    /// starts unpaused, and librdkafka is told so.
    pub(super) fn resume_fresh(&self, consumer: &BaseConsumer<Self>, fresh: &[Tp]) {
        if fresh.is_empty() {
            return;
        }
        let mut tpl = TopicPartitionList::new();
        for tp in fresh {
            tpl.add_partition(&tp.0, tp.1);
        }
        if let Err(e) = consumer.resume(&tpl) {
            tracing::warn!(handler = %self.ctx.name, error = %e, partitions = ?fresh, "resuming assigned partitions failed");
        }
    }

    /// Stop the workers of `tps`, wait for them (bounded), commit their positions, forget them.
    pub(super) fn release(&self, consumer: &BaseConsumer<Self>, tps: &[Tp]) {
        // The workers finish the batch in hand and take no other.
        self.stop_workers(tps, false);
        self.commit(consumer, Some(tps), CommitMode::Sync, true);
        self.forget(tps);
    }

    /// Partitions this member lost (another owns them already): no more ledger writes for
    /// them, their workers stopped at once (the batch in hand runs no further record and
    /// records nothing), nothing committed.
    pub(super) fn abandon(&self, tps: &[Tp]) {
        for tp in tps {
            self.ctx.ledger.release(&self.ctx.name, &tp.0, tp.1);
        }
        self.stop_workers(tps, true);
        self.forget(tps);
    }

    /// End the workers of `tps` — after the batch in hand, or with `now` at once — and wait
    /// for them (bounded); their completions are taken in.
    pub(super) fn stop_workers(&self, tps: &[Tp], now: bool) {
        let mut tasks = Vec::new();
        {
            let mut parts = self.lock();
            for tp in tps {
                if let Some(st) = parts.get_mut(tp) {
                    st.intake = None;
                    st.drain.cancel();
                    if now {
                        st.stop.cancel();
                    }
                    st.clear_held();
                    if let Some(t) = st.task.take() {
                        tasks.push((st.stop.clone(), t));
                    }
                }
            }
        }
        self.wait_workers(tasks);
        self.drain_completions();
    }

    /// The partitions `tps` are no longer this loop's: their ledger takes no more writes
    /// from here, their state and metrics go.
    pub(super) fn forget(&self, tps: &[Tp]) {
        let mut parts = self.lock();
        for tp in tps {
            self.ctx.ledger.release(&self.ctx.name, &tp.0, tp.1);
            parts.remove(tp);
            self.ctx
                .metrics
                .forget_partition(&self.ctx.name, &tp.0, tp.1);
        }
        self.assignments.fetch_add(1, Ordering::SeqCst);
    }

    /// Wait for worker tasks up to the drain timeout; stop the stragglers.
    pub(super) fn wait_workers(
        &self,
        tasks: Vec<(CancellationToken, tokio::task::JoinHandle<()>)>,
    ) {
        if tasks.is_empty() {
            return;
        }
        let drain = self.ctx.drain_timeout;
        self.rt.block_on(async move {
            let deadline = tokio::time::Instant::now() + drain;
            for (stop, mut task) in tasks {
                if tokio::time::timeout_at(deadline, &mut task).await.is_err() {
                    stop.cancel();
                    if tokio::time::timeout(Duration::from_millis(200), &mut task)
                        .await
                        .is_err()
                    {
                        task.abort();
                    }
                }
            }
        });
    }

    pub(super) fn drain_completions(&self) -> bool {
        let rx = self
            .done_rx
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut parts = self.lock();
        let mut any = false;
        while let Ok(c) = rx.try_recv() {
            any = true;
            if let Some(st) = parts.get_mut(&(c.topic, c.partition)) {
                st.tracker.done(c.offset);
            }
        }
        any
    }

    /// Commit the done positions of `only` (or every partition): those that moved since the
    /// last commit, or with `all` every one, whatever was sent before.
    pub(super) fn commit(
        &self,
        consumer: &BaseConsumer<Self>,
        only: Option<&[Tp]>,
        mode: CommitMode,
        all: bool,
    ) {
        let mut tpl = TopicPartitionList::new();
        let mut positions = Vec::new();
        {
            let parts = self.lock();
            for (tp, st) in parts.iter() {
                if only.is_some_and(|o| !o.contains(tp)) {
                    continue;
                }
                // On revoke and shutdown, and now and then, send every done position again,
                // whatever was sent before: an earlier asynchronous commit may have failed
                // unseen.
                let pos = if all {
                    st.tracker.position()
                } else {
                    st.tracker.committable()
                };
                if let Some(pos) = pos
                    && tpl
                        .add_partition_offset(&tp.0, tp.1, Offset::Offset(pos))
                        .is_ok()
                {
                    positions.push((tp.clone(), pos));
                }
            }
        }
        if positions.is_empty() {
            return;
        }
        let sent = match mode {
            CommitMode::Async => commit_async_reported(consumer, &tpl),
            CommitMode::Sync => commit_sync_bounded(consumer, &tpl, self.ctx.drain_timeout),
        };
        match sent {
            Ok(()) => {
                if matches!(mode, CommitMode::Sync) {
                    self.ctx.metrics.commit(&self.ctx.name, "ok");
                }
                let mut parts = self.lock();
                for (tp, pos) in positions {
                    if let Some(st) = parts.get_mut(&tp) {
                        match mode {
                            CommitMode::Sync => st.tracker.accepted(pos),
                            // Its result comes back to `commit_callback`; until then the next
                            // commit carries only a later position.
                            CommitMode::Async => st.tracker.sent(pos),
                        }
                    }
                }
            }
            Err(e) => {
                // A synchronous commit's result is known here; an asynchronous one's comes
                // back to `commit_callback`.
                let outcome = if refused_for_rebalance(&e) {
                    "rebalancing"
                } else {
                    "failed"
                };
                self.ctx.metrics.commit(&self.ctx.name, outcome);
                tracing::warn!(handler = %self.ctx.name, error = %e, ?mode, "offset commit failed; will retry")
            }
        }
    }

    /// Apply an admin pause or resume.
    pub(super) fn apply_pause(&self, consumer: &BaseConsumer<Self>, paused: bool) {
        self.handler_paused.store(paused, Ordering::SeqCst);
        if paused {
            self.pause_all(consumer);
            tracing::info!(handler = %self.ctx.name, "paused: fetching stopped, offsets stay put");
        } else {
            // feed_held resumes every partition whose held records fit again.
            self.feed_held(consumer);
            tracing::info!(handler = %self.ctx.name, "resumed");
        }
    }

    pub(super) fn pause_all(&self, consumer: &BaseConsumer<Self>) {
        let mut parts = self.lock();
        let mut tpl = TopicPartitionList::new();
        for (tp, st) in parts.iter_mut() {
            if !st.paused {
                tpl.add_partition(&tp.0, tp.1);
                st.paused = true;
            }
        }
        if tpl.count() > 0
            && let Err(e) = consumer.pause(&tpl)
        {
            tracing::warn!(handler = %self.ctx.name, error = %e, "pausing partitions failed");
        }
    }

    /// Publish the partition table for the admin API.
    pub(super) fn publish_views(&self) {
        let hw = self
            .high_watermarks
            .lock()
            .map(|m| m.clone())
            .unwrap_or_default();
        let parts = self.lock();
        let mut views = std::collections::BTreeMap::new();
        for (tp, st) in parts.iter() {
            let high = hw.get(tp).copied();
            let done = st.tracker.position();
            let lag = match (high, done) {
                (Some(h), Some(p)) => Some((h - p).max(0)),
                _ => None,
            };
            if let Some(l) = lag {
                self.ctx.metrics.lag(&self.ctx.name, &tp.0, tp.1, l);
            }
            views.insert(
                format!("{}/{}", tp.0, tp.1),
                crate::handler::PartitionView {
                    committed: st.tracker.last_committed(),
                    high_watermark: high,
                    lag,
                    in_flight: st.tracker.in_flight(),
                    paused: st.paused,
                },
            );
        }
        if let Ok(mut v) = self.ctx.partitions.lock() {
            *v = views;
        }
    }

    /// Hand `record` to its partition's worker, or hold it and pause the partition.
    pub(super) fn dispatch(&self, consumer: &BaseConsumer<Self>, record: Record) {
        let tp = (record.topic.clone(), record.partition);
        let mut parts = self.lock();
        let Some(st) = parts.get_mut(&tp) else {
            // Not (or no longer) ours: the next owner fetches it from the committed position.
            return;
        };
        st.tracker.dispatched(record.offset);
        if !st.held.is_empty() || self.holding() {
            st.hold(record);
        } else {
            let Some(tx) = &st.intake else { return };
            match tx.try_send(record) {
                Ok(()) => return,
                Err(mpsc::error::TrySendError::Full(r)) => st.hold(r),
                Err(mpsc::error::TrySendError::Closed(_)) => return,
            }
        }
        if !st.paused && st.over_high_water(self.ctx.config.partition_buffer) {
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition(&tp.0, tp.1);
            match consumer.pause(&tpl) {
                Ok(()) => st.paused = true,
                Err(e) => {
                    tracing::warn!(handler = %self.ctx.name, error = %e, "pausing partition failed")
                }
            }
        }
    }

    /// Move held records into intakes with room; resume partitions that caught up. Returns
    /// whether records are still held (the loop then comes back soon to feed them).
    pub(super) fn feed_held(&self, consumer: &BaseConsumer<Self>) -> bool {
        if self.holding() {
            return false;
        }
        let mut parts = self.lock();
        let mut still_held = false;
        for (tp, st) in parts.iter_mut() {
            let Some(tx) = st.intake.clone() else {
                continue;
            };
            while let Ok(permit) = tx.try_reserve() {
                match st.unhold() {
                    Some(r) => permit.send(r),
                    None => break,
                }
            }
            still_held |= !st.held.is_empty();
            if st.paused && st.under_low_water(self.ctx.config.partition_buffer) {
                let mut tpl = TopicPartitionList::new();
                tpl.add_partition(&tp.0, tp.1);
                match consumer.resume(&tpl) {
                    Ok(()) => st.paused = false,
                    Err(e) => {
                        tracing::warn!(handler = %self.ctx.name, error = %e, "resuming partition failed")
                    }
                }
            }
        }
        still_held
    }
}

/// Whether a commit was refused because the group is rebalancing.
pub(super) fn refused_for_rebalance(e: &KafkaError) -> bool {
    e.rdkafka_error_code() == Some(RDKafkaErrorCode::RebalanceInProgress)
}
