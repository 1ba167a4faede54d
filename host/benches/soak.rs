//! Soak benchmark (issue 17): a real `sandgraph serve` and a real `sandgraph-infer serve` run as
//! child processes on 127.0.0.1 under modest mixed load for a fixed time, while the RSS, open
//! descriptors and threads of each are sampled from /proc. It prints one table row per sample,
//! then the growth after warm-up (the first 10 % of samples dropped) and every error; it exits 1
//! when a well-formed request failed, a hostile one was not refused with a 4xx, a server died,
//! or a sampled figure grew by more than 10 %.
//!
//! ```sh
//! cargo build -p sandgraph-inference --bin sandgraph-infer
//! cargo bench -p sandgraph --bench soak --profile dev                   # 30 minutes
//! SOAK_SECONDS=120 cargo bench -p sandgraph --bench soak --profile dev  # a short check
//! ```
//!
//! Environment: `SOAK_SECONDS` (default 1800), `SOAK_SAMPLE_SECONDS` (5), `SANDGRAPH_INFER_BIN`
//! (default: `sandgraph-infer` beside the `sandgraph` binary), `SANDGRAPH_MODEL` (default
//! `models/SmolLM2-135M-Instruct.Q4_1.gguf`).
//!
//! The load, each kind on its own thread at its own pace (about 3 requests a second in all, so
//! it does not starve a shared machine): graph runs of the three example graphs (waited, or
//! followed on their event stream with reconnects carrying `Last-Event-ID`, which must deliver
//! every event exactly once); reads of runs, graphs, tools, `/readyz` and `/metrics`; requests
//! under a signed JWT; tool uploads; chat completions (plain and streamed) on the inference
//! server; and hostile requests mixed in (deep CEL, deep YAML and JSON, bad YAML, bytes that are
//! not UTF-8, oversized bodies and heads, too many headers, bad and forged tokens, bad
//! `Last-Event-ID`, a broken request line, a client that never finishes its head, bad chat
//! bodies), each of which must get a 4xx (or, for the slow client, be cut off).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{Value, json};

const TOKEN: &str = "soak-benchmark-token-0000000001";
const ISSUER: &str = "https://issuer.test";
const AUDIENCE: &str = "sandgraph-api";
/// Slow clients are cut off after this (SANDGRAPH_HEADER_TIMEOUT of the server under test).
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
const IO_TIMEOUT: Duration = Duration::from_secs(120);

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn env_secs(name: &str, default: u64) -> Duration {
    Duration::from_secs(
        std::env::var(name)
            .ok()
            .map(|v| {
                v.parse()
                    .unwrap_or_else(|_| panic!("{name}={v:?} is not a number of seconds"))
            })
            .unwrap_or(default),
    )
}

// ---------------------------------------------------------------------------------------------
// Counters and the error log.

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Run,
    Sse,
    Read,
    Jwt,
    Tool,
    Chat,
    Hostile,
    Slow,
}

const KINDS: [Kind; 8] = [
    Kind::Run,
    Kind::Sse,
    Kind::Read,
    Kind::Jwt,
    Kind::Tool,
    Kind::Chat,
    Kind::Hostile,
    Kind::Slow,
];

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Run => "run",
            Kind::Sse => "sse",
            Kind::Read => "read",
            Kind::Jwt => "jwt",
            Kind::Tool => "tool",
            Kind::Chat => "chat",
            Kind::Hostile => "hostile",
            Kind::Slow => "slow",
        }
    }

    /// Hostile kinds count a 4xx (or a cut-off) as ok; the rest are well-formed requests.
    fn well_formed(self) -> bool {
        !matches!(self, Kind::Hostile | Kind::Slow)
    }
}

#[derive(Default)]
struct Tally {
    ok: [AtomicU64; 8],
    err: [AtomicU64; 8],
    errors: Mutex<Vec<String>>,
}

impl Tally {
    fn record(&self, kind: Kind, result: Result<(), String>) {
        let i = KINDS.iter().position(|k| *k == kind).unwrap();
        match result {
            Ok(()) => {
                self.ok[i].fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                self.err[i].fetch_add(1, Ordering::Relaxed);
                let mut log = self.errors.lock().unwrap();
                if log.len() < 50 {
                    log.push(format!("{}: {e}", kind.name()));
                }
            }
        }
    }

    fn counts(&self, kind: Kind) -> (u64, u64) {
        let i = KINDS.iter().position(|k| *k == kind).unwrap();
        (
            self.ok[i].load(Ordering::Relaxed),
            self.err[i].load(Ordering::Relaxed),
        )
    }
}

/// xorshift64*: enough to vary the load; seeded from the clock.
struct Rng(u64);

impl Rng {
    fn new(salt: u64) -> Rng {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64;
        Rng((t ^ salt.wrapping_mul(0x9E37_79B9_7F4A_7C15)) | 1)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n
    }
}

// ---------------------------------------------------------------------------------------------
// A small blocking HTTP/1.1 client: one request per connection.

#[derive(Debug)]
struct Resp {
    status: u16,
    body: Vec<u8>,
}

