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

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use async_trait::async_trait;
use sha2::{Digest as _, Sha256};

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

impl From<rusqlite::Error> for SqlError {
    fn from(e: rusqlite::Error) -> Self {
        use rusqlite::ErrorCode as C;
        match e.sqlite_error_code() {
            Some(
                C::DatabaseBusy
                | C::DatabaseLocked
                | C::SystemIoFailure
                | C::DiskFull
                | C::CannotOpen
                | C::OutOfMemory,
            ) => Self::Unavailable(e.to_string()),
            _ => Self::Rejected(e.to_string()),
        }
    }
}

impl From<tokio_postgres::Error> for SqlError {
    fn from(e: tokio_postgres::Error) -> Self {
        let Some(db) = e.as_db_error() else {
            // No SQLSTATE: the connection, the protocol, or a parameter that did not convert.
            if e.is_closed()
                || std::error::Error::source(&e).is_some_and(|s| s.is::<std::io::Error>())
            {
                return Self::Unavailable(e.to_string());
            }
            return Self::Rejected(format!(
                "{e}{}",
                std::error::Error::source(&e)
                    .map(|s| format!(": {s}"))
                    .unwrap_or_default()
            ));
        };
        let code = db.code().code();
        let message = format!("{} ({code}): {}", db.severity(), db.message());
        // 08 connection, 40 transaction rollback (deadlock, serialization), 53 resources,
        // 57 operator intervention (shutdown, cancel).
        if ["08", "40", "53", "57"].iter().any(|c| code.starts_with(c)) {
            Self::Unavailable(message)
        } else {
            Self::Rejected(message)
        }
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
    /// Run `statements` (no parameters: `SAVEPOINT`, `RELEASE`) just before the next statement
    /// or the commit, in the same trip to the database where the backend can. An error they
    /// cause is that statement's.
    fn defer(&mut self, statements: &str);
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
        data_dir: &Path,
    ) -> anyhow::Result<Self> {
        if let Some(var) = &grant.url_env {
            let url = std::env::var(var).map_err(|_| {
                anyhow::anyhow!(
                    "handlers.{name}.grants.sql.url_env: environment variable {var} is not set"
                )
            })?;
            return Ok(Self::Postgres(url));
        }
        let path = match &grant.sqlite {
            Some(p) if p.is_absolute() => p.clone(),
            Some(p) => data_dir.join(p),
            None => data_dir.join("sql").join(format!("{name}.sqlite")),
        };
        Ok(Self::Sqlite(path))
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

/// Apply the `*.sql` files of `dir` not yet applied for `handler`, in name order, each in
/// its own transaction together with its record in `kasm_migrations`. Returns the names of
/// the files applied now. Each transaction is exclusive among migrations
/// ([`SqlDatabase::begin_migration`]), so hosts starting at once against one database apply
/// each file exactly once: the later ones find it recorded.
pub async fn migrate(
    db: &dyn SqlDatabase,
    handler: &str,
    dir: &Path,
) -> anyhow::Result<Vec<String>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading the migrations folder {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "sql"))
        .collect();
    files.sort();
    let mut applied = Vec::new();
    for file in files {
        let name = file
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let text = std::fs::read_to_string(&file)
            .with_context(|| format!("reading migration {}", file.display()))?;
        let sha = hex::encode(Sha256::digest(text.as_bytes()));
        let mut tx = db
            .begin_migration()
            .await
            .with_context(|| format!("taking the migration lock on {}", db.describe()))?;
        tx.batch(
            "CREATE TABLE IF NOT EXISTS kasm_migrations (\
               handler TEXT NOT NULL, name TEXT NOT NULL, sha256 TEXT NOT NULL, \
               applied_at TEXT NOT NULL, PRIMARY KEY (handler, name))",
        )
        .await
        .context("creating kasm_migrations")?;
        let done = tx
            .query(
                "SELECT sha256 FROM kasm_migrations WHERE handler = $1 AND name = $2",
                &[
                    SqlValue::Text(handler.to_owned()),
                    SqlValue::Text(name.clone()),
                ],
            )
            .await?;
        match done.rows.first().and_then(|r| r.first()) {
            Some(SqlValue::Text(old)) if *old == sha => continue,
            Some(_) => bail!(
                "migration {} was changed after it was applied to {} (add a new file instead)",
                file.display(),
                db.describe()
            ),
            None => {}
        }
        tx.batch(&text)
            .await
            .with_context(|| format!("applying migration {}", file.display()))?;
        tx.execute(
            "INSERT INTO kasm_migrations (handler, name, sha256, applied_at) VALUES ($1, $2, $3, $4)",
            &[
                SqlValue::Text(handler.to_owned()),
                SqlValue::Text(name.clone()),
                SqlValue::Text(sha),
                SqlValue::Text(chrono::Utc::now().to_rfc3339()),
            ],
        )
        .await?;
        tx.commit()
            .await
            .with_context(|| format!("committing migration {}", file.display()))?;
        applied.push(name);
    }
    Ok(applied)
}

