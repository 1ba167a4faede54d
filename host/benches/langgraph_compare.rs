//! Sandgraph and LangGraph side by side on the main job's planner -> executor -> reviewer loop,
//! against the same `sandgraph-infer serve` (SmolLM2-135M Q4_1, CPU, greedy), in one run.
//!
//! Sandgraph runs graphs/plan-execute-review.yaml through the `openai` provider: each agent a
//! Wasm component in its own sandbox, each tool call a fresh sandboxed instance, every step and
//! crossing journaled durably. LangGraph runs `langgraph_compare.py`: the same three nodes as
//! Python functions (tools in-process, no isolation, no journal), sending the very model
//! requests Sandgraph's agents made in this run. Per node: wall time, model time, and the rest
//! (orchestration: for Sandgraph also instantiating the components, the tool sandboxes and the
//! journal's flushes); per run: end to end. Repetitions alternate between the two.
//!
//! Run: `scripts/bench-langgraph.sh` (makes the throwaway venv, then runs this with
//! `SANDGRAPH_LANGGRAPH_PYTHON` set; `SANDGRAPH_BENCH_REPS`, default 5).

mod main_job;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use sandgraph::journal::{Crossing, Event, RunStatus};
use sandgraph::model::{ChatRequest, wire};
use serde_json::Value;

struct InferServe(Child, SocketAddr);

