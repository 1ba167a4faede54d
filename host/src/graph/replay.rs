//! Offline replay of a run: every completed step is executed again in the sandbox from the run's
//! pinned graph and components, with only its journaled crossings served (no network, no live
//! clock or randomness, nothing written), and its output compared byte for byte with the journal.
//! A step that had a workspace gets its journaled snapshot laid out in a private temporary
//! directory, granted with the same mode, and the tree it leaves is compared too.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use serde::Serialize;

use super::engine::{Engine, EngineError, call_grant_for, call_offline};
use crate::journal::crossings::{CrossingError, StepCrossings};
use crate::journal::workspace::{self, Manifest, Shape};
use crate::journal::{Event, Journal, JournalError, RunId, Snapshot, SnapshotMoment};
use crate::sandbox::manifest::{EffectiveGrant, WorkspaceMode};

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
    /// The same output, but the workspace it left differs from the journaled one at `path`
    /// (each side says what is there: a file with its size and digest, a directory, absent).
    WorkspaceDiverged {
        step: String,
        attempt: u32,
        path: String,
        recorded: String,
        replayed: String,
    },
    /// The journal does not hold what replaying the step needs (its workspace was not
    /// snapshotted); nothing was compared.
    NotReplayable {
        step: String,
        attempt: u32,
        reason: String,
    },
}

impl StepReplay {
    pub fn step(&self) -> &str {
        match self {
            StepReplay::Identical { step, .. }
            | StepReplay::Diverged { step, .. }
            | StepReplay::Failed { step, .. }
            | StepReplay::WorkspaceDiverged { step, .. }
            | StepReplay::NotReplayable { step, .. } => step,
        }
    }

    pub fn is_identical(&self) -> bool {
        matches!(self, StepReplay::Identical { .. })
    }

