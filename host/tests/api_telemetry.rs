//! OpenTelemetry trace export of `sandgraph serve` against a fake OTLP/HTTP collector on
//! 127.0.0.1: a run whose first step makes an allowed request and whose second is denied
//! exports `run` → `step` → `tool_call` → `egress` spans with their attributes and real times,
//! flushed by the graceful shutdown, with no secret in them, in the trace whose id is the run id
//! (which a run resumed by a restarted server continues); with the switch off nothing is sent.

mod common;

use common::wait_for;
use std::collections::HashMap;
use std::io::{BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, any_value};
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message as _;
use sandgraph::api::Config;
use serde_json::{Value, json};

const ADMIN: &str = "test-only-admin-token-0001";
const DEADLINE: Duration = Duration::from_secs(60);
/// Values a guest sends that must never reach a span.
const QUERY_SECRET: &str = "query-secret-5f1e9c";
const HEADER_SECRET: &str = "header-secret-8a2d47";

// ---------------------------------------------------------------------------------------------
// A fake OTLP/HTTP collector: records every request, answers 200 with an empty protobuf body.

struct Received {
    path: String,
    content_type: String,
    /// Every header but the content type, names lower-cased.
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

struct Collector {
    addr: SocketAddr,
    received: Arc<Mutex<Vec<Received>>>,
    connections: Arc<Mutex<usize>>,
    tls: bool,
}

impl Collector {
    fn start() -> Collector {
        Collector::serve(None)
    }

    /// A collector behind TLS with `server`'s certificate.
    fn start_tls(server: Arc<rustls::ServerConfig>) -> Collector {
        Collector::serve(Some(server))
    }

    fn serve(tls: Option<Arc<rustls::ServerConfig>>) -> Collector {
        let is_tls = tls.is_some();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let received = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(Mutex::new(0));
        let (r, c) = (received.clone(), connections.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                *c.lock().unwrap() += 1;
                let (r, tls) = (r.clone(), tls.clone());
                std::thread::spawn(move || {
                    let _ = conn.set_read_timeout(Some(DEADLINE));
                    let _ = match tls {
                        None => collect(conn, &r),
                        Some(config) => match rustls::ServerConnection::new(config) {
                            Ok(tls) => collect(rustls::StreamOwned::new(tls, conn), &r),
                            Err(_) => return,
                        },
                    };
                });
            }
        });
        Collector {
            addr,
            received,
            connections,
            tls: is_tls,
        }
    }

    fn endpoint(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }
}

fn collect(conn: impl Read + Write, received: &Mutex<Vec<Received>>) -> std::io::Result<()> {
    let mut r = BufReader::new(conn);
    let Some(head) = common::http_head::read_request_head(&mut r)? else {
        return Ok(());
    };
    let path = head.target.clone();
    let length = head.content_length();
    let content_type = head.header("content-type").unwrap_or_default().to_owned();
    let headers: Vec<(String, String)> = head
        .headers
        .into_iter()
        .filter(|(k, _)| k != "content-type" && k != "content-length")
        .collect();
    let mut body = vec![0; length];
    r.read_exact(&mut body)?;
    received.lock().unwrap().push(Received {
        path,
        content_type,
        headers,
        body,
    });
    let out = r.get_mut();
    out.write_all(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/x-protobuf\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    )?;
    out.flush()
}

// ---------------------------------------------------------------------------------------------
// The API in this process, and a minimal client.

struct TestApi {
    addr: SocketAddr,
    server: common::api_server::ApiServer,
    _dir: tempfile::TempDir,
}

impl TestApi {
    fn start(otlp_endpoint: Option<String>) -> TestApi {
        TestApi::start_with(|c| c.otlp_endpoint = otlp_endpoint)
    }

    fn start_with(configure: impl FnOnce(&mut Config)) -> TestApi {
        let dir = tempfile::tempdir().unwrap();
        let server = TestApi::serve_with(&dir.path().join("journal"), configure);
        TestApi {
            addr: server.addr,
            server,
            _dir: dir,
        }
    }

    fn serve(
        journal: &std::path::Path,
        otlp_endpoint: Option<String>,
    ) -> common::api_server::ApiServer {
        TestApi::serve_with(journal, |c| c.otlp_endpoint = otlp_endpoint)
    }

