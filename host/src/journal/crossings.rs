//! The recording seam of one step: the sandbox asks it for clock reads, random bytes and outbound
//! HTTP. Recording, it serves live values and journals them; replaying, it serves the journaled
//! values in order and goes live at the first crossing that has no recorded result.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sha2::{Digest, Sha256};

use super::{Crossing, Durability, Event, Journal, JournalError, PayloadRef, RunId};

/// Methods that may be sent again without changing the outcome.
pub fn is_idempotent(method: &str) -> bool {
    matches!(
        method.to_ascii_uppercase().as_str(),
        "GET" | "HEAD" | "PUT" | "DELETE"
    )
}

/// What the egress hook does with an outbound request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HttpPlan {
    /// Send it live with this `Idempotency-Key`, then call `http_result`.
    Send { idempotency_key: String },
    /// Serve this recorded response (status, headers, body) without touching the network.
    Replay {
        status: u16,
        headers: Vec<(String, Vec<u8>)>,
        body: Vec<u8>,
    },
    /// The recorded request failed without a response; fail it the same way.
    ReplayFailure { message: String },
}

/// Why a crossing could not be served.
#[derive(Debug, thiserror::Error)]
pub enum CrossingError {
    #[error(
        "outcome unknown: run {run} step '{step}' sent {method} {uri} (Idempotency-Key {idempotency_key}) \
         but the journal has no result, and the request is not idempotent, so it is not sent again; \
         check the remote side and decide whether to retry the step"
    )]
    OutcomeUnknown {
        run: RunId,
        step: String,
        method: String,
        uri: String,
        idempotency_key: String,
    },
    #[error(
        "replay diverged: run {run} step '{step}' crossing {index} was recorded as {recorded}, but the guest now asks for {asked}"
    )]
    Divergence {
        run: RunId,
        step: String,
        index: u64,
        recorded: String,
        asked: String,
    },
    #[error(transparent)]
    Journal(#[from] JournalError),
}

struct Inner {
    journal: Arc<Journal>,
    run: RunId,
    step: String,
    attempt: u32,
    /// Recorded crossings not yet served; empty once live.
    recorded: VecDeque<Crossing>,
    /// Crossings served so far (recorded or live); numbers idempotency keys.
    index: u64,
    /// Whether the remote honours `Idempotency-Key`, making a resend of any method safe.
    key_honoured: bool,
    /// The first journal failure or divergence seen where it cannot be returned to the guest
    /// (a clock read) or must fail the whole step (outcome unknown inside the HTTP hook).
    problem: Option<CrossingError>,
    /// Last monotonic value served, so going live never moves the guest's clock backwards.
    last_monotonic: u64,
    /// Offline replay: never write to the journal or the network; a crossing beyond the
    /// recording is a divergence.
    offline: bool,
}

/// The crossings of one step attempt. Cheap to clone; clones share state (the clocks, the RNG
/// and the egress hook of one store all hold one).
#[derive(Clone)]
pub struct StepCrossings {
    inner: Arc<Mutex<Inner>>,
}

impl StepCrossings {
    /// Records a new step attempt from scratch.
    pub fn record(journal: Arc<Journal>, run: RunId, step: &str, attempt: u32) -> StepCrossings {
        StepCrossings::with_recorded(journal, run, step, attempt, VecDeque::new())
    }

    /// Re-executes an interrupted (or finished, for replay) step attempt: serves the crossings
    /// the journal holds for it in order, then records live ones under the same attempt.
    pub fn replay(
        journal: Arc<Journal>,
        run: RunId,
        step: &str,
        attempt: u32,
    ) -> Result<StepCrossings, JournalError> {
        let recorded = journal
            .events(run)?
            .into_iter()
            .filter_map(|r| match r.event {
                Event::Crossing {
                    step: s,
                    attempt: a,
                    crossing,
                } if s == step && a == attempt => Some(crossing),
                _ => None,
            })
            .collect();
        Ok(StepCrossings::with_recorded(
            journal, run, step, attempt, recorded,
        ))
    }

