//! What the data plane reports and the control plane serves: per-handler liveness and
//! readiness ([`health`]), Prometheus counters ([`metrics`]) and OpenTelemetry traces of each
//! record ([`trace`]).

pub mod health;
pub mod metrics;
pub mod trace;
