//! What journaling a step's workspace costs. Chains of `workspace-fs` steps (each reads one
//! file) run on the real `Engine` over an on-disk sled journal, with a workspace of 10 files of
//! 10 KB, measured in the same run as:
//! - `rw, snapshots`: the default; every attempt journals the tree before and after the guest;
//! - `ro, snapshots`: the node granted `ro`; only the before-snapshot is taken;
//! - `rw, no snapshot`: the same steps with the snapshot cap at 0, so each snapshot stops at the
//!   first entry and is journaled as skipped (the baseline: a workspace step without snapshots);
//! - `calc, no workspace`: the same chain length of `calc` steps, for scale.
//!
//! and `workspace::capture` alone on that tree (first capture into a fresh journal, then again
//! with every file already stored). Prints per-repetition step times, then medians and the
//! ratio of each chain against the baseline.
//!
//! Run: `cargo bench --workspace --bench workspace_snapshot` (`SANDGRAPH_BENCH_STEPS` steps per
//! chain, default 100; `SANDGRAPH_BENCH_REPS` repetitions, default 3).

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use sandgraph::graph::catalog::Catalog;
use sandgraph::graph::engine::{Engine, EngineConfig};
use sandgraph::graph::{CompiledGraph, validate};
use sandgraph::journal::workspace::{self, SnapshotLimits};
use sandgraph::journal::{Journal, RunStatus};
use sandgraph::sandbox::manifest::Manifest;
use sandgraph::sandbox::{Sandbox, SandboxConfig};

const FILES: usize = 10;
const FILE_BYTES: usize = 10 * 1024;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&v| v > 0)
        .unwrap_or(default)
}

fn tools() -> Catalog {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut catalog = Catalog::default();
    for (name, wasm) in sandgraph_test_artifacts::TOOLS {
        if !matches!(*name, "workspace-fs" | "calc") {
            continue;
        }
        let path = root
            .join("tools")
            .join(name)
            .join(format!("{name}.sandgraph.yaml"));
        let text = std::fs::read_to_string(&path).expect("manifest");
        let manifest = Manifest::parse(&path.display().to_string(), &text).expect("manifest");
        catalog.insert(manifest, text, std::fs::read(wasm).expect("component"));
    }
    catalog
}

/// `s0 -> ... -> s{len-1}`: each reads `f0.txt` (workspace `grant`), or adds 1 (`calc`).
fn chain(len: usize, workspace_grant: Option<&str>) -> String {
    let mut y = String::from(
        "apiVersion: sandgraph.dev/v1\nkind: Graph\nmetadata: { name: bench-ws }\nspec:\n  nodes:\n",
    );
    for i in 0..len {
        match workspace_grant {
            Some(grant) => {
                y += &format!(
                    "    - {{ id: s{i}, kind: tool, component: workspace-fs, input: {{ op: \"'read'\", path: \"'f0.txt'\", max_bytes: \"16\" }}, grant: {{ workspace: {grant} }} }}\n"
                )
            }
            None => {
                y += &format!(
                    "    - {{ id: s{i}, kind: tool, component: calc, input: {{ expr: \"'1 + 1'\" }} }}\n"
                )
            }
        }
    }
    y += "  edges:\n";
    for i in 1..len {
        y += &format!("    - {{ from: s{}, to: s{i} }}\n", i - 1);
    }
    y
}

fn workspace_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("workspace");
    for i in 0..FILES {
        let bytes: Vec<u8> = (0..FILE_BYTES).map(|b| (b * 31 + i) as u8).collect();
        std::fs::write(dir.path().join(format!("f{i}.txt")), bytes).expect("write");
    }
    dir
}

struct Case {
    name: &'static str,
    grant: Option<&'static str>,
    limits: SnapshotLimits,
}

