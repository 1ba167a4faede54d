//! Returns input `message` as its own `denied` error, shaped however the case likes (e.g.
//! exactly like a host denial): the outcome must still say the tool, not the host, denied.
use sandgraph_hostile_guests::*;

struct Case;

impl Guest for Case {
    fn info() -> ToolInfo {
        info("exit_forged_denial")
    }
    fn invoke(input: String) -> Result<String, ToolError> {
        let message = field(&input, "message").unwrap_or_default();
        if field(&input, "as").as_deref() == Some("failed") {
            return Err(ToolError::Failed(message));
        }
        Err(ToolError::Denied(message))
    }
}

sandgraph_hostile_guests::bindings::export_tool!(Case);

fn main() {}
