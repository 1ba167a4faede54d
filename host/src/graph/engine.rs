//! Runs graphs: starts a run (pinning the graph and its components in the journal), drives its
//! steps on tokio through the sandbox with retries, timeouts, a deadline and cancellation, and
//! resumes unfinished runs from their journal after a crash without repeating completed steps.
//!
//! Durability: `StepCompleted` is on disk before the step is reported, before the run's end, and
//! before any successor that can reach outside its sandbox starts (egress, a writable workspace,
//! an agent's model and tools). A successor that cannot starts while the flush is in flight:
//! whatever survives of a run's events is a gapless prefix of what was appended (sled: one
//! ordered log; PostgreSQL: no event commits past a lost one), so a crash that loses the
//! completion loses everything the successor journaled after it too, nothing outside saw the
//! successor run, and the resumed run runs both again.
//!
//! A resumed run re-derives its activations by feeding the journaled completions to the same
//! [`Scheduler`]; an interrupted attempt re-executes with its journaled crossings served back.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::catalog::Catalog;
use super::compile::CompiledGraph;
use super::expr::json_depth;
use super::scheduler::{Activation, ScheduleError, Scheduler};
use super::spec::Graph;
use crate::journal::crossings::{CrossingError, StepCrossings};
use crate::journal::workspace::{self, SnapshotLimits};
use crate::journal::{
    Durability, Event, Journal, JournalError, PinnedComponent, Record, RunId, RunStatus,
    SnapshotMoment,
};
use crate::model::TokenSink;
use crate::sandbox::agent::{
    AgentActivity, AgentEnv, GrantedTool, ModelCallRecord, ModelRouter, RunTokens,
};
use crate::sandbox::manifest::{
    self, CallGrant, EffectiveGrant, Limits, Manifest, OperatorPolicy, WorkspaceMode,
};
use crate::sandbox::outcome::{AuditRecord, CallError};
use crate::sandbox::registry::LoadedTool;
use crate::sandbox::{MAX_JSON_DEPTH, Sandbox};

/// Called with every event the engine journals for a run (progress output, metrics).
pub type Progress = Arc<dyn Fn(RunId, &Event) + Send + Sync>;

/// Called after every tool call of a step attempt with its audit record (run, step, attempt);
/// the API's trace export builds its `tool_call` and `egress` spans from it.
pub type CallObserver = Arc<dyn Fn(RunId, &str, u32, &AuditRecord) + Send + Sync>;

/// Called after every model call of an agent step (run, step, attempt); metrics and the
/// `gen_ai` trace spans come from it.
pub type ModelObserver = Arc<dyn Fn(RunId, &str, u32, &ModelCallRecord) + Send + Sync>;

/// Called with each piece of text a model generates for an agent step (run, step), as the
/// provider streams it: the CLI's live view. Replayed answers are not streamed again.
pub type TokenObserver = Arc<dyn Fn(RunId, &str, &str) + Send + Sync>;

#[derive(Clone)]
pub struct EngineConfig {
    pub policy: OperatorPolicy,
    /// Steps of one run executing at the same time (fan-out beyond this waits).
    pub max_parallel_steps: usize,
    /// Host directory given as `/workspace` to nodes whose manifest asks for one.
    pub workspace: Option<PathBuf>,
    /// How much of the workspace is snapshotted into the journal around each step attempt
    /// (for replay); a larger workspace is journaled as not snapshotted.
    pub workspace_snapshots: SnapshotLimits,
    /// Egress hosts that deduplicate requests by `Idempotency-Key`: an interrupted request to
    /// them may be sent again whatever its method.
    pub idempotency_key_hosts: Vec<String>,
    /// A run with nothing left to do but steps awaiting approval ends its task with status
    /// `waiting` (`sandgraph run`: the process exits; `runs approve` then `resume` continue it)
    /// instead of waiting in the process for `Engine::decide` (`sandgraph serve`).
    pub exit_when_waiting: bool,
    /// Every successor waits until its predecessors' completions are durable, even one that
    /// reaches nothing outside its sandbox. Off by default: such a step starts while the flush
    /// is in flight (see [`reaches_nothing_outside`]); on, it gives the stricter baseline the
    /// `graph_steps` benchmark compares against.
    pub successors_wait_for_durability: bool,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            policy: OperatorPolicy::default(),
            max_parallel_steps: 16,
            workspace: None,
            workspace_snapshots: SnapshotLimits::default(),
            idempotency_key_hosts: Vec::new(),
            exit_when_waiting: false,
            successors_wait_for_durability: false,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("run input does not match the graph's input schema: {}", .0.join("; "))]
    InvalidInput(Vec<String>),
    #[error(
        "run input nests arrays and objects {depth} levels deep, over the limit of {limit}; flatten it"
    )]
    InputTooDeep { depth: usize, limit: usize },
    #[error("the graph's input schema does not compile: {0}")]
    BadInputSchema(String),
    #[error("node '{node}' names component '{component}', which is not in the catalog")]
    UnknownComponent { node: String, component: String },
    #[error(
        "node '{node}' names model alias '{alias}', which the operator's models file does not define (defined: {known}); fix the node's `models:` or add the alias to the models file"
    )]
    UnknownModel {
        node: String,
        alias: String,
        known: String,
    },
    #[error(
        "node '{node}' is kind: {expected}, but component '{component}' exports the {found} world; {fix}"
    )]
    WrongWorld {
        node: String,
        component: String,
        expected: &'static str,
        found: &'static str,
        fix: &'static str,
    },
    #[error("component '{name}': {source}")]
    Component { name: String, source: CallError },
    #[error("run {run}: the journal's pinned {what} is unusable: {reason}")]
    Pinned {
        run: RunId,
        what: String,
        reason: String,
    },
    #[error(transparent)]
    Journal(#[from] JournalError),
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq)]
pub struct RunOutcome {
    pub run: RunId,
    pub status: RunStatus,
    /// The output document exactly as journaled.
    pub output: Option<String>,
    pub error: Option<String>,
}

/// A run executing in the background.
pub struct RunHandle {
    pub run: RunId,
    cancel: CancellationToken,
    task: tokio::task::JoinHandle<RunOutcome>,
}

impl RunHandle {
    /// Asks the run to stop: running steps are abandoned and the run ends `cancelled`.
    pub fn cancel(&self) {
        self.cancel.cancel();
    }

    pub fn canceller(&self) -> CancellationToken {
        self.cancel.clone()
    }

    pub async fn wait(self) -> RunOutcome {
        let run = self.run;
        self.task.await.unwrap_or_else(|e| RunOutcome {
            run,
            status: RunStatus::Failed,
            output: None,
            error: Some(format!("the run's task ended abnormally: {e}")),
        })
    }
}

pub struct Engine {
    sandbox: Arc<Sandbox>,
    journal: Arc<Journal>,
    config: Arc<EngineConfig>,
    progress: Option<Progress>,
    on_call: Option<CallObserver>,
    on_model: Option<ModelObserver>,
    on_token: Option<TokenObserver>,
    models: Option<Arc<dyn ModelRouter>>,
    /// Runs of this engine paused for approval, woken by `decide`.
    approvals: Approvals,
    workspace_lock: WorkspaceLock,
}

