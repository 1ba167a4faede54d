//! Sandgraph as an MCP server, driven by the official MCP Python SDK (`mcp` from PyPI, pinned
//! in `.tools/mcp` by scripts/setup.sh; `tests/mcp/client.py`): over stdio (`sandgraph mcp`)
//! and over streamable HTTP (`sandgraph serve`'s `/mcp`, bearer token with `tools:call`). Both
//! list the tools, call `calc`, call `http-get` against a loopback server the operator allowed,
//! get a readable denial for a URL outside the grant and a tool error for arguments failing the
//! schema, a JSON-RPC error for an unknown tool, and cancel a slow call (the server drops it and
//! serves on). Bad input on the wire (not JSON, oversized, unknown methods, a client that goes
//! away mid-call) is answered or survived without taking the server down.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::replicas::Gate;
use serde_json::{Value, json};

const ADMIN: &str = "test-only-admin-token-0001";
const READER: &str = "test-only-reader-token-0002";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn python() -> PathBuf {
    let python = repo().join(".tools/mcp/bin/python");
    assert!(
        python.exists(),
        "the MCP Python SDK venv .tools/mcp is missing: run scripts/setup.sh"
    );
    python
}

fn components() -> PathBuf {
    Path::new(sandgraph_test_artifacts::TOOLS[0].1)
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The loopback servers of one scenario: `allowed` answers, `hold` never does.
struct Upstream {
    allowed: Gate,
    hold: Gate,
}

impl Upstream {
    fn start() -> Upstream {
        let allowed = Gate::start();
        allowed.open();
        Upstream {
            allowed,
            hold: Gate::start(),
        }
    }

    fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("ALLOWED_URL", self.allowed.url()),
            ("HOLD_URL", self.hold.url()),
            // Same host, a port no rule names.
            ("DENIED_URL", "http://127.0.0.1:9/forbidden".to_owned()),
        ]
    }
}

/// A tools folder: calc as shipped, http-get allowed to reach the two loopback servers only.
fn tools_dir(up: &Upstream) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("calc")).unwrap();
    std::fs::copy(
        repo().join("tools/calc/calc.sandgraph.yaml"),
        dir.path().join("calc/calc.sandgraph.yaml"),
    )
    .unwrap();
    std::fs::create_dir_all(dir.path().join("http-get")).unwrap();
    std::fs::write(
        dir.path().join("http-get/http-get.sandgraph.yaml"),
        format!(
            "apiVersion: sandgraph.dev/v1\nkind: ToolManifest\nmetadata: {{ name: http-get }}\nspec:\n  egress:\n    - {{ scheme: http, host: 127.0.0.1, port: {}, methods: [GET] }}\n    - {{ scheme: http, host: 127.0.0.1, port: {}, methods: [GET] }}\n  limits: {{ timeout: 30s }}\n",
            up.allowed.addr.port(),
            up.hold.addr.port()
        ),
    )
    .unwrap();
    dir
}

