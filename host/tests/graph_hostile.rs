//! Hostile graph documents and poison runs never crash or stall the host: expressions that
//! would exhaust the stack are located errors when a graph is validated or POSTed to `serve`,
//! a journaled run whose pinned graph holds one (written before the limits existed) ends as
//! failed with the reason under `sandgraph resume` and a `serve` start while other runs finish,
//! and JSON nested past the engine's limit is refused where it enters (run input, tool output).

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use serde_json::{Value, json};

use sandgraph::api::Config;
use sandgraph::graph::catalog::Catalog;
use sandgraph::graph::compile::canonical_json;
use sandgraph::graph::engine::{Engine, EngineConfig, EngineError};
use sandgraph::graph::spec::Graph;
use sandgraph::graph::{CompiledGraph, validate};
use sandgraph::journal::{Durability, Event, Journal, PinnedComponent, RunId, RunStatus};
use sandgraph::sandbox::egress::{SecretStore, StaticResolver};
use sandgraph::sandbox::engine::Allocator;
use sandgraph::sandbox::manifest::Manifest;
use sandgraph::sandbox::{MAX_JSON_DEPTH, Sandbox, SandboxConfig};

const ADMIN: &str = "test-only-admin-token-0001";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn tool_wasm(name: &str) -> &'static str {
    sandgraph_test_artifacts::TOOLS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, p)| *p)
        .unwrap_or_else(|| panic!("no tool {name}"))
}

fn manifest_text(name: &str) -> String {
    std::fs::read_to_string(repo().join(format!("tools/{name}/{name}.sandgraph.yaml"))).unwrap()
}

fn catalog() -> Catalog {
    let mut catalog = Catalog::default();
    for name in ["calc", "json-query"] {
        let text = manifest_text(name);
        let manifest = Manifest::parse(name, &text).unwrap();
        catalog.insert(manifest, text, std::fs::read(tool_wasm(name)).unwrap());
    }
    catalog
}

fn engine(journal: Journal) -> Engine {
    let sandbox = Sandbox::new(SandboxConfig {
        allocator: Allocator::OnDemand,
        cache_dir: Some(common::cache_dir()),
        resolver: Arc::new(StaticResolver::default()),
        secrets: SecretStore::default(),
        extra_roots: Vec::new(),
    })
    .expect("sandbox");
    Engine::new(
        Arc::new(sandbox),
        Arc::new(journal),
        EngineConfig::default(),
    )
}

fn nested(open: &str, inner: &str, close: &str, n: usize) -> String {
    format!("{}{inner}{}", open.repeat(n), close.repeat(n))
}

/// The shapes that aborted the process before expressions were bounded, and far deeper ones.
fn hostile_expressions() -> Vec<(&'static str, String, &'static str)> {
    vec![
        (
            "60 parentheses",
            nested("(", "1", ")", 60),
            "nests brackets (parentheses, lists, maps, call arguments, indexes) more than 24 deep at column 25",
        ),
        (
            "lists 200 deep",
            nested("[", "1", "]", 200),
            "nests brackets (parentheses, lists, maps, call arguments, indexes) more than 24 deep at column 25",
        ),
        (
            "60-term sum",
            vec!["1"; 60].join(" + "),
            "chains more than 32 binary operators at column 131",
        ),
        (
            "10,000 parentheses",
            nested("(", "1", ")", 10_000),
            "is 20001 bytes, over the limit of 4096",
        ),
        (
            "2,000 maps",
            nested("{1:", "1", "}", 2_000),
            "is 8001 bytes, over the limit of 4096",
        ),
        (
            "1,300 lists",
            nested("[", "1", "]", 1_300),
            "nests brackets (parentheses, lists, maps, call arguments, indexes) more than 24 deep at column 25",
        ),
    ]
}

fn graph_with_input(name: &str, expr: &str) -> String {
    format!(
        "apiVersion: sandgraph.dev/v1\nkind: Graph\nmetadata:\n  name: {name}\nspec:\n  nodes:\n    - id: a\n      kind: tool\n      component: calc\n      input:\n        expr: \"{expr}\"\n"
    )
}

