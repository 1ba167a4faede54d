//! Recurses with a large frame on Rust's shadow stack (in linear memory) until it runs off the
//! bottom of memory; the host must report a `trap`, never corrupt anything outside the instance.
use sandgraph_hostile_guests::*;

struct Case;

#[inline(never)]
#[allow(unconditional_recursion)]
fn dive(depth: u64) -> u64 {
    let frame = std::hint::black_box([depth; 64]);
    dive(depth + 1) + frame[3]
}

impl Guest for Case {
    fn info() -> ToolInfo {
        info("limits_shadow_stack_overflow")
    }
    fn invoke(_input: String) -> Result<String, ToolError> {
        Ok(format!("{}", dive(0)))
    }
}

sandgraph_hostile_guests::bindings::export_tool!(Case);

fn main() {}
