//! A small HTTP/1.1 receiver on loopback for webhook tests: it records every request and
//! answers with the statuses it was given, in order (the last one repeats).

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

/// One request as received.
#[derive(Debug, Clone)]
pub struct Received {
    /// Method.
    pub method: String,
    /// Path with query.
    pub path: String,
    /// Headers, names lowercase.
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: Vec<u8>,
    /// The status it was answered with.
    pub status: u16,
}

impl Received {
    /// The first header named `name` (lowercase).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// The receiver; stops with the test process.
#[derive(Debug, Clone)]
pub struct Receiver {
    /// `127.0.0.1:port`.
    pub addr: String,
    /// Everything received so far.
    pub received: Arc<Mutex<Vec<Received>>>,
    /// Connections accepted (a denied request must make none).
    pub connections: Arc<Mutex<usize>>,
}

impl Receiver {
    /// Start answering with `statuses` (then the last one forever).
    pub fn start(statuses: &[u16]) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind receiver");
        let addr = listener.local_addr().expect("addr").to_string();
        let received: Arc<Mutex<Vec<Received>>> = Arc::default();
        let connections: Arc<Mutex<usize>> = Arc::default();
        let statuses = statuses.to_vec();
        let (rec, conns) = (received.clone(), connections.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                *conns.lock().unwrap() += 1;
                let (rec, statuses) = (rec.clone(), statuses.clone());
                std::thread::spawn(move || serve(stream, &rec, &statuses));
            }
        });
        Receiver {
            addr,
            received,
            connections,
        }
    }

    /// The webhook URL.
    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    /// A copy of what was received.
    pub fn requests(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }
}

fn serve(stream: std::net::TcpStream, rec: &Mutex<Vec<Received>>, statuses: &[u16]) {
    let mut reader = BufReader::new(stream.try_clone().expect("clone"));
    let mut writer = stream;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut parts = line.split_whitespace();
        let (method, path) = (
            parts.next().unwrap_or_default().to_owned(),
            parts.next().unwrap_or_default().to_owned(),
        );
        let mut headers = Vec::new();
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                headers.push((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
            }
        }
        let len: usize = headers
            .iter()
            .find(|(k, _)| k == "content-length")
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0);
        let mut body = vec![0; len];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let status = {
            let mut r = rec.lock().unwrap();
            let status = statuses
                .get(r.len())
                .or(statuses.last())
                .copied()
                .unwrap_or(200);
            r.push(Received {
                method,
                path,
                headers,
                body,
                status,
            });
            status
        };
        let reply = format!(
            "HTTP/1.1 {status} X\r\ncontent-length: 2\r\ncontent-type: text/plain\r\n\r\nok"
        );
        if writer.write_all(reply.as_bytes()).is_err() {
            return;
        }
    }
}
