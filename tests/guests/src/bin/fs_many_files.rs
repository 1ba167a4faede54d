//! Creates input `count` files (input `kind`: `file` or `dir`) under `/workspace`; with input
//! `hold` set it keeps every file open, to pile up host descriptors.
use sandgraph_hostile_guests::*;

struct Case;

impl Guest for Case {
    fn info() -> ToolInfo {
        info("fs_many_files")
    }
    fn invoke(input: String) -> Result<String, ToolError> {
        let count = num(&input, "count").unwrap_or(5000);
        let hold = field(&input, "hold").is_some();
        let dirs = field(&input, "kind").as_deref() == Some("dir");
        let open_only = field(&input, "open");
        let mut held = Vec::new();
        for i in 0..count {
            let r = if let Some(existing) = &open_only {
                std::fs::File::open(format!("/workspace/{existing}")).map(|f| held.push(f))
            } else if dirs {
                std::fs::create_dir(format!("/workspace/d{i}"))
            } else {
                std::fs::File::create(format!("/workspace/f{i}")).map(|f| {
                    if hold {
                        held.push(f)
                    }
                })
            };
            if let Err(e) = r {
                return Err(ToolError::Failed(format!("after {i}: {e}")));
            }
        }
        Ok(format!("{{\"made\":{count},\"held\":{}}}", held.len()))
    }
}

sandgraph_hostile_guests::bindings::export_tool!(Case);

fn main() {}
