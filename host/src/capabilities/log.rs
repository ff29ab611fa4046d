//! `kasm:handler/log`: a handler's log lines, into the host's tracing.

use serde::Serialize;

use crate::wit as bindings;
use crate::wit::Level;

use super::state::CapabilityState;

/// Longest log message kept, in bytes; longer ones are cut at a char boundary.
pub const MAX_LOG_LINE: usize = 4096;
/// Most log lines kept per call; the rest are counted as dropped.
pub const MAX_LOG_LINES: usize = 1000;

/// A log line written by a handler.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LogLine {
    /// `trace`, `debug`, `info`, `warn` or `error`.
    pub level: &'static str,
    /// The message (possibly truncated to [`MAX_LOG_LINE`]).
    pub message: String,
}

/// Cut `s` to at most `max` bytes (plus the `…` marker) without splitting a character.
///
/// The result owns only what it keeps: a guest's 1 MiB log line cut to 4 KiB must not keep
/// its 1 MiB allocation alive (a thousand such lines held 500 MiB of host memory).
pub fn truncate_utf8(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push('…');
        s.shrink_to_fit();
    }
    s
}

impl bindings::kasm::handler::log::Host for CapabilityState {
    fn log(&mut self, level: Level, message: String) {
        let effects = &mut self.call.effects;
        if effects.logs.len() >= MAX_LOG_LINES {
            effects.logs_dropped = effects.logs_dropped.saturating_add(1);
            return;
        }
        let message = truncate_utf8(message, MAX_LOG_LINE);
        let c = &self.call;
        let h = self.env.name.as_str();
        // The ids only when a line is written: a call that logs nothing pays nothing.
        let ids = self
            .http
            .trace
            .as_ref()
            .map(crate::telemetry::trace::RecordSpan::ids);
        let (trace_id, span_id) = ids
            .as_ref()
            .map_or((None, None), |(t, s)| (Some(t.as_str()), Some(s.as_str())));
        macro_rules! emit {
            ($lvl:ident) => {
                tracing::$lvl!(
                    target: "kasm::guest",
                    handler = h, topic = %c.topic, partition = c.partition,
                    offset = c.offset, event_id = %c.event_id, trace_id, span_id, "{message}"
                )
            };
        }
        let name = match level {
            Level::Trace => {
                emit!(trace);
                "trace"
            }
            Level::Debug => {
                emit!(debug);
                "debug"
            }
            Level::Info => {
                emit!(info);
                "info"
            }
            Level::Warn => {
                emit!(warn);
                "warn"
            }
            Level::Error => {
                emit!(error);
                "error"
            }
        };
        self.call.effects.logs.push(LogLine {
            level: name,
            message,
        });
    }
}
