//! `GET /v1/runs/{id}/steps/{step}`: one step of a run as the journal holds it — its input, each
//! attempt with every crossing in the order it crossed (model calls with the request and the
//! answer, tool calls, HTTP, clocks, randomness, refusals) and the sandbox's audit records, and
//! its output or error. The event stream says *that* things crossed; this says *what* crossed,
//! for someone inspecting one step. Request headers stay out: injected credentials never leave
//! the host.

use std::sync::Arc;

use serde_json::{Map, Value, json};

use super::State;
use super::problem::Problem;
use super::routes::parse_run;
use crate::journal::{Crossing, Event, Journal, JournalError, PayloadRef, Record, RunId};

/// Payloads up to this size are given whole; larger ones by size and digest.
const INLINE_PAYLOAD: usize = 256 * 1024;

/// A response body is shown up to this many bytes (the rest is counted).
const BODY_PREVIEW: usize = 4 * 1024;

pub(super) async fn step(state: &Arc<State>, id: &str, step: &str) -> Result<Value, Problem> {
    let run = parse_run(id)?;
    let step = percent_encoding::percent_decode_str(step)
        .decode_utf8()
        .map_err(|e| Problem::bad_request("bad-step", format!("step name is not UTF-8: {e}")))?
        .into_owned();
    let journal = state.journal.clone();
    let records = tokio::task::spawn_blocking(move || journal.events(run))
        .await
        .map_err(|e| Problem::internal(e.to_string()))?
        .map_err(|e| match e {
            JournalError::UnknownRun { run } => {
                Problem::not_found("unknown-run", format!("run {run} is not in the journal"))
            }
            other => Problem::internal(format!("the journal failed: {other}")),
        })?;
    detail(&state.journal, run, &step, &records)
}

/// The step's view built from the run's records.
fn detail(journal: &Journal, run: RunId, step: &str, records: &[Record]) -> Result<Value, Problem> {
    let mut out = Map::new();
    let mut attempts: Vec<Map<String, Value>> = Vec::new();
    let mut seen = false;
    let attempt_entry = |attempts: &mut Vec<Map<String, Value>>, n: u32| -> usize {
        if let Some(i) = attempts.iter().position(|a| a["attempt"] == json!(n)) {
            return i;
        }
        let mut m = Map::new();
        m.insert("attempt".into(), json!(n));
        m.insert("crossings".into(), json!([]));
        m.insert("audit".into(), json!([]));
        attempts.push(m);
        attempts.len() - 1
    };
    let mut step_names = Vec::new();
    for r in records {
        let on = |s: &str| s == step;
        match &r.event {
            Event::StepScheduled {
                step: s,
                node,
                iteration,
                input,
            } => {
                step_names.push(s.clone());
                if on(s) {
                    seen = true;
                    out.insert("node".into(), json!(node));
                    out.insert("iteration".into(), json!(iteration));
                    out.insert("status".into(), json!("scheduled"));
                    out.insert("scheduled_ms".into(), json!(r.at_ms));
                    out.insert("input".into(), payload(journal, input));
                }
            }
            Event::StepStarted { step: s, attempt } if on(s) => {
                let i = attempt_entry(&mut attempts, *attempt);
                attempts[i].insert("started_ms".into(), json!(r.at_ms));
                attempts[i].insert("outcome".into(), json!("running"));
                out.insert("status".into(), json!("running"));
            }
            Event::StepCompleted {
                step: s,
                attempt,
                output,
            } if on(s) => {
                let i = attempt_entry(&mut attempts, *attempt);
                attempts[i].insert("ended_ms".into(), json!(r.at_ms));
                attempts[i].insert("outcome".into(), json!("completed"));
                out.insert("status".into(), json!("completed"));
                out.insert("output".into(), payload(journal, output));
            }
            Event::StepFailed {
                step: s,
                attempt,
                kind,
                message,
                retry_in_ms,
            } if on(s) => {
                let i = attempt_entry(&mut attempts, *attempt);
                attempts[i].insert("ended_ms".into(), json!(r.at_ms));
                let outcome = if retry_in_ms.is_some() {
                    "retrying"
                } else {
                    "failed"
                };
                attempts[i].insert("outcome".into(), json!(outcome));
                let error = json!({"kind": kind, "message": message, "retry_in_ms": retry_in_ms});
                attempts[i].insert("error".into(), error.clone());
                out.insert("status".into(), json!(outcome));
                out.insert("error".into(), error);
            }
            Event::Crossing {
                step: s,
                attempt,
                crossing,
            } if on(s) => {
                let i = attempt_entry(&mut attempts, *attempt);
                let mut c = crossing_json(journal, crossing);
                if let Value::Object(m) = &mut c {
                    m.insert("seq".into(), json!(r.seq));
                    m.insert("at_ms".into(), json!(r.at_ms));
                }
                if let Some(Value::Array(list)) = attempts[i].get_mut("crossings") {
                    list.push(c);
                }
            }
            Event::StepAudit {
                step: s,
                attempt,
                calls,
            } if on(s) => {
                let i = attempt_entry(&mut attempts, *attempt);
                let calls = match payload(journal, calls) {
                    Value::Array(a) => Value::Array(a),
                    other => json!([other]),
                };
                attempts[i].insert("audit".into(), calls);
            }
            Event::StepAwaitingApproval { step: s, input } if on(s) => {
                out.insert("status".into(), json!("awaiting_approval"));
                out.insert("pending_input".into(), payload(journal, input));
            }
            Event::StepApproval {
                step: s,
                approved,
                comment,
            } if on(s) => {
                out.remove("pending_input");
                out.insert(
                    "status".into(),
                    json!(if *approved { "approved" } else { "rejected" }),
                );
                out.insert(
                    "approval".into(),
                    json!({"approved": approved, "comment": comment}),
                );
            }
            _ => {}
        }
    }
    if !seen {
        let known: Vec<&str> = step_names.iter().map(String::as_str).take(20).collect();
        return Err(Problem::not_found(
            "unknown-step",
            format!(
                "run {run} has no step '{}'{}",
                step.chars().take(200).collect::<String>(),
                if known.is_empty() {
                    String::new()
                } else {
                    format!("; its steps are {}", known.join(", "))
                }
            ),
        ));
    }
    out.insert("run".into(), json!(run.to_string()));
    out.insert("step".into(), json!(step));
    out.insert(
        "attempts".into(),
        Value::Array(attempts.into_iter().map(Value::Object).collect()),
    );
    Ok(Value::Object(out))
}

