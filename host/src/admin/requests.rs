//! What the admin API accepts: the request bodies and queries of `/v1`, and the checks that
//! turn them into work, kept apart from the routes so that they are total functions of the
//! request bytes. The fuzz target `admin_bodies` (see `fuzz/`) drives them with arbitrary
//! input through the same extractor axum uses, and every input it ever found interesting is
//! replayed by a unit test; a refused request is always a 4xx with a reason, never a panic.

use std::collections::BTreeMap;

use crate::dlq::list::{Cursor, MAX_LIST_LIMIT};
use crate::kafka::produce::Prepared;

/// A request body that must be a JSON object: serde's derived structs also accept an array of
/// their fields in declaration order (`[{...}, "key"]` for an [`EventBody`]), which is not what
/// the API documents. Routes read `Json<Object<T>>`.
#[derive(Debug)]
pub struct Object<T>(pub T);

impl<'de, T: serde::Deserialize<'de>> serde::Deserialize<'de> for Object<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Fields<T>(std::marker::PhantomData<T>);
        impl<'de, T: serde::Deserialize<'de>> serde::de::Visitor<'de> for Fields<T> {
            type Value = T;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
                T::deserialize(serde::de::value::MapAccessDeserializer::new(map))
            }
        }
        d.deserialize_map(Fields(std::marker::PhantomData))
            .map(Object)
    }
}

/// Query of `GET /v1/handlers/{name}/dlq`.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DlqQuery {
    /// Page size (default 50).
    #[param(minimum = 1, maximum = 1000, default = 50)]
    pub limit: Option<usize>,
    /// Cursor from the previous page's `next` (`partition:offset,...`).
    #[param(pattern = "^([0-9]{1,9}:[0-9]{1,18}(,[0-9]{1,9}:[0-9]{1,18})*)?$")]
    pub from: Option<String>,
    /// Which source topic's dead-letter topic (default: the handler's first topic).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
}

// The documented `maximum` of `limit` (an attribute takes a literal).
const _: () = assert!(MAX_LIST_LIMIT == 1000);

impl DlqQuery {
    /// The page size: `limit` if given (1 to [`MAX_LIST_LIMIT`]), else 50.
    pub fn limit(&self) -> Result<usize, String> {
        match self.limit {
            None => Ok(50),
            Some(n @ 1..=MAX_LIST_LIMIT) => Ok(n),
            Some(n) => Err(format!("limit must be 1 to {MAX_LIST_LIMIT}, not {n}")),
        }
    }

    /// The cursor to start from: none for an absent or empty `from`, else `from` parsed.
    pub fn cursor(&self) -> Result<Option<Cursor>, String> {
        match self.from.as_deref().filter(|f| !f.is_empty()) {
            Some(f) => f.parse::<Cursor>().map(Some).map_err(|e| format!("{e:#}")),
            None => Ok(None),
        }
    }
}

/// Body of `POST /v1/handlers/{name}/dlq/replay`.
#[derive(Debug, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReplayBody {
    /// Replay every dead letter.
    #[serde(default)]
    pub all: bool,
    /// Or these positions of the dead-letter topic.
    #[serde(default)]
    pub records: Vec<ReplayPosition>,
    /// Which source topic's dead-letter topic (default: the handler's first topic).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
}

/// One position of a dead-letter topic.
#[derive(Debug, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
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
#[derive(Debug, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EventBody {
    /// The event (any JSON; written as the record value).
    #[schema(value_type = Value)]
    pub event: serde_json::Value,
    /// Record key; default: the event's `user_id` field.
    pub key: Option<String>,
    /// Extra headers.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

impl EventBody {
    /// Check `topic` and prepare the record (see [`crate::kafka::produce::prepare`]).
    pub fn prepare(self, topic: &str) -> Result<Prepared, String> {
        if !crate::config::valid_topic(topic) {
            return Err(format!("`{topic}` is not a valid topic name"));
        }
        crate::kafka::produce::prepare(self.event, self.key, self.headers)
            .map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn query(q: &str) -> DlqQuery {
        let uri: axum::http::Uri = format!("/v1/handlers/h/dlq?{q}").parse().unwrap();
        axum::extract::Query::<DlqQuery>::try_from_uri(&uri)
            .unwrap()
            .0
    }

    #[test]
    fn bodies_are_objects_not_arrays_of_their_fields() {
        let read = |b: &[u8]| axum::Json::<Object<EventBody>>::from_bytes(b).map(|j| j.0.0);
        let body = read(br#"{"event": {"a": 1}, "key": "k"}"#).unwrap();
        assert_eq!(body.key.as_deref(), Some("k"));
        for array in [&br#"[null, null]"#[..], br#"[{"a": 1}, "k"]"#] {
            let err = read(array).unwrap_err().body_text();
            assert!(err.contains("expected a JSON object"), "{err}");
        }
        let replay = axum::Json::<Object<ReplayBody>>::from_bytes(br#"[true, []]"#);
        assert!(replay.is_err());
    }

    #[test]
    fn a_page_size_outside_1_to_1000_is_refused_not_clamped() {
        assert_eq!(query("").limit(), Ok(50));
        assert_eq!(query("limit=1").limit(), Ok(1));
        assert_eq!(query("limit=1000").limit(), Ok(1000));
        for bad in ["limit=0", "limit=1001"] {
            let err = query(bad).limit().unwrap_err();
            assert!(err.contains("limit must be 1 to 1000"), "{bad}: {err}");
        }
    }
}
