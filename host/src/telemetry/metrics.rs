//! Prometheus metrics, served at `GET /metrics` in the text exposition format.
//!
//! One registry per host (not a process-global recorder), so several hosts in one process —
//! the tests run many — never mix their numbers. Labels are bounded: handler, topic,
//! partition, outcome, kind — never a key, an event id or an offset. The one exception is
//! the info metric `kasm_component_info`, whose `version` label is the active component's
//! sha256 (one series per handler at a time).

use std::sync::Mutex;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// `handler`, `topic`, `outcome`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RecordLabels {
    /// Handler.
    pub handler: String,
    /// Source topic.
    pub topic: String,
    /// `ok`, `skipped`, `retried` or `dead_lettered`.
    pub outcome: String,
}

/// `handler`, `topic`, `kind`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DlqLabels {
    /// Handler.
    pub handler: String,
    /// Source topic.
    pub topic: String,
    /// The `kasm-dlq-error-kind`.
    pub kind: String,
}

/// `handler`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HandlerLabels {
    /// Handler.
    pub handler: String,
}

/// `handler`, `topic`, `partition`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PartitionLabels {
    /// Handler.
    pub handler: String,
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
}

/// `handler`, `result`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CommitLabels {
    /// Handler.
    pub handler: String,
    /// `ok`, `rebalancing` (refused: the group is rebalancing) or `failed`.
    pub result: String,
}

/// `handler`, `version`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VersionLabels {
    /// Handler.
    pub handler: String,
    /// Active component sha256.
    pub version: String,
}

/// The host's metrics.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    records: Family<RecordLabels, Counter>,
    dead_letters: Family<DlqLabels, Counter>,
    call_seconds: Family<HandlerLabels, Histogram>,
    lag: Family<PartitionLabels, Gauge>,
    component_info: Family<VersionLabels, Gauge>,
    active: Mutex<std::collections::HashMap<String, String>>,
    swaps: Family<HandlerLabels, Counter>,
    compile_seconds: Family<HandlerLabels, Histogram>,
    commits: Family<CommitLabels, Counter>,
    restores: Family<HandlerLabels, Counter>,
    restored_entries: Family<HandlerLabels, Counter>,
    restore_seconds: Family<HandlerLabels, Histogram>,
    ledger_write_errors: Family<HandlerLabels, Counter>,
}

fn call_buckets() -> Histogram {
    // 10 µs .. ~20 s
    Histogram::new(exponential_buckets(0.000_01, 2.0, 22))
}

