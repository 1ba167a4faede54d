//! Recurses without bound on the wasm call stack; wasmtime's stack limit must turn it into a
//! `trap` ("call stack exhausted").
use sandgraph_hostile_guests::*;

struct Case;

/// No locals have their address taken, so every frame lives on the wasm stack only.
#[inline(never)]
fn dive(depth: u64, stop: u64) -> u64 {
    if depth == stop {
        return depth;
    }
    dive(depth + 1, stop).rotate_left(1) ^ depth
}

impl Guest for Case {
    fn info() -> ToolInfo {
        info("limits_deep_recursion")
    }
    fn invoke(input: String) -> Result<String, ToolError> {
        // The bound depends on the input so it cannot be folded away; "{}" never stops.
        let stop = field(&input, "stop")
            .and_then(|s| s.parse().ok())
            .unwrap_or(u64::MAX);
        Ok(format!("{}", dive(0, stop)))
    }
}

sandgraph_hostile_guests::bindings::export_tool!(Case);

fn main() {}
