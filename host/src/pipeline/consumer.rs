//! The consumer loop of one handler: one rdkafka consumer, polled on its own thread.
//!
//! The loop never blocks on processing. Each assigned partition has a worker task with a
//! bounded intake, and its own librdkafka queue (split from the consumer's queue when the
//! partition is assigned): the loop takes a partition's records from that queue only while
//! its worker's intake has room, so a busy or backing-off worker leaves its records in
//! librdkafka, which stops fetching the partition once `partition_buffer` records (or
//! [`MAX_HELD_BYTES`]) are prefetched. Nothing is paused for backpressure: a paused
//! partition makes librdkafka drop what it prefetched and fetch it again after the resume,
//! which cost up to half the throughput when the loop paused at a full buffer. The consumer's
//! own queue is polled on every round (rebalances, commit
//! results, errors), so `max.poll.interval.ms` never trips because of a slow handler.
//!
//! Records that still come through the consumer's queue (a partition whose queue could not
//! be split) take the older path: handed to the intake with `try_send`, *held* by the loop in
//! order when it is full, and the partition paused at the broker when its held records reach
//! `partition_buffer` (or [`MAX_HELD_BYTES`]), resumed at half.
//!
//! Offsets: every record dispatched is registered with its partition's [`OffsetTracker`];
//! workers report completions over a channel; the loop commits each partition's contiguous
//! done position every `commit_interval` (asynchronously, the result reported back to
//! `commit_callback`), and synchronously when partitions are revoked and at shutdown (that
//! wait, and the one for leaving the group, bounded by the drain timeout each). Auto
//! commit and auto offset store are off. A commit refused because the group is rebalancing
//! holds new records (loop and workers) until the rebalance reaches this consumer or a commit
//! is accepted again: the next owner starts from the last accepted commit.
//!
//! Revoke: dispatch stops for the revoked partitions, their workers finish the record in hand
//! (bounded by the drain timeout, then aborted), completions are drained, the positions are
//! committed synchronously, and only then does the rebalance proceed. This runs inside the
//! rebalance callback, which librdkafka calls from `poll` on this thread, so the group waits
//! for it.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use rdkafka::client::ClientContext;
use rdkafka::consumer::base_consumer::PartitionQueue;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::telemetry::health::LoopState;

use crate::handler::HandlerCtx;
use crate::kafka::Record;
use crate::kafka::consumer::{close_bounded, commit_async_reported, commit_sync_bounded};

use super::offsets::OffsetTracker;
use super::worker::{self, Completion};

type Tp = (String, i32);

/// Most payload bytes the loop holds for one partition before pausing it, whatever
/// `partition_buffer` says (large records must not multiply into gigabytes).
pub const MAX_HELD_BYTES: usize = 8 << 20;

/// How often the loop commits every done position, moved or not (see `run_loop`).
const FULL_COMMIT_INTERVAL: Duration = Duration::from_secs(5);

/// The intake of a partition's worker holds a quarter of `partition_buffer`, at least 64 (or
/// the whole buffer when it is smaller) and at most this many records; the rest is held by the
/// loop. The loop moves held records into the intake only when it comes round (every
/// millisecond while any are held, at best), so a worker with records in flight that empties
/// a small intake waits for the loop: with an intake of 64, 64 records in flight and nothing
/// else arriving, the workers spent 70 % of a run waiting for records (`make bench`).
const MAX_INTAKE: usize = 1024;

/// How many records a partition's intake holds for `partition_buffer`.
fn intake_capacity(partition_buffer: usize) -> usize {
    (partition_buffer / 4).clamp(partition_buffer.clamp(1, 64), MAX_INTAKE)
}

/// The most records the loop takes from one partition's queue in one round, so that one
/// busy partition does not keep the loop from the others and from the consumer's queue.
const ROUND_PER_PARTITION: usize = 256;

/// The most answers (records, errors, callbacks served) the loop takes from the consumer's own
/// queue in one round.
const ROUND_FROM_CONSUMER: usize = 1024;

/// What the loop waits for when a round took nothing: a partition's queue becoming non-empty
/// wakes it at once (see [`PartitionQueues`]); the consumer's queue (rebalances, commit
/// results) is looked at least this often.
const IDLE_WAIT: Duration = Duration::from_millis(20);

/// How long the loop waits when a partition has records its worker has no room for yet (a
/// worker does not wake the loop when it takes from its intake).
const BUSY_WAIT: Duration = Duration::from_millis(1);

