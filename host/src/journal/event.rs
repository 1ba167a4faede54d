//! What the journal records: the events of a run and the boundary crossings inside a step, plus
//! their versioned binary encoding. Kept apart from storage so the scheduler and replay can match
//! on events without touching sled.

use serde::{Deserialize, Serialize};

/// First byte of every stored event; bump when `Event` changes incompatibly.
pub const FORMAT_VERSION: u8 = 1;

/// Payloads at most this long are stored inside the event; longer ones go to the blob tree once.
pub const INLINE_LIMIT: usize = 256;

/// A payload kept inline (small) or by its sha256 in the content-addressed blob tree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PayloadRef {
    Inline(Vec<u8>),
    Blob([u8; 32]),
}

/// How a finished run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RunStatus {
    Running,
    Succeeded,
    Failed,
}

/// One entry of a run's append-only log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Event {
    /// Pins what the run executes: a redeploy never changes a run in flight.
    RunCreated {
        graph_name: String,
        graph_digest: String,
        /// (node or component name, sha256 of the component) pairs.
        component_digests: Vec<(String, String)>,
        input: PayloadRef,
    },
    StepScheduled {
        step: String,
        attempt: u32,
    },
    StepStarted {
        step: String,
        attempt: u32,
    },
    StepCompleted {
        step: String,
        attempt: u32,
        output: PayloadRef,
    },
    StepFailed {
        step: String,
        attempt: u32,
        reason: String,
    },
    /// A change to the run state (a delta, never a snapshot): `key` now holds `value`.
    StateDelta {
        key: String,
        value: PayloadRef,
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
}

impl Event {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![FORMAT_VERSION];
        // Serialising plain enums of strings, integers and byte vectors into a Vec cannot fail.
        out.extend(postcard::to_stdvec(self).expect("postcard encodes journal events"));
        out
    }

    /// Decodes one stored record; the error says what was wrong, the caller adds where.
    pub fn decode(bytes: &[u8]) -> Result<Event, String> {
        match bytes.split_first() {
            None => Err("empty record".into()),
            Some((&FORMAT_VERSION, body)) => match postcard::take_from_bytes::<Event>(body) {
                Ok((event, [])) => Ok(event),
                Ok((_, rest)) => Err(format!("{} trailing bytes after the event", rest.len())),
                Err(e) => Err(format!("undecodable event: {e}")),
            },
            Some((v, _)) => Err(format!(
                "format version {v}, this build reads version {FORMAT_VERSION}"
            )),
        }
    }

    /// The payloads this event refers to (for garbage collection).
    pub fn blobs(&self) -> Vec<[u8; 32]> {
        let refs: Vec<&PayloadRef> = match self {
            Event::RunCreated { input, .. } => vec![input],
            Event::StepCompleted { output, .. } => vec![output],
            Event::StateDelta { value, .. } => vec![value],
            Event::RunFinished { output, .. } => output.iter().collect(),
            Event::Crossing { crossing, .. } => match crossing {
                Crossing::ToolRequest { input, .. } => vec![input],
                Crossing::ToolResult { output, .. } => vec![output],
                Crossing::HttpResponse { body, .. } => vec![body],
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
