//! Sends input `first`, then input `then` (both GET) in one call and returns what it sees of
//! the second response: a value the server stored from the first request, read back through
//! another rule.
use sandgraph_hostile_guests::*;

struct Case;

impl Guest for Case {
    fn info() -> ToolInfo {
        info("egress_fetch_twice")
    }
    fn invoke(input: String) -> Result<String, ToolError> {
        let first = field(&input, "first").ok_or(ToolError::InvalidInput("need first".into()))?;
        let then = field(&input, "then").ok_or(ToolError::InvalidInput("need then".into()))?;
        fetch("GET", &first, &[]).map_err(|e| egress_error(&first, e))?;
        match fetch("GET", &then, &[]) {
            Ok(r) => Ok(response_json(&r)),
            Err(e) => Err(egress_error(&then, e)),
        }
    }
}

sandgraph_hostile_guests::bindings::export_tool!(Case);

fn main() {}
