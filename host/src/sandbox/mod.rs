//! Runs one tool call in a fresh, deny-by-default WebAssembly sandbox. Each capability lives in
//! its own module (egress, filesystem, limits) and is granted from the effective grant computed in
//! `manifest`; `registry` compiles and caches components, `outcome` types what came out.

pub mod agent;
pub mod clocks;
pub mod egress;
pub mod engine;
pub mod filesystem;
pub mod limits;
pub mod manifest;
pub mod outcome;
pub mod registry;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use wasmtime::component::{Linker, ResourceTable};
use wasmtime::{Store, Trap, UpdateDeadline};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use crate::journal::crossings::{CrossingError, StepCrossings};
use egress::{AttemptLog, EgressHooks, EgressPolicy, Resolver, SecretStore, SystemResolver};
use engine::{Allocator, SandboxEngine};
use limits::{CallBudget, CappedLog, LOG_CAP, LimitExceeded, LimitedHooks, MemoryLimiter};
use manifest::EffectiveGrant;
use outcome::{AuditRecord, CallError, CallReport, LimitedResource, ResourceUsage};
use registry::{ComponentPre, LoadedTool, Registry};

/// Host bindings for the `sandgraph:tool` world (guest-sdk/wit/tool.wit).
pub mod bindings {
    wasmtime::component::bindgen!({
        path: "../guest-sdk/wit/tool.wit",
        world: "tool",
        exports: { default: async },
    });
}

pub use bindings::sandgraph::tool::types::{ToolError, ToolInfo};

/// The store data of one call. Created fresh per call and dropped with it.
pub struct CallState {
    wasi: WasiCtx,
    http: WasiHttpCtx,
    table: ResourceTable,
    hooks: LimitedHooks<EgressHooks>,
    limiter: MemoryLimiter,
    budget: CallBudget,
    fs: filesystem::FsState,
    /// Set for an agent step: what its `model` and `tools` imports may reach.
    agent: Option<agent::AgentCtx>,
}

impl WasiView for CallState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for CallState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.hooks,
        }
    }
}

/// How to build a `Sandbox`.
pub struct SandboxConfig {
    pub allocator: Allocator,
    /// Where compiled components are cached (`None`: compile in memory only).
    pub cache_dir: Option<PathBuf>,
    pub resolver: Arc<dyn Resolver>,
    pub secrets: SecretStore,
    /// CA certificates `https` egress trusts besides the public roots.
    pub extra_roots: egress::ExtraRoots,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        SandboxConfig {
            allocator: Allocator::Pooling,
            cache_dir: None,
            resolver: Arc::new(SystemResolver),
            secrets: SecretStore::default(),
            extra_roots: Vec::new(),
        }
    }
}

