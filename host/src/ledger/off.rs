//! [`NoLedger`]: the ledger switched off (`ledger = false` on a handler).
//!
//! Nothing is remembered: every lookup misses and every record is accepted at once. The
//! handler then gets plain at-least-once delivery — a redelivered record, or the same event
//! re-sent under a new offset, runs again — for handlers whose effects are idempotent by
//! themselves (an upsert keyed by event id, say). Offsets still move only after processing.

use std::time::Duration;

use async_trait::async_trait;

use super::{Ledger, LedgerEntry};

/// A [`Ledger`] that keeps nothing.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoLedger;

#[async_trait]
impl Ledger for NoLedger {
    async fn get(&self, _handler: &str, _event_id: &str) -> anyhow::Result<Option<LedgerEntry>> {
        Ok(None)
    }

    async fn record(
        &self,
        _handler: &str,
        _event_id: &str,
        _entry: LedgerEntry,
    ) -> anyhow::Result<()> {
        Ok(())
    }

    async fn sweep(
        &self,
        _handler: &str,
        _retention: Duration,
        _max_entries: u64,
    ) -> anyhow::Result<u64> {
        Ok(0)
    }

    async fn len(&self, _handler: &str) -> anyhow::Result<u64> {
        Ok(0)
    }
}
