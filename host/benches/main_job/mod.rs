//! What the benchmarks of the main job share: a page server on 127.0.0.1, the shipped tools
//! and agents with their built components, and the compiled plan-execute-review graph.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sandgraph::graph::catalog::Catalog;
use sandgraph::graph::engine::{Engine, EngineConfig};
use sandgraph::graph::{self, CompiledGraph};
use sandgraph::journal::Journal;
use sandgraph::model::Models;
use sandgraph::sandbox::egress::SecretStore;
use sandgraph::sandbox::manifest::{Manifest, OperatorPolicy};
use sandgraph::sandbox::{Sandbox, SandboxConfig};
use serde_json::{Value, json};

pub const PAGE: &str = "Sandboxes keep tools honest.\nEvery call is isolated and journaled.\n";

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A loopback server answering every request with [`PAGE`]; returns its port.
pub fn page_server() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            std::thread::spawn(move || {
                let mut reader = BufReader::new(conn.try_clone().unwrap());
                let mut line = String::new();
                // The request head ends with an empty line.
                while reader.read_line(&mut line).unwrap_or(0) > 0 && line != "\r\n" {
                    line.clear();
                }
                let _ = write!(
                    conn,
                    "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{PAGE}",
                    PAGE.len()
                );
            });
        }
    });
    port
}

/// The shipped tools and agents with their built components; http-get may reach `port`.
pub fn catalog(port: u16) -> Catalog {
    let mut catalog = Catalog::default();
    let built = sandgraph_test_artifacts::TOOLS
        .iter()
        .map(|e| (e, "tools"))
        .chain(
            sandgraph_test_artifacts::AGENTS
                .iter()
                .map(|e| (e, "agents")),
        );
    for ((name, wasm), folder) in built {
        let path = repo()
            .join(folder)
            .join(name)
            .join(format!("{name}.sandgraph.yaml"));
        let text = std::fs::read_to_string(&path)
            .unwrap()
            .replace("port: 8000", &format!("port: {port}"));
        let manifest = Manifest::parse(&path.display().to_string(), &text).unwrap();
        catalog.insert(manifest, text, std::fs::read(wasm).unwrap());
    }
    catalog
}

pub fn graph(catalog: &Catalog) -> Arc<CompiledGraph> {
    Arc::new(
        graph::load(
            &repo().join("graphs/plan-execute-review.yaml"),
            &catalog.manifests(),
        )
        .unwrap(),
    )
}

/// The main job's input for an expression `a*b` and the page on `port`.
pub fn input(a: usize, b: usize, port: u16) -> Value {
    json!({
        "goal": format!("Compute {a}*{b} and count the words of the page"),
        "url": format!("http://127.0.0.1:{port}/page.txt"),
    })
}

/// An engine for the main job under `dir` (journal and compile cache there) with the models
/// file `models_yaml`; egress may reach 127.0.0.1 (the page server).
pub fn engine(dir: &Path, models_yaml: &str) -> (Engine, Arc<Journal>) {
    let models =
        Models::parse("bench", models_yaml, &repo(), &SecretStore::default()).expect("models");
    let sandbox = Sandbox::new(SandboxConfig {
        cache_dir: Some(dir.join("cache")),
        ..SandboxConfig::default()
    })
    .unwrap();
    let journal = Arc::new(Journal::open(&dir.join("journal")).unwrap());
    let engine = Engine::new(
        Arc::new(sandbox),
        journal.clone(),
        EngineConfig {
            policy: OperatorPolicy {
                allow_private: vec!["127.0.0.1".parse().unwrap()],
                ..OperatorPolicy::default()
            },
            ..EngineConfig::default()
        },
    )
    .with_models(Arc::new(models));
    (engine, journal)
}