/// librdkafka's prefetch per partition, unless the `[kafka]` table sets it: `partition_buffer`
/// records and [`MAX_HELD_BYTES`]. Records the loop has not taken stay in the partition's
/// queue, so these bound what a slow handler leaves waiting; librdkafka's defaults (100,000
/// records, 64 MiB per partition) would hold gigabytes across many partitions.
///
/// A partition whose queue is at the bound is looked at again after `fetch.queue.backoff.ms`,
/// whose default (1 s) would let a fast handler empty its queue and then wait most of that
/// second: 24 k records/s instead of 390 k on the bench's fastest configuration. kasm uses
/// 10 ms (25 and 50 measured no better; 2 ms worse).
fn bound_prefetch(config: &mut rdkafka::ClientConfig, partition_buffer: usize) {
    if config.get("fetch.queue.backoff.ms").is_none() {
        config.set("fetch.queue.backoff.ms", "10");
    }
    if config.get("queued.min.messages").is_none() {
        config.set("queued.min.messages", partition_buffer.to_string());
    }
    if config.get("queued.max.messages.kbytes").is_none() {
        config.set(
            "queued.max.messages.kbytes",
            (MAX_HELD_BYTES / 1024).to_string(),
        );
    }
}

/// Each assigned partition's own queue, split from the consumer's queue: librdkafka delivers
/// a partition's records to it, and calls back (which wakes the loop) when it becomes
/// non-empty. Kept by the loop, not in the consumer's context: a queue holds the consumer.
struct PartitionQueues {
    queues: HashMap<Tp, PartitionQueue<LoopContext>>,
    /// The [`LoopContext::assignments`] the queues were split for.
    seen: u64,
    loop_thread: std::thread::Thread,
}

impl PartitionQueues {
    fn new() -> Self {
        Self {
            queues: HashMap::new(),
            seen: 0,
            loop_thread: std::thread::current(),
        }
    }

    /// After an assignment changed, split a queue for every partition the loop owns (again
    /// for those it kept: librdkafka may have made the partition anew) and drop the others'.
    fn follow(&mut self, consumer: &Arc<BaseConsumer<LoopContext>>) {
        let lc = consumer.context();
        let now = lc.assignments.load(Ordering::SeqCst);
        if now == self.seen {
            return;
        }
        self.seen = now;
        let owned: Vec<Tp> = lc.lock().keys().cloned().collect();
        self.queues.clear();
        for tp in owned {
            match consumer.split_partition_queue(&tp.0, tp.1) {
                Some(mut q) => {
                    let wake = self.loop_thread.clone();
                    q.set_nonempty_callback(move || wake.unpark());
                    self.queues.insert(tp, q);
                }
                None => {
                    tracing::warn!(handler = %lc.ctx.name, topic = %tp.0, partition = tp.1, "could not split the partition's queue; its records come through the consumer's queue")
                }
            }
        }
    }

    /// Move records from each partition's queue into its worker's intake while there is room.
    /// Returns how many were moved, and whether some partition's intake was full.
    fn feed(&self, lc: &LoopContext) -> (usize, bool) {
        if lc.holding() {
            return (0, false);
        }
        let mut parts = lc.lock();
        let (mut moved, mut full) = (0, false);
        for (tp, queue) in &self.queues {
            let Some(st) = parts.get_mut(tp) else {
                continue;
            };
            // Records held from the consumer's queue are older: they go first.
            if !st.held.is_empty() {
                full = true;
                continue;
            }
            let Some(tx) = &st.intake else { continue };
            for _ in 0..ROUND_PER_PARTITION {
                let Ok(permit) = tx.try_reserve() else {
                    full = true;
                    break;
                };
                match queue.poll(Duration::ZERO) {
                    None => break,
                    Some(Ok(msg)) => {
                        let record = Record::from_message(&msg);
                        st.tracker.dispatched(record.offset);
                        permit.send(record);
                        moved += 1;
                    }
                    Some(Err(e)) => {
                        tracing::warn!(handler = %lc.ctx.name, topic = %tp.0, partition = tp.1, error = %e, "consumer error");
                        break;
                    }
                }
            }
        }
        (moved, full)
    }
}

struct PartitionState {
    intake: Option<mpsc::Sender<Record>>,
    drain: CancellationToken,
    stop: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
    tracker: OffsetTracker,
    paused: bool,
    held: VecDeque<Record>,
    /// Payload bytes in `held`.
    held_bytes: usize,
}

impl PartitionState {
    fn hold(&mut self, record: Record) {
        self.held_bytes += record.size();
        self.held.push_back(record);
    }

    fn unhold(&mut self) -> Option<Record> {
        let r = self.held.pop_front()?;
        self.held_bytes = self.held_bytes.saturating_sub(r.size());
        Some(r)
    }

    fn clear_held(&mut self) {
        self.held.clear();
        self.held_bytes = 0;
    }

    /// Whether the held records are enough to pause fetching.
    fn over_high_water(&self, limit: usize) -> bool {
        self.held.len() >= limit || self.held_bytes >= MAX_HELD_BYTES
    }

