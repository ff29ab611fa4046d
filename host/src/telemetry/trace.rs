//! Traces (OpenTelemetry): a span per record, its parent taken from the record's W3C
//! `traceparent` header, and the trace carried on into what the handler does — a `send` span
//! and a `traceparent` header on every record it publishes, a client span and a
//! `traceparent` header on every HTTP request it makes, the record's `traceparent` on its dead
//! letter, and trace and span ids on its log lines.
//!
//! Spans are exported over OTLP/HTTP (protobuf) when `OTEL_EXPORTER_OTLP_ENDPOINT` or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is set; the other standard variables
//! (`OTEL_EXPORTER_OTLP_HEADERS`, `OTEL_EXPORTER_OTLP_TIMEOUT`, `OTEL_SERVICE_NAME`,
//! `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_SDK_DISABLED`, `OTEL_TRACES_EXPORTER=none`, the
//! `OTEL_BSP_*` batch settings) apply too. Otherwise tracing is off and a record costs one
//! branch: no span is made, no header is read or written.
//!
//! Names and attributes follow OpenTelemetry's messaging conventions: `process <topic>`
//! (kind consumer) with `messaging.system = kafka`, `messaging.destination.name`,
//! `messaging.destination.partition.id`, `messaging.consumer.group.name`,
//! `messaging.kafka.offset`, `messaging.message.id` (the event id), `kasm.handler` and, when it
//! ends, `kasm.outcome`; `send <topic>` (kind producer) per publish; and an HTTP client span
//! (`POST`, ...) per outgoing request.

use std::time::Duration;

use anyhow::Context as _;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator as _};
use opentelemetry::trace::{
    SpanKind, Status, TraceContextExt as _, Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::{WithExportConfig as _, WithHttpConfig as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};

/// The W3C trace-context header.
pub const TRACEPARENT: &str = "traceparent";

/// How traces leave the process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceConfig {
    /// The OTLP/HTTP traces URL (`http://collector:4318/v1/traces`); `None`: from the
    /// standard environment variables.
    pub endpoint: Option<String>,
}

impl TraceConfig {
    /// From the process environment: `Some` when an OTLP endpoint is set and tracing is not
    /// disabled (`OTEL_SDK_DISABLED=true`, `OTEL_TRACES_EXPORTER=none`).
    pub fn from_env() -> Option<Self> {
        Self::from_lookup(crate::config::environment::var)
    }

    /// [`Self::from_env`] through `get`.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Option<Self> {
        let set = |k: &str| get(k).is_some_and(|v| !v.trim().is_empty());
        let disabled = get("OTEL_SDK_DISABLED").is_some_and(|v| v.trim() == "true")
            || get("OTEL_TRACES_EXPORTER").is_some_and(|v| v.trim() == "none");
        (!disabled
            && (set("OTEL_EXPORTER_OTLP_ENDPOINT") || set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")))
        .then_some(Self { endpoint: None })
    }
}

/// The exporter of one host: its provider, flushed and shut down with the host.
#[derive(Debug)]
pub struct Tracing {
    provider: SdkTracerProvider,
    tracer: Tracer,
}

impl Tracing {
    /// Start exporting as `config` says.
    pub fn start(config: &TraceConfig) -> anyhow::Result<Self> {
        let mut exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_http_client(UreqClient::new());
        if let Some(endpoint) = &config.endpoint {
            exporter = exporter.with_endpoint(endpoint.clone());
        }
        let exporter = exporter
            .build()
            .context("configuring the OTLP trace exporter (OTEL_EXPORTER_OTLP_*)")?;
        let mut resource = opentelemetry_sdk::Resource::builder();
        if crate::config::environment::var("OTEL_SERVICE_NAME").is_none() {
            resource = resource.with_service_name("kasm");
        }
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(
                resource
                    .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
                    .build(),
            )
            .build();
        let tracer = Tracer {
            inner: provider.tracer("kasm"),
        };
        Ok(Self { provider, tracer })
    }

    /// The tracer handlers use.
    pub fn tracer(&self) -> Tracer {
        self.tracer.clone()
    }

    /// Export what is queued and stop (on the calling thread: the exporter's client blocks).
    pub fn shutdown(self) {
        if let Err(e) = self.provider.shutdown_with_timeout(Duration::from_secs(5)) {
            tracing::warn!(error = %e, "exporting the last spans failed");
        }
    }
}

/// Makes spans (cheap to clone).
#[derive(Debug, Clone)]
pub struct Tracer {
    inner: SdkTracer,
}

/// Where a record came from, for its span.
#[derive(Debug, Clone, Copy)]
pub struct RecordFacts<'a> {
    /// The handler.
    pub handler: &'a str,
    /// Its consumer group.
    pub group: &'a str,
    /// Topic.
    pub topic: &'a str,
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
    /// The event id.
    pub event_id: &'a str,
}

