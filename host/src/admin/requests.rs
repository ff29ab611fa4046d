//! What the admin API accepts: the request bodies and queries of `/v1`, and the checks that
//! turn them into work, kept apart from the routes so that they are total functions of the
//! request bytes. The fuzz target `admin_bodies` (see `fuzz/`) drives them with arbitrary
//! input through the same extractor axum uses, and every input it ever found interesting is
//! replayed by a unit test; a refused request is always a 4xx with a reason, never a panic.

use std::collections::BTreeMap;

use crate::pipeline::replay::Cursor;
use crate::produce::Prepared;

/// Query of `GET /v1/handlers/{name}/dlq`.
#[derive(Debug, serde::Deserialize)]
pub struct DlqQuery {
    /// Page size (default 50).
    pub limit: Option<usize>,
    /// Cursor from the previous page's `next`.
    pub from: Option<String>,
    /// Which source topic's dead-letter topic (default: the handler's first topic).
    pub topic: Option<String>,
}

impl DlqQuery {
    /// The cursor to start from: none for an absent or empty `from`, else `from` parsed.
    pub fn cursor(&self) -> Result<Option<Cursor>, String> {
        match self.from.as_deref().filter(|f| !f.is_empty()) {
            Some(f) => f.parse::<Cursor>().map(Some).map_err(|e| format!("{e:#}")),
            None => Ok(None),
        }
    }
}

/// Body of `POST /v1/handlers/{name}/dlq/replay`.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplayBody {
    /// Replay every dead letter.
    #[serde(default)]
    pub all: bool,
    /// Or these positions of the dead-letter topic.
    #[serde(default)]
    pub records: Vec<ReplayPosition>,
    /// Which source topic's dead-letter topic (default: the handler's first topic).
    pub topic: Option<String>,
}

/// One position of a dead-letter topic.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplayPosition {
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
}

/// What a replay body asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplayRequest {
    /// Every dead letter of the handler.
    All,
    /// These `(partition, offset)` positions.
    Records(Vec<(i32, i64)>),
}

impl ReplayBody {
    /// Either `"all": true` or a non-empty `records` list, not both, not neither.
    pub fn request(&self) -> Result<ReplayRequest, &'static str> {
        match (self.all, self.records.is_empty()) {
            (true, true) => Ok(ReplayRequest::All),
            (false, false) => Ok(ReplayRequest::Records(
                self.records
                    .iter()
                    .map(|r| (r.partition, r.offset))
                    .collect(),
            )),
            _ => Err(
                "give either `\"all\": true` or a non-empty `records` list of {partition, offset}",
            ),
        }
    }
}

/// Body of `POST /v1/topics/{topic}/events`.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventBody {
    /// The event (any JSON; written as the record value).
    pub event: serde_json::Value,
    /// Record key; default: the event's `user_id` field.
    pub key: Option<String>,
    /// Extra headers.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

impl EventBody {
    /// Check `topic` and prepare the record (see [`crate::produce::prepare`]).
    pub fn prepare(self, topic: &str) -> Result<Prepared, String> {
        if !crate::config::valid_topic(topic) {
            return Err(format!("`{topic}` is not a valid topic name"));
        }
        crate::produce::prepare(self.event, self.key, self.headers).map_err(|e| e.to_string())
    }
}
