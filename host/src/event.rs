//! What a Kafka record becomes before a handler sees it.
//!
//! The one decision made here is the record's identity. An event id is what deduplication,
//! retries, dead-lettering and the ids of a handler's own outputs all hang on, so it must be
//! the same every time the same record is delivered:
//!
//! 1. the header `event-id`, when present and valid UTF-8;
//! 2. else the top-level JSON string field `event_id` of the payload;
//! 3. else `<topic>/<partition>/<offset>`, which is stable for one record but means two
//!    copies of the same business event at different offsets are *not* deduplicated.

use serde::Deserialize;

/// The header that carries an event's id.
pub const EVENT_ID_HEADER: &str = "event-id";

/// One record as a handler receives it (the WIT `event` record, host side).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// The event id (see the module docs for how it is chosen).
    pub id: String,
    /// Source topic.
    pub topic: String,
    /// Source partition.
    pub partition: i32,
    /// Source offset.
    pub offset: i64,
    /// Record key.
    pub key: Option<Vec<u8>>,
    /// Record value.
    pub payload: Vec<u8>,
    /// Record headers in producer order.
    pub headers: Vec<(String, Vec<u8>)>,
    /// Broker timestamp, milliseconds since the Unix epoch.
    pub timestamp_ms: Option<i64>,
    /// 1 on first delivery, incremented on every retry.
    pub attempt: u32,
}

impl Event {
    /// Build an event from record parts, choosing its id with [`identify_event_id`].
    pub fn from_record(
        topic: impl Into<String>,
        partition: i32,
        offset: i64,
        key: Option<Vec<u8>>,
        payload: Vec<u8>,
        headers: Vec<(String, Vec<u8>)>,
        timestamp_ms: Option<i64>,
    ) -> Self {
        let topic = topic.into();
        let id = identify_event_id(&topic, partition, offset, &payload, &headers);
        Self {
            id,
            topic,
            partition,
            offset,
            key,
            payload,
            headers,
            timestamp_ms,
            attempt: 1,
        }
    }

    /// The first header named `name`, if any.
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_slice())
    }
}

#[derive(Deserialize)]
struct EventIdField {
    event_id: Option<serde_json::Value>,
}

/// Choose a record's event id: header `event-id`, else JSON field `event_id` (a string),
/// else `topic/partition/offset`. Leading and trailing whitespace is not part of an id, from
/// either source.
pub fn identify_event_id(
    topic: &str,
    partition: i32,
    offset: i64,
    payload: &[u8],
    headers: &[(String, Vec<u8>)],
) -> String {
    let from_header = headers
        .iter()
        .find(|(k, _)| k == EVENT_ID_HEADER)
        .and_then(|(_, v)| std::str::from_utf8(v).ok())
        .map(str::trim)
        .filter(|s| !s.is_empty());
    if let Some(id) = from_header {
        return id.to_owned();
    }
    let looks_like_json = payload
        .first()
        .is_some_and(|b| *b == b'{' || b.is_ascii_whitespace());
    // JSON is UTF-8: a payload that is not is no JSON to take an id from (parsing bytes, serde
    // skips the fields it ignores without checking them).
    if looks_like_json
        && let Ok(text) = std::str::from_utf8(payload)
        && let Ok(EventIdField {
            event_id: Some(serde_json::Value::String(id)),
        }) = serde_json::from_str::<EventIdField>(text)
        && !id.trim().is_empty()
    {
        // Trimmed as the header is: one event sent with either carries one id.
        return match id.trim() {
            trimmed if trimmed.len() == id.len() => id,
            trimmed => trimmed.to_owned(),
        };
    }
    format!("{topic}/{partition}/{offset}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_wins_over_payload() {
        let headers = vec![("event-id".to_owned(), b"h-1".to_vec())];
        let id = identify_event_id("t", 0, 5, br#"{"event_id":"p-1"}"#, &headers);
        assert_eq!(id, "h-1");
    }

    #[test]
    fn payload_field_then_coordinates() {
        assert_eq!(
            identify_event_id("t", 1, 7, br#"{"event_id":"p-1","x":[1,2]}"#, &[]),
            "p-1"
        );
        assert_eq!(
            identify_event_id("t", 1, 7, br#"{"event_id":42}"#, &[]),
            "t/1/7"
        );
        assert_eq!(identify_event_id("t", 1, 7, b"not json", &[]), "t/1/7");
        assert_eq!(identify_event_id("t", 1, 7, b"", &[]), "t/1/7");
        let empty_header = vec![("event-id".to_owned(), b"  ".to_vec())];
        assert_eq!(
            identify_event_id("t", 2, 9, br#"{"event_id":"p"}"#, &empty_header),
            "p"
        );
    }

    #[test]
    fn an_id_is_the_same_from_a_header_or_the_payload() {
        let header = vec![("event-id".to_owned(), b" e-1\t".to_vec())];
        let from_header = identify_event_id("t", 0, 1, b"", &header);
        let from_payload = identify_event_id("t", 0, 2, br#"{"event_id":"  e-1 "}"#, &[]);
        assert_eq!(from_header, "e-1");
        assert_eq!(from_payload, from_header);
        assert_eq!(
            identify_event_id("t", 0, 3, br#"{"event_id":" \n "}"#, &[]),
            "t/0/3"
        );
    }
}
