//! Dead letters read back from a real broker: a listing decodes every dead letter in order
//! and its pages walk the topic once; a replay restores records to their source topic, stops
//! a loop at the replay limit, refuses what cannot be replayed, and says where a failed write
//! stopped it.

use std::time::Duration;

use kasm_tests::unique;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use kasm_host::config::KafkaEnv;
use kasm_host::dlq::decode::{PREVIEW_LIMIT, PayloadEncoding};
use kasm_host::dlq::list::{Cursor, list};
use kasm_host::dlq::replay::{RefusalKind, Selection, replay};
use kasm_host::dlq::{DLQ_HEADER_PREFIX, REPLAY_COUNT_HEADER};
use kasm_host::kafka::producer::KafkaProducer;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};

use kasm_host::dlq::letter::{self as dlq, DlqKind, Failure};
use kasm_host::kafka::Record;
use kasm_host::kafka::mock::EmbeddedCluster;
use kasm_host::runtime::FailureKind;

fn env(bootstrap: &str) -> KafkaEnv {
    KafkaEnv {
        bootstrap_servers: Some(bootstrap.to_owned()),
        ..KafkaEnv::default()
    }
}

fn config(bootstrap: &str) -> ClientConfig {
    kasm_host::kafka::base_config(&env(bootstrap), &[], kasm_host::kafka::Role::Consumer)
}

/// The dead letter kasm writes for `record`.
fn dead_letter_headers(record: &Record, i: usize) -> Vec<(String, Vec<u8>)> {
    let failure = Failure {
        kind: if i.is_multiple_of(2) {
            DlqKind::RetriesExhausted
        } else {
            DlqKind::Failure(FailureKind::Trap)
        },
        message: format!("boom {i}"),
        attempts: i as u32,
        first_failure_ms: 1_000 + i as i64,
        last_failure_ms: 2_000 + i as i64,
    };
    let p = dlq::Provenance {
        handler: "audit",
        group: "kasm.audit",
        component: "abc123",
        event_id: &format!("e{i}"),
    };
    dlq::headers(record, p, &failure)
}

/// A record to write: partition, key, payload, headers.
type Letter = (i32, Option<Vec<u8>>, Vec<u8>, Vec<(String, Vec<u8>)>);

/// Write `records` to `topic`; where they landed.
async fn write(bootstrap: &str, topic: &str, records: &[Letter]) -> Vec<(i32, i64)> {
    // All at once with a linger, so that one partition's records share a batch: on Tansu,
    // a ListOffsets "latest" query then answers short of the end (the reader must not
    // trust it).
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("acks", "all")
        .set("linger.ms", "50")
        .create()
        .unwrap();
    let sends = records.iter().map(|(p, key, payload, headers)| {
        let mut hs = OwnedHeaders::new();
        for (k, v) in headers {
            hs = hs.insert(Header {
                key: k,
                value: Some(v),
            });
        }
        let mut fr = FutureRecord::<[u8], [u8]>::to(topic)
            .partition(*p)
            .payload(payload)
            .headers(hs);
        if let Some(k) = key {
            fr = fr.key(k);
        }
        producer.send(fr, Duration::from_secs(10))
    });
    futures::future::join_all(sends)
        .await
        .into_iter()
        .map(|r| {
            let d = r.map_err(|(e, _)| e).unwrap();
            (d.partition, d.offset)
        })
        .collect()
}

