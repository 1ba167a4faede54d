//! `sandgraph serve`: the HTTP API over hyper 1. Graph authors submit YAML and tools, start runs
//! and stream their journal; operators get probes, metrics and a graceful SIGTERM. Requests go
//! `api → graph → sandbox → journal`; this module never touches wasmtime itself.

pub mod auth;
mod claims;
pub mod config;
mod console;
pub mod credentials;
mod head_limit;
mod idempotency;
pub mod limits;
pub mod metrics;
pub mod model_probe;
pub mod problem;
mod routes;
mod sse;
mod steps;
pub mod store;
pub mod telemetry;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::graph::CompiledGraph;
use crate::graph::catalog::Catalog;
use crate::graph::engine::{Engine, EngineConfig, RunHandle, RunOutcome};
use crate::journal::queue::{Claim, RunQueue};
use crate::journal::{Event, Journal, RunId};
use crate::sandbox::egress::TlsRoots;
use crate::sandbox::manifest::OperatorPolicy;
use crate::sandbox::{Sandbox, SandboxConfig};

pub use config::Config;
use metrics::{Metrics, RunLabels};
use store::Store;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot open the journal at {path}: {reason}")]
    Journal { path: String, reason: String },
    #[error("cannot start the sandbox: {0}")]
    Sandbox(String),
    #[error("cannot load the preloaded tools: {0}")]
    Tools(String),
    #[error("cannot listen on {addr}: {reason}")]
    Bind { addr: SocketAddr, reason: String },
    #[error("cannot resume unfinished runs: {0}")]
    Resume(String),
    #[error("cannot open the graph and tool store: {0}")]
    Store(String),
    #[error("authentication: {0}")]
    Auth(String),
    #[error("limits: {0}")]
    Limits(String),
    #[error("model backend: {0}")]
    Model(String),
    #[error("trace export: {0}")]
    Telemetry(#[from] telemetry::TelemetryError),
}

/// Everything the routes share.
pub(crate) struct State {
    pub config: Config,
    pub engine: Engine,
    pub journal: Arc<Journal>,
    pub store: Store,
    /// Shared with the MCP server, which lists and calls what it holds.
    pub catalog: Arc<RwLock<Arc<Catalog>>>,
    /// Tools over MCP's streamable HTTP at `/mcp`, and the handler that tells its sessions
    /// when the tool list changes.
    pub mcp: (crate::mcp::McpTools, crate::mcp::http::McpHttp),
    /// Compiled graphs by (name, version).
    pub compiled: Mutex<HashMap<(String, String), Arc<CompiledGraph>>>,
    /// Runs executing in this process, with their cancellation.
    pub active: Mutex<HashMap<RunId, CancellationToken>>,
    /// Changes whenever a run of this process ends (shutdown waits on it).
    pub run_ended: tokio::sync::watch::Sender<usize>,
    pub admission: limits::Admission,
    pub auth: credentials::Credentials,
    pub rate: limits::RateLimiter,
    /// Per key, held while an idempotent submission checks its key and starts its run.
    pub idempotency: idempotency::KeyLocks,
    /// When expired idempotency keys were last swept (ms since the Unix epoch).
    pub idempotency_swept: AtomicU64,
    pub metrics: Arc<Metrics>,
    /// Trace export, when `otlp_endpoint` is set.
    pub telemetry: Option<Arc<telemetry::Telemetry>>,
    /// The model backend `/readyz` probes, when `model_url` is set.
    pub model: Option<model_probe::ModelProbe>,
    pub ready: AtomicBool,
    pub shutdown: CancellationToken,
    pub next_request: AtomicU64,
    /// The run queue replicas share, when the journal is a PostgreSQL database.
    pub queue: Option<Arc<RunQueue>>,
    /// Runs this replica claimed from the queue and executes, with their lease epochs.
    pub claims: Mutex<HashMap<RunId, Claim>>,
    /// Wakes the claim loop (a run was queued here, or a slot freed).
    pub claim_wake: tokio::sync::Notify,
}

/// A started server: its address and the way to stop it.
pub struct Running {
    pub addr: SocketAddr,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    /// Stops accepting, lets runs finish within the grace period, flushes the journal.
    pub async fn shutdown(self) {
        self.shutdown.cancel();
        let _ = self.task.await;
    }

    /// Resolves when the server has stopped (after a shutdown began).
    pub async fn stopped(self) {
        let _ = self.task.await;
    }

    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }
}