/// Why an approval decision was refused.
#[derive(Debug, thiserror::Error)]
pub enum DecisionError {
    #[error("run {run} has no step '{step}' awaiting approval{hint}")]
    NotAwaiting {
        run: RunId,
        step: String,
        hint: String,
    },
    #[error("run {run} already ended {status}")]
    Finished { run: RunId, status: RunStatus },
    #[error(transparent)]
    Journal(#[from] JournalError),
}

/// Journals an approval or rejection of `step` of `run`, which must be awaiting one.
pub fn record_decision(
    journal: &Journal,
    run: RunId,
    step: &str,
    approved: bool,
    comment: Option<String>,
) -> Result<(), DecisionError> {
    check_decision(journal, run, step)?;
    journal.append(
        run,
        &Event::StepApproval {
            step: step.to_owned(),
            approved,
            comment,
        },
        Durability::Durable,
    )?;
    Ok(())
}

/// Whether `step` of `run` awaits a decision now (the run unfinished, the step paused and not
/// decided yet).
pub fn check_decision(journal: &Journal, run: RunId, step: &str) -> Result<(), DecisionError> {
    let summary = journal.run_summary(run)?;
    if summary.status.is_finished() {
        return Err(DecisionError::Finished {
            run,
            status: summary.status,
        });
    }
    let mut awaiting = Vec::new();
    for r in journal.events(run)? {
        match r.event {
            Event::StepAwaitingApproval { step: s, .. } => awaiting.push(s),
            Event::StepApproval { step: s, .. } => awaiting.retain(|w| *w != s),
            _ => {}
        }
    }
    if !awaiting.iter().any(|w| w == step) {
        return Err(DecisionError::NotAwaiting {
            run,
            step: step.to_owned(),
            hint: if awaiting.is_empty() {
                String::new()
            } else {
                format!(" (awaiting: {})", awaiting.join(", "))
            },
        });
    }
    Ok(())
}

/// Steps of every run of one engine share its one workspace directory: a step granted `rw`
/// holds this exclusively from its before-snapshot to its after-snapshot, `ro` steps share it,
/// so each snapshot is the tree its step saw and left.
type WorkspaceLock = Arc<tokio::sync::RwLock<()>>;

/// A run's pinned graph, components and input, and its journal.
pub(crate) struct Pinned {
    pub records: Vec<Record>,
    pub graph: Arc<CompiledGraph>,
    pub tools: HashMap<String, (Arc<LoadedTool>, Manifest)>,
    pub input: Value,
    pub created_ms: u64,
}

/// A run journaled by [`Engine::create_held`] and not executing yet.
pub struct CreatedRun {
    held: Option<(Arc<RunCtx>, Value)>,
    approvals: Approvals,
}

impl Drop for CreatedRun {
    /// Not executed here: the run's wake-up for decisions goes (whoever claims it makes its own).
    fn drop(&mut self) {
        if let Some((ctx, _)) = self.held.take() {
            forget_wakeup(&self.approvals, ctx.run, &ctx.decided);
        }
    }
}

/// The wake-up for decisions of each run of an engine.
type Approvals = Arc<std::sync::Mutex<HashMap<RunId, Arc<tokio::sync::Notify>>>>;

/// Drops `run`'s wake-up `decided`, unless a newer execution of the run has replaced it.
fn forget_wakeup(approvals: &Approvals, run: RunId, decided: &Arc<tokio::sync::Notify>) {
    let mut a = approvals.lock().unwrap_or_else(|p| p.into_inner());
    if a.get(&run).is_some_and(|n| Arc::ptr_eq(n, decided)) {
        a.remove(&run);
    }
}

/// What one run needs while it executes.
struct RunCtx {
    run: RunId,
    sandbox: Arc<Sandbox>,
    journal: Arc<Journal>,
    config: Arc<EngineConfig>,
    progress: Option<Progress>,
    on_call: Option<CallObserver>,
    on_model: Option<ModelObserver>,
    on_token: Option<TokenObserver>,
    models: Option<Arc<dyn ModelRouter>>,
    workspace_lock: WorkspaceLock,
    graph: Arc<CompiledGraph>,
    created_ms: u64,
    /// What the run's model calls may still spend (`spec.limits.tokenBudget`).
    tokens: Arc<RunTokens>,
    /// Woken when a decision about one of the run's paused steps is journaled.
    decided: Arc<tokio::sync::Notify>,
    /// What each node's steps run with ([`NodeGrant::of`]), or why they cannot run, decided
    /// once per run: every input of it is fixed when the run starts.
    grants: HashMap<petgraph::stable_graph::NodeIndex, Result<NodeGrant, String>>,
}

/// The component a node's steps call and what they are granted.
struct NodeGrant {
    tool: Arc<LoadedTool>,
    /// The node's grant ∩ the component's manifest ∩ the operator's policy.
    grant: EffectiveGrant,
    /// For an agent node, the tools it may call, each under its own intersection.
    tools: Vec<GrantedTool>,
    /// Its steps may start while their predecessors' completions are being flushed
    /// ([`reaches_nothing_outside`]).
    starts_before_durable: bool,
}

impl NodeGrant {
    fn of(
        node: &super::compile::CompiledNode,
        tools: &HashMap<String, (Arc<LoadedTool>, Manifest)>,
        config: &EngineConfig,
    ) -> Result<NodeGrant, String> {
        let (tool, manifest) = tools.get(&node.spec.component).ok_or_else(|| {
            format!(
                "component '{}' was not pinned by this run",
                node.spec.component
            )
        })?;
        let node_grant = call_grant(node, config)?;
        let grant = EffectiveGrant::intersect(&config.policy, manifest, &node_grant);
        Ok(NodeGrant {
            tool: tool.clone(),
            starts_before_durable: reaches_nothing_outside(node, &grant, config),
            grant,
            tools: granted_tools(node, tools, &config.policy, &node_grant)?,
        })
    }
}

impl Engine {
    pub fn new(sandbox: Arc<Sandbox>, journal: Arc<Journal>, config: EngineConfig) -> Engine {
        Engine {
            sandbox,
            journal,
            config: Arc::new(config),
            progress: None,
            on_call: None,
            on_model: None,
            on_token: None,
            models: None,
            approvals: Arc::default(),
            workspace_lock: WorkspaceLock::default(),
        }
    }

    /// Approves or rejects a step awaiting approval and wakes its run if this engine holds it
    /// paused. A run not held here (a host restarted since) continues on `resume`.
    pub async fn decide(
        &self,
        run: RunId,
        step: &str,
        approved: bool,
        comment: Option<String>,
    ) -> Result<(), DecisionError> {
        let journal = self.journal.clone();
        let s = step.to_owned();
        tokio::task::spawn_blocking(move || record_decision(&journal, run, &s, approved, comment))
            .await
            .map_err(|e| JournalError::Flush(e.to_string()))??;
        if let Some(n) = self
            .approvals
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&run)
        {
            n.notify_one();
        }
        Ok(())
    }

    /// The model providers agent steps call, by alias.
    pub fn with_models(mut self, models: Arc<dyn ModelRouter>) -> Engine {
        self.models = Some(models);
        self
    }

    pub fn with_model_observer(mut self, on_model: ModelObserver) -> Engine {
        self.on_model = Some(on_model);
        self
    }

    pub fn with_token_observer(mut self, on_token: TokenObserver) -> Engine {
        self.on_token = Some(on_token);
        self
    }

    pub fn with_progress(mut self, progress: Progress) -> Engine {
        self.progress = Some(progress);
        self
    }

    pub fn with_call_observer(mut self, on_call: CallObserver) -> Engine {
        self.on_call = Some(on_call);
        self
    }

    pub fn journal(&self) -> &Arc<Journal> {
        &self.journal
    }

    pub fn sandbox(&self) -> &Arc<Sandbox> {
        &self.sandbox
    }

    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// Re-executes every completed step of `run` offline and compares outputs.
    pub async fn replay(&self, run: RunId) -> Result<super::replay::ReplayReport, EngineError> {
        super::replay::replay(self, run).await
    }

    /// Starts a run of `graph` on `input`; the components come from `catalog` and are pinned.
    pub async fn start(
        &self,
        graph: Arc<CompiledGraph>,
        catalog: &Catalog,
        input: Value,
    ) -> Result<RunHandle, EngineError> {
        self.start_as(RunId::new(), graph, catalog, input).await
    }

    /// [`Engine::start`] under a run id the caller chose (an idempotency key names it first).
    pub async fn start_as(
        &self,
        run: RunId,
        graph: Arc<CompiledGraph>,
        catalog: &Catalog,
        input: Value,
    ) -> Result<RunHandle, EngineError> {
        let ctx = self.create_ctx(run, graph, catalog, &input).await?;
        Ok(self.spawn(ctx, input, None))
    }

    /// Journals run `run` of `graph` (its graph, components and input pinned) without executing
    /// it: a host that claims it from the run queue executes it with [`Engine::resume`].
    pub async fn create(
        &self,
        run: RunId,
        graph: Arc<CompiledGraph>,
        catalog: &Catalog,
        input: Value,
    ) -> Result<(), EngineError> {
        self.create_held(run, graph, catalog, input).await.map(drop)
    }

