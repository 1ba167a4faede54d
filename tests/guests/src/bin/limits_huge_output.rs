//! Returns a 2 MiB document; `max_output` must refuse it with `output_too_large`.
use sandgraph_hostile_guests::*;

struct Case;

impl Guest for Case {
    fn info() -> ToolInfo {
        info("limits_huge_output")
    }
    fn invoke(_input: String) -> Result<String, ToolError> {
        Ok(format!("\"{}\"", "a".repeat(2 << 20)))
    }
}

sandgraph_hostile_guests::bindings::export_tool!(Case);

fn main() {}