    /// Re-executes a finished step attempt offline (`sandgraph replay`): only its journaled
    /// crossings are served, nothing is appended, and a crossing the recording does not hold
    /// (a request, a clock read, random bytes) is a divergence instead of going live.
    pub fn replay_offline(
        journal: Arc<Journal>,
        run: RunId,
        step: &str,
        attempt: u32,
    ) -> Result<StepCrossings, JournalError> {
        let c = StepCrossings::replay(journal, run, step, attempt)?;
        c.lock().offline = true;
        Ok(c)
    }

    fn with_recorded(
        journal: Arc<Journal>,
        run: RunId,
        step: &str,
        attempt: u32,
        recorded: VecDeque<Crossing>,
    ) -> StepCrossings {
        StepCrossings {
            inner: Arc::new(Mutex::new(Inner {
                journal,
                run,
                step: step.to_owned(),
                attempt,
                recorded,
                index: 0,
                key_honoured: false,
                problem: None,
                last_monotonic: 0,
                offline: false,
            })),
        }
    }

    /// Declares that the remote deduplicates on `Idempotency-Key`, so an interrupted request of
    /// any method may be sent again.
    pub fn set_idempotency_key_honoured(&self, honoured: bool) {
        self.lock().key_honoured = honoured;
    }

    /// Whether the remote deduplicates requests by their `Idempotency-Key`.
    pub fn idempotency_key_honoured(&self) -> bool {
        self.lock().key_honoured
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Recorded crossings not yet served (0 once the step has gone live).
    pub fn pending_recorded(&self) -> usize {
        self.lock().recorded.len()
    }

    /// The first journal failure, replay divergence or unknown outcome met where it could not be
    /// returned directly; the step must be failed with it. Taken once.
    pub fn take_problem(&self) -> Option<CrossingError> {
        self.lock().problem.take()
    }

    /// Keeps `e` (if it is the first) for `take_problem`.
    pub fn note_problem(&self, e: CrossingError) {
        self.lock().problem.get_or_insert(e);
    }

    /// A wall-clock read: the recorded value, or `live()` journaled.
    pub fn wall_clock(&self, live: impl FnOnce() -> Duration) -> Duration {
        let mut g = self.lock();
        match g.take_recorded("a wall-clock read", |c| match c {
            Crossing::WallClock {
                seconds,
                nanoseconds,
            } => Some(Duration::new(*seconds, *nanoseconds)),
            _ => None,
        }) {
            Some(d) => d,
            None => {
                let d = live();
                g.record_infallible(Crossing::WallClock {
                    seconds: d.as_secs(),
                    nanoseconds: d.subsec_nanos(),
                });
                d
            }
        }
    }

    /// A monotonic-clock read in nanoseconds.
    pub fn monotonic_clock(&self, live: impl FnOnce() -> u64) -> u64 {
        let mut g = self.lock();
        match g.take_recorded("a monotonic-clock read", |c| match c {
            Crossing::MonotonicClock { nanoseconds } => Some(*nanoseconds),
            _ => None,
        }) {
            Some(n) => {
                g.last_monotonic = g.last_monotonic.max(n);
                n
            }
            None => {
                let n = live().max(g.last_monotonic);
                g.last_monotonic = n;
                g.record_infallible(Crossing::MonotonicClock { nanoseconds: n });
                n
            }
        }
    }

    /// Fills `buf` with random bytes: recorded ones of the same length, or `live` journaled.
    pub fn random(&self, buf: &mut [u8], live: impl FnOnce(&mut [u8])) {
        let mut g = self.lock();
        let len = buf.len();
        match g.take_recorded(&format!("{len} random bytes"), |c| match c {
            Crossing::Random { bytes } if bytes.len() == len => Some(bytes.clone()),
            _ => None,
        }) {
            Some(bytes) => buf.copy_from_slice(&bytes),
            None => {
                live(buf);
                g.record_infallible(Crossing::Random {
                    bytes: buf.to_vec(),
                });
            }
        }
    }

    /// Journals a denial by the host (never replayed: the policy decides again).
    pub fn denial(&self, capability: &str, target: &str) -> Result<(), CrossingError> {
        let mut g = self.lock();
        if g.offline {
            if let Some(Crossing::Denial { .. }) = g.recorded.front() {
                g.recorded.pop_front();
                g.index += 1;
            }
            return Ok(());
        }
        if g.recorded.is_empty() {
            g.append(
                Crossing::Denial {
                    capability: capability.to_owned(),
                    target: target.to_owned(),
                },
                Durability::Buffered,
            )?;
        } else if let Some(Crossing::Denial { .. }) = g.recorded.front() {
            g.recorded.pop_front();
            g.index += 1;
        }
        Ok(())
    }

    /// Called before an outbound request leaves the host.
    pub fn http_request(&self, method: &str, uri: &str) -> Result<HttpPlan, CrossingError> {
        let mut g = self.lock();
        let key = g.idempotency_key();
        if let Some(front) = g.recorded.pop_front() {
            match front {
                Crossing::HttpIntent {
                    method: m, uri: u, ..
                } if m == method && u == uri => {
                    g.index += 1;
                    match g.recorded.pop_front() {
                        Some(Crossing::HttpResponse {
                            status,
                            headers,
                            body,
                        }) => {
                            g.index += 1;
                            let body = g.journal.payload(&body)?;
                            return Ok(HttpPlan::Replay {
                                status,
                                headers,
                                body,
                            });
                        }
                        Some(Crossing::HttpFailed { message }) => {
                            g.index += 1;
                            return Ok(HttpPlan::ReplayFailure { message });
                        }
                        Some(other) => {
                            return Err(g.divergence(
                                describe(&other),
                                format!("the result of {method} {uri}"),
                            ));
                        }
                        None if g.offline => {
                            return Err(g.divergence(
                                "no result".into(),
                                format!("the result of {method} {uri}"),
                            ));
                        }
                        None if is_idempotent(method) || g.key_honoured => {
                            // Intent recorded, result lost: safe to send again with the same key.
                            return Ok(HttpPlan::Send {
                                idempotency_key: key,
                            });
                        }
                        None => {
                            return Err(CrossingError::OutcomeUnknown {
                                run: g.run,
                                step: g.step.clone(),
                                method: method.to_owned(),
                                uri: uri.to_owned(),
                                idempotency_key: key,
                            });
                        }
                    }
                }
                other => {
                    return Err(g.divergence(describe(&other), format!("{method} {uri}")));
                }
            }
        }
        if g.offline {
            return Err(g.divergence("the end of the recording".into(), format!("{method} {uri}")));
        }
        // Live: the intent is on disk before the request can reach the remote.
        g.append(
            Crossing::HttpIntent {
                method: method.to_owned(),
                uri: uri.to_owned(),
                idempotency_key: key.clone(),
            },
            Durability::Durable,
        )?;
        Ok(HttpPlan::Send {
            idempotency_key: key,
        })
    }

    /// Journals the response of a request that `http_request` said to send.
    pub fn http_response(
        &self,
        status: u16,
        headers: Vec<(String, Vec<u8>)>,
        body: &[u8],
    ) -> Result<(), CrossingError> {
        let mut g = self.lock();
        let body = g.journal.put_payload(body)?;
        g.append(
            Crossing::HttpResponse {
                status,
                headers,
                body,
            },
            Durability::Durable,
        )?;
        Ok(())
    }

    /// Journals that a request that `http_request` said to send got no response.
    pub fn http_failed(&self, message: &str) -> Result<(), CrossingError> {
        let mut g = self.lock();
        g.append(
            Crossing::HttpFailed {
                message: message.to_owned(),
            },
            Durability::Durable,
        )?;
        Ok(())
    }

    /// Called before an agent's nested tool call runs. Recorded with its result: the result is
    /// served and the tool's own crossings (recorded between request and result) are skipped,
    /// so the tool does not run again. Recorded without a result (the host died during it): the
    /// tool runs again and its own recorded crossings are served to it first, so its HTTP
    /// requests keep the Idempotency-Key / outcome-unknown rules. Not recorded: journaled, run live.
    pub fn nested_tool(&self, tool: &str, input: &[u8]) -> Result<NestedToolPlan, CrossingError> {
        let mut g = self.lock();
        let asked = format!("a call of tool '{tool}'");
        match g.recorded.front() {
            Some(Crossing::ToolRequest {
                tool: t,
                input: recorded_input,
            }) if t == tool => {
                let recorded_input = recorded_input.clone();
                if g.journal.payload(&recorded_input)? != input {
                    return Err(g.divergence(
                        format!("a call of tool '{tool}' with another input"),
                        format!("{asked} with this input"),
                    ));
                }
                g.recorded.pop_front();
                g.index += 1;
                let result_at = g
                    .recorded
                    .iter()
                    .position(|c| matches!(c, Crossing::ToolResult { .. }));
                match result_at {
                    Some(at) => {
                        let mut skipped: Vec<Crossing> = g.recorded.drain(..=at).collect();
                        g.index += skipped.len() as u64;
                        let Some(Crossing::ToolResult { ok, output }) = skipped.pop() else {
                            unreachable!("position() found a ToolResult at the end");
                        };
                        let output = g.journal.payload(&output)?;
                        Ok(NestedToolPlan::Replay { ok, output })
                    }
                    None => Ok(NestedToolPlan::Run),
                }
            }
            Some(other) => Err(g.divergence(describe(other), asked)),
            None if g.offline => Err(g.divergence("the end of the recording".into(), asked)),
            None => {
                let input: PayloadRef = g.journal.put_payload(input)?;
                g.append(
                    Crossing::ToolRequest {
                        tool: tool.to_owned(),
                        input,
                    },
                    Durability::Buffered,
                )?;
                Ok(NestedToolPlan::Run)
            }
        }
    }

    /// Journals the result of a nested tool call that `nested_tool` said to run.
    pub fn tool_result(&self, ok: bool, output: &[u8]) -> Result<(), CrossingError> {
        let mut g = self.lock();
        if g.offline {
            // An offline replay re-ran a call the host died during: nothing to compare with.
            return Err(g.divergence("no result".into(), "a tool result".into()));
        }
        let output = g.journal.put_payload(output)?;
        g.append(Crossing::ToolResult { ok, output }, Durability::Durable)?;
        Ok(())
    }

    /// Called before an agent's model call goes to a provider. `request` is the request's
    /// JSON as the guest made it. A recorded answer is served (a completed model call is never
    /// made twice); a recorded request without an answer is asked again (a model call has no
    /// side effect); otherwise the request is journaled and goes live.
    pub fn model_request(&self, request: &[u8]) -> Result<ModelPlan, CrossingError> {
        let mut g = self.lock();
        let digest = hex::encode(Sha256::digest(request));
        let asked = format!("a model call (request {})", &digest[..12]);
        match g.recorded.front() {
            Some(Crossing::ModelRequest { digest: d, .. }) if *d == digest => {
                g.recorded.pop_front();
                g.index += 1;
                match g.recorded.front() {
                    Some(Crossing::ModelResponse {
                        ok,
                        payload,
                        prompt_tokens,
                        completion_tokens,
                        model_ms,
                    }) => {
                        let answer = RecordedAnswer {
                            ok: *ok,
                            payload: g.journal.payload(payload)?,
                            prompt_tokens: *prompt_tokens,
                            completion_tokens: *completion_tokens,
                            model_ms: *model_ms,
                        };
                        g.recorded.pop_front();
                        g.index += 1;
                        Ok(ModelPlan::Replay(answer))
                    }
                    None if g.offline => {
                        Err(g.divergence("no answer".into(), format!("the answer to {asked}")))
                    }
                    None => Ok(ModelPlan::Live),
                    Some(other) => {
                        Err(g.divergence(describe(other), format!("the answer to {asked}")))
                    }
                }
            }
            Some(other) => Err(g.divergence(describe(other), asked)),
            None if g.offline => Err(g.divergence("the end of the recording".into(), asked)),
            None => {
                let request = g.journal.put_payload(request)?;
                g.append(
                    Crossing::ModelRequest { digest, request },
                    Durability::Buffered,
                )?;
                Ok(ModelPlan::Live)
            }
        }
    }

    /// Journals the answer of a model call that `model_request` said to make, durably before
    /// the guest sees it.
    pub fn model_response(&self, answer: &RecordedAnswer) -> Result<(), CrossingError> {
        let mut g = self.lock();
        let payload = g.journal.put_payload(&answer.payload)?;
        g.append(
            Crossing::ModelResponse {
                ok: answer.ok,
                payload,
                prompt_tokens: answer.prompt_tokens,
                completion_tokens: answer.completion_tokens,
                model_ms: answer.model_ms,
            },
            Durability::Durable,
        )?;
        Ok(())
    }

    /// Whether this step replays offline (no provider, no network).
    pub fn is_offline(&self) -> bool {
        self.lock().offline
    }
}

/// What the agent host does with a nested tool call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NestedToolPlan {
    /// Run the tool (its own crossings served first if any are recorded), then `tool_result`.
    Run,
    /// Serve this recorded result: `ok` with the output, or a `CallError` JSON.
    Replay { ok: bool, output: Vec<u8> },
}

