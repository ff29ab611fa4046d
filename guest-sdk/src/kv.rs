//! A small key-value store private to the handler: the `kv` capability.
//!
//! Keys live in the handler's own namespace, so two handlers never see each other's data.
//! Values are opaque bytes. Writes are kept only if the handler returns `Ok` (the host applies
//! them with the call's batch); a call reads its own writes. A failure of the store is [`HandlerError::Retryable`]: the host's
//! store being unavailable is the common cause, and the retry policy still dead-letters the
//! record if it never recovers. Map it to [`HandlerError::fatal`] yourself where a retry
//! cannot help.
//!
//! ```no_run
//! # fn run() -> Result<(), kasm_guest::HandlerError> {
//! use kasm_guest::kv;
//!
//! kv::set("last-seen", b"2026-11-27", Some(86_400_000))?;
//! if let Some(value) = kv::get("last-seen")? {
//!     kasm_guest::log::debug(&String::from_utf8_lossy(&value));
//! }
//! kv::delete("last-seen")?;
//! # Ok(())
//! # }
//! ```

use crate::HandlerError;
use crate::bindings::kasm::handler::kv;

/// The value stored under `key`, or `None` if absent or expired.
pub fn get(key: &str) -> Result<Option<Vec<u8>>, HandlerError> {
    kv::get(key).map_err(|reason| failed("get", key, &reason))
}

/// Store `value` under `key`, replacing what was there. With `ttl_ms`, the entry expires that
/// many milliseconds from now.
pub fn set(key: &str, value: &[u8], ttl_ms: Option<u64>) -> Result<(), HandlerError> {
    kv::set(key, value, ttl_ms).map_err(|reason| failed("set", key, &reason))
}

/// Remove `key`. Returns whether it was present.
pub fn delete(key: &str) -> Result<bool, HandlerError> {
    kv::delete(key).map_err(|reason| failed("delete", key, &reason))
}

fn failed(operation: &str, key: &str, reason: &str) -> HandlerError {
    HandlerError::retryable(format!("kv {operation} {key:?} failed: {reason}"))
}
