//! What a durable graph step costs end to end. Graphs of trivial `calc` steps (a chain, and a
//! fan-out into a join) run on the real `Engine` over an on-disk sled journal, one run at a time
//! and several at once, measured in the same run against:
//! - the bare tool call (`Sandbox::call` of the same `calc` input, no journal, no scheduler), so
//!   host overhead per step = engine step time − bare call time;
//! - SQLite (WAL, synchronous=FULL) appending the very records the engine journaled
//!   (`Event::encode` bytes), one transaction per durable point, at the same concurrency;
//! - the journal alone appending those same records with the same durable points (each group
//!   flush is one write and `fdatasync` of its write-ahead log, as in the engine).
//!
//! The engine runs twice: as configured by default, where a successor that reaches nothing
//! outside its sandbox starts while its predecessor's completion is being flushed, and as
//! "engine, waits", where every successor waits for that flush.
//!
//! Prints, per repetition, steps/s, per-step p50/p99 and flushes, then the medians over the
//! repetitions with ratios against SQLite, where a chain step's time goes (from timestamps of
//! one traced run), and the overhead against the goals (≥ 5k durable steps/s; ≤ 200 µs added
//! per chain step over the bare call, one run at a time).
//!
//! Run: `cargo bench -p sandgraph --bench graph_steps`
//! (`SANDGRAPH_BENCH_STEPS` steps per measurement, default 1000; `SANDGRAPH_BENCH_REPS`
//! repetitions, default 3; `SANDGRAPH_BENCH_AT_ONCE` concurrent runs, default 8;
//! `SANDGRAPH_BENCH_ONLY=chain` or `=fan-out` one workload)

mod sqlite_baseline;

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sandgraph::graph::catalog::Catalog;
use sandgraph::graph::engine::{Engine, EngineConfig, Progress};
use sandgraph::graph::{CompiledGraph, validate};
use sandgraph::journal::{Durability, Event, Journal, RunId, RunStatus};
use sandgraph::sandbox::manifest::{CallGrant, EffectiveGrant, Manifest, OperatorPolicy};
use sandgraph::sandbox::{Sandbox, SandboxConfig};

const CALC_MANIFEST: &str = include_str!("../../tools/calc/calc.sandgraph.yaml");

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&v| v > 0)
        .unwrap_or(default)
}

fn node(id: &str, expr: &str) -> String {
    format!(
        "    - id: {id}\n      kind: tool\n      component: calc\n      input:\n        expr: \"{expr}\"\n"
    )
}

fn header(name: &str) -> String {
    format!(
        "apiVersion: sandgraph.dev/v1\nkind: Graph\nmetadata:\n  name: {name}\nspec:\n  nodes:\n"
    )
}

/// `s0 -> s1 -> ... -> s{len-1}`, each adding 1 to its predecessor's value.
fn chain(len: usize) -> String {
    let mut y = header("bench-chain");
    y += &node("s0", "'1 + 1'");
    for i in 1..len {
        y += &node(
            &format!("s{i}"),
            &format!("string(nodes.s{}.value) + ' + 1'", i - 1),
        );
    }
    y += "  edges:\n";
    for i in 1..len {
        y += &format!("    - {{ from: s{}, to: s{i} }}\n", i - 1);
    }
    y
}

/// `root -> b0..b{width-1} -> join`: every branch runs in parallel, the join waits for all.
fn fan_out(width: usize) -> String {
    let mut y = header("bench-fan-out");
    y += &node("root", "'1 + 1'");
    for i in 0..width {
        y += &node(&format!("b{i}"), "string(nodes.root.value) + ' * 2'");
    }
    y += &node("join", "string(nodes.b0.value) + ' + 1'");
    y += "  edges:\n";
    for i in 0..width {
        y += &format!("    - {{ from: root, to: b{i} }}\n");
        y += &format!("    - {{ from: b{i}, to: join }}\n");
    }
    y
}

/// The engine with every successor waiting for its predecessors' durability (the stricter
/// baseline; by default an effect-free successor starts during the flush).
const WAITS: &str = "engine, waits";

