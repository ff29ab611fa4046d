//! What the worker works out from a record, once: the [`Event`] a handler sees (the record
//! inside it, untouched), whether it is `undecodable`, and the key the ledger knows it by (its
//! event id; for a replayed dead letter, the id and the replay).

use std::borrow::Cow;

use crate::config::{HandlerConfig, PayloadFormat};
use crate::dlq::{REPLAY_COUNT_HEADER, REPLAY_HANDLER_HEADER, REPLAY_ID_HEADER, last_header};
use crate::event::Event;

/// Whether `event` is a replay meant for another handler (one consuming the same topic that
/// dead-lettered it): this one already handled the original.
pub(super) fn replay_for_another(event: &Event, handler: &str) -> bool {
    event
        .header(REPLAY_HANDLER_HEADER)
        .is_some_and(|target| target != handler.as_bytes())
}

/// The event a record becomes for this handler: identified, and checked for JSON in the same
/// pass when the handler declares JSON payloads.
pub(super) fn event_for(
    config: &HandlerConfig,
    record: crate::kafka::Record,
    attempt: u32,
) -> Event {
    Event::new(record, attempt, config.payload == PayloadFormat::Json)
}

/// Why the host refuses to run the handler on this record, if it does (an over-long event id
/// or ledger key, a payload over `max_payload_bytes`, not JSON where the handler declares JSON).
/// `key` is the record's [`ledger_key`].
pub fn undecodable(config: &HandlerConfig, event: &Event, key: &str) -> Option<String> {
    let max_key = crate::ledger::MAX_KEY_PART_BYTES;
    if event.id.len() > max_key {
        return Some(format!(
            "event id is {} bytes, over the limit of {max_key} bytes",
            event.id.len(),
        ));
    }
    // A replay's ledger key is the event id and the replay: an id near the limit takes the key
    // over it, and a key the ledger refuses could never be recorded (the partition would stop).
    if key.len() > max_key {
        return Some(format!(
            "ledger key of this replay (event id and replay id) is {} bytes, over the limit of \
             {max_key} bytes",
            key.len(),
        ));
    }
    let max = config.max_payload_bytes;
    let size = event.payload().len();
    if size > max {
        return Some(format!(
            "payload is {size} bytes, over the limit of {max} bytes"
        ));
    }
    if config.payload == PayloadFormat::Json
        && let Some(why) = &event.not_json
    {
        return Some(format!("payload is not valid JSON: {why}"));
    }
    None
}

/// The ledger key of a record: its event id; for a replayed dead letter, the event id and the
/// replay (`kasm-replay-id`, else `kasm-replay-count`). The original is recorded as
/// dead-lettered, so under its plain id a replay would be skipped; under its own key it runs,
/// and a redelivery of that same replay is still deduplicated.
pub fn ledger_key<'a>(event_id: &'a str, headers: &[(String, Vec<u8>)]) -> Cow<'a, str> {
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
pub(super) fn stored_key(key: &str) -> String {
    if key.len() <= crate::ledger::MAX_KEY_PART_BYTES {
        return key.to_owned();
    }
    use sha2::Digest as _;
    format!(
        "sha256:{}",
        hex::encode(sha2::Sha256::digest(key.as_bytes()))
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(id: &str, headers: Vec<(String, Vec<u8>)>) -> Event {
        let mut e = Event::from_parts("t", 0, 7, None, b"{}".to_vec(), headers, None);
        e.id = id.to_owned();
        e
    }

    fn undecodable(config: &HandlerConfig, e: &Event) -> Option<String> {
        super::undecodable(config, e, &ledger_key(&e.id, &e.record.headers))
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
