//! Oversized uploads to the admin API are refused without the host buffering them (found by
//! `make attack`: a 100 MiB `PUT .../component` with a Content-Length was read up to the 32 MiB
//! limit before the 413, and every concurrent upload held a buffer of its own).

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use kasm_host::config::{Config, Secret};
use kasm_tests::broker::TestBroker;
use kasm_tests::{KAFKA_TEST_PROPS, Setup, component, write_config};

const TOKEN: &str = "test-token-uploads";

async fn start(s: &Setup) -> kasm_host::app::Host {
    let body = format!(
        "max_component_mib = 32\n[kafka]\n{KAFKA_TEST_PROPS}\n[handlers.pub]\ncomponent = \"{c}\"\ntopics = [\"{t}\"]\n\
         group_id = \"{g}\"\ngrants = {{ producer = [\"{o}\"] }}\n",
        c = component(kasm_tests::components::FIXTURE_PUBLISHER).display(),
        t = s.topic,
        g = s.group,
        o = s.out,
    );
    let config = Config::load(&write_config(s.dir.path(), &body)).unwrap();
    kasm_host::app::start_with(&config, &s.env(), Some(Secret::new(TOKEN)))
        .await
        .unwrap()
}

/// Send `head` (and `body`), then read the status line within `wait`.
fn status_of(addr: &str, head: &str, body: &[u8], wait: Duration) -> Option<u16> {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(wait)).unwrap();
    s.write_all(head.as_bytes()).unwrap();
    let _ = s.write_all(body); // the server may answer and close before the end
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf).ok()?;
    let line = String::from_utf8_lossy(&buf[..n]);
    line.split_whitespace().nth(1)?.parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_component_is_refused_before_its_body_is_read() {
    let s = Setup::new(TestBroker::from_env(), 1).await;
    let host = start(&s).await;
    let addr = host.admin_addr.to_string();
    let path = "/v1/handlers/pub/component";

    // A declared 100 MiB: 413 at once, with not one byte of the body sent.
    let head = format!(
        "PUT {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {TOKEN}\r\n\
         Content-Length: {}\r\nContent-Type: application/wasm\r\n\r\n",
        100 << 20
    );
    let started = Instant::now();
    let status = tokio::task::spawn_blocking({
        let addr = addr.clone();
        move || status_of(&addr, &head, b"", Duration::from_secs(20))
    })
    .await
    .unwrap();
    assert_eq!(status, Some(413), "refused on the Content-Length alone");
    assert!(started.elapsed() < Duration::from_secs(10));

    // No Content-Length (chunked): read only up to the limit, then 413.
    let head = format!(
        "PUT {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {TOKEN}\r\n\
         Transfer-Encoding: chunked\r\nContent-Type: application/wasm\r\n\r\n"
    );
    let mut chunked = Vec::new();
    let piece = vec![0u8; 1 << 20];
    for _ in 0..40 {
        chunked.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
        chunked.extend_from_slice(&piece);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let status = tokio::task::spawn_blocking({
        let addr = addr.clone();
        move || status_of(&addr, &head, &chunked, Duration::from_secs(60))
    })
    .await
    .unwrap();
    assert_eq!(
        status,
        Some(413),
        "40 MiB without a length is over the 32 MiB limit"
    );

    // Without the token, nothing is read either.
    let head = format!(
        "PUT {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\n\r\n",
        100 << 20
    );
    let status = tokio::task::spawn_blocking({
        let addr = addr.clone();
        move || status_of(&addr, &head, b"", Duration::from_secs(20))
    })
    .await
    .unwrap();
    assert_eq!(status, Some(401));
    host.shutdown().await.unwrap();
}
