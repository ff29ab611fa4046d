//! Publishing an event the way a producing service should, shared by `kasm produce` and
//! `POST /v1/topics/{topic}/events`: `acks=all`, idempotent, an `event-id` on every record,
//! the key chosen so that one user's events stay in order, and an answer only once the
//! broker acknowledged the write.

use std::collections::BTreeMap;

use crate::event::EVENT_ID_HEADER;
use crate::kafka::producer::{Delivered, KafkaProducer, OutRecord};

/// An event ready to be written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prepared {
    /// Its id: the `event-id` header given, else the event's `event_id` field, else a new
    /// UUID (then also written into the event as `event_id`).
    pub event_id: String,
    /// The record key: the key given, else the event's `user_id` field (a user's events keep
    /// their order), else none.
    pub key: Option<Vec<u8>>,
    /// The record value (the event as JSON).
    pub payload: Vec<u8>,
    /// Headers, `event-id` included.
    pub headers: Vec<(String, Vec<u8>)>,
}

/// Prepare `event` with an optional `key` and extra `headers`.
pub fn prepare(
    mut event: serde_json::Value,
    key: Option<String>,
    headers: BTreeMap<String, String>,
) -> Result<Prepared, serde_json::Error> {
    let field = |name: &str| {
        event
            .get(name)
            .and_then(|v| v.as_str())
            .filter(|s| !s.trim().is_empty())
            .map(str::to_owned)
    };
    let event_id = headers
        .get(EVENT_ID_HEADER)
        .filter(|id| !id.trim().is_empty())
        .cloned()
        .or_else(|| field("event_id"))
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let key = key.or_else(|| field("user_id")).map(String::into_bytes);
    if let Some(obj) = event.as_object_mut() {
        obj.entry("event_id")
            .or_insert_with(|| serde_json::Value::String(event_id.clone()));
    }
    let payload = serde_json::to_vec(&event)?;
    let mut headers: Vec<(String, Vec<u8>)> = headers
        .into_iter()
        .filter(|(k, _)| k != EVENT_ID_HEADER)
        .map(|(k, v)| (k, v.into_bytes()))
        .collect();
    headers.push((EVENT_ID_HEADER.to_owned(), event_id.clone().into_bytes()));
    Ok(Prepared {
        event_id,
        key,
        payload,
        headers,
    })
}

/// Write `p` to `topic` and wait for the acknowledgement.
pub async fn send(
    producer: &KafkaProducer,
    topic: &str,
    p: &Prepared,
) -> anyhow::Result<Delivered> {
    producer
        .send(OutRecord {
            topic,
            key: p.key.as_deref(),
            payload: &p.payload,
            headers: &p.headers,
            partition: None,
        })
        .await
}

/// The events in `text`: one JSON value, or one per line (JSON lines; blank lines skipped).
pub fn parse_events(text: &str) -> Result<Vec<serde_json::Value>, String> {
    if let Ok(v) = serde_json::from_str::<serde_json::Value>(text) {
        return Ok(vec![v]);
    }
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| serde_json::from_str(l).map_err(|e| format!("line {}: not JSON: {e}", i + 1)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_id_comes_from_the_header_then_the_field_then_a_new_uuid() {
        let h = BTreeMap::from([(EVENT_ID_HEADER.to_owned(), "from-header".to_owned())]);
        let p = prepare(serde_json::json!({"event_id": "from-field"}), None, h).unwrap();
        assert_eq!(p.event_id, "from-header");
        let p = prepare(
            serde_json::json!({"event_id": "from-field"}),
            None,
            BTreeMap::new(),
        )
        .unwrap();
        assert_eq!(p.event_id, "from-field");
        let p = prepare(serde_json::json!({"user_id": "u1"}), None, BTreeMap::new()).unwrap();
        assert!(uuid::Uuid::parse_str(&p.event_id).is_ok());
        let v: serde_json::Value = serde_json::from_slice(&p.payload).unwrap();
        assert_eq!(
            v["event_id"],
            p.event_id.as_str(),
            "written into the event too"
        );
        assert!(
            p.headers
                .contains(&(EVENT_ID_HEADER.to_owned(), p.event_id.clone().into_bytes()))
        );
    }

    #[test]
    fn the_key_is_the_user_unless_given() {
        let e = serde_json::json!({"user_id": "u7"});
        let p = prepare(e.clone(), None, BTreeMap::new()).unwrap();
        assert_eq!(p.key.as_deref(), Some(&b"u7"[..]));
        let p = prepare(e, Some("k".into()), BTreeMap::new()).unwrap();
        assert_eq!(p.key.as_deref(), Some(&b"k"[..]));
        let p = prepare(serde_json::json!([1]), None, BTreeMap::new()).unwrap();
        assert_eq!(p.key, None);
    }

    #[test]
    fn one_value_or_json_lines() {
        assert_eq!(parse_events("{\"a\":\n 1}").unwrap().len(), 1);
        assert_eq!(parse_events("{\"a\":1}\n\n{\"a\":2}\n").unwrap().len(), 2);
        let e = parse_events("{\"a\":1}\n{oops}\n").unwrap_err();
        assert!(e.contains("line 2"), "{e}");
    }
}
