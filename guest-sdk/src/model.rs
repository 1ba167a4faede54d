//! Chat completions for agents: the `sandgraph:agent/model` import as plain Rust types.
//!
//! [`chat`] asks for one completion; [`chat_json`] asks for a typed answer, sending the
//! type's JSON Schema as the response format so the host's engine decodes under it, then
//! parses and validates the answer. Requests are built with [`ChatRequest::new`].

use std::fmt;

use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::{AgentError, host, response_schema, schema};

/// Who wrote a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    System,
    User,
    Assistant,
    /// The result of a tool call, answering an assistant's `tool_calls`.
    Tool,
}

/// A call the model asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolCall {
    /// Opaque id; a [`Message::tool_result`] answers it with the same id.
    pub id: String,
    /// One of the request's [`ToolSpec`] names.
    pub name: String,
    /// The arguments, a JSON object document.
    pub arguments: String,
}

/// One chat message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub role: Role,
    pub content: String,
    /// Calls made in an assistant turn; empty otherwise.
    pub tool_calls: Vec<ToolCall>,
    /// For [`Role::Tool`] messages: the id of the call this answers.
    pub tool_call_id: Option<String>,
}

impl Message {
    fn new(role: Role, content: impl Into<String>) -> Self {
        Message {
            role,
            content: content.into(),
            tool_calls: Vec::new(),
            tool_call_id: None,
        }
    }
    pub fn system(content: impl Into<String>) -> Self {
        Self::new(Role::System, content)
    }
    pub fn user(content: impl Into<String>) -> Self {
        Self::new(Role::User, content)
    }
    pub fn assistant(content: impl Into<String>) -> Self {
        Self::new(Role::Assistant, content)
    }
    /// The answer to the model's tool call `call_id`.
    pub fn tool_result(call_id: impl Into<String>, content: impl Into<String>) -> Self {
        Message {
            tool_call_id: Some(call_id.into()),
            ..Self::new(Role::Tool, content)
        }
    }
}

/// A tool the model may call (the host does not run it; the agent decides).
#[derive(Debug, Clone, PartialEq)]
pub struct ToolSpec {
    pub name: String,
    pub description: String,
    /// JSON Schema of the arguments object.
    pub parameters: Value,
}

/// Whether and which tool the model must call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToolChoice {
    Auto,
    None,
    Required,
    Named(String),
}

/// One chat completion request. Build it with [`ChatRequest::new`] and the methods below:
///
/// ```
/// use sandgraph_guest::model::ChatRequest;
/// let request = ChatRequest::new()
///     .system("Answer in one word.")
///     .user("Capital of France?")
///     .max_tokens(8)
///     .temperature(0.0);
/// assert_eq!(request.messages.len(), 2);
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ChatRequest {
    /// A model alias the node grants; empty means the node's first granted model.
    pub model: String,
    pub messages: Vec<Message>,
    /// At most this many generated tokens (the node's `maxTokens` caps it).
    pub max_tokens: Option<u32>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub seed: Option<u64>,
    /// Generation stops before any of these strings (free text only).
    pub stop: Vec<String>,
    /// A JSON Schema the answer must satisfy; the engine decodes under it.
    pub response_format: Option<Value>,
    pub tools: Vec<ToolSpec>,
    pub tool_choice: Option<ToolChoice>,
}

impl ChatRequest {
    /// An empty request for the node's default model.
    pub fn new() -> Self {
        Self::default()
    }
    /// Use this model alias (one the node grants) instead of the node's first.
    pub fn model(mut self, alias: impl Into<String>) -> Self {
        self.model = alias.into();
        self
    }
    pub fn system(self, content: impl Into<String>) -> Self {
        self.message(Message::system(content))
    }
    pub fn user(self, content: impl Into<String>) -> Self {
        self.message(Message::user(content))
    }
    pub fn assistant(self, content: impl Into<String>) -> Self {
        self.message(Message::assistant(content))
    }
    pub fn message(mut self, message: Message) -> Self {
        self.messages.push(message);
        self
    }
    pub fn max_tokens(mut self, n: u32) -> Self {
        self.max_tokens = Some(n);
        self
    }
    /// 0 is greedy decoding.
    pub fn temperature(mut self, t: f32) -> Self {
        self.temperature = Some(t);
        self
    }
    pub fn top_p(mut self, p: f32) -> Self {
        self.top_p = Some(p);
        self
    }
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }
    pub fn stop(mut self, s: impl Into<String>) -> Self {
        self.stop.push(s.into());
        self
    }
    /// Constrain the answer to this JSON Schema (see [`chat_json`] for the typed form).
    pub fn response_format(mut self, schema: Value) -> Self {
        self.response_format = Some(schema);
        self
    }
    pub fn tool(mut self, tool: ToolSpec) -> Self {
        self.tools.push(tool);
        self
    }
    pub fn tool_choice(mut self, choice: ToolChoice) -> Self {
        self.tool_choice = Some(choice);
        self
    }
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// A natural end or a stop string.
    Stop,
    /// `max_tokens` (or the context) ran out.
    Length,
    /// The model called tools.
    ToolCalls,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
}

