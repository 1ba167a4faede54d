//! The errors a tool and an agent return, one variant per case of the WIT `tool-error`
//! and `agent-error`.
//!
//! Kept as a plain Rust enum (not the generated binding) so tool logic and its tests
//! stay independent of wit-bindgen and run natively.

use std::fmt;

/// Why a tool call did not produce output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToolError {
    /// The input did not parse or did not satisfy the input schema.
    InvalidInput(String),
    /// The tool ran and failed (a bad expression, an upstream error, ...).
    Failed(String),
    /// The sandbox refused something the tool needed (egress, a file, ...).
    Denied(String),
}

impl ToolError {
    /// The caller's input was wrong; say which field and why.
    pub fn invalid_input(message: impl Into<String>) -> Self {
        Self::InvalidInput(message.into())
    }

    /// The tool could not do its job for a reason that is not the caller's input shape.
    pub fn failed(message: impl Into<String>) -> Self {
        Self::Failed(message.into())
    }

    /// The sandbox denied a capability the tool needed. Write the message as
    /// `<capability>: <target>: <reason>` (capability: egress, filesystem, env, secret or
    /// sockets), e.g. `filesystem: /workspace/a.txt: the workspace is read-only`; the host
    /// turns that shape into its typed `denied{capability, target, missing_rule}` outcome.
    pub fn denied(message: impl Into<String>) -> Self {
        Self::Denied(message.into())
    }

    /// The message without the kind.
    pub fn message(&self) -> &str {
        match self {
            Self::InvalidInput(m) | Self::Failed(m) | Self::Denied(m) => m,
        }
    }
}

impl fmt::Display for ToolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::InvalidInput(m) => write!(f, "invalid input: {m}"),
            Self::Failed(m) => write!(f, "tool failed: {m}"),
            Self::Denied(m) => write!(f, "denied: {m}"),
        }
    }
}

impl std::error::Error for ToolError {}

/// Why an agent step did not produce output (the WIT `agent-error`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentError {
    /// The input did not parse or did not satisfy the input schema.
    InvalidInput(String),
    /// The agent ran and failed (the model never gave a usable answer, a tool it relies
    /// on failed, ...).
    Failed(String),
    /// The host refused a model or a tool the agent needed (not granted to its node).
    Denied(String),
    /// The run's `tokenBudget` or the node's `maxTokens` ran out before the step finished.
    BudgetExhausted(String),
}

impl AgentError {
    /// The caller's input was wrong; say which field and why.
    pub fn invalid_input(message: impl Into<String>) -> Self {
        Self::InvalidInput(message.into())
    }

    /// The agent could not do its job for a reason that is not its input's shape.
    pub fn failed(message: impl Into<String>) -> Self {
        Self::Failed(message.into())
    }

    /// The host refused something the agent needed.
    pub fn denied(message: impl Into<String>) -> Self {
        Self::Denied(message.into())
    }

    /// The message without the kind.
    pub fn message(&self) -> &str {
        match self {
            Self::InvalidInput(m)
            | Self::Failed(m)
            | Self::Denied(m)
            | Self::BudgetExhausted(m) => m,
        }
    }
}

impl fmt::Display for AgentError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::InvalidInput(m) => write!(f, "invalid input: {m}"),
            Self::Failed(m) => write!(f, "agent failed: {m}"),
            Self::Denied(m) => write!(f, "denied: {m}"),
            Self::BudgetExhausted(m) => write!(f, "token budget exhausted: {m}"),
        }
    }
}

impl std::error::Error for AgentError {}

/// A tool's input error inside an agent (schema validation shares the tool path).
impl From<ToolError> for AgentError {
    fn from(e: ToolError) -> Self {
        match e {
            ToolError::InvalidInput(m) => Self::InvalidInput(m),
            ToolError::Failed(m) => Self::Failed(m),
            ToolError::Denied(m) => Self::Denied(m),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_errors_keep_kind_and_message() {
        assert_eq!(
            AgentError::from(ToolError::invalid_input("at `goal`: missing")),
            AgentError::InvalidInput("at `goal`: missing".into())
        );
        assert_eq!(
            AgentError::BudgetExhausted("run budget 10".into()).to_string(),
            "token budget exhausted: run budget 10"
        );
        assert_eq!(AgentError::denied("model `big`").message(), "model `big`");
    }

    #[test]
    fn constructors_pick_the_variant_and_keep_the_message() {
        assert_eq!(
            ToolError::invalid_input("x"),
            ToolError::InvalidInput("x".into())
        );
        assert_eq!(ToolError::failed("y"), ToolError::Failed("y".into()));
        assert_eq!(ToolError::denied("z"), ToolError::Denied("z".into()));
        assert_eq!(ToolError::denied("z").message(), "z");
        assert_eq!(ToolError::failed("boom").to_string(), "tool failed: boom");
    }
}