impl Tracer {
    /// Start the span of one record, the child of its `traceparent` header when it has one.
    pub fn record(&self, facts: RecordFacts<'_>, headers: &[(String, Vec<u8>)]) -> RecordSpan {
        let parent = TraceContextPropagator::new().extract(&Headers(headers));
        let span = self
            .inner
            .span_builder(format!("process {}", facts.topic))
            .with_kind(SpanKind::Consumer)
            .with_attributes([
                KeyValue::new("messaging.system", "kafka"),
                KeyValue::new("messaging.operation.type", "process"),
                KeyValue::new("messaging.operation.name", "process"),
                KeyValue::new("messaging.destination.name", facts.topic.to_owned()),
                KeyValue::new(
                    "messaging.destination.partition.id",
                    facts.partition.to_string(),
                ),
                KeyValue::new("messaging.consumer.group.name", facts.group.to_owned()),
                KeyValue::new("messaging.kafka.offset", facts.offset),
                KeyValue::new("messaging.message.id", facts.event_id.to_owned()),
                KeyValue::new("kasm.handler", facts.handler.to_owned()),
            ])
            .start_with_context(&self.inner, &parent);
        RecordSpan {
            cx: parent.with_span(span),
            tracer: self.clone(),
        }
    }
}

/// A record's span, open while the record is handled and committed.
#[derive(Debug, Clone)]
pub struct RecordSpan {
    cx: Context,
    tracer: Tracer,
}

impl RecordSpan {
    /// Its `traceparent`.
    pub fn traceparent(&self) -> String {
        traceparent_of(&self.cx)
    }

    /// Trace and span id, in hex (for log lines).
    pub fn ids(&self) -> (String, String) {
        let span = self.cx.span();
        let sc = span.span_context();
        (sc.trace_id().to_string(), sc.span_id().to_string())
    }

    /// Start a `send <topic>` span for one publish; its `traceparent` goes on the record.
    pub fn send(&self, topic: &str) -> ChildSpan {
        self.child(
            format!("send {topic}"),
            SpanKind::Producer,
            vec![
                KeyValue::new("messaging.system", "kafka"),
                KeyValue::new("messaging.operation.type", "send"),
                KeyValue::new("messaging.operation.name", "send"),
                KeyValue::new("messaging.destination.name", topic.to_owned()),
            ],
        )
    }

    /// Start the client span of one outgoing HTTP request.
    pub fn http(&self, method: &str, url: &str, host: &str, port: u16) -> ChildSpan {
        self.child(
            method.to_owned(),
            SpanKind::Client,
            vec![
                KeyValue::new("http.request.method", method.to_owned()),
                KeyValue::new("url.full", url.to_owned()),
                KeyValue::new("server.address", host.to_owned()),
                KeyValue::new("server.port", i64::from(port)),
            ],
        )
    }

    fn child(&self, name: String, kind: SpanKind, attributes: Vec<KeyValue>) -> ChildSpan {
        let span = self
            .tracer
            .inner
            .span_builder(name)
            .with_kind(kind)
            .with_attributes(attributes)
            .start_with_context(&self.tracer.inner, &self.cx);
        ChildSpan {
            cx: self.cx.with_span(span),
        }
    }

    /// Note a failed attempt that is tried again.
    pub fn note_retry(&self, attempt: u32, reason: &str) {
        self.cx.span().add_event(
            "retry",
            vec![
                KeyValue::new("kasm.attempt", i64::from(attempt)),
                KeyValue::new("kasm.reason", reason.to_owned()),
            ],
        );
    }

    /// End the span with the record's outcome (`ok`, `skipped`, `dead-lettered`, `again`); a
    /// failure's reason becomes the span's error status. (A span dropped unended, with a batch
    /// abandoned for a lost partition, is ended by the SDK without an outcome.)
    pub fn end(self, outcome: &str, error: Option<&str>) {
        let span = self.cx.span();
        span.set_attribute(KeyValue::new("kasm.outcome", outcome.to_owned()));
        if let Some(e) = error {
            span.set_status(Status::error(e.to_owned()));
        }
        span.end();
    }
}

/// A span under a record's: a publish or an HTTP request.
#[derive(Debug)]
pub struct ChildSpan {
    cx: Context,
}

