//! The admin HTTP server (axum): health today; the handler API comes with hot swap.
//!
//! `GET /healthz` answers 200 when the process and every consumer loop are alive, else 503;
//! `GET /readyz` answers 200 when every handler is ready (see [`crate::health`]), else 503.
//! Both bodies are JSON and say, per handler, what is wrong. Health needs no token.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use tokio_util::sync::CancellationToken;

use crate::health::Health;

async fn healthz(State(h): State<Arc<Health>>) -> impl IntoResponse {
    let (ok, report) = h.report(false);
    (
        if ok {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        },
        Json(report),
    )
}

async fn readyz(State(h): State<Arc<Health>>) -> impl IntoResponse {
    let (ok, report) = h.report(true);
    (
        if ok {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        },
        Json(report),
    )
}

/// The router.
pub fn router(health: Arc<Health>) -> axum::Router {
    axum::Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(health)
}

/// Bind `addr` and serve until `stop` is cancelled. Returns the bound address and the task.
pub async fn serve(
    addr: SocketAddr,
    health: Arc<Health>,
    stop: CancellationToken,
) -> anyhow::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the admin server to {addr}"))?;
    let bound = listener
        .local_addr()
        .context("reading the admin server address")?;
    let app = router(health);
    let task = tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "admin server failed");
        }
    });
    Ok((bound, task))
}
