//! Liveness and readiness, per handler, as the admin server reports them.
//!
//! - **Live** (`/healthz`): the process answers and every handler's consumer loop is running
//!   (it has not exited and its heartbeat is recent).
//! - **Ready** (`/readyz`): not shutting down, and for every handler: the consumer loop has
//!   received its first assignment from the group (an empty one counts: more members than
//!   partitions), the broker is reachable, no partition is held on a failed dead-letter
//!   write, and no partition is restoring its ledger.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;

/// How long a consumer loop may go without a heartbeat before it counts as dead.
pub const HEARTBEAT_LIMIT: Duration = Duration::from_secs(60);

/// Where a handler's consumer loop is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case", tag = "state", content = "reason")]
pub enum LoopState {
    /// Joining the group; no assignment yet.
    Starting,
    /// Assigned (possibly zero partitions) and consuming.
    Consuming,
    /// Stopped by a shutdown.
    Stopped,
    /// Exited on an error.
    Failed(String),
}

#[derive(Debug)]
struct HandlerHealth {
    state: LoopState,
    heartbeat: Instant,
    broker_ok: bool,
    broker_error: Option<String>,
    assigned: usize,
    stuck: BTreeMap<String, String>,
    /// Partitions restoring their ledger, since when.
    restoring: BTreeMap<String, Instant>,
}

/// One handler's view in a health report.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct HandlerReport {
    /// Loop state.
    #[serde(flatten)]
    pub state: LoopState,
    /// Whether the loop is alive (running, recent heartbeat).
    pub live: bool,
    /// Whether the handler is ready.
    pub ready: bool,
    /// Partitions assigned.
    pub assigned_partitions: usize,
    /// Whether the broker is reachable.
    pub broker_reachable: bool,
    /// Last broker error, if the broker is not reachable.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub broker_error: Option<String>,
    /// Partitions held on a failed dead-letter write: `topic/partition` → error.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub stuck_partitions: BTreeMap<String, String>,
    /// Why the handler is not ready or not live, when it is not.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<String>,
}

/// A whole report.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[schema(as = HealthReport)]
pub struct Report {
    /// `live` / `ready` for the asked question, else `unhealthy` / `not-ready`.
    #[schema(value_type = String)]
    pub status: &'static str,
    /// Whether a shutdown is under way.
    pub shutting_down: bool,
    /// Per handler.
    pub handlers: BTreeMap<String, HandlerReport>,
}

/// Shared health state, written by consumer loops and workers.
#[derive(Debug, Default)]
pub struct Health {
    handlers: Mutex<BTreeMap<String, HandlerHealth>>,
    shutting_down: AtomicBool,
}

impl Health {
    /// Register a handler (state `starting`).
    pub fn register(&self, handler: &str) {
        self.with(handler, |_| {});
    }

    fn with(&self, handler: &str, f: impl FnOnce(&mut HandlerHealth)) {
        if let Ok(mut m) = self.handlers.lock() {
            let h = m
                .entry(handler.to_owned())
                .or_insert_with(|| HandlerHealth {
                    state: LoopState::Starting,
                    heartbeat: Instant::now(),
                    broker_ok: true,
                    broker_error: None,
                    assigned: 0,
                    stuck: BTreeMap::new(),
                    restoring: BTreeMap::new(),
                });
            f(h);
        }
    }

    /// The loop is alive.
    pub fn heartbeat(&self, handler: &str) {
        self.with(handler, |h| h.heartbeat = Instant::now());
    }

    /// New loop state.
    pub fn set_state(&self, handler: &str, state: LoopState) {
        self.with(handler, |h| {
            h.state = state;
            h.heartbeat = Instant::now();
        });
    }

    /// The group assigned `n` partitions.
    pub fn assigned(&self, handler: &str, n: usize) {
        self.with(handler, |h| {
            h.assigned = n;
            if h.state == LoopState::Starting {
                h.state = LoopState::Consuming;
            }
        });
    }

    /// Broker reachability changed.
    pub fn broker(&self, handler: &str, reachable: bool, error: Option<String>) {
        self.with(handler, |h| {
            h.broker_ok = reachable;
            h.broker_error = if reachable { None } else { error };
        });
    }

    /// A partition is held on a failed dead-letter write (or released: `error` = None).
    pub fn stuck(&self, handler: &str, topic: &str, partition: i32, error: Option<String>) {
        let key = format!("{topic}/{partition}");
        self.with(handler, |h| match error {
            Some(e) => {
                h.stuck.insert(key, e);
            }
            None => {
                h.stuck.remove(&key);
            }
        });
    }

