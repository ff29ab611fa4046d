//! `GET /ws`: a WebSocket of one live-updates channel.

use axum::extract::rejection::QueryRejection;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::{Query, State};
use axum::http::StatusCode;

use super::{AdminState, ApiError, ErrorBody};

/// Query of `GET /ws`.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct WsQuery {
    /// the channel to receive
    #[param(pattern = "^[A-Za-z0-9:._-]{1,200}$")]
    channel: String,
    /// the channel's token, when no Authorization header carries it
    token: Option<String>,
}

/// `GET /ws?channel=...`: a WebSocket receiving what handlers broadcast to that channel. The
/// channel's token (see [`crate::capabilities::websocket`]) comes as a bearer header or `?token=`.
#[utoipa::path(get, path = "/ws", tag = "live updates", params(WsQuery),
    summary = "WebSocket of one channel: what handlers broadcast to it",
    description = "The channel's token is hex(HMAC-SHA256(KASM_WS_SECRET, channel)), as a bearer header or `?token=`.",
    security(("channel" = [])),
    responses(
        (status = 101, description = "switching to the WebSocket protocol; text messages follow"),
        (status = 400, description = "not a channel name, or not a WebSocket handshake", body = ErrorBody),
        (status = 401, description = "missing or wrong token for the channel", body = ErrorBody),
        (status = 426, description = "the connection cannot be upgraded", body = ErrorBody),
        (status = 503, description = "live updates off (no KASM_WS_SECRET) or too many clients", body = ErrorBody),
    ))]
pub(super) async fn websocket(
    State(s): State<AdminState>,
    q: Result<Query<WsQuery>, QueryRejection>,
    headers: axum::http::HeaderMap,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<axum::response::Response, ApiError> {
    use crate::capabilities::websocket::Refused;
    let Query(q) = q?;
    let bearer = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let token = bearer.or(q.token.as_deref());
    let sub = s.ws.subscribe(&q.channel, token).map_err(|e| {
        let status = match e {
            Refused::Disabled | Refused::Full(_) => StatusCode::SERVICE_UNAVAILABLE,
            Refused::BadChannel(_) => StatusCode::BAD_REQUEST,
            Refused::BadToken(_) => StatusCode::UNAUTHORIZED,
        };
        ApiError::new(status, e.to_string())
    })?;
    // The channel and its token first (401 says nothing about the protocol), then whether this
    // is a WebSocket handshake at all.
    let upgrade = upgrade?;
    let hub = s.ws.clone();
    Ok(upgrade
        .max_message_size(64 << 10)
        .on_upgrade(move |socket| crate::capabilities::websocket::serve_client(socket, sub, hub)))
}
