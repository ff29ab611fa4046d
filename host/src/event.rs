//! A Kafka record as the host owns it, and the [`Event`] it becomes before a handler sees it.
//!
//! The one decision made here is the record's identity. An event id is what deduplication,
//! retries, dead-lettering and the ids of a handler's own outputs all hang on, so it must be
//! the same every time the same record is delivered:
//!
//! 1. the header `event-id`, when present and valid UTF-8;
//! 2. else the top-level JSON string field `event_id` of the payload;
//! 3. else `<topic>/<partition>/<offset>`, which is stable for one record but means two
//!    copies of the same business event at different offsets are *not* deduplicated.
//!
//! One header rule holds for every header kasm reads: when a name repeats, the last one
//! counts ([`last_header`]); a header appended later (a replay's, a dead letter's) overrides
//! one the record already had.
//!
//! The payload is read at most once: the pass that looks for `event_id` is the pass that
//! checks the payload is JSON, for a handler that declares JSON payloads.

/// The header that carries an event's id.
pub const EVENT_ID_HEADER: &str = "event-id";

/// A consumed record, detached from the consumer (see `kafka::Record::from_message`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Record {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
    /// Key.
    pub key: Option<Vec<u8>>,
    /// Value (`None` for a tombstone).
    pub payload: Option<Vec<u8>>,
    /// Headers, in producer order.
    pub headers: Vec<(String, Vec<u8>)>,
    /// Timestamp, ms since the epoch.
    pub timestamp_ms: Option<i64>,
}

impl Record {
    /// Bytes of key, payload and headers (what holding the record costs, roughly).
    pub fn size(&self) -> usize {
        self.key.as_ref().map_or(0, Vec::len)
            + self.payload.as_ref().map_or(0, Vec::len)
            + self
                .headers
                .iter()
                .map(|(k, v)| k.len() + v.len())
                .sum::<usize>()
    }

    /// The value's bytes (none for a tombstone).
    pub fn payload(&self) -> &[u8] {
        self.payload.as_deref().unwrap_or_default()
    }

    /// The value of the last header named `name` (see [`last_header`]).
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        last_header(&self.headers, name)
    }
}

/// The value of the last header named `key`: the rule for every header kasm reads.
pub fn last_header<'a>(headers: &'a [(String, Vec<u8>)], key: &str) -> Option<&'a [u8]> {
    headers
        .iter()
        .rev()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_slice())
}

/// One record as a handler receives it (the WIT `event` record, host side): the record itself,
/// untouched, with the identity worked out once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// The event id (see the module docs for how it is chosen).
    pub id: String,
    /// The record, as consumed.
    pub record: Record,
    /// 1 on first delivery, incremented on every retry.
    pub attempt: u32,
    /// Why the payload is not JSON, when the event was asked to be JSON and is not.
    pub not_json: Option<String>,
}

impl Event {
    /// The event `record` becomes on its `attempt`; `json`: the handler declares JSON
    /// payloads, so whether the payload is JSON is found out in the same pass that looks
    /// for its `event_id` (see [`Event::not_json`]).
    pub fn new(record: Record, attempt: u32, json: bool) -> Self {
        let (id, not_json) = identify(&record, json);
        Self {
            id,
            record,
            attempt,
            not_json,
        }
    }

    /// An event from record parts, with a payload (not a tombstone), on its first attempt:
    /// for `kasm invoke` and tests.
    pub fn from_parts(
        topic: impl Into<String>,
        partition: i32,
        offset: i64,
        key: Option<Vec<u8>>,
        payload: Vec<u8>,
        headers: Vec<(String, Vec<u8>)>,
        timestamp_ms: Option<i64>,
    ) -> Self {
        Self::new(
            Record {
                topic: topic.into(),
                partition,
                offset,
                key,
                payload: Some(payload),
                headers,
                timestamp_ms,
            },
            1,
            false,
        )
    }

    /// The payload's bytes (empty for a tombstone).
    pub fn payload(&self) -> &[u8] {
        self.record.payload()
    }

    /// The value of the last header named `name` (see [`last_header`]).
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.record.header(name)
    }
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
    choose_id(topic, partition, offset, payload, headers, false).0
}

/// A record's id, and why its payload is not JSON when `json` asks.
fn identify(r: &Record, json: bool) -> (String, Option<String>) {
    choose_id(
        &r.topic,
        r.partition,
        r.offset,
        r.payload(),
        &r.headers,
        json,
    )
}

fn choose_id(
    topic: &str,
    partition: i32,
    offset: i64,
    payload: &[u8],
    headers: &[(String, Vec<u8>)],
    json: bool,
) -> (String, Option<String>) {
    let from_header = last_header(headers, EVENT_ID_HEADER)
        .and_then(|v| std::str::from_utf8(v).ok())
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned);
    // The one pass over the payload, when anything needs it: the JSON check, or the id (no
    // header gave one, and the payload may be a JSON object).
    let looks_like_object = payload
        .first()
        .is_some_and(|b| *b == b'{' || b.is_ascii_whitespace());
    let (from_payload, not_json) = if json || (from_header.is_none() && looks_like_object) {
        scan_json(payload)
    } else {
        (None, None)
    };
    let id = from_header
        .or(from_payload)
        .unwrap_or_else(|| format!("{topic}/{partition}/{offset}"));
    (id, not_json.filter(|_| json))
}

