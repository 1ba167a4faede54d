//! Returns arrays (or objects, input `kind`) nested input `depth` levels deep: the output must
//! meet one depth limit at the sandbox boundary, the same for `tool call` and a graph.
use sandgraph_hostile_guests::*;

struct Case;

impl Guest for Case {
    fn info() -> ToolInfo {
        info("limits_deep_output")
    }
    fn invoke(input: String) -> Result<String, ToolError> {
        let depth = num(&input, "depth").unwrap_or(1000) as usize;
        let (open, close) = if field(&input, "kind").as_deref() == Some("object") {
            ("{\"a\":", "}")
        } else {
            ("[", "]")
        };
        // Objects need a value at the bottom; arrays may be empty.
        let bottom = if open == "[" { "" } else { "1" };
        Ok(format!("{}{bottom}{}", open.repeat(depth), close.repeat(depth)))
    }
}

sandgraph_hostile_guests::bindings::export_tool!(Case);

fn main() {}
