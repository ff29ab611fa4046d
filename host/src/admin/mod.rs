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
use std::sync::atomic::Ordering;

use anyhow::Context as _;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::{Path, Query, Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq as _;
use tokio_util::sync::CancellationToken;

pub mod activity;
pub mod console;
pub mod deploy;
pub mod openapi;
pub mod requests;

use crate::admin::deploy::{DeployError, Deployer};
use crate::capabilities::Capability;
use crate::handler::{HandlerCtx, PartitionView, StatsSnapshot, SwapRecord};
use crate::telemetry::health::Health;
use requests::{DlqQuery, EventBody, Object, ReplayBody, ReplayRequest};

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

async fn healthz(State(s): State<AdminState>) -> impl IntoResponse {
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

async fn readyz(State(s): State<AdminState>) -> impl IntoResponse {
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

async fn metrics(State(s): State<AdminState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.metrics.render(),
    )
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

/// One handler, as the API shows it.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct HandlerView {
    /// Name.
    pub name: String,
    /// Consumer group.
    pub group_id: String,
    /// Source topics.
    pub topics: Vec<String>,
    /// Whether it fetches.
    pub status: HandlerStatus,
    /// The active version.
    pub active_version: VersionView,
    /// Version changes, oldest first.
    pub history: Vec<SwapRecord>,
    /// Assigned partitions: committed offset, lag, in flight.
    pub partitions: std::collections::BTreeMap<String, PartitionView>,
    /// Counters by outcome.
    pub counters: StatsSnapshot,
    /// How much the counters grew in each of the last intervals.
    #[serde(default)]
    pub activity: activity::ActivityView,
    /// How many times one record may be replayed from the dead-letter topic (the loop guard).
    #[serde(default)]
    pub max_replays: u32,
}

/// Whether a handler fetches (`running`) or was paused by the admin API (`paused`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum HandlerStatus {
    /// Fetching.
    Running,
    /// Paused: offsets stay put until resumed.
    Paused,
}

impl HandlerStatus {
    /// Its JSON name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Paused => "paused",
        }
    }
}

/// A component version.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct VersionView {
    /// sha256.
    pub sha256: String,
    /// Size in bytes.
    pub size: u64,
    /// Capabilities it uses.
    pub capabilities: Vec<Capability>,
}

fn view(s: &AdminState, h: &HandlerCtx) -> HandlerView {
    let c = h.component.load();
    HandlerView {
        name: h.name.clone(),
        group_id: h.group_id.clone(),
        topics: h.config.topics.clone(),
        status: if h.paused.load(Ordering::SeqCst) {
            HandlerStatus::Paused
        } else {
            HandlerStatus::Running
        },
        active_version: VersionView {
            sha256: c.info().sha256.clone(),
            size: c.info().size,
            capabilities: c.info().capabilities.clone(),
        },
        history: h.history.lock().map(|v| v.clone()).unwrap_or_default(),
        partitions: h.partitions.lock().map(|v| v.clone()).unwrap_or_default(),
        counters: h.stats.snapshot(),
        activity: s.activity.view(&h.name),
        max_replays: h.config.max_replays,
    }
}

fn find<'a>(s: &'a AdminState, name: &str) -> Result<&'a Arc<HandlerCtx>, ApiError> {
    s.handlers
        .iter()
        .find(|h| h.name == name)
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, format!("no handler named `{name}`")))
}

async fn list_handlers(State(s): State<AdminState>) -> ApiResult<Vec<HandlerView>> {
    Ok(Json(s.handlers.iter().map(|h| view(&s, h)).collect()))
}

async fn get_handler(
    State(s): State<AdminState>,
    Path(name): Path<String>,
) -> ApiResult<HandlerView> {
    Ok(Json(view(&s, find(&s, &name)?)))
}

/// How long an upload waits for the one before it (see [`put_component`]).
const UPLOAD_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// `PUT /v1/handlers/{name}/component`. The body is read here rather than by an extractor so
/// that memory stays bounded whatever a client sends: a `Content-Length` over the limit is
/// refused before a byte is read, a body without one is read only up to the limit, and one
/// upload is read and deployed at a time (`uploads`: a second waits up to [`UPLOAD_WAIT`],
/// then gets 429), so the host holds at most one component-sized buffer for the admin API.
async fn put_component(
    State(s): State<AdminState>,
    Path(name): Path<String>,
    uploads: Arc<tokio::sync::Semaphore>,
    req: Request,
) -> ApiResult<crate::admin::deploy::SwapReport> {
    find(&s, &name)?;
    let limit = s.max_component_bytes;
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("a component is at most {limit} bytes"),
        )
    };
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > u64::try_from(limit).unwrap_or(u64::MAX)) {
        return Err(too_large());
    }
    let _permit = tokio::time::timeout(UPLOAD_WAIT, uploads.acquire())
        .await
        .ok()
        .and_then(Result::ok)
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "another component upload is in progress; try again",
            )
        })?;
    // Read into one buffer sized by Content-Length when given: no second copy of the upload.
    let mut body = Vec::with_capacity(declared.map_or(0, |n| usize::try_from(n).unwrap_or(limit)));
    let mut stream = req.into_body();
    while let Some(frame) = http_body_util::BodyExt::frame(&mut stream).await {
        let frame = frame.map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("reading the component upload: {e}"),
            )
        })?;
        if let Ok(data) = frame.into_data() {
            if body.len().saturating_add(data.len()) > limit {
                return Err(too_large());
            }
            body.extend_from_slice(&data);
        }
    }
    if body.is_empty() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "empty body: send the component's .wasm bytes",
        ));
    }
    Ok(Json(s.deployer.deploy(&name, body).await?))
}

