//! The admin API and hot swap, with real components, a real broker and real HTTP.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use kasm_host::config::{Config, Secret};
use kasm_tests::broker::{
    Got, Rec, TestBroker, committed_offsets, end_offsets, produce, read_topic,
};
use kasm_tests::hostproc::{http_get, http_request};
use kasm_tests::{KAFKA_TEST_PROPS, Setup, component, component_bytes, events, write_config};

const TOKEN: &str = "test-token-5f2c";

fn config(s: &Setup) -> Config {
    let body = format!(
        "[kafka]\n{k}\n[handlers.pub]\ncomponent = \"{c}\"\ntopics = [\"{t}\"]\ngroup_id = \"{g}\"\n\
         grants = {{ producer = [\"{o}\"] }}\n",
        k = KAFKA_TEST_PROPS,
        c = component(kasm_tests::components::FIXTURE_PUBLISHER).display(),
        t = s.topic,
        g = s.group,
        o = s.out,
    );
    Config::load(&write_config(s.dir.path(), &body)).unwrap()
}

async fn start(s: &Setup, token: Option<&str>) -> kasm_host::app::Host {
    let env = s.env();
    kasm_host::app::start_with(&config(s), &env, token.map(Secret::new))
        .await
        .unwrap()
}

fn versions_by_source(got: &[Got]) -> HashMap<String, Vec<String>> {
    let mut m: HashMap<String, Vec<String>> = HashMap::new();
    for g in got {
        let v = g.json();
        m.entry(v["source"].as_str().unwrap_or_default().to_owned())
            .or_default()
            .push(v["version"].as_str().unwrap_or_default().to_owned());
    }
    m
}

