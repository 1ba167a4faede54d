//! Run events as Server-Sent Events read straight from the journal: one SSE event per journal
//! entry with `id:` its sequence number, so `Last-Event-ID` resumes with exactly the entries a
//! client missed, for live and finished runs alike. Idle streams get comment heartbeats; a
//! stream ends after `RunFinished`, when the client goes away, or when the host shuts down.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderMap, Response, StatusCode, header};
use hyper::body::{Body, Frame};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::State;
use super::problem::Problem;
use super::routes::parse_run;
use sha2::Digest as _;

use crate::journal::{
    Crossing, Event, Journal, PayloadRef, Record, RunId, Snapshot, SnapshotMoment,
};

/// Payloads up to this size are inlined in event data; larger ones are referenced by digest.
const INLINE_PAYLOAD: usize = 64 * 1024;

/// Every response body: a complete buffer or a stream of chunks from a task.
pub enum ApiBody {
    Full(Option<Bytes>),
    Stream(mpsc::Receiver<Bytes>),
    /// The MCP service's own responses (JSON or its SSE streams).
    Boxed(http_body_util::combinators::BoxBody<Bytes, Infallible>),
}

impl ApiBody {
    pub fn full(b: impl Into<Bytes>) -> ApiBody {
        ApiBody::Full(Some(b.into()))
    }
}

impl Body for ApiBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.get_mut() {
            ApiBody::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            ApiBody::Stream(rx) => rx.poll_recv(cx).map(|c| c.map(|b| Ok(Frame::data(b)))),
            ApiBody::Boxed(b) => Pin::new(b).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ApiBody::Full(b) => b.is_none(),
            ApiBody::Stream(_) => false,
            ApiBody::Boxed(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match self {
            ApiBody::Full(Some(b)) => http_body::SizeHint::with_exact(b.len() as u64),
            ApiBody::Full(None) => http_body::SizeHint::with_exact(0),
            ApiBody::Stream(_) => http_body::SizeHint::default(),
            ApiBody::Boxed(b) => b.size_hint(),
        }
    }
}

/// `GET /v1/runs/{id}/events`.
pub(super) async fn events(
    state: &Arc<State>,
    id: &str,
    headers: &HeaderMap,
) -> Result<Response<ApiBody>, Problem> {
    let run = parse_run(id)?;
    let summary = state.journal.run_summary(run).map_err(|_| {
        Problem::not_found("unknown-run", format!("run {run} is not in the journal"))
    })?;
    let from = match headers.get("last-event-id") {
        None => 0,
        Some(v) => {
            let text = v.to_str().unwrap_or("");
            text.trim().parse::<u64>().map(|n| n.saturating_add(1)).map_err(|_| {
                Problem::bad_request(
                    "invalid-last-event-id",
                    format!("Last-Event-ID '{text}' is not an event id this API sent (a journal sequence number)"),
                )
            })?
        }
    };
    // A finished run whose every event the client has (it reconnects with the `run_finished`
    // id, or an id beyond it): 204, which tells an EventSource to stop reconnecting. A 200 that
    // ends at once would only make it reconnect every `retry` interval forever.
    if summary.status.is_finished() && from >= summary.events {
        return Ok(Response::builder()
            .status(StatusCode::NO_CONTENT)
            .header(header::CACHE_CONTROL, "no-store")
            .body(ApiBody::Full(None))
            .expect("event stream responses are well formed"));
    }
    let (tx, rx) = mpsc::channel(16);
    let state = state.clone();
    tokio::spawn(async move {
        state.metrics.sse_streams.inc();
        stream(&state, run, from, &tx).await;
        // Counted out before the body ends, so a client that saw the end sees the gauge drop.
        state.metrics.sse_streams.dec();
        drop(tx);
    });
    Ok(Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-store")
        .header("x-accel-buffering", "no")
        .body(ApiBody::Stream(rx))
        .expect("event stream responses are well formed"))
}