/// The engine, the component registry and the operator's secrets; share one per process.
pub struct Sandbox {
    engine: SandboxEngine,
    /// One permit per instance slot: a call waits here (within its time limit) rather than
    /// failing when every slot is busy.
    slots: Arc<tokio::sync::Semaphore>,
    registry: Registry,
    resolver: Arc<dyn Resolver>,
    secrets: Arc<SecretStore>,
    tls: egress::TlsRoots,
}

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error(transparent)]
    Engine(#[from] engine::EngineError),
    #[error(transparent)]
    TlsRoots(#[from] egress::TlsRootsError),
    #[error("cannot set up the host linker: {0}")]
    Linker(String),
}

impl Sandbox {
    pub fn new(config: SandboxConfig) -> Result<Self, SandboxError> {
        let tls = egress::TlsRoots::new(&config.extra_roots)?;
        let engine = SandboxEngine::new(config.allocator)?;
        let mut linker: Linker<CallState> = Linker::new(engine.engine());
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)
            .map_err(|e| SandboxError::Linker(format!("{e:#}")))?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)
            .map_err(|e| SandboxError::Linker(format!("{e:#}")))?;
        add_limited_interfaces(&mut linker).map_err(|e| SandboxError::Linker(format!("{e:#}")))?;
        add_agent_interfaces(&mut linker).map_err(|e| SandboxError::Linker(format!("{e:#}")))?;
        let registry = Registry::new(
            engine.engine().clone(),
            Arc::new(linker),
            config.cache_dir,
            engine.cache_key_prefix(),
        );
        Ok(Sandbox {
            engine,
            slots: Arc::new(tokio::sync::Semaphore::new(engine::MAX_CONCURRENT_CALLS)),
            registry,
            resolver: config.resolver,
            secrets: Arc::new(config.secrets),
            tls,
        })
    }

    pub fn engine(&self) -> &wasmtime::Engine {
        self.engine.engine()
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    #[allow(clippy::too_many_arguments)]
    fn new_store(
        &self,
        grant: &EffectiveGrant,
        budget: &CallBudget,
        log: &AttemptLog,
        stdout: &CappedLog,
        stderr: &CappedLog,
        crossings: Option<&StepCrossings>,
    ) -> Result<Store<CallState>, CallError> {
        let mut wasi = WasiCtxBuilder::new();
        wasi.stdout(stdout.clone()).stderr(stderr.clone());
        wasi.envs(&grant.env);
        // wasi:sockets: every address is refused (and audited); no name lookups.
        wasi.allow_tcp(true)
            .allow_udp(true)
            .allow_ip_name_lookup(false)
            .socket_addr_check(egress::socket_check(log.clone()));
        if let Some((dir, mode)) = &grant.workspace {
            filesystem::grant_workspace(&mut wasi, dir, *mode)?;
        }
        configure_clocks_and_random(&mut wasi, crossings);
        let policy = Arc::new(EgressPolicy {
            rules: grant.egress.clone(),
            allow_private: grant.allow_private.clone(),
            resolver: self.resolver.clone(),
            secrets: self.secrets.clone(),
            max_response: grant.limits.max_response,
            timeout: grant.limits.timeout,
            tls: self.tls.clone(),
        });
        let mut http = WasiHttpCtx::new();
        http.set_field_size_limit(limits::FIELD_SIZE_LIMIT);
        let mut table = ResourceTable::new();
        table.set_max_capacity(usize::try_from(grant.limits.max_handles).unwrap_or(usize::MAX));
        let state = CallState {
            wasi: wasi.build(),
            http,
            table,
            hooks: LimitedHooks {
                inner: EgressHooks::new(policy, log.clone()).journaled(crossings.cloned()),
                budget: budget.clone(),
            },
            limiter: MemoryLimiter::new(grant.limits.memory),
            budget: budget.clone(),
            fs: filesystem::FsState::new(
                budget.clone(),
                grant
                    .workspace
                    .as_ref()
                    .map_or(manifest::WorkspaceMode::None, |(_, m)| *m),
            ),
            agent: None,
        };
        let mut store = Store::new(self.engine.engine(), state);
        store.limiter(|s| &mut s.limiter);
        // CPU budget in epoch ticks. Each tick yields to the executor, so a guest spinning in a
        // loop never holds a tokio worker for more than one tick and the call's wall-clock
        // timeout can fire; when the budget is spent the guest traps with `Interrupt`. Each
        // tick also charges the host-side buffers the call owns against its memory limit.
        let mut ticks_left = SandboxEngine::ticks_for(grant.limits.timeout);
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(move |mut ctx| {
            if !charge_host_memory(ctx.data_mut()) {
                return Err(wasmtime::format_err!(
                    "the call's host-side buffers put it over its memory limit"
                ));
            }
            ticks_left = ticks_left.saturating_sub(1);
            Ok(if ticks_left == 0 {
                UpdateDeadline::Interrupt
            } else {
                UpdateDeadline::Yield(1)
            })
        });
        Ok(store)
    }

    /// Waits for a free instance slot, at most `limit` (the call's own time limit).
    async fn acquire_slot(
        &self,
        limit: std::time::Duration,
    ) -> Result<tokio::sync::SemaphorePermit<'_>, CallError> {
        match tokio::time::timeout(limit, self.slots.acquire()).await {
            Ok(Ok(permit)) => Ok(permit),
            // The semaphore is never closed; treat it like waiting out the limit.
            Ok(Err(_)) | Err(_) => Err(CallError::Timeout {
                limit_ms: limit.as_millis() as u64,
            }),
        }
    }

    /// Calls `info()` in a fresh instance with no capabilities.
    pub async fn info(&self, tool: &LoadedTool) -> Result<ToolInfo, CallError> {
        let grant = EffectiveGrant::nothing("");
        let _slot = self.acquire_slot(grant.limits.timeout).await?;
        let log: AttemptLog = Arc::default();
        let (out, err) = (CappedLog::new(LOG_CAP), CappedLog::new(LOG_CAP));
        let budget = CallBudget::new(&grant.limits);
        let mut store = self.new_store(&grant, &budget, &log, &out, &err, None)?;
        let run = async {
            match &tool.pre {
                ComponentPre::Tool(pre) => {
                    let instance = pre.instantiate_async(&mut store).await?;
                    instance.call_info(&mut store).await
                }
                ComponentPre::Agent(pre) => {
                    let instance = pre.instantiate_async(&mut store).await?;
                    instance.call_info(&mut store).await.map(ToolInfo::from)
                }
            }
        };
        match tokio::time::timeout(grant.limits.timeout, run).await {
            Err(_) => Err(CallError::Timeout {
                limit_ms: grant.limits.timeout.as_millis() as u64,
            }),
            Ok(Ok(info)) => Ok(info),
            Ok(Err(e)) => Err(classify_error(&e, &grant, store.data())),
        }
    }

    /// What `tool` says of itself in `info()`, asked in a fresh instance the first time and
    /// kept with the loaded component (a failure is not kept: the next caller asks again).
    /// Graph validation types `nodes.<id>` by its output schema and every call's output is
    /// checked against it, so both read the same answer.
    pub async fn described<'t>(&self, tool: &'t LoadedTool) -> Result<&'t Described, CallError> {
        tool.described
            .get_or_try_init(|| async {
                let info = self.info(tool).await?;
                let output = DeclaredOutput::compile(&info.output_schema, &tool.digest);
                Ok(Described { info, output })
            })
            .await
    }

    /// Runs `invoke(input)` once in a fresh store and instance under `grant`.
    pub async fn call(&self, tool: &LoadedTool, grant: &EffectiveGrant, input: &str) -> CallReport {
        self.call_with(tool, grant, input, None, None, None).await.0
    }

    /// A tool called from inside an agent step (`parent`), its crossings journaled in the
    /// step's stream between the call's request and result.
    pub(crate) async fn call_nested(
        &self,
        tool: &LoadedTool,
        grant: &EffectiveGrant,
        input: &str,
        crossings: Option<&StepCrossings>,
        parent: &str,
    ) -> CallReport {
        self.call_with(tool, grant, input, crossings, None, Some(parent))
            .await
            .0
    }

    /// Runs an agent's `step(input)` once in a fresh instance under `grant`, its `model` and
    /// `tools` imports limited to what `env` grants and journaled through `crossings`. Each
    /// nested tool call runs in its own fresh instance. A crossing that could not be served
    /// (divergence, unknown outcome, journal failure) fails the step.
    pub async fn call_agent_journaled(
        self: &Arc<Self>,
        tool: &LoadedTool,
        grant: &EffectiveGrant,
        input: &str,
        crossings: &StepCrossings,
        env: agent::AgentEnv,
    ) -> Result<(CallReport, agent::AgentActivity), CrossingError> {
        let (report, activity) = self
            .call_with(
                tool,
                grant,
                input,
                Some(crossings),
                Some((env, self.clone())),
                None,
            )
            .await;
        match crossings.take_problem() {
            Some(problem) => Err(problem),
            None => Ok((report, activity)),
        }
    }

    /// Like `call`, with every clock read, random byte and outbound request of the guest going
    /// through `crossings` (journaled live, or served from the journal). A crossing that could
    /// not be served (outcome unknown, replay divergence, journal failure) fails the step.
    pub async fn call_journaled(
        &self,
        tool: &LoadedTool,
        grant: &EffectiveGrant,
        input: &str,
        crossings: &StepCrossings,
    ) -> Result<CallReport, CrossingError> {
        let report = self
            .call_with(tool, grant, input, Some(crossings), None, None)
            .await
            .0;
        match crossings.take_problem() {
            Some(problem) => Err(problem),
            None => Ok(report),
        }
    }

    async fn call_with(
        &self,
        tool: &LoadedTool,
        grant: &EffectiveGrant,
        input: &str,
        crossings: Option<&StepCrossings>,
        agent: Option<(agent::AgentEnv, Arc<Sandbox>)>,
        parent: Option<&str>,
    ) -> (CallReport, agent::AgentActivity) {
        let started = Instant::now();
        let activity: Arc<Mutex<agent::AgentActivity>> = Arc::default();
        let wrong_world = match (&tool.pre, agent.is_some()) {
            (ComponentPre::Tool(_), true) => Some(
                "the component exports the sandgraph:tool world (info, invoke), not \
                 sandgraph:agent (info, step); an agent node needs an agent component \
                 (or make the node `kind: tool`)",
            ),
            (ComponentPre::Agent(_), false) => Some(
                "the component exports the sandgraph:agent world (info, step), not \
                 sandgraph:tool (info, invoke); run it as an agent node (`kind: agent`)",
            ),
            _ => None,
        };
        // Asked before this call takes an instance slot: `info()` needs one of its own.
        let declared = match wrong_world {
            None => self
                .described(tool)
                .await
                .ok()
                .and_then(|d| d.output.as_ref())
                .map(|o| o.validator.clone()),
            Some(_) => None,
        };
        let log: AttemptLog = Arc::new(Mutex::new(Vec::new()));
        let (stdout, stderr) = (CappedLog::new(LOG_CAP), CappedLog::new(LOG_CAP));
        let budget = CallBudget::new(&grant.limits);
        let mut usage = ResourceUsage::default();
        let mut peak = 0;
        let mut fs_refusals = Vec::new();
        // Held until the call's store is gone, so the pool never has more stores than slots.
        let slot = self.acquire_slot(grant.limits.timeout).await;
        let result = match slot
            .as_ref()
            .map(|_| serde_json::from_str::<serde::de::IgnoredAny>(input))
        {
            _ if wrong_world.is_some() => Err(CallError::BadComponent {
                reason: wrong_world.unwrap_or_default().to_owned(),
            }),
            Err(e) => Err(e.clone()),
            Ok(Err(e)) => Err(CallError::InvalidInput {
                message: format!("input is not a JSON document: {e}"),
            }),
            Ok(Ok(_)) => match self.new_store(grant, &budget, &log, &stdout, &stderr, crossings) {
                Err(e) => Err(e),
                Ok(mut store) => {
                    if let Some((env, sandbox)) = agent {
                        store.data_mut().agent = Some(agent::AgentCtx {
                            env,
                            sandbox,
                            crossings: crossings.cloned(),
                            deadline: started + grant.limits.timeout,
                            step_tokens: 0,
                            activity: activity.clone(),
                        });
                    }
                    let run = async {
                        match &tool.pre {
                            ComponentPre::Tool(pre) => {
                                let instance = pre.instantiate_async(&mut store).await?;
                                let r = instance.call_invoke(&mut store, input).await?;
                                Ok::<_, wasmtime::Error>(r.map_err(from_tool_error))
                            }
                            ComponentPre::Agent(pre) => {
                                let instance = pre.instantiate_async(&mut store).await?;
                                let r = instance.call_step(&mut store, input).await?;
                                let seen = activity.lock().unwrap_or_else(|p| p.into_inner());
                                Ok(r.map_err(|e| agent::from_agent_error(e, &seen)))
                            }
                        }
                    };
                    let raw = tokio::time::timeout(grant.limits.timeout, run).await;
                    // What the call still holds counts too (a guest may return right after
                    // piling up host buffers, before the next epoch tick charged them).
                    charge_host_memory(store.data_mut());
                    let state = store.data();
                    peak = state.limiter.peak();
                    state.limiter.report(&mut usage);
                    fs_refusals = state.fs.refusals();
                    let attempts = log.lock().unwrap_or_else(|p| p.into_inner()).clone();
                    let host_denial = attempts
                        .iter()
                        .find(|a| !a.allowed)
                        .map(|a| a.call_error())
                        .or_else(|| {
                            fs_refusals.first().map(|r| CallError::Denied {
                                capability: outcome::Capability::Filesystem,
                                target: r.path.clone(),
                                missing_rule: r.reason.clone(),
                            })
                        });
                    // A request the host stopped waiting for is the call's time limit at work,
                    // whichever timer (the call's or the request's) happened to fire first.
                    let egress_timed_out = attempts.iter().any(|a| a.timed_out);
                    let timeout = CallError::Timeout {
                        limit_ms: grant.limits.timeout.as_millis() as u64,
                    };
                    let memory = CallError::MemoryLimitExceeded {
                        limit_bytes: grant.limits.memory,
                    };
                    let over_limit = state.limiter.exceeded();
                    let cap_hit = budget.hit().map(limit_error);
                    match raw {
                        Err(_) => Err(timeout),
                        Ok(Ok(Ok(_))) if over_limit => Err(memory),
                        Ok(Ok(Ok(output))) => {
                            check_output(output, grant.limits.max_output, declared.as_deref())
                        }
                        Ok(Ok(Err(tool_error))) => Err(if over_limit {
                            memory
                        } else if let Some(cap) = cap_hit {
                            cap
                        } else if let Some(d) = host_denial {
                            d
                        } else if egress_timed_out {
                            timeout
                        } else {
                            tool_error
                        }),
                        Ok(Err(e)) => Err(match classify_error(&e, grant, state) {
                            e @ (CallError::Timeout { .. }
                            | CallError::MemoryLimitExceeded { .. }
                            | CallError::ResourceLimitExceeded { .. }
                            | CallError::Exited { .. }) => e,
                            e => host_denial
                                .or_else(|| egress_timed_out.then_some(timeout))
                                .unwrap_or(e),
                        }),
                    }
                }
            },
        };
        budget.report(&mut usage);
        let egress = log.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let audit = AuditRecord {
            tool: grant.tool.clone(),
            component_digest: tool.digest.clone(),
            duration_us: started.elapsed().as_micros() as u64,
            memory_peak_bytes: peak,
            bytes_in: input.len() as u64 + egress.iter().map(|a| a.bytes_in).sum::<u64>(),
            bytes_out: result.as_ref().map_or(0, |o| o.len() as u64)
                + egress.iter().map(|a| a.bytes_out).sum::<u64>(),
            egress,
            outcome: match &result {
                Ok(_) => "ok".into(),
                Err(e) => e.kind().into(),
            },
            usage,
            filesystem: fs_refusals,
            parent: parent.map(str::to_owned),
        };
        audit.emit();
        let report = CallReport {
            result,
            audit,
            stdout: stdout.text(),
            stderr: stderr.text(),
        };
        let activity = std::mem::take(&mut *activity.lock().unwrap_or_else(|p| p.into_inner()));
        (report, activity)
    }
}

