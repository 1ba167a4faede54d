//! The OpenAI request and response shapes for `/v1/completions` and `/v1/chat/completions`,
//! and the checks that turn a request into engine parameters or a specific 400.

use serde::Deserialize;
use serde_json::{Value, json};

use crate::constrain::tools::Tool;
use crate::generate::FinishReason;
use crate::sampling::{Penalties, Sampling};
use crate::server::errors::ApiError;

/// A string or a list of strings (`stop`, `prompt`).
#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

/// A completion prompt as OpenAI accepts it: text, a list of texts, token ids, or a list of
/// token-id lists (one prompt per request here).
#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
pub enum Prompt {
    Text(String),
    Texts(Vec<String>),
    Tokens(Vec<i64>),
    TokenLists(Vec<Vec<i64>>),
}

/// The one prompt of a completion request, as text or as token ids already checked against
/// the vocabulary.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PromptInput {
    Text(String),
    Tokens(Vec<u32>),
}

/// Message content: a string or a list of `{type:"text", text}` parts.
#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContentPart {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub text: Option<String>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Message {
    pub role: String,
    #[serde(default)]
    pub content: Option<Content>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub tool_calls: Option<Value>,
    #[serde(default)]
    pub tool_call_id: Option<String>,
}

/// Fields shared by both endpoints. Unknown fields are rejected, as OpenAI does.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChatRequest {
    #[serde(default)]
    pub model: Option<String>,
    pub messages: Vec<Message>,
    #[serde(default)]
    pub max_tokens: Option<i64>,
    #[serde(default)]
    pub max_completion_tokens: Option<i64>,
    #[serde(default)]
    pub temperature: Option<f64>,
    #[serde(default)]
    pub top_p: Option<f64>,
    #[serde(default)]
    pub seed: Option<i64>,
    #[serde(default)]
    pub stop: Option<OneOrMany>,
    #[serde(default)]
    pub n: Option<i64>,
    #[serde(default)]
    pub stream: Option<bool>,
    #[serde(default)]
    pub stream_options: Option<StreamOptions>,
    #[serde(default)]
    pub response_format: Option<Value>,
    #[serde(default)]
    pub tools: Option<Value>,
    #[serde(default)]
    pub tool_choice: Option<Value>,
    #[serde(default)]
    pub parallel_tool_calls: Option<bool>,
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub frequency_penalty: Option<f64>,
    #[serde(default)]
    pub presence_penalty: Option<f64>,
    /// vLLM's and llama.cpp's extension: divides (or, when negative, multiplies) the logit of
    /// every token seen in the prompt or output.
    #[serde(default)]
    pub repetition_penalty: Option<f64>,
    /// vLLM's and llama.cpp's extension: only the k most likely tokens are candidates.
    #[serde(default)]
    pub top_k: Option<i64>,
    #[serde(default)]
    pub logprobs: Option<bool>,
    /// 0 to 20 most likely alternatives per token; needs `logprobs: true`.
    #[serde(default)]
    pub top_logprobs: Option<i64>,
    /// Token id (as a string key) → bias in [-100, 100], added to that token's logit.
    #[serde(default)]
    pub logit_bias: Option<std::collections::BTreeMap<String, f64>>,
    /// Accepted and ignored (nothing is stored; there is no tier or prompt cache to pick;
    /// `user`/`safety_identifier` are not logged): SDK wrappers send these, OpenAI documents them.
    #[serde(default)]
    pub store: Option<bool>,
    #[serde(default)]
    pub metadata: Option<Value>,
    #[serde(default)]
    pub service_tier: Option<String>,
    #[serde(default)]
    pub prompt_cache_key: Option<String>,
    #[serde(default)]
    pub safety_identifier: Option<String>,
    /// The written order of the `response_format` schema's properties (see
    /// [`ChatRequest::read_property_order`]); empty: `Value`'s alphabetical order.
    #[serde(skip)]
    pub schema_order: crate::constrain::order::PropertyOrder,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompletionRequest {
    #[serde(default)]
    pub model: Option<String>,
    pub prompt: Prompt,
    #[serde(default)]
    pub max_tokens: Option<i64>,
    #[serde(default)]
    pub temperature: Option<f64>,
    #[serde(default)]
    pub top_p: Option<f64>,
    #[serde(default)]
    pub seed: Option<i64>,
    #[serde(default)]
    pub stop: Option<OneOrMany>,
    #[serde(default)]
    pub n: Option<i64>,
    #[serde(default)]
    pub stream: Option<bool>,
    #[serde(default)]
    pub stream_options: Option<StreamOptions>,
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub frequency_penalty: Option<f64>,
    #[serde(default)]
    pub presence_penalty: Option<f64>,
    /// vLLM's and llama.cpp's extension: divides (or, when negative, multiplies) the logit of
    /// every token seen in the prompt or output.
    #[serde(default)]
    pub repetition_penalty: Option<f64>,
    /// vLLM's and llama.cpp's extension: only the k most likely tokens are candidates.
    #[serde(default)]
    pub top_k: Option<i64>,
    #[serde(default)]
    pub logit_bias: Option<std::collections::BTreeMap<String, f64>>,
    /// The legacy completions' `logprobs`: report each token's log-probability and this many
    /// (0 to 20) most likely alternatives.
    #[serde(default)]
    pub logprobs: Option<i64>,
}

