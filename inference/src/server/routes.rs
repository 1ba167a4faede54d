//! HTTP routing: maps each path to its handler, limits and reads bodies, and turns validated
//! OpenAI requests into engine jobs whose events become JSON or SSE responses.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{Value, json};

use crate::server::batcher::Event;
use crate::server::chat::{collect_events, fit_context, start_chat, submit_job};
use crate::server::errors::ApiError;
use crate::server::openai::{
    ChatRequest, CompletionRequest, PromptInput, finish_reason, parse_body, tool_call_head,
    tool_call_parts, usage,
};
use crate::server::sse::SseBody;
use crate::server::{AppState, Ready};

pub type Body = UnsyncBoxBody<Bytes, Infallible>;

fn json_response(status: StatusCode, v: &Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(v.to_string())).boxed_unsync())
        .expect("static headers are valid")
}

fn error_response(e: ApiError) -> Response<Body> {
    e.into_response().map(|b| b.boxed_unsync())
}

/// The service function: never fails; every problem is an OpenAI error object.
pub async fn handle(
    req: Request<Incoming>,
    state: Arc<AppState>,
) -> Result<Response<Body>, Infallible> {
    let arrived = Instant::now();
    let path = req.uri().path().to_owned();
    if path.starts_with("/v1/")
        && let Some(key) = &state.config.api_key
        && !bearer_matches(&req, key)
    {
        let mut resp = error_response(ApiError::unauthorized());
        resp.headers_mut().insert(
            hyper::header::WWW_AUTHENTICATE,
            hyper::header::HeaderValue::from_static("Bearer"),
        );
        return Ok(resp);
    }
    let r = match (req.method(), path.as_str()) {
        (&Method::GET, "/health") => Ok(health(&state)),
        (&Method::GET, "/metrics") => Ok(metrics(&state)),
        (&Method::GET, "/v1/models") => models(&state),
        (&Method::POST, "/v1/chat/completions") => chat(req, &state, arrived).await,
        (&Method::POST, "/v1/completions") => completion(req, &state, arrived).await,
        (_, "/health" | "/metrics" | "/v1/models" | "/v1/chat/completions" | "/v1/completions") => {
            let allow = allowed_methods(&path);
            let mut resp = error_response(
                ApiError::invalid(
                    format!(
                        "method {} is not allowed on {path}; use {allow}",
                        req.method()
                    ),
                    None,
                    "method_not_allowed",
                )
                .with_status(StatusCode::METHOD_NOT_ALLOWED),
            );
            // RFC 9110 §15.5.6: a 405 names the methods the resource supports.
            resp.headers_mut().insert(
                hyper::header::ALLOW,
                hyper::header::HeaderValue::from_static(allow),
            );
            Ok(resp)
        }
        _ => Err(ApiError::not_found(&path)),
    };
    Ok(r.unwrap_or_else(error_response))
}

/// Whether the request carries `Authorization: Bearer <key>`. Compares digests, so the time
/// taken does not tell how much of a guessed key was right.
fn bearer_matches(req: &Request<Incoming>, key: &str) -> bool {
    use sha2::{Digest, Sha256};
    let Some(given) = req
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    else {
        return false;
    };
    Sha256::digest(given.trim().as_bytes()) == Sha256::digest(key.as_bytes())
}

/// The methods each known path answers (the `Allow` header of its 405).
fn allowed_methods(path: &str) -> &'static str {
    match path {
        "/v1/chat/completions" | "/v1/completions" => "POST",
        _ => "GET",
    }
}

fn health(state: &AppState) -> Response<Body> {
    if state.draining() {
        return json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            &json!({"status": "draining"}),
        );
    }
    match state.ready() {
        Some(_) => json_response(StatusCode::OK, &json!({"status": "ok"})),
        None => json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            &json!({"status": "loading"}),
        ),
    }
}

fn metrics(state: &AppState) -> Response<Body> {
    Response::builder()
        .header(
            "content-type",
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )
        .body(Full::new(Bytes::from(state.metrics.render())).boxed_unsync())
        .expect("static headers are valid")
}

fn ready(state: &AppState) -> Result<&Ready, ApiError> {
    state.ready().ok_or_else(|| {
        ApiError::overloaded(
            "the model is still loading; retry when /health returns 200",
            StatusCode::SERVICE_UNAVAILABLE,
        )
    })
}

/// The names this server answers to: the configured list, else the loaded model's name.
fn served_names(state: &AppState, r: &Ready) -> Vec<String> {
    if state.config.served_names.is_empty() {
        vec![r.model_name.clone()]
    } else {
        state.config.served_names.clone()
    }
}

/// Refuses a request naming a model this server does not serve. A request without `model`
/// gets the loaded one.
fn check_model(state: &AppState, r: &Ready, asked: Option<&str>) -> Result<(), ApiError> {
    let names = served_names(state, r);
    match asked {
        Some(m) if !names.iter().any(|n| n == m) => Err(ApiError::model_not_found(m, &names)),
        _ => Ok(()),
    }
}

