//! Ends its process with input `code` (`std::process::exit`) instead of returning a result;
//! with `print` set it writes to stdout first.
use sandgraph_hostile_guests::*;

struct Case;

impl Guest for Case {
    fn info() -> ToolInfo {
        info("exit_code")
    }
    fn invoke(input: String) -> Result<String, ToolError> {
        let code = num(&input, "code").unwrap_or(0) as i32;
        if let Some(text) = field(&input, "print") {
            println!("{text}");
        }
        std::process::exit(code)
    }
}

sandgraph_hostile_guests::bindings::export_tool!(Case);

fn main() {}