impl Resp {
    fn json(&self) -> Result<Value, String> {
        serde_json::from_slice(&self.body).map_err(|e| {
            format!(
                "status {} body is not JSON ({e}): {}",
                self.status,
                snippet(&self.body)
            )
        })
    }

    fn expect(self, what: &str, statuses: &[u16]) -> Result<Resp, String> {
        if statuses.contains(&self.status) {
            Ok(self)
        } else {
            Err(format!(
                "{what}: status {} (wanted {statuses:?}): {}",
                self.status,
                snippet(&self.body)
            ))
        }
    }
}

fn snippet(b: &[u8]) -> String {
    let s = String::from_utf8_lossy(b);
    s.chars().take(300).collect()
}

fn connect(addr: SocketAddr) -> Result<TcpStream, String> {
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(10))
        .map_err(|e| format!("connect {addr}: {e}"))?;
    s.set_read_timeout(Some(IO_TIMEOUT)).ok();
    s.set_write_timeout(Some(IO_TIMEOUT)).ok();
    Ok(s)
}

fn head_bytes(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Vec<u8> {
    let mut h = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if !body.is_empty() || method == "POST" {
        h.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    for (k, v) in headers {
        h.push_str(&format!("{k}: {v}\r\n"));
    }
    h.push_str("\r\n");
    let mut out = h.into_bytes();
    out.extend_from_slice(body);
    out
}

fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<Resp, String> {
    raw(addr, &head_bytes(addr, method, path, headers, body))
        .map_err(|e| format!("{method} {path}: {e}"))
}

/// Sends `bytes` as they are and reads the response up to the end of the connection.
fn raw(addr: SocketAddr, bytes: &[u8]) -> Result<Resp, String> {
    let mut s = connect(addr)?;
    // A server may answer (431, 413) and close before it has read everything; the answer is
    // still there to read.
    let _ = s.write_all(bytes);
    let mut all = Vec::new();
    if let Err(e) = s.read_to_end(&mut all)
        && all.is_empty()
    {
        return Err(format!("reading the response: {e}"));
    }
    parse_response(&all)
}

fn parse_response(all: &[u8]) -> Result<Resp, String> {
    let end = all
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| format!("no complete response head in {} bytes", all.len()))?;
    let head = String::from_utf8_lossy(&all[..end]);
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let mut headers = BTreeMap::new();
    for l in lines {
        if let Some((k, v)) = l.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
        }
    }
    let rest = &all[end + 4..];
    let body = if headers.get("transfer-encoding").map(String::as_str) == Some("chunked") {
        let mut r = BufReader::new(rest);
        let mut body = Vec::new();
        while let Some(c) = read_chunk(&mut r)? {
            body.extend(c);
        }
        body
    } else {
        rest.to_vec()
    };
    Ok(Resp { status, body })
}

/// One chunk of a chunked body; None at the last chunk.
fn read_chunk(r: &mut impl BufRead) -> Result<Option<Vec<u8>>, String> {
    let mut line = String::new();
    r.read_line(&mut line)
        .map_err(|e| format!("chunk size: {e}"))?;
    if line.is_empty() {
        return Err("the connection closed inside a chunked body".into());
    }
    let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16)
        .map_err(|_| format!("bad chunk size line {line:?}"))?;
    let mut buf = vec![0; size + 2];
    r.read_exact(&mut buf)
        .map_err(|e| format!("chunk of {size} bytes: {e}"))?;
    buf.truncate(size);
    Ok((size > 0).then_some(buf))
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

fn get(addr: SocketAddr, path: &str) -> Result<Resp, String> {
    request(addr, "GET", path, &[("Authorization", &bearer(TOKEN))], b"")
}

fn post(addr: SocketAddr, path: &str, content_type: &str, body: &[u8]) -> Result<Resp, String> {
    request(
        addr,
        "POST",
        path,
        &[
            ("Authorization", &bearer(TOKEN)),
            ("Content-Type", content_type),
        ],
        body,
    )
}

// ---------------------------------------------------------------------------------------------
// The servers under test.

/// A child process that is stopped (SIGTERM, then SIGKILL after 10 s) when dropped.
struct Server {
    name: &'static str,
    child: Child,
    addr: SocketAddr,
}

