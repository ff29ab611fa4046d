//! Log into the host's structured log: one function per level.
//!
//! The host tags every line with the handler name and the record's topic, partition, offset
//! and event id, so a message only says what happened. Logging is always granted. Lines over
//! the host's length limit are truncated; past the host's per-call line limit the rest are
//! dropped (and counted).
//!
//! ```no_run
//! kasm_guest::log::info("reminder sent");
//! kasm_guest::log::warn(&format!("unknown channel {:?}, using push", "pager"));
//! ```

use crate::bindings::kasm::handler::log::log;
use crate::bindings::kasm::handler::types::Level;

/// Log at `trace` level.
pub fn trace(message: &str) {
    log(Level::Trace, message);
}

/// Log at `debug` level.
pub fn debug(message: &str) {
    log(Level::Debug, message);
}

/// Log at `info` level.
pub fn info(message: &str) {
    log(Level::Info, message);
}

/// Log at `warn` level.
pub fn warn(message: &str) {
    log(Level::Warn, message);
}

/// Log at `error` level.
pub fn error(message: &str) {
    log(Level::Error, message);
}
