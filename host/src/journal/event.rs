//! What the journal records: the events of a run and the boundary crossings inside a step, plus
//! their versioned binary encoding. Kept apart from storage so the scheduler and replay can match
//! on events without touching sled.

use serde::{Deserialize, Serialize};

/// First byte of every stored event; bump when `Event` changes. Version 3 appended the model
/// crossings (`Crossing::ModelRequest`, `Crossing::ModelResponse`) after every version-2
/// variant, so a version-2 record decodes unchanged with this build's types.
pub const FORMAT_VERSION: u8 = 3;

/// Older format versions this build still reads (their encoding is a prefix of the current one).
pub const READABLE_VERSIONS: &[u8] = &[2, FORMAT_VERSION];

/// Payloads at most this long are stored inside the event; longer ones go to the blob tree once.
pub const INLINE_LIMIT: usize = 256;

/// A payload kept inline (small) or by its sha256 in the content-addressed blob tree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PayloadRef {
    Inline(Vec<u8>),
    Blob([u8; 32]),
}

/// How a run stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RunStatus {
    Running,
    Succeeded,
    Failed,
    Cancelled,
    /// Paused before a step whose node needs approval (`approval: required`); not finished.
    Waiting,
}

impl RunStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Running => "running",
            RunStatus::Succeeded => "succeeded",
            RunStatus::Failed => "failed",
            RunStatus::Cancelled => "cancelled",
            RunStatus::Waiting => "waiting",
        }
    }

    /// Succeeded, failed or cancelled: nothing more will happen to the run.
    pub fn is_finished(self) -> bool {
        !matches!(self, RunStatus::Running | RunStatus::Waiting)
    }
}

impl std::fmt::Display for RunStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A component as a run pinned it: the exact bytes and manifest it executes, so a redeploy of
/// the tool never changes a run in flight.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PinnedComponent {
    /// The component's name (what graph nodes reference).
    pub name: String,
    /// sha256 of the component bytes, hex.
    pub digest: String,
    /// The component bytes (a blob, stored once however many runs pin it).
    pub wasm: PayloadRef,
    /// The capability manifest's YAML text.
    pub manifest: PayloadRef,
}

/// One entry of a run's append-only log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Event {
    /// Pins what the run executes: a redeploy never changes a run in flight.
    RunCreated {
        graph_name: String,
        /// sha256 of the graph's canonical JSON, hex.
        graph_digest: String,
        /// The graph's canonical JSON.
        graph: PayloadRef,
        components: Vec<PinnedComponent>,
        input: PayloadRef,
    },
    /// A node was activated: it will run as `step` (`<node>#<iteration>`) with `input`.
    StepScheduled {
        step: String,
        node: String,
        iteration: u32,
        input: PayloadRef,
    },
    StepStarted {
        step: String,
        attempt: u32,
    },
    /// Durable before any successor starts.
    StepCompleted {
        step: String,
        attempt: u32,
        output: PayloadRef,
    },
    /// An attempt failed; `retry_in_ms` is set when another attempt follows after that delay.
    StepFailed {
        step: String,
        attempt: u32,
        /// The error's stable kind (`timeout`, `tool_failed`, `outcome_unknown`, ...).
        kind: String,
        message: String,
        retry_in_ms: Option<u64>,
    },
    /// Something a step's guest saw cross the host boundary, in the order it crossed.
    Crossing {
        step: String,
        attempt: u32,
        crossing: Crossing,
    },
    RunFinished {
        status: RunStatus,
        output: Option<PayloadRef>,
        error: Option<String>,
    },
    /// The step's node needs approval: the run waits (status `waiting`) before it executes.
    /// Appended after every version-2 variant.
    StepAwaitingApproval {
        step: String,
        input: PayloadRef,
    },
    /// Someone approved or rejected a step that was awaiting approval.
    StepApproval {
        step: String,
        approved: bool,
        comment: Option<String>,
    },
}

