//! Power loss under the engine: a child process runs chains of `calc` steps, four runs at a
//! time, on an on-disk journal, and is SIGKILLed at a random moment. Its steps reach nothing
//! outside their sandbox, so each successor starts while its predecessor's completion is still
//! being flushed. The parent then drops every log sector written past the last `fdatasync`
//! (kept, zeroed or scrambled at random), reopens the journal and checks:
//!
//! - every completion the engine reported (it reports one only once it is durable) survived,
//!   and so did the end of every run reported finished;
//! - each run's events are gapless, and its completions are a prefix of the chain, in order,
//!   each with the value the chain computes: no successor's completion survived without its
//!   predecessor's;
//! - resuming every unfinished run ends each with the uninterrupted chain's output, every step
//!   completed exactly once.

mod common;

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};

use common::power_cut::{
    Rng, Writer, cut_power_to_log, note_sync, ready_then_wait_for_go, seed, sync_reporter,
};
use sandgraph::graph::catalog::Catalog;
use sandgraph::graph::engine::{Engine, EngineConfig};
use sandgraph::graph::{CompiledGraph, validate};
use sandgraph::journal::wal::WalOptions;
use sandgraph::journal::{Event, Journal, LOCK_WAIT, RunId, RunStatus};
use sandgraph::sandbox::engine::Allocator;
use sandgraph::sandbox::manifest::Manifest;
use sandgraph::sandbox::{Sandbox, SandboxConfig};
use serde_json::{Value, json};

const CHILD_ENV: &str = "SANDGRAPH_ENGINE_POWER_LOSS_CHILD";
/// Steps per chain: `s1` computes 1, each next one adds 1.
const STEPS: usize = 8;
const RUNS_AT_ONCE: usize = 4;

fn catalog() -> Catalog {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tools/calc/calc.sandgraph.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    let manifest = Manifest::parse(&path.display().to_string(), &text).unwrap();
    let mut catalog = Catalog::default();
    catalog.insert(
        manifest,
        text,
        std::fs::read(sandgraph_test_artifacts::TOOL_CALC).unwrap(),
    );
    catalog
}

fn chain(catalog: &Catalog) -> Arc<CompiledGraph> {
    let mut yaml = String::from(
        "apiVersion: sandgraph.dev/v1\nkind: Graph\nmetadata: { name: power-chain }\nspec:\n  nodes:\n",
    );
    yaml.push_str("    - { id: s1, kind: tool, component: calc, input: { expr: \"'0 + 1'\" } }\n");
    for i in 2..=STEPS {
        yaml.push_str(&format!(
            "    - {{ id: s{i}, kind: tool, component: calc, input: {{ expr: \"string(nodes.s{}.value) + ' + 1'\" }} }}\n",
            i - 1
        ));
    }
    yaml.push_str("  edges:\n");
    for i in 2..=STEPS {
        yaml.push_str(&format!("    - {{ from: s{}, to: s{i} }}\n", i - 1));
    }
    let spec = validate::validate("power-chain.yaml", &yaml, &catalog.manifests())
        .unwrap_or_else(|d| panic!("{d}\n{yaml}"));
    Arc::new(CompiledGraph::compile(spec))
}

fn sandbox() -> Arc<Sandbox> {
    Arc::new(
        Sandbox::new(SandboxConfig {
            allocator: Allocator::Pooling,
            cache_dir: Some(common::cache_dir()),
            ..SandboxConfig::default()
        })
        .unwrap(),
    )
}

/// In the child process (the test starts its own binary again, filtered to itself, with
/// [`CHILD_ENV`] set): runs chains until killed and never returns. In the test: nothing.
fn be_the_child_if_started_as_one() {
    if let Ok(dir) = std::env::var(CHILD_ENV) {
        run_chains_until_killed(Path::new(&dir));
    }
}

/// The child: prints `sync <segment> <length>` after each sync of the log, `ack <run> <step>`
/// for each completion the engine reports and `end <run>` for each run's end.
fn run_chains_until_killed(dir: &Path) -> ! {
    let out = Arc::new(Mutex::new(std::io::stdout()));
    let say = move |line: String| {
        let mut o = out.lock().unwrap();
        writeln!(o, "{line}").unwrap();
        o.flush().unwrap();
    };
    let say = Arc::new(say);
    let options = WalOptions {
        on_sync: Some(sync_reporter({
            let say = say.clone();
            move |l| say(l)
        })),
        ..WalOptions::default()
    };
    let journal = Arc::new(Journal::open_with(dir, LOCK_WAIT, options).unwrap());
    let engine = Engine::new(sandbox(), journal, EngineConfig::default()).with_progress({
        let say = say.clone();
        Arc::new(move |run, e: &Event| match e {
            Event::StepCompleted { step, .. } => say(format!("ack {run} {step}")),
            Event::RunFinished { .. } => say(format!("end {run}")),
            _ => {}
        })
    });
    let catalog = catalog();
    let graph = chain(&catalog);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    ready_then_wait_for_go(|l| say(l), "engine power-loss child");
    let engine = Arc::new(engine);
    rt.block_on(async move {
        // A failed run panics its task, and the panic hook takes the child down with it.
        for _ in 0..RUNS_AT_ONCE {
            let (engine, catalog, graph) = (engine.clone(), catalog.clone(), graph.clone());
            tokio::spawn(async move {
                loop {
                    let handle = engine
                        .start(graph.clone(), &catalog, json!({}))
                        .await
                        .unwrap();
                    let outcome = handle.wait().await;
                    assert_eq!(outcome.status, RunStatus::Succeeded, "{outcome:?}");
                }
            });
        }
        std::future::pending::<()>().await
    });
    unreachable!("the runs go on until the parent kills this process")
}