/// The most alternatives per token `top_logprobs` / `logprobs` may ask for (OpenAI's limit).
pub const MAX_TOP_LOGPROBS: i64 = 20;

fn check_top(k: i64, param: &str) -> Result<usize, ApiError> {
    if !(0..=MAX_TOP_LOGPROBS).contains(&k) {
        return Err(ApiError::invalid(
            format!("{param} = {k}: it must be between 0 and {MAX_TOP_LOGPROBS}"),
            Some(param),
            "invalid_value",
        ));
    }
    Ok(k as usize)
}

/// Parses a JSON body, mapping serde's failure to OpenAI's 400 (unknown field, wrong type, syntax).
pub fn parse_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        let msg = e.to_string();
        if let Some(rest) = msg.strip_prefix("unknown field `") {
            let name = rest.split('`').next().unwrap_or("");
            return ApiError::invalid(
                format!("Unrecognized request argument supplied: {name}"),
                Some(name),
                "unknown_parameter",
            );
        }
        match e.classify() {
            serde_json::error::Category::Syntax | serde_json::error::Category::Eof => {
                ApiError::invalid(
                    format!("the request body is not valid JSON ({msg}); send a JSON object"),
                    None,
                    "invalid_json",
                )
            }
            _ => ApiError::invalid(
                format!("the request body does not match the expected shape: {msg}"),
                None,
                "invalid_request_body",
            ),
        }
    })
}

/// Engine parameters common to both endpoints, after validation.
#[derive(Clone, Debug)]
pub struct Params {
    pub max_tokens: Option<usize>,
    /// Choices to generate (`n`); the server checks it against its `--max-n`.
    pub n: usize,
    /// Log-probabilities to report: `Some(k)` = each token's and its k most likely
    /// alternatives.
    pub logprobs: Option<usize>,
    pub sampling: Sampling,
    pub stop: Vec<String>,
    pub stream: bool,
    pub include_usage: bool,
}

/// The sampling fields beyond OpenAI's `temperature` and `top_p`: its two penalties, and
/// the `repetition_penalty` and `top_k` that vLLM and llama.cpp's server accept.
///
/// Request floats are read and checked as f64, the JSON number as sent, and only then narrowed
/// to the engine's f32: read as f32, `-1e-140` would round to `-0` and pass a check for "at
/// least 0" that the number itself fails.
#[derive(Clone, Copy, Debug, Default)]
pub struct SamplingExtras {
    pub frequency_penalty: Option<f64>,
    pub presence_penalty: Option<f64>,
    pub repetition_penalty: Option<f64>,
    pub top_k: Option<i64>,
}

impl SamplingExtras {
    fn penalties(&self) -> Result<Penalties, ApiError> {
        let mut p = Penalties::NONE;
        for (v, name, slot) in [
            (
                self.frequency_penalty,
                "frequency_penalty",
                &mut p.frequency,
            ),
            (self.presence_penalty, "presence_penalty", &mut p.presence),
        ] {
            if let Some(v) = v {
                if !(-2.0..=2.0).contains(&v) {
                    return Err(ApiError::invalid(
                        format!("{name} = {v}: it must be between -2 and 2"),
                        Some(name),
                        "invalid_value",
                    ));
                }
                *slot = v as f32;
            }
        }
        if let Some(r) = self.repetition_penalty {
            if !(r > 0.0 && r <= 10.0) {
                return Err(ApiError::invalid(
                    format!(
                        "repetition_penalty = {r}: it must be greater than 0 and at most 10 (1 = off, above 1 discourages repeats)"
                    ),
                    Some("repetition_penalty"),
                    "invalid_value",
                ));
            }
            // Within (0, 10] as sent; kept above 0 once narrowed (it divides logits).
            p.repetition = (r as f32).max(f32::MIN_POSITIVE);
        }
        Ok(p)
    }

    /// `top_k`: 0 or -1 (vLLM's spelling) consider the whole vocabulary.
    fn top_k(&self) -> Result<usize, ApiError> {
        match self.top_k {
            None | Some(-1) | Some(0) => Ok(0),
            Some(k) if k > 0 => Ok(k as usize),
            Some(k) => Err(ApiError::invalid(
                format!("top_k = {k}: it must be at least 1, or 0 or -1 for the whole vocabulary"),
                Some("top_k"),
                "invalid_value",
            )),
        }
    }
}