/// Replaces wasmtime-wasi's `wasi:filesystem/types` and `wasi:random` with the call-limited
/// versions (`filesystem::WorkspaceFs`, `limits::BudgetedRandom`), which delegate to it.
fn add_limited_interfaces(linker: &mut Linker<CallState>) -> wasmtime::Result<()> {
    use wasmtime_wasi::p2::bindings::{filesystem as wasi_fs, random};
    linker.allow_shadowing(true);
    wasi_fs::types::add_to_linker::<CallState, filesystem::WorkspaceFs>(linker, |s| {
        filesystem::FsView {
            inner: wasmtime_wasi::filesystem::WasiFilesystemCtxView {
                ctx: s.wasi.filesystem(),
                table: &mut s.table,
            },
            state: &mut s.fs,
        }
    })?;
    random::random::add_to_linker::<CallState, limits::BudgetedRandom>(linker, |s| {
        limits::RandomView {
            ctx: s.wasi.random(),
            budget: &s.budget,
        }
    })?;
    random::insecure::add_to_linker::<CallState, limits::BudgetedRandom>(linker, |s| {
        limits::RandomView {
            ctx: s.wasi.random(),
            budget: &s.budget,
        }
    })?;
    linker.allow_shadowing(false);
    Ok(())
}

/// Links the `sandgraph:agent` imports (`model`, `tools`). Every component may import them; only
/// an agent step's store has the context that answers anything but `denied`.
fn add_agent_interfaces(linker: &mut Linker<CallState>) -> wasmtime::Result<()> {
    use agent::bindings::sandgraph::agent::{model, tools};
    use wasmtime::component::HasSelf;
    model::add_to_linker::<CallState, HasSelf<CallState>>(linker, |s| s)?;
    tools::add_to_linker::<CallState, HasSelf<CallState>>(linker, |s| s)?;
    Ok(())
}