async fn stream(state: &State, run: RunId, mut next: u64, tx: &mpsc::Sender<Bytes>) {
    let mut appended = state.journal.subscribe(run);
    let mut heartbeat = tokio::time::interval(state.config.sse_heartbeat);
    heartbeat.tick().await;
    if tx
        .send(Bytes::from_static(b"retry: 1000\n\n"))
        .await
        .is_err()
    {
        return;
    }
    loop {
        // Mark the current append count seen before reading, so an append after the read wakes us.
        appended.borrow_and_update();
        let journal = state.journal.clone();
        let records = match tokio::task::spawn_blocking(move || {
            // Read before the events: a run already finished now has its `run_finished` among
            // them unless the client is past it, and then nothing more will ever come.
            let finished = journal.run_summary(run)?.status.is_finished();
            let records = journal.events_from(run, next)?;
            let frames: Vec<(bool, Bytes)> = records
                .iter()
                .map(|r| {
                    (
                        matches!(r.event, Event::RunFinished { .. }),
                        frame(&journal, r),
                    )
                })
                .collect();
            Ok::<_, crate::journal::JournalError>((finished, records.last().map(|r| r.seq), frames))
        })
        .await
        {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                tracing::error!(run_id = %run, error = %e, "event stream: journal read failed");
                let _ = tx
                    .send(Bytes::from(format!(
                        "event: error\ndata: {}\n\n",
                        json!({"message": e.to_string()})
                    )))
                    .await;
                return;
            }
            Err(_) => return,
        };
        let (run_over, last, frames) = records;
        for (finished, f) in frames {
            if tx.send(f).await.is_err() {
                return;
            }
            if finished {
                return;
            }
        }
        if run_over {
            // The client's id was at or past `run_finished`: the stream is complete.
            return;
        }
        if let Some(last) = last {
            next = last + 1;
        }
        tokio::select! {
            changed = appended.changed() => if changed.is_err() { return },
            // A run another replica executes appends through that replica's journal.
            _ = remote_poll(state) => {}
            _ = heartbeat.tick() => {
                if tx.send(Bytes::from_static(b": heartbeat\n\n")).await.is_err() {
                    return;
                }
            }
            _ = tx.closed() => return,
            _ = state.shutdown.cancelled() => return,
        }
    }
}

/// Resolves now and then on a shared journal (read again for other replicas' appends): every
/// 2 s as a safety net where the database notifies of appends (a notification lost while the
/// listener reconnects), every 200 ms where it cannot; never on an embedded journal, where every
/// append is this process's own.
async fn remote_poll(state: &State) {
    tokio::time::sleep(match state.queue {
        Some(_) if state.journal.follows_other_hosts() => super::claims::SAFETY_POLL,
        Some(_) => super::claims::POLL * 2,
        None => return std::future::pending().await,
    })
    .await
}

/// One journal record as an SSE event.
fn frame(journal: &Journal, r: &Record) -> Bytes {
    let (kind, data) = event_json(journal, &r.event);
    let mut data = data;
    if let Value::Object(m) = &mut data {
        m.insert("seq".into(), json!(r.seq));
        m.insert("at_ms".into(), json!(r.at_ms));
    }
    Bytes::from(format!("id: {}\nevent: {kind}\ndata: {data}\n\n", r.seq))
}

fn payload(journal: &Journal, p: &PayloadRef) -> Value {
    match p {
        PayloadRef::Blob(d) => match journal.payload(p) {
            Ok(bytes) if bytes.len() <= INLINE_PAYLOAD => decode_payload(&bytes),
            Ok(bytes) => json!({"blob": hex::encode(d), "bytes": bytes.len()}),
            Err(e) => json!({"blob": hex::encode(d), "error": e.to_string()}),
        },
        PayloadRef::Inline(bytes) => decode_payload(bytes),
    }
}

fn decode_payload(bytes: &[u8]) -> Value {
    match std::str::from_utf8(bytes) {
        Ok(s) => serde_json::from_str(s).unwrap_or_else(|_| Value::String(s.to_owned())),
        Err(_) => json!({"base64_bytes": bytes.len()}),
    }
}