/// Runs the Python client; returns what it saw.
fn client(args: &[&str], env: &[(&str, String)]) -> Value {
    let out = Command::new(python())
        .arg(repo().join("host/tests/mcp/client.py"))
        .args(args)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .env("RUST_LOG", "info")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "client.py failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "client.py printed no JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// What both transports must show.
fn assert_scenario(seen: &Value, up: &Upstream) {
    assert_eq!(seen["server"], "sandgraph", "{seen}");
    assert_eq!(seen["protocol"], "2025-11-25", "{seen}");
    assert_eq!(seen["list_changed"], true, "{seen}");
    let tools: Vec<&str> = seen["tools"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        tools.contains(&"calc") && tools.contains(&"http-get"),
        "{seen}"
    );
    // The input schema is the one calc's info() declares.
    assert_eq!(seen["calc_schema"]["required"], json!(["expr"]), "{seen}");
    assert_eq!(seen["calc"]["is_error"], false, "{seen}");
    assert_eq!(seen["calc"]["structured"]["value"], 42.0, "{seen}");
    assert_eq!(seen["allowed"]["is_error"], false, "{seen}");
    assert_eq!(seen["allowed"]["structured"]["status"], 200, "{seen}");
    assert_eq!(seen["allowed"]["structured"]["body"], "opened", "{seen}");
    // The denial is a tool error the model can read, naming what was refused.
    assert_eq!(seen["denied"]["is_error"], true, "{seen}");
    assert_eq!(seen["denied"]["structured"]["kind"], "denied", "{seen}");
    assert_eq!(
        seen["denied"]["structured"]["capability"], "egress",
        "{seen}"
    );
    let text = seen["denied"]["text"][0].as_str().unwrap();
    assert!(
        text.contains("http://127.0.0.1:9/") && text.contains("no egress rule"),
        "{text}"
    );
    assert_eq!(seen["bad_arguments"]["is_error"], true, "{seen}");
    assert_eq!(
        seen["bad_arguments"]["structured"]["kind"], "invalid_input",
        "{seen}"
    );
    assert!(
        seen["bad_arguments"]["text"][0]
            .as_str()
            .unwrap()
            .contains("/expr"),
        "{seen}"
    );
    assert_eq!(seen["unknown_tool"]["code"], -32602, "{seen}");
    assert!(
        seen["unknown_tool"]["message"]
            .as_str()
            .unwrap()
            .contains("no-such-tool"),
        "{seen}"
    );
    // Cancelled: the client gave up after 1 s; the held request reached the server, and the
    // session answered the next call at once.
    assert_eq!(seen["cancelled"]["code"], -32001, "{seen}");
    assert_eq!(up.hold.hits(), 1);
    assert_eq!(seen["after_cancel"]["structured"]["value"], 2.0, "{seen}");
    assert!(seen["after_cancel_s"].as_f64().unwrap() < 20.0, "{seen}");
    assert_eq!(seen["ping"], true, "{seen}");
}

#[test]
fn the_python_sdk_lists_calls_is_denied_and_cancels_over_stdio() {
    let up = Upstream::start();
    let tools = tools_dir(&up);
    let log = tempfile::NamedTempFile::new().unwrap();
    let bin = env!("CARGO_BIN_EXE_sandgraph");
    let cache = common::cache_dir();
    let mut env = up.env();
    env.push(("SERVER_LOG", log.path().display().to_string()));
    let seen = client(
        &[
            "stdio",
            bin,
            "mcp",
            "--tools",
            tools.path().to_str().unwrap(),
            "--components",
            components().to_str().unwrap(),
            "--allow-private",
            "127.0.0.1",
            "--cache-dir",
            cache.to_str().unwrap(),
        ],
        &env,
    );
    assert_scenario(&seen, &up);
    let logs = std::fs::read_to_string(log.path()).unwrap();
    assert!(
        logs.contains("MCP tool call cancelled by the client"),
        "{logs}"
    );
}

/// `sandgraph serve` with the tools of `tools`; killed when dropped.
struct Serve {
    child: std::process::Child,
    addr: std::net::SocketAddr,
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve(tools: &Path, env: &[(&str, &str)]) -> Serve {
    let mut child = Command::new(env!("CARGO_BIN_EXE_sandgraph"))
        .arg("serve")
        .env("SANDGRAPH_LISTEN", "127.0.0.1:0")
        .env("SANDGRAPH_JOURNAL", tempfile::tempdir().unwrap().keep())
        .env("SANDGRAPH_CACHE_DIR", common::cache_dir())
        .env("SANDGRAPH_ALLOW_PRIVATE", "127.0.0.1")
        .env("SANDGRAPH_TOOLS", tools)
        .env("SANDGRAPH_COMPONENTS", components())
        .env(
            "SANDGRAPH_AUTH_TOKENS",
            repo().join("host/tests/fixtures/auth/test-only-tokens.yaml"),
        )
        .env("RUST_LOG", "warn")
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let addr = common::listening_addr(&mut child);
    Serve { child, addr }
}

#[test]
fn the_python_sdk_lists_calls_is_denied_cancels_and_hears_of_new_tools_over_http() {
    let up = Upstream::start();
    let tools = tools_dir(&up);
    let server = serve(tools.path(), &[]);
    // A tool uploaded over the API during the session: its clients hear `list_changed`.
    let upload = tempfile::NamedTempFile::new().unwrap();
    let wasm = std::fs::read(
        sandgraph_test_artifacts::TOOLS
            .iter()
            .find(|(n, _)| *n == "text-stats")
            .unwrap()
            .1,
    )
    .unwrap();
    use base64::Engine as _;
    std::fs::write(
        upload.path(),
        json!({
            "manifest": std::fs::read_to_string(repo().join("tools/text-stats/text-stats.sandgraph.yaml")).unwrap(),
            "component": base64::engine::general_purpose::STANDARD.encode(wasm),
        })
        .to_string(),
    )
    .unwrap();
    let mut env = up.env();
    env.push(("UPLOAD", upload.path().display().to_string()));
    let url = format!("http://{}/mcp", server.addr);
    let seen = client(&["http", &url, ADMIN], &env);
    assert_scenario(&seen, &up);
    assert_eq!(seen["upload_status"], 201, "{seen}");
    assert!(
        seen["tools_after_upload"]
            .as_array()
            .unwrap()
            .contains(&json!("text-stats")),
        "{seen}"
    );
    // The calls are the API's tool calls: counted in its metrics.
    let (_, metrics) = raw(server.addr, "GET", "/metrics", None, &[], b"");
    assert!(
        metrics.contains(r#"sandgraph_tool_outcomes_total{tool="http-get",outcome="denied"} 1"#),
        "{metrics}"
    );
}

/// One HTTP/1.1 request; (status, body).
/// Sends one HTTP/1.1 request (as `token`, the admin token when `None`); returns the connection
/// to read the answer from.
fn send_request(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::net::TcpStream {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    if let Some(t) = token.or(Some(ADMIN)) {
        head.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    let _ = s.write_all(head.as_bytes());
    let _ = s.write_all(body);
    s
}

/// One HTTP/1.1 request; (status, head, body).
fn raw_head(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String, String) {
    let mut s = send_request(addr, method, path, token, headers, body);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).to_string();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    (status, head.to_owned(), body.to_owned())
}

/// One HTTP/1.1 request; (status, body).
fn raw(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String) {
    let (status, _, body) = raw_head(addr, method, path, token, headers, body);
    (status, body)
}

/// An MCP message POSTed to `/mcp` outside any session, as `token`; (status, body).
fn post_mcp(addr: std::net::SocketAddr, token: Option<&str>, body: &[u8]) -> (u16, String) {
    raw(addr, "POST", "/mcp", token, MCP_HEADERS, body)
}

const MCP_HEADERS: &[(&str, &str)] = &[
    ("Content-Type", "application/json"),
    ("Accept", "application/json, text/event-stream"),
];

#[test]
fn mcp_over_http_refuses_bad_input_with_json_rpc_errors_and_needs_the_tools_call_scope() {
    let up = Upstream::start();
    let tools = tools_dir(&up);
    let server = serve(tools.path(), &[("SANDGRAPH_MAX_RUN_BYTES", "64KiB")]);
    let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}})
    .to_string();
    // Authentication and scope first: no token 401, a token without tools:call 403.
    let (status, _) = post_mcp(server.addr, Some(""), init.as_bytes());
    assert_eq!(status, 401);
    let (status, body) = post_mcp(server.addr, Some(READER), init.as_bytes());
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("tools:call"), "{body}");
    // Not JSON: a JSON-RPC parse error.
    let (status, body) = post_mcp(server.addr, None, b"{not json");
    let error: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (status, &error["error"]["code"]),
        (400, &json!(-32700)),
        "{body}"
    );
    // Oversized: refused before it is read whole.
    let big = format!(
        r#"{{"jsonrpc":"2.0","id":1,"method":"ping","params":{{"pad":"{}"}}}}"#,
        "x".repeat(70_000)
    );
    let (status, body) = post_mcp(server.addr, None, big.as_bytes());
    let error: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (status, &error["error"]["code"]),
        (413, &json!(-32600)),
        "{body}"
    );
    // And the server serves on: a session starts.
    let (status, body) = post_mcp(server.addr, None, init.as_bytes());
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("2025-11-25"), "{body}");
    // A client that goes away in the middle of a call: the call is dropped, others are served.
    let session = session_of(server.addr, &init);
    let call = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {
        "name": "http-get", "arguments": {"url": up.hold.url()}}})
    .to_string();
    let mut headers = MCP_HEADERS.to_vec();
    headers.push(("Mcp-Session-Id", &session));
    let s = send_request(server.addr, "POST", "/mcp", None, &headers, call.as_bytes());
    common::wait_for("the call held upstream", || up.hold.hits() == 1);
    drop(s);
    let (status, body) = post_mcp(server.addr, None, init.as_bytes());
    assert_eq!(status, 200, "{body}");
    let (status, _) = raw(server.addr, "GET", "/healthz", None, &[], b"");
    assert_eq!(status, 200);
}