/// Opens the journal, loads tools, resumes unfinished runs and starts serving on `config.listen`.
pub async fn start(config: Config) -> Result<Running, ServeError> {
    start_with_models(config, None).await
}

/// [`start`] with the model providers agent steps call (`sandgraph serve --models`).
pub async fn start_with_models(
    config: Config,
    models: Option<Arc<dyn crate::sandbox::agent::ModelRouter>>,
) -> Result<Running, ServeError> {
    let database = config
        .journal
        .to_str()
        .filter(|l| crate::journal::is_database_url(l))
        .map(str::to_owned);
    // Errors name the database without its password.
    let shown = match &database {
        Some(url) => crate::journal::postgres::redact(url),
        None => config.journal.display().to_string(),
    };
    if database.is_none()
        && let Some(parent) = config.journal.parent()
    {
        let _ = std::fs::create_dir_all(parent);
    }
    let cannot_open = |reason: String| ServeError::Journal {
        path: shown.clone(),
        reason,
    };
    let location = config.journal.clone();
    let db = database.clone();
    let journal = tokio::task::spawn_blocking(move || match db {
        Some(url) => Journal::open_location(&url),
        None => Journal::open(&location),
    })
    .await
    .map_err(|e| cannot_open(e.to_string()))?
    .map_err(|e| cannot_open(e.to_string()))?;
    let journal = Arc::new(journal);
    let queue = match database {
        Some(url) => {
            let owner = replica_name();
            let lease = config.run_lease;
            let q = tokio::task::spawn_blocking(move || RunQueue::open(&url, &owner, lease))
                .await
                .map_err(|e| cannot_open(e.to_string()))?
                .map_err(|e| cannot_open(e.to_string()))?;
            tracing::info!(replica = %q.owner(), lease_ms = lease.as_millis() as u64, "sharing runs with other replicas through the journal database");
            Some(Arc::new(q))
        }
        None => None,
    };
    let metrics = Arc::new(Metrics::new());
    {
        let m = metrics.clone();
        journal.set_after_append(Box::new(move |run, _, event| m.on_append(run, event)));
        let m = metrics.clone();
        journal.set_on_flush(Box::new(move |took| {
            m.journal_flush.observe(took.as_secs_f64())
        }));
    }
    let telemetry = match &config.otlp_endpoint {
        Some(endpoint) => {
            let tls = TlsRoots::read_pem_files(config.otlp_ca.as_slice())
                .and_then(|extra| TlsRoots::new(&extra))
                .map_err(|e| telemetry::TelemetryError::Tls(e.to_string()))?;
            let t = Arc::new(telemetry::Telemetry::start(
                endpoint,
                &config.otlp_service_name,
                &config.otlp_headers,
                tls,
            )?);
            let hook = t.clone();
            journal.set_after_append(Box::new(move |run, _, event| hook.on_append(run, event)));
            tracing::info!(endpoint = %endpoint, "exporting traces over OTLP/HTTP");
            Some(t)
        }
        None => None,
    };
    let extra_roots = TlsRoots::read_pem_files(&config.egress_ca)
        .map_err(|e| ServeError::Sandbox(e.to_string()))?;
    let secrets = config
        .secret_store()
        .map_err(|e| ServeError::Sandbox(e.to_string()))?;
    let sandbox = Sandbox::new(SandboxConfig {
        cache_dir: config.cache_dir.clone(),
        extra_roots,
        secrets,
        ..SandboxConfig::default()
    })
    .map_err(|e| ServeError::Sandbox(e.to_string()))?;
    let progress_metrics = metrics.clone();
    let mut engine = Engine::new(
        Arc::new(sandbox),
        journal.clone(),
        EngineConfig {
            policy: OperatorPolicy {
                allow_private: config.allow_private.clone(),
                ..OperatorPolicy::default()
            },
            max_parallel_steps: config.max_parallel_steps.max(1),
            ..EngineConfig::default()
        },
    )
    .with_progress(Arc::new(move |run, event: &Event| {
        progress_metrics.on_progress(run, event);
        log_progress(run, event);
    }));
    if let Some(t) = &telemetry {
        let t = t.clone();
        engine = engine.with_call_observer(Arc::new(move |run, step, attempt, audit| {
            t.on_call(run, step, attempt, audit)
        }));
    }
    if let Some(models) = models {
        engine = engine.with_models(models);
    }
    {
        let (m, t) = (metrics.clone(), telemetry.clone());
        engine = engine.with_model_observer(Arc::new(move |run, step, attempt, call| {
            m.on_model_call(call);
            if let Some(t) = &t {
                t.on_model_call(run, step, attempt, call);
            }
        }));
    }
    let store = Store::open(journal.clone());
    let mut catalog = match (&config.tools, &config.components) {
        (Some(t), Some(c)) => {
            Catalog::from_dirs(t, c).map_err(|e| ServeError::Tools(e.to_string()))?
        }
        _ => Catalog::default(),
    };
    for t in store
        .tools()
        .map_err(|e| ServeError::Store(e.to_string()))?
    {
        let wasm = store
            .tool_wasm(&t.digest)
            .map_err(|e| ServeError::Store(e.to_string()))?;
        let manifest = crate::sandbox::manifest::Manifest::parse(&t.name, &t.manifest)
            .map_err(|e| ServeError::Store(e.to_string()))?;
        catalog.insert(manifest, t.manifest.clone(), wasm);
    }
    // Graphs POSTed later are type-checked against what each component declares it returns.
    for (name, why) in catalog.describe(engine.sandbox(), None).await {
        tracing::warn!(component = %name, reason = %why, "output schema unknown; reads of its outputs are not type-checked");
    }
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|e| ServeError::Bind {
            addr: config.listen,
            reason: e.to_string(),
        })?;
    let addr = listener.local_addr().map_err(|e| ServeError::Bind {
        addr: config.listen,
        reason: e.to_string(),
    })?;
    let auth = credentials::Credentials::load(auth::AuthConfig {
        tokens_file: config.auth_tokens.clone(),
        jwks_file: config.auth_jwks.clone(),
        issuer: config.auth_issuer.clone(),
        audience: config.auth_audience.clone(),
        leeway: config.auth_leeway,
    })
    .map_err(|e| ServeError::Auth(e.to_string()))?;
    let rate = limits::RateLimiter::try_new(config.rate_limit, config.rate_burst)
        .map_err(|e| ServeError::Limits(e.to_string()))?;
    let admission = limits::Admission::try_new(config.max_concurrent_runs, config.run_queue)
        .map_err(|e| ServeError::Limits(e.to_string()))?;
    let model = match &config.model_url {
        Some(url) => Some(
            model_probe::ModelProbe::new(url, config.model_probe_timeout)
                .map_err(|e| ServeError::Model(e.to_string()))?,
        ),
        None => None,
    };
    let shutdown = CancellationToken::new();
    let catalog = Arc::new(RwLock::new(Arc::new(catalog)));
    let mcp = {
        let catalog = catalog.clone();
        let (m, t) = (metrics.clone(), telemetry.clone());
        let tools = crate::mcp::McpTools::new(
            engine.sandbox().clone(),
            Arc::new(move || catalog.read().unwrap_or_else(|p| p.into_inner()).clone()),
            OperatorPolicy {
                allow_private: config.allow_private.clone(),
                ..OperatorPolicy::default()
            },
            crate::sandbox::manifest::CallGrant::default(),
            Some(Arc::new(move |audit| {
                m.on_tool_call(audit);
                if let Some(t) = &t {
                    t.on_mcp_call(audit);
                }
            })),
            None,
        );
        let http = crate::mcp::http::McpHttp::new(
            tools.clone(),
            config.max_run_bytes,
            shutdown.child_token(),
        );
        (tools, http)
    };
    let state = Arc::new(State {
        admission,
        auth,
        rate,
        config,
        engine,
        journal,
        store,
        catalog,
        mcp,
        compiled: Mutex::default(),
        active: Mutex::default(),
        run_ended: tokio::sync::watch::Sender::new(0),
        idempotency: idempotency::KeyLocks::default(),
        idempotency_swept: AtomicU64::new(0),
        metrics,
        telemetry,
        model,
        ready: AtomicBool::new(false),
        shutdown: shutdown.clone(),
        next_request: AtomicU64::new(1),
        queue: queue.clone(),
        claims: Mutex::default(),
        claim_wake: tokio::sync::Notify::new(),
    });
    match queue {
        // Replicas share the unfinished runs: each is claimed from the queue (a run whose
        // replica stopped, once its lease runs out).
        Some(q) => {
            tokio::spawn(claims::claim_loop(state.clone(), q.clone()));
            tokio::spawn(claims::heartbeat(state.clone(), q.clone()));
            tokio::spawn(claims::follow_commands(state.clone(), q));
        }
        None => {
            // Unfinished runs continue before new ones are accepted.
            let resumed = state
                .engine
                .resume_unfinished()
                .await
                .map_err(|e| ServeError::Resume(e.to_string()))?;
            for handle in resumed {
                let labels = run_labels(&state.journal, handle.run);
                tracing::info!(run_id = %handle.run, "resuming an unfinished run");
                state.clone().supervise(handle, labels, None);
            }
        }
    }
    if !state.config.auth_reload_interval.is_zero() {
        tokio::spawn(follow_credentials(state.clone()));
    }
    state.ready.store(true, Ordering::SeqCst);
    tracing::info!(%addr, "listening");
    let task = tokio::spawn(accept_loop(state, listener));
    Ok(Running {
        addr,
        shutdown,
        task,
    })
}