#[allow(clippy::too_many_arguments)]
pub fn check_params(
    max_tokens: Option<i64>,
    max_tokens_param: &str,
    temperature: Option<f64>,
    top_p: Option<f64>,
    seed: Option<i64>,
    stop: Option<OneOrMany>,
    n: Option<i64>,
    stream: Option<bool>,
    stream_options: Option<StreamOptions>,
    extras: SamplingExtras,
    max_context: usize,
) -> Result<Params, ApiError> {
    let n = match n {
        None => 1,
        Some(n) if n >= 1 => n as usize,
        Some(n) => {
            return Err(ApiError::invalid(
                format!("n = {n}: it must be at least 1"),
                Some("n"),
                "invalid_value",
            ));
        }
    };
    let max_tokens = match max_tokens {
        None => None,
        Some(m) if m < 1 => {
            return Err(ApiError::invalid(
                format!("{max_tokens_param} = {m}: it must be at least 1"),
                Some(max_tokens_param),
                "invalid_value",
            ));
        }
        Some(m) if m as u64 > max_context as u64 => {
            return Err(ApiError::invalid(
                format!(
                    "{max_tokens_param} = {m} exceeds this model's context of {max_context} tokens; ask for fewer"
                ),
                Some(max_tokens_param),
                "invalid_value",
            ));
        }
        Some(m) => Some(m as usize),
    };
    let temperature = temperature.unwrap_or(1.0);
    if !(0.0..=2.0).contains(&temperature) {
        return Err(ApiError::invalid(
            format!("temperature = {temperature}: it must be between 0 and 2"),
            Some("temperature"),
            "invalid_value",
        ));
    }
    let top_p = top_p.unwrap_or(1.0);
    if !(top_p > 0.0 && top_p <= 1.0) {
        return Err(ApiError::invalid(
            format!("top_p = {top_p}: it must be in (0, 1]"),
            Some("top_p"),
            "invalid_value",
        ));
    }
    let penalties = extras.penalties()?;
    let top_k = extras.top_k()?;
    let stop = match stop {
        None => vec![],
        Some(OneOrMany::One(s)) => vec![s],
        Some(OneOrMany::Many(v)) if v.len() > 4 => {
            return Err(ApiError::invalid(
                format!("stop has {} sequences; at most 4 are allowed", v.len()),
                Some("stop"),
                "invalid_value",
            ));
        }
        Some(OneOrMany::Many(v)) => v,
    };
    let seed = match seed {
        Some(s) => s as u64,
        None => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64),
    };
    Ok(Params {
        max_tokens,
        n,
        logprobs: None,
        sampling: Sampling {
            temperature: temperature as f32,
            top_k,
            // Within (0, 1] as sent; kept above 0 once narrowed.
            top_p: (top_p as f32).max(f32::MIN_POSITIVE),
            seed,
            logit_bias: Vec::new(),
            penalties,
        },
        stop,
        stream: stream.unwrap_or(false),
        include_usage: stream_options.is_some_and(|o| o.include_usage),
    })
}

impl ChatRequest {
    /// The engine parameters; `vocab_size` bounds `logit_bias`'s token ids.
    pub fn params(&mut self, max_context: usize, vocab_size: usize) -> Result<Params, ApiError> {
        let (mt, name) = match (self.max_completion_tokens, self.max_tokens) {
            (Some(m), _) => (Some(m), "max_completion_tokens"),
            (None, m) => (m, "max_tokens"),
        };
        let mut p = check_params(
            mt,
            name,
            self.temperature,
            self.top_p,
            self.seed,
            self.stop.take(),
            self.n,
            self.stream,
            self.stream_options.take(),
            SamplingExtras {
                frequency_penalty: self.frequency_penalty,
                presence_penalty: self.presence_penalty,
                repetition_penalty: self.repetition_penalty,
                top_k: self.top_k,
            },
            max_context,
        )?;
        p.sampling.logit_bias = check_logit_bias(self.logit_bias.as_ref(), vocab_size)?;
        p.logprobs = match (self.logprobs, self.top_logprobs) {
            (Some(true), k) => Some(check_top(k.unwrap_or(0), "top_logprobs")?),
            (_, Some(k)) => {
                // Out of range is refused whether or not logprobs is on (schemathesis found
                // -1 accepted without it).
                if check_top(k, "top_logprobs")? > 0 {
                    return Err(ApiError::invalid(
                        format!("top_logprobs = {k} needs logprobs: true"),
                        Some("top_logprobs"),
                        "invalid_value",
                    ));
                }
                None
            }
            _ => None,
        };
        Ok(p)
    }

