//! What each handler did lately, for the console's charts: every [`INTERVAL`] the admin server
//! reads every handler's counters and keeps how much each grew in that interval, for the last
//! [`KEPT`] intervals (ten minutes). A fixed ring per handler: the memory does not grow with
//! uptime or traffic.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::handler::{HandlerCtx, StatsSnapshot};
use crate::now_ms;

/// How often the counters are read.
pub const INTERVAL: Duration = Duration::from_secs(5);

/// How many intervals are kept.
pub const KEPT: usize = 120;

/// How much a handler's counters grew in one interval.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Sample {
    /// End of the interval, ms since the Unix epoch.
    pub at_ms: i64,
    /// Records handled `ok`.
    pub processed: u64,
    /// Records skipped as already done (ledger).
    pub skipped: u64,
    /// Attempts that failed and were tried again.
    pub retried: u64,
    /// Records dead-lettered.
    pub dead_lettered: u64,
}

/// A handler's recent activity, as the API shows it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ActivityView {
    /// Length of one interval, ms.
    pub interval_ms: u64,
    /// Oldest first; at most [`KEPT`].
    pub samples: Vec<Sample>,
}

#[derive(Debug)]
struct Ring {
    last: StatsSnapshot,
    samples: VecDeque<Sample>,
}

/// The rings of every handler.
#[derive(Debug, Default)]
pub struct Activity {
    rings: Mutex<BTreeMap<String, Ring>>,
}

impl Activity {
    /// Read every handler's counters at `at_ms` and keep how much each grew since the last
    /// reading (the first reading of a handler only starts its ring).
    pub fn sample(&self, handlers: &[Arc<HandlerCtx>], at_ms: i64) {
        for h in handlers {
            self.record(&h.name, h.stats.snapshot(), at_ms);
        }
    }

    /// Keep how much `handler`'s counters grew from the last reading to `now`.
    fn record(&self, handler: &str, now: StatsSnapshot, at_ms: i64) {
        let Ok(mut rings) = self.rings.lock() else {
            return;
        };
        let Some(ring) = rings.get_mut(handler) else {
            rings.insert(
                handler.to_owned(),
                Ring {
                    last: now,
                    samples: VecDeque::with_capacity(KEPT),
                },
            );
            return;
        };
        let grew = |f: fn(&StatsSnapshot) -> u64| f(&now).saturating_sub(f(&ring.last));
        let sample = Sample {
            at_ms,
            processed: grew(|s| s.processed),
            skipped: grew(|s| s.skipped),
            retried: grew(|s| s.retried),
            dead_lettered: grew(|s| s.dead_lettered),
        };
        if ring.samples.len() == KEPT {
            ring.samples.pop_front();
        }
        ring.samples.push_back(sample);
        ring.last = now;
    }

    /// What `handler` did lately (nothing for a name never sampled).
    pub fn view(&self, handler: &str) -> ActivityView {
        let samples = self
            .rings
            .lock()
            .ok()
            .and_then(|r| r.get(handler).map(|r| r.samples.iter().copied().collect()))
            .unwrap_or_default();
        ActivityView {
            interval_ms: u64::try_from(INTERVAL.as_millis()).unwrap_or(u64::MAX),
            samples,
        }
    }
}

/// Sample `handlers` every [`INTERVAL`] until `stop` is cancelled.
pub fn spawn(
    activity: Arc<Activity>,
    handlers: Vec<Arc<HandlerCtx>>,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => activity.sample(&handlers, now_ms()),
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counters(processed: u64, dead_lettered: u64) -> StatsSnapshot {
        StatsSnapshot {
            processed,
            dead_lettered,
            ..StatsSnapshot::default()
        }
    }

    #[test]
    fn keeps_what_grew_per_interval_for_the_last_intervals_only() {
        let a = Activity::default();
        a.record("h", counters(10, 1), 0);
        assert!(
            a.view("h").samples.is_empty(),
            "the first reading only starts"
        );
        a.record("h", counters(25, 1), 5_000);
        a.record("h", counters(25, 4), 10_000);
        let v = a.view("h");
        assert_eq!(v.interval_ms, 5_000);
        assert_eq!(
            v.samples
                .iter()
                .map(|s| (s.at_ms, s.processed, s.dead_lettered))
                .collect::<Vec<_>>(),
            vec![(5_000, 15, 0), (10_000, 0, 3)]
        );
        for i in 0..(KEPT as u64 + 10) {
            a.record("h", counters(100 + i, 4), 20_000 + i as i64);
        }
        let v = a.view("h");
        assert_eq!(v.samples.len(), KEPT, "a fixed ring");
        assert_eq!(v.samples.last().map(|s| s.processed), Some(1));
        assert!(a.view("other").samples.is_empty());
    }
}
