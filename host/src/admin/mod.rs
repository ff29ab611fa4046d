//! The admin HTTP server (axum): health, the handler API, hot swap, pause, and the web console.
//!
//! - `GET /healthz`, `GET /readyz`: open (probes), JSON per handler (see [`crate::telemetry::health`]).
//! - `GET /metrics`: open, OpenMetrics text (which Prometheus scrapes; see [`crate::telemetry::metrics`]).
//! - `GET /openapi.json`: the OpenAPI 3.1 description of every route (see [`crate::admin::openapi`]);
//!   like `/v1`, it needs the token when one is configured.
//! - `GET /`: the web console (see [`console`]), which works through `/v1` with the token.
//! - `/v1/...`: JSON in and out, errors as `{"error": "..."}` with the status mapped in one
//!   place ([`ApiError`]). Authentication: `Authorization: Bearer <token>` with the token from
//!   `KASM_ADMIN_TOKEN`, compared in constant time and never logged. Without a configured
//!   token, the read routes are open (the server listens on loopback by default) and the
//!   mutating routes answer 403 saying how to enable them.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::{Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json, Router};
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq as _;
use tokio_util::sync::CancellationToken;
use utoipa::OpenApi as _;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub mod activity;
pub mod console;
mod dead_letters;
pub mod deploy;
mod events;
mod handlers;
pub mod openapi;
mod probes;
pub mod requests;
mod websocket;

pub use handlers::{HandlerStatus, HandlerView, VersionView};

use crate::admin::deploy::{DeployError, Deployer};
use crate::handler::HandlerCtx;
use crate::telemetry::health::Health;

/// Shared state of the admin routes.
#[derive(Debug, Clone)]
pub struct AdminState {
    /// Health registry.
    pub health: Arc<Health>,
    /// The handlers.
    pub handlers: Vec<Arc<HandlerCtx>>,
    /// Hot swap.
    pub deployer: Arc<Deployer>,
    /// Prometheus metrics.
    pub metrics: Arc<crate::telemetry::metrics::Metrics>,
    /// The admin token (`KASM_ADMIN_TOKEN`), if configured.
    pub token: Option<Arc<str>>,
    /// Largest component upload accepted.
    pub max_component_bytes: usize,
    /// Kafka client settings, for reading dead-letter topics.
    pub kafka: Arc<(crate::config::KafkaEnv, Vec<(String, String)>)>,
    /// Producer for replays.
    pub producer: crate::kafka::producer::KafkaProducer,
    /// The WebSocket clients of `GET /ws`.
    pub ws: Arc<crate::capabilities::websocket::Hub>,
    /// What each handler did lately (sampled while the server runs).
    pub activity: Arc<activity::Activity>,
}

/// An error answer: status and message.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }
}

/// The body of every error answer.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[schema(as = Error)]
pub struct ErrorBody {
    /// What went wrong, in words.
    pub error: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(ErrorBody {
                error: self.message,
            }),
        )
            .into_response()
    }
}

impl From<DeployError> for ApiError {
    fn from(e: DeployError) -> Self {
        let status = match &e {
            DeployError::UnknownHandler(_) => StatusCode::NOT_FOUND,
            DeployError::Refused(crate::runtime::LoadError::TooLarge { .. }) => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            DeployError::Refused(_) => StatusCode::UNPROCESSABLE_ENTITY,
            DeployError::NoPrevious(_) => StatusCode::CONFLICT,
            DeployError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        if status == StatusCode::INTERNAL_SERVER_ERROR {
            tracing::error!(error = %e, "admin request failed");
        }
        ApiError::new(status, e.to_string())
    }
}

/// A request axum could not read (no JSON content type, not JSON, not the expected fields, over
/// the size limit, a bad query string, not a WebSocket upgrade) answers like every other refusal:
/// `{"error": ...}` with axum's status for it (415, 400, 422, 413, 400, 400/405/426).
macro_rules! refusal_from_rejection {
    ($($rejection:ty),*) => {$(
        impl From<$rejection> for ApiError {
            fn from(r: $rejection) -> Self {
                ApiError::new(r.status(), r.body_text())
            }
        }
    )*};
}
refusal_from_rejection!(JsonRejection, QueryRejection, WebSocketUpgradeRejection);

type ApiResult<T> = Result<Json<T>, ApiError>;

/// What the token check answers on a read of `/v1` (and on `/openapi.json`), for the OpenAPI
/// document: written once, listed in each operation it guards. The answers themselves are
/// written by [`auth`].
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)]
enum ReadRefused {
    /// missing or wrong bearer token
    #[response(status = 401)]
    Unauthorized(ErrorBody),
}

