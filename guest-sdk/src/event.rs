//! The record a handler receives.

use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;

use crate::HandlerError;
use crate::bindings::kasm::handler::types::Event as RawEvent;

/// One Kafka record, as the host hands it to a handler.
///
/// The host has decided the record's identity ([`Event::id`]) before the handler runs: it is
/// the record header `event-id` when present, else the top-level JSON field `event_id` of the
/// payload, else `<topic>/<partition>/<offset>`. The id is stable across redeliveries, so it is
/// the idempotency key for anything the handler does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    id: String,
    topic: String,
    partition: i32,
    offset: i64,
    key: Option<Vec<u8>>,
    payload: Vec<u8>,
    headers: Vec<(String, Vec<u8>)>,
    timestamp_ms: Option<i64>,
    attempt: u32,
}

impl Event {
    /// An event as a test would build it: partition 0, offset 0, no key, no headers, no
    /// timestamp, first attempt. Refine it with the `with_*` methods.
    pub fn new(
        id: impl Into<String>,
        topic: impl Into<String>,
        payload: impl Into<Vec<u8>>,
    ) -> Self {
        Self {
            id: id.into(),
            topic: topic.into(),
            partition: 0,
            offset: 0,
            key: None,
            payload: payload.into(),
            headers: Vec::new(),
            timestamp_ms: None,
            attempt: 1,
        }
    }

    /// This event with the record key set.
    #[must_use]
    pub fn with_key(mut self, key: impl Into<Vec<u8>>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// This event with one more header, after the existing ones.
    #[must_use]
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<Vec<u8>>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// This event with the partition set.
    #[must_use]
    pub fn with_partition(mut self, partition: i32) -> Self {
        self.partition = partition;
        self
    }

    /// This event with the offset set.
    #[must_use]
    pub fn with_offset(mut self, offset: i64) -> Self {
        self.offset = offset;
        self
    }

    /// This event with the record timestamp set (milliseconds since the Unix epoch).
    #[must_use]
    pub fn with_timestamp_ms(mut self, timestamp_ms: i64) -> Self {
        self.timestamp_ms = Some(timestamp_ms);
        self
    }

    /// This event with the attempt number set (1 on first delivery).
    #[must_use]
    pub fn with_attempt(mut self, attempt: u32) -> Self {
        self.attempt = attempt;
        self
    }

    /// The event id: stable across redeliveries of the same record, the idempotency key.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The topic the record was consumed from.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The partition the record was consumed from.
    pub fn partition(&self) -> i32 {
        self.partition
    }

    /// The record's offset within its partition.
    pub fn offset(&self) -> i64 {
        self.offset
    }

    /// The record key, if the producer set one.
    pub fn key(&self) -> Option<&[u8]> {
        self.key.as_deref()
    }

    /// The record key as text; `None` if there is no key or it is not UTF-8.
    pub fn key_str(&self) -> Option<&str> {
        self.key().and_then(|key| std::str::from_utf8(key).ok())
    }

    /// The record value, byte for byte as produced. Empty for a tombstone.
    pub fn payload(&self) -> &[u8] {
        &self.payload
    }

    /// The record value, taken out of the event without a copy.
    pub fn into_payload(self) -> Vec<u8> {
        self.payload
    }

    /// The value of header `name` (compared exactly, case-sensitive). Kafka allows a name to
    /// repeat; like Kafka's `lastHeader`, this returns the last one. See [`Event::headers`] for
    /// all of them.
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .rev()
            .find(|(header, _)| header == name)
            .map(|(_, value)| value.as_slice())
    }

    /// The value of header `name` as text, as [`Event::header`]; `None` if absent or not UTF-8.
    pub fn header_str(&self, name: &str) -> Option<&str> {
        self.header(name)
            .and_then(|value| std::str::from_utf8(value).ok())
    }

    /// All record headers, in producer order. A name may repeat.
    pub fn headers(&self) -> &[(String, Vec<u8>)] {
        &self.headers
    }

    /// The record timestamp in milliseconds since the Unix epoch, if the broker has one.
    pub fn timestamp_ms(&self) -> Option<i64> {
        self.timestamp_ms
    }

    /// The record timestamp, if the broker has one and it is a representable instant.
    pub fn timestamp(&self) -> Option<DateTime<Utc>> {
        self.timestamp_ms.and_then(DateTime::from_timestamp_millis)
    }

