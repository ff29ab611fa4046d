//! `kasm:handler/log`: a handler's log lines, into the host's tracing.

use serde::Serialize;

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