// ---------------------------------------------------------------------------------------
// The inbox: which events' SQL effects a handler's database already holds

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
        statement.push_str(" ON CONFLICT (consumer_group, event_key) DO NOTHING");
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

/// An SQLite file in WAL mode, with a few pooled connections.
///
/// SQLite has one writer at a time, and a transaction here takes the write lock at `BEGIN`.
/// Writers of this process queue for it in order on `turn` (tokio's mutex is fair) before
/// they ask SQLite: SQLite's own busy handler polls with growing sleeps, so with four
/// partitions writing at once one of them could lose every round for the whole busy timeout,
/// fail `unavailable`, and after its retries be dead-lettered though nothing was wrong. The
/// busy timeout still covers writers in other processes.
pub struct SqliteDb {
    path: PathBuf,
    idle: Arc<Mutex<Vec<rusqlite::Connection>>>,
    turn: Arc<tokio::sync::Mutex<()>>,
}

impl fmt::Debug for SqliteDb {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteDb")
            .field("path", &self.path)
            .finish()
    }
}

/// How long a writer waits for another writer's transaction before giving up.
const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// Idle connections kept.
const SQLITE_MAX_IDLE: usize = 8;

impl SqliteDb {
    /// Open (creating) the file at `path`.
    pub fn open(path: &Path) -> anyhow::Result<Self> {
        if let Some(dir) = path.parent()
            && !dir.as_os_str().is_empty()
        {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let db = Self {
            path: path.to_owned(),
            idle: Arc::new(Mutex::new(Vec::new())),
            turn: Arc::new(tokio::sync::Mutex::new(())),
        };
        let conn = db.connect()?;
        db.put_back(conn);
        Ok(db)
    }

    fn connect(&self) -> anyhow::Result<rusqlite::Connection> {
        let conn = rusqlite::Connection::open(&self.path)
            .with_context(|| format!("opening sqlite {}", self.path.display()))?;
        conn.busy_timeout(SQLITE_BUSY_TIMEOUT)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        Ok(conn)
    }

    fn put_back(&self, conn: rusqlite::Connection) {
        put_back(&self.idle, conn);
    }
}

fn put_back(idle: &Mutex<Vec<rusqlite::Connection>>, conn: rusqlite::Connection) {
    if let Ok(mut idle) = idle.lock()
        && idle.len() < SQLITE_MAX_IDLE
    {
        idle.push(conn);
    }
}

#[async_trait]
impl SqlDatabase for SqliteDb {
    async fn begin(&self) -> Result<Box<dyn SqlTx>, SqlError> {
        // This process's writers in order; held until the transaction ends (dropped).
        let turn = self.turn.clone().lock_owned().await;
        let pooled = self.idle.lock().ok().and_then(|mut i| i.pop());
        let conn = match pooled {
            Some(c) => c,
            None => self.connect().map_err(SqlError::unavailable)?,
        };
        let mut tx = SqliteTx {
            conn: Some(conn),
            idle: self.idle.clone(),
            open: false,
            deferred: String::new(),
            limit: SQLITE_BUSY_TIMEOUT,
            _turn: turn,
        };
        // IMMEDIATE: take the write lock now, so two calls never deadlock upgrading a read.
        tx.run(|c| c.execute_batch("BEGIN IMMEDIATE")).await?;
        tx.open = true;
        Ok(Box::new(tx))
    }

