//! The graph engine end to end: the example graphs run on real tool components (against a
//! loopback server where they fetch), parallel branches are really in flight together, retries
//! back off and give up, timeouts, step limits, deadlines and cancellation end runs with their
//! specific message, conditions and reducers shape the run, replay reproduces every step offline
//! and notices a tampered journal, and a run pins its graph and components.

mod common;

use std::io::{BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use serde_json::{Value, json};

use sandgraph::graph::catalog::Catalog;
use sandgraph::graph::compile::canonical_json;
use sandgraph::graph::engine::{Engine, EngineConfig, EngineError, RunOutcome};
use sandgraph::graph::replay::StepReplay;
use sandgraph::graph::{self, CompiledGraph, validate};
use sandgraph::journal::{Crossing, Event, Journal, PayloadRef, RunId, RunStatus};
use sandgraph::sandbox::egress::{SecretStore, StaticResolver};
use sandgraph::sandbox::engine::Allocator;
use sandgraph::sandbox::manifest::Manifest;
use sandgraph::sandbox::{Sandbox, SandboxConfig};

// ------------------------------------------------------------------------------ plumbing

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// An engine on a temporary journal whose operator policy lets egress reach 127.0.0.1.
fn engine() -> Engine {
    engine_with(EngineConfig::default())
}

fn engine_with(mut config: EngineConfig) -> Engine {
    let sandbox = Sandbox::new(SandboxConfig {
        allocator: Allocator::Pooling,
        cache_dir: Some(common::cache_dir()),
        resolver: Arc::new(StaticResolver::default()),
        secrets: SecretStore::default(),
        extra_roots: Vec::new(),
    })
    .expect("sandbox");
    config.policy.allow_private = vec!["127.0.0.1".parse().unwrap()];
    Engine::new(
        Arc::new(sandbox),
        Arc::new(Journal::temporary().expect("journal")),
        config,
    )
}

/// Every tool under `tools/` with its own manifest; `http-get`'s local rule is moved from port
/// 8000 to `http_port` (the test server) when given.
fn catalog(http_port: Option<u16>) -> Catalog {
    let mut catalog = Catalog::default();
    for (name, wasm) in sandgraph_test_artifacts::TOOLS {
        let path = root()
            .join("tools")
            .join(name)
            .join(format!("{name}.sandgraph.yaml"));
        let mut text = std::fs::read_to_string(&path).unwrap();
        if let (true, Some(port)) = (*name == "http-get", http_port) {
            assert!(
                text.contains("port: 8000"),
                "http-get manifest changed:\n{text}"
            );
            text = text.replace("port: 8000", &format!("port: {port}"));
        }
        let manifest = Manifest::parse(&path.display().to_string(), &text).unwrap();
        catalog.insert(manifest, text, std::fs::read(wasm).unwrap());
    }
    catalog
}

/// Adds a test guest (from `tests/guests`) as component `guest` with the manifest `spec:` body.
fn add_guest(catalog: &mut Catalog, guest: &str, spec_yaml: &str) {
    let mut text = format!(
        "apiVersion: sandgraph.dev/v1\nkind: ToolManifest\nmetadata: {{ name: {guest} }}\n"
    );
    if !spec_yaml.is_empty() {
        text.push_str("spec:\n");
        for line in spec_yaml.lines() {
            text.push_str("  ");
            text.push_str(line);
            text.push('\n');
        }
    }
    let manifest = Manifest::parse("test.yaml", &text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    let wasm = std::fs::read(common::hostile(guest)).unwrap();
    catalog.insert(manifest, text, wasm);
}

fn example_source(name: &str) -> String {
    std::fs::read_to_string(root().join("graphs").join(name)).unwrap()
}

fn example(name: &str, catalog: &Catalog) -> Arc<CompiledGraph> {
    Arc::new(
        graph::load(&root().join("graphs").join(name), &catalog.manifests())
            .unwrap_or_else(|d| panic!("{name}:\n{d}")),
    )
}

/// Validates and compiles a graph given as YAML text.
fn compile(source: &str, catalog: &Catalog) -> Arc<CompiledGraph> {
    let spec = validate::validate("test.yaml", source, &catalog.manifests())
        .unwrap_or_else(|d| panic!("{d}\n{source}"));
    Arc::new(CompiledGraph::compile(spec))
}

/// `source` with `from` replaced by `to`, which must occur in it.
fn edit(source: &str, from: &str, to: &str) -> String {
    assert!(source.contains(from), "`{from}` is not in\n{source}");
    source.replace(from, to)
}

fn events(engine: &Engine, run: RunId) -> Vec<Event> {
    engine
        .journal()
        .events(run)
        .unwrap()
        .into_iter()
        .map(|r| r.event)
        .collect()
}

fn payload_json(engine: &Engine, p: &PayloadRef) -> Value {
    serde_json::from_slice(&engine.journal().payload(p).unwrap()).unwrap()
}

/// (step, input) of every StepScheduled, in journal order.
fn scheduled(engine: &Engine, events: &[Event]) -> Vec<(String, Value)> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::StepScheduled { step, input, .. } => {
                Some((step.clone(), payload_json(engine, input)))
            }
            _ => None,
        })
        .collect()
}

/// (step, output) of every StepCompleted, in journal order.
fn completed(engine: &Engine, events: &[Event]) -> Vec<(String, Value)> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::StepCompleted { step, output, .. } => {
                Some((step.clone(), payload_json(engine, output)))
            }
            _ => None,
        })
        .collect()
}

fn step_names(list: &[(String, Value)]) -> Vec<&str> {
    list.iter().map(|(s, _)| s.as_str()).collect()
}

/// (attempt, kind, message, retry_in_ms) of every StepFailed of `step`.
fn failures(events: &[Event], of: &str) -> Vec<(u32, String, String, Option<u64>)> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::StepFailed {
                step,
                attempt,
                kind,
                message,
                retry_in_ms,
            } if step == of => Some((*attempt, kind.clone(), message.clone(), *retry_in_ms)),
            _ => None,
        })
        .collect()
}

fn started_attempts(events: &[Event], of: &str) -> Vec<u32> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::StepStarted { step, attempt } if step == of => Some(*attempt),
            _ => None,
        })
        .collect()
}

fn position(events: &[Event], pred: impl Fn(&Event) -> bool) -> usize {
    events
        .iter()
        .position(pred)
        .expect("the event is in the journal")
}

fn is_completed(e: &Event, name: &str) -> bool {
    matches!(e, Event::StepCompleted { step, .. } if step == name)
}

fn is_scheduled(e: &Event, name: &str) -> bool {
    matches!(e, Event::StepScheduled { step, .. } if step == name)
}

fn output(outcome: &RunOutcome) -> Value {
    serde_json::from_str(outcome.output.as_deref().expect("the run has an output")).unwrap()
}

fn assert_failed(outcome: &RunOutcome, message: &str) {
    assert_eq!(
        (outcome.status, outcome.error.as_deref()),
        (RunStatus::Failed, Some(message)),
        "{outcome:?}"
    );
    assert_eq!(outcome.output, None);
}

fn assert_succeeded(outcome: &RunOutcome) {
    assert_eq!(outcome.status, RunStatus::Succeeded, "{outcome:?}");
    assert_eq!(outcome.error, None);
}

