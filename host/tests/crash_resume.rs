//! Crash injection: the host runs a multi-step graph as a child process (`sandgraph run`) and is
//! SIGKILLed after every journal event in turn and at random instants, then restarted
//! (`sandgraph resume`). Every run must end with the uninterrupted run's output, and a counting
//! server on 127.0.0.1 must see each side effect applied exactly once. A POST cut off mid-flight
//! ends as "outcome unknown" unless the server deduplicates by its Idempotency-Key.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use sandgraph::journal::{Crossing, Event, Journal, RunStatus};

/// What the counting server saw.
#[derive(Default)]
struct Counts {
    /// Requests received per Idempotency-Key (missing key: "").
    hits: HashMap<String, u32>,
    /// Effects applied per path (a key is applied once, however often it arrives).
    effects: HashMap<String, u32>,
    applied_keys: std::collections::HashSet<String>,
    /// `/slow/*` requests received and not yet released.
    held: u32,
    release: bool,
}

/// HTTP/1.1 on 127.0.0.1:0. `GET /count/<x>` answers `ok`; `POST /effect/<x>` applies an effect
/// once per Idempotency-Key and answers `done`; `POST /slow/<x>` does the same but answers only
/// after `release()`, so a test can kill the host while the request is in flight.
struct CountingServer {
    port: u16,
    state: Arc<(Mutex<Counts>, Condvar)>,
}

impl CountingServer {
    fn start() -> CountingServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let state: Arc<(Mutex<Counts>, Condvar)> = Arc::default();
        let s = state.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let s = s.clone();
                std::thread::spawn(move || {
                    let _ = serve(conn, &s);
                });
            }
        });
        CountingServer { port, state }
    }

    fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn snapshot(&self) -> (HashMap<String, u32>, HashMap<String, u32>) {
        let c = self.state.0.lock().unwrap();
        (c.hits.clone(), c.effects.clone())
    }

    fn reset(&self) {
        let mut c = self.state.0.lock().unwrap();
        *c = Counts::default();
    }

    /// Waits (with a deadline) until a `/slow` request is being held.
    fn wait_held(&self) {
        let (lock, cv) = &*self.state;
        let guard = lock.lock().unwrap();
        let (guard, timeout) = cv
            .wait_timeout_while(guard, Duration::from_secs(60), |c| c.held == 0)
            .unwrap();
        assert!(!timeout.timed_out(), "no /slow request arrived");
        drop(guard);
    }

    fn release(&self) {
        let (lock, cv) = &*self.state;
        lock.lock().unwrap().release = true;
        cv.notify_all();
    }
}

impl Drop for CountingServer {
    fn drop(&mut self) {
        self.release();
    }
}

fn serve(conn: TcpStream, state: &(Mutex<Counts>, Condvar)) -> std::io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut reader = BufReader::new(conn.try_clone()?);
    // Cut off before the headers ended (the sender was killed): not a request.
    let Some(head) = common::http_head::read_request_head(&mut reader)? else {
        return Ok(());
    };
    let (method, path) = (head.method.clone(), head.target.clone());
    let key = head
        .header("idempotency-key")
        .unwrap_or_default()
        .to_owned();
    let len = head.content_length();
    let mut body = vec![0; len.min(1 << 16)];
    reader.read_exact(&mut body)?;
    let (lock, cv) = state;
    let answer = {
        let mut c = lock.lock().unwrap();
        *c.hits.entry(key.clone()).or_default() += 1;
        if method == "POST" && (path.starts_with("/effect/") || path.starts_with("/slow/")) {
            if c.applied_keys.insert(key.clone()) || key.is_empty() {
                *c.effects.entry(path.clone()).or_default() += 1;
            }
            "done"
        } else if method == "GET" && path.starts_with("/count/") {
            *c.effects.entry(path.clone()).or_default() += 1;
            "ok"
        } else {
            "?"
        }
    };
    if path.starts_with("/slow/") {
        let mut c = lock.lock().unwrap();
        c.held += 1;
        cv.notify_all();
        let (mut c, _) = cv
            .wait_timeout_while(c, Duration::from_secs(60), |c| !c.release)
            .unwrap();
        c.held -= 1;
    }
    let mut out = conn;
    write!(
        out,
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{answer}",
        answer.len()
    )
}