    async fn begin_migration(&self) -> Result<Box<dyn SqlTx>, SqlError> {
        // SQLite's write lock, taken at `BEGIN IMMEDIATE`, is the file's one writer across
        // processes: migrations are serialized by it (another process waits up to the busy
        // timeout).
        self.begin().await
    }

    fn describe(&self) -> String {
        format!("sqlite {}", self.path.display())
    }
}

struct SqliteTx {
    conn: Option<rusqlite::Connection>,
    idle: Arc<Mutex<Vec<rusqlite::Connection>>>,
    open: bool,
    /// Statements to run before the next one ([`SqlTx::defer`]).
    deferred: String,
    /// How long one statement may run before SQLite interrupts it.
    limit: Duration,
    /// This process's write turn; released after `Drop` has rolled back or pooled the
    /// connection (fields drop after it).
    _turn: tokio::sync::OwnedMutexGuard<()>,
}

impl SqliteTx {
    /// Run `f` on the connection on a blocking thread (SQLite calls may wait on the file).
    async fn run<T: Send + 'static>(
        &mut self,
        f: impl FnOnce(&mut rusqlite::Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, SqlError> {
        let mut conn = self
            .conn
            .take()
            .ok_or_else(|| SqlError::Unavailable("the transaction's connection was lost".into()))?;
        let (conn, result) = tokio::task::spawn_blocking(move || {
            let r = f(&mut conn);
            (conn, r)
        })
        .await
        .map_err(SqlError::unavailable)?;
        self.conn = Some(conn);
        result.map_err(SqlError::from)
    }
}

impl SqliteTx {
    /// Run `f` (after the deferred statements) on this thread. Inside an `IMMEDIATE`
    /// transaction a statement waits for no lock — this connection holds the file's write lock
    /// and WAL readers never block it — so it costs less here than the two thread hops of
    /// [`SqliteTx::run`]; one that runs longer than `limit` is interrupted by SQLite's progress
    /// handler (`unavailable`). `BEGIN`, which may wait for another process, and `COMMIT`,
    /// which syncs, go through `run`.
    fn run_here<T>(
        &mut self,
        f: impl FnOnce(&mut rusqlite::Connection) -> rusqlite::Result<T>,
    ) -> Result<T, SqlError> {
        let limit = self.limit;
        let deferred = std::mem::take(&mut self.deferred);
        let conn = self
            .conn
            .as_mut()
            .ok_or_else(|| SqlError::Unavailable("the transaction's connection was lost".into()))?;
        let started = std::time::Instant::now();
        conn.progress_handler(
            SQLITE_PROGRESS_STEPS,
            Some(move || started.elapsed() > limit),
        )
        .map_err(SqlError::from)?;
        let result = (|| {
            if !deferred.is_empty() {
                conn.execute_batch(&deferred)?;
            }
            f(conn)
        })();
        let _ = conn.progress_handler(SQLITE_PROGRESS_STEPS, None::<fn() -> bool>);
        result.map_err(|e| match e.sqlite_error_code() {
            Some(rusqlite::ErrorCode::OperationInterrupted) => SqlError::Unavailable(format!(
                "the statement ran longer than {limit:?} and was interrupted"
            )),
            _ => SqlError::from(e),
        })
    }
}

/// How many SQLite VM steps pass between two looks at a statement's clock.
const SQLITE_PROGRESS_STEPS: std::os::raw::c_int = 10_000;

impl Drop for SqliteTx {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            if self.open && conn.execute_batch("ROLLBACK").is_err() {
                return; // a connection in an unknown state is not pooled
            }
            put_back(&self.idle, conn);
        }
    }
}

