//! `reviewer`: judges a round's results against the goal: `approve`, or `revise` with
//! feedback for the planner. Its output carries the answer.
//!
//! Facts come from the tools, never from the model's copy of them: the answer is written
//! from the successful results (`calc 17*23: value 391; text-stats: words 312, ...`),
//! because SmolLM2-135M rewrote `17*23 = 391` as `17+23 = 40` when asked to state it.
//! Failed or missing steps are judged without the model (revise, naming each failure);
//! when every step succeeded the model decides, under a schema whose two alternatives
//! begin with different keys (`{"verdict":"approve"}` or `{"feedback":..,"verdict":"revise"}`),
//! so its first token is the decision.

use sandgraph_guest::{
    AgentError, JsonSchema, agent,
    model::{self, ChatRequest},
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// Tokens the reviewer asks for; the node's `maxTokens` may cap it lower.
pub const MAX_TOKENS: u32 = 96;
/// Longest feedback the model may write.
pub const MAX_FEEDBACK: u64 = 200;
/// Strings longer than this are summarised by their length.
const SHORT: usize = 60;

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Input {
    #[schemars(length(min = 1, max = 2000))]
    pub goal: String,
    /// The executor's results, in plan order.
    pub results: Vec<StepResult>,
}

/// One executor result (the fields the reviewer reads).
#[derive(Debug, Clone, Deserialize, JsonSchema)]
pub struct StepResult {
    pub tool: String,
    #[serde(default)]
    pub input: Value,
    pub ok: bool,
    #[serde(default)]
    pub output: Option<Value>,
    #[serde(default)]
    pub error: Option<StepError>,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
pub struct StepError {
    pub kind: String,
    pub message: String,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Approve,
    Revise,
}

#[derive(Debug, Serialize, JsonSchema, PartialEq)]
pub struct Output {
    pub verdict: Verdict,
    /// What the planner should change (empty on approve).
    pub feedback: String,
    /// The results that answer the goal, one clause per successful step.
    pub answer: String,
}

/// What the model writes.
#[derive(Debug, Deserialize)]
struct Judgement {
    verdict: Verdict,
    #[serde(default)]
    feedback: String,
}

#[agent(
    name = "reviewer",
    description = "Judges tool results against a goal: approve with the answer, or revise with feedback for the planner."
)]
fn step(input: Input) -> Result<Output, AgentError> {
    let answer = answer(&input.results);
    if let Some(feedback) = failures(&input.results) {
        return Ok(Output {
            verdict: Verdict::Revise,
            feedback,
            answer,
        });
    }
    let judgement: Judgement = model::chat_json_schema(&request(&input), &judgement_schema())?;
    Ok(Output {
        feedback: match judgement.verdict {
            Verdict::Approve => String::new(),
            Verdict::Revise => judgement.feedback,
        },
        verdict: judgement.verdict,
        answer,
    })
}

/// Feedback naming what went wrong, or `None` when every step succeeded.
pub fn failures(results: &[StepResult]) -> Option<String> {
    if results.is_empty() {
        return Some("the plan called no tool; choose the tools the goal needs".into());
    }
    let failed: Vec<String> = results
        .iter()
        .enumerate()
        .filter(|(_, r)| !r.ok)
        .map(|(i, r)| {
            let (kind, message) = r
                .error
                .as_ref()
                .map_or(("failed", ""), |e| (e.kind.as_str(), e.message.as_str()));
            format!("step {} ({}) {kind}: {}", i + 1, r.tool, clip(message, 160))
        })
        .collect();
    (!failed.is_empty()).then(|| failed.join("; "))
}

/// One clause per successful step: the tool, its short input values, its short output
/// values (long text as its length; lists and objects left out).
pub fn answer(results: &[StepResult]) -> String {
    results
        .iter()
        .filter(|r| r.ok)
        .map(|r| {
            let mut clause = r.tool.clone();
            for v in short_strings(&r.input) {
                clause.push(' ');
                clause.push_str(&v);
            }
            let fields = r.output.as_ref().map(describe).unwrap_or_default();
            if !fields.is_empty() {
                clause.push_str(": ");
                clause.push_str(&fields);
            }
            clause
        })
        .collect::<Vec<_>>()
        .join("; ")
}

fn short_strings(input: &Value) -> Vec<String> {
    match input {
        Value::Object(map) => map
            .values()
            .filter_map(Value::as_str)
            .filter(|s| s.chars().count() <= SHORT)
            .map(str::to_owned)
            .collect(),
        _ => Vec::new(),
    }
}

fn describe(output: &Value) -> String {
    let Value::Object(map) = output else {
        return scalar(output).unwrap_or_default();
    };
    map.iter()
        .filter_map(|(k, v)| match v {
            Value::String(s) if s.chars().count() > SHORT => {
                Some(format!("{k} ({} characters)", s.chars().count()))
            }
            other => scalar(other).map(|s| format!("{k} {s}")),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::Number(n) => Some(match n.as_f64() {
            Some(f) if f.fract() == 0.0 && f.abs() < 1e15 => format!("{}", f as i64),
            _ => n.to_string(),
        }),
        Value::String(s) => Some(s.clone()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn clip(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_owned()
    } else {
        let mut out: String = s.chars().take(max).collect();
        out.push('…');
        out
    }
}

/// `{"verdict":"approve"}` or `{"feedback":"...","verdict":"revise"}`.
pub fn judgement_schema() -> Value {
    json!({"anyOf": [
        {
            "type": "object",
            "properties": {"verdict": {"const": "approve"}},
            "required": ["verdict"],
            "additionalProperties": false
        },
        {
            "type": "object",
            "properties": {
                "feedback": {"type": "string", "minLength": 1, "maxLength": MAX_FEEDBACK},
                "verdict": {"const": "revise"}
            },
            "required": ["feedback", "verdict"],
            "additionalProperties": false
        }
    ]})
}

/// Rules, a revise and an approve example (the small model follows the last one most),
/// then the goal with one line per result.
pub fn request(input: &Input) -> ChatRequest {
    ChatRequest::new()
        .system(
            "You check tool results against a goal. Approve when the results answer every \
             part of the goal. Otherwise revise: say what is missing.",
        )
        .user("Goal: Compute 6*7 and count the words of the page at http://127.0.0.1:9000/b.txt\nResults:\n1. calc 6*7: value 42")
        .assistant(r#"{"feedback":"Fetch the page with http-get and count its words with text-stats.","verdict":"revise"}"#)
        .user("Goal: Compute 2+3 and count the words of the page at http://127.0.0.1:9000/a.txt\nResults:\n1. calc 2+3: value 5\n2. http-get http://127.0.0.1:9000/a.txt: status 200, body (120 characters)\n3. text-stats: words 21, lines 3")
        .assistant(r#"{"verdict":"approve"}"#)
        .user(review_message(input))
        .max_tokens(MAX_TOKENS)
        .temperature(0.0)
}

fn review_message(input: &Input) -> String {
    let mut text = format!("Goal: {}\nResults:", input.goal.trim());
    for (i, r) in input.results.iter().enumerate() {
        text.push_str(&format!("\n{}. {}", i + 1, answer(std::slice::from_ref(r))));
    }
    text
}

#[cfg(test)]
mod tests;
