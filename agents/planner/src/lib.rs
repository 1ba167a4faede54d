//! `planner`: turns a goal into a short plan of calls to the tools its node grants.
//!
//! The model (SmolLM2-135M by default, so very weak) only fills in a form: the response
//! schema has one property per granted tool, each either `null` (not needed) or that
//! tool's input, so tool names and inputs are valid by construction and the model decides
//! about every tool in turn instead of having to remember which ones to list. On that
//! model this form kept all three tools of the demo task where a free list of steps
//! dropped `http-get`. A step may use an earlier step's output by writing `$<tool>.<field>`
//! (resolved by the executor); steps are ordered so that such a producer runs first.

use sandgraph_guest::{
    AgentError, JsonSchema, agent,
    model::{self, ChatRequest},
    response_schema,
    tools::{self, ToolDescriptor},
};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

/// Longest plan the planner returns.
pub const MAX_STEPS: usize = 3;
/// Longest string the model may write in a tool input.
pub const MAX_STRING: u64 = 200;
/// Tokens the planner asks for; the node's `maxTokens` may cap it lower.
pub const MAX_TOKENS: u32 = 256;

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Input {
    /// What the plan must achieve.
    #[schemars(length(min = 1, max = 2000))]
    pub goal: String,
    /// The reviewer's feedback on the previous plan's results (empty on the first round).
    #[serde(default)]
    #[schemars(length(max = 2000))]
    pub feedback: String,
    /// The previous round's results as the executor recorded them.
    #[serde(default)]
    pub previous_results: Vec<Value>,
}

#[derive(Debug, Serialize, JsonSchema, PartialEq)]
pub struct Output {
    pub goal: String,
    /// At most three tool calls, in the order to run them.
    pub steps: Vec<Step>,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, PartialEq)]
pub struct Step {
    /// A granted tool's name.
    pub tool: String,
    /// Its input document; a string `$<tool>.<field>` stands for an earlier step's output.
    pub input: Value,
}

/// A worked example shown to the model before the goal, used only when every tool it
/// calls is granted. The inputs are what the model should imitate.
struct Example {
    goal: &'static str,
    calls: &'static [(&'static str, &'static str)],
}