/// The journal ends with the outcome the engine reported.
fn assert_finished_in_journal(engine: &Engine, outcome: &RunOutcome) {
    let evs = events(engine, outcome.run);
    match evs.last() {
        Some(Event::RunFinished { status, error, .. }) => {
            assert_eq!((*status, error), (outcome.status, &outcome.error))
        }
        other => panic!("the journal ends with {other:?}, not RunFinished"),
    }
    let summary = engine
        .journal()
        .runs()
        .unwrap()
        .into_iter()
        .find(|s| s.run == outcome.run)
        .expect("the run is listed");
    assert_eq!(summary.status, outcome.status);
}

// ------------------------------------------------------------------ loopback test server

/// An HTTP/1.1 server on 127.0.0.1:0, one request per connection, one thread per connection.
/// Routes: `/page` (text, 4 words), `/flaky` (503 for the first `flaky_failures` requests,
/// then JSON), `/down` (always 503), `/ok` ("hello"), `/pair` (answers 200 once two `/pair`
/// requests are in flight together, or 504 when the second does not come within
/// [`PAIR_WAIT`]). `stop` closes the listening socket.
struct Server {
    addr: SocketAddr,
    paths: Arc<Mutex<Vec<String>>>,
    stopped: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    fn start(flaky_failures: usize) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let paths = Arc::new(Mutex::new(Vec::new()));
        let stopped = Arc::new(AtomicBool::new(false));
        let routes = Arc::new(Routes {
            paths: paths.clone(),
            flaky_seen: AtomicUsize::new(0),
            flaky_failures,
            pair: (Mutex::new(0), Condvar::new()),
        });
        let thread = {
            let stopped = stopped.clone();
            std::thread::spawn(move || {
                for conn in listener.incoming() {
                    if stopped.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(conn) = conn else { continue };
                    let routes = routes.clone();
                    std::thread::spawn(move || {
                        let _ = answer(conn, &routes);
                    });
                }
            })
        };
        Server {
            addr,
            paths,
            stopped,
            thread: Some(thread),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn port(&self) -> u16 {
        self.addr.port()
    }

    fn requests(&self) -> Vec<String> {
        self.paths.lock().unwrap().clone()
    }

    /// Closes the listening socket: from now on connections are refused.
    fn stop(&mut self) {
        self.stopped.store(true, Ordering::SeqCst);
        // Wakes the accept loop so it sees the flag and drops the listener.
        let _ = TcpStream::connect(self.addr);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
        assert!(
            TcpStream::connect(self.addr).is_err(),
            "the stopped server still accepts connections"
        );
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.thread.is_some() {
            self.stopped.store(true, Ordering::SeqCst);
            let _ = TcpStream::connect(self.addr);
        }
    }
}

/// How long a `/pair` request waits for its partner.
const PAIR_WAIT: Duration = Duration::from_secs(20);

struct Routes {
    paths: Arc<Mutex<Vec<String>>>,
    flaky_seen: AtomicUsize,
    flaky_failures: usize,
    /// `/pair` requests that have arrived.
    pair: (Mutex<usize>, Condvar),
}

impl Routes {
    /// Waits until two `/pair` requests have arrived; false if the partner never came.
    fn meet(&self) -> bool {
        let (lock, cv) = &self.pair;
        let mut arrived = lock.lock().unwrap();
        *arrived += 1;
        cv.notify_all();
        let (arrived, _) = cv
            .wait_timeout_while(arrived, PAIR_WAIT, |n| *n < 2)
            .unwrap();
        *arrived >= 2
    }
}

fn answer(conn: TcpStream, routes: &Routes) -> std::io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(conn.try_clone()?);
    let Some(head) = common::http_head::read_request_head(&mut reader)? else {
        return Ok(());
    };
    let target = head.target;
    routes.paths.lock().unwrap().push(target.clone());
    let (status, content_type, body): (&str, &str, &str) = match target.as_str() {
        "/page" => ("200 OK", "text/plain", "alpha beta gamma delta"),
        "/ok" => ("200 OK", "text/plain", "hello"),
        "/flaky" if routes.flaky_seen.fetch_add(1, Ordering::SeqCst) < routes.flaky_failures => {
            ("503 Service Unavailable", "text/plain", "try later")
        }
        "/flaky" => (
            "200 OK",
            "application/json",
            r#"{"items":[{"name":"a"},{"name":"b"}]}"#,
        ),
        "/down" => ("503 Service Unavailable", "text/plain", "down"),
        "/pair" if routes.meet() => ("200 OK", "text/plain", "together"),
        "/pair" => ("504 Gateway Timeout", "text/plain", "alone"),
        _ => ("404 Not Found", "text/plain", "no such route"),
    };
    let mut out = conn;
    write!(
        out,
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    out.flush()
}

// ------------------------------------------------------------- example: conditional loop

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conditional_loop_example_doubles_until_the_limit_then_reports() {
    let engine = engine();
    let catalog = catalog(None);
    let graph = example("conditional-loop.yaml", &catalog);
    let outcome = engine
        .run(graph, &catalog, json!({"start": 3, "limit": 50}))
        .await
        .unwrap();
    assert_succeeded(&outcome);
    assert_finished_in_journal(&engine, &outcome);

    let evs = events(&engine, outcome.run);
    let done = completed(&engine, &evs);
    assert_eq!(
        step_names(&done),
        [
            "seed#1", "double#1", "double#2", "double#3", "double#4", "double#5", "report#1"
        ]
    );
    let values: Vec<&Value> = done[..6].iter().map(|(_, o)| &o["value"]).collect();
    assert_eq!(
        values,
        [
            &json!(3.0),
            &json!(6.0),
            &json!(12.0),
            &json!(24.0),
            &json!(48.0),
            &json!(96.0)
        ]
    );
    // Each iteration reads the previous one; the append reducer collected all five in
    // `state.value`, which the report counts.
    let inputs = scheduled(&engine, &evs);
    assert_eq!(inputs[1], ("double#1".into(), json!({"expr": "3 * 2"})));
    assert_eq!(inputs[5], ("double#5".into(), json!({"expr": "48 * 2"})));
    assert_eq!(
        inputs[6],
        (
            "report#1".into(),
            json!({"text": "final value 96 after 5 doublings"})
        )
    );
    let out = output(&outcome);
    assert_eq!(out["report"]["words"], json!(6), "{out}");
    assert_eq!(
        out["report"]["top_terms"][1],
        json!({"count": 1, "term": "96"})
    );
}

// ------------------------------------------------------------------- durable points

/// A chain's durable points when every successor waits for them: the run's start, each
/// completion, the run's end; every completion is reported only after the flush that made it
/// durable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_completion_is_reported_after_the_flush_that_made_it_durable() {
    let reported: Arc<Mutex<Vec<(String, u64)>>> = Arc::default();
    let engine = engine_with(EngineConfig {
        successors_wait_for_durability: true,
        ..EngineConfig::default()
    });
    let engine = {
        let (reported, journal) = (reported.clone(), engine.journal().clone());
        engine.with_progress(Arc::new(move |_, e: &Event| {
            let what = match e {
                Event::StepCompleted { step, .. } => format!("completed {step}"),
                Event::RunFinished { status, .. } => format!("finished {status}"),
                _ => return,
            };
            reported.lock().unwrap().push((what, journal.flush_count()));
        }))
    };
    let catalog = catalog(None);
    let source = "apiVersion: sandgraph.dev/v1\nkind: Graph\nmetadata: { name: chain }\nspec:\n  nodes:\n    - { id: a, kind: tool, component: calc, input: { expr: \"'1 + 1'\" } }\n    - { id: b, kind: tool, component: calc, input: { expr: \"string(nodes.a.value) + ' + 1'\" } }\n    - { id: c, kind: tool, component: calc, input: { expr: \"string(nodes.b.value) + ' + 1'\" } }\n  edges:\n    - { from: a, to: b }\n    - { from: b, to: c }\n";
    let before = engine.journal().flush_count();
    let outcome = engine
        .run(compile(source, &catalog), &catalog, json!({}))
        .await
        .unwrap();
    assert_succeeded(&outcome);
    assert_eq!(output(&outcome)["c"]["value"], json!(4.0));
    // RunCreated, each completion, RunFinished.
    assert_eq!(engine.journal().flush_count() - before, 5);
    let reported = reported.lock().unwrap().clone();
    let names: Vec<&str> = reported.iter().map(|(w, _)| w.as_str()).collect();
    assert_eq!(
        names,
        [
            "completed a#1",
            "completed b#1",
            "completed c#1",
            "finished succeeded"
        ]
    );
    // Reported after the flush that made each durable.
    let flushed: Vec<u64> = reported.iter().map(|(_, n)| n - before).collect();
    assert_eq!(flushed, [2, 3, 4, 5]);
    let evs = events(&engine, outcome.run);
    let c_done = position(&evs, |e| is_completed(e, "c#1"));
    assert!(
        matches!(evs[c_done + 1], Event::RunFinished { .. }),
        "{evs:?}"
    );
}