/// A tools folder and a components folder for the `fetch`, `clock` and `calc` components.
struct Fixture {
    _dir: tempfile::TempDir,
    root: PathBuf,
    graph: PathBuf,
}

impl Fixture {
    fn new(port: u16, post_path: &str) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let tools = root.join("tools");
        let wasm = root.join("wasm");
        std::fs::create_dir_all(&wasm).unwrap();
        let guest = |name: &str| common::hostile(name).to_string();
        let calc = sandgraph_test_artifacts::TOOLS
            .iter()
            .find(|(n, _)| *n == "calc")
            .unwrap()
            .1;
        let components = [
            (
                "fetch",
                guest("egress_fetch"),
                format!(
                    "spec:\n  egress:\n    - {{ scheme: http, host: 127.0.0.1, port: {port}, methods: [GET, POST] }}\n  limits: {{ timeout: 30s }}\n"
                ),
            ),
            (
                "clock",
                guest("journal_clock_random"),
                "spec: {}\n".to_string(),
            ),
            ("calc", calc.to_string(), "spec: {}\n".to_string()),
        ];
        for (name, path, spec) in components {
            std::fs::create_dir_all(tools.join(name)).unwrap();
            std::fs::write(
                tools.join(name).join(format!("{name}.sandgraph.yaml")),
                format!(
                    "apiVersion: sandgraph.dev/v1\nkind: ToolManifest\nmetadata: {{ name: {name} }}\n{spec}"
                ),
            )
            .unwrap();
            std::fs::copy(path, wasm.join(format!("{name}.wasm"))).unwrap();
        }
        // get and clock run in parallel; post follows get; sum joins post and clock.
        let graph = root.join("graph.yaml");
        std::fs::write(
            &graph,
            format!(
                r#"apiVersion: sandgraph.dev/v1
kind: Graph
metadata: {{ name: crash-me }}
spec:
  input:
    type: object
    required: [base]
    properties: {{ base: {{ type: string }} }}
  nodes:
    - id: get
      kind: tool
      component: fetch
      input: {{ url: "input.base + '/count/get'", method: "'GET'" }}
    - id: clock
      kind: tool
      component: clock
    - id: post
      kind: tool
      component: fetch
      input: {{ url: "input.base + '{post_path}'", method: "'POST'" }}
    - id: sum
      kind: tool
      component: calc
      input:
        expr: "string(nodes.get.status) + ' + ' + string(nodes.post.status) + ' + ' + string(size(nodes.clock.secure))"
  edges:
    - {{ from: get, to: post }}
    - {{ from: post, to: sum }}
    - {{ from: clock, to: sum }}
"#
            ),
        )
        .unwrap();
        Fixture {
            _dir: dir,
            root,
            graph,
        }
    }

    /// `sandgraph <sub> [first...] <host options> [extra...]` with no fault injection.
    fn command(
        &self,
        sub: &str,
        first: &[std::ffi::OsString],
        journal: &Path,
        extra: &[&str],
    ) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_sandgraph"));
        c.arg(sub)
            .args(first)
            .arg("--journal")
            .arg(journal)
            .arg("--cache-dir")
            .arg(common::cache_dir())
            .args(["--allow-private", "127.0.0.1"])
            .args(extra)
            .env_remove("SANDGRAPH_FAULT_KILL_AFTER_EVENT")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null());
        c
    }

    fn run_cmd(&self, journal: &Path, base: &str, extra: &[&str]) -> Command {
        let first = [
            self.graph.clone().into_os_string(),
            "--input".into(),
            format!(r#"{{"base":"{base}"}}"#).into(),
            "--tools".into(),
            self.root.join("tools").into_os_string(),
            "--components".into(),
            self.root.join("wasm").into_os_string(),
        ];
        self.command("run", &first, journal, extra)
    }

    fn resume(&self, journal: &Path, extra: &[&str]) -> Output {
        self.command("resume", &[], journal, extra)
            .output()
            .unwrap()
    }
}

