//! [`MemoryLedger`]: the ledger in a map, for tests and `kasm invoke`.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use anyhow::Context as _;
use async_trait::async_trait;

use crate::now_ms;

use super::{Ledger, LedgerEntry, abbreviate, check_key, retention_cutoff};

type Map = HashMap<(String, String), LedgerEntry>;

/// An in-memory [`Ledger`]; contents live as long as the value. Not durable.
#[derive(Debug, Default)]
pub struct MemoryLedger {
    map: Mutex<Map>,
}

impl MemoryLedger {
    /// An empty ledger.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> anyhow::Result<MutexGuard<'_, Map>> {
        self.map
            .lock()
            .map_err(|_| anyhow::anyhow!("memory ledger lock poisoned"))
    }
}

#[async_trait]
impl Ledger for MemoryLedger {
    async fn get(&self, handler: &str, event_id: &str) -> anyhow::Result<Option<LedgerEntry>> {
        Ok(self
            .lock()?
            .get(&(handler.to_owned(), event_id.to_owned()))
            .cloned())
    }

    async fn record(
        &self,
        handler: &str,
        event_id: &str,
        entry: LedgerEntry,
    ) -> anyhow::Result<()> {
        check_key(handler, event_id).with_context(|| {
            format!(
                "ledger record handler={handler} event_id={}",
                abbreviate(event_id)
            )
        })?;
        self.lock()?
            .insert((handler.to_owned(), event_id.to_owned()), entry);
        Ok(())
    }

    async fn sweep(
        &self,
        handler: &str,
        retention: Duration,
        max_entries: u64,
    ) -> anyhow::Result<u64> {
        let cutoff = retention_cutoff(now_ms(), retention);
        let mut map = self.lock()?;
        let before = map.len();
        map.retain(|(h, _), e| h != handler || e.at_ms >= cutoff);
        let mut removed = before - map.len();

        // Oldest first, ties broken by event id: the same order as the file ledger's index.
        let mut left: Vec<(i64, String)> = map
            .iter()
            .filter(|((h, _), _)| h == handler)
            .map(|((_, id), e)| (e.at_ms, id.clone()))
            .collect();
        let cap = usize::try_from(max_entries).unwrap_or(usize::MAX);
        if left.len() > cap {
            left.sort_unstable();
            for (_, id) in left.drain(..left.len() - cap) {
                map.remove(&(handler.to_owned(), id));
                removed += 1;
            }
        }
        Ok(removed as u64)
    }

    async fn len(&self, handler: &str) -> anyhow::Result<u64> {
        Ok(self.lock()?.keys().filter(|(h, _)| h == handler).count() as u64)
    }
}
