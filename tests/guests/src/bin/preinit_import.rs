//! A start-up hook that reads the clock: any import during pre-initialisation would bake a
//! host value (a time, random bytes, the environment) into every later call, so the host must
//! refuse the snapshot and run the component as it is. Its calls still work.
use sandgraph_hostile_guests::*;

struct Case;

impl sandgraph_hostile_guests::preinit_bindings::Guest for Case {
    fn wizer_initialize() {
        std::hint::black_box(std::time::SystemTime::now());
    }
    fn info() -> ToolInfo {
        info("preinit_import")
    }
    fn invoke(_input: String) -> Result<String, ToolError> {
        Ok("{\"ok\":true}".into())
    }
}

sandgraph_hostile_guests::preinit_bindings::export_tool_preinit!(Case);

fn main() {}
