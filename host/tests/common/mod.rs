//! Shared test plumbing: a sandbox with a shared compile cache, manifests from YAML snippets,
//! guest lookup by name, and a loopback HTTP server that records what it was sent.
#![allow(dead_code)]

pub mod api_server;
pub mod http_head;
pub mod postgres;
pub mod power_cut;
pub mod replicas;
pub mod test_ca;

use std::io::{BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use sandgraph::sandbox::egress::{SecretStore, StaticResolver};
use sandgraph::sandbox::engine::Allocator;
use sandgraph::sandbox::manifest::{CallGrant, EffectiveGrant, Manifest, OperatorPolicy};
use sandgraph::sandbox::outcome::CallReport;
use sandgraph::sandbox::registry::LoadedTool;
use sandgraph::sandbox::{Sandbox, SandboxConfig};

/// Polls `cond` every 20 ms until it holds; fails the test after a minute naming `what`.
pub fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let start = std::time::Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Compiled components shared by every test process (entries are verified on load).
pub fn cache_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("sandgraph-component-cache")
}

pub fn hostile(name: &str) -> &'static str {
    sandgraph_test_artifacts::HOSTILE_GUESTS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, p)| *p)
        .unwrap_or_else(|| panic!("no hostile guest `{name}` in tests/guests/src/bin"))
}

pub struct Harness {
    pub sandbox: Sandbox,
    pub policy: OperatorPolicy,
}

impl Harness {
    pub fn new() -> Self {
        Self::with(StaticResolver::default(), SecretStore::default())
    }

    pub fn with(resolver: StaticResolver, secrets: SecretStore) -> Self {
        Self::with_roots(resolver, secrets, Vec::new())
    }

    /// Compiling components into `cache_dir` (`None`: in memory, so every load compiles and
    /// runs a component's start-up hook).
    pub fn with_cache(cache_dir: Option<PathBuf>) -> Self {
        Self::build(
            cache_dir,
            StaticResolver::default(),
            SecretStore::default(),
            Vec::new(),
        )
    }

    /// With CA certificates `https` egress trusts besides the public roots.
    pub fn with_roots(
        resolver: StaticResolver,
        secrets: SecretStore,
        extra_roots: sandgraph::sandbox::egress::ExtraRoots,
    ) -> Self {
        Self::build(Some(cache_dir()), resolver, secrets, extra_roots)
    }

    fn build(
        cache_dir: Option<PathBuf>,
        resolver: StaticResolver,
        secrets: SecretStore,
        extra_roots: sandgraph::sandbox::egress::ExtraRoots,
    ) -> Self {
        let sandbox = Sandbox::new(SandboxConfig {
            allocator: Allocator::Pooling,
            cache_dir,
            resolver: Arc::new(resolver),
            secrets,
            extra_roots,
        })
        .expect("sandbox");
        Harness {
            sandbox,
            policy: OperatorPolicy::default(),
        }
    }

    pub fn load(&self, path: &str) -> Arc<LoadedTool> {
        self.sandbox
            .registry()
            .load_file(path.as_ref())
            .unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    pub async fn call(
        &self,
        guest: &str,
        spec_yaml: &str,
        grant: CallGrant,
        input: &str,
    ) -> CallReport {
        let tool = self.load(hostile(guest));
        let manifest = manifest(guest, spec_yaml);
        let grant = EffectiveGrant::intersect(&self.policy, &manifest, &grant);
        self.sandbox.call(&tool, &grant, input).await
    }

    /// The grant of tool `name` under this harness's policy and a manifest with `spec_yaml`,
    /// with nothing asked for the call itself.
    pub fn grant(&self, name: &str, spec_yaml: &str) -> EffectiveGrant {
        EffectiveGrant::intersect(
            &self.policy,
            &manifest(name, spec_yaml),
            &CallGrant::default(),
        )
    }
}

/// A manifest whose `spec:` body is `spec_yaml` (indented YAML lines, or empty).
pub fn manifest(name: &str, spec_yaml: &str) -> Manifest {
    let mut text =
        format!("apiVersion: sandgraph.dev/v1\nkind: ToolManifest\nmetadata: {{ name: {name} }}\n");
    if !spec_yaml.trim().is_empty() {
        text.push_str("spec:\n");
        for line in spec_yaml.lines() {
            text.push_str("  ");
            text.push_str(line);
            text.push('\n');
        }
    }
    Manifest::parse("test.yaml", &text).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

/// One request the server received.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
}

/// An HTTP/1.1 server on 127.0.0.1:0, one thread per connection.
/// Routes: `/ok`, `/v1/*`, `/redirect?to=URL` (302), `/big` (2 MiB, Content-Length),
/// `/big-chunked` (2 MiB, chunked), `/slow` (answers only when the server is dropped),
/// `/echo-auth` (records headers, reflects Authorization in a response header).
pub struct TestServer {
    pub addr: SocketAddr,
    pub accepted: Arc<AtomicUsize>,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    stop: Arc<(Mutex<bool>, Condvar)>,
}

impl TestServer {
    pub fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        {
            let (accepted, seen, stop) = (accepted.clone(), seen.clone(), stop.clone());
            std::thread::spawn(move || {
                for conn in listener.incoming() {
                    let Ok(conn) = conn else { continue };
                    accepted.fetch_add(1, Ordering::SeqCst);
                    let (seen, stop) = (seen.clone(), stop.clone());
                    std::thread::spawn(move || {
                        let _ = serve(conn, &seen, &stop);
                    });
                }
            });
        }
        TestServer {
            addr,
            accepted,
            seen,
            stop,
        }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port())
    }

    pub fn connections(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        let (lock, cv) = &*self.stop;
        *lock.lock().unwrap() = true;
        cv.notify_all();
    }
}

