//! Outbound HTTP: `wasi:http/outgoing-handler`, to the hosts the operator granted.
//!
//! A request to a host that is not granted is refused by kasm before any connection is made
//! ([`HttpError::Denied`]). Requests are bounded in time by the host (connect, first byte,
//! between bytes) and responses in size here ([`MAX_RESPONSE_BYTES`]).
//!
//! ```no_run
//! # fn run() -> Result<(), kasm_guest::HandlerError> {
//! use kasm_guest::http;
//!
//! let response = http::post(
//!     "http://hooks.internal:8080/notify",
//!     &[("content-type", "application/json"), ("idempotency-key", "evt-42")],
//!     br#"{"text":"hello"}"#,
//! )?;
//! // 5xx and timeouts: try again later; 4xx: the request itself is wrong.
//! response.error_for_status()?;
//! # Ok(())
//! # }
//! ```
//!
//! Errors map onto handler outcomes with `?`: a denied host or an invalid URL is
//! [`HandlerError::Fatal`]; a timeout or a connection failure is [`HandlerError::Retryable`].
//! [`Response::error_for_status`] makes 5xx (and 429) retryable and other 4xx fatal.

use crate::HandlerError;

/// The largest response body read; a larger one is an error.
pub const MAX_RESPONSE_BYTES: usize = 1 << 20;

/// An HTTP response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Headers, in order (names lowercase).
    pub headers: Vec<(String, Vec<u8>)>,
    /// The body.
    pub body: Vec<u8>,
}

impl Response {
    /// This response if its status is 2xx or 3xx; otherwise the error a handler should
    /// return: retryable for 5xx, 429 and 408, fatal for the other 4xx.
    pub fn error_for_status(self) -> Result<Self, HandlerError> {
        let text = || {
            let body = String::from_utf8_lossy(&self.body);
            let body: String = body.chars().take(200).collect();
            format!("HTTP {}: {body}", self.status)
        };
        match self.status {
            200..=399 => Ok(self),
            408 | 429 | 500..=599 => Err(HandlerError::retryable(text())),
            _ => Err(HandlerError::fatal(text())),
        }
    }

    /// The first header named `name` (case-insensitive), as text.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    }
}

/// Why a request did not produce a response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HttpError {
    /// The host is not granted to this handler: no connection was made.
    Denied(String),
    /// The URL, a header or the method is not valid.
    Invalid(String),
    /// Connecting or waiting for the response took too long.
    Timeout(String),
    /// The connection failed or broke (refused, reset, DNS, TLS, ...).
    Failed(String),
}

impl std::fmt::Display for HttpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HttpError::Denied(m) => write!(f, "request denied: {m}"),
            HttpError::Invalid(m) => write!(f, "invalid request: {m}"),
            HttpError::Timeout(m) => write!(f, "timed out: {m}"),
            HttpError::Failed(m) => write!(f, "request failed: {m}"),
        }
    }
}

impl std::error::Error for HttpError {}

impl From<HttpError> for HandlerError {
    fn from(e: HttpError) -> Self {
        match e {
            HttpError::Denied(_) | HttpError::Invalid(_) => HandlerError::fatal(e.to_string()),
            HttpError::Timeout(_) | HttpError::Failed(_) => HandlerError::retryable(e.to_string()),
        }
    }
}

/// `POST url` with `headers` and `body`.
pub fn post(url: &str, headers: &[(&str, &str)], body: &[u8]) -> Result<Response, HttpError> {
    send("POST", url, headers, body)
}

/// `GET url` with `headers`.
pub fn get(url: &str, headers: &[(&str, &str)]) -> Result<Response, HttpError> {
    send("GET", url, headers, &[])
}

