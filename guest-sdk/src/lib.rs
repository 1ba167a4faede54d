//! Guest SDK for Sandgraph tools and agents.
//!
//! A tool author writes one plain Rust function over serde types and marks it with
//! [`tool`]; this crate supplies everything between that function and the
//! `sandgraph:tool` WIT world: JSON Schemas, input validation, error mapping, the
//! component exports, and a small HTTP client over `wasi:http`. An agent is the same with
//! [`agent`] and the `sandgraph:agent` world, and may call [`model`] and [`tools`]
//! (agents/README.md has an example; [`host`] is the native test seam).
//!
//! Tools are built for `sandgraph:tool/tool-preinit`: `sandgraph:tool` plus a start-up hook,
//! `wizer-initialize`, which builds the input schema. The host runs the hook once when it
//! registers the component (every import traps there) and starts each call from a snapshot of
//! the result, so a call no longer rebuilds the schema; each call is still a fresh instance.
//!
//! ```ignore
//! // Cargo.toml: sandgraph-guest, serde (derive) and schemars (the derive macro needs
//! // the `schemars` crate by name); crate-type = ["cdylib", "rlib"].
//! use sandgraph_guest::{tool, ToolError};
//! use schemars::JsonSchema;
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Deserialize, JsonSchema)]
//! struct Input { expr: String }
//! #[derive(Serialize, JsonSchema)]
//! struct Output { value: f64 }
//!
//! #[tool(name = "calc", version = "0.1.0", description = "Evaluates arithmetic.")]
//! fn invoke(input: Input) -> Result<Output, ToolError> {
//!     Ok(Output { value: input.expr.len() as f64 })
//! }
//! ```

extern crate self as sandgraph_guest;

pub mod agent;
mod agent_wit;
pub mod error;
pub mod host;
pub mod http;
pub mod model;
pub mod response_schema;
pub mod runtime;
pub mod schema;
pub mod tools;

pub use agent::{Agent, AgentInfo};
pub use error::{AgentError, ToolError};
pub use runtime::{Tool, ToolInfo};
pub use sandgraph_guest_macros::{agent, tool};
pub use schemars::JsonSchema;

/// Bindings for the `sandgraph:tool` world, generated once here so tool authors never
/// run wit-bindgen themselves. Tools reach them only through [`export_tool!`].
#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "wit/tool.wit",
        world: "tool-preinit",
        pub_export_macro: true,
        export_macro_name: "__export_tool_world",
        default_bindings_module: "sandgraph_guest::bindings",
        runtime_path: "sandgraph_guest::__private::wit_bindgen::rt",
    });
}

/// Bindings for the `sandgraph:agent` world. Agents reach them only through
/// [`export_agent!`], [`model`] and [`tools`].
#[doc(hidden)]
pub mod agent_bindings {
    wit_bindgen::generate!({
        path: "wit/agent.wit",
        world: "agent",
        pub_export_macro: true,
        export_macro_name: "__export_agent_world",
        default_bindings_module: "sandgraph_guest::agent_bindings",
        runtime_path: "sandgraph_guest::__private::wit_bindgen::rt",
    });
}

/// Re-exports used by macro expansions in tool crates; not a stable API.
#[doc(hidden)]
pub mod __private {
    pub use wit_bindgen;

    use crate::bindings::sandgraph::tool::types as wit;

    /// `info` export body: the tool's description converted to the WIT record.
    pub fn wit_info<T: crate::Tool>() -> wit::ToolInfo {
        let info = crate::runtime::info::<T>();
        wit::ToolInfo {
            name: info.name,
            version: info.version,
            description: info.description,
            input_schema: info.input_schema,
            output_schema: info.output_schema,
        }
    }

    pub use crate::agent_wit::{wit_info as wit_agent_info, wit_step};

    /// `wizer-initialize` export body: what every call would otherwise redo, done once for the
    /// host's snapshot.
    pub fn preinit<T: crate::Tool>() {
        crate::runtime::preinit::<T>();
    }

    /// `invoke` export body: validate, run, serialize, and map errors to the WIT variant.
    pub fn wit_invoke<T: crate::Tool>(input: &str) -> Result<String, wit::ToolError> {
        crate::runtime::call::<T>(input).map_err(|e| match e {
            crate::ToolError::InvalidInput(m) => wit::ToolError::InvalidInput(m),
            crate::ToolError::Failed(m) => wit::ToolError::Failed(m),
            crate::ToolError::Denied(m) => wit::ToolError::Denied(m),
        })
    }
}

