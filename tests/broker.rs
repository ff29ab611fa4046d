//! The broker end-to-end tests run against, and Kafka client helpers.
//!
//! `KASM_TEST_BOOTSTRAP=host:port` points the tests at an external Kafka-protocol broker
//! (CI runs the suite against Tansu that way); otherwise each test starts its own embedded
//! mock cluster. Fault-injection tests always use an embedded cluster (they need its fault
//! controls). Every test uses random topic and group names.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use kasm_host::kafka::mock::EmbeddedCluster;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Headers as _, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

/// A broker for one test.
pub enum TestBroker {
    /// An embedded mock cluster owned by the test.
    Embedded(EmbeddedCluster),
    /// An external broker.
    External(String),
}

impl std::fmt::Debug for TestBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TestBroker({})", self.bootstrap())
    }
}

impl TestBroker {
    /// The broker chosen by `KASM_TEST_BOOTSTRAP`, else a new embedded cluster.
    pub fn from_env() -> Self {
        match std::env::var("KASM_TEST_BOOTSTRAP") {
            Ok(b) if !b.trim().is_empty() => TestBroker::External(b.trim().to_owned()),
            _ => Self::embedded(),
        }
    }

    /// Always a new embedded cluster (fault injection).
    pub fn embedded() -> Self {
        TestBroker::Embedded(EmbeddedCluster::start(3).expect("embedded cluster"))
    }

    /// The embedded cluster's controls.
    pub fn cluster(&self) -> &EmbeddedCluster {
        match self {
            TestBroker::Embedded(c) => c,
            TestBroker::External(_) => panic!("fault injection needs the embedded cluster"),
        }
    }

    /// Whether this is an external broker (slower group joins).
    pub fn is_external(&self) -> bool {
        matches!(self, TestBroker::External(_))
    }

    /// `host:port,...`.
    pub fn bootstrap(&self) -> String {
        match self {
            TestBroker::Embedded(c) => c.bootstrap_servers().to_owned(),
            TestBroker::External(b) => b.clone(),
        }
    }

