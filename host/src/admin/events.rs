//! `POST /v1/topics/{topic}/events`: publish one event.

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::Serialize;

use super::dead_letters::internal;
use super::requests::{EventBody, Object};
use super::{AdminState, ApiError, ApiResult, ErrorBody};

/// The `{topic}` of `POST /v1/topics/{topic}/events`.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
pub(super) struct Topic {
    /// a Kafka topic name
    #[param(pattern = r"^(?!\.\.?$)[A-Za-z0-9._-]{1,249}$")]
    #[allow(dead_code)]
    topic: String,
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
#[utoipa::path(post, path = "/topics/{topic}/events", tag = "events", params(Topic),
    summary = "Publish one event (acks=all, idempotent)",
    description = "The event-id is the `event-id` header, else the event's `event_id` field, else a new UUID; it is sent as a header and, for a JSON object without one, as its `event_id` field. The key is the one given, else the event's `user_id`. The answer waits for the broker's acknowledgement.",
    request_body = EventBody,
    responses(
        (status = 200, description = "acknowledged by the broker", body = Produced),
        (status = 400, description = "bad topic name, or the body is not JSON", body = ErrorBody),
        super::MutationRefused,
        (status = 413, description = "body over the size limit", body = ErrorBody),
        (status = 415, description = "no `Content-Type: application/json`", body = ErrorBody),
        (status = 422, description = "JSON, but not this body: a field missing, of the wrong type or unknown", body = ErrorBody),
        (status = 502, description = "the broker did not acknowledge the write", body = ErrorBody),
    ))]
pub(super) async fn produce_event(
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
