//! The store data of one handler instance and the host side of the `kasm:handler` imports.
//!
//! A [`HostState`] lives in one `Store`: the WASI context (no preopens, no environment, no
//! arguments, no network; stdout and stderr go to a bounded capture), the resource table
//! (capped), the memory limiter, and the per-call state that the imports write into.
//!
//! The WASI context is built on the guest's first WASI call, not with the store: building one
//! seeds its RNGs and boxes its defaults twice (`WasiCtxBuilder::build` leaves a fresh builder
//! behind), measured at 0.6–0.8 µs of a 22–33 µs fresh call, and a handler that only uses the
//! `kasm:handler` imports (the `fixture` and `fixture-publisher` components, a guest that does
//! not panic or print) makes no WASI call at all. Every WASI import reaches the context
//! through [`WasiView::ctx`], so a guest that does call WASI gets the same sandboxed context.

use std::sync::Arc;
use std::time::Duration;

use wasmtime::component::ResourceTable;
use wasmtime::{ResourceLimiter, StoreLimits, StoreLimitsBuilder};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use crate::capabilities::log::{MAX_LOG_LINE, MAX_LOG_LINES, truncate_utf8};
use crate::capabilities::producer::CAUSATION_HEADER;
use crate::capabilities::sql::SqlTx;
use crate::capabilities::{
    Effects, Grants, KvStore, KvWrite, LogLine, Publish, SqlDatabase, SqlError, SqlValue,
    derive_event_id,
};
use crate::event::EVENT_ID_HEADER;

use super::capture::OutputCapture;

wasmtime::component::bindgen!({
    path: "../wit",
    world: "handler",
    imports: {
        "kasm:handler/kv": async,
        "kasm:handler/sql": async,
        default: tracing,
    },
    exports: { default: async },
    // The event is lowered into the guest's memory straight from the host's `Event`: the
    // export's parameter type borrows (`&str`, `&[u8]`) instead of owning a second copy.
    ownership: Borrowing { duplicate_if_necessary: true },
});

pub(crate) use kasm::handler::sql::{
    Error as WitSqlError, Rows as WitSqlRows, Value as WitSqlValue,
};
pub(crate) use kasm::handler::types::{Event as WitEvent, HandlerError as WitHandlerError, Level};

/// Per-handler settings the imports need; shared by every instance of the handler.
#[derive(Debug)]
pub(crate) struct HandlerEnv {
    pub name: String,
    pub grants: Grants,
    pub kv: Arc<dyn KvStore>,
    pub max_publishes: usize,
    pub max_record_bytes: usize,
    /// Most bytes one call may queue in records and WebSocket pushes together.
    pub max_call_output_bytes: usize,
    pub kv_timeout: Duration,
    /// The handler's database, when `sql` is granted.
    pub sql: Option<Arc<dyn SqlDatabase>>,
    /// Bound on one SQL statement (and on opening the call's transaction).
    pub sql_timeout: Duration,
    /// The handler's settings (the `settings` interface).
    pub settings: Arc<std::collections::BTreeMap<String, String>>,
    /// Bound on each phase of an outbound HTTP request (connect, first byte, between bytes).
    pub http_timeout: Duration,
}

/// The event being handled, as the imports tag their work with it.
#[derive(Default)]
pub(crate) struct CallState {
    pub event_id: String,
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub effects: Effects,
    /// The call's SQL transaction, opened at its first statement; committed by the caller
    /// when the call ends `ok`, rolled back when dropped.
    pub sql: Option<Box<dyn SqlTx>>,
    /// The first SQL failure of the call: its transaction is gone and it cannot commit.
    pub sql_failed: Option<SqlError>,
    /// Bytes queued so far in records and WebSocket pushes (bounded by
    /// `max_call_output_bytes`: each record is under its own limit, but a guest can repeat one
    /// a thousand times).
    pub queued_bytes: usize,
    /// When the call must end; checked at every epoch tick (see `LoadedHandler::new_store`).
    pub deadline: Option<std::time::Instant>,
    /// The kv writes of the records before this one in its batch that ended `ok` (key →
    /// value, `None` deleted): what this call reads before the store.
    pub kv_batch: std::collections::HashMap<String, Option<Vec<u8>>>,
    /// The savepoint this call's SQL runs under inside the batch's transaction
    /// (`kasm_<n>`), and whether it was taken (at the call's first statement).
    pub savepoint: u32,
    pub savepoint_open: bool,
    /// The batch's transaction is unusable (a statement did not answer in time): the batch
    /// cannot commit, and what it wrote is gone.
    pub sql_lost: bool,
}

