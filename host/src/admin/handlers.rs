//! `/v1/handlers`: what each handler runs and how it is doing, hot swap, rollback, pause.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::extract::{Path, Request, State};
use axum::http::{StatusCode, header};
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};

use super::{AdminState, ApiError, ApiResult, ErrorBody};
use crate::admin::deploy::SwapReport;
use crate::capabilities::Capability;
use crate::handler::{HandlerCtx, PartitionView, StatsSnapshot, SwapRecord};

/// The `{name}` of a handler route.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
pub(super) struct Name {
    /// handler name
    #[allow(dead_code)]
    name: String,
}

/// One component upload at a time (see [`put_component`]).
#[derive(Debug, Clone)]
pub(super) struct Uploads(pub(super) Arc<tokio::sync::Semaphore>);

/// One handler, as the API shows it.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[schema(as = Handler)]
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
    pub activity: super::activity::ActivityView,
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

pub(super) fn view(s: &AdminState, h: &HandlerCtx) -> HandlerView {
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

pub(super) fn find<'a>(s: &'a AdminState, name: &str) -> Result<&'a Arc<HandlerCtx>, ApiError> {
    s.handlers
        .iter()
        .find(|h| h.name == name)
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, format!("no handler named `{name}`")))
}

/// Every handler.
#[utoipa::path(get, path = "/handlers", tag = "handlers",
    responses(
        (status = 200, description = "handlers", body = Vec<HandlerView>),
        super::ReadRefused,
    ))]
pub(super) async fn list_handlers(State(s): State<AdminState>) -> ApiResult<Vec<HandlerView>> {
    Ok(Json(s.handlers.iter().map(|h| view(&s, h)).collect()))
}

/// One handler: version and history, partitions with committed offset and lag, counters.
#[utoipa::path(get, path = "/handlers/{name}", tag = "handlers", params(Name),
    responses(
        (status = 200, description = "the handler", body = HandlerView),
        super::ReadRefused,
        (status = 404, description = "no such handler", body = ErrorBody),
    ))]
pub(super) async fn get_handler(
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
#[utoipa::path(put, path = "/handlers/{name}/component", tag = "handlers", params(Name),
    summary = "Deploy a component version (hot swap)",
    description = "Validated, compiled, persisted, swapped; in-flight records finish on the old version. One upload is deployed at a time: another waits up to 10 s, then gets 429.",
    request_body(content(
        (Vec<u8> = "application/wasm"),
        (Vec<u8> = "application/octet-stream"),
    ), description = "the component's .wasm bytes"),
    responses(
        (status = 200, description = "the version change", body = SwapReport),
        (status = 400, description = "empty body", body = ErrorBody),
        super::MutationRefused,
        (status = 404, description = "no such handler", body = ErrorBody),
        (status = 413, description = "component over the size limit", body = ErrorBody),
        (status = 422, description = "component refused (not wasm, core module, another world, ungranted import...); the active version keeps serving", body = ErrorBody),
        (status = 429, description = "another upload is being deployed", body = ErrorBody),
    ))]
pub(super) async fn put_component(
    State(s): State<AdminState>,
    Path(name): Path<String>,
    Extension(uploads): Extension<Uploads>,
    req: Request,
) -> ApiResult<SwapReport> {
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
    let _permit = tokio::time::timeout(UPLOAD_WAIT, uploads.0.acquire())
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

/// Return to the previous version.
#[utoipa::path(post, path = "/handlers/{name}/rollback", tag = "handlers", params(Name),
    responses(
        (status = 200, description = "the version change", body = SwapReport),
        super::MutationRefused,
        (status = 404, description = "no such handler", body = ErrorBody),
        (status = 409, description = "no previous version", body = ErrorBody),
    ))]
pub(super) async fn rollback(
    State(s): State<AdminState>,
    Path(name): Path<String>,
) -> ApiResult<SwapReport> {
    Ok(Json(s.deployer.rollback(&name).await?))
}

async fn set_paused(s: &AdminState, name: &str, paused: bool) -> ApiResult<HandlerView> {
    let h = find(s, name)?;
    h.paused.store(paused, Ordering::SeqCst);
    Ok(Json(view(s, h)))
}

/// Stop fetching; offsets stay put.
#[utoipa::path(post, path = "/handlers/{name}/pause", tag = "handlers", params(Name),
    responses(
        (status = 200, description = "the handler, paused", body = HandlerView),
        super::MutationRefused,
        (status = 404, description = "no such handler", body = ErrorBody),
    ))]
pub(super) async fn pause(
    State(s): State<AdminState>,
    Path(name): Path<String>,
) -> ApiResult<HandlerView> {
    set_paused(&s, &name, true).await
}

/// Resume fetching.
#[utoipa::path(post, path = "/handlers/{name}/resume", tag = "handlers", params(Name),
    responses(
        (status = 200, description = "the handler, running", body = HandlerView),
        super::MutationRefused,
        (status = 404, description = "no such handler", body = ErrorBody),
    ))]
pub(super) async fn resume(
    State(s): State<AdminState>,
    Path(name): Path<String>,
) -> ApiResult<HandlerView> {
    set_paused(&s, &name, false).await
}
