//! Durable steps through `sandgraph serve`: runs of an 8-step graph (calc) submitted with
//! `?wait=true` by 1, 8 and 64 concurrent clients, on one replica with the embedded sled
//! journal, one replica on PostgreSQL and three replicas sharing one PostgreSQL database (runs
//! submitted round-robin), next to plain SQL: the same number of durable records inserted by
//! as many connections, one autocommitted INSERT each. All in the same run.
//!
//! Prints durable steps/s, p50/p99 of one step (from the journal: one step's StepCompleted to
//! the next's, so queueing and the journal's own work are in it) and p50 queued-to-start (a
//! run's RunCreated to its first StepStarted: the queue, the claim and loading the run).
//!
//! Run: `SANDGRAPH_BENCH=replicas scripts/bench-postgres.sh` (a throwaway cluster; add
//! `--profile dev` for a quick figure). `SANDGRAPH_BENCH_RUNS` sets runs per configuration
//! (default: 2 per client, at least 32). `SANDGRAPH_BENCH_SERVE` names another `sandgraph` binary
//! to run as the replicas (say, one built from an earlier commit, to compare in the same run).
//! `SANDGRAPH_BENCH_CLIENTS` (say `64`, or `8,64`) measures only those numbers of clients.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use sandgraph::journal::{Event, Journal, RunId};

const STEPS: usize = 8;
const TOKEN: &str = "test-only-admin-token-0001";

fn graph() -> String {
    let mut nodes = String::new();
    let mut edges = String::new();
    for i in 0..STEPS {
        let expr = if i == 0 {
            "string(input.n) + ' + 1'".to_owned()
        } else {
            format!("string(nodes.s{}.value) + ' + 1'", i - 1)
        };
        nodes.push_str(&format!(
            "    - {{ id: s{i}, kind: tool, component: calc, input: {{ expr: \"{expr}\" }} }}\n"
        ));
        if i > 0 {
            edges.push_str(&format!("    - {{ from: s{}, to: s{i} }}\n", i - 1));
        }
    }
    format!(
        "apiVersion: sandgraph.dev/v1\nkind: Graph\nmetadata: {{ name: chain }}\nspec:\n  input: {{ type: object, required: [n], properties: {{ n: {{ type: integer }} }} }}\n  nodes:\n{nodes}  edges:\n{edges}"
    )
}

/// One HTTP/1.1 request; the status and body.
fn request(addr: SocketAddr, method: &str, path: &str, ctype: &str, body: &[u8]) -> (u16, String) {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(300))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .unwrap();
    s.write_all(body).unwrap();
    let mut out = String::new();
    BufReader::new(s).read_to_string(&mut out).unwrap();
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out.split("\r\n\r\n").nth(1).unwrap_or("").to_owned();
    (status, body)
}

struct Replica(Child, SocketAddr);

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn serve(journal: &std::ffi::OsStr, cache: &Path) -> Replica {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    // Another build of `sandgraph` to measure (an older commit's, for a same-run comparison).
    let bin = std::env::var_os("SANDGRAPH_BENCH_SERVE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_sandgraph")));
    let mut child = Command::new(bin)
        .arg("serve")
        .env("SANDGRAPH_LISTEN", "127.0.0.1:0")
        .env("SANDGRAPH_JOURNAL", journal)
        .env("SANDGRAPH_CACHE_DIR", cache)
        .env(
            "SANDGRAPH_AUTH_TOKENS",
            manifest.join("tests/fixtures/auth/test-only-tokens.yaml"),
        )
        .env("SANDGRAPH_RATE_LIMIT", "100000")
        .env("SANDGRAPH_RATE_BURST", "100000")
        .env("RUST_LOG", "error")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start sandgraph serve");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .parse()
        .unwrap();
    Replica(child, addr)
}

/// Uploads calc and posts the chain graph through `addr`.
fn prepare(addr: SocketAddr) {
    calc_tool(addr);
    let (status, text) = request(
        addr,
        "POST",
        "/v1/graphs",
        "application/yaml",
        graph().as_bytes(),
    );
    assert_eq!(status, 201, "{text}");
}