    /// Which attempt this is for this record: 1 on first delivery, 2 on the first retry, ...
    /// Use it to degrade gracefully, never to decide whether an effect was already applied.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// Decode the payload as JSON.
    ///
    /// A payload that does not decode will not decode on a retry either, so the error is
    /// [`HandlerError::Fatal`], with the message `undecodable payload: <serde error>`.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, HandlerError> {
        serde_json::from_slice(&self.payload)
            .map_err(|error| HandlerError::fatal(format!("undecodable payload: {error}")))
    }
}

impl From<RawEvent> for Event {
    fn from(raw: RawEvent) -> Self {
        Self {
            id: raw.id,
            topic: raw.topic,
            partition: raw.partition,
            offset: raw.offset,
            key: raw.key,
            payload: raw.payload,
            headers: raw.headers,
            timestamp_ms: raw.timestamp_ms,
            attempt: raw.attempt,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize, PartialEq)]
    struct Order {
        order_id: String,
        amount: u32,
    }

    fn sample() -> Event {
        Event::new(
            "e-1",
            "orders",
            br#"{"order_id":"o-7","amount":3}"#.to_vec(),
        )
        .with_key("user-1")
        .with_header("trace", "a")
        .with_header("bin", vec![0xff, 0xfe])
        .with_header("trace", "b")
        .with_partition(4)
        .with_offset(42)
        .with_timestamp_ms(1_700_000_000_123)
        .with_attempt(2)
    }

    #[test]
    fn accessors_return_what_was_set() {
        let event = sample();
        assert_eq!(event.id(), "e-1");
        assert_eq!(event.topic(), "orders");
        assert_eq!(event.partition(), 4);
        assert_eq!(event.offset(), 42);
        assert_eq!(event.key(), Some(&b"user-1"[..]));
        assert_eq!(event.key_str(), Some("user-1"));
        assert_eq!(event.attempt(), 2);
        assert_eq!(event.timestamp_ms(), Some(1_700_000_000_123));
        assert_eq!(
            event.timestamp().map(|t| t.to_rfc3339()),
            Some("2023-11-14T22:13:20.123+00:00".to_owned())
        );
        assert_eq!(event.headers().len(), 3);
    }

    #[test]
    fn header_returns_the_last_value_of_a_repeated_name() {
        let event = sample();
        assert_eq!(event.header("trace"), Some(&b"b"[..]));
        assert_eq!(event.header_str("trace"), Some("b"));
        assert_eq!(event.header("Trace"), None, "names are case-sensitive");
        assert_eq!(event.header("missing"), None);
    }

    #[test]
    fn header_str_is_none_for_non_utf8() {
        let event = sample();
        assert_eq!(event.header("bin"), Some(&[0xff, 0xfe][..]));
        assert_eq!(event.header_str("bin"), None);
    }

    #[test]
    fn new_event_has_defaults() {
        let event = Event::new("id", "t", Vec::new());
        assert_eq!(event.key(), None);
        assert_eq!(event.attempt(), 1);
        assert_eq!(event.timestamp(), None);
        assert!(event.payload().is_empty());
    }

    #[test]
    fn json_decodes_the_payload() {
        let order: Order = sample().json().unwrap();
        assert_eq!(
            order,
            Order {
                order_id: "o-7".into(),
                amount: 3
            }
        );
    }

    #[test]
    fn json_failure_is_fatal_and_names_the_serde_error() {
        let error = Event::new("e", "t", b"not json".to_vec())
            .json::<Order>()
            .unwrap_err();
        assert!(error.is_fatal());
        assert!(
            error
                .message()
                .starts_with("undecodable payload: expected ident"),
            "{error}"
        );

        let error = Event::new("e", "t", br#"{"order_id":"o"}"#.to_vec())
            .json::<Order>()
            .unwrap_err();
        assert!(error.is_fatal());
        assert!(
            error.message().contains("missing field `amount`"),
            "{error}"
        );
    }

    #[test]
    fn converts_from_the_raw_record() {
        let raw = RawEvent {
            id: "e-9".into(),
            topic: "t".into(),
            partition: 1,
            offset: 2,
            key: Some(b"k".to_vec()),
            payload: b"p".to_vec(),
            headers: vec![("h".into(), b"v".to_vec())],
            timestamp_ms: Some(5),
            attempt: 3,
        };
        let event = Event::from(raw);
        assert_eq!(
            event,
            Event::new("e-9", "t", b"p".to_vec())
                .with_partition(1)
                .with_offset(2)
                .with_key("k")
                .with_header("h", "v")
                .with_timestamp_ms(5)
                .with_attempt(3)
        );
    }
}
