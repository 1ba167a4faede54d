//! The HTTP API end to end over real HTTP on 127.0.0.1: uploading tools and graphs, runs
//! started, waited for, streamed (with `Last-Event-ID` resumption mid-run), cancelled,
//! idempotent submissions, a server restarted mid-run finishing the run, and a table of bad
//! requests each answered with its status and problem `type` while others keep being served.

mod common;

use common::replicas::{ADD, EFFECT_THEN_GATE, Gate, assert_executed_once, gate_fetcher_manifest};
use common::wait_for;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use sandgraph::api::Config;
use serde_json::{Value, json};

const ADMIN: &str = "test-only-admin-token-0001";
const READER: &str = "test-only-reader-token-0002";
const DEADLINE: Duration = Duration::from_secs(60);

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/auth")
        .join(name)
}

fn tokens_file() -> PathBuf {
    fixture("test-only-tokens.yaml")
}

const ISSUER: &str = "https://issuer.test";
const AUDIENCE: &str = "sandgraph-api";

/// An RS256 JWT signed with `pem` under kid `rsa-1`, valid now unless `claims` say otherwise.
fn jwt(pem: &str, claims: Value) -> &'static str {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mut all = json!({
        "iss": ISSUER, "aud": AUDIENCE, "sub": "ci-bot",
        "exp": now + 300, "iat": now, "scope": "runs:read",
    });
    for (k, v) in claims.as_object().unwrap() {
        all[k] = v.clone();
    }
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    header.kid = Some("rsa-1".into());
    let key =
        jsonwebtoken::EncodingKey::from_rsa_pem(&std::fs::read(fixture(pem)).unwrap()).unwrap();
    Box::leak(
        jsonwebtoken::encode(&header, &all, &key)
            .unwrap()
            .into_boxed_str(),
    )
}

// ---------------------------------------------------------------------------------------------
// A minimal blocking HTTP/1.1 client (one request per connection).

#[derive(Debug)]
struct Resp {
    status: u16,
    headers: BTreeMap<String, String>,
    body: Vec<u8>,
}

impl Resp {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "status {} body is not JSON ({e}): {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// The problem `type` slug (after the last `/`).
    fn problem(&self) -> String {
        assert_eq!(
            self.headers.get("content-type").map(String::as_str),
            Some("application/problem+json"),
            "not a problem response: {} {}",
            self.status,
            String::from_utf8_lossy(&self.body)
        );
        let v = self.json();
        let t = v["type"].as_str().expect("problem has a type");
        assert_eq!(v["status"], self.status);
        t.rsplit('/').next().unwrap().to_owned()
    }
}

fn read_head(r: &mut impl BufRead) -> (u16, BTreeMap<String, String>) {
    let mut line = String::new();
    r.read_line(&mut line).expect("status line");
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {line:?}"));
    let mut headers = BTreeMap::new();
    loop {
        let mut h = String::new();
        r.read_line(&mut h).expect("header line");
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let (k, v) = h.split_once(':').expect("header");
        headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
    }
    (status, headers)
}

/// Reads one chunk of a chunked body; `None` at the last chunk.
fn read_chunk(r: &mut impl BufRead) -> Option<Vec<u8>> {
    let mut size = String::new();
    if r.read_line(&mut size).ok()? == 0 {
        return None;
    }
    let n = usize::from_str_radix(size.trim(), 16).ok()?;
    if n == 0 {
        return None;
    }
    let mut buf = vec![0; n + 2];
    r.read_exact(&mut buf).ok()?;
    buf.truncate(n);
    Some(buf)
}

fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Resp {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if let Some(t) = token {
        head.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    s.write_all(head.as_bytes()).unwrap();
    // A server may answer (413) before reading a large body and close; that is fine.
    let _ = s.write_all(body);
    let mut r = BufReader::new(s);
    let (status, headers) = read_head(&mut r);
    let mut body = Vec::new();
    if headers.get("transfer-encoding").map(String::as_str) == Some("chunked") {
        while let Some(c) = read_chunk(&mut r) {
            body.extend(c);
        }
    } else if let Some(n) = headers.get("content-length") {
        body = vec![0; n.parse().unwrap()];
        r.read_exact(&mut body).unwrap();
    } else {
        r.read_to_end(&mut body).unwrap();
    }
    Resp {
        status,
        headers,
        body,
    }
}

fn get(addr: SocketAddr, path: &str) -> Resp {
    request(addr, "GET", path, Some(ADMIN), &[], b"")
}

fn post_json(addr: SocketAddr, path: &str, body: &Value) -> Resp {
    request(
        addr,
        "POST",
        path,
        Some(ADMIN),
        &[("Content-Type", "application/json")],
        body.to_string().as_bytes(),
    )
}

fn post_yaml(addr: SocketAddr, yaml: &str) -> Resp {
    request(
        addr,
        "POST",
        "/v1/graphs",
        Some(ADMIN),
        &[("Content-Type", "application/yaml")],
        yaml.as_bytes(),
    )
}

/// One server-sent event.
#[derive(Debug, Clone, PartialEq)]
struct Sse {
    id: u64,
    event: String,
    data: Value,
}

/// An open event stream.
struct SseStream {
    r: BufReader<TcpStream>,
    buf: String,
    pub heartbeats: usize,
}

impl SseStream {
    fn open(addr: SocketAddr, run: &str, last_event_id: Option<u64>) -> SseStream {
        let mut s = TcpStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(DEADLINE)).unwrap();
        let mut head = format!(
            "GET /v1/runs/{run}/events HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {ADMIN}\r\nAccept: text/event-stream\r\n"
        );
        if let Some(id) = last_event_id {
            head.push_str(&format!("Last-Event-ID: {id}\r\n"));
        }
        head.push_str("\r\n");
        s.write_all(head.as_bytes()).unwrap();
        let mut r = BufReader::new(s);
        let (status, headers) = read_head(&mut r);
        assert_eq!(status, 200);
        assert_eq!(headers["content-type"], "text/event-stream");
        SseStream {
            r,
            buf: String::new(),
            heartbeats: 0,
        }
    }

    /// The next event, or `None` when the stream ended.
    fn next(&mut self) -> Option<Sse> {
        loop {
            while let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                let mut id = None;
                let mut event = String::new();
                let mut data = String::new();
                for line in block.lines() {
                    if line.starts_with(':') {
                        self.heartbeats += 1;
                    } else if let Some(v) = line.strip_prefix("id: ") {
                        id = Some(v.parse().unwrap());
                    } else if let Some(v) = line.strip_prefix("event: ") {
                        event = v.to_owned();
                    } else if let Some(v) = line.strip_prefix("data: ") {
                        data.push_str(v);
                    }
                }
                if let Some(id) = id {
                    return Some(Sse {
                        id,
                        event,
                        data: serde_json::from_str(&data).unwrap(),
                    });
                }
            }
            let chunk = read_chunk(&mut self.r)?;
            self.buf.push_str(&String::from_utf8(chunk).unwrap());
        }
    }

    fn until(&mut self, pred: impl Fn(&Sse) -> bool) -> Vec<Sse> {
        let mut out = Vec::new();
        while let Some(e) = self.next() {
            let stop = pred(&e);
            out.push(e);
            if stop {
                return out;
            }
        }
        panic!("stream ended before the expected event; got {out:#?}");
    }

    /// Reads while no event arrives until a heartbeat comment does; returns what was read.
    fn idle_until_heartbeat(&mut self) -> String {
        let mut read = std::mem::take(&mut self.buf);
        while !read.contains(": heartbeat") {
            let chunk = read_chunk(&mut self.r).expect("stream open");
            read.push_str(&String::from_utf8(chunk).unwrap());
        }
        read
    }

    fn rest(&mut self) -> Vec<Sse> {
        let mut out = Vec::new();
        while let Some(e) = self.next() {
            out.push(e);
        }
        out
    }
}

// ---------------------------------------------------------------------------------------------
// Servers.

/// The API in this process on its own runtime (so the tests' blocking clients never block it).
struct TestApi {
    addr: SocketAddr,
    _server: common::api_server::ApiServer,
    _dir: Option<tempfile::TempDir>,
}

fn test_config(journal: PathBuf) -> Config {
    let mut c = Config::with_journal(journal);
    c.listen = "127.0.0.1:0".parse().unwrap();
    c.cache_dir = Some(common::cache_dir());
    c.allow_private = vec!["127.0.0.1".parse().unwrap()];
    c.auth_tokens = Some(tokens_file());
    c.auth_jwks = Some(fixture("test-only-jwks.json"));
    c.auth_issuer = Some(ISSUER.into());
    c.auth_audience = Some(AUDIENCE.into());
    c.header_timeout = Duration::from_millis(500);
    c.body_timeout = Duration::from_millis(500);
    c.sse_heartbeat = Duration::from_millis(100);
    c.shutdown_grace = Duration::from_millis(500);
    c.rate_limit = 10_000.0;
    c.rate_burst = 10_000;
    c
}

impl TestApi {
    fn start() -> TestApi {
        let dir = tempfile::tempdir().unwrap();
        let mut t = TestApi::with(test_config(dir.path().join("journal")));
        t._dir = Some(dir);
        t
    }

    fn with(config: Config) -> TestApi {
        let server = common::api_server::ApiServer::start(config);
        TestApi {
            addr: server.addr,
            _server: server,
            _dir: None,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Fixtures.

fn tool_wasm(name: &str) -> &'static str {
    sandgraph_test_artifacts::TOOLS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, p)| *p)
        .unwrap_or_else(|| panic!("no tool {name}"))
}

fn upload(addr: SocketAddr, manifest: &str, wasm_path: &str) -> Resp {
    let wasm = std::fs::read(wasm_path).unwrap();
    post_json(
        addr,
        "/v1/tools",
        &json!({
            "manifest": manifest,
            "component": base64::engine::general_purpose::STANDARD.encode(wasm),
        }),
    )
}

fn upload_tool(addr: SocketAddr, name: &str) {
    let manifest =
        std::fs::read_to_string(repo().join(format!("tools/{name}/{name}.sandgraph.yaml")))
            .unwrap();
    let r = upload(addr, &manifest, tool_wasm(name));
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
}

fn upload_gate_fetcher(addr: SocketAddr, gates: &[&Gate]) {
    let manifest = gate_fetcher_manifest(gates);
    let r = upload(addr, &manifest, common::hostile("egress_fetch"));
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
}

/// calc, then a fetch that waits at the gate, then calc again.
const GATED: &str = r#"
apiVersion: sandgraph.dev/v1
kind: Graph
metadata: { name: gated }
spec:
  input:
    type: object
    required: [url]
    properties: { url: { type: string } }
  nodes:
    - { id: before, kind: tool, component: calc, input: { expr: "'1 + 1'" } }
    - id: wait
      kind: tool
      component: egress_fetch
      input: { url: input.url, method: "'GET'" }
    - { id: after, kind: tool, component: calc, input: { expr: "string(nodes.before.value) + ' * 10'" } }
  edges:
    - { from: before, to: wait }
    - { from: wait, to: after }
"#;

fn start_gated(addr: SocketAddr, gate: &Gate) -> String {
    let r = post_json(
        addr,
        "/v1/runs",
        &json!({"graph": "gated", "input": {"url": gate.url()}}),
    );
    assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
    r.json()["run"].as_str().unwrap().to_owned()
}

fn run_status(addr: SocketAddr, run: &str) -> Value {
    let r = get(addr, &format!("/v1/runs/{run}"));
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    r.json()
}

// ---------------------------------------------------------------------------------------------
// Tests.

