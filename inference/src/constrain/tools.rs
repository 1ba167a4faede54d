//! OpenAI-style `tools` + `tool_choice` mapped onto constrained decoding, so a forced tool
//! call is valid JSON for the chosen tool's `parameters` by construction, and the server gets
//! one function for the constraint and one for reading the output back as `tool_calls`.
//!
//! Rule for `tool_choice`:
//! - `"none"`: no constraint; the output is text.
//! - `"required"`: the output is `{"name":<one of the tools>,"arguments":{...}}`.
//! - `{"type":"function","function":{"name":N}}`: the same, for tool N only.
//! - `"auto"` (the default when tools are given): no constraint; if the whole output (trimmed)
//!   is such a call object naming a known tool with valid arguments, it is a tool call,
//!   otherwise it is text. Put [`tools_prompt`] into the system prompt so the model knows how.

use std::sync::Arc;

use serde_json::Value;

use super::matcher::Matcher;
use super::schema::{Grammar, SchemaError};

/// One callable function.
#[derive(Clone, Debug, PartialEq)]
pub struct Tool {
    pub name: String,
    pub description: String,
    pub parameters: Value,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ToolChoice {
    None,
    Auto,
    Required,
    Named(String),
}

/// A parsed tool call; `arguments` is JSON text, as the OpenAI API carries it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ToolCall {
    pub name: String,
    pub arguments: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ToolError {
    #[error("'tools' must be an array of {{\"type\":\"function\",\"function\":{{...}}}} objects")]
    NotAnArray,
    #[error("tools[{index}]: {problem}")]
    BadTool { index: usize, problem: String },
    #[error("tools[{index}]: function name '{name}' appears twice; tool names must be unique")]
    DuplicateName { index: usize, name: String },
    #[error(
        "'tool_choice' must be \"none\", \"auto\", \"required\" or {{\"type\":\"function\",\"function\":{{\"name\":...}}}}, got {0}"
    )]
    BadChoice(String),
    #[error("'tool_choice' names function '{0}', which is not in 'tools'")]
    UnknownChoice(String),
    #[error("'tool_choice' is \"{0}\" but no tools were given")]
    NoTools(String),
    #[error("tool '{tool}': {source}")]
    Schema {
        tool: String,
        #[source]
        source: SchemaError,
    },
}

/// Reads the OpenAI `tools` array.
pub fn parse_tools(v: &Value) -> Result<Vec<Tool>, ToolError> {
    let list = v.as_array().ok_or(ToolError::NotAnArray)?;
    let mut out: Vec<Tool> = Vec::new();
    for (index, t) in list.iter().enumerate() {
        let bad = |problem: &str| ToolError::BadTool {
            index,
            problem: problem.into(),
        };
        match t.get("type").and_then(Value::as_str) {
            Some("function") => {}
            _ => return Err(bad("'type' must be \"function\"")),
        }
        let f = t
            .get("function")
            .filter(|f| f.is_object())
            .ok_or_else(|| bad("'function' object is missing"))?;
        let name = f
            .get("name")
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty())
            .ok_or_else(|| bad("'function.name' must be a non-empty string"))?;
        if out.iter().any(|o| o.name == name) {
            return Err(ToolError::DuplicateName {
                index,
                name: name.into(),
            });
        }
        let parameters = f
            .get("parameters")
            .cloned()
            .unwrap_or_else(|| serde_json::json!({"type": "object", "properties": {}}));
        // Compile now so a bad schema is reported against its tool.
        Grammar::compile(&parameters).map_err(|source| ToolError::Schema {
            tool: name.into(),
            source,
        })?;
        out.push(Tool {
            name: name.into(),
            description: f
                .get("description")
                .and_then(Value::as_str)
                .unwrap_or("")
                .into(),
            parameters,
        });
    }
    Ok(out)
}

/// Reads `tool_choice` (absent: `auto` when tools exist, else `none`).
pub fn parse_tool_choice(v: Option<&Value>, tools: &[Tool]) -> Result<ToolChoice, ToolError> {
    let choice = match v {
        None | Some(Value::Null) => {
            return Ok(if tools.is_empty() {
                ToolChoice::None
            } else {
                ToolChoice::Auto
            });
        }
        Some(Value::String(s)) => match s.as_str() {
            "none" => ToolChoice::None,
            "auto" => ToolChoice::Auto,
            "required" => ToolChoice::Required,
            _ => return Err(ToolError::BadChoice(format!("\"{s}\""))),
        },
        Some(o) => {
            let name = o
                .get("function")
                .and_then(|f| f.get("name"))
                .and_then(Value::as_str)
                .filter(|_| o.get("type").and_then(Value::as_str) == Some("function"))
                .ok_or_else(|| ToolError::BadChoice(o.to_string()))?;
            if !tools.iter().any(|t| t.name == name) {
                return Err(ToolError::UnknownChoice(name.into()));
            }
            ToolChoice::Named(name.into())
        }
    };
    if tools.is_empty() && matches!(choice, ToolChoice::Required | ToolChoice::Auto) {
        let s = if choice == ToolChoice::Auto {
            "auto"
        } else {
            "required"
        };
        return Err(ToolError::NoTools(s.into()));
    }
    Ok(choice)
}

/// The grammar generation must follow for this choice (`None`: generate freely).
pub fn tool_constraint(
    tools: &[Tool],
    choice: &ToolChoice,
) -> Result<Option<Arc<Grammar>>, ToolError> {
    let pick: Vec<(String, Value)> = match choice {
        ToolChoice::None | ToolChoice::Auto => return Ok(None),
        ToolChoice::Required => tools
            .iter()
            .map(|t| (t.name.clone(), t.parameters.clone()))
            .collect(),
        ToolChoice::Named(n) => tools
            .iter()
            .filter(|t| &t.name == n)
            .map(|t| (t.name.clone(), t.parameters.clone()))
            .collect(),
    };
    if pick.is_empty() {
        return Err(ToolError::NoTools(format!("{choice:?}")));
    }
    Grammar::tool_call(&pick)
        .map(|g| Some(Arc::new(g)))
        .map_err(|source| ToolError::Schema {
            tool: pick[0].0.clone(),
            source,
        })
}

/// Reads generated text back: `Some(call)` when it is a complete, valid call of one of
/// `tools` (checked with the same automaton), `None` when it is plain text.
pub fn parse_tool_call(text: &str, tools: &[Tool]) -> Option<ToolCall> {
    let text = text.trim();
    let v: Value = serde_json::from_str(text).ok()?;
    let name = v.get("name")?.as_str()?;
    let args = v.get("arguments")?;
    let tool = tools.iter().find(|t| t.name == name)?;
    let g = Grammar::compile(&tool.parameters).ok()?;
    let args_text = serde_json::to_string(args).ok()?;
    let mut m = Matcher::new(Arc::new(g));
    if !(m.advance_all(args_text.as_bytes()) && m.is_complete()) {
        return None;
    }
    Some(ToolCall {
        name: name.into(),
        arguments: args_text,
    })
}

/// A system-prompt paragraph telling the model which tools exist and how to call one.
pub fn tools_prompt(tools: &[Tool]) -> String {
    let mut s = String::from(
        "You can call these functions. To call one, reply with only a JSON object {\"name\": <function name>, \"arguments\": <arguments object>}.\n",
    );
    for t in tools {
        s.push_str(&format!(
            "- {}: {} Parameters: {}\n",
            t.name, t.description, t.parameters
        ));
    }
    s
}