async fn rollback(
    State(s): State<AdminState>,
    Path(name): Path<String>,
) -> ApiResult<crate::admin::deploy::SwapReport> {
    Ok(Json(s.deployer.rollback(&name).await?))
}

async fn set_paused(s: &AdminState, name: &str, paused: bool) -> ApiResult<HandlerView> {
    let h = find(s, name)?;
    h.paused.store(paused, Ordering::SeqCst);
    Ok(Json(view(s, h)))
}

async fn pause(State(s): State<AdminState>, Path(name): Path<String>) -> ApiResult<HandlerView> {
    set_paused(&s, &name, true).await
}

async fn resume(State(s): State<AdminState>, Path(name): Path<String>) -> ApiResult<HandlerView> {
    set_paused(&s, &name, false).await
}

/// Registers routes and remembers each `(method, path)`, so the OpenAPI document can be
/// checked against what is really served.
struct Routes {
    router: Router<AdminState>,
    list: Vec<(&'static str, String)>,
}

impl Routes {
    fn new() -> Self {
        Self {
            router: Router::new(),
            list: Vec::new(),
        }
    }

    fn add(
        mut self,
        method: &'static str,
        path: &'static str,
        route: axum::routing::MethodRouter<AdminState>,
    ) -> Self {
        self.list.push((method, path.to_owned()));
        self.router = self.router.route(path, route);
        self
    }
}

fn build(state: AdminState) -> (Router, Vec<(&'static str, String)>) {
    let uploads = Arc::new(tokio::sync::Semaphore::new(1));
    let v1 = Routes::new()
        .add("GET", "/handlers", get(list_handlers))
        .add("GET", "/handlers/{name}", get(get_handler))
        .add(
            "PUT",
            "/handlers/{name}/component",
            put(move |state, path, req| put_component(state, path, uploads.clone(), req)),
        )
        .add("POST", "/handlers/{name}/rollback", post(rollback))
        .add("POST", "/handlers/{name}/pause", post(pause))
        .add("POST", "/handlers/{name}/resume", post(resume))
        .add("GET", "/handlers/{name}/dlq", get(dlq_list))
        .add("POST", "/handlers/{name}/dlq/replay", post(dlq_replay))
        .add("POST", "/topics/{topic}/events", post(produce_event));
    // Everything but health and metrics needs the token, the API description included.
    let guarded_openapi =
        get(openapi).layer(axum::middleware::from_fn_with_state(state.clone(), auth));
    let open = Routes::new()
        .add("GET", "/healthz", get(healthz))
        .add("GET", "/readyz", get(readyz))
        .add("GET", "/metrics", get(metrics))
        .add("GET", "/openapi.json", guarded_openapi)
        .add("GET", "/ws", get(websocket));
    let mut list = open.list;
    list.extend(v1.list.into_iter().map(|(m, p)| (m, format!("/v1{p}"))));
    let v1 = v1
        .router
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), auth));
    // The console (not API routes: not in the list the OpenAPI document is checked against).
    let app = open
        .router
        .nest("/v1", v1)
        .merge(console::routes())
        .with_state(state);
    (app, list)
}

fn dlq_topic(h: &HandlerCtx, topic: Option<&str>) -> Result<String, ApiError> {
    let source = match topic {
        Some(t) if h.config.topics.iter().any(|x| x == t) => t.to_owned(),
        Some(t) => {
            // The dead letters of a topic the handler does not consume: nothing by that name.
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                format!("`{t}` is not a source topic of handler `{}`", h.name),
            ));
        }
        None => h.config.topics.first().cloned().unwrap_or_default(),
    };
    Ok(h.config.dlq_topic_for(&source))
}

fn internal(e: anyhow::Error) -> ApiError {
    tracing::error!(error = %format!("{e:#}"), "admin request failed");
    ApiError::new(StatusCode::BAD_GATEWAY, format!("{e:#}"))
}