/// Median µs per step of one run of the chain (wall time of the run / steps).
fn run_chain(
    rt: &tokio::runtime::Runtime,
    sandbox: &Arc<Sandbox>,
    catalog: &Catalog,
    case: &Case,
    steps: usize,
    ws: &Path,
) -> f64 {
    let journal_dir = tempfile::tempdir().expect("journal dir");
    let journal = Journal::open(&journal_dir.path().join("j")).expect("journal");
    let engine = Engine::new(
        sandbox.clone(),
        Arc::new(journal),
        EngineConfig {
            workspace: case.grant.map(|_| ws.to_path_buf()),
            workspace_snapshots: case.limits,
            ..EngineConfig::default()
        },
    );
    let spec = validate::validate(
        "bench.yaml",
        &chain(steps, case.grant),
        &catalog.manifests(),
    )
    .unwrap_or_else(|d| panic!("{d}"));
    let graph = Arc::new(CompiledGraph::compile(spec));
    let start = Instant::now();
    let outcome = rt
        .block_on(engine.run(graph, catalog, serde_json::json!({})))
        .expect("run");
    let took = start.elapsed();
    assert_eq!(outcome.status, RunStatus::Succeeded, "{:?}", outcome.error);
    took.as_secs_f64() * 1e6 / steps as f64
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    let steps = env_usize("SANDGRAPH_BENCH_STEPS", 100);
    let reps = env_usize("SANDGRAPH_BENCH_REPS", 3);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let sandbox = Arc::new(Sandbox::new(SandboxConfig::default()).expect("sandbox"));
    let catalog = tools();
    let ws = workspace_dir();
    let off = SnapshotLimits {
        max_bytes: 0,
        max_entries: 0,
    };
    let cases = [
        Case {
            name: "rw, no snapshot (baseline)",
            grant: Some("rw"),
            limits: off,
        },
        Case {
            name: "rw, snapshots",
            grant: Some("rw"),
            limits: SnapshotLimits::default(),
        },
        Case {
            name: "ro, snapshots",
            grant: Some("ro"),
            limits: SnapshotLimits::default(),
        },
        Case {
            name: "calc, no workspace",
            grant: None,
            limits: SnapshotLimits::default(),
        },
    ];
    println!(
        "workspace: {FILES} files x {} KB; {steps} steps per chain, {reps} repetitions",
        FILE_BYTES / 1024
    );
    // Warm-up: compiles both components once.
    for case in &cases {
        run_chain(&rt, &sandbox, &catalog, case, 3, ws.path());
    }
    let mut per_case: Vec<Vec<f64>> = vec![Vec::new(); cases.len()];
    for rep in 0..reps {
        // Interleaved, so drift in machine load hits every case alike.
        for (i, case) in cases.iter().enumerate() {
            let us = run_chain(&rt, &sandbox, &catalog, case, steps, ws.path());
            println!("rep {rep}: {:<28} {us:>9.0} µs/step", case.name);
            per_case[i].push(us);
        }
    }

    // capture() alone: into a fresh journal (every file stored), then again (all deduplicated).
    let mut first = Vec::new();
    let mut again = Vec::new();
    for _ in 0..(reps * 10) {
        let dir = tempfile::tempdir().expect("journal dir");
        let journal = Journal::open(&dir.path().join("j")).expect("journal");
        let t = Instant::now();
        workspace::capture(&journal, ws.path(), SnapshotLimits::default()).expect("capture");
        first.push(t.elapsed().as_secs_f64() * 1e6);
        let t = Instant::now();
        workspace::capture(&journal, ws.path(), SnapshotLimits::default()).expect("capture");
        again.push(t.elapsed().as_secs_f64() * 1e6);
    }

    let base = median(per_case[0].clone());
    println!();
    println!("| chain | median µs/step | vs baseline |");
    println!("|---|---:|---:|");
    for (case, v) in cases.iter().zip(&per_case) {
        let m = median(v.clone());
        println!("| {} | {m:.0} | {:.2}x |", case.name, m / base);
    }
    println!();
    println!("| capture() of the workspace | median µs |");
    println!("|---|---:|");
    println!("| into a fresh journal | {:.0} |", median(first));
    println!(
        "| again (every file already stored) | {:.0} |",
        median(again)
    );
}
