//! SQLite behind [`SqlDatabase`] (rusqlite): a file in the data folder, a few idle
//! connections kept, a busy timeout, and statements interrupted when they run past their bound.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use async_trait::async_trait;

use super::{SqlDatabase, SqlError, SqlRows, SqlTx, SqlValue};

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
            deferred: Vec::new(),
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
    deferred: Vec<&'static str>,
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
        let deferred = &mut self.deferred;
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
        let result = run_each(conn, deferred).and_then(|()| f(conn));
        deferred.clear();
        let _ = conn.progress_handler(SQLITE_PROGRESS_STEPS, None::<fn() -> bool>);
        result.map_err(|e| match e.sqlite_error_code() {
            Some(rusqlite::ErrorCode::OperationInterrupted) => SqlError::Unavailable(format!(
                "the statement ran longer than {limit:?} and was interrupted"
            )),
            _ => SqlError::from(e),
        })
    }
}

/// Run fixed statements without parameters (savepoints), each prepared once per connection.
fn run_each(conn: &rusqlite::Connection, statements: &[&str]) -> rusqlite::Result<()> {
    for statement in statements {
        conn.prepare_cached(statement)?.execute([])?;
    }
    Ok(())
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

    fn defer(&mut self, statement: &'static str) {
        self.deferred.push(statement);
    }

    async fn run_fixed(&mut self, statements: &[&'static str]) -> Result<(), SqlError> {
        self.run_here(|c| run_each(c, statements))
    }

    fn bound_statements(&mut self, limit: Duration) {
        self.limit = limit;
    }

    async fn commit(mut self: Box<Self>) -> Result<(), SqlError> {
        // A deferred `RELEASE` is implied by the commit; anything else runs first.
        let deferred = std::mem::take(&mut self.deferred);
        self.run(move |c| {
            run_each(c, &deferred)?;
            c.execute_batch("COMMIT")
        })
        .await?;
        self.open = false;
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------
// PostgreSQL