    /// [`Engine::create`], keeping what the run needs to execute: [`Engine::start_created`]
    /// executes it here without reading it back from the journal (a host that claimed its own
    /// submission); dropped, the run is left to whichever host claims it.
    pub async fn create_held(
        &self,
        run: RunId,
        graph: Arc<CompiledGraph>,
        catalog: &Catalog,
        input: Value,
    ) -> Result<CreatedRun, EngineError> {
        let ctx = self.create_ctx(run, graph, catalog, &input).await?;
        Ok(CreatedRun {
            held: Some((ctx, input)),
            approvals: self.approvals.clone(),
        })
    }

    /// Executes a run [`Engine::create_held`] journaled, from its first step.
    pub fn start_created(&self, mut created: CreatedRun) -> RunHandle {
        let (ctx, input) = created.held.take().expect("a created run is started once");
        self.spawn(ctx, input, None)
    }

    async fn create_ctx(
        &self,
        run: RunId,
        graph: Arc<CompiledGraph>,
        catalog: &Catalog,
        input: &Value,
    ) -> Result<Arc<RunCtx>, EngineError> {
        check_input(&graph.spec, input)?;
        self.check_models(&graph)?;
        let mut tools = HashMap::new();
        let mut pinned = Vec::new();
        // Each node's component and, for agent nodes, the tools it grants.
        let mut names: Vec<(&str, &str)> = graph
            .spec
            .spec
            .nodes
            .iter()
            .flat_map(|n| {
                std::iter::once((n.component.as_str(), n.id.as_str()))
                    .chain(n.tools.iter().map(|t| (t.as_str(), n.id.as_str())))
            })
            .collect();
        names.sort();
        names.dedup_by(|a, b| a.0 == b.0);
        for (name, node) in names {
            let entry = catalog
                .get(name)
                .ok_or_else(|| EngineError::UnknownComponent {
                    node: node.to_owned(),
                    component: name.to_owned(),
                })?;
            let tool = self
                .sandbox
                .registry()
                .load_known(&entry.wasm, &entry.digest)
                .map_err(|source| EngineError::Component {
                    name: name.to_owned(),
                    source,
                })?;
            pinned.push(PinnedComponent {
                name: name.to_owned(),
                digest: entry.digest.clone(),
                wasm: self.journal.put_payload_known(&entry.wasm, &entry.digest)?,
                manifest: self.journal.put_payload(entry.manifest_text.as_bytes())?,
            });
            tools.insert(name.to_owned(), (tool, entry.manifest.clone()));
        }
        check_worlds(&graph, &tools)?;
        let event = Event::RunCreated {
            graph_name: graph.spec.metadata.name.clone(),
            graph_digest: graph.digest_hex(),
            graph: self
                .journal
                .put_payload_known(&graph.canonical, &format!("sha256:{}", graph.digest_hex()))?,
            components: pinned,
            input: self.journal.put_payload(input.to_string().as_bytes())?,
        };
        let ctx = self.ctx(run, graph, tools, now_ms(), 0);
        if let Err(e) = ctx.append(event, Durability::Durable).await {
            self.approvals
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&run);
            return Err(e.into());
        }
        Ok(ctx)
    }

    /// Starts `graph` and waits for it to end.
    /// Every model alias a node names is served (with no models configured, none is).
    fn check_models(&self, graph: &CompiledGraph) -> Result<(), EngineError> {
        for n in &graph.spec.spec.nodes {
            for alias in &n.models {
                if !self.models.as_ref().is_some_and(|m| m.contains(alias)) {
                    let known = self
                        .models
                        .as_ref()
                        .map(|m| m.aliases())
                        .unwrap_or_default();
                    return Err(EngineError::UnknownModel {
                        node: n.id.clone(),
                        alias: alias.clone(),
                        known: if known.is_empty() {
                            "none".into()
                        } else {
                            known.join(", ")
                        },
                    });
                }
            }
        }
        Ok(())
    }

    pub async fn run(
        &self,
        graph: Arc<CompiledGraph>,
        catalog: &Catalog,
        input: Value,
    ) -> Result<RunOutcome, EngineError> {
        Ok(self.start(graph, catalog, input).await?.wait().await)
    }

    /// Continues `run` from its journal: the pinned graph and components, completed steps
    /// skipped, an interrupted attempt re-executed with its recorded crossings served back.
    /// A finished run is not touched; its handle reports how it ended.
    pub async fn resume(&self, run: RunId) -> Result<RunHandle, EngineError> {
        let pinned = self.load_pinned(run).await?;
        let spent = tokens_spent(&pinned.records);
        let ctx = self.ctx(run, pinned.graph, pinned.tools, pinned.created_ms, spent);
        Ok(self.spawn(ctx, pinned.input, Some(pinned.records)))
    }

    /// Everything a run pinned when it was created, plus its events.
    pub(crate) async fn load_pinned(&self, run: RunId) -> Result<Pinned, EngineError> {
        let journal = self.journal.clone();
        let records = tokio::task::spawn_blocking(move || journal.events(run))
            .await
            .map_err(|e| JournalError::Flush(e.to_string()))??;
        let Some(Record {
            at_ms: created_ms,
            event:
                Event::RunCreated {
                    graph_digest,
                    graph,
                    components,
                    input,
                    ..
                },
            ..
        }) = records.first().cloned()
        else {
            return Err(EngineError::Pinned {
                run,
                what: "run header".into(),
                reason: "the first event is not RunCreated".into(),
            });
        };
        let pinned = |what: &str, reason: String| EngineError::Pinned {
            run,
            what: what.to_owned(),
            reason,
        };
        let spec: Graph = serde_json::from_slice(&self.journal.payload(&graph)?)
            .map_err(|e| pinned("graph", e.to_string()))?;
        let compiled = Arc::new(CompiledGraph::compile(spec));
        if compiled.digest_hex() != graph_digest {
            return Err(pinned(
                "graph",
                format!(
                    "its digest is {} but the run pinned {graph_digest}",
                    compiled.digest_hex()
                ),
            ));
        }
        let mut tools = HashMap::new();
        for c in components {
            // A component this host loaded already is the pinned one (same digest): its bytes
            // need not be read back (a round trip per megabyte on a database journal).
            let tool = match self.sandbox.registry().loaded(&c.digest) {
                Some(t) => t,
                None => {
                    let wasm = self.journal.payload(&c.wasm)?;
                    self.sandbox
                        .registry()
                        .load(&wasm)
                        .map_err(|e| pinned(&format!("component '{}'", c.name), e.to_string()))?
                }
            };
            if tool.digest != c.digest {
                return Err(pinned(
                    &format!("component '{}'", c.name),
                    format!("bytes hash to {} but {} was pinned", tool.digest, c.digest),
                ));
            }
            let text = String::from_utf8(self.journal.payload(&c.manifest)?)
                .map_err(|e| pinned(&format!("manifest of '{}'", c.name), e.to_string()))?;
            let manifest = Manifest::parse(&format!("{} (pinned)", c.name), &text)
                .map_err(|e| pinned(&format!("manifest of '{}'", c.name), e.to_string()))?;
            tools.insert(c.name.clone(), (tool, manifest));
        }
        let input: Value = serde_json::from_slice(&self.journal.payload(&input)?)
            .map_err(|e| pinned("input", e.to_string()))?;
        Ok(Pinned {
            records,
            graph: compiled,
            tools,
            input,
            created_ms,
        })
    }

    /// Resumes every run the journal holds as running (what a host does on start). A run
    /// whose pinned graph, components or input can no longer be used is ended as failed with
    /// the reason, so one poison run never stops the host from starting; only a journal that
    /// cannot be read or written is an error.
    pub async fn resume_unfinished(&self) -> Result<Vec<RunHandle>, EngineError> {
        let mut out = Vec::new();
        for s in self.journal.unfinished_runs()? {
            out.push(self.resume_or_fail(s.run).await?);
        }
        Ok(out)
    }

    /// [`Engine::resume`], ending a run whose pinned graph, components or input can no longer
    /// be used as failed with the reason; only a journal error is an error.
    pub async fn resume_or_fail(&self, run: RunId) -> Result<RunHandle, EngineError> {
        match self.resume(run).await {
            Ok(handle) => Ok(handle),
            Err(EngineError::Journal(e)) => Err(EngineError::Journal(e)),
            Err(e) => self.fail_unusable(run, e.to_string()).await,
        }
    }

    /// Ends `run` as failed with `reason` without executing anything.
    async fn fail_unusable(&self, run: RunId, reason: String) -> Result<RunHandle, EngineError> {
        tracing::error!(run_id = %run, %reason, "an unfinished run cannot resume; it is ended as failed");
        let event = Event::RunFinished {
            status: RunStatus::Failed,
            output: None,
            error: Some(reason.clone()),
        };
        let journal = self.journal.clone();
        tokio::task::spawn_blocking(move || journal.append(run, &event, Durability::Durable))
            .await
            .map_err(|e| JournalError::Flush(e.to_string()))??;
        if let Some(p) = &self.progress {
            p(
                run,
                &Event::RunFinished {
                    status: RunStatus::Failed,
                    output: None,
                    error: Some(reason.clone()),
                },
            );
        }
        let cancel = CancellationToken::new();
        let task = tokio::spawn(async move {
            RunOutcome {
                run,
                status: RunStatus::Failed,
                output: None,
                error: Some(reason),
            }
        });
        Ok(RunHandle { run, cancel, task })
    }

    fn ctx(
        &self,
        run: RunId,
        graph: Arc<CompiledGraph>,
        tools: HashMap<String, (Arc<LoadedTool>, Manifest)>,
        created_ms: u64,
        tokens_spent: u64,
    ) -> Arc<RunCtx> {
        let budget = graph.spec.spec.limits.token_budget;
        let grants: HashMap<_, _> = graph
            .graph
            .node_indices()
            .map(|n| (n, NodeGrant::of(&graph.graph[n], &tools, &self.config)))
            .collect();
        let decided = Arc::new(tokio::sync::Notify::new());
        self.approvals
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(run, decided.clone());
        Arc::new(RunCtx {
            decided,
            on_model: self.on_model.clone(),
            on_token: self.on_token.clone(),
            models: self.models.clone(),
            tokens: Arc::new(RunTokens::new(budget, tokens_spent)),
            run,
            sandbox: self.sandbox.clone(),
            journal: self.journal.clone(),
            config: self.config.clone(),
            progress: self.progress.clone(),
            on_call: self.on_call.clone(),
            workspace_lock: self.workspace_lock.clone(),
            graph,
            created_ms,
            grants,
        })
    }

    fn spawn(&self, ctx: Arc<RunCtx>, input: Value, history: Option<Vec<Record>>) -> RunHandle {
        let cancel = CancellationToken::new();
        let run = ctx.run;
        let token = cancel.clone();
        let (approvals, decided) = (self.approvals.clone(), ctx.decided.clone());
        let task = tokio::spawn(async move {
            let outcome = drive(ctx, input, history, token).await;
            // The run's wake-up for decisions goes with it.
            forget_wakeup(&approvals, run, &decided);
            outcome
        });
        RunHandle { run, cancel, task }
    }
}

