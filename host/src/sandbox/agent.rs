//! The host side of the `sandgraph:agent` world: the `model` and `tools` imports an agent step
//! calls. Each import checks the node's grant, goes through the step's journal (a recorded answer
//! is served, never asked again) and, for tools, runs the nested call in a fresh sandbox.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::journal::crossings::{ModelPlan, NestedToolPlan, RecordedAnswer, StepCrossings};
use crate::model::{self, ChatRequest, ChatResponse, ModelError, TokenSink};

use super::manifest::EffectiveGrant;
use super::outcome::{AuditRecord, CallError, Capability};
use super::registry::LoadedTool;
use super::{CallState, Sandbox};

/// Host bindings for the `sandgraph:agent` world (guest-sdk/wit/agent.wit).
pub mod bindings {
    wasmtime::component::bindgen!({
        path: "../guest-sdk/wit/agent.wit",
        world: "agent",
        imports: { default: async },
        exports: { default: async },
    });
}

pub use bindings::sandgraph::agent::types::{AgentError, AgentInfo};
use bindings::sandgraph::agent::{model as wit_model, tools as wit_tools};

/// Answers model calls by alias: implemented by the providers' `Models` registry.
#[async_trait::async_trait]
pub trait ModelRouter: Send + Sync {
    /// Whether some provider serves `alias`.
    fn contains(&self, alias: &str) -> bool;
    /// Every alias served, for error messages.
    fn aliases(&self) -> Vec<String>;
    /// One chat completion from the provider chain of `alias`.
    async fn chat(
        &self,
        alias: &str,
        request: &ChatRequest,
        tokens: Option<&TokenSink>,
    ) -> Result<ChatResponse, ModelError>;
}

#[async_trait::async_trait]
impl ModelRouter for model::Models {
    fn contains(&self, alias: &str) -> bool {
        model::Models::contains(self, alias)
    }
    fn aliases(&self) -> Vec<String> {
        model::Models::aliases(self)
            .into_iter()
            .map(str::to_owned)
            .collect()
    }
    async fn chat(
        &self,
        alias: &str,
        request: &ChatRequest,
        tokens: Option<&TokenSink>,
    ) -> Result<ChatResponse, ModelError> {
        model::Models::chat(self, alias, request, tokens).await
    }
}

/// Tokens a run may still spend, shared by all its agent steps. Counts prompt and completion
/// tokens of every answered call; seeded from the journal when a run resumes.
#[derive(Debug)]
pub struct RunTokens {
    limit: Option<u64>,
    used: Mutex<u64>,
}

impl RunTokens {
    pub fn new(limit: Option<u64>, already_used: u64) -> RunTokens {
        RunTokens {
            limit,
            used: Mutex::new(already_used),
        }
    }

    pub fn used(&self) -> u64 {
        *self.used.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn left(&self) -> Option<u64> {
        self.limit.map(|l| l.saturating_sub(self.used()))
    }

    fn charge(&self, tokens: u64) {
        *self.used.lock().unwrap_or_else(|p| p.into_inner()) += tokens;
    }
}

/// One tool an agent node grants: the pinned component and its effective grant
/// (node grant ∩ tool manifest ∩ operator policy).
#[derive(Clone)]
pub struct GrantedTool {
    pub name: String,
    pub tool: Arc<LoadedTool>,
    pub grant: EffectiveGrant,
}

/// What an agent step may reach, built by the graph engine from the node.
#[derive(Clone)]
pub struct AgentEnv {
    /// `<run>/<step>@<attempt>`: nested calls' audit records point back to it.
    pub step: String,
    /// The node's id, for messages.
    pub node: String,
    pub models: Option<Arc<dyn ModelRouter>>,
    /// Model aliases the node grants, in order (the first is the default).
    pub granted_models: Vec<String>,
    pub tools: Vec<GrantedTool>,
    pub run_tokens: Arc<RunTokens>,
    /// The node's `maxTokens` for this step.
    pub max_tokens: Option<u64>,
    pub sink: Option<Arc<TokenSink>>,
}

/// One model call as the host saw it (metrics, traces, progress).
#[derive(Debug, Clone, PartialEq)]
pub struct ModelCallRecord {
    /// The alias asked for.
    pub model: String,
    /// `ok` or the `ModelError` kind.
    pub outcome: String,
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    pub model_time: Duration,
    pub first_token: Option<Duration>,
    /// Served from the journal instead of a provider.
    pub replayed: bool,
    /// When the call started and ended (trace spans).
    pub started: std::time::SystemTime,
    pub ended: std::time::SystemTime,
}

/// Everything one agent step produced besides its own call report.
#[derive(Debug, Clone, Default)]
pub struct AgentActivity {
    /// Audit records of the nested tool calls (and the refused ones), in call order.
    pub nested: Vec<AuditRecord>,
    pub model_calls: Vec<ModelCallRecord>,
    /// Capabilities the host refused the agent: (capability, target, why).
    pub denials: Vec<(Capability, String, String)>,
}

/// The agent part of a call's store data.
pub(crate) struct AgentCtx {
    pub env: AgentEnv,
    pub sandbox: Arc<Sandbox>,
    pub crossings: Option<StepCrossings>,
    pub deadline: Instant,
    pub step_tokens: u64,
    pub activity: Arc<Mutex<AgentActivity>>,
}

impl AgentCtx {
    fn note_denial(&self, capability: Capability, target: &str, reason: &str) {
        if let Some(c) = &self.crossings {
            let what = match capability {
                Capability::Model => "model",
                _ => "tool",
            };
            if let Err(e) = c.denial(what, target) {
                c.note_problem(e);
            }
        }
        self.activity
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .denials
            .push((capability, target.to_owned(), reason.to_owned()));
    }

