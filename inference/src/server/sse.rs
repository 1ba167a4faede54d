//! Server-sent events body: engine events become `data: {json}\n\n` frames ending with
//! `data: [DONE]`. The body owns the engine's receiver, so when hyper drops the body (the client
//! went away) the engine sees the channel closed and frees the request's slot.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame};
use tokio::sync::mpsc::UnboundedReceiver;

use crate::server::batcher::Event;

/// Turns one engine event of choice `index` into zero or more JSON payloads (each becomes one
/// `data:` line).
pub type Formatter = Box<dyn FnMut(usize, &Event) -> Vec<serde_json::Value> + Send>;

/// The stream of one request's choices: each choice's engine events, interleaved as they come,
/// ending with `data: [DONE]` once every choice is done (or at the first failure).
pub struct SseBody {
    /// One receiver per choice; `None` once that choice is done.
    events: Vec<Option<UnboundedReceiver<Event>>>,
    format: Formatter,
    /// The choice polled first next time, so no choice starves the others.
    next: usize,
    finished: bool,
}

impl SseBody {
    pub fn new(events: Vec<UnboundedReceiver<Event>>, format: Formatter) -> Self {
        SseBody {
            events: events.into_iter().map(Some).collect(),
            format,
            next: 0,
            finished: false,
        }
    }
}

/// One SSE frame holding `payload`.
pub fn frame(payload: &str) -> Bytes {
    Bytes::from(format!("data: {payload}\n\n"))
}

impl Body for SseBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = &mut *self;
        let mut out = Vec::new();
        loop {
            if this.finished {
                return Poll::Ready(None);
            }
            let n = this.events.len();
            let mut progressed = false;
            for k in 0..n {
                let i = (this.next + k) % n;
                let Some(rx) = this.events[i].as_mut() else {
                    continue;
                };
                let ev = match rx.poll_recv(cx) {
                    Poll::Pending => continue,
                    Poll::Ready(ev) => ev,
                };
                progressed = true;
                let Some(ev) = ev else {
                    // The engine dropped the request without a final event (it stopped).
                    this.finished = true;
                    let err = crate::server::errors::ApiError::internal(
                        "the engine stopped before the request finished",
                    );
                    out.extend_from_slice(&frame(&err.body_json().to_string()));
                    out.extend_from_slice(&frame("[DONE]"));
                    return Poll::Ready(Some(Ok(Frame::data(Bytes::from(out)))));
                };
                let failed = matches!(ev, Event::Failed(_));
                if matches!(ev, Event::Done { .. }) || failed {
                    this.events[i] = None;
                }
                for v in (this.format)(i, &ev) {
                    out.extend_from_slice(&frame(&v.to_string()));
                }
                if failed || this.events.iter().all(Option::is_none) {
                    this.finished = true;
                    out.extend_from_slice(&frame("[DONE]"));
                    return Poll::Ready(Some(Ok(Frame::data(Bytes::from(out)))));
                }
                this.next = (i + 1) % n;
                break;
            }
            if !out.is_empty() {
                return Poll::Ready(Some(Ok(Frame::data(Bytes::from(std::mem::take(&mut out))))));
            }
            if !progressed {
                return Poll::Pending;
            }
        }
    }
}
