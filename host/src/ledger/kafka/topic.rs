//! The ledger topic of a handler: created when absent (compacted and deleted by age, as many
//! partitions as the largest source topic), grown when it has too few partitions.

use std::sync::PoisonError;
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewPartitions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::Consumer as _;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseProducer, Producer as _};

use crate::kafka::{Role, base_config};

use super::*;

/// How librdkafka's embedded (mock) cluster's id begins.
pub(super) const EMBEDDED_CLUSTER_ID: &str = "mockCluster";
/// Partitions of `topic`, `None` if it does not exist.
pub(super) fn partition_count(probe: &Reader, topic: &str) -> anyhow::Result<Option<i32>> {
    let m = probe
        .fetch_metadata(Some(topic), REQUEST_TIMEOUT)
        .with_context(|| format!("reading the metadata of topic {topic}"))?;
    let Some(t) = m.topics().first() else {
        return Ok(None);
    };
    match t.error() {
        None => Ok(Some(
            i32::try_from(t.partitions().len()).unwrap_or(i32::MAX),
        )),
        Some(e)
            if matches!(
                RDKafkaErrorCode::from(e),
                RDKafkaErrorCode::UnknownTopicOrPartition | RDKafkaErrorCode::UnknownTopic
            ) =>
        {
            Ok(None)
        }
        Some(e) => Err(anyhow::Error::new(KafkaError::MetadataFetch(e.into())))
            .with_context(|| format!("reading the metadata of topic {topic}")),
    }
}
pub(super) async fn grow_topic(
    admin_config: &ClientConfig,
    topic: &str,
    partitions: i32,
) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> =
        admin_config.create().context("creating an admin client")?;
    let n = usize::try_from(partitions).unwrap_or(1);
    let opts = AdminOptions::new().operation_timeout(Some(REQUEST_TIMEOUT));
    let results = admin
        .create_partitions([&NewPartitions::new(topic, n)], &opts)
        .await
        .context("adding partitions")?;
    for r in results {
        r.map_err(|(t, code)| anyhow!("adding partitions to {t}: {code}"))?;
    }
    Ok(())
}

