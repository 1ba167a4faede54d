//! Spins forever; the epoch deadline must stop it with `timeout`.
use sandgraph_hostile_guests::*;

struct Case;

impl Guest for Case {
    fn info() -> ToolInfo {
        info("limits_infinite_loop")
    }
    fn invoke(_input: String) -> Result<String, ToolError> {
        let mut n: u64 = 0;
        loop {
            n = std::hint::black_box(n.wrapping_add(1));
        }
    }
}

sandgraph_hostile_guests::bindings::export_tool!(Case);

fn main() {}