    fn serve_with(
        journal: &std::path::Path,
        configure: impl FnOnce(&mut Config),
    ) -> common::api_server::ApiServer {
        let mut config = Config::with_journal(journal.to_path_buf());
        config.listen = "127.0.0.1:0".parse().unwrap();
        config.cache_dir = Some(common::cache_dir());
        config.allow_private = vec!["127.0.0.1".parse().unwrap()];
        config.auth_tokens = Some(
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("tests/fixtures/auth/test-only-tokens.yaml"),
        );
        config.shutdown_grace = Duration::from_secs(5);
        config.otlp_service_name = "sandgraph-test".into();
        configure(&mut config);
        common::api_server::ApiServer::start(config)
    }

    /// Graceful shutdown, returning once the server (and its trace export) has stopped.
    fn shutdown(self) {
        self.server.shutdown();
    }
}

fn request(addr: SocketAddr, path: &str, content_type: &str, body: &[u8]) -> (u16, Value) {
    exchange(addr, "POST", path, content_type, body)
}

fn get(addr: SocketAddr, path: &str) -> (u16, Value) {
    exchange(addr, "GET", path, "application/json", b"")
}

fn exchange(
    addr: SocketAddr,
    method: &str,
    path: &str,
    content_type: &str,
    body: &[u8],
) -> (u16, Value) {
    let (status, _, body) =
        exchange_text(addr, method, path, &[("Content-Type", content_type)], body);
    let value = serde_json::from_str(&body).unwrap_or(Value::String(body));
    (status, value)
}

/// One request as the admin with `headers`; (status, response head, body de-chunked).
fn exchange_text(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String, String) {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    let extra: String = headers
        .iter()
        .map(|(k, v)| format!("{k}: {v}\r\n"))
        .collect();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nAuthorization: Bearer {ADMIN}\r\n{extra}Content-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad response {text:?}"));
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_owned()
    };
    (status, head.to_owned(), body)
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.push_str(&rest[..n]);
        body = &rest[n + 2..];
    }
    out
}

const GRAPH: &str = r#"
apiVersion: sandgraph.dev/v1
kind: Graph
metadata: { name: traced }
spec:
  input:
    type: object
    required: [allowed, denied, auth]
    properties: { allowed: { type: string }, denied: { type: string }, auth: { type: string } }
  nodes:
    - id: fetch
      kind: tool
      component: egress_fetch
      input: { url: input.allowed, method: "'GET'", authorization: input.auth }
    - id: refused
      kind: tool
      component: egress_fetch
      input: { url: input.denied, method: "'DELETE'" }
  edges:
    - { from: fetch, to: refused }
"#;

/// Uploads the fetcher, allowed GET to 127.0.0.1:`port` only.
fn upload_fetcher(addr: SocketAddr, port: u16) {
    let manifest = format!(
        "apiVersion: sandgraph.dev/v1\nkind: ToolManifest\nmetadata: {{ name: egress_fetch }}\nspec:\n  egress: [{{ scheme: http, host: 127.0.0.1, port: {port}, methods: [GET] }}]\n  limits: {{ timeout: 60s }}\n",
    );
    let wasm = std::fs::read(common::hostile("egress_fetch")).unwrap();
    let upload = json!({
        "manifest": manifest,
        "component": base64::engine::general_purpose::STANDARD.encode(wasm),
    });
    let (status, body) = request(
        addr,
        "/v1/tools",
        "application/json",
        upload.to_string().as_bytes(),
    );
    assert_eq!(status, 201, "{body}");
}

/// Uploads the fetcher (GET to `target` only) and the graph, runs it to its end.
fn run_traced_graph(addr: SocketAddr, target: &common::TestServer) -> Value {
    upload_fetcher(addr, target.port());
    let (status, body) = request(addr, "/v1/graphs", "application/yaml", GRAPH.as_bytes());
    assert_eq!(status, 201, "{body}");
    let input = json!({
        "graph": "traced",
        "input": {
            "allowed": target.url(&format!("/ok?token={QUERY_SECRET}")),
            "denied": target.url("/ok"),
            "auth": format!("Bearer {HEADER_SECRET}"),
        }
    });
    let (status, done) = request(
        addr,
        "/v1/runs?wait=true",
        "application/json",
        input.to_string().as_bytes(),
    );
    assert_eq!(status, 200, "{done}");
    // The denied step fails the run.
    assert_eq!(done["status"], "failed", "{done}");
    done
}