fn models(state: &AppState) -> Result<Response<Body>, ApiError> {
    let r = ready(state)?;
    let names = served_names(state, r);
    let data: Vec<Value> = names
        .iter()
        .map(|n| {
            json!({
                "id": n,
                "object": "model",
                "created": 0,
                "owned_by": "sandgraph",
                "root": names[0],
                "max_model_len": r.batcher.max_context(),
            })
        })
        .collect();
    Ok(json_response(
        StatusCode::OK,
        &json!({"object": "list", "data": data}),
    ))
}

/// Reads the body, refusing it before reading further once it passes the size limit.
async fn read_body(req: Request<Incoming>, limit: usize) -> Result<Bytes, ApiError> {
    let too_large = || {
        ApiError::invalid(
            format!("the request body is larger than {limit} bytes; send a smaller request"),
            None,
            "body_too_large",
        )
        .with_status(StatusCode::PAYLOAD_TOO_LARGE)
    };
    if let Some(len) = req
        .headers()
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        && len > limit as u64
    {
        return Err(too_large());
    }
    match Limited::new(req.into_body(), limit).collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(too_large()),
        Err(e) => Err(ApiError::invalid(
            format!("reading the request body failed: {e}"),
            None,
            "body_read_failed",
        )),
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn sse_response(body: SseBody) -> Response<Body> {
    Response::builder()
        .header("content-type", "text/event-stream")
        .header("cache-control", "no-cache")
        .body(body.boxed_unsync())
        .expect("static headers are valid")
}

async fn chat(
    req: Request<Incoming>,
    state: &Arc<AppState>,
    arrived: Instant,
) -> Result<Response<Body>, ApiError> {
    let body = read_body(req, state.config.max_body_bytes).await?;
    let mut cr: ChatRequest = parse_body(&body)?;
    cr.read_property_order(&body);
    let r = ready(state)?;
    check_model(state, r, cr.model.as_deref())?;
    let id = format!("chatcmpl-{}", state.next_request_id());
    let mut s = start_chat(r, id, cr, arrived, state.config.log_prompts)?;
    let created = now_secs();
    if s.params.stream {
        let (id, model) = (s.id.clone(), s.model.clone());
        let include_usage = s.params.include_usage;
        let chunk = move |delta: Value, finish: Option<&str>| {
            json!({
                "id": id, "object": "chat.completion.chunk", "created": created, "model": model,
                "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}],
            })
        };
        let (id2, model2) = (s.id.clone(), s.model.clone());
        let call_id = s.tool_call_id();
        let mut calls = s.tool_mode.map(|auto| ToolStream::new(call_id, auto));
        let format = Box::new(move |ev: &Event| match ev {
            Event::Started => vec![chunk(json!({"role": "assistant", "content": ""}), None)],
            Event::Text(t) => match calls.as_mut() {
                Some(c) => c.push(t).into_iter().map(|d| chunk(d, None)).collect(),
                None => vec![chunk(json!({"content": t}), None)],
            },
            Event::Done {
                finish,
                prompt_tokens,
                completion_tokens,
            } => {
                let mut v = Vec::new();
                let mut reason = finish_reason(*finish);
                if let Some(c) = calls.as_mut() {
                    let (deltas, is_call) = c.finish();
                    v.extend(deltas.into_iter().map(|d| chunk(d, None)));
                    if is_call {
                        reason = "tool_calls";
                    }
                }
                v.push(chunk(json!({}), Some(reason)));
                if include_usage {
                    v.push(json!({
                        "id": id2, "object": "chat.completion.chunk", "created": created,
                        "model": model2, "choices": [],
                        "usage": usage(*prompt_tokens, *completion_tokens),
                    }));
                }
                v
            }
            Event::Failed(msg) => vec![ApiError::internal(msg.clone()).body_json()],
        });
        return Ok(sse_response(SseBody::new(s.events, format)));
    }
    let answer = s.collect(&mut |_| {}).await?;
    let message = match &answer.tool_call {
        Some(call) => json!({
            "role": "assistant",
            "content": null,
            "tool_calls": [{
                "id": call.id,
                "type": "function",
                "function": {"name": call.name, "arguments": call.arguments},
            }],
        }),
        None => json!({"role": "assistant", "content": answer.content}),
    };
    Ok(json_response(
        StatusCode::OK,
        &json!({
            "id": s.id, "object": "chat.completion", "created": created, "model": s.model,
            "choices": [{
                "index": 0,
                "message": message,
                "logprobs": null,
                "finish_reason": answer.finish_reason,
            }],
            "usage": usage(answer.prompt_tokens, answer.completion_tokens),
        }),
    ))
}

/// Turns the text of a generated tool call into OpenAI's streamed `delta.tool_calls`: one
/// delta with the call's id, type and function name once the name is complete, then the
/// arguments' text as it grows. The last byte seen is held back until the next text, because
/// the final `}` closes the call object, not the arguments. With `auto`, output whose first
/// byte is not `{` is plain `delta.content`.
struct ToolStream {
    id: String,
    auto: bool,
    text: String,
    /// Whether the output is text rather than a call (decided by its first byte under `auto`).
    plain: bool,
    /// Byte offset of the arguments in `text`, once the name delta has been sent.
    args_at: Option<usize>,
    /// Bytes of the arguments already sent.
    sent: usize,
}

impl ToolStream {
    fn new(id: String, auto: bool) -> ToolStream {
        ToolStream {
            id,
            auto,
            text: String::new(),
            plain: false,
            args_at: None,
            sent: 0,
        }
    }

    fn push(&mut self, t: &str) -> Vec<Value> {
        if self.text.is_empty() && self.auto && !t.starts_with('{') {
            self.plain = true;
        }
        if self.plain {
            return vec![json!({"content": t})];
        }
        self.text.push_str(t);
        let mut out = Vec::new();
        if self.args_at.is_none()
            && let Some((name, at)) = tool_call_head(&self.text)
        {
            self.args_at = Some(at);
            out.push(json!({"tool_calls": [{
                "index": 0, "id": self.id, "type": "function",
                "function": {"name": name, "arguments": ""},
            }]}));
        }
        if let Some(at) = self.args_at {
            // Everything but the last character (it may be the call object's closing brace).
            let end = self.text.char_indices().last().map_or(0, |(i, _)| i);
            out.extend(self.args_delta(at, end));
        }
        out
    }

    fn args_delta(&mut self, at: usize, end: usize) -> Option<Value> {
        let from = at + self.sent;
        (end > from).then(|| {
            self.sent = end - at;
            json!({"tool_calls": [{"index": 0, "function": {"arguments": &self.text[from..end]}}]})
        })
    }

    /// The deltas left at the end, and whether the output was a complete tool call.
    fn finish(&mut self) -> (Vec<Value>, bool) {
        if self.plain {
            return (vec![], false);
        }
        let Some(at) = self.args_at else {
            // Cut before the name was complete: nothing callable was produced.
            return (vec![], false);
        };
        match tool_call_parts(&self.text) {
            Some((_, args)) => {
                let end = at + args.len();
                (self.args_delta(at, end).into_iter().collect(), true)
            }
            None => {
                let end = self.text.len();
                (self.args_delta(at, end).into_iter().collect(), false)
            }
        }
    }
}

async fn completion(
    req: Request<Incoming>,
    state: &Arc<AppState>,
    arrived: Instant,
) -> Result<Response<Body>, ApiError> {
    let body = read_body(req, state.config.max_body_bytes).await?;
    let mut cr: CompletionRequest = parse_body(&body)?;
    let r = ready(state)?;
    check_model(state, r, cr.model.as_deref())?;
    let params = cr.params(r.batcher.max_context(), r.tok.vocab_size())?;
    let (prompt, text) = match cr.prompt_input(r.tok.vocab_size())? {
        PromptInput::Text(text) => (r.tok.encode(&text, false), text),
        PromptInput::Tokens(ids) => {
            let text = format!("{ids:?}");
            (ids, text)
        }
    };
    let max_tokens = fit_context(&prompt, &params, r.batcher.max_context())?;
    let id = format!("cmpl-{}", state.next_request_id());
    let log_prompts = state.config.log_prompts;
    let mut events = submit_job(
        r,
        &id,
        arrived,
        prompt,
        max_tokens,
        &params,
        &text,
        None,
        log_prompts,
    )?;
    let model = r.model_name.clone();
    let created = now_secs();
    if params.stream {
        let include_usage = params.include_usage;
        let format = Box::new(move |ev: &Event| {
            let chunk = |text: &str, finish: Option<&str>| {
                json!({
                    "id": id, "object": "text_completion", "created": created, "model": model,
                    "choices": [{"index": 0, "text": text, "logprobs": null, "finish_reason": finish}],
                })
            };
            match ev {
                Event::Started => vec![],
                Event::Text(t) => vec![chunk(t, None)],
                Event::Done {
                    finish,
                    prompt_tokens,
                    completion_tokens,
                } => {
                    let mut v = vec![chunk("", Some(finish_reason(*finish)))];
                    if include_usage {
                        v.push(json!({
                            "id": id, "object": "text_completion", "created": created,
                            "model": model, "choices": [],
                            "usage": usage(*prompt_tokens, *completion_tokens),
                        }));
                    }
                    v
                }
                Event::Failed(msg) => vec![ApiError::internal(msg.clone()).body_json()],
            }
        });
        return Ok(sse_response(SseBody::new(events, format)));
    }
    let (text, finish, p, c) = collect_events(&id, &mut events, log_prompts, &mut |_| {}).await?;
    Ok(json_response(
        StatusCode::OK,
        &json!({
            "id": id, "object": "text_completion", "created": created, "model": model,
            "choices": [{"index": 0, "text": text, "logprobs": null, "finish_reason": finish}],
            "usage": usage(p, c),
        }),
    ))
}
