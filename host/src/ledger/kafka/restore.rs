//! Restoring a partition's ledger: reading its ledger partition to the end (partition EOF,
//! and at least the high watermark, which some brokers under-report) into the local copy.

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message as _;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use super::*;

/// How long a restore may go without reading anything before it fails (and is tried again).
pub(super) const RESTORE_STALL: Duration = Duration::from_secs(30);
/// The consumer that reads ledger partitions.
pub(super) type Reader = BaseConsumer<ReaderContext>;
/// A reader's callbacks: the end of a partition is how a restore knows it is done, not an
/// error to log (librdkafka also reports it to the client's error callback).
pub(super) struct ReaderContext;
impl rdkafka::client::ClientContext for ReaderContext {
    fn error(&self, error: KafkaError, reason: &str) {
        if !matches!(
            error,
            KafkaError::PartitionEOF(_) | KafkaError::Global(RDKafkaErrorCode::PartitionEOF)
        ) {
            tracing::warn!(%error, reason, "ledger reader: kafka client error");
        }
    }
}
impl rdkafka::consumer::ConsumerContext for ReaderContext {}
/// Read ledger partition `lp` of `topic` from `from` (the log start if `None` or before it) to
/// its end; `apply` gets each record's entries. Returns where the read started and ended.
///
/// The end is where the consumer reaches partition EOF, and at least the high watermark
/// asked for first: a broker's ListOffsets may lag what it has acknowledged (Tansu 0.6 answers
/// hundreds of records short right after a burst of writes), so the watermark alone could stop
/// a restore short of entries whose writes were acknowledged.
pub(super) fn read_partition(
    config: &ClientConfig,
    topic: &str,
    lp: i32,
    from: Option<i64>,
    mut apply: impl FnMut(&Decoded<'_>),
) -> anyhow::Result<(i64, i64)> {
    let c: Reader = config
        .create_with_context(ReaderContext)
        .context("creating a ledger reader")?;
    let (low, high) = c
        .fetch_watermarks(topic, lp, REQUEST_TIMEOUT)
        .with_context(|| format!("reading the ends of {topic}/{lp}"))?;
    let start = from.map_or(low, |f| f.max(low));
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, lp, Offset::Offset(start))
        .context("building the assignment")?;
    c.assign(&tpl).context("assigning the ledger partition")?;
    let mut next = start;
    let mut last_progress = Instant::now();
    loop {
        match c.poll(Duration::from_millis(100)) {
            None => {
                if last_progress.elapsed() > RESTORE_STALL {
                    bail!(
                        "reading {topic}/{lp}: nothing for {RESTORE_STALL:?} at offset {next} (high watermark {high})"
                    );
                }
            }
            Some(Err(KafkaError::PartitionEOF(_))) if next >= high => break,
            Some(Err(KafkaError::PartitionEOF(_))) => {}
            Some(Err(e)) => {
                return Err(anyhow::Error::new(e)).with_context(|| format!("reading {topic}/{lp}"));
            }
            Some(Ok(m)) => {
                last_progress = Instant::now();
                let offset = m.offset();
                next = next.max(offset + 1);
                let decoded = decode(m.key(), m.payload().unwrap_or_default())
                    .with_context(|| format!("{topic}/{lp} offset {offset}"))?;
                if let Some(d) = decoded {
                    apply(&d);
                }
            }
        }
    }
    close_aside(c);
    Ok((start, next))
}

/// Close a reader on a thread of its own: librdkafka's close waits for its threads to wind
/// down (~100 ms on the embedded cluster, ten times the restore of an empty partition), and
/// the partition's first record waits for the restore.
fn close_aside(c: Reader) {
    let spawned = std::thread::Builder::new()
        .name("kasm-ledger-reader-close".into())
        .spawn(move || drop(c));
    if let Err(e) = spawned {
        // No thread to spare: the reader was closed in place (the closure is dropped with
        // the error) and only the restore's time paid for it.
        tracing::debug!(error = %e, "ledger reader closed in place");
    }
}
/// Where a restore applies what it reads.
pub(super) struct RestoreTarget {
    pub(super) cache: Arc<RwLock<HashMap<String, HandlerCache>>>,
    pub(super) handler: String,
    pub(super) cutoff_ms: i64,
    pub(super) applied: u64,
}
impl RestoreTarget {
    /// Apply one record's entries (a batch's, under one lock).
    pub(super) fn apply(&mut self, d: &Decoded<'_>) {
        if d.is_empty() {
            return;
        }
        let mut cache = self.cache.write().unwrap_or_else(PoisonError::into_inner);
        let h = cache.entry(self.handler.clone()).or_default();
        self.applied += h.insert_decoded(d, self.cutoff_ms);
    }
}