    /// A partition began restoring its ledger (`true`) or finished (`false`).
    pub fn restoring(&self, handler: &str, topic: &str, partition: i32, under_way: bool) {
        let key = format!("{topic}/{partition}");
        self.with(handler, |h| {
            if under_way {
                h.restoring.entry(key).or_insert_with(Instant::now);
            } else {
                h.restoring.remove(&key);
            }
        });
    }

    /// A shutdown began: not ready from now on.
    pub fn shutting_down(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
    }

    /// Whether a shutdown began.
    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::SeqCst)
    }

    /// Build a report; `readiness` picks the question answered by `status`.
    pub fn report(&self, readiness: bool) -> (bool, Report) {
        let shutting_down = self.is_shutting_down();
        let mut handlers = BTreeMap::new();
        let mut all_live = true;
        let mut all_ready = !shutting_down;
        if let Ok(m) = self.handlers.lock() {
            for (name, h) in m.iter() {
                let mut problems = Vec::new();
                let running = matches!(h.state, LoopState::Starting | LoopState::Consuming);
                let fresh = h.heartbeat.elapsed() < HEARTBEAT_LIMIT;
                let live = (running && fresh) || (h.state == LoopState::Stopped && shutting_down);
                if !running {
                    problems.push(match &h.state {
                        LoopState::Failed(e) => format!("consumer loop failed: {e}"),
                        _ => "consumer loop stopped".to_owned(),
                    });
                } else if !fresh {
                    problems.push(format!(
                        "no consumer loop heartbeat for {:?}",
                        h.heartbeat.elapsed()
                    ));
                }
                if h.state == LoopState::Starting {
                    problems.push("waiting for the first partition assignment".to_owned());
                }
                if !h.broker_ok {
                    problems.push("broker unreachable".to_owned());
                }
                for (tp, e) in &h.stuck {
                    problems.push(format!(
                        "partition {tp} held: dead-letter write failing: {e}"
                    ));
                }
                for (tp, since) in &h.restoring {
                    problems.push(format!(
                        "partition {tp}: restoring its ledger ({:.1}s so far)",
                        since.elapsed().as_secs_f64()
                    ));
                }
                let ready = live
                    && h.state == LoopState::Consuming
                    && h.broker_ok
                    && h.stuck.is_empty()
                    && h.restoring.is_empty();
                all_live &= live;
                all_ready &= ready;
                handlers.insert(
                    name.clone(),
                    HandlerReport {
                        state: h.state.clone(),
                        live,
                        ready,
                        assigned_partitions: h.assigned,
                        broker_reachable: h.broker_ok,
                        broker_error: h.broker_error.clone(),
                        stuck_partitions: h.stuck.clone(),
                        problems,
                    },
                );
            }
        }
        if handlers.is_empty() {
            all_ready = false;
        }
        let ok = if readiness { all_ready } else { all_live };
        let status = match (readiness, ok) {
            (true, true) => "ready",
            (true, false) => "not-ready",
            (false, true) => "live",
            (false, false) => "unhealthy",
        };
        (
            ok,
            Report {
                status,
                shutting_down,
                handlers,
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_follows_assignment_stuck_partitions_and_shutdown() {
        let h = Health::default();
        h.register("audit");
        assert!(!h.report(true).0, "not ready before the first assignment");
        assert!(h.report(false).0, "but live");
        h.assigned("audit", 2);
        assert!(h.report(true).0);
        h.stuck("audit", "t", 1, Some("broker down".into()));
        let (ok, r) = h.report(true);
        assert!(!ok);
        assert!(r.handlers["audit"].problems[0].contains("t/1"));
        h.stuck("audit", "t", 1, None);
        assert!(h.report(true).0);
        h.restoring("audit", "t", 0, true);
        let (ok, r) = h.report(true);
        assert!(!ok, "not ready while a partition restores its ledger");
        assert!(r.handlers["audit"].problems[0].contains("t/0: restoring its ledger"));
        h.restoring("audit", "t", 0, false);
        assert!(h.report(true).0);
        h.set_state("audit", LoopState::Failed("fenced".into()));
        assert!(!h.report(false).0, "a dead loop is not live");
        h.set_state("audit", LoopState::Consuming);
        h.shutting_down();
        assert!(!h.report(true).0, "not ready during shutdown");
    }
}
