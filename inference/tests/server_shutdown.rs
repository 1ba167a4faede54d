//! `sandgraph-infer serve` on SIGTERM (a container stop, a pod eviction): it stops accepting at
//! once, lets a request in flight stream to its end, and exits 0; with a short grace period it
//! exits anyway instead of hanging on a long generation.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn model() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/SmolLM2-135M-Instruct.Q4_1.gguf")
}

fn start(grace: &str) -> (Child, SocketAddr) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_sandgraph-infer"))
        .arg("serve")
        .arg("--model")
        .arg(model())
        .args(["--backend", "cpu", "--listen", "127.0.0.1:0"])
        .args(["--context", "512", "--slots", "2", "--threads", "1"])
        .args(["--shutdown-grace", grace])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("sandgraph-infer serve starts");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr: SocketAddr = line
        .trim()
        .strip_prefix("listening on http://")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .parse()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while health(addr) != Some(200) {
        assert!(Instant::now() < deadline, "the model never loaded");
        std::thread::sleep(Duration::from_millis(50));
    }
    (child, addr)
}

/// `/health`'s status, or `None` when nothing accepts the connection.
fn health(addr: SocketAddr) -> Option<u16> {
    let mut s = TcpStream::connect(addr).ok()?;
    write!(
        s,
        "GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    out.get(9..12)?.parse().ok()
}

/// Sends a streamed greedy chat completion and returns the connection once the first bytes
/// of the answer arrived (the request is in flight).
fn streaming_request(addr: SocketAddr, max_tokens: u32) -> BufReader<TcpStream> {
    let body = serde_json::json!({
        "model": "smollm2",
        "messages": [{"role": "user", "content": "Write a long story about a lighthouse."}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": true,
    })
    .to_string();
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    write!(
        s,
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut r = BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    assert!(line.starts_with("HTTP/1.1 200"), "{line}");
    // Up to the first event.
    loop {
        line.clear();
        r.read_line(&mut line).unwrap();
        if line.starts_with("data: ") {
            break;
        }
    }
    r
}

fn sigterm(child: &Child) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

fn wait_exit(child: &mut Child, within: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the server did not exit within {within:?} of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn sigterm_lets_the_stream_in_flight_finish_then_exits_zero() {
    let (mut child, addr) = start("30s");
    let mut stream = streaming_request(addr, 48);
    sigterm(&child);
    // No new work is taken once the signal is handled: the listener is closed (or, in the
    // instant before, /health says 503).
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match health(addr) {
            None | Some(503) => break,
            Some(200) => {
                assert!(Instant::now() < deadline, "still healthy 5 s after SIGTERM");
                std::thread::sleep(Duration::from_millis(20));
            }
            Some(other) => panic!("/health answered {other} while draining"),
        }
    }
    // The request in flight streams to its end.
    let mut rest = String::new();
    stream.read_to_string(&mut rest).unwrap();
    assert!(rest.contains("data: [DONE]"), "the stream was cut: {rest}");
    assert!(rest.contains("\"finish_reason\":\"length\""), "{rest}");
    let status = wait_exit(&mut child, Duration::from_secs(30));
    assert!(status.success(), "exit status {status}");
}

#[test]
fn a_generation_longer_than_the_grace_period_does_not_hold_the_exit() {
    let (mut child, addr) = start("300ms");
    let _stream = streaming_request(addr, 400);
    let asked = Instant::now();
    sigterm(&child);
    wait_exit(&mut child, Duration::from_secs(10));
    assert!(
        asked.elapsed() < Duration::from_secs(10),
        "{:?}",
        asked.elapsed()
    );
}
