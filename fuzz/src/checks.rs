//! What each fuzz target checks. Every function takes the raw fuzz input, never panics on its
//! own account, and asserts a property of kasm's code (an `assert!` failing, or kasm
//! panicking, is a finding).
//!
//! This file is compiled twice: into the fuzz crate (`fuzz/src/lib.rs`) and into the
//! regression test `tests/all/fuzz_regressions.rs`, which replays every file under
//! `fuzz/regressions/<target>/` through the function of the same name.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use kasm_host::config::{Config, HandlerConfig, PayloadFormat};
use kasm_host::dlq::decode::{self, PREVIEW_LIMIT};
use kasm_host::dlq::letter::{self as dlq, DlqKind, Failure, MAX_ERROR_MESSAGE};
use kasm_host::dlq::{DLQ_HEADER_PREFIX, REPLAY_COUNT_HEADER};
use kasm_host::event::{EVENT_ID_HEADER, Event, identify_event_id};
use kasm_host::kafka::Record;
use kasm_host::runtime::FailureKind;

/// Reads structured values off the front of a fuzz input; past its end everything is zero or
/// empty, so every input is some valid value.
struct Input<'a> {
    data: &'a [u8],
}

impl<'a> Input<'a> {
    fn new(data: &'a [u8]) -> Self {
        Self { data }
    }

    fn take(&mut self, n: usize) -> &'a [u8] {
        let n = n.min(self.data.len());
        let (head, tail) = self.data.split_at(n);
        self.data = tail;
        head
    }

    fn u8(&mut self) -> u8 {
        self.take(1).first().copied().unwrap_or(0)
    }

    fn array<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        let got = self.take(N);
        out[..got.len()].copy_from_slice(got);
        out
    }

    fn u16(&mut self) -> u16 {
        u16::from_le_bytes(self.array())
    }

    fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.array())
    }

    fn i32(&mut self) -> i32 {
        i32::from_le_bytes(self.array())
    }

    fn i64(&mut self) -> i64 {
        i64::from_le_bytes(self.array())
    }

    /// Up to 255 bytes, length-prefixed.
    fn bytes(&mut self) -> Vec<u8> {
        let n = usize::from(self.u8());
        self.take(n).to_vec()
    }

    /// Up to 255 bytes as text (invalid UTF-8 replaced, as Kafka header names are strings).
    fn string(&mut self) -> String {
        String::from_utf8_lossy(&self.bytes()).into_owned()
    }

    fn rest(&mut self) -> &'a [u8] {
        let n = self.data.len();
        self.take(n)
    }
}

/// Header names worth hitting often: the ones kasm reads.
const KNOWN_HEADERS: [&str; 16] = [
    EVENT_ID_HEADER,
    REPLAY_COUNT_HEADER,
    "kasm-replay-id",
    "kasm-replay-handler",
    "kasm-dlq-source-topic",
    "kasm-dlq-source-partition",
    "kasm-dlq-source-offset",
    "kasm-dlq-source-timestamp",
    "kasm-dlq-handler",
    "kasm-dlq-group",
    "kasm-dlq-component",
    "kasm-dlq-event-id",
    "kasm-dlq-error-kind",
    "kasm-dlq-error-message",
    "kasm-dlq-attempts",
    "kasm-dlq-first-failure",
];

fn headers(u: &mut Input<'_>) -> Vec<(String, Vec<u8>)> {
    let n = u.u8() % 12;
    (0..n)
        .map(|_| {
            let sel = u.u8();
            let name = if sel < 160 {
                KNOWN_HEADERS[usize::from(sel) % KNOWN_HEADERS.len()].to_owned()
            } else {
                u.string()
            };
            (name, u.bytes())
        })
        .collect()
}

/// One handler's configuration, as `kasm.toml` gives it by default.
fn handler_config() -> &'static HandlerConfig {
    static CONFIG: OnceLock<HandlerConfig> = OnceLock::new();
    CONFIG.get_or_init(|| {
        let text = "[handlers.h]\ncomponent = \"h.wasm\"\ntopics = [\"t\"]\n";
        let mut config = Config::parse(text, "fuzz.toml").expect("the base config parses");
        config
            .handlers
            .remove("h")
            .expect("the base config has handler h")
    })
}