    /// Whether the held records are few enough to fetch again.
    fn under_low_water(&self, limit: usize) -> bool {
        self.held.len() <= limit / 2 && self.held_bytes <= MAX_HELD_BYTES / 2
    }
}

/// Consumer callbacks plus the partition table they share with the loop.
pub(crate) struct LoopContext {
    ctx: Arc<HandlerCtx>,
    rt: tokio::runtime::Handle,
    partitions: Mutex<HashMap<Tp, PartitionState>>,
    done_tx: std::sync::mpsc::Sender<Completion>,
    done_rx: Mutex<std::sync::mpsc::Receiver<Completion>>,
    broker_down: AtomicBool,
    /// Whether the loop has applied an admin pause (mirrors `HandlerCtx::paused`).
    handler_paused: AtomicBool,
    /// The broker refused a commit because the group is rebalancing: until the rebalance
    /// reaches this consumer (or a commit is accepted again) new records are held, not
    /// handled — the next owner of a partition starts from its last accepted commit and
    /// would run them again. Workers watch it too and take nothing from their intakes while
    /// it is set.
    rebalancing: tokio::sync::watch::Sender<bool>,
    /// High watermarks from librdkafka's statistics (taken from fetch responses).
    high_watermarks: Mutex<HashMap<Tp, i64>>,
    /// Counts the changes of the partitions owned (assigned or released), so that the loop
    /// splits their queues again.
    assignments: std::sync::atomic::AtomicU64,
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
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Tp, PartitionState>> {
        // Only the loop thread takes this lock; poisoning would need a panic on that thread.
        self.partitions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether records are held rather than handed to workers: an admin pause, or a rebalance
    /// under way.
    fn holding(&self) -> bool {
        self.handler_paused.load(Ordering::SeqCst) || *self.rebalancing.borrow()
    }

    /// Start a worker for each partition of `tps` not already ours; returns those.
    fn assign(&self, tps: &[Tp]) -> Vec<Tp> {
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
    fn resume_fresh(&self, consumer: &BaseConsumer<Self>, fresh: &[Tp]) {
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
    fn release(&self, consumer: &BaseConsumer<Self>, tps: &[Tp]) {
        // The workers finish the batch in hand and take no other.
        self.stop_workers(tps, false);
        self.commit(consumer, Some(tps), CommitMode::Sync, true);
        self.forget(tps);
    }

    /// Partitions this member lost (another owns them already): no more ledger writes for
    /// them, their workers stopped at once (the batch in hand runs no further record and
    /// records nothing), nothing committed.
    fn abandon(&self, tps: &[Tp]) {
        for tp in tps {
            self.ctx.ledger.release(&self.ctx.name, &tp.0, tp.1);
        }
        self.stop_workers(tps, true);
        self.forget(tps);
    }

    /// End the workers of `tps` — after the batch in hand, or with `now` at once — and wait
    /// for them (bounded); their completions are taken in.
    fn stop_workers(&self, tps: &[Tp], now: bool) {
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
    fn forget(&self, tps: &[Tp]) {
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
    fn wait_workers(&self, tasks: Vec<(CancellationToken, tokio::task::JoinHandle<()>)>) {
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

    fn drain_completions(&self) -> bool {
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
    fn commit(
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
    fn apply_pause(&self, consumer: &BaseConsumer<Self>, paused: bool) {
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

    fn pause_all(&self, consumer: &BaseConsumer<Self>) {
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
    fn publish_views(&self) {
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
    fn dispatch(&self, consumer: &BaseConsumer<Self>, record: Record) {
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
    fn feed_held(&self, consumer: &BaseConsumer<Self>) -> bool {
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
fn refused_for_rebalance(e: &KafkaError) -> bool {
    e.rdkafka_error_code() == Some(RDKafkaErrorCode::RebalanceInProgress)
}

/// Run the loop on the current (dedicated) thread until `stop` is set, then drain, commit
/// and leave the group.
pub(crate) fn run_loop(
    ctx: Arc<HandlerCtx>,
    rt: tokio::runtime::Handle,
    mut consumer_config: rdkafka::ClientConfig,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<()> {
    bound_prefetch(&mut consumer_config, ctx.config.partition_buffer);
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let context = LoopContext {
        ctx: ctx.clone(),
        rt,
        partitions: Mutex::new(HashMap::new()),
        done_tx,
        done_rx: Mutex::new(done_rx),
        broker_down: AtomicBool::new(false),
        handler_paused: AtomicBool::new(false),
        rebalancing: tokio::sync::watch::Sender::new(false),
        high_watermarks: Mutex::new(HashMap::new()),
        assignments: std::sync::atomic::AtomicU64::new(0),
    };
    let consumer: Arc<BaseConsumer<LoopContext>> = Arc::new(
        consumer_config
            .create_with_context(context)
            .with_context(|| format!("handler={}: creating the consumer", ctx.name))?,
    );
    let mut queues = PartitionQueues::new();
    let topics: Vec<&str> = ctx.config.topics.iter().map(String::as_str).collect();
    consumer
        .subscribe(&topics)
        .with_context(|| format!("handler={}: subscribing to {topics:?}", ctx.name))?;
    let lc = consumer.context().clone();
    let mut last_commit = Instant::now();
    let mut last_full_commit = Instant::now();
    let mut last_probe = Instant::now();
    while !stop.load(Ordering::SeqCst) {
        ctx.health.heartbeat(&ctx.name);
        let want_paused = ctx.paused.load(Ordering::SeqCst);
        if want_paused != lc.handler_paused.load(Ordering::SeqCst) {
            lc.apply_pause(&consumer, want_paused);
        }
        lc.drain_completions();
        let mut busy = lc.feed_held(&consumer);
        if last_commit.elapsed() >= ctx.commit_interval {
            // Every few seconds the positions are sent again whether or not they moved: a
            // commit librdkafka holds while it waits for a coordinator is not reported until
            // then, and a hold for a rebalance that never reaches us ends at an accepted one.
            let all = last_full_commit.elapsed() >= FULL_COMMIT_INTERVAL;
            if all {
                last_full_commit = Instant::now();
            }
            lc.commit(&consumer, None, CommitMode::Async, all);
            lc.publish_views();
            last_commit = Instant::now();
        }
        if lc.broker_down.load(Ordering::SeqCst) && last_probe.elapsed() >= Duration::from_secs(1) {
            last_probe = Instant::now();
            if consumer
                .fetch_metadata(topics.first().copied(), Duration::from_millis(500))
                .is_ok()
            {
                lc.broker_down.store(false, Ordering::SeqCst);
                ctx.health.broker(&ctx.name, true, None);
            }
        }
        // The consumer's queue first: rebalance callbacks (which change the partitions
        // owned), commit results, errors, and the records of partitions not split. It is
        // read until it answers nothing twice in a row (an answer of nothing also follows a
        // callback served), so that records it held for a partition go before the ones of
        // the partition's own queue; the partitions' queues wait for the next round when it
        // had more than a round's worth.
        let (mut taken, mut empty) = (0, 0);
        for _ in 0..ROUND_FROM_CONSUMER {
            match consumer.poll(Duration::ZERO) {
                None => {
                    empty += 1;
                    if empty == 2 {
                        break;
                    }
                }
                Some(Ok(msg)) => {
                    empty = 0;
                    taken += 1;
                    let record = Record::from_message(&msg);
                    lc.dispatch(&consumer, record);
                }
                Some(Err(e)) => {
                    empty = 0;
                    tracing::warn!(handler = %ctx.name, error = %e, "consumer error")
                }
            }
        }
        queues.follow(&consumer);
        if empty == 2 {
            let (moved, full) = queues.feed(&lc);
            taken += moved;
            busy |= full;
        } else {
            busy = true;
        }
        if taken == 0 && !stop.load(Ordering::SeqCst) {
            // A partition's queue becoming non-empty unparks this thread.
            std::thread::park_timeout(if busy { BUSY_WAIT } else { IDLE_WAIT });
        }
    }

    // Shutdown: stop fetching, let workers finish the record in hand, commit, leave.
    tracing::info!(handler = %ctx.name, "consumer loop stopping: draining in-flight records");
    if let Ok(assigned) = consumer.assignment() {
        let _ = consumer.pause(&assigned);
    }
    let tps: Vec<Tp> = lc.lock().keys().cloned().collect();
    lc.release(&consumer, &tps);
    ctx.health.set_state(&ctx.name, LoopState::Stopped);
    // The partition queues hold the consumer: dropped first, so that the close below is the
    // consumer's last owner and leaves the group.
    drop(queues);
    close_bounded(consumer, &ctx.name, ctx.drain_timeout);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_prefetch_follows_partition_buffer_unless_the_kafka_table_sets_it() {
        let mut c = rdkafka::ClientConfig::new();
        bound_prefetch(&mut c, 4096);
        assert_eq!(c.get("queued.min.messages"), Some("4096"));
        assert_eq!(c.get("queued.max.messages.kbytes"), Some("8192"));
        assert_eq!(c.get("fetch.queue.backoff.ms"), Some("10"));

        let mut c = rdkafka::ClientConfig::new();
        c.set("queued.min.messages", "50")
            .set("queued.max.messages.kbytes", "1024")
            .set("fetch.queue.backoff.ms", "500");
        bound_prefetch(&mut c, 4096);
        assert_eq!(c.get("queued.min.messages"), Some("50"));
        assert_eq!(c.get("queued.max.messages.kbytes"), Some("1024"));
        assert_eq!(c.get("fetch.queue.backoff.ms"), Some("500"));
    }
}