/// Per-step latency from the engine's progress hook: `StepScheduled` journaled (buffered) to
/// `StepCompleted` durable (the hook sees a completion only after its flush).
#[derive(Default)]
struct StepClock {
    scheduled: Mutex<HashMap<(RunId, String), Instant>>,
    done: Mutex<Vec<Duration>>,
}

impl StepClock {
    fn progress(self: &Arc<Self>) -> Progress {
        let clock = self.clone();
        Arc::new(move |run, event| match event {
            Event::StepScheduled { step, .. } => {
                clock
                    .scheduled
                    .lock()
                    .expect("clock")
                    .insert((run, step.clone()), Instant::now());
            }
            Event::StepCompleted { step, .. } => {
                let t = clock
                    .scheduled
                    .lock()
                    .expect("clock")
                    .remove(&(run, step.clone()));
                if let Some(t) = t {
                    clock.done.lock().expect("clock").push(t.elapsed());
                }
            }
            _ => {}
        })
    }

    fn take(&self) -> Vec<Duration> {
        self.scheduled.lock().expect("clock").clear();
        std::mem::take(&mut *self.done.lock().expect("clock"))
    }
}

/// (run, what happened, step, when): journal appends and durable completions.
type Trace = Arc<Mutex<Vec<(RunId, &'static str, String, Instant)>>>;

/// Where a chain step's time goes, from a trace of one-run-at-a-time chains: median µs of each
/// phase of a step (first event of each kind), between steps, and at a run's start and end.
fn breakdown(trace: &Trace) {
    let trace = trace.lock().expect("trace");
    // Per run: its events in time order.
    let mut runs: HashMap<RunId, Vec<(&'static str, &str, Instant)>> = HashMap::new();
    for (run, kind, step, at) in trace.iter() {
        runs.entry(*run)
            .or_default()
            .push((kind, step.as_str(), *at));
    }
    let phases = [
        (
            "scheduled",
            "started",
            "StepScheduled -> StepStarted (task spawn, permit, grant, append)",
        ),
        (
            "started",
            "appended",
            "StepStarted -> StepCompleted appended (tool call with its crossings journaled, output stored)",
        ),
        (
            "appended",
            "durable",
            "StepCompleted appended -> durable (group-commit flush, incl. spawn_blocking hand-off)",
        ),
    ];
    let mut samples: Vec<Vec<f64>> = vec![Vec::new(); phases.len() + 3];
    let mut crossings = 0usize;
    let mut steps = 0usize;
    for events in runs.values() {
        let at = |kind: &str, step: &str| {
            events
                .iter()
                .find(|e| e.0 == kind && e.1 == step)
                .map(|e| e.2)
        };
        let order: Vec<&str> = events
            .iter()
            .filter(|e| e.0 == "scheduled")
            .map(|e| e.1)
            .collect();
        for (i, step) in order.iter().enumerate() {
            for (j, (a, b, _)) in phases.iter().enumerate() {
                if let (Some(ta), Some(tb)) = (at(a, step), at(b, step)) {
                    samples[j].push(us(tb - ta));
                }
            }
            if let Some(next) = order.get(i + 1)
                && let (Some(ta), Some(tb)) = (at("appended", step), at("scheduled", next))
            {
                samples[phases.len()].push(us(tb - ta));
            }
        }
        if let (Some(ta), Some(first)) = (at("created", ""), order.first())
            && let Some(tb) = at("scheduled", first)
        {
            samples[phases.len() + 1].push(us(tb - ta));
        }
        if let (Some(last), Some(tb)) = (order.last(), at("finished", ""))
            && let Some(ta) = at("durable", last)
        {
            samples[phases.len() + 2].push(us(tb - ta));
        }
        crossings += events.iter().filter(|e| e.0 == "crossing").count();
        steps += order.len();
    }
    println!(
        "\nWhere a chain step's time goes (one run at a time, {steps} steps, {:.1} crossings journaled per step), median µs:",
        crossings as f64 / steps.max(1) as f64
    );
    let labels = phases.iter().map(|p| p.2).chain([
        "StepCompleted appended -> next StepScheduled (output parsed, scheduler, CEL input, append; the flush too where the successor waits for it)",
        "per run: RunCreated durable -> first StepScheduled",
        "per run: last StepCompleted durable -> RunFinished durable",
    ]);
    for (label, v) in labels.zip(samples) {
        if !v.is_empty() {
            println!("  {:>7.0}  {label}", median(v));
        }
    }
}

/// One measured row.
#[derive(Clone)]
struct Outcome {
    steps: usize,
    elapsed: Duration,
    /// Per step (engine: scheduled -> durable; stores: one durable transaction; bare: one call).
    latencies: Vec<Duration>,
    flushes: Option<u64>,
}

impl Outcome {
    fn rate(&self) -> f64 {
        self.steps as f64 / self.elapsed.as_secs_f64()
    }
    fn pct(&self, p: f64) -> Duration {
        let mut l = self.latencies.clone();
        l.sort();
        l[((l.len() as f64 - 1.0) * p).round() as usize]
    }
}

/// A run's journaled events in order, each with whether the engine made it durable there.
type RunRecords = Vec<(Event, bool)>;

fn durable_point(e: &Event) -> bool {
    matches!(
        e,
        Event::RunCreated { .. }
            | Event::StepCompleted { .. }
            | Event::StepFailed { .. }
            | Event::RunFinished { .. }
    )
}

struct Bench {
    rt: tokio::runtime::Runtime,
    sandbox: Arc<Sandbox>,
    catalog: Arc<Catalog>,
    clock: Arc<StepClock>,
    calc: Arc<sandgraph::sandbox::registry::LoadedTool>,
    grant: EffectiveGrant,
}

impl Bench {
    fn new() -> Bench {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let sandbox = Arc::new(Sandbox::new(SandboxConfig::default()).expect("sandbox"));
        let wasm = std::fs::read(sandgraph_test_artifacts::TOOL_CALC).expect("calc component");
        let manifest = Manifest::parse("calc.sandgraph.yaml", CALC_MANIFEST).expect("manifest");
        let calc = sandbox.registry().load(&wasm).expect("load calc");
        let grant =
            EffectiveGrant::intersect(&OperatorPolicy::default(), &manifest, &CallGrant::default());
        let mut catalog = Catalog::default();
        catalog.insert(manifest, CALC_MANIFEST.to_owned(), wasm);
        Bench {
            rt,
            sandbox,
            catalog: Arc::new(catalog),
            clock: Arc::default(),
            calc,
            grant,
        }
    }

    fn graph(&self, name: &str, yaml: &str) -> Arc<CompiledGraph> {
        let catalog_manifests = self.catalog.manifests();
        let spec = validate::validate(name, yaml, &catalog_manifests)
            .unwrap_or_else(|d| panic!("bench graph {name} does not validate: {d}"));
        Arc::new(CompiledGraph::compile(spec))
    }

    /// `runs` runs of `graph`, `at_once` at a time, on a fresh on-disk journal in `dir`.
    /// Returns the outcome and every run's records.
    /// With `trace`, every journal append and every durable completion is timestamped there.
    fn engine(
        &self,
        dir: &Path,
        graph: &Arc<CompiledGraph>,
        runs: usize,
        at_once: usize,
        trace: Option<Trace>,
        successors_wait_for_durability: bool,
    ) -> (Outcome, Vec<RunRecords>) {
        let journal = Arc::new(Journal::open(dir).expect("open journal"));
        let mut progress = self.clock.progress();
        if let Some(trace) = trace {
            let t = trace.clone();
            journal.set_after_append(Box::new(move |run, _, event| {
                let (kind, step) = match event {
                    Event::RunCreated { .. } => ("created", ""),
                    Event::StepScheduled { step, .. } => ("scheduled", step.as_str()),
                    Event::StepStarted { step, .. } => ("started", step.as_str()),
                    Event::Crossing { step, .. } => ("crossing", step.as_str()),
                    Event::StepCompleted { step, .. } => ("appended", step.as_str()),
                    Event::StepFailed { step, .. } => ("failed", step.as_str()),
                    Event::RunFinished { .. } => ("finished", ""),
                    Event::WorkspaceSnapshot { step, .. } => ("snapshot", step.as_str()),
                    Event::StepAwaitingApproval { step, .. } => ("awaiting", step.as_str()),
                    Event::StepApproval { step, .. } => ("approval", step.as_str()),
                    Event::StepAudit { step, .. } => ("audit", step.as_str()),
                };
                let now = Instant::now();
                t.lock()
                    .expect("trace")
                    .push((run, kind, step.to_owned(), now));
            }));
            let inner = progress;
            progress = Arc::new(move |run, event| {
                inner(run, event);
                if let Event::StepCompleted { step, .. } = event {
                    let now = Instant::now();
                    trace
                        .lock()
                        .expect("trace")
                        .push((run, "durable", step.clone(), now));
                }
            });
        }
        let engine = Arc::new(
            Engine::new(
                self.sandbox.clone(),
                journal.clone(),
                EngineConfig {
                    successors_wait_for_durability,
                    ..EngineConfig::default()
                },
            )
            .with_progress(progress),
        );
        self.clock.take();
        let flushes = journal.flush_count();
        let start = Instant::now();
        let ids: Vec<RunId> = self.rt.block_on(async {
            let mut set = tokio::task::JoinSet::new();
            for w in 0..at_once {
                let (engine, catalog, graph) =
                    (engine.clone(), self.catalog.clone(), graph.clone());
                let mine = (w..runs).step_by(at_once).count();
                set.spawn(async move {
                    let mut ids = Vec::with_capacity(mine);
                    for _ in 0..mine {
                        let o = engine
                            .run(graph.clone(), &catalog, serde_json::json!({}))
                            .await
                            .expect("start run");
                        assert_eq!(o.status, RunStatus::Succeeded, "{:?}", o.error);
                        ids.push(o.run);
                    }
                    ids
                });
            }
            let mut ids = Vec::new();
            while let Some(r) = set.join_next().await {
                ids.extend(r.expect("run task"));
            }
            ids
        });
        let elapsed = start.elapsed();
        let flushes = journal.flush_count() - flushes;
        let records: Vec<RunRecords> = ids
            .iter()
            .map(|&id| {
                journal
                    .events(id)
                    .expect("events")
                    .into_iter()
                    .map(|r| {
                        let d = durable_point(&r.event);
                        (r.event, d)
                    })
                    .collect()
            })
            .collect();
        let steps = records
            .iter()
            .flatten()
            .filter(|(e, _)| matches!(e, Event::StepCompleted { .. }))
            .count();
        let latencies = self.clock.take();
        assert_eq!(latencies.len(), steps, "every completed step was timed");
        (
            Outcome {
                steps,
                elapsed,
                latencies,
                flushes: Some(flushes),
            },
            records,
        )
    }

    /// `calls` bare calls of calc, `at_once` concurrently.
    fn bare(&self, input: &str, calls: usize, at_once: usize) -> Outcome {
        let start = Instant::now();
        let latencies = self.rt.block_on(async {
            let mut set = tokio::task::JoinSet::new();
            for w in 0..at_once {
                let (sandbox, tool, grant) =
                    (self.sandbox.clone(), self.calc.clone(), self.grant.clone());
                let input = input.to_owned();
                let mine = (w..calls).step_by(at_once).count();
                set.spawn(async move {
                    let mut lat = Vec::with_capacity(mine);
                    for _ in 0..mine {
                        let t = Instant::now();
                        let report = sandbox.call(&tool, &grant, &input).await;
                        lat.push(t.elapsed());
                        assert!(report.result.is_ok(), "{:?}", report.result);
                    }
                    lat
                });
            }
            let mut all = Vec::new();
            while let Some(r) = set.join_next().await {
                all.extend(r.expect("call task"));
            }
            all
        });
        Outcome {
            steps: calls,
            elapsed: start.elapsed(),
            latencies,
            flushes: None,
        }
    }
}

/// Replays `records` with `at_once` writer threads (run i on thread i % at_once); `append` gets
/// (thread, run index, event, durable point) and returns after it.
fn replay_threads<S: Sync>(
    records: &[RunRecords],
    at_once: usize,
    state: &S,
    append: impl Fn(&S, usize, usize, &Event, bool) + Sync,
) -> (Duration, Vec<Duration>) {
    let barrier = std::sync::Barrier::new(at_once + 1);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..at_once)
            .map(|w| {
                let (barrier, append) = (&barrier, &append);
                s.spawn(move || {
                    barrier.wait();
                    let mut lat = Vec::new();
                    for r in (w..records.len()).step_by(at_once) {
                        let mut t = Instant::now();
                        for (event, durable) in &records[r] {
                            append(state, w, r, event, *durable);
                            if *durable {
                                if matches!(event, Event::StepCompleted { .. }) {
                                    lat.push(t.elapsed());
                                }
                                t = Instant::now();
                            }
                        }
                    }
                    lat
                })
            })
            .collect();
        barrier.wait();
        let start = Instant::now();
        let mut lat = Vec::new();
        for h in handles {
            lat.extend(h.join().expect("writer thread"));
        }
        (start.elapsed(), lat)
    })
}