/// The parts of an `http://` or `https://` URL: (https?, authority, path with query).
pub fn split_url(url: &str) -> Result<(bool, &str, &str), HttpError> {
    let (https, rest) = if let Some(r) = url.strip_prefix("https://") {
        (true, r)
    } else if let Some(r) = url.strip_prefix("http://") {
        (false, r)
    } else {
        return Err(HttpError::Invalid(format!(
            "`{url}`: only http:// and https:// URLs"
        )));
    };
    let (authority, path) = match rest.find(['/', '?']) {
        Some(i) if rest[i..].starts_with('/') => (&rest[..i], &rest[i..]),
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if authority.is_empty() || authority.contains('@') {
        return Err(HttpError::Invalid(format!(
            "`{url}`: no host, or a user in it"
        )));
    }
    Ok((https, authority, path))
}

/// Send a request with any method.
pub fn send(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<Response, HttpError> {
    let (https, authority, path) = split_url(url)?;
    imp::send(method, https, authority, path, headers, body)
}

#[cfg(target_arch = "wasm32")]
mod imp {
    use super::{HttpError, MAX_RESPONSE_BYTES, Response};
    use wasi::http::outgoing_handler;
    use wasi::http::types::{
        ErrorCode, Fields, IncomingBody, Method, OutgoingBody, OutgoingRequest, Scheme,
    };
    use wasi::io::streams::StreamError;

    fn method_of(m: &str) -> Method {
        match m.to_ascii_uppercase().as_str() {
            "GET" => Method::Get,
            "HEAD" => Method::Head,
            "POST" => Method::Post,
            "PUT" => Method::Put,
            "DELETE" => Method::Delete,
            "PATCH" => Method::Patch,
            "OPTIONS" => Method::Options,
            other => Method::Other(other.to_owned()),
        }
    }

    fn error(e: ErrorCode) -> HttpError {
        match e {
            ErrorCode::HttpRequestDenied => {
                HttpError::Denied("the host is not granted to this handler".into())
            }
            ErrorCode::ConnectionTimeout
            | ErrorCode::ConnectionReadTimeout
            | ErrorCode::ConnectionWriteTimeout
            | ErrorCode::DnsTimeout => HttpError::Timeout(format!("{e:?}")),
            ErrorCode::HttpRequestMethodInvalid
            | ErrorCode::HttpRequestUriInvalid
            | ErrorCode::HttpRequestUriTooLong => HttpError::Invalid(format!("{e:?}")),
            other => HttpError::Failed(format!("{other:?}")),
        }
    }

    pub(super) fn send(
        method: &str,
        https: bool,
        authority: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<Response, HttpError> {
        let mut entries: Vec<(String, Vec<u8>)> = headers
            .iter()
            .map(|(k, v)| ((*k).to_ascii_lowercase(), v.as_bytes().to_vec()))
            .collect();
        // A known length: the body goes out in one piece, not chunked.
        if !body.is_empty() && !entries.iter().any(|(k, _)| k == "content-length") {
            entries.push(("content-length".into(), body.len().to_string().into_bytes()));
        }
        let fields = Fields::from_list(&entries)
            .map_err(|e| HttpError::Invalid(format!("headers: {e:?}")))?;
        let request = OutgoingRequest::new(fields);
        let invalid = |what: &str| HttpError::Invalid(what.to_owned());
        request
            .set_method(&method_of(method))
            .map_err(|()| invalid("method"))?;
        request
            .set_scheme(Some(if https { &Scheme::Https } else { &Scheme::Http }))
            .map_err(|()| invalid("scheme"))?;
        request
            .set_authority(Some(authority))
            .map_err(|()| invalid("authority"))?;
        request
            .set_path_with_query(Some(path))
            .map_err(|()| invalid("path"))?;
        let outgoing = request.body().map_err(|()| invalid("body taken twice"))?;
        // Start the request first: the host consumes the body while it is written.
        let pending = outgoing_handler::handle(request, None).map_err(error)?;
        let written = (|| {
            let stream = outgoing.write().map_err(|()| invalid("body stream"))?;
            for chunk in body.chunks(4096) {
                stream
                    .blocking_write_and_flush(chunk)
                    .map_err(|e| HttpError::Failed(format!("writing the body: {e:?}")))?;
            }
            Ok(())
        })();
        let finished = OutgoingBody::finish(outgoing, None).map_err(error);
        // The response (or why there is none) says more than a body write that failed
        // because the request was refused or the connection dropped.
        let response = loop {
            match pending.get() {
                Some(Ok(Ok(r))) => break r,
                Some(Ok(Err(e))) => return Err(error(e)),
                Some(Err(())) => return Err(HttpError::Failed("response taken twice".into())),
                None => pending.subscribe().block(),
            }
        };
        written?;
        finished?;
        let status = response.status();
        let headers = response.headers().entries();
        let incoming = response
            .consume()
            .map_err(|()| HttpError::Failed("response body taken twice".into()))?;
        let mut body = Vec::new();
        {
            let stream = incoming
                .stream()
                .map_err(|()| HttpError::Failed("response body stream".into()))?;
            loop {
                match stream.blocking_read(64 * 1024) {
                    Ok(bytes) => {
                        body.extend_from_slice(&bytes);
                        if body.len() > MAX_RESPONSE_BYTES {
                            return Err(HttpError::Failed(format!(
                                "response body over {MAX_RESPONSE_BYTES} bytes"
                            )));
                        }
                    }
                    Err(StreamError::Closed) => break,
                    Err(StreamError::LastOperationFailed(e)) => {
                        return Err(HttpError::Failed(format!(
                            "reading the response: {}",
                            e.to_debug_string()
                        )));
                    }
                }
            }
        }
        let _trailers = IncomingBody::finish(incoming);
        Ok(Response {
            status,
            headers,
            body,
        })
    }
}

#[cfg(not(target_arch = "wasm32"))]
mod imp {
    use super::{HttpError, Response};

    pub(super) fn send(
        _method: &str,
        _https: bool,
        authority: &str,
        _path: &str,
        _headers: &[(&str, &str)],
        _body: &[u8],
    ) -> Result<Response, HttpError> {
        Err(HttpError::Failed(format!(
            "outbound HTTP (to {authority}) works only inside a kasm component"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split_into_scheme_authority_and_path() {
        assert_eq!(
            split_url("http://127.0.0.1:9000/hook?x=1").unwrap(),
            (false, "127.0.0.1:9000", "/hook?x=1")
        );
        assert_eq!(
            split_url("https://example.com").unwrap(),
            (true, "example.com", "/")
        );
        assert_eq!(
            split_url("https://example.com?q").unwrap(),
            (true, "example.com", "?q")
        );
        assert!(split_url("ftp://x/").is_err());
        assert!(split_url("http://user@x/").is_err());
    }

    #[test]
    fn statuses_map_to_outcomes() {
        let r = |status| Response {
            status,
            headers: vec![],
            body: b"nope".to_vec(),
        };
        assert!(r(200).error_for_status().is_ok());
        assert!(matches!(
            r(503).error_for_status(),
            Err(HandlerError::Retryable(_))
        ));
        assert!(matches!(
            r(429).error_for_status(),
            Err(HandlerError::Retryable(_))
        ));
        assert!(matches!(
            r(400).error_for_status(),
            Err(HandlerError::Fatal(_))
        ));
    }
}
