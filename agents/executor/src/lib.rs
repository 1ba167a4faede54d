//! `executor`: runs a plan's tool calls in order and records what each one did.
//!
//! No model: the plan already says what to call. Every step ends up in `results`, whether
//! it ran, failed, was refused (`denied`) or could not be prepared, so the reviewer sees
//! the whole round and one bad step never hides the others. A string input value
//! `$<tool>.<field>[.<field>|.<index>...]` (or `$<tool>` alone) is replaced by that part
//! of the output of the latest earlier step that called `<tool>` successfully.

use sandgraph_guest::{AgentError, JsonSchema, agent, tools};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Input {
    /// What the plan is for; passed through to the reviewer.
    pub goal: String,
    /// The tool calls, in order (the planner writes at most three; eight are accepted).
    #[schemars(length(max = 8))]
    pub steps: Vec<Step>,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Step {
    pub tool: String,
    pub input: Value,
}

#[derive(Debug, Serialize, JsonSchema, PartialEq)]
pub struct Output {
    pub goal: String,
    /// One entry per plan step, in order.
    pub results: Vec<StepResult>,
}

#[derive(Debug, Clone, Serialize, JsonSchema, PartialEq)]
pub struct StepResult {
    pub tool: String,
    /// The input actually sent (references resolved), or the planned one if it could
    /// not be prepared.
    pub input: Value,
    pub ok: bool,
    /// The tool's output, when `ok`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output: Option<Value>,
    /// Why there is no output, when not `ok`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<StepError>,
}

#[derive(Debug, Clone, Serialize, JsonSchema, PartialEq)]
pub struct StepError {
    /// `invalid_input`, `failed`, `denied`, `timeout`, `limit_exceeded`, `crashed` (the
    /// tool call's outcome), `unresolved_reference` or `bad_output` (the tool answered
    /// with text that is not JSON).
    pub kind: String,
    pub message: String,
}

#[agent(
    name = "executor",
    description = "Runs a plan's tool calls in order and records each output, error or denial."
)]
fn step(input: Input) -> Result<Output, AgentError> {
    let results = run(&input.steps);
    Ok(Output {
        goal: input.goal,
        results,
    })
}

/// Runs every step; never stops early.
pub fn run(steps: &[Step]) -> Vec<StepResult> {
    let mut results: Vec<StepResult> = Vec::with_capacity(steps.len());
    for step in steps {
        let result = match resolve(&step.input, &results) {
            Err(message) => failure(step, step.input.clone(), "unresolved_reference", message),
            Ok(input) => call(step, input),
        };
        results.push(result);
    }
    results
}

fn call(step: &Step, input: Value) -> StepResult {
    match tools::call_json(&step.tool, &input.to_string()) {
        Ok(text) => match serde_json::from_str::<Value>(&text) {
            Ok(output) => StepResult {
                tool: step.tool.clone(),
                input,
                ok: true,
                output: Some(output),
                error: None,
            },
            Err(e) => failure(
                step,
                input,
                "bad_output",
                format!(
                    "tool `{}` answered with text that is not JSON: {e}",
                    step.tool
                ),
            ),
        },
        Err(e) => failure(step, input, e.kind(), e.message().to_owned()),
    }
}

fn failure(step: &Step, input: Value, kind: &str, message: String) -> StepResult {
    StepResult {
        tool: step.tool.clone(),
        input,
        ok: false,
        output: None,
        error: Some(StepError {
            kind: kind.to_owned(),
            message,
        }),
    }
}

/// `value` with every `$tool.path` string replaced from the earlier results.
pub fn resolve(value: &Value, earlier: &[StepResult]) -> Result<Value, String> {
    match value {
        Value::String(s) if s.starts_with('$') && s.len() > 1 => lookup(&s[1..], earlier),
        Value::Array(items) => items
            .iter()
            .map(|v| resolve(v, earlier))
            .collect::<Result<_, _>>()
            .map(Value::Array),
        Value::Object(map) => map
            .iter()
            .map(|(k, v)| Ok((k.clone(), resolve(v, earlier)?)))
            .collect::<Result<Map<_, _>, String>>()
            .map(Value::Object),
        other => Ok(other.clone()),
    }
}

fn lookup(reference: &str, earlier: &[StepResult]) -> Result<Value, String> {
    let mut parts = reference.split('.');
    let tool = parts.next().unwrap_or_default();
    let source = earlier
        .iter()
        .rev()
        .find(|r| r.tool == tool)
        .ok_or_else(|| {
            format!("`${reference}` refers to `{tool}`, but no earlier step called it")
        })?;
    let Some(output) = source.output.as_ref().filter(|_| source.ok) else {
        return Err(format!(
            "`${reference}` refers to `{tool}`, whose step failed, so it has no output"
        ));
    };
    let mut current = output;
    let mut walked = String::from(tool);
    for part in parts {
        let next = match current {
            Value::Object(map) => map.get(part),
            Value::Array(items) => part.parse::<usize>().ok().and_then(|i| items.get(i)),
            _ => None,
        };
        current = next.ok_or_else(|| {
            let fields = match current {
                Value::Object(map) => {
                    let keys: Vec<&str> = map.keys().map(String::as_str).collect();
                    format!("; it has: {}", keys.join(", "))
                }
                Value::Array(items) => format!("; it is a list of {}", items.len()),
                _ => String::new(),
            };
            format!("`${reference}`: the output of `{walked}` has no `{part}`{fields}")
        })?;
        walked.push('.');
        walked.push_str(part);
    }
    Ok(current.clone())
}

#[cfg(test)]
mod tests;