/// This replica's name in the run queue's lease rows: the host name (a pod's name in
/// Kubernetes), the process id and a random suffix, so a restarted replica is a new owner.
fn replica_name() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "sandgraph".into());
    let suffix = RunId::new().to_string();
    format!("{host}-{}-{}", std::process::id(), &suffix[..8])
}

/// Reloads the tokens and JWKS files when they change, until shutdown.
async fn follow_credentials(state: Arc<State>) {
    let mut tick = tokio::time::interval(state.config.auth_reload_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = state.shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let s = state.clone();
        let Ok(refresh) = tokio::task::spawn_blocking(move || s.auth.refresh()).await else {
            continue;
        };
        let outcome = match refresh {
            credentials::Refresh::Unchanged => continue,
            credentials::Refresh::Reloaded => {
                tracing::info!("credentials files changed; the new tokens and keys are in force");
                "reloaded"
            }
            credentials::Refresh::Refused(e) => {
                tracing::error!(error = %e, "credentials files changed but do not load; the previous credentials stay in force");
                "refused"
            }
        };
        state
            .metrics
            .auth_reloads
            .get_or_create(&vec![("outcome".into(), outcome.into())])
            .inc();
    }
}

/// One log line per step transition, with the run and step ids.
fn log_progress(run: RunId, event: &Event) {
    match event {
        Event::StepStarted { step, attempt } => {
            tracing::info!(run_id = %run, step_id = %step, attempt, "step started")
        }
        Event::StepCompleted { step, attempt, .. } => {
            tracing::info!(run_id = %run, step_id = %step, attempt, "step completed")
        }
        Event::StepFailed {
            step,
            attempt,
            kind,
            retry_in_ms,
            ..
        } => tracing::warn!(
            run_id = %run,
            step_id = %step,
            attempt,
            kind = %kind,
            retry_in_ms = ?retry_in_ms,
            "step attempt failed"
        ),
        _ => {}
    }
}