/// Tokens the journaled model answers of a run spent (a resumed run's budget starts there).
pub fn tokens_spent(records: &[Record]) -> u64 {
    records
        .iter()
        .map(|r| match &r.event {
            Event::Crossing {
                crossing:
                    crate::journal::Crossing::ModelResponse {
                        prompt_tokens,
                        completion_tokens,
                        ..
                    },
                ..
            } => u64::from(*prompt_tokens) + u64::from(*completion_tokens),
            _ => 0,
        })
        .sum()
}

/// Every agent node's component exports the agent world, every tool node's and every granted
/// tool's the tool world.
fn check_worlds(
    graph: &CompiledGraph,
    tools: &HashMap<String, (Arc<LoadedTool>, Manifest)>,
) -> Result<(), EngineError> {
    use super::spec::NodeKind;
    let world = |name: &str| tools.get(name).map(|(t, _)| t.is_agent());
    for n in &graph.spec.spec.nodes {
        let wrong = |component: &str, expected, found, fix| EngineError::WrongWorld {
            node: n.id.clone(),
            component: component.to_owned(),
            expected,
            found,
            fix,
        };
        match (n.kind, world(&n.component)) {
            (NodeKind::Agent, Some(false)) => {
                return Err(wrong(
                    &n.component,
                    "agent",
                    "sandgraph:tool",
                    "an agent node needs a component that exports sandgraph:agent (info, step)",
                ));
            }
            (NodeKind::Tool, Some(true)) => {
                return Err(wrong(
                    &n.component,
                    "tool",
                    "sandgraph:agent",
                    "make the node kind: agent",
                ));
            }
            _ => {}
        }
        for t in &n.tools {
            if world(t) == Some(true) {
                return Err(wrong(
                    t,
                    "agent",
                    "sandgraph:agent",
                    "an agent's `tools:` may name only tools (sandgraph:tool components)",
                ));
            }
        }
    }
    Ok(())
}

/// Each way `value` breaks `validator`'s schema, as `<JSON pointer>: <message>` (the message
/// alone at the document's root).
pub(crate) fn schema_errors<'a>(
    validator: &'a jsonschema::Validator,
    value: &'a Value,
) -> impl Iterator<Item = String> + 'a {
    validator.iter_errors(value).map(|e| {
        let at = e.instance_path().to_string();
        if at.is_empty() {
            e.to_string()
        } else {
            format!("{at}: {e}")
        }
    })
}

/// Checks `input` against the nesting limit and the graph's input schema, listing every
/// violation.
fn check_input(graph: &Graph, input: &Value) -> Result<(), EngineError> {
    let depth = json_depth(input);
    if depth > MAX_JSON_DEPTH {
        return Err(EngineError::InputTooDeep {
            depth,
            limit: MAX_JSON_DEPTH,
        });
    }
    let Some(schema) = &graph.spec.input else {
        return Ok(());
    };
    let validator = jsonschema::validator_for(schema)
        .map_err(|e| EngineError::BadInputSchema(e.to_string()))?;
    let errors: Vec<String> = schema_errors(&validator, input).collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(EngineError::InvalidInput(errors))
    }
}

impl RunCtx {
    /// Whether `node`'s steps may start while their predecessors' completions are being
    /// flushed (decided once per run, in [`NodeGrant::of`]).
    fn starts_before_durable(&self, node: petgraph::stable_graph::NodeIndex) -> bool {
        matches!(self.grants.get(&node), Some(Ok(g)) if g.starts_before_durable)
    }

    /// Appends an event (durable ones through the async group commit) and reports it to the
    /// progress hook.
    async fn append(&self, event: Event, durability: Durability) -> Result<u64, JournalError> {
        let seq = self
            .journal
            .append_async(self.run, &event, durability)
            .await?;
        if let Some(p) = &self.progress {
            p(self.run, &event);
        }
        Ok(seq)
    }

    /// Journals what the sandbox recorded about a step attempt's calls (its own, then the
    /// tools an agent step called), buffered: it becomes durable with the attempt's outcome.
    async fn audit(
        &self,
        step: &str,
        attempt: u32,
        own: &AuditRecord,
        nested: &[AuditRecord],
    ) -> Result<(), JournalError> {
        let calls: Vec<&AuditRecord> = std::iter::once(own).chain(nested).collect();
        // Plain structs of strings and integers always serialise.
        let json = serde_json::to_vec(&calls).unwrap_or_default();
        let calls = self
            .journal
            .put_payload_within(&json, crate::journal::event::AUDIT_INLINE_LIMIT)?;
        self.append(
            Event::StepAudit {
                step: step.to_owned(),
                attempt,
                calls,
            },
            Durability::Buffered,
        )
        .await
        .map(|_| ())
    }