fn compile_buckets() -> Histogram {
    // 1 ms .. ~30 s
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh registry with every kasm metric.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("kasm");
        let records = Family::<RecordLabels, Counter>::default();
        registry.register(
            "records",
            "Records by handler, source topic and outcome",
            records.clone(),
        );
        let dead_letters = Family::<DlqLabels, Counter>::default();
        registry.register(
            "dead_letters",
            "Records dead-lettered, by error kind",
            dead_letters.clone(),
        );
        let call_seconds = Family::<HandlerLabels, Histogram>::new_with_constructor(
            call_buckets as fn() -> Histogram,
        );
        registry.register(
            "handler_call_seconds",
            "Duration of one handler call",
            call_seconds.clone(),
        );
        let lag = Family::<PartitionLabels, Gauge>::default();
        registry.register(
            "consumer_lag",
            "Records between the done position and the high watermark",
            lag.clone(),
        );
        let component_info = Family::<VersionLabels, Gauge>::default();
        registry.register(
            "component_info",
            "The active component version of each handler (value 1)",
            component_info.clone(),
        );
        let swaps = Family::<HandlerLabels, Counter>::default();
        registry.register(
            "swaps",
            "Component version changes (deploys and rollbacks)",
            swaps.clone(),
        );
        let compile_seconds = Family::<HandlerLabels, Histogram>::new_with_constructor(
            compile_buckets as fn() -> Histogram,
        );
        registry.register(
            "component_compile_seconds",
            "Validation and compile time of a deployed component",
            compile_seconds.clone(),
        );
        let commits = Family::<CommitLabels, Counter>::default();
        registry.register(
            "offset_commits",
            "Offset commit results reported by the broker, by result",
            commits.clone(),
        );
        let restores = Family::<HandlerLabels, Counter>::default();
        registry.register(
            "ledger_restores",
            "Ledger restores of assigned partitions (from the ledger topic)",
            restores.clone(),
        );
        let restored_entries = Family::<HandlerLabels, Counter>::default();
        registry.register(
            "ledger_restored_entries",
            "Ledger entries applied by restores",
            restored_entries.clone(),
        );
        let restore_seconds = Family::<HandlerLabels, Histogram>::new_with_constructor(
            compile_buckets as fn() -> Histogram,
        );
        registry.register(
            "ledger_restore_seconds",
            "Duration of one partition's ledger restore",
            restore_seconds.clone(),
        );
        let ledger_write_errors = Family::<HandlerLabels, Counter>::default();
        registry.register(
            "ledger_write_errors",
            "Ledger writes that failed and were sent again (the batch waits until one succeeds)",
            ledger_write_errors.clone(),
        );
        Self {
            registry,
            records,
            dead_letters,
            call_seconds,
            lag,
            component_info,
            active: Mutex::new(Default::default()),
            swaps,
            compile_seconds,
            commits,
            restores,
            restored_entries,
            restore_seconds,
            ledger_write_errors,
        }
    }

    /// Count a partition's ledger restore: `entries` applied in `seconds`.
    pub fn restored(&self, handler: &str, entries: u64, seconds: f64) {
        let l = HandlerLabels {
            handler: handler.into(),
        };
        self.restores.get_or_create(&l).inc();
        self.restored_entries.get_or_create(&l).inc_by(entries);
        self.restore_seconds.get_or_create(&l).observe(seconds);
    }

    /// Count a failed ledger write of `handler` (it is sent again).
    pub fn ledger_write_failed(&self, handler: &str) {
        self.ledger_write_errors
            .get_or_create(&HandlerLabels {
                handler: handler.into(),
            })
            .inc();
    }

    /// Count an offset commit result: `ok`, `rebalancing` or `failed`.
    pub fn commit(&self, handler: &str, result: &str) {
        self.commits
            .get_or_create(&CommitLabels {
                handler: handler.into(),
                result: result.into(),
            })
            .inc();
    }

    /// Count a record outcome.
    pub fn record(&self, handler: &str, topic: &str, outcome: &str) {
        self.records
            .get_or_create(&RecordLabels {
                handler: handler.into(),
                topic: topic.into(),
                outcome: outcome.into(),
            })
            .inc();
    }

    /// Count a dead letter.
    pub fn dead_letter(&self, handler: &str, topic: &str, kind: &str) {
        self.record(handler, topic, "dead_lettered");
        self.dead_letters
            .get_or_create(&DlqLabels {
                handler: handler.into(),
                topic: topic.into(),
                kind: kind.into(),
            })
            .inc();
    }

    /// Observe a handler call.
    pub fn call(&self, handler: &str, seconds: f64) {
        self.call_seconds
            .get_or_create(&HandlerLabels {
                handler: handler.into(),
            })
            .observe(seconds);
    }

    /// The counter of `handler`'s records from `topic` with `outcome`, resolved once (a
    /// partition's worker keeps it instead of building the labels for every record).
    pub fn records_counter(&self, handler: &str, topic: &str, outcome: &str) -> Counter {
        self.records
            .get_or_create(&RecordLabels {
                handler: handler.into(),
                topic: topic.into(),
                outcome: outcome.into(),
            })
            .clone()
    }

    /// The call-latency histogram of `handler`, resolved once.
    pub fn call_histogram(&self, handler: &str) -> Histogram {
        self.call_seconds
            .get_or_create(&HandlerLabels {
                handler: handler.into(),
            })
            .clone()
    }

    /// Set a partition's lag.
    pub fn lag(&self, handler: &str, topic: &str, partition: i32, lag: i64) {
        self.lag
            .get_or_create(&PartitionLabels {
                handler: handler.into(),
                topic: topic.into(),
                partition,
            })
            .set(lag);
    }

    /// Forget a partition's lag (revoked).
    pub fn forget_partition(&self, handler: &str, topic: &str, partition: i32) {
        self.lag.remove(&PartitionLabels {
            handler: handler.into(),
            topic: topic.into(),
            partition,
        });
    }

    /// `version` is now active for `handler`.
    pub fn active_version(&self, handler: &str, version: &str) {
        if let Ok(mut a) = self.active.lock() {
            if let Some(old) = a.insert(handler.to_owned(), version.to_owned()) {
                self.component_info.remove(&VersionLabels {
                    handler: handler.into(),
                    version: old,
                });
            }
            self.component_info
                .get_or_create(&VersionLabels {
                    handler: handler.into(),
                    version: version.into(),
                })
                .set(1);
        }
    }

    /// A swap happened after `compile_seconds` of validation and compile.
    pub fn swapped(&self, handler: &str, compile_seconds: f64) {
        let l = HandlerLabels {
            handler: handler.into(),
        };
        self.swaps.get_or_create(&l).inc();
        self.compile_seconds
            .get_or_create(&l)
            .observe(compile_seconds);
    }

    /// The text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}
