//! The one conversion from a librdkafka message to the host's owned [`Record`] (defined with
//! the event it becomes, in [`crate::event`]), used by the pipeline's consumer, the
//! dead-letter reader and the ledger's restore alike.

use rdkafka::message::Headers as _;

pub use crate::event::Record;

impl Record {
    /// Copy a consumed message out of librdkafka's buffers (a null header value reads as
    /// empty).
    pub fn from_message<M: rdkafka::message::Message>(m: &M) -> Self {
        let headers = m
            .headers()
            .map(|hs| {
                hs.iter()
                    .map(|h| {
                        (
                            h.key.to_owned(),
                            h.value.map(<[u8]>::to_vec).unwrap_or_default(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        Record {
            topic: m.topic().to_owned(),
            partition: m.partition(),
            offset: m.offset(),
            key: m.key().map(<[u8]>::to_vec),
            payload: m.payload().map(<[u8]>::to_vec),
            headers,
            timestamp_ms: m.timestamp().to_millis(),
        }
    }
}
