//! Per-call resource caps: linear memory (through `ResourceLimiter`), CPU time (epoch deadline,
//! see `engine`), output size, and the guest's stdout/stderr, captured with a cap into the call's
//! log. A guest hitting any cap gets a typed outcome, never a host panic or an OOM.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};

/// Bytes of guest stdout (and, separately, stderr) kept per call.
pub const LOG_CAP: usize = 64 * 1024;

/// Caps linear memory per call and remembers whether the guest hit the cap.
#[derive(Debug)]
pub struct MemoryLimiter {
    limit: usize,
    peak: usize,
    exceeded: bool,
}

impl MemoryLimiter {
    pub fn new(limit_bytes: u64) -> Self {
        MemoryLimiter {
            limit: usize::try_from(limit_bytes).unwrap_or(usize::MAX),
            peak: 0,
            exceeded: false,
        }
    }
    pub fn peak(&self) -> u64 {
        self.peak as u64
    }
    pub fn exceeded(&self) -> bool {
        self.exceeded
    }
}

impl wasmtime::ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.limit {
            self.exceeded = true;
            return Ok(false);
        }
        self.peak = self.peak.max(desired).max(current);
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        // Tables hold function references; a million entries is far past any real tool.
        Ok(desired <= 1_000_000)
    }
}

/// A guest output stream that keeps the first `cap` bytes and silently drops the rest,
/// so a chatty guest can neither fail on a full pipe nor grow host memory.
#[derive(Clone)]
pub struct CappedLog {
    inner: Arc<Mutex<LogBuf>>,
}

struct LogBuf {
    bytes: Vec<u8>,
    cap: usize,
    dropped: u64,
}

impl CappedLog {
    pub fn new(cap: usize) -> Self {
        CappedLog {
            inner: Arc::new(Mutex::new(LogBuf {
                bytes: Vec::new(),
                cap,
                dropped: 0,
            })),
        }
    }

    /// The captured text, with a marker when bytes were dropped.
    pub fn text(&self) -> String {
        let buf = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let mut s = String::from_utf8_lossy(&buf.bytes).into_owned();
        if buf.dropped > 0 {
            s.push_str(&format!(
                "\n[sandgraph: {} more bytes dropped]",
                buf.dropped
            ));
        }
        s
    }

    fn append(&self, data: &[u8]) {
        let mut buf = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let room = buf.cap.saturating_sub(buf.bytes.len());
        let take = room.min(data.len());
        buf.bytes.extend_from_slice(&data[..take]);
        buf.dropped += (data.len() - take) as u64;
    }
}

impl IsTerminal for CappedLog {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for CappedLog {
    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

impl AsyncWrite for CappedLog {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.append(data);
        Poll::Ready(Ok(data.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasmtime::ResourceLimiter;

    #[test]
    fn log_keeps_the_head_and_counts_the_rest() {
        let log = CappedLog::new(4);
        log.append(b"abcdef");
        log.append(b"gh");
        assert_eq!(log.text(), "abcd\n[sandgraph: 4 more bytes dropped]");
    }

    #[test]
    fn memory_limiter_refuses_growth_past_the_limit() {
        let mut l = MemoryLimiter::new(1 << 20);
        assert!(l.memory_growing(0, 65536, None).unwrap());
        assert!(!l.exceeded());
        assert!(!l.memory_growing(65536, (1 << 20) + 65536, None).unwrap());
        assert!(l.exceeded());
        assert_eq!(l.peak(), 65536);
    }
}
