//! A dead letter decoded for a listing: the `kasm-dlq-*` and replay-count headers read into
//! [`Provenance`], whatever bytes they hold (a header that does not parse stays visible as a
//! plain header), and a bounded preview of the payload.

use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::kafka::Record;

use super::{DLQ_HEADER_PREFIX, REPLAY_COUNT_HEADER};

/// Longest payload preview in a listing, in bytes of the returned text.
pub const PREVIEW_LIMIT: usize = 4 << 10;

/// One dead letter, decoded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DeadLetter {
    /// Partition of the dead-letter topic.
    pub partition: i32,
    /// Offset in that partition.
    pub offset: i64,
    /// The dead letter's timestamp (when it was written), ms since the Unix epoch.
    pub timestamp_ms: Option<i64>,
    /// Key, as UTF-8 (invalid bytes replaced).
    pub key: Option<String>,
    /// Payload preview: the text if the payload is UTF-8, else its bytes in hex; at most
    /// [`PREVIEW_LIMIT`] bytes of text.
    pub payload: String,
    /// How [`Self::payload`] shows the bytes.
    pub payload_encoding: PayloadEncoding,
    /// Whether the preview is shorter than the payload.
    pub payload_truncated: bool,
    /// Size of the whole payload, in bytes.
    pub payload_bytes: usize,
    /// The `kasm-dlq-*` headers.
    pub provenance: Provenance,
    /// Value of [`REPLAY_COUNT_HEADER`] (0 if absent).
    pub replay_count: u32,
    /// Every other header (the source record's own), in order, values as UTF-8 (invalid bytes
    /// replaced). A `kasm-dlq-*` or replay-count header whose value does not parse is kept here
    /// rather than dropped.
    pub headers: Vec<(String, String)>,
}

/// How a payload preview shows the bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum PayloadEncoding {
    /// The payload is UTF-8 text.
    Utf8,
    /// The payload is not UTF-8: lowercase hex, two characters per byte.
    Hex,
}

/// The `kasm-dlq-*` headers of a dead letter, decoded (each absent if the record lacks it).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Provenance {
    /// `kasm-dlq-source-topic`.
    pub source_topic: Option<String>,
    /// `kasm-dlq-source-partition`.
    pub source_partition: Option<i32>,
    /// `kasm-dlq-source-offset`.
    pub source_offset: Option<i64>,
    /// `kasm-dlq-source-timestamp`, ms since the Unix epoch.
    pub source_timestamp_ms: Option<i64>,
    /// `kasm-dlq-handler`.
    pub handler: Option<String>,
    /// `kasm-dlq-group`.
    pub group: Option<String>,
    /// `kasm-dlq-component` (sha256 of the component version).
    pub component: Option<String>,
    /// `kasm-dlq-event-id`.
    pub event_id: Option<String>,
    /// `kasm-dlq-error-kind`.
    pub error_kind: Option<String>,
    /// `kasm-dlq-error-message`.
    pub error_message: Option<String>,
    /// `kasm-dlq-attempts`.
    pub attempts: Option<u32>,
    /// `kasm-dlq-first-failure`, ms since the Unix epoch.
    pub first_failure_ms: Option<i64>,
    /// `kasm-dlq-last-failure`, ms since the Unix epoch.
    pub last_failure_ms: Option<i64>,
}

impl Provenance {
    /// Take header `kasm-dlq-{name}`; false if the name is unknown or the value does not parse.
    fn set(&mut self, name: &str, value: &str) -> bool {
        fn text(slot: &mut Option<String>, v: &str) -> bool {
            *slot = Some(v.to_owned());
            true
        }
        fn num<T: FromStr>(slot: &mut Option<T>, v: &str) -> bool {
            match v.trim().parse() {
                Ok(n) => {
                    *slot = Some(n);
                    true
                }
                Err(_) => false,
            }
        }
        match name {
            "source-topic" => text(&mut self.source_topic, value),
            "source-partition" => num(&mut self.source_partition, value),
            "source-offset" => num(&mut self.source_offset, value),
            "source-timestamp" => num(&mut self.source_timestamp_ms, value),
            "handler" => text(&mut self.handler, value),
            "group" => text(&mut self.group, value),
            "component" => text(&mut self.component, value),
            "event-id" => text(&mut self.event_id, value),
            "error-kind" => text(&mut self.error_kind, value),
            "error-message" => text(&mut self.error_message, value),
            "attempts" => num(&mut self.attempts, value),
            "first-failure" => num(&mut self.first_failure_ms, value),
            "last-failure" => num(&mut self.last_failure_ms, value),
            _ => false,
        }
    }
}

/// Decode a dead letter: the `kasm-dlq-*` and replay-count headers into [`Provenance`] and
/// [`DeadLetter::replay_count`] (kept as plain headers when they do not parse), a bounded
/// payload preview. Total: any bytes decode.
pub fn decode(r: &Record) -> DeadLetter {
    let mut provenance = Provenance::default();
    let mut replay_count = 0;
    let mut headers = Vec::new();
    for (k, v) in &r.headers {
        let value = String::from_utf8_lossy(v);
        let taken = if let Some(name) = k.strip_prefix(DLQ_HEADER_PREFIX) {
            provenance.set(name, &value)
        } else if k == REPLAY_COUNT_HEADER {
            value.trim().parse().map(|n| replay_count = n).is_ok()
        } else {
            false
        };
        if !taken {
            headers.push((k.clone(), value.into_owned()));
        }
    }
    let bytes = r.payload.as_deref().unwrap_or_default();
    let (payload, payload_encoding, payload_truncated) = preview(bytes);
    DeadLetter {
        partition: r.partition,
        offset: r.offset,
        timestamp_ms: r.timestamp_ms,
        key: r
            .key
            .as_deref()
            .map(|k| String::from_utf8_lossy(k).into_owned()),
        payload,
        payload_encoding,
        payload_truncated,
        payload_bytes: bytes.len(),
        provenance,
        replay_count,
        headers,
    }
}

/// At most [`PREVIEW_LIMIT`] bytes of text showing `bytes`, and whether some were left out.
fn preview(bytes: &[u8]) -> (String, PayloadEncoding, bool) {
    match std::str::from_utf8(bytes) {
        Ok(s) => {
            let mut end = s.len().min(PREVIEW_LIMIT);
            while !s.is_char_boundary(end) {
                end -= 1;
            }
            (s[..end].to_owned(), PayloadEncoding::Utf8, end < s.len())
        }
        Err(_) => {
            let n = bytes.len().min(PREVIEW_LIMIT / 2);
            (
                hex::encode(&bytes[..n]),
                PayloadEncoding::Hex,
                n < bytes.len(),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_keeps_unparsable_kasm_headers_visible() {
        let r = Record {
            topic: "dlq".to_owned(),
            partition: 0,
            offset: 0,
            timestamp_ms: None,
            key: None,
            payload: None,
            headers: vec![
                ("kasm-dlq-attempts".to_owned(), b"lots".to_vec()),
                ("kasm-dlq-new-thing".to_owned(), b"v".to_vec()),
                (REPLAY_COUNT_HEADER.to_owned(), b"4".to_vec()),
            ],
        };
        let d = decode(&r);
        assert_eq!(d.provenance.attempts, None);
        assert_eq!(d.replay_count, 4);
        assert_eq!(
            d.headers,
            vec![
                ("kasm-dlq-attempts".to_owned(), "lots".to_owned()),
                ("kasm-dlq-new-thing".to_owned(), "v".to_owned()),
            ]
        );
        assert_eq!((d.payload.as_str(), d.payload_bytes), ("", 0));
    }
}