    /// Journals a snapshot of the workspace `dir` of a step attempt (taken off the async
    /// workers; the files go to the blob store there, the event is appended here so an aborted
    /// step appends nothing).
    async fn snapshot(
        &self,
        step: &str,
        attempt: u32,
        moment: SnapshotMoment,
        dir: &Path,
        mode: WorkspaceMode,
    ) -> Result<(), JournalError> {
        let journal = self.journal.clone();
        let dir = dir.to_path_buf();
        let limits = self.config.workspace_snapshots;
        let snapshot =
            tokio::task::spawn_blocking(move || workspace::capture(&journal, &dir, limits))
                .await
                .map_err(|e| JournalError::Flush(e.to_string()))??;
        let event = Event::WorkspaceSnapshot {
            step: step.to_owned(),
            attempt,
            moment,
            writable: mode == WorkspaceMode::Rw,
            snapshot,
        };
        self.append(event, Durability::Buffered).await?;
        Ok(())
    }

    async fn sync(&self) -> Result<(), JournalError> {
        self.journal.sync_async().await
    }
}

/// A step attempt's hold on the engine's workspace (released when dropped): shared for `ro`,
/// exclusive for `rw`.
struct WorkspaceHeld {
    _shared: Option<tokio::sync::OwnedRwLockReadGuard<()>>,
    _exclusive: Option<tokio::sync::OwnedRwLockWriteGuard<()>>,
}

impl WorkspaceHeld {
    async fn take(lock: &WorkspaceLock, mode: WorkspaceMode) -> WorkspaceHeld {
        match mode {
            WorkspaceMode::Rw => WorkspaceHeld {
                _shared: None,
                _exclusive: Some(lock.clone().write_owned().await),
            },
            _ => WorkspaceHeld {
                _shared: Some(lock.clone().read_owned().await),
                _exclusive: None,
            },
        }
    }
}

/// Where a step's first attempt of this process starts.
#[derive(Debug, Clone, Copy, PartialEq)]
struct StartAt {
    attempt: u32,
    /// Serve the attempt's journaled crossings first (it was interrupted).
    replay: bool,
    /// Wait this long first (the rest of a journaled retry backoff).
    delay: Duration,
}

const FRESH: StartAt = StartAt {
    attempt: 1,
    replay: false,
    delay: Duration::ZERO,
};

/// What the journal says about one step's attempts.
#[derive(Debug, Default)]
struct StepHistory {
    input: Option<Vec<u8>>,
    last_started: u32,
    /// (attempt, retry delay in ms, when it failed)
    last_failed: Option<(u32, Option<u64>, u64)>,
}

enum StepEnd {
    Done {
        attempt: u32,
        output: String,
    },
    Failed {
        attempts: u32,
        message: String,
    },
    /// The journal failed under the step.
    Journal(JournalError),
}

async fn drive(
    ctx: Arc<RunCtx>,
    input: Value,
    history: Option<Vec<Record>>,
    cancel: CancellationToken,
) -> RunOutcome {
    let mut sched = Scheduler::new(ctx.graph.clone(), input);
    let result = execute(&ctx, &mut sched, history, &cancel).await;
    let (status, output, error) = match result {
        Ok(Finish::AlreadyFinished(outcome)) => return outcome,
        Ok(Finish::Waiting(steps)) => {
            return RunOutcome {
                run: ctx.run,
                status: RunStatus::Waiting,
                output: None,
                error: Some(format!(
                    "waiting for approval of step{} {}",
                    if steps.len() == 1 { "" } else { "s" },
                    steps.join(", ")
                )),
            };
        }
        Ok(Finish::Done) => (RunStatus::Succeeded, Some(sched.output().to_string()), None),
        Ok(Finish::Cancelled) => (
            RunStatus::Cancelled,
            None,
            Some("the run was cancelled".to_owned()),
        ),
        Err(Stop::Failed(message)) => (RunStatus::Failed, None, Some(message)),
        Err(Stop::Journal(e)) if e.is_transient() => {
            // The journal could not take the run's progress (the database went away, or this
            // host lost the run's lease): the run is left unfinished, to be resumed from what
            // is durable, by this host or the one holding it now.
            tracing::warn!(run_id = %ctx.run, error = %e, "the journal failed under a run; it stays unfinished and resumes");
            return RunOutcome {
                run: ctx.run,
                status: RunStatus::Failed,
                output: None,
                error: Some(format!(
                    "journal: {e} (the run stays unfinished and resumes)"
                )),
            };
        }
        Err(Stop::Journal(e)) => (RunStatus::Failed, None, Some(format!("journal: {e}"))),
    };
    let payload = match &output {
        Some(o) => match ctx.journal.put_payload(o.as_bytes()) {
            Ok(p) => Some(p),
            Err(e) => {
                return RunOutcome {
                    run: ctx.run,
                    status: RunStatus::Failed,
                    output: None,
                    error: Some(format!("cannot journal the run output: {e}")),
                };
            }
        },
        None => None,
    };
    let event = Event::RunFinished {
        status,
        output: payload,
        error: error.clone(),
    };
    if let Err(e) = ctx.append(event, Durability::Durable).await {
        return RunOutcome {
            run: ctx.run,
            status: RunStatus::Failed,
            output: None,
            error: Some(format!(
                "the run ended {status} but that could not be journaled: {e}"
            )),
        };
    }
    RunOutcome {
        run: ctx.run,
        status,
        output,
        error,
    }
}

/// Why a run stopped before its graph was done.
enum Stop {
    /// The run failed (a step, a deadline, the graph): it ends failed with this message.
    Failed(String),
    /// The journal failed under it.
    Journal(JournalError),
}

impl From<String> for Stop {
    fn from(message: String) -> Stop {
        Stop::Failed(message)
    }
}

enum Finish {
    Done,
    /// Only steps awaiting approval are left (`exit_when_waiting`).
    Waiting(Vec<String>),
    Cancelled,
    AlreadyFinished(RunOutcome),
}

/// Folds the journal (when resuming), then runs steps until the graph is done; whatever way it
/// ends, every completion it journaled is durable (and reported) before the run's end is.
async fn execute(
    ctx: &Arc<RunCtx>,
    sched: &mut Scheduler,
    history: Option<Vec<Record>>,
    cancel: &CancellationToken,
) -> Result<Finish, Stop> {
    let mut unsynced = Unsynced::default();
    let finish = execute_steps(ctx, sched, history, cancel, &mut unsynced).await;
    let synced = unsynced.drain(ctx).await;
    match (finish, synced) {
        (Ok(f), Ok(())) => Ok(f),
        (Ok(_), Err(e)) => Err(Stop::Journal(e)),
        (Err(stop), _) => Err(stop),
    }
}

/// Completions appended to the journal whose flush is still in flight, batch by batch in the
/// order they were appended, each with the task waiting for its group commit.
#[derive(Default)]
struct Unsynced {
    batches: std::collections::VecDeque<(FlushTask, Vec<Event>)>,
}

/// A group-commit flush waited for on a task of its own, so it starts at once.
type FlushTask = tokio::task::JoinHandle<Result<(), JournalError>>;

impl Unsynced {
    /// Starts the flush that makes `completed` (just appended) durable.
    fn push(&mut self, ctx: &Arc<RunCtx>, completed: Vec<Event>) {
        let c = ctx.clone();
        let flush = tokio::spawn(async move { c.sync().await });
        self.batches.push_back((flush, completed));
    }

    fn is_empty(&self) -> bool {
        self.batches.is_empty()
    }

    /// Waits for the oldest batch's flush and reports its completions; pending while none is
    /// in flight (so it can sit in a `select!`).
    async fn next(&mut self, ctx: &RunCtx) -> Result<(), JournalError> {
        let Some((flush, _)) = self.batches.front_mut() else {
            return std::future::pending().await;
        };
        let flushed = flush
            .await
            .map_err(|e| JournalError::Flush(format!("the flush task ended abnormally: {e}")))
            .and_then(|r| r);
        let (_, completed) = self.batches.pop_front().expect("a batch was in flight");
        flushed?;
        if let Some(p) = &ctx.progress {
            for event in &completed {
                p(ctx.run, event);
            }
        }
        Ok(())
    }

