//! Live pushes to WebSocket clients: the host side of the `websocket` capability and the
//! `GET /ws` endpoint.
//!
//! A client connects to `GET /ws?channel=<channel>` with a token (`Authorization: Bearer`, or
//! `?token=` for browsers, which cannot set headers on a WebSocket). The token is
//! `hex(HMAC-SHA256(KASM_WS_SECRET, channel))`: the application that knows its users (the chat
//! API) mints a token per user channel, and kasm checks it without a user database. Without
//! `KASM_WS_SECRET` in the environment, `/ws` refuses every client.
//!
//! Every client has a bounded queue. A broadcast never waits for a client: a client whose
//! queue is full (it stopped reading) is disconnected, so one slow client cannot slow the
//! handler or anyone else. Handlers' broadcasts are effects like publishes: the pipeline
//! delivers them only after the call returned `ok` and its publishes were acknowledged.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use hmac::{Hmac, Mac as _};
use sha2::Sha256;
use tokio::sync::mpsc;

use crate::config::Secret;

use crate::wit as bindings;

use super::state::CapabilityState;

/// Longest channel name accepted.
pub const MAX_CHANNEL_LEN: usize = 200;

/// Messages queued per client before it counts as too slow and is disconnected.
pub const DEFAULT_CLIENT_BUFFER: usize = 256;

/// Clients connected at once, all channels together.
pub const DEFAULT_MAX_CLIENTS: usize = 10_000;

/// Whether `channel` is a channel name: 1–200 characters of `[A-Za-z0-9:._-]`.
pub fn valid_channel(channel: &str) -> bool {
    !channel.is_empty()
        && channel.len() <= MAX_CHANNEL_LEN
        && channel
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, ':' | '.' | '_' | '-'))
}

/// The token that opens `channel` under `secret`.
pub fn channel_token(secret: &[u8], channel: &str) -> String {
    // HMAC accepts keys of any length.
    match Hmac::<Sha256>::new_from_slice(secret) {
        Ok(mut mac) => {
            mac.update(channel.as_bytes());
            hex::encode(mac.finalize().into_bytes())
        }
        Err(_) => String::new(),
    }
}

struct Client {
    id: u64,
    tx: mpsc::Sender<Arc<str>>,
}

/// What the hub has done (for metrics and the dev view).
#[derive(Debug, Default)]
pub struct HubStats {
    /// Messages queued to a client.
    pub delivered: AtomicU64,
    /// Clients disconnected for not keeping up.
    pub dropped_slow: AtomicU64,
    /// Connections refused (bad token, bad channel, too many clients).
    pub refused: AtomicU64,
}

/// The connected clients, by channel.
pub struct Hub {
    secret: Option<Secret>,
    client_buffer: usize,
    max_clients: usize,
    channels: Mutex<HashMap<String, Vec<Client>>>,
    next_id: AtomicU64,
    /// Counters.
    pub stats: HubStats,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub")
            .field("clients", &self.clients())
            .finish_non_exhaustive()
    }
}

/// Why a connection is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// No secret configured: `/ws` is closed.
    #[error("live updates are off: KASM_WS_SECRET is not set")]
    Disabled,
    /// Not a channel name.
    #[error("`{0}` is not a channel name (1-200 characters of letters, digits, `:._-`)")]
    BadChannel(String),
    /// Missing or wrong token.
    #[error("the token does not open channel `{0}`")]
    BadToken(String),
    /// Too many clients.
    #[error("too many clients ({0})")]
    Full(usize),
}

/// A subscription: messages for one client, until the hub drops it.
#[derive(Debug)]
pub struct Subscription {
    /// The channel.
    pub channel: String,
    /// The client's id within the hub.
    pub id: u64,
    /// Its messages; `None` once the hub disconnected it (too slow) or shut down.
    pub rx: mpsc::Receiver<Arc<str>>,
}

impl Hub {
    /// A hub checking tokens against `secret` (none: every client is refused).
    pub fn new(secret: Option<Secret>, client_buffer: usize, max_clients: usize) -> Self {
        Self {
            secret,
            client_buffer: client_buffer.max(1),
            max_clients,
            channels: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            stats: HubStats::default(),
        }
    }

