//! PostgreSQL behind [`SqlDatabase`] (tokio-postgres with a deadpool pool): the URL comes from
//! the environment, migrations take an advisory lock, values are bound as the types the server
//! inferred.

use std::fmt;
use std::time::Duration;

use anyhow::{Context as _, anyhow};
use async_trait::async_trait;

use super::{SqlDatabase, SqlError, SqlRows, SqlTx, SqlValue};

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

    fn defer(&mut self, statement: &'static str) {
        self.deferred.push_str(statement);
        self.deferred.push(';');
    }

    async fn run_fixed(&mut self, statements: &[&'static str]) -> Result<(), SqlError> {
        // One trip for all of them.
        self.batch(&statements.join(";")).await
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