/// Exports a type implementing [`Tool`] as this component's `sandgraph:tool/tool` world.
/// Use it once per crate; the [`tool`] attribute calls it for you.
#[macro_export]
macro_rules! export_tool {
    ($ty:ty) => {
        // Exports exist in components only: native builds (tests) link several tools and
        // agents into one binary, where the export symbols would collide.
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            struct __SandgraphToolExport;
            impl $crate::bindings::Guest for __SandgraphToolExport {
                fn info() -> $crate::bindings::sandgraph::tool::types::ToolInfo {
                    $crate::__private::wit_info::<$ty>()
                }
                fn invoke(
                    input: ::std::string::String,
                ) -> ::std::result::Result<
                    ::std::string::String,
                    $crate::bindings::sandgraph::tool::types::ToolError,
                > {
                    $crate::__private::wit_invoke::<$ty>(&input)
                }
                fn wizer_initialize() {
                    $crate::__private::preinit::<$ty>()
                }
            }
            $crate::bindings::__export_tool_world!(
                __SandgraphToolExport with_types_in $crate::bindings
            );
        };
    };
}

/// Exports a type implementing [`Agent`] as this component's `sandgraph:agent/agent`
/// world. Use it once per crate; the [`agent`] attribute calls it for you.
#[macro_export]
macro_rules! export_agent {
    ($ty:ty) => {
        // Components only, as for `export_tool!`.
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            struct __SandgraphAgentExport;
            impl $crate::agent_bindings::Guest for __SandgraphAgentExport {
                fn info() -> $crate::agent_bindings::sandgraph::agent::types::AgentInfo {
                    $crate::__private::wit_agent_info::<$ty>()
                }
                fn step(
                    input: ::std::string::String,
                ) -> ::std::result::Result<
                    ::std::string::String,
                    $crate::agent_bindings::sandgraph::agent::types::AgentError,
                > {
                    $crate::__private::wit_step::<$ty>(&input)
                }
            }
            $crate::agent_bindings::__export_agent_world!(
                __SandgraphAgentExport with_types_in $crate::agent_bindings
            );
        };
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bindings::sandgraph::tool::types as wit;

    #[derive(serde::Deserialize, JsonSchema)]
    struct Input {
        n: i32,
    }

    #[derive(serde::Serialize, JsonSchema)]
    struct Output {
        double: i32,
    }

    struct Doubler;

    impl Tool for Doubler {
        const NAME: &'static str = "doubler";
        const VERSION: &'static str = "1.2.3";
        const DESCRIPTION: &'static str = "Doubles n.";
        type Input = Input;
        type Output = Output;
        fn invoke(input: Input) -> Result<Output, ToolError> {
            match input.n {
                0 => Err(ToolError::failed("zero")),
                -1 => Err(ToolError::denied("env: HOME: not granted")),
                n => Ok(Output { double: n * 2 }),
            }
        }
    }

    #[test]
    fn wit_glue_converts_info_output_and_each_error_kind() {
        let info = __private::wit_info::<Doubler>();
        assert_eq!(
            (info.name.as_str(), info.version.as_str()),
            ("doubler", "1.2.3")
        );
        assert_eq!(info.description, "Doubles n.");
        let input: serde_json::Value = serde_json::from_str(&info.input_schema).unwrap();
        assert_eq!(input["properties"]["n"]["type"], "integer");
        let output: serde_json::Value = serde_json::from_str(&info.output_schema).unwrap();
        assert_eq!(output["required"], serde_json::json!(["double"]));

        assert_eq!(
            __private::wit_invoke::<Doubler>(r#"{"n":4}"#).unwrap(),
            r#"{"double":8}"#
        );
        assert!(matches!(
            __private::wit_invoke::<Doubler>(r#"{"n":"4"}"#),
            Err(wit::ToolError::InvalidInput(m)) if m == "at `n`: expected integer, got string \"4\""
        ));
        assert!(matches!(
            __private::wit_invoke::<Doubler>(r#"{"n":0}"#),
            Err(wit::ToolError::Failed(m)) if m == "zero"
        ));
        assert!(matches!(
            __private::wit_invoke::<Doubler>(r#"{"n":-1}"#),
            Err(wit::ToolError::Denied(m)) if m == "env: HOME: not granted"
        ));
    }
}