#[test]
fn hostile_expressions_are_located_validation_errors() {
    let manifests = catalog().manifests();
    for (what, expr, message) in hostile_expressions() {
        let source = graph_with_input("hostile", &expr);
        let d = validate::validate("g.yaml", &source, &manifests).expect_err(what);
        assert_eq!(d.0.len(), 1, "{what}: {d}");
        assert_eq!(d.0[0].pos.to_string(), "11:15", "{what}: {d}");
        assert!(d.0[0].message.contains(message), "{what}: {d}");
    }
}

/// `sandgraph graph validate` runs on the process's main thread: it must report, not abort.
#[test]
fn graph_validate_reports_hostile_expressions_and_exits_normally() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("g.yaml");
    std::fs::write(&file, graph_with_input("h", &nested("(", "1", ")", 1_500))).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_sandgraph"))
        .args(["graph", "validate"])
        .arg(&file)
        .arg("--tools")
        .arg(repo().join("tools"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.code().is_some(), "killed by a signal: {stderr}");
    assert!(!out.status.success());
    assert!(
        format!("{stdout}{stderr}").contains("g.yaml:11:15: node 'a' input 'expr': expression"),
        "{stdout}{stderr}"
    );
    assert!(
        format!("{stdout}{stderr}").contains("more than 24 deep at column 25"),
        "{stdout}{stderr}"
    );
}

// ------------------------------------------------------------------------ poison runs

/// A running run (created, nothing else) pinning `graph`, written straight to the journal the
/// way a host before the expression limits would have: no validation.
fn journal_running_run(journal: &Journal, catalog: &Catalog, graph: Value) -> RunId {
    let spec: Graph = serde_json::from_value(graph).unwrap();
    let compiled = CompiledGraph::compile(spec.clone());
    let calc = catalog.get("calc").unwrap();
    let run = RunId::new();
    let event = Event::RunCreated {
        graph_name: spec.metadata.name.clone(),
        graph_digest: compiled.digest_hex(),
        graph: journal.put_payload(&canonical_json(&spec)).unwrap(),
        components: vec![PinnedComponent {
            name: "calc".into(),
            digest: calc.digest.clone(),
            wasm: journal.put_payload(&calc.wasm).unwrap(),
            manifest: journal.put_payload(calc.manifest_text.as_bytes()).unwrap(),
        }],
        input: journal.put_payload(b"{}").unwrap(),
    };
    journal.append(run, &event, Durability::Durable).unwrap();
    run
}

fn one_calc(name: &str, expr: &str, when: Option<&str>) -> Value {
    let mut nodes = vec![json!({"id": "a", "kind": "tool", "component": "calc",
                                "input": {"expr": "'1 + 2'"}})];
    let mut edges = vec![];
    if let Some(w) = when {
        nodes.push(json!({"id": "b", "kind": "tool", "component": "calc",
                          "input": {"expr": "'2 + 2'"}}));
        edges.push(json!({"from": "a", "to": "b", "when": w}));
    }
    nodes[0]["input"]["expr"] = json!(expr);
    json!({"apiVersion": "sandgraph.dev/v1", "kind": "Graph", "metadata": {"name": name},
           "spec": {"nodes": nodes, "edges": edges}})
}

/// Three running runs: one evaluating a 60-term sum (overflowed a tokio worker), one whose
/// condition nests 300 parentheses (overflowed at compile), and a healthy one.
fn poison_journal(path: &Path) -> (RunId, RunId, RunId) {
    let journal = Journal::open(path).unwrap();
    let catalog = catalog();
    let sum = format!("string({})", vec!["1"; 60].join(" + "));
    let eval_poison = journal_running_run(&journal, &catalog, one_calc("sum", &sum, None));
    let parens = nested("(", "true", ")", 300);
    let compile_poison = journal_running_run(
        &journal,
        &catalog,
        one_calc("parens", "'1 + 1'", Some(&parens)),
    );
    let healthy = journal_running_run(&journal, &catalog, one_calc("ok", "'20 + 22'", None));
    journal.sync().unwrap();
    (eval_poison, compile_poison, healthy)
}

fn finished(journal: &Journal, run: RunId) -> Option<(RunStatus, Option<String>)> {
    journal
        .events(run)
        .unwrap()
        .into_iter()
        .find_map(|r| match r.event {
            Event::RunFinished { status, error, .. } => Some((status, error)),
            _ => None,
        })
}