#[test]
fn a_graph_and_a_run_are_served_as_pictures_that_cannot_run_anything() {
    let api = TestApi::start();
    let addr = api.addr;
    upload_tool(addr, "calc");
    assert_eq!(post_yaml(addr, ADD).status, 201);
    let done = post_json(
        addr,
        "/v1/runs?wait=true",
        &json!({"graph": "add", "input": {"n": 41}}),
    );
    assert_eq!(done.status, 200, "{}", String::from_utf8_lossy(&done.body));
    let run = done.json()["run"].as_str().unwrap().to_owned();
    let r = get(addr, &format!("/v1/runs/{run}/picture"));
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.headers["content-type"], "image/svg+xml");
    assert_eq!(r.headers["x-content-type-options"], "nosniff");
    assert_eq!(
        r.headers["content-security-policy"],
        "default-src 'none'; sandbox"
    );
    let svg = String::from_utf8(r.body).unwrap();
    assert!(svg.starts_with("<svg"), "{svg}");
    assert!(
        svg.contains("data-node=\"add\" data-state=\"succeeded\""),
        "{svg}"
    );
    let r = get(addr, &format!("/v1/runs/{run}/picture?format=mermaid"));
    assert_eq!(r.status, 200);
    assert!(r.headers["content-type"].starts_with("text/plain"));
    assert!(String::from_utf8_lossy(&r.body).starts_with("flowchart TD"));
    let r = get(addr, "/v1/graphs/add/picture?format=dot");
    assert_eq!(r.status, 200);
    assert!(String::from_utf8_lossy(&r.body).starts_with("digraph \"add\""));
    // Bad input: a format it does not draw, a run or graph that is not there.
    let r = get(addr, &format!("/v1/runs/{run}/picture?format=png"));
    assert_eq!((r.status, r.problem().as_str()), (400, "invalid-format"));
    let r = get(addr, "/v1/runs/00000000000000000000000000000000/picture");
    assert_eq!(r.status, 404, "{}", String::from_utf8_lossy(&r.body));
    let r = get(addr, "/v1/graphs/nope/picture");
    assert_eq!((r.status, r.problem().as_str()), (404, "unknown-graph"));
    // The reader token may look.
    let r = request(
        addr,
        "GET",
        "/v1/graphs/add/picture",
        Some(READER),
        &[],
        b"",
    );
    assert_eq!(r.status, 200);
}

