//! The process environment: the one place kasm reads it.
//!
//! Precedence, as the README promises: defaults → `kasm.toml` → the environment → the command
//! line. What comes only from here: the Kafka connection and credentials (`KAFKA_*`,
//! [`super::KafkaEnv`]), the admin token (`KASM_ADMIN_TOKEN`), the WebSocket secret
//! (`KASM_WS_SECRET`), PostgreSQL URLs (the variable a `sql` grant's `url_env` names), the
//! trace exporter (`OTEL_*`) and the user's cache folder (`XDG_CACHE_HOME`, `HOME`).
//! `KASM_CACHE_DIR`, `KASM_ADMIN_URL` and `KASM_ADMIN_TOKEN` also stand in for command-line
//! flags; clap reads those with the flags.

use std::path::PathBuf;

use super::Secret;

/// The value of variable `name`, if it is set and is text.
pub fn var(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// Whether variable `name` is set to something other than the empty string.
pub fn is_set(name: &str) -> bool {
    std::env::var_os(name).is_some_and(|v| !v.is_empty())
}

/// `KASM_ADMIN_TOKEN`, unless unset or blank.
pub fn admin_token() -> Option<Secret> {
    var("KASM_ADMIN_TOKEN")
        .filter(|t| !t.trim().is_empty())
        .map(Secret::new)
}

/// `KASM_WS_SECRET`, unless unset or empty.
pub fn ws_secret() -> Option<Secret> {
    var("KASM_WS_SECRET")
        .filter(|s| !s.is_empty())
        .map(Secret::new)
}

/// The user's cache folder: `$XDG_CACHE_HOME`, else `$HOME/.cache`.
pub fn user_cache_dir() -> Option<PathBuf> {
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
}