/// The journal at `journal`: a sled directory, or a postgres:// URL passed as a path.
fn open_journal(journal: &Path) -> Journal {
    Journal::open_location(journal.to_str().unwrap()).unwrap()
}

/// The one run in `journal`: its events.
fn journal_events(journal: &Path) -> Vec<sandgraph::journal::Record> {
    let j = open_journal(journal);
    let runs = j.runs().unwrap();
    assert_eq!(runs.len(), 1, "one run per journal");
    j.events(runs[0].run).unwrap()
}

/// Idempotency keys whose response was journaled, and those whose intent was journaled without
/// a result.
fn keys(events: &[sandgraph::journal::Record]) -> (Vec<String>, Vec<String>) {
    let (mut answered, mut open) = (Vec::new(), Vec::new());
    let mut last_key: HashMap<(String, u32), String> = HashMap::new();
    for r in events {
        if let Event::Crossing {
            step,
            attempt,
            crossing,
        } = &r.event
        {
            match crossing {
                Crossing::HttpIntent {
                    idempotency_key, ..
                } => {
                    last_key.insert((step.clone(), *attempt), idempotency_key.clone());
                    open.push(idempotency_key.clone());
                }
                Crossing::HttpResponse { .. } | Crossing::HttpFailed { .. } => {
                    if let Some(k) = last_key.get(&(step.clone(), *attempt)) {
                        open.retain(|o| o != k);
                        answered.push(k.clone());
                    }
                }
                _ => {}
            }
        }
    }
    (answered, open)
}

fn final_outcome(journal: &Path) -> (RunStatus, Option<String>, Option<String>) {
    let j = open_journal(journal);
    let run = j.runs().unwrap()[0].run;
    for r in j.events(run).unwrap() {
        if let Event::RunFinished {
            status,
            output,
            error,
        } = r.event
        {
            let output = output.map(|p| String::from_utf8(j.payload(&p).unwrap()).unwrap());
            return (status, output, error);
        }
    }
    (RunStatus::Running, None, None)
}

/// After a kill and a resume: same output as the uninterrupted run, every effect once, and no
/// request whose answer was journaled before the kill sent again.
fn check_recovered(
    server: &CountingServer,
    journal: &Path,
    expected: &str,
    answered_before: &[String],
    what: &str,
) {
    let (status, output, error) = final_outcome(journal);
    assert_eq!(
        status,
        RunStatus::Succeeded,
        "{what}: run did not succeed: {error:?}"
    );
    assert_eq!(output.as_deref(), Some(expected), "{what}: output differs");
    let (hits, effects) = server.snapshot();
    assert_eq!(
        effects.get("/effect/post"),
        Some(&1),
        "{what}: POST effect applied {:?} times",
        effects.get("/effect/post")
    );
    for k in answered_before {
        assert_eq!(
            hits.get(k),
            Some(&1),
            "{what}: request {k} was answered and journaled before the kill but sent again"
        );
    }
    // Every request the final journal holds reached the server under its journaled key, and
    // no key other than the journaled ones was ever used (a re-run step would use new ones).
    let (answered, open) = keys(&journal_events(journal));
    assert!(open.is_empty(), "{what}: requests without result: {open:?}");
    for k in hits.keys() {
        assert!(
            answered.contains(k),
            "{what}: the server saw key {k} that the journal does not hold"
        );
    }
    // The recovered run replays offline byte for byte, and the replay sends nothing.
    server.reset();
    let run = open_journal(journal).runs().unwrap()[0].run.to_string();
    let replay = Command::new(env!("CARGO_BIN_EXE_sandgraph"))
        .args(["replay", &run, "--journal"])
        .arg(journal)
        .arg("--cache-dir")
        .arg(common::cache_dir())
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&replay.stdout);
    assert!(
        replay.status.success() && report.contains("4 of 4 steps identical"),
        "{what}: replay: {report}{}",
        String::from_utf8_lossy(&replay.stderr)
    );
    assert!(
        server.snapshot().0.is_empty(),
        "{what}: replay reached the network"
    );
}