fn sqlite_params(params: &[SqlValue]) -> Vec<rusqlite::types::Value> {
    params
        .iter()
        .map(|p| match p {
            SqlValue::Null => rusqlite::types::Value::Null,
            SqlValue::Integer(i) => rusqlite::types::Value::Integer(*i),
            SqlValue::Real(r) => rusqlite::types::Value::Real(*r),
            SqlValue::Text(t) => rusqlite::types::Value::Text(t.clone()),
            SqlValue::Blob(b) => rusqlite::types::Value::Blob(b.clone()),
        })
        .collect()
}

#[async_trait]
impl SqlTx for SqliteTx {
    async fn execute(&mut self, statement: &str, params: &[SqlValue]) -> Result<u64, SqlError> {
        let params = sqlite_params(params);
        self.run_here(|c| {
            let mut st = c.prepare_cached(statement)?;
            let n = st.execute(rusqlite::params_from_iter(params))?;
            Ok(n as u64)
        })
    }

    async fn query(&mut self, statement: &str, params: &[SqlValue]) -> Result<SqlRows, SqlError> {
        let params = sqlite_params(params);
        self.run_here(|c| {
            let mut st = c.prepare_cached(statement)?;
            let columns: Vec<String> = st.column_names().map(str::to_owned).collect();
            let width = columns.len();
            let mut rows = Vec::new();
            let mut it = st.query(rusqlite::params_from_iter(params))?;
            while let Some(row) = it.next()? {
                let mut out = Vec::with_capacity(width);
                for i in 0..width {
                    out.push(match row.get_ref(i)? {
                        rusqlite::types::ValueRef::Null => SqlValue::Null,
                        rusqlite::types::ValueRef::Integer(v) => SqlValue::Integer(v),
                        rusqlite::types::ValueRef::Real(v) => SqlValue::Real(v),
                        rusqlite::types::ValueRef::Text(t) => {
                            SqlValue::Text(String::from_utf8_lossy(t).into_owned())
                        }
                        rusqlite::types::ValueRef::Blob(b) => SqlValue::Blob(b.to_vec()),
                    });
                }
                rows.push(out);
            }
            Ok(SqlRows { columns, rows })
        })
    }

    async fn batch(&mut self, statements: &str) -> Result<(), SqlError> {
        self.run_here(|c| c.execute_batch(statements))
    }

    fn defer(&mut self, statements: &str) {
        self.deferred.push_str(statements);
        self.deferred.push(';');
    }

    fn bound_statements(&mut self, limit: Duration) {
        self.limit = limit;
    }

