//! The `sandgraph-infer` binary on a generated tiny model: inspect, generate, and the errors a
//! user sees for a missing model, an unknown model name and a bad backend name.

use std::path::PathBuf;
use std::process::Command;

use sandgraph_inference::gguf::GgmlType;
use sandgraph_inference::testutil::{TinySpec, tiny_model_bytes};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_sandgraph-infer"))
}

fn tiny_file(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sandgraph-infer-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, tiny_model_bytes(&TinySpec::new(3, GgmlType::Q4_1))).unwrap();
    p
}

#[test]
fn inspect_lists_metadata_and_tensors() {
    let p = tiny_file("inspect.gguf");
    let out = bin().arg("inspect").arg(&p).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s = String::from_utf8_lossy(&out.stdout);
    assert!(s.contains("general.architecture = \"llama\""), "{s}");
    assert!(
        s.contains("blk.1.ffn_down.weight") && s.contains("Q4_1"),
        "{s}"
    );
    assert!(s.contains("n_layers: 2"), "{s}");
}

#[test]
fn generate_runs_greedily_on_the_cpu_backend() {
    let p = tiny_file("generate.gguf");
    let run = || {
        bin()
            .args([
                "generate",
                "--backend",
                "cpu",
                "--temperature",
                "0",
                "--max-tokens",
                "6",
            ])
            .args(["--chat", "--system", "be brief", "--prompt", "hello"])
            .arg("--model")
            .arg(&p)
            .output()
            .unwrap()
    };
    let a = run();
    assert!(a.status.success(), "{}", String::from_utf8_lossy(&a.stderr));
    assert!(String::from_utf8_lossy(&a.stderr).contains("backend: cpu"));
    assert_eq!(a.stdout, run().stdout, "greedy decoding is deterministic");
}

#[test]
fn user_errors_are_explained() {
    let out = bin()
        .args([
            "generate",
            "--backend",
            "cpu",
            "--prompt",
            "x",
            "--model",
            "/nonexistent/m.gguf",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(
        e.contains("/nonexistent/m.gguf") && e.contains("pull smollm2-135m"),
        "{e}"
    );

    let out = bin().args(["pull", "gpt-17"]).output().unwrap();
    assert!(!out.status.success());
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(
        e.contains("unknown model 'gpt-17'") && e.contains("smollm2-135m"),
        "{e}"
    );

    let out = bin()
        .args(["generate", "--backend", "tpu", "--prompt", "x"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(e.contains("unknown backend 'tpu'"), "{e}");
}