/// Charges the host-side buffers the call owns now against its memory limit; `false` when they
/// put it over.
fn charge_host_memory(state: &mut CallState) -> bool {
    let (bytes, handles) = limits::host_bytes(&mut state.table);
    state.budget.note_handles(handles);
    state.limiter.set_host_bytes(bytes)
}

fn limit_error(e: LimitExceeded) -> CallError {
    CallError::ResourceLimitExceeded {
        resource: e.resource,
        limit: e.limit,
    }
}

/// Clocks and randomness: the WASI defaults, or served through the step's journal when the call
/// runs under one, so resumes and replays see the same values.
fn configure_clocks_and_random(builder: &mut WasiCtxBuilder, crossings: Option<&StepCrossings>) {
    clocks::configure(builder, crossings);
}

/// How deep arrays and objects may nest in a JSON document crossing into the engine (a run's
/// input, a tool's output): graph expressions convert and walk them recursively.
pub const MAX_JSON_DEPTH: usize = 64;

/// What `info()` said, kept with the loaded component ([`Sandbox::described`]).
pub struct Described {
    pub info: ToolInfo,
    /// `None`: the component declares no usable output schema (`{}`, not a JSON object, or
    /// one that does not compile); its outputs are then checked only as bounded JSON.
    pub output: Option<DeclaredOutput>,
}