    async fn commit(mut self: Box<Self>) -> Result<(), SqlError> {
        // A deferred `RELEASE` is implied by the commit; anything else runs first.
        let deferred = std::mem::take(&mut self.deferred);
        self.run(move |c| {
            if !deferred.is_empty() {
                c.execute_batch(&deferred)?;
            }
            c.execute_batch("COMMIT")
        })
        .await?;
        self.open = false;
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------
// PostgreSQL

/// A PostgreSQL database behind a connection pool.
pub struct PostgresDb {
    pool: deadpool_postgres::Pool,
    describe: String,
}

impl fmt::Debug for PostgresDb {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresDb")
            .field("database", &self.describe)
            .finish()
    }
}

/// The advisory lock key that serializes migrations on a PostgreSQL database (the bytes of
/// "kasmmigr" as a big-endian i64: unlikely to be any other application's key).
const PG_MIGRATION_LOCK: i64 = 0x6b61_736d_6d69_6772;

/// Most pooled PostgreSQL connections per handler.
const PG_POOL_SIZE: usize = 8;

impl PostgresDb {
    /// A pool for `url` (`postgresql://user:password@host:port/db`); connects lazily.
    pub fn open(url: &str) -> anyhow::Result<Self> {
        let pg: tokio_postgres::Config = url
            .parse()
            .map_err(|e| anyhow!("the PostgreSQL URL does not parse: {e}"))?;
        let hosts: Vec<String> = pg
            .get_hosts()
            .iter()
            .map(|h| match h {
                tokio_postgres::config::Host::Tcp(h) => h.clone(),
                tokio_postgres::config::Host::Unix(p) => p.display().to_string(),
            })
            .collect();
        let describe = format!(
            "postgresql {}/{}",
            hosts.join(","),
            pg.get_dbname().unwrap_or("")
        );
        let manager = deadpool_postgres::Manager::from_config(
            pg,
            tokio_postgres::NoTls,
            deadpool_postgres::ManagerConfig {
                recycling_method: deadpool_postgres::RecyclingMethod::Fast,
            },
        );
        let pool = deadpool_postgres::Pool::builder(manager)
            .max_size(PG_POOL_SIZE)
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .wait_timeout(Some(Duration::from_secs(10)))
            .create_timeout(Some(Duration::from_secs(10)))
            .build()
            .context("building the PostgreSQL pool")?;
        Ok(Self { pool, describe })
    }
}

#[async_trait]
impl SqlDatabase for PostgresDb {
    async fn begin(&self) -> Result<Box<dyn SqlTx>, SqlError> {
        let client =
            self.pool.get().await.map_err(|e| {
                SqlError::Unavailable(format!("connecting to {}: {e}", self.describe))
            })?;
        client.batch_execute("BEGIN").await?;
        Ok(Box::new(PostgresTx {
            client: Some(client),
            deferred: String::new(),
        }))
    }

    async fn begin_migration(&self) -> Result<Box<dyn SqlTx>, SqlError> {
        let mut tx = PostgresTx {
            client: Some(self.pool.get().await.map_err(|e| {
                SqlError::Unavailable(format!("connecting to {}: {e}", self.describe))
            })?),
            deferred: String::new(),
        };
        // A transaction-scoped advisory lock, one key for every host and handler on this
        // database: the next migration transaction waits here until this one commits or rolls
        // back (PostgreSQL releases it then, and when the connection dies).
        tx.batch(&format!(
            "BEGIN; SELECT pg_advisory_xact_lock({PG_MIGRATION_LOCK})"
        ))
        .await?;
        Ok(Box::new(tx))
    }

    fn describe(&self) -> String {
        self.describe.clone()
    }
}

struct PostgresTx {
    client: Option<deadpool_postgres::Object>,
    /// Statements to run before the next one ([`SqlTx::defer`]).
    deferred: String,
}

impl PostgresTx {
    /// The connection, after running the deferred statements on it.
    async fn client(&mut self) -> Result<&deadpool_postgres::Object, SqlError> {
        let client = self
            .client
            .as_ref()
            .ok_or_else(|| SqlError::Unavailable("the transaction's connection was lost".into()))?;
        if !self.deferred.is_empty() {
            let deferred = std::mem::take(&mut self.deferred);
            client.batch_execute(&deferred).await?;
        }
        Ok(client)
    }
}

impl Drop for PostgresTx {
    fn drop(&mut self) {
        // Not committed: roll back before the connection goes back to the pool. Without a
        // runtime the connection is discarded instead.
        if let Some(client) = self.client.take() {
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move {
                    if client.batch_execute("ROLLBACK").await.is_err() {
                        drop(deadpool_postgres::Object::take(client));
                    }
                });
            } else {
                drop(deadpool_postgres::Object::take(client));
            }
        }
    }
}

