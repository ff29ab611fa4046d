//! A batch's records and what becomes of them: the shared vocabulary of the worker (which runs
//! a batch, [`super::worker`]) and the commit (which settles it, [`super::commit`]).

use std::time::Instant;

use crate::capabilities::Effects;
use crate::config::HandlerConfig;
use crate::dlq::letter::Failure;
use crate::event::Event;
use crate::kafka::Record;
use crate::telemetry::trace::RecordSpan;

use super::record::{event_for, ledger_key, stored_key, undecodable};

/// A record the worker finished (handled, skipped or dead-lettered).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Completion {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
}

/// Why processing stopped without finishing what was in hand.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Abandoned;

/// A record taken from the intake and not finished, identified once (however often it runs),
/// with what its earlier attempts left.
pub(super) struct Queued {
    /// The record, its event id, and the attempt it runs as next (1 for one that never ran).
    pub(super) event: Event,
    /// Its ledger key (see [`stored_key`]).
    pub(super) key: String,
    /// Why the host will not run the handler on it (see [`undecodable`]).
    pub(super) refused: Option<String>,
    pub(super) first_failure: Option<i64>,
    /// Not before this (a retry's backoff).
    pub(super) not_before: Option<Instant>,
    /// Runs in a batch of its own (it cut a batch's transaction off before).
    pub(super) alone: bool,
}

impl Queued {
    pub(super) fn new(config: &HandlerConfig, record: Record) -> Self {
        let event = event_for(config, record, 1);
        let full = ledger_key(&event.id, &event.record.headers);
        let refused = undecodable(config, &event, &full);
        let key = stored_key(&full);
        Self {
            event,
            key,
            refused,
            first_failure: None,
            not_before: None,
            alone: false,
        }
    }
}

/// What became of one record of a batch.
pub(super) enum Fate {
    /// Already finished (ledger, an earlier copy in the batch, a replay for another handler).
    Skipped,
    /// Handled `ok`: its publishes queued.
    Ok(Box<Handled>),
    /// To be dead-lettered (done once its dead letter is acknowledged).
    Dead(Failure),
    /// Not finished in this batch: runs again (a split, or its SQL writes were lost).
    Again,
}

/// A record handled `ok` whose effects are not committed yet.
pub(super) struct Handled {
    pub(super) effects: Effects,
    /// It wrote SQL under its savepoint: its writes are in the batch's transaction.
    pub(super) wrote_sql: bool,
}

/// One record of a batch, as it goes through.
pub(super) struct Slot {
    pub(super) queued: Queued,
    pub(super) fate: Fate,
    /// Its span, when tracing is on: ended with its fate when the batch settles (in
    /// [`commit`]).
    pub(super) span: Option<RecordSpan>,
}

/// The outcome of a batch: what is done, and what goes back to the front of the queue.
pub(super) struct Settled {
    pub(super) done: Vec<Completion>,
    pub(super) again: Vec<Queued>,
}