/// By default a successor that reaches nothing outside its sandbox starts while its
/// predecessor's completion is still being flushed; one with egress waits until it is durable.
/// Every flush here takes 100 ms longer than the disk needs (the journal's flush hook sleeps), so
/// the order of reports shows which step waited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_effect_free_successor_starts_during_the_flush_and_one_with_egress_waits_for_it() {
    let server = Server::start(0);
    let tools = catalog(Some(server.port()));
    let engine = engine();
    engine
        .journal()
        .set_on_flush(Box::new(|_| std::thread::sleep(Duration::from_millis(100))));
    let reported: Arc<Mutex<Vec<String>>> = Arc::default();
    let engine = {
        let reported = reported.clone();
        engine.with_progress(Arc::new(move |_, e: &Event| {
            let what = match e {
                Event::StepStarted { step, .. } => format!("started {step}"),
                Event::StepCompleted { step, .. } => format!("completed {step}"),
                Event::RunFinished { status, .. } => format!("finished {status}"),
                _ => return,
            };
            reported.lock().unwrap().push(what);
        }))
    };
    let source = r#"
apiVersion: sandgraph.dev/v1
kind: Graph
metadata: { name: overlap }
spec:
  nodes:
    - { id: a, kind: tool, component: calc, input: { expr: "'1 + 1'" } }
    - { id: b, kind: tool, component: calc, input: { expr: "string(nodes.a.value) + ' + 1'" } }
    - id: fetch
      kind: tool
      component: http-get
      retry: { maxAttempts: 1 }
      input: { url: input.url, fail_on_error_status: "true" }
    - { id: c, kind: tool, component: calc, input: { expr: "string(nodes.b.value) + ' * 10'" } }
  edges:
    - { from: a, to: b }
    - { from: b, to: fetch }
    - { from: fetch, to: c }
