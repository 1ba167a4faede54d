//! The `sandgraph tool` command line as a user runs it: output JSON on stdout, typed error JSON
//! on stderr with a non-zero exit, and precise messages for bad manifests and flags.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use sandgraph_test_artifacts as artifacts;
use serde_json::{Value, json};

fn sandgraph(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sandgraph"))
        .args(args)
        .arg("--cache-dir")
        .arg(common::cache_dir())
        .env_remove("RUST_LOG")
        .output()
        .expect("run sandgraph")
}

fn manifest(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tools")
        .join(name)
        .join(format!("{name}.sandgraph.yaml"))
        .display()
        .to_string()
}

fn stdout_json(o: &Output) -> Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}): {}\nstderr: {}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    })
}

fn stderr_json(o: &Output) -> Value {
    serde_json::from_slice(&o.stderr).unwrap_or_else(|e| {
        panic!(
            "stderr is not JSON ({e}): {}",
            String::from_utf8_lossy(&o.stderr)
        )
    })
}

#[test]
fn call_prints_the_output_json() {
    let o = sandgraph(&[
        "tool",
        "call",
        artifacts::TOOL_CALC,
        "--manifest",
        &manifest("calc"),
        "--input",
        r#"{"expr":"1+2*3"}"#,
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(stdout_json(&o), json!({"value": 7.0}));
    assert!(o.stderr.is_empty());
}

#[test]
fn a_failing_call_prints_the_typed_error_on_stderr_and_exits_1() {
    let o = sandgraph(&[
        "tool",
        "call",
        artifacts::TOOL_CALC,
        "--manifest",
        &manifest("calc"),
        "--input",
        r#"{"expr":"1 + * 2"}"#,
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(o.stdout.is_empty());
    assert_eq!(
        stderr_json(&o),
        json!({"kind": "invalid_input", "message": "at `expr`: unexpected `*` at column 5; expected a number, `(`, `-` or a function"})
    );

    let o = sandgraph(&[
        "tool",
        "call",
        common::hostile("limits_infinite_loop"),
        "--manifest",
        &manifest("calc"),
        "--input",
        "{}",
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        stderr_json(&o),
        json!({"kind": "timeout", "limit_ms": 1000})
    );
}

#[test]
fn a_non_component_is_a_bad_component() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("core.wasm");
    std::fs::write(&path, b"\0asm\x01\0\0\0").unwrap();
    let o = sandgraph(&[
        "tool",
        "call",
        path.to_str().unwrap(),
        "--manifest",
        &manifest("calc"),
        "--input",
        "{}",
    ]);
    assert_eq!(o.status.code(), Some(1));
    let e = stderr_json(&o);
    assert_eq!(e["kind"], "bad_component");
    assert!(
        e["reason"]
            .as_str()
            .unwrap()
            .contains("core WebAssembly module"),
        "{e}"
    );
}

#[test]
fn a_bad_manifest_names_file_line_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.sandgraph.yaml");
    std::fs::write(
        &path,
        "apiVersion: sandgraph.dev/v1\nkind: ToolManifest\nmetadata: { name: x }\nspec:\n  limits: { memory: 64 MiB }\n",
    )
    .unwrap();
    let o = sandgraph(&[
        "tool",
        "call",
        artifacts::TOOL_CALC,
        "--manifest",
        path.to_str().unwrap(),
        "--input",
        "{}",
    ]);
    assert_eq!(o.status.code(), Some(2));
    let e = stderr_json(&o);
    assert_eq!(e["kind"], "usage");
    let msg = e["message"].as_str().unwrap();
    assert!(msg.starts_with(&format!("{}:5:", path.display())), "{msg}");
    assert!(msg.contains("invalid size `64 MiB`"), "{msg}");
}

/// `tool call` of calc with `{}` and the operator flags `extra`.
fn call_calc_with(extra: &[&str]) -> Output {
    let manifest = manifest("calc");
    let mut args = vec![
        "tool",
        "call",
        artifacts::TOOL_CALC,
        "--manifest",
        &manifest,
        "--input",
        "{}",
    ];
    args.extend_from_slice(extra);
    sandgraph(&args)
}

#[test]
fn a_malformed_secret_flag_is_a_usage_error() {
    let o = call_calc_with(&["--secret", "NOVALUE"]);
    assert_eq!(o.status.code(), Some(2));
    assert_eq!(
        stderr_json(&o),
        json!({"kind": "usage", "message": "--secret `NOVALUE`: write NAME=VALUE"})
    );
}

#[test]
fn an_egress_ca_file_without_certificates_is_a_usage_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("corp-ca.pem");
    std::fs::write(&ca, "not a certificate\n").unwrap();
    let o = call_calc_with(&["--egress-ca", ca.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    let e = stderr_json(&o);
    assert_eq!(e["kind"], "usage");
    let message = e["message"].as_str().unwrap();
    assert!(message.contains("corp-ca.pem"), "{message}");
    assert!(message.contains("no PEM `CERTIFICATE` block"), "{message}");
}

#[test]
fn a_workspace_manifest_without_workspace_flag_is_a_usage_error() {
    let o = sandgraph(&[
        "tool",
        "call",
        artifacts::TOOL_WORKSPACE_FS,
        "--manifest",
        &manifest("workspace-fs"),
        "--input",
        r#"{"op":"list"}"#,
    ]);
    assert_eq!(o.status.code(), Some(2));
    let e = stderr_json(&o);
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("pass --workspace DIR"),
        "{e}"
    );
}

#[test]
fn inspect_shows_world_imports_exports_and_info() {
    let o = sandgraph(&["tool", "inspect", artifacts::TOOL_CALC]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v = stdout_json(&o);
    assert_eq!(v["world"], "sandgraph:tool/tool@0.1.0");
    assert_eq!(v["preinitialized"], true);
    assert_eq!(v["info"]["name"], "calc");
    assert_eq!(v["info"]["input_schema"]["type"], "object");
    let exports: Vec<&str> = v["exports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_str().unwrap())
        .collect();
    assert!(
        exports.contains(&"info") && exports.contains(&"invoke"),
        "{exports:?}"
    );
    let imports = v["imports"].as_array().unwrap();
    assert!(
        imports
            .iter()
            .all(|i| !i.as_str().unwrap().starts_with("wasi:sockets")),
        "calc should not import sockets: {imports:?}"
    );
    assert!(v["digest"].as_str().unwrap().starts_with("sha256:"));
}
