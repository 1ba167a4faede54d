//! Model providers against real components: the embedded engine over the real model in
//! models/, the `openai` provider against a `sandgraph-infer serve` this test starts, and
//! loopback servers that misbehave on purpose (429 with Retry-After, repeated 500s, a hung
//! endpoint, a refused key); plus the models file's errors with their locations.

mod common;

use std::io::{BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sandgraph::model::openai::breaker::BreakerState;
use sandgraph::model::{
    ChatRequest, FinishReason, Message, ModelError, Models, ModelsConfigError, Role,
};
use sandgraph::sandbox::egress::SecretStore;
use serde_json::{Value, json};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn model_path() -> PathBuf {
    repo().join("models/SmolLM2-135M-Instruct.Q4_1.gguf")
}

fn user(text: &str) -> Message {
    Message {
        role: Role::User,
        content: text.into(),
        tool_calls: vec![],
        tool_call_id: None,
    }
}

fn greedy(alias: &str, prompt: &str, max_tokens: u32) -> ChatRequest {
    ChatRequest {
        model: alias.into(),
        messages: vec![user(prompt)],
        max_tokens: Some(max_tokens),
        temperature: Some(0.0),
        top_p: None,
        seed: Some(1),
        stop: vec![],
        response_format: None,
        tools: vec![],
        tool_choice: None,
    }
}

fn models(yaml: &str, secrets: &SecretStore) -> Models {
    Models::parse("models.yaml", yaml, &repo(), secrets).unwrap_or_else(|e| panic!("{e}"))
}

fn embedded_yaml() -> String {
    // A distinct slot count keeps this engine apart from other tests' in the same process.
    "models:\n  default: { provider: embedded, path: models/SmolLM2-135M-Instruct.Q4_1.gguf, backend: cpu, slots: 8, context: 1024 }\n".into()
}

// ---------------------------------------------------------------------------------------------
// The models file.

fn config_error(yaml: &str, secrets: &SecretStore) -> (usize, usize, String) {
    match Models::parse("models.yaml", yaml, &repo(), secrets).unwrap_err() {
        ModelsConfigError::Invalid {
            file,
            line,
            col,
            message,
        } => {
            assert_eq!(file, "models.yaml");
            (line, col, message)
        }
        other => panic!("expected a located error, got {other}"),
    }
}

#[test]
fn models_file_errors_name_the_place_and_the_fix() {
    let none = SecretStore::default();
    let (l, c, m) = config_error("models:\n  default:\n    provider: llamafile\n", &none);
    assert_eq!((l, c), (3, 15), "{m}");
    assert!(
        m.contains("unknown provider `llamafile`; use embedded or openai"),
        "{m}"
    );

    let (l, c, m) = config_error("models:\n  default:\n    provider: embedded\n", &none);
    assert_eq!((l, c), (3, 5), "{m}");
    assert!(m.contains("missing field `path`"), "{m}");

    let (l, c, m) = config_error(
        "models:\n  default:\n    provider: embedded\n    path: models/nope.gguf\n",
        &none,
    );
    assert_eq!((l, c), (4, 11), "{m}");
    assert!(
        m.contains("nope.gguf does not exist") && m.contains("sandgraph-infer pull"),
        "{m}"
    );

    let (l, c, m) = config_error(
        "models:\n  default:\n    provider: embedded\n    path: models/SmolLM2-135M-Instruct.Q4_1.gguf\n    gpu_layers: 9\n",
        &none,
    );
    assert_eq!((l, c), (5, 5), "{m}");
    assert!(m.contains("unknown field `gpu_layers`"), "{m}");

    let (l, _, m) = config_error(
        "models:\n  r:\n    provider: openai\n    endpoint: http://127.0.0.1:9/v1\n    model: m\n    timeout: {connect: 2s, raed: 1s}\n",
        &none,
    );
    assert_eq!(l, 6, "{m}");
    assert!(m.contains("unknown field `raed`"), "{m}");

    let (l, _, m) = config_error(
        "models:\n  r:\n    provider: openai\n    endpoint: http://127.0.0.1:9/v1\n    model: m\n    timeout: {read: soon}\n",
        &none,
    );
    assert_eq!(l, 6, "{m}");
    assert!(m.contains("invalid duration `soon`"), "{m}");

    let (l, c, m) = config_error(
        "models:\n  r:\n    provider: openai\n    endpoint: http://127.0.0.1:9/v1\n    model: m\n    apiKeySecret: OPENAI_KEY\n",
        &none,
    );
    assert_eq!((l, c), (6, 19), "{m}");
    assert!(
        m.contains("operator secret `OPENAI_KEY` is not set; pass it as --secret OPENAI_KEY=VALUE"),
        "{m}"
    );

    let (l, c, m) = config_error(
        "models:\n  r:\n    provider: openai\n    endpoint: http://127.0.0.1:9/v1\n    model: m\n    fallback: [local]\n",
        &none,
    );
    assert_eq!((l, c), (6, 16), "{m}");
    assert!(
        m.contains("fallback `local` is not defined here; defined: r"),
        "{m}"
    );

    let (l, _, m) = config_error(
        "models:\n  a: {provider: openai, endpoint: 'http://127.0.0.1:9/v1', model: m, fallback: [b]}\n  b: {provider: openai, endpoint: 'http://127.0.0.1:9/v1', model: m, fallback: [a]}\n",
        &none,
    );
    assert!(l == 2 || l == 3, "{m}");
    assert!(m.contains("fallback cycle: a -> b -> a"), "{m}");

    let (l, c, m) = config_error("modles:\n  default: {}\n", &none);
    assert_eq!((l, c), (1, 1), "{m}");
    assert!(m.contains("unknown key `modles`"), "{m}");

    let (l, _, m) = config_error(
        "models:\n  r: {provider: openai, endpoint: 'http://user:pw@127.0.0.1:9/v1', model: m}\n",
        &none,
    );
    assert_eq!(l, 2, "{m}");
    assert!(m.contains("carries credentials"), "{m}");

    // A file that is not there names itself.
    let e = Models::from_file(Path::new("/nonexistent/models.yaml"), &none).unwrap_err();
    assert!(
        matches!(&e, ModelsConfigError::Read { file, .. } if file == "/nonexistent/models.yaml"),
        "{e}"
    );
}

#[test]
fn chains_follow_fallbacks_in_order_and_unknown_aliases_are_refused() {
    let m = models(
        "models:\n  a: {provider: openai, endpoint: 'http://127.0.0.1:9/v1', model: m, fallback: [b, c]}\n  b: {provider: openai, endpoint: 'http://127.0.0.1:9/v1', model: m, fallback: [c]}\n  c: {provider: embedded, path: models/SmolLM2-135M-Instruct.Q4_1.gguf}\n",
        &SecretStore::default(),
    );
    assert_eq!(m.aliases(), vec!["a", "b", "c"]);
    assert!(m.contains("b") && !m.contains("d"));
    assert_eq!(
        m.chain("a").unwrap(),
        vec!["openai:a", "openai:b", "embedded"]
    );
    // Both aliases of one endpoint share its breaker.
    assert_eq!(m.breaker_states().len(), 1);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let e = rt
        .block_on(m.chat("d", &greedy("d", "hi", 4), None))
        .unwrap_err();
    assert_eq!(
        e,
        ModelError::InvalidRequest(
            "model alias `d` is not configured; the models file defines: a, b, c".into()
        )
    );
}

#[test]
fn without_a_models_file_default_is_embedded_and_a_missing_model_says_so_when_used() {
    let m = sandgraph::model::cli_models(None, &SecretStore::default()).unwrap();
    assert_eq!(m.aliases(), vec!["default"]);
    assert_eq!(m.chain("default").unwrap(), vec!["embedded"]);
    // An embedded alias over a file that is missing at call time: a clear unavailability.
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("m.gguf");
    std::fs::copy(model_path(), &model).unwrap();
    let m = Models::parse(
        "models.yaml",
        "models:\n  small: {provider: embedded, path: m.gguf, slots: 3}\n",
        dir.path(),
        &SecretStore::default(),
    )
    .unwrap();
    std::fs::remove_file(&model).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let e = rt
        .block_on(m.chat("small", &greedy("small", "hi", 4), None))
        .unwrap_err();
    let ModelError::Unavailable(msg) = &e else {
        panic!("{e:?}")
    };
    assert!(
        msg.contains("model alias `small`") && msg.contains("m.gguf does not exist"),
        "{msg}"
    );
}

// ---------------------------------------------------------------------------------------------
// The embedded engine.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_greedy_answers_repeat_and_stream_to_the_sink() {
    let m = models(&embedded_yaml(), &SecretStore::default());
    let req = greedy("default", "What is the capital of France?", 24);
    let pieces = Arc::new(Mutex::new(Vec::<String>::new()));
    let p = pieces.clone();
    let sink = move |t: &str| p.lock().unwrap().push(t.to_owned());
    let first = m.chat("default", &req, Some(&sink)).await.unwrap();
    let second = m.chat("default", &req, None).await.unwrap();
    assert!(!first.content.is_empty());
    assert_eq!(first.content, second.content);
    assert_eq!(first.provider, "embedded");
    assert_eq!(first.model, "SmolLM2-135M-Instruct.Q4_1");
    assert!(first.usage.prompt_tokens > 5 && first.usage.completion_tokens > 0);
    assert!(first.usage.completion_tokens <= 24);
    // The sink saw the answer piece by piece, and the first piece was timed.
    let pieces = pieces.lock().unwrap();
    assert!(pieces.len() > 1, "{pieces:?}");
    assert_eq!(pieces.concat(), first.content);
    let ttft = first.timing.first_token.expect("first token timed");
    assert!(ttft <= first.timing.total);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_response_format_yields_json_matching_the_schema() {
    let m = models(&embedded_yaml(), &SecretStore::default());
    let mut req = greedy(
        "default",
        "Give the name and population of the capital of France as JSON.",
        96,
    );
    req.response_format = Some(json!({
        "type": "object",
        "properties": {
            "city": {"type": "string", "maxLength": 20},
            "population": {"type": "integer"}
        },
        "required": ["city", "population"],
        "additionalProperties": false
    }));
    let a = m.chat("default", &req, None).await.unwrap();
    let v: Value = serde_json::from_str(&a.content)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", a.content));
    assert!(v["city"].is_string() && v["population"].is_i64(), "{v}");
    assert_eq!(v.as_object().unwrap().len(), 2, "{v}");
    assert_eq!(a.finish_reason, FinishReason::Stop);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_forced_tool_call_and_invalid_requests() {
    let m = models(&embedded_yaml(), &SecretStore::default());
    let mut req = greedy("default", "Compute 2 + 3 with the calculator.", 64);
    req.tools = vec![sandgraph::model::ToolSpec {
        name: "calc".into(),
        description: "Evaluates an arithmetic expression.".into(),
        parameters: json!({"type": "object", "properties": {"expr": {"type": "string", "maxLength": 16}}, "required": ["expr"], "additionalProperties": false}),
    }];
    req.tool_choice = Some(sandgraph::model::ToolChoice::Required);
    let a = m.chat("default", &req, None).await.unwrap();
    assert_eq!(a.finish_reason, FinishReason::ToolCalls);
    assert_eq!(a.tool_calls.len(), 1);
    assert_eq!(a.tool_calls[0].name, "calc");
    let args: Value = serde_json::from_str(&a.tool_calls[0].arguments).unwrap();
    assert!(args["expr"].is_string(), "{args}");
    // The engine's own checks, as the HTTP server words them: no fallback would help.
    let mut bad = greedy("default", "hi", 4);
    bad.temperature = Some(3.0);
    let e = m.chat("default", &bad, None).await.unwrap_err();
    assert_eq!(
        e,
        ModelError::InvalidRequest("temperature = 3: it must be between 0 and 2".into())
    );
    let mut bad = greedy("default", "hi", 4);
    bad.response_format = Some(json!({"type": "object", "properties": 3}));
    let e = m.chat("default", &bad, None).await.unwrap_err();
    assert!(
        matches!(&e, ModelError::InvalidRequest(m) if m.contains("response_format")),
        "{e:?}"
    );
}

/// Agent steps sent together share one system prompt; the engine computes it once and copies
/// it into the other slots, and every answer is what the request yields on its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_with_one_system_prompt_compute_it_once() {
    let settings = sandgraph::model::embedded::EmbeddedSettings {
        backend: sandgraph::model::embedded::EmbeddedBackend::Cpu,
        slots: 4,
        context: 768,
        max_waiting: 16,
        ..sandgraph::model::embedded::EmbeddedSettings::new(model_path())
    };
    let yaml = "models:\n  default: { provider: embedded, path: models/SmolLM2-135M-Instruct.Q4_1.gguf, backend: cpu, slots: 4, context: 768, maxWaiting: 16 }\n";
    let m = Arc::new(models(yaml, &SecretStore::default()));
    let system = format!(
        "You answer with one word. {}",
        "Be brief, be exact, and never explain the answer. ".repeat(12)
    );
    let request = |q: &str| {
        let mut r = greedy("default", q, 8);
        r.messages.insert(
            0,
            Message {
                role: Role::System,
                content: system.clone(),
                tool_calls: vec![],
                tool_call_id: None,
            },
        );
        r
    };
    let questions = [
        "Name a colour.",
        "Name a fruit.",
        "Name an animal.",
        "Name a metal.",
    ];
    let engine = sandgraph::model::embedded::EmbeddedProvider::new("probe", settings)
        .engine()
        .await
        .unwrap();
    let before = engine.batcher().shared_prefix_tokens();
    let tasks: Vec<_> = questions
        .iter()
        .map(|q| {
            let (m, req) = (m.clone(), request(q));
            tokio::spawn(async move { m.chat("default", &req, None).await })
        })
        .collect();
    let mut together = Vec::new();
    for t in tasks {
        together.push(t.await.unwrap().unwrap());
    }
    let shared = engine.batcher().shared_prefix_tokens() - before;
    let prompt = together[0].usage.prompt_tokens as u64;
    assert!(
        shared >= 3 * (prompt - 20),
        "{shared} prompt tokens copied for 3 requests of {prompt} tokens sharing a system prompt"
    );
    for (q, t) in questions.iter().zip(&together) {
        let alone = m.chat("default", &request(q), None).await.unwrap();
        assert_eq!(t.content, alone.content, "{q}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_concurrent_embedded_requests_share_forwards() {
    let yaml = "models:\n  default: { provider: embedded, path: models/SmolLM2-135M-Instruct.Q4_1.gguf, backend: cpu, slots: 8, context: 512, maxWaiting: 16 }\n";
    let m = Arc::new(models(yaml, &SecretStore::default()));
    let prompts = [
        "Name a colour.",
        "Name a fruit.",
        "Name an animal.",
        "Name a country.",
        "Name a planet.",
        "Name a metal.",
        "Name a tree.",
        "Name a river.",
    ];
    // Each alone first: the answers to compare with, and the engine loaded.
    let mut alone = Vec::new();
    for p in prompts {
        alone.push(
            m.chat("default", &greedy("default", p, 16), None)
                .await
                .unwrap(),
        );
    }
    let provider = sandgraph::model::embedded::EmbeddedProvider::new(
        "probe",
        sandgraph::model::embedded::EmbeddedSettings {
            backend: sandgraph::model::embedded::EmbeddedBackend::Cpu,
            slots: 8,
            context: 512,
            max_waiting: 16,
            ..sandgraph::model::embedded::EmbeddedSettings::new(model_path())
        },
    );
    // Same settings: the same engine, loaded once per process.
    let engine = provider.engine().await.unwrap();
    let before = engine.batcher().forwards();
    let tasks: Vec<_> = prompts
        .iter()
        .map(|p| {
            let m = m.clone();
            let req = greedy("default", p, 16);
            tokio::spawn(async move { m.chat("default", &req, None).await })
        })
        .collect();
    let mut generated = 0;
    for (t, a) in tasks.into_iter().zip(&alone) {
        let r = t.await.unwrap().unwrap();
        assert_eq!(r.content, a.content, "batched answers equal running alone");
        generated += r.usage.completion_tokens as u64;
    }
    let forwards = engine.batcher().forwards() - before;
    assert!(
        engine.batcher().peak_sequences_per_forward() >= 4,
        "peak {} sequences per forward",
        engine.batcher().peak_sequences_per_forward()
    );
    // One at a time, every generated token needs its own forward (plus prefill).
    assert!(
        forwards * 2 < generated,
        "{forwards} forwards for {generated} generated tokens"
    );
}

// ---------------------------------------------------------------------------------------------
// The openai provider against a real `sandgraph-infer serve`.

struct Serve {
    child: Child,
    addr: SocketAddr,
}

impl Serve {
    fn start() -> Serve {
        let mut child = Command::new(common::infer_binary())
            .args(["serve", "--backend", "cpu", "--listen", "127.0.0.1:0"])
            .args([
                "--slots",
                "4",
                "--context",
                "1024",
                "--threads",
                "2",
                "--model",
            ])
            .arg(model_path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.take().unwrap()),
            &mut line,
        )
        .unwrap();
        let addr: SocketAddr = line
            .trim()
            .strip_prefix("listening on http://")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .parse()
            .unwrap();
        common::wait_for("sandgraph-infer /health 200", || {
            let Ok(mut s) = std::net::TcpStream::connect(addr) else {
                return false;
            };
            let _ = write!(
                s,
                "GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
            );
            let mut out = String::new();
            let _ = s.read_to_string(&mut out);
            out.starts_with("HTTP/1.1 200")
        });
        Serve { child, addr }
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_provider_against_sandgraph_infer_serve_answers_like_the_embedded_engine() {
    let serve = Serve::start();
    let yaml = format!(
        "models:\n  streamed: {{ provider: openai, endpoint: 'http://{0}/v1', model: smollm2, timeout: {{connect: 2s, read: 60s}} }}\n  whole: {{ provider: openai, endpoint: 'http://{0}/v1', model: smollm2, stream: false }}\n  default: {{ provider: embedded, path: models/SmolLM2-135M-Instruct.Q4_1.gguf, backend: cpu, slots: 2, context: 1024 }}\n",
        serve.addr
    );
    let m = models(&yaml, &SecretStore::default());
    let prompt = "What is the capital of France?";
    let pieces = Arc::new(Mutex::new(Vec::<String>::new()));
    let p = pieces.clone();
    let sink = move |t: &str| p.lock().unwrap().push(t.to_owned());
    let streamed = m
        .chat("streamed", &greedy("streamed", prompt, 24), Some(&sink))
        .await
        .unwrap();
    let whole = m
        .chat("whole", &greedy("whole", prompt, 24), None)
        .await
        .unwrap();
    let embedded = m
        .chat("default", &greedy("default", prompt, 24), None)
        .await
        .unwrap();
    assert_eq!(streamed.provider, "openai:streamed");
    assert_eq!(streamed.model, "SmolLM2-135M-Instruct.Q4_1");
    assert_eq!(streamed.content, whole.content);
    assert_eq!(streamed.content, embedded.content);
    assert_eq!(streamed.usage, embedded.usage);
    assert_eq!(streamed.finish_reason, embedded.finish_reason);
    assert_eq!(pieces.lock().unwrap().concat(), streamed.content);
    assert!(pieces.lock().unwrap().len() > 1);
    assert!(streamed.timing.first_token.is_some());
    assert!(whole.timing.first_token.is_none());
    // Constrained JSON through the server too.
    let mut req = greedy("streamed", "Give a city and its country as JSON.", 64);
    req.response_format = Some(
        json!({"type": "object", "properties": {"city": {"type": "string", "maxLength": 16}, "country": {"type": "string", "maxLength": 16}}, "required": ["city", "country"], "additionalProperties": false}),
    );
    let a = m.chat("streamed", &req, None).await.unwrap();
    let v: Value = serde_json::from_str(&a.content).unwrap();
    assert!(v["city"].is_string() && v["country"].is_string(), "{v}");
    // The server's 400 is the caller's problem, not a reason to fall back.
    let mut bad = greedy("streamed", "hi", 4);
    bad.temperature = Some(3.0);
    let e = m.chat("streamed", &bad, None).await.unwrap_err();
    assert!(
        matches!(&e, ModelError::InvalidRequest(m) if m.contains("temperature = 3: it must be between 0 and 2")),
        "{e:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Loopback servers that misbehave on purpose.

#[derive(Clone)]
enum Reply {
    /// Status, extra headers, body.
    Status(u16, Vec<(&'static str, String)>, String),
    /// A 200 chat completion with this content.
    Answer(&'static str),
    /// Reads the request and never answers.
    Hang,
    /// Starts an event stream, sends one chunk with this content, then stalls.
    StreamThenStall(&'static str),
}

struct Recorded {
    authorization: Option<String>,
    at: Instant,
}

struct Fake {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Recorded>>>,
}

impl Fake {
    /// Answers request i with `script[i]`, and every later one with `then`.
    fn start(script: Vec<Reply>, then: Reply) -> Fake {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let mut r = BufReader::new(conn.try_clone().unwrap());
                let Ok(Some(head)) = common::http_head::read_request_head(&mut r) else {
                    continue;
                };
                let mut body = vec![0; head.content_length()];
                if r.read_exact(&mut body).is_err() {
                    continue;
                }
                let n = {
                    let mut seen = s.lock().unwrap();
                    seen.push(Recorded {
                        authorization: head.header("authorization").map(str::to_owned),
                        at: Instant::now(),
                    });
                    seen.len() - 1
                };
                let reply = script.get(n).cloned().unwrap_or_else(|| then.clone());
                let mut conn = conn;
                let (status, headers, body) = match reply {
                    Reply::Hang => {
                        std::thread::spawn(move || {
                            std::thread::sleep(Duration::from_secs(120));
                            drop(conn);
                        });
                        continue;
                    }
                    Reply::StreamThenStall(text) => {
                        let chunk = json!({"model": "fake", "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": null}]});
                        let _ = write!(
                            conn,
                            "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\ndata: {chunk}\n\n"
                        );
                        let _ = conn.flush();
                        std::thread::spawn(move || {
                            std::thread::sleep(Duration::from_secs(120));
                            drop(conn);
                        });
                        continue;
                    }
                    Reply::Status(st, h, b) => (st, h, b),
                    Reply::Answer(text) => (
                        200,
                        vec![],
                        json!({
                            "id": "x", "object": "chat.completion", "model": "fake",
                            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                            "usage": {"prompt_tokens": 3, "completion_tokens": 2},
                        })
                        .to_string(),
                    ),
                };
                let mut out = format!(
                    "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n",
                    body.len()
                );
                for (k, v) in headers {
                    out.push_str(&format!("{k}: {v}\r\n"));
                }
                out.push_str("\r\n");
                out.push_str(&body);
                let _ = conn.write_all(out.as_bytes());
            }
        });
        Fake { addr, seen }
    }

    fn hits(&self) -> usize {
        self.seen.lock().unwrap().len()
    }
}

fn openai_entry(alias: &str, fake: &Fake, extra: &str) -> String {
    format!(
        "  {alias}: {{ provider: openai, endpoint: 'http://{}/v1', model: m, stream: false, backoff: {{base: 10ms, max: 20ms}}{extra} }}\n",
        fake.addr
    )
}

#[tokio::test]
async fn a_429_with_retry_after_is_retried_after_the_time_the_server_asked() {
    let fake = Fake::start(
        vec![Reply::Status(
            429,
            vec![("Retry-After", "1".into())],
            r#"{"error":{"message":"slow down"}}"#.into(),
        )],
        Reply::Answer("fine"),
    );
    let m = models(
        &format!("models:\n{}", openai_entry("remote", &fake, ", retries: 3")),
        &SecretStore::default(),
    );
    let a = m
        .chat("remote", &greedy("remote", "hi", 4), None)
        .await
        .unwrap();
    assert_eq!(a.content, "fine");
    assert_eq!(a.provider, "openai:remote");
    assert_eq!(fake.hits(), 2);
    let seen = fake.seen.lock().unwrap();
    let waited = seen[1].at - seen[0].at;
    // The backoff alone would have waited 5-10 ms.
    assert!(
        waited >= Duration::from_millis(950),
        "retried after {waited:?}"
    );
}

#[tokio::test]
async fn repeated_500s_open_the_circuit_and_the_fallback_answers() {
    let failing = Fake::start(
        vec![],
        Reply::Status(500, vec![], r#"{"error":{"message":"boom"}}"#.into()),
    );
    let backup = Fake::start(vec![], Reply::Answer("from the backup"));
    let yaml = format!(
        "models:\n{}{}",
        openai_entry(
            "primary",
            &failing,
            ", retries: 1, breaker: {failures: 2, cooldown: 60s}, fallback: [backup]"
        ),
        openai_entry("backup", &backup, "")
    );
    let m = models(&yaml, &SecretStore::default());
    let a = m
        .chat("primary", &greedy("primary", "hi", 4), None)
        .await
        .unwrap();
    assert_eq!(
        (a.provider.as_str(), a.content.as_str()),
        ("openai:backup", "from the backup")
    );
    assert_eq!(failing.hits(), 2, "one try and one retry");
    let states = m.breaker_states();
    let primary = states
        .iter()
        .find(|(url, _)| url.contains(&failing.addr.to_string()))
        .unwrap();
    assert_eq!(primary.1, BreakerState::Open);
    // With the circuit open the failing endpoint is not called at all.
    let a = m
        .chat("primary", &greedy("primary", "hi", 4), None)
        .await
        .unwrap();
    assert_eq!(a.provider, "openai:backup");
    assert_eq!(failing.hits(), 2);
    // Alone (no fallback), the open circuit is a typed unavailability.
    let alone = models(
        &format!(
            "models:\n{}",
            openai_entry(
                "primary",
                &failing,
                ", retries: 0, breaker: {failures: 1, cooldown: 60s}"
            )
        ),
        &SecretStore::default(),
    );
    let e1 = alone
        .chat("primary", &greedy("primary", "hi", 4), None)
        .await
        .unwrap_err();
    assert!(
        matches!(&e1, ModelError::Unavailable(m) if m.contains("HTTP 500: boom")),
        "{e1:?}"
    );
    let e2 = alone
        .chat("primary", &greedy("primary", "hi", 4), None)
        .await
        .unwrap_err();
    assert!(
        matches!(&e2, ModelError::Unavailable(m) if m.contains("circuit open")),
        "{e2:?}"
    );
    assert_eq!(failing.hits(), 3);
}

#[tokio::test]
async fn a_hung_endpoint_times_out_typed_and_falls_back() {
    let hung = Fake::start(vec![], Reply::Hang);
    let backup = Fake::start(vec![], Reply::Answer("backup"));
    let yaml = format!(
        "models:\n{}{}",
        openai_entry(
            "slow",
            &hung,
            ", retries: 1, timeout: {connect: 1s, read: 300ms}, fallback: [backup]"
        ),
        openai_entry("backup", &backup, "")
    );
    let m = models(&yaml, &SecretStore::default());
    let started = Instant::now();
    let a = m
        .chat("slow", &greedy("slow", "hi", 4), None)
        .await
        .unwrap();
    assert_eq!(a.provider, "openai:backup");
    assert_eq!(hung.hits(), 2);
    assert!(started.elapsed() < Duration::from_secs(30));
    // Without a fallback the caller sees the timeout as such.
    let only = models(
        &format!(
            "models:\n{}",
            openai_entry("slow", &hung, ", retries: 0, timeout: {read: 200ms}")
        ),
        &SecretStore::default(),
    );
    let e = only
        .chat("slow", &greedy("slow", "hi", 4), None)
        .await
        .unwrap_err();
    assert!(
        matches!(&e, ModelError::Timeout(m) if m.contains("read timeout")),
        "{e:?}"
    );
}

#[tokio::test]
async fn a_stream_that_stalls_midway_times_out_without_repeating_what_was_streamed() {
    let fake = Fake::start(vec![], Reply::StreamThenStall("Par"));
    let m = models(
        &format!(
            "models:\n  s: {{ provider: openai, endpoint: 'http://{}/v1', model: m, retries: 2, timeout: {{read: 300ms}} }}\n",
            fake.addr
        ),
        &SecretStore::default(),
    );
    let pieces = Arc::new(Mutex::new(Vec::<String>::new()));
    let p = pieces.clone();
    let sink = move |t: &str| p.lock().unwrap().push(t.to_owned());
    let e = m
        .chat("s", &greedy("s", "hi", 4), Some(&sink))
        .await
        .unwrap_err();
    assert!(
        matches!(&e, ModelError::Timeout(m) if m.contains("read timeout")),
        "{e:?}"
    );
    // Text already handed to the sink is not generated again by a retry.
    assert_eq!(fake.hits(), 1);
    assert_eq!(*pieces.lock().unwrap(), vec!["Par".to_owned()]);
}

#[tokio::test]
async fn a_refused_key_is_unavailable_at_once_and_the_key_never_shows() {
    const KEY: &str = "sk-test-4b1d2c9e7f";
    let fake = Fake::start(
        vec![],
        Reply::Status(
            401,
            vec![],
            format!(r#"{{"error":{{"message":"Incorrect API key provided: {KEY}"}}}}"#),
        ),
    );
    let mut secrets = SecretStore::default();
    secrets.insert("OPENAI_KEY", KEY);
    let m = models(
        &format!(
            "models:\n{}",
            openai_entry("remote", &fake, ", retries: 3, apiKeySecret: OPENAI_KEY")
        ),
        &secrets,
    );
    // Everything the host may log about the models and their calls goes through here.
    let logs = Arc::new(Mutex::new(Vec::<u8>::new()));
    let writer = {
        let logs = logs.clone();
        move || LogWriter(logs.clone())
    };
    let subscriber = tracing_subscriber::fmt()
        .with_writer(writer)
        .with_max_level(tracing::Level::TRACE)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let e = m
        .chat("remote", &greedy("remote", "hi", 4), None)
        .await
        .unwrap_err();
    assert_eq!(fake.hits(), 1, "a refused key is not retried");
    let ModelError::Unavailable(msg) = &e else {
        panic!("{e:?}")
    };
    assert!(
        msg.contains("HTTP 401") && msg.contains("`OPENAI_KEY`"),
        "{msg}"
    );
    assert!(msg.contains("[redacted]"), "{msg}");
    // The key went out in the Authorization header, and nowhere else.
    assert_eq!(
        fake.seen.lock().unwrap()[0].authorization.as_deref(),
        Some(format!("Bearer {KEY}").as_str())
    );
    let debug = format!("{m:?} {e:?} {e}");
    assert!(!debug.contains(KEY), "{debug}");
    // A 500 that echoes the key is retried; the retry log masks it too.
    let echo = Fake::start(
        vec![Reply::Status(
            500,
            vec![],
            format!(r#"{{"error":{{"message":"bad {KEY}"}}}}"#),
        )],
        Reply::Answer("ok"),
    );
    let m2 = models(
        &format!(
            "models:\n{}",
            openai_entry("remote", &echo, ", retries: 1, apiKeySecret: OPENAI_KEY")
        ),
        &secrets,
    );
    m2.chat("remote", &greedy("remote", "hi", 4), None)
        .await
        .unwrap();
    let logs = String::from_utf8(logs.lock().unwrap().clone()).unwrap();
    assert!(logs.contains("retrying"), "{logs}");
    assert!(!logs.contains(KEY), "{logs}");
    let settings = format!("{:?}", m2);
    assert!(!settings.contains(KEY));
}

struct LogWriter(Arc<Mutex<Vec<u8>>>);

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// The command line.

#[test]
fn run_and_serve_refuse_a_bad_models_file_before_doing_anything() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("models.yaml");
    std::fs::write(&file, "models:\n  default:\n    provider: ollama\n").unwrap();
    // Stand-ins for the built tools: nothing gets as far as loading them.
    let components = dir.path().join("components");
    std::fs::create_dir(&components).unwrap();
    for tool in [
        "calc",
        "http-get",
        "json-query",
        "text-stats",
        "workspace-fs",
    ] {
        std::fs::write(components.join(format!("{tool}.wasm")), b"").unwrap();
    }
    let expected = format!(
        "{}:3:15: model alias `default`: unknown provider `ollama`; use embedded or openai",
        file.display()
    );
    let run = Command::new(env!("CARGO_BIN_EXE_sandgraph"))
        .arg("run")
        .arg(repo().join("graphs/fan-out-fan-in.yaml"))
        .arg("--tools")
        .arg(repo().join("tools"))
        .arg("--components")
        .arg(&components)
        .arg("--journal")
        .arg(dir.path().join("journal"))
        .arg("--models")
        .arg(&file)
        .output()
        .unwrap();
    assert!(!run.status.success());
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(stderr.contains(&expected), "{stderr}");
    // The environment variable names the same file for `serve`.
    let serve = Command::new(env!("CARGO_BIN_EXE_sandgraph"))
        .arg("serve")
        .env("SANDGRAPH_MODELS", &file)
        .env("SANDGRAPH_LISTEN", "127.0.0.1:0")
        .env("SANDGRAPH_JOURNAL", dir.path().join("journal-serve"))
        .stdout(Stdio::piped())
        .output()
        .unwrap();
    assert!(!serve.status.success());
    let stderr = String::from_utf8_lossy(&serve.stderr);
    assert!(stderr.contains(&expected), "{stderr}");
}
