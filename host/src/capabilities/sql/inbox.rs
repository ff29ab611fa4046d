//! The inbox: one row per (consumer group, event) that a batch's SQL transaction committed,
//! written in that same transaction, so that a record whose batch committed is never applied to
//! the database twice, even when it runs again elsewhere.

use anyhow::Context as _;

use super::{SqlDatabase, SqlError, SqlTx, SqlValue};

/// The table the host keeps in every database an `sql` grant names: one row per event (per
/// consumer group, like the ledger topic) whose writes a batch committed, inserted in that
/// same transaction. The dedup check consults it,
/// so an event whose transaction committed is never run again on this database, whichever
/// host asks and whatever the ledger topic has recorded: its SQL effects apply exactly once.
const INBOX_DDL: &str = "CREATE TABLE IF NOT EXISTS kasm_inbox (\
    consumer_group TEXT NOT NULL, event_key TEXT NOT NULL, at_ms BIGINT NOT NULL, \
    PRIMARY KEY (consumer_group, event_key))";

/// Most keys in one inbox statement (three parameters each).
const INBOX_CHUNK: usize = 256;

/// Create the inbox table if absent (under the migration lock: hosts starting together).
pub async fn ensure_inbox(db: &dyn SqlDatabase) -> anyhow::Result<()> {
    let mut tx = db
        .begin_migration()
        .await
        .with_context(|| format!("taking the migration lock on {}", db.describe()))?;
    tx.batch(INBOX_DDL).await.context("creating kasm_inbox")?;
    tx.commit().await.context("creating kasm_inbox")?;
    Ok(())
}

/// Add `keys` of consumer group `group` to the inbox inside `tx` (a batch's transaction, before it commits).
///
/// No `ON CONFLICT`: a key already there means another transaction applied this event's writes
/// since the batch looked (a host that has not yet learnt it lost the partition). The insert
/// then fails, the batch's transaction with it, and its records run again, when the inbox
/// lookup finds the key and skips them. Ignoring the conflict would commit the writes twice.
pub async fn inbox_insert(
    tx: &mut dyn SqlTx,
    group: &str,
    keys: &[&str],
    at_ms: i64,
) -> Result<(), SqlError> {
    for chunk in keys.chunks(INBOX_CHUNK) {
        let mut statement =
            String::from("INSERT INTO kasm_inbox (consumer_group, event_key, at_ms) VALUES ");
        let mut params = Vec::with_capacity(chunk.len() * 3);
        for (i, k) in chunk.iter().enumerate() {
            if i > 0 {
                statement.push_str(", ");
            }
            let n = i * 3;
            statement.push_str(&format!("(${}, ${}, ${})", n + 1, n + 2, n + 3));
            params.push(SqlValue::Text(group.to_owned()));
            params.push(SqlValue::Text((*k).to_owned()));
            params.push(SqlValue::Integer(at_ms));
        }
        tx.execute(&statement, &params).await?;
    }
    Ok(())
}

/// Which of `keys` the inbox of consumer group `group` holds.
pub async fn inbox_contains(
    db: &dyn SqlDatabase,
    group: &str,
    keys: &[&str],
) -> Result<std::collections::HashSet<String>, SqlError> {
    let mut found = std::collections::HashSet::new();
    if keys.is_empty() {
        return Ok(found);
    }
    let mut tx = db.begin().await?;
    for chunk in keys.chunks(INBOX_CHUNK) {
        let mut statement = String::from(
            "SELECT event_key FROM kasm_inbox WHERE consumer_group = $1 AND event_key IN (",
        );
        let mut params = vec![SqlValue::Text(group.to_owned())];
        for (i, k) in chunk.iter().enumerate() {
            if i > 0 {
                statement.push_str(", ");
            }
            statement.push_str(&format!("${}", i + 2));
            params.push(SqlValue::Text((*k).to_owned()));
        }
        statement.push(')');
        let rows = tx.query(&statement, &params).await?;
        for row in rows.rows {
            if let Some(SqlValue::Text(k)) = row.into_iter().next() {
                found.insert(k);
            }
        }
    }
    Ok(found)
}

/// Remove inbox rows of consumer group `group` recorded before `cutoff_ms`; how many.
pub async fn inbox_sweep(
    db: &dyn SqlDatabase,
    group: &str,
    cutoff_ms: i64,
) -> Result<u64, SqlError> {
    let mut tx = db.begin().await?;
    let n = tx
        .execute(
            "DELETE FROM kasm_inbox WHERE consumer_group = $1 AND at_ms < $2",
            &[
                SqlValue::Text(group.to_owned()),
                SqlValue::Integer(cutoff_ms),
            ],
        )
        .await?;
    tx.commit().await?;
    Ok(n)
}

// ---------------------------------------------------------------------------------------
// SQLite