    /// A hub with the secret from `KASM_WS_SECRET` and default limits.
    pub fn from_env() -> Self {
        Self::new(
            crate::config::environment::ws_secret(),
            DEFAULT_CLIENT_BUFFER,
            DEFAULT_MAX_CLIENTS,
        )
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Vec<Client>>> {
        self.channels
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Clients connected now.
    pub fn clients(&self) -> usize {
        self.lock().values().map(Vec::len).sum()
    }

    /// Check `token` for `channel` and register a client.
    pub fn subscribe(&self, channel: &str, token: Option<&str>) -> Result<Subscription, Refused> {
        let refuse = |r: Refused| {
            self.stats.refused.fetch_add(1, Ordering::Relaxed);
            Err(r)
        };
        let Some(secret) = &self.secret else {
            return refuse(Refused::Disabled);
        };
        if !valid_channel(channel) {
            return refuse(Refused::BadChannel(channel.chars().take(60).collect()));
        }
        let expected = channel_token(secret.expose().as_bytes(), channel);
        let ok = token.is_some_and(|t| {
            subtle::ConstantTimeEq::ct_eq(t.trim().as_bytes(), expected.as_bytes()).into()
        });
        if !ok {
            return refuse(Refused::BadToken(channel.to_owned()));
        }
        let mut channels = self.lock();
        let n: usize = channels.values().map(Vec::len).sum();
        if n >= self.max_clients {
            drop(channels);
            return refuse(Refused::Full(self.max_clients));
        }
        let (tx, rx) = mpsc::channel(self.client_buffer);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        channels
            .entry(channel.to_owned())
            .or_default()
            .push(Client { id, tx });
        Ok(Subscription {
            channel: channel.to_owned(),
            id,
            rx,
        })
    }

    /// Forget client `id` of `channel` (it went away).
    pub fn unsubscribe(&self, channel: &str, id: u64) {
        let mut channels = self.lock();
        if let Some(list) = channels.get_mut(channel) {
            list.retain(|c| c.id != id);
            if list.is_empty() {
                channels.remove(channel);
            }
        }
    }

    /// Queue `message` for every client of `channel`, never waiting: a client whose queue is
    /// full is disconnected. Returns how many clients it was queued for.
    pub fn broadcast(&self, channel: &str, message: &str) -> usize {
        let message: Arc<str> = Arc::from(message);
        let mut channels = self.lock();
        let Some(list) = channels.get_mut(channel) else {
            return 0;
        };
        let mut sent = 0;
        list.retain(|c| match c.tx.try_send(message.clone()) {
            Ok(()) => {
                sent += 1;
                true
            }
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.stats.dropped_slow.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    channel,
                    client = c.id,
                    "websocket client too slow: disconnected"
                );
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        });
        if list.is_empty() {
            channels.remove(channel);
        }
        self.stats
            .delivered
            .fetch_add(sent as u64, Ordering::Relaxed);
        sent
    }

    /// Disconnect everyone (shutdown).
    pub fn close_all(&self) {
        self.lock().clear();
    }
}

/// How long one send to a client may block (its TCP window full) before it is dropped.
pub const SEND_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Serve one connected client: forward its channel's messages until it leaves, the hub
/// drops it for being too slow, or a send blocks past [`SEND_TIMEOUT`].
pub async fn serve_client(
    mut socket: axum::extract::ws::WebSocket,
    mut sub: Subscription,
    hub: Arc<Hub>,
) {
    use axum::extract::ws::{CloseFrame, Message};
    let reason = loop {
        tokio::select! {
            next = sub.rx.recv() => {
                let Some(m) = next else { break "disconnected by the host" };
                if sub.rx.is_closed() {
                    // The hub let go of this client: it fell behind.
                    break "too slow: the client's queue overflowed";
                }
                match tokio::time::timeout(SEND_TIMEOUT, socket.send(Message::Text(m.as_ref().into()))).await {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => break "",
                    Err(_) => break "too slow: a send did not complete",
                }
            }
            incoming = socket.recv() => match incoming {
                // Pings are answered by the library; anything else a client sends is ignored.
                Some(Ok(Message::Close(_)) | Err(_)) | None => break "",
                Some(Ok(_)) => {}
            },
        }
    };
    hub.unsubscribe(&sub.channel, sub.id);
    if !reason.is_empty() {
        let frame = CloseFrame {
            code: 1008,
            reason: reason.into(),
        };
        let _ = tokio::time::timeout(
            std::time::Duration::from_millis(200),
            socket.send(Message::Close(Some(frame))),
        )
        .await;
    }
}

/// Largest WebSocket message a handler may push, in bytes.
const MAX_BROADCAST_BYTES: usize = 64 << 10;

impl bindings::kasm::handler::websocket::Host for CapabilityState {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn hub(buffer: usize) -> Hub {
        Hub::new(Some(Secret::new("s3cret".to_owned())), buffer, 3)
    }

    #[test]
    fn a_channel_opens_only_with_its_own_token() {
        let h = hub(4);
        let t = channel_token(b"s3cret", "user:a");
        assert!(h.subscribe("user:a", Some(&t)).is_ok());
        assert_eq!(
            h.subscribe("user:b", Some(&t)).unwrap_err(),
            Refused::BadToken("user:b".into())
        );
        assert!(matches!(
            h.subscribe("user:a", None),
            Err(Refused::BadToken(_))
        ));
        assert!(matches!(
            h.subscribe("bad channel", Some(&t)),
            Err(Refused::BadChannel(_))
        ));
        let off = Hub::new(None, 4, 3);
        assert_eq!(
            off.subscribe("user:a", Some(&t)).unwrap_err(),
            Refused::Disabled
        );
    }

    #[test]
    fn messages_reach_their_channel_only_and_a_full_client_is_dropped() {
        let h = hub(2);
        let mut a = h
            .subscribe("user:a", Some(&channel_token(b"s3cret", "user:a")))
            .unwrap();
        let mut b = h
            .subscribe("user:b", Some(&channel_token(b"s3cret", "user:b")))
            .unwrap();
        assert_eq!(h.broadcast("user:a", "1"), 1);
        assert_eq!(h.broadcast("user:a", "2"), 1);
        assert_eq!(&*a.rx.try_recv().unwrap(), "1");
        assert!(b.rx.try_recv().is_err(), "b hears nothing of a");
        // a holds "2"; one more fits, the next overflows and a is dropped.
        assert_eq!(h.broadcast("user:a", "3"), 1);
        assert_eq!(h.broadcast("user:a", "4"), 0);
        assert_eq!(h.stats.dropped_slow.load(Ordering::Relaxed), 1);
        assert_eq!(h.clients(), 1);
        assert_eq!(h.broadcast("user:b", "x"), 1);
        assert_eq!(&*b.rx.try_recv().unwrap(), "x");
    }

    #[test]
    fn the_client_limit_holds() {
        let h = hub(1);
        let t = channel_token(b"s3cret", "c");
        let _keep: Vec<_> = (0..3)
            .map(|_| h.subscribe("c", Some(&t)).unwrap())
            .collect();
        assert_eq!(h.subscribe("c", Some(&t)).unwrap_err(), Refused::Full(3));
    }
}