fn active_sha(addr: &str) -> String {
    let (code, body) = http_request(addr, "GET", "/v1/handlers/pub", Some(TOKEN), b"");
    assert_eq!(code, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    v["active_version"]["sha256"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_swaps_under_load_lose_nothing_and_each_event_runs_on_one_version() {
    let s = Setup::new(TestBroker::from_env(), 4).await;
    let n = 20_000;
    // The events come in eleven parts, the first before the swaps and each next one right
    // after a swap, so that every version gets records however fast the batches go.
    let part = n / 11;
    let parts = |k: usize| k * part..if k == 10 { n } else { (k + 1) * part };
    produce(
        &s.broker.producer(),
        &s.topic,
        &events("ev", parts(0), &s.out),
    )
    .await;
    let host = start(&s, Some(TOKEN)).await;
    let addr = host.admin_addr.to_string();
    let v1 = component_bytes(kasm_tests::components::FIXTURE_PUBLISHER);
    let v2 = component_bytes(kasm_tests::components::FIXTURE_PUBLISHER_V2);
    let mut swaps = 0;
    let deadline = Instant::now() + Duration::from_secs(120);
    while swaps < 10 {
        assert!(Instant::now() < deadline, "swaps did not finish");
        // Swap while records flow: a quarter of this part handled.
        let processed = host.handlers[0].stats.snapshot().processed;
        if processed < (swaps * part + part / 4) as u64 {
            tokio::time::sleep(Duration::from_millis(5)).await;
            continue;
        }
        let bytes = if swaps % 2 == 0 { &v2 } else { &v1 };
        let (code, body) = http_request(
            &addr,
            "PUT",
            "/v1/handlers/pub/component",
            Some(TOKEN),
            bytes,
        );
        assert_eq!(code, 200, "{body}");
        let r: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(r["active"], kasm_host::runtime::sha256_hex(bytes));
        produce(
            &s.broker.producer(),
            &s.topic,
            &events("ev", parts(swaps + 1), &s.out),
        )
        .await;
        swaps += 1;
    }
    let got = read_topic(&s.broker.bootstrap(), &s.out, n, Duration::from_secs(240));
    let by_source = versions_by_source(&got);
    let missing = (0..n)
        .filter(|i| !by_source.contains_key(&format!("ev-{i}")))
        .count();
    assert_eq!(missing, 0, "events lost across swaps");
    let twice: Vec<_> = by_source.iter().filter(|(_, v)| v.len() != 1).collect();
    assert!(
        twice.is_empty(),
        "handled more than once: {:?}",
        twice.first()
    );
    let mut per_version: HashMap<&str, usize> = HashMap::new();
    for v in by_source.values() {
        *per_version.entry(v[0].as_str()).or_insert(0) += 1;
    }
    assert!(
        per_version.get("v1").is_some_and(|c| *c > 0)
            && per_version.get("v2").is_some_and(|c| *c > 0),
        "{per_version:?}"
    );
    assert_eq!(host.handlers[0].stats.snapshot().dead_lettered, 0);

    let (_, body) = http_request(&addr, "GET", "/v1/handlers/pub", Some(TOKEN), b"");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let history = v["history"].as_array().unwrap();
    assert_eq!(history.len(), 11, "startup + 10 swaps: {body}");
    assert!(
        history[1]["first_offsets"]
            .as_object()
            .is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    host.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_uploads_under_load_keep_the_old_version_and_fail_nothing() {
    let s = Setup::new(TestBroker::from_env(), 4).await;
    let n = 3_000;
    produce(&s.broker.producer(), &s.topic, &events("ev", 0..n, &s.out)).await;
    let host = start(&s, Some(TOKEN)).await;
    let addr = host.admin_addr.to_string();
    let before = active_sha(&addr);
    let garbage: Vec<u8> = (0..2048).map(|_| rand::random::<u8>()).collect();
    for (bytes, needle) in [
        (garbage, "not a WebAssembly file"),
        (
            component_bytes(kasm_tests::components::OTHER_WORLD),
            "another world",
        ),
        (
            component_bytes(kasm_tests::components::FIXTURE),
            "kasm:handler/kv@0.1.0",
        ),
    ] {
        let (code, body) = http_request(
            &addr,
            "PUT",
            "/v1/handlers/pub/component",
            Some(TOKEN),
            &bytes,
        );
        assert_eq!(code, 422, "{body}");
        assert!(body.contains(needle), "the reason is given: {body}");
        assert!(body.contains("active version keeps serving"), "{body}");
        assert_eq!(active_sha(&addr), before);
    }
    let got = read_topic(&s.broker.bootstrap(), &s.out, n, Duration::from_secs(120));
    assert_eq!(versions_by_source(&got).len(), n);
    assert_eq!(
        host.handlers[0].stats.snapshot().dead_lettered,
        0,
        "zero failed records"
    );
    host.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_restores_the_previous_hash_and_a_restart_keeps_the_deployed_one() {
    let s = Setup::new(TestBroker::from_env(), 4).await;
    let v1 =
        kasm_host::runtime::sha256_hex(&component_bytes(kasm_tests::components::FIXTURE_PUBLISHER));
    let v2_bytes = component_bytes(kasm_tests::components::FIXTURE_PUBLISHER_V2);
    let v2 = kasm_host::runtime::sha256_hex(&v2_bytes);
    let host = start(&s, Some(TOKEN)).await;
    let addr = host.admin_addr.to_string();
    assert_eq!(active_sha(&addr), v1);
    let (code, body) = http_request(&addr, "POST", "/v1/handlers/pub/rollback", Some(TOKEN), b"");
    assert_eq!(code, 409, "nothing to roll back to yet: {body}");
    let (code, _) = http_request(
        &addr,
        "PUT",
        "/v1/handlers/pub/component",
        Some(TOKEN),
        &v2_bytes,
    );
    assert_eq!(code, 200);
    assert_eq!(active_sha(&addr), v2);
    let (code, body) = http_request(&addr, "POST", "/v1/handlers/pub/rollback", Some(TOKEN), b"");
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        active_sha(&addr),
        v1,
        "rollback restores the previous version"
    );
    let (code, _) = http_request(
        &addr,
        "PUT",
        "/v1/handlers/pub/component",
        Some(TOKEN),
        &v2_bytes,
    );
    assert_eq!(code, 200);
    host.shutdown().await.unwrap();

    let again = start(&s, Some(TOKEN)).await;
    let addr = again.admin_addr.to_string();
    assert_eq!(
        active_sha(&addr),
        v2,
        "the deployed version survives a restart"
    );
    let (code, body) = http_request(&addr, "POST", "/v1/handlers/pub/rollback", Some(TOKEN), b"");
    assert_eq!(code, 200, "and can still be rolled back after it: {body}");
    assert_eq!(active_sha(&addr), v1);
    again.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_v1_route_needs_the_token_and_health_does_not() {
    let s = Setup::new(TestBroker::from_env(), 4).await;
    let host = start(&s, Some(TOKEN)).await;
    let addr = host.admin_addr.to_string();
    let routes = [
        ("GET", "/v1/handlers"),
        ("GET", "/v1/handlers/pub"),
        ("PUT", "/v1/handlers/pub/component"),
        ("POST", "/v1/handlers/pub/rollback"),
        ("POST", "/v1/handlers/pub/pause"),
        ("POST", "/v1/handlers/pub/resume"),
        ("GET", "/v1/handlers/pub/dlq"),
        ("POST", "/v1/handlers/pub/dlq/replay"),
        ("POST", "/v1/topics/some-topic/events"),
        ("GET", "/openapi.json"),
    ];
    for (method, path) in routes {
        for token in [None, Some("wrong-token")] {
            let (code, body) = http_request(&addr, method, path, token, b"x");
            assert_eq!(code, 401, "{method} {path} with {token:?}: {body}");
        }
    }
    // The console's own routes are open and hold no data: its script reads and acts through
    // /v1 with the token the operator types (the browser tests in tests/ui drive it).
    for path in ["/", "/console.js", "/console.css"] {
        let (code, body) = http_get(&addr, path);
        assert_eq!(code, 200, "{path}: {body}");
        assert!(
            !body.contains(&s.group) && !body.contains(&s.topic),
            "{path} shows nothing of the handlers"
        );
    }
    assert_eq!(http_get(&addr, "/healthz").0, 200);
    assert!(matches!(http_get(&addr, "/readyz").0, 200 | 503));
    assert!(
        !host.handlers[0]
            .paused
            .load(std::sync::atomic::Ordering::SeqCst),
        "no request got through to pause it"
    );
    host.shutdown().await.unwrap();

    // Without a configured token, reads work and mutations are refused, saying why.
    let open = start(&s, None).await;
    let addr = open.admin_addr.to_string();
    assert_eq!(http_request(&addr, "GET", "/v1/handlers", None, b"").0, 200);
    let (code, body) = http_request(&addr, "POST", "/v1/handlers/pub/pause", None, b"");
    assert_eq!(code, 403);
    assert!(body.contains("KASM_ADMIN_TOKEN"), "{body}");
    open.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_holds_offsets_while_events_arrive_and_resume_catches_up() {
    let s = Setup::new(TestBroker::from_env(), 4).await;
    produce(
        &s.broker.producer(),
        &s.topic,
        &events("ev", 0..500, &s.out),
    )
    .await;
    let host = start(&s, Some(TOKEN)).await;
    let addr = host.admin_addr.to_string();
    let stats = || host.handlers[0].stats.snapshot().processed;
    let deadline = Instant::now() + Duration::from_secs(60);
    while stats() < 500 {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (code, body) = http_request(&addr, "POST", "/v1/handlers/pub/pause", Some(TOKEN), b"");
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("\"status\":\"paused\""), "{body}");
    tokio::time::sleep(Duration::from_millis(800)).await; // the last commit settles
    let committed_before = committed_offsets(&s.broker.bootstrap(), &s.group, &s.topic);
    produce(
        &s.broker.producer(),
        &s.topic,
        &events("ev", 500..1000, &s.out),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(stats(), 500, "nothing handled while paused");
    assert_eq!(
        committed_offsets(&s.broker.bootstrap(), &s.group, &s.topic),
        committed_before,
        "offsets stay put"
    );

    let (code, _) = http_request(&addr, "POST", "/v1/handlers/pub/resume", Some(TOKEN), b"");
    assert_eq!(code, 200);
    let deadline = Instant::now() + Duration::from_secs(60);
    while stats() < 1000 {
        assert!(
            Instant::now() < deadline,
            "resume did not catch up: {}",
            stats()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let end = end_offsets(&s.broker.bootstrap(), &s.topic, 1000);
    let deadline = Instant::now() + Duration::from_secs(20);
    while committed_offsets(&s.broker.bootstrap(), &s.group, &s.topic) != end {
        assert!(Instant::now() < deadline, "offsets did not catch up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The recent activity (the console's chart) adds up to what was handled: the sampler's
    // first reading, before any record, starts the ring.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (code, body) = http_request(&addr, "GET", "/v1/handlers/pub", Some(TOKEN), b"");
        assert_eq!(code, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        let samples = v["activity"]["samples"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let handled: u64 = samples.iter().filter_map(|x| x["processed"].as_u64()).sum();
        assert!(
            handled <= 1000,
            "more in the samples than was handled: {body}"
        );
        assert_eq!(v["activity"]["interval_ms"], 5000);
        assert_eq!(v["max_replays"], 3, "{body}");
        if handled == 1000 {
            break;
        }
        assert!(Instant::now() < deadline, "activity never added up: {body}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    host.shutdown().await.unwrap();
}

/// Parse OpenMetrics/Prometheus text: every sample line is `name{labels} value`, every
/// metric has a `# TYPE`; returns samples as (name, labels, value).
fn parse_metrics(text: &str) -> Vec<(String, HashMap<String, String>, f64)> {
    let mut samples = Vec::new();
    let mut typed = std::collections::HashSet::new();
    for line in text.lines() {
        if line == "# EOF" || line.starts_with("# HELP ") || line.starts_with("# UNIT ") {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            typed.insert(rest.split_whitespace().next().unwrap().to_owned());
            continue;
        }
        assert!(!line.starts_with('#'), "unexpected comment: {line}");
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("no value: {line}"));
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value: {line}"));
        let (name, labels) = match series.split_once('{') {
            Some((n, l)) => (
                n,
                l.strip_suffix('}')
                    .unwrap_or_else(|| panic!("bad labels: {line}")),
            ),
            None => (series, ""),
        };
        let mut map = HashMap::new();
        for pair in labels.split("\",").filter(|p| !p.is_empty()) {
            let (k, v) = pair
                .split_once("=\"")
                .unwrap_or_else(|| panic!("bad label {pair}: {line}"));
            map.insert(k.to_owned(), v.trim_end_matches('"').to_owned());
        }
        let family = typed.iter().find(|t| name.starts_with(t.as_str()));
        assert!(family.is_some(), "sample without a # TYPE: {line}");
        samples.push((name.to_owned(), map, value));
    }
    samples
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_and_count_what_was_produced() {
    let s = Setup::new(TestBroker::from_env(), 4).await;
    let mut recs = events("ev", 0..100, &s.out);
    recs.extend(events("ev", 0..5, &s.out)); // five duplicates
    produce(&s.broker.producer(), &s.topic, &recs).await;
    let host = start(&s, Some(TOKEN)).await;
    let addr = host.admin_addr.to_string();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let st = host.handlers[0].stats.snapshot();
        if st.processed + st.skipped >= 105 {
            break;
        }
        assert!(Instant::now() < deadline, "{st:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (code, text) = http_get(&addr, "/metrics");
    assert_eq!(code, 200, "metrics are open, no token needed");
    let samples = parse_metrics(&text);
    let value = |name: &str, want: &[(&str, &str)]| -> f64 {
        samples
            .iter()
            .filter(|(n, l, _)| {
                n == name
                    && want
                        .iter()
                        .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|(_, _, v)| v)
            .sum()
    };
    let t = s.topic.as_str();
    assert_eq!(
        value(
            "kasm_records_total",
            &[("handler", "pub"), ("topic", t), ("outcome", "ok")]
        ),
        100.0,
        "{text}"
    );
    assert_eq!(
        value(
            "kasm_records_total",
            &[("handler", "pub"), ("topic", t), ("outcome", "skipped")]
        ),
        5.0,
        "{text}"
    );
    assert_eq!(
        value("kasm_handler_call_seconds_count", &[("handler", "pub")]),
        100.0,
        "{text}"
    );
    let sha =
        kasm_host::runtime::sha256_hex(&component_bytes(kasm_tests::components::FIXTURE_PUBLISHER));
    assert_eq!(
        value(
            "kasm_component_info",
            &[("handler", "pub"), ("version", &sha)]
        ),
        1.0,
        "{text}"
    );
    for (_, labels, _) in &samples {
        for k in labels.keys() {
            assert!(
                [
                    "handler",
                    "topic",
                    "partition",
                    "outcome",
                    "kind",
                    "version",
                    "result",
                    "le"
                ]
                .contains(&k.as_str()),
                "unbounded label {k}"
            );
        }
    }
    host.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_lists_exactly_the_served_routes_and_their_refusals() {
    let s = Setup::new(TestBroker::from_env(), 4).await;
    let host = start(&s, Some(TOKEN)).await;
    let addr = host.admin_addr.to_string();
    assert_eq!(
        http_get(&addr, "/openapi.json").0,
        401,
        "the description needs the token too"
    );
    let (code, body) = http_request(&addr, "GET", "/openapi.json", Some(TOKEN), b"");
    assert_eq!(code, 200);
    let doc: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    let mut documented: Vec<(String, String)> = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in ["get", "put", "post", "delete", "patch"] {
            if item.get(method).is_some() {
                documented.push((method.to_uppercase(), path.clone()));
            }
        }
    }
    let mut served: Vec<(String, String)> = host
        .admin_routes
        .iter()
        .map(|(m, p)| ((*m).to_owned(), p.clone()))
        .collect();
    documented.sort();
    served.sort();
    assert_eq!(documented, served, "the document and the router agree");
    // And each documented route is really there (not 404/405) for an authorized caller.
    for (method, path) in &served {
        let concrete = path.replace("{name}", "pub").replace("{topic}", &s.topic);
        let (code, text) = http_request(&addr, method, &concrete, Some(TOKEN), b"");
        assert!(
            code != 404 && code != 405 && code != 0,
            "{method} {concrete}: {code} {text}"
        );
    }
    // A request the server cannot read is refused like any other: a JSON `error` naming the
    // problem, with a status the document lists for that operation.
    let events = format!("/v1/topics/{}/events", s.topic);
    let cases = [
        (
            "POST",
            events.as_str(),
            "/v1/topics/{topic}/events",
            "x",
            415,
            "Content-Type",
        ),
        (
            "POST",
            events.as_str(),
            "/v1/topics/{topic}/events",
            "{nope",
            400,
            "JSON",
        ),
        (
            "POST",
            events.as_str(),
            "/v1/topics/{topic}/events",
            r#"{"event": 1, "nope": 2}"#,
            422,
            "unknown field `nope`",
        ),
        (
            "POST",
            "/v1/handlers/pub/dlq/replay",
            "/v1/handlers/{name}/dlq/replay",
            "{}",
            400,
            "`records`",
        ),
        (
            "POST",
            "/v1/handlers/pub/dlq/replay",
            "/v1/handlers/{name}/dlq/replay",
            r#"{"all": true, "topic": "elsewhere"}"#,
            404,
            "not a source topic",
        ),
        (
            "GET",
            "/v1/handlers/pub/dlq?limit=0",
            "/v1/handlers/{name}/dlq",
            "",
            400,
            "limit must be 1 to 1000",
        ),
        (
            "GET",
            "/v1/handlers/pub/dlq?limit=ten",
            "/v1/handlers/{name}/dlq",
            "",
            400,
            "limit",
        ),
        (
            "GET",
            "/v1/handlers/pub/dlq?topic=elsewhere",
            "/v1/handlers/{name}/dlq",
            "",
            404,
            "not a source topic",
        ),
    ];
    for (method, path, documented, body, status, needle) in cases {
        let (code, text) = http_request(&addr, method, path, Some(TOKEN), body.as_bytes());
        assert_eq!(code, status, "{method} {path}: {text}");
        let answer: serde_json::Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{method} {path}: the refusal is not JSON ({e}): {text}"));
        let reason = answer["error"].as_str().unwrap_or_default();
        assert!(
            reason.contains(needle),
            "{method} {path}: {reason:?} names {needle:?}"
        );
        let responses = &doc["paths"][documented][method.to_lowercase()]["responses"];
        assert!(
            responses.get(status.to_string()).is_some(),
            "the document lists {status} for {method} {documented}: {responses}"
        );
    }
    host.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_listed_and_replayed_after_a_fix_within_the_replay_limit() {
    let s = Setup::new(TestBroker::from_env(), 4).await;
    let body = format!(
        "[kafka]\n{k}\n[handlers.fx]\ncomponent = \"{c}\"\ntopics = [\"{t}\"]\ngroup_id = \"{g}\"\n\
         payload = \"json\"\nmax_replays = 1\ngrants = {{ producer = [\"{o}\"], kv = true }}\n",
        k = KAFKA_TEST_PROPS,
        c = component(kasm_tests::components::FIXTURE).display(),
        t = s.topic,
        g = s.group,
        o = s.out,
    );
    let config = Config::load(&write_config(s.dir.path(), &body)).unwrap();
    let env = s.env();
    let poison = Rec {
        key: Some(b"k-poison".to_vec()),
        payload: br#"{"action":"fatal","message":"not handled yet"}"#.to_vec(),
        headers: vec![
            ("event-id".into(), b"poison-1".to_vec()),
            ("out-topic".into(), s.out.as_bytes().to_vec()),
        ],
        partition: Some(0),
    };
    produce(&s.broker.producer(), &s.topic, &[poison]).await;
    let host = kasm_host::app::start_with(&config, &env, Some(Secret::new(TOKEN)))
        .await
        .unwrap();
    let addr = host.admin_addr.to_string();
    let dead = || host.handlers[0].stats.snapshot().dead_lettered;
    let wait_dead = |n: u64| {
        let deadline = Instant::now() + Duration::from_secs(60);
        async move {
            while dead() < n {
                assert!(Instant::now() < deadline, "dead letters: {} of {n}", dead());
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    wait_dead(1).await;

    let list = |addr: &str| -> serde_json::Value {
        let (code, body) = http_request(
            addr,
            "GET",
            "/v1/handlers/fx/dlq?limit=10",
            Some(TOKEN),
            b"",
        );
        assert_eq!(code, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    };
    let page = list(&addr);
    let first = &page["records"][0];
    assert_eq!(first["provenance"]["error_kind"], "fatal", "{page:#}");
    assert_eq!(first["provenance"]["event_id"], "poison-1");
    assert_eq!(first["provenance"]["source_topic"], s.topic.as_str());
    assert_eq!(first["provenance"]["source_offset"], 0);
    assert_eq!(first["replay_count"], 0);
    let pos = |r: &serde_json::Value| {
        format!(
            r#"{{"records":[{{"partition":{},"offset":{}}}]}}"#,
            r["partition"], r["offset"]
        )
    };

    // Replayed before the fix: it fails again and comes back with replay count 1.
    let (code, body) = http_request(
        &addr,
        "POST",
        "/v1/handlers/fx/dlq/replay",
        Some(TOKEN),
        pos(first).as_bytes(),
    );
    assert_eq!(code, 200, "{body}");
    wait_dead(2).await;
    let page = list(&addr);
    let again = page["records"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["replay_count"] == 1)
        .cloned();
    let again =
        again.unwrap_or_else(|| panic!("the replayed failure is dead-lettered again: {page:#}"));
    // Past the limit (max_replays = 1): refused with the reason.
    let (code, body) = http_request(
        &addr,
        "POST",
        "/v1/handlers/fx/dlq/replay",
        Some(TOKEN),
        pos(&again).as_bytes(),
    );
    assert_eq!(code, 200, "{body}");
    let report: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(report["replayed"].as_array().unwrap().len(), 0, "{body}");
    assert_eq!(report["refused"].as_array().unwrap().len(), 1, "{body}");

    // Fix the handler (a version that accepts the record), replay the original: handled.
    let (code, body) = http_request(
        &addr,
        "PUT",
        "/v1/handlers/fx/component",
        Some(TOKEN),
        &component_bytes(kasm_tests::components::FIXTURE_PUBLISHER),
    );
    assert_eq!(code, 200, "{body}");
    let (code, body) = http_request(
        &addr,
        "POST",
        "/v1/handlers/fx/dlq/replay",
        Some(TOKEN),
        pos(first).as_bytes(),
    );
    assert_eq!(code, 200, "{body}");
    let out = read_topic(&s.broker.bootstrap(), &s.out, 1, Duration::from_secs(60));
    assert_eq!(
        out.len(),
        1,
        "the replayed record was handled by the fixed version"
    );
    assert_eq!(out[0].json()["source"], "poison-1");
    host.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_posted_to_a_topic_is_acknowledged_and_handled() {
    let s = Setup::new(TestBroker::from_env(), 4).await;
    let host = start(&s, Some(TOKEN)).await;
    let addr = host.admin_addr.to_string();
    let body = format!(
        r#"{{"event": {{"title": "Buy milk"}}, "key": "user-1", "headers": {{"out-topic": "{}"}}}}"#,
        s.out
    );
    let path = format!("/v1/topics/{}/events", s.topic);
    let (code, answer) = http_request(&addr, "POST", &path, Some(TOKEN), body.as_bytes());
    assert_eq!(code, 200, "{answer}");
    let v: serde_json::Value = serde_json::from_str(&answer).unwrap();
    let id = v["event_id"].as_str().unwrap().to_owned();
    assert_eq!(id.len(), 36, "a generated event id: {answer}");
    assert!(v["offset"].as_i64().is_some_and(|o| o >= 0), "{answer}");
    let out = read_topic(&s.broker.bootstrap(), &s.out, 1, Duration::from_secs(60));
    assert_eq!(out.len(), 1);
    assert_eq!(
        out[0].json()["source"],
        id.as_str(),
        "handled under the generated id"
    );
    let (code, answer) = http_request(
        &addr,
        "POST",
        "/v1/topics/bad%20topic/events",
        Some(TOKEN),
        body.as_bytes(),
    );
    assert_eq!(code, 400, "{answer}");
    assert!(answer.contains("not a valid topic name"), "{answer}");
    host.shutdown().await.unwrap();
}