    /// Reads the order in which the request text `body` lists the properties of the
    /// `response_format` schema and of each tool's parameters, so constrained output keeps it.
    pub fn read_property_order(&mut self, body: &[u8]) {
        use crate::constrain::order::{OrderedJson, PropertyOrder};
        let Some(b) = OrderedJson::parse(body) else {
            return;
        };
        if let Some(schema) = b
            .get("response_format")
            .and_then(|r| r.get("json_schema")?.get("schema"))
        {
            self.schema_order = PropertyOrder::of(schema);
        }
        let mut i = 0;
        while let Some(f) = b.get("tools").and_then(|t| t.index(i)?.get("function")) {
            i += 1;
            let name = self
                .tools
                .as_ref()
                .and_then(|t| t.get(i - 1)?.get("function")?.get("name")?.as_str());
            if let (Some(name), Some(params)) = (name, f.get("parameters")) {
                self.schema_order.extend(PropertyOrder::rooted(
                    params,
                    &format!("tool '{name}' parameters"),
                ));
            }
        }
    }

    /// The messages as (role, text) pairs, rejecting content this server cannot read.
    pub fn chat_messages(&self) -> Result<Vec<crate::tokenizer::ChatMessage>, ApiError> {
        if self.messages.is_empty() {
            return Err(ApiError::invalid(
                "messages is empty; send at least one message",
                Some("messages"),
                "invalid_value",
            ));
        }
        let mut out = Vec::with_capacity(self.messages.len());
        for (i, m) in self.messages.iter().enumerate() {
            if !matches!(
                m.role.as_str(),
                "system" | "developer" | "user" | "assistant" | "tool"
            ) {
                return Err(ApiError::invalid(
                    format!(
                        "messages[{i}].role = '{}': use system, developer, user, assistant or tool",
                        m.role
                    ),
                    Some(&format!("messages[{i}].role")),
                    "invalid_value",
                ));
            }
            let text = match &m.content {
                None => String::new(),
                Some(Content::Text(t)) => t.clone(),
                Some(Content::Parts(parts)) => {
                    let mut s = String::new();
                    for p in parts {
                        match (p.kind.as_str(), &p.text) {
                            ("text", Some(t)) => s.push_str(t),
                            (kind, _) => {
                                return Err(ApiError::invalid(
                                    format!(
                                        "messages[{i}] has a '{kind}' content part; this model reads text parts only"
                                    ),
                                    Some(&format!("messages[{i}].content")),
                                    "unsupported_content",
                                ));
                            }
                        }
                    }
                    s
                }
            };
            let role = if m.role == "developer" {
                "system"
            } else {
                &m.role
            };
            let text = match &m.tool_calls {
                Some(calls) if role == "assistant" => with_tool_calls(i, text, calls)?,
                Some(_) => {
                    return Err(ApiError::invalid(
                        format!(
                            "messages[{i}] is a '{}' message with tool_calls; only assistant messages carry tool calls",
                            m.role
                        ),
                        Some(&format!("messages[{i}].tool_calls")),
                        "invalid_value",
                    ));
                }
                None => text,
            };
            out.push(crate::tokenizer::ChatMessage::new(role, &text));
        }
        Ok(out)
    }
}

/// Reads OpenAI's `logit_bias` (token-id keys, biases in [-100, 100]).
fn check_logit_bias(
    bias: Option<&std::collections::BTreeMap<String, f64>>,
    vocab_size: usize,
) -> Result<Vec<(u32, f32)>, ApiError> {
    let Some(bias) = bias else {
        return Ok(Vec::new());
    };
    let mut out = Vec::with_capacity(bias.len());
    for (k, &b) in bias {
        let id = k
            .parse::<u32>()
            .ok()
            .filter(|&id| (id as usize) < vocab_size)
            .ok_or_else(|| {
                ApiError::invalid(
                    format!(
                        "logit_bias key '{k}' is not a token id of this model; its vocabulary has {vocab_size} tokens (ids 0 to {})",
                        vocab_size.saturating_sub(1)
                    ),
                    Some("logit_bias"),
                    "invalid_value",
                )
            })?;
        if !(-100.0..=100.0).contains(&b) {
            return Err(ApiError::invalid(
                format!("logit_bias['{k}'] = {b}: a bias must be between -100 and 100"),
                Some("logit_bias"),
                "invalid_value",
            ));
        }
        out.push((id, b as f32));
    }
    Ok(out)
}