impl std::fmt::Debug for CallState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallState")
            .field("event_id", &self.event_id)
            .field("sql_open", &self.sql.is_some())
            .field("sql_failed", &self.sql_failed)
            .finish_non_exhaustive()
    }
}

/// A `StoreLimits` that remembers whether a memory growth was refused, which is how a trap
/// is told apart as `out-of-memory`.
#[derive(Debug)]
pub(crate) struct Limiter {
    limits: StoreLimits,
    pub memory_denied: bool,
}

impl Limiter {
    pub fn new(memory_bytes: usize) -> Self {
        let limits = StoreLimitsBuilder::new()
            .memory_size(memory_bytes)
            .table_elements(100_000)
            .instances(64)
            .tables(64)
            .memories(8)
            .trap_on_grow_failure(false)
            .build();
        Self {
            limits,
            memory_denied: false,
        }
    }
}

impl ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let allowed = self.limits.memory_growing(current, desired, maximum)?;
        if !allowed {
            self.memory_denied = true;
        }
        Ok(allowed)
    }

    fn memory_grow_failed(&mut self, _error: wasmtime::Error) -> wasmtime::Result<()> {
        self.memory_denied = true;
        Ok(())
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        self.limits.table_growing(current, desired, maximum)
    }

    fn instances(&self) -> usize {
        self.limits.instances()
    }

    fn tables(&self) -> usize {
        self.limits.tables()
    }

    fn memories(&self) -> usize {
        self.limits.memories()
    }
}

/// Everything a handler instance's `Store` holds.
pub(crate) struct HostState {
    /// Built on first use, by [`WasiView::ctx`].
    wasi: Option<WasiCtx>,
    http: wasmtime_wasi_http::WasiHttpCtx,
    http_hooks: HttpHooks,
    table: ResourceTable,
    pub limiter: Limiter,
    pub output: OutputCapture,
    pub env: Arc<HandlerEnv>,
    pub call: CallState,
}

/// Most random bytes a guest may ask for in one call to `wasi:random`.
const MAX_RANDOM_BYTES: u64 = 1 << 20;

/// Most resources (streams, pollables) a guest may hold at once.
const MAX_RESOURCES: usize = 1024;

impl HostState {
    pub fn new(env: Arc<HandlerEnv>, memory_bytes: usize, output_bytes: usize) -> Self {
        let output = OutputCapture::new(output_bytes);
        let mut table = ResourceTable::new();
        table.set_max_capacity(MAX_RESOURCES);
        let http_hooks = HttpHooks {
            handler: env.name.clone(),
            grant: env.grants.http.clone(),
            timeout: env.http_timeout,
            trace: None,
        };
        Self {
            wasi: None,
            http: wasmtime_wasi_http::WasiHttpCtx::new(),
            http_hooks,
            table,
            limiter: Limiter::new(memory_bytes),
            output,
            env,
            call: CallState::default(),
        }
    }

    /// The span of the record this call handles (after [`Self::begin_call`]).
    pub fn set_trace(&mut self, span: Option<crate::telemetry::trace::RecordSpan>) {
        self.http_hooks.trace = span;
    }

    /// Prepare for a new call: forget the previous call's effects and output.
    pub fn begin_call(&mut self, event_id: &str, topic: &str, partition: i32, offset: i64) {
        self.call = CallState {
            event_id: event_id.to_owned(),
            topic: topic.to_owned(),
            partition,
            offset,
            effects: Effects::default(),
            sql: None,
            sql_failed: None,
            queued_bytes: 0,
            deadline: None,
            kv_batch: std::collections::HashMap::new(),
            savepoint: 0,
            savepoint_open: false,
            sql_lost: false,
        };
        self.http_hooks.trace = None;
        self.limiter.memory_denied = false;
        self.output.clear();
    }
}

impl std::fmt::Debug for HostState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostState")
            .field("handler", &self.env.name)
            .finish_non_exhaustive()
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        let output = &self.output;
        WasiCtxView {
            ctx: self.wasi.get_or_insert_with(|| sandboxed_wasi(output)),
            table: &mut self.table,
        }
    }
}

