//! The chat-completion core: one function turns an OpenAI chat request into an engine job
//! (validation, template rendering with the tools note, the decoding constraint from
//! `response_format` / `tools` / `tool_choice`), and one turns the job's events into the answer
//! (tool-call parsing, finish reason, usage). `POST /v1/chat/completions` and in-process callers
//! (the host's embedded model provider) both go through here, so they behave identically.

use std::sync::Arc;
use std::time::Instant;

use hyper::StatusCode;
use tokio::sync::mpsc;

use crate::constrain::Constraint;
use crate::server::Ready;
use crate::server::batcher::{Event, Job, SubmitError, TokenLogprob};
use crate::server::errors::ApiError;
use crate::server::openai::{ChatRequest, Params, Structured, finish_reason, tool_call_parts};
use crate::tokenizer::ChatMessage;

/// A chat request admitted to the engine's queue.
pub struct ChatJob {
    pub id: String,
    pub model: String,
    pub params: Params,
    /// `Some(auto)` when the request offered tools (the output may be a call; with `auto` it
    /// may also be plain text); `None` for text and `response_format` requests.
    pub tool_mode: Option<bool>,
    /// The engine's events for this request; dropping it cancels the request.
    pub events: mpsc::UnboundedReceiver<Event>,
    log_prompts: bool,
}

/// A tool call the model generated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GeneratedToolCall {
    pub id: String,
    pub name: String,
    /// The arguments' JSON text as generated.
    pub arguments: String,
}

/// The finished answer of one chat request.
#[derive(Clone, Debug, PartialEq)]
pub struct ChatAnswer {
    /// The text; `None` when the answer is a tool call.
    pub content: Option<String>,
    pub tool_call: Option<GeneratedToolCall>,
    /// OpenAI's `finish_reason`: `stop`, `length` or `tool_calls`.
    pub finish_reason: &'static str,
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    /// Each generated token's log-probability, when the request asked (`logprobs`).
    pub logprobs: Option<Vec<TokenLogprob>>,
}

/// What one job produced, collected from its events.
#[derive(Clone, Debug, PartialEq)]
pub struct Collected {
    pub text: String,
    /// OpenAI's `finish_reason`.
    pub finish: &'static str,
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    /// The generated tokens' log-probabilities (empty unless the job asked).
    pub logprobs: Vec<TokenLogprob>,
}

/// Validates `cr`, renders its prompt and queues it on `ready`'s engine as request `id`.
/// `arrived` is when the request reached its caller (latency metrics count from there).
pub fn start_chat(
    ready: &Ready,
    id: String,
    mut cr: ChatRequest,
    arrived: Instant,
    log_prompts: bool,
) -> Result<ChatJob, ApiError> {
    let max_ctx = ready.batcher.max_context();
    let params = cr.params(max_ctx, ready.tok.vocab_size())?;
    let structured = cr.structured()?;
    let tool_mode = match &structured {
        Structured::Tool { auto, .. } => Some(*auto),
        _ => None,
    };
    let mut msgs = cr.chat_messages()?;
    let constraint = match structured {
        Structured::Text => None,
        Structured::Json(g) => Some(Constraint::new(Arc::new(g), ready.trie())),
        Structured::Tool {
            grammar,
            note,
            auto,
            free_text,
        } => {
            match msgs.first_mut().filter(|m| m.role == "system") {
                Some(sys) => {
                    sys.content.push_str("\n\n");
                    sys.content.push_str(&note);
                }
                None => msgs.insert(0, ChatMessage::new("system", &note)),
            }
            Some(if auto && free_text {
                Constraint::text_or(grammar, ready.trie())
            } else {
                Constraint::new(grammar, ready.trie())
            })
        }
    };
    let text = ready.template.render(&msgs);
    let prompt = ready.tok.encode(&text, true);
    let max_tokens = fit_context(&prompt, &params, max_ctx)?;
    let events = submit_job(
        ready,
        &id,
        arrived,
        prompt,
        max_tokens,
        &params,
        &text,
        constraint,
        log_prompts,
    )?;
    Ok(ChatJob {
        id,
        model: ready.model_name.clone(),
        params,
        tool_mode,
        events,
        log_prompts,
    })
}

