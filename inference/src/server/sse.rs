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

/// Turns one engine event into zero or more JSON payloads (each becomes one `data:` line).
pub type Formatter = Box<dyn FnMut(&Event) -> Vec<serde_json::Value> + Send>;

pub struct SseBody {
    events: UnboundedReceiver<Event>,
    format: Formatter,
    finished: bool,
}

impl SseBody {
    pub fn new(events: UnboundedReceiver<Event>, format: Formatter) -> Self {
        SseBody {
            events,
            format,
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
        loop {
            if self.finished {
                return Poll::Ready(None);
            }
            let ev = match self.events.poll_recv(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(ev) => ev,
            };
            let Some(ev) = ev else {
                // The engine dropped the request without a final event (it stopped).
                self.finished = true;
                let err = crate::server::errors::ApiError::internal(
                    "the engine stopped before the request finished",
                );
                let mut out = frame(&err.body_json().to_string()).to_vec();
                out.extend_from_slice(&frame("[DONE]"));
                return Poll::Ready(Some(Ok(Frame::data(Bytes::from(out)))));
            };
            let last = matches!(ev, Event::Done { .. } | Event::Failed(_));
            let mut out = Vec::new();
            for v in (self.format)(&ev) {
                out.extend_from_slice(&frame(&v.to_string()));
            }
            if last {
                self.finished = true;
                out.extend_from_slice(&frame("[DONE]"));
            }
            if !out.is_empty() {
                return Poll::Ready(Some(Ok(Frame::data(Bytes::from(out)))));
            }
        }
    }
}