/// A declared output schema and its compiled validator.
pub struct DeclaredOutput {
    pub schema: Arc<serde_json::Value>,
    validator: Arc<jsonschema::Validator>,
}

impl DeclaredOutput {
    fn compile(text: &str, digest: &str) -> Option<DeclaredOutput> {
        let schema: serde_json::Value = serde_json::from_str(text).ok()?;
        match &schema {
            serde_json::Value::Object(m) if !m.is_empty() => {}
            _ => return None,
        }
        match jsonschema::validator_for(&schema) {
            Ok(v) => Some(DeclaredOutput {
                schema: Arc::new(schema),
                validator: Arc::new(v),
            }),
            Err(e) => {
                tracing::warn!(component = %digest, error = %e, "declared output schema does not compile; outputs checked as JSON only");
                None
            }
        }
    }
}

/// At most this many schema violations are named in an `output_invalid` error.
const MAX_SCHEMA_ERRORS: usize = 8;

/// `output` within the size and depth limits, a JSON document, and matching the component's
/// declared output schema when it has one (parsed once, for whichever check applies).
fn check_output(
    output: String,
    limit: u64,
    declared: Option<&jsonschema::Validator>,
) -> Result<String, CallError> {
    if output.len() as u64 > limit {
        return Err(CallError::OutputTooLarge { limit_bytes: limit });
    }
    // Depth first: serde_json gives up on deep nesting with a parse error of its own.
    if limits::json_depth(&output) > limits::MAX_OUTPUT_DEPTH {
        return Err(CallError::OutputTooDeep {
            max_depth: limits::MAX_OUTPUT_DEPTH,
        });
    }
    let not_json = |e: serde_json::Error| CallError::ToolFailed {
        message: format!("tool output is not a JSON document: {e}"),
    };
    let Some(validator) = declared else {
        serde_json::from_str::<serde::de::IgnoredAny>(&output).map_err(not_json)?;
        return Ok(output);
    };
    let value: serde_json::Value = serde_json::from_str(&output).map_err(not_json)?;
    let mut errors: Vec<String> = validator
        .iter_errors(&value)
        .take(MAX_SCHEMA_ERRORS + 1)
        .map(|e| {
            let at = e.instance_path().to_string();
            let text: String = e.to_string().chars().take(200).collect();
            if at.is_empty() {
                text
            } else {
                format!("{at}: {text}")
            }
        })
        .collect();
    if errors.is_empty() {
        return Ok(output);
    }
    if errors.len() > MAX_SCHEMA_ERRORS {
        errors.truncate(MAX_SCHEMA_ERRORS);
        errors.push("and more".into());
    }
    Err(CallError::OutputInvalid { errors })
}

