//! Publishing records: the `producer` capability.

use serde::Serialize;

use crate::HandlerError;
use crate::bindings::kasm::handler::producer;

/// Queue a record for `topic`; returns the `event-id` the host gives it.
///
/// Nothing is sent yet: the host sends the handler's publishes (with `acks=all`) only after the
/// handler returns `Ok`, and sends none of them if it fails, traps or times out. The host adds
/// an `event-id` header derived from the source event id, the handler name and the index of
/// this publish within the call, so a re-run of the same event publishes the same ids and
/// downstream deduplication drops the repeats.
///
/// A refusal is [`HandlerError::Fatal`]: the host refuses a publish only when the topic is not
/// granted to the handler, the record is over the size limit, or the call has published more
/// records than its limit allows. None of these changes on a retry of the same record, so
/// retrying would only delay the dead letter. The message names the topic and the host's
/// reason.
pub fn publish(
    topic: &str,
    key: Option<&[u8]>,
    payload: &[u8],
    headers: &[(&str, &[u8])],
) -> Result<String, HandlerError> {
    let headers: Vec<(String, Vec<u8>)> = headers
        .iter()
        .map(|(name, value)| ((*name).to_owned(), value.to_vec()))
        .collect();
    producer::publish(topic, key, payload, &headers)
        .map_err(|reason| HandlerError::fatal(format!("publish to {topic} refused: {reason}")))
}

/// Serialize `value` as JSON and [`publish`] it to `topic`, without headers. Returns the
/// record's `event-id`.
///
/// A value that cannot be serialized (a map with non-string keys, a failing `Serialize` impl)
/// is [`HandlerError::Fatal`], like a publish refusal.
pub fn publish_json<T: Serialize + ?Sized>(
    topic: &str,
    key: Option<&[u8]>,
    value: &T,
) -> Result<String, HandlerError> {
    let payload = serde_json::to_vec(value).map_err(|error| {
        HandlerError::fatal(format!(
            "cannot encode the record for {topic} as JSON: {error}"
        ))
    })?;
    publish(topic, key, &payload, &[])
}

/// The `event-id` that the next [`publish`] of this call will carry, so a handler can put its
/// output's id inside the payload as well as in the header.
pub fn next_event_id() -> String {
    producer::next_event_id()
}
