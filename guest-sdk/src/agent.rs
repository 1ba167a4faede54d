//! What an agent is ([`Agent`]) and the two operations the host calls on it.
//!
//! The same shape as a tool ([`crate::Tool`]): metadata plus one function from a typed
//! input to a typed output; an agent may also call [`crate::model`] and [`crate::tools`].
//!
//! ```
//! use sandgraph_guest::{AgentError, JsonSchema, agent, model::{self, ChatRequest}, tools};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Deserialize, JsonSchema)]
//! pub struct Input { question: String }
//! #[derive(Serialize, JsonSchema)]
//! pub struct Output { answer: String }
//! #[derive(Deserialize, JsonSchema)]
//! struct Answer { answer: String }
//!
//! #[agent(name = "ask", version = "0.1.0", description = "Answers a question with the model.")]
//! fn step(input: Input) -> Result<Output, AgentError> {
//!     let granted = tools::list()?; // only what the node grants
//!     let request = ChatRequest::new()
//!         .system(format!("Answer briefly. {} tools exist.", granted.len()))
//!         .user(input.question)
//!         .max_tokens(64)
//!         .temperature(0.0);
//!     let a: Answer = model::chat_json(&request)?; // Answer's schema is the response format
//!     Ok(Output { answer: a.answer })
//! }
//!
//! // Natively, without a scripted host installed, the model call fails clearly:
//! let err = sandgraph_guest::agent::step::<SandgraphAgent>(r#"{"question":"?"}"#).unwrap_err();
//! assert!(err.message().starts_with("no agent host on this thread"), "{err}");
//! ```

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
