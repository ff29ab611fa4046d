//! `kasm:handler/producer`: queue records for granted topics, with deterministic event ids.
//!
//! The id of a handler's n-th output is derived from the source event id, the handler name
//! and n, so a re-run of the same event (after a crash, before its offset was committed)
//! publishes records with the same ids, and any consumer deduplicating by `event-id` drops
//! the repeats. The ids are UUID-shaped (version 8, "custom") so they fit any schema that
//! expects a UUID.

use serde::Serialize;
use sha2::{Digest, Sha256};

/// One record a handler asked to publish.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Publish {
    /// Target topic (granted).
    pub topic: String,
    /// Record key.
    pub key: Option<Vec<u8>>,
    /// Record value.
    pub payload: Vec<u8>,
    /// Headers as the handler gave them, followed by `event-id` and `kasm-causation-id`.
    pub headers: Vec<(String, Vec<u8>)>,
    /// The derived event id (also in the `event-id` header).
    pub event_id: String,
}

/// Header naming the event that caused a published record.
pub const CAUSATION_HEADER: &str = "kasm-causation-id";

/// The event id of output number `index` of `handler` for source event `source_event_id`.
pub fn derive_event_id(source_event_id: &str, handler: &str, index: u32) -> String {
    let mut h = Sha256::new();
    h.update(b"kasm/event-id/v1\0");
    h.update(source_event_id.as_bytes());
    h.update([0]);
    h.update(handler.as_bytes());
    h.update([0]);
    h.update(index.to_le_bytes());
    let digest = h.finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Builder::from_custom_bytes(bytes)
        .into_uuid()
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_deterministic_and_distinct() {
        let a = derive_event_id("e-1", "audit", 0);
        assert_eq!(a, derive_event_id("e-1", "audit", 0));
        assert_ne!(a, derive_event_id("e-1", "audit", 1));
        assert_ne!(a, derive_event_id("e-1", "recurring", 0));
        assert_ne!(a, derive_event_id("e-2", "audit", 0));
        // Field boundaries matter: ("ab","c") and ("a","bc") differ.
        assert_ne!(derive_event_id("ab", "c", 0), derive_event_id("a", "bc", 0));
        assert!(uuid::Uuid::parse_str(&a).is_ok());
    }
}