/// A model answer as journaled: `ok` with a `ChatResponse` JSON, or a `ModelError` JSON.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedAnswer {
    pub ok: bool,
    pub payload: Vec<u8>,
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    pub model_ms: u64,
}

/// What the agent host does with a model call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelPlan {
    /// Ask the provider, then `model_response`.
    Live,
    /// Serve the recorded answer without asking any provider.
    Replay(RecordedAnswer),
}

impl Inner {
    /// Serves the next recorded crossing if `pick` accepts it. A mismatch is a divergence: it is
    /// noted, the rest of the recording dropped, and the step continues live.
    fn take_recorded<T>(
        &mut self,
        asked: &str,
        pick: impl Fn(&Crossing) -> Option<T>,
    ) -> Option<T> {
        let front = self.recorded.front()?;
        match pick(front) {
            Some(v) => {
                self.recorded.pop_front();
                self.index += 1;
                Some(v)
            }
            None => {
                let recorded = describe(front);
                let e = self.divergence(recorded, asked.to_owned());
                self.problem.get_or_insert(e);
                self.recorded.clear();
                None
            }
        }
    }

    fn divergence(&self, recorded: String, asked: String) -> CrossingError {
        CrossingError::Divergence {
            run: self.run,
            step: self.step.clone(),
            index: self.index,
            recorded,
            asked,
        }
    }

