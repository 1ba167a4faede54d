//! What one isolated tool call costs: fresh `Store` + instantiate from `InstancePre` + invoke,
//! with the pooling allocator, with the on-demand allocator, and (the baseline) spawning a
//! native process (`true`) per call. Criterion gives per-call times; the table after it gives
//! p50 and calls/s on 1 and 2 threads, all measured in the same run.
//!
//! Run: `cargo bench -p sandgraph --bench tool_call`

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::Criterion;
use sandgraph::sandbox::engine::Allocator;
use sandgraph::sandbox::manifest::{CallGrant, EffectiveGrant, Manifest, OperatorPolicy};
use sandgraph::sandbox::registry::LoadedTool;
use sandgraph::sandbox::{Sandbox, SandboxConfig};

fn input() -> String {
    std::env::var("SANDGRAPH_BENCH_INPUT").unwrap_or_else(|_| r#"{"expr":"1+2*3"}"#.into())
}

struct Subject {
    sandbox: Sandbox,
    tool: Arc<LoadedTool>,
    grant: EffectiveGrant,
    input: String,
}

fn subject(allocator: Allocator) -> Arc<Subject> {
    let sandbox = Sandbox::new(SandboxConfig {
        allocator,
        ..SandboxConfig::default()
    })
    .expect("sandbox");
    let started = Instant::now();
    let tool = sandbox
        .registry()
        .load_file(
            std::env::var("SANDGRAPH_BENCH_COMPONENT")
                .unwrap_or_else(|_| sandgraph_test_artifacts::TOOL_CALC.into())
                .as_ref(),
        )
        .expect("calc component");
    eprintln!(
        "{allocator:?}: registered in {:.1} ms (compiled in memory{})",
        started.elapsed().as_secs_f64() * 1e3,
        if tool.preinitialized {
            ", from the snapshot after its start-up hook"
        } else {
            ", no start-up snapshot"
        }
    );
    let manifest = Manifest::parse(
        "bench.yaml",
        "apiVersion: sandgraph.dev/v1\nkind: ToolManifest\nmetadata: { name: calc }\n",
    )
    .expect("manifest");
    let grant =
        EffectiveGrant::intersect(&OperatorPolicy::default(), &manifest, &CallGrant::default());
    Arc::new(Subject {
        sandbox,
        tool,
        grant,
        input: input(),
    })
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

fn call_once(s: &Subject, rt: &tokio::runtime::Runtime) {
    let report = rt.block_on(s.sandbox.call(&s.tool, &s.grant, &s.input));
    assert!(report.result.is_ok(), "{:?}", report.result);
}

fn spawn_true() {
    let status = Command::new("true")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("spawn true");
    assert!(status.success());
}

/// Runs `f` on `threads` threads for `dur`; returns (p50 per call, calls per second).
fn measure(
    threads: usize,
    dur: Duration,
    f: Arc<dyn Fn() -> Box<dyn FnMut() + Send> + Send + Sync>,
) -> (Duration, f64) {
    let start = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let f = f.clone();
            std::thread::spawn(move || {
                let mut call = f();
                for _ in 0..20 {
                    call();
                }
                let mut lat = Vec::new();
                let begin = Instant::now();
                while begin.elapsed() < dur {
                    let t = Instant::now();
                    call();
                    lat.push(t.elapsed());
                }
                (lat, begin.elapsed())
            })
        })
        .collect();
    let mut all = Vec::new();
    let mut rate = 0.0;
    for h in handles {
        let (lat, el) = h.join().expect("bench thread");
        rate += lat.len() as f64 / el.as_secs_f64();
        all.extend(lat);
    }
    let _ = start;
    all.sort();
    (all[all.len() / 2], rate)
}

fn table(pooling: Arc<Subject>, on_demand: Arc<Subject>) {
    let dur = Duration::from_secs(
        std::env::var("SANDGRAPH_BENCH_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(3),
    );
    println!("\n| variant | threads | p50 per call | calls/s |");
    println!("|---|---:|---:|---:|");
    type Maker = Arc<dyn Fn() -> Box<dyn FnMut() + Send> + Send + Sync>;
    let wasm = |s: Arc<Subject>| -> Maker {
        Arc::new(move || {
            let s = s.clone();
            let rt = runtime();
            Box::new(move || call_once(&s, &rt))
        })
    };
    let variants: Vec<(&str, Maker)> = vec![
        ("wasm, pooling allocator", wasm(pooling)),
        ("wasm, on-demand allocator", wasm(on_demand)),
        ("native process (`true`)", Arc::new(|| Box::new(spawn_true))),
    ];
    let only = std::env::var("SANDGRAPH_BENCH_ONLY").unwrap_or_default();
    for (name, make) in variants {
        if !name.contains(only.as_str()) {
            continue;
        }
        for threads in [1, 2] {
            let (p50, rate) = measure(threads, dur, make.clone());
            println!(
                "| {name} | {threads} | {:.1} µs | {:.0} |",
                p50.as_nanos() as f64 / 1000.0,
                rate
            );
        }
    }
}

fn main() {
    let pooling = subject(Allocator::Pooling);
    let on_demand = subject(Allocator::OnDemand);
    // Reports go to the workspace target dir, not `host/target` (benches run in `host/`).
    let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/criterion");
    let mut c = Criterion::default()
        .output_directory(&out)
        .configure_from_args();
    {
        let mut g = c.benchmark_group("tool_call");
        let rt = runtime();
        g.bench_function("wasm_pooling", |b| b.iter(|| call_once(&pooling, &rt)));
        g.bench_function("wasm_on_demand", |b| b.iter(|| call_once(&on_demand, &rt)));
        g.bench_function("native_process_true", |b| b.iter(spawn_true));
        g.finish();
    }
    c.final_summary();
    if std::env::args().any(|a| a == "--bench") {
        table(pooling, on_demand);
    }
}