/// Record decoding as a partition worker does it: the event id rule and the refusals
/// (`undecodable`: id too long, payload over the limit, not JSON where JSON is declared).
pub fn record(data: &[u8]) {
    let mut u = Input::new(data);
    let flags = u.u8();
    let topic = u.string();
    let partition = u.i32();
    let offset = u.i64();
    let key = (flags & 1 == 1).then(|| u.bytes());
    let timestamp_ms = (flags & 2 == 2).then(|| u.i64());
    let headers = headers(&mut u);
    let max_payload_bytes = usize::from(u.u16()).max(1);
    let payload = u.rest().to_vec();

    let mut config = handler_config().clone();
    config.max_payload_bytes = max_payload_bytes;
    config.payload = if flags & 4 == 4 {
        PayloadFormat::Json
    } else {
        PayloadFormat::Bytes
    };
    let record = Record {
        topic: topic.clone(),
        partition,
        offset,
        key: key.clone(),
        payload: Some(payload.clone()),
        headers: headers.clone(),
        timestamp_ms,
    };
    let event = Event::new(record, 1, config.payload == PayloadFormat::Json);
    assert!(!event.id.is_empty(), "an event always has an id");
    assert_eq!(
        event.id,
        identify_event_id(&topic, partition, offset, &payload, &headers),
        "the id is a function of the record"
    );
    assert_eq!(event.payload(), payload);
    assert_eq!(event.record.headers, headers);
    assert_eq!(event.record.key, key);
    // The rule: the last `event-id` header if it is non-blank UTF-8 (the last of a name
    // counts, for every header), else a non-blank JSON string field `event_id`, else the
    // coordinates.
    let header = headers
        .iter()
        .rev()
        .find(|(k, _)| k == EVENT_ID_HEADER)
        .and_then(|(_, v)| std::str::from_utf8(v).ok())
        .map(str::trim)
        .filter(|s| !s.is_empty());
    let coordinates = format!("{topic}/{partition}/{offset}");
    match header {
        Some(h) => assert_eq!(event.id, h),
        None if event.id != coordinates => {
            assert!(is_json(&payload), "an id from the payload means JSON");
            if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&payload) {
                assert_eq!(
                    v.get("event_id").and_then(|f| f.as_str()).map(str::trim),
                    Some(event.id.as_str())
                );
            }
        }
        None => {}
    }

    let key = kasm_host::pipeline::record::ledger_key(&event.id, &event.record.headers);
    let refused = kasm_host::pipeline::record::undecodable(&config, &event, &key);
    let too_long_id = event.id.len() > kasm_host::ledger::MAX_KEY_PART_BYTES;
    let too_big = payload.len() > max_payload_bytes;
    let not_json = config.payload == PayloadFormat::Json && !is_json(&payload);
    assert_eq!(
        refused.is_some(),
        too_long_id || too_big || not_json,
        "refused: {refused:?}"
    );
}

/// JSON text (RFC 8259): UTF-8 that parses. A number too large for an f64 is still JSON (the
/// RFC lets a reader limit the range; kasm's check is about the text, not a reader's limits).
fn is_json(bytes: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(bytes) else {
        return false;
    };
    match serde_json::from_str::<serde_json::Value>(text) {
        Ok(_) => true,
        Err(e) if e.to_string().starts_with("number out of range") => {
            serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok()
        }
        Err(_) => false,
    }
}

fn failure_kind(b: u8) -> DlqKind {
    match b % 7 {
        0 => DlqKind::RetriesExhausted,
        1 => DlqKind::Failure(FailureKind::Fatal),
        2 => DlqKind::Failure(FailureKind::Trap),
        3 => DlqKind::Failure(FailureKind::Timeout),
        4 => DlqKind::Failure(FailureKind::OutOfMemory),
        5 => DlqKind::Failure(FailureKind::Undecodable),
        _ => DlqKind::Failure(FailureKind::Retryable),
    }
}