/// Every record of `topic`: poll until `want` arrived and then 1 s of quiet, or 20 s.
async fn read_all(bootstrap: &str, topic: &str, want: usize) -> Vec<Record> {
    let (bootstrap, topic) = (bootstrap.to_owned(), topic.to_owned());
    tokio::task::spawn_blocking(move || {
        let c: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .set("group.id", unique("test-reader"))
            .set("enable.auto.commit", "false")
            .create()
            .unwrap();
        let md = c
            .fetch_metadata(Some(&topic), Duration::from_secs(10))
            .unwrap();
        let mut tpl = TopicPartitionList::new();
        for p in md.topics()[0].partitions() {
            tpl.add_partition_offset(&topic, p.id(), Offset::Beginning)
                .unwrap();
        }
        c.assign(&tpl).unwrap();
        let mut out = Vec::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        let mut quiet_since = std::time::Instant::now();
        while std::time::Instant::now() < deadline {
            if out.len() >= want && quiet_since.elapsed() > Duration::from_secs(1) {
                break;
            }
            if let Some(Ok(m)) = c.poll(Duration::from_millis(100)) {
                quiet_since = std::time::Instant::now();
                let mut r = Record::from_message(&m);
                r.timestamp_ms = None;
                out.push(r);
            }
        }
        out
    })
    .await
    .unwrap()
}

fn header<'a>(headers: &'a [(String, Vec<u8>)], key: &str) -> Vec<&'a [u8]> {
    headers
        .iter()
        .filter(|(k, _)| k == key)
        .map(|(_, v)| v.as_slice())
        .collect()
}