/// One boundary crossing inside a step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Crossing {
    ToolRequest {
        tool: String,
        input: PayloadRef,
    },
    ToolResult {
        ok: bool,
        output: PayloadRef,
    },
    /// Written before the request leaves the host, so a crash between intent and response is
    /// visible on resume.
    HttpIntent {
        method: String,
        uri: String,
        idempotency_key: String,
    },
    HttpResponse {
        status: u16,
        headers: Vec<(String, Vec<u8>)>,
        body: PayloadRef,
    },
    /// The request failed without a response (refused, timed out, reset).
    HttpFailed {
        message: String,
    },
    /// Wall-clock read handed to the guest (seconds and nanoseconds since the Unix epoch).
    WallClock {
        seconds: u64,
        nanoseconds: u32,
    },
    /// Monotonic clock read handed to the guest, in nanoseconds.
    MonotonicClock {
        nanoseconds: u64,
    },
    Random {
        bytes: Vec<u8>,
    },
    /// A capability the host refused.
    Denial {
        capability: String,
        target: String,
    },
    /// A model call an agent made, as the guest asked for it (alias resolved, before the host
    /// capped `max_tokens` to the budget left). Appended after every version-2 variant.
    ModelRequest {
        /// sha256 of `request`, hex: a resumed guest asking for something else diverges.
        digest: String,
        /// The request's JSON (`model::ChatRequest`).
        request: PayloadRef,
    },
    /// The answer to the preceding `ModelRequest`: `ok` with a `model::ChatResponse` JSON, or a
    /// `model::ModelError` JSON. Usage and model time are kept beside it for budgets and reports.
    ModelResponse {
        ok: bool,
        payload: PayloadRef,
        prompt_tokens: u32,
        completion_tokens: u32,
        /// Time the provider took, in milliseconds (0 for a refusal by the host).
        model_ms: u64,
    },
}

impl Event {
    /// The stored form: format version, the append time (ms since the Unix epoch, big-endian),
    /// then the postcard-encoded event.
    pub fn encode(&self, at_ms: u64) -> Vec<u8> {
        let mut out = vec![FORMAT_VERSION];
        out.extend_from_slice(&at_ms.to_be_bytes());
        // Serialising plain enums of strings, integers and byte vectors into a Vec cannot fail.
        out.extend(postcard::to_stdvec(self).expect("postcard encodes journal events"));
        out
    }

    /// Decodes one stored record into (append time, event); the error says what was wrong, the
    /// caller adds where.
    pub fn decode(bytes: &[u8]) -> Result<(u64, Event), String> {
        match bytes.split_first() {
            None => Err("empty record".into()),
            Some((v, rest)) if READABLE_VERSIONS.contains(v) => {
                let (at, body) = rest
                    .split_first_chunk::<8>()
                    .ok_or("record shorter than its header")?;
                match postcard::take_from_bytes::<Event>(body) {
                    Ok((event, [])) => Ok((u64::from_be_bytes(*at), event)),
                    Ok((_, rest)) => Err(format!("{} trailing bytes after the event", rest.len())),
                    Err(e) => Err(format!("undecodable event: {e}")),
                }
            }
            Some((v, _)) => Err(format!(
                "format version {v}, this build reads version {FORMAT_VERSION}"
            )),
        }
    }

    /// The payloads this event refers to (for garbage collection).
    pub fn blobs(&self) -> Vec<[u8; 32]> {
        let refs: Vec<&PayloadRef> = match self {
            Event::RunCreated {
                graph,
                components,
                input,
                ..
            } => {
                let mut v = vec![graph, input];
                for c in components {
                    v.push(&c.wasm);
                    v.push(&c.manifest);
                }
                v
            }
            Event::StepScheduled { input, .. } => vec![input],
            Event::StepCompleted { output, .. } => vec![output],
            Event::StepAwaitingApproval { input, .. } => vec![input],
            Event::RunFinished { output, .. } => output.iter().collect(),
            Event::Crossing { crossing, .. } => match crossing {
                Crossing::ToolRequest { input, .. } => vec![input],
                Crossing::ToolResult { output, .. } => vec![output],
                Crossing::HttpResponse { body, .. } => vec![body],
                Crossing::ModelRequest { request, .. } => vec![request],
                Crossing::ModelResponse { payload, .. } => vec![payload],
                _ => vec![],
            },
            _ => vec![],
        };
        refs.into_iter()
            .filter_map(|r| match r {
                PayloadRef::Blob(d) => Some(*d),
                PayloadRef::Inline(_) => None,
            })
            .collect()
    }
}