/// The text an assistant turn's `tool_calls` take in the prompt: each call as the model
/// generates it under the tool grammar, `{"name":N,"arguments":{...}}`, one per line after the
/// turn's text. SmolLM2's chat template (plain ChatML) has no tool-call syntax of its own, so
/// this is what its template renders when handed the turn's content (as llama.cpp does for
/// templates without tool support); the model then sees the calls it made, in its own words.
fn with_tool_calls(i: usize, mut text: String, calls: &Value) -> Result<String, ApiError> {
    let at = |j: usize, what: &str| {
        ApiError::invalid(
            format!(
                "messages[{i}].tool_calls[{j}]: {what}; send {{\"id\":...,\"type\":\"function\",\"function\":{{\"name\":...,\"arguments\":\"<JSON text>\"}}}}"
            ),
            Some(&format!("messages[{i}].tool_calls[{j}]")),
            "invalid_value",
        )
    };
    let Some(list) = calls.as_array() else {
        return Err(ApiError::invalid(
            format!("messages[{i}].tool_calls must be an array of tool calls"),
            Some(&format!("messages[{i}].tool_calls")),
            "invalid_value",
        ));
    };
    for (j, c) in list.iter().enumerate() {
        if c.get("type").is_some_and(|t| t != "function") {
            return Err(at(j, "'type' must be \"function\""));
        }
        let f = c
            .get("function")
            .filter(|f| f.is_object())
            .ok_or_else(|| at(j, "'function' object is missing"))?;
        let name = f
            .get("name")
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty())
            .ok_or_else(|| at(j, "'function.name' must be a non-empty string"))?;
        let arguments = match f.get("arguments") {
            None | Some(Value::Null) => "{}".to_owned(),
            Some(Value::String(a)) => a.clone(),
            Some(_) => return Err(at(j, "'function.arguments' must be a string of JSON text")),
        };
        // Arguments that are JSON go in verbatim (as generated); anything else as a string.
        let arguments = if serde_json::from_str::<serde::de::IgnoredAny>(&arguments).is_ok() {
            arguments
        } else {
            Value::String(arguments).to_string()
        };
        if !text.is_empty() {
            text.push('\n');
        }
        text.push_str("{\"name\":");
        text.push_str(&Value::String(name.to_owned()).to_string());
        text.push_str(",\"arguments\":");
        text.push_str(arguments.trim());
        text.push('}');
    }
    Ok(text)
}

impl CompletionRequest {
    /// The engine parameters; `vocab_size` bounds `logit_bias`'s token ids.
    pub fn params(&mut self, max_context: usize, vocab_size: usize) -> Result<Params, ApiError> {
        let mut p = check_params(
            self.max_tokens,
            "max_tokens",
            self.temperature,
            self.top_p,
            self.seed,
            self.stop.take(),
            self.n,
            self.stream,
            self.stream_options.take(),
            SamplingExtras {
                frequency_penalty: self.frequency_penalty,
                presence_penalty: self.presence_penalty,
                repetition_penalty: self.repetition_penalty,
                top_k: self.top_k,
            },
            max_context,
        )?;
        p.sampling.logit_bias = check_logit_bias(self.logit_bias.as_ref(), vocab_size)?;
        p.logprobs = self
            .logprobs
            .map(|k| check_top(k, "logprobs"))
            .transpose()?;
        // OpenAI's legacy completions default to 16 tokens.
        p.max_tokens.get_or_insert(16);
        Ok(p)
    }

    /// The prompt, refusing several prompts per request and token ids outside the vocabulary
    /// (`vocab_size` tokens: ids 0..vocab_size-1).
    pub fn prompt_input(&self, vocab_size: usize) -> Result<PromptInput, ApiError> {
        let several = |n: usize| {
            ApiError::invalid(
                format!("prompt holds {n} prompts; send one prompt per request"),
                Some("prompt"),
                "unsupported_value",
            )
        };
        // The ids and how to name one of them in an error (`prompt[i]` or `prompt[0][i]`).
        let (ids, at) = match &self.prompt {
            Prompt::Text(s) => return Ok(PromptInput::Text(s.clone())),
            Prompt::Texts(v) if v.len() == 1 => return Ok(PromptInput::Text(v[0].clone())),
            Prompt::Texts(v) if v.is_empty() => return Ok(PromptInput::Text(String::new())),
            Prompt::Texts(v) => return Err(several(v.len())),
            Prompt::Tokens(ids) => (ids, "prompt"),
            Prompt::TokenLists(v) if v.len() == 1 => (&v[0], "prompt[0]"),
            Prompt::TokenLists(v) => return Err(several(v.len())),
        };
        let mut out = Vec::with_capacity(ids.len());
        for (i, &id) in ids.iter().enumerate() {
            if id < 0 || id as u64 >= vocab_size as u64 {
                return Err(ApiError::invalid(
                    format!(
                        "{at}[{i}] = {id} is not a token id of this model; its vocabulary has {vocab_size} tokens (ids 0 to {})",
                        vocab_size.saturating_sub(1)
                    ),
                    Some("prompt"),
                    "invalid_token_id",
                ));
            }
            out.push(id as u32);
        }
        Ok(PromptInput::Tokens(out))
    }
}

