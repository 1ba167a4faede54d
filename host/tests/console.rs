//! The run console (`/ui/`) in a real browser: `sandgraph serve` on a throwaway journal, driven by
//! Debian's headless Chromium through Selenium (`tests/console/browser.py`, pinned in
//! `.tools/browser` by scripts/setup.sh). Screenshots of every scene land in
//! `target/console-screenshots/` (the folder the README names; CI keeps it as an artifact).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::Value;

const ADMIN: &str = "test-only-admin-token-0001";
const READER: &str = "test-only-reader-token-0002";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn tool_wasm(name: &str) -> &'static str {
    sandgraph_test_artifacts::TOOLS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, p)| *p)
        .unwrap_or_else(|| panic!("no tool {name}"))
}

/// `sandgraph serve` with calc and json-query; logs to `log`; killed when dropped.
struct Serve {
    child: std::process::Child,
    addr: std::net::SocketAddr,
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve(tools: &Path, journal: &Path, log: &Path, models: &Path) -> Serve {
    let components = Path::new(tool_wasm("calc")).parent().unwrap().to_path_buf();
    let mut child = Command::new(env!("CARGO_BIN_EXE_sandgraph"))
        .arg("serve")
        .env("SANDGRAPH_LISTEN", "127.0.0.1:0")
        .env("SANDGRAPH_JOURNAL", journal)
        .env("SANDGRAPH_CACHE_DIR", common::cache_dir())
        .env("SANDGRAPH_ALLOW_PRIVATE", "127.0.0.1")
        .env("SANDGRAPH_TOOLS", tools)
        .env("SANDGRAPH_COMPONENTS", components)
        .env("SANDGRAPH_MODELS", models)
        .env(
            "SANDGRAPH_AUTH_TOKENS",
            repo().join("host/tests/fixtures/auth/test-only-tokens.yaml"),
        )
        // Every request is logged at debug: the token must appear in none of it.
        .env(
            "RUST_LOG",
            "debug,wasmtime=info,cranelift=info,hyper=info,h2=info",
        )
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap();
    let addr = common::listening_addr(&mut child);
    Serve { child, addr }
}

#[test]
fn the_console_in_headless_chromium_watches_inspects_cancels_and_replays_runs() {
    for (what, path) in [
        ("Debian's chromium", "/usr/bin/chromium"),
        ("Debian's chromium-driver", "/usr/bin/chromedriver"),
    ] {
        assert!(
            Path::new(path).exists(),
            "{what} ({path}) is missing: run scripts/setup.sh"
        );
    }
    let python = repo().join(".tools/browser/bin/python");
    assert!(
        python.exists(),
        "the Selenium venv .tools/browser is missing: run scripts/setup.sh"
    );
    let tools = tempfile::tempdir().unwrap();
    for (dir, name) in [
        ("tools", "calc"),
        ("tools", "json-query"),
        ("agents", "planner"),
    ] {
        std::fs::create_dir_all(tools.path().join(name)).unwrap();
        std::fs::copy(
            repo().join(format!("{dir}/{name}/{name}.sandgraph.yaml")),
            tools.path().join(format!("{name}/{name}.sandgraph.yaml")),
        )
        .unwrap();
    }
    let journal = tempfile::tempdir().unwrap();
    let log = journal.path().join("serve.log");
    // The planner agent's model: the embedded engine on the real model, on the CPU.
    let models = journal.path().join("models.yaml");
    std::fs::write(
        &models,
        format!(
            "models:\n  default: {{ provider: embedded, path: '{}', backend: cpu }}\n",
            repo()
                .join("models/SmolLM2-135M-Instruct.Q4_1.gguf")
                .display()
        ),
    )
    .unwrap();
    let server = serve(tools.path(), &journal.path().join("journal"), &log, &models);
    let shots = repo().join("target/console-screenshots");
    let _ = std::fs::remove_dir_all(&shots);
    std::fs::create_dir_all(&shots).unwrap();

    let out = Command::new(&python)
        .arg(repo().join("host/tests/console/browser.py"))
        .env("BASE", format!("http://{}", server.addr))
        .env("ADMIN", ADMIN)
        .env("READER", READER)
        .env("HTTP_GET_WASM", tool_wasm("http-get"))
        .env("SCREENSHOTS", &shots)
        // Selenium must use the given driver and never look for one online.
        .env("SE_OFFLINE", "true")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "browser.py failed (screenshots in target/console-screenshots):\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: Value = serde_json::from_str(stdout.trim()).unwrap();
    let render_ms = summary["big_graph_render_ms"].as_u64().unwrap();
    eprintln!(
        "graph picture fetched, parsed and drawn: 500 nodes {render_ms} ms, 2 nodes {} ms",
        summary["small_graph_render_ms"]
    );
    for scene in [
        "01-wrong-token",
        "04-run-succeeded",
        "15-runs",
        "16-retries",
        "17-awaiting-approval",
        "18-agent-model-call",
        "05-step-audit",
        "08-step-denied",
        "09-markup-as-text",
        "10-cancelled",
        "12-graph-500-nodes",
    ] {
        let png = std::fs::read(shots.join(format!("{scene}.png"))).unwrap();
        assert!(png.starts_with(b"\x89PNG"), "{scene} is a PNG");
    }
    drop(server);
    let logs = std::fs::read_to_string(&log).unwrap();
    assert!(logs.contains("/v1/runs"), "the log shows the requests");
    for token in [ADMIN, READER, "test-only-wrong-token-9999"] {
        assert!(!logs.contains(token), "a token was logged");
    }
}
