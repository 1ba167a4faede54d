//! What `sandgraph run` and `sandgraph resume` print on stderr while a run executes: one line
//! per step event, and for a finished step its time, its nested tool calls and its model usage
//! (calls, prompt and generated tokens, generation speed over the provider's time).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::graph::engine::{CallObserver, ModelObserver, Progress, TokenObserver};
use crate::journal::{Event, RunId};
use crate::sandbox::agent::ModelCallRecord;
use crate::sandbox::outcome::AuditRecord;

/// What one step attempt has done so far.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct StepTally {
    pub tool_calls: u32,
    pub model_calls: u32,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// Provider time of the model calls, in milliseconds.
    pub model_ms: u64,
}

impl StepTally {
    /// Counts a model call of the step.
    pub fn add_model_call(&mut self, call: &ModelCallRecord) {
        self.model_calls += 1;
        self.prompt_tokens += u64::from(call.prompt_tokens);
        self.completion_tokens += u64::from(call.completion_tokens);
        self.model_ms += call.model_time.as_millis() as u64;
    }

    /// Counts a tool call an agent step made (a tool node's own call is not counted).
    pub fn add_tool_call(&mut self, audit: &AuditRecord) {
        if audit.parent.is_some() {
            self.tool_calls += 1;
        }
    }

    /// `; 2 tool calls; model: 1 call, 412 prompt + 37 generated tokens, 21.4 tok/s`, or ""
    /// for a step that crossed into neither.
    pub fn describe(&self) -> String {
        let mut out = String::new();
        if self.tool_calls > 0 {
            out.push_str(&format!(
                "; {} tool call{}",
                self.tool_calls,
                plural(self.tool_calls)
            ));
        }
        if self.model_calls > 0 {
            out.push_str(&format!(
                "; model: {} call{}, {} prompt + {} generated tokens",
                self.model_calls,
                plural(self.model_calls),
                self.prompt_tokens,
                self.completion_tokens
            ));
            if self.model_ms > 0 {
                let rate = self.completion_tokens as f64 * 1000.0 / self.model_ms as f64;
                out.push_str(&format!(", {rate:.1} tok/s"));
            }
        }
        out
    }
}

fn plural(n: u32) -> &'static str {
    if n == 1 { "" } else { "s" }
}

/// A step attempt in flight: when it started, what it crossed, and on a terminal its
/// spinner with the text the model is streaming.
struct Running {
    started: Instant,
    tally: StepTally,
    bar: Option<ProgressBar>,
    streamed: String,
    pieces: u64,
}

impl Default for Running {
    fn default() -> Self {
        Running {
            started: Instant::now(),
            tally: StepTally::default(),
            bar: None,
            streamed: String::new(),
            pieces: 0,
        }
    }
}

type Steps = HashMap<(RunId, String), Running>;

/// Characters of streamed text a spinner shows (the end of it).
const TAIL: usize = 60;

/// The hooks a CLI engine reports through.
pub struct Reporter {
    /// One line per step event.
    pub progress: Progress,
    /// Tool calls of agent steps, for the step lines.
    pub calls: CallObserver,
    /// Model calls, for the step lines.
    pub models: ModelObserver,
    /// On a terminal: the model's text as it streams, into the step's spinner.
    pub tokens: Option<TokenObserver>,
}

/// The step printer, and on a terminal (`live`) the token observer that animates one spinner
/// per running step with the model's text as it streams. Without `live` it is one plain line
/// per event, fit for logs and pipes.
pub fn reporter(live: bool) -> Reporter {
    let steps: Arc<Mutex<Steps>> = Arc::default();
    let (steps_for_calls, steps_for_models) = (steps.clone(), steps.clone());
    let bars = live.then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr()));
    let style = ProgressStyle::with_template("{spinner} {prefix} {elapsed} {wide_msg}")
        .unwrap_or_else(|_| ProgressStyle::default_spinner());
    let progress: Progress = {
        let (steps, bars) = (steps.clone(), bars.clone());
        Arc::new(move |run, event| {
            let mut steps = steps.lock().unwrap_or_else(|p| p.into_inner());
            let text = line(&mut steps, run, event);
            let Some(bars) = &bars else {
                if let Some(text) = text {
                    eprintln!("{text}");
                }
                return;
            };
            if let Event::StepStarted { step, .. } = event
                && let Some(r) = steps.get_mut(&(run, step.clone()))
            {
                let bar = bars.add(ProgressBar::new_spinner());
                bar.set_style(style.clone());
                bar.set_prefix(format!("[{}] {step}", &run.to_string()[..8]));
                bar.enable_steady_tick(std::time::Duration::from_millis(120));
                r.bar = Some(bar);
            }
            if let Some(text) = text {
                // Above the spinners, so the finished lines read like the plain output.
                let _ = bars.println(text);
            }
        })
    };
    let tokens: Option<TokenObserver> = bars.map(|_| {
        Arc::new(move |run: RunId, step: &str, piece: &str| {
            let mut steps = steps.lock().unwrap_or_else(|p| p.into_inner());
            let Some(r) = steps.get_mut(&(run, step.to_owned())) else {
                return;
            };
            r.pieces += 1;
            r.streamed.push_str(piece);
            let excess = r.streamed.chars().count().saturating_sub(TAIL);
            if excess > 0 {
                let cut = r.streamed.char_indices().nth(excess).map_or(0, |(i, _)| i);
                r.streamed.drain(..cut);
            }
            if let Some(bar) = &r.bar {
                bar.set_message(format!(
                    "{} tokens: {}",
                    r.pieces,
                    r.streamed.replace(['\n', '\r', '\t'], " ")
                ));
            }
        }) as TokenObserver
    });
    let calls: CallObserver = {
        let steps = steps_for_calls;
        Arc::new(move |run, step, _attempt, audit| {
            let mut steps = steps.lock().unwrap_or_else(|p| p.into_inner());
            steps
                .entry((run, step.to_owned()))
                .or_default()
                .tally
                .add_tool_call(audit);
        })
    };
    let models: ModelObserver = {
        let steps = steps_for_models;
        Arc::new(move |run, step, _attempt, call| {
            let mut steps = steps.lock().unwrap_or_else(|p| p.into_inner());
            steps
                .entry((run, step.to_owned()))
                .or_default()
                .tally
                .add_model_call(call);
        })
    };
    Reporter {
        progress,
        calls,
        models,
        tokens,
    }
}

