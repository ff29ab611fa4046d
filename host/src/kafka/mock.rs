//! The embedded Kafka cluster: librdkafka's mock cluster, in this process.
//!
//! It speaks the Kafka protocol on loopback ports, so any Kafka client can join it while the
//! process lives. Used by `kasm dev` and by the tests, which also drive its fault injection
//! (request errors, brokers down, round-trip time). Data lives in memory, about 5 MiB per
//! partition; the admin CreateTopics API is not supported, so topics are created through
//! [`EmbeddedCluster::create_topic`].
//!
//! The mock cluster's consumer groups wait 3 s for more members before the first
//! assignment by default; that delay is set to 0 here, or every group join would take 3 s.

use anyhow::Context as _;
use rdkafka::ClientConfig;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, DefaultProducerContext, Producer as _};
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};

/// An in-process mock Kafka cluster; it stops when dropped.
pub struct EmbeddedCluster {
    // The mock cluster is owned by this client handle (created with `test.mock.num.brokers`).
    owner: BaseProducer<DefaultProducerContext>,
    bootstrap: String,
}

impl std::fmt::Debug for EmbeddedCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedCluster")
            .field("bootstrap", &self.bootstrap)
            .finish()
    }
}

impl EmbeddedCluster {
    /// Start a cluster of `brokers` brokers on loopback.
    pub fn start(brokers: u32) -> anyhow::Result<Self> {
        let owner: BaseProducer<DefaultProducerContext> = ClientConfig::new()
            .set("test.mock.num.brokers", brokers.to_string())
            .create()
            .context("starting the embedded Kafka cluster")?;
        set_initial_rebalance_delay_zero(&owner);
        let bootstrap = owner
            .client()
            .mock_cluster()
            .map(|c| c.bootstrap_servers())
            .context("the embedded Kafka cluster did not start")?;
        Ok(Self { owner, bootstrap })
    }

    /// `host:port,...` for clients.
    pub fn bootstrap_servers(&self) -> &str {
        &self.bootstrap
    }

    fn cluster(&self) -> anyhow::Result<MockCluster<'_, DefaultProducerContext>> {
        self.owner
            .client()
            .mock_cluster()
            .context("the embedded Kafka cluster is gone")
    }

    /// Create `topic` with `partitions` partitions (replication factor 1).
    pub fn create_topic(&self, topic: &str, partitions: i32) -> anyhow::Result<()> {
        self.cluster()?
            .create_topic(topic, partitions, 1)
            .with_context(|| format!("creating topic {topic} on the embedded cluster"))
    }

    /// Make the next `errors.len()` requests of kind `api` fail with these errors, in order.
    pub fn request_errors(
        &self,
        api: RDKafkaApiKey,
        errors: &[RDKafkaRespErr],
    ) -> anyhow::Result<()> {
        self.cluster()?.request_errors(api, errors);
        Ok(())
    }

    /// Clear injected request errors of kind `api`.
    pub fn clear_request_errors(&self, api: RDKafkaApiKey) -> anyhow::Result<()> {
        self.cluster()?.clear_request_errors(api);
        Ok(())
    }

    /// Take broker `id` (1-based) down.
    pub fn broker_down(&self, id: i32) -> anyhow::Result<()> {
        self.cluster()?
            .broker_down(id)
            .with_context(|| format!("broker {id} down"))
    }

    /// Bring broker `id` back.
    pub fn broker_up(&self, id: i32) -> anyhow::Result<()> {
        self.cluster()?
            .broker_up(id)
            .with_context(|| format!("broker {id} up"))
    }

    /// Add round-trip time to broker `id`.
    pub fn broker_rtt(&self, id: i32, rtt: std::time::Duration) -> anyhow::Result<()> {
        self.cluster()?
            .broker_round_trip_time(id, rtt)
            .with_context(|| format!("broker {id} rtt"))
    }

    /// Move the leader of `topic`/`partition` to broker `id`.
    pub fn partition_leader(&self, topic: &str, partition: i32, id: i32) -> anyhow::Result<()> {
        self.cluster()?
            .partition_leader(topic, partition, Some(id))
            .with_context(|| format!("moving leader of {topic}/{partition} to broker {id}"))
    }

    /// Make broker `id` the coordinator of consumer group `group` (otherwise chosen by hash),
    /// so a fault aimed at one broker can spare, or hit, the group's coordinator on purpose.
    pub fn group_coordinator(&self, group: &str, id: i32) -> anyhow::Result<()> {
        self.cluster()?
            .coordinator(
                rdkafka::mocking::MockCoordinator::Group(group.to_owned()),
                id,
            )
            .with_context(|| format!("making broker {id} the coordinator of group {group}"))
    }
}

#[allow(unsafe_code)]
fn set_initial_rebalance_delay_zero(owner: &BaseProducer<DefaultProducerContext>) {
    // SAFETY: `owner` is a live client handle; `rd_kafka_handle_mock_cluster` returns the mock
    // cluster it owns (or null, checked) which stays valid while `owner` lives, and the setter
    // only writes an integer field of that cluster under its own lock.
    unsafe {
        let cluster = rdkafka::bindings::rd_kafka_handle_mock_cluster(owner.client().native_ptr());
        if !cluster.is_null() {
            rdkafka::bindings::rd_kafka_mock_group_initial_rebalance_delay_ms(cluster, 0);
        }
    }
}
