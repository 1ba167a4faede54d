//! The OpenAI chat-completions wire format, both ways: a host [`ChatRequest`] as the JSON body
//! an OpenAI-compatible server takes, and that server's answer (a whole `chat.completion` or
//! its streamed `chat.completion.chunk`s) back as the parts of a [`ChatResponse`]. Both
//! providers use it: the embedded engine parses the same body its HTTP server would.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::{ChatRequest, FinishReason, Role, ToolCall, ToolChoice, Usage};

/// The request body for `POST /chat/completions`, naming `model` (the provider's model, not
/// the host alias).
pub fn request_body(req: &ChatRequest, model: &str, stream: bool) -> Value {
    let messages: Vec<Value> = req
        .messages
        .iter()
        .map(|m| {
            let role = match m.role {
                Role::System => "system",
                Role::User => "user",
                Role::Assistant => "assistant",
                Role::Tool => "tool",
            };
            let mut v = json!({"role": role, "content": m.content});
            if !m.tool_calls.is_empty() {
                v["tool_calls"] = m
                    .tool_calls
                    .iter()
                    .map(|c| {
                        json!({
                            "id": c.id, "type": "function",
                            "function": {"name": c.name, "arguments": c.arguments},
                        })
                    })
                    .collect();
            }
            if let Some(id) = &m.tool_call_id {
                v["tool_call_id"] = json!(id);
            }
            v
        })
        .collect();
    let mut body = json!({"model": model, "messages": messages, "stream": stream});
    if stream {
        body["stream_options"] = json!({"include_usage": true});
    }
    if let Some(n) = req.max_tokens {
        body["max_tokens"] = json!(n);
    }
    if let Some(t) = req.temperature {
        body["temperature"] = json!(t);
    }
    if let Some(p) = req.top_p {
        body["top_p"] = json!(p);
    }
    if let Some(s) = req.seed {
        body["seed"] = json!(s);
    }
    if !req.stop.is_empty() {
        body["stop"] = json!(req.stop);
    }
    if let Some(schema) = &req.response_format {
        body["response_format"] = json!({
            "type": "json_schema",
            "json_schema": {"name": "response", "strict": true, "schema": schema},
        });
    }
    if !req.tools.is_empty() {
        body["tools"] = req
            .tools
            .iter()
            .map(|t| {
                json!({"type": "function", "function": {
                    "name": t.name, "description": t.description, "parameters": t.parameters,
                }})
            })
            .collect();
    }
    if let Some(choice) = &req.tool_choice {
        body["tool_choice"] = match choice {
            ToolChoice::Auto => json!("auto"),
            ToolChoice::None => json!("none"),
            ToolChoice::Required => json!("required"),
            ToolChoice::Named(n) => json!({"type": "function", "function": {"name": n}}),
        };
    }
    body
}

/// OpenAI's `finish_reason` as ours (`content_filter` and unknown reasons read as a stop).
pub fn finish_reason(s: &str) -> FinishReason {
    match s {
        "length" => FinishReason::Length,
        "tool_calls" | "function_call" => FinishReason::ToolCalls,
        _ => FinishReason::Stop,
    }
}

/// What a completed answer holds, whether it came whole or in chunks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Answer {
    pub model: String,
    pub content: String,
    pub tool_calls: Vec<ToolCall>,
    pub finish_reason: Option<FinishReason>,
    pub usage: Usage,
}

fn usage_of(v: &Value) -> Usage {
    let n = |k: &str| v.get(k).and_then(Value::as_u64).unwrap_or(0) as u32;
    Usage {
        prompt_tokens: n("prompt_tokens"),
        completion_tokens: n("completion_tokens"),
    }
}

/// Reads a whole `chat.completion` object; `Err` says what is missing.
pub fn parse_completion(v: &Value) -> Result<Answer, String> {
    let choice = v
        .get("choices")
        .and_then(|c| c.get(0))
        .ok_or("the answer has no choices[0]")?;
    let message = choice
        .get("message")
        .ok_or("the answer has no choices[0].message")?;
    let mut tool_calls = Vec::new();
    if let Some(calls) = message.get("tool_calls").and_then(Value::as_array) {
        for (i, c) in calls.iter().enumerate() {
            let f = c
                .get("function")
                .ok_or_else(|| format!("tool_calls[{i}] has no function"))?;
            tool_calls.push(ToolCall {
                id: c.get("id").and_then(Value::as_str).unwrap_or("").to_owned(),
                name: f
                    .get("name")
                    .and_then(Value::as_str)
                    .ok_or_else(|| format!("tool_calls[{i}].function has no name"))?
                    .to_owned(),
                arguments: f
                    .get("arguments")
                    .and_then(Value::as_str)
                    .unwrap_or("{}")
                    .to_owned(),
            });
        }
    }
    Ok(Answer {
        model: v
            .get("model")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned(),
        content: message
            .get("content")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned(),
        tool_calls,
        finish_reason: choice
            .get("finish_reason")
            .and_then(Value::as_str)
            .map(finish_reason),
        usage: v.get("usage").map(usage_of).unwrap_or_default(),
    })
}

/// Builds an answer from streamed chunks: content deltas append, tool-call deltas gather by
/// their `index` (the first carries id and name, later ones more argument text).
#[derive(Debug, Default)]
pub struct ChunkAssembler {
    answer: Answer,
    calls: BTreeMap<u64, ToolCall>,
}

