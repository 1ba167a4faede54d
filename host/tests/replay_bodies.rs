//! Offline replay of steps that send a request body: POST and PUT, with a declared length and
//! streamed, empty and multi-megabyte. The guest streams its body after `handle` (as the SDK
//! does), so a replayed exchange must take that body as the live connection did; each shape is
//! run and replayed many times because the old failure depended on timing.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use serde_json::{Value, json};

use sandgraph::graph::catalog::Catalog;
use sandgraph::graph::engine::{Engine, EngineConfig};
use sandgraph::graph::replay::StepReplay;
use sandgraph::graph::{CompiledGraph, validate};
use sandgraph::journal::{Journal, RunStatus};
use sandgraph::sandbox::egress::{SecretStore, StaticResolver};
use sandgraph::sandbox::engine::Allocator;
use sandgraph::sandbox::manifest::Manifest;
use sandgraph::sandbox::{Sandbox, SandboxConfig};

const RUNS_PER_SHAPE: usize = 20;

/// Answers every request with the byte count and a checksum of the body it read, honouring
/// Content-Length and chunked framing; counts requests.
struct EchoLength {
    addr: SocketAddr,
    requests: Arc<AtomicUsize>,
}

impl EchoLength {
    fn start() -> EchoLength {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(AtomicUsize::new(0));
        let counter = requests.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let counter = counter.clone();
                std::thread::spawn(move || {
                    let _ = answer(conn, &counter);
                });
            }
        });
        EchoLength { addr, requests }
    }
}

fn answer(mut conn: TcpStream, counter: &AtomicUsize) -> std::io::Result<()> {
    let mut r = BufReader::new(conn.try_clone()?);
    let Some(head) = common::http_head::read_request_head(&mut r)? else {
        return Ok(());
    };
    let mut body = Vec::new();
    if head.header("transfer-encoding") == Some("chunked") {
        loop {
            let mut size = String::new();
            r.read_line(&mut size)?;
            let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
            let mut chunk = vec![0; n + 2];
            r.read_exact(&mut chunk)?;
            if n == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..n]);
        }
    } else {
        body = vec![0; head.content_length()];
        r.read_exact(&mut body)?;
    }
    counter.fetch_add(1, Ordering::SeqCst);
    let sum = body
        .iter()
        .fold(0u64, |a, b| a.wrapping_mul(31).wrapping_add(*b as u64));
    let text = format!("{} {} bytes, sum {sum}", head.method, body.len());
    write!(
        conn,
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}",
        text.len()
    )
}

fn engine() -> Engine {
    let sandbox = Sandbox::new(SandboxConfig {
        allocator: Allocator::Pooling,
        cache_dir: Some(common::cache_dir()),
        resolver: Arc::new(StaticResolver::default()),
        secrets: SecretStore::default(),
        extra_roots: Vec::new(),
    })
    .expect("sandbox");
    let mut config = EngineConfig::default();
    config.policy.allow_private = vec!["127.0.0.1".parse().unwrap()];
    Engine::new(
        Arc::new(sandbox),
        Arc::new(Journal::temporary().expect("journal")),
        config,
    )
}

fn catalog(port: u16) -> Catalog {
    let text = format!(
        "apiVersion: sandgraph.dev/v1\nkind: ToolManifest\nmetadata: {{ name: journal_post_body }}\n\
         spec:\n  egress: [{{ scheme: http, host: 127.0.0.1, port: {port}, methods: [POST, PUT] }}]\n  \
         limits: {{ timeout: 30s }}\n"
    );
    let manifest = Manifest::parse("test.yaml", &text).unwrap();
    let mut catalog = Catalog::default();
    catalog.insert(
        manifest,
        text,
        std::fs::read(common::hostile("journal_post_body")).unwrap(),
    );
    catalog
}

const GRAPH: &str = r#"
apiVersion: sandgraph.dev/v1
kind: Graph
metadata: { name: send-a-body }
spec:
  nodes:
    - id: send
      kind: tool
      component: journal_post_body
      input: { url: input.url, method: input.method, size: input.size, framing: input.framing }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn steps_that_send_bodies_replay_identically_every_time() {
    let server = EchoLength::start();
    let engine = engine();
    let catalog = catalog(server.addr.port());
    let spec = validate::validate("send.yaml", GRAPH, &catalog.manifests())
        .unwrap_or_else(|d| panic!("{d}"));
    let graph = Arc::new(CompiledGraph::compile(spec));
    let shapes = [
        ("POST", 0, "fixed"),
        ("POST", 0, "streamed"),
        ("POST", 3_000, "fixed"),
        ("PUT", 70_000, "streamed"),
        ("POST", 3 * 1024 * 1024, "streamed"),
        ("PUT", 3 * 1024 * 1024, "fixed"),
    ];
    for (method, size, framing) in shapes {
        let shape = format!("{method} {size} bytes {framing}");
        for i in 0..RUNS_PER_SHAPE {
            let before = server.requests.load(Ordering::SeqCst);
            let input = json!({
                "url": format!("http://{}/submit", server.addr),
                "method": method, "size": size.to_string(), "framing": framing,
            });
            let outcome = engine.run(graph.clone(), &catalog, input).await.unwrap();
            assert_eq!(
                outcome.status,
                RunStatus::Succeeded,
                "{shape} #{i}: {outcome:?}"
            );
            let output: Value = serde_json::from_str(outcome.output.as_deref().unwrap()).unwrap();
            let out = &output["send"];
            assert_eq!(out["status"], 200, "{shape} #{i}: {out}");
            let body = out["body"].as_str().unwrap();
            assert!(
                body.starts_with(&format!("{method} {size} bytes, sum ")),
                "{shape} #{i}: the server saw {body}"
            );
            assert_eq!(server.requests.load(Ordering::SeqCst), before + 1);

            let report = engine.replay(outcome.run).await.unwrap();
            assert_eq!(
                report.steps,
                [StepReplay::Identical {
                    step: "send#1".into(),
                    attempt: 1
                }],
                "{shape} #{i}: replay diverged"
            );
            assert_eq!(
                server.requests.load(Ordering::SeqCst),
                before + 1,
                "{shape} #{i}: replay reached the network"
            );
        }
    }
}
