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

use crate::server::batcher::{Event, TokenLogprob};
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
        (&Method::GET, p) if p.starts_with("/v1/models/") => {
            model(&state, &p["/v1/models/".len()..])
        }
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

/// The model object of served name `name`.
fn model_object(state: &AppState, r: &Ready, name: &str, primary: &str) -> Value {
    json!({
        "id": name,
        "object": "model",
        "created": state.started_at,
        "owned_by": "sandgraph",
        "root": primary,
        "max_model_len": r.batcher.max_context(),
    })
}

fn models(state: &AppState) -> Result<Response<Body>, ApiError> {
    let r = ready(state)?;
    let names = served_names(state, r);
    let data: Vec<Value> = names
        .iter()
        .map(|n| model_object(state, r, n, &names[0]))
        .collect();
    Ok(json_response(
        StatusCode::OK,
        &json!({"object": "list", "data": data}),
    ))
}

/// `GET /v1/models/{id}` (OpenAI's `models.retrieve`): the model object, or 404
/// `model_not_found` for a name not served.
fn model(state: &AppState, id: &str) -> Result<Response<Body>, ApiError> {
    let r = ready(state)?;
    let names = served_names(state, r);
    // Names are path segments; a client may percent-encode characters such as '/' or ' '.
    let id = percent_decode(id);
    if !names.contains(&id) {
        return Err(ApiError::model_not_found(&id, &names));
    }
    Ok(json_response(
        StatusCode::OK,
        &model_object(state, r, &id, &names[0]),
    ))
}

/// `%XX` escapes decoded (invalid ones kept as written).
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if b[i] == b'%'
            && i + 2 < b.len()
            && let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2]))
        {
            out.push((h * 16 + l) as u8);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
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

/// `n` as the request gives it, refused past the server's `max_n` (values below 1 are
/// refused with the other parameters).
fn check_n(state: &AppState, n: Option<i64>) -> Result<usize, ApiError> {
    let max = state.config.max_n;
    match n {
        Some(n) if n > max as i64 => Err(ApiError::invalid(
            format!("n = {n}: this server generates at most {max} choices per request (--max-n)"),
            Some("n"),
            "invalid_value",
        )),
        Some(n) if n >= 1 => Ok(n as usize),
        _ => Ok(1),
    }
}

/// The seed of choice `i` of `n`: the request's seed (or one from the clock) plus `i`, so
/// choices differ and a seeded request stays reproducible.
fn choice_seed(seed: Option<i64>, i: usize) -> i64 {
    let base = seed.unwrap_or_else(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as i64)
    });
    base.wrapping_add(i as i64)
}

/// One generated token's entry in a chat choice's `logprobs.content`.
fn chat_logprob(t: &TokenLogprob) -> Value {
    json!({
        "token": t.token, "logprob": t.logprob, "bytes": t.bytes,
        "top_logprobs": t.top.iter()
            .map(|(tok, b, lp)| json!({"token": tok, "logprob": lp, "bytes": b}))
            .collect::<Vec<_>>(),
    })
}

/// A chat choice's `logprobs` object.
fn chat_logprobs(l: &[TokenLogprob]) -> Value {
    json!({"content": l.iter().map(chat_logprob).collect::<Vec<_>>(), "refusal": null})
}

/// Pairs each streamed delta with its `logprobs`: the first delta carries the entries not
/// sent yet (when they were asked for), the others none.
fn with_logprobs(
    deltas: Vec<Value>,
    unsent: &mut Vec<TokenLogprob>,
    want: bool,
) -> impl Iterator<Item = (Value, Value)> {
    let mut lp = if want && !deltas.is_empty() {
        chat_logprobs(&std::mem::take(unsent))
    } else {
        Value::Null
    };
    deltas
        .into_iter()
        .map(move |d| (d, std::mem::take(&mut lp)))
}