#[test]
fn tools_graphs_and_a_waited_run_with_its_event_stream() {
    let api = TestApi::start();
    let addr = api.addr;
    upload_tool(addr, "calc");
    upload_tool(addr, "text-stats");

    let tools = get(addr, "/v1/tools").json();
    let names: Vec<&str> = tools["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["calc", "text-stats"]);
    let calc = get(addr, "/v1/tools/calc").json();
    assert_eq!(calc["input_schema"]["type"], "object", "{calc}");
    assert_eq!(calc["capabilities"]["workspace"], "none");
    assert!(calc["digest"].as_str().unwrap().starts_with("sha256:"));

    // An uploaded tool's declared output schema types `nodes.<id>`: calc's `value` is a number,
    // so adding a string to it is refused at its line:col before any run.
    let typed = "apiVersion: sandgraph.dev/v1\nkind: Graph\nmetadata:\n  name: typed\nspec:\n  nodes:\n    - id: a\n      kind: tool\n      component: calc\n      input: { expr: \"'1 + 2'\" }\n    - id: b\n      kind: tool\n      component: calc\n      input: { expr: \"nodes.a.value + ' * 2'\" }\n  edges:\n    - { from: a, to: b }\n";
    let r = post_yaml(addr, typed);
    assert_eq!(r.status, 422, "{}", String::from_utf8_lossy(&r.body));
    let problem = r.json();
    assert_eq!(problem["errors"][0]["line"], 14, "{problem}");
    assert!(
        problem["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("and a string with `+`, which always fails"),
        "{problem}"
    );

    let yaml = loop_yaml();
    let r = post_yaml(addr, &yaml);
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    let version = r.json()["version"].as_str().unwrap().to_owned();
    // The same document again is the same version.
    let again = post_yaml(addr, &yaml);
    assert_eq!(again.status, 200);
    assert_eq!(again.json()["version"], version.as_str());
    let g = get(addr, "/v1/graphs/conditional-loop").json();
    assert_eq!(g["version"], version.as_str());
    assert_eq!(g["source"], yaml.as_str());
    let listed = get(addr, "/v1/graphs").json();
    assert_eq!(listed["graphs"][0]["name"], "conditional-loop");
    let by_version = get(
        addr,
        &format!("/v1/graphs/conditional-loop?version={version}"),
    );
    assert_eq!(by_version.status, 200);

    let r = post_json(
        addr,
        "/v1/runs?wait=true",
        &json!({"graph": "conditional-loop", "version": version, "input": {"start": 3, "limit": 50}}),
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let done = r.json();
    assert_eq!(done["status"], "succeeded", "{done}");
    let run = done["run"].as_str().unwrap().to_owned();
    assert!(done["output"]["report"].is_object(), "{done}");

    let shown = run_status(addr, &run);
    assert_eq!(shown["status"], "succeeded");
    let steps: Vec<&str> = shown["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["step"].as_str().unwrap())
        .collect();
    assert_eq!(steps[0], "seed#1");
    assert!(steps.contains(&"report#1"), "{steps:?}");
    let doubles: Vec<Value> = shown["steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["node"] == "double")
        .map(|s| s["output"]["value"].clone())
        .collect();
    assert_eq!(
        doubles,
        [
            json!(6.0),
            json!(12.0),
            json!(24.0),
            json!(48.0),
            json!(96.0)
        ]
    );
    assert!(
        shown["steps"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["status"] == "completed")
    );

    // A finished run streams every event, ids contiguous from 0, and ends after RunFinished.
    let all = SseStream::open(addr, &run, None).rest();
    assert_eq!(all.first().unwrap().event, "run_created");
    assert_eq!(all.last().unwrap().event, "run_finished");
    assert_eq!(all.last().unwrap().data["status"], "succeeded");
    let ids: Vec<u64> = all.iter().map(|e| e.id).collect();
    assert_eq!(ids, (0..all.len() as u64).collect::<Vec<_>>());
    assert_eq!(shown["events"], all.len());
    // Resuming after event k yields exactly the events after k.
    let k = 5;
    let tail = SseStream::open(addr, &run, Some(k)).rest();
    assert_eq!(tail, all[k as usize + 1..].to_vec());

    let runs = get(addr, "/v1/runs?graph=conditional-loop&status=succeeded").json();
    assert_eq!(runs["runs"].as_array().unwrap().len(), 1);
    assert_eq!(
        get(addr, "/v1/runs?status=failed").json()["runs"],
        json!([])
    );

    let metrics = String::from_utf8(get(addr, "/metrics").body).unwrap();
    for needle in [
        "sandgraph_runs_total{status=\"succeeded\"} 1",
        "sandgraph_step_duration_seconds_count{graph=\"conditional-loop\",node=\"double\"} 5",
        "sandgraph_tool_outcomes_total{tool=\"calc\",outcome=\"ok\"} 6",
        "sandgraph_run_queue_depth 0",
        "sandgraph_sse_streams_in_flight 0",
        "sandgraph_journal_flushes_total",
    ] {
        assert!(metrics.contains(needle), "no `{needle}` in\n{metrics}");
    }
    let value = |name: &str| -> f64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in\n{metrics}"))
    };
    // Every durable append was flushed and timed.
    assert!(value("sandgraph_journal_flush_seconds_count") >= 1.0);
    assert_eq!(
        value("sandgraph_journal_flush_seconds_count"),
        value("sandgraph_journal_flushes_total")
    );
}

#[test]
fn reconnecting_mid_run_with_last_event_id_gets_exactly_the_missed_events_then_cancel() {
    let api = TestApi::start();
    let addr = api.addr;
    let gate = Gate::start();
    let closed = Gate::start();
    upload_tool(addr, "calc");
    upload_gate_fetcher(addr, &[&gate, &closed]);
    assert_eq!(post_yaml(addr, GATED).status, 201);
    let run = start_gated(addr, &gate);

    // Read the first three events, then drop the connection.
    let mut first = SseStream::open(addr, &run, None);
    let head: Vec<Sse> = (0..3).map(|_| first.next().unwrap()).collect();
    drop(first);
    // More happens while disconnected: the run reaches the gate.
    wait_for("the fetch to reach the gate", || {
        gate.hits.load(Ordering::SeqCst) == 1
    });
    let mut resumed = SseStream::open(addr, &run, Some(head[2].id));
    let middle =
        resumed.until(|e| e.event == "crossing" && e.data["crossing"]["kind"] == "http_intent");
    assert_eq!(middle[0].id, 3, "resumed right after the last event seen");
    // Idle while the step waits: only heartbeats arrive.
    let idle = resumed.idle_until_heartbeat();
    assert!(
        !idle.contains("id: "),
        "no events while the step waits: {idle}"
    );
    gate.open();
    let rest = resumed.rest();
    assert_eq!(rest.last().unwrap().event, "run_finished");
    assert_eq!(rest.last().unwrap().data["status"], "succeeded");
    assert_eq!(rest.last().unwrap().data["output"]["after"]["value"], 20.0);
    // Together they are exactly the run's journal, once each and in order.
    let mut seen = head.clone();
    seen.extend(middle);
    seen.extend(rest);
    let whole = SseStream::open(addr, &run, None).rest();
    assert_eq!(seen, whole);

    // Cancel: a second run parks at a gate that never opens and is cancelled there.
    let run2 = start_gated(addr, &closed);
    wait_for("the second run at its gate", || {
        closed.hits.load(Ordering::SeqCst) == 1
    });
    let r = request(
        addr,
        "POST",
        &format!("/v1/runs/{run2}/cancel"),
        Some(ADMIN),
        &[],
        b"",
    );
    assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
    wait_for("the run to end cancelled", || {
        run_status(addr, &run2)["status"] == "cancelled"
    });
    let r = request(
        addr,
        "POST",
        &format!("/v1/runs/{run2}/cancel"),
        Some(ADMIN),
        &[],
        b"",
    );
    assert_eq!((r.status, r.problem().as_str()), (409, "run-finished"));
    let events = SseStream::open(addr, &run2, None).rest();
    assert_eq!(events.last().unwrap().data["status"], "cancelled");
}

#[test]
fn an_idempotency_key_returns_the_same_run_and_refuses_a_different_body() {
    let api = TestApi::start();
    let addr = api.addr;
    loop_graph(addr);
    let body = json!({"graph": "conditional-loop", "input": {"start": 1, "limit": 4}}).to_string();
    let submit = |key: &str, body: &str| submit_keyed(addr, key, body);
    let first = submit("order-42", &body);
    assert_eq!(first.status, 202);
    let second = submit("order-42", &body);
    assert_eq!(second.status, 200);
    assert_eq!(
        second
            .headers
            .get("idempotent-replayed")
            .map(String::as_str),
        Some("true")
    );
    assert_eq!(first.json()["run"], second.json()["run"]);
    let other = json!({"graph": "conditional-loop", "input": {"start": 2, "limit": 4}}).to_string();
    let r = submit("order-42", &other);
    assert_eq!(
        (r.status, r.problem().as_str()),
        (422, "idempotency-key-reused")
    );
    let third = submit("order-43", &body);
    assert_eq!(third.status, 202);
    assert_ne!(third.json()["run"], first.json()["run"]);
    let run = first.json()["run"].as_str().unwrap().to_owned();
    wait_for("the run to finish", || {
        run_status(addr, &run)["status"] == "succeeded"
    });
    assert_eq!(
        get(addr, "/v1/runs").json()["runs"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
}

/// One bad request and what it must get back.
struct Case {
    name: &'static str,
    method: &'static str,
    path: String,
    token: Option<&'static str>,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
    status: u16,
    problem: &'static str,
}

fn case(
    name: &'static str,
    method: &'static str,
    path: &str,
    status: u16,
    problem: &'static str,
) -> Case {
    Case {
        name,
        method,
        path: path.to_owned(),
        token: Some(ADMIN),
        headers: Vec::new(),
        body: Vec::new(),
        status,
        problem,
    }
}

impl Case {
    fn yaml(mut self, body: impl Into<Vec<u8>>) -> Case {
        self.headers
            .push(("Content-Type", "application/yaml".into()));
        self.body = body.into();
        self
    }
    fn json(mut self, body: impl Into<Vec<u8>>) -> Case {
        self.headers
            .push(("Content-Type", "application/json".into()));
        self.body = body.into();
        self
    }
    fn header(mut self, k: &'static str, v: &str) -> Case {
        self.headers.push((k, v.to_owned()));
        self
    }
    fn token(mut self, t: Option<&'static str>) -> Case {
        self.token = t;
        self
    }
}

#[test]
fn bad_requests_get_their_status_and_problem_type_while_others_are_served() {
    let api = TestApi::start();
    let addr = api.addr;
    loop_graph(addr);
    let yaml = loop_yaml();
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    let calc_manifest =
        std::fs::read_to_string(repo().join("tools/calc/calc.sandgraph.yaml")).unwrap();
    let tool_body = |manifest: &str, wasm: &[u8]| {
        json!({"manifest": manifest, "component": b64(wasm)}).to_string()
    };
    let alias_bomb = "a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\nc: [*b, *b, *b, *b, *b, *b, *b, *b, *b]\n";
    let missing_component = yaml.replace("component: text-stats", "component: no-such-tool");
    let run = |input: Value| json!({"graph": "conditional-loop", "input": input}).to_string();
    let unknown_run = "0123456789abcdef0123456789abcdef";
    let cases = vec![
        case("malformed YAML", "POST", "/v1/graphs", 422, "graph-invalid")
            .yaml("spec: [unclosed\n"),
        case("alias bomb", "POST", "/v1/graphs", 422, "graph-invalid").yaml(alias_bomb),
        case(
            "graph naming a tool nobody uploaded",
            "POST",
            "/v1/graphs",
            422,
            "graph-invalid",
        )
        .yaml(missing_component),
        case(
            "graph over the body cap",
            "POST",
            "/v1/graphs",
            413,
            "body-too-large",
        )
        .yaml(vec![b'#'; (1 << 20) + 1]),
        case(
            "graph sent as JSON",
            "POST",
            "/v1/graphs",
            415,
            "unsupported-media-type",
        )
        .json(yaml.clone()),
        case(
            "graph with no content type",
            "POST",
            "/v1/graphs",
            415,
            "unsupported-media-type",
        ),
        case("graph not UTF-8", "POST", "/v1/graphs", 400, "bad-encoding")
            .yaml(vec![0xff, 0xfe, b'a']),
        case(
            "unknown graph",
            "GET",
            "/v1/graphs/nope",
            404,
            "unknown-graph",
        ),
        case(
            "unknown graph version",
            "GET",
            "/v1/graphs/conditional-loop?version=abc",
            404,
            "unknown-graph-version",
        ),
        case(
            "tool upload as YAML",
            "POST",
            "/v1/tools",
            415,
            "unsupported-media-type",
        )
        .yaml(calc_manifest.clone()),
        case("tool upload not JSON", "POST", "/v1/tools", 400, "bad-json").json("{"),
        case(
            "tool component not base64",
            "POST",
            "/v1/tools",
            400,
            "bad-encoding",
        )
        .json(json!({"manifest": calc_manifest, "component": "%%%"}).to_string()),
        case(
            "non-component upload",
            "POST",
            "/v1/tools",
            422,
            "not-a-tool-component",
        )
        .json(tool_body(&calc_manifest, b"definitely not wasm")),
        case(
            "core module upload",
            "POST",
            "/v1/tools",
            422,
            "not-a-tool-component",
        )
        .json(tool_body(&calc_manifest, b"\0asm\x01\0\0\0")),
        case(
            "component of the wrong world",
            "POST",
            "/v1/tools",
            422,
            "not-a-tool-component",
        )
        .json(tool_body(
            &calc_manifest,
            &std::fs::read(common::hostile("component_wrong_world")).unwrap(),
        )),
        case(
            "invalid manifest",
            "POST",
            "/v1/tools",
            422,
            "manifest-invalid",
        )
        .json(tool_body("kind: Nope\n", b"\0asm")),
        case(
            "manifest name differs from the component",
            "POST",
            "/v1/tools",
            422,
            "tool-name-mismatch",
        )
        .json(tool_body(
            &calc_manifest.replace("name: calc", "name: other"),
            &std::fs::read(tool_wasm("calc")).unwrap(),
        )),
        case("unknown tool", "GET", "/v1/tools/nope", 404, "unknown-tool"),
        case(
            "run of an unknown graph",
            "POST",
            "/v1/runs",
            404,
            "unknown-graph",
        )
        .json(json!({"graph": "nope", "input": {}}).to_string()),
        case(
            "run of an unknown version",
            "POST",
            "/v1/runs",
            404,
            "unknown-graph-version",
        )
        .json(json!({"graph": "conditional-loop", "version": "abc", "input": {}}).to_string()),
        case(
            "run input against the schema",
            "POST",
            "/v1/runs",
            422,
            "invalid-input",
        )
        .json(run(json!({"start": "three"}))),
        case("run body not JSON", "POST", "/v1/runs", 400, "bad-json").json("graph=x"),
        case(
            "run body with an unknown field",
            "POST",
            "/v1/runs",
            400,
            "bad-json",
        )
        .json(json!({"graph": "conditional-loop", "inputs": {}}).to_string()),
        case(
            "run as form data",
            "POST",
            "/v1/runs",
            415,
            "unsupported-media-type",
        )
        .header("Content-Type", "application/x-www-form-urlencoded"),
        case(
            "run body over the cap",
            "POST",
            "/v1/runs",
            413,
            "body-too-large",
        )
        .json(vec![b' '; (1 << 20) + 1]),
        case(
            "unknown run",
            "GET",
            &format!("/v1/runs/{unknown_run}"),
            404,
            "unknown-run",
        ),
        case("not a run id", "GET", "/v1/runs/xyz", 400, "invalid-run-id"),
        case(
            "events of an unknown run",
            "GET",
            &format!("/v1/runs/{unknown_run}/events"),
            404,
            "unknown-run",
        ),
        case(
            "cancel of an unknown run",
            "POST",
            &format!("/v1/runs/{unknown_run}/cancel"),
            404,
            "unknown-run",
        ),
        case(
            "unknown route",
            "GET",
            "/v2/everything",
            404,
            "unknown-route",
        ),
        case(
            "wrong method",
            "DELETE",
            "/v1/graphs",
            405,
            "method-not-allowed",
        ),
        case(
            "bad run status filter",
            "GET",
            "/v1/runs?status=done",
            400,
            "invalid-query",
        ),
        case(
            "no credentials",
            "GET",
            "/v1/graphs",
            401,
            "missing-credentials",
        )
        .token(None),
        case("unknown token", "GET", "/v1/graphs", 401, "unknown-token")
            .token(Some("test-only-wrong")),
        case(
            "reader uploading a graph",
            "POST",
            "/v1/graphs",
            403,
            "insufficient-scope",
        )
        .token(Some(READER))
        .yaml(yaml.clone()),
        case(
            "reader starting a run",
            "POST",
            "/v1/runs",
            403,
            "insufficient-scope",
        )
        .token(Some(READER))
        .json(run(json!({"start": 1, "limit": 2}))),
    ];
    assert!(cases.len() >= 25);
    let mut failures = Vec::new();
    for c in &cases {
        let headers: Vec<(&str, &str)> = c.headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let r = request(addr, c.method, &c.path, c.token, &headers, &c.body);
        let got = (
            r.status,
            if r.status >= 400 {
                r.problem()
            } else {
                String::new()
            },
        );
        if got != (c.status, c.problem.to_owned()) {
            failures.push(format!(
                "{}: expected {} {}, got {} {} {}",
                c.name,
                c.status,
                c.problem,
                got.0,
                got.1,
                String::from_utf8_lossy(&r.body)
            ));
        }
        // The server keeps serving others.
        assert_eq!(get(addr, "/v1/graphs").status, 200, "after {}", c.name);
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    // Graph errors carry line and column.
    let r = post_yaml(addr, &yaml.replace("to: report", "to: reprot"));
    let p = r.json();
    assert_eq!(r.status, 422);
    let e = &p["errors"][0];
    assert!(
        e["line"].as_u64().unwrap() > 1 && e["column"].as_u64().unwrap() >= 1,
        "{p}"
    );
    assert!(e["message"].as_str().unwrap().contains("reprot"), "{p}");
    // A valid JWT with the scope is served.
    let reader_jwt = jwt("test-only-rsa.pem", json!({}));
    assert_eq!(
        request(addr, "GET", "/v1/graphs", Some(reader_jwt), &[], b"").status,
        200
    );
    // 401 says how to authenticate.
    let r = request(addr, "GET", "/v1/runs", None, &[], b"");
    assert!(r.headers["www-authenticate"].starts_with("Bearer"));

    // Slow-loris: a client that never finishes its head is cut off; others are served meanwhile.
    let mut slow = TcpStream::connect(addr).unwrap();
    slow.write_all(b"GET /v1/graphs HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    slow.set_read_timeout(Some(DEADLINE)).unwrap();
    assert_eq!(get(addr, "/healthz").status, 200);
    let mut buf = Vec::new();
    let _ = slow.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    assert!(buf.is_empty() || text.starts_with("HTTP/1.1 408"), "{text}");
    // A body that stalls gets 408 body-timeout.
    let mut stall = TcpStream::connect(addr).unwrap();
    stall.set_read_timeout(Some(DEADLINE)).unwrap();
    stall
        .write_all(
            format!("POST /v1/graphs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ADMIN}\r\nContent-Type: application/yaml\r\nContent-Length: 100\r\n\r\nspec:").as_bytes(),
        )
        .unwrap();
    let mut r = BufReader::new(stall);
    let (status, _) = read_head(&mut r);
    assert_eq!(status, 408);
    assert_eq!(get(addr, "/healthz").status, 200);
    assert_eq!(get(addr, "/readyz").status, 200);
}

/// The server as a child process, for SIGTERM and restart.
struct Child {
    child: std::process::Child,
    addr: SocketAddr,
}

fn spawn_server(journal: &Path, grace: &str) -> Child {
    spawn_server_with(journal.as_os_str(), grace, &[])
}

/// [`spawn_server`] on `journal` (a directory or a `postgres://` URL) with more settings.
fn spawn_server_with(journal: &std::ffi::OsStr, grace: &str, env: &[(&str, &str)]) -> Child {
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_sandgraph"))
        .arg("serve")
        .env("SANDGRAPH_LISTEN", "127.0.0.1:0")
        .env("SANDGRAPH_JOURNAL", journal)
        .env("SANDGRAPH_CACHE_DIR", common::cache_dir())
        .env("SANDGRAPH_ALLOW_PRIVATE", "127.0.0.1")
        .env("SANDGRAPH_AUTH_TOKENS", tokens_file())
        .env("SANDGRAPH_SHUTDOWN_GRACE", grace)
        .env("RUST_LOG", "info")
        .envs(env.iter().copied())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start sandgraph serve");
    let addr = common::listening_addr(&mut child);
    Child { child, addr }
}

impl Drop for Child {
    /// A test that fails midway leaves no server behind.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Child {
    fn terminate(mut self) -> (std::process::ExitStatus, String) {
        // SAFETY: kill(2) on our own child's pid has no memory-safety preconditions.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let status = self.child.wait().unwrap();
        let mut logs = String::new();
        self.child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut logs)
            .unwrap();
        (status, logs)
    }
}

/// A server child on `journal` with calc and the gate fetcher, running GATED until its request
/// is held at `gate`; returns the server and the run id.
fn serve_a_run_held_at(gate: &Gate, journal: &Path, grace: &str) -> (Child, String) {
    let server = spawn_server(journal, grace);
    let addr = server.addr;
    upload_tool(addr, "calc");
    upload_gate_fetcher(addr, &[gate]);
    assert_eq!(post_yaml(addr, GATED).status, 201);
    let run = start_gated(addr, gate);
    wait_for("the run at the gate", || {
        gate.hits.load(Ordering::SeqCst) == 1
    });
    (server, run)
}

/// Starts a server on `journal` again, opens the gate and waits for the resumed GATED run to
/// succeed with its output.
fn restart_and_finish(journal: &Path, gate: &Gate, run: &str) -> Child {
    let server = spawn_server(journal, "5s");
    let addr = server.addr;
    assert_eq!(get(addr, "/readyz").status, 200);
    gate.open();
    wait_for("the resumed run to finish", || {
        run_status(addr, run)["status"] != "running"
    });
    let shown = run_status(addr, run);
    assert_eq!(shown["status"], "succeeded", "{shown}");
    assert_eq!(shown["output"]["after"]["value"], 20.0);
    server
}

#[test]
fn sigterm_mid_run_exits_cleanly_and_the_restarted_server_finishes_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let journal = dir.path().join("journal");
    let gate = Gate::start();
    let (server, run) = serve_a_run_held_at(&gate, &journal, "200ms");
    let (status, logs) = server.terminate();
    assert!(status.success(), "exit {status:?}\n{logs}");
    assert!(logs.contains("grace period over"), "{logs}");
    // JSON log lines carry the request id; the admin token never appears.
    assert!(logs.lines().any(|l| l.contains("\"request_id\"")), "{logs}");
    assert!(
        logs.lines()
            .any(|l| l.contains("\"step_id\":\"wait#1\"") && l.contains(&run)),
        "{logs}"
    );
    assert!(!logs.contains(ADMIN));

    // The restarted server resumes the run (tools and graphs were stored) and it finishes.
    let server = restart_and_finish(&journal, &gate, &run);
    assert_eq!(get(server.addr, "/v1/tools/calc").status, 200);
    let (status, logs) = server.terminate();
    assert!(status.success(), "{logs}");
}

#[test]
fn a_server_killed_mid_run_resumes_it_on_the_next_start_without_rerunning_completed_steps() {
    let dir = tempfile::tempdir().unwrap();
    let journal = dir.path().join("journal");
    let gate = Gate::start();
    let (mut server, run) = serve_a_run_held_at(&gate, &journal, "5s");
    // SIGKILL: no grace period, no final flush; only what the journal made durable survives.
    server.child.kill().unwrap();
    server.child.wait().unwrap();

    let server = restart_and_finish(&journal, &gate, &run);
    let addr = server.addr;
    // The interrupted GET was sent again once (GET is idempotent); `before` ran once.
    assert_eq!(gate.hits.load(Ordering::SeqCst), 2);
    let events = SseStream::open(addr, &run, None).rest();
    let started = |step: &str| {
        events
            .iter()
            .filter(|e| e.event == "step_started" && e.data["step"] == step)
            .count()
    };
    assert_eq!(
        started("before#1"),
        1,
        "{:?}",
        events.iter().map(|e| &e.event).collect::<Vec<_>>()
    );
    assert_eq!(started("wait#1"), 2);
    assert_eq!(started("after#1"), 1);
    let (status, logs) = server.terminate();
    assert!(status.success(), "{logs}");
}

#[test]
fn a_full_run_queue_and_a_spent_rate_limit_answer_429_with_retry_after() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path().join("journal"));
    config.max_concurrent_runs = 1;
    config.run_queue = 0;
    let api = TestApi::with(config);
    let addr = api.addr;
    let gate = Gate::start();
    upload_tool(addr, "calc");
    upload_gate_fetcher(addr, &[&gate]);
    assert_eq!(post_yaml(addr, GATED).status, 201);
    let run = start_gated(addr, &gate);
    // The one slot is taken and nothing may queue.
    let r = post_json(
        addr,
        "/v1/runs",
        &json!({"graph": "gated", "input": {"url": gate.url()}}),
    );
    assert_eq!((r.status, r.problem().as_str()), (429, "run-queue-full"));
    assert_eq!(r.headers["retry-after"], "1");
    gate.open();
    wait_for("the run to finish", || {
        run_status(addr, &run)["status"] == "succeeded"
    });
    // The slot is free again.
    wait_for("a free slot", || {
        let r = post_json(
            addr,
            "/v1/runs",
            &json!({"graph": "gated", "input": {"url": gate.url()}}),
        );
        r.status == 202
    });
    drop(api);

    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path().join("journal"));
    config.rate_limit = 0.01;
    config.rate_burst = 2;
    let api = TestApi::with(config);
    assert_eq!(get(api.addr, "/v1/graphs").status, 200);
    assert_eq!(get(api.addr, "/v1/graphs").status, 200);
    let r = get(api.addr, "/v1/graphs");
    assert_eq!((r.status, r.problem().as_str()), (429, "rate-limited"));
    assert!(r.headers["retry-after"].parse::<u64>().unwrap() >= 1);
    // Another subject has its own bucket; probes are not limited.
    assert_eq!(
        request(api.addr, "GET", "/v1/graphs", Some(READER), &[], b"").status,
        200
    );
    assert_eq!(get(api.addr, "/healthz").status, 200);
}

#[test]
fn shutdown_ends_event_streams_and_the_next_start_resumes_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let journal = dir.path().join("journal");
    let gate = Gate::start();
    let api = TestApi::with(test_config(journal.clone()));
    let addr = api.addr;
    upload_tool(addr, "calc");
    upload_gate_fetcher(addr, &[&gate]);
    assert_eq!(post_yaml(addr, GATED).status, 201);
    let run = start_gated(addr, &gate);
    wait_for("the run at the gate", || {
        gate.hits.load(Ordering::SeqCst) == 1
    });
    let mut stream = SseStream::open(addr, &run, None);
    stream.until(|e| e.event == "crossing");
    // Shut down: the stream ends (no run_finished), the run stays unfinished in the journal.
    drop(api);
    let rest = stream.rest();
    assert!(rest.iter().all(|e| e.event != "run_finished"), "{rest:?}");
    assert!(TcpStream::connect(addr).is_err() || get_status_or_closed(addr));
    // Started again on the same journal, it resumes and finishes the run.
    let api = TestApi::with(test_config(journal));
    gate.open();
    wait_for("the resumed run to finish", || {
        run_status(api.addr, &run)["status"] == "succeeded"
    });
}

/// True when a connection to `addr` is refused or closed without an answer.
fn get_status_or_closed(addr: SocketAddr) -> bool {
    let Ok(mut s) = TcpStream::connect(addr) else {
        return true;
    };
    let _ = s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    buf.is_empty()
}

#[test]
fn every_documented_route_answers_as_documented_and_every_route_is_documented() {
    let text = std::fs::read_to_string(repo().join("docs/openapi.yaml")).unwrap();
    let doc: Value = serde_norway::from_str(&text).unwrap();
    let api = TestApi::start();
    let addr = api.addr;
    loop_graph(addr);
    let yaml = loop_yaml();
    let r = post_json(
        addr,
        "/v1/runs?wait=true",
        &json!({"graph": "conditional-loop", "input": {"start": 1, "limit": 2}}),
    );
    let run = r.json()["run"].as_str().unwrap().to_owned();
    let calc_upload = json!({
        "manifest": std::fs::read_to_string(repo().join("tools/calc/calc.sandgraph.yaml")).unwrap(),
        "component": base64::engine::general_purpose::STANDARD.encode(std::fs::read(tool_wasm("calc")).unwrap()),
    })
    .to_string();
    let run_body =
        json!({"graph": "conditional-loop", "input": {"start": 1, "limit": 2}}).to_string();
    let paths = doc["paths"].as_object().unwrap();
    let mut checked = 0;
    for (template, item) in paths {
        let path = template
            .replace(
                "{name}",
                if template.starts_with("/v1/graphs") {
                    "conditional-loop"
                } else {
                    "calc"
                },
            )
            .replace("{id}", &run);
        let documented: Vec<String> = item
            .as_object()
            .unwrap()
            .keys()
            .filter(|k| *k != "parameters")
            .map(|k| k.to_uppercase())
            .collect();
        for method in ["GET", "POST", "PUT", "DELETE", "PATCH"] {
            let Some(op) = item.get(method.to_lowercase()) else {
                let r = request(addr, method, &path, Some(ADMIN), &[], b"");
                assert_eq!(
                    (r.status, r.problem().as_str()),
                    (405, "method-not-allowed"),
                    "{method} {template} is not documented, so it must not be served"
                );
                let mut allowed: Vec<String> =
                    r.headers["allow"].split(", ").map(str::to_owned).collect();
                allowed.sort();
                let mut want = documented.clone();
                want.sort();
                assert_eq!(allowed, want, "Allow of {template}");
                continue;
            };
            let (ctype, body): (&str, &[u8]) = match (method, template.as_str()) {
                ("POST", "/v1/graphs") => ("application/yaml", yaml.as_bytes()),
                ("POST", "/v1/tools") => ("application/json", calc_upload.as_bytes()),
                ("POST", "/v1/runs") => ("application/json", run_body.as_bytes()),
                _ => ("application/json", b""),
            };
            let r = request(
                addr,
                method,
                &path,
                Some(ADMIN),
                &[("Content-Type", ctype)],
                body,
            );
            let responses = op["responses"].as_object().unwrap();
            let status = r.status.to_string();
            let documented_response = responses.get(&status).unwrap_or_else(|| {
                panic!(
                    "{method} {template} answered {status}, which is not documented: {}",
                    String::from_utf8_lossy(&r.body)
                )
            });
            let resolved = match documented_response.get("$ref").and_then(Value::as_str) {
                Some(reference) => {
                    let name = reference.rsplit('/').next().unwrap();
                    &doc["components"]["responses"][name]
                }
                None => documented_response,
            };
            let media: Vec<&String> = resolved["content"].as_object().unwrap().keys().collect();
            let got = r.headers["content-type"]
                .split(';')
                .next()
                .unwrap()
                .to_owned();
            assert!(
                media.iter().any(|m| **m == got),
                "{method} {template} {status}: content type {got} is not one of {media:?}"
            );
            checked += 1;
        }
    }
    assert_eq!(checked, 20, "every documented operation was called");
    for undocumented in [
        "/v1",
        "/v1/graphs/a/b",
        &format!("/v1/runs/{run}/other"),
        "/v2/runs",
    ] {
        let r = get(addr, undocumented);
        assert_eq!(
            (r.status, r.problem().as_str()),
            (404, "unknown-route"),
            "{undocumented}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Paging, idempotency key lifetime and per-key serialisation, oversized heads, refusal labels.

/// The conditional-loop example graph's YAML.
fn loop_yaml() -> String {
    std::fs::read_to_string(repo().join("graphs/conditional-loop.yaml")).unwrap()
}

/// Uploads calc and text-stats and stores the conditional-loop graph.
fn loop_graph(addr: SocketAddr) {
    upload_tool(addr, "calc");
    upload_tool(addr, "text-stats");
    assert_eq!(post_yaml(addr, &loop_yaml()).status, 201);
}

const LOOP_RUN: &str = r#"{"graph": "conditional-loop", "input": {"start": 1, "limit": 2}}"#;

fn submit_keyed(addr: SocketAddr, key: &str, body: &str) -> Resp {
    request(
        addr,
        "POST",
        "/v1/runs",
        Some(ADMIN),
        &[
            ("Content-Type", "application/json"),
            ("Idempotency-Key", key),
        ],
        body.as_bytes(),
    )
}

fn run_ids(page: &Value) -> Vec<String> {
    page["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["run"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn run_listing_pages_with_limit_and_an_opaque_cursor_in_creation_order() {
    let api = TestApi::start();
    let addr = api.addr;
    loop_graph(addr);
    for _ in 0..5 {
        let r = post_json(
            addr,
            "/v1/runs?wait=true",
            &serde_json::from_str(LOOP_RUN).unwrap(),
        );
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    }
    let all = get(addr, "/v1/runs").json();
    assert_eq!(all["next_cursor"], Value::Null);
    let every = run_ids(&all);
    assert_eq!(every.len(), 5);
    // Ordered by (creation time, id).
    let keys: Vec<(u64, String)> = all["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["created_ms"].as_u64().unwrap(),
                r["run"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let mut sorted = keys.clone();
    sorted.sort();
    assert_eq!(keys, sorted);

    // Pages of 2: 2, 2, 1, then no cursor; together exactly the full list.
    let mut paged = Vec::new();
    let mut sizes = Vec::new();
    let mut cursors = Vec::new();
    let mut path = "/v1/runs?limit=2".to_owned();
    loop {
        let page = get(addr, &path).json();
        let ids = run_ids(&page);
        sizes.push(ids.len());
        paged.extend(ids);
        match page["next_cursor"].as_str() {
            Some(c) => {
                cursors.push(c.to_owned());
                path = format!("/v1/runs?limit=2&cursor={c}");
            }
            None => break,
        }
    }
    assert_eq!(sizes, vec![2, 2, 1]);
    assert_eq!(paged, every);
    // A cursor stays valid as new runs arrive: they come after it.
    let r = post_json(
        addr,
        "/v1/runs?wait=true",
        &serde_json::from_str(LOOP_RUN).unwrap(),
    );
    let newest = r.json()["run"].as_str().unwrap().to_owned();
    let rest = get(addr, &format!("/v1/runs?cursor={}", cursors[0])).json();
    let mut want = every[2..].to_vec();
    want.push(newest);
    assert_eq!(run_ids(&rest), want);
    assert_eq!(rest["next_cursor"], Value::Null);
    // Filters apply before paging.
    let filtered = get(
        addr,
        "/v1/runs?status=succeeded&graph=conditional-loop&limit=4",
    )
    .json();
    assert_eq!(run_ids(&filtered), every[..4].to_vec());
    assert!(filtered["next_cursor"].is_string());
    assert_eq!(run_ids(&get(addr, "/v1/runs?limit=1000").json()).len(), 6);

    let forged = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode("12.not-a-run");
    for (query, problem) in [
        ("limit=0", "invalid-limit"),
        ("limit=1001", "invalid-limit"),
        ("limit=ten", "invalid-limit"),
        ("limit=-1", "invalid-limit"),
        ("limit=", "invalid-limit"),
        ("cursor=***", "invalid-cursor"),
        ("cursor=", "invalid-cursor"),
        (&format!("cursor={forged}") as &str, "invalid-cursor"),
        ("status=paused", "invalid-query"),
    ] {
        let r = get(addr, &format!("/v1/runs?{query}"));
        assert_eq!((r.status, r.problem().as_str()), (400, problem), "{query}");
    }
}

#[test]
fn an_expired_idempotency_key_may_start_a_new_run() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path().join("journal"));
    // Every key has expired by the time it is looked up again.
    config.idempotency_ttl = Duration::ZERO;
    let api = TestApi::with(config);
    let addr = api.addr;
    loop_graph(addr);
    let first = submit_keyed(addr, "order-7", LOOP_RUN);
    assert_eq!(first.status, 202);
    let again = submit_keyed(addr, "order-7", LOOP_RUN);
    assert_eq!(
        again.status,
        202,
        "{}",
        String::from_utf8_lossy(&again.body)
    );
    assert!(!again.headers.contains_key("idempotent-replayed"));
    assert_ne!(first.json()["run"], again.json()["run"]);
    // Nor does an expired key refuse a different body.
    let other = r#"{"graph": "conditional-loop", "input": {"start": 2, "limit": 2}}"#;
    assert_eq!(submit_keyed(addr, "order-7", other).status, 202);
    wait_for("three runs to finish", || {
        let page = get(addr, "/v1/runs?status=succeeded").json();
        run_ids(&page).len() == 3
    });
}

#[test]
fn keyed_submissions_wait_for_a_run_slot_in_parallel_and_one_key_still_starts_one_run() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path().join("journal"));
    config.max_concurrent_runs = 1;
    config.run_queue = 8;
    let api = TestApi::with(config);
    let addr = api.addr;
    let gate = Gate::start();
    loop_graph(addr);
    upload_gate_fetcher(addr, &[&gate]);
    assert_eq!(post_yaml(addr, GATED).status, 201);
    // The only slot is held until the gate opens.
    let blocker = start_gated(addr, &gate);
    let submit = |key: &'static str| std::thread::spawn(move || submit_keyed(addr, key, LOOP_RUN));
    let a = submit("key-a");
    let b = submit("key-b");
    let c1 = submit("key-c");
    let c2 = submit("key-c");
    // key-a, key-b and one key-c submission all wait in the run queue at once (one lock for all
    // keys would let only one of them queue); the second key-c waits for the first.
    wait_for("three keyed submissions in the run queue", || {
        let metrics = String::from_utf8(get(addr, "/metrics").body).unwrap();
        metrics.contains("sandgraph_run_queue_depth 3")
    });
    gate.open();
    let (a, b) = (a.join().unwrap(), b.join().unwrap());
    let (c1, c2) = (c1.join().unwrap(), c2.join().unwrap());
    assert_eq!((a.status, b.status), (202, 202));
    assert_ne!(a.json()["run"], b.json()["run"]);
    let mut c_statuses = [c1.status, c2.status];
    c_statuses.sort();
    assert_eq!(c_statuses, [200, 202], "one key, one run");
    assert_eq!(c1.json()["run"], c2.json()["run"]);
    wait_for("every run to finish", || {
        run_ids(&get(addr, "/v1/runs?status=succeeded").json()).len() == 4
    });
    assert!(run_ids(&get(addr, "/v1/runs").json()).contains(&blocker));
    assert_eq!(run_ids(&get(addr, "/v1/runs").json()).len(), 4);
}

#[test]
fn an_oversized_request_head_gets_a_problem_431_and_others_are_still_served() {
    let api = TestApi::start();
    let addr = api.addr;
    // hyper refuses over 100 headers itself; the answer is still problem+json.
    let many: Vec<(String, String)> = (0..120)
        .map(|i| (format!("X-Extra-{i}"), "v".to_owned()))
        .collect();
    let headers: Vec<(&str, &str)> = many.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let r = request(addr, "GET", "/v1/graphs", Some(ADMIN), &headers, b"");
    assert_eq!((r.status, r.problem().as_str()), (431, "header-too-large"));
    assert!(
        r.json()["detail"].as_str().unwrap().contains("65536 bytes"),
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    // A head far over hyper's 64 KiB read buffer.
    let pad = "a".repeat(256 * 1024);
    let r = request(
        addr,
        "GET",
        "/v1/graphs",
        Some(ADMIN),
        &[("X-Pad", &pad)],
        b"",
    );
    assert_eq!((r.status, r.problem().as_str()), (431, "header-too-large"));
    assert_eq!(get(addr, "/v1/graphs").status, 200);
    assert_eq!(get(addr, "/healthz").status, 200);
    // Counted, under the route hyper never got to pick.
    let metrics = String::from_utf8(get(addr, "/metrics").body).unwrap();
    let needle = "sandgraph_http_requests_total{route=\"unrouted\",status=\"431\"} 2";
    assert!(metrics.contains(needle), "no `{needle}` in\n{metrics}");
}

#[test]
fn auth_refusals_are_counted_under_the_route_they_were_refused_on() {
    let api = TestApi::start();
    let addr = api.addr;
    assert_eq!(request(addr, "GET", "/v1/runs", None, &[], b"").status, 401);
    assert_eq!(
        request(addr, "GET", "/v1/graphs/x", Some("wrong"), &[], b"").status,
        401
    );
    let r = request(
        addr,
        "POST",
        "/v1/graphs",
        Some(READER),
        &[("Content-Type", "application/yaml")],
        b"x: 1",
    );
    assert_eq!(
        (r.status, r.problem().as_str()),
        (403, "insufficient-scope")
    );
    let metrics = String::from_utf8(get(addr, "/metrics").body).unwrap();
    for needle in [
        "sandgraph_http_requests_total{route=\"/v1/runs\",status=\"401\"} 1",
        "sandgraph_http_requests_total{route=\"/v1/graphs/{name}\",status=\"401\"} 1",
        "sandgraph_http_requests_total{route=\"/v1/graphs\",status=\"403\"} 1",
    ] {
        assert!(metrics.contains(needle), "no `{needle}` in\n{metrics}");
    }
    assert!(!metrics.contains("route=\"auth\""), "{metrics}");
}

/// A loopback model backend's `/health` in the shape `sandgraph-infer serve` answers it:
/// `mode` 200 (ready) or 503 (loading); 0 closes the connection unanswered; 1 never answers.
struct HealthBackend {
    addr: SocketAddr,
    mode: Arc<std::sync::atomic::AtomicU16>,
    hits: Arc<AtomicUsize>,
}

impl HealthBackend {
    fn start() -> HealthBackend {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let mode = Arc::new(std::sync::atomic::AtomicU16::new(200));
        let hits = Arc::new(AtomicUsize::new(0));
        let (m, h) = (mode.clone(), hits.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let (m, h) = (m.clone(), h.clone());
                std::thread::spawn(move || {
                    let mut r = BufReader::new(conn.try_clone().unwrap());
                    let Ok(Some(head)) = common::http_head::read_request_head(&mut r) else {
                        return;
                    };
                    h.fetch_add(1, Ordering::SeqCst);
                    let mut conn = conn;
                    match m.load(Ordering::SeqCst) {
                        0 => {}
                        1 => std::thread::sleep(DEADLINE),
                        status => {
                            let health = head.method == "GET" && head.target == "/health";
                            let (status, body) = if health {
                                (status, "{}")
                            } else {
                                (404, "wrong path")
                            };
                            let _ = write!(
                                conn,
                                "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                                body.len()
                            );
                        }
                    }
                });
            }
        });
        HealthBackend { addr, mode, hits }
    }

    fn set(&self, mode: u16) {
        self.mode.store(mode, Ordering::SeqCst);
    }
}

fn readyz_problem(addr: SocketAddr) -> Option<Value> {
    let r = get(addr, "/readyz");
    match r.status {
        200 => None,
        503 => {
            assert_eq!(r.problem(), "not-ready");
            assert_eq!(r.headers.get("retry-after").map(String::as_str), Some("1"));
            Some(r.json())
        }
        other => panic!("/readyz answered {other}"),
    }
}

#[test]
fn readyz_follows_the_configured_model_backend() {
    let backend = HealthBackend::start();
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path().join("journal"));
    config.model_url = Some(format!("http://{}", backend.addr));
    config.model_probe_timeout = Duration::from_millis(300);
    let api = TestApi::with(config);
    let addr = api.addr;

    // Ready: the check names the backend.
    let r = get(addr, "/readyz");
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let body = r.json();
    assert_eq!(body["checks"]["model"]["status"], "ready", "{body}");
    assert_eq!(
        body["checks"]["model"]["url"],
        format!("http://{}", backend.addr)
    );

    // A burst of probes costs the backend about one request a second, not one each.
    let before = backend.hits.load(Ordering::SeqCst);
    let start = Instant::now();
    for _ in 0..30 {
        assert_eq!(get(addr, "/readyz").status, 200);
    }
    let spent = backend.hits.load(Ordering::SeqCst) - before;
    assert!(
        spent as u64 <= start.elapsed().as_secs() + 1,
        "{spent} backend requests for 30 probes in {:?}",
        start.elapsed()
    );

    // Loading (503), a hang-up, a backend that never answers: each not ready, with its reason.
    for (mode, reason) in [
        (503, "still loading"),
        (0, "/health"),
        (1, "no answer within 300 ms"),
    ] {
        backend.set(mode);
        let mut last = None;
        wait_for(&format!("/readyz to report mode {mode}"), || {
            last = readyz_problem(addr);
            last.is_some()
        });
        let p = last.unwrap();
        let detail = p["detail"].as_str().unwrap();
        assert!(detail.contains("model backend is not ready"), "{p}");
        assert!(detail.contains(reason), "mode {mode}: {p}");
        assert_eq!(p["checks"]["model"]["status"], "unreachable", "{p}");
        assert_eq!(p["checks"]["engine"], "warm", "{p}");
        // Liveness does not depend on the backend.
        assert_eq!(get(addr, "/healthz").status, 200);
        backend.set(200);
        wait_for("/readyz to recover", || readyz_problem(addr).is_none());
    }
}

#[test]
fn readyz_reports_a_model_backend_nobody_listens_on() {
    let closed = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path().join("journal"));
    config.model_url = Some(format!("http://{closed}"));
    let api = TestApi::with(config);
    let p = readyz_problem(api.addr).expect("not ready");
    let detail = p["detail"].as_str().unwrap();
    assert!(
        detail.contains(&format!("cannot connect to {closed}")),
        "{p}"
    );
    // Everything else is served meanwhile.
    assert_eq!(get(api.addr, "/v1/graphs").status, 200);
}

#[test]
fn a_rotated_tokens_file_takes_effect_without_a_restart_and_a_broken_one_is_refused() {
    const ROTATED: &str = "test-only-rotated-token-0003";
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens.yaml");
    let original = std::fs::read_to_string(tokens_file()).unwrap();
    std::fs::write(&tokens, &original).unwrap();
    let mut config = test_config(dir.path().join("journal"));
    config.auth_tokens = Some(tokens.clone());
    config.auth_reload_interval = Duration::from_millis(50);
    let api = TestApi::with(config);
    let addr = api.addr;
    let status = |token: &str| request(addr, "GET", "/v1/graphs", Some(token), &[], b"").status;
    assert_eq!(status(ROTATED), 401);

    // Every change is written the way a Secret is rotated: a new file renamed over the old one
    // (a reader never sees it half-written).
    let replace = |text: &str| {
        let next = dir.path().join("tokens.yaml.next");
        std::fs::write(&next, text).unwrap();
        std::fs::rename(&next, &tokens).unwrap();
    };
    replace(&format!(
        "{original}  - subject: rotated\n    token: {ROTATED}\n    scopes: [runs:read]\n"
    ));
    wait_for("the rotated token to be accepted", || {
        status(ROTATED) == 200
    });
    assert_eq!(status(ADMIN), 200);

    // A broken edit keeps the credentials in force and is counted as refused.
    replace("tokens: [");
    wait_for("the broken file to be refused", || {
        String::from_utf8(get(addr, "/metrics").body)
            .unwrap()
            .contains("sandgraph_auth_reloads_total{outcome=\"refused\"} 1")
    });
    assert_eq!(status(ROTATED), 200);
    assert_eq!(status(ADMIN), 200);
    let metrics = String::from_utf8(get(addr, "/metrics").body).unwrap();
    assert!(
        metrics.contains("sandgraph_auth_reloads_total{outcome=\"reloaded\"} 1"),
        "{metrics}"
    );

    // Dropping an entry revokes its token.
    replace(&original);
    wait_for("the rotated token to be revoked", || status(ROTATED) == 401);
}

#[test]
fn the_jwt_leeway_is_configurable() {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    // Expired 20 s ago: inside the default 60 s leeway, outside a 5 s one.
    let token = jwt("test-only-rsa.pem", json!({"exp": now - 20}));
    let api = TestApi::start();
    assert_eq!(
        request(api.addr, "GET", "/v1/runs", Some(token), &[], b"").status,
        200
    );
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path().join("journal"));
    config.auth_leeway = Duration::from_secs(5);
    let strict = TestApi::with(config);
    let r = request(strict.addr, "GET", "/v1/runs", Some(token), &[], b"");
    assert_eq!((r.status, r.problem().as_str()), (401, "token-expired"));
}

