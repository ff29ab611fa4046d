//! A consumed record, owned: the one conversion from a librdkafka message, used by the
//! pipeline's consumer, the dead-letter reader and the ledger's restore alike.

use rdkafka::message::Headers as _;

/// A consumed record, detached from the consumer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Record {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
    /// Key.
    pub key: Option<Vec<u8>>,
    /// Value (`None` for a tombstone).
    pub payload: Option<Vec<u8>>,
    /// Headers.
    pub headers: Vec<(String, Vec<u8>)>,
    /// Timestamp, ms since the epoch.
    pub timestamp_ms: Option<i64>,
}

impl Record {
    /// Bytes of key, payload and headers (what holding the record costs, roughly).
    pub fn size(&self) -> usize {
        self.key.as_ref().map_or(0, Vec::len)
            + self.payload.as_ref().map_or(0, Vec::len)
            + self
                .headers
                .iter()
                .map(|(k, v)| k.len() + v.len())
                .sum::<usize>()
    }

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
