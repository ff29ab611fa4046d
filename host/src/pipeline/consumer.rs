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

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use rdkafka::consumer::base_consumer::PartitionQueue;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};

use crate::handler::HandlerCtx;
use crate::kafka::Record;
use crate::kafka::consumer::close_bounded;
use crate::telemetry::health::LoopState;

use super::group::{LoopContext, MAX_HELD_BYTES, Tp};

/// How often the loop commits every done position, moved or not (see `run_loop`).
pub(super) const FULL_COMMIT_INTERVAL: Duration = Duration::from_secs(5);

/// The most records the loop takes from one partition's queue in one round, so that one
/// busy partition does not keep the loop from the others and from the consumer's queue.
pub(super) const ROUND_PER_PARTITION: usize = 256;

/// The most answers (records, errors, callbacks served) the loop takes from the consumer's own
/// queue in one round.
pub(super) const ROUND_FROM_CONSUMER: usize = 1024;

/// What the loop waits for when a round took nothing: a partition's queue becoming non-empty
/// wakes it at once (see [`PartitionQueues`]); the consumer's queue (rebalances, commit
/// results) is looked at least this often.
pub(super) const IDLE_WAIT: Duration = Duration::from_millis(20);

/// How long the loop waits when a partition has records its worker has no room for yet (a
/// worker does not wake the loop when it takes from its intake).
pub(super) const BUSY_WAIT: Duration = Duration::from_millis(1);

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