/// The step labels of a run from its pinned graph (for runs this process did not start).
fn run_labels(journal: &Journal, run: RunId) -> RunLabels {
    let Ok(records) = journal.events_from(run, 0) else {
        return RunLabels::default();
    };
    let Some(Event::RunCreated {
        graph_name, graph, ..
    }) = records.first().map(|r| &r.event)
    else {
        return RunLabels::default();
    };
    let components = journal
        .payload(graph)
        .ok()
        .and_then(|b| serde_json::from_slice::<crate::graph::spec::Graph>(&b).ok())
        .map(|g| {
            g.spec
                .nodes
                .into_iter()
                .map(|n| (n.id, n.component))
                .collect()
        })
        .unwrap_or_default();
    RunLabels {
        graph: graph_name.clone(),
        components,
    }
}

impl State {
    /// Watches a started run: frees its slot and forgets it when it ends.
    pub(crate) fn supervise(
        self: Arc<Self>,
        handle: RunHandle,
        labels: RunLabels,
        permit: Option<limits::AdmissionPermit>,
    ) -> tokio::task::JoinHandle<RunOutcome> {
        let run = handle.run;
        self.metrics.track(run, labels);
        self.active
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(run, handle.canceller());
        self.metrics.runs_in_flight.inc();
        tokio::spawn(async move {
            let outcome = handle.wait().await;
            drop(permit);
            self.metrics.runs_in_flight.dec();
            self.active
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&run);
            self.run_ended.send_modify(|n| *n += 1);
            tracing::info!(run_id = %run, status = %outcome.status, "run ended");
            claims::settle(&self, run).await;
            outcome
        })
    }

    fn active_runs(&self) -> usize {
        self.active.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

async fn accept_loop(state: Arc<State>, listener: TcpListener) {
    let connections = tokio_util::sync::CancellationToken::new();
    let open = Arc::new(AtomicUsize::new(0));
    let (closed_tx, mut closed_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = state.shutdown.cancelled() => break,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let state = state.clone();
        let stop = connections.clone();
        let closed = closed_tx.clone();
        open.fetch_add(1, Ordering::SeqCst);
        let open = open.clone();
        tokio::spawn(async move {
            let svc_state = state.clone();
            let service = hyper::service::service_fn(move |req| {
                let state = svc_state.clone();
                async move { Ok::<_, std::convert::Infallible>(routes::handle(state, req, peer).await) }
            });
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(state.config.header_timeout)
                .max_buf_size(head_limit::HYPER_BUF)
                .max_headers(head_limit::MAX_HEADERS)
                .serve_connection(
                    TokioIo::new(head_limit::ProblemOn431::new(
                        stream,
                        head_limit::MAX_HEAD,
                        Some(state.metrics.clone()),
                    )),
                    service,
                );
            let mut conn = std::pin::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = stop.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(state.config.shutdown_grace, conn.as_mut()).await;
                }
            }
            open.fetch_sub(1, Ordering::SeqCst);
            let _ = closed.send(());
        });
    }
    drop(listener);
    tracing::info!("shutting down: no longer accepting connections");
    state.ready.store(false, Ordering::SeqCst);
    // Runs get the grace period to finish; whatever is still running stays unfinished in the
    // journal and resumes on the next start.
    let grace = state.config.shutdown_grace;
    let deadline = tokio::time::Instant::now() + grace;
    let mut ended = state.run_ended.subscribe();
    while state.active_runs() > 0 {
        tokio::select! {
            _ = ended.changed() => {}
            _ = tokio::time::sleep_until(deadline) => break,
        }
    }
    let left = state.active_runs();
    if left > 0 {
        if state.queue.is_some() {
            tracing::warn!(
                runs = left,
                "grace period over; unfinished runs go back to the queue for the other replicas"
            );
        } else {
            tracing::warn!(
                runs = left,
                "grace period over; unfinished runs resume on the next start"
            );
        }
    }
    claims::hand_back(&state).await;
    connections.cancel();
    let conn_deadline = tokio::time::Instant::now() + Duration::from_secs(1);
    while open.load(Ordering::SeqCst) > 0 {
        tokio::select! {
            _ = closed_rx.recv() => {}
            _ = tokio::time::sleep_until(conn_deadline) => break,
        }
    }
    let journal = state.journal.clone();
    match tokio::task::spawn_blocking(move || journal.sync()).await {
        Ok(Ok(())) => tracing::info!("journal flushed; stopped"),
        Ok(Err(e)) => tracing::error!(error = %e, "journal flush at shutdown failed"),
        Err(e) => tracing::error!(error = %e, "journal flush at shutdown failed"),
    }
    if let Some(t) = state.telemetry.clone() {
        // Spans of runs left unfinished end here; the batch goes out before the process does.
        let _ = tokio::task::spawn_blocking(move || t.shutdown()).await;
    }
}

