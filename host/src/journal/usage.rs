//! What the model calls of a run cost, read back from its journaled answers: tokens in and out
//! and provider time per step and for the run. `runs show`, `GET /v1/runs/{id}` and the event
//! stream report these figures, so they are the journal's, not a separate counter's.

use std::collections::BTreeMap;

use serde::Serialize;

use super::{Crossing, Event, Record};

/// Model usage of one step (all its attempts) or of a whole run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ModelUsage {
    /// Answers journaled (refusals by the host included).
    pub model_calls: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    /// Provider time, milliseconds.
    pub model_ms: u64,
}

impl ModelUsage {
    fn add(&mut self, prompt: u32, completion: u32, ms: u64) {
        self.model_calls += 1;
        self.input_tokens += u64::from(prompt);
        self.output_tokens += u64::from(completion);
        self.model_ms += ms;
    }

    /// Generated tokens per second of provider time (0 without any).
    pub fn tokens_per_second(&self) -> f64 {
        if self.model_ms == 0 {
            0.0
        } else {
            self.output_tokens as f64 * 1000.0 / self.model_ms as f64
        }
    }
}

/// Usage per step, and the run's total.
pub fn model_usage(records: &[Record]) -> (BTreeMap<String, ModelUsage>, ModelUsage) {
    let mut steps: BTreeMap<String, ModelUsage> = BTreeMap::new();
    let mut total = ModelUsage::default();
    for r in records {
        if let Event::Crossing {
            step,
            crossing:
                Crossing::ModelResponse {
                    prompt_tokens,
                    completion_tokens,
                    model_ms,
                    ..
                },
            ..
        } = &r.event
        {
            steps.entry(step.clone()).or_default().add(
                *prompt_tokens,
                *completion_tokens,
                *model_ms,
            );
            total.add(*prompt_tokens, *completion_tokens, *model_ms);
        }
    }
    (steps, total)
}
