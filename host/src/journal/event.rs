//! What the journal records: the events of a run and the boundary crossings inside a step, plus
//! their versioned binary encoding. Kept apart from storage so the scheduler and replay can match
//! on events without touching sled.

use serde::{Deserialize, Serialize};

/// First byte of every stored event: the oldest format that can express it, so journals
/// without workspace snapshots stay readable by version-2 builds. Bump when `Event` changes
/// incompatibly; a new variant goes at the end of its enum (postcard numbers variants in order)
/// under a new version, and every older version keeps decoding.
pub const FORMAT_VERSION: u8 = 5;

/// The oldest format version this build still reads (version 3 added `WorkspaceSnapshot`,
/// version 4 the model crossings and the approval events, version 5 the audit records).
pub const OLDEST_FORMAT_VERSION: u8 = 2;

/// Payloads at most this long are stored inside the event; longer ones go to the blob tree once.
pub const INLINE_LIMIT: usize = 256;

/// A step's audit record (`StepAudit`) stays inside its event up to this length. Each record
/// is unique to its attempt (durations, peaks), so the blob tree's sharing never pays for it,
/// and a tool call's record (about 500 bytes) would otherwise cost a hash, a lookup and a
/// write of its own on every step. An agent step with many nested calls still goes to a blob.
pub const AUDIT_INLINE_LIMIT: usize = 4096;

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
    /// The workspace of a step attempt, before its guest ran or after it returned (format 3).
    /// Replay lays the last `Before` out in a private directory and compares the tree it leaves
    /// with the last `After` (a resumed attempt snapshots again: it sees the tree as the crash
    /// left it).
    WorkspaceSnapshot {
        step: String,
        attempt: u32,
        moment: SnapshotMoment,
        /// Granted read-write (`rw`); otherwise read-only.
        writable: bool,
        snapshot: Snapshot,
    },
    /// The step's node needs approval: the run waits (status `waiting`) before it executes.
    /// (format 4)
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
    /// What the sandbox recorded about a step attempt's calls: the step's own call first, then
    /// the tools an agent step called, each a `sandbox::outcome::AuditRecord` (egress attempts
    /// with their verdicts, refusals, memory peak, duration), as one JSON array. Appended
    /// buffered, after the call returns and before the attempt's completion or failure. Format 5.
    StepAudit {
        step: String,
        attempt: u32,
        calls: PayloadRef,
    },
}

/// When a workspace snapshot was taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SnapshotMoment {
    /// Before the guest ran: what replay gives the step.
    Before,
    /// After the guest returned (`rw` only): what replay compares the replayed tree with.
    After,
}

/// A workspace as journaled.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Snapshot {
    /// Its manifest (`journal::workspace::Manifest`: path, kind, size, sha256, time of every
    /// entry; file bytes in the blob store, once per content).
    Taken {
        manifest: PayloadRef,
        entries: u64,
        bytes: u64,
    },
    /// Not taken, and why (over the size or entry cap, a special file, an unreadable entry):
    /// replay of the step says it cannot be replayed.
    Skipped { reason: String },
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
    /// capped `max_tokens` to the budget left). Format 4.
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
        let mut out = vec![self.format_version()];
        out.extend_from_slice(&at_ms.to_be_bytes());
        // Serialising plain enums of strings, integers and byte vectors into a Vec cannot fail.
        out.extend(postcard::to_stdvec(self).expect("postcard encodes journal events"));
        out
    }

    /// The oldest format version that can express this event.
    pub fn format_version(&self) -> u8 {
        match self {
            Event::StepAudit { .. } => 5,
            Event::StepAwaitingApproval { .. }
            | Event::StepApproval { .. }
            | Event::Crossing {
                crossing: Crossing::ModelRequest { .. } | Crossing::ModelResponse { .. },
                ..
            } => 4,
            Event::WorkspaceSnapshot { .. } => 3,
            _ => 2,
        }
    }

    /// Decodes one stored record into (append time, event); the error says what was wrong, the
    /// caller adds where.
    pub fn decode(bytes: &[u8]) -> Result<(u64, Event), String> {
        match bytes.split_first() {
            None => Err("empty record".into()),
            Some((&v, rest)) if (OLDEST_FORMAT_VERSION..=FORMAT_VERSION).contains(&v) => {
                let (at, body) = rest
                    .split_first_chunk::<8>()
                    .ok_or("record shorter than its header")?;
                match postcard::take_from_bytes::<Event>(body) {
                    Ok((event, [])) if event.format_version() > v => Err(format!(
                        "a format {v} record cannot hold a format {} event",
                        event.format_version()
                    )),
                    Ok((event, [])) => Ok((u64::from_be_bytes(*at), event)),
                    Ok((_, rest)) => Err(format!("{} trailing bytes after the event", rest.len())),
                    Err(e) => Err(format!("undecodable event: {e}")),
                }
            }
            Some((v, _)) => Err(format!(
                "format version {v}, this build reads versions {OLDEST_FORMAT_VERSION} to {FORMAT_VERSION}"
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
            Event::StepAudit { calls, .. } => vec![calls],
            Event::RunFinished { output, .. } => output.iter().collect(),
            // The files a manifest names are found through it (`Journal::gc` reads it).
            Event::WorkspaceSnapshot {
                snapshot: Snapshot::Taken { manifest, .. },
                ..
            } => vec![manifest],
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Records as a format-2 build wrote them (before workspace snapshots) still decode.
    #[test]
    fn format_2_records_still_decode() {
        // StepStarted { step: "a#1", attempt: 2 } appended at 1_700_000_000_000 ms.
        let started = [
            2, 0, 0, 1, 0x8b, 0xcf, 0xe5, 0x68, 0, 2, 3, b'a', b'#', b'1', 2,
        ];
        assert_eq!(
            Event::decode(&started),
            Ok((
                1_700_000_000_000,
                Event::StepStarted {
                    step: "a#1".into(),
                    attempt: 2
                }
            ))
        );
        // RunFinished { Succeeded, output: Some(Inline("{}")), error: None }.
        let finished = [2, 0, 0, 0, 0, 0, 0, 0, 9, 6, 1, 1, 0, 2, b'{', b'}', 0];
        assert_eq!(
            Event::decode(&finished),
            Ok((
                9,
                Event::RunFinished {
                    status: RunStatus::Succeeded,
                    output: Some(PayloadRef::Inline(b"{}".to_vec())),
                    error: None
                }
            ))
        );
    }

    #[test]
    fn only_workspace_snapshots_need_format_3() {
        let started = Event::StepStarted {
            step: "a#1".into(),
            attempt: 1,
        };
        assert_eq!(started.encode(5)[0], 2);
        let snapshot = Event::WorkspaceSnapshot {
            step: "a#1".into(),
            attempt: 1,
            moment: SnapshotMoment::Before,
            writable: false,
            snapshot: Snapshot::Skipped {
                reason: "not snapshotted".into(),
            },
        };
        let bytes = snapshot.encode(5);
        assert_eq!(bytes[0], 3);
        assert_eq!(Event::decode(&bytes), Ok((5, snapshot)));
        // A format-2 header on a format-3 event is corrupt, not silently accepted.
        let mut forged = bytes.clone();
        forged[0] = 2;
        assert_eq!(
            Event::decode(&forged),
            Err("a format 2 record cannot hold a format 3 event".into())
        );
        let unknown = FORMAT_VERSION + 1;
        assert_eq!(
            Event::decode(&[unknown, 0]),
            Err(format!(
                "format version {unknown}, this build reads versions 2 to {FORMAT_VERSION}"
            ))
        );
    }
}