impl State {
    /// On a shared journal, brings this replica's catalog up to the tools any replica uploaded
    /// (the shared store holds them); a no-op on an embedded journal, whose uploads all come
    /// through this process.
    pub(crate) async fn sync_catalog(&self) -> Result<(), store::StoreError> {
        if self.queue.is_none() {
            return Ok(());
        }
        let current = self
            .catalog
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let mut next: Option<Catalog> = None;
        let mut changed = std::collections::BTreeSet::new();
        for t in self.store.tools()? {
            if current.get(&t.name).map(|e| e.digest.as_str()) == Some(t.digest.as_str()) {
                continue;
            }
            let wasm = self.store.tool_wasm(&t.digest)?;
            let manifest = match crate::sandbox::manifest::Manifest::parse(&t.name, &t.manifest) {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!(tool = %t.name, error = %e, "a stored tool's manifest does not parse; skipped");
                    continue;
                }
            };
            next.get_or_insert_with(|| (*current).clone()).insert(
                manifest,
                t.manifest.clone(),
                wasm,
            );
            changed.insert(t.name);
        }
        let Some(mut next) = next else {
            return Ok(());
        };
        for (name, why) in next.describe(self.engine.sandbox(), Some(&changed)).await {
            tracing::warn!(component = %name, reason = %why, "output schema unknown; reads of its outputs are not type-checked");
        }
        tracing::info!(tools = ?changed, "catalog brought up to the shared store");
        *self.catalog.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(next);
        self.mcp.0.tools_changed();
        Ok(())
    }
}
