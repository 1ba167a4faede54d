//! Schemathesis (property-based API testing from PyPI) against `inference/openapi.yaml`, on a
//! real `sandgraph-infer serve` (SmolLM2-135M, CPU backend, a small context so generations stay
//! short) bound to 127.0.0.1: every check it has over every documented operation, from a fixed
//! seed. The server must still be alive and `/health` 200 afterwards. `scripts/setup.sh`
//! installs the pinned schemathesis into `.tools/venv`; settings and their reasons are in
//! `inference/tests/schemathesis/server.toml`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn schemathesis() -> PathBuf {
    let path = std::env::var_os("SANDGRAPH_SCHEMATHESIS")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join(".tools/venv/bin/schemathesis"));
    assert!(
        path.exists(),
        "schemathesis is not installed at {}; run scripts/setup.sh (it installs the pinned \
         version into .tools/venv), or point SANDGRAPH_SCHEMATHESIS at one",
        path.display()
    );
    path
}

/// One GET; returns the status (the request asks the server to close the connection).
fn get_status(addr: SocketAddr, path: &str) -> u16 {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8_lossy(&raw);
    text.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {text:?}"))
}

struct Serve {
    child: Child,
    addr: SocketAddr,
}

impl Serve {
    fn start() -> Serve {
        let mut child = Command::new(env!("CARGO_BIN_EXE_sandgraph-infer"))
            .arg("serve")
            .arg("--model")
            .arg(repo().join("models/SmolLM2-135M-Instruct.Q4_1.gguf"))
            .args(["--backend", "cpu", "--listen", "127.0.0.1:0"])
            // A small context bounds every generation (max_tokens defaults to what is left).
            .args(["--context", "96", "--slots", "2", "--threads", "1"])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("sandgraph-infer serve starts");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr = line
            .trim()
            .strip_prefix("listening on http://")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .parse()
            .unwrap();
        Serve { child, addr }
    }

    /// Waits (on the server's own readiness signal, with a deadline) until the model is loaded.
    fn wait_ready(&mut self) {
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        loop {
            assert!(
                self.child.try_wait().unwrap().is_none(),
                "sandgraph-infer serve exited while loading the model"
            );
            match get_status(self.addr, "/health") {
                200 => return,
                503 if std::time::Instant::now() < deadline => {
                    std::thread::yield_now();
                    // /health answers at once; this only paces the poll.
                    std::thread::park_timeout(Duration::from_millis(50));
                }
                other => panic!("/health answered {other} while loading"),
            }
        }
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn schemathesis_finds_no_server_error_and_no_response_that_breaks_the_document() {
    let st = schemathesis();
    let mut serve = Serve::start();
    serve.wait_ready();
    let addr = serve.addr;

    let out = Command::new(st)
        .arg("--no-color")
        .arg("--config-file")
        .arg(repo().join("inference/tests/schemathesis/server.toml"))
        .arg("run")
        .arg(repo().join("inference/openapi.yaml"))
        .arg("--url")
        .arg(format!("http://{addr}"))
        .arg("--checks")
        .arg("all")
        // `all` includes a 10 s response-time check; on two shared cores a generation can take
        // longer, and timings belong in benchmarks, so the bound is the request timeout.
        .args(["--max-response-time", "30"])
        .current_dir(repo())
        .output()
        .expect("schemathesis runs");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        serve.child.try_wait().unwrap().is_none(),
        "sandgraph-infer serve died during the campaign:\n{report}"
    );
    assert!(
        out.status.success(),
        "schemathesis found problems:\n{report}"
    );
    assert!(
        report.contains("Test cases:") && report.contains("passed"),
        "schemathesis ran no test case:\n{report}"
    );
    assert_eq!(get_status(addr, "/health"), 200);
    println!("{report}");
}
