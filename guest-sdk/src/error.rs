//! The error a handler returns, and how it crosses into the WIT `handler-error`.

use core::fmt;

use crate::bindings::kasm::handler::types::HandlerError as RawHandlerError;

/// Why a handler did not finish an event.
///
/// The host decides what happens to the record from the case alone, so pick it by asking
/// "would trying again, unchanged, possibly succeed?". A panic is neither: it traps the
/// component and the record is dead-lettered at once as a `trap`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HandlerError {
    /// A transient failure (a dependency timed out, a rate limit, a store that is down). The
    /// host retries the same record with exponential backoff and jitter, up to the handler's
    /// retry policy, then dead-letters it as `retries-exhausted`. The partition waits
    /// meanwhile, so ordering within the partition is kept.
    Retryable(String),
    /// A deterministic failure (the event is invalid, a business rule refuses it, the handler
    /// is not allowed to do what it tried). The host dead-letters the record at once with
    /// error kind `fatal` and this message.
    Fatal(String),
}

impl HandlerError {
    /// A transient failure: the host retries the record later.
    pub fn retryable(message: impl Into<String>) -> Self {
        Self::Retryable(message.into())
    }

    /// A deterministic failure: the host dead-letters the record at once.
    pub fn fatal(message: impl Into<String>) -> Self {
        Self::Fatal(message.into())
    }

    /// Whether the host will retry the record.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Retryable(_))
    }

    /// Whether the host will dead-letter the record at once.
    pub fn is_fatal(&self) -> bool {
        matches!(self, Self::Fatal(_))
    }

    /// The message, as the host will record it.
    pub fn message(&self) -> &str {
        match self {
            Self::Retryable(message) | Self::Fatal(message) => message,
        }
    }
}

impl fmt::Display for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Retryable(message) => write!(f, "retryable: {message}"),
            Self::Fatal(message) => write!(f, "fatal: {message}"),
        }
    }
}

impl std::error::Error for HandlerError {}

impl From<HandlerError> for RawHandlerError {
    fn from(error: HandlerError) -> Self {
        match error {
            HandlerError::Retryable(message) => Self::Retryable(message),
            HandlerError::Fatal(message) => Self::Fatal(message),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constructors_pick_the_case() {
        let retry = HandlerError::retryable("broker busy");
        assert!(retry.is_retryable() && !retry.is_fatal());
        assert_eq!(retry.message(), "broker busy");
        assert_eq!(retry.to_string(), "retryable: broker busy");

        let fatal = HandlerError::fatal(String::from("bad input"));
        assert!(fatal.is_fatal() && !fatal.is_retryable());
        assert_eq!(fatal.to_string(), "fatal: bad input");
    }

    #[test]
    fn lowers_to_the_wit_variant() {
        assert!(matches!(
            RawHandlerError::from(HandlerError::retryable("x")),
            RawHandlerError::Retryable(m) if m == "x"
        ));
        assert!(matches!(
            RawHandlerError::from(HandlerError::fatal("y")),
            RawHandlerError::Fatal(m) if m == "y"
        ));
    }
}