/// The head `request` sends for a GET of `path` with `extra` headers, in bytes.
fn head_len(addr: SocketAddr, path: &str, extra: &[(&str, &str)]) -> usize {
    let mut head = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nAuthorization: Bearer {ADMIN}\r\n"
    );
    for (k, v) in extra {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("Content-Length: 0\r\n\r\n");
    head.len()
}

#[test]
fn the_documented_head_limit_is_the_enforced_one_at_the_byte_and_the_field() {
    const LIMIT: usize = 65_536;
    let api = TestApi::start();
    let addr = api.addr;
    let path = "/v1/graphs";
    let send = |extra: &[(&str, &str)]| request(addr, "GET", path, Some(ADMIN), extra, b"");
    // One header padded so the head is exactly the limit, then one byte over.
    let base = head_len(addr, path, &[("X-Pad", "")]);
    let at = "p".repeat(LIMIT - base);
    assert_eq!(head_len(addr, path, &[("X-Pad", &at)]), LIMIT);
    assert_eq!(send(&[("X-Pad", &at)]).status, 200);
    let over = "p".repeat(LIMIT - base + 1);
    let r = send(&[("X-Pad", &over)]);
    assert_eq!((r.status, r.problem().as_str()), (431, "header-too-large"));
    assert_eq!(
        r.headers.get("connection").map(String::as_str),
        Some("close")
    );
    // The same limit spread over many headers (two of 35,000 bytes were served before).
    let names: Vec<String> = (0..40).map(|i| format!("X-Part-{i:02}")).collect();
    let mut values: Vec<String> = vec![String::new(); names.len()];
    let pairs = |values: &[String]| -> Vec<(String, String)> {
        names.iter().cloned().zip(values.iter().cloned()).collect()
    };
    let as_refs = |p: &[(String, String)]| -> Vec<(String, String)> { p.to_vec() };
    let len_of = |p: &[(String, String)]| {
        let refs: Vec<(&str, &str)> = p.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        head_len(addr, path, &refs)
    };
    let empty = len_of(&pairs(&values));
    let mut left = LIMIT - empty;
    for v in values.iter_mut() {
        let n = left.min(1_700);
        *v = "q".repeat(n);
        left -= n;
    }
    assert_eq!(left, 0, "40 headers of at most 1,700 bytes reach the limit");
    let at_limit = as_refs(&pairs(&values));
    assert_eq!(len_of(&at_limit), LIMIT);
    let refs: Vec<(&str, &str)> = at_limit
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert_eq!(send(&refs).status, 200);
    values[0].push('q');
    let one_over = pairs(&values);
    assert_eq!(len_of(&one_over), LIMIT + 1);
    let refs: Vec<(&str, &str)> = one_over
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let r = send(&refs);
    assert_eq!((r.status, r.problem().as_str()), (431, "header-too-large"));
    // Field count: `request` sends 4 fields of its own; 100 in all pass, 101 do not.
    let extra: Vec<(String, String)> = (0..97).map(|i| (format!("X-F{i}"), "v".into())).collect();
    let refs: Vec<(&str, &str)> = extra
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert_eq!(send(&refs[..96]).status, 200);
    let r = send(&refs);
    assert_eq!((r.status, r.problem().as_str()), (431, "header-too-large"));
    // Both kinds of refusal are counted under `unrouted`, and the server goes on serving.
    assert_eq!(get(addr, "/healthz").status, 200);
    let metrics = String::from_utf8(get(addr, "/metrics").body).unwrap();
    let needle = "sandgraph_http_requests_total{route=\"unrouted\",status=\"431\"} 3";
    assert!(metrics.contains(needle), "no `{needle}` in\n{metrics}");
}