async fn dlq_list(
    State(s): State<AdminState>,
    Path(name): Path<String>,
    q: Result<Query<DlqQuery>, QueryRejection>,
) -> ApiResult<crate::dlq::list::Page> {
    let Query(q) = q?;
    let h = find(&s, &name)?;
    let topic = dlq_topic(h, q.topic.as_deref())?;
    let bad = |e| ApiError::new(StatusCode::BAD_REQUEST, e);
    let from = q.cursor().map_err(bad)?;
    let limit = q.limit().map_err(bad)?;
    let config = crate::kafka::base_config(&s.kafka.0, &s.kafka.1, crate::kafka::Role::Consumer);
    let mut page = crate::dlq::list::list(config, &topic, from.as_ref(), limit)
        .await
        .map_err(internal)?;
    // Several handlers may share a dead-letter topic (`<source>.dlq`): show this one's.
    page.records
        .retain(|r| r.provenance.handler.as_deref().is_none_or(|h| h == name));
    Ok(Json(page))
}

async fn dlq_replay(
    State(s): State<AdminState>,
    Path(name): Path<String>,
    body: Result<Json<Object<ReplayBody>>, JsonRejection>,
) -> ApiResult<crate::dlq::replay::ReplayReport> {
    let h = find(&s, &name)?;
    let Json(Object(body)) = body?;
    let topic = dlq_topic(h, body.topic.as_deref())?;
    let config = crate::kafka::base_config(&s.kafka.0, &s.kafka.1, crate::kafka::Role::Consumer);
    let request = body
        .request()
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e))?;
    let selection = match request {
        // Every dead letter *of this handler*: a `<source>.dlq` topic may be shared.
        ReplayRequest::All => {
            let mut positions = Vec::new();
            let mut from = None;
            loop {
                let page = crate::dlq::list::list(config.clone(), &topic, from.as_ref(), 1000)
                    .await
                    .map_err(internal)?;
                positions.extend(
                    page.records
                        .iter()
                        .filter(|r| r.provenance.handler.as_deref().is_none_or(|h| h == name))
                        .map(|r| (r.partition, r.offset)),
                );
                match page.next {
                    Some(next) => from = Some(next),
                    None => break,
                }
            }
            crate::dlq::replay::Selection::Records(positions)
        }
        ReplayRequest::Records(positions) => crate::dlq::replay::Selection::Records(positions),
    };
    let report = crate::dlq::replay::replay(
        config,
        &s.producer,
        &topic,
        &selection,
        h.config.max_replays,
    )
    .await
    .map_err(internal)?;
    Ok(Json(report))
}

/// Where a produced event landed.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct Produced {
    topic: String,
    partition: i32,
    offset: i64,
    event_id: String,
}

/// Publish one event the way a producing service should (see [`crate::kafka::produce`]): `acks=all`,
/// idempotent, an `event-id` (the header, else the event's `event_id` field, else a new UUID)
/// carried both as a header and, for a JSON object without one, as its `event_id` field; key
/// the one given, else the event's `user_id`; the answer waits for the acknowledgement.
async fn produce_event(
    State(s): State<AdminState>,
    Path(topic): Path<String>,
    body: Result<Json<Object<EventBody>>, JsonRejection>,
) -> ApiResult<Produced> {
    let Json(Object(body)) = body?;
    let prepared = body
        .prepare(&topic)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e))?;
    let d = crate::kafka::produce::send(&s.producer, &topic, &prepared)
        .await
        .map_err(internal)?;
    Ok(Json(Produced {
        topic,
        partition: d.partition,
        offset: d.offset,
        event_id: prepared.event_id,
    }))
}

/// Query of `GET /ws`.
#[derive(Debug, serde::Deserialize)]
struct WsQuery {
    channel: String,
    token: Option<String>,
}

/// `GET /ws?channel=...`: a WebSocket receiving what handlers broadcast to that channel. The
/// channel's token (see [`crate::capabilities::websocket`]) comes as a bearer header or `?token=`.
async fn websocket(
    State(s): State<AdminState>,
    q: Result<Query<WsQuery>, QueryRejection>,
    headers: axum::http::HeaderMap,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<axum::response::Response, ApiError> {
    use crate::capabilities::websocket::Refused;
    let Query(q) = q?;
    let bearer = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let token = bearer.or(q.token.as_deref());
    let sub = s.ws.subscribe(&q.channel, token).map_err(|e| {
        let status = match e {
            Refused::Disabled | Refused::Full(_) => StatusCode::SERVICE_UNAVAILABLE,
            Refused::BadChannel(_) => StatusCode::BAD_REQUEST,
            Refused::BadToken(_) => StatusCode::UNAUTHORIZED,
        };
        ApiError::new(status, e.to_string())
    })?;
    // The channel and its token first (401 says nothing about the protocol), then whether this
    // is a WebSocket handshake at all.
    let upgrade = upgrade?;
    let hub = s.ws.clone();
    Ok(upgrade
        .max_message_size(64 << 10)
        .on_upgrade(move |socket| crate::capabilities::websocket::serve_client(socket, sub, hub)))
}

async fn openapi() -> impl IntoResponse {
    Json(crate::admin::openapi::document())
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