/// The legacy completions' `logprobs` object; `offset` is the text length (in characters)
/// before the first of these tokens.
fn completion_logprobs(l: &[TokenLogprob], mut offset: usize) -> Value {
    let mut text_offset = Vec::with_capacity(l.len());
    for t in l {
        text_offset.push(offset);
        offset += t.token.chars().count();
    }
    json!({
        "tokens": l.iter().map(|t| t.token.clone()).collect::<Vec<_>>(),
        "token_logprobs": l.iter().map(|t| t.logprob).collect::<Vec<_>>(),
        "top_logprobs": l.iter()
            .map(|t| t.top.iter().map(|(tok, _, lp)| (tok.clone(), json!(lp))).collect::<serde_json::Map<_, _>>())
            .collect::<Vec<_>>(),
        "text_offset": text_offset,
    })
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
    let n = check_n(state, cr.n)?;
    let id = format!("chatcmpl-{}", state.next_request_id());
    // Choice i is its own engine job (seed + i); the engine shares their common prefill
    // across slots, so the prompt is computed once.
    let mut jobs = Vec::with_capacity(n);
    for i in 0..n {
        let mut c = cr.clone();
        let job_id = if n == 1 {
            id.clone()
        } else {
            c.seed = Some(choice_seed(cr.seed, i));
            format!("{id}-{i}")
        };
        jobs.push(start_chat(r, job_id, c, arrived, state.config.log_prompts)?);
    }
    let created = now_secs();
    let model = jobs[0].model.clone();
    let want_logprobs = jobs[0].params.logprobs.is_some();
    if jobs[0].params.stream {
        let include_usage = jobs[0].params.include_usage;
        let chunk = {
            let (id, model) = (id.clone(), model.clone());
            move |index: usize, delta: Value, logprobs: Value, finish: Option<&str>| {
                json!({
                    "id": id, "object": "chat.completion.chunk", "created": created, "model": model,
                    "choices": [{"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}],
                })
            }
        };
        let mut calls: Vec<Option<ToolStream>> = jobs
            .iter()
            .map(|j| {
                j.tool_mode
                    .map(|auto| ToolStream::new(j.tool_call_id(), auto))
            })
            .collect();
        let mut unsent: Vec<Vec<TokenLogprob>> = vec![Vec::new(); n];
        let (mut done, mut completion) = (0, 0);
        let format = Box::new(move |i: usize, ev: &Event| match ev {
            Event::Started => vec![chunk(
                i,
                json!({"role": "assistant", "content": ""}),
                Value::Null,
                None,
            )],
            Event::Logprobs(l) => {
                unsent[i].extend(l.iter().cloned());
                vec![]
            }
            Event::Text(t) => {
                let deltas = match calls[i].as_mut() {
                    Some(c) => c.push(t),
                    None => vec![json!({"content": t})],
                };
                with_logprobs(deltas, &mut unsent[i], want_logprobs)
                    .map(|(d, lp)| chunk(i, d, lp, None))
                    .collect()
            }
            Event::Done {
                finish,
                prompt_tokens,
                completion_tokens,
            } => {
                let mut v = Vec::new();
                let mut reason = finish_reason(*finish);
                if want_logprobs && calls[i].is_none() && !unsent[i].is_empty() {
                    // Tokens without text of their own (held to the end) still report.
                    let lp = chat_logprobs(&std::mem::take(&mut unsent[i]));
                    v.push(chunk(i, json!({"content": ""}), lp, None));
                }
                if let Some(c) = calls[i].as_mut() {
                    let (deltas, is_call) = c.finish();
                    v.extend(
                        with_logprobs(deltas, &mut unsent[i], want_logprobs)
                            .map(|(d, lp)| chunk(i, d, lp, None)),
                    );
                    if is_call {
                        reason = "tool_calls";
                    }
                }
                v.push(chunk(i, json!({}), Value::Null, Some(reason)));
                done += 1;
                completion += completion_tokens;
                if include_usage && done == n {
                    v.push(json!({
                        "id": id, "object": "chat.completion.chunk", "created": created,
                        "model": model, "choices": [],
                        "usage": usage(*prompt_tokens, completion),
                    }));
                }
                v
            }
            Event::Failed(msg) => vec![ApiError::internal(msg.clone()).body_json()],
        });
        let events = jobs.into_iter().map(|j| j.events).collect();
        return Ok(sse_response(SseBody::new(events, format)));
    }
    let (mut choices, mut prompt, mut completion) = (Vec::with_capacity(n), 0, 0);
    for (index, job) in jobs.iter_mut().enumerate() {
        let answer = job.collect(&mut |_| {}).await?;
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
        choices.push(json!({
            "index": index,
            "message": message,
            "logprobs": answer.logprobs.as_deref().map_or(Value::Null, chat_logprobs),
            "finish_reason": answer.finish_reason,
        }));
        prompt = answer.prompt_tokens;
        completion += answer.completion_tokens;
    }
    Ok(json_response(
        StatusCode::OK,
        &json!({
            "id": id, "object": "chat.completion", "created": created, "model": model,
            "choices": choices,
            "usage": usage(prompt, completion),
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
        // Under a JSON response_format the answer may be a document of the format instead
        // of a call: once the text cannot start a call, it is content after all.
        const OPEN: &str = "{\"name\":\"";
        if self.auto
            && self.args_at.is_none()
            && !(self.text.starts_with(OPEN) || OPEN.starts_with(self.text.as_str()))
        {
            self.plain = true;
            return vec![json!({"content": std::mem::take(&mut self.text)})];
        }
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
    let n = check_n(state, cr.n)?;
    let mut params = cr.params(r.batcher.max_context(), r.tok.vocab_size())?;
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
    let mut events = Vec::with_capacity(n);
    for i in 0..n {
        let job_id = if n == 1 {
            id.clone()
        } else {
            params.sampling.seed = choice_seed(cr.seed, i) as u64;
            format!("{id}-{i}")
        };
        events.push(submit_job(
            r,
            &job_id,
            arrived,
            prompt.clone(),
            max_tokens,
            &params,
            &text,
            None,
            log_prompts,
        )?);
    }
    let model = r.model_name.clone();
    let created = now_secs();
    let want_logprobs = params.logprobs.is_some();
    if params.stream {
        let include_usage = params.include_usage;
        let mut unsent: Vec<Vec<TokenLogprob>> = vec![Vec::new(); n];
        let mut chars = vec![0usize; n];
        let (mut done, mut completion) = (0, 0);
        let format = Box::new(move |i: usize, ev: &Event| {
            let chunk = |text: &str, logprobs: Value, finish: Option<&str>| {
                json!({
                    "id": id, "object": "text_completion", "created": created, "model": model,
                    "choices": [{"index": i, "text": text, "logprobs": logprobs, "finish_reason": finish}],
                })
            };
            match ev {
                Event::Started => vec![],
                Event::Logprobs(l) => {
                    unsent[i].extend(l.iter().cloned());
                    vec![]
                }
                Event::Text(t) => {
                    let lp = if want_logprobs {
                        let l = std::mem::take(&mut unsent[i]);
                        let v = completion_logprobs(&l, chars[i]);
                        chars[i] += l.iter().map(|t| t.token.chars().count()).sum::<usize>();
                        v
                    } else {
                        Value::Null
                    };
                    vec![chunk(t, lp, None)]
                }
                Event::Done {
                    finish,
                    prompt_tokens,
                    completion_tokens,
                } => {
                    let mut v = Vec::new();
                    if want_logprobs && !unsent[i].is_empty() {
                        let l = std::mem::take(&mut unsent[i]);
                        v.push(chunk("", completion_logprobs(&l, chars[i]), None));
                    }
                    v.push(chunk("", Value::Null, Some(finish_reason(*finish))));
                    done += 1;
                    completion += completion_tokens;
                    if include_usage && done == n {
                        v.push(json!({
                            "id": id, "object": "text_completion", "created": created,
                            "model": model, "choices": [],
                            "usage": usage(*prompt_tokens, completion),
                        }));
                    }
                    v
                }
                Event::Failed(msg) => vec![ApiError::internal(msg.clone()).body_json()],
            }
        });
        return Ok(sse_response(SseBody::new(events, format)));
    }
    let (mut choices, mut prompt_n, mut completion) = (Vec::with_capacity(n), 0, 0);
    for (index, ev) in events.iter_mut().enumerate() {
        let c = collect_events(&id, ev, log_prompts, &mut |_| {}).await?;
        choices.push(json!({
            "index": index,
            "text": c.text,
            "logprobs": if want_logprobs { completion_logprobs(&c.logprobs, 0) } else { Value::Null },
            "finish_reason": c.finish,
        }));
        prompt_n = c.prompt_tokens;
        completion += c.completion_tokens;
    }
    Ok(json_response(
        StatusCode::OK,
        &json!({
            "id": id, "object": "text_completion", "created": created, "model": model,
            "choices": choices,
            "usage": usage(prompt_n, completion),
        }),
    ))
}
