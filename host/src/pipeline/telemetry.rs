//! A partition's outcome telemetry: one call per outcome counts it in the handler's [`Stats`]
//! (what the admin API shows) and in the Prometheus families together, with the label sets
//! resolved once per partition, and writes the log line that outcome gets.
//!
//! [`Stats`]: crate::handler::Stats

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::Histogram;

use crate::handler::HandlerCtx;
use crate::telemetry::trace::RecordSpan;

/// The counters of one partition's worker.
pub(super) struct Telemetry {
    ctx: Arc<HandlerCtx>,
    topic: String,
    ok: Counter,
    skipped: Counter,
    retried: Counter,
    calls: Histogram,
}

impl Telemetry {
    pub(super) fn new(ctx: &Arc<HandlerCtx>, topic: &str) -> Self {
        Self {
            ctx: ctx.clone(),
            topic: topic.to_owned(),
            ok: ctx.metrics.records_counter(&ctx.name, topic, "ok"),
            skipped: ctx.metrics.records_counter(&ctx.name, topic, "skipped"),
            retried: ctx.metrics.records_counter(&ctx.name, topic, "retried"),
            calls: ctx.metrics.call_histogram(&ctx.name),
        }
    }

    /// A batch of `n` records taken (a record that runs again counts again).
    pub(super) fn received(&self, n: usize) {
        self.ctx
            .stats
            .received
            .fetch_add(n as u64, Ordering::Relaxed);
    }

    /// One handler call that returned (whatever its outcome).
    pub(super) fn call(&self, took: Duration) {
        self.calls.observe(took.as_secs_f64());
    }

    /// A record to be tried again after `wait`: `what` says what is tried again (the handler,
    /// or sending its records).
    pub(super) fn retried(
        &self,
        event_id: &str,
        attempt: u32,
        wait: Duration,
        reason: &str,
        what: &'static str,
        span: Option<&RecordSpan>,
    ) {
        self.ctx.stats.retried.fetch_add(1, Ordering::Relaxed);
        self.retried.inc();
        tracing::info!(event_id, attempt, ?wait, reason, "{what}");
        if let Some(s) = span {
            s.note_retry(attempt, reason);
        }
    }

    /// A record dead-lettered (its dead letter acknowledged), as `kind`.
    pub(super) fn dead_lettered(&self, kind: &str) {
        self.ctx.stats.dead_lettered.fetch_add(1, Ordering::Relaxed);
        self.ctx
            .metrics
            .dead_letter(&self.ctx.name, &self.topic, kind);
    }

    /// What a batch finished: `ok` records handled (`published` records of theirs
    /// acknowledged) and `skipped` ones already done.
    pub(super) fn settled(&self, ok: u64, skipped: u64, published: u64) {
        let stats = &self.ctx.stats;
        stats.processed.fetch_add(ok, Ordering::Relaxed);
        stats.skipped.fetch_add(skipped, Ordering::Relaxed);
        stats.published.fetch_add(published, Ordering::Relaxed);
        self.ok.inc_by(ok);
        self.skipped.inc_by(skipped);
    }
}
