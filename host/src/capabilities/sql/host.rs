//! The host side of the `sql` import: statements run in the batch's transaction, under this
//! call's savepoint, each bounded by the handler's SQL timeout.

use std::time::Duration;

use crate::wit as bindings;
use crate::wit::{WitSqlError, WitSqlRows, WitSqlValue};

use super::{SqlError, SqlTx, SqlValue};
use crate::capabilities::state::CapabilityState;

impl bindings::kasm::handler::sql::Host for CapabilityState {
    async fn execute(
        &mut self,
        statement: String,
        params: Vec<WitSqlValue>,
    ) -> Result<u64, WitSqlError> {
        let params = from_wit_params(params);
        let limit = self.env.sql_timeout;
        let tx = self.sql_tx().await?;
        let result = bounded_sql(limit, tx.execute(&statement, &params)).await;
        let n = self.note_sql(result)?;
        let fx = &mut self.call.effects;
        fx.sql_statements = fx.sql_statements.saturating_add(1);
        fx.sql_rows_changed = fx.sql_rows_changed.saturating_add(n);
        Ok(n)
    }

    async fn query(
        &mut self,
        statement: String,
        params: Vec<WitSqlValue>,
    ) -> Result<WitSqlRows, WitSqlError> {
        let params = from_wit_params(params);
        let limit = self.env.sql_timeout;
        let tx = self.sql_tx().await?;
        let result = bounded_sql(limit, tx.query(&statement, &params))
            .await
            .and_then(|rows| {
                if rows.rows.len() > MAX_SQL_ROWS {
                    Err(SqlError::Rejected(format!(
                        "the query returned {} rows, over the limit of {MAX_SQL_ROWS}; add a LIMIT",
                        rows.rows.len()
                    )))
                } else {
                    Ok(rows)
                }
            });
        let rows = self.note_sql(result)?;
        let fx = &mut self.call.effects;
        fx.sql_statements = fx.sql_statements.saturating_add(1);
        Ok(WitSqlRows {
            columns: rows.columns,
            rows: rows
                .rows
                .into_iter()
                .map(|r| r.into_iter().map(to_wit_value).collect())
                .collect(),
        })
    }
}

/// Most rows one query may return to a handler.
const MAX_SQL_ROWS: usize = 10_000;

impl CapabilityState {
    /// The batch's transaction, opened at the first statement of the batch, with this call's
    /// savepoint taken at the call's first statement: a call that fails is rolled back to it
    /// alone, and the records before it keep their writes.
    async fn sql_tx(&mut self) -> Result<&mut Box<dyn SqlTx>, WitSqlError> {
        let Some(db) = self.env.sql.clone() else {
            return Err(WitSqlError::Rejected(format!(
                "the sql capability is not granted to handler `{}`",
                self.env.name
            )));
        };
        if let Some(e) = &self.call.sql_failed {
            return Err(to_wit_error(SqlError::Rejected(format!(
                "an earlier statement of this call failed and its writes are rolled back ({e})"
            ))));
        }
        if self.call.sql_lost {
            return Err(WitSqlError::Unavailable(
                "the batch's transaction was lost (a statement did not answer in time)".into(),
            ));
        }
        let limit = self.env.sql_timeout;
        if self.call.sql.is_none() {
            let tx = bounded_sql(limit, db.begin()).await;
            let mut tx = self.note_sql(tx)?;
            tx.bound_statements(limit);
            self.call.sql = Some(tx);
        }
        let tx = self.call.sql.as_mut().ok_or_else(gone)?;
        if !self.call.savepoint_open {
            // Taken in the same trip as the call's first statement.
            tx.defer(SAVEPOINT);
            self.call.savepoint_open = true;
        }
        Ok(tx)
    }

    /// Remember a failed statement: the call cannot commit (its savepoint is rolled back when
    /// it ends; PostgreSQL refuses further statements until then anyway, and SQLite is made to
    /// agree). A statement that did not answer in time leaves the connection in an unknown
    /// state: the batch's transaction is dropped (rolled back) and the batch cannot commit.
    fn note_sql<T>(&mut self, r: Result<T, SqlError>) -> Result<T, WitSqlError> {
        r.map_err(|e| {
            if let SqlError::Unavailable(m) = &e
                && m.starts_with(SQL_NO_ANSWER)
            {
                self.call.sql = None;
                self.call.sql_lost = true;
            }
            self.call.sql_failed = Some(e.clone());
            to_wit_error(e)
        })
    }
}

fn gone() -> WitSqlError {
    WitSqlError::Unavailable("the batch's transaction is gone".into())
}

/// The savepoint a call's writes run under inside the batch's transaction. One name serves
/// every call: a call's savepoint is released or rolled back before the next call takes it,
/// so savepoints never nest, and the three statements below are the same text each time
/// (prepared once per connection where the backend caches statements).
pub const SAVEPOINT: &str = "SAVEPOINT kasm_call";
/// A call's writes join the batch's transaction.
pub const RELEASE_SAVEPOINT: &str = "RELEASE SAVEPOINT kasm_call";
/// A failed call's writes are undone; the records before it keep theirs.
pub const ROLLBACK_TO_SAVEPOINT: &[&str] = &["ROLLBACK TO SAVEPOINT kasm_call", RELEASE_SAVEPOINT];

/// How a statement that did not answer within its bound is reported.
const SQL_NO_ANSWER: &str = "the database did not answer within";

async fn bounded_sql<T>(
    limit: Duration,
    fut: impl std::future::Future<Output = Result<T, SqlError>>,
) -> Result<T, SqlError> {
    match tokio::time::timeout(limit, fut).await {
        Ok(r) => r,
        Err(_) => Err(SqlError::Unavailable(format!("{SQL_NO_ANSWER} {limit:?}"))),
    }
}

fn from_wit_params(params: Vec<WitSqlValue>) -> Vec<SqlValue> {
    params
        .into_iter()
        .map(|v| match v {
            WitSqlValue::Null => SqlValue::Null,
            WitSqlValue::Integer(i) => SqlValue::Integer(i),
            WitSqlValue::Real(r) => SqlValue::Real(r),
            WitSqlValue::Text(t) => SqlValue::Text(t),
            WitSqlValue::Blob(b) => SqlValue::Blob(b),
        })
        .collect()
}

fn to_wit_value(v: SqlValue) -> WitSqlValue {
    match v {
        SqlValue::Null => WitSqlValue::Null,
        SqlValue::Integer(i) => WitSqlValue::Integer(i),
        SqlValue::Real(r) => WitSqlValue::Real(r),
        SqlValue::Text(t) => WitSqlValue::Text(t),
        SqlValue::Blob(b) => WitSqlValue::Blob(b),
    }
}

fn to_wit_error(e: SqlError) -> WitSqlError {
    match e {
        SqlError::Unavailable(m) => WitSqlError::Unavailable(m),
        SqlError::Rejected(m) => WitSqlError::Rejected(m),
    }
}