    fn append(&mut self, crossing: Crossing, durability: Durability) -> Result<(), CrossingError> {
        if self.offline {
            return Err(self.divergence("the end of the recording".into(), describe(&crossing)));
        }
        let event = Event::Crossing {
            step: self.step.clone(),
            attempt: self.attempt,
            crossing,
        };
        match durability {
            Durability::Buffered => self.journal.append(self.run, &event, durability)?,
            // A durable append waits for a flush (fsync). Crossings are served from inside the
            // guest's async call, so on a multi-threaded runtime the wait tells tokio to move
            // other tasks off this worker first.
            Durability::Durable => blocking(|| self.journal.append(self.run, &event, durability))?,
        };
        self.index += 1;
        Ok(())
    }

    fn record_infallible(&mut self, crossing: Crossing) {
        if let Err(e) = self.append(crossing, Durability::Buffered) {
            self.problem.get_or_insert(e);
        }
    }

    /// Derived from run, step, attempt and the crossing's place, so a resend after a crash
    /// carries the same key as the lost original.
    fn idempotency_key(&self) -> String {
        let mut h = Sha256::new();
        h.update(self.run.0);
        h.update(self.step.as_bytes());
        h.update([0]);
        h.update(self.attempt.to_be_bytes());
        h.update(self.index.to_be_bytes());
        hex::encode(&h.finalize()[..16])
    }
}

/// Runs a blocking closure, letting a multi-threaded tokio runtime hand this worker's other
/// tasks to another thread meanwhile; elsewhere (no runtime, current-thread) it just runs it.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

fn describe(c: &Crossing) -> String {
    match c {
        Crossing::ToolRequest { tool, .. } => format!("a call of tool '{tool}'"),
        Crossing::ToolResult { .. } => "a tool result".into(),
        Crossing::HttpIntent { method, uri, .. } => format!("{method} {uri}"),
        Crossing::HttpResponse { status, .. } => format!("an HTTP response {status}"),
        Crossing::HttpFailed { .. } => "a failed HTTP request".into(),
        Crossing::WallClock { .. } => "a wall-clock read".into(),
        Crossing::MonotonicClock { .. } => "a monotonic-clock read".into(),
        Crossing::Random { bytes } => format!("{} random bytes", bytes.len()),
        Crossing::Denial {
            capability, target, ..
        } => format!("a denial of {capability} {target}"),
        Crossing::ModelRequest { digest, .. } => {
            format!("a model call (request {})", &digest[..digest.len().min(12)])
        }
        Crossing::ModelResponse { .. } => "a model answer".into(),
    }
}