impl Server {
    fn spawn(name: &'static str, mut cmd: Command, log: &Path, prefix: &str) -> Server {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(log).expect("log file"))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr = line
            .trim()
            .strip_prefix(prefix)
            .unwrap_or_else(|| {
                panic!(
                    "{name}: unexpected first line {line:?}; its log: {}",
                    std::fs::read_to_string(log).unwrap_or_default()
                )
            })
            .parse()
            .unwrap();
        Server { name, child, addr }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGTERM and wait; the exit status.
    fn stop(&mut self) -> String {
        if !self.alive() {
            return format!("{:?}", self.child.try_wait());
        }
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(40);
        while Instant::now() < deadline {
            if let Ok(Some(s)) = self.child.try_wait() {
                return s.to_string();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        format!(
            "did not stop within 40 s of SIGTERM: {:?}",
            self.child.wait()
        )
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.alive() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// RSS (KiB), open descriptors and threads of `pid`, from /proc.
fn sample(pid: u32) -> Option<(u64, u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
    };
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as u64;
    Some((field("VmRSS:")?, fds, field("Threads:")?))
}

/// The pages graph runs fetch: `/page` (HTML) and `/flaky` (503 on every third request, so
/// retry-timeout's retries are exercised; JSON otherwise).
fn page_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut n = 0u64;
        for conn in listener.incoming() {
            let Ok(mut s) = conn else { continue };
            n += 1;
            let mut r = BufReader::new(s.try_clone().unwrap());
            let mut first = String::new();
            let _ = r.read_line(&mut first);
            loop {
                let mut l = String::new();
                if r.read_line(&mut l).unwrap_or(0) == 0 || l == "\r\n" {
                    break;
                }
            }
            let (status, ctype, body) = if first.contains("/flaky") && n.is_multiple_of(3) {
                ("503 Service Unavailable", "text/plain", "busy".to_owned())
            } else if first.contains("/flaky") {
                (
                    "200 OK",
                    "application/json",
                    json!({"ok": true, "n": n}).to_string(),
                )
            } else {
                (
                    "200 OK",
                    "text/html; charset=utf-8",
                    "<html><head><title>Soak</title></head><body><p>a page with a few words on it</p></body></html>".to_owned(),
                )
            };
            let _ = write!(
                s,
                "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    addr
}

// ---------------------------------------------------------------------------------------------
// Well-formed load.

const TOOLS: [&str; 4] = ["calc", "http-get", "json-query", "text-stats"];
const GRAPHS: [&str; 3] = ["conditional-loop", "fan-out-fan-in", "retry-timeout"];

fn tool_wasm(name: &str) -> &'static str {
    sandgraph_test_artifacts::TOOLS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, p)| *p)
        .unwrap_or_else(|| panic!("no tool {name} among the built test artifacts"))
}

/// Uploads an example tool; http-get's local rule is moved from port 8000 to the page
/// server's (as the graph tests do).
fn upload_tool(addr: SocketAddr, name: &str, pages: SocketAddr) -> Result<(), String> {
    let mut manifest =
        std::fs::read_to_string(repo().join(format!("tools/{name}/{name}.sandgraph.yaml")))
            .map_err(|e| e.to_string())?;
    if name == "http-get" {
        manifest = manifest.replace("port: 8000", &format!("port: {}", pages.port()));
    }
    let wasm = std::fs::read(tool_wasm(name)).map_err(|e| e.to_string())?;
    let body = json!({
        "manifest": manifest,
        "component": base64::engine::general_purpose::STANDARD.encode(wasm),
    });
    post(
        addr,
        "/v1/tools",
        "application/json",
        body.to_string().as_bytes(),
    )?
    .expect(&format!("upload {name}"), &[200, 201])
    .map(drop)
}

fn post_graph(addr: SocketAddr, name: &str) -> Result<(), String> {
    let yaml =
        std::fs::read(repo().join(format!("graphs/{name}.yaml"))).map_err(|e| e.to_string())?;
    post(addr, "/v1/graphs", "application/yaml", &yaml)?
        .expect(&format!("graph {name}"), &[200, 201])
        .map(drop)
}

fn run_body(graph: &str, pages: SocketAddr) -> Value {
    match graph {
        "conditional-loop" => json!({"graph": graph, "input": {"start": 3, "limit": 50}}),
        "fan-out-fan-in" => {
            json!({"graph": graph, "input": {"url": format!("http://{pages}/page")}})
        }
        _ => json!({"graph": graph, "input": {"url": format!("http://{pages}/flaky")}}),
    }
}

fn submit(addr: SocketAddr, body: &Value, wait: bool) -> Result<Value, String> {
    let path = if wait {
        "/v1/runs?wait=true"
    } else {
        "/v1/runs"
    };
    post(addr, path, "application/json", body.to_string().as_bytes())?
        .expect("submit run", &[if wait { 200 } else { 202 }])?
        .json()
}

/// A waited run of a random example graph, which must succeed.
fn waited_run(addr: SocketAddr, pages: SocketAddr, rng: &mut Rng) -> Result<String, String> {
    let graph = GRAPHS[rng.below(3) as usize];
    let out = submit(addr, &run_body(graph, pages), true)?;
    if out["status"] != "succeeded" {
        return Err(format!(
            "{graph} run ended {}: {}",
            out["status"], out["error"]
        ));
    }
    Ok(out["run"].as_str().unwrap_or_default().to_owned())
}

struct SseEvent {
    id: Option<u64>,
    event: String,
}

/// Follows a run's event stream to `run_finished`, dropping the connection after a few events
/// and reconnecting with `Last-Event-ID`; every id must come exactly once, in order. Each
/// connection is one request in the tally.
fn follow(addr: SocketAddr, run: &str, rng: &mut Rng, tally: &Tally) -> Result<String, String> {
    let mut last: Option<u64> = None;
    let mut finished_status = None;
    for _ in 0..200 {
        let mut headers = vec![("Authorization".to_owned(), bearer(TOKEN))];
        if let Some(l) = last {
            headers.push(("Last-Event-ID".to_owned(), l.to_string()));
        }
        let h: Vec<(&str, &str)> = headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let bytes = head_bytes(addr, "GET", &format!("/v1/runs/{run}/events"), &h, b"");
        let take = 1 + rng.below(4) as usize;
        let got = (|| -> Result<(u16, Vec<SseEvent>), String> {
            let mut s = connect(addr)?;
            s.write_all(&bytes).map_err(|e| e.to_string())?;
            let mut r = BufReader::new(s);
            let mut line = String::new();
            r.read_line(&mut line).map_err(|e| e.to_string())?;
            let status: u16 = line
                .split_whitespace()
                .nth(1)
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| format!("bad status line {line:?}"))?;
            loop {
                let mut l = String::new();
                if r.read_line(&mut l).map_err(|e| e.to_string())? == 0 || l == "\r\n" {
                    break;
                }
            }
            let mut events = Vec::new();
            if status != 200 {
                return Ok((status, events));
            }
            let mut text = String::new();
            while events.len() < take {
                let Some(chunk) = read_chunk(&mut r)? else {
                    break;
                };
                text.push_str(&String::from_utf8_lossy(&chunk));
                while let Some(end) = text.find("\n\n") {
                    let block: String = text.drain(..end + 2).collect();
                    let mut ev = SseEvent {
                        id: None,
                        event: String::new(),
                    };
                    for l in block.lines() {
                        if let Some(v) = l.strip_prefix("id: ") {
                            ev.id = v.parse().ok();
                        } else if let Some(v) = l.strip_prefix("event: ") {
                            ev.event = v.to_owned();
                        }
                    }
                    if ev.id.is_some() {
                        events.push(ev);
                    }
                }
            }
            Ok((status, events))
        })();
        let (status, events) = match got {
            Ok(g) => g,
            Err(e) => {
                tally.record(Kind::Sse, Err(format!("run {run}: {e}")));
                return Err(format!("event stream of {run} broke"));
            }
        };
        match status {
            204 if finished_status.is_some() || last.is_some() => {
                tally.record(Kind::Sse, Ok(()));
                break;
            }
            200 => {}
            other => {
                tally.record(
                    Kind::Sse,
                    Err(format!(
                        "run {run}: events answered {other} after id {last:?}"
                    )),
                );
                return Err(format!("event stream of {run} refused"));
            }
        }
        for ev in &events {
            let want = last.map_or(0, |l| l + 1);
            if ev.id != Some(want) {
                tally.record(
                    Kind::Sse,
                    Err(format!(
                        "run {run}: event id {:?} where {want} was due (Last-Event-ID {last:?})",
                        ev.id
                    )),
                );
                return Err(format!("event stream of {run} lost or repeated an event"));
            }
            last = ev.id;
            if ev.event == "run_finished" {
                finished_status = Some(());
            }
        }
        tally.record(Kind::Sse, Ok(()));
        if finished_status.is_some() {
            break;
        }
    }
    if finished_status.is_none() {
        return Err(format!("event stream of {run} never reached run_finished"));
    }
    let status = get(addr, &format!("/v1/runs/{run}"))?
        .expect("run status", &[200])?
        .json()?;
    if status["status"] != "succeeded" {
        return Err(format!(
            "run {run} ended {}: {}",
            status["status"], status["error"]
        ));
    }
    Ok(run.to_owned())
}

fn streamed_run(
    addr: SocketAddr,
    pages: SocketAddr,
    rng: &mut Rng,
    tally: &Tally,
) -> Result<String, String> {
    let graph = GRAPHS[rng.below(3) as usize];
    let out = submit(addr, &run_body(graph, pages), false)?;
    let run = out["run"].as_str().ok_or("no run id")?.to_owned();
    follow(addr, &run, rng, tally)
}

fn read_one(addr: SocketAddr, rng: &mut Rng, runs: &Mutex<Vec<String>>) -> Result<(), String> {
    let run = runs.lock().unwrap().last().cloned();
    match rng.below(7) {
        0 => get(addr, "/v1/runs?limit=20")?
            .expect("list runs", &[200])
            .map(drop),
        1 => get(addr, "/v1/graphs")?
            .expect("list graphs", &[200])
            .map(drop),
        2 => get(addr, "/v1/tools/calc")?
            .expect("tool", &[200])
            .map(drop),
        3 => get(addr, "/readyz")?.expect("readyz", &[200]).map(drop),
        4 => get(addr, "/metrics")?.expect("metrics", &[200]).map(drop),
        5 => get(addr, "/v1/graphs/conditional-loop")?
            .expect("graph", &[200])
            .map(drop),
        _ => match run {
            Some(r) => get(addr, &format!("/v1/runs/{r}"))?
                .expect("run", &[200])
                .map(drop),
            None => get(addr, "/healthz")?.expect("healthz", &[200]).map(drop),
        },
    }
}

fn jwt(claims: Value, pem: &str) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mut all = json!({
        "iss": ISSUER, "aud": AUDIENCE, "sub": "soak-jwt",
        "exp": now + 300, "iat": now, "scope": "runs:read",
    });
    for (k, v) in claims.as_object().unwrap() {
        all[k] = v.clone();
    }
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    header.kid = Some("rsa-1".into());
    let pem = std::fs::read(auth_fixture(pem)).unwrap();
    let key = jsonwebtoken::EncodingKey::from_rsa_pem(&pem).unwrap();
    jsonwebtoken::encode(&header, &all, &key).unwrap()
}

