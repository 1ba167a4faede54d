//! `calc`: evaluates an arithmetic expression and returns its value.
//!
//! The smallest useful pure tool: no capabilities, precise errors with the character
//! position, so a model can fix its expression from the message alone.

mod eval;

use sandgraph_guest::{JsonSchema, ToolError, tool};
use serde::{Deserialize, Serialize};

pub use eval::{EvalError, evaluate};

/// An expression such as `2 * (3 + 4) ^ 2 - sqrt(16) / max(1, 2, 4)`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Input {
    /// Numbers, + - * / % ^, parentheses, unary minus, constants `pi` and `e`, and the
    /// functions sqrt, abs, floor, ceil, round, ln, log10, exp, sin, cos, tan, min, max.
    #[schemars(length(min = 1, max = 4096))]
    pub expr: String,
}

#[derive(Debug, Serialize, JsonSchema, PartialEq)]
pub struct Output {
    /// The value of the expression.
    pub value: f64,
}

#[tool(
    name = "calc",
    description = "Evaluates an arithmetic expression (+ - * / % ^, parentheses, sqrt, min, max, ...) and returns its value."
)]
fn invoke(input: Input) -> Result<Output, ToolError> {
    evaluate(&input.expr)
        .map(|value| Output { value })
        // A malformed or unevaluable expression is the caller's input at fault: retrying the
        // same input can never succeed, so it is not a tool failure.
        .map_err(|e| ToolError::invalid_input(format!("at `expr`: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use sandgraph_guest::runtime;

    #[test]
    fn full_request_path_returns_json() {
        let out = runtime::call::<SandgraphTool>(r#"{"expr":"1 + 2 * 3"}"#).unwrap();
        assert_eq!(out, r#"{"value":7.0}"#);
    }

    #[test]
    fn bad_expression_is_invalid_input_with_position() {
        let err = runtime::call::<SandgraphTool>(r#"{"expr":"1 + * 2"}"#).unwrap_err();
        assert_eq!(
            err,
            ToolError::invalid_input(
                "at `expr`: unexpected `*` at column 5; expected a number, `(`, `-` or a function"
            )
        );
    }

    #[test]
    fn empty_expression_is_invalid_input() {
        let err = runtime::call::<SandgraphTool>(r#"{"expr":""}"#).unwrap_err();
        assert_eq!(
            err,
            ToolError::invalid_input("at `expr`: expected at least 1 character, got 0")
        );
    }

    #[test]
    fn info_publishes_schemas() {
        let info = runtime::info::<SandgraphTool>();
        assert_eq!(info.name, "calc");
        assert_eq!(info.version, env!("CARGO_PKG_VERSION"));
        assert!(
            info.input_schema.contains(r#""expr""#),
            "{}",
            info.input_schema
        );
        assert!(
            info.output_schema.contains(r#""value""#),
            "{}",
            info.output_schema
        );
    }
}