    /// Create `topic` with `partitions` partitions.
    pub async fn create_topic(&self, topic: &str, partitions: i32) {
        match self {
            TestBroker::Embedded(c) => c.create_topic(topic, partitions).expect("create topic"),
            TestBroker::External(b) => {
                let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
                    .set("bootstrap.servers", b)
                    .create()
                    .expect("admin client");
                let t = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
                let res = admin
                    .create_topics(
                        [&t],
                        &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
                    )
                    .await
                    .expect("create_topics");
                for r in res {
                    r.unwrap_or_else(|(t, e)| panic!("creating topic {t}: {e}"));
                }
                // Wait until metadata shows every partition.
                let c: BaseConsumer = ClientConfig::new()
                    .set("bootstrap.servers", b)
                    .create()
                    .expect("consumer");
                let deadline = Instant::now() + Duration::from_secs(20);
                loop {
                    let n = c
                        .fetch_metadata(Some(topic), Duration::from_secs(2))
                        .ok()
                        .and_then(|m| m.topics().first().map(|t| t.partitions().len()))
                        .unwrap_or(0);
                    if n == partitions as usize || Instant::now() > deadline {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    /// A producer with `acks=all`.
    pub fn producer(&self) -> FutureProducer {
        ClientConfig::new()
            .set("bootstrap.servers", self.bootstrap())
            .set("acks", "all")
            .set("linger.ms", "5")
            .create()
            .expect("producer")
    }
}

/// One record to produce.
#[derive(Debug, Clone, Default)]
pub struct Rec {
    /// Key.
    pub key: Option<Vec<u8>>,
    /// Value.
    pub payload: Vec<u8>,
    /// Headers.
    pub headers: Vec<(String, Vec<u8>)>,
    /// Partition, if forced.
    pub partition: Option<i32>,
}

impl Rec {
    /// This record, to be produced to `topic`.
    pub fn to_record<'a>(&'a self, topic: &'a str) -> FutureRecord<'a, [u8], [u8]> {
        let mut headers = OwnedHeaders::new();
        for (k, v) in &self.headers {
            headers = headers.insert(Header {
                key: k,
                value: Some(v),
            });
        }
        let mut fr = FutureRecord::<[u8], [u8]>::to(topic)
            .payload(&self.payload)
            .headers(headers);
        if let Some(k) = &self.key {
            fr = fr.key(k);
        }
        if let Some(p) = self.partition {
            fr = fr.partition(p);
        }
        fr
    }
}

/// Produce `records` to `topic`, waiting for every acknowledgement.
pub async fn produce(producer: &FutureProducer, topic: &str, records: &[Rec]) {
    for chunk in records.chunks(2000) {
        let sends = chunk
            .iter()
            .map(|r| producer.send(r.to_record(topic), Duration::from_secs(30)));
        for r in futures::future::join_all(sends).await {
            r.unwrap_or_else(|(e, _)| panic!("produce to {topic}: {e}"));
        }
    }
}

/// A consumed record.
#[derive(Debug, Clone)]
pub struct Got {
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
    /// Key.
    pub key: Option<Vec<u8>>,
    /// Value.
    pub payload: Vec<u8>,
    /// Headers.
    pub headers: HashMap<String, String>,
    /// The record's timestamp (create time: when its producer sent it), ms since the epoch.
    pub timestamp_ms: Option<i64>,
}

impl Got {
    /// A copy of consumed message `m` (header values as lossy UTF-8).
    pub fn from_message(m: &impl rdkafka::message::Message) -> Self {
        let headers = m
            .headers()
            .map(|hs| {
                hs.iter()
                    .map(|h| {
                        (
                            h.key.to_owned(),
                            String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        Got {
            partition: m.partition(),
            offset: m.offset(),
            key: m.key().map(<[u8]>::to_vec),
            payload: m.payload().unwrap_or_default().to_vec(),
            headers,
            timestamp_ms: m.timestamp().to_millis(),
        }
    }

    /// Payload as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.payload).unwrap_or(serde_json::Value::Null)
    }
}

/// Read `topic` from the beginning (no group) until `want` records arrived, or until
/// `quiet` passed without a new one after `timeout`.
pub fn read_topic(bootstrap: &str, topic: &str, want: usize, timeout: Duration) -> Vec<Got> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", crate::unique("reader"))
        .set("enable.auto.commit", "false")
        .create()
        .expect("reader");
    let md = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("metadata");
    let mut tpl = TopicPartitionList::new();
    for p in md.topics()[0].partitions() {
        tpl.add_partition_offset(topic, p.id(), Offset::Beginning)
            .expect("tpl");
    }
    consumer.assign(&tpl).expect("assign");
    let mut out = Vec::new();
    let deadline = Instant::now() + timeout;
    while out.len() < want && Instant::now() < deadline {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
            out.push(Got::from_message(&m));
        }
    }
    out
}

/// End offsets of the partitions of `topic` that hold records, found by reading its
/// `records` records (one past the last offset of each partition). Read rather than asked:
/// Tansu answers a ListOffsets "latest" query with the start of the newest batch + 1.
pub fn end_offsets(bootstrap: &str, topic: &str, records: usize) -> HashMap<i32, i64> {
    let got = read_topic(bootstrap, topic, records, Duration::from_secs(120));
    assert_eq!(
        got.len(),
        records,
        "reading {topic} to find its end offsets"
    );
    let mut end = HashMap::new();
    for g in got {
        let e = end.entry(g.partition).or_insert(0);
        *e = (*e).max(g.offset + 1);
    }
    end
}

/// Committed offsets of `group` on `topic` (missing partitions: none committed).
pub fn committed_offsets(bootstrap: &str, group: &str, topic: &str) -> HashMap<i32, i64> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .create()
        .expect("client");
    let md = c
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("metadata");
    let mut tpl = TopicPartitionList::new();
    for p in md.topics()[0].partitions() {
        tpl.add_partition(topic, p.id());
    }
    let committed = c
        .committed_offsets(tpl, Duration::from_secs(10))
        .expect("committed");
    committed
        .elements()
        .iter()
        .filter_map(|e| match e.offset() {
            Offset::Offset(o) => Some((e.partition(), o)),
            _ => None,
        })
        .collect()
}