    /// Tokens this call may still use: the least of the run's and the node's remainders.
    fn tokens_left(&self) -> Option<u64> {
        let node = self
            .env
            .max_tokens
            .map(|m| m.saturating_sub(self.step_tokens));
        match (self.env.run_tokens.left(), node) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

/// The agent's own error as a call error: a denial is the host's only when the host recorded
/// one, so a guest cannot forge it.
pub(crate) fn from_agent_error(e: AgentError, activity: &AgentActivity) -> CallError {
    match e {
        AgentError::InvalidInput(message) => CallError::InvalidInput { message },
        AgentError::Failed(message) => CallError::ToolFailed { message },
        AgentError::BudgetExhausted(message) => CallError::BudgetExhausted { message },
        AgentError::Denied(message) => match activity.denials.first() {
            Some((capability, target, reason)) => CallError::Denied {
                capability: *capability,
                target: target.clone(),
                missing_rule: reason.clone(),
            },
            None => CallError::from_guest_denial(&message),
        },
    }
}

fn model_error_to_wit(e: ModelError) -> wit_model::ModelError {
    match e {
        ModelError::BudgetExhausted(m) => wit_model::ModelError::BudgetExhausted(m),
        ModelError::Denied(m) => wit_model::ModelError::Denied(m),
        ModelError::InvalidRequest(m) => wit_model::ModelError::InvalidRequest(m),
        ModelError::Unavailable(m) => wit_model::ModelError::Unavailable(m),
        ModelError::Timeout(m) => wit_model::ModelError::Timeout(m),
    }
}

fn role_from_wit(r: wit_model::Role) -> model::Role {
    match r {
        wit_model::Role::System => model::Role::System,
        wit_model::Role::User => model::Role::User,
        wit_model::Role::Assistant => model::Role::Assistant,
        wit_model::Role::Tool => model::Role::Tool,
    }
}

fn call_from_wit(c: wit_model::ToolCall) -> model::ToolCall {
    model::ToolCall {
        id: c.id,
        name: c.name,
        arguments: c.arguments,
    }
}

fn call_to_wit(c: model::ToolCall) -> wit_model::ToolCall {
    wit_model::ToolCall {
        id: c.id,
        name: c.name,
        arguments: c.arguments,
    }
}

/// The guest's request as the providers' type, with `alias` resolved.
fn request_from_wit(r: wit_model::ChatRequest, alias: &str) -> Result<ChatRequest, ModelError> {
    let json = |what: &str, text: &str| {
        serde_json::from_str::<serde_json::Value>(text)
            .map_err(|e| ModelError::InvalidRequest(format!("{what} is not a JSON document: {e}")))
    };
    let response_format = r
        .response_format
        .as_deref()
        .map(|s| json("response-format", s))
        .transpose()?;
    let mut tools = Vec::with_capacity(r.tools.len());
    for t in r.tools {
        let parameters = json(
            &format!("the parameters of tool-spec '{}'", t.name),
            &t.parameters,
        )?;
        tools.push(model::ToolSpec {
            name: t.name,
            description: t.description,
            parameters,
        });
    }
    Ok(ChatRequest {
        model: alias.to_owned(),
        messages: r
            .messages
            .into_iter()
            .map(|m| model::Message {
                role: role_from_wit(m.role),
                content: m.content,
                tool_calls: m.tool_calls.into_iter().map(call_from_wit).collect(),
                tool_call_id: m.tool_call_id,
            })
            .collect(),
        max_tokens: r.max_tokens,
        temperature: r.temperature,
        top_p: r.top_p,
        seed: r.seed,
        stop: r.stop,
        response_format,
        tools,
        tool_choice: r.tool_choice.map(|c| match c {
            wit_model::ToolChoice::Auto => model::ToolChoice::Auto,
            wit_model::ToolChoice::None => model::ToolChoice::None,
            wit_model::ToolChoice::Required => model::ToolChoice::Required,
            wit_model::ToolChoice::Named(n) => model::ToolChoice::Named(n),
        }),
    })
}

fn response_to_wit(r: ChatResponse) -> wit_model::ChatResponse {
    wit_model::ChatResponse {
        model: r.model,
        content: r.content,
        tool_calls: r.tool_calls.into_iter().map(call_to_wit).collect(),
        finish_reason: match r.finish_reason {
            model::FinishReason::Stop => wit_model::FinishReason::Stop,
            model::FinishReason::Length => wit_model::FinishReason::Length,
            model::FinishReason::ToolCalls => wit_model::FinishReason::ToolCalls,
        },
        usage: wit_model::Usage {
            prompt_tokens: r.usage.prompt_tokens,
            completion_tokens: r.usage.completion_tokens,
        },
    }
}

fn answer_of(result: &Result<ChatResponse, ModelError>, took: Duration) -> RecordedAnswer {
    let (ok, payload, usage) = match result {
        Ok(r) => (true, serde_json::to_vec(r).unwrap_or_default(), r.usage),
        Err(e) => (
            false,
            serde_json::to_vec(e).unwrap_or_default(),
            model::Usage::default(),
        ),
    };
    RecordedAnswer {
        ok,
        payload,
        prompt_tokens: usage.prompt_tokens,
        completion_tokens: usage.completion_tokens,
        model_ms: took.as_millis() as u64,
    }
}

fn answer_result(a: &RecordedAnswer) -> Result<ChatResponse, ModelError> {
    let corrupt = |e: serde_json::Error| {
        ModelError::Unavailable(format!("the journaled model answer does not decode: {e}"))
    };
    if a.ok {
        serde_json::from_slice(&a.payload).map_err(corrupt)
    } else {
        Err(serde_json::from_slice(&a.payload).map_err(corrupt)?)
    }
}

fn no_agent() -> String {
    "only an agent step may call models and tools".to_owned()
}

impl wit_model::Host for CallState {
    async fn chat(
        &mut self,
        request: wit_model::ChatRequest,
    ) -> Result<wit_model::ChatResponse, wit_model::ModelError> {
        let Some(ctx) = self.agent.as_mut() else {
            return Err(wit_model::ModelError::Denied(no_agent()));
        };
        let started_at = std::time::SystemTime::now();
        let asked = if request.model.is_empty() {
            ctx.env.granted_models.first().cloned().unwrap_or_default()
        } else {
            request.model.clone()
        };
        if !ctx.env.granted_models.contains(&asked) {
            let reason = if ctx.env.granted_models.is_empty() {
                format!(
                    "node '{}' grants no models; add `models: [{}]` to the node",
                    ctx.env.node,
                    if asked.is_empty() { "default" } else { &asked }
                )
            } else {
                format!(
                    "model '{asked}' is not granted to node '{}' (it grants: {}); add it to the node's `models:`",
                    ctx.env.node,
                    ctx.env.granted_models.join(", ")
                )
            };
            ctx.note_denial(Capability::Model, &asked, &reason);
            audit_refusal(ctx, &format!("model:{asked}"), "denied");
            return Err(wit_model::ModelError::Denied(reason));
        }
        let mut req = request_from_wit(request, &asked).map_err(model_error_to_wit)?;
        let crossings = ctx.crossings.clone();
        let plan = match &crossings {
            None => ModelPlan::Live,
            Some(c) => {
                let bytes = serde_json::to_vec(&req).unwrap_or_default();
                match c.model_request(&bytes) {
                    Ok(plan) => plan,
                    Err(e) => {
                        let message = e.to_string();
                        c.note_problem(e);
                        return Err(wit_model::ModelError::Unavailable(message));
                    }
                }
            }
        };
        let (result, answer, replayed) = match plan {
            ModelPlan::Replay(answer) => {
                let result = answer_result(&answer);
                (result, answer, true)
            }
            ModelPlan::Live => {
                let left = ctx.tokens_left();
                if left == Some(0) {
                    let e = ModelError::BudgetExhausted(format!(
                        "no tokens left for node '{}' (run used {} of its tokenBudget; node maxTokens {})",
                        ctx.env.node,
                        ctx.env.run_tokens.used(),
                        ctx.env
                            .max_tokens
                            .map_or("unlimited".to_owned(), |m| m.to_string())
                    ));
                    let answer = answer_of(&Err(e.clone()), Duration::ZERO);
                    // Journaled like an answer, so a resumed step is refused the same way.
                    if let Some(c) = &crossings
                        && let Err(e) = c.model_response(&answer)
                    {
                        let message = e.to_string();
                        c.note_problem(e);
                        return Err(wit_model::ModelError::Unavailable(message));
                    }
                    (Err(e), answer, false)
                } else {
                    if let Some(left) = left {
                        let cap = u32::try_from(left).unwrap_or(u32::MAX);
                        req.max_tokens = Some(req.max_tokens.map_or(cap, |m| m.min(cap)));
                    }
                    let started = Instant::now();
                    let remaining = ctx.deadline.saturating_duration_since(started);
                    let result = match &ctx.env.models {
                        None => Err(ModelError::Unavailable(
                            "this host has no model providers configured; pass --models or set SANDGRAPH_MODELS".into(),
                        )),
                        Some(router) if !router.contains(&asked) => Err(ModelError::InvalidRequest(
                            format!("no model provider serves the alias '{asked}'; add it to the models file"),
                        )),
                        Some(router) => {
                            let sink = ctx.env.sink.clone();
                            let call = router.chat(&asked, &req, sink.as_deref());
                            match tokio::time::timeout(remaining, call).await {
                                Ok(r) => r,
                                Err(_) => Err(ModelError::Timeout(format!(
                                    "the step's time limit ran out after {} ms waiting for '{asked}'",
                                    started.elapsed().as_millis()
                                ))),
                            }
                        }
                    };
                    let answer = answer_of(&result, started.elapsed());
                    if let Some(c) = &crossings
                        && let Err(e) = c.model_response(&answer)
                    {
                        let message = e.to_string();
                        c.note_problem(e);
                        return Err(wit_model::ModelError::Unavailable(message));
                    }
                    let spent =
                        u64::from(answer.prompt_tokens) + u64::from(answer.completion_tokens);
                    ctx.env.run_tokens.charge(spent);
                    (result, answer, false)
                }
            }
        };
        ctx.step_tokens += u64::from(answer.prompt_tokens) + u64::from(answer.completion_tokens);
        let first_token = result.as_ref().ok().and_then(|r| r.timing.first_token);
        ctx.activity
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .model_calls
            .push(ModelCallRecord {
                model: asked,
                outcome: match &result {
                    Ok(_) => "ok".to_owned(),
                    Err(e) => e.kind().to_owned(),
                },
                prompt_tokens: answer.prompt_tokens,
                completion_tokens: answer.completion_tokens,
                model_time: Duration::from_millis(answer.model_ms),
                first_token,
                replayed,
                started: started_at,
                ended: std::time::SystemTime::now(),
            });
        result.map(response_to_wit).map_err(model_error_to_wit)
    }
}

/// An audit record for a call the host refused before any sandbox ran.
fn audit_refusal(ctx: &AgentCtx, tool: &str, outcome: &str) {
    let record = AuditRecord {
        tool: tool.to_owned(),
        outcome: outcome.to_owned(),
        parent: Some(ctx.env.step.clone()),
        ..AuditRecord::default()
    };
    record.emit();
    ctx.activity
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .nested
        .push(record);
}

/// A nested call's error as the guest's `tool-error`.
fn tool_error_to_wit(e: &CallError) -> wit_tools::ToolError {
    let m = e.to_string();
    match e {
        CallError::InvalidInput { .. } => wit_tools::ToolError::InvalidInput(m),
        CallError::ToolFailed { .. } | CallError::OutputInvalid { .. } => {
            wit_tools::ToolError::Failed(m)
        }
        CallError::Denied { .. } | CallError::ToolDenied { .. } => wit_tools::ToolError::Denied(m),
        CallError::Timeout { .. } => wit_tools::ToolError::Timeout(m),
        CallError::MemoryLimitExceeded { .. }
        | CallError::OutputTooLarge { .. }
        | CallError::OutputTooDeep { .. }
        | CallError::ResourceLimitExceeded { .. }
        | CallError::BudgetExhausted { .. } => wit_tools::ToolError::LimitExceeded(m),
        CallError::Exited { .. }
        | CallError::Trap { .. }
        | CallError::BadComponent { .. }
        | CallError::SecretUnusable { .. } => wit_tools::ToolError::Crashed(m),
    }
}

impl wit_tools::Host for CallState {
    async fn list(&mut self) -> Vec<wit_tools::ToolDescriptor> {
        let Some(ctx) = self.agent.as_ref() else {
            return Vec::new();
        };
        let (sandbox, tools) = (ctx.sandbox.clone(), ctx.env.tools.clone());
        let mut out = Vec::with_capacity(tools.len());
        for t in tools {
            match sandbox.info(&t.tool).await {
                Ok(info) => out.push(wit_tools::ToolDescriptor {
                    name: t.name.clone(),
                    description: info.description,
                    input_schema: info.input_schema,
                    output_schema: info.output_schema,
                }),
                // A granted tool whose info() fails is still callable; describe it plainly.
                Err(e) => out.push(wit_tools::ToolDescriptor {
                    name: t.name.clone(),
                    description: format!("(info unavailable: {e})"),
                    input_schema: "{}".into(),
                    output_schema: "{}".into(),
                }),
            }
        }
        out
    }

    async fn call(&mut self, name: String, input: String) -> Result<String, wit_tools::ToolError> {
        let Some(ctx) = self.agent.as_ref() else {
            return Err(wit_tools::ToolError::Denied(no_agent()));
        };
        let Some(granted) = ctx.env.tools.iter().find(|t| t.name == name).cloned() else {
            let names: Vec<&str> = ctx.env.tools.iter().map(|t| t.name.as_str()).collect();
            let reason = if names.is_empty() {
                format!(
                    "tool '{name}' is not granted: node '{}' grants no tools; add `tools: [{name}]` to the node",
                    ctx.env.node
                )
            } else {
                format!(
                    "tool '{name}' is not granted to node '{}' (it grants: {}); add it to the node's `tools:`",
                    ctx.env.node,
                    names.join(", ")
                )
            };
            ctx.note_denial(Capability::Tool, &name, &reason);
            audit_refusal(ctx, &name, "denied");
            return Err(wit_tools::ToolError::Denied(reason));
        };
        let crossings = ctx.crossings.clone();
        let plan = match &crossings {
            None => NestedToolPlan::Run,
            Some(c) => match c.nested_tool(&name, input.as_bytes()) {
                Ok(p) => p,
                Err(e) => {
                    let message = e.to_string();
                    c.note_problem(e);
                    return Err(wit_tools::ToolError::Crashed(message));
                }
            },
        };
        match plan {
            NestedToolPlan::Replay { ok: true, output } => String::from_utf8(output)
                .map_err(|e| wit_tools::ToolError::Crashed(format!("journaled tool output: {e}"))),
            NestedToolPlan::Replay { ok: false, output } => {
                let e: CallError = serde_json::from_slice(&output).map_err(|e| {
                    wit_tools::ToolError::Crashed(format!("journaled tool error: {e}"))
                })?;
                Err(tool_error_to_wit(&e))
            }
            NestedToolPlan::Run => {
                // Nested calls share the parent's deadline.
                let mut grant = granted.grant.clone();
                let left = ctx.deadline.saturating_duration_since(Instant::now());
                grant.limits.timeout = grant.limits.timeout.min(left).max(Duration::from_millis(1));
                let (sandbox, parent, activity) = (
                    ctx.sandbox.clone(),
                    ctx.env.step.clone(),
                    ctx.activity.clone(),
                );
                let mut report = sandbox
                    .call_nested(&granted.tool, &grant, &input, crossings.as_ref(), &parent)
                    .await;
                report.audit.parent = Some(parent);
                let (ok, bytes) = match &report.result {
                    Ok(out) => (true, out.clone().into_bytes()),
                    Err(e) => (false, serde_json::to_vec(e).unwrap_or_default()),
                };
                activity
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .nested
                    .push(report.audit.clone());
                if let Some(c) = &crossings
                    && let Err(e) = c.tool_result(ok, &bytes)
                {
                    let message = e.to_string();
                    c.note_problem(e);
                    return Err(wit_tools::ToolError::Crashed(message));
                }
                report.result.map_err(|e| tool_error_to_wit(&e))
            }
        }
    }
}

impl From<AgentInfo> for super::ToolInfo {
    fn from(i: AgentInfo) -> super::ToolInfo {
        super::ToolInfo {
            name: i.name,
            version: i.version,
            description: i.description,
            input_schema: i.input_schema,
            output_schema: i.output_schema,
        }
    }
}
