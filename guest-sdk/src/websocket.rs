//! Live pushes to the host's WebSocket clients: the `websocket` capability.
//!
//! A client connects to the host's `GET /ws` with one channel (for the task app,
//! `user:<user_id>`) and a token for it; a handler pushes a message to every client of a
//! channel. Pushes are effects of the call like publishes: the host delivers them only after
//! the handler returns `Ok`. Delivery is best effort: a client that is not connected, or too
//! slow to keep up, misses the message.
//!
//! ```no_run
//! # fn run() -> Result<(), kasm_guest::HandlerError> {
//! kasm_guest::websocket::broadcast("user:u1", r#"{"event_type":"task.completed"}"#)?;
//! # Ok(())
//! # }
//! ```

use serde::Serialize;

use crate::HandlerError;
use crate::bindings::kasm::handler::websocket;

/// Queue `message` for every client of `channel`.
///
/// A refusal is [`HandlerError::Fatal`]: the host refuses only when the capability is not
/// granted, the channel is not a channel name (1–200 characters of letters, digits, `:._-`),
/// the message is over the size limit, or the call pushed more than its limit — none of which
/// a retry changes.
pub fn broadcast(channel: &str, message: &str) -> Result<(), HandlerError> {
    websocket::broadcast(channel, message)
        .map_err(|reason| HandlerError::fatal(format!("push to {channel} refused: {reason}")))
}

/// Serialize `value` as JSON and [`broadcast`] it to `channel`.
pub fn broadcast_json<T: Serialize + ?Sized>(channel: &str, value: &T) -> Result<(), HandlerError> {
    let text = serde_json::to_string(value)
        .map_err(|e| HandlerError::fatal(format!("encoding the push to {channel}: {e}")))?;
    broadcast(channel, &text)
}