fn payload(journal: &Journal, p: &PayloadRef) -> Value {
    match journal.payload(p) {
        Ok(bytes) if bytes.len() <= INLINE_PAYLOAD => match std::str::from_utf8(&bytes) {
            Ok(s) => serde_json::from_str(s).unwrap_or_else(|_| Value::String(s.to_owned())),
            Err(_) => json!({"binary_bytes": bytes.len()}),
        },
        Ok(bytes) => json!({"omitted_bytes": bytes.len(), "reason": "over the 256 KiB shown here"}),
        Err(e) => json!({"error": e.to_string()}),
    }
}

/// One crossing with what crossed (the event stream's form carries only that it crossed).
fn crossing_json(journal: &Journal, c: &Crossing) -> Value {
    match c {
        Crossing::ToolRequest { tool, input } => {
            json!({"kind": "tool_request", "tool": tool, "input": payload(journal, input)})
        }
        Crossing::ToolResult { ok, output } => {
            json!({"kind": "tool_result", "ok": ok, "output": payload(journal, output)})
        }
        Crossing::HttpIntent { method, uri, .. } => {
            json!({"kind": "http_intent", "method": method, "uri": uri})
        }
        Crossing::HttpResponse { status, body, .. } => {
            let body = journal.payload(body).unwrap_or_default();
            let shown = &body[..body.len().min(BODY_PREVIEW)];
            json!({
                "kind": "http_response", "status": status, "body_bytes": body.len(),
                "body_preview": String::from_utf8_lossy(shown),
            })
        }
        Crossing::HttpFailed { message } => json!({"kind": "http_failed", "message": message}),
        Crossing::WallClock {
            seconds,
            nanoseconds,
        } => json!({"kind": "wall_clock", "seconds": seconds, "nanoseconds": nanoseconds}),
        Crossing::MonotonicClock { nanoseconds } => {
            json!({"kind": "monotonic_clock", "nanoseconds": nanoseconds})
        }
        Crossing::Random { bytes } => json!({"kind": "random", "bytes": bytes.len()}),
        Crossing::Denial { capability, target } => {
            json!({"kind": "denial", "capability": capability, "target": target})
        }
        Crossing::ModelRequest { digest, request } => {
            json!({"kind": "model_request", "digest": digest, "request": payload(journal, request)})
        }
        Crossing::ModelResponse {
            ok,
            payload: answer,
            prompt_tokens,
            completion_tokens,
            model_ms,
        } => json!({
            "kind": "model_response", "ok": ok, "answer": payload(journal, answer),
            "usage": {"input_tokens": prompt_tokens, "output_tokens": completion_tokens, "model_ms": model_ms},
        }),
    }
}
