//! Creates a link at input `link` pointing to input `target` (input `kind`: `sym` or `hard`),
//! then reads through it: the host must refuse links, whatever they point at.
use sandgraph_hostile_guests::*;

struct Case;

impl Guest for Case {
    fn info() -> ToolInfo {
        info("fs_symlink")
    }
    fn invoke(input: String) -> Result<String, ToolError> {
        let link = field(&input, "link").ok_or(ToolError::InvalidInput("need link".into()))?;
        let target = field(&input, "target").ok_or(ToolError::InvalidInput("need target".into()))?;
        // Paths are relative to /workspace here (the raw preopen), like `ln -s target link`
        // run inside it.
        let dir = workspace_dir().ok_or(ToolError::Failed("no /workspace preopen".into()))?;
        let r = if field(&input, "kind").as_deref() == Some("hard") {
            dir.link_at(
                wasip2::filesystem::types::PathFlags::empty(),
                &target,
                &dir,
                &link,
            )
        } else {
            dir.symlink_at(&target, &link)
        };
        let link = format!("/workspace/{link}");
        if let Err(e) = r {
            return Err(ToolError::Denied(format!("filesystem: {link}: {e:?}")));
        }
        let text = std::fs::read_to_string(&link)
            .map_err(|e| ToolError::Failed(format!("read {link}: {e}")))?;
        Ok(format!("{{\"read\":{}}}", json_str(&text)))
    }
}

sandgraph_hostile_guests::bindings::export_tool!(Case);

fn main() {}