    /// Waits until every batch is durable and reported.
    async fn drain(&mut self, ctx: &RunCtx) -> Result<(), JournalError> {
        while !self.is_empty() {
            self.next(ctx).await?;
        }
        Ok(())
    }
}

/// Whether `node`'s steps may start while their predecessors' completions are still being
/// flushed: a tool whose grant reaches nothing outside its sandbox (no egress rule, no writable
/// workspace), so if a crash loses those completions, nothing outside can have seen it run.
/// Agent steps always wait: their model calls and tools act on the world.
fn reaches_nothing_outside(
    node: &super::compile::CompiledNode,
    grant: &EffectiveGrant,
    config: &EngineConfig,
) -> bool {
    if config.successors_wait_for_durability || node.spec.kind != super::spec::NodeKind::Tool {
        return false;
    }
    grant.egress.is_empty() && !matches!(grant.workspace, Some((_, WorkspaceMode::Rw)))
}

/// Runs steps until the graph is done; completions whose flush is in flight when it returns are
/// left in `unsynced`.
async fn execute_steps(
    ctx: &Arc<RunCtx>,
    sched: &mut Scheduler,
    history: Option<Vec<Record>>,
    cancel: &CancellationToken,
    unsynced: &mut Unsynced,
) -> Result<Finish, Stop> {
    let err = |e: ScheduleError| e.to_string();
    let jerr = Stop::Journal;
    // Activations not yet launched, in activation order, with where each starts.
    let mut ready: Vec<(Activation, StartAt)> = Vec::new();
    // Steps whose StepScheduled is already in the journal (resume).
    let mut journaled_steps: Vec<String> = Vec::new();
    // Approval decisions by step, steps whose pause is journaled, and steps paused now.
    let mut decisions: HashMap<String, (bool, Option<String>)> = HashMap::new();
    let mut awaiting_journaled: std::collections::HashSet<String> = Default::default();
    let mut paused: Vec<(Activation, StartAt)> = Vec::new();
    let mut activations: BTreeMap<String, Activation> = BTreeMap::new();
    let mut order: Vec<String> = Vec::new();
    for a in sched.start().map_err(err)? {
        order.push(a.step.clone());
        activations.insert(a.step.clone(), a);
    }
    match history {
        None => {
            for step in order.drain(..) {
                let a = activations.remove(&step).expect("activation listed");
                ready.push((a, FRESH));
            }
        }
        Some(records) => {
            let mut steps: HashMap<String, StepHistory> = HashMap::new();
            for r in &records {
                match &r.event {
                    Event::StepScheduled { step, input, .. } => {
                        steps.entry(step.clone()).or_default().input =
                            Some(ctx.journal.payload(input).map_err(jerr)?);
                    }
                    Event::StepStarted { step, attempt } => {
                        let h = steps.entry(step.clone()).or_default();
                        h.last_started = h.last_started.max(*attempt);
                    }
                    Event::StepFailed {
                        step,
                        attempt,
                        retry_in_ms,
                        ..
                    } => {
                        steps.entry(step.clone()).or_default().last_failed =
                            Some((*attempt, *retry_in_ms, r.at_ms));
                    }
                    Event::StepCompleted { step, output, .. } => {
                        let bytes = ctx.journal.payload(output).map_err(jerr)?;
                        let value: Value = serde_json::from_slice(&bytes)
                            .map_err(|e| format!("journaled output of step '{step}': {e}"))?;
                        for a in sched.complete(step, value).map_err(err)? {
                            order.push(a.step.clone());
                            activations.insert(a.step.clone(), a);
                        }
                        activations.remove(step);
                        if activations.is_empty() {
                            for a in sched.quiesce().map_err(err)? {
                                order.push(a.step.clone());
                                activations.insert(a.step.clone(), a);
                            }
                        }
                    }
                    Event::RunFinished {
                        status,
                        output,
                        error,
                    } => {
                        let output = match output {
                            Some(p) => Some(
                                String::from_utf8_lossy(&ctx.journal.payload(p).map_err(jerr)?)
                                    .into_owned(),
                            ),
                            None => None,
                        };
                        return Ok(Finish::AlreadyFinished(RunOutcome {
                            run: ctx.run,
                            status: *status,
                            output,
                            error: error.clone(),
                        }));
                    }
                    Event::StepApproval {
                        step,
                        approved,
                        comment,
                    } => {
                        decisions.insert(step.clone(), (*approved, comment.clone()));
                    }
                    Event::StepAwaitingApproval { step, .. } => {
                        awaiting_journaled.insert(step.clone());
                    }
                    Event::RunCreated { .. }
                    | Event::Crossing { .. }
                    | Event::WorkspaceSnapshot { .. }
                    | Event::StepAudit { .. } => {}
                }
            }
            for step in order {
                let Some(a) = activations.remove(&step) else {
                    continue;
                };
                let h = steps.remove(&step).unwrap_or_default();
                if let Some(journaled) = &h.input {
                    let derived = a.input.to_string();
                    if journaled.as_slice() != derived.as_bytes() {
                        return Err(Stop::Failed(format!(
                            "resume diverged: step '{step}' was scheduled with input {} but the journal now derives {derived}",
                            String::from_utf8_lossy(journaled)
                        )));
                    }
                }
                let start = match h.last_failed {
                    Some((failed, Some(retry_ms), at_ms)) if failed >= h.last_started => StartAt {
                        attempt: failed + 1,
                        replay: false,
                        delay: Duration::from_millis((at_ms + retry_ms).saturating_sub(now_ms())),
                    },
                    Some((failed, None, _)) if failed >= h.last_started => {
                        return Err(Stop::Failed(format!(
                            "step '{step}' had already failed for good before the restart"
                        )));
                    }
                    _ if h.last_started > 0 => StartAt {
                        attempt: h.last_started,
                        replay: true,
                        delay: Duration::ZERO,
                    },
                    _ => FRESH,
                };
                if h.input.is_some() {
                    journaled_steps.push(a.step.clone());
                }
                ready.push((a, start));
            }
        }
    }

    let deadline = ctx.graph.deadline.map(|d| {
        let end_ms = ctx.created_ms + d.as_millis() as u64;
        (
            d,
            tokio::time::Instant::now() + Duration::from_millis(end_ms.saturating_sub(now_ms())),
        )
    });
    let limit = Arc::new(tokio::sync::Semaphore::new(
        ctx.config.max_parallel_steps.max(1),
    ));
    let mut running: JoinSet<(String, StepEnd)> = JoinSet::new();
    let mut scheduled_already: std::collections::HashSet<String> =
        journaled_steps.into_iter().collect();
    loop {
        for (a, start) in ready.drain(..) {
            if !unsynced.is_empty()
                && !ctx.starts_before_durable(a.node)
                && let Err(e) = unsynced.drain(ctx).await
            {
                // Steps already running (other branches) must not append past the run's end.
                stop_all(&mut running).await;
                return Err(jerr(e));
            }
            // The input as the step receives it and as the journal keeps it.
            let input_text = a.input.to_string();
            if !scheduled_already.contains(&a.step) {
                let input = ctx
                    .journal
                    .put_payload(input_text.as_bytes())
                    .map_err(jerr)?;
                ctx.append(
                    Event::StepScheduled {
                        step: a.step.clone(),
                        node: a.node_id.clone(),
                        iteration: a.iteration,
                        input,
                    },
                    Durability::Buffered,
                )
                .await
                .map_err(jerr)?;
                scheduled_already.insert(a.step.clone());
            }
            let node = &ctx.graph.graph[a.node];
            if node.spec.approval == Some(super::spec::Approval::Required) {
                match decisions.get(&a.step) {
                    Some((true, _)) => {}
                    Some((false, comment)) => {
                        stop_all(&mut running).await;
                        return Err(Stop::Failed(format!(
                            "step '{}' was rejected{}",
                            a.step,
                            comment
                                .as_deref()
                                .map(|c| format!(": {c}"))
                                .unwrap_or_default()
                        )));
                    }
                    None => {
                        if awaiting_journaled.insert(a.step.clone()) {
                            let input = ctx
                                .journal
                                .put_payload(input_text.as_bytes())
                                .map_err(jerr)?;
                            ctx.append(
                                Event::StepAwaitingApproval {
                                    step: a.step.clone(),
                                    input,
                                },
                                Durability::Durable,
                            )
                            .await
                            .map_err(jerr)?;
                        }
                        paused.push((a, start));
                        continue;
                    }
                }
            }
            let ctx = ctx.clone();
            let limit = limit.clone();
            running.spawn(async move {
                let _permit = limit.acquire_owned().await;
                let step = a.step.clone();
                let end = run_step(&ctx, &a, start, input_text).await;
                (step, end)
            });
        }
        if running.is_empty() && !paused.is_empty() {
            // Nothing runs; only a person can move the run on.
            unsynced.drain(ctx).await.map_err(jerr)?;
            if ctx.config.exit_when_waiting {
                return Ok(Finish::Waiting(
                    paused.into_iter().map(|(a, _)| a.step).collect(),
                ));
            }
            tokio::select! {
                _ = ctx.decided.notified() => {}
                _ = cancel.cancelled() => return Ok(Finish::Cancelled),
                _ = sleep_until(deadline.map(|d| d.1)) => {
                    let d = deadline.map(|d| d.0).unwrap_or_default();
                    return Err(Stop::Failed(format!("the run passed its deadline of {}", fmt_duration(d))));
                }
            }
            for r in ctx.journal.events(ctx.run).map_err(jerr)? {
                if let Event::StepApproval {
                    step,
                    approved,
                    comment,
                } = r.event
                {
                    decisions.insert(step, (approved, comment));
                }
            }
            let (decided, still): (Vec<_>, Vec<_>) = paused
                .drain(..)
                .partition(|(a, _)| decisions.contains_key(&a.step));
            paused = still;
            ready.extend(decided);
            continue;
        }
        if running.is_empty() {
            let next = sched.quiesce().map_err(err)?;
            if next.is_empty() {
                return Ok(Finish::Done);
            }
            ready.extend(next.into_iter().map(|a| (a, FRESH)));
            continue;
        }
        let first = tokio::select! {
            r = running.join_next() => r,
            synced = unsynced.next(ctx) => {
                if let Err(e) = synced {
                    stop_all(&mut running).await;
                    return Err(jerr(e));
                }
                continue;
            }
            _ = cancel.cancelled() => {
                stop_all(&mut running).await;
                return Ok(Finish::Cancelled);
            }
            _ = sleep_until(deadline.map(|d| d.1)) => {
                stop_all(&mut running).await;
                let d = deadline.map(|d| d.0).unwrap_or_default();
                return Err(Stop::Failed(format!("the run passed its deadline of {}", fmt_duration(d))));
            }
        };
        // Everything that finished meanwhile joins this batch: one flush covers them all.
        let mut batch = vec![first];
        while let Some(r) = running.try_join_next() {
            batch.push(Some(r));
        }
        let mut done = Vec::new();
        for r in batch.into_iter().flatten() {
            let (step, end) = r.map_err(|e| format!("a step task ended abnormally: {e}"))?;
            match end {
                StepEnd::Done { attempt, output } => {
                    let payload = ctx.journal.put_payload(output.as_bytes()).map_err(jerr)?;
                    let event = Event::StepCompleted {
                        step: step.clone(),
                        attempt,
                        output: payload,
                    };
                    ctx.journal
                        .append(ctx.run, &event, Durability::Buffered)
                        .map_err(jerr)?;
                    done.push((step, output, event));
                }
                StepEnd::Failed { attempts, message } => {
                    stop_all(&mut running).await;
                    return Err(Stop::Failed(format!(
                        "step '{step}' failed after {attempts} attempt{}: {message}",
                        if attempts == 1 { "" } else { "s" }
                    )));
                }
                StepEnd::Journal(e) => {
                    stop_all(&mut running).await;
                    return Err(jerr(e));
                }
            }
        }
        let mut completed = Vec::with_capacity(done.len());
        for (step, output, event) in done {
            let value: Value = serde_json::from_str(&output)
                .map_err(|e| format!("step '{step}' output is not JSON: {e}"))?;
            let next = sched.complete(&step, value).map_err(err)?;
            ready.extend(next.into_iter().map(|a| (a, FRESH)));
            completed.push(event);
        }
        // Flushed now, and durable before any successor that could act outside starts (the
        // loop's top waits for it), before they are reported, and before the run's end: on a
        // shared journal, an end committed in the same transaction as completions lost with a
        // broken connection left a summary saying "succeeded" beside events without the end.
        unsynced.push(ctx, completed);
    }
}

