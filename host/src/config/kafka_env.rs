//! The Kafka connection, from the environment only.
//!
//! Credentials never live in `kasm.toml`, never appear in `Debug` output or logs: a
//! [`Secret`] prints as `***`.

use std::fmt;

/// A value that must not be printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wrap a secret value.
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }

    /// The value, for handing to the client library only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// Connection settings read from `KAFKA_*` environment variables.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KafkaEnv {
    /// `KAFKA_BOOTSTRAP_SERVERS`, e.g. `broker-1:9092,broker-2:9092`.
    pub bootstrap_servers: Option<String>,
    /// `KAFKA_SECURITY_PROTOCOL`: `plaintext`, `ssl`, `sasl_plaintext`, `sasl_ssl`.
    pub security_protocol: Option<String>,
    /// `KAFKA_SASL_MECHANISM`: `PLAIN`, `SCRAM-SHA-256`, `SCRAM-SHA-512`.
    pub sasl_mechanism: Option<String>,
    /// `KAFKA_SASL_USERNAME`.
    pub sasl_username: Option<Secret>,
    /// `KAFKA_SASL_PASSWORD`.
    pub sasl_password: Option<Secret>,
}

impl KafkaEnv {
    /// Read from the process environment.
    pub fn from_env() -> Self {
        Self::from_lookup(super::environment::var)
    }

    /// Read through `get` (tests pass a map).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Self {
        let get = |k: &str| {
            get(k)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        Self {
            bootstrap_servers: get("KAFKA_BOOTSTRAP_SERVERS"),
            security_protocol: get("KAFKA_SECURITY_PROTOCOL"),
            sasl_mechanism: get("KAFKA_SASL_MECHANISM"),
            sasl_username: get("KAFKA_SASL_USERNAME").map(Secret::new),
            sasl_password: get("KAFKA_SASL_PASSWORD").map(Secret::new),
        }
    }

    /// As librdkafka properties (the only place secrets are exposed).
    pub fn properties(&self) -> Vec<(&'static str, String)> {
        let mut p = Vec::new();
        if let Some(v) = &self.bootstrap_servers {
            p.push(("bootstrap.servers", v.clone()));
        }
        if let Some(v) = &self.security_protocol {
            p.push(("security.protocol", v.clone()));
        }
        if let Some(v) = &self.sasl_mechanism {
            p.push(("sasl.mechanism", v.clone()));
        }
        if let Some(v) = &self.sasl_username {
            p.push(("sasl.username", v.expose().to_owned()));
        }
        if let Some(v) = &self.sasl_password {
            p.push(("sasl.password", v.expose().to_owned()));
        }
        p
    }
}
