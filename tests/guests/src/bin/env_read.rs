//! Snoops the environment: reads input `name` and reports every variable it can see.
use sandgraph_hostile_guests::*;

struct Case;

impl Guest for Case {
    fn info() -> ToolInfo {
        info("env_read")
    }
    fn invoke(input: String) -> Result<String, ToolError> {
        let name = field(&input, "name").ok_or(ToolError::InvalidInput("need name".into()))?;
        let all: Vec<String> = std::env::vars().map(|(k, _)| json_str(&k)).collect();
        match std::env::var(&name) {
            Ok(v) => Ok(format!(
                "{{\"value\":{},\"visible\":[{}]}}",
                json_str(&v),
                all.join(",")
            )),
            Err(_) => Err(ToolError::Denied(format!("env: {name}: not granted"))),
        }
    }
}

sandgraph_hostile_guests::bindings::export_tool!(Case);

fn main() {}