fn serve(
    conn: TcpStream,
    seen: &Mutex<Vec<Seen>>,
    stop: &(Mutex<bool>, Condvar),
) -> std::io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut reader = BufReader::new(conn.try_clone()?);
    let Some(head) = http_head::read_request_head(&mut reader)? else {
        return Ok(());
    };
    let (method, target, headers) = (
        head.method.clone(),
        head.target.clone(),
        head.headers.clone(),
    );
    let mut body = vec![0; head.content_length().min(1 << 20)];
    reader.read_exact(&mut body)?;
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    seen.lock().unwrap().push(Seen {
        method: method.clone(),
        path: path.to_string(),
        headers: headers.clone(),
    });
    let mut out = conn;
    let respond =
        |out: &mut TcpStream, status: &str, extra: &str, body: &[u8]| -> std::io::Result<()> {
            write!(
                out,
                "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n{extra}\r\n",
                body.len()
            )?;
            out.write_all(body)
        };
    match path {
        "/ok" => respond(&mut out, "200 OK", "", b"hello"),
        p if p.starts_with("/v1/") => respond(&mut out, "200 OK", "", b"v1"),
        "/redirect" => {
            let to = query.strip_prefix("to=").unwrap_or("/");
            respond(&mut out, "302 Found", &format!("Location: {to}\r\n"), b"")
        }
        "/big" => respond(&mut out, "200 OK", "", &vec![b'x'; 2 << 20]),
        "/big-chunked" => {
            write!(
                out,
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
            )?;
            let chunk = vec![b'y'; 32 * 1024];
            for _ in 0..64 {
                write!(out, "{:x}\r\n", chunk.len())?;
                out.write_all(&chunk)?;
                out.write_all(b"\r\n")?;
            }
            out.write_all(b"0\r\n\r\n")
        }
        "/slow" => {
            let (lock, cv) = stop;
            let guard = lock.lock().unwrap();
            let _unused = cv
                .wait_timeout_while(guard, Duration::from_secs(30), |stopped| !*stopped)
                .unwrap();
            respond(&mut out, "200 OK", "", b"late")
        }
        // Reflects the Authorization header in the body, like an echo endpoint or an error
        // page quoting the request; `-chunked` sends it 3 bytes a chunk.
        "/echo-auth-body" | "/echo-auth-chunked" => {
            let auth = headers
                .iter()
                .find(|(k, _)| k == "authorization")
                .map(|(_, v)| v.clone())
                .unwrap_or_default();
            let body = format!("you sent {auth}; again: {auth}.");
            if path == "/echo-auth-body" {
                return respond(&mut out, "200 OK", "", body.as_bytes());
            }
            write!(
                out,
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
            )?;
            for chunk in body.as_bytes().chunks(3) {
                write!(out, "{:x}\r\n", chunk.len())?;
                out.write_all(chunk)?;
                out.write_all(b"\r\n")?;
                out.flush()?;
            }
            out.write_all(b"0\r\n\r\n")
        }
        "/echo-auth" => {
            let auth = headers
                .iter()
                .find(|(k, _)| k == "authorization")
                .map(|(_, v)| v.clone())
                .unwrap_or_default();
            respond(
                &mut out,
                "200 OK",
                &format!("X-Reflect: {auth}\r\n"),
                b"seen",
            )
        }
        _ => respond(&mut out, "404 Not Found", "", b"no such route"),
    }
}

/// The address a `sandgraph serve` child announces on its first stdout line
/// (`listening on ADDR`); takes the child's piped stdout.
pub fn listening_addr(child: &mut std::process::Child) -> SocketAddr {
    use std::io::BufRead;
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout is piped"))
        .read_line(&mut line)
        .unwrap();
    line.trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .parse()
        .unwrap()
}

/// `sandgraph-infer`, built by cargo beside this test's binary (built now if missing).
#[allow(dead_code)]
pub fn infer_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap();
    let bin = dir.join("sandgraph-infer");
    if !bin.is_file() {
        let status = std::process::Command::new(env!("CARGO"))
            .args([
                "build",
                "-p",
                "sandgraph-inference",
                "--bin",
                "sandgraph-infer",
            ])
            .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join(".."))
            .status()
            .unwrap();
        assert!(status.success(), "building sandgraph-infer failed");
    }
    bin
}
