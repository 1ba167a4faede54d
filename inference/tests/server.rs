//! The OpenAI-compatible server on tiny seeded models with the CPU backend: response shapes,
//! streaming, every bad-input case as a specific 4xx, continuous batching equal to running each
//! request alone, back-pressure (429), and cancellation when a streaming client disconnects.

use std::net::SocketAddr;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};

use sandgraph_inference::backend::cpu::CpuBackend;
use sandgraph_inference::backend::{Backend, BackendError, SeqChunk};
use sandgraph_inference::generate::{self, CancelToken, Sampling};
use sandgraph_inference::gguf::{GgmlType, GgufFile};
use sandgraph_inference::model::LlamaModel;
use sandgraph_inference::server::batcher::Batcher;
use sandgraph_inference::server::{AppState, Ready, ServerConfig, serve};
use sandgraph_inference::testutil::{TinySpec, tiny_model_bytes};
use sandgraph_inference::tokenizer::{ChatMessage, ChatTemplate, Tokenizer};

const CONTEXT: usize = 512;

fn tiny() -> (LlamaModel, Tokenizer) {
    let bytes = tiny_model_bytes(&TinySpec::new(21, GgmlType::Q8_0));
    let tok = Tokenizer::from_gguf(&GgufFile::from_bytes(bytes.clone()).unwrap()).unwrap();
    let model = LlamaModel::from_gguf(GgufFile::from_bytes(bytes).unwrap()).unwrap();
    (model, tok)
}

/// Lets the test decide when the engine may run a forward: `None` = open, `Some(n)` = n more.
#[derive(Default)]
struct Gate {
    permits: Mutex<Option<usize>>,
    cv: Condvar,
    forwards: Mutex<usize>,
    /// Added to these tokens' logits in every full-logits row (the constrained pick reads
    /// those), so a test can decide what the model "wants" to write.
    bias: Mutex<Vec<(u32, f32)>>,
    /// Every forward's chunks as (slot, start position, tokens).
    batches: Mutex<Vec<Vec<(usize, usize, usize)>>>,
    /// Every prefix copy as (source slot, destination slot, from, to).
    copies: Mutex<Vec<(usize, usize, usize, usize)>>,
}

impl Gate {
    fn closed() -> Arc<Gate> {
        Arc::new(Gate {
            permits: Mutex::new(Some(0)),
            ..Default::default()
        })
    }
    /// A gate that never holds the engine back.
    fn opened() -> Arc<Gate> {
        let g = Gate::closed();
        g.open();
        g
    }
    fn open(&self) {
        *self.permits.lock().unwrap() = None;
        self.cv.notify_all();
    }
    fn allow(&self, n: usize) {
        let mut p = self.permits.lock().unwrap();
        if let Some(k) = p.as_mut() {
            *k += n;
        }
        self.cv.notify_all();
    }
    fn forwards(&self) -> usize {
        *self.forwards.lock().unwrap()
    }
}

struct GatedBackend {
    inner: CpuBackend,
    gate: Arc<Gate>,
}

impl Backend for GatedBackend {
    fn name(&self) -> &'static str {
        "gated-cpu"
    }
    fn max_slots(&self) -> usize {
        self.inner.max_slots()
    }
    fn max_context(&self) -> usize {
        self.inner.max_context()
    }
    fn forward(&mut self, batch: &[SeqChunk<'_>]) -> Result<(), BackendError> {
        let mut p = self.gate.permits.lock().unwrap();
        while *p == Some(0) {
            p = self.gate.cv.wait(p).unwrap();
        }
        if let Some(k) = p.as_mut() {
            *k -= 1;
        }
        drop(p);
        let r = self.inner.forward(batch);
        self.gate.batches.lock().unwrap().push(
            batch
                .iter()
                .map(|c| (c.slot, c.start_pos, c.tokens.len()))
                .collect(),
        );
        *self.gate.forwards.lock().unwrap() += 1;
        r
    }
    fn logits(&mut self) -> Result<Vec<Vec<f32>>, BackendError> {
        let mut rows = self.inner.logits()?;
        for &(t, b) in self.gate.bias.lock().unwrap().iter() {
            for r in &mut rows {
                r[t as usize] += b;
            }
        }
        Ok(rows)
    }
    fn argmax(&mut self) -> Result<Vec<u32>, BackendError> {
        self.inner.argmax()
    }
    fn top_k(&mut self, k: usize) -> Result<Vec<Vec<(u32, f32)>>, BackendError> {
        self.inner.top_k(k)
    }
    fn copy_prefix(
        &mut self,
        src: usize,
        dst: usize,
        from: usize,
        to: usize,
    ) -> Result<(), BackendError> {
        self.gate.copies.lock().unwrap().push((src, dst, from, to));
        self.inner.copy_prefix(src, dst, from, to)
    }
}

struct Server {
    addr: SocketAddr,
    state: Arc<AppState>,
    gate: Arc<Gate>,
}

impl Server {
    fn batcher(&self) -> &Batcher {
        &self.state.ready().unwrap().batcher
    }
}

async fn start(slots: usize, config: ServerConfig, gate: Arc<Gate>) -> Server {
    start_with_budget(slots, config, gate, generate::PREFILL_CHUNK * 4).await
}

async fn start_with_budget(
    slots: usize,
    config: ServerConfig,
    gate: Arc<Gate>,
    step_tokens: usize,
) -> Server {
    let (model, tok) = tiny();
    let inner = CpuBackend::with_threads(&model, slots, CONTEXT, 1).unwrap();
    let backend = Box::new(GatedBackend {
        inner,
        gate: gate.clone(),
    });
    let state = AppState::new(config);
    let tok = Arc::new(tok);
    let batcher = Batcher::with_step_tokens(
        backend,
        tok.clone(),
        state.config.max_waiting,
        state.metrics.clone(),
        step_tokens,
    );
    state.set_ready(Ready::new(
        batcher,
        tok,
        ChatTemplate::detect(None).unwrap(),
        "tiny".into(),
    ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(serve(listener, state.clone()));
    Server { addr, state, gate }
}

async fn open_server(slots: usize) -> Server {
    let gate = Gate::closed();
    gate.open();
    start(slots, ServerConfig::default(), gate).await
}

/// Sends one request on a fresh connection; returns the response and the connection task.
async fn send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<Vec<u8>>,
) -> (Response<Incoming>, tokio::task::JoinHandle<()>) {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    let task = tokio::spawn(async move {
        let _ = conn.await;
    });
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "127.0.0.1")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.unwrap_or_default())))
        .unwrap();
    (sender.send_request(req).await.unwrap(), task)
}

/// A greedy, non-streamed completion of `prompt` sent in the background.
fn spawn_completion(
    addr: SocketAddr,
    prompt: &str,
    max_tokens: usize,
) -> tokio::task::JoinHandle<(u16, Value)> {
    let body = json!({"prompt": prompt, "max_tokens": max_tokens, "temperature": 0});
    tokio::spawn(async move { call(addr, "POST", "/v1/completions", Some(body)).await })
}