/// What the token check answers on a mutation of `/v1` (see [`ReadRefused`]).
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)]
enum MutationRefused {
    /// missing or wrong bearer token
    #[response(status = 401)]
    Unauthorized(ErrorBody),
    /// no admin token configured: mutations disabled
    #[response(status = 403)]
    Disabled(ErrorBody),
}
/// Bearer-token check for `/v1`.
async fn auth(State(s): State<AdminState>, req: Request, next: Next) -> Response {
    let mutating = req.method() != Method::GET && req.method() != Method::HEAD;
    let Some(token) = &s.token else {
        if mutating {
            return ApiError::new(
                StatusCode::FORBIDDEN,
                "mutating admin routes are disabled: no admin token is configured (set KASM_ADMIN_TOKEN)",
            )
            .into_response();
        }
        return next.run(req).await;
    };
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if bool::from(given.as_bytes().ct_eq(token.as_bytes())) {
        next.run(req).await
    } else {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "a valid `Authorization: Bearer <token>` header is required",
        )
        .into_response()
    }
}

/// Every API route, registered once for the router and the OpenAPI document: each is an
/// annotated function (`#[utoipa::path]`) registered with `routes!`, so the document lists
/// exactly the routes served, with the statuses and bodies written next to the code that
/// answers them. `guard` puts the token check on the routes that need it (everything but
/// health, metrics and the WebSocket, which has its own token; the description included).
fn api(
    guard: impl Fn(OpenApiRouter<AdminState>) -> OpenApiRouter<AdminState>,
) -> OpenApiRouter<AdminState> {
    let v1 = OpenApiRouter::new()
        .routes(routes!(handlers::list_handlers))
        .routes(routes!(handlers::get_handler))
        .routes(routes!(handlers::put_component))
        .routes(routes!(handlers::rollback))
        .routes(routes!(handlers::pause))
        .routes(routes!(handlers::resume))
        .routes(routes!(dead_letters::dlq_list))
        .routes(routes!(dead_letters::dlq_replay))
        .routes(routes!(events::produce_event));
    let v1 = guard(v1).layer(Extension(handlers::Uploads(Arc::new(
        tokio::sync::Semaphore::new(1),
    ))));
    let described = guard(OpenApiRouter::new().routes(routes!(openapi::serve_document)));
    OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .routes(routes!(probes::healthz))
        .routes(routes!(probes::readyz))
        .routes(routes!(probes::metrics))
        .routes(routes!(websocket::websocket))
        .merge(described)
        .nest("/v1", v1)
}

/// The app (the API and the console) and every `(method, path)` of the API.
fn build(state: AdminState) -> (Router, Vec<(&'static str, String)>) {
    let guarded = state.clone();
    let (router, api) =
        api(move |r| r.route_layer(axum::middleware::from_fn_with_state(guarded.clone(), auth)))
            .split_for_parts();
    let served = openapi::operations(&api);
    let document = serde_json::to_vec(&openapi::finish(api))
        .map_err(|e| tracing::error!(error = %e, "the OpenAPI document did not encode"))
        .unwrap_or_default();
    let document = openapi::Document(document.into());
    // The console's routes are not API routes: not in the document.
    let app = router
        .merge(console::routes())
        .layer(Extension(document))
        .with_state(state);
    (app, served)
}

/// A running admin server.
#[derive(Debug)]
pub struct Served {
    /// The bound address.
    pub addr: SocketAddr,
    /// The server task.
    pub task: tokio::task::JoinHandle<()>,
    /// Every `(method, path)` served.
    pub routes: Vec<(&'static str, String)>,
}

/// Bind `addr` and serve until `stop` is cancelled.
pub async fn serve(
    addr: SocketAddr,
    state: AdminState,
    stop: CancellationToken,
) -> anyhow::Result<Served> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the admin server to {addr}"))?;
    let bound = listener
        .local_addr()
        .context("reading the admin server address")?;
    let sampler = activity::spawn(state.activity.clone(), state.handlers.clone(), stop.clone());
    let (app, routes) = build(state);
    let task = tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "admin server failed");
        }
        // The sampler ends on `stop` too; waiting for it lets go of the handlers it holds
        // before the server's task (which shutdown awaits) ends.
        sampler.abort();
        let _ = sampler.await;
    });
    Ok(Served {
        addr: bound,
        task,
        routes,
    })
}
