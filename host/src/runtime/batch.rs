//! One batch's share of a handler: the instance its records run on, one after another, the
//! SQL transaction they write in (a savepoint each) and the kv writes they stage; what a call
//! ends as (see [`super::invoke`] for the handler and its instance policy).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use wasmtime::Store;

use crate::capabilities::SqlError;
use crate::capabilities::log::truncate_utf8;
use crate::capabilities::sql::{RELEASE_SAVEPOINT, ROLLBACK_TO_SAVEPOINT, SqlTx};
use crate::event::Event;

use super::invoke::{LoadedHandler, Warm, with_output};
use super::outcome::{FailureKind, HandlerFailure, Invocation, Outcome};
use super::store::HostState;
use crate::wit::{WitEvent, WitHandlerError};

impl LoadedHandler {
    /// Start a batch: the records run through [`Batch::invoke`] share an instance, one SQL
    /// transaction and their staged kv writes until the batch ends.
    pub fn batch(&self) -> Batch<'_> {
        Batch {
            handler: self,
            warm: None,
            sql: None,
            sql_lost: false,
            kv: HashMap::new(),
            trace: None,
        }
    }
}

/// One batch's share of a handler: the instance its records run on, the SQL transaction
/// they write in (a savepoint per record) and the kv writes of those that ended `ok`.
///
/// Records run one after another ([`Batch::invoke`]); a call that does not end `ok` has its
/// savepoint rolled back, so the records before it keep their writes. An instance that
/// trapped, timed out or ran out of memory is dropped and the next record gets a fresh one.
/// The caller commits ([`Batch::commit_sql`]) once the batch's publishes are acknowledged, or
/// gives the transaction up ([`Batch::abandon_sql`]). Dropping the batch rolls back what it
/// did not commit.
pub struct Batch<'h> {
    handler: &'h LoadedHandler,
    warm: Option<Warm>,
    sql: Option<Box<dyn SqlTx>>,
    sql_lost: bool,
    kv: HashMap<String, Option<Vec<u8>>>,
    /// The span of the next record, when tracing is on (see [`Batch::set_trace`]).
    trace: Option<crate::telemetry::trace::RecordSpan>,
}

impl std::fmt::Debug for Batch<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batch")
            .field("handler", &self.handler.env.name)
            .field("sql_open", &self.sql.is_some())
            .field("sql_lost", &self.sql_lost)
            .finish_non_exhaustive()
    }
}