impl ChildSpan {
    /// Its `traceparent`, for the record or request it stands for.
    pub fn traceparent(&self) -> String {
        traceparent_of(&self.cx)
    }

    /// Note an attribute learnt later (where the record landed, the response status).
    pub fn set(&self, key: &'static str, value: impl Into<opentelemetry::Value>) {
        self.cx.span().set_attribute(KeyValue::new(key, value));
    }

    /// End it, failed with `error` if there was one.
    pub fn end(self, error: Option<&str>) {
        let span = self.cx.span();
        if let Some(e) = error {
            span.set_status(Status::error(e.to_owned()));
        }
        span.end();
    }
}

fn traceparent_of(cx: &Context) -> String {
    let mut out = Traceparent(None);
    TraceContextPropagator::new().inject_context(cx, &mut out);
    out.0.unwrap_or_default()
}

/// `headers` with `traceparent` set to `value` (an earlier one replaced, `tracestate` kept).
pub fn with_traceparent(headers: &[(String, Vec<u8>)], value: &str) -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<(String, Vec<u8>)> = headers
        .iter()
        .filter(|(k, _)| !k.eq_ignore_ascii_case(TRACEPARENT))
        .cloned()
        .collect();
    out.push((TRACEPARENT.to_owned(), value.as_bytes().to_vec()));
    out
}

/// Record headers as the propagator reads them (the last of a repeated header wins, as Kafka
/// clients append).
struct Headers<'a>(&'a [(String, Vec<u8>)]);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .rev()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .and_then(|(_, v)| std::str::from_utf8(v).ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|(k, _)| k.as_str()).collect()
    }
}

/// Catches the `traceparent` the propagator writes.
struct Traceparent(Option<String>);

impl Injector for Traceparent {
    fn set(&mut self, key: &str, value: String) {
        if key == TRACEPARENT {
            self.0 = Some(value);
        }
    }
}

/// The exporter's HTTP client: ureq (already the admin CLI's), blocking, which suits the
/// batch processor's own thread. Plain HTTP: a collector on the node or a sidecar.
#[derive(Debug)]
struct UreqClient {
    agent: ureq::Agent,
}

impl UreqClient {
    fn new() -> Self {
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(10)))
            .build();
        Self {
            agent: config.into(),
        }
    }
}

#[async_trait::async_trait]
impl opentelemetry_http::HttpClient for UreqClient {
    async fn send_bytes(
        &self,
        request: opentelemetry_http::Request<opentelemetry_http::Bytes>,
    ) -> Result<
        opentelemetry_http::Response<opentelemetry_http::Bytes>,
        opentelemetry_http::HttpError,
    > {
        let (parts, body) = request.into_parts();
        let request = ureq::http::Request::from_parts(parts, body.to_vec());
        let mut response = self.agent.run(request)?;
        let status = response.status();
        let body = response.body_mut().read_to_vec()?;
        let mut out = opentelemetry_http::Response::new(opentelemetry_http::Bytes::from(body));
        *out.status_mut() = status;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn on_only_when_an_endpoint_is_set_and_not_disabled() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| (*v).to_owned())
            }
        };
        assert_eq!(TraceConfig::from_lookup(env(&[])), None);
        assert_eq!(
            TraceConfig::from_lookup(env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", " ")])),
            None
        );
        assert!(
            TraceConfig::from_lookup(env(&[(
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                "http://127.0.0.1:4318"
            )]))
            .is_some()
        );
        assert!(
            TraceConfig::from_lookup(env(&[(
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                "http://127.0.0.1:4318/v1/traces"
            )]))
            .is_some()
        );
        assert_eq!(
            TraceConfig::from_lookup(env(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318"),
                ("OTEL_SDK_DISABLED", "true")
            ])),
            None
        );
        assert_eq!(
            TraceConfig::from_lookup(env(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318"),
                ("OTEL_TRACES_EXPORTER", "none")
            ])),
            None
        );
    }

    #[test]
    fn a_traceparent_is_replaced_and_other_headers_kept() {
        let headers = vec![
            ("event-id".to_owned(), b"e1".to_vec()),
            ("TraceParent".to_owned(), b"00-old".to_vec()),
            ("tracestate".to_owned(), b"k=v".to_vec()),
        ];
        let out = with_traceparent(&headers, "00-new");
        assert_eq!(
            out,
            vec![
                ("event-id".to_owned(), b"e1".to_vec()),
                ("tracestate".to_owned(), b"k=v".to_vec()),
                ("traceparent".to_owned(), b"00-new".to_vec()),
            ]
        );
    }
}
