//! The redb tables of the file ledger, and the versioned encoding of an entry (a version byte,
//! then postcard).

use std::collections::HashMap;

use anyhow::{Context as _, anyhow};
use redb::{Database, ReadableTable, Table, TableDefinition, WriteTransaction};
use serde::{Deserialize, Serialize};

use crate::ledger::{FORMAT_VERSION, LedgerEntry, LedgerOutcome};

pub(super) const ENTRIES: TableDefinition<(&str, &str), &[u8]> =
    TableDefinition::new("ledger_entries");
pub(super) const BY_AGE: TableDefinition<(&str, i64, &str), ()> =
    TableDefinition::new("ledger_by_age");
pub(super) const COUNTS: TableDefinition<&str, u64> = TableDefinition::new("ledger_counts");
/// Create the tables, so that readers find them even before the first record.
pub(super) fn create_tables(db: &Database) -> anyhow::Result<()> {
    let txn = db.begin_write()?;
    txn.open_table(ENTRIES)?;
    txn.open_table(BY_AGE)?;
    txn.open_table(COUNTS)?;
    txn.commit()?;
    Ok(())
}
/// The ledger's tables, open in one write transaction. [`Tables::close`] must be called
/// before the transaction commits: the handlers' counts are kept here while entries are
/// inserted and removed (one table write per handler and transaction, not two per entry) and
/// written then.
pub(super) struct Tables<'txn> {
    pub(super) entries: Table<'txn, (&'static str, &'static str), &'static [u8]>,
    pub(super) by_age: Table<'txn, (&'static str, i64, &'static str), ()>,
    pub(super) counts: Table<'txn, &'static str, u64>,
    /// Each handler's count as this transaction has changed it.
    pub(super) changed_counts: HashMap<String, u64>,
}
impl<'txn> Tables<'txn> {
    pub(super) fn open(txn: &'txn WriteTransaction) -> anyhow::Result<Self> {
        Ok(Self {
            entries: txn.open_table(ENTRIES)?,
            by_age: txn.open_table(BY_AGE)?,
            counts: txn.open_table(COUNTS)?,
            changed_counts: HashMap::new(),
        })
    }

    /// Write the changed counts.
    pub(super) fn close(mut self) -> anyhow::Result<()> {
        for (handler, n) in std::mem::take(&mut self.changed_counts) {
            if n == 0 {
                self.counts.remove(handler.as_str())?;
            } else {
                self.counts.insert(handler.as_str(), n)?;
            }
        }
        Ok(())
    }

    pub(super) fn insert(
        &mut self,
        handler: &str,
        event_id: &str,
        at_ms: i64,
        value: &[u8],
    ) -> anyhow::Result<()> {
        let previous = self
            .entries
            .insert((handler, event_id), value)?
            .map(|old| old.value().to_vec());
        match previous {
            None => {
                let n = self.count(handler)?;
                self.set_count(handler, n + 1);
            }
            Some(old) => match decode(&old) {
                Ok(old) => {
                    self.by_age.remove((handler, old.at_ms, event_id))?;
                }
                Err(err) => {
                    // Not readable, so its age is unknown: find its index key the slow way.
                    tracing::warn!(
                        handler,
                        event_id,
                        error = %format!("{err:#}"),
                        "overwriting an unreadable ledger entry"
                    );
                    self.unindex_by_scan(handler, event_id)?;
                }
            },
        }
        self.by_age.insert((handler, at_ms, event_id), ())?;
        Ok(())
    }

    pub(super) fn sweep(
        &mut self,
        handler: &str,
        cutoff: i64,
        max_entries: u64,
    ) -> anyhow::Result<u64> {
        // Every key in this range has `handler` as its first part.
        let expired = self
            .by_age
            .range((handler, i64::MIN, "")..(handler, cutoff, ""))?
            .map(|item| item.map(|(key, _)| age_key(&key.value())))
            .collect::<Result<Vec<_>, _>>()?;
        let mut removed = self.remove(handler, &expired)?;

        let left = self.count(handler)?;
        if left > max_entries {
            let excess = left - max_entries;
            let mut oldest = Vec::new();
            for item in self.by_age.range((handler, i64::MIN, "")..)? {
                if oldest.len() as u64 >= excess {
                    break;
                }
                let (key, _) = item?;
                let key = key.value();
                if key.0 != handler {
                    break;
                }
                oldest.push(age_key(&key));
            }
            removed += self.remove(handler, &oldest)?;
        }
        Ok(removed)
    }