/// The dead-letter header parser: any record decodes, and what kasm writes into a dead
/// letter reads back as it was written.
pub fn dlq_headers(data: &[u8]) {
    let mut u = Input::new(data);
    let flags = u.u8();

    // 1. Any record read from a dead-letter topic decodes, keeping every header it did not
    // take, with a bounded preview.
    let raw = Record {
        topic: "dlq".to_owned(),
        partition: u.i32(),
        offset: u.i64(),
        timestamp_ms: (flags & 1 == 1).then(|| u.i64()),
        key: (flags & 2 == 2).then(|| u.bytes()),
        headers: headers(&mut u),
        payload: (flags & 4 == 4).then(|| u.bytes().repeat(usize::from(u.u8()))),
    };
    let d = decode::decode(&raw);
    let payload = raw.payload.clone().unwrap_or_default();
    assert_eq!(d.payload_bytes, payload.len());
    assert!(d.payload.len() <= 2 * PREVIEW_LIMIT, "preview is bounded");
    assert!(d.headers.len() <= raw.headers.len());
    for (k, _) in &d.headers {
        assert!(raw.headers.iter().any(|(r, _)| r == k));
    }

    // 2. What kasm writes reads back.
    let record = Record {
        topic: u.string(),
        partition: u.i32(),
        offset: u.i64(),
        key: (flags & 8 == 8).then(|| u.bytes()),
        payload: (flags & 16 == 16).then(|| u.bytes()),
        headers: headers(&mut u),
        timestamp_ms: (flags & 32 == 32).then(|| u.i64()),
    };
    let (handler, group, component, event_id) = (u.string(), u.string(), u.string(), u.string());
    let failure = Failure {
        kind: failure_kind(u.u8()),
        attempts: u.u32(),
        first_failure_ms: u.i64(),
        last_failure_ms: u.i64(),
        message: {
            let piece = u.string();
            piece.repeat(usize::from(u.u8()) * 4)
        },
    };
    let written = dlq::headers(
        &record,
        dlq::Provenance {
            handler: &handler,
            group: &group,
            component: &component,
            event_id: &event_id,
        },
        &failure,
    );
    let back = decode::decode(&Record {
        topic: "dlq".to_owned(),
        partition: 0,
        offset: 0,
        timestamp_ms: None,
        key: record.key.clone(),
        payload: record.payload.clone(),
        headers: written,
    });
    let p = &back.provenance;
    assert_eq!(p.source_topic.as_deref(), Some(record.topic.as_str()));
    assert_eq!(p.source_partition, Some(record.partition));
    assert_eq!(p.source_offset, Some(record.offset));
    assert_eq!(p.source_timestamp_ms, record.timestamp_ms);
    assert_eq!(p.handler.as_deref(), Some(handler.as_str()));
    assert_eq!(p.group.as_deref(), Some(group.as_str()));
    assert_eq!(p.component.as_deref(), Some(component.as_str()));
    assert_eq!(p.event_id.as_deref(), Some(event_id.as_str()));
    assert_eq!(p.error_kind.as_deref(), Some(failure.kind.as_str()));
    assert_eq!(p.attempts, Some(failure.attempts));
    assert_eq!(p.first_failure_ms, Some(failure.first_failure_ms));
    assert_eq!(p.last_failure_ms, Some(failure.last_failure_ms));
    let message = p.error_message.as_deref().unwrap_or_default();
    assert!(
        message.len() <= MAX_ERROR_MESSAGE,
        "{} bytes",
        message.len()
    );
    if message != failure.message {
        let kept = message
            .strip_suffix('…')
            .expect("a cut message ends with the marker");
        assert!(failure.message.starts_with(kept));
    }
    // The source record's own headers are kept (its old `kasm-dlq-*` ones replaced).
    let own: Vec<&(String, Vec<u8>)> = record
        .headers
        .iter()
        .filter(|(k, _)| !k.starts_with(DLQ_HEADER_PREFIX))
        .collect();
    for (k, v) in &back.headers {
        assert!(
            own.iter()
                .any(|(ok, ov)| ok == k && String::from_utf8_lossy(ov) == v.as_str()),
            "header {k:?} was not in the source record"
        );
    }
}