fn auth_fixture(name: &str) -> PathBuf {
    repo().join("host/tests/fixtures/auth").join(name)
}

fn chat(infer: SocketAddr, rng: &mut Rng) -> Result<(), String> {
    let prompts = [
        "Name a colour.",
        "What is 2 + 2?",
        "Say hello in French.",
        "Give one word for happy.",
    ];
    let prompt = prompts[rng.below(prompts.len() as u64) as usize];
    let stream = rng.below(2) == 0;
    let body = json!({
        "model": "smollm2",
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": 12,
        "temperature": 0.7,
        "seed": rng.below(1000),
        "stream": stream,
    });
    let r = request(
        infer,
        "POST",
        "/v1/chat/completions",
        &[("Content-Type", "application/json")],
        body.to_string().as_bytes(),
    )?
    .expect("chat completion", &[200])?;
    if stream {
        let text = String::from_utf8_lossy(&r.body);
        if !text.contains("data: [DONE]") {
            return Err(format!(
                "streamed completion did not end with [DONE]: {}",
                snippet(&r.body)
            ));
        }
    } else {
        let v = r.json()?;
        if v["choices"][0]["message"]["content"].as_str().is_none() {
            return Err(format!("completion without content: {v}"));
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Hostile requests: each must be refused with a 4xx and the servers must stay up.

fn nested_parens(n: usize) -> String {
    format!("{}1{}", "(".repeat(n), ")".repeat(n))
}

fn graph_with_input_expr(expr: &str) -> String {
    format!(
        "apiVersion: sandgraph.dev/v1\nkind: Graph\nmetadata: {{ name: hostile }}\nspec:\n  nodes:\n    - id: a\n      kind: tool\n      component: calc\n      input:\n        expr: {}\n",
        serde_json::to_string(expr).unwrap()
    )
}

fn hostile(
    addr: SocketAddr,
    infer: SocketAddr,
    rng: &mut Rng,
    run: Option<&str>,
) -> Result<(), String> {
    let case = rng.below(20);
    let yaml = "application/yaml";
    let js = "application/json";
    let (what, resp): (&str, Resp) = match case {
        0 => ("deep CEL", post(addr, "/v1/graphs", yaml, graph_with_input_expr(&nested_parens(60 + rng.below(200) as usize)).as_bytes())?),
        1 => ("long CEL chain", post(addr, "/v1/graphs", yaml, graph_with_input_expr(&vec!["1"; 200].join(" + ")).as_bytes())?),
        2 => ("CEL over 4 KiB", post(addr, "/v1/graphs", yaml, graph_with_input_expr(&format!("'{}'", "x".repeat(5000))).as_bytes())?),
        3 => {
            let depth = 200 + rng.below(2000) as usize;
            let doc = format!(
                "apiVersion: sandgraph.dev/v1\nkind: Graph\nmetadata: {{ name: deep }}\nspec:\n  nodes:\n    - id: a\n      kind: tool\n      component: calc\n      input: {{ expr: {}1{} }}\n",
                "[".repeat(depth),
                "]".repeat(depth)
            );
            ("deep YAML", post(addr, "/v1/graphs", yaml, doc.as_bytes())?)
        }
        4 => ("bad YAML", post(addr, "/v1/graphs", yaml, b"apiVersion: sandgraph.dev/v1\nkind: Graph\nspec: { nodes: [unclosed\n")?),
        5 => ("not UTF-8", post(addr, "/v1/graphs", yaml, b"apiVersion: sandgraph.dev/v1\nkind: \xff\xfe Graph\n")?),
        6 => ("graph body over the limit", post(addr, "/v1/graphs", yaml, &vec![b'#'; (1 << 20) + 1])?),
        7 => {
            let big = "a".repeat(70_000);
            ("oversized head", request(addr, "GET", "/v1/runs", &[("Authorization", &bearer(TOKEN)), ("X-Big", &big)], b"")?)
        }
        8 => {
            let names: Vec<(String, String)> = (0..101).map(|i| (format!("X-H{i}"), "v".to_owned())).collect();
            let h: Vec<(&str, &str)> = names.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            ("101 headers", request(addr, "GET", "/healthz", &h, b"")?)
        }
        9 => ("unknown token", request(addr, "GET", "/v1/runs", &[("Authorization", "Bearer not-a-token-anyone-issued")], b"")?),
        10 => ("alg none JWT", request(addr, "GET", "/v1/runs", &[("Authorization", "Bearer eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJ4In0.")], b"")?),
        11 => ("JWT signed by another key", request(addr, "GET", "/v1/runs", &[("Authorization", &bearer(&jwt(json!({}), "test-only-rsa-other.pem")))], b"")?),
        12 => ("expired JWT", request(addr, "GET", "/v1/runs", &[("Authorization", &bearer(&jwt(json!({"exp": 1_000_000}), "test-only-rsa.pem")))], b"")?),
        13 => {
            let depth = 100 + rng.below(10_000) as usize;
            let body = format!("{{\"graph\": \"conditional-loop\", \"input\": {{\"start\": {}1{}, \"limit\": 5}}}}", "[".repeat(depth), "]".repeat(depth));
            ("deep run input", post(addr, "/v1/runs", js, body.as_bytes())?)
        }
        14 => ("run body not JSON", post(addr, "/v1/runs", js, b"{\"graph\": ")?),
        15 => match run {
            Some(r) => ("bad Last-Event-ID", request(addr, "GET", &format!("/v1/runs/{r}/events"), &[("Authorization", &bearer(TOKEN)), ("Last-Event-ID", "not-a-number")], b"")?),
            None => ("unknown run", get(addr, "/v1/runs/00000000000000000000000000000000/events")?),
        },
        16 => ("broken request line", raw(addr, b"GARBAGE \x01\x02 NOT-HTTP\r\n\r\n")?),
        17 => ("not a component", post(addr, "/v1/tools", js, json!({"manifest": "apiVersion: sandgraph.dev/v1\nkind: ToolManifest\nmetadata: { name: junk }\nspec: {}\n", "component": "AGFzbQEAAAA="}).to_string().as_bytes())?),
        18 => {
            let depth = 10_000;
            let body = format!("{{\"messages\": [{{\"role\": \"user\", \"content\": {}\"x\"{}}}]}}", "[".repeat(depth), "]".repeat(depth));
            ("deep chat body", request(infer, "POST", "/v1/chat/completions", &[("Content-Type", js)], body.as_bytes())?)
        }
        _ => {
            let prompt = "word ".repeat(2000);
            let body = json!({"messages": [{"role": "user", "content": prompt}], "max_tokens": 4});
            ("chat prompt over the context", request(infer, "POST", "/v1/chat/completions", &[("Content-Type", js)], body.to_string().as_bytes())?)
        }
    };
    if (400..500).contains(&resp.status) {
        Ok(())
    } else {
        Err(format!(
            "{what}: status {} (wanted a 4xx): {}",
            resp.status,
            snippet(&resp.body)
        ))
    }
}

/// A client that sends half a head and stops: the server must cut it off after its header
/// timeout (408 or a close), not hold the connection.
fn slow_client(addr: SocketAddr) -> Result<(), String> {
    let mut s = connect(addr)?;
    s.set_read_timeout(Some(HEADER_TIMEOUT + Duration::from_secs(10)))
        .ok();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: soak\r\nX-Slow: ")
        .map_err(|e| e.to_string())?;
    let started = Instant::now();
    let mut buf = Vec::new();
    match s.read_to_end(&mut buf) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => Ok(()),
        Err(e) => Err(format!(
            "a half-sent head was still open after {:?}: {e}",
            started.elapsed()
        )),
    }
}

// ---------------------------------------------------------------------------------------------

/// Runs `f` every `every` until `stop`, on its own thread.
fn paced(
    stop: Arc<AtomicBool>,
    every: Duration,
    offset: Duration,
    mut f: impl FnMut() + Send + 'static,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let start = Instant::now() + offset;
        let mut n = 0u32;
        while !stop.load(Ordering::Relaxed) {
            let due = start + every * n;
            let now = Instant::now();
            if due > now {
                std::thread::sleep((due - now).min(Duration::from_millis(250)));
                continue;
            }
            f();
            n += 1;
            // A slow call does not make the next ones pile up.
            let behind = Instant::now().saturating_duration_since(start + every * n);
            n += (behind.as_secs_f64() / every.as_secs_f64()) as u32;
        }
    })
}

