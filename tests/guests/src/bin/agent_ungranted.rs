//! A test agent that reaches for what its node does not grant: model alias `forbidden` and
//! tool `forbidden`, and returns both refusals as its output so the test can read them.
use sandgraph_hostile_guests::agent_bindings::sandgraph::agent::model::{
    self, ChatRequest, Message, Role,
};
use sandgraph_hostile_guests::agent_bindings::sandgraph::agent::tools;
use sandgraph_hostile_guests::agent_bindings::{AgentError, AgentInfo, Guest};
use sandgraph_hostile_guests::json_str;

struct Case;

impl Guest for Case {
    fn info() -> AgentInfo {
        AgentInfo {
            name: "agent_ungranted".into(),
            version: "0.1.0".into(),
            description: "A test agent that asks for an ungranted model and tool.".into(),
            input_schema: "{}".into(),
            output_schema: "{}".into(),
        }
    }

    fn step(_input: String) -> Result<String, AgentError> {
        let request = ChatRequest {
            model: "forbidden".into(),
            messages: vec![Message {
                role: Role::User,
                content: "hello".into(),
                tool_calls: vec![],
                tool_call_id: None,
            }],
            max_tokens: None,
            temperature: None,
            top_p: None,
            seed: None,
            stop: vec![],
            response_format: None,
            tools: vec![],
            tool_choice: None,
        };
        let model_error = match model::chat(&request) {
            Ok(_) => "none".to_string(),
            Err(e) => format!("{e:?}"),
        };
        let tool_error = match tools::call("forbidden", "{}") {
            Ok(_) => "none".to_string(),
            Err(e) => format!("{e:?}"),
        };
        Ok(format!(
            "{{\"model_error\":{},\"tool_error\":{}}}",
            json_str(&model_error),
            json_str(&tool_error)
        ))
    }
}

sandgraph_hostile_guests::agent_bindings::export_agent!(Case);

fn main() {}
