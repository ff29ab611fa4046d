//! Bounded capture of a guest's stdout and stderr.
//!
//! A Rust guest that panics prints its message to stderr and then traps; the trap alone says
//! only "unreachable executed". Keeping the *tail* of the output (where the panic message is)
//! within a fixed budget gives the dead-letter record its reason without letting a chatty
//! guest grow host memory. Writes never fail: when over budget, the oldest bytes go.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

#[derive(Debug, Default)]
struct Buf {
    bytes: Vec<u8>,
    dropped: u64,
}

/// Shared, bounded output buffer; clones write into the same buffer.
#[derive(Debug, Clone)]
pub struct OutputCapture {
    cap: usize,
    inner: Arc<Mutex<Buf>>,
}

impl OutputCapture {
    /// A capture keeping at most `cap` bytes (the most recent ones).
    pub fn new(cap: usize) -> Self {
        Self {
            cap,
            inner: Arc::new(Mutex::new(Buf::default())),
        }
    }

    fn push(&self, data: &[u8]) {
        let Ok(mut buf) = self.inner.lock() else {
            return;
        };
        if data.len() >= self.cap {
            buf.dropped += (buf.bytes.len() + data.len() - self.cap) as u64;
            buf.bytes.clear();
            buf.bytes.extend_from_slice(&data[data.len() - self.cap..]);
            return;
        }
        let overflow = (buf.bytes.len() + data.len()).saturating_sub(self.cap);
        if overflow > 0 {
            buf.bytes.drain(..overflow);
            buf.dropped += overflow as u64;
        }
        buf.bytes.extend_from_slice(data);
    }

    /// The captured text (lossy UTF-8), trimmed, with a marker when older output was dropped.
    pub fn text(&self) -> String {
        let Ok(buf) = self.inner.lock() else {
            return String::new();
        };
        let text = String::from_utf8_lossy(&buf.bytes);
        let text = text.trim();
        if buf.dropped > 0 {
            format!("[{} earlier bytes dropped] {text}", buf.dropped)
        } else {
            text.to_owned()
        }
    }

    /// Forget everything captured so far (between two calls on a reused instance).
    pub fn clear(&self) {
        if let Ok(mut buf) = self.inner.lock() {
            buf.bytes.clear();
            buf.dropped = 0;
        }
    }
}

impl IsTerminal for OutputCapture {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for OutputCapture {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for OutputCapture {
    async fn ready(&mut self) {}
}

#[wasmtime_wasi::async_trait]
impl OutputStream for OutputCapture {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.push(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(64 * 1024)
    }
}

impl tokio::io::AsyncWrite for OutputCapture {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.push(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_tail_within_budget() {
        let c = OutputCapture::new(8);
        c.push(b"hello ");
        c.push(b"world!");
        assert_eq!(c.text(), "[4 earlier bytes dropped] o world!");
        c.push(&[b'x'; 20]);
        assert!(c.text().ends_with("xxxxxxxx"));
        c.clear();
        assert_eq!(c.text(), "");
    }
}