/// One chat completion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatResponse {
    /// The model that answered (the provider's name for it).
    pub model: String,
    pub content: String,
    pub tool_calls: Vec<ToolCall>,
    pub finish_reason: FinishReason,
    pub usage: Usage,
}

impl ChatResponse {
    /// A plain answer that ended naturally; handy for scripted hosts in tests.
    pub fn text(content: impl Into<String>) -> Self {
        ChatResponse {
            model: String::new(),
            content: content.into(),
            tool_calls: Vec::new(),
            finish_reason: FinishReason::Stop,
            usage: Usage::default(),
        }
    }
}

/// Why the host gave no completion (the WIT `model-error`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelError {
    /// The run's `tokenBudget` or the node's `maxTokens` would be exceeded.
    BudgetExhausted(String),
    /// The node does not grant this model alias.
    Denied(String),
    /// The request is malformed (bad schema, unknown tool in `tool_choice`, ...).
    InvalidRequest(String),
    /// Every provider for the alias failed, after retries and fallbacks.
    Unavailable(String),
    /// The provider did not answer in time.
    Timeout(String),
}

impl fmt::Display for ModelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BudgetExhausted(m) => write!(f, "model budget exhausted: {m}"),
            Self::Denied(m) => write!(f, "model denied: {m}"),
            Self::InvalidRequest(m) => write!(f, "invalid model request: {m}"),
            Self::Unavailable(m) => write!(f, "model unavailable: {m}"),
            Self::Timeout(m) => write!(f, "model timed out: {m}"),
        }
    }
}

impl std::error::Error for ModelError {}

/// A model error ends the step with the matching agent error: budget and denial keep
/// their kind (so the host reports them as such), the rest are failures of the step.
impl From<ModelError> for AgentError {
    fn from(e: ModelError) -> Self {
        match e {
            ModelError::BudgetExhausted(m) => AgentError::BudgetExhausted(m),
            ModelError::Denied(m) => AgentError::Denied(m),
            other => AgentError::Failed(other.to_string()),
        }
    }
}

/// Why [`chat_json`] has no `T`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChatJsonError {
    /// The host gave no completion.
    Model(ModelError),
    /// The answer is not a `T`: not JSON, cut off by `max_tokens`, or outside the schema.
    Unparseable {
        /// The Rust type asked for, without module paths.
        type_name: String,
        /// What is wrong with the answer.
        problem: String,
        /// The answer as the model wrote it (at most 200 characters).
        answer: String,
        finish_reason: FinishReason,
    },
}

impl fmt::Display for ChatJsonError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Model(e) => e.fmt(f),
            Self::Unparseable {
                type_name,
                problem,
                answer,
                finish_reason,
            } => {
                write!(
                    f,
                    "the model's answer is not a valid {type_name}: {problem}; answer: {answer:?}"
                )?;
                if *finish_reason == FinishReason::Length {
                    write!(f, " (cut off by max_tokens: raise it or ask for less)")?;
                }
                Ok(())
            }
        }
    }
}

impl std::error::Error for ChatJsonError {}

impl From<ModelError> for ChatJsonError {
    fn from(e: ModelError) -> Self {
        Self::Model(e)
    }
}

impl From<ChatJsonError> for AgentError {
    fn from(e: ChatJsonError) -> Self {
        match e {
            ChatJsonError::Model(m) => m.into(),
            other => AgentError::Failed(other.to_string()),
        }
    }
}

/// Asks the node's model (or `request.model`) for one completion.
pub fn chat(request: &ChatRequest) -> Result<ChatResponse, ModelError> {
    host::chat(request)
}

/// Asks for an answer of type `T`: sends `T`'s JSON Schema (reduced to what constrained
/// decoding supports, see [`response_schema::for_decoding`]) as the response format,
/// then parses the answer and checks it against the full schema.
pub fn chat_json<T: DeserializeOwned + JsonSchema>(
    request: &ChatRequest,
) -> Result<T, ChatJsonError> {
    chat_json_schema(request, &schema::schema_for::<T>())
}

