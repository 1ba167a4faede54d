//! Reads the file named by input `path` (e.g. /etc/passwd, /workspace/../x, a symlink out).
use sandgraph_hostile_guests::*;

struct Case;

impl Guest for Case {
    fn info() -> ToolInfo {
        info("fs_read")
    }
    fn invoke(input: String) -> Result<String, ToolError> {
        let path = field(&input, "path").ok_or(ToolError::InvalidInput("need path".into()))?;
        match std::fs::read_to_string(&path) {
            Ok(text) => Ok(format!("{{\"content\":{}}}", json_str(&text))),
            Err(e) => Err(ToolError::Denied(format!("filesystem: {path}: {e}"))),
        }
    }
}

sandgraph_hostile_guests::bindings::export_tool!(Case);

fn main() {}