/// An uninterrupted run: its output and its number of journal events.
fn baseline(fx: &Fixture, server: &CountingServer, extra: &[&str]) -> (String, usize) {
    let dir = tempfile::tempdir().unwrap();
    let journal = dir.path().join("j");
    let out = fx
        .run_cmd(&journal, &server.base(), extra)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "baseline run failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let output = String::from_utf8(out.stdout).unwrap().trim().to_string();
    (output, journal_events(&journal).len())
}

#[test]
fn killed_after_every_journal_event_the_run_resumes_with_effects_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    killed_after_every_journal_event(&|n| dir.path().join(format!("j{n}")));
}

/// The same on a PostgreSQL journal (one fresh database per kill point): what a killed host
/// committed is what its successor resumes from.
#[test]
fn killed_after_every_journal_event_on_postgresql_the_run_resumes_with_effects_exactly_once() {
    let pg = common::postgres::Postgres::start();
    killed_after_every_journal_event(&|n| PathBuf::from(pg.database(&format!("j{n}"))));
}

fn killed_after_every_journal_event(journal_at: &dyn Fn(u64) -> PathBuf) {
    let server = CountingServer::start();
    let fx = Fixture::new(server.port, "/effect/post");
    let idem = ["--idempotent-host", "127.0.0.1"];
    let (expected, events) = baseline(&fx, &server, &idem);
    assert!(
        expected.contains("\"value\":432"),
        "sum = 200 + 200 + 32 hex digits of 16 random bytes: {expected}"
    );
    assert!(
        events >= 20,
        "a multi-step run journals many events: {events}"
    );
    let mut killed = 0;
    for n in 1..=events as u64 {
        server.reset();
        let journal = journal_at(n);
        let out = fx
            .run_cmd(&journal, &server.base(), &idem)
            .env("SANDGRAPH_FAULT_KILL_AFTER_EVENT", n.to_string())
            .output()
            .unwrap();
        let what = format!("kill after event {n}");
        if out.status.success() {
            // The run took a path with fewer appends (parallel steps interleave differently).
            assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), expected);
            continue;
        }
        assert_eq!(
            out.status.signal(),
            Some(libc::SIGKILL),
            "{what}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        killed += 1;
        let (answered_before, _) = keys(&journal_events(&journal));
        let resumed = fx.resume(&journal, &idem);
        assert!(
            resumed.status.success(),
            "{what}: resume failed: {}{}",
            String::from_utf8_lossy(&resumed.stdout),
            String::from_utf8_lossy(&resumed.stderr)
        );
        check_recovered(&server, &journal, &expected, &answered_before, &what);
    }
    assert!(
        killed as usize >= events - 2,
        "only {killed} of {events} kills landed"
    );
}

