//! Schemathesis (property-based API testing from PyPI) against `docs/openapi.yaml`, on a real
//! `sandgraph serve` bound to 127.0.0.1: every check it has (no 5xx, statuses, content types,
//! response schemas and headers, schema-valid data accepted, invalid data rejected, auth not
//! ignored, unsupported methods refused...) over every documented operation, from a fixed seed.
//! The server must still be alive and serving afterwards. `scripts/setup.sh` installs the pinned
//! schemathesis into `.tools/venv`; settings and their reasons are in
//! `host/tests/schemathesis/host-api.toml`.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const TOKEN: &str = "schemathesis-token-0123456789";

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

/// One request; returns the status and body (the server closes each connection).
fn call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    content_type: &str,
    body: &[u8],
) -> (u16, String) {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nAuthorization: Bearer {TOKEN}\r\n\
         Content-Type: {content_type}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .unwrap();
    s.write_all(body).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {text:?}"));
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

struct Serve {
    child: Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Serve {
    fn start() -> Serve {
        let dir = tempfile::tempdir().unwrap();
        let tokens = dir.path().join("tokens.yaml");
        std::fs::write(
            &tokens,
            format!(
                "tokens:\n  - subject: schemathesis\n    token: \"{TOKEN}\"\n    scopes: [graphs:write, tools:write, runs:write, runs:read]\n"
            ),
        )
        .unwrap();
        let components = Path::new(sandgraph_test_artifacts::TOOL_CALC)
            .parent()
            .unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_sandgraph"))
            .arg("serve")
            .env("SANDGRAPH_LISTEN", "127.0.0.1:0")
            .env("SANDGRAPH_JOURNAL", dir.path().join("journal"))
            .env("SANDGRAPH_AUTH_TOKENS", &tokens)
            .env("SANDGRAPH_TOOLS", repo().join("tools"))
            .env("SANDGRAPH_COMPONENTS", components)
            .env("SANDGRAPH_CACHE_DIR", common::cache_dir())
            // The campaign sends thousands of requests from one subject.
            .env("SANDGRAPH_RATE_LIMIT", "100000")
            .env("SANDGRAPH_RATE_BURST", "100000")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("sandgraph serve starts");
        let addr = common::listening_addr(&mut child);
        Serve {
            child,
            addr,
            _dir: dir,
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
    let addr = serve.addr;
    // A stored graph and a finished run, so operations on `{name}` and `{id}` reach real data.
    let graph = std::fs::read(repo().join("graphs/conditional-loop.yaml")).unwrap();
    let (status, body) = call(addr, "POST", "/v1/graphs", "application/yaml", &graph);
    assert_eq!(status, 201, "{body}");
    let (status, body) = call(
        addr,
        "POST",
        "/v1/runs?wait=true",
        "application/json",
        br#"{"graph": "conditional-loop", "input": {"start": 1, "limit": 4}}"#,
    );
    assert_eq!(status, 200, "{body}");
    let run: serde_json::Value = serde_json::from_str(&body).unwrap();
    let run = run["run"].as_str().unwrap().to_owned();

    let out = Command::new(st)
        .arg("--no-color")
        .arg("--config-file")
        .arg(repo().join("host/tests/schemathesis/host-api.toml"))
        .arg("run")
        .arg(repo().join("docs/openapi.yaml"))
        .arg("--url")
        .arg(format!("http://{addr}"))
        .arg("--header")
        .arg(format!("Authorization: Bearer {TOKEN}"))
        .arg("--checks")
        .arg("all")
        // `all` includes a 10 s response-time check; on two shared cores a generation can take
        // longer, and timings belong in benchmarks, so the bound is the request timeout.
        .args(["--max-response-time", "30"])
        .env("SANDGRAPH_TEST_RUN", &run)
        .env("SANDGRAPH_TEST_GRAPH", "conditional-loop")
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
        "sandgraph serve died during the campaign:\n{report}"
    );
    assert!(
        out.status.success(),
        "schemathesis found problems:\n{report}"
    );
    assert!(
        report.contains("Test cases:") && report.contains("passed"),
        "schemathesis ran no test case:\n{report}"
    );
    let (status, _) = call(addr, "GET", "/healthz", "application/json", b"");
    assert_eq!(status, 200);
    println!(
        "{}",
        report
            .lines()
            .rev()
            .take(12)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n")
    );
}
