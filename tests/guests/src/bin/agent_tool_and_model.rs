//! A test agent that uses what its node grants: lists its tools, asks the model (alias from
//! input `model`, default the node's first) for the input of tool `tool`, calls that tool with
//! the answer, asks the model once more about the tool's output, and returns all of it.
//! Denials and budget refusals come back as the matching `agent-error`.
use sandgraph_hostile_guests::agent_bindings::sandgraph::agent::model::{
    self, ChatRequest, Message, ModelError, Role,
};
use sandgraph_hostile_guests::agent_bindings::sandgraph::agent::tools::{self, ToolError};
use sandgraph_hostile_guests::agent_bindings::{AgentError, AgentInfo, Guest};
use sandgraph_hostile_guests::{field, json_str};

struct Case;

fn ask(alias: &str, text: &str) -> Result<model::ChatResponse, AgentError> {
    let request = ChatRequest {
        model: alias.to_string(),
        messages: vec![Message {
            role: Role::User,
            content: text.to_string(),
            tool_calls: vec![],
            tool_call_id: None,
        }],
        max_tokens: Some(64),
        temperature: None,
        top_p: None,
        seed: Some(7),
        stop: vec![],
        response_format: None,
        tools: vec![],
        tool_choice: None,
    };
    model::chat(&request).map_err(|e| match e {
        ModelError::Denied(m) => AgentError::Denied(format!("model: {m}")),
        ModelError::BudgetExhausted(m) => AgentError::BudgetExhausted(m),
        ModelError::InvalidRequest(m) | ModelError::Unavailable(m) | ModelError::Timeout(m) => {
            AgentError::Failed(format!("model: {m}"))
        }
    })
}

impl Guest for Case {
    fn info() -> AgentInfo {
        AgentInfo {
            name: "agent_tool_and_model".into(),
            version: "0.1.0".into(),
            description: "A test agent: one model call, one tool call, one model call.".into(),
            input_schema: "{}".into(),
            output_schema: "{}".into(),
        }
    }

    fn step(input: String) -> Result<String, AgentError> {
        let alias = field(&input, "model").unwrap_or_default();
        let tool = field(&input, "tool").ok_or(AgentError::InvalidInput("need tool".into()))?;
        let listed: Vec<String> = tools::list().into_iter().map(|t| json_str(&t.name)).collect();
        let plan = ask(&alias, &input)?;
        let output = tools::call(&tool, &plan.content).map_err(|e| match e {
            ToolError::Denied(m) => AgentError::Denied(format!("tool: {m}")),
            other => AgentError::Failed(format!("tool: {other:?}")),
        })?;
        let review = ask(&alias, &output)?;
        let tokens = plan.usage.prompt_tokens
            + plan.usage.completion_tokens
            + review.usage.prompt_tokens
            + review.usage.completion_tokens;
        Ok(format!(
            "{{\"tools\":[{}],\"plan\":{},\"tool_output\":{output},\"answer\":{},\"tokens\":{tokens}}}",
            listed.join(","),
            json_str(&plan.content),
            json_str(&review.content)
        ))
    }
}

sandgraph_hostile_guests::agent_bindings::export_agent!(Case);

fn main() {}