impl Drop for InferServe {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn infer_serve() -> InferServe {
    let bin = std::env::var_os("SANDGRAPH_INFER_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| main_job::repo().join("target/debug/sandgraph-infer"));
    assert!(
        bin.is_file(),
        "{} is missing: cargo build -p sandgraph-inference --bin sandgraph-infer (or set SANDGRAPH_INFER_BIN)",
        bin.display()
    );
    let mut child = Command::new(bin)
        .args(["serve", "--backend", "cpu", "--listen", "127.0.0.1:0"])
        .args(["--slots", "2", "--context", "2048", "--model"])
        .arg(main_job::repo().join("models/SmolLM2-135M-Instruct.Q4_1.gguf"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .trim()
        .strip_prefix("listening on http://")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .parse()
        .unwrap();
    InferServe(child, addr)
}

/// Per step name (`plan`, `execute`, `review`): wall and model time of each occurrence.
type Steps = BTreeMap<String, Vec<(f64, f64)>>;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn node(step: &str) -> String {
    step.split('#').next().unwrap_or(step).to_owned()
}

fn main() {
    let reps: usize = std::env::var("SANDGRAPH_BENCH_REPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let python = std::env::var("SANDGRAPH_LANGGRAPH_PYTHON")
        .expect("set SANDGRAPH_LANGGRAPH_PYTHON (scripts/bench-langgraph.sh makes the venv)");
    let serve = infer_serve();
    let port = main_job::page_server();
    let catalog = main_job::catalog(port);
    let graph = main_job::graph(&catalog);
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        "models:\n  default: {{ provider: openai, endpoint: 'http://{}/v1', model: smollm2, timeout: {{ connect: 2s, read: 300s }} }}\n",
        serve.1
    );
    let (engine, journal) = main_job::engine(dir.path(), &yaml);
    let started: Arc<Mutex<BTreeMap<String, Instant>>> = Arc::default();
    let steps: Arc<Mutex<Steps>> = Arc::default();
    let model_time: Arc<Mutex<BTreeMap<String, f64>>> = Arc::default();
    let (s, st, mt) = (started.clone(), steps.clone(), model_time.clone());
    let engine = engine
        .with_progress(Arc::new(move |run, event: &Event| match event {
            Event::StepStarted { step, .. } => {
                s.lock()
                    .unwrap()
                    .insert(format!("{run}/{step}"), Instant::now());
            }
            Event::StepCompleted { step, .. } => {
                let key = format!("{run}/{step}");
                let wall = s.lock().unwrap()[&key].elapsed().as_secs_f64();
                let model = mt.lock().unwrap().remove(&key).unwrap_or(0.0);
                st.lock()
                    .unwrap()
                    .entry(node(step))
                    .or_default()
                    .push((wall, model));
            }
            _ => {}
        }))
        .with_model_observer(Arc::new(move |run, step, _, call| {
            *model_time
                .lock()
                .unwrap()
                .entry(format!("{run}/{step}"))
                .or_default() += call.model_time.as_secs_f64();
        }));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let input = main_job::input(17, 23, port);

    // Warm-up (components compiled, prefix cache of the server filled) and the model requests
    // the agents make, as OpenAI bodies for the LangGraph side.
    let warm = rt
        .block_on(engine.run(graph.clone(), &catalog, input.clone()))
        .unwrap();
    assert_eq!(warm.status, RunStatus::Succeeded, "{:?}", warm.error);
    let mut recorded = serde_json::Map::new();
    for r in journal.events(warm.run).unwrap() {
        if let Event::Crossing {
            step,
            crossing: Crossing::ModelRequest { request, .. },
            ..
        } = r.event
        {
            let req: ChatRequest =
                serde_json::from_slice(&journal.payload(&request).unwrap()).unwrap();
            recorded
                .entry(node(&step))
                .or_insert_with(|| wire::request_body(&req, "smollm2", false));
        }
    }
    let requests = dir.path().join("requests.json");
    std::fs::write(&requests, Value::Object(recorded).to_string()).unwrap();
    steps.lock().unwrap().clear();

    let script = main_job::repo().join("host/benches/langgraph_compare.py");
    let mut sandgraph_runs = Vec::new();
    let mut langgraph: Vec<Value> = Vec::new();
    for _ in 0..reps {
        let t = Instant::now();
        let o = rt
            .block_on(engine.run(graph.clone(), &catalog, input.clone()))
            .unwrap();
        assert_eq!(o.status, RunStatus::Succeeded, "{:?}", o.error);
        sandgraph_runs.push(t.elapsed().as_secs_f64());
        let out = Command::new(&python)
            .arg(&script)
            .arg(&requests)
            .arg(format!("http://{}/v1", serve.1))
            .arg("1")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        langgraph.push(serde_json::from_slice(&out.stdout).unwrap());
    }

    let sandgraph_steps = steps.lock().unwrap().clone();
    let mut langgraph_steps: Steps = BTreeMap::new();
    let mut langgraph_runs = Vec::new();
    for l in &langgraph {
        for (name, occurrences) in l["nodes"].as_object().unwrap() {
            for o in occurrences.as_array().unwrap() {
                langgraph_steps
                    .entry(name.clone())
                    .or_default()
                    .push((o["wall"].as_f64().unwrap(), o["model"].as_f64().unwrap()));
            }
        }
        for r in l["runs"].as_array().unwrap() {
            assert_eq!(r["verdict"], "approve", "{l}");
            langgraph_runs.push(r["wall"].as_f64().unwrap());
        }
    }

    println!(
        "plan-execute-review, {reps} runs each, alternating; sandgraph-infer serve at {} (SmolLM2-135M Q4_1, CPU, greedy)\n",
        serve.1
    );
    println!(
        "| step | Sandgraph wall | model | rest (orchestration) | LangGraph wall | model | rest (orchestration) |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
    let ms = |s: f64| format!("{:.1} ms", s * 1000.0);
    for name in ["plan", "execute", "review"] {
        let row = |steps: &Steps| {
            let v = steps.get(name).cloned().unwrap_or_default();
            let wall = median(v.iter().map(|x| x.0).collect());
            let model = median(v.iter().map(|x| x.1).collect());
            let rest = median(v.iter().map(|x| x.0 - x.1).collect());
            format!("{} | {} | {}", ms(wall), ms(model), ms(rest))
        };
        println!(
            "| {name} | {} | {} |",
            row(&sandgraph_steps),
            row(&langgraph_steps)
        );
    }
    println!(
        "| **end to end** | {} | | | {} | | |",
        ms(median(sandgraph_runs)),
        ms(median(langgraph_runs))
    );
}
