//! A test agent whose output breaks the output schema it declares: `verdict` must be
//! `approve` or `revise`, it answers `maybe`. The host fails the step as `output_invalid`.
use sandgraph_hostile_guests::agent_bindings::{AgentError, AgentInfo, Guest};

struct Case;

impl Guest for Case {
    fn info() -> AgentInfo {
        AgentInfo {
            name: "agent_bad_output".into(),
            version: "0.1.0".into(),
            description: "A test agent that breaks its declared output schema.".into(),
            input_schema: "{}".into(),
            output_schema: r#"{"type":"object","properties":{"verdict":{"enum":["approve","revise"]}},"required":["verdict"]}"#.into(),
        }
    }

    fn step(_input: String) -> Result<String, AgentError> {
        Ok(r#"{"verdict":"maybe"}"#.into())
    }
}

sandgraph_hostile_guests::agent_bindings::export_agent!(Case);

fn main() {}