fn assert_poison_outcomes(journal: &Journal, runs: (RunId, RunId, RunId)) {
    let (eval_poison, compile_poison, healthy) = runs;
    let (status, error) = finished(journal, eval_poison).expect("the sum run ended");
    assert_eq!(status, RunStatus::Failed);
    let error = error.unwrap();
    assert!(
        error.contains("node 'a' input field 'expr'")
            && error.contains("refused before running: it chains more than 32 binary operators"),
        "{error}"
    );
    let (status, error) = finished(journal, compile_poison).expect("the parens run ended");
    assert_eq!(status, RunStatus::Failed);
    let error = error.unwrap();
    assert!(
        error.contains("edge 'a -> b'") && error.contains("more than 24 deep"),
        "{error}"
    );
    let (status, error) = finished(journal, healthy).expect("the healthy run ended");
    assert_eq!(status, RunStatus::Succeeded, "{error:?}");
}

#[test]
fn sandgraph_resume_ends_poison_runs_as_failed_and_finishes_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("journal");
    let runs = poison_journal(&path);
    let out = Command::new(env!("CARGO_BIN_EXE_sandgraph"))
        .arg("resume")
        .arg("--journal")
        .arg(&path)
        .arg("--cache-dir")
        .arg(common::cache_dir())
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.code().is_some(),
        "resume was killed by a signal:\n{stdout}\n{stderr}"
    );
    assert!(
        stdout.contains(&format!("{} failed", runs.0)),
        "{stdout}\n{stderr}"
    );
    assert!(
        stdout.contains(&format!("{} succeeded", runs.2)),
        "{stdout}"
    );
    assert_poison_outcomes(&Journal::open(&path).unwrap(), runs);
    // A second resume finds nothing left to do: no crash loop.
    let again = Command::new(env!("CARGO_BIN_EXE_sandgraph"))
        .arg("resume")
        .arg("--journal")
        .arg(&path)
        .arg("--cache-dir")
        .arg(common::cache_dir())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(again.status.success(), "{again:?}");
}

fn serve_config(journal: PathBuf) -> Config {
    let mut c = Config::with_journal(journal);
    c.listen = "127.0.0.1:0".parse().unwrap();
    c.cache_dir = Some(common::cache_dir());
    c.auth_tokens = Some(repo().join("host/tests/fixtures/auth/test-only-tokens.yaml"));
    c.rate_limit = 10_000.0;
    c.rate_burst = 10_000;
    c.shutdown_grace = Duration::from_millis(500);
    c
}

#[test]
fn a_serve_start_ends_poison_runs_as_failed_and_stays_up() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("journal");
    let runs = poison_journal(&path);
    let server = common::api_server::ApiServer::start(serve_config(path.clone()));
    for run in [runs.0, runs.1, runs.2] {
        common::wait_for("every resumed run ends", || {
            get(server.addr, &format!("/v1/runs/{run}")).1["status"] != "running"
        });
    }
    let (status, body) = get(server.addr, &format!("/v1/runs/{}", runs.0));
    assert_eq!(status, 200);
    assert_eq!(body["status"], "failed", "{body}");
    assert!(
        body.to_string()
            .contains("chains more than 32 binary operators"),
        "{body}"
    );
    assert_eq!(
        get(server.addr, &format!("/v1/runs/{}", runs.2)).1["status"],
        "succeeded"
    );
    // Still serving.
    assert_eq!(get(server.addr, "/v1/runs").0, 200);
    server.shutdown();
    assert_poison_outcomes(&Journal::open(&path).unwrap(), runs);
}

/// A run whose pinned graph cannot even be read back is ended as failed with the reason, and
/// the host starts anyway.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unusable_pinned_graph_fails_its_run_instead_of_the_host_start() {
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(&dir.path().join("journal")).unwrap();
    let catalog = catalog();
    let healthy = journal_running_run(&journal, &catalog, one_calc("ok", "'1 + 1'", None));
    let broken = RunId::new();
    journal
        .append(
            broken,
            &Event::RunCreated {
                graph_name: "broken".into(),
                graph_digest: "0".repeat(64),
                graph: journal.put_payload(b"{\"not\": \"a graph\"}").unwrap(),
                components: vec![],
                input: journal.put_payload(b"{}").unwrap(),
            },
            Durability::Durable,
        )
        .unwrap();
    let engine = engine(journal);
    let handles = engine.resume_unfinished().await.expect("the host starts");
    let mut outcomes = Vec::new();
    for h in handles {
        outcomes.push(h.wait().await);
    }
    let broken_outcome = outcomes.iter().find(|o| o.run == broken).unwrap();
    assert_eq!(broken_outcome.status, RunStatus::Failed);
    let error = broken_outcome.error.as_deref().unwrap();
    assert!(
        error.contains("the journal's pinned graph is unusable"),
        "{error}"
    );
    let ok = outcomes.iter().find(|o| o.run == healthy).unwrap();
    assert_eq!(ok.status, RunStatus::Succeeded, "{:?}", ok.error);
    assert!(engine.journal().unfinished_runs().unwrap().is_empty());
}