/// The line for `event`, keeping `steps` current (a finished step's spinner is cleared).
fn line(steps: &mut Steps, run: RunId, event: &Event) -> Option<String> {
    let short = &run.to_string()[..8];
    Some(match event {
        Event::RunCreated { graph_name, .. } => {
            format!("run {run}: graph '{graph_name}' started")
        }
        Event::StepStarted { step, attempt } => {
            steps.insert((run, step.clone()), Running::default());
            format!("[{short}] {step} started (attempt {attempt})")
        }
        Event::StepCompleted { step, .. } => {
            let (took, tally) = steps
                .remove(&(run, step.clone()))
                .map(finish)
                .map(|r| {
                    (
                        format!(" in {} ms", r.started.elapsed().as_millis()),
                        r.tally.describe(),
                    )
                })
                .unwrap_or_default();
            format!("[{short}] {step} completed{took}{tally}")
        }
        Event::StepFailed {
            step,
            attempt,
            kind,
            message,
            retry_in_ms,
        } => {
            let tally = steps
                .remove(&(run, step.clone()))
                .map(finish)
                .map(|r| r.tally.describe())
                .unwrap_or_default();
            match retry_in_ms {
                Some(ms) => format!(
                    "[{short}] {step} attempt {attempt} failed ({kind}): {message}{tally}; retrying in {ms} ms"
                ),
                None => {
                    format!("[{short}] {step} attempt {attempt} failed ({kind}): {message}{tally}")
                }
            }
        }
        Event::RunFinished { status, error, .. } => {
            steps.retain(|(r, _), running| {
                if let (true, Some(bar)) = (*r == run, &running.bar) {
                    bar.finish_and_clear();
                }
                *r != run
            });
            match error {
                Some(e) => format!("run {run}: {status}: {e}"),
                None => format!("run {run}: {status}"),
            }
        }
        Event::StepAwaitingApproval { step, .. } => format!(
            "[{short}] {step} waits for approval: sandgraph runs approve {run} {step} (or reject)"
        ),
        Event::StepApproval {
            step,
            approved,
            comment,
        } => format!(
            "[{short}] {step} {}{}",
            if *approved { "approved" } else { "rejected" },
            comment
                .as_deref()
                .map(|c| format!(": {c}"))
                .unwrap_or_default()
        ),
        Event::StepScheduled { .. }
        | Event::Crossing { .. }
        | Event::WorkspaceSnapshot { .. }
        | Event::StepAudit { .. } => {
            return None;
        }
    })
}

fn finish(r: Running) -> Running {
    if let Some(bar) = &r.bar {
        bar.finish_and_clear();
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model_call(prompt_tokens: u32, completion_tokens: u32, ms: u64) -> ModelCallRecord {
        ModelCallRecord {
            model: "default".into(),
            outcome: "ok".into(),
            prompt_tokens,
            completion_tokens,
            model_time: std::time::Duration::from_millis(ms),
            first_token: None,
            replayed: false,
            started: std::time::SystemTime::UNIX_EPOCH,
            ended: std::time::SystemTime::UNIX_EPOCH,
        }
    }

    #[test]
    fn a_step_line_carries_its_tool_calls_and_model_usage() {
        let mut t = StepTally::default();
        assert_eq!(t.describe(), "");
        t.add_model_call(&model_call(400, 30, 1500));
        t.add_model_call(&model_call(12, 10, 500));
        assert_eq!(
            t.describe(),
            "; model: 2 calls, 412 prompt + 40 generated tokens, 20.0 tok/s"
        );
    }
}