pub fn finish_reason(f: FinishReason) -> &'static str {
    match f {
        FinishReason::EndOfSequence | FinishReason::StopSequence | FinishReason::Cancelled => {
            "stop"
        }
        FinishReason::MaxTokens | FinishReason::ContextFull => "length",
    }
}

pub fn usage(prompt: usize, completion: usize) -> Value {
    json!({
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    })
}

/// What a chat request's `response_format`, `tools` and `tool_choice` ask the decoder for.
#[derive(Debug)]
pub enum Structured {
    /// Free text.
    Text,
    /// A JSON document matching the grammar, returned as `message.content`.
    Json(crate::constrain::Grammar),
    /// A tool call `{"name": ..., "arguments": {...}}`, returned as `message.tool_calls`;
    /// `note` tells the model which functions exist. `auto`: the model may answer in text
    /// instead, and its first byte decides (`{` starts a call; see `Constraint::text_or`).
    Tool {
        grammar: std::sync::Arc<crate::constrain::Grammar>,
        note: String,
        auto: bool,
        /// Under `auto`, whether the alternative to a call is free text; without it (a JSON
        /// `response_format` was given) the grammar itself offers the format's document.
        free_text: bool,
    },
}

fn schema_error(e: crate::constrain::SchemaError, param: &str) -> ApiError {
    ApiError::invalid(format!("{param}: {e}"), Some(param), "invalid_schema")
}

impl ChatRequest {
    /// Reads the structured-output fields. `tool_choice` `none` leaves the output free;
    /// `required` or a named function force a call through the grammar; `auto` (the default
    /// when tools are given) lets the first generated byte choose between text and a call.
    pub fn structured(&self) -> Result<Structured, ApiError> {
        use crate::constrain::Grammar;
        let format = match &self.response_format {
            None | Some(Value::Null) => None,
            Some(rf) => match rf.get("type").and_then(Value::as_str) {
                Some("text") => None,
                Some("json_object") => Some(Grammar::json_object()),
                Some("json_schema") => {
                    let invalid = |param: &str, what: &str| {
                        ApiError::invalid(format!("{param} {what}"), Some(param), "invalid_value")
                    };
                    if let Some(js) = rf.get("json_schema") {
                        if !js.is_object() {
                            return Err(invalid(
                                "response_format.json_schema",
                                "must be an object holding the JSON Schema under schema",
                            ));
                        }
                        if js.get("name").is_some_and(|n| !n.is_string()) {
                            return Err(invalid(
                                "response_format.json_schema.name",
                                "must be a string",
                            ));
                        }
                        if js.get("strict").is_some_and(|b| !b.is_boolean()) {
                            return Err(invalid(
                                "response_format.json_schema.strict",
                                "must be true or false",
                            ));
                        }
                    }
                    let Some(schema) = rf.get("json_schema").and_then(|j| j.get("schema")) else {
                        return Err(ApiError::invalid(
                            "response_format.json_schema.schema is missing; put the JSON Schema there",
                            Some("response_format.json_schema.schema"),
                            "invalid_value",
                        ));
                    };
                    Some(
                        Grammar::compile_ordered(schema, &self.schema_order)
                            .map_err(|e| schema_error(e, "response_format.json_schema.schema"))?,
                    )
                }
                other => {
                    return Err(ApiError::invalid(
                        format!(
                            "response_format.type = {}: use text, json_object or json_schema",
                            other.map_or_else(|| "(missing)".to_owned(), |t| format!("'{t}'"))
                        ),
                        Some("response_format.type"),
                        "invalid_value",
                    ));
                }
            },
        };
        let unforced = |format: Option<Grammar>| match format {
            Some(g) => Structured::Json(g),
            None => Structured::Text,
        };
        use crate::constrain::tools::{
            ToolChoice, ToolError, parse_tool_choice, parse_tools, tool_constraint_ordered,
            tools_prompt,
        };
        let Some(tools_json) = &self.tools else {
            return match &self.tool_choice {
                None | Some(Value::Null) => Ok(unforced(format)),
                Some(Value::String(s)) if s == "none" => Ok(unforced(format)),
                Some(_) => Err(ApiError::invalid(
                    "tool_choice is set but tools is missing; send the functions in tools",
                    Some("tools"),
                    "invalid_value",
                )),
            };
        };
        let tool_error = |e: ToolError| match &e {
            ToolError::NotAnArray => {
                ApiError::invalid(e.to_string(), Some("tools"), "invalid_value")
            }
            ToolError::BadTool { index, .. } | ToolError::DuplicateName { index, .. } => {
                ApiError::invalid(
                    e.to_string(),
                    Some(&format!("tools[{index}]")),
                    "invalid_value",
                )
            }
            ToolError::BadChoice(_) | ToolError::UnknownChoice(_) | ToolError::NoTools(_) => {
                ApiError::invalid(e.to_string(), Some("tool_choice"), "invalid_value")
            }
            ToolError::Schema { .. } => {
                ApiError::invalid(e.to_string(), Some("tools"), "invalid_schema")
            }
        };
        let tools = parse_tools(tools_json).map_err(tool_error)?;
        let choice = parse_tool_choice(self.tool_choice.as_ref(), &tools).map_err(tool_error)?;
        let forced = match &choice {
            ToolChoice::None => return Ok(unforced(format)),
            ToolChoice::Auto => ToolChoice::Required,
            c => c.clone(),
        };
        let mut grammar = tool_constraint_ordered(&tools, &forced, &self.schema_order)
            .map_err(tool_error)?
            .ok_or_else(|| ApiError::internal("a forced tool choice produced no grammar"))?;
        // With a JSON format and `auto`, the answer is a call or a document of the format
        // (not free text); a forced call leaves the format nothing to apply to.
        let free_text = format.is_none();
        if let (Some(f), ToolChoice::Auto) = (&format, &choice) {
            grammar = std::sync::Arc::new(Grammar::either(&grammar, f));
        }
        let offered: Vec<Tool> = match &forced {
            ToolChoice::Named(n) => tools.iter().filter(|t| &t.name == n).cloned().collect(),
            _ => tools.clone(),
        };
        let mut note = tools_prompt(&offered);
        if choice == ToolChoice::Auto && free_text {
            note.push_str("If no function is needed, answer in plain text instead.");
        } else if choice == ToolChoice::Auto {
            note.push_str(
                "If no function is needed, answer with the JSON the response format asks for.",
            );
        } else {
            note.push_str("You must call one of them now.");
        }
        Ok(Structured::Tool {
            grammar,
            note,
            auto: choice == ToolChoice::Auto,
            free_text,
        })
    }
}

