//! The main job end to end, as `scripts/demo.sh` runs it: `sandgraph run
//! graphs/plan-execute-review.yaml` on the real SmolLM2-135M under greedy decoding, once on the
//! embedded engine and once through the `openai` provider against a `sandgraph-infer serve`
//! this test starts. The goal needs three tools (calc, http-get on a page this test serves on
//! 127.0.0.1, text-stats); the final answer is asserted, the step lines show model usage, and
//! the finished run replays offline with no model.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use serde_json::Value;

const PAGE: &str = "Sandboxes keep tools honest.\nEvery call is isolated and journaled.\n";
const PAGE_WORDS: usize = 10;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn model_path() -> PathBuf {
    repo().join("models/SmolLM2-135M-Instruct.Q4_1.gguf")
}

/// A loopback server answering every GET with [`PAGE`]; returns its port.
fn page_server() -> u16 {
    counting_page_server().0
}

/// [`page_server`], and how many requests it has answered (http-get's side effect).
fn counting_page_server() -> (u16, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let served = Arc::new(AtomicUsize::new(0));
    let count = served.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let mut reader = BufReader::new(conn.try_clone().unwrap());
            let _ = common::http_head::read_request_head(&mut reader);
            count.fetch_add(1, Ordering::SeqCst);
            let _ = write!(
                conn,
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{PAGE}",
                PAGE.len()
            );
        }
    });
    (port, served)
}

/// The shipped manifests of tools/ and agents/ with the built components beside them, except
/// that http-get may reach the page server's port (the shipped manifest names 8000, which a
/// parallel test run cannot count on being free).
struct Catalog {
    _dir: tempfile::TempDir,
    tools: PathBuf,
    agents: PathBuf,
    wasm: PathBuf,
}

fn catalog(page_port: u16) -> Catalog {
    let dir = tempfile::tempdir().unwrap();
    let (tools, agents, wasm) = (
        dir.path().join("tools"),
        dir.path().join("agents"),
        dir.path().join("wasm"),
    );
    std::fs::create_dir_all(&wasm).unwrap();
    let built = sandgraph_test_artifacts::TOOLS
        .iter()
        .map(|e| (e, "tools", &tools))
        .chain(
            sandgraph_test_artifacts::AGENTS
                .iter()
                .map(|e| (e, "agents", &agents)),
        );
    for ((name, path), folder, to) in built {
        let manifest = format!("{name}.sandgraph.yaml");
        let mut text =
            std::fs::read_to_string(repo().join(folder).join(name).join(&manifest)).unwrap();
        if *name == "http-get" {
            assert!(text.contains("port: 8000"), "{text}");
            text = text.replace("port: 8000", &format!("port: {page_port}"));
        }
        std::fs::create_dir_all(to.join(name)).unwrap();
        std::fs::write(to.join(name).join(manifest), text).unwrap();
        std::fs::copy(path, wasm.join(format!("{name}.wasm"))).unwrap();
    }
    Catalog {
        _dir: dir,
        tools,
        agents,
        wasm,
    }
}

fn sandgraph(journal: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_sandgraph"));
    c.env("SANDGRAPH_JOURNAL", journal)
        .env_remove("SANDGRAPH_MODELS")
        .env_remove("SANDGRAPH_FAULT_KILL_AFTER_EVENT")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null());
    c
}

/// A models file in `dir` whose `alias` is the embedded engine over the real model (CPU).
fn embedded_models(dir: &Path, alias: &str) -> PathBuf {
    let models = dir.join("models.yaml");
    let entry = format!(
        "{{ provider: embedded, path: '{}', backend: cpu }}",
        model_path().display()
    );
    std::fs::write(&models, format!("models:\n  {alias}: {entry}\n")).unwrap();
    models
}

/// A models file in `dir` whose `default` is the inference server at `addr` (openai provider).
fn openai_models(dir: &Path, addr: SocketAddr) -> PathBuf {
    let models = dir.join("models.yaml");
    std::fs::write(
        &models,
        format!(
            "models:\n  default: {{ provider: openai, endpoint: 'http://{addr}/v1', model: smollm2, timeout: {{ connect: 2s, read: 120s }} }}\n"
        ),
    )
    .unwrap();
    models
}

/// `sandgraph run graphs/plan-execute-review.yaml` on the demo goal with `models` as the
/// models file.
fn run_main_job(journal: &Path, models: &Path) -> Output {
    let port = page_server();
    let cat = catalog(port);
    main_job(journal, models, port, &cat).output().unwrap()
}