"#;
    let outcome = engine
        .run(
            compile(source, &tools),
            &tools,
            json!({ "url": server.url("/ok") }),
        )
        .await
        .unwrap();
    assert_succeeded(&outcome);
    assert_eq!(output(&outcome)["c"]["value"], json!(30.0));
    let reported = reported.lock().unwrap().clone();
    let at = |what: &str| {
        reported
            .iter()
            .position(|r| r == what)
            .unwrap_or_else(|| panic!("{what} was not reported: {reported:?}"))
    };
    // b and c reach nothing outside: each started before the completion before it was durable.
    assert!(at("started b#1") < at("completed a#1"), "{reported:?}");
    assert!(at("started c#1") < at("completed fetch#1"), "{reported:?}");
    // The fetch has egress: it started only once b's completion (and a's) was durable.
    assert!(at("completed b#1") < at("started fetch#1"), "{reported:?}");
    // Completions are still reported in order, each after its flush, and all before the end.
    let done: Vec<&str> = reported
        .iter()
        .filter(|r| r.starts_with("completed") || r.starts_with("finished"))
        .map(String::as_str)
        .collect();
    assert_eq!(
        done,
        [
            "completed a#1",
            "completed b#1",
            "completed fetch#1",
            "completed c#1",
            "finished succeeded"
        ]
    );
    assert_eq!(server.requests(), ["/ok"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conditional_loop_that_never_exits_stops_at_max_iterations() {
    let engine = engine();
    let catalog = catalog(None);
    let limit_message = "node 'double' would run 11 times but its maxIterations is 10; the loop did not exit, check the condition on its back edge";

    // The example itself with a limit the doubling never reaches.
    let graph = example("conditional-loop.yaml", &catalog);
    let outcome = engine
        .run(graph, &catalog, json!({"start": 3, "limit": 1e12}))
        .await
        .unwrap();
    assert_failed(&outcome, limit_message);
    assert_finished_in_journal(&engine, &outcome);
    let evs = events(&engine, outcome.run);
    let done = completed(&engine, &evs);
    assert_eq!(done.len(), 11, "{:?}", step_names(&done));
    assert_eq!(done[10].0, "double#10");
    assert_eq!(done[10].1["value"], json!(3072.0));
    assert!(!evs.iter().any(|e| is_scheduled(e, "double#11")));
    assert!(!evs.iter().any(|e| is_scheduled(e, "report#1")));

    // A variant whose back edge is always taken.
    let source = example_source("conditional-loop.yaml");
    let source = edit(
        &source,
        r#"when: "nodes.double.value < input.limit""#,
        r#"when: "true""#,
    );
    let source = edit(
        &source,
        r#"when: "!(nodes.double.value < input.limit)""#,
        r#"when: "false""#,
    );
    let outcome = engine
        .run(
            compile(&source, &catalog),
            &catalog,
            json!({"start": 1, "limit": 2}),
        )
        .await
        .unwrap();
    assert_failed(&outcome, limit_message);
}

// --------------------------------------------------------------- example: fan-out/fan-in

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loop_gives_up_gracefully_after_n_rounds_counted_by_a_reducer() {
    // The README's pattern: a review that is never approved is retried three times, then the
    // run goes on with the last result instead of failing at maxIterations.
    let engine = engine();
    let catalog = catalog(None);
    let source = r#"
apiVersion: sandgraph.dev/v1
kind: Graph
metadata: { name: give-up }
spec:
  nodes:
    - { id: draft, kind: tool, component: calc, input: { expr: "'1'" } }
    - id: review
      kind: tool
      component: calc
      maxIterations: 10
      input: { expr: "'0'" }
      reducers: { value: append }
    - { id: after, kind: tool, component: calc, input: { expr: "string(size(state.value))" } }
  edges:
    - { from: draft, to: review }
    - { from: review, to: review, when: "!(nodes.review.value > 0) && size(state.value) < 3" }
    - { from: review, to: after, when: "!(!(nodes.review.value > 0) && size(state.value) < 3)" }
"#;
    let outcome = engine
        .run(compile(source, &catalog), &catalog, json!({}))
        .await
        .unwrap();
    assert_succeeded(&outcome);
    let evs = events(&engine, outcome.run);
    assert_eq!(
        step_names(&completed(&engine, &evs)),
        ["draft#1", "review#1", "review#2", "review#3", "after#1"]
    );
    assert_eq!(output(&outcome)["after"]["value"], json!(3.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fan_out_fan_in_example_joins_both_branches_once() {
    let server = Server::start(0);
    let engine = engine();
    let catalog = catalog(Some(server.port()));
    let graph = example("fan-out-fan-in.yaml", &catalog);
    let outcome = engine
        .run(graph, &catalog, json!({"url": server.url("/page")}))
        .await
        .unwrap();
    assert_succeeded(&outcome);
    assert_finished_in_journal(&engine, &outcome);
    assert_eq!(server.requests(), ["/page"]);

    let evs = events(&engine, outcome.run);
    let mut names: Vec<(String, Value)> = completed(&engine, &evs);
    names.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        step_names(&names),
        ["fetch#1", "stats#1", "title#1", "total#1"]
    );
    // Both branches were launched together, before either finished.
    let first_branch_done = position(&evs, |e| {
        is_completed(e, "stats#1") || is_completed(e, "title#1")
    });
    assert!(position(&evs, |e| is_scheduled(e, "stats#1")) < first_branch_done);
    assert!(position(&evs, |e| is_scheduled(e, "title#1")) < first_branch_done);
    // The join ran once, after both, on both results.
    let join = position(&evs, |e| is_scheduled(e, "total#1"));
    assert!(join > position(&evs, |e| is_completed(e, "stats#1")));
    assert!(join > position(&evs, |e| is_completed(e, "title#1")));
    let inputs = scheduled(&engine, &evs);
    let total: Vec<&(String, Value)> = inputs
        .iter()
        .filter(|(s, _)| s.starts_with("total#"))
        .collect();
    assert_eq!(total, [&("total#1".to_string(), json!({"expr": "4 + 1"}))]);
    let stats = &names[1].1;
    assert_eq!(stats["words"], json!(4), "{stats}");
    let title = &names[2].1;
    assert_eq!(title["matches"][0]["value"], json!("text/plain"), "{title}");
    assert_eq!(output(&outcome), json!({"total": {"value": 5.0}}));
}

// ----------------------------------------------------------------- example: retry/timeout

/// `retry_in_ms` of attempt n lies in [0.5, 1.0] × initial × multiplier^(n-1) (ms, truncated).
fn assert_backoff(graph: &CompiledGraph, node: &str, attempt: u32, retry_in_ms: u64) {
    let policy = graph.graph[graph.by_id[node]].retry;
    let base =
        policy.initial_backoff.as_secs_f64() * 1000.0 * policy.multiplier.powi(attempt as i32 - 1);
    let (lo, hi) = ((0.5 * base).floor() as u64, base.ceil() as u64);
    assert!(
        (lo.saturating_sub(1)..=hi).contains(&retry_in_ms),
        "attempt {attempt}: retry in {retry_in_ms} ms is outside [{lo}, {hi}]"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_example_backs_off_through_a_flaky_period_then_succeeds() {
    let mut server = Server::start(2);
    let engine = engine();
    let catalog = catalog(Some(server.port()));
    let graph = example("retry-timeout.yaml", &catalog);
    let outcome = engine
        .run(
            graph.clone(),
            &catalog,
            json!({"url": server.url("/flaky")}),
        )
        .await
        .unwrap();
    assert_succeeded(&outcome);
    assert_finished_in_journal(&engine, &outcome);
    assert_eq!(server.requests(), ["/flaky", "/flaky", "/flaky"]);

    let records = engine.journal().events(outcome.run).unwrap();
    let evs: Vec<Event> = records.iter().map(|r| r.event.clone()).collect();
    assert_eq!(started_attempts(&evs, "call#1"), [1, 2, 3]);
    let failed = failures(&evs, "call#1");
    assert_eq!(failed.len(), 2, "{failed:?}");
    let url = server.url("/flaky");
    for (i, (attempt, kind, message, retry_in_ms)) in failed.iter().enumerate() {
        assert_eq!(*attempt, i as u32 + 1);
        assert_eq!(kind, "tool_failed");
        assert_eq!(
            message,
            &format!("tool failed: {url} answered with HTTP status 503")
        );
        let retry_in_ms = retry_in_ms.expect("a retry follows");
        assert_backoff(&graph, "call", *attempt, retry_in_ms);
        // The next attempt started no earlier than the backoff asked.
        let failed_at = records
            .iter()
            .find(|r| matches!(&r.event, Event::StepFailed { step, attempt: a, .. } if step == "call#1" && a == attempt))
            .unwrap()
            .at_ms;
        let next_at = records
            .iter()
            .find(|r| matches!(&r.event, Event::StepStarted { step, attempt: a } if step == "call#1" && *a == attempt + 1))
            .unwrap()
            .at_ms;
        assert!(
            next_at + 1 >= failed_at + retry_in_ms,
            "attempt {} started {} ms after the failure, the backoff was {retry_in_ms} ms",
            attempt + 1,
            next_at - failed_at
        );
    }
    let done = completed(&engine, &evs);
    assert_eq!(step_names(&done), ["call#1", "pick#1"]);
    assert_eq!(done[0].1["status"], json!(200));
    assert!(
        evs.iter().any(
            |e| matches!(e, Event::StepCompleted { step, attempt: 3, .. } if step == "call#1")
        )
    );
    assert_eq!(
        output(&outcome),
        json!({"pick": {"count": 1, "matches": [{"path": "$['status']", "value": 200}]}})
    );

    // Offline replay re-executes the attempt that completed (the third), not a failed one.
    server.stop();
    let report = engine.replay(outcome.run).await.unwrap();
    assert_eq!(
        report.steps,
        [
            StepReplay::Identical {
                step: "call#1".into(),
                attempt: 3
            },
            StepReplay::Identical {
                step: "pick#1".into(),
                attempt: 1
            },
        ]
    );
    assert_eq!(server.requests().len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_example_gives_up_after_max_attempts_naming_step_and_attempts() {
    let server = Server::start(0);
    let engine = engine();
    let catalog = catalog(Some(server.port()));
    // The example with a test-sized backoff: 5 attempts, 10 ms growing x2.
    let source = edit(
        &example_source("retry-timeout.yaml"),
        "initialBackoff: 250ms",
        "initialBackoff: 10ms",
    );
    let graph = compile(&source, &catalog);
    let url = server.url("/down");
    let outcome = engine
        .run(graph.clone(), &catalog, json!({ "url": url }))
        .await
        .unwrap();
    let why = format!("tool failed: {url} answered with HTTP status 503");
    assert_failed(
        &outcome,
        &format!("step 'call#1' failed after 5 attempts: {why}"),
    );
    assert_finished_in_journal(&engine, &outcome);
    assert_eq!(server.requests().len(), 5);

    let evs = events(&engine, outcome.run);
    assert_eq!(started_attempts(&evs, "call#1"), [1, 2, 3, 4, 5]);
    let failed = failures(&evs, "call#1");
    let attempts: Vec<u32> = failed.iter().map(|f| f.0).collect();
    assert_eq!(attempts, [1, 2, 3, 4, 5]);
    for (attempt, kind, message, retry_in_ms) in &failed {
        assert_eq!((kind.as_str(), message), ("tool_failed", &why));
        match retry_in_ms {
            Some(ms) => {
                assert!(*attempt < 5);
                assert_backoff(&graph, "call", *attempt, *ms);
            }
            None => assert_eq!(*attempt, 5, "only the last failure has no retry"),
        }
    }
    assert!(!evs.iter().any(|e| is_scheduled(e, "pick#1")));
}

/// Two entry nodes fetching `/pair`, joined by a third.
const PAIR_GRAPH: &str = r#"
apiVersion: sandgraph.dev/v1
kind: Graph
metadata: { name: pair }
spec:
  nodes:
    - id: left
      kind: tool
      component: http-get
      retry: { maxAttempts: 1 }
      input: { url: input.url, fail_on_error_status: "true" }
    - id: right
      kind: tool
      component: http-get
      retry: { maxAttempts: 1 }
      input: { url: input.url, fail_on_error_status: "true" }
    - id: both
      kind: tool
      component: calc
      input: { expr: "string(nodes.left.status) + ' + ' + string(nodes.right.status)" }
  edges:
    - { from: left, to: both }
    - { from: right, to: both }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_branches_are_in_flight_together_up_to_the_bound() {
    // The server answers `/pair` only while both branches' requests are open at once, so the
    // run succeeds only if the engine really runs them concurrently.
    let server = Server::start(0);
    let tools = catalog(Some(server.port()));
    let graph = compile(PAIR_GRAPH, &tools);
    let url = server.url("/pair");
    let engine = engine();
    let outcome = engine
        .run(graph.clone(), &tools, json!({ "url": url }))
        .await
        .unwrap();
    assert_succeeded(&outcome);
    assert_eq!(output(&outcome), json!({"both": {"value": 400.0}}));

    // With one step at a time the branches take turns: the journal shows the second branch's
    // request only after the first branch's response.
    let server = Server::start(0);
    let tools = catalog(Some(server.port()));
    let graph = compile(PAIR_GRAPH, &tools);
    let url = server.url("/ok");
    let engine = engine_with(EngineConfig {
        max_parallel_steps: 1,
        ..EngineConfig::default()
    });
    let outcome = engine
        .run(graph, &tools, json!({ "url": url }))
        .await
        .unwrap();
    assert_succeeded(&outcome);
    let order: Vec<(String, &str)> = events(&engine, outcome.run)
        .into_iter()
        .filter_map(|e| match e {
            Event::Crossing {
                step,
                crossing: Crossing::HttpIntent { .. },
                ..
            } => Some((step, "request")),
            Event::Crossing {
                step,
                crossing: Crossing::HttpResponse { .. },
                ..
            } => Some((step, "response")),
            _ => None,
        })
        .collect();
    assert_eq!(order.len(), 4, "{order:?}");
    assert_eq!(order[0].0, order[1].0, "branches overlapped: {order:?}");
    assert_eq!(order[2].0, order[3].0, "branches overlapped: {order:?}");
    assert_eq!(
        [order[0].1, order[1].1, order[2].1, order[3].1],
        ["request", "response", "request", "response"]
    );
    assert_eq!(server.requests(), ["/ok", "/ok"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_during_a_retry_backoff_ends_the_run_without_another_attempt() {
    let server = Server::start(0);
    let failed = Arc::new(tokio::sync::Notify::new());
    let engine = {
        let failed = failed.clone();
        engine().with_progress(Arc::new(move |_, e: &Event| {
            if matches!(e, Event::StepFailed { .. }) {
                failed.notify_one();
            }
        }))
    };
    let catalog = catalog(Some(server.port()));
    // The example with a backoff far longer than the test waits for.
    let source = edit(
        &example_source("retry-timeout.yaml"),
        "initialBackoff: 250ms",
        "initialBackoff: 10m",
    );
    let handle = engine
        .start(
            compile(&source, &catalog),
            &catalog,
            json!({"url": server.url("/down")}),
        )
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(30), failed.notified())
        .await
        .expect("the first attempt failed");
    handle.cancel();
    let outcome = tokio::time::timeout(Duration::from_secs(30), handle.wait())
        .await
        .expect("the cancelled run ends");
    assert_eq!(outcome.status, RunStatus::Cancelled, "{outcome:?}");
    assert_finished_in_journal(&engine, &outcome);
    let evs = events(&engine, outcome.run);
    assert_eq!(started_attempts(&evs, "call#1"), [1]);
    let retry = failures(&evs, "call#1")[0].3.expect("a retry was planned");
    assert!(retry >= 300_000, "backoff {retry} ms");
    assert_eq!(server.requests(), ["/down"]);
}

/// A single node on the guest that spins forever, with `extra` node fields and graph `limits`.
fn spin_graph(node_extra: &str, limits: &str) -> String {
    format!(
        "apiVersion: sandgraph.dev/v1
kind: Graph
metadata: {{ name: spin }}
spec:
  nodes:
    - id: spin
      kind: tool
      component: limits_infinite_loop
{node_extra}
  limits:
{limits}
"
    )
}

fn spin_catalog() -> Catalog {
    let mut catalog = catalog(None);
    add_guest(
        &mut catalog,
        "limits_infinite_loop",
        "limits: { timeout: 60s }",
    );
    catalog
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_step_timeout_fails_each_attempt_with_kind_timeout() {
    let engine = engine();
    let catalog = spin_catalog();
    let source = spin_graph(
        "      timeout: 200ms\n      retry: { maxAttempts: 2, initialBackoff: 10ms }",
        "    maxSteps: 5",
    );
    let outcome = engine
        .run(compile(&source, &catalog), &catalog, json!({}))
        .await
        .unwrap();
    assert_failed(
        &outcome,
        "step 'spin#1' failed after 2 attempts: timed out after 200 ms",
    );
    assert_finished_in_journal(&engine, &outcome);
    let failed = failures(&events(&engine, outcome.run), "spin#1");
    let kinds: Vec<(u32, &str, &str, bool)> = failed
        .iter()
        .map(|(a, k, m, r)| (*a, k.as_str(), m.as_str(), r.is_some()))
        .collect();
    assert_eq!(
        kinds,
        [
            (1, "timeout", "timed out after 200 ms", true),
            (2, "timeout", "timed out after 200 ms", false)
        ]
    );
}

// ------------------------------------------------------------------------------ limits

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_steps_stops_the_run_with_the_step_limit_message() {
    let engine = engine();
    let catalog = catalog(None);
    let source = edit(
        &example_source("conditional-loop.yaml"),
        "maxSteps: 30",
        "maxSteps: 4",
    );
    let outcome = engine
        .run(
            compile(&source, &catalog),
            &catalog,
            json!({"start": 3, "limit": 50}),
        )
        .await
        .unwrap();
    assert_failed(&outcome, "the run reached its maxSteps limit of 4 steps");
    assert_finished_in_journal(&engine, &outcome);
    let evs = events(&engine, outcome.run);
    assert_eq!(
        step_names(&completed(&engine, &evs)),
        ["seed#1", "double#1", "double#2", "double#3"]
    );
    assert!(!evs.iter().any(|e| is_scheduled(e, "double#4")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_past_its_deadline_fails_naming_the_deadline() {
    let engine = engine();
    let catalog = spin_catalog();
    let source = spin_graph(
        "      timeout: 30s\n      retry: { maxAttempts: 1 }",
        "    deadline: 300ms",
    );
    let outcome = engine
        .run(compile(&source, &catalog), &catalog, json!({}))
        .await
        .unwrap();
    assert_failed(&outcome, "the run passed its deadline of 300ms");
    assert_finished_in_journal(&engine, &outcome);
    let evs = events(&engine, outcome.run);
    assert_eq!(started_attempts(&evs, "spin#1"), [1]);
    assert!(completed(&engine, &evs).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_run_with_a_long_step_ends_it_cancelled() {
    let started = Arc::new(tokio::sync::Notify::new());
    let engine = {
        let started = started.clone();
        engine().with_progress(Arc::new(move |_, e: &Event| {
            if matches!(e, Event::StepStarted { step, .. } if step == "spin#1") {
                started.notify_one();
            }
        }))
    };
    let catalog = spin_catalog();
    let source = spin_graph(
        "      timeout: 60s\n      retry: { maxAttempts: 1 }",
        "    maxSteps: 5",
    );
    let handle = engine
        .start(compile(&source, &catalog), &catalog, json!({}))
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(30), started.notified())
        .await
        .expect("the long step started");
    handle.cancel();
    let outcome = tokio::time::timeout(Duration::from_secs(30), handle.wait())
        .await
        .expect("the cancelled run ends");
    assert_eq!(
        (outcome.status, outcome.error.as_deref(), outcome.output),
        (RunStatus::Cancelled, Some("the run was cancelled"), None)
    );
    let outcome = RunOutcome {
        output: None,
        ..outcome
    };
    assert_finished_in_journal(&engine, &outcome);
    let evs = events(&engine, outcome.run);
    assert!(completed(&engine, &evs).is_empty());
    assert!(failures(&evs, "spin#1").is_empty());
}

// ------------------------------------------------------------------------- input schema

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn input_violating_the_graph_schema_is_refused_naming_the_field() {
    let engine = engine();
    let catalog = catalog(None);
    let graph = example("conditional-loop.yaml", &catalog);
    let cases = [
        (
            json!({"start": "three", "limit": 50}),
            r#"/start: "three" is not of type "number""#,
        ),
        (json!({"start": 3}), r#""limit" is a required property"#),
    ];
    for (input, expected) in cases {
        match engine.start(graph.clone(), &catalog, input.clone()).await {
            Err(EngineError::InvalidInput(errors)) => {
                assert_eq!(errors, [expected], "input {input}")
            }
            Err(other) => panic!("input {input}: expected InvalidInput, got {other}"),
            Ok(h) => panic!("input {input} started run {}", h.run),
        }
    }
    assert!(
        engine.journal().runs().unwrap().is_empty(),
        "a refused input created a run"
    );
}

// ----------------------------------------------------------------- conditions, reducers

const DEAD_PATH_GRAPH: &str = r#"
apiVersion: sandgraph.dev/v1
kind: Graph
metadata: { name: dead-path }
spec:
  nodes:
    - { id: a, kind: tool, component: calc, input: { expr: "string(input.n) + ' + 0'" } }
    - id: big
      kind: tool
      component: calc
      input: { expr: "string(nodes.a.value) + ' * 100'" }
    - id: small
      kind: tool
      component: calc
      input: { expr: "string(nodes.a.value) + ' / 2'" }
    - id: join
      kind: tool
      component: calc
      input:
        expr: "has(nodes.big) ? 'big' : string(nodes.small.value) + ' + 0'"
  edges:
    - { from: a, to: big, when: "nodes.a.value > 10" }
    - { from: a, to: small, when: "nodes.a.value >= 0 && nodes.a.value <= 10" }
    - { from: big, to: join }
    - { from: small, to: join }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn false_condition_skips_its_target_and_the_join_fires_with_the_live_branch() {
    let engine = engine();
    let catalog = catalog(None);
    let graph = compile(DEAD_PATH_GRAPH, &catalog);
    let outcome = engine
        .run(graph.clone(), &catalog, json!({"n": 4}))
        .await
        .unwrap();
    assert_succeeded(&outcome);
    let evs = events(&engine, outcome.run);
    assert_eq!(
        scheduled(&engine, &evs),
        [
            ("a#1".to_string(), json!({"expr": "4 + 0"})),
            ("small#1".to_string(), json!({"expr": "4 / 2"})),
            ("join#1".to_string(), json!({"expr": "2 + 0"})),
        ]
    );
    assert_eq!(output(&outcome), json!({"join": {"value": 2.0}}));

    // Both conditions false: the join is dead too, and the run's output is what did run.
    let outcome = engine.run(graph, &catalog, json!({"n": -1})).await.unwrap();
    assert_succeeded(&outcome);
    let evs = events(&engine, outcome.run);
    assert_eq!(step_names(&scheduled(&engine, &evs)), ["a#1"]);
    assert_eq!(output(&outcome), json!({"a": {"value": -1.0}}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn append_reducer_accumulates_every_loop_iteration_in_state() {
    let engine = engine();
    let catalog = catalog(None);
    let source = r#"
apiVersion: sandgraph.dev/v1
kind: Graph
metadata: { name: collect }
spec:
  nodes:
    - { id: seed, kind: tool, component: calc, input: { expr: "string(input.start)" } }
    - id: double
      kind: tool
      component: calc
      maxIterations: 10
      input:
        expr: "has(nodes.double) ? string(nodes.double.value) + ' * 2' : string(nodes.seed.value) + ' * 2'"
      reducers: { value: append }
    - id: collect
      kind: tool
      component: json-query
      input: { document: state, path: "'$.value[*]'" }
  edges:
    - { from: seed, to: double }
    - { from: double, to: double, when: "nodes.double.value < input.limit" }
    - { from: double, to: collect, when: "!(nodes.double.value < input.limit)" }
"#;
    let outcome = engine
        .run(
            compile(source, &catalog),
            &catalog,
            json!({"start": 3, "limit": 50}),
        )
        .await
        .unwrap();
    assert_succeeded(&outcome);
    let evs = events(&engine, outcome.run);
    let inputs = scheduled(&engine, &evs);
    let (step, input) = inputs.last().unwrap();
    assert_eq!(step, "collect#1");
    assert_eq!(
        input["document"],
        json!({"value": [6.0, 12.0, 24.0, 48.0, 96.0]})
    );
    // The reducer saw each iteration as it completed: the fourth read three values.
    assert_eq!(inputs[4], ("double#4".into(), json!({"expr": "24 * 2"})));
    let out = output(&outcome);
    assert_eq!(out["collect"]["count"], json!(5), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expressions_that_fail_at_run_time_fail_the_run_naming_edge_or_field() {
    let engine = engine();
    let catalog = catalog(None);
    let graph = |when: &str, expr: &str| {
        compile(
            &format!(
                r#"
apiVersion: sandgraph.dev/v1
kind: Graph
metadata: {{ name: exprs }}
spec:
  nodes:
    - {{ id: a, kind: tool, component: calc, input: {{ expr: "'1 + 1'" }} }}
    - {{ id: b, kind: tool, component: calc, input: {{ expr: "{expr}" }} }}
  edges:
    - {{ from: a, to: b, when: "{when}" }}
"#
            ),
            &catalog,
        )
    };
    let outcome = engine
        .run(graph("nodes.a.value", "'1'"), &catalog, json!({}))
        .await
        .unwrap();
    assert_failed(
        &outcome,
        "edge 'a -> b': condition expression `nodes.a.value` failed: a condition must be true or false, got 2.0",
    );
    assert_finished_in_journal(&engine, &outcome);

    let outcome = engine
        .run(
            graph("true", "string(nodes.a.missing)"),
            &catalog,
            json!({}),
        )
        .await
        .unwrap();
    let error = outcome.error.clone().unwrap_or_default();
    assert!(
        error.starts_with(
            "node 'b' input field 'expr': expression `string(nodes.a.missing)` failed: "
        ) && error.contains("missing"),
        "{outcome:?}"
    );
    assert_eq!(outcome.status, RunStatus::Failed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_that_cannot_change_on_retry_fails_at_the_first_attempt() {
    let engine = engine();
    let catalog = catalog(None);
    let source = r#"
apiVersion: sandgraph.dev/v1
kind: Graph
metadata: { name: bad-path }
spec:
  nodes:
    - id: q
      kind: tool
      component: json-query
      retry: { maxAttempts: 3, initialBackoff: 10ms }
      input: { document: "{'a': 1}", path: "'$.a['" }
"#;
    let outcome = engine
        .run(compile(source, &catalog), &catalog, json!({}))
        .await
        .unwrap();
    let evs = events(&engine, outcome.run);
    let failed = failures(&evs, "q#1");
    assert_eq!(failed.len(), 1, "{failed:?}");
    let (attempt, kind, message, retry_in_ms) = &failed[0];
    assert_eq!(
        (*attempt, kind.as_str(), *retry_in_ms),
        (1, "invalid_input", None)
    );
    assert!(
        message.starts_with("invalid input: at `path`: "),
        "{message}"
    );
    assert_failed(
        &outcome,
        &format!("step 'q#1' failed after 1 attempt: {message}"),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_component_missing_from_the_catalog_is_refused_before_the_run_starts() {
    let engine = engine();
    let full = catalog(None);
    let graph = example("conditional-loop.yaml", &full);
    let mut partial = Catalog::default();
    let calc = full.get("calc").unwrap();
    partial.insert(
        calc.manifest.clone(),
        calc.manifest_text.clone(),
        calc.wasm.clone(),
    );
    match engine
        .start(graph, &partial, json!({"start": 3, "limit": 50}))
        .await
    {
        Err(e @ EngineError::UnknownComponent { .. }) => assert_eq!(
            e.to_string(),
            "node 'report' names component 'text-stats', which is not in the catalog"
        ),
        Err(other) => panic!("expected UnknownComponent, got {other}"),
        Ok(h) => panic!("run {} started", h.run),
    }
    assert!(engine.journal().runs().unwrap().is_empty());
}

// ------------------------------------------------------------------- replay and pinning

const REPLAY_GRAPH: &str = r#"
apiVersion: sandgraph.dev/v1
kind: Graph
metadata: { name: clock-then-fetch }
spec:
  input:
    type: object
    required: [url]
    properties: { url: { type: string } }
  nodes:
    - { id: clock, kind: tool, component: journal_clock_random }
    - id: fetch
      kind: tool
      component: egress_fetch
      input: { url: input.url, method: "'GET'" }
  edges:
    - { from: clock, to: fetch }
"#;

/// Runs [`REPLAY_GRAPH`] against `server`'s `/ok` and returns its outcome.
async fn run_clock_then_fetch(
    engine: &Engine,
    server: &Server,
) -> (RunOutcome, Catalog, Arc<CompiledGraph>) {
    let mut catalog = catalog(None);
    add_guest(&mut catalog, "journal_clock_random", "");
    add_guest(
        &mut catalog,
        "egress_fetch",
        &format!(
            "egress: [{{ scheme: http, host: 127.0.0.1, port: {}, methods: [GET] }}]",
            server.port()
        ),
    );
    let graph = compile(REPLAY_GRAPH, &catalog);
    let outcome = engine
        .run(graph.clone(), &catalog, json!({"url": server.url("/ok")}))
        .await
        .unwrap();
    assert_succeeded(&outcome);
    assert_eq!(server.requests(), ["/ok"]);
    (outcome, catalog, graph)
}

/// Rewrites the last journaled event of `run` that `pick` selects with `change` applied.
fn tamper(
    engine: &Engine,
    run: RunId,
    pick: impl Fn(&Event) -> bool,
    change: impl FnOnce(Event) -> Event,
) {
    let record = engine
        .journal()
        .events(run)
        .unwrap()
        .into_iter()
        .rev()
        .find(|r| pick(&r.event))
        .expect("an event to tamper with");
    let changed = change(record.event);
    engine
        .journal()
        .overwrite_raw_for_test(run, record.seq, &changed.encode(record.at_ms))
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_reproduces_every_step_offline_and_reports_tampering() {
    let mut server = Server::start(0);
    let engine = engine();
    let (outcome, _, _) = run_clock_then_fetch(&engine, &server).await;
    let out = output(&outcome);
    assert_eq!(out["fetch"]["status"], json!(200), "{out}");
    server.stop();

    let report = engine.replay(outcome.run).await.unwrap();
    assert_eq!(
        report.steps,
        [
            StepReplay::Identical {
                step: "clock#1".into(),
                attempt: 1
            },
            StepReplay::Identical {
                step: "fetch#1".into(),
                attempt: 1
            },
        ]
    );
    assert!(report.identical());
    assert_eq!(server.requests(), ["/ok"], "replay touched the network");

    // A recorded response that differs from what the step saw: its output diverges.
    tamper(
        &engine,
        outcome.run,
        |e| matches!(e, Event::Crossing { step, crossing: Crossing::HttpResponse { .. }, .. } if step == "fetch#1"),
        |e| match e {
            Event::Crossing {
                step,
                attempt,
                crossing:
                    Crossing::HttpResponse {
                        status, headers, ..
                    },
            } => Event::Crossing {
                step,
                attempt,
                crossing: Crossing::HttpResponse {
                    status,
                    headers,
                    body: PayloadRef::Inline(b"tampered".to_vec()),
                },
            },
            other => other,
        },
    );
    // The clock step's last crossing moved to another step: the guest now reads more than
    // the recording holds.
    let clock_crossings = events(&engine, outcome.run)
        .iter()
        .filter(|e| matches!(e, Event::Crossing { step, .. } if step == "clock#1"))
        .count();
    tamper(
        &engine,
        outcome.run,
        |e| matches!(e, Event::Crossing { step, .. } if step == "clock#1"),
        |e| match e {
            Event::Crossing {
                attempt, crossing, ..
            } => Event::Crossing {
                step: "elsewhere#1".into(),
                attempt,
                crossing,
            },
            other => other,
        },
    );

    let report = engine.replay(outcome.run).await.unwrap();
    assert!(!report.identical());
    assert_eq!(report.steps.len(), 2, "{:?}", report.steps);
    match &report.steps[0] {
        StepReplay::Failed {
            step,
            attempt,
            message,
        } => {
            assert_eq!((step.as_str(), *attempt), ("clock#1", 1));
            let index = clock_crossings - 1;
            assert!(
                message.contains(&format!(
                    "replay diverged: run {} step 'clock#1' crossing {index} was recorded as the end of the recording, but the guest now asks for",
                    outcome.run
                )),
                "{message}"
            );
        }
        other => panic!("expected clock#1 to fail on replay, got {other:?}"),
    }
    match &report.steps[1] {
        StepReplay::Diverged {
            step,
            attempt,
            recorded,
            replayed,
        } => {
            assert_eq!((step.as_str(), *attempt), ("fetch#1", 1));
            let recorded: Value = serde_json::from_str(recorded).unwrap();
            let replayed: Value = serde_json::from_str(replayed).unwrap();
            assert_eq!(recorded, out["fetch"]);
            assert_eq!(replayed["status"], json!(200));
            assert_ne!(replayed, recorded);
            assert!(
                serde_json::to_string(&replayed)
                    .unwrap()
                    .contains("tampered"),
                "{replayed}"
            );
        }
        other => panic!("expected fetch#1 to diverge, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_pins_graph_and_components_and_resuming_a_finished_run_runs_nothing() {
    let mut server = Server::start(0);
    let engine = engine();
    let (outcome, catalog, graph) = run_clock_then_fetch(&engine, &server).await;
    server.stop();

    let evs = events(&engine, outcome.run);
    let Event::RunCreated {
        graph_name,
        graph_digest,
        graph: pinned_graph,
        components,
        input,
    } = &evs[0]
    else {
        panic!("the first event is {:?}", evs[0])
    };
    assert_eq!(graph_name, "clock-then-fetch");
    assert_eq!(graph_digest, &graph.digest_hex());
    assert_eq!(
        engine.journal().payload(pinned_graph).unwrap(),
        canonical_json(&graph.spec)
    );
    assert_eq!(
        payload_json(&engine, input),
        json!({"url": format!("http://127.0.0.1:{}/ok", server.port())})
    );
    let pinned: Vec<(&str, &str)> = components
        .iter()
        .map(|c| (c.name.as_str(), c.digest.as_str()))
        .collect();
    let expected: Vec<(&str, &str)> = ["egress_fetch", "journal_clock_random"]
        .iter()
        .map(|n| (*n, catalog.get(n).unwrap().digest.as_str()))
        .collect();
    assert_eq!(pinned, expected);
    for c in components {
        let entry = catalog.get(&c.name).unwrap();
        assert_eq!(engine.journal().payload(&c.wasm).unwrap(), entry.wasm);
        assert_eq!(
            engine.journal().payload(&c.manifest).unwrap(),
            entry.manifest_text.as_bytes()
        );
    }

    // Resuming the finished run reports its outcome and appends nothing (and the server is
    // gone, so a re-executed fetch would have failed).
    let before = evs.len();
    let resumed = engine.resume(outcome.run).await.unwrap().wait().await;
    assert_eq!(resumed, outcome);
    assert_eq!(events(&engine, outcome.run).len(), before);
    assert_eq!(server.requests(), ["/ok"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_node_with_a_bounded_self_loop_is_the_entry_and_loops_until_it_exits() {
    let engine = engine();
    let catalog = catalog(None);
    let source = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/valid_graphs/self_loop_entry.yaml"),
    )
    .unwrap();
    let graph = compile(&source, &catalog);
    assert_eq!(graph.entries.len(), 1);
    let outcome = engine
        .run(graph, &catalog, json!({"limit": 4}))
        .await
        .unwrap();
    assert_succeeded(&outcome);
    assert_finished_in_journal(&engine, &outcome);
    let evs = events(&engine, outcome.run);
    let done = completed(&engine, &evs);
    assert_eq!(
        step_names(&done),
        ["count#1", "count#2", "count#3", "count#4"]
    );
    let inputs = scheduled(&engine, &evs);
    assert_eq!(inputs[0], ("count#1".into(), json!({"expr": "1"})));
    assert_eq!(inputs[3], ("count#4".into(), json!({"expr": "3 + 1"})));
    // No sink ran (the node's only edge is its loop): the output is every node's last value.
    assert_eq!(output(&outcome), json!({"count": {"value": 4.0}}));
}

/// An expression whose cost is far past the evaluation time limit (a macro nested in another
/// over a long list, within the static limits) fails its step as `expression_timeout` naming
/// the expression, while a run started after it on the same engine finishes first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expression_past_the_time_limit_fails_typed_while_another_run_finishes() {
    let engine = engine();
    let catalog = catalog(None);
    let slow = compile(
        r#"
apiVersion: sandgraph.dev/v1
kind: Graph
metadata: { name: slow }
spec:
  nodes:
    - id: count
      kind: tool
      component: calc
      input:
        expr: "string(size(input.xs.map(x, input.xs.filter(y, y < x).size()))) + ' + 0'"
"#,
        &catalog,
    );
    let xs: Vec<i64> = (0..SLOW_LIST_LEN).collect();
    let slow_run = engine
        .start(slow, &catalog, json!({ "xs": xs }))
        .await
        .unwrap();
    let fast = compile(
        r#"
apiVersion: sandgraph.dev/v1
kind: Graph
metadata: { name: fast }
spec:
  nodes:
    - { id: one, kind: tool, component: calc, input: { expr: "'1 + 1'" } }
"#,
        &catalog,
    );
    let fast_outcome = engine.run(fast, &catalog, json!({})).await.unwrap();
    assert_succeeded(&fast_outcome);
    assert_eq!(output(&fast_outcome), json!({"one": {"value": 2.0}}));
    let outcome = slow_run.wait().await;
    assert_eq!(outcome.status, RunStatus::Failed, "{outcome:?}");
    let error = outcome.error.clone().unwrap_or_default();
    assert!(
        error.starts_with("node 'count' input field 'expr': expression `string(size(input.xs.map(x, input.xs.filter(y, y < x).size())))")
            && error.contains("expression_timeout: evaluation did not finish within 1s"),
        "{error}"
    );
    assert_finished_in_journal(&engine, &outcome);
    // The other run finished while this one was still evaluating: its end is journaled
    // before this one's, which came at the time limit.
    let finished_at = |run: RunId| {
        let records = engine.journal().events(run).unwrap();
        let last = records.last().unwrap();
        assert!(matches!(last.event, Event::RunFinished { .. }), "{last:?}");
        last.at_ms
    };
    assert!(
        finished_at(fast_outcome.run) < finished_at(outcome.run),
        "the slow evaluation held the other run up"
    );
    // The step never started: nothing of it reached the sandbox.
    let evs = events(&engine, outcome.run);
    assert!(
        !evs.iter().any(|e| matches!(e, Event::StepScheduled { .. })),
        "{evs:?}"
    );
}

/// Long enough that the nested macros take well over the limit even in a release build
/// (n² filter steps), short enough that the abandoned evaluation ends within seconds.
const SLOW_LIST_LEN: i64 = 6_000;