    pub fn is_replayable(&self) -> bool {
        !matches!(self, StepReplay::NotReplayable { .. })
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
    // (step, attempt) -> its last snapshot before the guest ran, and after it returned.
    let mut snapshots: HashMap<(String, u32), Snapshots> = HashMap::new();
    let mut steps = Vec::new();
    for r in &pinned.records {
        match &r.event {
            Event::WorkspaceSnapshot {
                step,
                attempt,
                moment,
                writable,
                snapshot,
            } => {
                let s = snapshots.entry((step.clone(), *attempt)).or_default();
                match moment {
                    SnapshotMoment::Before => s.before = Some((*writable, snapshot.clone())),
                    SnapshotMoment::After => s.after = Some(snapshot.clone()),
                }
            }
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
                let Some((tool, manifest)) = pinned.tools.get(&node.spec.component) else {
                    steps.push(failed(format!(
                        "component '{}' was not pinned",
                        node.spec.component
                    )));
                    continue;
                };
                let mut grant = match call_grant_for(node, engine) {
                    Ok(g) => EffectiveGrant::intersect(&engine.config().policy, manifest, &g),
                    Err(m) => {
                        steps.push(failed(m));
                        continue;
                    }
                };
                // The workspace the step saw, laid out afresh; removed when this step is done.
                let snapshot = snapshots
                    .remove(&(step.clone(), *attempt))
                    .unwrap_or_default();
                let mut laid_out = None;
                if let Some((writable, before)) = &snapshot.before {
                    let manifest = match before {
                        Snapshot::Skipped { reason } => {
                            steps.push(StepReplay::NotReplayable {
                                step: step.clone(),
                                attempt: *attempt,
                                reason: format!(
                                    "its workspace was {reason}, so the files the step saw are not in the journal"
                                ),
                            });
                            continue;
                        }
                        Snapshot::Taken { manifest, .. } => manifest,
                    };
                    match lay_out(&journal, manifest).await {
                        Ok(dir) => {
                            let mode = if *writable {
                                WorkspaceMode::Rw
                            } else {
                                WorkspaceMode::Ro
                            };
                            grant.workspace = Some((dir.path().to_path_buf(), mode));
                            laid_out = Some((dir, *writable));
                        }
                        Err(message) => {
                            steps.push(failed(message));
                            continue;
                        }
                    }
                }
                let crossings =
                    StepCrossings::replay_offline(journal.clone(), run, step, *attempt)?;
                let input = String::from_utf8_lossy(input);
                // Tool and agent steps alike; an agent's model answers and nested tool
                // results come from the journal (no provider, no network).
                let outcome = call_offline(
                    engine,
                    run,
                    node,
                    &pinned.tools,
                    tool,
                    &grant,
                    step,
                    *attempt,
                    &input,
                    &crossings,
                )
                .await;
                let identical = StepReplay::Identical {
                    step: step.clone(),
                    attempt: *attempt,
                };
                steps.push(match outcome {
                    Err(CrossingError::Journal(e)) => return Err(e.into()),
                    Err(e) => failed(e.to_string()),
                    Ok(report) => match report.result {
                        Err(e) => failed(format!("the step failed on replay: {e}")),
                        Ok(out) if out == recorded => match laid_out {
                            Some((dir, true)) => compare_tree(
                                &journal,
                                engine,
                                step,
                                *attempt,
                                &snapshot,
                                dir.path(),
                            )
                            .await
                            .unwrap_or(identical),
                            _ => identical,
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

/// The snapshots journaled for one step attempt (the last of each, for a resumed attempt).
#[derive(Default)]
struct Snapshots {
    /// (granted `rw`, snapshot)
    before: Option<(bool, Snapshot)>,
    after: Option<Snapshot>,
}

/// Lays the snapshot `manifest` out in a fresh private temporary directory.
async fn lay_out(
    journal: &Arc<Journal>,
    manifest: &crate::journal::PayloadRef,
) -> Result<tempfile::TempDir, String> {
    let (journal, manifest) = (journal.clone(), manifest.clone());
    tokio::task::spawn_blocking(move || {
        let dir = tempfile::Builder::new()
            .prefix("sandgraph-replay-workspace-")
            .tempdir()
            .map_err(|e| format!("cannot create a directory for its workspace: {e}"))?;
        let manifest = Manifest::load(&journal, &manifest)
            .map_err(|e| format!("its workspace snapshot cannot be read: {e}"))?;
        workspace::materialize(&journal, &manifest, dir.path())
            .map_err(|e| format!("its workspace snapshot cannot be laid out: {e}"))?;
        Ok(dir)
    })
    .await
    .map_err(|e| format!("laying out its workspace ended abnormally: {e}"))?
}

/// Compares the tree a replayed `rw` step left in `dir` with the journaled after-snapshot;
/// `None` when they are the same.
async fn compare_tree(
    journal: &Arc<Journal>,
    engine: &Engine,
    step: &str,
    attempt: u32,
    snapshot: &Snapshots,
    dir: &Path,
) -> Option<StepReplay> {
    let failed = |message: String| StepReplay::Failed {
        step: step.to_owned(),
        attempt,
        message,
    };
    let manifest = match &snapshot.after {
        None => {
            return Some(failed(
                "the journal has no snapshot of the workspace the step left".into(),
            ));
        }
        Some(Snapshot::Skipped { reason }) => {
            return Some(StepReplay::NotReplayable {
                step: step.to_owned(),
                attempt,
                reason: format!(
                    "its output is identical, but the workspace it left was {reason}, so the tree cannot be compared"
                ),
            });
        }
        Some(Snapshot::Taken { manifest, .. }) => manifest.clone(),
    };
    let (journal, dir, limits) = (
        journal.clone(),
        dir.to_path_buf(),
        engine.config().workspace_snapshots,
    );
    let trees = tokio::task::spawn_blocking(move || {
        let recorded = Manifest::load(&journal, &manifest)
            .map_err(|e: JournalError| format!("the snapshot it left cannot be read: {e}"))?
            .tree();
        // At least as much as the journaled tree holds, so a tree the step left legitimately
        // is never refused here.
        let limits = workspace::SnapshotLimits {
            max_bytes: limits.max_bytes.max(
                recorded
                    .iter()
                    .map(|(_, s)| match s {
                        Shape::File { size, .. } => *size,
                        _ => 0,
                    })
                    .sum::<u64>(),
            ),
            max_entries: limits.max_entries.max(recorded.len() as u64),
        };
        let replayed = workspace::scan(&dir, limits)
            .map_err(|e| format!("the workspace it left on replay was {e}"))?;
        Ok::<_, String>((recorded, replayed))
    })
    .await;
    let (recorded, replayed) = match trees {
        Ok(Ok(t)) => t,
        Ok(Err(message)) => return Some(failed(message)),
        Err(e) => {
            return Some(failed(format!(
                "comparing its workspace ended abnormally: {e}"
            )));
        }
    };
    let (path, recorded, replayed) = workspace::first_difference(&recorded, &replayed)?;
    let describe = |s: Option<Shape>| s.map_or("nothing (absent)".to_owned(), |s| s.to_string());
    Some(StepReplay::WorkspaceDiverged {
        step: step.to_owned(),
        attempt,
        path,
        recorded: describe(recorded),
        replayed: describe(replayed),
    })
}