impl Batch<'_> {
    /// The span the next [`Batch::invoke`] runs under: its HTTP requests and log lines carry
    /// its trace.
    pub fn set_trace(&mut self, span: Option<crate::telemetry::trace::RecordSpan>) {
        self.trace = span;
    }

    /// Run `event` as the batch's next record. See [`LoadedHandler::invoke`] for what `Ok`
    /// and `Err` mean; on `Ok(ok)` the call's kv writes are visible to the records after it.
    pub async fn invoke(&mut self, event: &Event) -> anyhow::Result<Invocation> {
        let h = self.handler;
        let start = Instant::now();
        let warm = self.warm.take().or_else(|| h.take_warm());
        let (mut store, bindings, calls, reused) = match warm {
            Some(w) => (w.store, Some(w.bindings), w.calls, w.calls > 0),
            None => (h.new_store(), None, 0, false),
        };
        {
            let state = store.data_mut();
            let r = &event.record;
            state.begin_call(&event.id, &r.topic, r.partition, r.offset);
            state.set_trace(self.trace.take());
            // The batch's transaction and staged kv, lent to the call and taken back after.
            state.caps.call.sql = self.sql.take();
            state.caps.call.kv_batch = std::mem::take(&mut self.kv);
            state.caps.call.sql_lost = self.sql_lost;
            // Arm the deadline before instantiating: instantiation runs guest code.
            state.caps.call.deadline = Some(start + h.deadline);
        }
        store.set_epoch_deadline(1);
        // Borrowed, not copied: wasmtime lowers these bytes into the guest's memory directly.
        let headers: Vec<(&str, &[u8])> = event
            .record
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_slice()))
            .collect();
        let wit_event = to_wit(event, &headers);

        // The epoch stops guest code; this stops a host import that never returns.
        let hard_limit = h.deadline + h.deadline / 4 + Duration::from_millis(50);
        let pre = &h.pre;
        let run = async {
            let bindings = match bindings {
                Some(b) => b,
                None => match pre.instantiate_async(&mut store).await {
                    Ok(b) => b,
                    Err(e) => return Err((e, true)),
                },
            };
            match bindings.call_handle(&mut store, wit_event).await {
                Ok(r) => Ok((bindings, r)),
                Err(e) => Err((e, false)),
            }
        };
        let result = tokio::time::timeout(hard_limit, run).await;
        // A call cut off by the hard limit may have left a statement running.
        let cut_off = result.is_err();

        let (outcome, keep) = match result {
            Err(_elapsed) => (
                Outcome::Failed(HandlerFailure::new(
                    FailureKind::Timeout,
                    format!(
                        "handler did not finish within {:?} (a host call did not return)",
                        h.deadline
                    ),
                )),
                None,
            ),
            Ok(Ok((bindings, guest_result))) => {
                let outcome = match guest_result {
                    Ok(()) => sql_outcome(&mut store),
                    Err(WitHandlerError::Retryable(m)) => Outcome::Failed(HandlerFailure::new(
                        FailureKind::Retryable,
                        guest_message(m),
                    )),
                    Err(WitHandlerError::Fatal(m)) => {
                        Outcome::Failed(HandlerFailure::new(FailureKind::Fatal, guest_message(m)))
                    }
                };
                // A call that returned normally leaves a sound instance behind.
                (outcome, Some(bindings))
            }
            Ok(Err((e, instantiating))) => match h.classify(&e, store.data()) {
                Some(failure) => (Outcome::Failed(failure), None),
                // Not the guest's doing: e.g. the instance pool is exhausted.
                None if instantiating => {
                    self.take_back(&mut store, false);
                    return Err(anyhow::Error::from(e)).with_context(|| {
                        format!(
                            "handler={} event_id={}: instantiating",
                            h.env.name, event.id
                        )
                    });
                }
                None => (
                    Outcome::Failed(HandlerFailure::new(
                        FailureKind::Trap,
                        with_output(format!("{e:#}"), &store.data().output.text()),
                    )),
                    None,
                ),
            },
        };
        let ok = outcome == Outcome::Ok;
        let wrote = self.take_back(&mut store, cut_off);
        let mut invocation = h.finish(&mut store, outcome, start, reused);
        if ok {
            for w in &invocation.effects.kv_writes {
                self.kv.insert(w.key.clone(), w.value.clone());
            }
            invocation.wrote_sql = wrote;
            // Its writes join the batch's transaction: the savepoint goes (in the next trip),
            // so that savepoints never nest (SQLite journals every page again for each level).
            if wrote && let Some(tx) = self.sql.as_mut() {
                tx.defer(RELEASE_SAVEPOINT);
            }
        } else if wrote && let Err(e) = self.rollback_to().await {
            tracing::warn!(handler = %h.env.name, event_id = %event.id, error = %e,
                "rolling back a failed call's savepoint failed; the batch's transaction is dropped");
            self.lose_sql();
        }
        // A trapped or timed-out instance is never entered again: its store is dropped.
        if let Some(bindings) = keep {
            self.warm = Some(Warm {
                store,
                bindings,
                calls: calls.saturating_add(1),
            });
        }
        Ok(invocation)
    }

    /// Take the transaction and staged kv back from a call's store; whether the call took a
    /// savepoint (wrote under it). `cut_off`: the call was stopped while it may have been
    /// inside a statement, so the transaction cannot be trusted.
    fn take_back(&mut self, store: &mut Store<HostState>, cut_off: bool) -> bool {
        let call = &mut store.data_mut().caps.call;
        self.sql = call.sql.take();
        self.kv = std::mem::take(&mut call.kv_batch);
        self.sql_lost |= call.sql_lost;
        let wrote = call.savepoint_open;
        if cut_off && wrote {
            self.lose_sql();
        }
        wrote
    }

    fn lose_sql(&mut self) {
        self.sql = None;
        self.sql_lost = true;
    }

    async fn rollback_to(&mut self) -> Result<(), SqlError> {
        let limit = self.handler.env.sql_timeout;
        let Some(tx) = self.sql.as_mut() else {
            return Ok(());
        };
        match tokio::time::timeout(limit, tx.run_fixed(ROLLBACK_TO_SAVEPOINT)).await {
            Ok(r) => r,
            Err(_) => Err(SqlError::Unavailable(format!(
                "the database did not answer within {limit:?}"
            ))),
        }
    }

    /// Whether the batch's transaction was lost (a statement did not answer in time, or a
    /// rollback failed): what the batch's records wrote is gone, and they must run again.
    pub fn sql_lost(&self) -> bool {
        self.sql_lost
    }

    /// Give up the batch's SQL transaction (rolled back): every record that wrote in it runs
    /// again. For a record dead-lettered after it ran `ok` (its publishes could not be sent):
    /// its savepoint was released into the batch's transaction, which cannot undo it alone.
    pub fn abandon_sql(&mut self) {
        self.lose_sql();
    }

    /// Add `keys` (the records that wrote) to consumer group `group`'s inbox rows inside the batch's SQL
    /// transaction, so that they commit, or not, with the writes. Nothing without a
    /// transaction (no record wrote).
    pub async fn note_inbox(
        &mut self,
        group: &str,
        keys: &[&str],
        at_ms: i64,
    ) -> Result<(), String> {
        if self.sql_lost || keys.is_empty() {
            return Ok(());
        }
        let limit = self.handler.env.sql_timeout;
        let Some(tx) = self.sql.as_mut() else {
            return Ok(());
        };
        let insert = crate::capabilities::sql::inbox_insert(tx.as_mut(), group, keys, at_ms);
        match tokio::time::timeout(limit, insert).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => {
                self.lose_sql();
                Err(format!("writing the inbox rows failed: {e}"))
            }
            Err(_) => {
                self.lose_sql();
                Err(format!("writing the inbox rows took longer than {limit:?}"))
            }
        }
    }

    /// Commit the batch's SQL transaction, if its records wrote any. Afterwards the batch has
    /// no transaction; a later record opens a new one.
    pub async fn commit_sql(&mut self) -> Result<(), String> {
        if self.sql_lost {
            return Err("the batch's sql transaction was lost; its writes were rolled back".into());
        }
        let Some(tx) = self.sql.take() else {
            return Ok(());
        };
        let limit = self.handler.env.sql_timeout;
        match tokio::time::timeout(limit, tx.commit()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(format!("committing the sql transaction failed: {e}")),
            Err(_) => Err(format!(
                "committing the sql transaction took longer than {limit:?}"
            )),
        }
    }

    /// Forget the SQL transaction (rolled back) and the staged kv: the records of the batch
    /// run again.
    pub fn reset(&mut self) {
        self.sql = None;
        self.sql_lost = false;
        self.kv.clear();
    }

    /// End the batch: an instance that may serve more calls goes back to the handler's pool
    /// (with `instance_reuse`); anything not committed is rolled back.
    pub fn finish(mut self) {
        if let Some(w) = self.warm.take() {
            self.handler.give_back(w);
        }
    }
}

