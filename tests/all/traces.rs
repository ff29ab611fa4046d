//! Traces: a record that arrives with a W3C `traceparent` is handled under a span of that
//! trace, and the trace goes on into the record the handler publishes, the HTTP request it
//! makes, and what the host exports over OTLP to a receiver of the test's.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use kasm_host::config::Config;
use kasm_host::telemetry::trace::TraceConfig;
use kasm_tests::broker::{Rec, TestBroker, produce, read_topic};
use kasm_tests::receiver::Receiver;
use kasm_tests::{KAFKA_TEST_PROPS, Setup, component, write_config};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::Span;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use prost::Message as _;

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT_ID: &str = "00f067aa0ba902b7";

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn attr(span: &Span, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v| v.value.as_ref())
        .map(|v| match v {
            Value::StringValue(s) => s.clone(),
            Value::IntValue(i) => i.to_string(),
            Value::BoolValue(b) => b.to_string(),
            other => format!("{other:?}"),
        })
}

/// A host with config `body`, traces as `trace` says.
async fn start(s: &Setup, body: &str, trace: Option<TraceConfig>) -> kasm_host::app::Host {
    let config = Config::load(&write_config(s.dir.path(), body)).unwrap();
    kasm_host::app::start_traced(
        &config,
        &s.env(),
        None,
        std::sync::Arc::new(kasm_host::capabilities::websocket::Hub::from_env()),
        trace,
    )
    .await
    .unwrap()
}

/// A record with `event_id` and a `traceparent` of [`TRACE_ID`] under [`PARENT_ID`].
fn traced(payload: Vec<u8>, event_id: &str) -> Rec {
    Rec {
        payload,
        headers: vec![
            ("event-id".into(), event_id.as_bytes().to_vec()),
            (
                "traceparent".into(),
                format!("00-{TRACE_ID}-{PARENT_ID}-01").into_bytes(),
            ),
        ],
        ..Rec::default()
    }
}

/// The exported span `id` (the parent named by a header): of `kind` and `name`, under `parent`.
fn child<'a>(
    by_id: &HashMap<String, &'a Span>,
    id: &str,
    kind: SpanKind,
    name: &str,
    parent: &str,
    names: &[&str],
) -> &'a Span {
    let span = by_id
        .get(id)
        .unwrap_or_else(|| panic!("{name}: the header names an exported span; got {names:?}"));
    assert_eq!(span.kind, kind as i32, "{name}");
    assert_eq!(span.name, name);
    assert_eq!(
        hex(&span.parent_span_id),
        parent,
        "{name} is under the record's span"
    );
    span
}

