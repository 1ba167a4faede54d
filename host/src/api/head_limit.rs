//! Oversized request heads get a problem+json 431 like every other refusal. hyper rejects a
//! head over `max_buf_size` (or over its header count) itself, before any service runs, and
//! writes a bare `431` with no body; it offers no hook to shape that answer. So the connection's
//! IO is wrapped: the one response head hyper writes that starts `HTTP/1.1 431 ` is replaced by
//! a complete problem response. hyper only writes its error response at a response boundary
//! (no body of ours is in flight), and its 431 has no `content-type` while every answer of ours
//! has one (the exact check below answers 431 itself), so nothing else matches.
//!
//! hyper's buffer limit is not an exact head limit (it refuses a head only once its read buffer
//! fills, and reads ahead in chunks), so hyper gets a buffer of twice the limit as a backstop and
//! `head_size` enforces the documented limit exactly on every parsed request.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use http::StatusCode;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::metrics::Metrics;
use super::problem::Problem;

const HYPER_431: &[u8] = b"HTTP/1.1 431 ";

/// The largest request head (request line and headers) a client may send; beyond it 431.
pub(super) const MAX_HEAD: usize = 64 * 1024;
/// The most header fields a request may carry (hyper's own count limit, which is exact).
pub(super) const MAX_HEADERS: usize = 100;
/// hyper's read buffer: room for any head `head_size` then judges exactly.
pub(super) const HYPER_BUF: usize = 2 * MAX_HEAD;

/// The size of a request's head as sent in canonical form: `METHOD SP target SP HTTP/1.1 CRLF`,
/// one `name: value CRLF` per header field, and the final CRLF.
pub(super) fn head_size<B>(req: &http::Request<B>) -> usize {
    let target = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().len())
        .unwrap_or_else(|| req.uri().to_string().len());
    let line = req.method().as_str().len() + 1 + target + 1 + "HTTP/1.1".len() + 2;
    let fields: usize = req
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + 2 + value.len() + 2)
        .sum();
    line + fields + 2
}

/// The refusal of a head over `max_head` bytes or `MAX_HEADERS` fields.
pub(super) fn head_too_large(max_head: usize) -> Problem {
    Problem::new(
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        "header-too-large",
        format!(
            "the request head (request line and headers) is over {max_head} bytes or has over \
             {MAX_HEADERS} headers; send fewer or smaller headers"
        ),
    )
}

/// An IO whose hyper-written bare 431 becomes a problem+json answer.
pub struct ProblemOn431<T> {
    inner: T,
    max_head: usize,
    /// Counts the refusal (route `unrouted`: hyper answers before any route is known).
    metrics: Option<Arc<Metrics>>,
    /// The replacement response and how much of it is written.
    pending: Option<(Vec<u8>, usize)>,
}

impl<T> ProblemOn431<T> {
    pub fn new(inner: T, max_head: usize, metrics: Option<Arc<Metrics>>) -> Self {
        ProblemOn431 {
            inner,
            max_head,
            metrics,
            pending: None,
        }
    }

    fn replacement(&self) -> Vec<u8> {
        if let Some(m) = &self.metrics {
            m.request("unrouted", 431);
        }
        tracing::info!(status = 431, "request head over the limit refused");
        let body = head_too_large(self.max_head).body();
        let mut out = format!(
            "HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/problem+json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
            body.len()
        )
        .into_bytes();
        out.extend_from_slice(body.as_bytes());
        out
    }
}

/// Whether `buf` starts hyper's own bare 431 (not the problem answer a route wrote).
fn is_hypers_431(buf: &[u8]) -> bool {
    if !buf.starts_with(HYPER_431) {
        return false;
    }
    let head_end = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or(buf.len());
    !buf[..head_end]
        .to_ascii_lowercase()
        .windows(b"\r\ncontent-type:".len())
        .any(|w| w == b"\r\ncontent-type:")
}

impl<T: AsyncWrite + Unpin> ProblemOn431<T> {
    /// Writes what is left of the replacement; ready when none is left.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some((bytes, done)) = &mut self.pending {
            if *done == bytes.len() {
                self.pending = None;
                break;
            }
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &bytes[*done..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            *done += n;
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for ProblemOn431<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for ProblemOn431<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        ready!(self.poll_drain(cx))?;
        if is_hypers_431(buf) {
            // hyper's 431 is a head without a body: swallow it, send ours instead.
            self.pending = Some((self.replacement(), 0));
            let _ = self.poll_drain(cx)?;
            return Poll::Ready(Ok(buf.len()));
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        ready!(self.poll_drain(cx))?;
        if bufs
            .iter()
            .find(|b| !b.is_empty())
            .is_some_and(|b| is_hypers_431(b))
        {
            self.pending = Some((self.replacement(), 0));
            let _ = self.poll_drain(cx)?;
            return Poll::Ready(Ok(bufs.iter().map(|b| b.len()).sum()));
        }
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_drain(cx))?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_drain(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn a_bare_431_becomes_a_problem_and_other_writes_pass_through() {
        let (a, mut b) = tokio::io::duplex(1 << 16);
        let mut io = ProblemOn431::new(a, 1024, None);
        io.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
            .await
            .unwrap();
        io.write_all(b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\n\r\n")
            .await
            .unwrap();
        // A route's own problem 431 passes through as written.
        let ours = b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/problem+json\r\ncontent-length: 2\r\n\r\n{}";
        io.write_all(ours).await.unwrap();
        io.shutdown().await.unwrap();
        drop(io);
        let mut got = String::new();
        b.read_to_string(&mut got).await.unwrap();
        let (ok, rest) = got.split_once("\r\n\r\n").unwrap();
        assert_eq!(ok, "HTTP/1.1 200 OK\r\ncontent-length: 0");
        assert!(rest.starts_with("HTTP/1.1 431 "), "{rest}");
        assert!(
            rest.contains("content-type: application/problem+json"),
            "{rest}"
        );
        let (replaced, passed) = rest
            .split_once("HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/problem+json\r\ncontent-length: 2\r\n\r\n{}")
            .expect("the route's own 431 passed through unchanged");
        assert_eq!(passed, "");
        let body = replaced.split_once("\r\n\r\n").unwrap().1;
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["status"], 431);
        assert!(v["type"].as_str().unwrap().ends_with("/header-too-large"));
        assert!(v["detail"].as_str().unwrap().contains("1024 bytes"));
    }
}
