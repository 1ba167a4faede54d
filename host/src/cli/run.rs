//! `sandgraph run`, `sandgraph resume` and `sandgraph replay`: execute graphs locally against the
//! embedded journal, continue runs a crash interrupted, and re-execute finished runs offline.
//! Progress goes to stderr one line per step event; the run's output JSON goes to stdout.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;

use clap::Args;

use super::tool::{CacheArgs, OperatorArgs};
use crate::graph::catalog::Catalog;
use crate::graph::engine::{Engine, EngineConfig, RunOutcome};
use crate::graph::{self, CompiledGraph};
use crate::journal::workspace::SnapshotLimits;
use crate::journal::{Journal, RunId, RunStatus};
use crate::sandbox::egress::StaticResolver;
use crate::sandbox::manifest::OperatorPolicy;
use crate::sandbox::{Sandbox, SandboxConfig};

/// Where the journal lives.
#[derive(Debug, Clone, Args)]
pub struct JournalArgs {
    /// The journal directory (default: $XDG_DATA_HOME/sandgraph/journal or
    /// ~/.local/share/sandgraph/journal), or a postgres:// URL of a shared journal database.
    #[arg(long, env = "SANDGRAPH_JOURNAL")]
    pub journal: Option<PathBuf>,
}

impl JournalArgs {
    pub fn dir(&self) -> PathBuf {
        self.journal.clone().unwrap_or_else(|| {
            std::env::var_os("XDG_DATA_HOME")
                .map(PathBuf::from)
                .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
                .unwrap_or_else(|| PathBuf::from("."))
                .join("sandgraph/journal")
        })
    }

    pub fn open(&self) -> Result<Journal, String> {
        // A PostgreSQL URL: a journal several hosts share (see docs/SCALE-OUT.md).
        if let Some(url) = self.journal.as_ref().and_then(|p| p.to_str())
            && crate::journal::is_database_url(url)
        {
            return Journal::open_location(url).map_err(|e| e.to_string());
        }
        let dir = self.dir();
        if let Some(parent) = dir.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
        }
        Journal::open(&dir).map_err(|e| e.to_string())
    }
}

/// What the host running steps is allowed and given.
#[derive(Debug, Clone, Args)]
pub struct HostArgs {
    #[command(flatten)]
    pub journal: JournalArgs,
    #[command(flatten)]
    pub operator: OperatorArgs,
    /// Host directory exposed as /workspace to tools whose manifest asks for one.
    #[arg(long)]
    pub workspace: Option<PathBuf>,
    /// Largest workspace (all file bytes) journaled as a snapshot around each step for replay,
    /// e.g. 64MiB; past it (or past 10000 entries) the step is journaled as not snapshotted and
    /// `sandgraph replay` says it cannot replay that step.
    #[arg(long, value_name = "SIZE", default_value = "64MiB", value_parser = crate::sandbox::manifest::parse_size)]
    pub workspace_snapshot_max: u64,
    /// An egress host that deduplicates requests by Idempotency-Key (repeatable): an
    /// interrupted request to it may be sent again whatever its method.
    #[arg(long = "idempotent-host", value_name = "HOST")]
    pub idempotent_hosts: Vec<String>,
    /// Steps of one run executing at once.
    #[arg(long, default_value_t = 16)]
    pub max_parallel: usize,
    /// The models file: which provider answers each model alias agents name (default: alias
    /// `default` is the embedded engine over models/SmolLM2-135M-Instruct.Q4_1.gguf).
    #[arg(long, env = "SANDGRAPH_MODELS", value_name = "FILE")]
    pub models: Option<PathBuf>,
    /// Print only the output (no progress lines).
    #[arg(long, short)]
    pub quiet: bool,
    #[command(flatten)]
    pub cache: CacheArgs,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The graph YAML file.
    pub graph: PathBuf,
    /// The run input JSON document.
    #[arg(long, default_value = "{}")]
    pub input: String,
    /// Folder whose `*/*.sandgraph.yaml` manifests name the components (repeatable; default:
    /// tools and agents).
    #[arg(long, value_name = "DIR", default_values = ["tools", "agents"])]
    pub tools: Vec<PathBuf>,
    /// Folder with the built components (`<name>.wasm` or `tool_<name>.wasm`).
    #[arg(long, default_value = "target/wasm32-wasip2/release")]
    pub components: PathBuf,
    #[command(flatten)]
    pub host: HostArgs,
}

