//! Panics; the host must report a `trap`, not crash.
use sandgraph_hostile_guests::*;

struct Case;

impl Guest for Case {
    fn info() -> ToolInfo {
        info("limits_panic")
    }
    fn invoke(_input: String) -> Result<String, ToolError> {
        panic!("hostile guest panics on purpose")
    }
}

sandgraph_hostile_guests::bindings::export_tool!(Case);

fn main() {}
