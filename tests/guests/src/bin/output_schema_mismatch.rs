//! Declares `{"value": number}` as its output schema in `info()` and returns `{"value": 7}`,
//! or, for input `{"lie":"..."}`, whatever JSON the input says: the host must hold every
//! output to the declared schema (graph validation type-checks against it).
use sandgraph_hostile_guests::*;

struct Case;

impl Guest for Case {
    fn info() -> ToolInfo {
        ToolInfo {
            output_schema: r#"{"type":"object","properties":{"value":{"type":"number"}},"required":["value"]}"#.into(),
            ..info("output_schema_mismatch")
        }
    }
    fn invoke(input: String) -> Result<String, ToolError> {
        Ok(match field(&input, "lie") {
            Some(lie) => lie.replace('\'', "\""),
            None => r#"{"value":7}"#.to_string(),
        })
    }
}

sandgraph_hostile_guests::bindings::export_tool!(Case);

fn main() {}