#[async_trait]
impl SqlTx for PostgresTx {
    async fn execute(&mut self, statement: &str, params: &[SqlValue]) -> Result<u64, SqlError> {
        let client = self.client().await?;
        let st = client.prepare_cached(statement).await?;
        let refs = pg_params(params);
        Ok(client.execute(&st, &refs).await?)
    }

    async fn query(&mut self, statement: &str, params: &[SqlValue]) -> Result<SqlRows, SqlError> {
        let client = self.client().await?;
        let st = client.prepare_cached(statement).await?;
        let refs = pg_params(params);
        let rows = client.query(&st, &refs).await?;
        let columns: Vec<String> = st.columns().iter().map(|c| c.name().to_owned()).collect();
        let mut out = Vec::with_capacity(rows.len());
        for row in &rows {
            let mut values = Vec::with_capacity(columns.len());
            for (i, col) in st.columns().iter().enumerate() {
                values.push(pg_value(row, i, col)?);
            }
            out.push(values);
        }
        Ok(SqlRows { columns, rows: out })
    }

    async fn batch(&mut self, statements: &str) -> Result<(), SqlError> {
        Ok(self.client().await?.batch_execute(statements).await?)
    }

    fn defer(&mut self, statements: &str) {
        self.deferred.push_str(statements);
        self.deferred.push(';');
    }

    async fn commit(mut self: Box<Self>) -> Result<(), SqlError> {
        let client = self
            .client
            .take()
            .ok_or_else(|| SqlError::Unavailable("the transaction's connection was lost".into()))?;
        // One trip: what was deferred (a `RELEASE` the commit implies anyway), then COMMIT.
        let deferred = std::mem::take(&mut self.deferred);
        match client.batch_execute(&format!("{deferred}COMMIT")).await {
            Ok(()) => Ok(()),
            Err(e) => {
                drop(deadpool_postgres::Object::take(client));
                Err(e.into())
            }
        }
    }
}

fn pg_params(params: &[SqlValue]) -> Vec<&(dyn tokio_postgres::types::ToSql + Sync)> {
    params
        .iter()
        .map(|p| p as &(dyn tokio_postgres::types::ToSql + Sync))
        .collect()
}

/// A [`SqlValue`] is bound as the type PostgreSQL inferred for the parameter: an integer
/// fits `int2`/`int4`/`int8`/`float*`/`bool`/`numeric`-free columns, text fits text-like,
/// JSON, UUID and timestamp columns, a blob fits `bytea`.
impl tokio_postgres::types::ToSql for SqlValue {
    fn to_sql(
        &self,
        ty: &tokio_postgres::types::Type,
        out: &mut bytes::BytesMut,
    ) -> Result<tokio_postgres::types::IsNull, Box<dyn std::error::Error + Sync + Send>> {
        use tokio_postgres::types::{IsNull, Type};
        let mismatch = || -> Box<dyn std::error::Error + Sync + Send> {
            format!(
                "a {} value cannot be bound to a parameter of type {ty}",
                self.kind()
            )
            .into()
        };
        match self {
            SqlValue::Null => Ok(IsNull::Yes),
            SqlValue::Integer(i) => match *ty {
                Type::INT8 => i.to_sql(ty, out),
                Type::INT4 => i32::try_from(*i)?.to_sql(ty, out),
                Type::INT2 => i16::try_from(*i)?.to_sql(ty, out),
                Type::FLOAT8 => (*i as f64).to_sql(ty, out),
                Type::FLOAT4 => (*i as f32).to_sql(ty, out),
                Type::BOOL => (*i != 0).to_sql(ty, out),
                _ => Err(mismatch()),
            },
            SqlValue::Real(r) => match *ty {
                Type::FLOAT8 => r.to_sql(ty, out),
                Type::FLOAT4 => (*r as f32).to_sql(ty, out),
                _ => Err(mismatch()),
            },
            SqlValue::Text(t) => match *ty {
                Type::JSON | Type::JSONB => {
                    let v: serde_json::Value = serde_json::from_str(t)?;
                    v.to_sql(ty, out)
                }
                Type::UUID => t.parse::<uuid::Uuid>()?.to_sql(ty, out),
                Type::TIMESTAMPTZ => chrono::DateTime::parse_from_rfc3339(t)?
                    .with_timezone(&chrono::Utc)
                    .to_sql(ty, out),
                Type::TIMESTAMP => chrono::DateTime::parse_from_rfc3339(t)?
                    .naive_utc()
                    .to_sql(ty, out),
                _ if <&str as tokio_postgres::types::ToSql>::accepts(ty) => {
                    t.as_str().to_sql(ty, out)
                }
                _ => Err(mismatch()),
            },
            SqlValue::Blob(b) => match *ty {
                Type::BYTEA => b.as_slice().to_sql(ty, out),
                _ => Err(mismatch()),
            },
        }
    }

