//! Outbound HTTP (`wasi:http/outgoing-handler`, wasmtime-wasi-http): the `send_request` hook
//! checks the request's host and port against the `http` grant before any connection or name
//! lookup, caps each phase at the handler's HTTP timeout, and gives each request a client span
//! and its `traceparent` when the record is traced.

use std::time::Duration;

use super::HostGrant;

/// Outbound HTTP policy of one handler: only the granted hosts, every phase bounded.
pub(crate) struct HttpHooks {
    handler: String,
    grant: Option<HostGrant>,
    timeout: Duration,
    /// The span of the record being handled: each request gets a client span under it and
    /// its `traceparent`, and the call's log lines its ids.
    pub trace: Option<crate::telemetry::trace::RecordSpan>,
}

impl HttpHooks {
    /// The policy of `handler`: its `http` grant, and the bound on each phase of a request.
    pub fn new(handler: &str, grant: Option<HostGrant>, timeout: Duration) -> Self {
        Self {
            handler: handler.to_owned(),
            grant,
            timeout,
            trace: None,
        }
    }
}

impl std::fmt::Debug for HttpHooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpHooks")
            .field("handler", &self.handler)
            .field("grant", &self.grant)
            .finish_non_exhaustive()
    }
}

type SendResult = Result<
    (
        axum::http::Response<wasmtime_wasi_http::WasiBody>,
        Box<dyn std::future::Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>,
    ),
    wasmtime_wasi_http::Error,
>;

impl wasmtime_wasi_http::WasiHttpHooks for HttpHooks {
    fn send_request(
        &mut self,
        request: axum::http::Request<wasmtime_wasi_http::WasiBody>,
        options: Option<wasmtime_wasi_http::RequestOptions>,
        fut: Box<dyn std::future::Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>,
    ) -> Box<dyn std::future::Future<Output = SendResult> + Send> {
        drop(fut);
        let mut request = request;
        let uri = request.uri();
        let https = uri.scheme() == Some(&axum::http::uri::Scheme::HTTPS);
        let host = uri.host().unwrap_or_default().to_owned();
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let allowed = self.grant.as_ref().is_some_and(|g| g.allows(&host, port));
        if !allowed {
            // Refused before any connection (or name lookup) is made.
            tracing::warn!(handler = %self.handler, %host, port, "outbound HTTP to a host not granted: denied");
            return Box::new(async { Err(wasmtime_wasi_http::Error::HttpRequestDenied) });
        }
        // The guest may ask for shorter timeouts, never longer ones.
        let bound =
            |asked: Option<Duration>| Some(asked.map_or(self.timeout, |a| a.min(self.timeout)));
        let options = wasmtime_wasi_http::RequestOptions {
            connect_timeout: bound(options.and_then(|o| o.connect_timeout)),
            first_byte_timeout: bound(options.and_then(|o| o.first_byte_timeout)),
            between_bytes_timeout: bound(options.and_then(|o| o.between_bytes_timeout)),
        };
        let span = self.trace.as_ref().map(|t| {
            let url = request.uri().to_string();
            let span = t.http(request.method().as_str(), &url, &host, port);
            if let Ok(v) = axum::http::HeaderValue::from_str(&span.traceparent()) {
                request
                    .headers_mut()
                    .insert(crate::telemetry::trace::TRACEPARENT, v);
            }
            span
        });
        Box::new(async move {
            let sent = wasmtime_wasi_http::default_send_request(request, Some(options)).await;
            let (res, io) = match (sent, span) {
                (Ok(r), Some(span)) => {
                    span.set(
                        "http.response.status_code",
                        i64::from(r.0.status().as_u16()),
                    );
                    let failed =
                        r.0.status()
                            .is_server_error()
                            .then(|| r.0.status().to_string());
                    span.end(failed.as_deref());
                    r
                }
                (Ok(r), None) => r,
                (Err(e), span) => {
                    if let Some(span) = span {
                        span.end(Some(&format!("{e:?}")));
                    }
                    return Err(e);
                }
            };
            Ok((
                res.map(http_body_util::BodyExt::boxed_unsync),
                Box::new(io)
                    as Box<
                        dyn std::future::Future<Output = Result<(), wasmtime_wasi_http::Error>>
                            + Send,
                    >,
            ))
        })
    }
}