fn steps_in(records: &[RunRecords]) -> usize {
    records
        .iter()
        .flatten()
        .filter(|(e, _)| matches!(e, Event::StepCompleted { .. }))
        .count()
}

/// The records in SQLite (WAL, synchronous=FULL): each durable point commits one transaction
/// holding every record since the previous one.
fn sqlite(dir: &Path, records: &[RunRecords], at_once: usize) -> Outcome {
    let path = dir.join("journal.sqlite");
    sqlite_baseline::create(&path);
    let open = || sqlite_baseline::connect(&path);
    // Per writer: its connection and whether a transaction is open on it.
    let conns: Vec<Mutex<(rusqlite::Connection, bool)>> =
        (0..at_once).map(|_| Mutex::new((open(), false))).collect();
    let ids: Vec<RunId> = (0..records.len()).map(|_| RunId::new()).collect();
    let seqs: Vec<std::sync::atomic::AtomicI64> = (0..records.len())
        .map(|_| std::sync::atomic::AtomicI64::new(0))
        .collect();
    let (elapsed, latencies) = replay_threads(
        records,
        at_once,
        &(conns, ids, seqs),
        |(conns, ids, seqs), w, r, event, durable| {
            let mut guard = conns[w].lock().expect("connection");
            let (c, in_tx) = &mut *guard;
            if !*in_tx {
                // IMMEDIATE: take the write lock up front, as a single-writer log would.
                c.execute_batch("BEGIN IMMEDIATE").expect("begin");
                *in_tx = true;
            }
            let seq = seqs[r].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            c.execute(
                "INSERT INTO events (run, seq, body) VALUES (?1, ?2, ?3)",
                rusqlite::params![&ids[r].0[..], seq, event.encode(now_ms())],
            )
            .expect("insert");
            if durable {
                c.execute_batch("COMMIT").expect("commit");
                *in_tx = false;
            }
        },
    );
    Outcome {
        steps: steps_in(records),
        elapsed,
        latencies,
        flushes: None,
    }
}

