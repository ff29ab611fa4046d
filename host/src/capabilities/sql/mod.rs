//! The `sql` capability: parameterized statements on the database granted to a handler.
//!
//! Two backends behind [`SqlDatabase`]: an SQLite file (the default, in the data folder) and
//! PostgreSQL (when the grant names an environment variable holding the connection URL, so
//! the credentials never live in `kasm.toml`).
//!
//! Every call of the handler that touches SQL runs in **one transaction**, opened at its
//! first statement and committed only when the handler returns `ok` (before its publishes
//! are sent and before the ledger records the event); a failure, trap or timeout rolls it
//! back. A handler that fails half way therefore leaves no rows behind. A crash between the
//! commit and the ledger write re-runs the event, so statements should be idempotent by
//! event id (`INSERT … ON CONFLICT DO NOTHING`), which is what the audit handler does.
//!
//! Parameters are positional, written `$1`, `$2`, … in both dialects, and bound by value:
//! the API has no way to splice text into a statement. Values are typed both ways
//! ([`SqlValue`]: null, integer, real, text, blob).
//!
//! Schema: the grant may name a migrations folder. Its `*.sql` files are applied in name
//! order, once each, when the handler starts and whenever a new version is deployed; applied
//! files are recorded in the table `kasm_migrations` with their sha256, and a file changed
//! after it was applied is refused (write a new file instead).

//!
//! Layout: the types and traits here; `sqlite` and `postgres` the backends, `migrations`
//! and `inbox` the schema kasm applies, `host` the `sql` import's `Host` impl.

mod host;
mod inbox;
mod migrations;
mod postgres;
mod sqlite;

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use async_trait::async_trait;

pub use host::{RELEASE_SAVEPOINT, ROLLBACK_TO_SAVEPOINT, SAVEPOINT};
pub use inbox::{ensure_inbox, inbox_contains, inbox_insert, inbox_sweep};
pub use migrations::migrate;
use postgres::PostgresDb;
use sqlite::SqliteDb;

/// A value crossing the `sql` interface: a parameter or a column of a result row.
#[derive(Debug, Clone, PartialEq)]
pub enum SqlValue {
    /// SQL NULL.
    Null,
    /// A 64-bit signed integer (booleans are 0 / 1).
    Integer(i64),
    /// A 64-bit float.
    Real(f64),
    /// UTF-8 text (also JSON, timestamps and UUIDs read from PostgreSQL).
    Text(String),
    /// Bytes.
    Blob(Vec<u8>),
}

/// The result of a query: column names and rows of values.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SqlRows {
    /// Column names, in select order.
    pub columns: Vec<String>,
    /// The rows; each has one value per column.
    pub rows: Vec<Vec<SqlValue>>,
}

/// Why a statement failed, as the handler sees it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SqlError {
    /// The database could not be reached, was busy past the timeout, or aborted the
    /// transaction (deadlock, serialization): the same call may succeed later.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// The statement itself failed (syntax, constraint, type): it will fail again.
    #[error("statement rejected: {0}")]
    Rejected(String),
}

impl SqlError {
    fn unavailable(e: impl fmt::Display) -> Self {
        Self::Unavailable(format!("{e:#}"))
    }
}

/// A database a handler is granted.
#[async_trait]
pub trait SqlDatabase: Send + Sync + fmt::Debug {
    /// Open a transaction (on a pooled connection).
    async fn begin(&self) -> Result<Box<dyn SqlTx>, SqlError>;
    /// Open a transaction that no other migration, from this process or any other sharing
    /// the database, runs beside until it ends: hosts that start together must not create
    /// `kasm_migrations` or apply a file twice at once.
    async fn begin_migration(&self) -> Result<Box<dyn SqlTx>, SqlError>;
    /// `sqlite <path>` or `postgresql <host>/<db>` (never the password).
    fn describe(&self) -> String;
}