impl ChatJob {
    /// Waits for the whole generation, handing each text piece to `on_text` as it arrives,
    /// and returns the answer: a tool call when the request offered tools and the output is
    /// one, the text otherwise.
    pub async fn collect(
        &mut self,
        on_text: &mut (dyn FnMut(&str) + Send),
    ) -> Result<ChatAnswer, ApiError> {
        let c = collect_events(&self.id, &mut self.events, self.log_prompts, on_text).await?;
        let call = self.tool_mode.and_then(|_| tool_call_parts(&c.text));
        let logprobs = self.params.logprobs.map(|_| c.logprobs);
        Ok(match call {
            Some((name, arguments)) => ChatAnswer {
                content: None,
                tool_call: Some(GeneratedToolCall {
                    id: self.tool_call_id(),
                    name,
                    arguments,
                }),
                finish_reason: "tool_calls",
                prompt_tokens: c.prompt_tokens,
                completion_tokens: c.completion_tokens,
                logprobs,
            },
            None => ChatAnswer {
                content: Some(c.text),
                tool_call: None,
                finish_reason: c.finish,
                prompt_tokens: c.prompt_tokens,
                completion_tokens: c.completion_tokens,
                logprobs,
            },
        })
    }

    /// The id a tool call of this request carries.
    pub fn tool_call_id(&self) -> String {
        format!("call_{}", self.id)
    }
}

/// Waits for a whole generation.
pub(crate) async fn collect_events(
    id: &str,
    events: &mut mpsc::UnboundedReceiver<Event>,
    log_prompts: bool,
    on_text: &mut (dyn FnMut(&str) + Send),
) -> Result<Collected, ApiError> {
    let mut text = String::new();
    let mut logprobs = Vec::new();
    while let Some(ev) = events.recv().await {
        match ev {
            Event::Started => {}
            Event::Logprobs(l) => logprobs.extend(l),
            Event::Text(t) => {
                on_text(&t);
                text.push_str(&t);
            }
            Event::Done {
                finish,
                prompt_tokens,
                completion_tokens,
            } => {
                if log_prompts {
                    tracing::info!(request_id = %id, completion_tokens, finish = ?finish, output = %text, "request done");
                } else {
                    tracing::info!(request_id = %id, completion_tokens, finish = ?finish, "request done");
                }
                return Ok(Collected {
                    text,
                    finish: finish_reason(finish),
                    prompt_tokens,
                    completion_tokens,
                    logprobs,
                });
            }
            Event::Failed(msg) => return Err(ApiError::internal(msg)),
        }
    }
    Err(ApiError::internal(
        "the engine stopped before the request finished",
    ))
}

/// Checks the prompt against the context and settles `max_tokens`.
pub(crate) fn fit_context(
    prompt: &[u32],
    params: &Params,
    max_ctx: usize,
) -> Result<usize, ApiError> {
    if prompt.is_empty() {
        return Err(ApiError::invalid(
            "the prompt is empty; send at least one token of text",
            Some("prompt"),
            "invalid_value",
        ));
    }
    if prompt.len() >= max_ctx {
        return Err(ApiError::invalid(
            format!(
                "this model's maximum context length is {max_ctx} tokens, but the prompt has {} tokens; shorten the prompt",
                prompt.len()
            ),
            Some("messages"),
            "context_length_exceeded",
        ));
    }
    match params.max_tokens {
        None => Ok(max_ctx - prompt.len()),
        Some(m) if prompt.len() + m > max_ctx => Err(ApiError::invalid(
            format!(
                "this model's maximum context length is {max_ctx} tokens; the prompt has {} tokens and {m} more were requested; lower max_tokens or shorten the prompt",
                prompt.len()
            ),
            Some("max_tokens"),
            "context_length_exceeded",
        )),
        Some(m) => Ok(m),
    }
}

/// Queues one job on the engine; its events come back on the returned channel.
#[allow(clippy::too_many_arguments)]
pub(crate) fn submit_job(
    ready: &Ready,
    id: &str,
    arrived: Instant,
    prompt: Vec<u32>,
    max_tokens: usize,
    params: &Params,
    prompt_text: &str,
    constraint: Option<Constraint>,
    log_prompts: bool,
) -> Result<mpsc::UnboundedReceiver<Event>, ApiError> {
    let (tx, rx) = mpsc::unbounded_channel();
    if log_prompts {
        tracing::info!(request_id = %id, prompt_tokens = prompt.len(), max_tokens, prompt = %prompt_text, "request queued");
    } else {
        tracing::info!(request_id = %id, prompt_tokens = prompt.len(), max_tokens, "request queued");
    }
    let job = Job {
        id: id.to_owned(),
        arrived,
        prompt,
        max_tokens,
        sampling: params.sampling.clone(),
        stop: params.stop.clone(),
        constraint,
        logprobs: params.logprobs,
        events: tx,
    };
    ready.batcher.submit(job).map_err(|e| match e {
        SubmitError::QueueFull(_) => {
            ApiError::overloaded(e.to_string(), StatusCode::TOO_MANY_REQUESTS)
        }
        SubmitError::EngineStopped(_) => {
            ApiError::overloaded(e.to_string(), StatusCode::SERVICE_UNAVAILABLE)
        }
    })?;
    Ok(rx)
}
