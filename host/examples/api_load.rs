//! Load on `sandgraph serve` over 127.0.0.1: trivial one-step runs submitted with
//! `?wait=true` by concurrent keep-alive clients (runs/s, p50/p99 latency), against the same
//! runs started directly on an `Engine` in the same process (the baseline: what HTTP, auth,
//! admission and JSON add); then 1,000 concurrent event streams on one live run, each of which
//! must receive every event up to `run_finished`.
//!
//! `cargo run --release -p sandgraph --example api_load [-- RUNS CLIENTS STREAMS]`

use std::io::{BufRead, BufReader, Write as _};
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use sandgraph::api::{self, Config};
use sandgraph::graph::catalog::Catalog;
use sandgraph::graph::engine::{Engine, EngineConfig};
use sandgraph::graph::{CompiledGraph, validate};
use sandgraph::journal::Journal;
use sandgraph::sandbox::manifest::Manifest;
use sandgraph::sandbox::{Sandbox, SandboxConfig};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TOKEN: &str = "test-only-admin-token-0001";

const TRIVIAL: &str = r#"
apiVersion: sandgraph.dev/v1
kind: Graph
metadata: { name: trivial }
spec:
  nodes:
    - { id: add, kind: tool, component: calc, input: { expr: "'1 + 2'" } }
"#;

const GATED: &str = r#"
apiVersion: sandgraph.dev/v1
kind: Graph
metadata: { name: gated }
spec:
  nodes:
    - { id: before, kind: tool, component: calc, input: { expr: "'1 + 1'" } }
    - { id: wait, kind: tool, component: egress_fetch, input: { url: "'URL'", method: "'GET'" } }
    - { id: after, kind: tool, component: calc, input: { expr: "'2 * 10'" } }
  edges:
    - { from: before, to: wait }
    - { from: wait, to: after }
"#;

fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn artifact(list: &[(&'static str, &'static str)], name: &str) -> &'static str {
    list.iter()
        .find(|(n, _)| *n == name)
        .map(|(_, p)| *p)
        .expect("artifact")
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// One keep-alive HTTP/1.1 connection.
struct Client {
    send: http1::SendRequest<Full<Bytes>>,
    addr: SocketAddr,
}

impl Client {
    async fn connect(addr: SocketAddr) -> Client {
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream.set_nodelay(true).unwrap();
        let (send, conn) = http1::handshake(TokioIo::new(stream)).await.unwrap();
        tokio::spawn(conn);
        Client { send, addr }
    }

    async fn call(&mut self, method: &str, path: &str, ctype: &str, body: Vec<u8>) -> (u16, Value) {
        let (status, body) = self.raw(method, path, ctype, body).await;
        (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
    }

    async fn raw(&mut self, method: &str, path: &str, ctype: &str, body: Vec<u8>) -> (u16, Bytes) {
        let req = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header("host", self.addr.to_string())
            .header("authorization", format!("Bearer {TOKEN}"))
            .header("content-type", ctype)
            .body(Full::new(Bytes::from(body)))
            .unwrap();
        self.send.ready().await.unwrap();
        let resp = self.send.send_request(req).await.unwrap();
        let status = resp.status().as_u16();
        (status, resp.into_body().collect().await.unwrap().to_bytes())
    }
}

/// A loopback server whose every request waits until `open` is called.
fn gate() -> (
    SocketAddr,
    Arc<(std::sync::Mutex<bool>, std::sync::Condvar)>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let open = Arc::new((std::sync::Mutex::new(false), std::sync::Condvar::new()));
    let o = open.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let o = o.clone();
            std::thread::spawn(move || {
                let mut conn = conn;
                let mut r = BufReader::new(conn.try_clone().unwrap());
                let mut line = String::new();
                while r.read_line(&mut line).unwrap_or(0) > 2 {
                    line.clear();
                }
                let mut g = o.0.lock().unwrap();
                while !*g {
                    g = o.1.wait(g).unwrap();
                }
                let _ = conn.write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
                );
            });
        }
    });
    (addr, open)
}

