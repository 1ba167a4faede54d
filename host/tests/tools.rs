//! The five example tools, run through the sandbox with their own manifests: the positive path
//! (and one refusal each where the manifest should cause one).

mod common;

use std::path::{Path, PathBuf};

use common::{Harness, TestServer};
use sandgraph::sandbox::manifest::{CallGrant, EffectiveGrant, Manifest, WorkspaceMode};
use sandgraph::sandbox::outcome::{CallError, CallReport, Capability};
use sandgraph_test_artifacts as artifacts;
use serde_json::{Value, json};

fn tool_manifest(name: &str) -> Manifest {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tools")
        .join(name)
        .join(format!("{name}.sandgraph.yaml"));
    Manifest::from_file(&path).unwrap_or_else(|e| panic!("{e}"))
}

async fn run(
    h: &Harness,
    component: &str,
    manifest: &Manifest,
    grant: CallGrant,
    input: Value,
) -> CallReport {
    let tool = h.load(component);
    let grant = EffectiveGrant::intersect(&h.policy, manifest, &grant);
    h.sandbox.call(&tool, &grant, &input.to_string()).await
}

fn json_of(r: &CallReport) -> Value {
    let out = r
        .result
        .as_ref()
        .unwrap_or_else(|e| panic!("call failed: {e:?}\nstderr: {}", r.stderr));
    serde_json::from_str(out).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn calc() {
    let h = Harness::new();
    let m = tool_manifest("calc");
    let r = run(
        &h,
        artifacts::TOOL_CALC,
        &m,
        CallGrant::default(),
        json!({"expr": "2 * (3 + 4) ^ 2"}),
    )
    .await;
    assert_eq!(json_of(&r), json!({"value": 98.0}));
    assert_eq!(r.audit.outcome, "ok");
    assert!(r.audit.component_digest.starts_with("sha256:"));
    let r = run(
        &h,
        artifacts::TOOL_CALC,
        &m,
        CallGrant::default(),
        json!({"expr": "1 + * 2"}),
    )
    .await;
    assert_eq!(
        r.result,
        Err(CallError::InvalidInput {
            message:
                "at `expr`: unexpected `*` at column 5; expected a number, `(`, `-` or a function"
                    .into()
        })
    );
    let tool = h.load(artifacts::TOOL_CALC);
    assert_eq!(h.sandbox.info(&tool).await.unwrap().name, "calc");
}

#[tokio::test(flavor = "multi_thread")]
async fn json_query() {
    let h = Harness::new();
    let m = tool_manifest("json-query");
    let input = json!({"document": {"a": [{"b": 1}, {"b": 2}]}, "path": "$.a[*].b"});
    let r = run(
        &h,
        artifacts::TOOL_JSON_QUERY,
        &m,
        CallGrant::default(),
        input,
    )
    .await;
    let out = json_of(&r);
    assert_eq!(out["count"], 2);
    assert_eq!(out["matches"][1]["value"], 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn text_stats() {
    let h = Harness::new();
    let m = tool_manifest("text-stats");
    let input =
        json!({"text": "Sandboxes keep tools honest. Every call is isolated. Tools are tools."});
    let r = run(
        &h,
        artifacts::TOOL_TEXT_STATS,
        &m,
        CallGrant::default(),
        input,
    )
    .await;
    let out = json_of(&r);
    assert_eq!(out["words"], 11);
    assert_eq!(out["top_terms"][0], json!({"term": "tools", "count": 3}));
}

#[tokio::test(flavor = "multi_thread")]
async fn http_get_against_a_local_server() {
    let server = TestServer::start();
    let mut h = Harness::new();
    let mut m = tool_manifest("http-get");
    // The manifest's local rule names port 8000; the test server has whatever port it got.
    let local = m
        .spec
        .egress
        .iter_mut()
        .find(|r| r.host == "127.0.0.1")
        .expect("local rule");
    local.port = Some(server.port());
    let input = json!({"url": server.url("/ok")});

    // Without an operator allow-list entry, loopback stays unreachable.
    let r = run(
        &h,
        artifacts::TOOL_HTTP_GET,
        &m,
        CallGrant::default(),
        input.clone(),
    )
    .await;
    match &r.result {
        Err(CallError::Denied {
            capability: Capability::Egress,
            target,
            missing_rule,
        }) => {
            assert_eq!(target, &server.url("/ok"));
            assert!(
                missing_rule.contains("127.0.0.1 (loopback)"),
                "{missing_rule}"
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(server.connections(), 0);

    h.policy.allow_private = vec!["127.0.0.1".parse().unwrap()];
    let r = run(
        &h,
        artifacts::TOOL_HTTP_GET,
        &m,
        CallGrant::default(),
        input,
    )
    .await;
    let out = json_of(&r);
    assert_eq!(out["status"], 200);
    assert_eq!(out["body"], "hello");
    assert_eq!(r.audit.egress.len(), 1);
    assert_eq!(r.audit.egress[0].bytes_in, 5);
    assert_eq!(server.connections(), 1);

    // POST is not among the manifest's methods.
    let r = run(
        &h,
        artifacts::TOOL_HTTP_GET,
        &m,
        CallGrant::default(),
        json!({"url": server.url("/ok"), "method": "POST"}),
    )
    .await;
    assert_eq!(
        r.result,
        Err(CallError::InvalidInput {
            message: "at `method`: string \"POST\" is not one of [\"GET\",\"HEAD\"]".into()
        })
    );
}

fn workspace() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let ws = dir.path().join("ws");
    std::fs::create_dir(&ws).unwrap();
    std::fs::write(ws.join("notes.txt"), "first line\n").unwrap();
    (dir, ws)
}

#[tokio::test(flavor = "multi_thread")]
async fn workspace_fs_rw_and_ro() {
    let h = Harness::new();
    let m = tool_manifest("workspace-fs");
    let (_dir, ws) = workspace();
    let grant = |mode| CallGrant {
        workspace: Some((ws.clone(), mode)),
        ..CallGrant::default()
    };

    let r = run(
        &h,
        artifacts::TOOL_WORKSPACE_FS,
        &m,
        grant(WorkspaceMode::Rw),
        json!({"op": "read", "path": "notes.txt"}),
    )
    .await;
    assert_eq!(json_of(&r)["content"], "first line\n");
    let r = run(
        &h,
        artifacts::TOOL_WORKSPACE_FS,
        &m,
        grant(WorkspaceMode::Rw),
        json!({"op": "write", "path": "out/result.txt", "content": "42", "create_dirs": true}),
    )
    .await;
    assert_eq!(json_of(&r)["bytes_written"], 2);
    assert_eq!(
        std::fs::read_to_string(ws.join("out/result.txt")).unwrap(),
        "42"
    );

    // The call grants only ro: reads work, writes are refused and nothing is written.
    let r = run(
        &h,
        artifacts::TOOL_WORKSPACE_FS,
        &m,
        grant(WorkspaceMode::Ro),
        json!({"op": "read", "path": "out/result.txt"}),
    )
    .await;
    assert_eq!(json_of(&r)["content"], "42");
    let r = run(
        &h,
        artifacts::TOOL_WORKSPACE_FS,
        &m,
        grant(WorkspaceMode::Ro),
        json!({"op": "write", "path": "ro.txt", "content": "x"}),
    )
    .await;
    match &r.result {
        Err(CallError::Denied {
            capability: Capability::Filesystem,
            target,
            missing_rule,
        }) => {
            assert_eq!(target, "/workspace/ro.txt");
            assert!(missing_rule.contains("not permitted"), "{missing_rule}");
        }
        other => panic!("write in a ro workspace: {other:?}"),
    }
    assert!(!ws.join("ro.txt").exists());
}