#[test]
fn killed_at_random_instants_the_run_resumes_with_effects_exactly_once() {
    let server = CountingServer::start();
    let fx = Fixture::new(server.port, "/effect/post");
    let idem = ["--idempotent-host", "127.0.0.1"];
    let (expected, _) = baseline(&fx, &server, &idem);
    // How long the run itself takes here (from RunCreated to RunFinished), as the journal says.
    let span_ms = {
        let dir = tempfile::tempdir().unwrap();
        let journal = dir.path().join("j");
        assert!(
            fx.run_cmd(&journal, &server.base(), &idem)
                .output()
                .unwrap()
                .status
                .success()
        );
        let ev = journal_events(&journal);
        ev.last().unwrap().at_ms - ev[0].at_ms
    };
    let span = (span_ms * 1000).max(2000);
    // A fixed seed so a failure can be reproduced; the instants still cover the whole run.
    let mut rng: u64 = 0x5eed_cafe_f00d_0001;
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut interrupted = 0;
    for i in 0..32 {
        server.reset();
        let dir = tempfile::tempdir().unwrap();
        let journal = dir.path().join("j");
        let mut child = fx
            .run_cmd(&journal, &server.base(), &idem)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // The run exists once its first progress line is out; kill somewhere in its span.
        let mut stderr = BufReader::new(child.stderr.take().unwrap());
        let mut line = String::new();
        stderr.read_line(&mut line).unwrap();
        assert!(line.contains("graph 'crash-me' started"), "{line}");
        let at = Duration::from_micros(next() % span);
        std::thread::sleep(at);
        let _ = child.kill();
        let status = child.wait().unwrap();
        let what = format!("random kill {i} at {at:?}");
        if status.signal() == Some(libc::SIGKILL) {
            interrupted += 1;
        }
        let (answered_before, _) = keys(&journal_events(&journal));
        let resumed = fx.resume(&journal, &idem);
        assert!(
            resumed.status.success(),
            "{what}: resume failed: {}",
            String::from_utf8_lossy(&resumed.stderr)
        );
        check_recovered(&server, &journal, &expected, &answered_before, &what);
    }
    assert!(
        interrupted >= 10,
        "only {interrupted} of 32 kills landed mid-run"
    );
}

