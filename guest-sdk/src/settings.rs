//! The handler's settings: values the operator put under `settings` for this handler in
//! `kasm.toml` (a webhook URL, a channel prefix). Always available; never secrets.
//!
//! ```no_run
//! # fn run() -> Result<(), kasm_guest::HandlerError> {
//! let url = kasm_guest::settings::require("webhook_url")?;
//! # let _ = url;
//! # Ok(())
//! # }
//! ```

use crate::HandlerError;
use crate::bindings::kasm::handler::settings;

/// The value of `key`, if configured.
pub fn get(key: &str) -> Option<String> {
    settings::get(key)
}

/// The value of `key`; a missing setting is [`HandlerError::Fatal`] (the configuration is
/// wrong, and retrying the record will not fix it).
pub fn require(key: &str) -> Result<String, HandlerError> {
    get(key).ok_or_else(|| {
        HandlerError::fatal(format!(
            "setting `{key}` is not configured for this handler (settings in kasm.toml)"
        ))
    })
}
