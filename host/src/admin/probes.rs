//! The open routes: `GET /healthz`, `GET /readyz` (probes) and `GET /metrics` (Prometheus).

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;

use super::AdminState;
use crate::telemetry::health::Report;

/// Liveness: the process and every consumer loop are alive.
#[utoipa::path(get, path = "/healthz", tag = "probes", security(()),
    responses(
        (status = 200, description = "live", body = Report),
        (status = 503, description = "not live", body = Report),
    ))]
pub(super) async fn healthz(State(s): State<AdminState>) -> impl IntoResponse {
    let (ok, report) = s.health.report(false);
    (
        if ok {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        },
        Json(report),
    )
}

/// Readiness: assigned, broker reachable, no partition held, not shutting down.
#[utoipa::path(get, path = "/readyz", tag = "probes", security(()),
    responses(
        (status = 200, description = "ready", body = Report),
        (status = 503, description = "not ready", body = Report),
    ))]
pub(super) async fn readyz(State(s): State<AdminState>) -> impl IntoResponse {
    let (ok, report) = s.health.report(true);
    (
        if ok {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        },
        Json(report),
    )
}

/// Prometheus metrics (OpenMetrics text).
#[utoipa::path(get, path = "/metrics", tag = "probes", security(()),
    responses(
        (status = 200, description = "metrics", body = String, content_type = "application/openmetrics-text"),
    ))]
pub(super) async fn metrics(State(s): State<AdminState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.metrics.render(),
    )
}
