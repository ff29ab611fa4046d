//! `/v1/handlers/{name}/dlq`: a handler's dead letters, read and replayed.

use axum::Json;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;

use super::handlers::{Name, find};
use super::requests::{DlqQuery, Object, ReplayBody, ReplayRequest};
use super::{AdminState, ApiError, ApiResult, ErrorBody};
use crate::dlq::list::Page;
use crate::dlq::replay::ReplayReport;
use crate::handler::HandlerCtx;

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

pub(super) fn internal(e: anyhow::Error) -> ApiError {
    tracing::error!(error = %format!("{e:#}"), "admin request failed");
    ApiError::new(StatusCode::BAD_GATEWAY, format!("{e:#}"))
}

/// Dead letters of the handler, provenance headers decoded, paged.
#[utoipa::path(get, path = "/handlers/{name}/dlq", tag = "dead letters", params(Name, DlqQuery),
    responses(
        (status = 200, description = "a page", body = Page),
        (status = 400, description = "bad query: limit out of range or not a number, or bad cursor", body = ErrorBody),
        super::ReadRefused,
        (status = 404, description = "no such handler, or `topic` is not one of its source topics", body = ErrorBody),
        (status = 502, description = "the dead-letter topic could not be read", body = ErrorBody),
    ))]
pub(super) async fn dlq_list(
    State(s): State<AdminState>,
    Path(name): Path<String>,
    q: Result<Query<DlqQuery>, QueryRejection>,
) -> ApiResult<Page> {
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

/// Re-publish dead letters to their source topic.
///
/// Each goes with `kasm-replay-count`; records past the handler's `max_replays` are refused.
#[utoipa::path(post, path = "/handlers/{name}/dlq/replay", tag = "dead letters", params(Name),
    request_body = ReplayBody,
    responses(
        (status = 200, description = "what was replayed and what was refused, with reasons", body = ReplayReport),
        (status = 400, description = "neither `all` nor `records` (or both), or the body is not JSON", body = ErrorBody),
        super::MutationRefused,
        (status = 404, description = "no such handler, or `topic` is not one of its source topics", body = ErrorBody),
        (status = 413, description = "body over the size limit", body = ErrorBody),
        (status = 415, description = "no `Content-Type: application/json`", body = ErrorBody),
        (status = 422, description = "JSON, but not this body: a field of the wrong type or unknown", body = ErrorBody),
        (status = 502, description = "the dead-letter topic could not be read", body = ErrorBody),
    ))]
pub(super) async fn dlq_replay(
    State(s): State<AdminState>,
    Path(name): Path<String>,
    body: Result<Json<Object<ReplayBody>>, JsonRejection>,
) -> ApiResult<ReplayReport> {
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