struct Row {
    t: f64,
    procs: [(u64, u64, u64); 2],
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    if v.is_empty() {
        return f64::NAN;
    }
    v[v.len() / 2]
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else is taken.
    let duration = env_secs("SOAK_SECONDS", 1800);
    let every = env_secs("SOAK_SAMPLE_SECONDS", 5).max(Duration::from_secs(1));
    let dir = tempfile::Builder::new()
        .prefix("sandgraph-soak-")
        .tempdir()
        .unwrap();
    let sandgraph_bin = PathBuf::from(env!("CARGO_BIN_EXE_sandgraph"));
    let infer_bin = std::env::var_os("SANDGRAPH_INFER_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| sandgraph_bin.with_file_name("sandgraph-infer"));
    assert!(
        infer_bin.exists(),
        "{} is missing: build it with `cargo build -p sandgraph-inference --bin sandgraph-infer` (same profile) or set SANDGRAPH_INFER_BIN",
        infer_bin.display()
    );
    let model = std::env::var_os("SANDGRAPH_MODEL")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("models/SmolLM2-135M-Instruct.Q4_1.gguf"));

    let tokens = dir.path().join("tokens.yaml");
    std::fs::write(
        &tokens,
        format!(
            "tokens:\n  - subject: soak\n    token: \"{TOKEN}\"\n    scopes: [graphs:write, tools:write, runs:write, runs:read]\n"
        ),
    )
    .unwrap();