    /// Remove `handler`'s entries at these `(at_ms, event_id)`; returns how many.
    pub(super) fn remove(&mut self, handler: &str, keys: &[(i64, String)]) -> anyhow::Result<u64> {
        if keys.is_empty() {
            return Ok(0);
        }
        for (at_ms, event_id) in keys {
            self.by_age.remove((handler, *at_ms, event_id.as_str()))?;
            self.entries.remove((handler, event_id.as_str()))?;
        }
        let removed = keys.len() as u64;
        let n = self.count(handler)?;
        self.set_count(handler, n.saturating_sub(removed));
        Ok(removed)
    }

    /// Remove every index key of `(handler, event_id)`, whatever its age.
    pub(super) fn unindex_by_scan(&mut self, handler: &str, event_id: &str) -> anyhow::Result<()> {
        let mut ages = Vec::new();
        for item in self.by_age.range((handler, i64::MIN, "")..)? {
            let (key, _) = item?;
            let (h, at_ms, id) = key.value();
            if h != handler {
                break;
            }
            if id == event_id {
                ages.push(at_ms);
            }
        }
        for at_ms in ages {
            self.by_age.remove((handler, at_ms, event_id))?;
        }
        Ok(())
    }

    pub(super) fn count(&self, handler: &str) -> anyhow::Result<u64> {
        if let Some(n) = self.changed_counts.get(handler) {
            return Ok(*n);
        }
        Ok(self.counts.get(handler)?.map_or(0, |n| n.value()))
    }

    pub(super) fn set_count(&mut self, handler: &str, n: u64) {
        match self.changed_counts.get_mut(handler) {
            Some(count) => *count = n,
            None => {
                self.changed_counts.insert(handler.to_owned(), n);
            }
        }
    }
}
pub(super) fn age_key(key: &(&str, i64, &str)) -> (i64, String) {
    (key.1, key.2.to_owned())
}
/// Format version 1 of a stored entry. The field order and the outcome's variant order are
/// the on-disk format: change them only together with a new [`FORMAT_VERSION`].
#[derive(Serialize, Deserialize)]
pub(super) struct StoredV1 {
    outcome: StoredOutcomeV1,
    at_ms: i64,
    component_sha256: String,
    topic: String,
    partition: i32,
    offset: i64,
}
#[derive(Serialize, Deserialize)]
pub(super) enum StoredOutcomeV1 {
    Ok,
    DeadLettered,
}
/// The version byte of [`StoredV1`]; a new version keeps reading this one.
pub(super) const VERSION_1: u8 = 1;
const _: () = assert!(
    FORMAT_VERSION == VERSION_1,
    "encode() writes the current version"
);
pub(in crate::ledger) fn encode(entry: LedgerEntry) -> anyhow::Result<Vec<u8>> {
    let stored = StoredV1 {
        outcome: match entry.outcome {
            LedgerOutcome::Ok => StoredOutcomeV1::Ok,
            LedgerOutcome::DeadLettered => StoredOutcomeV1::DeadLettered,
        },
        at_ms: entry.at_ms,
        component_sha256: entry.component_sha256,
        topic: entry.topic,
        partition: entry.partition,
        offset: entry.offset,
    };
    postcard::to_extend(&stored, vec![FORMAT_VERSION]).context("encode ledger entry")
}
pub(in crate::ledger) fn decode(bytes: &[u8]) -> anyhow::Result<LedgerEntry> {
    match bytes.split_first() {
        Some((&VERSION_1, rest)) => {
            let stored: StoredV1 =
                postcard::from_bytes(rest).context("decode ledger entry (format version 1)")?;
            Ok(LedgerEntry {
                outcome: match stored.outcome {
                    StoredOutcomeV1::Ok => LedgerOutcome::Ok,
                    StoredOutcomeV1::DeadLettered => LedgerOutcome::DeadLettered,
                },
                at_ms: stored.at_ms,
                component_sha256: stored.component_sha256,
                topic: stored.topic,
                partition: stored.partition,
                offset: stored.offset,
            })
        }
        Some((version, _)) => Err(anyhow!(
            "ledger entry has format version {version}; this kasm reads version {FORMAT_VERSION}"
        )),
        None => Err(anyhow!("empty ledger entry")),
    }
}