/// Most specific last: a small model imitates the last example most.
const EXAMPLES: &[Example] = &[
    Example {
        goal: "Count the words of the page at http://127.0.0.1:9000/b.txt",
        calls: &[
            ("http-get", r#"{"url":"http://127.0.0.1:9000/b.txt"}"#),
            ("text-stats", r#"{"text":"$http-get.body"}"#),
        ],
    },
    Example {
        goal: "Compute 6*7",
        calls: &[("calc", r#"{"expr":"6*7"}"#)],
    },
    Example {
        goal: "Compute 2+3 and count the words of the page at http://127.0.0.1:9000/a.txt",
        calls: &[
            ("calc", r#"{"expr":"2+3"}"#),
            ("http-get", r#"{"url":"http://127.0.0.1:9000/a.txt"}"#),
            ("text-stats", r#"{"text":"$http-get.body"}"#),
        ],
    },
];

#[agent(
    name = "planner",
    description = "Plans up to three calls of the granted tools that achieve a goal, taking the reviewer's feedback into account."
)]
fn step(input: Input) -> Result<Output, AgentError> {
    let granted = tools::list()?;
    if granted.is_empty() {
        return Err(AgentError::failed(
            "the planner's node grants no tools; list them under `tools:` on the node",
        ));
    }
    let schema = plan_schema(&granted);
    let request = request(&input, &granted);
    let form: Map<String, Value> = model::chat_json_schema(&request, &schema)?;
    Ok(Output {
        goal: input.goal,
        steps: steps_from_form(&granted, &form),
    })
}

/// The response schema: `{"<tool>": null | <its input>, ...}` over every granted tool.
pub fn plan_schema(granted: &[ToolDescriptor]) -> Value {
    let properties: Map<String, Value> = granted
        .iter()
        .map(|t| {
            (
                t.name.clone(),
                json!({"anyOf": [{"type": "null"}, input_form(&t.input_schema)]}),
            )
        })
        .collect();
    let names: Vec<&str> = granted.iter().map(|t| t.name.as_str()).collect();
    json!({
        "type": "object",
        "properties": properties,
        "required": names,
        "additionalProperties": false,
    })
}

/// A tool's input schema as the model fills it in: references inlined, only what the
/// decoder enforces, required properties only (optional ones keep their defaults, and a
/// small model does better with fewer choices), strings bounded. A schema that cannot
/// be inlined (a recursive type) becomes "any object"; the tool still validates it.
pub fn input_form(schema: &Value) -> Value {
    let Ok(inlined) = response_schema::inline_refs(schema) else {
        return json!({"type": "object"});
    };
    let mut form = response_schema::for_decoding(&inlined);
    if let Value::Object(map) = &mut form {
        map.remove("$schema");
        map.remove("title");
        let required: Vec<String> = map
            .get("required")
            .and_then(Value::as_array)
            .map(|r| {
                r.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        if let Some(Value::Object(props)) = map.get_mut("properties") {
            props.retain(|name, _| required.contains(name));
        }
    }
    response_schema::limit_strings(&form, MAX_STRING)
}

/// The chat: tools and rules, the examples the grant allows, then the goal.
pub fn request(input: &Input, granted: &[ToolDescriptor]) -> ChatRequest {
    let mut system = String::from("You choose tools for a goal. Tools:\n");
    for t in granted {
        system.push_str(&format!(
            "- {}: {}\n",
            t.name,
            first_sentence(&t.description)
        ));
    }
    system.push_str(
        "Give each tool its input, or null if the goal does not need it. \
         Write $tool.field to use a field of another tool's output.",
    );
    let names: Vec<&str> = granted.iter().map(|t| t.name.as_str()).collect();
    let mut request = ChatRequest::new()
        .system(system)
        .max_tokens(MAX_TOKENS)
        .temperature(0.0);
    for example in EXAMPLES
        .iter()
        .filter(|e| e.calls.iter().all(|(tool, _)| names.contains(tool)))
    {
        request = request
            .user(format!("Goal: {}", example.goal))
            .assistant(example_answer(&names, example));
    }
    request.user(goal_message(input))
}

fn example_answer(names: &[&str], example: &Example) -> String {
    let entries: Vec<String> = names
        .iter()
        .map(|name| {
            let input = example
                .calls
                .iter()
                .find(|(tool, _)| tool == name)
                .map_or("null", |(_, input)| input);
            format!("{}:{input}", Value::String((*name).to_owned()))
        })
        .collect();
    format!("{{{}}}", entries.join(","))
}

fn goal_message(input: &Input) -> String {
    let mut text = format!("Goal: {}", input.goal.trim());
    if !input.previous_results.is_empty() || !input.feedback.trim().is_empty() {
        text.push_str("\nThe last plan did not work.");
        if !input.feedback.trim().is_empty() {
            text.push_str(&format!(" Reviewer: {}", input.feedback.trim()));
        }
    }
    text
}

fn first_sentence(description: &str) -> &str {
    match description.find(". ") {
        Some(end) => &description[..=end],
        None => description,
    }
}

/// Steps from the filled-in form: the tools given an input, in grant order, then moved
/// so that a tool whose output another step references runs before it; at most
/// [`MAX_STEPS`].
pub fn steps_from_form(granted: &[ToolDescriptor], form: &Map<String, Value>) -> Vec<Step> {
    let mut steps: Vec<Step> = granted
        .iter()
        .filter_map(|t| match form.get(&t.name) {
            None | Some(Value::Null) => None,
            Some(input) => Some(Step {
                tool: t.name.clone(),
                input: input.clone(),
            }),
        })
        .collect();
    order_by_references(&mut steps);
    steps.truncate(MAX_STEPS);
    steps
}

/// Stable topological order over `$tool.` references; a cycle keeps the given order
/// (the executor then records the unresolved reference).
fn order_by_references(steps: &mut Vec<Step>) {
    let deps: Vec<Vec<String>> = steps.iter().map(|s| references(&s.input)).collect();
    let mut placed: Vec<Step> = Vec::with_capacity(steps.len());
    let mut pending: Vec<(Step, Vec<String>)> = steps.drain(..).zip(deps).collect();
    while !pending.is_empty() {
        let ready = pending.iter().position(|(_, needs)| {
            needs.iter().all(|n| {
                placed.iter().any(|p| &p.tool == n)
                    || !pending.iter().any(|(other, _)| &other.tool == n)
            })
        });
        let (step, _) = pending.remove(ready.unwrap_or(0));
        placed.push(step);
    }
    *steps = placed;
}

/// Tool names referenced as `$tool.field` (or `$tool`) anywhere in `input`.
fn references(input: &Value) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![input];
    while let Some(v) = stack.pop() {
        match v {
            Value::String(s) => {
                if let Some(rest) = s.strip_prefix('$') {
                    let tool = rest.split('.').next().unwrap_or(rest);
                    if !tool.is_empty() {
                        out.push(tool.to_owned());
                    }
                }
            }
            Value::Array(items) => stack.extend(items),
            Value::Object(map) => stack.extend(map.values()),
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests;
