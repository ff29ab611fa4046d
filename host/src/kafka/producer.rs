//! The producer that handler effects and dead letters go through.
//!
//! One idempotent `acks=all` producer per process. Every send is awaited: a record counts as
//! written only when the broker acknowledged it, and the caller moves an offset only after
//! that. librdkafka retries transient errors itself within `message.timeout.ms`; what comes
//! back as an error here is final for that attempt, and the caller decides (retry, hold the
//! partition).

use std::time::Duration;

use anyhow::Context as _;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::future_producer::OwnedDeliveryResult;
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer as _};
use rdkafka::util::Timeout;

use crate::config::KafkaEnv;

/// Where a record landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivered {
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
}

/// A record to write.
#[derive(Debug, Clone, Copy)]
pub struct OutRecord<'a> {
    /// Topic.
    pub topic: &'a str,
    /// Key.
    pub key: Option<&'a [u8]>,
    /// Value.
    pub payload: &'a [u8],
    /// Headers.
    pub headers: &'a [(String, Vec<u8>)],
    /// The partition, or `None` for the partitioner's choice (by key).
    pub partition: Option<i32>,
}

/// An idempotent, `acks=all` producer whose sends are awaited.
#[derive(Clone)]
pub struct KafkaProducer {
    inner: FutureProducer,
}

impl std::fmt::Debug for KafkaProducer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaProducer").finish_non_exhaustive()
    }
}

impl KafkaProducer {
    /// Create the producer.
    pub fn new(env: &KafkaEnv, passthrough: &[(String, String)]) -> anyhow::Result<Self> {
        let inner: FutureProducer = super::producer_config(env, passthrough)
            .create()
            .context("creating the Kafka producer")?;
        Ok(Self { inner })
    }

    /// Write one record and wait for the broker's acknowledgement.
    pub async fn send(&self, r: OutRecord<'_>) -> anyhow::Result<Delivered> {
        // Waiting for room in the local queue is bounded by `message.timeout.ms` too.
        delivered(
            r.topic,
            self.inner.send(future_record(&r), Timeout::Never).await,
        )
    }

    /// Queue one record for writing without waiting for its acknowledgement: records queued
    /// one after another are written in that order (the producer is idempotent). Waits only
    /// while the local queue is full. The returned [`Pending`] resolves when the broker
    /// acknowledged the record or the producer gave up on it.
    pub async fn enqueue(&self, r: OutRecord<'_>) -> anyhow::Result<Pending> {
        let mut record = future_record(&r);
        loop {
            match self.inner.send_result(record) {
                Ok(rx) => {
                    return Ok(Pending {
                        topic: r.topic.to_owned(),
                        rx,
                    });
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    record = back;
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                Err((e, _)) => {
                    return Err(anyhow::Error::new(e))
                        .with_context(|| format!("writing to topic {}", r.topic));
                }
            }
        }
    }

    /// Wait until every queued record is delivered or `timeout` passes.
    pub fn flush(&self, timeout: Duration) -> anyhow::Result<()> {
        self.inner.flush(timeout).with_context(|| {
            format!(
                "flushing the Kafka producer: {} record(s) not acknowledged within {timeout:?}",
                self.inner.in_flight_count()
            )
        })
    }
}

/// A record queued by [`KafkaProducer::enqueue`], not yet acknowledged.
pub struct Pending {
    topic: String,
    rx: DeliveryFuture,
}

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending")
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

impl Pending {
    /// Wait for the broker's acknowledgement (or the producer's final error).
    pub async fn acknowledged(self) -> anyhow::Result<Delivered> {
        match self.rx.await {
            Ok(result) => delivered(&self.topic, result),
            Err(_) => Err(anyhow::anyhow!(
                "writing to topic {}: the producer was closed before the broker answered",
                self.topic
            )),
        }
    }
}

fn future_record<'a>(r: &OutRecord<'a>) -> FutureRecord<'a, [u8], [u8]> {
    let mut headers = OwnedHeaders::new_with_capacity(r.headers.len());
    for (k, v) in r.headers {
        headers = headers.insert(Header {
            key: k,
            value: Some(v.as_slice()),
        });
    }
    let mut record = FutureRecord::<[u8], [u8]>::to(r.topic)
        .payload(r.payload)
        .headers(headers);
    if let Some(k) = r.key {
        record = record.key(k);
    }
    if let Some(p) = r.partition {
        record = record.partition(p);
    }
    record
}

fn delivered(topic: &str, result: OwnedDeliveryResult) -> anyhow::Result<Delivered> {
    match result {
        Ok(d) => Ok(Delivered {
            partition: d.partition,
            offset: d.offset,
        }),
        Err((e, _)) => {
            Err(anyhow::Error::new(e)).with_context(|| format!("writing to topic {topic}"))
        }
    }
}