// ---------------------------------------------------------------------------------------------
// Reading the export.

fn attr<'a>(span: &'a Span, key: &str) -> Option<&'a any_value::Value> {
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v: &AnyValue| v.value.as_ref())
}

fn text(span: &Span, key: &str) -> String {
    match attr(span, key) {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        other => panic!("span {} attribute {key}: {other:?}", span.name),
    }
}

fn int(span: &Span, key: &str) -> i64 {
    match attr(span, key) {
        Some(any_value::Value::IntValue(i)) => *i,
        other => panic!("span {} attribute {key}: {other:?}", span.name),
    }
}

fn flag(span: &Span, key: &str) -> bool {
    match attr(span, key) {
        Some(any_value::Value::BoolValue(b)) => *b,
        other => panic!("span {} attribute {key}: {other:?}", span.name),
    }
}

/// Every span the collector received, each request checked: the OTLP path and media type, our
/// service name, and no secret anywhere in the bytes.
fn exported_spans(collector: &Collector) -> Vec<Span> {
    let received = collector.received.lock().unwrap();
    let mut spans: Vec<Span> = Vec::new();
    for r in received.iter() {
        assert_eq!(r.path, "/v1/traces");
        assert_eq!(r.content_type, "application/x-protobuf");
        let raw = String::from_utf8_lossy(&r.body);
        for secret in [QUERY_SECRET, HEADER_SECRET, ADMIN] {
            assert!(!raw.contains(secret), "the export carries `{secret}`");
        }
        let req = ExportTraceServiceRequest::decode(r.body.as_slice()).expect("OTLP protobuf");
        for rs in req.resource_spans {
            let service = rs
                .resource
                .as_ref()
                .and_then(|r| r.attributes.iter().find(|kv| kv.key == "service.name"))
                .and_then(|kv| kv.value.as_ref()?.value.clone());
            assert_eq!(
                service,
                Some(any_value::Value::StringValue("sandgraph-test".into()))
            );
            for ss in rs.scope_spans {
                spans.extend(ss.spans);
            }
        }
    }
    spans
}