#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// The run id (from `sandgraph runs list`).
    pub run: String,
    #[command(flatten)]
    pub journal: JournalArgs,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub cache: CacheArgs,
}

/// Exit status and what to print.
pub struct Finished {
    pub code: u8,
    pub stdout: String,
}

fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))
}

fn engine(host: &HostArgs, resolver: Option<StaticResolver>) -> Result<Engine, String> {
    let secrets = host.operator.secret_store()?;
    // A bad models file stops the command before any step runs.
    let models =
        crate::model::cli_models(host.models.as_deref(), &secrets).map_err(|e| e.to_string())?;
    let mut config = SandboxConfig {
        cache_dir: host.cache.dir(),
        secrets,
        extra_roots: host.operator.extra_roots()?,
        ..SandboxConfig::default()
    };
    if let Some(r) = resolver {
        config.resolver = Arc::new(r);
    }
    let sandbox = Sandbox::new(config).map_err(|e| e.to_string())?;
    let journal = host.journal.open()?;
    install_fault_hook(&journal);
    let engine = Engine::new(
        Arc::new(sandbox),
        Arc::new(journal),
        EngineConfig {
            policy: OperatorPolicy {
                allow_private: host.operator.allow_private.clone(),
                ..OperatorPolicy::default()
            },
            max_parallel_steps: host.max_parallel,
            workspace: host.workspace.clone(),
            exit_when_waiting: true,
            workspace_snapshots: SnapshotLimits {
                max_bytes: host.workspace_snapshot_max,
                ..SnapshotLimits::default()
            },
            idempotency_key_hosts: host.idempotent_hosts.clone(),
            ..EngineConfig::default()
        },
    )
    .with_models(models);
    if host.quiet {
        return Ok(engine);
    }
    // On a terminal: a live view of the running steps and the model's text as it streams.
    let report = super::progress::reporter(std::io::stderr().is_terminal());
    let engine = engine
        .with_progress(report.progress)
        .with_call_observer(report.calls)
        .with_model_observer(report.models);
    Ok(match report.tokens {
        Some(t) => engine.with_token_observer(t),
        None => engine,
    })
}

/// Fault injection for the crash tests: with `SANDGRAPH_FAULT_KILL_AFTER_EVENT=N` the process
/// SIGKILLs itself right after the N-th journal append of its life (counting from 1).
fn install_fault_hook(journal: &Journal) {
    let Some(n) = std::env::var("SANDGRAPH_FAULT_KILL_AFTER_EVENT")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    else {
        return;
    };
    let count = std::sync::atomic::AtomicU64::new(0);
    journal.set_after_append(Box::new(move |_, _, _| {
        if count.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1 == n {
            // SAFETY: kill(2) on our own pid has no memory-safety preconditions.
            unsafe {
                libc::kill(libc::getpid(), libc::SIGKILL);
            }
        }
    }));
}

fn finished(outcome: &RunOutcome) -> u8 {
    match outcome.status {
        RunStatus::Succeeded => 0,
        _ => 1,
    }
}

/// `sandgraph run`.
pub fn run(args: RunArgs) -> Result<Finished, String> {
    let mut catalog =
        Catalog::from_dirs(&args.tools, &args.components).map_err(|e| e.to_string())?;
    let manifests = catalog.manifests();
    let untyped = graph::load(&args.graph, &manifests).map_err(|d| d.to_string())?;
    let input: serde_json::Value = serde_json::from_str(&args.input)
        .map_err(|e| format!("--input is not a JSON document: {e}"))?;
    let engine = engine(&args.host, None)?;
    let rt = runtime()?;
    // Then again knowing what each node's component declares it returns, so `nodes.<id>` is
    // type-checked; a component that cannot answer stays untyped and fails its own step.
    let named = untyped.component_names();
    rt.block_on(catalog.describe(engine.sandbox(), Some(&named)));
    let compiled: CompiledGraph =
        graph::load_typed(&args.graph, &manifests, &catalog.output_schemas())
            .map_err(|d| d.to_string())?;
    let outcome = rt
        .block_on(engine.run(Arc::new(compiled), &catalog, input))
        .map_err(|e| e.to_string())?;
    Ok(Finished {
        code: finished(&outcome),
        stdout: outcome.output.clone().unwrap_or_default(),
    })
}

