//! The main job end to end, as `scripts/demo.sh` runs it: `sandgraph run
//! graphs/plan-execute-review.yaml` on the real SmolLM2-135M under greedy decoding, once on the
//! embedded engine and once through the `openai` provider against a `sandgraph-infer serve`
//! this test starts. The goal needs three tools (calc, http-get on a page this test serves on
//! 127.0.0.1, text-stats); the final answer is asserted, the step lines show model usage, and
//! the finished run replays offline with no model.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

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
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let mut reader = BufReader::new(conn.try_clone().unwrap());
            let _ = common::http_head::read_request_head(&mut reader);
            let _ = write!(
                conn,
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{PAGE}",
                PAGE.len()
            );
        }
    });
    port
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

/// `sandgraph run graphs/plan-execute-review.yaml` on the demo goal with `models` as the
/// models file.
fn run_main_job(journal: &Path, models: &Path) -> Output {
    let port = page_server();
    let cat = catalog(port);
    let input = serde_json::json!({
        "goal": "Compute 17*23 and count the words of the page",
        "url": format!("http://127.0.0.1:{port}/page.txt"),
    });
    sandgraph(journal)
        .arg("run")
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
        .arg(models)
        .output()
        .unwrap()
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
    let models = dir.path().join("models.yaml");
    std::fs::write(
        &models,
        format!(
            "models:\n  default: {{ provider: embedded, path: '{}', backend: cpu }}\n",
            model_path().display()
        ),
    )
    .unwrap();
    let journal = dir.path().join("journal");
    assert_answered(&run_main_job(&journal, &models));
    assert_replays_offline(&journal);
}

/// `sandgraph-infer`, built by cargo beside this test's binary (built now if missing).
fn infer_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let bin = exe
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("sandgraph-infer");
    if !bin.is_file() {
        let status = Command::new(env!("CARGO"))
            .args([
                "build",
                "-p",
                "sandgraph-inference",
                "--bin",
                "sandgraph-infer",
            ])
            .current_dir(repo())
            .status()
            .unwrap();
        assert!(status.success(), "building sandgraph-infer failed");
    }
    bin
}

struct InferServe(Child, SocketAddr);

impl Drop for InferServe {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn infer_serve() -> InferServe {
    let mut child = Command::new(infer_binary())
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
    let models = dir.path().join("models.yaml");
    std::fs::write(
        &models,
        format!(
            "models:\n  default: {{ provider: openai, endpoint: 'http://{}/v1', model: smollm2, timeout: {{ connect: 2s, read: 120s }} }}\n",
            serve.1
        ),
    )
    .unwrap();
    let journal = dir.path().join("journal");
    assert_answered(&run_main_job(&journal, &models));
    // The server is gone: the replay serves the recorded answers.
    drop(serve);
    assert_replays_offline(&journal);
}

#[test]
fn a_model_alias_the_models_file_does_not_define_stops_the_run_before_it_starts() {
    let dir = tempfile::tempdir().unwrap();
    let models = dir.path().join("models.yaml");
    std::fs::write(
        &models,
        format!(
            "models:\n  big: {{ provider: embedded, path: '{}', backend: cpu }}\n",
            model_path().display()
        ),
    )
    .unwrap();
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