#[test]
fn spans_for_run_step_tool_call_and_egress_reach_the_collector() {
    let collector = Collector::start();
    let target = common::TestServer::start();
    let api = TestApi::start(Some(collector.endpoint()));
    let done = run_traced_graph(api.addr, &target);
    let run_id = done["run"].as_str().unwrap().to_owned();
    assert_eq!(target.connections(), 1, "only the allowed request left");
    // The batch goes out at the graceful shutdown at the latest.
    api.shutdown();
    wait_for("an export", || {
        !collector.received.lock().unwrap().is_empty()
    });

    let spans = exported_spans(&collector);
    let named = |name: &str| -> Vec<&Span> { spans.iter().filter(|s| s.name == name).collect() };
    let (runs, steps, calls, egress) = (
        named("run"),
        named("step"),
        named("tool_call"),
        named("egress"),
    );
    assert_eq!(runs.len(), 1, "{spans:#?}");
    assert_eq!(steps.len(), 2, "{spans:#?}");
    assert_eq!(calls.len(), 2, "{spans:#?}");
    assert_eq!(egress.len(), 2, "{spans:#?}");
    assert_eq!(spans.len(), 7, "nothing else: {spans:#?}");

    let run = runs[0];
    assert!(run.parent_span_id.is_empty(), "the run is the root");
    assert_eq!(text(run, "sandgraph.run.id"), run_id);
    assert_eq!(
        hex::encode(&run.trace_id),
        run_id,
        "the trace id is the run id"
    );
    assert_eq!(text(run, "sandgraph.graph.name"), "traced");
    assert!(text(run, "sandgraph.graph.digest").len() >= 64);
    assert_eq!(text(run, "sandgraph.run.status"), "failed");
    let by_id: HashMap<&[u8], &Span> = spans.iter().map(|s| (s.span_id.as_slice(), s)).collect();
    for s in &spans {
        assert_eq!(s.trace_id, run.trace_id, "one trace per run");
        assert!(s.start_time_unix_nano > 0);
        assert!(s.end_time_unix_nano >= s.start_time_unix_nano, "{s:#?}");
        if s.name != "run" {
            // Every child lies within its parent.
            let parent = by_id[s.parent_span_id.as_slice()];
            assert!(
                s.start_time_unix_nano >= parent.start_time_unix_nano,
                "{s:#?}"
            );
            assert!(s.end_time_unix_nano <= parent.end_time_unix_nano, "{s:#?}");
        }
    }
    let parent = |s: &Span| by_id[s.parent_span_id.as_slice()].name.clone();

    let step = |node: &str| {
        *steps
            .iter()
            .find(|s| text(s, "sandgraph.node") == node)
            .unwrap_or_else(|| panic!("no step span for {node}"))
    };
    let (fetch, refused) = (step("fetch"), step("refused"));
    for s in [fetch, refused] {
        assert_eq!(s.parent_span_id, run.span_id);
        assert_eq!(int(s, "sandgraph.step.attempt"), 1);
        assert_eq!(text(s, "sandgraph.run.id"), run_id);
    }
    assert_eq!(text(fetch, "sandgraph.step.id"), "fetch#1");
    assert_eq!(text(fetch, "sandgraph.step.outcome"), "ok");
    assert_eq!(text(refused, "sandgraph.step.outcome"), "denied");
    assert!(
        fetch.end_time_unix_nano <= refused.start_time_unix_nano,
        "fetch runs first"
    );

    let call_of = |step: &Span| {
        *calls
            .iter()
            .find(|c| c.parent_span_id == step.span_id)
            .expect("a tool_call under the step")
    };
    let (ok_call, denied_call) = (call_of(fetch), call_of(refused));
    for c in [ok_call, denied_call] {
        assert_eq!(parent(c), "step");
        assert_eq!(text(c, "sandgraph.tool.name"), "egress_fetch");
        assert!(text(c, "sandgraph.tool.component_digest").starts_with("sha256:"));
        assert!(int(c, "sandgraph.tool.memory_peak_bytes") > 0);
        let us = int(c, "sandgraph.tool.duration_us");
        assert!(us > 0);
        // The span's length is the measured duration.
        assert_eq!(
            c.end_time_unix_nano - c.start_time_unix_nano,
            us as u64 * 1000,
            "{c:#?}"
        );
    }
    assert_eq!(text(ok_call, "sandgraph.tool.outcome"), "ok");
    assert_eq!(text(denied_call, "sandgraph.tool.outcome"), "denied");

    let egress_of = |call: &Span| {
        *egress
            .iter()
            .find(|e| e.parent_span_id == call.span_id)
            .expect("an egress span under the call")
    };
    let (sent, denied) = (egress_of(ok_call), egress_of(denied_call));
    assert_eq!(parent(sent), "tool_call");
    assert_eq!(text(sent, "http.request.method"), "GET");
    assert_eq!(
        text(sent, "sandgraph.egress.target"),
        target.url("/ok"),
        "the query is dropped"
    );
    assert!(flag(sent, "sandgraph.egress.allowed"));
    assert_eq!(int(sent, "http.response.status_code"), 200);
    assert!(
        sent.end_time_unix_nano > sent.start_time_unix_nano,
        "a real request takes time"
    );
    assert_eq!(text(denied, "http.request.method"), "DELETE");
    assert!(!flag(denied, "sandgraph.egress.allowed"));
    assert!(!text(denied, "sandgraph.egress.denial_reason").is_empty());
    assert!(attr(denied, "http.response.status_code").is_none());
}

#[test]
fn with_the_switch_off_nothing_is_exported() {
    let collector = Collector::start();
    let target = common::TestServer::start();
    let api = TestApi::start(None);
    run_traced_graph(api.addr, &target);
    api.shutdown();
    assert_eq!(*collector.connections.lock().unwrap(), 0);
    assert!(collector.received.lock().unwrap().is_empty());
}