/// `sandgraph resume`: every unfinished run, to its end. Prints `<run> <status> <output>` per run.
pub fn resume(host: HostArgs) -> Result<Finished, String> {
    let engine = engine(&host, None)?;
    // On a shared database, runs in the replicas' queue are theirs: a replica holds (or will
    // claim) each, and resuming it here too would execute it twice.
    let queue = match host.journal.journal.as_ref().and_then(|p| p.to_str()) {
        Some(url) if crate::journal::is_database_url(url) => Some(
            crate::journal::queue::RunQueue::open(
                url,
                "cli-resume",
                std::time::Duration::from_secs(15),
            )
            .map_err(|e| e.to_string())?,
        ),
        _ => None,
    };
    // Decided before the runtime starts: the queue's client blocks.
    let mut out = Vec::new();
    let mut mine = Vec::new();
    for s in engine
        .journal()
        .unfinished_runs()
        .map_err(|e| e.to_string())?
    {
        match &queue {
            Some(q) if q.holds(s.run).map_err(|e| e.to_string())? => out.push(format!(
                "{} skipped: it is in the replicas' run queue, and they resume it",
                s.run
            )),
            _ => mine.push(s.run),
        }
    }
    drop(queue);
    let rt = runtime()?;
    rt.block_on(async {
        let mut handles = Vec::new();
        for run in mine {
            handles.push(
                engine
                    .resume_or_fail(run)
                    .await
                    .map_err(|e| e.to_string())?,
            );
        }
        let mut code = 0;
        for h in handles {
            let o = h.wait().await;
            code = code.max(finished(&o));
            out.push(format!(
                "{} {} {}",
                o.run,
                o.status,
                o.output.as_deref().or(o.error.as_deref()).unwrap_or("")
            ));
        }
        Ok(Finished {
            code,
            stdout: out.join("\n"),
        })
    })
}

/// `sandgraph replay <id>`: offline, with a resolver that knows no names.
pub fn replay(args: ReplayArgs) -> Result<Finished, String> {
    let run = RunId::parse(&args.run).map_err(|e| e.to_string())?;
    let host = HostArgs {
        journal: args.journal,
        operator: OperatorArgs::default(),
        workspace: None,
        workspace_snapshot_max: SnapshotLimits::default().max_bytes,
        idempotent_hosts: vec![],
        max_parallel: 1,
        // Replay serves recorded model answers: no model is needed.
        models: None,
        quiet: true,
        cache: args.cache,
    };
    let engine = engine(&host, Some(StaticResolver::default()))?;
    let report = runtime()?
        .block_on(engine.replay(run))
        .map_err(|e| e.to_string())?;
    // A step that cannot be replayed is not a pass either.
    let code = if report.identical() { 0 } else { 1 };
    let stdout = if args.json {
        serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?
    } else {
        let mut lines = Vec::new();
        for s in &report.steps {
            lines.push(match s {
                graph::replay::StepReplay::Identical { step, attempt } => {
                    format!("{step} (attempt {attempt}): identical")
                }
                graph::replay::StepReplay::Diverged {
                    step,
                    attempt,
                    recorded,
                    replayed,
                } => format!(
                    "{step} (attempt {attempt}): DIVERGED\n  recorded: {recorded}\n  replayed: {replayed}"
                ),
                graph::replay::StepReplay::Failed {
                    step,
                    attempt,
                    message,
                } => format!("{step} (attempt {attempt}): FAILED: {message}"),
                graph::replay::StepReplay::WorkspaceDiverged {
                    step,
                    attempt,
                    path,
                    recorded,
                    replayed,
                } => format!(
                    "{step} (attempt {attempt}): WORKSPACE DIVERGED at '{path}'\n  recorded: {recorded}\n  replayed: {replayed}"
                ),
                graph::replay::StepReplay::NotReplayable {
                    step,
                    attempt,
                    reason,
                } => format!("{step} (attempt {attempt}): CANNOT BE REPLAYED: {reason}"),
            });
        }
        let unreplayable = report.steps.iter().filter(|s| !s.is_replayable()).count();
        let diverged = report
            .steps
            .iter()
            .any(|s| s.is_replayable() && !s.is_identical());
        lines.push(format!(
            "run {run}: {} of {} steps identical{}{}",
            report.steps.iter().filter(|s| s.is_identical()).count(),
            report.steps.len(),
            if diverged { "; replay diverged" } else { "" },
            match unreplayable {
                0 => String::new(),
                1 => "; 1 step cannot be replayed".to_owned(),
                n => format!("; {n} steps cannot be replayed"),
            }
        ));
        lines.join("\n")
    };
    Ok(Finished { code, stdout })
}