/// [`chat_json`] with a schema built at run time (e.g. an enum of the granted tools):
/// the answer must satisfy `schema` and deserialize into `T`.
pub fn chat_json_schema<T: DeserializeOwned>(
    request: &ChatRequest,
    schema: &Value,
) -> Result<T, ChatJsonError> {
    let request = request
        .clone()
        .response_format(response_schema::for_decoding(schema));
    let response = chat(&request)?;
    parse_answer(&response, schema)
}

/// Parses a constrained answer into `T`, checking it against `schema` first.
pub fn parse_answer<T: DeserializeOwned>(
    response: &ChatResponse,
    schema: &Value,
) -> Result<T, ChatJsonError> {
    let unparseable = |problem: String| ChatJsonError::Unparseable {
        type_name: short_type_name::<T>(),
        problem,
        answer: response.content.chars().take(200).collect(),
        finish_reason: response.finish_reason,
    };
    let value: Value = serde_json::from_str(&response.content)
        .map_err(|e| unparseable(format!("not JSON ({e})")))?;
    schema::validate(schema, &value).map_err(|e| unparseable(e.message().to_owned()))?;
    serde_path_to_error::deserialize(&value).map_err(|e| {
        let path = e.path().to_string();
        unparseable(format!("at `{path}`: {}", e.into_inner()))
    })
}

/// `T`'s name without module paths: `Map<String, Value>`, `Plan`.
fn short_type_name<T>() -> String {
    let full = std::any::type_name::<T>();
    let mut out = String::new();
    let mut segment = String::new();
    for c in full.chars().chain(std::iter::once(' ')) {
        if c.is_alphanumeric() || c == '_' || c == ':' {
            segment.push(c);
        } else {
            out.push_str(segment.rsplit("::").next().unwrap_or_default());
            segment.clear();
            out.push(c);
        }
    }
    out.pop();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize, JsonSchema, PartialEq)]
    struct Verdict {
        /// approve or revise
        verdict: String,
        #[schemars(range(max = 10))]
        score: u8,
    }

    #[test]
    fn builder_collects_messages_and_options() {
        let r = ChatRequest::new()
            .model("small")
            .system("s")
            .user("u")
            .assistant("a")
            .message(Message::tool_result("call-1", "{}"))
            .max_tokens(16)
            .temperature(0.0)
            .top_p(0.9)
            .seed(7)
            .stop("\n")
            .tool_choice(ToolChoice::None);
        assert_eq!(r.model, "small");
        let roles: Vec<Role> = r.messages.iter().map(|m| m.role).collect();
        assert_eq!(
            roles,
            [Role::System, Role::User, Role::Assistant, Role::Tool]
        );
        assert_eq!(r.messages[3].tool_call_id.as_deref(), Some("call-1"));
        assert_eq!(
            (r.max_tokens, r.temperature, r.top_p, r.seed),
            (Some(16), Some(0.0), Some(0.9), Some(7))
        );
        assert_eq!(r.stop, ["\n"]);
    }

    #[test]
    fn answers_parse_or_say_what_is_wrong() {
        let schema = schema::schema_for::<Verdict>();
        let ok = ChatResponse::text(r#"{"score":3,"verdict":"approve"}"#);
        assert_eq!(
            parse_answer::<Verdict>(&ok, &schema).unwrap(),
            Verdict {
                verdict: "approve".into(),
                score: 3
            }
        );
        let mut cut = ChatResponse::text(r#"{"score":3,"verd"#);
        cut.finish_reason = FinishReason::Length;
        let err = parse_answer::<Verdict>(&cut, &schema)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with(
                "the model's answer is not a valid Verdict: not JSON (EOF while parsing"
            ),
            "{err}"
        );
        assert!(
            err.ends_with("(cut off by max_tokens: raise it or ask for less)"),
            "{err}"
        );
        let out_of_range = ChatResponse::text(r#"{"score":30,"verdict":"approve"}"#);
        assert_eq!(
            parse_answer::<Verdict>(&out_of_range, &schema)
                .unwrap_err()
                .to_string(),
            "the model's answer is not a valid Verdict: at `score`: 30 is greater than the \
             maximum 10; answer: \"{\\\"score\\\":30,\\\"verdict\\\":\\\"approve\\\"}\""
        );
    }

    #[test]
    fn model_errors_become_agent_errors_of_the_right_kind() {
        assert_eq!(
            AgentError::from(ModelError::BudgetExhausted("run: 0 of 100 left".into())),
            AgentError::BudgetExhausted("run: 0 of 100 left".into())
        );
        assert_eq!(
            AgentError::from(ModelError::Denied("model `big` is not granted".into())),
            AgentError::Denied("model `big` is not granted".into())
        );
        assert_eq!(
            AgentError::from(ChatJsonError::Model(ModelError::Timeout("30s".into()))),
            AgentError::Failed("model timed out: 30s".into())
        );
    }
}