/// Starts a greedy streamed completion of `prompt` on a gated server and lets the engine run its
/// prefill and one decode step; returns the body once its first chunk arrived (that chunk
/// included) and the connection task.
async fn stream_first_chunk(
    s: &Server,
    prompt: &str,
    max_tokens: usize,
) -> (Incoming, Bytes, tokio::task::JoinHandle<()>) {
    let body =
        json!({"prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "stream": true});
    let (resp, conn) = send(
        s.addr,
        "POST",
        "/v1/completions",
        Some(body.to_string().into_bytes()),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    s.gate.allow(2);
    let first = body.frame().await.unwrap().unwrap();
    let first = first.into_data().expect("a data chunk first");
    (body, first, conn)
}

async fn call(addr: SocketAddr, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let (resp, _task) = send(addr, method, path, body.map(|b| b.to_string().into_bytes())).await;
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let v = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    (status, v)
}

async fn call_raw(addr: SocketAddr, path: &str, body: Vec<u8>) -> (u16, Value) {
    let (resp, _task) = send(addr, "POST", path, Some(body)).await;
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&bytes).unwrap())
}

/// The `data:` payloads of an SSE body.
fn sse_payloads(text: &str) -> Vec<String> {
    text.split("\n\n")
        .filter(|e| !e.is_empty())
        .map(|e| {
            e.strip_prefix("data: ")
                .expect("every event is a data line")
                .to_owned()
        })
        .collect()
}

/// Sends `body` to `path` with `"stream": true` and returns the `data:` payloads of the answer.
async fn stream_payloads(addr: SocketAddr, path: &str, mut body: Value) -> Vec<String> {
    body["stream"] = json!(true);
    let (resp, _t) = send(addr, "POST", path, Some(body.to_string().into_bytes())).await;
    let raw = resp.into_body().collect().await.unwrap().to_bytes();
    sse_payloads(std::str::from_utf8(&raw).unwrap())
}

/// The JSON chunks of a stream's payloads, before the closing `[DONE]`.
fn stream_chunks(payloads: &[String]) -> Vec<Value> {
    payloads[..payloads.len() - 1]
        .iter()
        .map(|p| serde_json::from_str(p).unwrap())
        .collect()
}

/// Greedy text of one completion prompt run alone through `generate`.
fn alone(prompt: &str, max_tokens: usize) -> (String, usize) {
    let (model, tok) = tiny();
    let mut cpu = CpuBackend::with_threads(&model, 1, CONTEXT, 1).unwrap();
    let req = generate::Request {
        prompt: tok.encode(prompt, false),
        max_tokens,
        sampling: Sampling::greedy(),
        stop: vec![],
    };
    let (out, _) =
        generate::generate(&mut cpu, &tok, &[req], &CancelToken::new(), &mut |_, _| {}).unwrap();
    (out[0].text.clone(), out[0].tokens.len())
}

async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn assert_error(v: &Value, code: &str, param: Option<&str>) {
    let e = &v["error"];
    assert_eq!(e["code"], code, "{v}");
    assert_eq!(e["type"], "invalid_request_error", "{v}");
    assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
    match param {
        Some(p) => assert_eq!(e["param"], p, "{v}"),
        None => assert!(e["param"].is_null(), "{v}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_is_503_while_loading_and_200_when_ready() {
    let state = AppState::new(ServerConfig::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(serve(listener, state.clone()));
    assert_eq!(call(addr, "GET", "/health", None).await.0, 503);
    let (status, v) = call(
        addr,
        "POST",
        "/v1/completions",
        Some(json!({"prompt": "hi", "max_tokens": 2})),
    )
    .await;
    assert_eq!(status, 503);
    assert_eq!(v["error"]["code"], "unavailable");
    let (model, tok) = tiny();
    let tok = Arc::new(tok);
    let cpu = CpuBackend::with_threads(&model, 1, CONTEXT, 1).unwrap();
    state.set_ready(Ready::new(
        Batcher::start(Box::new(cpu), tok.clone(), 4, state.metrics.clone()),
        tok,
        ChatTemplate::detect(None).unwrap(),
        "tiny".into(),
    ));
    assert_eq!(call(addr, "GET", "/health", None).await.0, 200);
    let (status, v) = call(addr, "GET", "/v1/models", None).await;
    assert_eq!(status, 200);
    assert_eq!(v["object"], "list");
    assert_eq!(v["data"][0]["id"], "tiny");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completion_matches_generate_and_reports_usage() {
    let s = open_server(2).await;
    let (status, v) = call(
        s.addr,
        "POST",
        "/v1/completions",
        Some(json!({"prompt": "the cat sat", "max_tokens": 12, "temperature": 0})),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    let (text, n) = alone("the cat sat", 12);
    assert_eq!(v["object"], "text_completion");
    assert_eq!(v["choices"][0]["text"], text.as_str());
    assert_eq!(v["usage"]["completion_tokens"], n);
    let (_, tok) = tiny();
    let p = tok.encode("the cat sat", false).len();
    assert_eq!(v["usage"]["prompt_tokens"], p);
    assert_eq!(v["usage"]["total_tokens"], p + n);
    let fr = if n == 12 { "length" } else { "stop" };
    assert_eq!(v["choices"][0]["finish_reason"], fr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_completion_has_the_openai_shape_and_streams_the_same_text() {
    let s = open_server(2).await;
    let body = json!({
        "model": "tiny",
        "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello world"}],
        "max_completion_tokens": 10,
        "temperature": 0,
    });
    let (status, v) = call(s.addr, "POST", "/v1/chat/completions", Some(body.clone())).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["object"], "chat.completion");
    assert!(v["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert_eq!(v["choices"][0]["message"]["role"], "assistant");
    let full = v["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_owned();
    // Same prompt rendered and run alone.
    let (model, tok) = tiny();
    let text = ChatTemplate::detect(None).unwrap().render(&[
        ChatMessage::new("system", "be brief"),
        ChatMessage::new("user", "hello world"),
    ]);
    let mut cpu = CpuBackend::with_threads(&model, 1, CONTEXT, 1).unwrap();
    let req = generate::Request {
        prompt: tok.encode(&text, true),
        max_tokens: 10,
        sampling: Sampling::greedy(),
        stop: vec![],
    };
    let (out, _) =
        generate::generate(&mut cpu, &tok, &[req], &CancelToken::new(), &mut |_, _| {}).unwrap();
    assert_eq!(full, out[0].text);

    let mut stream_body = body;
    stream_body["stream"] = json!(true);
    stream_body["stream_options"] = json!({"include_usage": true});
    let (resp, _t) = send(
        s.addr,
        "POST",
        "/v1/chat/completions",
        Some(stream_body.to_string().into_bytes()),
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let raw = resp.into_body().collect().await.unwrap().to_bytes();
    let payloads = sse_payloads(std::str::from_utf8(&raw).unwrap());
    assert_eq!(payloads.last().unwrap(), "[DONE]");
    let chunks = stream_chunks(&payloads);
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let streamed: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(streamed, full);
    let fin = &chunks[chunks.len() - 2];
    assert!(fin["choices"][0]["finish_reason"].is_string(), "{fin}");
    let usage = &chunks[chunks.len() - 1];
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["usage"]["completion_tokens"], out[0].tokens.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_sequences_and_completion_streaming() {
    let s = open_server(1).await;
    let (text, _) = alone("hello world! hello", 16);
    // Stop on a piece of the greedy output: the result is the text before it.
    let cut = text
        .char_indices()
        .nth(text.chars().count() / 2)
        .map_or(0, |(i, _)| i);
    let stop: String = text[cut..].chars().take(2).collect();
    assert!(!stop.is_empty(), "tiny model produced no text: {text:?}");
    let expect = &text[..text.find(&stop).unwrap()];
    let (status, v) = call(
        s.addr,
        "POST",
        "/v1/completions",
        Some(json!({"prompt": "hello world! hello", "max_tokens": 16, "temperature": 0, "stop": [stop]})),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["choices"][0]["text"], expect);
    assert_eq!(v["choices"][0]["finish_reason"], "stop");

    let (resp, _t) = send(
        s.addr,
        "POST",
        "/v1/completions",
        Some(
            json!({"prompt": "hello world! hello", "max_tokens": 16, "temperature": 0, "stream": true})
                .to_string()
                .into_bytes(),
        ),
    )
    .await;
    let raw = resp.into_body().collect().await.unwrap().to_bytes();
    let payloads = sse_payloads(std::str::from_utf8(&raw).unwrap());
    assert_eq!(payloads.last().unwrap(), "[DONE]");
    let streamed: String = stream_chunks(&payloads)
        .iter()
        .map(|c| c["choices"][0]["text"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(streamed, text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_specific_openai_errors() {
    let s = start(
        1,
        ServerConfig {
            max_body_bytes: 16384,
            ..Default::default()
        },
        Gate::opened(),
    )
    .await;
    let chat = "/v1/chat/completions";
    let (st, v) = call_raw(s.addr, chat, b"{\"messages\": [".to_vec()).await;
    assert_eq!(st, 400);
    assert_error(&v, "invalid_json", None);
    let (st, v) = call_raw(s.addr, chat, b"[1,2]".to_vec()).await;
    assert_eq!(st, 400);
    assert_error(&v, "invalid_request_body", None);
    let msgs = json!([{"role": "user", "content": "hi"}]);
    let cases = [
        (
            json!({"messages": msgs, "frobnicate": 1}),
            "unknown_parameter",
            Some("frobnicate"),
        ),
        (
            json!({"messages": msgs, "max_tokens": -1}),
            "invalid_value",
            Some("max_tokens"),
        ),
        (
            json!({"messages": msgs, "max_tokens": 0}),
            "invalid_value",
            Some("max_tokens"),
        ),
        (
            json!({"messages": msgs, "max_completion_tokens": 1u64 << 40}),
            "invalid_value",
            Some("max_completion_tokens"),
        ),
        (
            json!({"messages": msgs, "n": 9}),
            "invalid_value",
            Some("n"),
        ),
        (
            json!({"messages": msgs, "n": 0}),
            "invalid_value",
            Some("n"),
        ),
        (
            json!({"messages": msgs, "top_logprobs": 3}),
            "invalid_value",
            Some("top_logprobs"),
        ),
        (
            json!({"messages": msgs, "logprobs": true, "top_logprobs": 21}),
            "invalid_value",
            Some("top_logprobs"),
        ),
        (
            json!({"messages": msgs, "temperature": 3.5}),
            "invalid_value",
            Some("temperature"),
        ),
        (
            json!({"messages": msgs, "top_p": 0}),
            "invalid_value",
            Some("top_p"),
        ),
        (
            json!({"messages": msgs, "presence_penalty": 2.5}),
            "invalid_value",
            Some("presence_penalty"),
        ),
        (
            json!({"messages": msgs, "frequency_penalty": -3}),
            "invalid_value",
            Some("frequency_penalty"),
        ),
        (
            json!({"messages": msgs, "repetition_penalty": 0}),
            "invalid_value",
            Some("repetition_penalty"),
        ),
        (
            json!({"messages": msgs, "top_k": -2}),
            "invalid_value",
            Some("top_k"),
        ),
        (
            json!({"messages": msgs, "stop": ["a", "b", "c", "d", "e"]}),
            "invalid_value",
            Some("stop"),
        ),
        (json!({"messages": []}), "invalid_value", Some("messages")),
        (
            json!({"messages": [{"role": "wizard", "content": "x"}]}),
            "invalid_value",
            Some("messages[0].role"),
        ),
        (
            json!({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}),
            "unsupported_content",
            Some("messages[0].content"),
        ),
        (
            json!({"messages": msgs, "max_tokens": CONTEXT - 2}),
            "context_length_exceeded",
            Some("max_tokens"),
        ),
        (
            json!({"messages": [{"role": "user", "content": "word ".repeat(1200)}]}),
            "context_length_exceeded",
            Some("messages"),
        ),
        (
            json!({"messages": msgs, "response_format": {"type": "xml"}}),
            "invalid_value",
            Some("response_format.type"),
        ),
        (
            json!({"messages": msgs, "response_format": {"type": "json_schema", "json_schema": {"name": "x"}}}),
            "invalid_value",
            Some("response_format.json_schema.schema"),
        ),
        (
            json!({"messages": msgs, "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "array", "uniqueItems": true}}}}),
            "invalid_schema",
            Some("response_format.json_schema.schema"),
        ),
        (
            json!({"messages": msgs, "tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": {"type": "function", "function": {"name": "g"}}}),
            "invalid_value",
            Some("tool_choice"),
        ),
        (
            json!({"messages": msgs, "tools": [{"type": "function"}], "tool_choice": "required"}),
            "invalid_value",
            Some("tools[0]"),
        ),
        (
            json!({"messages": msgs, "tools": [{"type": "function", "function": {"name": "f"}}, {"type": "function", "function": {"name": "f"}}]}),
            "invalid_value",
            Some("tools[1]"),
        ),
        (
            json!({"messages": msgs, "tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": "always"}),
            "invalid_value",
            Some("tool_choice"),
        ),
        (
            json!({"messages": msgs, "tool_choice": "required"}),
            "invalid_value",
            Some("tools"),
        ),
        (
            json!({"messages": msgs, "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "string", "format": "uri"}}}]}),
            "invalid_schema",
            Some("tools"),
        ),
    ];
    for (body, code, param) in cases {
        let (st, v) = call(s.addr, "POST", chat, Some(body.clone())).await;
        assert_eq!(st, 400, "{body} -> {v}");
        assert_error(&v, code, param);
    }
    let (st, v) = call(
        s.addr,
        "POST",
        "/v1/completions",
        Some(json!({"prompt": ["a", "b"]})),
    )
    .await;
    assert_eq!(st, 400);
    assert_error(&v, "unsupported_value", Some("prompt"));
    let (st, v) = call(
        s.addr,
        "POST",
        "/v1/completions",
        Some(json!({"prompt": ""})),
    )
    .await;
    assert_eq!(st, 400);
    assert_error(&v, "invalid_value", Some("prompt"));
    // Oversized body: refused from its Content-Length, before reading it.
    let big = json!({"messages": [{"role": "user", "content": "x".repeat(40_000)}]});
    let (st, v) = call(s.addr, "POST", chat, Some(big)).await;
    assert_eq!(st, 413);
    assert_error(&v, "body_too_large", None);
    let (st, v) = call(s.addr, "GET", "/v1/nothing", None).await;
    assert_eq!(st, 404);
    assert_error(&v, "unknown_url", None);
    let (st, v) = call(s.addr, "GET", chat, None).await;
    assert_eq!(st, 405);
    assert_error(&v, "method_not_allowed", None);
    // And the server still serves.
    let (st, _) = call(
        s.addr,
        "POST",
        chat,
        Some(json!({"messages": msgs, "max_tokens": 2})),
    )
    .await;
    assert_eq!(st, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_each_equal_running_alone() {
    // 5 requests on 3 slots: some wait, and newcomers prefill while others decode.
    let s = open_server(3).await;
    let prompts = [
        "the cat sat",
        "hello world! hello",
        "what is the capital",
        "once upon a time there was a",
        "a",
    ];
    let mut tasks = Vec::new();
    for (i, p) in prompts.iter().enumerate() {
        let max = 8 + 3 * i;
        tasks.push((p.to_string(), max, spawn_completion(s.addr, p, max)));
    }
    let mut nonempty = 0;
    for (p, max, t) in tasks {
        let (status, v) = t.await.unwrap();
        nonempty += usize::from(
            v["choices"][0]["text"]
                .as_str()
                .is_some_and(|t| !t.is_empty()),
        );
        assert_eq!(status, 200, "{v}");
        let (text, n) = alone(&p, max);
        assert_eq!(v["choices"][0]["text"], text.as_str(), "prompt {p:?}");
        assert_eq!(v["usage"]["completion_tokens"], n, "prompt {p:?}");
    }
    assert!(
        nonempty >= 3,
        "the tiny model should produce text for most prompts"
    );
    wait_until("all slots free", || s.batcher().running() == 0).await;
    let (_, m) = call(s.addr, "GET", "/metrics", None).await;
    let m = m.as_str().unwrap().to_owned();
    assert!(
        m.contains("sandgraph_infer_num_requests_running{model_name=\"model\"} 0"),
        "{m}"
    );
    assert!(
        m.contains("sandgraph_infer_time_to_first_token_seconds_count{model_name=\"model\"} 5"),
        "{m}"
    );
    assert!(
        m.contains("sandgraph_infer_e2e_request_latency_seconds_count{model_name=\"model\"} 5"),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_answers_429_and_the_queue_drains() {
    let s = start(
        1,
        ServerConfig {
            max_waiting: 1,
            ..Default::default()
        },
        Gate::closed(),
    )
    .await;
    let req = || Some(json!({"prompt": "the cat sat", "max_tokens": 4, "temperature": 0}));
    let addr = s.addr;
    let first = tokio::spawn(async move { call(addr, "POST", "/v1/completions", req()).await });
    wait_until("the first request to hold the slot", || {
        s.batcher().running() == 1
    })
    .await;
    let second = tokio::spawn(async move { call(addr, "POST", "/v1/completions", req()).await });
    wait_until("the second request to wait", || s.batcher().waiting() == 1).await;
    let body = req().map(|b| b.to_string().into_bytes());
    let (resp, _conn) = send(addr, "POST", "/v1/completions", body).await;
    assert_eq!(resp.status(), 429);
    // Clients (the OpenAI SDKs among them) wait this long before their retry.
    assert_eq!(resp.headers()["retry-after"], "1");
    let v: Value =
        serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(v["error"]["code"], "queue_full");
    assert_eq!(v["error"]["type"], "server_error");
    s.gate.open();
    let (a, b) = (first.await.unwrap(), second.await.unwrap());
    assert_eq!(a.0, 200);
    assert_eq!(b.0, 200);
    // The slot was reused: same prompt, same greedy output.
    assert_eq!(a.1["choices"][0]["text"], b.1["choices"][0]["text"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disconnected_stream_frees_its_slot() {
    let prompt = "once upon a time there was a";
    let (_, n) = alone(prompt, 60);
    assert!(
        n >= 30,
        "precondition: the tiny model keeps generating for this prompt ({n})"
    );
    let s = start(1, ServerConfig::default(), Gate::closed()).await;
    let (body, first, conn) = stream_first_chunk(&s, prompt, 60).await;
    assert!(first.starts_with(b"data: "));
    drop(body);
    conn.abort();
    // Step the engine one forward at a time until it notices; it must stop long before 60.
    step_until(&s, "the engine to notice the disconnect", || {
        s.batcher().cancelled() > 0
    })
    .await;
    assert!(s.gate.forwards() < 30, "ran {} forwards", s.gate.forwards());
    wait_until("the slot to be free", || s.batcher().running() == 0).await;
    s.gate.open();
    let (st, v) = call(
        s.addr,
        "POST",
        "/v1/completions",
        Some(json!({"prompt": prompt, "max_tokens": 5, "temperature": 0})),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["choices"][0]["text"], alone(prompt, 5).0.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn structured_output_and_forced_tool_calls_parse_and_validate_whatever_the_stop_sequences() {
    let s = open_server(2).await;
    // Each of these occurs in every document below; stop sequences end free text only, never
    // a document the grammar governs.
    let stops = |seed: u64| {
        if seed % 2 == 1 {
            json!(["\"", ":", ",", "}"])
        } else {
            json!(null)
        }
    };
    let schema = json!({
        "type": "object",
        "properties": {"ok": {"type": "boolean"}, "color": {"enum": ["red", "green", "blue"]}},
        "required": ["ok", "color"],
        "additionalProperties": false,
    });
    for seed in 0..4 {
        let (st, v) = call(
            s.addr,
            "POST",
            "/v1/chat/completions",
            Some(json!({
                "messages": [{"role": "user", "content": "pick a color"}],
                "response_format": {"type": "json_schema", "json_schema": {"name": "c", "schema": schema}},
                "temperature": 1.0, "seed": seed, "max_tokens": 120, "stop": stops(seed),
            })),
        )
        .await;
        assert_eq!(st, 200, "{v}");
        assert_eq!(v["choices"][0]["finish_reason"], "stop", "{v}");
        let text = v["choices"][0]["message"]["content"].as_str().unwrap();
        let doc: Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("{text:?}: {e}"));
        assert!(doc["ok"].is_boolean(), "{doc}");
        assert!(
            ["red", "green", "blue"].contains(&doc["color"].as_str().unwrap()),
            "{doc}"
        );
        assert_eq!(doc.as_object().unwrap().len(), 2, "{doc}");
    }
    let tools = json!([
        {"type": "function", "function": {"name": "get_weather", "parameters": {
            "type": "object", "properties": {"unit": {"enum": ["c", "f"]}}, "required": ["unit"],
            "additionalProperties": false}}},
        {"type": "function", "function": {"name": "noop", "parameters": {
            "type": "object", "properties": {}, "additionalProperties": false}}},
    ]);
    let (st, v) = call(
        s.addr,
        "POST",
        "/v1/chat/completions",
        Some(json!({
            "messages": [{"role": "user", "content": "weather?"}],
            "tools": tools,
            "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
            "temperature": 0, "max_tokens": 120, "stop": stops(1),
        })),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["choices"][0]["finish_reason"], "tool_calls", "{v}");
    let call0 = &v["choices"][0]["message"]["tool_calls"][0];
    assert!(v["choices"][0]["message"]["content"].is_null());
    assert_eq!(call0["type"], "function");
    assert_eq!(call0["function"]["name"], "get_weather");
    let args: Value =
        serde_json::from_str(call0["function"]["arguments"].as_str().unwrap()).unwrap();
    assert!(
        ["c", "f"].contains(&args["unit"].as_str().unwrap()),
        "{args}"
    );
}

/// A backend whose forward panics: the engine thread dies mid-request.
struct PanickingBackend(CpuBackend);

impl Backend for PanickingBackend {
    fn name(&self) -> &'static str {
        "panicking"
    }
    fn max_slots(&self) -> usize {
        self.0.max_slots()
    }
    fn max_context(&self) -> usize {
        self.0.max_context()
    }
    fn forward(&mut self, _: &[SeqChunk<'_>]) -> Result<(), BackendError> {
        panic!("injected backend panic");
    }
    fn logits(&mut self) -> Result<Vec<Vec<f32>>, BackendError> {
        self.0.logits()
    }
    fn argmax(&mut self) -> Result<Vec<u32>, BackendError> {
        self.0.argmax()
    }
    fn top_k(&mut self, k: usize) -> Result<Vec<Vec<(u32, f32)>>, BackendError> {
        self.0.top_k(k)
    }
    fn copy_prefix(&mut self, s: usize, d: usize, f: usize, t: usize) -> Result<(), BackendError> {
        self.0.copy_prefix(s, d, f, t)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_engine_fails_requests_instead_of_hanging() {
    let (model, tok) = tiny();
    let state = AppState::new(ServerConfig::default());
    let tok = Arc::new(tok);
    let backend = PanickingBackend(CpuBackend::with_threads(&model, 1, CONTEXT, 1).unwrap());
    state.set_ready(Ready::new(
        Batcher::start(Box::new(backend), tok.clone(), 4, state.metrics.clone()),
        tok,
        ChatTemplate::detect(None).unwrap(),
        "tiny".into(),
    ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(serve(listener, state.clone()));
    let body = || Some(json!({"prompt": "the cat sat", "max_tokens": 4}));
    let (st, v) = call(addr, "POST", "/v1/completions", body()).await;
    assert_eq!(st, 500, "{v}");
    assert_eq!(v["error"]["code"], "engine_error");
    let r = state.ready().unwrap();
    wait_until("the engine to be marked stopped", || r.batcher.is_stopped()).await;
    let (st, v) = call(addr, "POST", "/v1/completions", body()).await;
    assert_eq!(st, 503, "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("panicked"),
        "{v}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_body_past_the_limit_is_refused_while_reading() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s = start(
        1,
        ServerConfig {
            max_body_bytes: 1024,
            ..Default::default()
        },
        Gate::opened(),
    )
    .await;
    let mut tcp = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    // No Content-Length: the limit must trip while the chunks stream in, and the server
    // answers without waiting for a body end that never comes.
    tcp.write_all(
        b"POST /v1/completions HTTP/1.1\r\nhost: 127.0.0.1\r\ntransfer-encoding: chunked\r\n\r\n",
    )
    .await
    .unwrap();
    let chunk = format!("800\r\n{}\r\n", "x".repeat(0x800));
    tcp.write_all(chunk.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(30), tcp.read(&mut buf))
        .await
        .expect("the server answered before the body ended")
        .unwrap();
    let head = String::from_utf8_lossy(&buf[..n]);
    assert!(head.starts_with("HTTP/1.1 413"), "{head}");
    assert!(head.contains("body_too_large"), "{head}");
}

/// The chunks of a streamed chat completion, parsed (the final `[DONE]` checked and dropped).
async fn stream_chat(addr: SocketAddr, body: Value) -> Vec<Value> {
    let (resp, _task) = send(
        addr,
        "POST",
        "/v1/chat/completions",
        Some(body.to_string().into_bytes()),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let mut payloads = sse_payloads(std::str::from_utf8(&bytes).unwrap());
    assert_eq!(payloads.pop().as_deref(), Some("[DONE]"));
    payloads
        .iter()
        .map(|p| serde_json::from_str(p).unwrap())
        .collect()
}

/// Reassembles streamed tool-call deltas as a client does: (id, name, arguments).
fn streamed_call(chunks: &[Value]) -> (String, String, String) {
    let (mut id, mut name, mut args) = (String::new(), String::new(), String::new());
    for c in chunks {
        let Some(calls) = c["choices"][0]["delta"]["tool_calls"].as_array() else {
            continue;
        };
        for d in calls {
            assert_eq!(d["index"], 0, "{c}");
            if let Some(i) = d["id"].as_str() {
                assert!(id.is_empty(), "the id is sent once: {c}");
                assert_eq!(d["type"], "function", "{c}");
                id = i.to_owned();
                name.push_str(d["function"]["name"].as_str().unwrap());
            }
            args.push_str(d["function"]["arguments"].as_str().unwrap_or(""));
        }
    }
    (id, name, args)
}

fn weather_tools() -> Value {
    json!([
        {"type": "function", "function": {"name": "get_weather", "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 6}, "unit": {"enum": ["c", "f"]}},
            "required": ["city", "unit"], "additionalProperties": false}}},
        {"type": "function", "function": {"name": "noop", "parameters": {
            "type": "object", "properties": {}, "additionalProperties": false}}},
    ])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_forced_tool_call_has_openai_deltas_equal_to_the_whole_call() {
    let s = open_server(2).await;
    for choice in [
        json!("required"),
        json!({"type": "function", "function": {"name": "get_weather"}}),
    ] {
        let body = json!({
            "messages": [{"role": "user", "content": "weather in Oslo?"}],
            "tools": weather_tools(), "tool_choice": choice,
            "temperature": 0, "max_tokens": 70,
        });
        let (st, whole) = call(s.addr, "POST", "/v1/chat/completions", Some(body.clone())).await;
        assert_eq!(st, 200, "{whole}");
        assert_eq!(
            whole["choices"][0]["finish_reason"], "tool_calls",
            "{whole}"
        );
        let want = &whole["choices"][0]["message"]["tool_calls"][0]["function"];
        let mut streamed = body.clone();
        streamed["stream"] = json!(true);
        let chunks = stream_chat(s.addr, streamed).await;
        let (id, name, args) = streamed_call(&chunks);
        assert!(id.starts_with("call_"), "{chunks:?}");
        assert_eq!(name, want["name"].as_str().unwrap());
        assert_eq!(args, want["arguments"].as_str().unwrap());
        let parsed: Value = serde_json::from_str(&args).unwrap();
        assert!(parsed.is_object(), "{args}");
        // The id/name delta comes before any argument text; no content is streamed.
        let first_call = chunks
            .iter()
            .position(|c| c["choices"][0]["delta"]["tool_calls"].is_array())
            .unwrap();
        assert!(chunks[first_call]["choices"][0]["delta"]["tool_calls"][0]["id"].is_string());
        assert!(chunks.iter().all(|c| {
            c["choices"][0]["delta"]["content"]
                .as_str()
                .unwrap_or("")
                .is_empty()
        }));
        let finishes: Vec<&Value> = chunks
            .iter()
            .map(|c| &c["choices"][0]["finish_reason"])
            .filter(|f| !f.is_null())
            .collect();
        assert_eq!(finishes, [&json!("tool_calls")]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tool_choice_auto_lets_the_first_byte_choose_text_or_a_call() {
    let s = open_server(1).await;
    let tok = &s.state.ready().unwrap().tok;
    let brace = tok.encode("{", false);
    let letter = tok.encode("O", false);
    assert_eq!((brace.len(), letter.len()), (1, 1), "single-byte tokens");
    let body = json!({
        "messages": [{"role": "user", "content": "weather in Oslo?"}],
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {
            "type": "object", "properties": {"u": {"enum": ["c", "f"]}}, "required": ["u"],
            "additionalProperties": false}}}],
        "temperature": 0, "max_tokens": 40,
    });
    // The model "wants" `{`: the output is a call, parsed into tool_calls.
    *s.gate.bias.lock().unwrap() = vec![(brace[0], 1000.0)];
    let (st, v) = call(s.addr, "POST", "/v1/chat/completions", Some(body.clone())).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["choices"][0]["finish_reason"], "tool_calls", "{v}");
    let msg = &v["choices"][0]["message"];
    assert!(msg["content"].is_null(), "{v}");
    let f = &msg["tool_calls"][0]["function"];
    assert_eq!(f["name"], "f", "{v}");
    let args: Value = serde_json::from_str(f["arguments"].as_str().unwrap()).unwrap();
    assert!(["c", "f"].contains(&args["u"].as_str().unwrap()), "{v}");
    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    let chunks = stream_chat(s.addr, streamed.clone()).await;
    let (_, name, sargs) = streamed_call(&chunks);
    assert_eq!(name, f["name"].as_str().unwrap());
    assert_eq!(sargs, f["arguments"].as_str().unwrap());
    // The model "wants" `O`: the output is free text, never a call.
    *s.gate.bias.lock().unwrap() = vec![(letter[0], 1000.0)];
    let (st, v) = call(s.addr, "POST", "/v1/chat/completions", Some(body)).await;
    assert_eq!(st, 200, "{v}");
    let msg = &v["choices"][0]["message"];
    assert!(msg["tool_calls"].is_null(), "{v}");
    let text = msg["content"].as_str().unwrap();
    assert!(text.starts_with('O'), "{v}");
    assert_eq!(v["choices"][0]["finish_reason"], "length", "{v}");
    let chunks = stream_chat(s.addr, streamed).await;
    let content: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(content, text);
    assert!(
        chunks
            .iter()
            .all(|c| c["choices"][0]["delta"]["tool_calls"].is_null())
    );
}

/// The value of one sample of the /metrics text (labelled only with the model's name).
async fn metric(addr: SocketAddr, name: &str) -> f64 {
    let (st, v) = call(addr, "GET", "/metrics", None).await;
    assert_eq!(st, 200);
    let text = v.as_str().unwrap();
    text.lines()
        .find_map(|l| {
            let rest = l.strip_prefix(name)?;
            // A name given with its labels is matched as is.
            let rest = if name.contains('{') {
                rest
            } else {
                rest.strip_prefix("{model_name=\"model\"}")?
            };
            rest.strip_prefix(' ')
        })
        .unwrap_or_else(|| panic!("{name} missing from\n{text}"))
        .parse()
        .unwrap()
}

/// Steps a gated engine one forward at a time until `done` holds (the engine noticed).
async fn step_until(s: &Server, what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        let before = s.gate.forwards();
        s.gate.allow(1);
        wait_until("a forward or the condition", || {
            s.gate.forwards() > before || done()
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latencies_count_from_arrival_and_cancelled_prompts_count() {
    let prompt_a = "once upon a time there was a";
    let prompt_b = "the cat sat";
    let s = start(1, ServerConfig::default(), Gate::closed()).await;
    let tok = s.state.ready().unwrap().tok.clone();
    let (stream, _, conn) = stream_first_chunk(&s, prompt_a, 60).await;
    // B queues behind A for several engine steps.
    let b = spawn_completion(s.addr, prompt_b, 3);
    wait_until("B to wait", || s.batcher().waiting() == 1).await;
    for _ in 0..5 {
        let before = s.gate.forwards();
        s.gate.allow(1);
        wait_until("a forward", || s.gate.forwards() > before).await;
    }
    // A's client goes away: A is cancelled after its prompt was prefilled.
    drop(stream);
    conn.abort();
    step_until(&s, "A's cancellation", || s.batcher().cancelled() == 1).await;
    s.gate.open();
    let (st, v) = b.await.unwrap();
    assert_eq!(st, 200, "{v}");
    let prompt_tokens = tok.encode(prompt_a, false).len() + tok.encode(prompt_b, false).len();
    assert_eq!(
        metric(s.addr, "sandgraph_infer_prompt_tokens_total").await,
        prompt_tokens as f64
    );
    let queue = metric(s.addr, "sandgraph_infer_request_queue_time_seconds_sum").await;
    let ttft = metric(s.addr, "sandgraph_infer_time_to_first_token_seconds_sum").await;
    let e2e = metric(s.addr, "sandgraph_infer_e2e_request_latency_seconds_sum").await;
    assert_eq!(
        metric(s.addr, "sandgraph_infer_time_to_first_token_seconds_count").await,
        2.0
    );
    // Each request's TTFT includes its queue time, so the sums keep that order too (B waited
    // through A's steps before its first token).
    assert!(ttft >= queue, "ttft {ttft} < queue {queue}");
    // Both ended: A aborted, B by its length or a stop; each has an end-to-end latency (an
    // aborted request's too, as vLLM records it).
    assert_eq!(
        metric(s.addr, "sandgraph_infer_e2e_request_latency_seconds_count").await,
        2.0
    );
    assert!(e2e > 0.0);
    assert_eq!(
        metric(
            s.addr,
            "sandgraph_infer_request_success_total{model_name=\"model\",finished_reason=\"abort\"}"
        )
        .await,
        1.0
    );
    let (_, text) = call(s.addr, "GET", "/metrics", None).await;
    let text = text.as_str().unwrap();
    let b_ended = ["stop", "length"]
        .iter()
        .filter(|r| text.contains(&format!("finished_reason=\"{r}\"}} 1")))
        .count();
    assert_eq!(b_ended, 1, "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completions_take_token_id_prompts_and_name_a_bad_id() {
    let s = open_server(1).await;
    let tok = s.state.ready().unwrap().tok.clone();
    let ids = tok.encode("the cat sat", false);
    let text = |v: &Value| v["choices"][0]["text"].as_str().unwrap().to_owned();
    let (st, by_text) = call(
        s.addr,
        "POST",
        "/v1/completions",
        Some(json!({"prompt": "the cat sat", "max_tokens": 8, "temperature": 0})),
    )
    .await;
    assert_eq!(st, 200, "{by_text}");
    for prompt in [json!(ids), json!([ids])] {
        let (st, v) = call(
            s.addr,
            "POST",
            "/v1/completions",
            Some(json!({"prompt": prompt, "max_tokens": 8, "temperature": 0})),
        )
        .await;
        assert_eq!(st, 200, "{v}");
        assert_eq!(text(&v), text(&by_text));
        assert_eq!(v["usage"]["prompt_tokens"], ids.len());
    }
    let vocab = tok.vocab_size();
    for (prompt, code, needle) in [
        (
            json!([1, vocab]),
            "invalid_token_id",
            format!("prompt[1] = {vocab}"),
        ),
        (
            json!([[5, -1]]),
            "invalid_token_id",
            "prompt[0][1] = -1".into(),
        ),
        (json!([[1], [2]]), "unsupported_value", "2 prompts".into()),
        (json!([]), "invalid_value", "empty".into()),
    ] {
        let (st, v) = call(
            s.addr,
            "POST",
            "/v1/completions",
            Some(json!({"prompt": prompt, "max_tokens": 4})),
        )
        .await;
        assert_eq!(st, 400, "{prompt} -> {v}");
        assert_error(&v, code, Some("prompt"));
        let msg = v["error"]["message"].as_str().unwrap();
        assert!(msg.contains(&needle), "{msg}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disconnected_non_streamed_request_frees_its_slot() {
    let prompt = "once upon a time there was a";
    let (_, n) = alone(prompt, 60);
    assert!(
        n >= 30,
        "precondition: the tiny model keeps generating ({n})"
    );
    let s = start(1, ServerConfig::default(), Gate::closed()).await;
    let stream = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    let conn = tokio::spawn(async move {
        let _ = conn.await;
    });
    let body = json!({"prompt": prompt, "max_tokens": 60, "temperature": 0});
    let req = Request::builder()
        .method("POST")
        .uri("/v1/completions")
        .header("host", "127.0.0.1")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    let waiter = tokio::spawn(async move { sender.send_request(req).await });
    // Generation is under way: prefill and a few decode steps.
    wait_until("the request to run", || s.batcher().running() == 1).await;
    for _ in 0..3 {
        let before = s.gate.forwards();
        s.gate.allow(1);
        wait_until("a forward", || s.gate.forwards() > before).await;
    }
    waiter.abort();
    conn.abort();
    step_until(&s, "the cancellation", || s.batcher().cancelled() == 1).await;
    assert!(s.gate.forwards() < 30, "ran {} forwards", s.gate.forwards());
    wait_until("the slot to be free", || s.batcher().running() == 0).await;
    assert!(metric(s.addr, "sandgraph_infer_generation_tokens_total").await < 30.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_prompt_is_chunked_while_a_running_stream_gets_a_token_every_step() {
    const BUDGET: usize = 48;
    let s = start_with_budget(2, ServerConfig::default(), Gate::closed(), BUDGET).await;
    let tok = s.state.ready().unwrap().tok.clone();
    let prompt_a = "once upon a time there was a";
    let (alone_a, n) = alone(prompt_a, 40);
    assert!(
        n >= 30,
        "precondition: the tiny model keeps generating ({n})"
    );
    let (stream, _, _conn) = stream_first_chunk(&s, prompt_a, 40).await;
    let long = "the quick brown fox jumps over the lazy dog and ".repeat(5);
    let long_len = tok.encode(&long, false).len();
    assert!(
        long_len > 3 * BUDGET,
        "the long prompt spans several steps ({long_len})"
    );
    let b = spawn_completion(s.addr, &long, 2);
    // B waits, or was admitted already if it arrived before the engine blocked in forward 3.
    wait_until("B to arrive", || {
        s.batcher().waiting() == 1 || s.batcher().running() == 2
    })
    .await;
    let start = s.gate.forwards();
    s.gate.open();
    let rest = stream.collect().await.unwrap().to_bytes();
    let (st, v) = b.await.unwrap();
    assert_eq!(st, 200, "{v}");
    let batches = s.gate.batches.lock().unwrap().clone();
    let a_slot = batches[0][0].0;
    let b_steps: Vec<&Vec<(usize, usize, usize)>> = batches[start..]
        .iter()
        .filter(|b| b.iter().any(|c| c.0 != a_slot && c.2 > 1))
        .collect();
    assert!(
        b_steps.len() >= long_len / BUDGET,
        "B's prompt was fed in {} steps",
        b_steps.len()
    );
    let mut last_a = None;
    for b in &b_steps {
        assert!(b.iter().map(|c| c.2).sum::<usize>() <= BUDGET, "{b:?}");
        // A decodes one token in every step that also feeds B's prompt.
        let a = b
            .iter()
            .find(|c| c.0 == a_slot)
            .unwrap_or_else(|| panic!("{b:?}"));
        assert_eq!(a.2, 1, "{b:?}");
        if let Some(prev) = last_a {
            assert_eq!(a.1, prev + 1, "A advanced one position per step: {b:?}");
        }
        last_a = Some(a.1);
    }
    // A's output is unchanged by the interleaving.
    let mut text = String::new();
    for p in sse_payloads(std::str::from_utf8(&rest).unwrap()) {
        if p != "[DONE]" {
            let v: Value = serde_json::from_str(&p).unwrap();
            text.push_str(v["choices"][0]["text"].as_str().unwrap_or(""));
        }
    }
    assert!(alone_a.ends_with(&text), "{alone_a:?} vs {text:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_prompt_prefix_is_reused_from_the_slot_cache() {
    let s = open_server(1).await;
    let tok = s.state.ready().unwrap().tok.clone();
    let first = "once upon a time there was a cat";
    let second = "once upon a time there was a dog";
    let common = tok
        .encode(first, false)
        .iter()
        .zip(&tok.encode(second, false))
        .take_while(|(a, b)| a == b)
        .count();
    assert!(
        common >= 5,
        "precondition: the prompts share a prefix ({common})"
    );
    for p in [first, second] {
        let (st, v) = call(
            s.addr,
            "POST",
            "/v1/completions",
            Some(json!({"prompt": p, "max_tokens": 6, "temperature": 0})),
        )
        .await;
        assert_eq!(st, 200, "{v}");
        // Reusing the cached prefix changes nothing in the output.
        assert_eq!(v["choices"][0]["text"], alone(p, 6).0.as_str(), "{p}");
    }
    let batches = s.gate.batches.lock().unwrap().clone();
    // The second request's first forward is the first that does not continue the previous one.
    let second_start = 1 + batches
        .windows(2)
        .position(|w| w[1][0].1 != w[0][0].1 + w[0][0].2)
        .expect("the second prompt's prefill");
    assert_eq!(batches[second_start][0].1, common, "{batches:?}");
    assert_eq!(
        metric(s.addr, "sandgraph_infer_prefix_cache_hits_total").await,
        common as f64
    );
}

/// Requests arriving together with one long prompt prefix compute it once: the oldest prefills
/// it, the others wait for each piece and copy it from that slot's KV cache, and every output is
/// still what the request yields alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_arriving_together_prefill_their_shared_prefix_once() {
    const BUDGET: usize = 24;
    let s = start_with_budget(5, ServerConfig::default(), Gate::closed(), BUDGET).await;
    let tok = s.state.ready().unwrap().tok.clone();
    // A blocker holds the engine inside its first forward while the others queue up, so all
    // of them are admitted in the same engine step.
    let blocker = spawn_completion(s.addr, "hello world", 1);
    wait_until("the blocker to run", || s.batcher().running() == 1).await;
    let shared = "the quick brown fox jumps over the lazy dog and ".repeat(6);
    let prompts: Vec<String> = ["cat", "dog", "owl", "cat"]
        .iter()
        .map(|end| format!("{shared}the {end} sat"))
        .collect();
    let encoded: Vec<Vec<u32>> = prompts.iter().map(|p| tok.encode(p, false)).collect();
    let common = encoded[0]
        .iter()
        .zip(&encoded[1])
        .take_while(|(a, b)| a == b)
        .count();
    assert!(
        common > 2 * BUDGET,
        "precondition: the shared prefix spans several steps ({common} tokens)"
    );
    let tasks: Vec<_> = prompts
        .iter()
        .map(|p| spawn_completion(s.addr, p, 6))
        .collect();
    wait_until("all four to queue", || s.batcher().waiting() == 4).await;
    let start = s.gate.forwards();
    s.gate.open();
    assert_eq!(blocker.await.unwrap().0, 200);
    for (p, t) in prompts.iter().zip(tasks) {
        let (st, v) = t.await.unwrap();
        assert_eq!(st, 200, "{v}");
        assert_eq!(v["choices"][0]["text"], alone(p, 6).0.as_str(), "{p}");
    }
    // Positions of the shared prefix were computed exactly once, in whatever slot.
    let batches = s.gate.batches.lock().unwrap().clone();
    let blocker_slot = batches[0][0].0;
    let computed: usize = batches[start..]
        .iter()
        .flatten()
        .filter(|c| c.0 != blocker_slot)
        .map(|&(_, at, n)| (at + n).min(common).saturating_sub(at))
        .sum();
    assert_eq!(computed, common, "{batches:?}");
    // The three others got it copied, piece by piece as it was computed: all of the prefix
    // each, and the duplicate prompt all of its prompt but the token fed for its first pick.
    let copies = s.gate.copies.lock().unwrap().clone();
    let mut per_slot = std::collections::BTreeMap::<usize, usize>::new();
    for &(_, dst, from, to) in &copies {
        *per_slot.entry(dst).or_default() += to - from;
    }
    let mut got: Vec<usize> = per_slot.values().copied().collect();
    got.sort_unstable();
    assert_eq!(
        got,
        vec![common, common, encoded[3].len() - 1],
        "{copies:?}"
    );
    assert!(copies.len() > 3, "copied as computed: {copies:?}");
    let total = (2 * common + encoded[3].len() - 1) as u64;
    assert_eq!(s.batcher().shared_prefix_tokens(), total);
    assert_eq!(
        metric(s.addr, "sandgraph_infer_prefix_cache_hits_total").await,
        total as f64
    );
}

/// A newcomer sharing only a few tokens with a slot's long cached prompt takes an empty slot
/// instead of overwriting it, so a later request with that long prefix still finds it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_newcomer_does_not_evict_a_long_cached_prefix() {
    let s = open_server(2).await;
    let tok = s.state.ready().unwrap().tok.clone();
    let shared = "the quick brown fox jumps over the lazy dog and ".repeat(4);
    let first = format!("{shared}the cat sat");
    let short = "the quick red hen";
    let last = format!("{shared}the owl sat");
    let enc = |p: &str| tok.encode(p, false);
    let common = |a: &[u32], b: &[u32]| a.iter().zip(b).take_while(|(x, y)| x == y).count();
    let long_common = common(&enc(&first), &enc(&last));
    let short_common = common(&enc(&first), &enc(short));
    assert!(
        short_common >= 2 && long_common > 100,
        "precondition: {short_common} and {long_common} shared tokens"
    );
    for p in [first.as_str(), short, last.as_str()] {
        let (st, v) = call(
            s.addr,
            "POST",
            "/v1/completions",
            Some(json!({"prompt": p, "max_tokens": 4, "temperature": 0})),
        )
        .await;
        assert_eq!(st, 200, "{v}");
        assert_eq!(v["choices"][0]["text"], alone(p, 4).0.as_str(), "{p}");
    }
    // The short prompt went to the empty slot; the last one reused the long prefix in place.
    let batches = s.gate.batches.lock().unwrap().clone();
    let first_slot = batches[0][0].0;
    let short_start = batches
        .iter()
        .position(|b| b[0].0 != first_slot)
        .expect("the short prompt ran in the other slot");
    let last_start = short_start
        + batches[short_start..]
            .iter()
            .position(|b| b[0].0 == first_slot)
            .expect("the last prompt ran in the first slot");
    assert_eq!(batches[last_start][0].1, long_common, "{batches:?}");
    // The short one copied the few tokens it shares from there.
    let other = batches[short_start][0].0;
    assert_eq!(
        *s.gate.copies.lock().unwrap(),
        vec![(first_slot, other, 0, short_common)]
    );
    assert_eq!(
        metric(s.addr, "sandgraph_infer_prefix_cache_hits_total").await,
        (long_common + short_common) as f64
    );
}

/// Found by schemathesis (ST204): a 405 must name the supported methods in `Allow`
/// (RFC 9110 §15.5.6), on every known path, with the OpenAI error object as its body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn method_not_allowed_names_the_allowed_methods() {
    let s = open_server(1).await;
    for (method, path, allow) in [
        ("TRACE", "/health", "GET"),
        ("POST", "/metrics", "GET"),
        ("DELETE", "/v1/models", "GET"),
        ("GET", "/v1/chat/completions", "POST"),
        ("PUT", "/v1/completions", "POST"),
    ] {
        let (resp, _task) = send(s.addr, method, path, None).await;
        assert_eq!(resp.status(), 405, "{method} {path}");
        assert_eq!(
            resp.headers().get("allow").and_then(|v| v.to_str().ok()),
            Some(allow),
            "{method} {path}"
        );
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_error(&v, "method_not_allowed", None);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logit_bias_is_honoured_and_openai_bookkeeping_fields_are_accepted() {
    let (_, tok) = tiny();
    // A plain token (not a control token, not end of sequence) that greedy decoding would not
    // pick on its own every time: a +100 bias must make it win every step.
    let forced = (0..tok.vocab_size() as u32)
        .rev()
        .find(|&t| !tok.is_control(t) && !tok.token_bytes(t).is_empty())
        .unwrap();
    let s = open_server(1).await;
    let body = |bias: Value| {
        json!({
            "messages": [{"role": "user", "content": "hello"}],
            "max_tokens": 6, "temperature": 0,
            "logit_bias": bias,
            "store": false, "metadata": {"run": "x"}, "service_tier": "auto",
            "prompt_cache_key": "k", "safety_identifier": "s", "user": "u",
        })
    };
    let (st, v) = call(
        s.addr,
        "POST",
        "/v1/chat/completions",
        Some(body(json!({ forced.to_string(): 100 }))),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    let want = String::from_utf8_lossy(&tok.token_bytes(forced).repeat(6)).into_owned();
    assert_eq!(v["choices"][0]["message"]["content"], want, "{v}");
    let (st, plain) = call(
        s.addr,
        "POST",
        "/v1/chat/completions",
        Some(body(json!({}))),
    )
    .await;
    assert_eq!(st, 200, "{plain}");
    assert_ne!(plain["choices"][0]["message"]["content"], want, "{plain}");
    // The same on the legacy completions endpoint.
    let (st, v) = call(
        s.addr,
        "POST",
        "/v1/completions",
        Some(json!({"prompt": "hello", "max_tokens": 3, "temperature": 0,
            "logit_bias": { forced.to_string(): 100 }})),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    let want3 = String::from_utf8_lossy(&tok.token_bytes(forced).repeat(3)).into_owned();
    assert_eq!(v["choices"][0]["text"], want3, "{v}");
    // Bad biases are named.
    for bias in [
        json!({"abc": 1}),
        json!({ tok.vocab_size().to_string(): 1 }),
        json!({"1": 101}),
    ] {
        let (st, v) = call(s.addr, "POST", "/v1/chat/completions", Some(body(bias))).await;
        assert_eq!(st, 400, "{v}");
        assert_error(&v, "invalid_value", Some("logit_bias"));
    }
}

/// One GET with an optional `Authorization` header: (status, WWW-Authenticate, body).
async fn get_with_auth(addr: SocketAddr, path: &str, auth: Option<&str>) -> (u16, String, Value) {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut req = Request::builder()
        .method("GET")
        .uri(path)
        .header("host", "127.0.0.1");
    if let Some(a) = auth {
        req = req.header("authorization", a);
    }
    let resp = sender
        .send_request(req.body(Full::new(Bytes::new())).unwrap())
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let www = resp
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let v = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    (status, www, v)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_key_guards_v1_and_metrics_carry_the_model_name() {
    let s = start(
        1,
        ServerConfig {
            api_key: Some("sk-test".into()),
            model_name: "tiny-model".into(),
            ..Default::default()
        },
        Gate::opened(),
    )
    .await;
    for auth in [
        None,
        Some("Bearer wrong"),
        Some("sk-test"),
        Some("Basic sk-test"),
    ] {
        let (st, www, v) = get_with_auth(s.addr, "/v1/models", auth).await;
        assert_eq!(st, 401, "{auth:?}: {v}");
        assert_eq!(www, "Bearer");
        assert_eq!(v["error"]["code"], "invalid_api_key", "{v}");
        assert_eq!(v["error"]["type"], "invalid_request_error", "{v}");
    }
    let (st, _, v) = get_with_auth(s.addr, "/v1/models", Some("Bearer sk-test")).await;
    assert_eq!(st, 200, "{v}");
    // Probes and scrapers need no key.
    let (st, _, _) = get_with_auth(s.addr, "/health", None).await;
    assert_eq!(st, 200);
    let (st, _, v) = get_with_auth(s.addr, "/metrics", None).await;
    assert_eq!(st, 200);
    let text = v.as_str().unwrap();
    let series: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("sandgraph_infer_"))
        .collect();
    assert!(!series.is_empty(), "{text}");
    for l in series {
        assert!(l.contains("model_name=\"tiny-model\""), "{l}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_schema_properties_come_out_in_the_order_the_schema_lists_them() {
    let s = open_server(1).await;
    // Written as raw text: `reasoning` before `answer`, the reverse of alphabetical order.
    let body = br#"{"messages":[{"role":"user","content":"why?"}],"max_tokens":200,"temperature":0,
        "response_format":{"type":"json_schema","json_schema":{"name":"r","schema":{"type":"object",
        "properties":{"reasoning":{"type":"string","maxLength":8},"answer":{"type":"object",
        "properties":{"zeta":{"type":"boolean"},"alpha":{"type":"boolean"}},"required":["zeta","alpha"]}},
        "required":["reasoning","answer"]}}}}"#;
    let (st, v) = call_raw(s.addr, "/v1/chat/completions", body.to_vec()).await;
    assert_eq!(st, 200, "{v}");
    let text = v["choices"][0]["message"]["content"].as_str().unwrap();
    let r = text.find("\"reasoning\"").expect(text);
    let a = text.find("\"answer\"").expect(text);
    assert!(r < a, "{text}");
    let z = text.find("\"zeta\"").expect(text);
    let al = text.find("\"alpha\"").expect(text);
    assert!(z < al, "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tool_arguments_come_out_in_the_order_the_parameters_list_them() {
    let s = open_server(1).await;
    let body = br#"{"messages":[{"role":"user","content":"go"}],"max_tokens":200,"temperature":0,
        "tools":[{"type":"function","function":{"name":"act","parameters":{"type":"object",
        "properties":{"why":{"type":"string","maxLength":6},"action":{"type":"boolean"}},
        "required":["why","action"]}}}],
        "tool_choice":{"type":"function","function":{"name":"act"}}}"#;
    let (st, v) = call_raw(s.addr, "/v1/chat/completions", body.to_vec()).await;
    assert_eq!(st, 200, "{v}");
    let args = v["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"]
        .as_str()
        .unwrap();
    assert!(args.starts_with("{\"why\":"), "{args}");
}

/// Greedy decoding of `prompt` with penalties computed the obvious way at every step: the
/// full logits row, each token's count in the output so far and its presence in the prompt,
/// the formulas OpenAI (frequency, presence) and vLLM (repetition) document; then argmax.
fn penalized_reference(
    prompt: &[u32],
    max_tokens: usize,
    freq: f32,
    pres: f32,
    rep: f32,
) -> String {
    let (model, tok) = tiny();
    let mut cpu = CpuBackend::with_threads(&model, 1, CONTEXT, 1).unwrap();
    cpu.forward(&[SeqChunk {
        slot: 0,
        start_pos: 0,
        tokens: prompt,
    }])
    .unwrap();
    let mut out: Vec<u32> = Vec::new();
    let mut bytes = Vec::new();
    while out.len() < max_tokens {
        let mut row = cpu.logits().unwrap().remove(0);
        for (t, l) in row.iter_mut().enumerate() {
            let t = t as u32;
            let count = out.iter().filter(|&&o| o == t).count() as f32;
            if count > 0.0 || prompt.contains(&t) {
                *l = if *l > 0.0 { *l / rep } else { *l * rep };
            }
            *l -= count * freq + if count > 0.0 { pres } else { 0.0 };
        }
        let t = sandgraph_inference::backend::argmax_of(&row);
        if Some(t) == tok.eos || tok.is_control(t) {
            break;
        }
        bytes.extend_from_slice(tok.token_bytes(t));
        cpu.forward(&[SeqChunk {
            slot: 0,
            start_pos: prompt.len() + out.len(),
            tokens: &[t],
        }])
        .unwrap();
        out.push(t);
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn penalties_change_the_output_exactly_as_the_reference_computation_does() {
    let s = open_server(2).await;
    let (_, tok) = tiny();
    let n = 24;
    let prompts: Vec<Vec<u32>> = [
        "hello world! hello world! hello",
        "the cat sat on the",
        "once upon a time there was a",
    ]
    .iter()
    .map(|p| tok.encode(p, false))
    .collect();
    for (freq, pres, rep) in [
        (1.5, 0.0, 1.0),
        (0.0, 2.0, 1.0),
        (0.0, 0.0, 1.8),
        (0.8, 0.6, 1.3),
        (-1.0, 0.0, 1.0),
    ] {
        let mut changed = false;
        for prompt in &prompts {
            let want = penalized_reference(prompt, n, freq, pres, rep);
            let (st, v) = call(
                s.addr,
                "POST",
                "/v1/completions",
                Some(json!({
                    "prompt": prompt, "max_tokens": n, "temperature": 0,
                    "frequency_penalty": freq, "presence_penalty": pres, "repetition_penalty": rep,
                })),
            )
            .await;
            assert_eq!(st, 200, "{v}");
            assert_eq!(
                v["choices"][0]["text"], want,
                "penalties {freq} {pres} {rep}"
            );
            changed |= want != penalized_reference(prompt, n, 0.0, 0.0, 1.0);
        }
        // The tiny model repeats itself greedily: a penalty that did nothing would leave every
        // text as it was.
        assert!(changed, "penalties {freq} {pres} {rep} changed no output");
    }
    // Sampled with penalties and a seed: reproducible, and the chat endpoint takes them too.
    let body = json!({
        "messages": [{"role": "user", "content": "hello"}], "max_tokens": 16,
        "temperature": 1, "top_p": 0.9, "top_k": 20, "seed": 5,
        "frequency_penalty": 0.5, "presence_penalty": 0.5, "repetition_penalty": 1.2,
    });
    let (st, a) = call(s.addr, "POST", "/v1/chat/completions", Some(body.clone())).await;
    assert_eq!(st, 200, "{a}");
    let (_, b) = call(s.addr, "POST", "/v1/chat/completions", Some(body)).await;
    assert_eq!(a["choices"][0]["message"], b["choices"][0]["message"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_for_a_model_not_served_is_404_and_aliases_are_served() {
    let s = start(
        1,
        ServerConfig {
            served_names: vec!["tiny".into(), "tiny-alias".into()],
            ..Default::default()
        },
        Gate::opened(),
    )
    .await;
    let msgs = json!([{"role": "user", "content": "hi"}]);
    for path in ["/v1/chat/completions", "/v1/completions"] {
        let body = if path.ends_with("chat/completions") {
            json!({"model": "gpt-4o-does-not-exist", "messages": msgs, "max_tokens": 2})
        } else {
            json!({"model": "gpt-4o-does-not-exist", "prompt": "hi", "max_tokens": 2})
        };
        let (st, v) = call(s.addr, "POST", path, Some(body)).await;
        assert_eq!(st, 404, "{path}: {v}");
        assert_error(&v, "model_not_found", Some("model"));
        let m = v["error"]["message"].as_str().unwrap();
        assert!(
            m.contains("gpt-4o-does-not-exist") && m.contains("tiny-alias"),
            "{m}"
        );
    }
    let (st, v) = call(
        s.addr,
        "POST",
        "/v1/chat/completions",
        Some(json!({"model": "tiny-alias", "messages": msgs, "max_tokens": 2, "temperature": 0})),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    // The answer names the model by its first served name, as OpenAI names the snapshot.
    assert_eq!(v["model"], "tiny");
    let (st, v) = call(s.addr, "GET", "/v1/models", None).await;
    assert_eq!(st, 200);
    let ids: Vec<&str> = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["tiny", "tiny-alias"]);
    assert!(
        v["data"]
            .as_array()
            .unwrap()
            .iter()
            .all(|m| m["root"] == "tiny")
    );
    // Without a list, the loaded model's own name is the only one served.
    let plain = open_server(1).await;
    let (st, v) = call(
        plain.addr,
        "POST",
        "/v1/completions",
        Some(json!({"model": "smollm2", "prompt": "hi", "max_tokens": 2})),
    )
    .await;
    assert_eq!(st, 404, "{v}");
    let (st, _) = call(
        plain.addr,
        "POST",
        "/v1/completions",
        Some(json!({"model": "tiny", "prompt": "hi", "max_tokens": 2})),
    )
    .await;
    assert_eq!(st, 200);
}

/// The greedy tokens of a chat request for `content`, with each step's log-softmax computed
/// from the CPU backend's logits row: (token, its logprob, the 5 most likely (token, logprob)).
type RefStep = (u32, f32, Vec<(u32, f32)>);

fn greedy_logprob_reference(content: &str, n: usize) -> Vec<RefStep> {
    let (model, tok) = tiny();
    let text = ChatTemplate::detect(None)
        .unwrap()
        .render(&[ChatMessage::new("user", content)]);
    let prompt = tok.encode(&text, true);
    let mut cpu = CpuBackend::with_threads(&model, 1, CONTEXT, 1).unwrap();
    cpu.forward(&[SeqChunk {
        slot: 0,
        start_pos: 0,
        tokens: &prompt,
    }])
    .unwrap();
    let mut out = Vec::new();
    while out.len() < n {
        let row = cpu.logits().unwrap().remove(0);
        let mx = row.iter().cloned().fold(f32::MIN, f32::max) as f64;
        let lse = mx + row.iter().map(|&l| (l as f64 - mx).exp()).sum::<f64>().ln();
        let t = sandgraph_inference::backend::argmax_of(&row);
        if Some(t) == tok.eos || tok.is_control(t) {
            break;
        }
        let top = sandgraph_inference::backend::top_k_of(&row, 5)
            .into_iter()
            .map(|(t, l)| (t, (l as f64 - lse) as f32))
            .collect();
        out.push((t, (row[t as usize] as f64 - lse) as f32, top));
        cpu.forward(&[SeqChunk {
            slot: 0,
            start_pos: prompt.len() + out.len() - 1,
            tokens: &[t],
        }])
        .unwrap();
    }
    out
}

fn bytes_of(v: &Value) -> Vec<u8> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|b| b.as_u64().unwrap() as u8)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logprobs_are_the_models_log_softmax_streamed_and_not() {
    let s = open_server(2).await;
    let (_, tok) = tiny();
    let n = 10;
    let want = greedy_logprob_reference("hello world", n);
    let body = json!({
        "messages": [{"role": "user", "content": "hello world"}],
        "max_tokens": n, "temperature": 0, "logprobs": true, "top_logprobs": 5,
    });
    let (st, v) = call(s.addr, "POST", "/v1/chat/completions", Some(body.clone())).await;
    assert_eq!(st, 200, "{v}");
    let content = v["choices"][0]["logprobs"]["content"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(content.len(), want.len(), "{v}");
    assert_eq!(v["usage"]["completion_tokens"], want.len());
    let mut all = Vec::new();
    for (e, (t, lp, top)) in content.iter().zip(&want) {
        assert_eq!(bytes_of(&e["bytes"]), tok.token_bytes(*t));
        all.extend(bytes_of(&e["bytes"]));
        let got = e["logprob"].as_f64().unwrap() as f32;
        assert!((got - lp).abs() < 1e-4, "logprob {got} against {lp}");
        let alts = e["top_logprobs"].as_array().unwrap();
        assert_eq!(alts.len(), 5);
        for (a, (rt, rlp)) in alts.iter().zip(top) {
            assert_eq!(bytes_of(&a["bytes"]), tok.token_bytes(*rt));
            assert!((a["logprob"].as_f64().unwrap() as f32 - rlp).abs() < 1e-4);
        }
        // Greedy: the chosen token is the most likely one, and the alternatives' mass is at
        // most the whole.
        assert_eq!(alts[0]["bytes"], e["bytes"]);
        assert_eq!(alts[0]["logprob"], e["logprob"]);
        let mass: f64 = alts
            .iter()
            .map(|a| a["logprob"].as_f64().unwrap().exp())
            .sum();
        assert!(mass <= 1.0 + 1e-6, "{mass}");
    }
    let text = v["choices"][0]["message"]["content"].as_str().unwrap();
    assert_eq!(String::from_utf8_lossy(&all), text);

    // Streamed: the chunks' entries, in order, are the same list.
    let payloads = stream_payloads(s.addr, "/v1/chat/completions", body.clone()).await;
    let streamed: Vec<Value> = stream_chunks(&payloads)
        .into_iter()
        .filter_map(|c| c["choices"][0]["logprobs"]["content"].as_array().cloned())
        .flatten()
        .collect();
    assert_eq!(streamed, content);

    // The legacy completions shape: tokens, token_logprobs, top_logprobs, text_offset.
    let (st, v) = call(
        s.addr,
        "POST",
        "/v1/completions",
        Some(json!({"prompt": "hello world", "max_tokens": 8, "temperature": 0, "logprobs": 3})),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    let lp = &v["choices"][0]["logprobs"];
    let k = v["usage"]["completion_tokens"].as_u64().unwrap() as usize;
    assert_eq!(lp["tokens"].as_array().unwrap().len(), k, "{v}");
    assert_eq!(lp["token_logprobs"].as_array().unwrap().len(), k);
    let offsets: Vec<u64> = lp["text_offset"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o.as_u64().unwrap())
        .collect();
    assert_eq!(offsets.len(), k);
    assert!(offsets.windows(2).all(|w| w[0] <= w[1]) && offsets.first() == Some(&0));
    for (i, top) in lp["top_logprobs"].as_array().unwrap().iter().enumerate() {
        let best = top
            .as_object()
            .unwrap()
            .values()
            .map(|x| x.as_f64().unwrap())
            .fold(f64::MIN, f64::max);
        assert_eq!(lp["token_logprobs"][i].as_f64().unwrap(), best, "{lp}");
    }
    // Without the flag there is none (never silently half-there).
    let (_, v) = call(
        s.addr,
        "POST",
        "/v1/chat/completions",
        Some(json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, "logprobs": false})),
    )
    .await;
    assert!(v["choices"][0]["logprobs"].is_null(), "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_choices_share_one_prefill_and_are_reproducible() {
    let s = open_server(3).await;
    let body = json!({
        "messages": [{"role": "user", "content": "once upon a time there was a little"}],
        "max_tokens": 6, "temperature": 1.5, "seed": 9, "n": 3, "logprobs": true,
    });
    let (st, a) = call(s.addr, "POST", "/v1/chat/completions", Some(body.clone())).await;
    assert_eq!(st, 200, "{a}");
    let choices = a["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 3);
    let mut tokens = 0;
    for (i, c) in choices.iter().enumerate() {
        assert_eq!(c["index"], i);
        tokens += c["logprobs"]["content"].as_array().unwrap().len();
    }
    // Usage as OpenAI counts it: the prompt once, the completions summed.
    assert_eq!(a["usage"]["completion_tokens"], tokens);
    assert!(
        choices
            .iter()
            .any(|c| c["message"] != choices[0]["message"]),
        "{a}"
    );
    // The later choices copied the first one's prompt cache instead of computing it again.
    assert!(!s.gate.copies.lock().unwrap().is_empty());
    let (_, b) = call(s.addr, "POST", "/v1/chat/completions", Some(body.clone())).await;
    assert_eq!(a["choices"], b["choices"]);

    // Streamed: every chunk names its choice, each choice finishes once, usage comes once.
    let mut sbody = body;
    sbody["stream_options"] = json!({"include_usage": true});
    let payloads = stream_payloads(s.addr, "/v1/chat/completions", sbody).await;
    assert_eq!(payloads.last().unwrap(), "[DONE]");
    let chunks = stream_chunks(&payloads);
    let mut text = vec![String::new(); 3];
    let mut finished = [0; 3];
    for c in &chunks {
        if let Some(ch) = c["choices"].as_array().and_then(|l| l.first()) {
            let i = ch["index"].as_u64().unwrap() as usize;
            text[i] += ch["delta"]["content"].as_str().unwrap_or("");
            finished[i] += usize::from(!ch["finish_reason"].is_null());
        }
    }
    assert_eq!(finished, [1, 1, 1]);
    for (i, t) in text.iter().enumerate() {
        assert_eq!(t, choices[i]["message"]["content"].as_str().unwrap());
    }
    let usage: Vec<&Value> = chunks.iter().filter(|c| !c["usage"].is_null()).collect();
    assert_eq!(usage.len(), 1);
    assert_eq!(usage[0]["usage"], a["usage"]);

    // The legacy endpoint too.
    let (st, v) = call(
        s.addr,
        "POST",
        "/v1/completions",
        Some(json!({"prompt": "the cat", "max_tokens": 4, "temperature": 1, "seed": 1, "n": 2})),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["choices"].as_array().unwrap().len(), 2);
    assert_eq!(v["choices"][1]["index"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_is_retrieved_by_its_id() {
    let s = open_server(1).await;
    let (st, v) = call(s.addr, "GET", "/v1/models/tiny", None).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["id"], "tiny");
    assert_eq!(v["object"], "model");
    assert_eq!(v["owned_by"], "sandgraph");
    assert_eq!(v["max_model_len"], CONTEXT);
    assert!(v["created"].as_u64().unwrap() > 1_700_000_000);
    let (st, v) = call(s.addr, "GET", "/v1/models/gpt-4o", None).await;
    assert_eq!(st, 404, "{v}");
    assert_error(&v, "model_not_found", Some("model"));
}

/// A value for each field of the README's parity table, merged into a minimal request; fields
/// that need another field to mean anything bring it along.
fn parity_sample(field: &str, chat: bool) -> Value {
    let tool = json!([{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {"x": {"type": "integer"}}}}}]);
    match field {
        "messages" | "prompt" => json!({}),
        "model" => json!({"model": "tiny"}),
        "max_tokens" => json!({"max_tokens": 2}),
        "max_completion_tokens" => json!({"max_completion_tokens": 2}),
        "temperature" => json!({"temperature": 0.5}),
        "top_p" => json!({"top_p": 0.9}),
        "n" => json!({"n": 2}),
        "seed" => json!({"seed": 3}),
        "stop" => json!({"stop": ["zz"]}),
        "stream" => json!({"stream": true}),
        "stream_options" => json!({"stream": true, "stream_options": {"include_usage": true}}),
        "logprobs" if chat => json!({"logprobs": true}),
        "logprobs" => json!({"logprobs": 2}),
        "top_logprobs" => json!({"logprobs": true, "top_logprobs": 3}),
        "logit_bias" => json!({"logit_bias": {"5": 2}}),
        "frequency_penalty" => json!({"frequency_penalty": 0.5}),
        "presence_penalty" => json!({"presence_penalty": 0.5}),
        "response_format" => json!({"response_format": {"type": "json_object"}}),
        "tools" => json!({"tools": tool}),
        "tool_choice" => json!({"tools": tool, "tool_choice": "required"}),
        "parallel_tool_calls" => json!({"tools": tool, "parallel_tool_calls": false}),
        "user" => json!({"user": "u-1"}),
        "store" => json!({"store": false}),
        "metadata" => json!({"metadata": {"k": "v"}}),
        "service_tier" => json!({"service_tier": "auto"}),
        "prompt_cache_key" => json!({"prompt_cache_key": "k"}),
        "safety_identifier" => json!({"safety_identifier": "s"}),
        "top_k" => json!({"top_k": 5}),
        "repetition_penalty" => json!({"repetition_penalty": 1.1}),
        "min_p" => json!({"min_p": 0.1}),
        "echo" => json!({"echo": true}),
        "suffix" => json!({"suffix": "end"}),
        "best_of" => json!({"best_of": 2}),
        "audio" => json!({"audio": {"voice": "alloy", "format": "wav"}}),
        "modalities" => json!({"modalities": ["text"]}),
        "prediction" => json!({"prediction": {"type": "content", "content": "x"}}),
        "reasoning_effort" => json!({"reasoning_effort": "low"}),
        "verbosity" => json!({"verbosity": "low"}),
        "web_search_options" => json!({"web_search_options": {}}),
        "functions" => json!({"functions": [{"name": "f", "parameters": {"type": "object"}}]}),
        "function_call" => json!({"function_call": "auto"}),
        other => panic!("the parity table lists `{other}`, which this test has no value for"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parity_table_fields_work_or_are_refused_by_name() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    let table = readme
        .split("<!-- parity-table:begin -->")
        .nth(1)
        .and_then(|t| t.split("<!-- parity-table:end -->").next())
        .expect("the README holds the parity table");
    let s = open_server(2).await;
    let mut checked = 0;
    for row in table.lines().filter(|l| l.starts_with("| `")) {
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        let field = cells[1].trim_matches('`');
        let endpoints: &[bool] = match cells[2] {
            "chat" => &[true],
            "completions" => &[false],
            "both" => &[true, false],
            other => panic!("row {field}: unknown endpoint {other}"),
        };
        let status = cells[3].split_whitespace().next().unwrap();
        for &chat in endpoints {
            let mut body = if chat {
                json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
            } else {
                json!({"prompt": "hi", "max_tokens": 2})
            };
            for (k, v) in parity_sample(field, chat).as_object().unwrap() {
                body[k] = v.clone();
            }
            let path = if chat {
                "/v1/chat/completions"
            } else {
                "/v1/completions"
            };
            let (st, v) = call(s.addr, "POST", path, Some(body.clone())).await;
            match status {
                "supported" | "ignored" => assert_eq!(st, 200, "{field} on {path}: {body} -> {v}"),
                "refused" => {
                    assert_eq!(st, 400, "{field} on {path}: {body} -> {v}");
                    assert_eq!(v["error"]["param"], field, "{field} on {path}: {v}");
                }
                other => panic!("row {field}: unknown status {other}"),
            }
            checked += 1;
        }
    }
    assert!(
        checked >= 50,
        "only {checked} field checks: is the table intact?"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_json_format_with_tools_answers_a_call_or_a_document_of_the_format() {
    let s = open_server(2).await;
    let schema = json!({"type": "object", "properties": {"answer": {"type": "string", "maxLength": 8}}, "required": ["answer"]});
    let tools = json!([{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object", "properties": {"q": {"type": "string", "maxLength": 8}}, "required": ["q"]}}}]);
    let (mut calls, mut docs) = (0, 0);
    for seed in 0..16 {
        let body = json!({
            "messages": [{"role": "user", "content": "hello"}], "max_tokens": 40,
            "temperature": 1.5, "seed": seed, "tools": tools,
            "response_format": {"type": "json_schema", "json_schema": {"name": "a", "schema": schema}},
        });
        let (st, v) = call(s.addr, "POST", "/v1/chat/completions", Some(body.clone())).await;
        assert_eq!(st, 200, "{v}");
        let msg = &v["choices"][0]["message"];
        match msg["tool_calls"].as_array() {
            Some(c) => {
                calls += 1;
                assert_eq!(c[0]["function"]["name"], "lookup", "{v}");
                assert_eq!(v["choices"][0]["finish_reason"], "tool_calls");
            }
            None => {
                docs += 1;
                let doc: Value = serde_json::from_str(msg["content"].as_str().unwrap())
                    .unwrap_or_else(|e| panic!("{v}: {e}"));
                assert!(doc["answer"].is_string(), "{doc}");
            }
        }
        // The stream tells the same story: call deltas, or the document as content.
        let payloads = stream_payloads(s.addr, "/v1/chat/completions", body).await;
        let chunks = stream_chunks(&payloads);
        let content: String = chunks
            .iter()
            .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
            .collect();
        let args: String = chunks
            .iter()
            .filter_map(|c| {
                c["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"].as_str()
            })
            .collect();
        match msg["tool_calls"].as_array() {
            Some(c) => {
                assert_eq!(args, c[0]["function"]["arguments"].as_str().unwrap());
                assert_eq!(content, "");
            }
            None => assert_eq!(content, msg["content"].as_str().unwrap()),
        }
    }
    assert!(
        calls > 0 && docs > 0,
        "{calls} calls and {docs} documents in 16 seeds"
    );
}