/// The WASI context of every handler instance.
fn sandboxed_wasi(output: &OutputCapture) -> WasiCtx {
    // Nothing is granted: no preopened directories, no environment, no arguments, no
    // network (TCP, UDP and name lookup are off and every address is refused), stdin
    // closed. Clocks and randomness stay: std needs them and they grant no access.
    WasiCtxBuilder::new()
        .stdout(output.clone())
        .stderr(output.clone())
        .allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false)
        .socket_addr_check(|_, _| Box::pin(async { false }))
        // wasmtime allows 64 MiB per `get-random-bytes` call, allocated on the host
        // before the guest's memory is even asked; no handler needs more than a little.
        .max_random_size(MAX_RANDOM_BYTES)
        .build()
}

impl wasmtime_wasi_http::WasiHttpView for HostState {
    fn http(&mut self) -> wasmtime_wasi_http::WasiHttpCtxView<'_> {
        wasmtime_wasi_http::WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.http_hooks,
        }
    }
}

/// Outbound HTTP policy of one handler: only the granted hosts, every phase bounded.
struct HttpHooks {
    handler: String,
    grant: Option<crate::capabilities::HostGrant>,
    timeout: Duration,
    /// The span of the record being handled: each request gets a client span under it and
    /// its `traceparent`, and the call's log lines its ids.
    trace: Option<crate::telemetry::trace::RecordSpan>,
}

type SendResult = Result<
    (
        axum::http::Response<wasmtime_wasi_http::WasiBody>,
        Box<dyn std::future::Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>,
    ),
    wasmtime_wasi_http::Error,
>;

impl wasmtime_wasi_http::WasiHttpHooks for HttpHooks {
    fn send_request(
        &mut self,
        request: axum::http::Request<wasmtime_wasi_http::WasiBody>,
        options: Option<wasmtime_wasi_http::RequestOptions>,
        fut: Box<dyn std::future::Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>,
    ) -> Box<dyn std::future::Future<Output = SendResult> + Send> {
        drop(fut);
        let mut request = request;
        let uri = request.uri();
        let https = uri.scheme() == Some(&axum::http::uri::Scheme::HTTPS);
        let host = uri.host().unwrap_or_default().to_owned();
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let allowed = self.grant.as_ref().is_some_and(|g| g.allows(&host, port));
        if !allowed {
            // Refused before any connection (or name lookup) is made.
            tracing::warn!(handler = %self.handler, %host, port, "outbound HTTP to a host not granted: denied");
            return Box::new(async { Err(wasmtime_wasi_http::Error::HttpRequestDenied) });
        }
        // The guest may ask for shorter timeouts, never longer ones.
        let bound =
            |asked: Option<Duration>| Some(asked.map_or(self.timeout, |a| a.min(self.timeout)));
        let options = wasmtime_wasi_http::RequestOptions {
            connect_timeout: bound(options.and_then(|o| o.connect_timeout)),
            first_byte_timeout: bound(options.and_then(|o| o.first_byte_timeout)),
            between_bytes_timeout: bound(options.and_then(|o| o.between_bytes_timeout)),
        };
        let span = self.trace.as_ref().map(|t| {
            let url = request.uri().to_string();
            let span = t.http(request.method().as_str(), &url, &host, port);
            if let Ok(v) = axum::http::HeaderValue::from_str(&span.traceparent()) {
                request
                    .headers_mut()
                    .insert(crate::telemetry::trace::TRACEPARENT, v);
            }
            span
        });
        Box::new(async move {
            let sent = wasmtime_wasi_http::default_send_request(request, Some(options)).await;
            let (res, io) = match (sent, span) {
                (Ok(r), Some(span)) => {
                    span.set(
                        "http.response.status_code",
                        i64::from(r.0.status().as_u16()),
                    );
                    let failed =
                        r.0.status()
                            .is_server_error()
                            .then(|| r.0.status().to_string());
                    span.end(failed.as_deref());
                    r
                }
                (Ok(r), None) => r,
                (Err(e), span) => {
                    if let Some(span) = span {
                        span.end(Some(&format!("{e:?}")));
                    }
                    return Err(e);
                }
            };
            Ok((
                res.map(http_body_util::BodyExt::boxed_unsync),
                Box::new(io)
                    as Box<
                        dyn std::future::Future<Output = Result<(), wasmtime_wasi_http::Error>>
                            + Send,
                    >,
            ))
        })
    }
}

impl kasm::handler::types::Host for HostState {}

impl kasm::handler::settings::Host for HostState {
    fn get(&mut self, key: String) -> Option<String> {
        self.env.settings.get(&key).cloned()
    }
}