/// One open transaction. Dropping it without [`SqlTx::commit`] rolls it back.
#[async_trait]
pub trait SqlTx: Send {
    /// Run a statement; returns the number of rows changed.
    async fn execute(&mut self, statement: &str, params: &[SqlValue]) -> Result<u64, SqlError>;
    /// Run a query; returns its rows.
    async fn query(&mut self, statement: &str, params: &[SqlValue]) -> Result<SqlRows, SqlError>;
    /// Run several statements without parameters (migrations).
    async fn batch(&mut self, statements: &str) -> Result<(), SqlError>;
    /// Run `statement` (no parameters: `SAVEPOINT`, `RELEASE`) just before the next statement
    /// or the commit, in the same trip to the database where the backend can. An error it
    /// causes is that statement's.
    fn defer(&mut self, statement: &'static str);
    /// Run `statements` (no parameters) one after another, now.
    async fn run_fixed(&mut self, statements: &[&'static str]) -> Result<(), SqlError>;
    /// Bound each statement's run (where the backend can stop it itself).
    fn bound_statements(&mut self, _limit: Duration) {}
    /// Commit.
    async fn commit(self: Box<Self>) -> Result<(), SqlError>;
}

/// Where a handler's database is, as granted in config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SqlTarget {
    /// An SQLite file.
    Sqlite(PathBuf),
    /// A PostgreSQL URL (read from the environment).
    Postgres(String),
}

impl SqlTarget {
    /// Where the database of handler `name` is, as its `sql` grant says. Reads the URL from
    /// the environment.
    pub fn of_grant(
        grant: &crate::config::SqlGrantConfig,
        name: &str,
        data: &crate::config::DataDir,
    ) -> anyhow::Result<Self> {
        if let Some(var) = &grant.url_env {
            let url = crate::config::environment::var(var).ok_or_else(|| {
                anyhow::anyhow!(
                    "handlers.{name}.grants.sql.url_env: environment variable {var} is not set"
                )
            })?;
            return Ok(Self::Postgres(url));
        }
        Ok(Self::Sqlite(data.sqlite(name, grant.sqlite.as_deref())))
    }
}

/// Open the database `target` for handler `handler`.
pub fn open(target: &SqlTarget, handler: &str) -> anyhow::Result<Arc<dyn SqlDatabase>> {
    match target {
        SqlTarget::Sqlite(path) => {
            Ok(Arc::new(SqliteDb::open(path).with_context(|| {
                format!("handler={handler}: sql database")
            })?))
        }
        SqlTarget::Postgres(url) => {
            Ok(Arc::new(PostgresDb::open(url).with_context(|| {
                format!("handler={handler}: sql database")
            })?))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite_commits_on_commit_and_rolls_back_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let db = SqliteDb::open(&dir.path().join("t.db")).unwrap();
        let mut tx = db.begin().await.unwrap();
        tx.batch("CREATE TABLE t (id TEXT PRIMARY KEY, n INTEGER, r REAL, b BLOB)")
            .await
            .unwrap();
        let n = tx
            .execute(
                "INSERT INTO t VALUES ($1, $2, $3, $4)",
                &[
                    SqlValue::Text("a".into()),
                    SqlValue::Integer(7),
                    SqlValue::Real(1.5),
                    SqlValue::Blob(vec![0, 1]),
                ],
            )
            .await
            .unwrap();
        assert_eq!(n, 1);
        tx.commit().await.unwrap();

        let mut tx = db.begin().await.unwrap();
        tx.execute(
            "INSERT INTO t VALUES ($1, NULL, NULL, NULL)",
            &[SqlValue::Text("gone".into())],
        )
        .await
        .unwrap();
        drop(tx); // rolled back

        let mut tx = db.begin().await.unwrap();
        let rows = tx
            .query("SELECT id, n, r, b FROM t ORDER BY id", &[])
            .await
            .unwrap();
        assert_eq!(rows.columns, ["id", "n", "r", "b"]);
        assert_eq!(
            rows.rows,
            vec![vec![
                SqlValue::Text("a".into()),
                SqlValue::Integer(7),
                SqlValue::Real(1.5),
                SqlValue::Blob(vec![0, 1]),
            ]]
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn migrations_apply_once_and_refuse_a_changed_file() {
        let dir = tempfile::tempdir().unwrap();
        let db = SqliteDb::open(&dir.path().join("m.db")).unwrap();
        let mig = dir.path().join("migrations");
        std::fs::create_dir_all(&mig).unwrap();
        std::fs::write(mig.join("001_init.sql"), "CREATE TABLE a (x INTEGER);").unwrap();
        assert_eq!(migrate(&db, "h", &mig).await.unwrap(), ["001_init.sql"]);
        assert!(migrate(&db, "h", &mig).await.unwrap().is_empty());
        std::fs::write(mig.join("002_more.sql"), "CREATE TABLE b (y TEXT);").unwrap();
        assert_eq!(migrate(&db, "h", &mig).await.unwrap(), ["002_more.sql"]);
        std::fs::write(mig.join("001_init.sql"), "CREATE TABLE a (x TEXT);").unwrap();
        let e = migrate(&db, "h", &mig).await.unwrap_err().to_string();
        assert!(e.contains("001_init.sql") && e.contains("changed"), "{e}");
    }
}
