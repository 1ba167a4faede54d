//! The `sandgraph:agent` world's glue: SDK types to and from the generated WIT types, the
//! import calls a component makes, and the bodies of its `info`/`step` exports.
//!
//! Compiled on every target so the conversions are tested natively; the import calls
//! themselves only run inside a component.

use serde_json::Value;

use crate::{
    AgentError,
    agent_bindings::sandgraph::agent::{model as wm, tools as wt, types as wty},
    model::{
        ChatRequest, ChatResponse, FinishReason, Message, ModelError, Role, ToolCall, ToolChoice,
        Usage,
    },
    tools::{ToolCallError, ToolDescriptor},
};

#[cfg_attr(not(all(target_arch = "wasm32", target_os = "wasi")), allow(dead_code))]
pub(crate) fn chat(request: &ChatRequest) -> Result<ChatResponse, ModelError> {
    wm::chat(&request_to_wit(request))
        .map(response_from_wit)
        .map_err(model_error_from_wit)
}

#[cfg_attr(not(all(target_arch = "wasm32", target_os = "wasi")), allow(dead_code))]
pub(crate) fn list_tools() -> Result<Vec<ToolDescriptor>, AgentError> {
    wt::list().into_iter().map(descriptor_from_wit).collect()
}

#[cfg_attr(not(all(target_arch = "wasm32", target_os = "wasi")), allow(dead_code))]
pub(crate) fn call_tool(name: &str, input: &str) -> Result<String, ToolCallError> {
    wt::call(name, input).map_err(tool_error_from_wit)
}

pub(crate) fn request_to_wit(r: &ChatRequest) -> wm::ChatRequest {
    wm::ChatRequest {
        model: r.model.clone(),
        messages: r.messages.iter().map(message_to_wit).collect(),
        max_tokens: r.max_tokens,
        temperature: r.temperature,
        top_p: r.top_p,
        seed: r.seed,
        stop: r.stop.clone(),
        response_format: r.response_format.as_ref().map(Value::to_string),
        tools: r
            .tools
            .iter()
            .map(|t| wm::ToolSpec {
                name: t.name.clone(),
                description: t.description.clone(),
                parameters: t.parameters.to_string(),
            })
            .collect(),
        tool_choice: r.tool_choice.as_ref().map(|c| match c {
            ToolChoice::Auto => wm::ToolChoice::Auto,
            ToolChoice::None => wm::ToolChoice::None,
            ToolChoice::Required => wm::ToolChoice::Required,
            ToolChoice::Named(n) => wm::ToolChoice::Named(n.clone()),
        }),
    }
}

fn message_to_wit(m: &Message) -> wm::Message {
    wm::Message {
        role: match m.role {
            Role::System => wm::Role::System,
            Role::User => wm::Role::User,
            Role::Assistant => wm::Role::Assistant,
            Role::Tool => wm::Role::Tool,
        },
        content: m.content.clone(),
        tool_calls: m.tool_calls.iter().map(call_to_wit).collect(),
        tool_call_id: m.tool_call_id.clone(),
    }
}

fn call_to_wit(c: &ToolCall) -> wm::ToolCall {
    wm::ToolCall {
        id: c.id.clone(),
        name: c.name.clone(),
        arguments: c.arguments.clone(),
    }
}

pub(crate) fn response_from_wit(r: wm::ChatResponse) -> ChatResponse {
    ChatResponse {
        model: r.model,
        content: r.content,
        tool_calls: r
            .tool_calls
            .into_iter()
            .map(|c| ToolCall {
                id: c.id,
                name: c.name,
                arguments: c.arguments,
            })
            .collect(),
        finish_reason: match r.finish_reason {
            wm::FinishReason::Stop => FinishReason::Stop,
            wm::FinishReason::Length => FinishReason::Length,
            wm::FinishReason::ToolCalls => FinishReason::ToolCalls,
        },
        usage: Usage {
            prompt_tokens: r.usage.prompt_tokens,
            completion_tokens: r.usage.completion_tokens,
        },
    }
}

pub(crate) fn model_error_from_wit(e: wm::ModelError) -> ModelError {
    match e {
        wm::ModelError::BudgetExhausted(m) => ModelError::BudgetExhausted(m),
        wm::ModelError::Denied(m) => ModelError::Denied(m),
        wm::ModelError::InvalidRequest(m) => ModelError::InvalidRequest(m),
        wm::ModelError::Unavailable(m) => ModelError::Unavailable(m),
        wm::ModelError::Timeout(m) => ModelError::Timeout(m),
    }
}

