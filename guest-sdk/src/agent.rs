//! What an agent is ([`Agent`]) and the two operations the host calls on it.
//!
//! The same shape as a tool ([`crate::Tool`]): metadata plus one function from a typed
//! input to a typed output; an agent may also call [`crate::model`] and [`crate::tools`].

use serde::{Serialize, de::DeserializeOwned};

use crate::{AgentError, schema};

/// An agent step. Usually implemented by the [`crate::agent`] attribute.
pub trait Agent {
    /// Short machine name, e.g. `planner`.
    const NAME: &'static str;
    /// Semantic version.
    const VERSION: &'static str;
    /// One or two sentences for humans.
    const DESCRIPTION: &'static str;
    /// The input document; its JSON Schema is published through `info`.
    type Input: DeserializeOwned + schemars::JsonSchema;
    /// The output document; its JSON Schema is published through `info`.
    type Output: Serialize + schemars::JsonSchema;
    /// Runs one step.
    fn step(input: Self::Input) -> Result<Self::Output, AgentError>;
}

/// What `info()` returns, before conversion to the WIT record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentInfo {
    pub name: String,
    pub version: String,
    pub description: String,
    /// JSON Schema (draft 2020-12) of the input.
    pub input_schema: String,
    /// JSON Schema (draft 2020-12) of the output.
    pub output_schema: String,
}

/// Describes agent `A`.
pub fn info<A: Agent>() -> AgentInfo {
    AgentInfo {
        name: A::NAME.to_owned(),
        version: A::VERSION.to_owned(),
        description: A::DESCRIPTION.to_owned(),
        input_schema: schema::schema_json::<A::Input>(),
        output_schema: schema::schema_json::<A::Output>(),
    }
}

/// Runs agent `A` on a JSON input: validates against the input schema, deserializes,
/// steps, and serializes the output. Native tests drive this with a scripted host
/// installed ([`crate::host::install`]).
pub fn step<A: Agent>(input: &str) -> Result<String, AgentError> {
    let input: A::Input = schema::parse_input(input)?;
    let output = A::step(input)?;
    serde_json::to_string(&output)
        .map_err(|e| AgentError::failed(format!("could not serialize the agent's output: {e}")))
}
