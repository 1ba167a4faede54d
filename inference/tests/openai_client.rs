//! The official OpenAI Python client against `sandgraph-infer serve` on the real model: chat,
//! streaming, json_schema output and a forced tool call (`openai_client.py`). Needs the model
//! and `pip install openai` (both from scripts/setup.sh); a missing one fails, it never skips.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn the_openai_python_client_works_against_the_server() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let model = std::env::var_os("SANDGRAPH_MODEL")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("../models/SmolLM2-135M-Instruct.Q4_1.gguf"));
    assert!(
        model.is_file(),
        "model file {} is missing: run scripts/setup.sh",
        model.display()
    );
    let has_client = Command::new("python3")
        .args(["-c", "import openai"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        has_client,
        "the openai Python package is missing: run scripts/setup.sh (pip install openai)"
    );
    let child = Command::new(env!("CARGO_BIN_EXE_sandgraph-infer"))
        .args(["serve", "--backend", "cpu", "--listen", "127.0.0.1:0"])
        .args(["--slots", "2", "--context", "1024", "--threads", "2"])
        .arg("--model")
        .arg(&model)
        .env("SANDGRAPH_INFER_API_KEY", "sk-sandgraph-test")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting sandgraph-infer serve");
    let mut server = KillOnDrop(child);
    let mut line = String::new();
    BufReader::new(server.0.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let base = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line from serve: {line:?}"))
        .to_owned();
    let out = Command::new("python3")
        .arg(root.join("tests/openai_client.py"))
        .arg(&base)
        .output()
        .expect("running python3");
    assert!(
        out.status.success(),
        "openai_client.py failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    drop(server);
}