/// A new initialized session's id.
fn session_of(addr: std::net::SocketAddr, init: &str) -> String {
    session_of_as(addr, ADMIN, init)
}

/// [`session_of`] as `token`.
fn session_of_as(addr: std::net::SocketAddr, token: &str, init: &str) -> String {
    let (_, head, _) = raw_head(
        addr,
        "POST",
        "/mcp",
        Some(token),
        MCP_HEADERS,
        init.as_bytes(),
    );
    let id = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("mcp-session-id")
                .then(|| v.trim().to_owned())
        })
        .unwrap_or_else(|| panic!("no session id: {head}"));
    let mut headers = MCP_HEADERS.to_vec();
    headers.push(("Mcp-Session-Id", &id));
    raw(
        addr,
        "POST",
        "/mcp",
        Some(token),
        &headers,
        br#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
    );
    id
}

/// `sandgraph mcp` as a child with raw pipes: what a misbehaving client sends.
struct StdioServer {
    child: std::process::Child,
    input: Option<std::process::ChildStdin>,
    output: BufReader<std::process::ChildStdout>,
}

impl StdioServer {
    fn start(tools: &Path) -> StdioServer {
        StdioServer::start_with(tools, &[])
    }

    fn start_with(tools: &Path, extra: &[&std::ffi::OsStr]) -> StdioServer {
        let mut child = Command::new(env!("CARGO_BIN_EXE_sandgraph"))
            .args(["mcp", "--tools"])
            .arg(tools)
            .args(extra)
            .arg("--components")
            .arg(components())
            .args(["--allow-private", "127.0.0.1", "--cache-dir"])
            .arg(common::cache_dir())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let input = child.stdin.take();
        let output = BufReader::new(child.stdout.take().unwrap());
        StdioServer {
            child,
            input,
            output,
        }
    }

