//! Nested tool calls for agents: the `sandgraph:agent/tools` import as plain Rust.
//!
//! [`list`] returns only the tools the agent's graph node grants; [`call`] runs one of
//! them in its own fresh sandbox (typed input and output), [`call_json`] with raw JSON.

use std::fmt;

use serde::{Serialize, de::DeserializeOwned};
use serde_json::Value;

use crate::{AgentError, host};

/// A granted tool, as its component describes itself.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolDescriptor {
    pub name: String,
    pub description: String,
    /// JSON Schema of the input document.
    pub input_schema: Value,
    /// JSON Schema of the output document.
    pub output_schema: Value,
}

/// Why a nested tool call produced no output (the WIT `tool-error`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToolCallError {
    /// The tool refused its input.
    InvalidInput(String),
    /// The tool ran and failed.
    Failed(String),
    /// The node does not grant the tool, or the sandbox refused the tool a capability.
    Denied(String),
    /// The tool ran out of time.
    Timeout(String),
    /// The tool exceeded a limit (memory, output size or depth, handles, ...).
    LimitExceeded(String),
    /// The tool crashed or exited, or its component is unusable.
    Crashed(String),
}

impl ToolCallError {
    /// The kind in snake case (`invalid_input`, `failed`, `denied`, `timeout`,
    /// `limit_exceeded`, `crashed`), for recording results.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::InvalidInput(_) => "invalid_input",
            Self::Failed(_) => "failed",
            Self::Denied(_) => "denied",
            Self::Timeout(_) => "timeout",
            Self::LimitExceeded(_) => "limit_exceeded",
            Self::Crashed(_) => "crashed",
        }
    }

    pub fn message(&self) -> &str {
        match self {
            Self::InvalidInput(m)
            | Self::Failed(m)
            | Self::Denied(m)
            | Self::Timeout(m)
            | Self::LimitExceeded(m)
            | Self::Crashed(m) => m,
        }
    }
}

impl fmt::Display for ToolCallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind(), self.message())
    }
}

impl std::error::Error for ToolCallError {}

/// A denial stays a denial; any other tool error fails the step.
impl From<ToolCallError> for AgentError {
    fn from(e: ToolCallError) -> Self {
        match e {
            ToolCallError::Denied(m) => AgentError::Denied(m),
            other => AgentError::Failed(format!("tool call failed: {other}")),
        }
    }
}

/// The tools this node grants, with their schemas.
pub fn list() -> Result<Vec<ToolDescriptor>, AgentError> {
    host::list_tools()
}

/// Calls granted tool `name` with a JSON document; returns its JSON output.
pub fn call_json(name: &str, input: &str) -> Result<String, ToolCallError> {
    host::call_tool(name, input)
}

/// Calls granted tool `name` with `input` serialized to JSON and parses its output as `O`.
pub fn call<I: Serialize + ?Sized, O: DeserializeOwned>(
    name: &str,
    input: &I,
) -> Result<O, ToolCallError> {
    let input = serde_json::to_string(input).map_err(|e| {
        ToolCallError::InvalidInput(format!(
            "the input for tool `{name}` cannot be written as JSON: {e}"
        ))
    })?;
    let output = call_json(name, &input)?;
    serde_json::from_str(&output).map_err(|e| {
        ToolCallError::Failed(format!(
            "tool `{name}` returned output that is not a valid {}: {e}",
            std::any::type_name::<O>()
        ))
    })
}