/// `traceparent` → (trace id, parent span id).
fn parse_traceparent(v: &str) -> (String, String) {
    let parts: Vec<&str> = v.split('-').collect();
    assert_eq!(parts.len(), 4, "a W3C traceparent: {v}");
    assert_eq!(parts[0], "00", "{v}");
    (parts[1].to_owned(), parts[2].to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_traced_record_is_one_trace_through_its_span_its_publish_and_its_http_call() {
    let s = Setup::new(TestBroker::embedded(), 1).await;
    let collector = Receiver::start(&[200]);
    let webhook = Receiver::start(&[200]);
    let body = format!(
        "[kafka]\n{KAFKA_TEST_PROPS}\n[handlers.traced]\ncomponent = \"{c}\"\ntopics = [\"{t}\"]\n\
         group_id = \"{g}\"\ngrants = {{ producer = [\"{o}\"], kv = true, http = [\"{w}\"] }}\n",
        c = component(kasm_tests::components::FIXTURE_HTTP).display(),
        t = s.topic,
        g = s.group,
        o = s.out,
        w = webhook.addr,
    );
    let host = start(
        &s,
        &body,
        Some(TraceConfig {
            endpoint: Some(format!("http://{}/v1/traces", collector.addr)),
        }),
    )
    .await;
    let payload = serde_json::json!({
        "action": "post",
        "url": format!("http://{}/hook", webhook.addr),
        "topic": s.out,
    });
    produce(
        &s.broker.producer(),
        &s.topic,
        &[traced(payload.to_string().into_bytes(), "traced-1")],
    )
    .await;

    // The downstream record carries the trace.
    let out = read_topic(&s.broker.bootstrap(), &s.out, 1, Duration::from_secs(60));
    assert_eq!(out.len(), 1, "the handler published its record");
    let downstream = out[0]
        .headers
        .get("traceparent")
        .cloned()
        .expect("the published record has a traceparent");
    let (trace, send_id) = parse_traceparent(&downstream);
    assert_eq!(
        trace, TRACE_ID,
        "the published record is in the record's trace"
    );
    // So does the HTTP request.
    let hook = webhook
        .received
        .lock()
        .unwrap()
        .first()
        .cloned()
        .expect("the handler posted");
    let (trace, http_id) = parse_traceparent(
        hook.header("traceparent")
            .expect("a traceparent on the request"),
    );
    assert_eq!(trace, TRACE_ID, "the HTTP request is in the record's trace");

    // A record that fails for good: its dead letter carries the trace too.
    produce(
        &s.broker.producer(),
        &s.topic,
        &[traced(
            br#"{"action":"fatal","message":"no"}"#.to_vec(),
            "traced-2",
        )],
    )
    .await;
    let dead = read_topic(
        &s.broker.bootstrap(),
        &format!("{}.dlq", s.topic),
        1,
        Duration::from_secs(60),
    );
    assert_eq!(dead.len(), 1, "the fatal record was dead-lettered");
    let (trace, dead_parent) = parse_traceparent(
        dead[0]
            .headers
            .get("traceparent")
            .expect("the dead letter has a traceparent"),
    );
    assert_eq!(trace, TRACE_ID, "the dead letter is in the record's trace");
    assert_ne!(
        dead_parent, PARENT_ID,
        "under the record's span, not its parent"
    );

    // Shutting down exports what is left; then the spans, as the collector got them.
    host.shutdown().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let spans: Vec<Span> = loop {
        let spans: Vec<Span> = collector
            .received
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.path == "/v1/traces")
            .flat_map(|r| {
                assert_eq!(r.header("content-type"), Some("application/x-protobuf"));
                let req =
                    ExportTraceServiceRequest::decode(r.body.as_slice()).expect("OTLP protobuf");
                req.resource_spans
                    .into_iter()
                    .flat_map(|rs| rs.scope_spans)
                    .flat_map(|ss| ss.spans)
                    .collect::<Vec<_>>()
            })
            .collect();
        if spans.len() >= 4 || Instant::now() > deadline {
            break spans;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let in_trace: Vec<&Span> = spans
        .iter()
        .filter(|sp| hex(&sp.trace_id) == TRACE_ID)
        .collect();
    let by_id: HashMap<String, &Span> = in_trace.iter().map(|sp| (hex(&sp.span_id), *sp)).collect();
    let names: Vec<&str> = in_trace.iter().map(|sp| sp.name.as_str()).collect();

    let dead_span = by_id
        .get(&dead_parent)
        .unwrap_or_else(|| panic!("the dead letter's parent is an exported span; got {names:?}"));
    assert_eq!(
        attr(dead_span, "kasm.outcome").as_deref(),
        Some("dead-lettered")
    );
    assert_eq!(
        attr(dead_span, "messaging.message.id").as_deref(),
        Some("traced-2")
    );
    let process = in_trace
        .iter()
        .find(|sp| {
            sp.kind == SpanKind::Consumer as i32
                && attr(sp, "messaging.message.id").as_deref() == Some("traced-1")
        })
        .unwrap_or_else(|| panic!("a consumer span in the trace; got {names:?}"));
    assert_eq!(process.name, format!("process {}", s.topic));
    assert_eq!(
        hex(&process.parent_span_id),
        PARENT_ID,
        "the record's traceparent is its parent"
    );
    for (key, want) in [
        ("messaging.system", "kafka".to_owned()),
        ("messaging.operation.type", "process".to_owned()),
        ("messaging.destination.name", s.topic.clone()),
        ("messaging.destination.partition.id", "0".to_owned()),
        ("messaging.consumer.group.name", s.group.clone()),
        ("messaging.kafka.offset", "0".to_owned()),
        ("messaging.message.id", "traced-1".to_owned()),
        ("kasm.handler", "traced".to_owned()),
        ("kasm.outcome", "ok".to_owned()),
    ] {
        assert_eq!(
            attr(process, key).as_deref(),
            Some(want.as_str()),
            "{key} of {process:?}"
        );
    }
    let process_id = hex(&process.span_id);

    let send = child(
        &by_id,
        &send_id,
        SpanKind::Producer,
        &format!("send {}", s.out),
        &process_id,
        &names,
    );
    assert_eq!(
        attr(send, "messaging.destination.name").as_deref(),
        Some(s.out.as_str())
    );
    assert!(
        attr(send, "messaging.kafka.offset").is_some(),
        "where it landed: {send:?}"
    );

    let http = child(
        &by_id,
        &http_id,
        SpanKind::Client,
        "POST",
        &process_id,
        &names,
    );
    assert_eq!(
        attr(http, "http.response.status_code").as_deref(),
        Some("200")
    );
    assert_eq!(
        attr(http, "url.full").as_deref(),
        Some(format!("http://{}/hook", webhook.addr).as_str())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_tracing_off_nothing_is_added_to_what_the_handler_publishes() {
    let s = Setup::new(TestBroker::embedded(), 1).await;
    let body = kasm_tests::publisher_body(&s, "", "", "");
    let host = start(&s, &body, None).await;
    produce(
        &s.broker.producer(),
        &s.topic,
        &kasm_tests::events("ev", 0..5, &s.out),
    )
    .await;
    let out = read_topic(&s.broker.bootstrap(), &s.out, 5, Duration::from_secs(60));
    assert_eq!(out.len(), 5);
    assert!(
        out.iter().all(|g| !g.headers.contains_key("traceparent")),
        "no trace header without tracing"
    );
    host.shutdown().await.unwrap();
}

/// A writer into a shared buffer, for capturing log lines.
#[derive(Clone, Default)]
struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn a_guest_log_line_carries_the_trace_and_span_ids_of_its_record() {
    let collector = Receiver::start(&[200]);
    let tracing = kasm_host::telemetry::trace::Tracing::start(&TraceConfig {
        endpoint: Some(format!("http://{}/v1/traces", collector.addr)),
    })
    .unwrap();
    let headers = vec![
        ("event-id".to_owned(), b"logged-1".to_vec()),
        (
            "traceparent".to_owned(),
            format!("00-{TRACE_ID}-{PARENT_ID}-01").into_bytes(),
        ),
    ];
    let span = tracing.tracer().record(
        kasm_host::telemetry::trace::RecordFacts {
            handler: "fixture",
            group: "g",
            topic: "fixtures",
            partition: 0,
            offset: 42,
            event_id: "logged-1",
        },
        &headers,
    );
    let (trace_id, span_id) = span.ids();
    assert_eq!(trace_id, TRACE_ID);
    // The guest's log events as JSON lines; a current-thread runtime, so the call runs on
    // this thread, under this subscriber.
    let lines = Captured::default();
    let writer = lines.clone();
    let subscriber = tracing_subscriber::fmt()
        .json()
        .with_max_level(tracing_subscriber::filter::LevelFilter::INFO)
        .with_writer(move || writer.clone())
        .finish();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let event = kasm_host::Event::from_parts(
        "fixtures",
        0,
        42,
        None,
        serde_json::to_vec(&serde_json::json!({"action": "log", "message": "hello, traced"}))
            .unwrap(),
        headers.clone(),
        Some(1_700_000_000_000),
    );
    {
        let _guard = tracing_subscriber::util::SubscriberInitExt::set_default(subscriber);
        rt.block_on(async {
            let runtime = kasm_tests::runtime();
            let h = kasm_tests::load(
                &runtime,
                kasm_tests::components::FIXTURE,
                kasm_host::capabilities::Grants::all(),
                |_| {},
            );
            let mut batch = h.batch();
            batch.set_trace(Some(span.clone()));
            let inv = batch.invoke(&event).await.unwrap();
            assert_eq!(inv.outcome, kasm_host::Outcome::Ok);
            batch.finish();
        });
    }
    span.end("ok", None);
    tracing.shutdown();
    let text = String::from_utf8(lines.0.lock().unwrap().clone()).unwrap();
    let line = text
        .lines()
        .find(|l| l.contains("hello, traced"))
        .unwrap_or_else(|| panic!("the guest's line was logged: {text}"));
    let v: serde_json::Value = serde_json::from_str(line).unwrap();
    let fields = &v["fields"];
    assert_eq!(fields["trace_id"], TRACE_ID, "{line}");
    assert_eq!(fields["span_id"], span_id.as_str(), "{line}");
    assert_eq!(
        fields["event_id"], "logged-1",
        "beside the record's fields: {line}"
    );
}