/// One pass over a payload: its top-level `event_id` when it is a JSON object with exactly
/// one such field holding a non-blank string (trimmed), and why it is not JSON, if it is not.
/// Values are skipped, not converted: a number too large for an `f64` is still JSON.
fn scan_json(payload: &[u8]) -> (Option<String>, Option<String>) {
    use serde::de::Deserializer as _;
    // UTF-8 first: skipping a string, serde does not check its bytes, so invalid UTF-8 inside
    // a JSON string would pass for JSON.
    let text = match std::str::from_utf8(payload) {
        Ok(text) => text,
        Err(e) => return (None, Some(format!("not UTF-8: {e}"))),
    };
    let object = text.trim_start().starts_with('{');
    let mut de = serde_json::Deserializer::from_str(text);
    let scanned = if object {
        de.deserialize_map(IdScan)
    } else {
        de.deserialize_ignored_any(serde::de::IgnoredAny)
            .map(|_| None)
    };
    match scanned.and_then(|id| de.end().map(|()| id)) {
        Ok(id) => (
            id.as_deref()
                .map(str::trim)
                .filter(|id| !id.is_empty())
                .map(str::to_owned),
            None,
        ),
        Err(e) => (None, Some(e.to_string())),
    }
}

/// Visits a top-level object, keeping its `event_id` string. An `event_id` that is not a
/// string, or one given twice, yields no id.
struct IdScan;

impl<'de> serde::de::Visitor<'de> for IdScan {
    type Value = Option<String>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut id: Option<Option<String>> = None;
        let mut twice = false;
        while let Some(is_id) = map.next_key_seed(IsEventId)? {
            if is_id {
                // Taken raw (checked, not converted), then read only if it is a string.
                let raw: &serde_json::value::RawValue = map.next_value()?;
                twice |= id.is_some();
                id = Some(serde_json::from_str::<String>(raw.get()).ok());
            } else {
                map.next_value::<serde::de::IgnoredAny>()?;
            }
        }
        Ok(if twice { None } else { id.flatten() })
    }
}

/// A key of the top-level object: whether it is `event_id` (decoded, so an escaped spelling
/// counts), without allocating it.
struct IsEventId;

impl<'de> serde::de::DeserializeSeed<'de> for IsEventId {
    type Value = bool;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<bool, D::Error> {
        d.deserialize_str(self)
    }
}

impl serde::de::Visitor<'_> for IsEventId {
    type Value = bool;
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("an object key")
    }
    fn visit_str<E>(self, key: &str) -> Result<bool, E> {
        Ok(key == "event_id")
    }
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
    fn the_payload_is_read_once_for_the_id_and_the_json_check() {
        let record = |payload: &[u8]| Record {
            topic: "t".into(),
            payload: Some(payload.to_vec()),
            ..Record::default()
        };
        let e = Event::new(
            record(br#"{"a":[1,{"event_id":"inner"}],"event_id":"p-1"}"#),
            1,
            true,
        );
        assert_eq!((e.id.as_str(), e.not_json), ("p-1", None));
        // Valid JSON without an object id: coordinates, and no complaint.
        for ok in [
            &b"[1,2]"[..],
            b" 5 ",
            b"1e400",
            br#"{"event_id":1e400,"n":[1e400]}"#,
            br#"{"event_id":1}"#,
            br#"{"event_id":"a","event_id":"b"}"#,
        ] {
            let e = Event::new(record(ok), 1, true);
            assert_eq!((e.id.as_str(), e.not_json), ("t/0/0", None), "{ok:?}");
        }
        // Not JSON: the reason, only when JSON was asked for.
        let e = Event::new(record(br#"{"event_id":"p-1""#), 1, true);
        assert!(
            e.not_json.as_deref().is_some_and(|r| r.contains("EOF")),
            "{e:?}"
        );
        assert_eq!(e.id, "t/0/0");
        assert!(
            Event::new(record(br#"{"x":1} trailing"#), 1, true)
                .not_json
                .is_some()
        );
        assert!(
            Event::new(record(b"\"\xff\""), 1, true)
                .not_json
                .unwrap()
                .contains("UTF-8")
        );
        assert_eq!(Event::new(record(b"not json"), 1, false).not_json, None);
        // A tombstone is an empty payload: not JSON.
        let tombstone = Record {
            payload: None,
            ..record(b"")
        };
        assert!(Event::new(tombstone, 1, true).not_json.is_some());
        // The last `event-id` header counts, as every header.
        let mut r = record(b"{}");
        r.headers = vec![
            ("event-id".into(), b"first".to_vec()),
            ("event-id".into(), b"last".to_vec()),
        ];
        assert_eq!(Event::new(r, 1, true).id, "last");
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
