//! Builds input `count` wasi:http header sets of input `size` bytes each and keeps them all
//! alive: host memory the guest's own limit must cover (or the handle cap must stop).
use sandgraph_hostile_guests::*;
use wasip2::http::types::Fields;

struct Case;

impl Guest for Case {
    fn info() -> ToolInfo {
        info("limits_header_sets")
    }
    fn invoke(input: String) -> Result<String, ToolError> {
        let count = num(&input, "count").unwrap_or(4000);
        let size = num(&input, "size").unwrap_or(60_000) as usize;
        let value = vec![b'v'; size];
        let mut held = Vec::new();
        for i in 0..count {
            let f = Fields::new();
            f.append(&format!("x-h{i}"), &value)
                .map_err(|e| ToolError::Failed(format!("append {i}: {e:?}")))?;
            held.push(f);
        }
        spin_ms(num(&input, "hold_ms").unwrap_or(0));
        Ok(format!("{{\"held\":{}}}", held.len()))
    }
}

sandgraph_hostile_guests::bindings::export_tool!(Case);

fn main() {}