pub(crate) fn descriptor_from_wit(d: wt::ToolDescriptor) -> Result<ToolDescriptor, AgentError> {
    let parse = |what: &str, text: &str| {
        serde_json::from_str::<Value>(text).map_err(|e| {
            AgentError::failed(format!(
                "the host described tool `{}` with an {what} schema that is not JSON: {e}",
                d.name
            ))
        })
    };
    Ok(ToolDescriptor {
        input_schema: parse("input", &d.input_schema)?,
        output_schema: parse("output", &d.output_schema)?,
        name: d.name,
        description: d.description,
    })
}

pub(crate) fn tool_error_from_wit(e: wt::ToolError) -> ToolCallError {
    match e {
        wt::ToolError::InvalidInput(m) => ToolCallError::InvalidInput(m),
        wt::ToolError::Failed(m) => ToolCallError::Failed(m),
        wt::ToolError::Denied(m) => ToolCallError::Denied(m),
        wt::ToolError::Timeout(m) => ToolCallError::Timeout(m),
        wt::ToolError::LimitExceeded(m) => ToolCallError::LimitExceeded(m),
        wt::ToolError::Crashed(m) => ToolCallError::Crashed(m),
    }
}

/// `info` export body.
pub fn wit_info<A: crate::Agent>() -> wty::AgentInfo {
    let info = crate::agent::info::<A>();
    wty::AgentInfo {
        name: info.name,
        version: info.version,
        description: info.description,
        input_schema: info.input_schema,
        output_schema: info.output_schema,
    }
}

/// `step` export body: validate, run, serialize, and map errors to the WIT variant.
pub fn wit_step<A: crate::Agent>(input: &str) -> Result<String, wty::AgentError> {
    crate::agent::step::<A>(input).map_err(|e| match e {
        AgentError::InvalidInput(m) => wty::AgentError::InvalidInput(m),
        AgentError::Failed(m) => wty::AgentError::Failed(m),
        AgentError::Denied(m) => wty::AgentError::Denied(m),
        AgentError::BudgetExhausted(m) => wty::AgentError::BudgetExhausted(m),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ToolSpec;
    use serde_json::json;

    #[test]
    fn requests_cross_with_every_field() {
        let r = ChatRequest::new()
            .model("default")
            .system("s")
            .message(Message {
                tool_calls: vec![ToolCall {
                    id: "1".into(),
                    name: "calc".into(),
                    arguments: "{}".into(),
                }],
                ..Message::assistant("")
            })
            .message(Message::tool_result("1", "{\"value\":2}"))
            .max_tokens(64)
            .temperature(0.0)
            .seed(3)
            .stop("END")
            .response_format(json!({"type": "object"}))
            .tool(ToolSpec {
                name: "calc".into(),
                description: "d".into(),
                parameters: json!({"type": "object"}),
            })
            .tool_choice(ToolChoice::Named("calc".into()));
        let w = request_to_wit(&r);
        assert_eq!(w.model, "default");
        assert_eq!(w.messages.len(), 3);
        assert!(matches!(w.messages[1].role, wm::Role::Assistant));
        assert_eq!(w.messages[1].tool_calls[0].name, "calc");
        assert_eq!(w.messages[2].tool_call_id.as_deref(), Some("1"));
        assert_eq!(
            (w.max_tokens, w.temperature, w.seed, w.top_p),
            (Some(64), Some(0.0), Some(3), None)
        );
        assert_eq!(w.response_format.as_deref(), Some(r#"{"type":"object"}"#));
        assert_eq!(w.tools[0].parameters, r#"{"type":"object"}"#);
        assert!(matches!(w.tool_choice, Some(wm::ToolChoice::Named(ref n)) if n == "calc"));
    }

    #[test]
    fn answers_and_errors_cross_back() {
        let r = response_from_wit(wm::ChatResponse {
            model: "smollm2".into(),
            content: "hi".into(),
            tool_calls: vec![],
            finish_reason: wm::FinishReason::Length,
            usage: wm::Usage {
                prompt_tokens: 5,
                completion_tokens: 2,
            },
        });
        assert_eq!(r.finish_reason, FinishReason::Length);
        assert_eq!(r.usage.completion_tokens, 2);
        assert_eq!(
            model_error_from_wit(wm::ModelError::Denied("x".into())),
            ModelError::Denied("x".into())
        );
        assert_eq!(
            tool_error_from_wit(wt::ToolError::LimitExceeded("memory".into())).kind(),
            "limit_exceeded"
        );
        let bad = descriptor_from_wit(wt::ToolDescriptor {
            name: "calc".into(),
            description: String::new(),
            input_schema: "{".into(),
            output_schema: "{}".into(),
        })
        .unwrap_err();
        assert!(
            bad.message().starts_with(
                "the host described tool `calc` with an input schema that is not JSON"
            ),
            "{bad}"
        );
    }
}
