//! The handler's SQL database: the `sql` capability.
//!
//! An SQLite file by default, PostgreSQL when the operator's grant says so; the handler's code
//! is the same. Parameters are positional (`$1`, `$2`, …) and always bound, never spliced into
//! the statement. What one call does is kept only if the handler returns `Ok` (the host runs
//! it under a savepoint of the batch's transaction), so a handler that fails half way leaves
//! nothing behind.
//!
//! An event can still run twice (a crash between the commit and the ledger), so make writes
//! idempotent by event id:
//!
//! ```no_run
//! # fn run(event: &kasm_guest::Event) -> Result<(), kasm_guest::HandlerError> {
//! use kasm_guest::sql::{self, Value};
//!
//! sql::execute(
//!     "INSERT INTO seen (event_id, at) VALUES ($1, $2) ON CONFLICT (event_id) DO NOTHING",
//!     &[event.id().into(), Value::Integer(event.timestamp_ms().unwrap_or(0))],
//! )?;
//! let rows = sql::query("SELECT count(*) FROM seen", &[])?;
//! let n = rows.rows[0][0].as_i64();
//! # let _ = n;
//! # Ok(())
//! # }
//! ```
//!
//! Errors: a database that is unreachable or busy is [`HandlerError::Retryable`]; a statement
//! the database refuses (syntax, constraint, type) is [`HandlerError::Fatal`], because it
//! would be refused again.

use crate::HandlerError;
use crate::bindings::kasm::handler::sql as raw;

pub use raw::Rows;
pub use raw::Value;

/// Run a statement (insert, update, delete, DDL). Returns the number of rows changed.
pub fn execute(statement: &str, params: &[Value]) -> Result<u64, HandlerError> {
    raw::execute(statement, params).map_err(|e| failed(statement, e))
}

/// Run a query and return its rows.
pub fn query(statement: &str, params: &[Value]) -> Result<Rows, HandlerError> {
    raw::query(statement, params).map_err(|e| failed(statement, e))
}

fn failed(statement: &str, e: raw::Error) -> HandlerError {
    let short: String = statement.chars().take(80).collect();
    match e {
        raw::Error::Unavailable(m) => {
            HandlerError::retryable(format!("sql `{short}`: database unavailable: {m}"))
        }
        raw::Error::Rejected(m) => {
            HandlerError::fatal(format!("sql `{short}`: statement rejected: {m}"))
        }
    }
}

impl Value {
    /// The integer, if this is one.
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Value::Integer(i) => Some(*i),
            _ => None,
        }
    }

    /// The number, if this is an integer or a real.
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Integer(i) => Some(*i as f64),
            Value::Real(r) => Some(*r),
            _ => None,
        }
    }

    /// The text, if this is text.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Text(t) => Some(t),
            _ => None,
        }
    }

    /// Whether this is SQL NULL.
    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }
}

impl From<&str> for Value {
    fn from(s: &str) -> Self {
        Value::Text(s.to_owned())
    }
}

impl From<String> for Value {
    fn from(s: String) -> Self {
        Value::Text(s)
    }
}

impl From<i64> for Value {
    fn from(i: i64) -> Self {
        Value::Integer(i)
    }
}

impl From<f64> for Value {
    fn from(r: f64) -> Self {
        Value::Real(r)
    }
}

impl From<Vec<u8>> for Value {
    fn from(b: Vec<u8>) -> Self {
        Value::Blob(b)
    }
}

impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(v: Option<T>) -> Self {
        v.map_or(Value::Null, Into::into)
    }
}
