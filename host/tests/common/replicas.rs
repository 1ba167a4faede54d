//! Plumbing of the takeover tests, where several `sandgraph serve` replicas share one PostgreSQL
//! journal: an HTTP gate that holds requests until opened, the graph that records a side effect
//! and then waits at a gate, and checks read from the shared database.

use std::io::{BufReader, Write};
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};

/// An HTTP server whose `/gate` answers only once opened; counts requests.
pub struct Gate {
    pub addr: SocketAddr,
    open: Arc<(Mutex<bool>, Condvar)>,
    pub hits: Arc<AtomicUsize>,
}

impl Gate {
    /// A gate on 127.0.0.1.
    pub fn start() -> Gate {
        Gate::start_on([127, 0, 0, 1].into())
    }

    /// A gate on `ip` (a Docker network's gateway, for replicas in containers).
    pub fn start_on(ip: IpAddr) -> Gate {
        let listener = TcpListener::bind((ip, 0)).unwrap();
        let addr = listener.local_addr().unwrap();
        let open = Arc::new((Mutex::new(false), Condvar::new()));
        let hits = Arc::new(AtomicUsize::new(0));
        let (o, h) = (open.clone(), hits.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                let (o, h) = (o.clone(), h.clone());
                std::thread::spawn(move || {
                    let mut r = BufReader::new(conn.try_clone().unwrap());
                    let _ = super::http_head::read_request_head(&mut r);
                    h.fetch_add(1, Ordering::SeqCst);
                    let (lock, cv) = &*o;
                    let mut g = lock.lock().unwrap();
                    while !*g {
                        g = cv.wait(g).unwrap();
                    }
                    let _ = conn.write_all(
                        b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\nConnection: close\r\n\r\nopened",
                    );
                });
            }
        });
        Gate { addr, open, hits }
    }

    pub fn open(&self) {
        *self.open.0.lock().unwrap() = true;
        self.open.1.notify_all();
    }

    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    pub fn url(&self) -> String {
        format!("http://{}/gate", self.addr)
    }
}

/// The manifest of the hostile suite's `egress_fetch` tool, allowed to GET each of `gates`.
pub fn gate_fetcher_manifest(gates: &[&Gate]) -> String {
    let rules: Vec<String> = gates
        .iter()
        .map(|g| {
            format!(
                "{{ scheme: http, host: '{}', port: {}, methods: [GET] }}",
                g.addr.ip(),
                g.addr.port()
            )
        })
        .collect();
    format!(
        "apiVersion: sandgraph.dev/v1\nkind: ToolManifest\nmetadata: {{ name: egress_fetch }}\nspec:\n  egress: [{}]\n  limits: {{ timeout: 60s }}\n",
        rules.join(", ")
    )
}

/// One calc step: `n + 1`.
pub const ADD: &str = r#"
apiVersion: sandgraph.dev/v1
kind: Graph
metadata: { name: add }
spec:
  input: { type: object, required: [n], properties: { n: { type: integer } } }
  nodes:
    - { id: add, kind: tool, component: calc, input: { expr: "string(input.n) + ' + 1'" } }
"#;

/// A recorded side effect (a GET to an open gate), then a fetch held at a second gate.
pub const EFFECT_THEN_GATE: &str = r#"
apiVersion: sandgraph.dev/v1
kind: Graph
metadata: { name: effect-then-gate }
spec:
  input:
    type: object
    required: [effect, url]
    properties: { effect: { type: string }, url: { type: string } }
  nodes:
    - id: effect
      kind: tool
      component: egress_fetch
      input: { url: input.effect, method: "'GET'" }
    - id: wait
      kind: tool
      component: egress_fetch
      input: { url: input.url, method: "'GET'" }
    - { id: after, kind: tool, component: calc, input: { expr: "'6 * 7'" } }
  edges:
    - { from: effect, to: wait }
    - { from: wait, to: after }
"#;

/// The replica holding `run`'s lease now, as (owner name, epoch), read from the shared queue.
/// Owners are named `<host name>-<pid>-<suffix>`.
pub fn lease_of(db: &mut postgres::Client, run: &str) -> Option<(String, i64)> {
    let id = hex::decode(run).unwrap();
    let row = db
        .query_opt(
            "SELECT owner, epoch FROM sandgraph_leases WHERE run = $1",
            &[&id],
        )
        .unwrap()?;
    let owner: Option<String> = row.get(0);
    Some((owner?, row.get(1)))
}

/// How many events `run` has in the shared journal.
pub fn event_count(db: &mut postgres::Client, run: &str) -> i64 {
    let id = hex::decode(run).unwrap();
    db.query_one(
        "SELECT count(*) FROM sandgraph_events WHERE run = $1",
        &[&id],
    )
    .unwrap()
    .get(0)
}

/// Each of `run`'s steps completed once and the run finished once, in a gap-free journal.
pub fn assert_executed_once(url: &str, run: &str) {
    let journal = sandgraph::journal::Journal::open_location(url).unwrap();
    let records = journal
        .events(sandgraph::journal::RunId::parse(run).unwrap())
        .unwrap();
    let seqs: Vec<u64> = records.iter().map(|r| r.seq).collect();
    assert_eq!(seqs, (0..records.len() as u64).collect::<Vec<_>>());
    let mut completed = std::collections::HashMap::new();
    let mut finished = 0;
    for r in &records {
        match &r.event {
            sandgraph::journal::Event::StepCompleted { step, .. } => {
                *completed.entry(step.clone()).or_insert(0) += 1
            }
            sandgraph::journal::Event::RunFinished { .. } => finished += 1,
            _ => {}
        }
    }
    assert_eq!(finished, 1, "run {run}: {records:#?}");
    assert!(
        completed.values().all(|n| *n == 1),
        "run {run} completed a step twice: {completed:?}"
    );
}
