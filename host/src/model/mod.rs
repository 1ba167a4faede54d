//! Model calls: the request and answer types every provider speaks, and the one trait providers
//! implement. Which provider serves a model alias is the operator's choice (a models file or
//! `SANDGRAPH_MODELS`); agents only ever name aliases their node grants.
//!
//! The types mirror `sandgraph:agent/model` (guest-sdk/wit/agent.wit) and are serde types because
//! every request and answer is journaled as a boundary crossing.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Who wrote a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    System,
    User,
    Assistant,
    /// The result of a tool call, answering an assistant turn's `tool_calls`.
    Tool,
}

/// A call the model asked for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolCall {
    /// Opaque id; a `tool` message answers it with the same `tool_call_id`.
    pub id: String,
    pub name: String,
    /// The arguments, a JSON object document.
    pub arguments: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub role: Role,
    pub content: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCall>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
}

/// A tool the model may call; the agent, not the provider, decides what to do with the call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolSpec {
    pub name: String,
    pub description: String,
    /// JSON Schema of the arguments object.
    pub parameters: serde_json::Value,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ToolChoice {
    Auto,
    None,
    Required,
    Named(String),
}

/// One chat completion request, after the host resolved the alias and applied the node's caps.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatRequest {
    /// The model alias (a key of the operator's models file).
    pub model: String,
    pub messages: Vec<Message>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stop: Vec<String>,
    /// A JSON Schema the answer must satisfy (constrained decoding on the embedded engine,
    /// `response_format: json_schema` on OpenAI-compatible servers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_format: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tools: Vec<ToolSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_choice: Option<ToolChoice>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// A natural end or a stop string.
    Stop,
    /// `max_tokens` or the context ran out.
    Length,
    /// The model called tools.
    ToolCalls,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Usage {
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
}

/// How long the provider took, as the host measured it (journaled with the answer; replay
/// reports the recorded figures).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ModelTiming {
    /// Request sent to answer complete, retries and fallbacks included.
    pub total: Duration,
    /// Request sent to the first generated token, where the provider streams.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_token: Option<Duration>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatResponse {
    /// The model that answered, as the provider names it.
    pub model: String,
    /// Which provider of the alias's chain answered (e.g. `embedded`, `openai:local-gpu`).
    pub provider: String,
    pub content: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCall>,
    pub finish_reason: FinishReason,
    pub usage: Usage,
    #[serde(default)]
    pub timing: ModelTiming,
}

/// Why a model call produced no answer. The variants are the guest's `model-error`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(tag = "kind", content = "message", rename_all = "snake_case")]
pub enum ModelError {
    #[error("token budget exhausted: {0}")]
    BudgetExhausted(String),
    #[error("model denied: {0}")]
    Denied(String),
    #[error("invalid model request: {0}")]
    InvalidRequest(String),
    #[error("model unavailable: {0}")]
    Unavailable(String),
    #[error("model call timed out: {0}")]
    Timeout(String),
}

impl ModelError {
    /// The outcome label used in metrics and the journal (`sandgraph_model_calls_total{outcome}`).
    pub fn kind(&self) -> &'static str {
        match self {
            ModelError::BudgetExhausted(_) => "budget_exhausted",
            ModelError::Denied(_) => "denied",
            ModelError::InvalidRequest(_) => "invalid_request",
            ModelError::Unavailable(_) => "unavailable",
            ModelError::Timeout(_) => "timeout",
        }
    }
}

/// Receives generated text as it streams (the CLI's live view); called from the provider's task.
pub type TokenSink = dyn Fn(&str) + Send + Sync;

/// One way of answering chat requests: the embedded engine or one OpenAI-compatible endpoint.
#[async_trait::async_trait]
pub trait ModelProvider: Send + Sync {
    /// Short stable name for logs, metrics and the journal, e.g. `embedded` or `openai:gpu-a`.
    fn name(&self) -> &str;

    /// Answers one request. Retries inside one endpoint belong here; fallback across providers
    /// belongs to the alias's chain.
    async fn chat(
        &self,
        request: &ChatRequest,
        tokens: Option<&TokenSink>,
    ) -> Result<ChatResponse, ModelError>;
}

pub mod config;
pub mod embedded;
pub mod openai;
pub mod registry;
pub mod wire;

pub use config::ModelsConfigError;
pub use registry::{Models, cli_models};