    fn send(&mut self, line: &[u8]) {
        let input = self.input.as_mut().unwrap();
        input.write_all(line).unwrap();
        input.write_all(b"\n").unwrap();
        input.flush().unwrap();
    }

    /// `initialize` and `initialized`.
    fn initialize(&mut self) {
        self.send(br#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"t","version":"1"}}}"#);
        assert_eq!(self.answer()["result"]["protocolVersion"], "2025-11-25");
        self.send(br#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#);
    }

    fn answer(&mut self) -> Value {
        let mut line = String::new();
        self.output.read_line(&mut line).unwrap();
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line:?}"))
    }
}

impl Drop for StdioServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn mcp_over_stdio_answers_bad_input_with_json_rpc_errors_and_serves_on() {
    let up = Upstream::start();
    let tools = tools_dir(&up);
    let mut s = StdioServer::start(tools.path());
    s.initialize();
    // Not JSON: a parse error, id null.
    s.send(b"{\"jsonrpc\": \"2.0\", \"id\": 2, \"method\"");
    let a = s.answer();
    assert_eq!(
        (&a["error"]["code"], &a["id"]),
        (&json!(-32700), &Value::Null),
        "{a}"
    );
    // Oversized (over 4 MiB): skipped to its end and refused.
    let big = format!(
        r#"{{"jsonrpc":"2.0","id":3,"method":"ping","params":{{"pad":"{}"}}}}"#,
        "x".repeat(5 << 20)
    );
    s.send(big.as_bytes());
    let a = s.answer();
    assert_eq!(a["error"]["code"], -32600, "{a}");
    assert!(
        a["error"]["message"]
            .as_str()
            .unwrap()
            .contains("larger than"),
        "{a}"
    );
    // JSON but not a JSON-RPC message: invalid request.
    s.send(br#"{"hello": "world"}"#);
    assert_eq!(s.answer()["error"]["code"], -32600);
    // An unknown method: method not found, with its id.
    s.send(br#"{"jsonrpc":"2.0","id":4,"method":"tools/frobnicate"}"#);
    let a = s.answer();
    assert_eq!(
        (&a["error"]["code"], &a["id"]),
        (&json!(-32601), &json!(4)),
        "{a}"
    );
    // tools/call without a name: an error for that id (the SDK answers method-not-found for
    // params it cannot read).
    s.send(br#"{"jsonrpc":"2.0","id":5,"method":"tools/call","params":{}}"#);
    let a = s.answer();
    assert_eq!(a["id"], 5, "{a}");
    assert!(a["error"]["code"].as_i64().is_some(), "{a}");
    // Still serving.
    s.send(br#"{"jsonrpc":"2.0","id":6,"method":"tools/call","params":{"name":"calc","arguments":{"expr":"2^10"}}}"#);
    let a = s.answer();
    assert_eq!(a["result"]["structuredContent"]["value"], 1024.0, "{a}");
    // The client goes away in the middle of a call: the server ends without hanging.
    s.send(format!(
        r#"{{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{{"name":"http-get","arguments":{{"url":"{}"}}}}}}"#,
        up.hold.url()
    ).as_bytes());
    common::wait_for("the held call at the server", || up.hold.hits() == 1);
    drop(s.input.take());
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = s.child.try_wait().unwrap() {
            assert!(status.success(), "{status}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "sandgraph mcp did not end after its client went away"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `sandgraph-infer serve` on the real model (CPU), killed when dropped; its base URL.
fn inference_server() -> (Serve, String) {
    let mut child = Command::new(common::infer_binary())
        .args(["serve", "--backend", "cpu", "--listen", "127.0.0.1:0"])
        .args(["--slots", "2", "--context", "2048", "--threads", "2"])
        .arg("--model")
        .arg(repo().join("models/SmolLM2-135M-Instruct.Q4_1.gguf"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting sandgraph-infer serve");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let base = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line from sandgraph-infer: {line:?}"))
        .to_owned();
    let addr = base.trim_start_matches("http://").parse().unwrap();
    (Serve { child, addr }, base)
}

#[test]
fn a_langgraph_agent_uses_the_tools_through_mcp_with_sandgraph_infer_as_its_model() {
    let python = repo().join(".tools/mcp-langgraph/bin/python");
    assert!(
        python.exists(),
        "the LangGraph venv .tools/mcp-langgraph is missing: run scripts/setup.sh"
    );
    let up = Upstream::start();
    let tools = tools_dir(&up);
    let server = serve(tools.path(), &[]);
    let (_model, model_url) = inference_server();
    let out = Command::new(python)
        .arg(repo().join("host/tests/mcp/langgraph_agent.py"))
        .arg(format!("http://{}/mcp", server.addr))
        .arg(ADMIN)
        .arg(format!("{model_url}/v1"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "langgraph_agent.py failed:\n{}\n{stderr}",
        String::from_utf8_lossy(&out.stdout)
    );
    // The 1.x Python SDK ends its session cleanly.
    assert!(!stderr.contains("Session termination failed"), "{stderr}");
    let seen: Value = serde_json::from_slice(&out.stdout).unwrap();
    // The agent saw Sandgraph's tools through MCP and its model chose a calc call...
    assert!(
        seen["tools"].as_array().unwrap().contains(&json!("calc")),
        "{seen}"
    );
    assert_eq!(seen["tool_call"]["name"], "calc", "{seen}");
    let expr = seen["tool_call"]["args"]["expr"]
        .as_str()
        .unwrap_or_default();
    assert!(expr.contains("17") && expr.contains("23"), "{seen}");
    // ...which Sandgraph ran in its sandbox: a value, or a tool error calc wrote (the small
    // model's arithmetic is not always well formed); either way the model read it and answered.
    let result = seen["tool_result"].to_string();
    assert!(
        result.contains("value") || result.contains("invalid input"),
        "{seen}"
    );
    assert_eq!(
        seen["steps"],
        json!(["HumanMessage", "AIMessage", "ToolMessage", "AIMessage"]),
        "{seen}"
    );
    let (_, metrics) = raw(server.addr, "GET", "/metrics", None, &[], b"");
    assert!(
        metrics.contains(r#"sandgraph_tool_outcomes_total{tool="calc""#),
        "the call went through Sandgraph: {metrics}"
    );
}

#[test]
fn with_a_journal_each_call_is_a_run_that_is_listed_and_replays_identically() {
    let up = Upstream::start();
    let tools = tools_dir(&up);
    let journal = tempfile::tempdir().unwrap();
    let mut s = StdioServer::start_with(
        tools.path(),
        &["--journal".as_ref(), journal.path().as_os_str()],
    );
    s.initialize();
    s.send(
        json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {
            "name": "http-get", "arguments": {"url": up.allowed.url()}}})
        .to_string()
        .as_bytes(),
    );
    let fetched = s.answer();
    assert_eq!(
        fetched["result"]["structuredContent"]["body"], "opened",
        "{fetched}"
    );
    let fetched_run = fetched["result"]["_meta"]["sandgraph/run"]
        .as_str()
        .unwrap_or_else(|| panic!("no run named: {fetched}"))
        .to_owned();
    s.send(
        json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {
            "name": "http-get", "arguments": {"url": "http://127.0.0.1:9/forbidden"}}})
        .to_string()
        .as_bytes(),
    );
    let denied = s.answer();
    assert_eq!(denied["result"]["isError"], true, "{denied}");
    assert_eq!(
        denied["result"]["structuredContent"]["kind"], "denied",
        "{denied}"
    );
    let denied_run = denied["result"]["_meta"]["sandgraph/run"]
        .as_str()
        .unwrap()
        .to_owned();
    drop(s);
    let sandgraph = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_sandgraph"))
            .args(args)
            .arg("--journal")
            .arg(journal.path())
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (code, listed) = sandgraph(&["runs", "list"]);
    assert_eq!(code, Some(0), "{listed}");
    assert!(
        listed.contains(&fetched_run) && listed.contains(&denied_run),
        "{listed}"
    );
    // Offline, from the journal: the recorded response is served back, the output is the same.
    let (code, report) = sandgraph(&["replay", &fetched_run]);
    assert_eq!(code, Some(0), "{report}");
    assert!(report.contains("identical"), "{report}");
    assert_eq!(up.allowed.hits(), 1, "the replay sent nothing");
}

/// One MCP message in `session` as `token`; the JSON-RPC answer in its body (JSON or SSE).
fn mcp_message(addr: std::net::SocketAddr, token: &str, session: &str, message: &Value) -> Value {
    let body = message.to_string();
    let mut headers = MCP_HEADERS.to_vec();
    headers.push(("Mcp-Session-Id", session));
    let (status, text) = raw(addr, "POST", "/mcp", Some(token), &headers, body.as_bytes());
    assert_eq!(status, 200, "{text}");
    text.lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .filter_map(|d| serde_json::from_str::<Value>(d.trim()).ok())
        .find(|v| v.get("id").is_some())
        .unwrap_or_else(|| panic!("no answer in {text}"))
}

#[test]
fn a_tokens_narrowing_scopes_limit_the_tools_it_sees_and_the_hosts_its_calls_reach() {
    const NARROW: &str = "test-only-narrow-token-0003";
    let up = Upstream::start();
    let tools = tools_dir(&up);
    let server = serve(tools.path(), &[]);
    let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}})
    .to_string();
    let session = session_of_as(server.addr, NARROW, &init);
    // `tools:call:http-get`: http-get is the only tool it sees...
    let listed = mcp_message(
        server.addr,
        NARROW,
        &session,
        &json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"}),
    );
    let names: Vec<&str> = listed["result"]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|t| t["name"].as_str())
        .collect();
    assert_eq!(names, ["http-get"], "{listed}");
    // ...and calc, outside its grant, is unknown to it.
    let calc = mcp_message(
        server.addr,
        NARROW,
        &session,
        &json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call",
            "params": {"name": "calc", "arguments": {"expr": "1 + 1"}}}),
    );
    assert_eq!(calc["error"]["code"], -32602, "{calc}");
    // `tools:egress:allowed.test`: a URL the operator and manifest allow is outside this
    // client's hosts, refused before any connection, as a readable tool error.
    let fetched = mcp_message(
        server.addr,
        NARROW,
        &session,
        &json!({"jsonrpc": "2.0", "id": 4, "method": "tools/call",
            "params": {"name": "http-get", "arguments": {"url": up.allowed.url()}}}),
    );
    assert_eq!(fetched["result"]["isError"], true, "{fetched}");
    assert_eq!(
        fetched["result"]["structuredContent"]["kind"], "denied",
        "{fetched}"
    );
    assert_eq!(up.allowed.hits(), 0, "nothing left the sandbox");
    // The admin token, not narrowed, reaches it.
    let admin = session_of(server.addr, &init);
    let fetched = mcp_message(
        server.addr,
        ADMIN,
        &admin,
        &json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call",
            "params": {"name": "http-get", "arguments": {"url": up.allowed.url()}}}),
    );
    assert_eq!(
        fetched["result"]["structuredContent"]["body"], "opened",
        "{fetched}"
    );
}