impl kasm::handler::producer::Host for HostState {
    fn publish(
        &mut self,
        topic: String,
        key: Option<Vec<u8>>,
        payload: Vec<u8>,
        headers: Vec<(String, Vec<u8>)>,
    ) -> Result<String, String> {
        let env = &self.env;
        let Some(grant) = &env.grants.producer else {
            return Err(format!(
                "the producer capability is not granted to handler `{}`",
                env.name
            ));
        };
        if !grant.allows(&topic) {
            return Err(format!(
                "topic `{topic}` is not granted to handler `{}` (granted: {grant})",
                env.name
            ));
        }
        let publishes = &mut self.call.effects.publishes;
        if publishes.len() >= env.max_publishes {
            return Err(format!(
                "handler `{}` already queued {} records in this call, the limit",
                env.name, env.max_publishes
            ));
        }
        let size = payload.len()
            + key.as_ref().map_or(0, Vec::len)
            + headers
                .iter()
                .map(|(k, v)| k.len() + v.len())
                .sum::<usize>();
        if size > env.max_record_bytes {
            return Err(format!(
                "record for topic `{topic}` is {size} bytes, over the limit of {} bytes",
                env.max_record_bytes
            ));
        }
        let queued = self.call.queued_bytes.saturating_add(size);
        if queued > env.max_call_output_bytes {
            return Err(format!(
                "handler `{}` already queued {} bytes in this call; this record of {size} bytes \
                 would go over the per-call limit of {} bytes",
                env.name, self.call.queued_bytes, env.max_call_output_bytes
            ));
        }
        self.call.queued_bytes = queued;
        let index = u32::try_from(publishes.len()).unwrap_or(u32::MAX);
        let event_id = derive_event_id(&self.call.event_id, &env.name, index);
        // The host owns the identity headers: a handler cannot forge another event's id.
        let mut headers: Vec<(String, Vec<u8>)> = headers
            .into_iter()
            .filter(|(k, _)| k != EVENT_ID_HEADER && k != CAUSATION_HEADER)
            .collect();
        headers.push((EVENT_ID_HEADER.to_owned(), event_id.clone().into_bytes()));
        headers.push((
            CAUSATION_HEADER.to_owned(),
            self.call.event_id.clone().into_bytes(),
        ));
        publishes.push(Publish {
            topic,
            key,
            payload,
            headers,
            event_id: event_id.clone(),
        });
        Ok(event_id)
    }

    fn next_event_id(&mut self) -> String {
        let index = u32::try_from(self.call.effects.publishes.len()).unwrap_or(u32::MAX);
        derive_event_id(&self.call.event_id, &self.env.name, index)
    }
}

impl kasm::handler::kv::Host for HostState {
    async fn get(&mut self, key: String) -> Result<Option<Vec<u8>>, String> {
        let (kv, ns, limit) = self.kv_parts()?;
        if let Some(staged) = self.call.staged_kv(&key) {
            return Ok(staged);
        }
        bounded(limit, kv.get(&ns, &key)).await
    }

    async fn set(
        &mut self,
        key: String,
        value: Vec<u8>,
        ttl_ms: Option<u64>,
    ) -> Result<(), String> {
        self.kv_parts()?;
        self.stage_kv(KvWrite {
            key,
            value: Some(value),
            ttl: ttl_ms.map(Duration::from_millis),
        })
    }

    async fn delete(&mut self, key: String) -> Result<bool, String> {
        let (kv, ns, limit) = self.kv_parts()?;
        let was = match self.call.staged_kv(&key) {
            Some(staged) => staged.is_some(),
            None => bounded(limit, kv.get(&ns, &key)).await?.is_some(),
        };
        self.stage_kv(KvWrite {
            key,
            value: None,
            ttl: None,
        })?;
        Ok(was)
    }
}

impl CallState {
    /// What this call and the records before it in the batch staged for `key`: `Some(value)`
    /// (`Some(None)`: deleted) or `None` when nothing is staged and the store decides.
    fn staged_kv(&self, key: &str) -> Option<Option<Vec<u8>>> {
        if let Some(w) = self.effects.kv_writes.iter().rev().find(|w| w.key == key) {
            return Some(w.value.clone());
        }
        self.kv_batch.get(key).cloned()
    }
}

impl HostState {
    /// Stage a kv write, counted against what one call may make the host hold.
    fn stage_kv(&mut self, w: KvWrite) -> Result<(), String> {
        let bytes = w.key.len() + w.value.as_ref().map_or(0, Vec::len);
        if self.call.queued_bytes.saturating_add(bytes) > self.env.max_call_output_bytes {
            return Err(format!(
                "this call's records, pushes and kv writes would exceed {} bytes",
                self.env.max_call_output_bytes
            ));
        }
        self.call.queued_bytes += bytes;
        self.call.effects.kv_writes.push(w);
        Ok(())
    }