/// Kills the host while its POST is held by the server, then restarts it.
fn post_cut_off_mid_flight(extra: &[&str]) -> (CountingServer, tempfile::TempDir, PathBuf, Output) {
    let server = CountingServer::start();
    let fx = Fixture::new(server.port, "/slow/post");
    let dir = tempfile::tempdir().unwrap();
    let journal = dir.path().join("j");
    let mut child = fx
        .run_cmd(&journal, &server.base(), extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    server.wait_held();
    child.kill().unwrap();
    assert_eq!(child.wait().unwrap().signal(), Some(libc::SIGKILL));
    server.release();
    let resumed = fx.resume(&journal, extra);
    (server, dir, journal, resumed)
}

#[test]
fn a_post_cut_off_mid_flight_ends_as_outcome_unknown() {
    let (server, _dir, journal, resumed) = post_cut_off_mid_flight(&[]);
    assert!(!resumed.status.success());
    let (status, _, error) = final_outcome(&journal);
    assert_eq!(status, RunStatus::Failed);
    let error = error.unwrap();
    assert!(
        error.contains("step 'post#1' failed") && error.contains("outcome unknown"),
        "{error}"
    );
    assert!(error.contains("POST http://127.0.0.1:"), "{error}");
    // Not sent again: the server saw it once.
    let (hits, effects) = server.snapshot();
    assert_eq!(effects.get("/slow/post"), Some(&1));
    assert_eq!(hits.values().filter(|&&h| h > 1).count(), 0, "{hits:?}");
}

#[test]
fn a_post_cut_off_mid_flight_is_resent_once_when_the_server_deduplicates_keys() {
    let (server, _dir, journal, resumed) =
        post_cut_off_mid_flight(&["--idempotent-host", "127.0.0.1"]);
    assert!(
        resumed.status.success(),
        "{}",
        String::from_utf8_lossy(&resumed.stderr)
    );
    let (status, _, _) = final_outcome(&journal);
    assert_eq!(status, RunStatus::Succeeded);
    let (hits, effects) = server.snapshot();
    // Sent twice under one key, applied once.
    assert_eq!(effects.get("/slow/post"), Some(&1));
    assert_eq!(hits.values().filter(|&&h| h == 2).count(), 1, "{hits:?}");
}

/// `graphs/workspace-notes.yaml` (write a note, read it back read-only, list the tree) on the
/// real `workspace-fs` tool, killed after every journal event in turn and resumed on the same
/// workspace: the run ends with the uninterrupted output and tree, and replays identically
/// from its workspace snapshots after the workspace is gone.
#[test]
fn a_workspace_run_killed_after_every_journal_event_resumes_and_replays() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let components = Path::new(
        sandgraph_test_artifacts::TOOLS
            .iter()
            .find(|(n, _)| *n == "workspace-fs")
            .unwrap()
            .1,
    )
    .parent()
    .unwrap()
    .to_path_buf();
    let command = |sub: &str, journal: &Path, ws: &Path| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_sandgraph"));
        c.arg(sub);
        if sub == "run" {
            c.arg(repo.join("graphs/workspace-notes.yaml"))
                .args(["--input", r#"{"note":"buy milk"}"#, "--tools"])
                .arg(repo.join("tools"))
                .arg("--components")
                .arg(&components);
        }
        c.arg("--journal")
            .arg(journal)
            .arg("--workspace")
            .arg(ws)
            .arg("--cache-dir")
            .arg(common::cache_dir())
            .env_remove("SANDGRAPH_FAULT_KILL_AFTER_EVENT")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null());
        c
    };
    let workspace = |dir: &Path| {
        let ws = dir.join("ws");
        std::fs::create_dir(&ws).unwrap();
        std::fs::write(ws.join("seed.txt"), "seed").unwrap();
        ws
    };
    let base = tempfile::tempdir().unwrap();
    let (journal, ws) = (base.path().join("j"), workspace(base.path()));
    let out = command("run", &journal, &ws).output().unwrap();
    assert!(
        out.status.success(),
        "baseline: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let expected = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert!(
        expected.contains("\"notes/today.txt\",\"size\":8"),
        "{expected}"
    );
    let events = journal_events(&journal).len();
    assert!(
        journal_events(&journal)
            .iter()
            .any(|r| matches!(r.event, Event::WorkspaceSnapshot { .. })),
        "the baseline journals workspace snapshots"
    );

    let mut killed = 0;
    for n in 1..=events as u64 {
        let dir = tempfile::tempdir().unwrap();
        let (journal, ws) = (dir.path().join("j"), workspace(dir.path()));
        let what = format!("kill after event {n}");
        let out = command("run", &journal, &ws)
            .env("SANDGRAPH_FAULT_KILL_AFTER_EVENT", n.to_string())
            .output()
            .unwrap();
        if out.status.success() {
            assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), expected);
            continue;
        }
        assert_eq!(
            out.status.signal(),
            Some(libc::SIGKILL),
            "{what}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        killed += 1;
        let resumed = command("resume", &journal, &ws).output().unwrap();
        assert!(
            resumed.status.success(),
            "{what}: resume failed: {}{}",
            String::from_utf8_lossy(&resumed.stdout),
            String::from_utf8_lossy(&resumed.stderr)
        );
        let (status, output, error) = final_outcome(&journal);
        assert_eq!(status, RunStatus::Succeeded, "{what}: {error:?}");
        assert_eq!(output.as_deref(), Some(expected.as_str()), "{what}");
        assert_eq!(
            std::fs::read_to_string(ws.join("notes/today.txt")).unwrap(),
            "buy milk",
            "{what}"
        );
        std::fs::remove_dir_all(&ws).unwrap();
        let run = Journal::open(&journal).unwrap().runs().unwrap()[0]
            .run
            .to_string();
        let replay = Command::new(env!("CARGO_BIN_EXE_sandgraph"))
            .args(["replay", &run, "--journal"])
            .arg(&journal)
            .arg("--cache-dir")
            .arg(common::cache_dir())
            .output()
            .unwrap();
        let report = String::from_utf8_lossy(&replay.stdout);
        assert!(
            replay.status.success() && report.contains("3 of 3 steps identical"),
            "{what}: replay: {report}{}",
            String::from_utf8_lossy(&replay.stderr)
        );
    }
    assert!(
        killed as usize >= events - 2,
        "only {killed} of {events} kills landed"
    );
}