    fn accepts(_: &tokio_postgres::types::Type) -> bool {
        true
    }

    tokio_postgres::types::to_sql_checked!();
}

impl SqlValue {
    fn kind(&self) -> &'static str {
        match self {
            SqlValue::Null => "null",
            SqlValue::Integer(_) => "integer",
            SqlValue::Real(_) => "real",
            SqlValue::Text(_) => "text",
            SqlValue::Blob(_) => "blob",
        }
    }
}

fn pg_value(
    row: &tokio_postgres::Row,
    i: usize,
    col: &tokio_postgres::Column,
) -> Result<SqlValue, SqlError> {
    use tokio_postgres::types::Type;
    let ty = col.type_();
    let v = match *ty {
        Type::INT2 => row
            .try_get::<_, Option<i16>>(i)?
            .map(|v| SqlValue::Integer(v.into())),
        Type::INT4 => row
            .try_get::<_, Option<i32>>(i)?
            .map(|v| SqlValue::Integer(v.into())),
        Type::INT8 => row.try_get::<_, Option<i64>>(i)?.map(SqlValue::Integer),
        Type::OID => row
            .try_get::<_, Option<u32>>(i)?
            .map(|v| SqlValue::Integer(v.into())),
        Type::BOOL => row
            .try_get::<_, Option<bool>>(i)?
            .map(|v| SqlValue::Integer(v.into())),
        Type::FLOAT4 => row
            .try_get::<_, Option<f32>>(i)?
            .map(|v| SqlValue::Real(v.into())),
        Type::FLOAT8 => row.try_get::<_, Option<f64>>(i)?.map(SqlValue::Real),
        Type::BYTEA => row.try_get::<_, Option<Vec<u8>>>(i)?.map(SqlValue::Blob),
        Type::JSON | Type::JSONB => row
            .try_get::<_, Option<serde_json::Value>>(i)?
            .map(|v| SqlValue::Text(v.to_string())),
        Type::UUID => row
            .try_get::<_, Option<uuid::Uuid>>(i)?
            .map(|v| SqlValue::Text(v.to_string())),
        Type::TIMESTAMPTZ => row
            .try_get::<_, Option<chrono::DateTime<chrono::Utc>>>(i)?
            .map(|v| SqlValue::Text(v.to_rfc3339())),
        Type::TIMESTAMP => row
            .try_get::<_, Option<chrono::NaiveDateTime>>(i)?
            .map(|v| SqlValue::Text(v.and_utc().to_rfc3339())),
        _ if <String as tokio_postgres::types::FromSql>::accepts(ty) => {
            row.try_get::<_, Option<String>>(i)?.map(SqlValue::Text)
        }
        _ => {
            return Err(SqlError::Rejected(format!(
                "column `{}` has type {ty}, which the sql interface does not carry; cast it \
                 (`::text`, `::float8`, `::int8`)",
                col.name()
            )));
        }
    };
    Ok(v.unwrap_or(SqlValue::Null))
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
