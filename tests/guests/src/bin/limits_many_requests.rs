//! Sends input `count` requests to input `url`, one after another: each opens a connection,
//! which the call's connection cap must count.
use sandgraph_hostile_guests::*;

struct Case;

impl Guest for Case {
    fn info() -> ToolInfo {
        info("limits_many_requests")
    }
    fn invoke(input: String) -> Result<String, ToolError> {
        let url = field(&input, "url").ok_or(ToolError::InvalidInput("need url".into()))?;
        let count = num(&input, "count").unwrap_or(1500);
        for i in 0..count {
            if let Err(e) = fetch("GET", &url, &[]) {
                return Err(ToolError::Failed(format!("request {i}: {e}")));
            }
        }
        Ok(format!("{{\"sent\":{count}}}"))
    }
}

sandgraph_hostile_guests::bindings::export_tool!(Case);

fn main() {}
