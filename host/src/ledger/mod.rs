//! The dedup ledger: which events each handler has already finished, and how.
//!
//! # What it owns
//!
//! The ledger maps `(handler, event_id)` to a [`LedgerEntry`]: the outcome (`ok` or
//! `dead-lettered`), when it was recorded, the component version (sha256) that handled the
//! event and the source record (topic, partition, offset). Before a record is invoked the
//! pipeline asks [`Ledger::get`]; a hit means this handler already finished the event, so the
//! record is skipped and its offset marked done. Handlers are separate namespaces: the same
//! event id seen by `audit` and by `notification` is two independent entries.
//!
//! # The invariant
//!
//! The ledger is written *after* every effect of the event is acknowledged (the handler's
//! publishes and kv writes, or the DLQ write) and *before* the offset is stored. Each crash
//! window then costs at most a duplicate, never a loss:
//!
//! - crash before the ledger write: the effects happened but nothing remembers it; the record
//!   is redelivered and the handler runs again (at-least-once, the one duplicate the ledger
//!   cannot prevent — effects and ledger are not one transaction);
//! - crash after the ledger write, before the offset commit: the record is redelivered, the
//!   ledger hits, the record is skipped — no duplicate effect;
//! - a producer that re-sends the same event (same `event-id`) under a new offset: skipped too.
//!
//! For this to hold, [`Ledger::record`] returns only once the entry is durable (fsynced): an
//! offset must never be stored on the strength of a ledger entry a power cut can take back.
//!
//! # Backends
//!
//! [`KafkaLedger`] is the default: the entries are durable in a ledger topic per handler,
//! partitioned like the source, so a partition's ledger follows it to whichever host owns it
//! (restored on assignment, cached in memory). [`FileLedger`] (`ledger_store = "file"`) is for
//! one host: an embedded [redb](https://www.redb.org) file. redb is pure Rust (no C build on 2
//! cores), ACID with copy-on-write B-trees and checksummed commits (a torn write is rolled back
//! on open, not half-read), supports concurrent readers beside one writer, and has ordered tuple
//! keys, which gives the age index below for free. [`MemoryLedger`] keeps everything in a map,
//! for tests. [`NoLedger`] keeps nothing: a handler configured with `ledger = false` gets plain
//! at-least-once delivery without dedup.
//!
//! # Group commit
//!
//! A durable write costs an fsync, so one per record would cap a handler at a few hundred
//! records per second. [`FileLedger`] runs one writer thread: `record` sends its entry over a
//! bounded channel and waits on a oneshot reply; the writer takes everything queued (up to
//! [`MAX_BATCH`] operations), applies it in one redb transaction, makes it durable with one
//! small append to a write-ahead journal and one `fdatasync` (redb itself is committed durably
//! every few seconds, which empties the journal; opening the ledger replays it), and then
//! answers every caller in the batch. Under load
//! the batch grows with the number of waiting callers, so throughput scales with concurrency
//! (partitions in flight) while each caller still gets its own durability guarantee. If the
//! writer fails (a commit error, an I/O error), it stops: the failed batch, everything queued
//! and every later `record` get an error naming the cause, so the pipeline stops the partition
//! instead of storing offsets it cannot back. Reopening the file (a restart) recovers.
//!
//! # Retention and size cap
//!
//! Entries are not needed forever: a duplicate arrives within minutes or hours of the
//! original, not months. [`Ledger::sweep`] drops a handler's entries older than the retention
//! window (default 7 days, chosen by the caller), then, if more than `max_entries` remain, the
//! oldest until the cap holds. [`Ledger::get`] does not look at the clock: an entry is there
//! until a sweep removes it, so the window is "at least `retention`". [`FileLedger`] keeps a
//! secondary index ordered by `(handler, at_ms, event_id)` and a per-handler count, so a
//! sweep reads only the entries it removes and [`Ledger::len`] is one lookup.
//!
//! # Format
//!
//! Every stored value starts with a format-version byte ([`FORMAT_VERSION`]), followed by the
//! postcard encoding of that version's record. A newer kasm can read older versions and
//! migrate; an older kasm refuses a version it does not know (an error, never a silent miss
//! that would re-run a finished event). Change the encoded struct only together with a new
//! version byte.

mod file;
mod journal;
mod kafka;
mod memory;
mod off;

#[cfg(test)]
mod tests;

use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

pub use file::{FileLedger, MAX_BATCH, WriterStats};
pub use kafka::{Batch, Decoded, Item, KafkaLedger, decode as decode_ledger_record};
pub use memory::MemoryLedger;
pub use off::NoLedger;

/// The version byte that leads every value [`FileLedger`] stores.
pub const FORMAT_VERSION: u8 = 1;

/// The longest handler name or event id (in bytes) the ledger accepts. Event ids come from
/// record headers or payloads: the identify step should refuse (dead-letter) longer ones,
/// since [`Ledger::record`] fails for them and a record that can never be recorded would
/// stop its partition.
pub const MAX_KEY_PART_BYTES: usize = 1024;

/// What happened to an event, as the ledger remembers it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum LedgerOutcome {
    /// The handler returned ok and every effect it asked for was acknowledged.
    Ok,
    /// The record was written to the dead-letter topic (and the write acknowledged).
    DeadLettered,
}