/// The event's SSE name and data.
pub(super) fn event_json(journal: &Journal, event: &Event) -> (&'static str, Value) {
    match event {
        Event::StepAwaitingApproval { step, input } => (
            "step_awaiting_approval",
            json!({"step": step, "input": payload(journal, input),
                   "approve": "POST /v1/runs/{run}/steps/{step}/approval"}),
        ),
        Event::StepApproval {
            step,
            approved,
            comment,
        } => (
            "step_approval",
            json!({"step": step, "approved": approved, "comment": comment}),
        ),
        Event::StepAudit {
            step,
            attempt,
            calls,
        } => (
            "step_audit",
            json!({"step": step, "attempt": attempt, "calls": payload(journal, calls)}),
        ),
        Event::RunCreated {
            graph_name,
            graph_digest,
            components,
            input,
            ..
        } => (
            "run_created",
            json!({
                "graph": graph_name, "graph_version": graph_digest,
                "components": components.iter().map(|c| json!({"name": c.name, "digest": c.digest})).collect::<Vec<_>>(),
                "input": payload(journal, input),
            }),
        ),
        Event::StepScheduled {
            step,
            node,
            iteration,
            input,
        } => (
            "step_scheduled",
            json!({"step": step, "node": node, "iteration": iteration, "input": payload(journal, input)}),
        ),
        Event::StepStarted { step, attempt } => {
            ("step_started", json!({"step": step, "attempt": attempt}))
        }
        Event::StepCompleted {
            step,
            attempt,
            output,
        } => (
            "step_completed",
            json!({"step": step, "attempt": attempt, "output": payload(journal, output)}),
        ),
        Event::StepFailed {
            step,
            attempt,
            kind,
            message,
            retry_in_ms,
        } => (
            "step_failed",
            json!({"step": step, "attempt": attempt, "kind": kind, "message": message, "retry_in_ms": retry_in_ms}),
        ),
        Event::Crossing {
            step,
            attempt,
            crossing,
        } => {
            let c = match crossing {
                Crossing::ToolRequest { tool, input } => {
                    json!({"kind": "tool_request", "tool": tool, "input": payload(journal, input)})
                }
                Crossing::ToolResult { ok, output } => {
                    json!({"kind": "tool_result", "ok": ok, "output": payload(journal, output)})
                }
                // Headers stay out: injected credentials must never leave the host.
                Crossing::HttpIntent { method, uri, .. } => {
                    json!({"kind": "http_intent", "method": method, "uri": uri})
                }
                Crossing::HttpResponse { status, body, .. } => {
                    let bytes = journal.payload(body).map(|b| b.len()).unwrap_or(0);
                    json!({"kind": "http_response", "status": status, "body_bytes": bytes})
                }
                Crossing::HttpFailed { message } => {
                    json!({"kind": "http_failed", "message": message})
                }
                Crossing::WallClock { .. } => json!({"kind": "wall_clock"}),
                Crossing::MonotonicClock { .. } => json!({"kind": "monotonic_clock"}),
                Crossing::Random { bytes } => json!({"kind": "random", "bytes": bytes.len()}),
                Crossing::Denial { capability, target } => {
                    json!({"kind": "denial", "capability": capability, "target": target})
                }
                // The request itself (prompts) stays in the journal; the stream says that a
                // call was made and what it cost.
                Crossing::ModelRequest { digest, .. } => {
                    json!({"kind": "model_request", "digest": digest})
                }
                Crossing::ModelResponse {
                    ok,
                    prompt_tokens,
                    completion_tokens,
                    model_ms,
                    ..
                } => json!({
                    "kind": "model_response",
                    "ok": ok,
                    "usage": {"input_tokens": prompt_tokens, "output_tokens": completion_tokens, "model_ms": model_ms},
                }),
            };
            (
                "crossing",
                json!({"step": step, "attempt": attempt, "crossing": c}),
            )
        }
        // The manifest's digest and counts; file contents stay in the journal.
        Event::WorkspaceSnapshot {
            step,
            attempt,
            moment,
            writable,
            snapshot,
        } => {
            let moment = match moment {
                SnapshotMoment::Before => "before",
                SnapshotMoment::After => "after",
            };
            let snapshot = match snapshot {
                Snapshot::Taken {
                    manifest,
                    entries,
                    bytes,
                } => json!({
                    "taken": true,
                    "manifest_sha256": match manifest {
                        PayloadRef::Blob(d) => Value::String(hex::encode(d)),
                        PayloadRef::Inline(b) => Value::String(hex::encode(sha2::Sha256::digest(b))),
                    },
                    "entries": entries,
                    "bytes": bytes,
                }),
                Snapshot::Skipped { reason } => json!({"taken": false, "reason": reason}),
            };
            (
                "workspace_snapshot",
                json!({
                    "step": step, "attempt": attempt, "moment": moment,
                    "mode": if *writable { "rw" } else { "ro" }, "snapshot": snapshot,
                }),
            )
        }
        Event::RunFinished {
            status,
            output,
            error,
        } => (
            "run_finished",
            json!({
                "status": status.as_str(),
                "output": output.as_ref().map(|o| payload(journal, o)),
                "error": error,
            }),
        ),
    }
}
