//! What a consumer needs that rdkafka does not offer: a commit whose wait is bounded, an
//! asynchronous commit whose result is reported, and a close that cannot hang a shutdown.
//! The first two call librdkafka directly (the crate's only FFI besides the embedded
//! cluster's); each `unsafe` block says what it relies on.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::TopicPartitionList;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer as _, ConsumerContext};
use rdkafka::error::KafkaError;

/// Commit `tpl` and wait for the broker's answer, at most `timeout`.
///
/// rdkafka's `commit(.., CommitMode::Sync)` waits for the answer without a bound: librdkafka
/// keeps a commit until the group has a coordinator, so a revoke or a shutdown while the
/// coordinator is unknown would never end. This sends the commit with a reply queue of its
/// own and polls that queue with the timeout; a late answer lands in the abandoned queue and
/// is freed with it (the next owner then starts from the last accepted commit, and the ledger
/// keeps what was done from running again).
#[allow(unsafe_code)]
pub fn commit_sync_bounded<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    tpl: &TopicPartitionList,
    timeout: Duration,
) -> rdkafka::error::KafkaResult<()> {
    use rdkafka::bindings as rd;
    use rdkafka::types::RDKafkaRespErr;
    let rk = consumer.client().native_ptr();
    let timeout_ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
    // SAFETY: `rk` is the live handle of `consumer`, borrowed for this call. The queue made by
    // `rd_kafka_queue_new` is ours: checked for null and destroyed on every path (librdkafka
    // keeps its own reference while the request is out). `rd_kafka_commit_queue` copies `tpl`
    // before returning. The event polled from the queue is read (its error, and the error of
    // each partition in its list, which it owns) and destroyed before the queue.
    let err = unsafe {
        let queue = rd::rd_kafka_queue_new(rk);
        if queue.is_null() {
            return consumer.commit(tpl, CommitMode::Sync);
        }
        let mut err = rd::rd_kafka_commit_queue(rk, tpl.ptr(), queue, None, std::ptr::null_mut());
        if err == RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR {
            let event = rd::rd_kafka_queue_poll(queue, timeout_ms);
            if event.is_null() {
                err = RDKafkaRespErr::RD_KAFKA_RESP_ERR__TIMED_OUT;
            } else {
                err = rd::rd_kafka_event_error(event);
                let parts = rd::rd_kafka_event_topic_partition_list(event);
                if err == RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR && !parts.is_null() {
                    let n = usize::try_from((*parts).cnt).unwrap_or(0);
                    for i in 0..n {
                        let e = (*(*parts).elems.add(i)).err;
                        if e != RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR {
                            err = e;
                            break;
                        }
                    }
                }
                rd::rd_kafka_event_destroy(event);
            }
        }
        rd::rd_kafka_queue_destroy(queue);
        err
    };
    if err == RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR {
        Ok(())
    } else {
        Err(KafkaError::ConsumerCommit(err.into()))
    }
}

/// Leave the group and close the consumer, waiting at most `timeout`.
///
/// Dropping a `BaseConsumer` closes it and polls until librdkafka says it is closed, without
/// a bound (rust-rdkafka issue 509: a close can hang). The drop runs on a thread of its own;
/// if it has not finished within `timeout` the shutdown goes on without it (the group's
/// session timeout removes this member) and the thread is left to finish or to end with the
/// process.
pub fn close_bounded<C: ConsumerContext + 'static>(
    consumer: Arc<BaseConsumer<C>>,
    name: &str,
    timeout: Duration,
) {
    let (tx, rx) = std::sync::mpsc::channel();
    let spawned = std::thread::Builder::new()
        .name(format!("kasm-close-{name}"))
        .spawn(move || {
            consumer.unsubscribe();
            drop(consumer); // the last owner: closes the consumer and leaves the group
            let _ = tx.send(());
        });
    match spawned {
        Ok(_) => {
            if rx.recv_timeout(timeout).is_err() {
                tracing::error!(handler = %name, ?timeout, "leaving the consumer group did not finish in time; shutting down without it");
            }
        }
        Err(e) => {
            // The closure, and the consumer in it, were dropped by `spawn`: closed on this
            // thread, without the bound.
            tracing::error!(handler = %name, error = %e, "could not start a thread to close the consumer; closed it on the loop's thread");
        }
    }
}

/// Send an asynchronous commit whose result comes back to `ConsumerContext::commit_callback`.
///
/// rdkafka's `commit(.., CommitMode::Async)` calls `rd_kafka_commit`, which gives the request
/// no reply queue: with the event API rdkafka uses, the result of such a commit is never
/// delivered (librdkafka only logs a failure). `rd_kafka_commit_queue` with the consumer's
/// queue delivers it as an offset-commit event, which `BaseConsumer::poll` hands to the
/// context.
#[allow(unsafe_code)]
pub fn commit_async_reported<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    tpl: &TopicPartitionList,
) -> rdkafka::error::KafkaResult<()> {
    use rdkafka::bindings as rd;
    let rk = consumer.client().native_ptr();
    // SAFETY: `rk` is the live handle of `consumer`, borrowed for this call. The queue handle
    // returned by `rd_kafka_queue_get_consumer` is checked for null and released with
    // `rd_kafka_queue_destroy` (which drops this reference, not the consumer's queue).
    // `rd_kafka_commit_queue` copies `tpl` into its request before returning, and with a
    // queue given it does not wait or call back on this thread.
    let err = unsafe {
        let queue = rd::rd_kafka_queue_get_consumer(rk);
        if queue.is_null() {
            return consumer.commit(tpl, CommitMode::Async);
        }
        let err = rd::rd_kafka_commit_queue(rk, tpl.ptr(), queue, None, std::ptr::null_mut());
        rd::rd_kafka_queue_destroy(queue);
        err
    };
    if err == rdkafka::types::RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR {
        Ok(())
    } else {
        Err(KafkaError::ConsumerCommit(err.into()))
    }
}