    fn kv_parts(&self) -> Result<(Arc<dyn KvStore>, String, Duration), String> {
        if !self.env.grants.kv {
            return Err(format!(
                "the kv capability is not granted to handler `{}`",
                self.env.name
            ));
        }
        Ok((
            self.env.kv.clone(),
            self.env.name.clone(),
            self.env.kv_timeout,
        ))
    }
}

/// Run a backend call with a timeout: a host import that never returns is invisible to the
/// epoch deadline, so it gets its own bound.
async fn bounded<T>(
    limit: Duration,
    fut: impl std::future::Future<Output = anyhow::Result<T>>,
) -> Result<T, String> {
    match tokio::time::timeout(limit, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(format!("kv backend error: {e:#}")),
        Err(_) => Err(format!("kv backend did not answer within {limit:?}")),
    }
}

impl kasm::handler::sql::Host for HostState {
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

impl HostState {
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
            tx.defer(&format!(
                "SAVEPOINT {}",
                savepoint_name(self.call.savepoint)
            ));
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

/// The name of savepoint `n` of a batch's transaction.
pub(crate) fn savepoint_name(n: u32) -> String {
    format!("kasm_{n}")
}

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

/// Largest WebSocket message a handler may push, in bytes.
const MAX_BROADCAST_BYTES: usize = 64 << 10;

impl kasm::handler::websocket::Host for HostState {
    fn broadcast(&mut self, channel: String, message: String) -> Result<(), String> {
        let env = &self.env;
        if !env.grants.websocket {
            return Err(format!(
                "the websocket capability is not granted to handler `{}`",
                env.name
            ));
        }
        if !crate::capabilities::websocket::valid_channel(&channel) {
            return Err(format!(
                "`{}` is not a channel name (1-200 characters of letters, digits, `:._-`)",
                channel.chars().take(60).collect::<String>()
            ));
        }
        if message.len() > MAX_BROADCAST_BYTES {
            return Err(format!(
                "message of {} bytes is over the limit of {MAX_BROADCAST_BYTES} bytes",
                message.len()
            ));
        }
        let broadcasts = &mut self.call.effects.broadcasts;
        if broadcasts.len() >= env.max_publishes {
            return Err(format!(
                "handler `{}` already queued {} broadcasts in this call, the limit",
                env.name, env.max_publishes
            ));
        }
        let queued = self
            .call
            .queued_bytes
            .saturating_add(channel.len() + message.len());
        if queued > env.max_call_output_bytes {
            return Err(format!(
                "handler `{}` already queued {} bytes in this call; this push would go over \
                 the per-call limit of {} bytes",
                env.name, self.call.queued_bytes, env.max_call_output_bytes
            ));
        }
        self.call.queued_bytes = queued;
        broadcasts.push(crate::capabilities::Broadcast { channel, message });
        Ok(())
    }
}

impl kasm::handler::log::Host for HostState {
    fn log(&mut self, level: Level, message: String) {
        let effects = &mut self.call.effects;
        if effects.logs.len() >= MAX_LOG_LINES {
            effects.logs_dropped = effects.logs_dropped.saturating_add(1);
            return;
        }
        let message = truncate_utf8(message, MAX_LOG_LINE);
        let c = &self.call;
        let h = self.env.name.as_str();
        // The ids only when a line is written: a call that logs nothing pays nothing.
        let ids = self
            .http_hooks
            .trace
            .as_ref()
            .map(crate::telemetry::trace::RecordSpan::ids);
        let (trace_id, span_id) = ids
            .as_ref()
            .map_or((None, None), |(t, s)| (Some(t.as_str()), Some(s.as_str())));
        macro_rules! emit {
            ($lvl:ident) => {
                tracing::$lvl!(
                    target: "kasm::guest",
                    handler = h, topic = %c.topic, partition = c.partition,
                    offset = c.offset, event_id = %c.event_id, trace_id, span_id, "{message}"
                )
            };
        }
        let name = match level {
            Level::Trace => {
                emit!(trace);
                "trace"
            }
            Level::Debug => {
                emit!(debug);
                "debug"
            }
            Level::Info => {
                emit!(info);
                "info"
            }
            Level::Warn => {
                emit!(warn);
                "warn"
            }
            Level::Error => {
                emit!(error);
                "error"
            }
        };
        self.call.effects.logs.push(LogLine {
            level: name,
            message,
        });
    }
}