/// What the child reported before it died.
#[derive(Default)]
struct Reported {
    synced: HashMap<String, u64>,
    /// Completions reported durable, as (run, step).
    acked: HashSet<(RunId, String)>,
    ended: HashSet<RunId>,
}

/// Notes one line the child printed.
fn note_report(line: &str, r: &mut Reported) {
    if note_sync(line, &mut r.synced) {
        return;
    }
    let mut words = line.split(' ');
    match (words.next(), words.next(), words.next()) {
        (Some("ack"), Some(run), Some(step)) => {
            r.acked
                .insert((RunId::parse(run).unwrap(), step.to_string()));
        }
        (Some("end"), Some(run), None) => {
            r.ended.insert(RunId::parse(run).unwrap());
        }
        _ => {}
    }
}

/// The value chain step `s<i>` computes.
fn value_of(step: &str) -> f64 {
    let i: usize = step
        .strip_prefix('s')
        .and_then(|s| s.split('#').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("unexpected step {step}"));
    i as f64
}

/// Each run's completions, in journal order, checked against the chain: a gapless run, every
/// completion's predecessor completed before it, each with its value.
fn completions(journal: &Journal, run: RunId) -> Vec<String> {
    let mut done: Vec<String> = Vec::new();
    for (i, record) in journal.events(run).unwrap().iter().enumerate() {
        assert_eq!(record.seq, i as u64, "run {run} has a gap");
        if let Event::StepCompleted { step, output, .. } = &record.event {
            let expected = format!("s{}#1", done.len() + 1);
            assert_eq!(
                *step, expected,
                "run {run}: {step} completed after {done:?}; a successor's completion survived without its predecessor's, or one was journaled twice"
            );
            let value: Value = serde_json::from_slice(&journal.payload(output).unwrap()).unwrap();
            assert_eq!(value["value"], json!(value_of(step)), "run {run} {step}");
            done.push(step.clone());
        }
    }
    done
}

fn power_cut(test: &str, seed: u64) {
    eprintln!("power cut under the engine: seed {seed}");
    let mut rng = Rng(seed);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("journal");
    let reported = Arc::new(Mutex::new(Reported::default()));
    let mut writer = Writer::start(test, &[(CHILD_ENV, dir.display().to_string())], {
        let reported = reported.clone();
        move |line| note_report(&line, &mut reported.lock().unwrap())
    });
    writer.go();
    // Let a few dozen completions be reported, then cut at a random moment.
    let want = 40 + (rng.next() % 120) as usize;
    writer.kill_when(&mut rng, "completions", || {
        reported.lock().unwrap().acked.len() >= want
    });
    let reported = Arc::try_unwrap(reported)
        .ok()
        .unwrap()
        .into_inner()
        .unwrap();
    let sectors = cut_power_to_log(&dir, &reported.synced, &mut rng);

    let journal = Arc::new(Journal::open(&dir).unwrap());
    let mut survived: HashMap<RunId, Vec<String>> = HashMap::new();
    for summary in journal.runs().unwrap() {
        survived.insert(summary.run, completions(&journal, summary.run));
    }
    for (run, step) in &reported.acked {
        assert!(
            survived.get(run).is_some_and(|d| d.contains(step)),
            "run {run}: {step} was reported complete, but its completion did not survive"
        );
    }
    for run in &reported.ended {
        let events = journal.events(*run).unwrap();
        assert!(
            matches!(
                events.last().map(|r| &r.event),
                Some(Event::RunFinished { .. })
            ),
            "run {run} was reported finished, but its end did not survive"
        );
    }
    let unfinished = journal
        .runs()
        .unwrap()
        .iter()
        .filter(|s| s.status == RunStatus::Running)
        .count();
    eprintln!(
        "  {} completions reported in {} runs ({} ended); {sectors} unsynced log sectors rewritten; {unfinished} runs left to resume",
        reported.acked.len(),
        survived.len(),
        reported.ended.len()
    );

    // Every run the cut interrupted resumes to the chain's output, each step done once.
    let engine = Engine::new(sandbox(), journal.clone(), EngineConfig::default());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let outcomes = rt.block_on(async {
        let mut outcomes = Vec::new();
        for handle in engine.resume_unfinished().await.unwrap() {
            outcomes.push(handle.wait().await);
        }
        outcomes
    });
    assert_eq!(outcomes.len(), unfinished);
    for outcome in outcomes {
        assert_eq!(outcome.status, RunStatus::Succeeded, "{outcome:?}");
        let output: Value = serde_json::from_str(outcome.output.as_deref().unwrap()).unwrap();
        assert_eq!(
            output[format!("s{STEPS}")]["value"],
            json!(STEPS as f64),
            "{output}"
        );
        assert_eq!(completions(&journal, outcome.run).len(), STEPS);
    }
}

#[test]
fn completions_reported_durable_survive_a_power_cut_while_successors_run_ahead_of_the_flush() {
    be_the_child_if_started_as_one();
    for _ in 0..3 {
        power_cut(
            "completions_reported_durable_survive_a_power_cut_while_successors_run_ahead_of_the_flush",
            seed(),
        );
    }
}