fn calc_tool(addr: SocketAddr) {
    use base64::Engine as _;
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let manifest = std::fs::read_to_string(repo.join("tools/calc/calc.sandgraph.yaml")).unwrap();
    let wasm_path = sandgraph_test_artifacts::TOOLS
        .iter()
        .find(|(n, _)| *n == "calc")
        .unwrap()
        .1;
    let body = serde_json::json!({
        "manifest": manifest,
        "component": base64::engine::general_purpose::STANDARD.encode(std::fs::read(wasm_path).unwrap()),
    });
    let (status, text) = request(
        addr,
        "POST",
        "/v1/tools",
        "application/json",
        body.to_string().as_bytes(),
    );
    assert_eq!(status, 201, "{text}");
}

struct Figures {
    steps_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    start_p50_ms: Option<f64>,
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

/// Runs `runs` chain runs through `replicas` with `clients` concurrent waiting clients; reads
/// the step timings from `journal` afterwards.
fn through_serve(
    replicas: Vec<Replica>,
    clients: usize,
    runs: usize,
    journal: impl FnOnce() -> Journal,
) -> Figures {
    let addrs: Vec<SocketAddr> = replicas.iter().map(|r| r.1).collect();
    let next = Arc::new(AtomicUsize::new(0));
    let ids = Arc::new(std::sync::Mutex::new(Vec::new()));
    let barrier = Arc::new(Barrier::new(clients + 1));
    let handles: Vec<_> = (0..clients)
        .map(|_| {
            let (next, ids, barrier, addrs) =
                (next.clone(), ids.clone(), barrier.clone(), addrs.clone());
            std::thread::spawn(move || {
                barrier.wait();
                loop {
                    let n = next.fetch_add(1, Ordering::SeqCst);
                    if n >= runs {
                        return;
                    }
                    let body = format!("{{\"graph\":\"chain\",\"input\":{{\"n\":{n}}}}}");
                    let (status, text) = request(
                        addrs[n % addrs.len()],
                        "POST",
                        "/v1/runs?wait=true",
                        "application/json",
                        body.as_bytes(),
                    );
                    assert_eq!(status, 200, "{text}");
                    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
                    assert_eq!(v["status"], "succeeded", "{text}");
                    ids.lock()
                        .unwrap()
                        .push(RunId::parse(v["run"].as_str().unwrap()).unwrap());
                }
            })
        })
        .collect();
    barrier.wait();
    let start = Instant::now();
    for h in handles {
        h.join().unwrap();
    }
    let elapsed = start.elapsed();
    drop(replicas);
    let journal = journal();
    let (mut steps, mut starts) = (Vec::new(), Vec::new());
    for run in ids.lock().unwrap().iter() {
        let records = journal.events(*run).unwrap();
        let created = records[0].at_ms;
        if let Some(first) = records
            .iter()
            .find(|r| matches!(r.event, Event::StepStarted { .. }))
        {
            starts.push(first.at_ms.saturating_sub(created) as f64);
        }
        let mut prev = created;
        for r in &records {
            if matches!(r.event, Event::StepCompleted { .. }) {
                steps.push(r.at_ms.saturating_sub(prev) as f64);
                prev = r.at_ms;
            }
        }
    }
    Figures {
        steps_per_s: (runs * STEPS) as f64 / elapsed.as_secs_f64(),
        p50_ms: pct(&mut steps, 0.5),
        p99_ms: pct(&mut steps, 0.99),
        start_p50_ms: Some(pct(&mut starts, 0.5)),
    }
}

/// The same number of durable records as plain SQL: `clients` connections, one autocommitted
/// INSERT per record.
fn plain_sql(url: &str, clients: usize, records: usize) -> Figures {
    let mut admin = postgres::Client::connect(url, postgres::NoTls).unwrap();
    admin
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS bench_plain (run bytea, seq bigint, body bytea, PRIMARY KEY (run, seq))",
        )
        .unwrap();
    let per = records.div_ceil(clients);
    let barrier = Arc::new(Barrier::new(clients + 1));
    let handles: Vec<_> = (0..clients)
        .map(|_| {
            let (barrier, url) = (barrier.clone(), url.to_owned());
            std::thread::spawn(move || {
                let mut c = postgres::Client::connect(&url, postgres::NoTls).unwrap();
                let run = RunId::new();
                let body = vec![b'x'; 200];
                let mut lat = Vec::with_capacity(per);
                barrier.wait();
                for i in 0..per as i64 {
                    let t = Instant::now();
                    c.execute(
                        "INSERT INTO bench_plain (run, seq, body) VALUES ($1, $2, $3)",
                        &[&&run.0[..], &i, &body],
                    )
                    .unwrap();
                    lat.push(t.elapsed().as_secs_f64() * 1e3);
                }
                lat
            })
        })
        .collect();
    barrier.wait();
    let start = Instant::now();
    let mut lat: Vec<f64> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    let elapsed = start.elapsed();
    Figures {
        steps_per_s: (per * clients) as f64 / elapsed.as_secs_f64(),
        p50_ms: pct(&mut lat, 0.5),
        p99_ms: pct(&mut lat, 0.99),
        start_p50_ms: None,
    }
}