/// `kasm.toml`: parsing never panics, an error names the file, and a configuration that
/// validates can be used (backoff waits, client properties, group ids, dead-letter topics).
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut config = match Config::parse(text, "fuzz.toml") {
        Ok(c) => c,
        Err(e) => {
            let shown = e.to_string();
            assert!(shown.contains("fuzz.toml"), "{shown}");
            return;
        }
    };
    // What `Config::load` does with paths: the component must exist to validate.
    let component = component_file();
    for h in config.handlers.values_mut() {
        h.component = component.clone();
    }
    if let Err(e) = config.validate() {
        assert!(!e.0.is_empty());
        let _ = e.to_string();
        return;
    }
    let _ = config.kafka_properties();
    for (name, h) in &config.handlers {
        let _ = h.group_id(name);
        for t in &h.topics {
            assert!(kasm_host::config::valid_topic(&h.dlq_topic_for(t)) || h.dlq_topic.is_none());
        }
        let _ = kasm_host::capabilities::Grants::of_config(&h.grants);
        let r = &h.retry;
        for attempt in [1, 2, 3, r.attempts, r.attempts.saturating_add(1), u32::MAX] {
            for unit in [0.0, 0.5, 0.999_999] {
                let wait = r.backoff(attempt, unit);
                assert!(wait <= r.max_backoff, "{wait:?} > {:?}", r.max_backoff);
            }
        }
    }
}

fn component_file() -> std::path::PathBuf {
    static FILE: OnceLock<std::path::PathBuf> = OnceLock::new();
    FILE.get_or_init(|| {
        let path = std::env::temp_dir().join(format!("kasm-fuzz-{}.wasm", std::process::id()));
        std::fs::write(&path, b"\0asm").expect("writing a component placeholder");
        path
    })
    .clone()
}

/// The admin API's request parsing, through the extractors axum uses: the replay body, the
/// publish body (and the record it prepares), the dead-letter listing query and its cursor,
/// and `kasm produce`'s input. A refusal is an `Err` with a reason, never a panic.
pub fn admin_bodies(data: &[u8]) {
    use axum::Json;
    use axum::extract::Query;
    use kasm_host::admin::requests::{DlqQuery, EventBody, Object, ReplayBody, ReplayRequest};

    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    match sel % 4 {
        0 => {
            if let Ok(Json(Object(body))) = Json::<Object<ReplayBody>>::from_bytes(rest) {
                match body.request() {
                    Ok(ReplayRequest::All) => assert!(body.all && body.records.is_empty()),
                    Ok(ReplayRequest::Records(r)) => assert_eq!(r.len(), body.records.len()),
                    Err(e) => assert!(!e.is_empty()),
                }
            }
        }
        1 => {
            // The path segment first (up to the first newline), then the body.
            let split = rest.iter().position(|&b| b == b'\n').unwrap_or(0);
            let topic = String::from_utf8_lossy(&rest[..split]).into_owned();
            let body = &rest[(split + 1).min(rest.len())..];
            if let Ok(Json(Object(body))) = Json::<Object<EventBody>>::from_bytes(body) {
                let given_id = body
                    .headers
                    .get(EVENT_ID_HEADER)
                    .filter(|s| !s.trim().is_empty())
                    .cloned();
                if let Ok(p) = body.prepare(&topic) {
                    assert!(kasm_host::config::valid_topic(&topic));
                    if let Some(id) = given_id {
                        assert_eq!(p.event_id, id);
                    }
                    assert!(!p.event_id.is_empty());
                    let ids: Vec<_> = p
                        .headers
                        .iter()
                        .filter(|(k, _)| k == EVENT_ID_HEADER)
                        .collect();
                    assert_eq!(ids.len(), 1, "exactly one event-id header");
                    assert_eq!(ids[0].1, p.event_id.as_bytes());
                    let v: serde_json::Value =
                        serde_json::from_slice(&p.payload).expect("the record value is JSON");
                    let _ = v;
                }
            }
        }
        2 => {
            let query = String::from_utf8_lossy(rest);
            let Ok(uri) = format!("/v1/handlers/h/dlq?{query}").parse::<axum::http::Uri>() else {
                return;
            };
            if let Ok(Query(q)) = Query::<DlqQuery>::try_from_uri(&uri)
                && let Ok(Some(c)) = q.cursor()
            {
                // The cursor's text form reads back as the same cursor.
                let again: kasm_host::dlq::list::Cursor =
                    c.to_string().parse().expect("a cursor's text parses");
                assert_eq!(again, c);
            }
        }
        _ => {
            let text = String::from_utf8_lossy(rest);
            if let Ok(events) = kasm_host::kafka::produce::parse_events(&text) {
                for e in events {
                    let _ = kasm_host::kafka::produce::prepare(e, None, BTreeMap::new());
                }
            }
        }
    }
}
