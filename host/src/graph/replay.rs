//! Offline replay of a run: every completed step is executed again in the sandbox from the run's
//! pinned graph and components, with only its journaled crossings served (no network, no live
//! clock or randomness, nothing written), and its output compared byte for byte with the journal.

use std::collections::HashMap;

use serde::Serialize;

use super::engine::{Engine, EngineError, call_grant_for, call_offline};
use crate::journal::crossings::{CrossingError, StepCrossings};
use crate::journal::{Event, RunId};

/// What replaying one step showed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum StepReplay {
    /// The same output, byte for byte.
    Identical { step: String, attempt: u32 },
    /// A different output: both are given.
    Diverged {
        step: String,
        attempt: u32,
        recorded: String,
        replayed: String,
    },
    /// The step did not complete on replay (a divergence in its crossings, a failure).
    Failed {
        step: String,
        attempt: u32,
        message: String,
    },
}

impl StepReplay {
    pub fn step(&self) -> &str {
        match self {
            StepReplay::Identical { step, .. }
            | StepReplay::Diverged { step, .. }
            | StepReplay::Failed { step, .. } => step,
        }
    }

    pub fn is_identical(&self) -> bool {
        matches!(self, StepReplay::Identical { .. })
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ReplayReport {
    pub run: String,
    pub steps: Vec<StepReplay>,
}

impl ReplayReport {
    /// Every completed step reproduced its output exactly.
    pub fn identical(&self) -> bool {
        self.steps.iter().all(StepReplay::is_identical)
    }
}

/// Replays every completed step of `run` in journal order.
pub async fn replay(engine: &Engine, run: RunId) -> Result<ReplayReport, EngineError> {
    let pinned = engine.load_pinned(run).await?;
    let journal = engine.journal().clone();
    let mut inputs: HashMap<String, (String, Vec<u8>)> = HashMap::new();
    let mut steps = Vec::new();
    for r in &pinned.records {
        match &r.event {
            Event::StepScheduled {
                step, node, input, ..
            } => {
                inputs.insert(step.clone(), (node.clone(), journal.payload(input)?));
            }
            Event::StepCompleted {
                step,
                attempt,
                output,
            } => {
                let recorded = String::from_utf8_lossy(&journal.payload(output)?).into_owned();
                let failed = |message: String| StepReplay::Failed {
                    step: step.clone(),
                    attempt: *attempt,
                    message,
                };
                let Some((node_id, input)) = inputs.get(step) else {
                    steps.push(failed(
                        "the journal has no StepScheduled (input) for it".into(),
                    ));
                    continue;
                };
                let Some(node) = pinned
                    .graph
                    .by_id
                    .get(node_id)
                    .map(|i| &pinned.graph.graph[*i])
                else {
                    steps.push(failed(format!(
                        "node '{node_id}' is not in the pinned graph"
                    )));
                    continue;
                };
                if !pinned.tools.contains_key(&node.spec.component) {
                    steps.push(failed(format!(
                        "component '{}' was not pinned",
                        node.spec.component
                    )));
                    continue;
                }
                if let Err(m) = call_grant_for(node, engine) {
                    steps.push(failed(m));
                    continue;
                }
                let crossings =
                    StepCrossings::replay_offline(journal.clone(), run, step, *attempt)?;
                let input = String::from_utf8_lossy(input);
                // Tool and agent steps alike; an agent's model answers come from the journal.
                let outcome = call_offline(
                    engine,
                    run,
                    node,
                    &pinned.tools,
                    step,
                    *attempt,
                    &input,
                    &crossings,
                )
                .await;
                steps.push(match outcome {
                    Err(CrossingError::Journal(e)) => return Err(e.into()),
                    Err(e) => failed(e.to_string()),
                    Ok(report) => match report.result {
                        Err(e) => failed(format!("the step failed on replay: {e}")),
                        Ok(out) if out == recorded => StepReplay::Identical {
                            step: step.clone(),
                            attempt: *attempt,
                        },
                        Ok(out) => StepReplay::Diverged {
                            step: step.clone(),
                            attempt: *attempt,
                            recorded,
                            replayed: out,
                        },
                    },
                });
            }
            _ => {}
        }
    }
    Ok(ReplayReport {
        run: run.to_string(),
        steps,
    })
}
