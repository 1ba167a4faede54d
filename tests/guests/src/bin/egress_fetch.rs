//! Sends input `method` to input `url`, optionally with its own `authorization` header,
//! and returns everything it sees of the response.
use sandgraph_hostile_guests::*;

struct Case;

impl Guest for Case {
    fn info() -> ToolInfo {
        info("egress_fetch")
    }
    fn invoke(input: String) -> Result<String, ToolError> {
        let url = field(&input, "url").ok_or(ToolError::InvalidInput("need url".into()))?;
        let method = field(&input, "method").unwrap_or_else(|| "GET".into());
        let auth = field(&input, "authorization");
        let headers: Vec<(&str, &str)> =
            auth.iter().map(|a| ("authorization", a.as_str())).collect();
        match fetch(&method, &url, &headers) {
            Ok(r) => Ok(response_json(&r)),
            Err(e) => Err(egress_error(&url, e)),
        }
    }
}

sandgraph_hostile_guests::bindings::export_tool!(Case);

fn main() {}