fn from_tool_error(e: ToolError) -> CallError {
    match e {
        ToolError::InvalidInput(message) => CallError::InvalidInput { message },
        ToolError::Failed(message) => CallError::ToolFailed { message },
        ToolError::Denied(message) => CallError::from_guest_denial(&message),
    }
}

fn classify_error(e: &wasmtime::Error, grant: &EffectiveGrant, state: &CallState) -> CallError {
    if state.limiter.exceeded() {
        return CallError::MemoryLimitExceeded {
            limit_bytes: grant.limits.memory,
        };
    }
    if let Some(cap) = e.downcast_ref::<LimitExceeded>() {
        return limit_error(*cap);
    }
    if let Some(cap) = state.budget.hit() {
        return limit_error(cap);
    }
    if e.chain().any(|c| {
        matches!(
            c.downcast_ref::<wasmtime::component::ResourceTableError>(),
            Some(wasmtime::component::ResourceTableError::Full)
        )
    }) {
        return CallError::ResourceLimitExceeded {
            resource: LimitedResource::Handles,
            limit: grant.limits.max_handles,
        };
    }
    if let Some(exit) = e.downcast_ref::<wasmtime_wasi::I32Exit>() {
        return CallError::Exited { code: exit.0 };
    }
    match e.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => CallError::Timeout {
            limit_ms: grant.limits.timeout.as_millis() as u64,
        },
        Some(trap) => CallError::Trap {
            message: trap.to_string(),
        },
        None => CallError::Trap {
            message: format!("{e:#}"),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The isolation test's guest (`tests/guests/src/bin/state_isolation.rs`) does see state
    /// when it is there: called twice in one instance, the second call reports the first. (The
    /// sandbox never does this; `hostile.rs` checks that separate calls see nothing.)
    #[tokio::test]
    async fn the_isolation_guest_sees_state_left_in_its_own_instance() {
        let path = sandgraph_test_artifacts::HOSTILE_GUESTS
            .iter()
            .find(|(n, _)| *n == "state_isolation")
            .map(|(_, p)| *p)
            .expect("the state_isolation guest is built");
        let sandbox = Sandbox::new(SandboxConfig::default()).expect("sandbox");
        let tool = sandbox.registry().load_file(path.as_ref()).expect("load");
        let grant = EffectiveGrant::nothing("state_isolation");
        let budget = CallBudget::new(&grant.limits);
        let log: AttemptLog = Arc::default();
        let (out, err) = (CappedLog::new(LOG_CAP), CappedLog::new(LOG_CAP));
        let mut store = sandbox
            .new_store(&grant, &budget, &log, &out, &err, None)
            .expect("store");
        let ComponentPre::Tool(pre) = &tool.pre else {
            panic!("state_isolation is a tool component");
        };
        let instance = pre.instantiate_async(&mut store).await.expect("instance");
        let first = instance
            .call_invoke(&mut store, "{}")
            .await
            .expect("call")
            .expect("first call");
        let second = instance
            .call_invoke(&mut store, "{}")
            .await
            .expect("call")
            .expect("second call");
        // 1 before the first call: the start-up hook's count, kept in the snapshot.
        assert!(
            first.starts_with(
                r#"{"calls_before":1,"data_changed":false,"bss_dirty":false,"heap_marked":false,"#
            ),
            "{first}"
        );
        assert!(
            second.starts_with(r#"{"calls_before":2,"data_changed":true,"bss_dirty":true,"#),
            "{second}"
        );
    }
}
