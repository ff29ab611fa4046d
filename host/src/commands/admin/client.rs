//! The admin API over HTTP: one blocking `ureq` agent, the bearer token, and an answer read
//! as text (bounded) or refused with what the server said.

use std::fmt::Write as _;
use std::time::Duration;

use anyhow::{Context as _, bail};
use serde_json::Value;

use crate::config::Secret;

use super::AdminArgs;
use super::render::short;

/// Message for a 401: the only fix is on the caller's side.
const TOKEN_MESSAGE: &str = "the admin token is missing or wrong (set KASM_ADMIN_TOKEN or --token)";

/// Largest answer read (a DLQ page or a long handler list stays far below).
const MAX_ANSWER_BYTES: u64 = 64 << 20;

/// A connection to one admin API.
pub(super) struct Client {
    base: String,
    token: Option<Secret>,
    pub(super) json: bool,
    agent: ureq::Agent,
}

/// The admin API's methods.
#[derive(Clone, Copy)]
pub(super) enum Verb {
    Get,
    Put,
    Post,
}

impl Verb {
    pub(super) fn as_str(self) -> &'static str {
        match self {
            Verb::Get => "GET",
            Verb::Put => "PUT",
            Verb::Post => "POST",
        }
    }
}

/// What a request sends.
pub(super) enum Body<'a> {
    Empty,
    Wasm(&'a [u8]),
    Json(Value),
}

impl Client {
    pub(super) fn new(args: &AdminArgs) -> anyhow::Result<Self> {
        let agent = ureq::Agent::config_builder()
            // 4xx/5xx are answers to render, not transport errors.
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(5)))
            // A deploy compiles the component before answering (seconds in a debug host).
            .timeout_global(Some(Duration::from_secs(300)))
            .user_agent(concat!("kasm/", env!("CARGO_PKG_VERSION")))
            .build()
            .new_agent();
        Ok(Self {
            base: base_url(&args.url)?,
            token: args.token.clone(),
            json: args.json,
            agent,
        })
    }

    /// Send a request; a 2xx answer's body, else an error that says what the server said.
    /// With `--json`, an error answer's JSON body is printed first, for scripts.
    pub(super) fn send(
        &self,
        verb: Verb,
        path: &str,
        query: &[(&str, String)],
        body: Body<'_>,
    ) -> anyhow::Result<String> {
        let method = verb.as_str();
        let url = format!("{}{path}", self.base);
        let auth = self
            .token
            .as_ref()
            .map(|t| format!("Bearer {}", t.expose()));
        let pairs = query.iter().map(|(k, v)| (*k, v.as_str()));
        let with_body = |req: ureq::RequestBuilder<ureq::typestate::WithBody>| {
            let mut req = req.query_pairs(pairs.clone());
            if let Some(a) = &auth {
                req = req.header("Authorization", a);
            }
            match body {
                Body::Empty => Ok(req.send_empty()),
                Body::Wasm(bytes) => Ok(req.content_type("application/wasm").send(bytes)),
                Body::Json(v) => serde_json::to_vec(&v)
                    .context("encoding the request body")
                    .map(|b| req.content_type("application/json").send(b)),
            }
        };
        let sent = match verb {
            Verb::Get => {
                let mut req = self.agent.get(&url).query_pairs(pairs.clone());
                if let Some(a) = &auth {
                    req = req.header("Authorization", a);
                }
                req.call()
            }
            Verb::Put => with_body(self.agent.put(&url))?,
            Verb::Post => with_body(self.agent.post(&url))?,
        };
        let mut response = sent.map_err(|e| self.transport_error(method, &url, e))?;
        let status = response.status();
        let text = response
            .body_mut()
            .with_config()
            .limit(MAX_ANSWER_BYTES)
            .lossy_utf8(true)
            .read_to_string()
            .with_context(|| format!("{method} {url}: reading the answer ({status})"))?;
        if status.is_success() {
            return Ok(text);
        }
        if status == ureq::http::StatusCode::UNAUTHORIZED {
            bail!("{TOKEN_MESSAGE}");
        }
        let parsed: Option<Value> = serde_json::from_str(&text).ok();
        if self.json
            && let Some(v) = &parsed
        {
            println!("{v}");
        }
        match parsed
            .as_ref()
            .and_then(|v| v.get("error"))
            .and_then(Value::as_str)
        {
            Some(message) => bail!("{message} ({status})"),
            None => bail!(
                "{method} {url} answered {status}{}",
                if text.trim().is_empty() {
                    String::new()
                } else {
                    format!(": {}", short(&text, 200))
                }
            ),
        }
    }

    pub(super) fn transport_error(&self, method: &str, url: &str, e: ureq::Error) -> anyhow::Error {
        let base = &self.base;
        let hint = "is the host running, and is that its [admin] listen address? set KASM_ADMIN_URL or --admin";
        match e {
            ureq::Error::Io(io) if io.kind() == std::io::ErrorKind::ConnectionRefused => {
                anyhow::anyhow!(
                    "cannot reach the kasm admin API at {base}: connection refused ({hint})"
                )
            }
            ureq::Error::ConnectionFailed => {
                anyhow::anyhow!(
                    "cannot reach the kasm admin API at {base}: connection failed ({hint})"
                )
            }
            ureq::Error::HostNotFound => {
                anyhow::anyhow!(
                    "cannot reach the kasm admin API at {base}: host not found ({hint})"
                )
            }
            ureq::Error::Timeout(t) => {
                anyhow::anyhow!(
                    "the kasm admin API at {base} did not answer {method} {url} in time ({t})"
                )
            }
            other => anyhow::Error::new(other).context(format!("{method} {url}")),
        }
    }

    /// Print a 2xx answer as is (`--json`). Returns whether it did.
    pub(super) fn print_raw(&self, text: &str) -> bool {
        if self.json {
            println!("{}", text.trim_end());
        }
        self.json
    }
}

/// The base URL from `--admin`: `http://` added when no scheme is given, `https://` refused,
/// no trailing slash.
pub(super) fn base_url(raw: &str) -> anyhow::Result<String> {
    let raw = raw.trim();
    let rest = match raw.split_once("://") {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("http") => rest,
        Some((scheme, _)) if scheme.eq_ignore_ascii_case("https") => bail!(
            "--admin {raw}: https is not supported: the admin API is plain HTTP (loopback by default) \
             and this client has no TLS; use an http:// URL, e.g. through an SSH tunnel"
        ),
        Some((scheme, _)) => {
            bail!("--admin {raw}: unsupported scheme `{scheme}` (expected http://HOST:PORT)")
        }
        None => raw,
    };
    let rest = rest.trim_end_matches('/');
    if rest.is_empty() || rest.starts_with('/') {
        bail!("--admin `{raw}`: no host (expected http://HOST:PORT)");
    }
    Ok(format!("http://{rest}"))
}

/// A handler name as one URL path segment.
pub(super) fn segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

pub(super) fn handler_path(name: &str, rest: &str) -> String {
    format!("/v1/handlers/{}{rest}", segment(name))
}

pub(super) fn parse<T: serde::de::DeserializeOwned>(text: &str, what: &str) -> anyhow::Result<T> {
    serde_json::from_str(text).with_context(|| {
        format!(
            "the admin API's answer to {what} is not what this kasm expects: {}",
            short(text, 200)
        )
    })
}