/// The call returned `ok`: it may still have hit an SQL error (and returned `ok` anyway), in
/// which case it cannot commit: its outcome becomes that error (`unavailable` → retryable,
/// `rejected` → fatal).
fn sql_outcome(store: &mut Store<HostState>) -> Outcome {
    let call = &mut store.data_mut().caps.call;
    let Some(e) = call.sql_failed.take() else {
        return Outcome::Ok;
    };
    let message =
        format!("returned ok after a failed sql statement (its writes were rolled back): {e}");
    let kind = match e {
        SqlError::Unavailable(_) => FailureKind::Retryable,
        SqlError::Rejected(_) => FailureKind::Fatal,
    };
    Outcome::Failed(HandlerFailure::new(kind, message))
}

/// Longest error message kept from what a guest returns, in bytes: with the truncation marker
/// it still fits the 8 KiB a dead letter keeps.
const MAX_GUEST_MESSAGE: usize = (8 << 10) - 64;

/// The guest's own error message, cut to [`MAX_GUEST_MESSAGE`]: a guest can return a message
/// as large as its memory, which would otherwise be held, logged on every retry and carried
/// to the dead-letter writer.
fn guest_message(message: String) -> String {
    let len = message.len();
    if len <= MAX_GUEST_MESSAGE {
        return message;
    }
    let kept = truncate_utf8(message, MAX_GUEST_MESSAGE);
    format!("{kept} [{len} bytes, truncated]")
}

fn to_wit<'a>(e: &'a Event, headers: &'a [(&'a str, &'a [u8])]) -> WitEvent<'a> {
    let r = &e.record;
    WitEvent {
        id: &e.id,
        topic: &r.topic,
        partition: r.partition,
        offset: r.offset,
        key: r.key.as_deref(),
        payload: r.payload(),
        headers,
        timestamp_ms: r.timestamp_ms,
        attempt: e.attempt,
    }
}
