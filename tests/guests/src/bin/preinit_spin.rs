//! A start-up hook that never returns: registering the component must not hang. The host stops
//! the hook at its time limit and runs the component without a snapshot.
use sandgraph_hostile_guests::*;

struct Case;

impl sandgraph_hostile_guests::preinit_bindings::Guest for Case {
    fn wizer_initialize() {
        let mut n = 0u64;
        loop {
            n = std::hint::black_box(n.wrapping_add(1));
        }
    }
    fn info() -> ToolInfo {
        info("preinit_spin")
    }
    fn invoke(_input: String) -> Result<String, ToolError> {
        Ok("{\"ok\":true}".into())
    }
}

sandgraph_hostile_guests::preinit_bindings::export_tool_preinit!(Case);

fn main() {}
