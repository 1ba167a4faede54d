//! MCP `tools/call` round trips against the same call through the run API, all in one run:
//! calc (`{"expr": "6 * 7"}`) called
//! - over streamable HTTP (`sandgraph serve`'s `/mcp`, one session and keep-alive connection
//!   per client, bearer token);
//! - over stdio (`sandgraph mcp`, one session, requests sent one at a time or kept 8 in
//!   flight);
//! - as a one-node graph run through `POST /v1/runs?wait=true` on the same server (journaled on
//!   its sled journal: the durable path a graph step takes).
//!
//! Prints calls/s, p50 and p99 per configuration, and each against the run API at the same
//! client count. Run: `cargo bench -p sandgraph --bench mcp` (`SANDGRAPH_BENCH_CALLS` sets
//! calls per client, default 200).

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use serde_json::{Value, json};

const TOKEN: &str = "test-only-admin-token-0001";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn components() -> PathBuf {
    Path::new(sandgraph_test_artifacts::TOOLS[0].1)
        .parent()
        .unwrap()
        .to_path_buf()
}

/// A tools folder with calc alone.
fn tools_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("calc")).unwrap();
    std::fs::copy(
        repo().join("tools/calc/calc.sandgraph.yaml"),
        dir.path().join("calc/calc.sandgraph.yaml"),
    )
    .unwrap();
    dir
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn serve(tools: &Path, journal: &Path, cache: &Path) -> (Killed, SocketAddr) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_sandgraph"))
        .arg("serve")
        .env("SANDGRAPH_LISTEN", "127.0.0.1:0")
        .env("SANDGRAPH_JOURNAL", journal)
        .env("SANDGRAPH_CACHE_DIR", cache)
        .env("SANDGRAPH_TOOLS", tools)
        .env("SANDGRAPH_COMPONENTS", components())
        .env(
            "SANDGRAPH_AUTH_TOKENS",
            repo().join("host/tests/fixtures/auth/test-only-tokens.yaml"),
        )
        .env("SANDGRAPH_RATE_LIMIT", "1000000")
        .env("SANDGRAPH_RATE_BURST", "1000000")
        .env("SANDGRAPH_MAX_CONCURRENT_RUNS", "64")
        .env("RUST_LOG", "error")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start sandgraph serve");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .parse()
        .unwrap();
    (Killed(child), addr)
}

/// One keep-alive HTTP/1.1 connection to the server.
struct Conn {
    send: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    addr: SocketAddr,
    session: Option<String>,
}

impl Conn {
    async fn open(addr: SocketAddr) -> Conn {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        tcp.set_nodelay(true).unwrap();
        let (send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
            .await
            .unwrap();
        tokio::spawn(conn);
        Conn {
            send,
            addr,
            session: None,
        }
    }

    /// POSTs `body` to `path`; (status, session id header, body).
    async fn post(
        &mut self,
        path: &str,
        ctype: &str,
        body: String,
    ) -> (u16, Option<String>, String) {
        let mut req = http::Request::post(path)
            .header("host", self.addr.to_string())
            .header("authorization", format!("Bearer {TOKEN}"))
            .header("content-type", ctype)
            .header("accept", "application/json, text/event-stream");
        if let Some(s) = &self.session {
            req = req.header("mcp-session-id", s);
        }
        // A server that closed the connection (it may, after an answer): a new one.
        if self.send.ready().await.is_err() {
            let session = self.session.take();
            *self = Conn::open(self.addr).await;
            self.session = session;
        }
        let resp = self
            .send
            .send_request(req.body(Full::new(Bytes::from(body))).unwrap())
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let session = resp
            .headers()
            .get("mcp-session-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, session, String::from_utf8_lossy(&body).into_owned())
    }

    /// An initialized MCP session on this connection.
    async fn mcp_session(addr: SocketAddr) -> Conn {
        let mut c = Conn::open(addr).await;
        let (status, session, body) = c
            .post("/mcp", "application/json", init(1).to_string())
            .await;
        assert_eq!(status, 200, "{body}");
        c.session = session;
        c.post("/mcp", "application/json", initialized().to_string())
            .await;
        c
    }

    async fn mcp_call(&mut self, id: u64) {
        let (status, _, body) = self
            .post("/mcp", "application/json", call(id).to_string())
            .await;
        assert!(
            status == 200 && body.contains(r#""structuredContent":{"value":42.0}"#),
            "{status} {body}"
        );
    }

    async fn run(&mut self) {
        let (status, _, body) = self
            .post(
                "/v1/runs?wait=true",
                "application/json",
                json!({"graph": "one-calc", "input": {}}).to_string(),
            )
            .await;
        assert!(status == 200 && body.contains("42"), "{status} {body}");
    }
}

fn init(id: u64) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {},
        "clientInfo": {"name": "bench", "version": "1"}}})
}

fn initialized() -> Value {
    json!({"jsonrpc": "2.0", "method": "notifications/initialized"})
}

fn call(id: u64) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
        "params": {"name": "calc", "arguments": {"expr": "6 * 7"}}})
}

const ONE_CALC: &str = r#"
apiVersion: sandgraph.dev/v1
kind: Graph
metadata: { name: one-calc }
spec:
  nodes:
    - { id: calc, kind: tool, component: calc, input: { expr: "'6 * 7'" } }
"#;

struct Row {
    name: String,
    clients: usize,
    calls: usize,
    took: Duration,
    latencies: Vec<Duration>,
}

impl Row {
    fn per_sec(&self) -> f64 {
        self.calls as f64 / self.took.as_secs_f64()
    }
    fn pct(&mut self, p: f64) -> Duration {
        self.latencies.sort();
        let i = ((self.latencies.len() as f64 - 1.0) * p).round() as usize;
        self.latencies[i]
    }
}

