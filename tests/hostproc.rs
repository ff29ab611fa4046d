//! The `kasm` host as a separate process, as operators run it, and a tiny HTTP client for
//! its admin endpoints.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// A running `kasm run`.
#[derive(Debug)]
pub struct HostProcess {
    child: Child,
    /// `127.0.0.1:port` of the admin server.
    pub admin: String,
    lines: mpsc::Receiver<String>,
    /// Everything printed so far (stdout and stderr).
    pub output: Vec<String>,
}

impl HostProcess {
    /// Start `kasm run --config <config>` against `bootstrap`; wait for the admin address.
    /// Logs at `warn` (or `KASM_TEST_LOG`).
    pub fn start(config: &Path, bootstrap: &str) -> Self {
        let log = std::env::var("KASM_TEST_LOG").unwrap_or_else(|_| "warn".into());
        Self::start_logged(config, bootstrap, &log)
    }

    /// [`HostProcess::start`] with the tracing filter `log` (`RUST_LOG`), so that a failing
    /// test can show what the host did.
    pub fn start_logged(config: &Path, bootstrap: &str, log: &str) -> Self {
        Self::start_with_env(config, bootstrap, log, &[])
    }

    /// [`HostProcess::start_logged`] with extra environment variables (database URLs).
    pub fn start_with_env(config: &Path, bootstrap: &str, log: &str, env: &[(&str, &str)]) -> Self {
        let mut command = Command::new(crate::kasm_bin());
        command
            .args(["run", "--config"])
            .arg(config)
            .env("KAFKA_BOOTSTRAP_SERVERS", bootstrap)
            .env("RUST_LOG", log)
            // One artifact cache for every host of the run: a component compiles once.
            .env("KASM_CACHE_DIR", crate::shared_cache_dir())
            .envs(env.iter().copied());
        Self::spawn(command, "admin listening on http://")
    }

    /// How many records handler `handler` has handled `ok`, by the host's own count (the admin
    /// API answers at once; reading an output topic takes longer); 0 when it does not answer.
    pub fn processed(&self, handler: &str) -> u64 {
        let (_, body) = http_get(&self.admin, &format!("/v1/handlers/{handler}"));
        serde_json::from_str::<serde_json::Value>(&body).unwrap_or_default()["counters"]
            ["processed"]
            .as_u64()
            .unwrap_or(0)
    }

    /// Start `command` (a `kasm` subcommand), its stdout and stderr collected; wait for the
    /// line containing `admin_needle` (which ends in `http://`) and take the admin address
    /// that follows it.
    pub fn spawn(mut command: Command, admin_needle: &str) -> Self {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn kasm");
        let (tx, lines) = mpsc::channel();
        for stream in [
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
        }
        let mut host = HostProcess {
            child,
            admin: String::new(),
            lines,
            output: Vec::new(),
        };
        // A host compiles its components before it serves (a Python one takes 7 s or more on
        // a clean, busy 2-core machine, and some tests start four).
        let line = host.wait_line(admin_needle, Duration::from_secs(180));
        host.admin = line
            .rsplit("http://")
            .next()
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or_default()
            .to_owned();
        host
    }

    fn pump(&mut self, wait: Duration) -> bool {
        match self.lines.recv_timeout(wait) {
            Ok(l) => {
                if std::env::var("KASM_TEST_ECHO").is_ok() {
                    eprintln!("[kasm {}] {l}", self.child.id());
                }
                self.output.push(l);
                true
            }
            Err(_) => false,
        }
    }

    /// Wait for an output line containing `needle`; panics with the output on timeout.
    pub fn wait_line(&mut self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        let mut seen = 0;
        loop {
            if let Some(l) = self.output[seen..].iter().find(|l| l.contains(needle)) {
                return l.clone();
            }
            seen = self.output.len();
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!(
                    "kasm did not print `{needle}` within {timeout:?}; output:\n{}",
                    self.output.join("\n")
                );
            }
            if !self.pump(Duration::from_millis(100))
                && let Ok(Some(status)) = self.child.try_wait()
            {
                while self.pump(Duration::from_millis(50)) {}
                panic!(
                    "kasm exited ({status}) before printing `{needle}`; output:\n{}",
                    self.output.join("\n")
                );
            }
        }
    }

    /// Everything the host printed so far, one line each, reading what is pending without
    /// waiting (for a failure message).
    pub fn printed(&mut self) -> String {
        while self.pump(Duration::from_millis(0)) {}
        self.output.join("\n")
    }

    /// The first output line so far containing `needle`, reading what the host printed
    /// without waiting.
    pub fn find_line(&mut self, needle: &str) -> Option<String> {
        while self.pump(Duration::from_millis(0)) {}
        self.output.iter().find(|l| l.contains(needle)).cloned()
    }

    /// Wait until `GET path` answers `status` (bounded).
    pub fn wait_status(&mut self, path: &str, status: u16, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            while self.pump(Duration::from_millis(0)) {}
            let (s, body) = http_get(&self.admin, path);
            if s == status {
                return body;
            }
            if Instant::now() > deadline {
                panic!(
                    "{path} stayed {s} (wanted {status}): {body}\noutput:\n{}",
                    self.output.join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The exit status if the process has exited, without waiting (collects its output).
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        while self.pump(Duration::from_millis(0)) {}
        self.child.try_wait().ok().flatten()
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL, no goodbye.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Send a signal (`TERM`, `INT`) with the `kill` command.
    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status();
        assert!(ok.is_ok_and(|s| s.success()), "kill -{sig} failed");
    }

    /// Wait for the process to exit (bounded), collecting its output.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            while self.pump(Duration::from_millis(10)) {}
            if let Ok(Some(s)) = self.child.try_wait() {
                while self.pump(Duration::from_millis(50)) {}
                return s;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!(
                    "kasm did not exit within {timeout:?}; output:\n{}",
                    self.output.join("\n")
                );
            }
        }
    }
}

impl Drop for HostProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `GET http://{addr}{path}` → (status, body), without a token.
pub fn http_get(addr: &str, path: &str) -> (u16, String) {
    http_request(addr, "GET", path, None, b"")
}

/// An HTTP request to the admin server → (status, body). `token` goes in a bearer header.
pub fn http_request(
    addr: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &[u8],
) -> (u16, String) {
    let Ok(mut s) = std::net::TcpStream::connect(addr) else {
        return (0, "connection refused".into());
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(60)));
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let content_type = if body.first() == Some(&b'{') {
        "application/json"
    } else {
        "application/octet-stream"
    };
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Length: {}\r\nContent-Type: {content_type}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    if s.write_all(head.as_bytes())
        .and_then(|()| s.write_all(body))
        .is_err()
    {
        return (0, "write failed".into());
    }
    let mut resp = Vec::new();
    let _ = s.read_to_end(&mut resp);
    let resp = String::from_utf8_lossy(&resp).into_owned();
    let status = resp
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = resp.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned();
    (status, body)
}