/// The records appended to a fresh sled journal, durable at the same points as the engine.
fn journal_only(dir: &Path, records: &[RunRecords], at_once: usize) -> Outcome {
    let journal = Journal::open(dir).expect("open journal");
    let ids: Vec<RunId> = (0..records.len()).map(|_| RunId::new()).collect();
    let before = journal.flush_count();
    let (elapsed, latencies) = replay_threads(
        records,
        at_once,
        &(&journal, ids),
        |(journal, ids), _, r, event, durable| {
            let d = if durable {
                Durability::Durable
            } else {
                Durability::Buffered
            };
            journal.append(ids[r], event, d).expect("append");
        },
    );
    Outcome {
        steps: steps_in(records),
        elapsed,
        latencies,
        flushes: Some(journal.flush_count() - before),
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// Medians over repetitions of one row.
#[derive(Default)]
struct Row {
    rate: Vec<f64>,
    p50: Vec<f64>,
    p99: Vec<f64>,
    flushes_per_step: Vec<f64>,
}

impl Row {
    fn add(&mut self, o: &Outcome) {
        self.rate.push(o.rate());
        self.p50.push(us(o.pct(0.5)));
        self.p99.push(us(o.pct(0.99)));
        if let Some(f) = o.flushes {
            self.flushes_per_step.push(f as f64 / o.steps as f64);
        }
    }
}

fn main() {
    let total_steps = env_usize("SANDGRAPH_BENCH_STEPS", 1000);
    let reps = env_usize("SANDGRAPH_BENCH_REPS", 3);
    let at_once_n = env_usize("SANDGRAPH_BENCH_AT_ONCE", 8);
    let chain_len = 20;
    let width = 16;
    let bench = Bench::new();
    let mut workloads = vec![
        (
            format!("chain of {chain_len}"),
            bench.graph("chain.yaml", &chain(chain_len)),
            chain_len,
        ),
        (
            format!("fan-out of {width}"),
            bench.graph("fan-out.yaml", &fan_out(width)),
            width + 2,
        ),
    ];
    // `SANDGRAPH_BENCH_ONLY=chain` or `=fan-out`: that workload alone.
    if let Ok(only) = std::env::var("SANDGRAPH_BENCH_ONLY") {
        workloads.retain(|(name, _, _)| name.starts_with(only.as_str()));
        assert!(
            !workloads.is_empty(),
            "SANDGRAPH_BENCH_ONLY={only} names no workload (chain, fan-out)"
        );
    }
    let bare_input = r#"{"expr":"2 + 1"}"#;
    // Warm up: compile and first-call costs out of the way.
    {
        let dir = tempfile::tempdir().expect("tempdir");
        for (_, g, _) in &workloads {
            bench.engine(dir.path(), g, 2, 1, None, false);
        }
        bench.bare(bare_input, 200, 1);
    }
    let concurrency = [1usize, at_once_n];
    // (workload, at_once, variant) -> row
    let mut rows: Vec<((String, usize, &str), Row)> = Vec::new();
    let mut row = |key: (String, usize, &'static str), o: &Outcome| {
        if let Some((_, r)) = rows.iter_mut().find(|(k, _)| *k == key) {
            r.add(o);
        } else {
            let mut r = Row::default();
            r.add(o);
            rows.push((key, r));
        }
    };
    println!(
        "rep  {:<14} {:>5} {:<17} {:>6} {:>9} {:>9} {:>9} {:>8}",
        "workload", "runs", "variant", "steps", "steps/s", "p50 us", "p99 us", "flushes"
    );
    for rep in 0..reps {
        for &at_once in &concurrency {
            let o = bench.bare(bare_input, total_steps, at_once);
            print_rep(rep, "bare call", at_once, "calc", &o);
            row(("bare call".into(), at_once, "calc"), &o);
        }
        for (name, graph, per_run) in &workloads {
            let runs = total_steps.div_ceil(*per_run);
            for &at_once in &concurrency {
                let dirs = [(); 4].map(|_| tempfile::tempdir().expect("tempdir"));
                let (waits, _) = bench.engine(dirs[3].path(), graph, runs, at_once, None, true);
                let (ours, records) =
                    bench.engine(dirs[0].path(), graph, runs, at_once, None, false);
                let base = sqlite(dirs[1].path(), &records, at_once);
                let sled = journal_only(dirs[2].path(), &records, at_once);
                for (variant, o) in [
                    ("sqlite", &base),
                    ("journal", &sled),
                    (WAITS, &waits),
                    ("engine", &ours),
                ] {
                    print_rep(rep, name, at_once, variant, o);
                    row((name.clone(), at_once, variant), o);
                }
            }
        }
    }
    println!(
        "\nMedians of {reps} repetitions ({total_steps} steps each; per step: engine = StepScheduled to StepCompleted durable, stores = one durable transaction, bare = one call)\n"
    );
    println!(
        "| workload | runs at once | variant | steps/s | p50 µs | p99 µs | flushes/step | steps/s vs sqlite |"
    );
    println!("|---|---:|---|---:|---:|---:|---:|---:|");
    let get = |w: &str, n: usize, v: &str| -> Option<&Row> {
        rows.iter()
            .find(|(k, _)| k.0 == w && k.1 == n && k.2 == v)
            .map(|(_, r)| r)
    };
    for ((w, n, v), r) in &rows {
        let base = get(w, *n, "sqlite").map(|b| median(b.rate.clone()));
        println!(
            "| {w} | {n} | {v} | {:.0} | {:.0} | {:.0} | {} | {} |",
            median(r.rate.clone()),
            median(r.p50.clone()),
            median(r.p99.clone()),
            if r.flushes_per_step.is_empty() {
                "-".to_string()
            } else {
                format!("{:.2}", median(r.flushes_per_step.clone()))
            },
            base.map_or("-".to_string(), |b| format!(
                "{:.2}x",
                median(r.rate.clone()) / b
            )),
        );
    }
    if let Some((_, graph, per_run)) = workloads.iter().find(|w| w.0.starts_with("chain")) {
        let trace = Trace::default();
        let dir = tempfile::tempdir().expect("tempdir");
        bench.engine(
            dir.path(),
            graph,
            total_steps.div_ceil(*per_run),
            1,
            Some(trace.clone()),
            false,
        );
        breakdown(&trace);
    }
    let bare_p50 = get("bare call", 1, "calc").map_or(0.0, |r| median(r.p50.clone()));
    println!(
        "\nHost overhead per step (one run at a time), against the bare call p50 of {bare_p50:.0} µs:"
    );
    let mut best_rate: f64 = 0.0;
    let mut chain_overhead: Option<f64> = None;
    let mut chain_cycle: Option<f64> = None;
    for (name, _, _) in &workloads {
        for variant in [WAITS, "engine"] {
            let Some(r) = get(name, 1, variant) else {
                continue;
            };
            let p50 = median(r.p50.clone());
            let cycle = 1e6 / median(r.rate.clone());
            if name.starts_with("chain") && variant == "engine" {
                chain_overhead = Some(p50 - bare_p50);
                chain_cycle = Some(cycle - bare_p50);
            }
            println!(
                "  {name}, {variant}: step p50 {p50:.0} µs -> {:.0} µs added; wall time per step {cycle:.0} µs -> {:.0} µs added",
                p50 - bare_p50,
                cycle - bare_p50
            );
        }
        for &n in &concurrency {
            if let Some(r) = get(name, n, "engine") {
                best_rate = best_rate.max(median(r.rate.clone()));
            }
        }
    }
    println!(
        "  (a fan-out step's p50 includes waiting behind its siblings for the CPUs; the chain gives the added time)"
    );
    let verdict = |ok: bool| if ok { "met" } else { "not met" };
    println!(
        "Goal >= 5000 durable steps/s: best {best_rate:.0} -> {}",
        verdict(best_rate >= 5000.0)
    );
    if let Some(o) = chain_overhead {
        println!(
            "Goal <= 1000 µs p50 added per step (chain): {o:.0} µs -> {}",
            verdict(o <= 1000.0)
        );
    }
    if let Some(c) = chain_cycle {
        println!(
            "Goal <= 200 µs added per chain step over the bare call (wall time per step, one run): {c:.0} µs -> {}",
            verdict(c <= 200.0)
        );
    }
}

fn print_rep(rep: usize, workload: &str, at_once: usize, variant: &str, o: &Outcome) {
    println!(
        "{rep:<4} {workload:<14} {at_once:>5} {variant:<17} {:>6} {:>9.0} {:>9.0} {:>9.0} {:>8}",
        o.steps,
        o.rate(),
        us(o.pct(0.5)),
        us(o.pct(0.99)),
        o.flushes.map_or("-".to_string(), |f| f.to_string()),
    );
}