impl ChunkAssembler {
    /// Takes one chunk; returns the content text it added (for the token sink).
    pub fn push(&mut self, chunk: &Value) -> Result<String, String> {
        if let Some(e) = chunk.get("error") {
            let msg = e
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or("(no message)");
            return Err(format!("the server failed mid-stream: {msg}"));
        }
        if let Some(m) = chunk.get("model").and_then(Value::as_str)
            && self.answer.model.is_empty()
        {
            self.answer.model = m.to_owned();
        }
        if let Some(u) = chunk.get("usage").filter(|u| u.is_object()) {
            self.answer.usage = usage_of(u);
        }
        let Some(choice) = chunk.get("choices").and_then(|c| c.get(0)) else {
            return Ok(String::new());
        };
        if let Some(f) = choice.get("finish_reason").and_then(Value::as_str) {
            self.answer.finish_reason = Some(finish_reason(f));
        }
        let Some(delta) = choice.get("delta") else {
            return Ok(String::new());
        };
        let mut added = String::new();
        if let Some(t) = delta.get("content").and_then(Value::as_str) {
            self.answer.content.push_str(t);
            added.push_str(t);
        }
        if let Some(calls) = delta.get("tool_calls").and_then(Value::as_array) {
            for c in calls {
                let index = c.get("index").and_then(Value::as_u64).unwrap_or(0);
                let call = self.calls.entry(index).or_insert_with(|| ToolCall {
                    id: String::new(),
                    name: String::new(),
                    arguments: String::new(),
                });
                if let Some(id) = c.get("id").and_then(Value::as_str) {
                    call.id = id.to_owned();
                }
                if let Some(f) = c.get("function") {
                    if let Some(n) = f.get("name").and_then(Value::as_str) {
                        call.name.push_str(n);
                    }
                    if let Some(a) = f.get("arguments").and_then(Value::as_str) {
                        call.arguments.push_str(a);
                        added.push_str(a);
                    }
                }
            }
        }
        Ok(added)
    }

    /// The answer once the stream ended; `Err` when it ended before a finish reason.
    pub fn finish(mut self) -> Result<Answer, String> {
        if self.answer.finish_reason.is_none() {
            return Err("the stream ended before the answer finished".into());
        }
        self.answer.tool_calls = self.calls.into_values().collect();
        Ok(self.answer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Message, ToolSpec};

    fn request() -> ChatRequest {
        ChatRequest {
            model: "default".into(),
            messages: vec![
                Message {
                    role: Role::User,
                    content: "hi".into(),
                    tool_calls: vec![],
                    tool_call_id: None,
                },
                Message {
                    role: Role::Assistant,
                    content: String::new(),
                    tool_calls: vec![ToolCall {
                        id: "c1".into(),
                        name: "calc".into(),
                        arguments: "{\"expr\":\"1+1\"}".into(),
                    }],
                    tool_call_id: None,
                },
                Message {
                    role: Role::Tool,
                    content: "2".into(),
                    tool_calls: vec![],
                    tool_call_id: Some("c1".into()),
                },
            ],
            max_tokens: Some(8),
            temperature: Some(0.0),
            top_p: None,
            seed: Some(7),
            stop: vec!["\n".into()],
            response_format: Some(json!({"type": "object"})),
            tools: vec![ToolSpec {
                name: "calc".into(),
                description: "adds".into(),
                parameters: json!({"type": "object"}),
            }],
            tool_choice: Some(ToolChoice::Named("calc".into())),
        }
    }

    #[test]
    fn request_body_speaks_openai() {
        let b = request_body(&request(), "smollm2", true);
        assert_eq!(b["model"], "smollm2");
        assert_eq!(b["stream_options"]["include_usage"], true);
        assert_eq!(
            b["messages"][1]["tool_calls"][0]["function"]["name"],
            "calc"
        );
        assert_eq!(b["messages"][2]["tool_call_id"], "c1");
        assert_eq!(b["response_format"]["type"], "json_schema");
        assert_eq!(
            b["response_format"]["json_schema"]["schema"]["type"],
            "object"
        );
        assert_eq!(b["tools"][0]["function"]["name"], "calc");
        assert_eq!(b["tool_choice"]["function"]["name"], "calc");
        assert_eq!(b["stop"][0], "\n");
        assert_eq!(b["seed"], 7);
    }

    #[test]
    fn chunks_assemble_text_tool_calls_and_usage() {
        let mut a = ChunkAssembler::default();
        for c in [
            json!({"model": "m", "choices": [{"delta": {"role": "assistant", "content": ""}}]}),
            json!({"choices": [{"delta": {"tool_calls": [{"index": 0, "id": "call_1", "type": "function", "function": {"name": "calc", "arguments": ""}}]}}]}),
            json!({"choices": [{"delta": {"tool_calls": [{"index": 0, "function": {"arguments": "{\"a\":"}}]}}]}),
            json!({"choices": [{"delta": {"tool_calls": [{"index": 0, "function": {"arguments": "1}"}}]}}]}),
            json!({"choices": [{"delta": {}, "finish_reason": "tool_calls"}]}),
            json!({"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 3}}),
        ] {
            a.push(&c).unwrap();
        }
        let answer = a.finish().unwrap();
        assert_eq!(answer.model, "m");
        assert_eq!(answer.tool_calls[0].name, "calc");
        assert_eq!(answer.tool_calls[0].arguments, "{\"a\":1}");
        assert_eq!(answer.finish_reason, Some(FinishReason::ToolCalls));
        assert_eq!(answer.usage.completion_tokens, 3);
    }

    #[test]
    fn a_stream_without_finish_is_an_error() {
        let mut a = ChunkAssembler::default();
        a.push(&json!({"choices": [{"delta": {"content": "x"}}]}))
            .unwrap();
        assert!(a.finish().is_err());
        let mut a = ChunkAssembler::default();
        assert!(a.push(&json!({"error": {"message": "boom"}})).is_err());
    }
}