/// A server on 127.0.0.1 that holds its first request unanswered (until the test ends) and
/// answers every later one at once: a step caught mid-request by a shutdown, then resumed.
fn hold_first_request() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for conn in listener.incoming() {
            let Ok(conn) = conn else { continue };
            let mut r = BufReader::new(conn.try_clone().unwrap());
            let _ = common::http_head::read_request_head(&mut r);
            if held.is_empty() {
                held.push(conn);
                continue;
            }
            let mut out = conn;
            let _ = out
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok");
        }
    });
    addr
}

#[test]
fn a_run_resumed_after_a_restart_continues_its_trace() {
    let collector = Collector::start();
    let target = hold_first_request();
    let dir = tempfile::tempdir().unwrap();
    let journal = dir.path().join("journal");
    let server = TestApi::serve(&journal, Some(collector.endpoint()));
    let addr = server.addr;
    upload_fetcher(addr, target.port());
    let graph = "apiVersion: sandgraph.dev/v1\nkind: Graph\nmetadata: { name: held }\nspec:\n  nodes:\n    - { id: fetch, kind: tool, component: egress_fetch, input: { url: input.url, method: \"'GET'\" } }\n";
    let (status, body) = request(addr, "/v1/graphs", "application/yaml", graph.as_bytes());
    assert_eq!(status, 201, "{body}");
    let start = json!({"graph": "held", "input": {"url": format!("http://{target}/held")}});
    let (status, started) = request(
        addr,
        "/v1/runs",
        "application/json",
        start.to_string().as_bytes(),
    );
    assert_eq!(status, 202, "{started}");
    let run_id = started["run"].as_str().unwrap().to_owned();
    wait_for("the step to be running", || {
        let (_, run) = get(addr, &format!("/v1/runs/{run_id}"));
        run["steps"].as_array().is_some_and(|s| !s.is_empty())
    });
    // Shut down mid-request (the grace period runs out), start again on the same journal.
    server.shutdown();
    let server = TestApi::serve(&journal, Some(collector.endpoint()));
    let addr = server.addr;
    wait_for("the resumed run to finish", || {
        get(addr, &format!("/v1/runs/{run_id}")).1["status"] != "running"
    });
    let (_, run) = get(addr, &format!("/v1/runs/{run_id}"));
    assert_eq!(run["status"], "succeeded", "{run}");
    server.shutdown();

    let spans = exported_spans(&collector);
    let runs: Vec<&Span> = spans.iter().filter(|s| s.name == "run").collect();
    assert_eq!(runs.len(), 2, "one run span per process: {spans:#?}");
    for s in &spans {
        assert_eq!(
            hex::encode(&s.trace_id),
            run_id,
            "one trace, the run's: {s:#?}"
        );
    }
    let (first, resumed): (Vec<&Span>, Vec<&Span>) = runs
        .iter()
        .partition(|s| attr(s, "sandgraph.run.resumed").is_none());
    assert_eq!((first.len(), resumed.len()), (1, 1), "{runs:#?}");
    assert!(flag(resumed[0], "sandgraph.run.resumed"));
    assert_eq!(text(resumed[0], "sandgraph.run.id"), run_id);
    assert_eq!(text(resumed[0], "sandgraph.run.status"), "succeeded");
    assert!(first[0].end_time_unix_nano <= resumed[0].start_time_unix_nano);
}

#[test]
fn export_to_an_https_collector_is_verified_and_carries_the_configured_headers() {
    const KEY: &str = "test-only-collector-key-31";
    let ca = common::test_ca::TestCa::new(&["127.0.0.1"]);
    let collector = Collector::start_tls(ca.server.clone());
    let target = common::TestServer::start();
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("collector-ca.pem");
    std::fs::write(&ca_file, ca.ca_pem()).unwrap();
    let api = TestApi::start_with(|c| {
        c.otlp_endpoint = Some(collector.endpoint());
        c.otlp_ca = Some(ca_file.clone());
        c.otlp_headers = sandgraph::api::telemetry::ExportHeaders::parse(&format!(
            "x-api-key={KEY},x-tenant=acme%20corp"
        ))
        .unwrap();
    });
    run_traced_graph(api.addr, &target);
    api.shutdown();
    wait_for("an export over TLS", || {
        !collector.received.lock().unwrap().is_empty()
    });
    {
        let received = collector.received.lock().unwrap();
        for r in received.iter() {
            let header = |name: &str| {
                r.headers
                    .iter()
                    .find(|(k, _)| k == name)
                    .map(|(_, v)| v.as_str())
            };
            assert_eq!(header("x-api-key"), Some(KEY));
            assert_eq!(header("x-tenant"), Some("acme corp"));
        }
    }
    let spans = exported_spans(&collector);
    assert_eq!(
        spans.iter().filter(|s| s.name == "run").count(),
        1,
        "{:?}",
        spans.iter().map(|s| &s.name).collect::<Vec<_>>()
    );

    // The same collector without its CA: the handshake fails, nothing is delivered, and the
    // API serves on regardless.
    let untrusted = Collector::start_tls(ca.server.clone());
    let api = TestApi::start(Some(untrusted.endpoint()));
    run_traced_graph(api.addr, &target);
    api.shutdown();
    assert!(
        *untrusted.connections.lock().unwrap() >= 1,
        "an export was tried"
    );
    assert!(untrusted.received.lock().unwrap().is_empty());
}

