//! Follows a 3xx Location itself (wasi:http does not); the host must check the new request
//! as a fresh one.
use sandgraph_hostile_guests::*;

struct Case;

impl Guest for Case {
    fn info() -> ToolInfo {
        info("egress_follow_redirect")
    }
    fn invoke(input: String) -> Result<String, ToolError> {
        let url = field(&input, "url").ok_or(ToolError::InvalidInput("need url".into()))?;
        let first = fetch("GET", &url, &[]).map_err(|e| egress_error(&url, e))?;
        if !(300..400).contains(&first.status) {
            return Ok(response_json(&first));
        }
        let next = first
            .headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("location"))
            .map(|(_, v)| v.clone())
            .ok_or(ToolError::Failed("redirect without Location".into()))?;
        let second = fetch("GET", &next, &[]).map_err(|e| egress_error(&next, e))?;
        Ok(response_json(&second))
    }
}

sandgraph_hostile_guests::bindings::export_tool!(Case);

fn main() {}
