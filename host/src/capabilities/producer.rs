//! `kasm:handler/producer`: queue records for granted topics, with deterministic event ids.
//!
//! The id of a handler's n-th output is derived from the source event id, the handler name
//! and n, so a re-run of the same event (after a crash, before its offset was committed)
//! publishes records with the same ids, and any consumer deduplicating by `event-id` drops
//! the repeats. The ids are UUID-shaped (version 8, "custom") so they fit any schema that
//! expects a UUID.

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::event::EVENT_ID_HEADER;
use crate::wit as bindings;

use super::state::CapabilityState;

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

impl bindings::kasm::handler::producer::Host for CapabilityState {
    fn publish(
        &mut self,
        topic: String,
        key: Option<Vec<u8>>,
        payload: Vec<u8>,
        headers: Vec<(String, Vec<u8>)>,
    ) -> Result<String, String> {
        let env = &self.env;
        let Some(grant) = &env.grants.producer else {
            return Err(format!(
                "the producer capability is not granted to handler `{}`",
                env.name
            ));
        };
        if !grant.allows(&topic) {
            return Err(format!(
                "topic `{topic}` is not granted to handler `{}` (granted: {grant})",
                env.name
            ));
        }
        let publishes = &mut self.call.effects.publishes;
        if publishes.len() >= env.max_publishes {
            return Err(format!(
                "handler `{}` already queued {} records in this call, the limit",
                env.name, env.max_publishes
            ));
        }
        let size = payload.len()
            + key.as_ref().map_or(0, Vec::len)
            + headers
                .iter()
                .map(|(k, v)| k.len() + v.len())
                .sum::<usize>();
        if size > env.max_record_bytes {
            return Err(format!(
                "record for topic `{topic}` is {size} bytes, over the limit of {} bytes",
                env.max_record_bytes
            ));
        }
        let queued = self.call.queued_bytes.saturating_add(size);
        if queued > env.max_call_output_bytes {
            return Err(format!(
                "handler `{}` already queued {} bytes in this call; this record of {size} bytes \
                 would go over the per-call limit of {} bytes",
                env.name, self.call.queued_bytes, env.max_call_output_bytes
            ));
        }
        self.call.queued_bytes = queued;
        let index = u32::try_from(publishes.len()).unwrap_or(u32::MAX);
        let event_id = derive_event_id(&self.call.event_id, &env.name, index);
        // The host owns the identity headers: a handler cannot forge another event's id.
        let mut headers: Vec<(String, Vec<u8>)> = headers
            .into_iter()
            .filter(|(k, _)| k != EVENT_ID_HEADER && k != CAUSATION_HEADER)
            .collect();
        headers.push((EVENT_ID_HEADER.to_owned(), event_id.clone().into_bytes()));
        headers.push((
            CAUSATION_HEADER.to_owned(),
            self.call.event_id.clone().into_bytes(),
        ));
        publishes.push(Publish {
            topic,
            key,
            payload,
            headers,
            event_id: event_id.clone(),
        });
        Ok(event_id)
    }

    fn next_event_id(&mut self) -> String {
        let index = u32::try_from(self.call.effects.publishes.len()).unwrap_or(u32::MAX);
        derive_event_id(&self.call.event_id, &self.env.name, index)
    }
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
