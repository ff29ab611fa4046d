//! Kafka plumbing: client configuration, the producer that effects and dead letters go
//! through, and the embedded (mock) cluster for `kasm dev` and tests.
//!
//! Connection and credentials come from the environment ([`crate::config::KafkaEnv`]);
//! `[kafka]` properties from the config file pass through; the properties kasm's guarantees
//! rest on are set last, so nothing overrides them.
//!
//! A `[kafka]` property goes only to the clients it applies to: librdkafka marks each of its
//! properties consumer-only (`C`), producer-only (`P`) or both (`*`), and warns (`CONFWARN`) at
//! every start when a client is given one that is not its own. [`Role`] and [`applies_to`]
//! carry that table's `C` and `P` rows (librdkafka 2.12, `CONFIGURATION.md`); every other
//! property goes to both.

pub mod consumer;
pub mod mock;
pub mod produce;
pub mod producer;
mod record;

pub use record::Record;

use rdkafka::ClientConfig;

use crate::config::KafkaEnv;

/// Which kind of client a configuration is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// A consumer (the pipeline's, the dead-letter reader).
    Consumer,
    /// A producer.
    Producer,
}

/// librdkafka's consumer-only properties (global and topic), settable as strings.
const CONSUMER_ONLY: &[&str] = &[
    "auto.commit.enable",
    "auto.commit.interval.ms",
    "auto.offset.reset",
    "check.crcs",
    "consume.callback.max.messages",
    "coordinator.query.interval.ms",
    "enable.auto.commit",
    "enable.auto.offset.store",
    "enable.partition.eof",
    "fetch.error.backoff.ms",
    "fetch.max.bytes",
    "fetch.message.max.bytes",
    "fetch.min.bytes",
    "fetch.queue.backoff.ms",
    "fetch.wait.max.ms",
    "group.id",
    "group.instance.id",
    "group.protocol",
    "group.protocol.type",
    "group.remote.assignor",
    "heartbeat.interval.ms",
    "isolation.level",
    "max.partition.fetch.bytes",
    "max.poll.interval.ms",
    "offset.store.method",
    "offset.store.path",
    "offset.store.sync.interval.ms",
    "partition.assignment.strategy",
    "queued.max.messages.kbytes",
    "queued.min.messages",
    "session.timeout.ms",
];

/// librdkafka's producer-only properties (global and topic), settable as strings.
const PRODUCER_ONLY: &[&str] = &[
    "acks",
    "batch.num.messages",
    "batch.size",
    "compression.codec",
    "compression.level",
    "compression.type",
    "delivery.report.only.error",
    "delivery.timeout.ms",
    "enable.gapless.guarantee",
    "enable.idempotence",
    "linger.ms",
    "message.send.max.retries",
    "message.timeout.ms",
    "partitioner",
    "produce.offset.report",
    "queue.buffering.backpressure.threshold",
    "queue.buffering.max.kbytes",
    "queue.buffering.max.messages",
    "queue.buffering.max.ms",
    "queuing.strategy",
    "request.required.acks",
    "request.timeout.ms",
    "retries",
    "sticky.partitioning.linger.ms",
    "transaction.timeout.ms",
    "transactional.id",
];

/// Whether librdkafka property `name` applies to a client of `role` (a property of the other
/// kind of client only would make librdkafka warn at every start). Unknown names apply to
/// both, so that librdkafka itself names a misspelt one.
pub fn applies_to(name: &str, role: Role) -> bool {
    let name = name.trim();
    match role {
        Role::Consumer => !PRODUCER_ONLY.contains(&name),
        Role::Producer => !CONSUMER_ONLY.contains(&name),
    }
}

/// Base client configuration for a client of `role`: environment, then the passthrough
/// properties that apply to it.
pub fn base_config(env: &KafkaEnv, passthrough: &[(String, String)], role: Role) -> ClientConfig {
    let mut c = ClientConfig::new();
    for (k, v) in env.properties() {
        c.set(k, v);
    }
    for (k, v) in passthrough {
        if applies_to(k, role) {
            c.set(k, v);
        }
    }
    c
}

/// Consumer configuration for `group_id`: auto commit and auto offset store off (kasm stores
/// and commits only what is done), read committed.
pub fn consumer_config(
    env: &KafkaEnv,
    passthrough: &[(String, String)],
    group_id: &str,
) -> ClientConfig {
    let mut c = base_config(env, passthrough, Role::Consumer);
    if c.get("auto.offset.reset").is_none() {
        c.set("auto.offset.reset", "earliest");
    }
    // A partition that may be fetched again (its queue drained below the prefetch bound, or
    // resumed) is fetched with the next fetch request, and one long poll per broker may be in
    // flight: librdkafka's default (500 ms) would stall it that long whenever the others are
    // caught up.
    if c.get("fetch.wait.max.ms").is_none() {
        c.set("fetch.wait.max.ms", "100");
    }
    // Statistics carry each partition's high watermark (for lag), from fetch responses.
    if c.get("statistics.interval.ms").is_none() {
        c.set("statistics.interval.ms", "2000");
    }
    c.set("group.id", group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "false")
        .set("isolation.level", "read_committed");
    c
}

/// Producer configuration: every write is acknowledged by all in-sync replicas, idempotent
/// (no duplicates or reordering from the producer's own retries).
pub fn producer_config(env: &KafkaEnv, passthrough: &[(String, String)]) -> ClientConfig {
    let mut c = base_config(env, passthrough, Role::Producer);
    c.set("acks", "all").set("enable.idempotence", "true");
    // Each partition awaits its record's publishes before the next record, so lingering
    // only adds latency (measured: the 10k-record test went from 26 s to 19 s with 0 ms).
    if c.get("linger.ms").is_none() {
        c.set("linger.ms", "0");
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    fn props(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn a_property_goes_only_to_the_clients_it_applies_to() {
        let env = KafkaEnv::default();
        let passthrough = props(&[
            ("session.timeout.ms", "45000"),
            ("linger.ms", "5"),
            ("socket.keepalive.enable", "true"),
        ]);
        let consumer = consumer_config(&env, &passthrough, "g");
        let producer = producer_config(&env, &passthrough);
        assert_eq!(consumer.get("session.timeout.ms"), Some("45000"));
        assert_eq!(producer.get("session.timeout.ms"), None);
        assert_eq!(producer.get("linger.ms"), Some("5"));
        assert_eq!(consumer.get("linger.ms"), None);
        // A property of both goes to both.
        assert_eq!(consumer.get("socket.keepalive.enable"), Some("true"));
        assert_eq!(producer.get("socket.keepalive.enable"), Some("true"));
    }
}