/// Aborts every running step and waits until each task has really stopped, so none of them can
/// append to the journal after the run's `RunFinished` (an aborted task runs on to its next
/// await point).
async fn stop_all(running: &mut JoinSet<(String, StepEnd)>) {
    running.abort_all();
    while running.join_next().await.is_some() {}
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Errors worth another attempt: the same input may well succeed next time.
fn retryable(e: &CallError) -> bool {
    matches!(
        e,
        CallError::Timeout { .. } | CallError::ToolFailed { .. } | CallError::Trap { .. }
    )
}

/// Runs a step's attempts (with backoff between them) until one succeeds or none is left;
/// `input` is `a.input` as JSON text.
async fn run_step(ctx: &Arc<RunCtx>, a: &Activation, start: StartAt, input: String) -> StepEnd {
    let node = &ctx.graph.graph[a.node];
    let granted = match ctx.grants.get(&a.node) {
        Some(Ok(g)) => g,
        Some(Err(message)) => {
            return StepEnd::Failed {
                attempts: 0,
                message: message.clone(),
            };
        }
        None => {
            return StepEnd::Failed {
                attempts: 0,
                message: format!("node '{}' is not part of this run's graph", node.spec.id),
            };
        }
    };
    let (tool, grant, granted_tools) = (&granted.tool, &granted.grant, &granted.tools);
    let is_agent = node.spec.kind == super::spec::NodeKind::Agent;
    let policy = node.retry;
    let mut attempt = start.attempt;
    let mut replay = start.replay;
    if !start.delay.is_zero() {
        tokio::time::sleep(start.delay).await;
    }
    loop {
        let started = Event::StepStarted {
            step: a.step.clone(),
            attempt,
        };
        if let Err(e) = ctx.append(started, Durability::Buffered).await {
            return StepEnd::Journal(e);
        }
        let crossings = if replay {
            match StepCrossings::replay(ctx.journal.clone(), ctx.run, &a.step, attempt) {
                Ok(c) => c,
                Err(e) => return StepEnd::Journal(e),
            }
        } else {
            StepCrossings::record(ctx.journal.clone(), ctx.run, &a.step, attempt)
        };
        crossings.set_idempotency_key_honoured(honours_keys(grant, &ctx.config));
        replay = false;
        let held = match &grant.workspace {
            Some((dir, mode)) => {
                let held = WorkspaceHeld::take(&ctx.workspace_lock, *mode).await;
                if let Err(e) = ctx
                    .snapshot(&a.step, attempt, SnapshotMoment::Before, dir, *mode)
                    .await
                {
                    return StepEnd::Journal(e);
                }
                Some(held)
            }
            None => None,
        };
        let called = if is_agent {
            let env = AgentEnv {
                step: format!("{}/{}@{attempt}", ctx.run, a.step),
                node: node.spec.id.clone(),
                models: ctx.models.clone(),
                granted_models: node.spec.models.clone(),
                tools: granted_tools.clone(),
                run_tokens: ctx.tokens.clone(),
                max_tokens: node.spec.max_tokens,
                sink: ctx.on_token.clone().map(|observe| {
                    let (run, step) = (ctx.run, a.step.clone());
                    Arc::new(move |piece: &str| observe(run, &step, piece)) as Arc<TokenSink>
                }),
            };
            ctx.sandbox
                .call_agent_journaled(tool, grant, &input, &crossings, env)
                .await
                .map(|(report, activity)| {
                    observe_activity(ctx, &a.step, attempt, &activity);
                    (report, activity.nested)
                })
        } else {
            ctx.sandbox
                .call_journaled(tool, grant, &input, &crossings)
                .await
                .map(|report| (report, Vec::new()))
        };
        if let Some((dir, mode @ WorkspaceMode::Rw)) = &grant.workspace
            && !matches!(called, Err(CrossingError::Journal(_)))
            && let Err(e) = ctx
                .snapshot(&a.step, attempt, SnapshotMoment::After, dir, *mode)
                .await
        {
            return StepEnd::Journal(e);
        }
        drop(held);
        let (kind, message, can_retry) = match called {
            Ok((report, nested)) => {
                if let Some(observe) = &ctx.on_call {
                    observe(ctx.run, &a.step, attempt, &report.audit);
                }
                if let Err(e) = ctx.audit(&a.step, attempt, &report.audit, &nested).await {
                    return StepEnd::Journal(e);
                }
                match report.result {
                    Ok(output) => return StepEnd::Done { attempt, output },
                    Err(e) => (e.kind().to_owned(), e.to_string(), retryable(&e)),
                }
            }
            Err(CrossingError::Journal(e)) => return StepEnd::Journal(e),
            Err(e @ CrossingError::OutcomeUnknown { .. }) => {
                ("outcome_unknown".to_owned(), e.to_string(), false)
            }
            Err(e @ CrossingError::Divergence { .. }) => {
                ("replay_divergence".to_owned(), e.to_string(), false)
            }
        };
        let retry_in =
            (can_retry && attempt < policy.max_attempts).then(|| backoff(policy, attempt));
        let failed = Event::StepFailed {
            step: a.step.clone(),
            attempt,
            kind,
            message: message.clone(),
            retry_in_ms: retry_in.map(|d| d.as_millis() as u64),
        };
        if let Err(e) = ctx.append(failed, Durability::Durable).await {
            return StepEnd::Journal(e);
        }
        match retry_in {
            Some(d) => {
                tokio::time::sleep(d).await;
                attempt += 1;
            }
            None => {
                return StepEnd::Failed {
                    attempts: attempt,
                    message,
                };
            }
        }
    }
}

/// The tools an agent node grants, each under node grant ∩ its manifest ∩ operator policy.
fn granted_tools(
    node: &super::compile::CompiledNode,
    tools: &HashMap<String, (Arc<LoadedTool>, Manifest)>,
    policy: &OperatorPolicy,
    node_grant: &CallGrant,
) -> Result<Vec<GrantedTool>, String> {
    if node.spec.kind != super::spec::NodeKind::Agent {
        return Ok(Vec::new());
    }
    node.spec
        .tools
        .iter()
        .map(|name| {
            let (t, m) = tools.get(name).ok_or_else(|| {
                format!(
                    "tool '{name}' of node '{}' was not pinned by this run",
                    node.spec.id
                )
            })?;
            Ok(GrantedTool {
                name: name.clone(),
                tool: t.clone(),
                grant: EffectiveGrant::intersect(policy, m, node_grant),
            })
        })
        .collect()
}

/// Re-executes one finished step offline (`sandgraph replay`): a tool through its crossings,
/// an agent with its model answers and nested tool results served from the journal, no
/// model provider and no network.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn call_offline(
    engine: &Engine,
    run: RunId,
    node: &super::compile::CompiledNode,
    tools: &HashMap<String, (Arc<LoadedTool>, Manifest)>,
    tool: &LoadedTool,
    grant: &EffectiveGrant,
    step: &str,
    attempt: u32,
    input: &str,
    crossings: &StepCrossings,
) -> Result<crate::sandbox::outcome::CallReport, CrossingError> {
    if node.spec.kind != super::spec::NodeKind::Agent {
        return engine
            .sandbox
            .call_journaled(tool, grant, input, crossings)
            .await;
    }
    let divergence = |message: String| CrossingError::Divergence {
        run,
        step: step.to_owned(),
        index: 0,
        recorded: "every granted tool pinned".into(),
        asked: message,
    };
    let node_grant = call_grant(node, &engine.config).map_err(divergence)?;
    let granted =
        granted_tools(node, tools, &engine.config.policy, &node_grant).map_err(divergence)?;
    let env = AgentEnv {
        step: format!("{run}/{step}@{attempt}"),
        node: node.spec.id.clone(),
        models: None,
        granted_models: node.spec.models.clone(),
        tools: granted,
        run_tokens: Arc::new(RunTokens::new(None, 0)),
        max_tokens: None,
        sink: None,
    };
    engine
        .sandbox
        .call_agent_journaled(tool, grant, input, crossings, env)
        .await
        .map(|(report, _)| report)
}

