//! Allocates until something gives; the memory limit must end it with `memory_limit_exceeded`.
use sandgraph_hostile_guests::*;

struct Case;

impl Guest for Case {
    fn info() -> ToolInfo {
        info("limits_memory_bomb")
    }
    fn invoke(_input: String) -> Result<String, ToolError> {
        let mut hoard: Vec<Vec<u8>> = Vec::new();
        loop {
            hoard.push(vec![0xA5; 1 << 20]);
            std::hint::black_box(&hoard);
        }
    }
}

sandgraph_hostile_guests::bindings::export_tool!(Case);

fn main() {}
