//! Whatever a client sends to `sandgraph serve`: the bytes go as they are over a loopback
//! connection to the real server (hyper's parser, the head limit, routing, bearer tokens and
//! JWTs, `Last-Event-ID`, query strings, JSON and YAML bodies), which runs in this process on a
//! current-thread runtime with a throwaway journal. Every request must be answered (or the
//! connection closed) promptly, never with a 5xx, and the server must keep serving.
//!
//! The journal holds one finished run, `5a5a…5a`, so event streams and run reads have
//! something to find; the tokens file grants `fuzz-token-000000000001` every scope, and JWTs
//! are checked against the test JWKS (host/tests/fixtures/auth).
#![no_main]

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::Path;
use std::sync::LazyLock;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use sandgraph::api::{self, Config};
use sandgraph::journal::{Durability, Event, Journal, RunId, RunStatus};

/// The fixture run's id.
pub const RUN: RunId = RunId([0x5a; 16]);
const TOKEN: &str = "fuzz-token-000000000001";

static SERVER: LazyLock<SocketAddr> = LazyLock::new(start);

fn start() -> SocketAddr {
    let dir = tempfile::tempdir().expect("tempdir").keep();
    let journal = dir.join("journal");
    {
        let j = Journal::open(&journal).expect("journal");
        let graph = j.put_payload(b"{}").unwrap();
        let input = j.put_payload(b"{}").unwrap();
        let created = Event::RunCreated {
            graph_name: "fuzz".into(),
            graph_digest: "00".repeat(32),
            graph,
            components: Vec::new(),
            input,
        };
        j.append(RUN, &created, Durability::Durable).unwrap();
        let finished = Event::RunFinished {
            status: RunStatus::Failed,
            output: None,
            error: Some("a fixture for the fuzz target".into()),
        };
        j.append(RUN, &finished, Durability::Durable).unwrap();
    }
    let tokens = dir.join("tokens.yaml");
    std::fs::write(
        &tokens,
        format!(
            "tokens:\n  - subject: fuzz\n    token: \"{TOKEN}\"\n    scopes: [graphs:write, tools:write, runs:write, runs:read]\n"
        ),
    )
    .unwrap();
    let auth = Path::new(env!("CARGO_MANIFEST_DIR")).join("../host/tests/fixtures/auth");
    let mut c = Config::with_journal(journal);
    c.listen = "127.0.0.1:0".parse().unwrap();
    c.auth_tokens = Some(tokens);
    c.auth_jwks = Some(auth.join("test-only-jwks.json"));
    c.auth_issuer = Some("https://issuer.test".into());
    c.auth_audience = Some("sandgraph-api".into());
    c.auth_reload_interval = Duration::ZERO;
    c.header_timeout = Duration::from_secs(2);
    c.body_timeout = Duration::from_secs(2);
    c.sse_heartbeat = Duration::from_millis(200);
    c.rate_limit = 1e9;
    c.rate_burst = 1_000_000_000;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let running = api::start(c).await.expect("the server starts");
            tx.send(running.addr).unwrap();
            running.stopped().await;
        });
    });
    rx.recv_timeout(Duration::from_secs(60))
        .expect("server address")
}

fuzz_target!(|data: &[u8]| {
    let addr = *SERVER;
    let mut s = TcpStream::connect(addr).expect("the server accepts connections");
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    // The server may answer and close before reading everything (431, 413, a bad head).
    let _ = s.write_all(data);
    let _ = s.shutdown(Shutdown::Write);
    let mut answer = Vec::new();
    match s.read_to_end(&mut answer) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        Err(e) => panic!("no answer within 15 s ({e}); {} bytes so far", answer.len()),
    }
    // The first response (a body may quote the request, so later text is not searched).
    if let Some(status) = answer
        .strip_prefix(b"HTTP/1.1 ")
        .and_then(|r| std::str::from_utf8(r.get(..3)?).ok())
        .and_then(|s| s.parse::<u16>().ok())
    {
        assert!(
            !(500..600).contains(&status) || status == 503,
            "answered {status}:\n{}",
            String::from_utf8_lossy(&answer[..answer.len().min(2000)])
        );
    }
});