    let mut infer_cmd = Command::new(&infer_bin);
    infer_cmd
        .arg("serve")
        .arg("--model")
        .arg(&model)
        .args(["--backend", "cpu", "--listen", "127.0.0.1:0"])
        .args(["--context", "256", "--slots", "2", "--threads", "1"])
        .env("RUST_LOG", "warn");
    let infer_log = dir.path().join("infer.log");
    let mut infer = Server::spawn(
        "sandgraph-infer serve",
        infer_cmd,
        &infer_log,
        "listening on http://",
    );
    let ready_by = Instant::now() + Duration::from_secs(180);
    loop {
        assert!(
            infer.alive(),
            "sandgraph-infer serve exited while loading the model"
        );
        if matches!(request(infer.addr, "GET", "/health", &[], b""), Ok(r) if r.status == 200) {
            break;
        }
        assert!(
            Instant::now() < ready_by,
            "sandgraph-infer serve not ready within 180 s"
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    let mut serve_cmd = Command::new(&sandgraph_bin);
    serve_cmd
        .arg("serve")
        .env("SANDGRAPH_LISTEN", "127.0.0.1:0")
        .env("SANDGRAPH_JOURNAL", dir.path().join("journal"))
        .env("SANDGRAPH_CACHE_DIR", dir.path().join("cache"))
        .env("SANDGRAPH_ALLOW_PRIVATE", "127.0.0.1")
        .env("SANDGRAPH_AUTH_TOKENS", &tokens)
        .env("SANDGRAPH_AUTH_JWKS", auth_fixture("test-only-jwks.json"))
        .env("SANDGRAPH_AUTH_ISSUER", ISSUER)
        .env("SANDGRAPH_AUTH_AUDIENCE", AUDIENCE)
        .env("SANDGRAPH_MODEL_URL", format!("http://{}", infer.addr))
        .env(
            "SANDGRAPH_HEADER_TIMEOUT",
            format!("{}s", HEADER_TIMEOUT.as_secs()),
        )
        .env("RUST_LOG", "warn");
    let serve_log = dir.path().join("serve.log");
    let mut serve = Server::spawn("sandgraph serve", serve_cmd, &serve_log, "listening on ");
    let addr = serve.addr;
    let pages = page_server();

    for t in TOOLS {
        upload_tool(addr, t, pages).unwrap_or_else(|e| panic!("setup: {e}"));
    }
    for g in GRAPHS {
        post_graph(addr, g).unwrap_or_else(|e| panic!("setup: {e}"));
    }
    println!(
        "soak: {} s, sampling every {} s; sandgraph serve on {addr} (pid {}), sandgraph-infer serve on {} (pid {}); logs in {}",
        duration.as_secs(),
        every.as_secs(),
        serve.pid(),
        infer.addr,
        infer.pid(),
        dir.path().display()
    );

    let tally = Arc::new(Tally::default());
    let stop = Arc::new(AtomicBool::new(false));
    let runs = Arc::new(Mutex::new(Vec::<String>::new()));
    let mut threads = Vec::new();
    let ms = Duration::from_millis;
    {
        let (t, r) = (tally.clone(), runs.clone());
        let mut rng = Rng::new(1);
        threads.push(paced(stop.clone(), ms(4000), ms(0), move || {
            let res = waited_run(addr, pages, &mut rng).map(|id| {
                let mut v = r.lock().unwrap();
                v.push(id);
                let n = v.len();
                if n > 50 {
                    v.drain(..n - 50);
                }
            });
            t.record(Kind::Run, res);
        }));
    }
    {
        let (t, r) = (tally.clone(), runs.clone());
        let mut rng = Rng::new(2);
        threads.push(paced(stop.clone(), ms(4000), ms(2000), move || {
            let res = streamed_run(addr, pages, &mut rng, &t).map(|id| r.lock().unwrap().push(id));
            t.record(Kind::Run, res);
        }));
    }
    {
        let (t, r) = (tally.clone(), runs.clone());
        let mut rng = Rng::new(3);
        threads.push(paced(stop.clone(), ms(1000), ms(500), move || {
            t.record(Kind::Read, read_one(addr, &mut rng, &r))
        }));
    }
    {
        let t = tally.clone();
        threads.push(paced(stop.clone(), ms(10_000), ms(700), move || {
            let token = jwt(json!({}), "test-only-rsa.pem");
            let res = request(
                addr,
                "GET",
                "/v1/runs?limit=5",
                &[("Authorization", &bearer(&token))],
                b"",
            )
            .and_then(|r| r.expect("GET under a JWT", &[200]))
            .map(drop);
            t.record(Kind::Jwt, res)
        }));
    }
    {
        let t = tally.clone();
        let mut rng = Rng::new(5);
        threads.push(paced(stop.clone(), ms(60_000), ms(30_000), move || {
            let name = TOOLS[rng.below(TOOLS.len() as u64) as usize];
            t.record(Kind::Tool, upload_tool(addr, name, pages))
        }));
    }
    {
        let t = tally.clone();
        let infer_addr = infer.addr;
        let mut rng = Rng::new(6);
        threads.push(paced(stop.clone(), ms(5000), ms(1200), move || {
            t.record(Kind::Chat, chat(infer_addr, &mut rng))
        }));
    }
    {
        let (t, r) = (tally.clone(), runs.clone());
        let infer_addr = infer.addr;
        let mut rng = Rng::new(7);
        threads.push(paced(stop.clone(), ms(1000), ms(300), move || {
            let run = r.lock().unwrap().last().cloned();
            t.record(
                Kind::Hostile,
                hostile(addr, infer_addr, &mut rng, run.as_deref()),
            )
        }));
    }
    {
        let t = tally.clone();
        threads.push(paced(stop.clone(), ms(15_000), ms(100), move || {
            t.record(Kind::Slow, slow_client(addr))
        }));
    }

    let header = format!(
        "{:>6} | {:>8} {:>5} {:>4} | {:>8} {:>5} {:>4} | {}",
        "t s",
        "srv MiB",
        "fds",
        "thr",
        "inf MiB",
        "fds",
        "thr",
        KINDS
            .iter()
            .map(|k| format!("{:>13}", format!("{} ok/err", k.name())))
            .collect::<Vec<_>>()
            .join(" ")
    );
    println!("{header}");
    let started = Instant::now();
    let mut rows = Vec::new();
    let mut died = Vec::new();
    let mut next = started;
    while started.elapsed() < duration {
        next += every;
        while Instant::now() < next {
            std::thread::sleep(Duration::from_millis(100));
        }
        let mut procs = [(0, 0, 0); 2];
        for (i, s) in [&mut serve, &mut infer].into_iter().enumerate() {
            if !s.alive() {
                died.push(format!(
                    "{} exited during the soak: {:?}",
                    s.name,
                    s.child.try_wait()
                ));
                continue;
            }
            procs[i] = sample(s.pid()).unwrap_or_default();
        }
        if !died.is_empty() {
            break;
        }
        let row = Row {
            t: started.elapsed().as_secs_f64(),
            procs,
        };
        println!(
            "{:>6.0} | {:>8.1} {:>5} {:>4} | {:>8.1} {:>5} {:>4} | {}",
            row.t,
            row.procs[0].0 as f64 / 1024.0,
            row.procs[0].1,
            row.procs[0].2,
            row.procs[1].0 as f64 / 1024.0,
            row.procs[1].1,
            row.procs[1].2,
            KINDS
                .iter()
                .map(|k| {
                    let (ok, err) = tally.counts(*k);
                    format!("{:>13}", format!("{ok}/{err}"))
                })
                .collect::<Vec<_>>()
                .join(" ")
        );
        rows.push(row);
    }
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        let _ = t.join();
    }

    // Growth after warm-up: the first 10 % of samples dropped, the rest in thirds; the medians
    // of the first and the last third compared, and the largest value of each.
    let mut failed = Vec::new();
    let kept = &rows[rows.len() / 10..];
    println!(
        "\ngrowth after warm-up ({} of {} samples; the first 10 % dropped):",
        kept.len(),
        rows.len()
    );
    println!(
        "{:<22} {:>14} {:>14} {:>9} {:>10}",
        "series", "first third", "last third", "growth", "max"
    );
    if kept.len() >= 3 {
        let third = kept.len() / 3;
        let names = ["rss MiB", "open fds", "threads"];
        for (p, pname) in ["sandgraph serve", "sandgraph-infer"].iter().enumerate() {
            for (m, mname) in names.iter().enumerate() {
                let value = |r: &Row| {
                    let v = [r.procs[p].0, r.procs[p].1, r.procs[p].2][m] as f64;
                    if m == 0 { v / 1024.0 } else { v }
                };
                let first = median(kept[..third].iter().map(value).collect());
                let last = median(kept[kept.len() - third..].iter().map(value).collect());
                let max = kept.iter().map(value).fold(0.0, f64::max);
                let growth = (last - first) / first * 100.0;
                println!(
                    "{:<22} {:>14.1} {:>14.1} {:>8.1}% {:>10.1}",
                    format!("{pname} {mname}"),
                    first,
                    last,
                    growth,
                    max
                );
                // Descriptors and threads may move by a few with the load of the moment.
                let allowed = if m == 0 {
                    first * 0.10
                } else {
                    (first * 0.10).max(4.0)
                };
                if last - first > allowed {
                    failed.push(format!("{pname} {mname} grew from {first:.1} to {last:.1}"));
                }
            }
        }
    } else {
        failed.push("too few samples to judge growth; run longer".into());
    }

    println!(
        "\nrequests by kind (well-formed kinds must have no errors; hostile ones must all be refused with a 4xx):"
    );
    let mut well_formed_errors = 0;
    for k in KINDS {
        let (ok, err) = tally.counts(k);
        println!(
            "{:<8} {:>7} ok {:>5} err  {}",
            k.name(),
            ok,
            err,
            if k.well_formed() {
                "well-formed"
            } else {
                "hostile"
            }
        );
        if err > 0 {
            failed.push(format!("{err} {} request(s) failed", k.name()));
        }
        if k.well_formed() {
            well_formed_errors += err;
        }
    }
    for e in tally.errors.lock().unwrap().iter() {
        println!("  error: {e}");
    }
    failed.extend(died);
    println!("sandgraph serve on SIGTERM: {}", serve.stop());
    println!("sandgraph-infer serve on SIGTERM: {}", infer.stop());
    println!("well-formed errors: {well_formed_errors}");
    if failed.is_empty() {
        println!("verdict: flat after warm-up, no errors");
    } else {
        for f in &failed {
            println!("verdict: {f}");
        }
        println!("logs kept in {}", dir.keep().display());
        std::process::exit(1);
    }
}
