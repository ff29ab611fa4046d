//! What the worker works out from a record: the [`Event`] a handler sees, the record again
//! when it goes back to its partition's queue, whether it is `undecodable`, and the key the
//! ledger knows it by (its event id; for a replayed dead letter, the id and the replay).

use std::borrow::Cow;

use crate::config::{HandlerConfig, PayloadFormat};
use crate::dlq::{REPLAY_COUNT_HEADER, REPLAY_HANDLER_HEADER, REPLAY_ID_HEADER, last_header};
use crate::event::Event;
use crate::kafka::Record;

/// Whether `event` is a replay meant for another handler (one consuming the same topic that
/// dead-lettered it): this one already handled the original.
pub(super) fn replay_for_another(event: &Event, handler: &str) -> bool {
    last_header(&event.headers, REPLAY_HANDLER_HEADER)
        .is_some_and(|target| target != handler.as_bytes())
}

/// The event a record becomes: its parts move (a payload is copied once, into the guest's
/// memory).
pub(super) fn into_event(record: Record, attempt: u32) -> Event {
    let mut event = Event::from_record(
        record.topic,
        record.partition,
        record.offset,
        record.key,
        record.payload.unwrap_or_default(),
        record.headers,
        record.timestamp_ms,
    );
    event.attempt = attempt;
    event
}

/// The record an event was made from: the parts move back (a tombstone's payload is `None`
/// again). The event's id has been taken.
pub(super) fn into_record(event: Event, tombstone: bool) -> Record {
    let Event {
        topic,
        partition,
        offset,
        key,
        payload,
        headers,
        timestamp_ms,
        ..
    } = event;
    Record {
        topic,
        partition,
        offset,
        key,
        payload: (!tombstone).then_some(payload),
        headers,
        timestamp_ms,
    }
}

/// Why the host refuses to run the handler on this record, if it does (an over-long event id
/// or ledger key, a payload over `max_payload_bytes`, not JSON where the handler declares JSON).
pub fn undecodable(config: &HandlerConfig, event: &Event) -> Option<String> {
    let max_key = crate::ledger::MAX_KEY_PART_BYTES;
    if event.id.len() > max_key {
        return Some(format!(
            "event id is {} bytes, over the limit of {max_key} bytes",
            event.id.len(),
        ));
    }
    // A replay's ledger key is the event id and the replay: an id near the limit takes the key
    // over it, and a key the ledger refuses could never be recorded (the partition would stop).
    let key = ledger_key(&event.id, &event.headers);
    if key.len() > max_key {
        return Some(format!(
            "ledger key of this replay (event id and replay id) is {} bytes, over the limit of \
             {max_key} bytes",
            key.len(),
        ));
    }
    let max = config.max_payload_bytes;
    if event.payload.len() > max {
        return Some(format!(
            "payload is {} bytes, over the limit of {max} bytes",
            event.payload.len()
        ));
    }
    if config.payload == PayloadFormat::Json {
        // UTF-8 first: skipping a string, `IgnoredAny` does not check its bytes, so invalid
        // UTF-8 inside a JSON string would pass and reach a handler that declared JSON.
        let text = match std::str::from_utf8(&event.payload) {
            Ok(text) => text,
            Err(e) => return Some(format!("payload is not valid JSON: not UTF-8: {e}")),
        };
        if let Err(e) = serde_json::from_str::<serde::de::IgnoredAny>(text) {
            return Some(format!("payload is not valid JSON: {e}"));
        }
    }
    None
}

/// The ledger key of a record: its event id; for a replayed dead letter, the event id and the
/// replay (`kasm-replay-id`, else `kasm-replay-count`). The original is recorded as
/// dead-lettered, so under its plain id a replay would be skipped; under its own key it runs,
/// and a redelivery of that same replay is still deduplicated.
pub(super) fn ledger_key<'a>(event_id: &'a str, headers: &[(String, Vec<u8>)]) -> Cow<'a, str> {
    let header = |name: &str| {
        last_header(headers, name)
            .and_then(|v| std::str::from_utf8(v).ok())
            .map(str::trim)
            .filter(|v| !v.is_empty() && *v != "0")
    };
    match header(REPLAY_ID_HEADER).or_else(|| header(REPLAY_COUNT_HEADER)) {
        Some(replay) => Cow::Owned(format!("{event_id}\u{1f}replay-{replay}")),
        None => Cow::Borrowed(event_id),
    }
}

/// The key a record is looked up and recorded under: its [`ledger_key`], or, when that is
/// over the ledger's limit (an over-long event id, dead-lettered as undecodable), a digest of
/// it. Every record then has an entry the ledger takes, so a redelivered over-long one is
/// recognised like any other.
pub(super) fn stored_key<'a>(event_id: &'a str, headers: &[(String, Vec<u8>)]) -> Cow<'a, str> {
    let key = ledger_key(event_id, headers);
    if key.len() <= crate::ledger::MAX_KEY_PART_BYTES {
        return key;
    }
    use sha2::Digest as _;
    Cow::Owned(format!(
        "sha256:{}",
        hex::encode(sha2::Sha256::digest(key.as_bytes()))
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(id: &str, headers: Vec<(String, Vec<u8>)>) -> Event {
        let mut e = Event::from_record("t", 0, 7, None, b"{}".to_vec(), headers, None);
        e.id = id.to_owned();
        e
    }

    #[test]
    fn a_replay_whose_ledger_key_is_over_the_limit_is_refused_not_stuck() {
        let config: HandlerConfig =
            toml::from_str("component = \"x.wasm\"\ntopics = [\"t\"]").unwrap();
        let id = "e".repeat(crate::ledger::MAX_KEY_PART_BYTES - 10);
        assert_eq!(undecodable(&config, &event(&id, Vec::new())), None);
        let replay = vec![(REPLAY_ID_HEADER.to_owned(), b"0123456789abcdef".to_vec())];
        let reason = undecodable(&config, &event(&id, replay.clone())).unwrap();
        assert!(reason.contains("ledger key of this replay"), "{reason}");
        // The key the ledger would have been asked to take is the one measured.
        let key = ledger_key(&id, &replay);
        assert!(reason.contains(&key.len().to_string()), "{reason}");
        assert!(crate::ledger::check_key("h", &key).is_err());
        // A short id replays as before.
        assert_eq!(undecodable(&config, &event("short", replay)), None);
    }
}