// ------------------------------------------------------------------------ JSON depth

fn deep_array(depth: usize) -> Value {
    let mut v = json!(1);
    for _ in 0..depth {
        v = Value::Array(vec![v]);
    }
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_input_nested_past_the_limit_is_refused_before_the_run_starts() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(Journal::open(&dir.path().join("journal")).unwrap());
    let catalog = catalog();
    let graph = Arc::new(CompiledGraph::compile(
        serde_json::from_value(one_calc("deep", "'1 + 1'", None)).unwrap(),
    ));
    // The limit counts the input object itself.
    let at = json!({ "x": deep_array(MAX_JSON_DEPTH - 1) });
    let outcome = engine.run(graph.clone(), &catalog, at).await.unwrap();
    assert_eq!(outcome.status, RunStatus::Succeeded, "{:?}", outcome.error);
    for depth in [MAX_JSON_DEPTH, 1_000] {
        let over = json!({ "x": deep_array(depth) });
        match engine.start(graph.clone(), &catalog, over).await {
            Err(EngineError::InputTooDeep { depth: d, limit }) => {
                assert_eq!((d, limit), (depth + 1, MAX_JSON_DEPTH));
            }
            Err(e) => panic!("{e}"),
            Ok(_) => panic!("a run started with input {depth} deep"),
        }
    }
}

/// json-query returns its document inside `{"matches": [{"value": …}]}`, three levels deeper:
/// a document within the input limit comes back deeper than the engine accepts, and the
/// sandbox refuses that output with its own error instead of a later step failing on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tool_output_nested_past_the_limit_is_refused_at_the_sandbox() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(Journal::open(&dir.path().join("journal")).unwrap());
    let catalog = catalog();
    let graph = json!({"apiVersion": "sandgraph.dev/v1", "kind": "Graph", "metadata": {"name": "q"},
        "spec": {"nodes": [{"id": "q", "kind": "tool", "component": "json-query",
                            "input": {"document": "input.doc", "path": "'$'"}}]}});
    let graph = Arc::new(CompiledGraph::compile(
        serde_json::from_value(graph).unwrap(),
    ));
    let fits = json!({ "doc": deep_array(MAX_JSON_DEPTH - 3) });
    let outcome = engine.run(graph.clone(), &catalog, fits).await.unwrap();
    assert_eq!(outcome.status, RunStatus::Succeeded, "{:?}", outcome.error);
    let too_deep = json!({ "doc": deep_array(MAX_JSON_DEPTH - 2) });
    let outcome = engine.run(graph, &catalog, too_deep).await.unwrap();
    assert_eq!(outcome.status, RunStatus::Failed);
    let error = outcome.error.unwrap();
    assert!(
        error.contains(&format!(
            "output nests arrays and objects deeper than {MAX_JSON_DEPTH} levels"
        )),
        "{error}"
    );
}

// ------------------------------------------------------------------------ over HTTP

/// One request on its own connection; the status and the JSON body.
fn request(addr: SocketAddr, method: &str, path: &str, ctype: &str, body: &[u8]) -> (u16, Value) {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nAuthorization: Bearer {ADMIN}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).unwrap();
    let _ = s.write_all(body);
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").expect("a response head");
    let status: u16 = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_owned()
    };
    let ctype = head
        .lines()
        .find(|l| l.to_ascii_lowercase().starts_with("content-type:"))
        .map(|l| l[13..].trim().to_owned())
        .unwrap_or_default();
    let mut json: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    if ctype == "application/problem+json" {
        json["__problem"] = json!(true);
    }
    (status, json)
}

fn dechunk(body: &str) -> String {
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, tail)) = rest.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.push_str(&tail[..n]);
        rest = &tail[n + 2..];
    }
    out
}