fn database(admin_url: &str, name: &str) -> String {
    let mut c = postgres::Client::connect(admin_url, postgres::NoTls).unwrap();
    c.batch_execute(&format!("DROP DATABASE IF EXISTS {name}"))
        .unwrap();
    c.batch_execute(&format!("CREATE DATABASE {name}")).unwrap();
    match admin_url.rfind('/') {
        Some(i) => format!("{}/{name}", &admin_url[..i]),
        None => panic!("SANDGRAPH_BENCH_POSTGRES has no database part: {admin_url}"),
    }
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else is taken from the command line.
    let Ok(admin) = std::env::var("SANDGRAPH_BENCH_POSTGRES") else {
        println!(
            "SANDGRAPH_BENCH_POSTGRES is not set; run SANDGRAPH_BENCH=replicas scripts/bench-postgres.sh"
        );
        return;
    };
    let cache: PathBuf = std::env::temp_dir().join("sandgraph-bench-replicas-cache");
    let _ = std::fs::create_dir_all(&cache);
    let runs_for = |clients: usize| -> usize {
        std::env::var("SANDGRAPH_BENCH_RUNS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or((clients * 2).max(32))
    };
    println!(
        "{:<26} {:>7} {:>12} {:>9} {:>9} {:>14}",
        "configuration", "clients", "durable st/s", "p50 ms", "p99 ms", "queued→start"
    );
    let show = |name: &str, clients: usize, f: &Figures| {
        println!(
            "{:<26} {:>7} {:>12.0} {:>9.1} {:>9.1} {:>14}",
            name,
            clients,
            f.steps_per_s,
            f.p50_ms,
            f.p99_ms,
            f.start_p50_ms
                .map(|v| format!("{v:.0} ms"))
                .unwrap_or_else(|| "-".into())
        );
    };
    // `SANDGRAPH_BENCH_CLIENTS=64` (a comma-separated list) measures only those client counts.
    let only: Option<Vec<usize>> = std::env::var("SANDGRAPH_BENCH_CLIENTS")
        .ok()
        .map(|v| v.split(',').filter_map(|c| c.trim().parse().ok()).collect());
    for (i, clients) in [1usize, 8, 64].into_iter().enumerate() {
        if only.as_ref().is_some_and(|o| !o.contains(&clients)) {
            continue;
        }
        let runs = runs_for(clients);
        // One replica, embedded sled journal.
        let dir = tempfile::tempdir().unwrap();
        let journal_dir = dir.path().join("journal");
        let sled = {
            let r = vec![serve(journal_dir.as_os_str(), &cache)];
            prepare(r[0].1);
            through_serve(r, clients, runs, || Journal::open(&journal_dir).unwrap())
        };
        show("1 replica, sled", clients, &sled);
        for replicas in [1usize, 3] {
            let url = database(&admin, &format!("bench_{i}_{replicas}"));
            let r: Vec<Replica> = (0..replicas)
                .map(|_| serve(std::ffi::OsStr::new(&url), &cache))
                .collect();
            prepare(r[0].1);
            let f = through_serve(r, clients, runs, || Journal::open_location(&url).unwrap());
            show(
                &format!(
                    "{replicas} replica{}, PostgreSQL",
                    if replicas == 1 { "" } else { "s" }
                ),
                clients,
                &f,
            );
        }
        let url = database(&admin, &format!("bench_{i}_plain"));
        show(
            "plain SQL inserts",
            clients,
            &plain_sql(&url, clients, runs * STEPS),
        );
    }
}