/// Create `topic` on the embedded cluster, else through the admin API of `bootstrap`.
async fn create_topic(
    cluster: Option<&EmbeddedCluster>,
    bootstrap: &str,
    topic: &str,
    partitions: i32,
) {
    if let Some(c) = cluster {
        return c.create_topic(topic, partitions).unwrap();
    }
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .unwrap();
    let t = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    for r in admin.create_topics([&t], &opts).await.unwrap() {
        r.unwrap();
    }
    // Until metadata shows every partition.
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .unwrap();
    for _ in 0..200 {
        let n = c
            .fetch_metadata(Some(topic), Duration::from_secs(2))
            .ok()
            .and_then(|m| m.topics().first().map(|t| t.partitions().len()))
            .unwrap_or(0);
        if n == partitions as usize {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("topic {topic} did not show {partitions} partitions");
}

/// The broker of `KASM_TEST_BOOTSTRAP` (e.g. Tansu), else an embedded cluster of 3 brokers,
/// with a source topic (3 partitions) and its dead-letter topic
/// (2 partitions) holding 5 dead letters: 3 in partition 0, 2 in partition 1. Payloads:
/// JSON, except #1 (not UTF-8) and #3 (8 KiB).
struct Fixture {
    /// The embedded cluster, unless the tests run against an external broker.
    cluster: Option<EmbeddedCluster>,
    bootstrap: String,
    source: String,
    dlq: String,
    /// The source records, by index; dead letter `i` is at `positions[i]`.
    records: Vec<Record>,
    positions: Vec<(i32, i64)>,
}

impl Fixture {
    async fn new() -> Self {
        let (cluster, bootstrap) = match std::env::var("KASM_TEST_BOOTSTRAP") {
            Ok(b) if !b.trim().is_empty() => (None, b.trim().to_owned()),
            _ => {
                let c = EmbeddedCluster::start(3).unwrap();
                let b = c.bootstrap_servers().to_owned();
                (Some(c), b)
            }
        };
        let source = unique("orders");
        let dlq = format!("{source}.dlq");
        create_topic(cluster.as_ref(), &bootstrap, &source, 3).await;
        create_topic(cluster.as_ref(), &bootstrap, &dlq, 2).await;
        let mut records = Vec::new();
        let mut letters = Vec::new();
        for i in 0..5usize {
            let payload = match i {
                1 => vec![0xff, 0x00, 0xfe, b'x'],
                3 => "é".repeat(4 << 10).into_bytes(),
                _ => format!(r#"{{"event_id":"e{i}","n":{i}}}"#).into_bytes(),
            };
            let record = Record {
                topic: source.clone(),
                partition: (i % 3) as i32,
                offset: 10 + i as i64,
                key: Some(format!("k{i}").into_bytes()),
                payload: Some(payload.clone()),
                headers: vec![
                    ("event-id".to_owned(), format!("e{i}").into_bytes()),
                    ("trace".to_owned(), format!("t{i}").into_bytes()),
                ],
                timestamp_ms: Some(1_700_000_000_000 + i as i64),
            };
            letters.push((
                i32::from(i >= 3),
                record.key.clone(),
                payload,
                dead_letter_headers(&record, i),
            ));
            records.push(record);
        }
        let positions = write(&bootstrap, &dlq, &letters).await;
        assert_eq!(positions, vec![(0, 0), (0, 1), (0, 2), (1, 0), (1, 1)]);
        Self {
            cluster,
            bootstrap,
            source,
            dlq,
            records,
            positions,
        }
    }

    fn bootstrap(&self) -> &str {
        &self.bootstrap
    }

    fn producer(&self) -> KafkaProducer {
        KafkaProducer::new(&env(self.bootstrap()), &[]).unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_decodes_every_dead_letter_in_order_and_pages_walk_them_once() {
    let f = Fixture::new().await;
    let page = list(config(f.bootstrap()), &f.dlq, None, 100)
        .await
        .unwrap();
    assert_eq!(page.next, None);
    let got: Vec<(i32, i64)> = page
        .records
        .iter()
        .map(|r| (r.partition, r.offset))
        .collect();
    assert_eq!(got, f.positions);
    for (i, (dl, rec)) in page.records.iter().zip(&f.records).enumerate() {
        let p = &dl.provenance;
        assert_eq!(p.source_topic.as_deref(), Some(f.source.as_str()));
        assert_eq!(p.source_partition, Some(rec.partition));
        assert_eq!(p.source_offset, Some(rec.offset));
        assert_eq!(p.source_timestamp_ms, rec.timestamp_ms);
        assert_eq!(p.handler.as_deref(), Some("audit"));
        assert_eq!(p.group.as_deref(), Some("kasm.audit"));
        assert_eq!(p.component.as_deref(), Some("abc123"));
        assert_eq!(p.event_id, Some(format!("e{i}")));
        let kind = if i.is_multiple_of(2) {
            "retries-exhausted"
        } else {
            "trap"
        };
        assert_eq!(p.error_kind.as_deref(), Some(kind));
        assert_eq!(p.error_message, Some(format!("boom {i}")));
        assert_eq!(p.attempts, Some(i as u32));
        assert_eq!(p.first_failure_ms, Some(1_000 + i as i64));
        assert_eq!(p.last_failure_ms, Some(2_000 + i as i64));
        assert_eq!(dl.replay_count, 0);
        assert_eq!(
            dl.headers,
            vec![
                ("event-id".to_owned(), format!("e{i}")),
                ("trace".to_owned(), format!("t{i}")),
            ]
        );
        assert_eq!(dl.key, Some(format!("k{i}")));
        assert!(dl.timestamp_ms.is_some());
        let bytes = rec.payload.as_deref().unwrap();
        assert_eq!(dl.payload_bytes, bytes.len());
        match i {
            1 => {
                assert_eq!(dl.payload, "ff00fe78");
                assert_eq!(dl.payload_encoding, PayloadEncoding::Hex);
                assert!(!dl.payload_truncated);
            }
            3 => {
                assert_eq!(dl.payload_encoding, PayloadEncoding::Utf8);
                assert!(dl.payload_truncated);
                assert_eq!(dl.payload, "é".repeat(PREVIEW_LIMIT / 2));
            }
            _ => {
                assert_eq!(dl.payload.as_bytes(), bytes);
                assert!(!dl.payload_truncated);
            }
        }
    }

    // Pages of 2: (0,0) (0,1) | (0,2) (1,0) | (1,1), each record exactly once.
    let mut seen = Vec::new();
    let mut cursor: Option<Cursor> = None;
    let mut pages = 0;
    loop {
        pages += 1;
        assert!(pages <= 10, "paging does not end");
        let page = list(config(f.bootstrap()), &f.dlq, cursor.as_ref(), 2)
            .await
            .unwrap();
        assert!(page.records.len() <= 2);
        seen.extend(page.records.iter().map(|r| (r.partition, r.offset)));
        match page.next {
            // The cursor survives its text form (JSON, query strings).
            Some(c) => cursor = Some(c.to_string().parse().unwrap()),
            None => break,
        }
    }
    assert_eq!(seen, f.positions);
    assert_eq!(pages, 3);

    // A cursor past the end: an empty last page.
    let end: Cursor = "0:3,1:2".parse().unwrap();
    let page = list(config(f.bootstrap()), &f.dlq, Some(&end), 2)
        .await
        .unwrap();
    assert!(page.records.is_empty());
    assert_eq!(page.next, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_all_restores_the_records_and_the_limit_stops_a_loop() {
    let f = Fixture::new().await;
    let producer = f.producer();
    let report = replay(config(f.bootstrap()), &producer, &f.dlq, &Selection::All, 2)
        .await
        .unwrap();
    assert_eq!(report.stopped, None);
    assert!(report.refused.is_empty(), "{:?}", report.refused);
    let done: Vec<(i32, i64)> = report
        .replayed
        .iter()
        .map(|r| (r.dlq_partition, r.dlq_offset))
        .collect();
    assert_eq!(done, f.positions);
    assert!(
        report
            .replayed
            .iter()
            .all(|r| r.topic == f.source && r.replay_count == 1)
    );

    let back = read_all(f.bootstrap(), &f.source, 5).await;
    assert_eq!(back.len(), 5);
    for r in &back {
        let event_id = String::from_utf8(header(&r.headers, "event-id")[0].to_vec()).unwrap();
        let i: usize = event_id[1..].parse().unwrap();
        let original = &f.records[i];
        assert_eq!(r.key, original.key);
        assert_eq!(r.payload, original.payload);
        let mut want = original.headers.clone();
        want.push((REPLAY_COUNT_HEADER.to_owned(), b"1".to_vec()));
        // Then the replay id (fresh) and the handler it is for.
        let (ids, rest): (Vec<_>, Vec<_>) = r
            .headers
            .iter()
            .cloned()
            .partition(|(k, _)| k == "kasm-replay-id");
        assert_eq!(ids.len(), 1, "one replay id");
        let rest: Vec<_> = rest
            .into_iter()
            .filter(|(k, _)| k != "kasm-replay-handler")
            .collect();
        assert_eq!(rest, want, "record e{i}: kasm-dlq-* removed, the rest kept");
        let entry = report
            .replayed
            .iter()
            .find(|x| x.event_id.as_deref() == Some(event_id.as_str()))
            .unwrap();
        assert_eq!((entry.partition, entry.offset), (r.partition, r.offset));
    }

    // The replays fail again: their dead letters carry kasm-replay-count = 1.
    let again: Vec<_> = back
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let rec = Record {
                topic: f.source.clone(),
                partition: r.partition,
                offset: r.offset,
                key: r.key.clone(),
                payload: r.payload.clone(),
                headers: r.headers.clone(),
                timestamp_ms: None,
            };
            (
                0,
                r.key.clone(),
                r.payload.clone().unwrap(),
                dead_letter_headers(&rec, i),
            )
        })
        .collect();
    let positions = write(f.bootstrap(), &f.dlq, &again).await;
    let listed = list(config(f.bootstrap()), &f.dlq, None, 100)
        .await
        .unwrap();
    assert_eq!(
        listed
            .records
            .iter()
            .filter(|r| r.replay_count == 1)
            .count(),
        5
    );

    // At the limit (1): refused, nothing written.
    let sel = Selection::Records(positions.clone());
    let report = replay(config(f.bootstrap()), &producer, &f.dlq, &sel, 1)
        .await
        .unwrap();
    assert!(report.replayed.is_empty());
    assert_eq!(report.refused.len(), 5);
    for r in &report.refused {
        assert_eq!(r.kind, RefusalKind::ReplayLimit);
        assert!(r.reason.contains("limit is 1"), "{}", r.reason);
    }

    // Under a higher limit one goes through, with count 2 and a single count header.
    let sel = Selection::Records(vec![positions[0]]);
    let report = replay(config(f.bootstrap()), &producer, &f.dlq, &sel, 2)
        .await
        .unwrap();
    assert_eq!(report.replayed.len(), 1, "{report:?}");
    assert_eq!(report.replayed[0].replay_count, 2);
    let back = read_all(f.bootstrap(), &f.source, 6).await;
    assert_eq!(back.len(), 6, "only the one replay was written");
    let last = back
        .iter()
        .find(|r| {
            (r.partition, r.offset) == (report.replayed[0].partition, report.replayed[0].offset)
        })
        .unwrap();
    assert_eq!(
        header(&last.headers, REPLAY_COUNT_HEADER),
        vec![b"2".as_slice()]
    );
    assert!(
        last.headers
            .iter()
            .all(|(k, _)| !k.starts_with(DLQ_HEADER_PREFIX))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_refuses_what_does_not_exist_or_has_no_source_and_writes_nothing() {
    let f = Fixture::new().await;
    // Partition 1 offset 2: not a dead letter. Offset 3: from a topic that is gone.
    let gone = Record {
        topic: unique("deleted"),
        partition: 0,
        offset: 0,
        key: None,
        payload: Some(b"x".to_vec()),
        headers: Vec::new(),
        timestamp_ms: None,
    };
    let extra = vec![
        (
            1,
            None,
            b"plain".to_vec(),
            vec![("trace".to_owned(), b"t".to_vec())],
        ),
        (1, None, b"x".to_vec(), dead_letter_headers(&gone, 9)),
    ];
    assert_eq!(
        write(f.bootstrap(), &f.dlq, &extra).await,
        vec![(1, 2), (1, 3)]
    );

    let producer = f.producer();
    let sel = Selection::Records(vec![(0, 999), (7, 0), (1, 2), (1, 3), (0, 999)]);
    let report = replay(config(f.bootstrap()), &producer, &f.dlq, &sel, 3)
        .await
        .unwrap();
    assert!(report.replayed.is_empty(), "{report:?}");
    assert_eq!(report.stopped, None);
    let kinds: Vec<(i32, i64, RefusalKind)> = report
        .refused
        .iter()
        .map(|r| (r.dlq_partition, r.dlq_offset, r.kind))
        .collect();
    assert_eq!(
        kinds,
        vec![
            (0, 999, RefusalKind::NotFound),
            (1, 2, RefusalKind::NoSourceTopic),
            (1, 3, RefusalKind::SourceTopicMissing),
            (7, 0, RefusalKind::NotFound),
        ]
    );
    assert!(read_all(f.bootstrap(), &f.source, 0).await.is_empty());
    assert!(read_all(f.bootstrap(), &gone.topic, 0).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_write_stops_the_replay_and_the_report_says_where() {
    let f = Fixture::new().await;
    let Some(cluster) = &f.cluster else {
        return; // fault injection needs the embedded cluster
    };
    let producer = f.producer();
    cluster
        .request_errors(
            RDKafkaApiKey::Produce,
            &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED; 10],
        )
        .unwrap();
    let sel = Selection::Records(vec![(0, 0), (0, 1), (1, 0)]);
    let report = replay(config(f.bootstrap()), &producer, &f.dlq, &sel, 3)
        .await
        .unwrap();
    cluster
        .clear_request_errors(RDKafkaApiKey::Produce)
        .unwrap();
    assert!(report.replayed.is_empty(), "{report:?}");
    let stopped = report.stopped.clone().unwrap();
    assert!(stopped.contains(&f.source), "{stopped}");
    let failed: Vec<_> = report
        .refused
        .iter()
        .filter(|r| r.kind == RefusalKind::WriteFailed)
        .collect();
    assert_eq!(failed.len(), 1, "{report:?}");
    assert_eq!(report.refused.len(), 3);
    assert!(
        report
            .refused
            .iter()
            .all(|r| matches!(r.kind, RefusalKind::WriteFailed | RefusalKind::NotAttempted))
    );
    assert!(read_all(f.bootstrap(), &f.source, 0).await.is_empty());
}