/// Opens an event stream and reads it to its end; returns the number of events, or why it failed.
async fn stream(addr: SocketAddr, run: String, opened: Arc<AtomicUsize>) -> Result<usize, String> {
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    s.write_all(
        format!(
            "GET /v1/runs/{run}/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .map_err(|e| e.to_string())?;
    let mut got = Vec::new();
    let mut buf = vec![0u8; 16384];
    let mut counted_open = false;
    loop {
        let n = s.read(&mut buf).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Err(format!("closed early after {} bytes", got.len()));
        }
        got.extend_from_slice(&buf[..n]);
        if !counted_open && got.starts_with(b"HTTP/1.1 200") {
            counted_open = true;
            opened.fetch_add(1, Ordering::SeqCst);
        }
        let text = String::from_utf8_lossy(&got);
        if text.contains("event: run_finished") && text.ends_with("\r\n0\r\n\r\n") {
            return Ok(text.matches("\nid: ").count() + usize::from(text.contains("\r\nid: ")));
        }
        if !text.starts_with("HTTP/1.1 200") && text.contains("\r\n\r\n") {
            return Err(text.lines().next().unwrap_or("").to_owned());
        }
    }
}

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let runs = args.first().copied().unwrap_or(2000);
    let clients = args.get(1).copied().unwrap_or(16);
    let streams = args.get(2).copied().unwrap_or(1000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(bench(runs, clients, streams));
}

async fn bench(runs: usize, clients: usize, streams: usize) {
    let dir = tempfile::tempdir().unwrap();
    let cache = std::env::temp_dir().join("sandgraph-api-load-cache");
    let calc_manifest =
        std::fs::read_to_string(manifest_dir().join("../tools/calc/calc.sandgraph.yaml")).unwrap();
    let calc_wasm = std::fs::read(artifact(sandgraph_test_artifacts::TOOLS, "calc")).unwrap();

    // Baseline: the same runs straight on an Engine, same concurrency, no HTTP.
    let engine = Arc::new(Engine::new(
        Arc::new(
            Sandbox::new(SandboxConfig {
                cache_dir: Some(cache.clone()),
                ..SandboxConfig::default()
            })
            .unwrap(),
        ),
        Arc::new(Journal::open(&dir.path().join("baseline")).unwrap()),
        EngineConfig::default(),
    ));
    let mut catalog = Catalog::default();
    catalog.insert(
        Manifest::parse("calc", &calc_manifest).unwrap(),
        calc_manifest.clone(),
        calc_wasm.clone(),
    );
    let catalog = Arc::new(catalog);
    let graph = Arc::new(CompiledGraph::compile(
        validate::validate("trivial.yaml", TRIVIAL, &catalog.manifests()).unwrap(),
    ));
    engine
        .run(graph.clone(), &catalog, json!({}))
        .await
        .unwrap();
    let (base_rate, base_lat) = drive(runs, clients, |_| {
        let (engine, catalog, graph) = (engine.clone(), catalog.clone(), graph.clone());
        async move {
            let o = engine.run(graph, &catalog, json!({})).await.unwrap();
            assert_eq!(o.status.as_str(), "succeeded");
        }
    })
    .await;

    // The API.
    let mut config = Config::with_journal(dir.path().join("api"));
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.cache_dir = Some(cache);
    config.auth_tokens = Some(manifest_dir().join("tests/fixtures/auth/test-only-tokens.yaml"));
    config.allow_private = vec!["127.0.0.1".parse().unwrap()];
    config.rate_limit = 1e9;
    config.rate_burst = u32::MAX;
    config.run_queue = 100_000;
    config.sse_heartbeat = Duration::from_secs(5);
    let server = api::start(config).await.unwrap();
    let addr = server.addr;
    let mut c = Client::connect(addr).await;
    let b64 = base64::engine::general_purpose::STANDARD;
    let upload = |m: &str, w: &[u8]| {
        json!({"manifest": m, "component": b64.encode(w)})
            .to_string()
            .into_bytes()
    };
    assert_eq!(
        c.call(
            "POST",
            "/v1/tools",
            "application/json",
            upload(&calc_manifest, &calc_wasm)
        )
        .await
        .0,
        201
    );
    assert_eq!(
        c.call(
            "POST",
            "/v1/graphs",
            "application/yaml",
            TRIVIAL.as_bytes().to_vec()
        )
        .await
        .0,
        201
    );
    let body = json!({"graph": "trivial", "input": {}})
        .to_string()
        .into_bytes();
    let pool = Arc::new(tokio::sync::Mutex::new(Vec::new()));
    for _ in 0..clients {
        pool.lock().await.push(Client::connect(addr).await);
    }
    let (api_rate, api_lat) = drive(runs, clients, |_| {
        let (pool, body) = (pool.clone(), body.clone());
        async move {
            let mut c = pool.lock().await.pop().unwrap();
            let (status, v) = c
                .call("POST", "/v1/runs?wait=true", "application/json", body)
                .await;
            assert_eq!(
                (status, v["status"].as_str()),
                (200, Some("succeeded")),
                "{v}"
            );
            pool.lock().await.push(c);
        }
    })
    .await;

    println!("| what ({runs} runs, {clients} concurrent clients) | runs/s | p50 ms | p99 ms |");
    println!("|---|---|---|---|");
    for (name, rate, lat) in [
        ("Engine::run in process (baseline)", base_rate, &base_lat),
        ("POST /v1/runs?wait=true over HTTP", api_rate, &api_lat),
    ] {
        println!(
            "| {name} | {rate:.0} | {:.2} | {:.2} |",
            ms(percentile(lat, 0.5)),
            ms(percentile(lat, 0.99))
        );
    }
    println!("HTTP/engine throughput ratio: {:.2}", api_rate / base_rate);

    // Event streams: `streams` clients on one run parked at a gate, then the gate opens.
    let (gate_addr, open) = gate();
    let fetch_manifest = format!(
        "apiVersion: sandgraph.dev/v1\nkind: ToolManifest\nmetadata: {{ name: egress_fetch }}\nspec:\n  egress: [{{ scheme: http, host: 127.0.0.1, port: {}, methods: [GET] }}]\n  limits: {{ timeout: 120s }}\n",
        gate_addr.port()
    );
    let fetch_wasm = std::fs::read(artifact(
        sandgraph_test_artifacts::HOSTILE_GUESTS,
        "egress_fetch",
    ))
    .unwrap();
    assert_eq!(
        c.call(
            "POST",
            "/v1/tools",
            "application/json",
            upload(&fetch_manifest, &fetch_wasm)
        )
        .await
        .0,
        201
    );
    let gated = GATED.replace("URL", &format!("http://127.0.0.1:{}/", gate_addr.port()));
    assert_eq!(
        c.call("POST", "/v1/graphs", "application/yaml", gated.into_bytes())
            .await
            .0,
        201
    );
    let (status, v) = c
        .call(
            "POST",
            "/v1/runs",
            "application/json",
            json!({"graph": "gated", "input": {}})
                .to_string()
                .into_bytes(),
        )
        .await;
    assert_eq!(status, 202);
    let run = v["run"].as_str().unwrap().to_owned();
    let opened = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let tasks: Vec<_> = (0..streams)
        .map(|_| tokio::spawn(stream(addr, run.clone(), opened.clone())))
        .collect();
    while opened.load(Ordering::SeqCst) < streams {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "streams did not open"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let all_open = started.elapsed();
    let (_, metrics) = c.raw("GET", "/metrics", "text/plain", Vec::new()).await;
    let gauge = String::from_utf8_lossy(&metrics)
        .lines()
        .find(|l| l.starts_with("sandgraph_sse_streams_in_flight "))
        .unwrap_or("")
        .to_owned();
    *open.0.lock().unwrap() = true;
    open.1.notify_all();
    let release = Instant::now();
    let mut errors = Vec::new();
    let mut counts = std::collections::BTreeMap::new();
    for t in tasks {
        match t.await.unwrap() {
            Ok(n) => *counts.entry(n).or_insert(0usize) += 1,
            Err(e) => errors.push(e),
        }
    }
    println!(
        "{streams} concurrent event streams on one live run: all open after {:.0} ms (metric `{gauge}`); all ended {:.0} ms after the run resumed; events per stream {:?}; errors {}",
        ms(all_open),
        ms(release.elapsed()),
        counts,
        errors.len()
    );
    if let Some(e) = errors.first() {
        println!("first error: {e}");
    }
    server.shutdown().await;
}

/// Runs `n` jobs with `concurrency` in flight; returns jobs/s and each job's latency, sorted.
async fn drive<F, Fut>(n: usize, concurrency: usize, job: F) -> (f64, Vec<Duration>)
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let sem = Arc::new(tokio::sync::Semaphore::new(concurrency));
    let start = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for i in 0..n {
        let permit = sem.clone().acquire_owned().await.unwrap();
        let fut = job(i);
        set.spawn(async move {
            let t = Instant::now();
            fut.await;
            drop(permit);
            t.elapsed()
        });
    }
    let mut lat = Vec::with_capacity(n);
    while let Some(r) = set.join_next().await {
        lat.push(r.unwrap());
    }
    let rate = n as f64 / start.elapsed().as_secs_f64();
    lat.sort();
    (rate, lat)
}
