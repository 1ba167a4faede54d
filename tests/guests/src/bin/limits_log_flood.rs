//! Floods stdout and stderr; the call still succeeds and the host keeps only a capped log.
use sandgraph_hostile_guests::*;

struct Case;

impl Guest for Case {
    fn info() -> ToolInfo {
        info("limits_log_flood")
    }
    fn invoke(_input: String) -> Result<String, ToolError> {
        let line = "flood ".repeat(1000);
        for _ in 0..1000 {
            println!("{line}");
            eprintln!("{line}");
        }
        Ok("{\"done\":true}".into())
    }
}

sandgraph_hostile_guests::bindings::export_tool!(Case);

fn main() {}