/// The `sandgraph run` command of the main job against the page server on `port`.
fn main_job(journal: &Path, models: &Path, port: u16, cat: &Catalog) -> Command {
    let input = serde_json::json!({
        "goal": "Compute 17*23 and count the words of the page",
        "url": format!("http://127.0.0.1:{port}/page.txt"),
    });
    let mut c = sandgraph(journal);
    c.arg("run")
        .arg(repo().join("graphs/plan-execute-review.yaml"))
        .arg("--input")
        .arg(input.to_string())
        .arg("--tools")
        .arg(&cat.tools)
        .arg("--tools")
        .arg(&cat.agents)
        .arg("--components")
        .arg(&cat.wasm)
        .arg("--cache-dir")
        .arg(common::cache_dir())
        .args(["--allow-private", "127.0.0.1"])
        .arg("--models")
        .arg(models);
    c
}

/// The run's output: approved in the first round, with the tools' facts in the answer.
fn assert_answered(out: &Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the run failed: {}\nstdout: {stdout}\nstderr: {stderr}",
        out.status
    );
    let output: Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("output is not JSON ({e}): {stdout}"));
    // The sink node `answer` (json-query over the verdict) holds the run's output.
    let answer = &output["answer"]["matches"][0]["value"];
    assert_eq!(answer["approved"], true, "{output}\n{stderr}");
    assert_eq!(answer["rounds"], 1, "{answer}\n{stderr}");
    let text = answer["answer"].as_str().unwrap();
    assert!(text.contains("calc 17*23: value 391"), "{text}");
    assert!(text.contains(&format!("words {PAGE_WORDS}")), "{text}");
    assert!(text.contains("http-get"), "{text}");
    // One line per step; the agents' lines carry their model usage.
    for step in ["plan", "execute", "review", "answer"] {
        assert!(
            stderr.contains(&format!("] {step}#1 completed in ")),
            "no line for {step}:\n{stderr}"
        );
    }
    let plan_line = stderr
        .lines()
        .find(|l| l.contains("] plan#1 completed in "))
        .unwrap();
    assert!(
        plan_line.contains("model: 1 call, ") && plan_line.contains(" tok/s"),
        "{plan_line}"
    );
    let execute_line = stderr
        .lines()
        .find(|l| l.contains("] execute#1 completed in "))
        .unwrap();
    assert!(execute_line.contains("; 3 tool calls"), "{execute_line}");
    stdout.into_owned()
}

/// `sandgraph replay` of the journal's only run: identical, with no model configured at all.
fn assert_replays_offline(journal: &Path) {
    let j = sandgraph::journal::Journal::open(journal).unwrap();
    let runs = j.runs().unwrap();
    assert_eq!(runs.len(), 1);
    let run = runs[0].run.to_string();
    drop(j);
    let out = sandgraph(journal)
        .args(["replay", &run])
        .arg("--cache-dir")
        .arg(common::cache_dir())
        .output()
        .unwrap();
    // Exit status 0: every step identical.
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "replay differs or failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for step in ["plan", "execute", "review", "answer"] {
        assert!(
            stdout.contains(&format!("{step}#1 (attempt 1): identical")),
            "{stdout}"
        );
    }
}

#[test]
fn plan_execute_review_on_the_embedded_engine_answers_the_goal() {
    let dir = tempfile::tempdir().unwrap();
    let models = embedded_models(dir.path(), "default");
    let journal = dir.path().join("journal");
    assert_answered(&run_main_job(&journal, &models));
    assert_replays_offline(&journal);
}

struct InferServe(Child, SocketAddr);