/// One MCP message POSTed to `/mcp` (in `session`, if any); (the session id it names, the
/// JSON-RPC messages of its body, JSON or server-sent events).
fn mcp_post(
    addr: SocketAddr,
    session: Option<&str>,
    message: &Value,
) -> (Option<String>, Vec<Value>) {
    let mut headers = vec![
        ("Content-Type", "application/json"),
        ("Accept", "application/json, text/event-stream"),
    ];
    if let Some(id) = session {
        headers.push(("Mcp-Session-Id", id));
    }
    let (_, head, body) = exchange_text(
        addr,
        "POST",
        "/mcp",
        &headers,
        message.to_string().as_bytes(),
    );
    let id = head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case("mcp-session-id")
            .then(|| v.trim().to_owned())
    });
    let messages = body
        .lines()
        .filter_map(|l| {
            l.strip_prefix("data:")
                .or(Some(l).filter(|l| l.starts_with('{')))
        })
        .filter_map(|d| serde_json::from_str(d.trim()).ok())
        .collect();
    (id, messages)
}

#[test]
fn an_mcp_tool_call_is_a_trace_of_its_own_with_its_call_and_egress_spans() {
    let collector = Collector::start();
    let target = common::TestServer::start();
    let api = TestApi::start(Some(collector.endpoint()));
    upload_fetcher(api.addr, target.port());
    let (session, init) = mcp_post(
        api.addr,
        None,
        &json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-11-25", "capabilities": {},
            "clientInfo": {"name": "telemetry-test", "version": "1"}}}),
    );
    assert_eq!(
        init[0]["result"]["serverInfo"]["name"], "sandgraph",
        "{init:?}"
    );
    let session = session.expect("a session id");
    mcp_post(
        api.addr,
        Some(&session),
        &json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
    );
    let (_, answer) = mcp_post(
        api.addr,
        Some(&session),
        &json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {
            "name": "egress_fetch", "arguments": {"url": target.url("/ok"), "method": "DELETE"}}}),
    );
    assert_eq!(answer[0]["result"]["isError"], true, "{answer:?}");
    assert_eq!(target.connections(), 0, "the denied request never left");
    api.shutdown();
    wait_for("an export", || {
        !collector.received.lock().unwrap().is_empty()
    });
    let spans = exported_spans(&collector);
    let root = spans
        .iter()
        .find(|s| s.name == "mcp_tools_call")
        .unwrap_or_else(|| panic!("no mcp_tools_call span: {spans:#?}"));
    assert!(root.parent_span_id.is_empty(), "a root of its own");
    assert_eq!(text(root, "sandgraph.tool.name"), "egress_fetch");
    let call = spans
        .iter()
        .find(|s| s.name == "tool_call" && s.parent_span_id == root.span_id)
        .expect("a tool_call under it");
    assert_eq!(text(call, "sandgraph.tool.outcome"), "denied");
    let denied = spans
        .iter()
        .find(|s| s.name == "egress" && s.parent_span_id == call.span_id)
        .expect("an egress span under the call");
    assert_eq!(text(denied, "http.request.method"), "DELETE");
    assert!(!flag(denied, "sandgraph.egress.allowed"));
    for s in [root, call, denied] {
        assert_eq!(s.trace_id, root.trace_id);
    }
}