impl KafkaLedger {
    /// Use `ledger_topic` for `handler`, creating it if absent: compacted, entries kept for
    /// `retention`, with as many partitions as the largest of `sources`.
    pub async fn register(
        &self,
        handler: &str,
        ledger_topic: &str,
        sources: &[String],
        retention: Duration,
    ) -> anyhow::Result<()> {
        let admin_config = base_config(&self.env, &self.passthrough, Role::Producer);
        let probe = self.metadata_consumer()?;
        let (topic, sources2) = (ledger_topic.to_owned(), sources.to_vec());
        let (existing, needed) = tokio::task::spawn_blocking(move || {
            let needed = sources2
                .iter()
                .map(|s| partition_count(&probe, s))
                .collect::<anyhow::Result<Vec<_>>>()?
                .into_iter()
                .flatten()
                .max()
                .unwrap_or(1);
            anyhow::Ok((partition_count(&probe, &topic)?, needed))
        })
        .await
        .context("ledger topic check task failed")?
        .with_context(|| format!("handler={handler}: checking ledger topic {ledger_topic}"))?;
        match existing {
            Some(n) if n >= needed => {}
            Some(n) => {
                grow_topic(&admin_config, ledger_topic, needed)
                    .await
                    .with_context(|| {
                        format!(
                            "handler={handler}: ledger topic {ledger_topic} has {n} partitions and its sources {sources:?} have {needed}; \
                             it must have at least as many"
                        )
                    })?;
            }
            None => {
                self.create_topic(&admin_config, ledger_topic, needed, retention)
                    .await
                    .with_context(|| {
                        format!("handler={handler}: creating ledger topic {ledger_topic}")
                    })?;
                tracing::info!(
                    handler,
                    topic = ledger_topic,
                    partitions = needed,
                    "ledger topic created"
                );
            }
        }
        self.topics
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(handler.to_owned(), (ledger_topic.to_owned(), retention));
        Ok(())
    }
    pub(super) async fn create_topic(
        &self,
        admin_config: &ClientConfig,
        topic: &str,
        partitions: i32,
        retention: Duration,
    ) -> anyhow::Result<()> {
        let admin: AdminClient<DefaultClientContext> =
            admin_config.create().context("creating an admin client")?;
        let retention_ms = retention.as_millis().to_string();
        let opts = AdminOptions::new()
            .operation_timeout(Some(REQUEST_TIMEOUT))
            .request_timeout(Some(REQUEST_TIMEOUT));
        let mut last = None;
        // librdkafka's embedded cluster (`kasm dev`, the tests) has no CreateTopics: a request
        // would wait out its timeout. It names itself in its cluster id.
        let embedded = match self.embedded.get() {
            Some(e) => *e,
            None => {
                let probe = self.metadata_consumer()?;
                let e = tokio::task::spawn_blocking(move || {
                    probe
                        .client()
                        .fetch_cluster_id(REQUEST_TIMEOUT)
                        .is_some_and(|id| id.starts_with(EMBEDDED_CLUSTER_ID))
                })
                .await
                .unwrap_or(false);
                *self.embedded.get_or_init(|| e)
            }
        };
        if embedded {
            last = Some(anyhow!("the embedded cluster has no CreateTopics"));
        }
        // The broker's default replication first; a broker that does not take -1 gets 1.
        for replication in [-1, 1].into_iter().filter(|_| !embedded) {
            let t = NewTopic::new(topic, partitions, TopicReplication::Fixed(replication))
                .set("cleanup.policy", "compact,delete")
                .set("retention.ms", &retention_ms);
            let results = match admin.create_topics([&t], &opts).await {
                Ok(r) => r,
                Err(e) => {
                    last = Some(anyhow::Error::new(e));
                    break;
                }
            };
            match results.into_iter().next() {
                Some(Ok(_)) => return self.wait_for_partitions(topic, partitions).await,
                Some(Err((_, RDKafkaErrorCode::TopicAlreadyExists))) => {
                    return self.wait_for_partitions(topic, partitions).await;
                }
                Some(Err((_, RDKafkaErrorCode::InvalidReplicationFactor))) => {
                    last = Some(anyhow!("replication factor {replication} refused"));
                }
                Some(Err((_, code))) => {
                    last = Some(anyhow::Error::new(KafkaError::AdminOp(code)));
                    break;
                }
                None => {
                    last = Some(anyhow!("the broker answered nothing for the topic"));
                    break;
                }
            }
        }
        // A broker without CreateTopics (the embedded development cluster) creates a topic
        // when a producer asks for its metadata; it must then have the partitions needed.
        // (A producer's metadata requests always allow auto-creation.)
        let producer: BaseProducer = admin_config
            .create()
            .context("creating a metadata client")?;
        let topic2 = topic.to_owned();
        let n = tokio::task::spawn_blocking(move || {
            let m = producer
                .client()
                .fetch_metadata(Some(&topic2), REQUEST_TIMEOUT)?;
            anyhow::Ok(
                m.topics()
                    .first()
                    .filter(|t| t.error().is_none())
                    .map_or(0, |t| t.partitions().len()),
            )
        })
        .await
        .context("metadata task failed")??;
        if i32::try_from(n).unwrap_or(0) >= partitions {
            tracing::warn!(
                topic,
                partitions = n,
                "the broker did not create the ledger topic on request (CreateTopics: {}); it exists by auto-creation, without compaction or retention settings",
                last.as_ref().map_or_else(String::new, |e| format!("{e:#}"))
            );
            return Ok(());
        }
        Err(last.unwrap_or_else(|| anyhow!("the topic was not created"))).with_context(|| {
            format!(
                "{topic} needs {partitions} partitions (create it with cleanup.policy=compact,delete)"
            )
        })
    }
    pub(super) async fn wait_for_partitions(
        &self,
        topic: &str,
        partitions: i32,
    ) -> anyhow::Result<()> {
        let probe = self.metadata_consumer()?;
        let topic = topic.to_owned();
        tokio::task::spawn_blocking(move || {
            let deadline = Instant::now() + REQUEST_TIMEOUT;
            loop {
                if partition_count(&probe, &topic)?.unwrap_or(0) >= partitions {
                    return Ok(());
                }
                if Instant::now() > deadline {
                    bail!("{topic} was created but its {partitions} partitions did not appear in the metadata within {REQUEST_TIMEOUT:?}");
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        })
        .await
        .context("metadata task failed")?
    }
    pub(super) fn metadata_consumer(&self) -> anyhow::Result<Reader> {
        self.reader_config()
            .create_with_context(ReaderContext)
            .context("creating a ledger reader")
    }
}
