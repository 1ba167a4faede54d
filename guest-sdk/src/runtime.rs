//! What a tool is ([`Tool`]) and the two operations the host calls on it.
//!
//! `info` and `call` are plain functions over strings so the whole request path
//! (schema, validation, serialization, error mapping) is tested natively.

use serde::{Serialize, de::DeserializeOwned};

use crate::{ToolError, schema};

/// A tool: metadata plus one function from a typed input to a typed output.
/// Usually implemented by the [`crate::tool`] attribute rather than by hand.
pub trait Tool {
    /// Short machine name, e.g. `calc`.
    const NAME: &'static str;
    /// Semantic version.
    const VERSION: &'static str;
    /// One or two sentences for humans and for models choosing a tool.
    const DESCRIPTION: &'static str;
    /// The input document; its JSON Schema is published through `info`.
    type Input: DeserializeOwned + schemars::JsonSchema;
    /// The output document; its JSON Schema is published through `info`.
    type Output: Serialize + schemars::JsonSchema;
    /// Runs the tool once.
    fn invoke(input: Self::Input) -> Result<Self::Output, ToolError>;
}

/// What `info()` returns, before conversion to the WIT record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolInfo {
    pub name: String,
    pub version: String,
    pub description: String,
    /// JSON Schema (draft 2020-12) of the input.
    pub input_schema: String,
    /// JSON Schema (draft 2020-12) of the output.
    pub output_schema: String,
}

/// Describes tool `T`.
pub fn info<T: Tool>() -> ToolInfo {
    ToolInfo {
        name: T::NAME.to_owned(),
        version: T::VERSION.to_owned(),
        description: T::DESCRIPTION.to_owned(),
        input_schema: schema::schema_json::<T::Input>(),
        output_schema: schema::schema_json::<T::Output>(),
    }
}

/// Builds what every call of tool `T` needs and can share (its input schema), so that a snapshot
/// taken after this (the component's `wizer-initialize`) starts every call with it built. Pure:
/// no I/O, which the host refuses at that point anyway.
pub fn preinit<T: Tool>() {
    schema::cached_schema::<T::Input>();
}

/// Runs tool `T` on a JSON input: validates against the input schema, deserializes,
/// invokes, and serializes the output.
pub fn call<T: Tool>(input: &str) -> Result<String, ToolError> {
    let input: T::Input = schema::parse_input(input)?;
    let output = T::invoke(input)?;
    serde_json::to_string(&output)
        .map_err(|e| ToolError::failed(format!("could not serialize the tool's output: {e}")))
}