/// `clients` concurrent clients, each making `per` calls (MCP `tools/call` when `mcp`, else
/// runs) on a connection (and session) of its own, set up before the clock starts.
fn http_row(
    rt: &tokio::runtime::Runtime,
    name: &str,
    clients: usize,
    per: usize,
    addr: SocketAddr,
    mcp: bool,
) -> Row {
    rt.block_on(async move {
        let mut conns = Vec::new();
        for _ in 0..clients {
            conns.push(if mcp {
                Conn::mcp_session(addr).await
            } else {
                Conn::open(addr).await
            });
        }
        let started = Instant::now();
        let tasks: Vec<_> = conns
            .into_iter()
            .map(|mut c| {
                tokio::spawn(async move {
                    let mut lat = Vec::with_capacity(per);
                    for i in 0..per {
                        let t = Instant::now();
                        if mcp {
                            c.mcp_call(i as u64 + 2).await;
                        } else {
                            c.run().await;
                        }
                        lat.push(t.elapsed());
                    }
                    lat
                })
            })
            .collect();
        let mut latencies = Vec::new();
        for t in tasks {
            latencies.extend(t.await.unwrap());
        }
        Row {
            name: name.to_owned(),
            clients,
            calls: clients * per,
            took: started.elapsed(),
            latencies,
        }
    })
}

/// `sandgraph mcp` on pipes, `calls` calls with up to `in_flight` outstanding.
fn stdio_row(tools: &Path, cache: &Path, calls: usize, in_flight: usize) -> Row {
    let mut child = Command::new(env!("CARGO_BIN_EXE_sandgraph"))
        .arg("mcp")
        .arg("--tools")
        .arg(tools)
        .arg("--components")
        .arg(components())
        .arg("--cache-dir")
        .arg(cache)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    let mut output = BufReader::new(child.stdout.take().unwrap());
    let _guard = Killed(child);
    let mut line = String::new();
    let mut send = |v: Value| {
        input.write_all(v.to_string().as_bytes()).unwrap();
        input.write_all(b"\n").unwrap();
        input.flush().unwrap();
    };
    let mut read = |line: &mut String| -> Value {
        line.clear();
        output.read_line(line).unwrap();
        serde_json::from_str(line).unwrap()
    };
    send(init(1));
    read(&mut line);
    send(initialized());
    // Warm: the first call describes and instantiates the tool.
    send(call(2));
    read(&mut line);
    let mut sent_at = std::collections::HashMap::new();
    let mut latencies = Vec::with_capacity(calls);
    let started = Instant::now();
    let mut next = 0;
    while latencies.len() < calls {
        while next < calls && sent_at.len() < in_flight {
            let id = next as u64 + 100;
            sent_at.insert(id, Instant::now());
            send(call(id));
            next += 1;
        }
        let answer = read(&mut line);
        assert_eq!(
            answer["result"]["structuredContent"]["value"], 42.0,
            "{answer}"
        );
        let id = answer["id"].as_u64().unwrap();
        latencies.push(sent_at.remove(&id).unwrap().elapsed());
    }
    Row {
        name: format!("MCP stdio, {in_flight} in flight"),
        clients: 1,
        calls,
        took: started.elapsed(),
        latencies,
    }
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let per: usize = std::env::var("SANDGRAPH_BENCH_CALLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let tools = tools_dir();
    let journal = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let (_server, addr) = serve(tools.path(), &journal.path().join("j"), cache.path());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut c = Conn::open(addr).await;
        let (status, _, body) = c
            .post("/v1/graphs", "application/yaml", ONE_CALC.to_owned())
            .await;
        assert_eq!(status, 201, "{body}");
        // Warm both paths.
        c.run().await;
        let mut m = Conn::mcp_session(addr).await;
        m.mcp_call(2).await;
    });
    let mut rows = Vec::new();
    for clients in [1, 8] {
        rows.push(http_row(
            &rt,
            "run API, POST /v1/runs?wait=true",
            clients,
            per,
            addr,
            false,
        ));
        rows.push(http_row(
            &rt,
            "MCP streamable HTTP",
            clients,
            per,
            addr,
            true,
        ));
    }
    rows.push(stdio_row(tools.path(), cache.path(), per, 1));
    rows.push(stdio_row(tools.path(), cache.path(), per * 8, 8));
    println!();
    println!(
        "{:<36} {:>7} {:>7} {:>10} {:>10} {:>10} {:>12}",
        "calc, one call", "clients", "calls", "calls/s", "p50 ms", "p99 ms", "vs run API"
    );
    let baseline = |rows: &[Row], clients: usize| {
        rows.iter()
            .find(|r| r.name.starts_with("run API") && r.clients == clients)
            .map(Row::per_sec)
            .unwrap_or(f64::NAN)
    };
    let bases: Vec<f64> = rows
        .iter()
        .map(|r| {
            let in_flight = if r.name.contains("8 in flight") {
                8
            } else {
                r.clients
            };
            baseline(&rows, in_flight)
        })
        .collect();
    for (r, base) in rows.iter_mut().zip(bases) {
        let (p50, p99) = (r.pct(0.5), r.pct(0.99));
        println!(
            "{:<36} {:>7} {:>7} {:>10.0} {:>10.2} {:>10.2} {:>11.2}x",
            r.name,
            r.clients,
            r.calls,
            r.per_sec(),
            p50.as_secs_f64() * 1e3,
            p99.as_secs_f64() * 1e3,
            r.per_sec() / base
        );
    }
}