fn get(addr: SocketAddr, path: &str) -> (u16, Value) {
    request(addr, "GET", path, "application/json", b"")
}

#[test]
fn hostile_graphs_posted_to_serve_are_problems_while_a_run_finishes() {
    let dir = tempfile::tempdir().unwrap();
    let server = common::api_server::ApiServer::start(serve_config(dir.path().join("journal")));
    let addr = server.addr;
    let upload = json!({
        "manifest": manifest_text("calc"),
        "component": base64::engine::general_purpose::STANDARD
            .encode(std::fs::read(tool_wasm("calc")).unwrap()),
    });
    let (status, body) = request(
        addr,
        "POST",
        "/v1/tools",
        "application/json",
        upload.to_string().as_bytes(),
    );
    assert_eq!(status, 201, "{body}");
    let healthy = graph_with_input("healthy", "'6 * 7'");
    assert_eq!(
        request(
            addr,
            "POST",
            "/v1/graphs",
            "application/yaml",
            healthy.as_bytes()
        )
        .0,
        201
    );
    // A run in flight while the hostile documents arrive.
    let (status, started) = request(
        addr,
        "POST",
        "/v1/runs",
        "application/json",
        json!({"graph": "healthy", "input": {}})
            .to_string()
            .as_bytes(),
    );
    assert_eq!(status, 202, "{started}");
    let mut shapes = hostile_expressions();
    shapes.push((
        "selections",
        format!("input{}", ".a".repeat(200)),
        "more than 32 selections",
    ));
    shapes.push((
        "unary",
        format!("{}true", "!".repeat(3_000)),
        "more than 16 unary",
    ));
    for (what, expr, message) in shapes {
        let yaml = graph_with_input("hostile", &expr);
        let (status, problem) = request(
            addr,
            "POST",
            "/v1/graphs",
            "application/yaml",
            yaml.as_bytes(),
        );
        assert_eq!(status, 422, "{what}: {problem}");
        assert_eq!(problem["__problem"], true, "{what}");
        assert!(
            problem["type"].as_str().unwrap().ends_with("graph-invalid"),
            "{problem}"
        );
        let errors = problem["errors"]
            .as_array()
            .unwrap_or_else(|| panic!("{problem}"));
        assert_eq!(errors.len(), 1, "{what}: {problem}");
        assert_eq!(
            (errors[0]["line"].as_u64(), errors[0]["column"].as_u64()),
            (Some(11), Some(15)),
            "{what}: {problem}"
        );
        assert!(
            errors[0]["message"].as_str().unwrap().contains(message),
            "{what}: {problem}"
        );
    }
    // A YAML document nested 10,000 deep inside a node's input.
    let deep_yaml = graph_with_input("deep", "x").replace("\"x\"", &nested("[", "", "]", 10_000));
    let (status, problem) = request(
        addr,
        "POST",
        "/v1/graphs",
        "application/yaml",
        deep_yaml.as_bytes(),
    );
    assert_eq!(status, 422, "{problem}");
    assert!(
        problem
            .to_string()
            .contains("nesting deeper than 64 levels"),
        "{problem}"
    );
    // A run input nested past the limit (serde_json itself stops at 128).
    for depth in [MAX_JSON_DEPTH, 120, 10_000] {
        let body = format!(
            "{{\"graph\": \"healthy\", \"input\": {{\"x\": {}}}}}",
            nested("[", "1", "]", depth)
        );
        let (status, problem) = request(
            addr,
            "POST",
            "/v1/runs",
            "application/json",
            body.as_bytes(),
        );
        assert!(
            status == 400 || status == 422,
            "{depth}: {status} {problem}"
        );
        assert_eq!(problem["__problem"], true, "{depth}");
        if depth <= 120 {
            assert!(
                problem["detail"]
                    .as_str()
                    .unwrap()
                    .contains(&format!("over the limit of {MAX_JSON_DEPTH}")),
                "{problem}"
            );
        }
    }
    let run = started["run"].as_str().unwrap().to_owned();
    common::wait_for("the healthy run ends", || {
        get(addr, &format!("/v1/runs/{run}")).1["status"] != "running"
    });
    let (_, body) = get(addr, &format!("/v1/runs/{run}"));
    assert_eq!(body["status"], "succeeded", "{body}");
    server.shutdown();
}