/// Hands an agent step's nested tool calls and model calls to the observers.
fn observe_activity(ctx: &RunCtx, step: &str, attempt: u32, activity: &AgentActivity) {
    if let Some(observe) = &ctx.on_call {
        for audit in &activity.nested {
            observe(ctx.run, step, attempt, audit);
        }
    }
    if let Some(observe) = &ctx.on_model {
        for call in &activity.model_calls {
            observe(ctx.run, step, attempt, call);
        }
    }
}

/// `initial × multiplier^(attempt-1)`, with equal jitter: half fixed, half uniformly random,
/// so retries of many runs failing together spread out.
fn backoff(policy: super::compile::RetryPolicy, attempt: u32) -> Duration {
    use rand::Rng;
    let base = policy.initial_backoff.as_secs_f64()
        * policy
            .multiplier
            .max(1.0)
            .powi(attempt.saturating_sub(1) as i32);
    let base = base.min(3600.0);
    let jitter = f64::from(wasmtime_wasi::thread_rng().next_u32()) / f64::from(u32::MAX) * 0.5;
    Duration::from_secs_f64(base * (0.5 + jitter))
}

/// Does every egress rule of this step go to a host that honours `Idempotency-Key`?
fn honours_keys(grant: &EffectiveGrant, config: &EngineConfig) -> bool {
    !grant.egress.is_empty()
        && grant.egress.iter().all(|r| {
            config
                .idempotency_key_hosts
                .iter()
                .any(|h| manifest::host_matches(h, &r.host))
        })
}

/// The per-call grant a node's steps run under in `engine`.
pub(crate) fn call_grant_for(
    node: &super::compile::CompiledNode,
    engine: &Engine,
) -> Result<CallGrant, String> {
    call_grant(node, &engine.config)
}

/// The node's `grant` and `timeout` as a per-call grant (it can only narrow the manifest).
fn call_grant(
    node: &super::compile::CompiledNode,
    config: &EngineConfig,
) -> Result<CallGrant, String> {
    let g = node.spec.grant.as_ref();
    let mode = match g.and_then(|g| g.workspace.as_deref()) {
        None | Some("rw") => WorkspaceMode::Rw,
        Some("ro") => WorkspaceMode::Ro,
        Some("none") => WorkspaceMode::None,
        Some(other) => return Err(format!("grant.workspace '{other}' is not none, ro or rw")),
    };
    let mut limits = Limits::unbounded();
    if let Some(l) = g.and_then(|g| g.limits.as_ref()) {
        let size = |s: &Option<String>, what: &str| -> Result<Option<u64>, String> {
            s.as_deref()
                .map(|v| manifest::parse_size(v).map_err(|e| format!("grant.limits.{what}: {e}")))
                .transpose()
        };
        if let Some(m) = size(&l.memory, "memory")? {
            limits.memory = m;
        }
        if let Some(m) = size(&l.max_output, "maxOutput")? {
            limits.max_output = m;
        }
        if let Some(m) = size(&l.max_response, "maxResponse")? {
            limits.max_response = m;
        }
        if let Some(t) = &l.timeout {
            limits.timeout =
                manifest::parse_duration(t).map_err(|e| format!("grant.limits.timeout: {e}"))?;
        }
    }
    if let Some(t) = node.timeout {
        limits.timeout = limits.timeout.min(t);
    }
    Ok(CallGrant {
        workspace: config.workspace.clone().map(|d| (d, mode)),
        limits: Some(limits),
        egress_hosts: g.and_then(|g| g.egress_hosts.clone()),
    })
}

fn fmt_duration(d: Duration) -> String {
    if d.as_millis().is_multiple_of(1000) {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