/// What an EventSource does with a finished run: read the stream, reconnect with the last id
/// it saw after the server closes, until the server answers 204. Returns every event read and
/// the statuses of each connection.
fn event_source(addr: SocketAddr, run: &str, mut last: Option<u64>) -> (Vec<u64>, Vec<u16>) {
    let mut ids = Vec::new();
    let mut statuses = Vec::new();
    for _ in 0..5 {
        let id = last.map(|l| l.to_string());
        let headers: Vec<(&str, &str)> = id.iter().map(|i| ("Last-Event-ID", i.as_str())).collect();
        let r = request(
            addr,
            "GET",
            &format!("/v1/runs/{run}/events"),
            Some(ADMIN),
            &headers,
            b"",
        );
        statuses.push(r.status);
        if r.status == 204 {
            assert!(r.body.is_empty());
            return (ids, statuses);
        }
        assert_eq!(r.status, 200);
        for line in String::from_utf8(r.body).unwrap().lines() {
            if let Some(v) = line.strip_prefix("id: ") {
                let id = v.parse().unwrap();
                ids.push(id);
                last = Some(id);
            }
        }
    }
    panic!("the event source never stopped reconnecting: {statuses:?}, ids {ids:?}");
}

#[test]
fn a_resumed_event_stream_on_a_finished_run_ends_and_an_event_source_stops_reconnecting() {
    let api = TestApi::start();
    let addr = api.addr;
    loop_graph(addr);
    let r = post_json(
        addr,
        "/v1/runs?wait=true",
        &serde_json::from_str(LOOP_RUN).unwrap(),
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let run = r.json()["run"].as_str().unwrap().to_owned();
    // From the start: every event once, then one reconnect that is told there is nothing more.
    let (ids, statuses) = event_source(addr, &run, None);
    let finished = *ids.last().unwrap();
    assert_eq!(ids, (0..=finished).collect::<Vec<_>>());
    assert_eq!(statuses, [200, 204]);
    // Resumed just before the end: the last event, then 204.
    let (ids, statuses) = event_source(addr, &run, Some(finished - 1));
    assert_eq!((ids, statuses), (vec![finished], vec![200, 204]));
    // At and beyond the end: 204 straight away.
    for id in [finished, finished + 1, finished + 1_000, u64::MAX] {
        assert_eq!(
            event_source(addr, &run, Some(id)),
            (vec![], vec![204]),
            "id {id}"
        );
    }
    // A malformed id is still a 400 naming it.
    let r = request(
        addr,
        "GET",
        &format!("/v1/runs/{run}/events"),
        Some(ADMIN),
        &[("Last-Event-ID", "soon")],
        b"",
    );
    assert_eq!(
        (r.status, r.problem().as_str()),
        (400, "invalid-last-event-id")
    );
}

// ---------------------------------------------------------------------------------------------
// Several replicas on one PostgreSQL journal.

/// `n` `sandgraph serve` processes sharing the database at `url`, holding runs under `lease`.
fn replicas(url: &str, n: usize, lease: &str) -> Vec<Child> {
    (0..n)
        .map(|_| {
            spawn_server_with(
                std::ffi::OsStr::new(url),
                "1s",
                // Warnings only: nobody reads the pipe until the end, and it must not fill.
                // No rate limit: the tests poll run status in tight loops.
                &[
                    ("SANDGRAPH_RUN_LEASE", lease),
                    ("RUST_LOG", "warn"),
                    ("SANDGRAPH_RATE_LIMIT", "100000"),
                    ("SANDGRAPH_RATE_BURST", "100000"),
                ],
            )
        })
        .collect()
}

/// The replica holding `run`'s lease now, as (pid, epoch), read from the shared queue.
fn lease_of(db: &mut postgres::Client, run: &str) -> Option<(u32, i64)> {
    let (owner, epoch) = common::replicas::lease_of(db, run)?;
    // Owners are `<host>-<pid>-<suffix>`.
    Some((owner.rsplit('-').nth(1)?.parse().ok()?, epoch))
}

/// Starts an EFFECT_THEN_GATE run through `addr`; returns its id.
fn start_effect_then_gate(addr: SocketAddr, effect: &Gate, gate: &Gate) -> String {
    let r = post_json(
        addr,
        "/v1/runs",
        &json!({"graph": "effect-then-gate", "input": {"effect": effect.url(), "url": gate.url()}}),
    );
    assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
    r.json()["run"].as_str().unwrap().to_owned()
}

/// Runs submitted round-robin to three replicas.
const RUNS: usize = 200;

#[test]
fn three_replicas_on_one_postgresql_run_every_submission_exactly_once_and_stream_any_run() {
    let pg = common::postgres::Postgres::start();
    let url = pg.database("replicas");
    let servers = replicas(&url, 3, "3s");
    let addrs: Vec<SocketAddr> = servers.iter().map(|s| s.addr).collect();
    // A tool uploaded to one replica and a graph posted to another serve runs on all three.
    upload_tool(addrs[0], "calc");
    assert_eq!(post_yaml(addrs[1], ADD).status, 201);
    let mut runs = Vec::new();
    for n in 0..RUNS {
        let r = post_json(
            addrs[n % 3],
            "/v1/runs",
            &json!({"graph": "add", "input": {"n": n}}),
        );
        assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
        runs.push((n, r.json()["run"].as_str().unwrap().to_owned()));
    }
    for (n, run) in &runs {
        wait_for("every run to finish", || {
            run_status(addrs[(n + 1) % 3], run)["status"] != "running"
        });
        let shown = run_status(addrs[(n + 2) % 3], run);
        assert_eq!(shown["status"], "succeeded", "{shown}");
        assert_eq!(
            shown["output"]["add"]["value"],
            json!(*n as f64 + 1.0),
            "{shown}"
        );
        assert_executed_once(&url, run);
    }
    let mut db = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    let rows = db
        .query(
            "SELECT state, epoch, count(*), count(DISTINCT owner) FROM sandgraph_leases GROUP BY state, epoch",
            &[],
        )
        .unwrap();
    assert_eq!(rows.len(), 1, "every run claimed once and done");
    let (state, epoch, count, owners): (String, i64, i64, i64) = (
        rows[0].get(0),
        rows[0].get(1),
        rows[0].get(2),
        rows[0].get(3),
    );
    assert_eq!((state.as_str(), epoch, count), ("done", 1, RUNS as i64));
    assert!(
        owners >= 2,
        "runs were shared between replicas ({owners} owner)"
    );

    // A run executed by one replica, streamed from a second, and after a reconnect with
    // Last-Event-ID from a third: every event exactly once, in order.
    let (effect, gate) = (Gate::start(), Gate::start());
    effect.open();
    upload_gate_fetcher(addrs[2], &[&effect, &gate]);
    assert_eq!(post_yaml(addrs[0], EFFECT_THEN_GATE).status, 201);
    let run = start_effect_then_gate(addrs[0], &effect, &gate);
    let (pid, _) = {
        let mut found = None;
        wait_for("the run claimed", || {
            found = lease_of(&mut db, &run);
            found.is_some()
        });
        found.unwrap()
    };
    let owner = servers.iter().position(|s| s.child.id() == pid).unwrap();
    let (other, third) = ((owner + 1) % 3, (owner + 2) % 3);
    let mut first = SseStream::open(addrs[other], &run, None);
    let seen = first.until(|e| e.event == "step_started" && e.data["step"] == "wait#1");
    drop(first);
    let last = seen.last().unwrap().id;
    let mut second = SseStream::open(addrs[third], &run, Some(last));
    gate.open();
    let rest = second.rest();
    assert_eq!(rest.last().unwrap().event, "run_finished", "{rest:#?}");
    let ids: Vec<u64> = seen.iter().chain(rest.iter()).map(|e| e.id).collect();
    assert_eq!(ids, (0..ids.len() as u64).collect::<Vec<_>>());
    assert_executed_once(&url, &run);
}

/// Three replicas, one run held mid-step at a gate after a recorded side effect; returns the
/// replicas, the run, the index of the replica executing it, and the database.
fn held_run_on_replicas(
    url: &str,
    effect: &Gate,
    gate: &Gate,
) -> (Vec<Child>, String, usize, postgres::Client) {
    let servers = replicas(url, 3, "2s");
    let addr = servers[0].addr;
    upload_tool(addr, "calc");
    upload_gate_fetcher(addr, &[effect, gate]);
    assert_eq!(post_yaml(addr, EFFECT_THEN_GATE).status, 201);
    let run = start_effect_then_gate(addr, effect, gate);
    wait_for("the run held at the gate", || {
        gate.hits.load(Ordering::SeqCst) == 1
    });
    assert_eq!(effect.hits.load(Ordering::SeqCst), 1);
    let mut db = postgres::Client::connect(url, postgres::NoTls).unwrap();
    let (pid, epoch) = lease_of(&mut db, &run).unwrap();
    assert_eq!(epoch, 1);
    let owner = servers.iter().position(|s| s.child.id() == pid).unwrap();
    (servers, run, owner, db)
}

fn signal(child: &Child, sig: i32) {
    // SAFETY: kill(2) on our own child's pid has no memory-safety preconditions.
    unsafe {
        libc::kill(child.child.id() as i32, sig);
    }
}

#[test]
fn a_replica_killed_mid_step_is_taken_over_after_its_lease_and_no_side_effect_repeats() {
    let pg = common::postgres::Postgres::start();
    let url = pg.database("takeover");
    let (effect, gate) = (Gate::start(), Gate::start());
    effect.open();
    let (mut servers, run, owner, mut db) = held_run_on_replicas(&url, &effect, &gate);
    signal(&servers[owner], libc::SIGKILL);
    let _ = servers[owner].child.wait();
    // Another replica claims it once the lease runs out and re-sends the in-flight GET.
    wait_for("another replica to take the run over", || {
        lease_of(&mut db, &run)
            .is_some_and(|(pid, epoch)| epoch == 2 && pid != servers[owner].child.id())
    });
    wait_for("the re-sent request at the gate", || {
        gate.hits.load(Ordering::SeqCst) == 2
    });
    gate.open();
    let survivor = servers[(owner + 1) % 3].addr;
    wait_for("the run to finish", || {
        run_status(survivor, &run)["status"] != "running"
    });
    let shown = run_status(survivor, &run);
    assert_eq!(shown["status"], "succeeded", "{shown}");
    assert_eq!(shown["output"]["after"]["value"], 42.0, "{shown}");
    // The recorded side effect was served back from the journal, not repeated.
    assert_eq!(effect.hits.load(Ordering::SeqCst), 1);
    assert_executed_once(&url, &run);
}

#[test]
fn a_paused_replica_past_its_lease_is_fenced_off_when_it_wakes() {
    let pg = common::postgres::Postgres::start();
    let url = pg.database("fencing");
    let (effect, gate) = (Gate::start(), Gate::start());
    effect.open();
    let (servers, run, owner, mut db) = held_run_on_replicas(&url, &effect, &gate);
    signal(&servers[owner], libc::SIGSTOP);
    wait_for("another replica to take the run over", || {
        lease_of(&mut db, &run).is_some_and(|(_, epoch)| epoch == 2)
    });
    wait_for("the re-sent request at the gate", || {
        gate.hits.load(Ordering::SeqCst) == 2
    });
    // Both requests get their answer; the paused replica's waits in its socket.
    gate.open();
    let survivor = servers[(owner + 1) % 3].addr;
    wait_for("the run to finish", || {
        run_status(survivor, &run)["status"] != "running"
    });
    let count = |db: &mut postgres::Client| common::replicas::event_count(db, &run);
    let events_before = count(&mut db);
    signal(&servers[owner], libc::SIGCONT);
    // The woken replica finishes its step and tries to journal it: refused. Its heartbeat
    // (every third of the 2 s lease) learns the lease is gone.
    std::thread::sleep(Duration::from_secs(3));
    let shown = run_status(survivor, &run);
    assert_eq!(shown["status"], "succeeded", "{shown}");
    assert_eq!(
        count(&mut db),
        events_before,
        "nothing was written after the run ended"
    );
    assert_eq!(effect.hits.load(Ordering::SeqCst), 1);
    assert_executed_once(&url, &run);
    let mut servers = servers;
    let woken = servers.remove(owner);
    let (_, logs) = woken.terminate();
    assert!(
        logs.contains("lost a run's lease") || logs.contains("leased to another host"),
        "{logs}"
    );
    assert!(!logs.contains("panicked"), "{logs}");
}

#[test]
fn postgresql_restarted_with_runs_in_flight_replicas_reconnect_and_every_run_finishes() {
    let mut pg = common::postgres::Postgres::start();
    let url = pg.database("restart");
    let (effect, gate) = (Gate::start(), Gate::start());
    effect.open();
    let servers = replicas(&url, 3, "2s");
    let addrs: Vec<SocketAddr> = servers.iter().map(|s| s.addr).collect();
    upload_tool(addrs[0], "calc");
    upload_gate_fetcher(addrs[0], &[&effect, &gate]);
    assert_eq!(post_yaml(addrs[0], ADD).status, 201);
    assert_eq!(post_yaml(addrs[0], EFFECT_THEN_GATE).status, 201);
    // Submissions carry Idempotency-Keys, so one refused while the database is away is
    // retried without ever starting a run twice.
    let submit = |i: usize, body: &Value| -> String {
        let key = format!("restart-{i}");
        let start = Instant::now();
        loop {
            let r = request(
                addrs[i % 3],
                "POST",
                "/v1/runs",
                Some(ADMIN),
                &[
                    ("Content-Type", "application/json"),
                    ("Idempotency-Key", &key),
                ],
                body.to_string().as_bytes(),
            );
            if r.status == 202 || r.status == 200 {
                return r.json()["run"].as_str().unwrap().to_owned();
            }
            assert!(
                r.status >= 500 && start.elapsed() < DEADLINE,
                "{} {}",
                r.status,
                String::from_utf8_lossy(&r.body)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    let held: Vec<String> = (0..3)
        .map(|i| {
            submit(
                i,
                &json!({"graph": "effect-then-gate", "input": {"effect": effect.url(), "url": gate.url()}}),
            )
        })
        .collect();
    wait_for("every gated run at the gate", || {
        gate.hits.load(Ordering::SeqCst) >= 3
    });
    let mut adds: Vec<(usize, String)> = (3..33)
        .map(|i| (i, submit(i, &json!({"graph": "add", "input": {"n": i}}))))
        .collect();
    pg.restart();
    adds.extend((33..63).map(|i| (i, submit(i, &json!({"graph": "add", "input": {"n": i}})))));
    gate.open();
    let status = |addr: SocketAddr, run: &str| -> Option<Value> {
        let r = get(addr, &format!("/v1/runs/{run}"));
        (r.status == 200).then(|| r.json())
    };
    for run in &held {
        wait_for("the gated runs to finish", || {
            status(addrs[1], run).is_some_and(|s| s["status"] != "running")
        });
        let shown = status(addrs[2], run).unwrap();
        assert_eq!(shown["status"], "succeeded", "{shown}");
        assert_executed_once(&url, run);
    }
    for (n, run) in &adds {
        wait_for("the other runs to finish", || {
            status(addrs[0], run).is_some_and(|s| s["status"] != "running")
        });
        let shown = status(addrs[1], run).unwrap();
        assert_eq!(shown["status"], "succeeded", "{shown}");
        assert_eq!(shown["output"]["add"]["value"], json!(*n as f64 + 1.0));
        assert_executed_once(&url, run);
    }
    // The effects before the restart were durable: served back, never repeated.
    assert_eq!(effect.hits.load(Ordering::SeqCst), 3);
}

/// A TCP proxy on 127.0.0.1 in front of a database: `cut()` resets every connection through it
/// and refuses new ones (the replica behind it is partitioned from the database) until `heal()`.
struct Proxy {
    port: u16,
    cut: Arc<std::sync::atomic::AtomicBool>,
    open: Arc<Mutex<Vec<TcpStream>>>,
}

impl Proxy {
    fn start(upstream: u16) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let cut = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let open: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let (c, o) = (cut.clone(), open.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(client) = conn else { continue };
                if c.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
                    continue;
                };
                {
                    let mut o = o.lock().unwrap();
                    o.push(client.try_clone().unwrap());
                    o.push(server.try_clone().unwrap());
                }
                for (mut from, mut to) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server, client),
                ] {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(std::net::Shutdown::Both);
                    });
                }
            }
        });
        Proxy { port, cut, open }
    }

    fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        for s in self.open.lock().unwrap().drain(..) {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }

    fn heal(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

#[test]
fn a_replica_cut_off_from_the_database_stops_its_run_and_another_finishes_it_once() {
    let pg = common::postgres::Postgres::start();
    let url = pg.database("partition");
    let proxy = Proxy::start(pg.port());
    let behind_proxy = url.replace(&format!(":{}/", pg.port()), &format!(":{}/", proxy.port));
    let (effect, gate) = (Gate::start(), Gate::start());
    effect.open();
    // The replica behind the proxy runs alone until the run is held mid-step there.
    let mut cut_off = replicas(&behind_proxy, 1, "2s");
    let a = cut_off[0].addr;
    upload_tool(a, "calc");
    upload_gate_fetcher(a, &[&effect, &gate]);
    assert_eq!(post_yaml(a, EFFECT_THEN_GATE).status, 201);
    let run = start_effect_then_gate(a, &effect, &gate);
    wait_for("the run held at the gate", || {
        gate.hits.load(Ordering::SeqCst) == 1
    });
    let others = replicas(&url, 2, "2s");
    proxy.cut();
    // The others take the run over once the lease runs out and re-send the in-flight request.
    let mut db = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    wait_for("another replica to take the run over", || {
        lease_of(&mut db, &run).is_some_and(|(_, epoch)| epoch == 2)
    });
    wait_for("the re-sent request at the gate", || {
        gate.hits.load(Ordering::SeqCst) == 2
    });
    gate.open();
    wait_for("the run to finish", || {
        run_status(others[0].addr, &run)["status"] != "running"
    });
    proxy.heal();
    // Healed, the cut-off replica writes nothing more to the run: it stopped it on its own.
    std::thread::sleep(Duration::from_secs(2));
    let shown = run_status(others[1].addr, &run);
    assert_eq!(shown["status"], "succeeded", "{shown}");
    assert_eq!(shown["output"]["after"]["value"], 42.0, "{shown}");
    assert_eq!(effect.hits.load(Ordering::SeqCst), 1);
    assert_executed_once(&url, &run);
    // It stopped the run itself: when its journal writes failed, or at the latest when it had
    // not renewed its lease for a whole lease (whichever came first).
    let (_, logs) = cut_off.remove(0).terminate();
    assert!(
        logs.contains("could not renew its leases for a whole lease")
            || logs.contains("the journal failed under a run; it stays unfinished"),
        "{logs}"
    );
}

#[test]
fn a_step_is_served_with_its_crossings_and_audit_records_and_a_denied_egress_names_its_reason() {
    let api = TestApi::start();
    let addr = api.addr;
    upload_tool(addr, "calc");
    let gate = Gate::start();
    gate.open();
    upload_gate_fetcher(addr, &[&gate]);
    assert_eq!(post_yaml(addr, GATED).status, 201);
    let run_to = |url: &str| {
        let r = post_json(
            addr,
            "/v1/runs?wait=true",
            &json!({"graph": "gated", "input": {"url": url}}),
        );
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        r.json()["run"].as_str().unwrap().to_owned()
    };
    let ok = run_to(&gate.url());
    // A port no rule names: the sandbox refuses it.
    let denied = run_to("http://127.0.0.1:9/forbidden");

    let step = get(addr, &format!("/v1/runs/{ok}/steps/wait%231"));
    assert_eq!(step.status, 200, "{}", String::from_utf8_lossy(&step.body));
    let s = step.json();
    assert_eq!(
        (s["node"].as_str(), s["status"].as_str()),
        (Some("wait"), Some("completed")),
        "{s}"
    );
    let attempt = &s["attempts"][0];
    let kinds: Vec<&str> = attempt["crossings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["kind"].as_str().unwrap())
        .collect();
    assert!(
        kinds.contains(&"http_intent") && kinds.contains(&"http_response"),
        "{kinds:?}"
    );
    let response = attempt["crossings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["kind"] == "http_response")
        .unwrap();
    assert_eq!(response["body_preview"], "opened", "{response}");
    let audit = &attempt["audit"][0];
    assert_eq!(audit["tool"], "egress_fetch", "{audit}");
    assert_eq!(audit["outcome"], "ok", "{audit}");
    assert!(audit["memory_peak_bytes"].as_u64().unwrap() > 0, "{audit}");
    assert_eq!(audit["egress"][0]["allowed"], true, "{audit}");
    assert!(audit["egress"][0]["connected_to"].is_string(), "{audit}");

    let s = get(addr, &format!("/v1/runs/{denied}/steps/wait%231")).json();
    assert_eq!(s["status"], "failed", "{s}");
    let egress = &s["attempts"][0]["audit"][0]["egress"][0];
    assert_eq!(egress["allowed"], false, "{s}");
    assert!(
        egress["reason"]
            .as_str()
            .unwrap()
            .contains("no egress rule"),
        "the denial names the missing rule: {egress}"
    );
    assert!(
        egress["target"].as_str().unwrap().contains("127.0.0.1:9"),
        "{egress}"
    );

    // The stream carries the audit too, once per attempt.
    let events = String::from_utf8(get(addr, &format!("/v1/runs/{denied}/events")).body).unwrap();
    assert!(events.contains("event: step_audit"), "{events}");
    assert!(events.contains("no egress rule"), "{events}");

    // A step the run does not have, and a run that does not exist.
    let r = get(addr, &format!("/v1/runs/{ok}/steps/nope%231"));
    assert_eq!((r.status, r.problem().as_str()), (404, "unknown-step"));
    assert!(
        String::from_utf8_lossy(&r.body).contains("wait#1"),
        "lists its steps"
    );
    let r = get(addr, &format!("/v1/runs/{}/steps/wait%231", "0".repeat(32)));
    assert_eq!((r.status, r.problem().as_str()), (404, "unknown-run"));

    // Replay over the API: the fetch is served from the journal and reproduces its output.
    let r = request(
        addr,
        "POST",
        &format!("/v1/runs/{ok}/replay"),
        Some(ADMIN),
        &[],
        b"",
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let report = r.json();
    assert_eq!(report["identical"], true, "{report}");
    assert_eq!(report["steps"].as_array().unwrap().len(), 3, "{report}");
    let hits = gate.hits();
    assert_eq!(gate.hits(), hits, "replay reached no server");
    let r = request(
        addr,
        "POST",
        &format!("/v1/runs/{ok}/replay"),
        Some(READER),
        &[],
        b"",
    );
    assert_eq!(r.status, 403, "replay needs runs:write");

    // Who the console is signed in as.
    let me = request(addr, "GET", "/v1/whoami", Some(READER), &[], b"").json();
    assert_eq!(me, json!({"subject": "reader", "scopes": ["runs:read"]}));

    // Newest first, with each run's model usage.
    let page = get(addr, "/v1/runs?order=desc&usage=true&limit=1").json();
    assert_eq!(page["runs"][0]["run"], denied.as_str(), "{page}");
    assert_eq!(page["runs"][0]["usage"]["model_calls"], 0, "{page}");
    let cursor = page["next_cursor"].as_str().unwrap().to_owned();
    let next = get(
        addr,
        &format!("/v1/runs?order=desc&limit=1&cursor={cursor}"),
    )
    .json();
    assert_eq!(next["runs"][0]["run"], ok.as_str(), "{next}");
    for bad in ["order=sideways", "usage=maybe"] {
        let r = get(addr, &format!("/v1/runs?{bad}"));
        assert_eq!(
            (r.status, r.problem().as_str()),
            (400, "invalid-query"),
            "{bad}"
        );
    }
}

#[test]
fn the_console_is_served_with_a_policy_that_forbids_framing_and_inline_script() {
    let api = TestApi::start();
    let addr = api.addr;
    let page = request(addr, "GET", "/ui/", None, &[], b"");
    assert_eq!(page.status, 200);
    assert_eq!(page.headers["content-type"], "text/html; charset=utf-8");
    let csp = &page.headers["content-security-policy"];
    for part in [
        "default-src 'none'",
        "script-src 'self'",
        "frame-ancestors 'none'",
        "base-uri 'none'",
    ] {
        assert!(csp.contains(part), "{csp} lacks {part}");
    }
    assert!(!csp.contains("unsafe"), "{csp}");
    assert_eq!(page.headers["x-frame-options"], "DENY");
    assert_eq!(page.headers["x-content-type-options"], "nosniff");
    assert_eq!(page.headers["referrer-policy"], "no-referrer");
    let html = String::from_utf8(page.body).unwrap();
    assert!(html.contains(r#"<script src="/ui/console.js" defer></script>"#));
    let js = request(addr, "GET", "/ui/console.js", None, &[], b"");
    assert_eq!(
        (js.status, js.headers["content-type"].as_str()),
        (200, "text/javascript; charset=utf-8")
    );
    assert!(js.headers.contains_key("content-security-policy"));
    let r = request(addr, "GET", "/ui", None, &[], b"");
    assert_eq!((r.status, r.headers["location"].as_str()), (308, "/ui/"));
    let r = request(addr, "GET", "/ui/../v1/runs", None, &[], b"");
    assert_ne!(
        r.status, 200,
        "no way out of /ui/ to the API without a token"
    );
    let r = request(addr, "GET", "/ui/secrets.txt", None, &[], b"");
    assert_eq!((r.status, r.problem().as_str()), (404, "unknown-route"));
    let r = request(addr, "DELETE", "/ui/", None, &[], b"");
    assert_eq!(r.status, 405);
}