impl Drop for InferServe {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn infer_serve() -> InferServe {
    let mut child = Command::new(common::infer_binary())
        .args(["serve", "--backend", "cpu", "--listen", "127.0.0.1:0"])
        .args(["--slots", "2", "--context", "2048", "--model"])
        .arg(model_path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
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
    InferServe(child, addr)
}

#[test]
fn plan_execute_review_through_the_openai_provider_answers_the_same() {
    let serve = infer_serve();
    let dir = tempfile::tempdir().unwrap();
    let models = openai_models(dir.path(), serve.1);
    let journal = dir.path().join("journal");
    assert_answered(&run_main_job(&journal, &models));
    // The server is gone: the replay serves the recorded answers.
    drop(serve);
    assert_replays_offline(&journal);
}

#[test]
fn a_model_alias_the_models_file_does_not_define_stops_the_run_before_it_starts() {
    let dir = tempfile::tempdir().unwrap();
    let models = embedded_models(dir.path(), "big");
    let journal = dir.path().join("journal");
    let out = run_main_job(&journal, &models);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("node 'plan' names model alias 'default'")
            && stderr.contains("(defined: big)"),
        "{stderr}"
    );
    // Nothing was journaled: no run to resume or clean up.
    let j = sandgraph::journal::Journal::open(&journal).unwrap();
    assert!(j.runs().unwrap().is_empty());
}

/// Chat completions the inference server has finished (its `request_success` counter).
fn completions_served(addr: SocketAddr) -> u64 {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out.lines()
        .filter(|l| l.starts_with("sandgraph_infer_request_success_total"))
        .map(|l| {
            l.rsplit(' ')
                .next()
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or_else(|| panic!("bad metrics line {l:?}")) as u64
        })
        .sum()
}

/// The one run in `journal` and its events.
fn journal_events(journal: &Path) -> (String, Vec<sandgraph::journal::Record>) {
    let j = sandgraph::journal::Journal::open(journal).unwrap();
    let runs = j.runs().unwrap();
    assert_eq!(runs.len(), 1, "one run per journal");
    (runs[0].run.to_string(), j.events(runs[0].run).unwrap())
}

/// The host is SIGKILLed in the middle of the executor, right after the result of its http-get
/// call (a GET on the page server) is journaled. `sandgraph resume` finishes the run with the
/// output an uninterrupted run gave; the model is not asked again for the planner's recorded
/// call (the inference server counts what it answered) and the page is fetched once in all.
#[test]
fn a_host_killed_during_the_executor_resumes_without_asking_the_model_or_fetching_again() {
    let serve = infer_serve();
    let (port, fetched) = counting_page_server();
    let cat = catalog(port);
    let dir = tempfile::tempdir().unwrap();
    let models = openai_models(dir.path(), serve.1);

    // Uninterrupted: the output to reproduce, and what it costs.
    let clean = dir.path().join("clean");
    let before = completions_served(serve.1);
    let out = main_job(&clean, &models, port, &cat).output().unwrap();
    let expected = assert_answered(&out);
    let model_calls = completions_served(serve.1) - before;
    assert_eq!(fetched.load(Ordering::SeqCst), 1, "one GET per run");
    // Where to kill: the journal append that records http-get's result inside the executor.
    let (_, events) = journal_events(&clean);
    let mut in_http_get = false;
    let kill_after = events
        .iter()
        .position(|r| match &r.event {
            sandgraph::journal::Event::Crossing { step, crossing, .. } if step == "execute#1" => {
                match crossing {
                    sandgraph::journal::Crossing::ToolRequest { tool, .. } => {
                        in_http_get = tool == "http-get";
                        false
                    }
                    sandgraph::journal::Crossing::ToolResult { .. } => in_http_get,
                    _ => false,
                }
            }
            _ => false,
        })
        .expect("the executor called http-get")
        + 1;

    fetched.store(0, Ordering::SeqCst);
    let journal = dir.path().join("killed");
    let before = completions_served(serve.1);
    let killed = main_job(&journal, &models, port, &cat)
        .env("SANDGRAPH_FAULT_KILL_AFTER_EVENT", kill_after.to_string())
        .output()
        .unwrap();
    assert_eq!(
        killed.status.signal(),
        Some(libc::SIGKILL),
        "{}",
        String::from_utf8_lossy(&killed.stderr)
    );
    // It died where intended: executing, its last record http-get's result.
    let (run, events) = journal_events(&journal);
    let last = &events.last().unwrap().event;
    assert!(
        matches!(last, sandgraph::journal::Event::Crossing { step, crossing: sandgraph::journal::Crossing::ToolResult { .. }, .. } if step == "execute#1"),
        "{last:?}"
    );
    assert_eq!(fetched.load(Ordering::SeqCst), 1);
    let asked_before_kill = completions_served(serve.1) - before;
    assert!(asked_before_kill >= 1, "the planner asked the model");

    let resumed = sandgraph(&journal)
        .arg("resume")
        .arg("--cache-dir")
        .arg(common::cache_dir())
        .args(["--allow-private", "127.0.0.1"])
        .arg("--models")
        .arg(&models)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&resumed.stdout);
    assert!(
        resumed.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&resumed.stderr)
    );
    // `<run> succeeded <output>`: the uninterrupted run's output.
    let line = stdout.lines().find(|l| l.starts_with(&run)).unwrap();
    assert_eq!(
        line.strip_prefix(&format!("{run} succeeded ")),
        Some(expected.trim()),
        "{stdout}"
    );
    assert_eq!(
        fetched.load(Ordering::SeqCst),
        1,
        "the page was fetched again after the restart"
    );
    assert_eq!(
        completions_served(serve.1) - before,
        model_calls,
        "the model was asked again for a call the journal had answered"
    );
}
