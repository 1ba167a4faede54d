//! Shared batching across agent steps: the main job (graphs/plan-execute-review.yaml) run 8
//! times one after another, then 8 at once, on one engine with the embedded SmolLM2-135M
//! (greedy, CPU, 8 slots: concurrent model calls share each forward pass). Each run has its own
//! goal (an expression and the page), so the 8 prompts differ. Greedy decoding generates the same
//! tokens in both modes, so the aggregate generated tokens/s compare the same work.
//!
//! Run: `cargo bench -p sandgraph --bench agent_concurrency` (`SANDGRAPH_BENCH_RUNS`, default 8;
//! `SANDGRAPH_BENCH_THREADS`, CPU threads of the engine, default all cores;
//! `SANDGRAPH_BENCH_BACKEND`, cpu (default) or wgpu for a GPU; `SANDGRAPH_BENCH_VERBOSE`, one
//! line per model call on stderr).

mod main_job;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sandgraph::graph::CompiledGraph;
use sandgraph::graph::catalog::Catalog;
use sandgraph::graph::engine::Engine;
use sandgraph::journal::RunStatus;
use serde_json::Value;

struct Batch {
    wall: Duration,
    tokens: u64,
    outputs: Vec<String>,
}

async fn run_batch(
    engine: &Engine,
    graph: &Arc<CompiledGraph>,
    catalog: &Catalog,
    inputs: &[Value],
    tokens: &AtomicU64,
    concurrent: bool,
) -> Batch {
    let before = tokens.load(Ordering::SeqCst);
    let started = Instant::now();
    let mut outputs = Vec::new();
    if concurrent {
        let mut handles = Vec::new();
        for input in inputs {
            handles.push(
                engine
                    .start(graph.clone(), catalog, input.clone())
                    .await
                    .unwrap(),
            );
        }
        for h in handles {
            let o = h.wait().await;
            assert_eq!(o.status, RunStatus::Succeeded, "{:?}", o.error);
            outputs.push(o.output.unwrap_or_default());
        }
    } else {
        for input in inputs {
            let o = engine
                .run(graph.clone(), catalog, input.clone())
                .await
                .unwrap();
            assert_eq!(o.status, RunStatus::Succeeded, "{:?}", o.error);
            outputs.push(o.output.unwrap_or_default());
        }
    }
    Batch {
        wall: started.elapsed(),
        tokens: tokens.load(Ordering::SeqCst) - before,
        outputs,
    }
}

fn main() {
    let runs: usize = std::env::var("SANDGRAPH_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(8);
    let threads = std::env::var("SANDGRAPH_BENCH_THREADS")
        .ok()
        .map(|t| format!(", threads: {t}"))
        .unwrap_or_default();
    let port = main_job::page_server();
    let catalog = main_job::catalog(port);
    let graph = main_job::graph(&catalog);
    let backend = std::env::var("SANDGRAPH_BENCH_BACKEND").unwrap_or_else(|_| "cpu".into());
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        "models:\n  default: {{ provider: embedded, path: models/SmolLM2-135M-Instruct.Q4_1.gguf, backend: {backend}, slots: {runs}{threads} }}\n"
    );
    let tokens = Arc::new(AtomicU64::new(0));
    let counted = tokens.clone();
    let (engine, _) = main_job::engine(dir.path(), &yaml);
    let verbose = std::env::var_os("SANDGRAPH_BENCH_VERBOSE").is_some();
    let engine = engine.with_model_observer(Arc::new(move |_, step, _, call| {
        if !call.replayed {
            counted.fetch_add(call.completion_tokens as u64, Ordering::SeqCst);
        }
        if verbose {
            eprintln!(
                "{step}: {} prompt + {} generated tokens, {:?} (first token {:?})",
                call.prompt_tokens, call.completion_tokens, call.model_time, call.first_token
            );
        }
    }));
    let inputs: Vec<Value> = (0..runs)
        .map(|i| main_job::input(17 + i, 23 + 2 * i, port))
        .collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    // Warm-up: the model loads and the components compile once.
    rt.block_on(run_batch(
        &engine,
        &graph,
        &catalog,
        &inputs[..1],
        &tokens,
        false,
    ));
    let one_by_one = rt.block_on(run_batch(
        &engine, &graph, &catalog, &inputs, &tokens, false,
    ));
    let together = rt.block_on(run_batch(&engine, &graph, &catalog, &inputs, &tokens, true));
    let same = one_by_one.outputs == together.outputs;
    let rate = |b: &Batch| b.tokens as f64 / b.wall.as_secs_f64();
    println!(
        "{runs} plan-execute-review runs, embedded SmolLM2-135M Q4_1 ({backend}, greedy, {runs} slots)\n"
    );
    println!("| mode | wall | generated tokens | aggregate tokens/s |");
    println!("|---|---:|---:|---:|");
    for (name, b) in [
        ("one after another (baseline)", &one_by_one),
        ("all at once", &together),
    ] {
        println!(
            "| {name} | {:.1} s | {} | {:.1} |",
            b.wall.as_secs_f64(),
            b.tokens,
            rate(b)
        );
    }
    println!(
        "\nconcurrent / sequential aggregate tokens/s: {:.2}x; outputs identical: {same}",
        rate(&together) / rate(&one_by_one)
    );
}