/// One remembered event of one handler.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerEntry {
    /// How the event ended.
    pub outcome: LedgerOutcome,
    /// When the entry was recorded, unix milliseconds. Retention and eviction go by this.
    pub at_ms: i64,
    /// sha256 (hex) of the component version that handled the event.
    pub component_sha256: String,
    /// Topic of the source record.
    pub topic: String,
    /// Partition of the source record.
    pub partition: i32,
    /// Offset of the source record.
    pub offset: i64,
}

/// A ledger backend. Keys are `(handler, event_id)`; handlers never see each other's entries.
#[async_trait]
pub trait Ledger: Send + Sync + std::fmt::Debug {
    /// The entry for `(handler, event_id)`, if recorded and not yet removed by a sweep.
    async fn get(&self, handler: &str, event_id: &str) -> anyhow::Result<Option<LedgerEntry>>;

    /// Whether each of `event_ids` has an entry for `handler`, in order: a batch's lookups in
    /// one read. A backend that can answer a group at once overrides this; the default asks
    /// one by one.
    async fn contains_many(&self, handler: &str, event_ids: &[&str]) -> anyhow::Result<Vec<bool>> {
        let mut found = Vec::with_capacity(event_ids.len());
        for id in event_ids {
            found.push(self.get(handler, id).await?.is_some());
        }
        Ok(found)
    }

    /// Record `(handler, event_id)` → `entry`, replacing any existing entry.
    ///
    /// When this returns `Ok` the entry is durable: it survives the process being killed (or
    /// the machine losing power) right after. Call it after the event's effects are
    /// acknowledged and before its offset is stored.
    async fn record(&self, handler: &str, event_id: &str, entry: LedgerEntry)
    -> anyhow::Result<()>;

    /// Record several entries of `handler` at once, in order (a later entry for the same
    /// event id replaces an earlier one). When this returns `Ok` every entry is durable; on an
    /// error, any of them may or may not be (recording them again is harmless). A backend that
    /// can make a group durable with one sync overrides this; the default records one by one.
    async fn record_many(
        &self,
        handler: &str,
        entries: Vec<(String, LedgerEntry)>,
    ) -> anyhow::Result<()> {
        for (event_id, entry) in entries {
            self.record(handler, &event_id, entry).await?;
        }
        Ok(())
    }

    /// Remove `handler`'s entries older than `retention` (by `at_ms` against now), then, if more
    /// than `max_entries` remain for `handler`, remove the oldest (by `at_ms`, then event id)
    /// until `max_entries` remain. Returns how many entries were removed in total.
    async fn sweep(
        &self,
        handler: &str,
        retention: Duration,
        max_entries: u64,
    ) -> anyhow::Result<u64>;

    /// Number of entries `handler` has (for metrics and tests).
    async fn len(&self, handler: &str) -> anyhow::Result<u64>;

    /// Called when the host is assigned source partition `topic/partition` of `handler`, before
    /// its first record is looked up: a ledger whose durable copy is elsewhere (the ledger
    /// topic) reads the entries of that partition it does not have yet, and from then on takes
    /// writes for the partition. `None`: nothing to restore (the ledger is all local).
    async fn restore(
        &self,
        _handler: &str,
        _topic: &str,
        _partition: i32,
    ) -> anyhow::Result<Option<Restored>> {
        Ok(None)
    }

    /// The host no longer owns source partition `topic/partition` of `handler`: a ledger that
    /// shares its entries with other hosts refuses further writes for it (a host that lost a
    /// partition must not record what the new owner does not read).
    fn release(&self, _handler: &str, _topic: &str, _partition: i32) {}
}

/// What a [`Ledger::restore`] read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Restored {
    /// Entries applied (within the retention window).
    pub entries: u64,
    /// The ledger-topic offset the read started at.
    pub from: i64,
    /// The ledger-topic offset it read up to (exclusive).
    pub to: i64,
}

/// Refuses a handler name or event id the ledger does not store (see [`MAX_KEY_PART_BYTES`]).
pub(crate) fn check_key(handler: &str, event_id: &str) -> anyhow::Result<()> {
    for (what, part) in [("handler name", handler), ("event id", event_id)] {
        anyhow::ensure!(
            part.len() <= MAX_KEY_PART_BYTES,
            "{what} is {} bytes; the ledger takes at most {MAX_KEY_PART_BYTES}",
            part.len()
        );
    }
    Ok(())
}

/// `s` cut to a length fit for an error message (an oversized event id may be megabytes).
pub(crate) fn abbreviate(s: &str) -> std::borrow::Cow<'_, str> {
    const KEEP: usize = 128;
    if s.len() <= KEEP {
        return s.into();
    }
    format!("{}… ({} bytes)", &s[..s.floor_char_boundary(KEEP)], s.len()).into()
}

/// The `at_ms` below which entries are older than `retention`.
pub(crate) fn retention_cutoff(now_ms: i64, retention: Duration) -> i64 {
    let retention_ms = i64::try_from(retention.as_millis()).unwrap_or(i64::MAX);
    now_ms.saturating_sub(retention_ms)
}