/// Where the arguments of a generated tool call `{"name":"N","arguments":{...}}` start: the
/// function name and the byte offset of the arguments' first byte, once the text has got that
/// far. The grammar emits exactly this compact shape, name first, so streaming can send the
/// name as soon as it is known and the arguments as they grow.
pub fn tool_call_head(text: &str) -> Option<(String, usize)> {
    const OPEN: &str = "{\"name\":";
    const ARGS: &str = ",\"arguments\":";
    let rest = text.strip_prefix(OPEN)?;
    let b = rest.as_bytes();
    if b.first() != Some(&b'"') {
        return None;
    }
    let mut i = 1;
    while i < b.len() {
        match b[i] {
            b'\\' => i += 2,
            b'"' => break,
            _ => i += 1,
        }
    }
    if i >= b.len() {
        return None;
    }
    let name: String = serde_json::from_str(&rest[..=i]).ok()?;
    let after = &rest[i + 1..];
    after
        .starts_with(ARGS)
        .then(|| (name, OPEN.len() + i + 1 + ARGS.len()))
}

/// A complete generated tool call split into (name, arguments JSON text as generated).
pub fn tool_call_parts(text: &str) -> Option<(String, String)> {
    serde_json::from_str::<Value>(text).ok()?;
    let (name, start) = tool_call_head(text)?;
    let args = text[start..].strip_suffix('}')?;
    Some((name, args.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_field_names_the_field() {
        let e = parse_body::<ChatRequest>(br#"{"messages":[],"frobnicate":1}"#).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("frobnicate"));
        assert_eq!(e.code, Some("unknown_parameter"));
    }

    #[test]
    fn a_tool_choice_without_tools_is_refused_and_a_json_format_joins_tools() {
        let parse = |b: &str| -> ChatRequest { parse_body(b.as_bytes()).unwrap() };
        let msgs = r#""messages":[{"role":"user","content":"hi"}]"#;
        // Found by schemathesis: a JSON response_format used to decide before tool_choice
        // was looked at, so a malformed choice without tools was accepted.
        let e = parse(&format!(
            r#"{{{msgs},"response_format":{{"type":"json_object"}},"tool_choice":{{"type":"function","function":{{"name":3}}}}}}"#
        ))
        .structured()
        .unwrap_err();
        assert_eq!(e.param.as_deref(), Some("tools"));
        // A JSON format with tools: under auto, a call or a document of the format.
        let both = parse(&format!(
            r#"{{{msgs},"response_format":{{"type":"json_object"}},"tools":[{{"type":"function","function":{{"name":"f"}}}}]}}"#
        ))
        .structured()
        .unwrap();
        assert!(matches!(
            both,
            Structured::Tool {
                auto: true,
                free_text: false,
                ..
            }
        ));
        assert!(
            parse(&format!(r#"{{{msgs},"tool_choice":"none"}}"#))
                .structured()
                .is_ok()
        );
    }

    #[test]
    fn a_json_schema_format_with_a_mistyped_name_or_strict_is_refused() {
        let parse = |b: &str| -> ChatRequest { parse_body(b.as_bytes()).unwrap() };
        let msgs = r#""messages":[{"role":"user","content":"hi"}]"#;
        let format = |json_schema: &str| {
            parse(&format!(
                r#"{{{msgs},"response_format":{{"type":"json_schema","json_schema":{json_schema}}}}}"#
            ))
            .structured()
        };
        // Found by schemathesis: a name given as an object was accepted (200).
        for (json_schema, param) in [
            (
                r#"{"name":{},"schema":{}}"#,
                "response_format.json_schema.name",
            ),
            (
                r#"{"name":"n","strict":"yes","schema":{}}"#,
                "response_format.json_schema.strict",
            ),
            (r#"[{"schema":{}}]"#, "response_format.json_schema"),
        ] {
            let e = format(json_schema).unwrap_err();
            assert_eq!(e.param.as_deref(), Some(param), "{json_schema}");
            assert_eq!(e.code, Some("invalid_value"));
        }
        assert!(format(r#"{"name":"n","strict":true,"schema":{"type":"object"}}"#).is_ok());
        assert!(format(r#"{"schema":{"type":"object"}}"#).is_ok());
    }

    #[test]
    fn n_below_one_and_top_logprobs_without_logprobs_are_refused() {
        let parse = |b: &str| -> ChatRequest { parse_body(b.as_bytes()).unwrap() };
        let msgs = r#""messages":[{"role":"user","content":"hi"}]"#;
        let e = parse(&format!("{{{msgs},\"n\":0}}"))
            .params(64, 100)
            .unwrap_err();
        assert_eq!(e.param.as_deref(), Some("n"));
        assert_eq!(
            parse(&format!("{{{msgs},\"n\":3}}"))
                .params(64, 100)
                .unwrap()
                .n,
            3
        );
        let e = parse(&format!("{{{msgs},\"top_logprobs\":2}}"))
            .params(64, 100)
            .unwrap_err();
        assert_eq!(e.param.as_deref(), Some("top_logprobs"));
        let e = parse(&format!("{{{msgs},\"logprobs\":true,\"top_logprobs\":21}}"))
            .params(64, 100)
            .unwrap_err();
        assert_eq!(e.param.as_deref(), Some("top_logprobs"));
        let p = parse(&format!("{{{msgs},\"logprobs\":true,\"top_logprobs\":5}}"))
            .params(64, 100)
            .unwrap();
        assert_eq!(p.logprobs, Some(5));
        assert_eq!(
            parse(&format!("{{{msgs},\"logprobs\":false}}"))
                .params(64, 100)
                .unwrap()
                .logprobs,
            None
        );
        let e = parse(&format!("{{{msgs},\"top_logprobs\":-1}}"))
            .params(64, 100)
            .unwrap_err();
        assert_eq!(e.param.as_deref(), Some("top_logprobs"));
    }

    #[test]
    fn floats_are_checked_as_sent_not_as_rounded_to_f32() {
        // Found by schemathesis: -7.8e-140 rounds to -0 as an f32 and passed "at least 0".
        let parse = |b: &str| -> CompletionRequest { parse_body(b.as_bytes()).unwrap() };
        for (field, value) in [
            ("temperature", "-7.83953593169913e-140"),
            ("temperature", "2.0000000001"),
            ("top_p", "1.0000000001"),
            ("frequency_penalty", "-2.0000000001"),
            ("presence_penalty", "2.0000000001"),
            ("repetition_penalty", "10.0000000001"),
        ] {
            let e = parse(&format!(r#"{{"prompt":"x","{field}":{value}}}"#))
                .params(64, 100)
                .unwrap_err();
            assert_eq!(e.param.as_deref(), Some(field), "{field} = {value}");
        }
        // Values within bounds that vanish as f32 stay usable: above 0 where 0 is refused.
        let p =
            parse(r#"{"prompt":"x","top_p":1e-60,"repetition_penalty":1e-60,"temperature":1e-60}"#)
                .params(64, 100)
                .unwrap();
        assert!(p.sampling.top_p > 0.0 && p.sampling.penalties.repetition > 0.0);
        assert_eq!(p.sampling.temperature, 0.0);
    }

    #[test]
    fn content_parts_are_joined() {
        let r: ChatRequest = parse_body(
            br#"{"messages":[{"role":"user","content":[{"type":"text","text":"a"},{"type":"text","text":"b"}]}]}"#,
        )
        .unwrap();
        assert_eq!(r.chat_messages().unwrap()[0].content, "ab");
    }
}
