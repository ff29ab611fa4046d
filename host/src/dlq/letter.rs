//! Writing a dead letter: the source record's key, payload and headers unchanged, then the
//! `kasm-dlq-*` headers (see [`super`] for what each one says).

use crate::capabilities::log::truncate_utf8;
use crate::runtime::FailureKind;

use crate::kafka::Record;

use super::DLQ_HEADER_PREFIX;

/// Longest error message kept in a dead letter.
pub const MAX_ERROR_MESSAGE: usize = 8 << 10;

/// Why a record was dead-lettered (the `kasm-dlq-error-kind` vocabulary).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DlqKind {
    /// A `retryable` failure (or host-side failure) that did not clear within the policy.
    RetriesExhausted,
    /// A failure that retrying cannot fix.
    Failure(FailureKind),
}

impl DlqKind {
    /// The header value.
    pub fn as_str(self) -> &'static str {
        match self {
            DlqKind::RetriesExhausted => "retries-exhausted",
            DlqKind::Failure(k) => k.as_str(),
        }
    }
}

/// Everything a dead letter says about a failure.
#[derive(Debug, Clone)]
pub struct Failure {
    /// Kind.
    pub kind: DlqKind,
    /// Reason.
    pub message: String,
    /// Handler runs.
    pub attempts: u32,
    /// First failure, ms since the epoch.
    pub first_failure_ms: i64,
    /// Last failure, ms since the epoch.
    pub last_failure_ms: i64,
}

/// Provenance of the handler that failed a record.
#[derive(Debug, Clone, Copy)]
pub struct Provenance<'a> {
    /// Handler name.
    pub handler: &'a str,
    /// Consumer group.
    pub group: &'a str,
    /// Component sha256.
    pub component: &'a str,
    /// Event id.
    pub event_id: &'a str,
}

/// The headers of the dead letter for `record`: its own, then the `kasm-dlq-*` ones.
pub fn headers(record: &Record, p: Provenance<'_>, f: &Failure) -> Vec<(String, Vec<u8>)> {
    let mut h: Vec<(String, Vec<u8>)> = record
        .headers
        .iter()
        .filter(|(k, _)| !k.starts_with(DLQ_HEADER_PREFIX))
        .cloned()
        .collect();
    let mut add = |k: &str, v: String| h.push((format!("{DLQ_HEADER_PREFIX}{k}"), v.into_bytes()));
    add("source-topic", record.topic.clone());
    add("source-partition", record.partition.to_string());
    add("source-offset", record.offset.to_string());
    if let Some(ts) = record.timestamp_ms {
        add("source-timestamp", ts.to_string());
    }
    add("handler", p.handler.to_owned());
    add("group", p.group.to_owned());
    add("component", p.component.to_owned());
    add("event-id", p.event_id.to_owned());
    add("attempts", f.attempts.to_string());
    add("error-kind", f.kind.as_str().to_owned());
    // At most MAX_ERROR_MESSAGE bytes, the `…` that marks a cut included.
    add(
        "error-message",
        truncate_utf8(f.message.clone(), MAX_ERROR_MESSAGE - '…'.len_utf8()),
    );
    add("first-failure", f.first_failure_ms.to_string());
    add("last-failure", f.last_failure_ms.to_string());
    h
}
