//! How a handler call ended.
//!
//! Every call ends in exactly one [`Outcome`]. The failure kinds are kept apart because each
//! goes a different way in the pipeline: `retryable` is retried with backoff; `fatal`, `trap`,
//! `timeout`, `out-of-memory` and `undecodable` are deterministic and go to the dead-letter
//! topic at once. What the guest *returned* (its WIT error) is never confused with what
//! happened *to* it (a trap): the first two kinds come from the guest's `result`, the others
//! from the host.

use std::time::Duration;

use serde::Serialize;

use crate::capabilities::Effects;

/// The kind of a handler failure; its `as_str` is the `kasm-dlq-error-kind` vocabulary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FailureKind {
    /// The guest returned `retryable`.
    Retryable,
    /// The guest returned `fatal`.
    Fatal,
    /// The guest trapped (panic, unreachable, out-of-bounds, stack overflow...).
    Trap,
    /// The call ran past its deadline.
    Timeout,
    /// The guest tried to grow its memory past the cap.
    OutOfMemory,
    /// The record could not be decoded into what the handler declares it accepts.
    Undecodable,
}

impl FailureKind {
    /// The kebab-case name used in outputs and DLQ headers.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::Retryable => "retryable",
            FailureKind::Fatal => "fatal",
            FailureKind::Trap => "trap",
            FailureKind::Timeout => "timeout",
            FailureKind::OutOfMemory => "out-of-memory",
            FailureKind::Undecodable => "undecodable",
        }
    }

    /// Whether trying the same record again could succeed.
    pub fn is_retryable(self) -> bool {
        matches!(self, FailureKind::Retryable)
    }
}

impl std::fmt::Display for FailureKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A failed handler call: its kind and a message for humans (and DLQ headers).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize)]
#[error("{kind}: {message}")]
pub struct HandlerFailure {
    /// What kind of failure.
    pub kind: FailureKind,
    /// Why: the guest's own message, or the trap and the tail of the guest's stderr.
    pub message: String,
}

impl HandlerFailure {
    pub(crate) fn new(kind: FailureKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }
}

/// How one call ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "kebab-case")]
pub enum Outcome {
    /// The handler finished the event.
    Ok,
    /// The handler did not finish it.
    Failed(HandlerFailure),
}

impl Outcome {
    /// `ok` or the failure kind's name.
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Failed(f) => f.kind.as_str(),
        }
    }

    /// The failure, if any.
    pub fn failure(&self) -> Option<&HandlerFailure> {
        match self {
            Outcome::Ok => None,
            Outcome::Failed(f) => Some(f),
        }
    }
}

/// Everything one call produced.
#[derive(Debug, Clone, Serialize)]
pub struct Invocation {
    /// How it ended.
    pub outcome: Outcome,
    /// What the handler asked for. Apply `publishes` only when `outcome` is `Ok`.
    pub effects: Effects,
    /// The tail of what the guest wrote to stdout/stderr during this call.
    pub guest_output: String,
    /// Wall time of the call, instantiation included.
    #[serde(serialize_with = "serialize_micros")]
    pub duration: Duration,
    /// Whether the call ran on a reused instance (one that served an earlier call).
    pub reused_instance: bool,
    /// Inside a batch: the call ended `ok` having written SQL under its savepoint, so its
    /// writes are in the batch's transaction.
    #[serde(skip)]
    pub wrote_sql: bool,
}

fn serialize_micros<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u128(d.as_micros())
}
