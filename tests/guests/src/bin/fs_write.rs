//! Writes the file named by input `path`; must fail in a read-only workspace or outside it.
use sandgraph_hostile_guests::*;

struct Case;

impl Guest for Case {
    fn info() -> ToolInfo {
        info("fs_write")
    }
    fn invoke(input: String) -> Result<String, ToolError> {
        let path = field(&input, "path").ok_or(ToolError::InvalidInput("need path".into()))?;
        match std::fs::write(&path, "pwned") {
            Ok(()) => Ok("{\"written\":true}".into()),
            Err(e) => Err(ToolError::Denied(format!("filesystem: {path}: {e}"))),
        }
    }
}

sandgraph_hostile_guests::bindings::export_tool!(Case);

fn main() {}
