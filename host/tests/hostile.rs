//! The hostile-guest suite: every program in `tests/guests/src/bin` attacks the sandbox and
//! each case asserts the exact typed outcome. Negative cases are data (a manifest, an input and
//! the expected error); `every_hostile_guest_has_a_case` fails when a guest has no case.

mod common;

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use common::{Harness, TestServer, hostile};
use sandgraph::sandbox::egress::{SecretStore, StaticResolver};
use sandgraph::sandbox::manifest::{CallGrant, WorkspaceMode};
use sandgraph::sandbox::outcome::{CallError, Capability};
use sandgraph::sandbox::registry::{CacheStatus, Registry};

/// What a case must produce.
#[derive(Debug)]
enum Expect {
    Exact(CallError),
    Denied {
        capability: Capability,
        target: String,
        rule_contains: &'static str,
    },
    TrapContains(&'static str),
    /// The tool's own `denied` (the host refused nothing), its message containing this.
    ToolDenied(&'static str),
}

fn check(case: &str, got: &Result<String, CallError>, want: &Expect) {
    match (want, got) {
        (Expect::Exact(e), Err(g)) if e == g => {}
        (
            Expect::Denied {
                capability,
                target,
                rule_contains,
            },
            Err(CallError::Denied {
                capability: c,
                target: t,
                missing_rule,
            }),
        ) if c == capability && t == target && missing_rule.contains(rule_contains) => {}
        (Expect::TrapContains(s), Err(CallError::Trap { message })) if message.contains(s) => {}
        (Expect::ToolDenied(s), Err(CallError::ToolDenied { message })) if message.contains(s) => {}
        _ => panic!("case {case}: expected {want:?}, got {got:?}"),
    }
}

fn denied(capability: Capability, target: &str, rule_contains: &'static str) -> Expect {
    Expect::Denied {
        capability,
        target: target.to_string(),
        rule_contains,
    }
}

/// Every guest program some case below runs. Adding a guest without a case fails the build's tests.
const COVERED: &[&str] = &[
    "component_wrong_world",
    "egress_fetch",
    // Its case is in tests/hostile_egress.rs (a secret stored, then read back in one call).
    "egress_fetch_twice",
    "egress_follow_redirect",
    "env_read",
    // Test agents (the sandgraph:agent world); their cases are in tests/agents.rs.
    "agent_tool_and_model",
    "agent_ungranted",
    "agent_bad_output",
    // Cases for these are in tests/hostile_limits.rs.
    "exit_code",
    "exit_forged_denial",
    "fs_fill",
    "fs_many_files",
    "fs_symlink",
    "limits_blocking_calls",
    "limits_deep_output",
    "limits_header_sets",
    "limits_many_requests",
    "limits_unsent_bodies",
    "output_schema_mismatch",
    "random_huge",
    "fs_read",
    "fs_write",
    // Its case is in tests/journal.rs (record, then replay byte for byte).
    "journal_clock_random",
    // Its case is in tests/replay_bodies.rs (run and replay a body of every shape).
    "journal_post_body",
    "limits_deep_recursion",
    "limits_huge_output",
    "limits_infinite_loop",
    "limits_log_flood",
    "limits_memory_bomb",
    "limits_panic",
    "limits_shadow_stack_overflow",
    "sockets_tcp_connect",
    "sockets_udp_send",
    "state_isolation",
    "preinit_import",
    "preinit_spin",
];

#[test]
fn every_hostile_guest_has_a_case() {
    let built: BTreeSet<&str> = sandgraph_test_artifacts::HOSTILE_GUESTS
        .iter()
        .map(|(n, _)| *n)
        .collect();
    let covered: BTreeSet<&str> = COVERED.iter().copied().collect();
    let missing: Vec<_> = built.difference(&covered).collect();
    assert!(
        missing.is_empty(),
        "hostile guests without a host test case: {missing:?}"
    );
    let stale: Vec<_> = covered.difference(&built).collect();
    assert!(
        stale.is_empty(),
        "cases name guests that no longer exist: {stale:?}"
    );
}

// ---------------------------------------------------------------- limits

struct LimitCase {
    name: &'static str,
    guest: &'static str,
    spec: &'static str,
    expect: Expect,
}

#[tokio::test(flavor = "multi_thread")]
async fn limits_cases() {
    let h = Harness::new();
    let cases = [
        LimitCase {
            name: "infinite loop hits the CPU deadline",
            guest: "limits_infinite_loop",
            spec: "limits: { timeout: 300ms }",
            expect: Expect::Exact(CallError::Timeout { limit_ms: 300 }),
        },
        LimitCase {
            name: "deep recursion overflows the wasm stack",
            guest: "limits_deep_recursion",
            spec: "",
            expect: Expect::TrapContains("call stack exhausted"),
        },
        LimitCase {
            name: "shadow-stack overflow runs off linear memory",
            guest: "limits_shadow_stack_overflow",
            spec: "",
            expect: Expect::TrapContains("out of bounds memory access"),
        },
        LimitCase {
            name: "memory bomb stops at the memory limit",
            guest: "limits_memory_bomb",
            spec: "limits: { memory: 16MiB }",
            expect: Expect::Exact(CallError::MemoryLimitExceeded {
                limit_bytes: 16 << 20,
            }),
        },
        LimitCase {
            name: "huge output is refused",
            guest: "limits_huge_output",
            spec: "limits: { max_output: 1MiB }",
            expect: Expect::Exact(CallError::OutputTooLarge {
                limit_bytes: 1 << 20,
            }),
        },
        LimitCase {
            name: "a panic is a trap, not a host crash",
            guest: "limits_panic",
            spec: "",
            expect: Expect::TrapContains("unreachable"),
        },
    ];
    for c in &cases {
        let r = h.call(c.guest, c.spec, CallGrant::default(), "{}").await;
        check(c.name, &r.result, &c.expect);
        assert_eq!(
            r.audit.outcome,
            r.result.as_ref().unwrap_err().kind(),
            "{}",
            c.name
        );
    }
}

/// Nothing of one call reaches the next: a guest that writes a global, its static data, its
/// heap and freshly grown pages, then reports what it found of an earlier call, must find
/// nothing, call after call, on the pooling allocator that reuses the same instance slot. The
/// guest is pre-initialised: its start-up hook counted itself once before the snapshot, so
/// every call finds that count (the snapshot is used) and never one more.
#[tokio::test(flavor = "current_thread")]
async fn no_state_survives_from_one_call_to_the_next() {
    let h = Harness::new();
    assert!(h.load(hostile("state_isolation")).preinitialized);
    let fresh = r#"{"calls_before":1,"data_changed":false,"bss_dirty":false,"heap_marked":false,"grown_dirty":false,"#;
    let mut pages = None;
    for call in 0..5 {
        let r = h
            .call("state_isolation", "", CallGrant::default(), "{}")
            .await;
        let out = r.result.unwrap_or_else(|e| panic!("call {call}: {e:?}"));
        assert!(
            out.starts_with(fresh),
            "call {call} saw state left by an earlier call: {out}"
        );
        // The same memory size every time: grown pages are not kept either.
        let size = out.rsplit(':').next().map(str::to_owned);
        assert_eq!(
            *pages.get_or_insert(size.clone()),
            size,
            "call {call}: {out}"
        );
    }
}

/// A start-up hook that calls an import, or never returns, is refused: the component is
/// registered without a snapshot (the hook stops at its fuel limit) and its calls work.
#[tokio::test(flavor = "current_thread")]
async fn a_start_up_hook_that_reaches_out_or_spins_is_run_without_a_snapshot() {
    // No component cache: every load runs the hook.
    let h = Harness::with_cache(None);
    for guest in ["preinit_import", "preinit_spin"] {
        let started = std::time::Instant::now();
        let tool = h.load(hostile(guest));
        assert!(!tool.preinitialized, "{guest}");
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{guest}: registering took {:?}",
            started.elapsed()
        );
        let r = h.call(guest, "", CallGrant::default(), "{}").await;
        assert_eq!(r.result.as_deref(), Ok(r#"{"ok":true}"#), "{guest}");
    }
}

/// The guest SDK's tools are pre-initialised (their input schema is built once, in the
/// snapshot), answer as before, and the disk cache remembers that its entry is a snapshot.
#[tokio::test(flavor = "current_thread")]
async fn sdk_tools_start_from_a_snapshot() {
    let h = Harness::with_cache(None);
    let calc = h.load(sandgraph_test_artifacts::TOOL_CALC);
    assert!(calc.preinitialized);
    let grant = h.grant("calc", "");
    let r = h.sandbox.call(&calc, &grant, r#"{"expr":"1+2*3"}"#).await;
    assert_eq!(r.result.as_deref(), Ok(r#"{"value":7.0}"#));
    let r = h.sandbox.call(&calc, &grant, r#"{"expr":""}"#).await;
    assert!(
        matches!(&r.result, Err(CallError::InvalidInput { message }) if message.contains("expr")),
        "{:?}",
        r.result
    );
    // Through a cache directory: compiled and written, then read back as a snapshot.
    let dir = tempfile::tempdir().expect("tempdir");
    for want in [CacheStatus::Compiled, CacheStatus::Hit] {
        let cached = Harness::with_cache(Some(dir.path().to_path_buf()));
        let calc = cached.load(sandgraph_test_artifacts::TOOL_CALC);
        assert_eq!(calc.cache, want);
        assert!(calc.preinitialized, "{want:?}");
        let r = cached
            .sandbox
            .call(&calc, &grant, r#"{"expr":"2^10"}"#)
            .await;
        assert_eq!(r.result.as_deref(), Ok(r#"{"value":1024.0}"#));
    }
}

/// A spinning guest yields to the executor at every epoch tick, so on a single-threaded
/// runtime another call still runs to completion while the spinner waits for its deadline.
#[tokio::test(flavor = "current_thread")]
async fn a_spinning_guest_does_not_starve_other_calls_on_its_thread() {
    let h = Harness::new();
    let spinner = h.call(
        "limits_infinite_loop",
        "limits: { timeout: 2s }",
        CallGrant::default(),
        "{}",
    );
    // `limits_deep_recursion` told to stop at once returns immediately: a trivial call.
    let quick = h.call(
        "limits_deep_recursion",
        "",
        CallGrant::default(),
        r#"{"stop":"1"}"#,
    );
    tokio::pin!(spinner, quick);
    // Poll the spinner first: without yielding it would hold the only thread for 2 s and the
    // quick call could not even start before the spinner's timeout.
    let first = tokio::select! {
        biased;
        r = &mut spinner => ("spinner", r.result),
        r = &mut quick => ("quick", r.result),
    };
    assert_eq!(first, ("quick", Ok("2".to_string())));
    assert_eq!(
        spinner.await.result,
        Err(CallError::Timeout { limit_ms: 2000 })
    );
}

/// More simultaneous calls than the pool has instance slots: the extra ones wait for a slot
/// within their own time limit instead of failing as a trap of the instance allocator.
#[tokio::test(flavor = "multi_thread")]
async fn calls_beyond_the_instance_pool_wait_for_a_slot() {
    let h = Arc::new(Harness::new());
    let n = sandgraph::sandbox::engine::MAX_CONCURRENT_CALLS + 8;
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..n {
        let h = h.clone();
        calls.spawn(async move {
            h.call(
                "limits_infinite_loop",
                "limits: { timeout: 500ms }",
                CallGrant::default(),
                "{}",
            )
            .await
            .result
        });
    }
    let mut quick = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let h = h.clone();
        quick.spawn(async move {
            h.call(
                "limits_deep_recursion",
                "limits: { timeout: 20s }",
                CallGrant::default(),
                r#"{"stop":"1"}"#,
            )
            .await
            .result
        });
    }
    let mut timeouts = 0;
    while let Some(r) = calls.join_next().await {
        assert_eq!(
            r.expect("call task"),
            Err(CallError::Timeout { limit_ms: 500 })
        );
        timeouts += 1;
    }
    assert_eq!(timeouts, n);
    while let Some(r) = quick.join_next().await {
        assert_eq!(r.expect("call task"), Ok("2".to_string()));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn log_flood_is_captured_with_a_cap() {
    let h = Harness::new();
    let r = h
        .call("limits_log_flood", "", CallGrant::default(), "{}")
        .await;
    assert_eq!(r.result, Ok(r#"{"done":true}"#.to_string()));
    let cap = sandgraph::sandbox::limits::LOG_CAP;
    for log in [&r.stdout, &r.stderr] {
        assert!(
            log.starts_with("flood flood"),
            "{}",
            &log[..40.min(log.len())]
        );
        assert!(log.len() < cap + 100, "log not capped: {} bytes", log.len());
        assert!(log.ends_with("more bytes dropped]"));
    }
}

// ---------------------------------------------------------------- filesystem

/// A workspace dir inside a scratch dir that also holds files the guest must not reach.
struct Scratch {
    _root: tempfile::TempDir,
    workspace: PathBuf,
    outside: PathBuf,
}

fn scratch() -> Scratch {
    let root = tempfile::tempdir().unwrap();
    let workspace = root.path().join("ws");
    let outside = root.path().join("outside");
    std::fs::create_dir_all(&workspace).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("secret.txt"), "outside secret").unwrap();
    std::fs::write(root.path().join("sibling.txt"), "sibling secret").unwrap();
    std::fs::write(workspace.join("inside.txt"), "inside").unwrap();
    std::os::unix::fs::symlink(outside.join("secret.txt"), workspace.join("link")).unwrap();
    std::os::unix::fs::symlink(&outside, workspace.join("linkdir")).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", workspace.join("abs-link")).unwrap();
    Scratch {
        _root: root,
        workspace,
        outside,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn filesystem_cases() {
    let h = Harness::new();
    let s = scratch();
    let rw = || CallGrant {
        workspace: Some((s.workspace.clone(), WorkspaceMode::Rw)),
        ..CallGrant::default()
    };
    let fs = Capability::Filesystem;
    let cases: Vec<(&str, &str, &str, CallGrant, String, Expect)> = vec![
        (
            "/etc/passwd without a workspace",
            "fs_read",
            "",
            CallGrant::default(),
            "/etc/passwd".into(),
            // No preopen covers the path, so the guest's libc gives up without asking the
            // host: the tool's own denial, never a host one.
            Expect::ToolDenied("filesystem: /etc/passwd"),
        ),
        (
            "/etc/passwd with a workspace",
            "fs_read",
            "workspace: rw",
            rw(),
            "/etc/passwd".into(),
            Expect::ToolDenied("filesystem: /etc/passwd"),
        ),
        (
            "../ out of the workspace",
            "fs_read",
            "workspace: rw",
            rw(),
            "/workspace/../sibling.txt".into(),
            denied(fs, "/workspace/../sibling.txt", ""),
        ),
        (
            "deep ../ out of the workspace",
            "fs_read",
            "workspace: rw",
            rw(),
            "/workspace/../../../../etc/passwd".into(),
            denied(fs, "/workspace/../../../../etc/passwd", ""),
        ),
        (
            "symlink to a file outside",
            "fs_read",
            "workspace: rw",
            rw(),
            "/workspace/link".into(),
            denied(fs, "/workspace/link", ""),
        ),
        (
            "symlink to a directory outside",
            "fs_read",
            "workspace: rw",
            rw(),
            "/workspace/linkdir/secret.txt".into(),
            denied(fs, "/workspace/linkdir/secret.txt", ""),
        ),
        (
            "absolute symlink",
            "fs_read",
            "workspace: rw",
            rw(),
            "/workspace/abs-link".into(),
            denied(fs, "/workspace/abs-link", ""),
        ),
        (
            "write in a read-only workspace",
            "fs_write",
            "workspace: ro",
            rw(),
            "/workspace/new.txt".into(),
            denied(fs, "/workspace/new.txt", ""),
        ),
        (
            "write through ../",
            "fs_write",
            "workspace: rw",
            rw(),
            "/workspace/../planted.txt".into(),
            denied(fs, "/workspace/../planted.txt", ""),
        ),
        (
            "write through a symlinked dir",
            "fs_write",
            "workspace: rw",
            rw(),
            "/workspace/linkdir/planted.txt".into(),
            denied(fs, "/workspace/linkdir/planted.txt", ""),
        ),
        (
            "workspace: none ignores the call's directory",
            "fs_read",
            "",
            rw(),
            "/workspace/inside.txt".into(),
            Expect::ToolDenied("filesystem: /workspace/inside.txt"),
        ),
    ];
    for (name, guest, spec, grant, path, expect) in cases {
        let input = format!(r#"{{"path":"{path}"}}"#);
        let r = h.call(guest, spec, grant, &input).await;
        check(name, &r.result, &expect);
    }
    assert!(!s.workspace.join("new.txt").exists());
    assert!(!s.workspace.parent().unwrap().join("planted.txt").exists());
    assert!(!s.outside.join("planted.txt").exists());

    // Controls: the same guests do work inside the workspace, so the denials above are real.
    let r = h
        .call(
            "fs_read",
            "workspace: ro",
            rw(),
            r#"{"path":"/workspace/inside.txt"}"#,
        )
        .await;
    assert_eq!(r.result, Ok(r#"{"content":"inside"}"#.into()));
    let r = h
        .call(
            "fs_write",
            "workspace: rw",
            rw(),
            r#"{"path":"/workspace/new.txt"}"#,
        )
        .await;
    assert_eq!(r.result, Ok(r#"{"written":true}"#.into()));
    assert_eq!(
        std::fs::read_to_string(s.workspace.join("new.txt")).unwrap(),
        "pwned"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn missing_workspace_directory_is_a_filesystem_denial() {
    let h = Harness::new();
    let grant = CallGrant {
        workspace: Some((
            PathBuf::from("/nonexistent/sandgraph-ws"),
            WorkspaceMode::Rw,
        )),
        ..CallGrant::default()
    };
    let r = h
        .call(
            "fs_read",
            "workspace: rw",
            grant,
            r#"{"path":"/workspace/x"}"#,
        )
        .await;
    check(
        "missing dir",
        &r.result,
        &denied(
            Capability::Filesystem,
            "/nonexistent/sandgraph-ws",
            "cannot open the workspace directory",
        ),
    );
}

// ---------------------------------------------------------------- env

#[tokio::test(flavor = "multi_thread")]
async fn env_snooping_sees_only_granted_variables() {
    let h = Harness::new();
    assert!(std::env::var_os("PATH").is_some(), "the host has PATH");
    let spec = "env: { LOG_LEVEL: info }";
    let r = h
        .call("env_read", spec, CallGrant::default(), r#"{"name":"PATH"}"#)
        .await;
    check(
        "PATH",
        &r.result,
        &Expect::ToolDenied("env: PATH: not granted"),
    );
    let r = h
        .call("env_read", spec, CallGrant::default(), r#"{"name":"HOME"}"#)
        .await;
    check(
        "HOME",
        &r.result,
        &Expect::ToolDenied("env: HOME: not granted"),
    );
    let r = h
        .call(
            "env_read",
            spec,
            CallGrant::default(),
            r#"{"name":"LOG_LEVEL"}"#,
        )
        .await;
    assert_eq!(
        r.result,
        Ok(r#"{"value":"info","visible":["LOG_LEVEL"]}"#.into())
    );
}

// ---------------------------------------------------------------- egress

fn egress_fetch_input(url: &str, method: &str) -> String {
    format!(r#"{{"url":"{url}","method":"{method}"}}"#)
}

#[tokio::test(flavor = "multi_thread")]
async fn egress_cases() {
    let server = TestServer::start();
    let port = server.port();
    let mut resolver = StaticResolver::default();
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    resolver
        .names
        .insert("internal.test".into(), vec![ip("10.0.0.1")]);
    resolver
        .names
        .insert("metadata.test".into(), vec![ip("169.254.169.254")]);
    resolver
        .names
        .insert("mapped.test".into(), vec![ip("::ffff:127.0.0.1")]);
    resolver
        .names
        .insert("ula.test".into(), vec![ip("fd00::1")]);
    resolver
        .names
        .insert("mixed.test".into(), vec![ip("127.0.0.1"), ip("10.0.0.1")]);
    let mut h = Harness::with(resolver, SecretStore::default());
    h.policy.allow_private = vec![ip("127.0.0.1")];

    let local = format!(
        "egress: [{{ scheme: http, host: 127.0.0.1, port: {port}, paths: ['/ok', '/v1/**', '/redirect', '/big', '/big-chunked', '/slow'] }}]"
    );
    let named = |host: &str| format!("egress: [{{ scheme: http, host: {host}, port: {port} }}]");
    let eg = Capability::Egress;
    let u = |p: &str| format!("http://127.0.0.1:{port}{p}");
    let cases: Vec<(&str, &str, String, String, Expect)> = vec![
        (
            "non-granted host",
            "egress_fetch",
            local.clone(),
            egress_fetch_input("http://evil.test/x", "GET"),
            denied(
                eg,
                "http://evil.test:80/x",
                "no egress rule for host `evil.test`",
            ),
        ),
        (
            "granted host, wrong method",
            "egress_fetch",
            local.clone(),
            egress_fetch_input(&u("/ok"), "POST"),
            denied(eg, &u("/ok"), "method POST is not allowed"),
        ),
        (
            "granted host, wrong path",
            "egress_fetch",
            local.clone(),
            egress_fetch_input(&u("/admin"), "GET"),
            denied(eg, &u("/admin"), "no egress rule allows path `/admin`"),
        ),
        (
            "granted host, wrong port",
            "egress_fetch",
            local.clone(),
            egress_fetch_input(
                &format!("http://127.0.0.1:{}/ok", port.wrapping_add(1)),
                "GET",
            ),
            denied(
                eg,
                &format!("http://127.0.0.1:{}/ok", port.wrapping_add(1)),
                "scheme and port must match",
            ),
        ),
        (
            "granted host, wrong scheme",
            "egress_fetch",
            local.clone(),
            egress_fetch_input(&format!("https://127.0.0.1:{port}/ok"), "GET"),
            denied(
                eg,
                &format!("https://127.0.0.1:{port}/ok"),
                "scheme and port must match",
            ),
        ),
        (
            "allowed name resolving to a private address",
            "egress_fetch",
            named("internal.test"),
            egress_fetch_input(&format!("http://internal.test:{port}/"), "GET"),
            denied(
                eg,
                &format!("http://internal.test:{port}/"),
                "resolves to 10.0.0.1 (private)",
            ),
        ),
        (
            "allowed name resolving to the metadata address",
            "egress_fetch",
            named("metadata.test"),
            egress_fetch_input(
                &format!("http://metadata.test:{port}/latest/meta-data"),
                "GET",
            ),
            denied(
                eg,
                &format!("http://metadata.test:{port}/latest/meta-data"),
                "169.254.169.254 (cloud metadata)",
            ),
        ),
        (
            "IPv4-mapped loopback is not the allowed 127.0.0.1",
            "egress_fetch",
            named("mapped.test"),
            egress_fetch_input(&format!("http://mapped.test:{port}/ok"), "GET"),
            denied(
                eg,
                &format!("http://mapped.test:{port}/ok"),
                "IPv4-mapped IPv6",
            ),
        ),
        (
            "unique-local v6",
            "egress_fetch",
            named("ula.test"),
            egress_fetch_input(&format!("http://ula.test:{port}/ok"), "GET"),
            denied(
                eg,
                &format!("http://ula.test:{port}/ok"),
                "fd00::1 (unique-local)",
            ),
        ),
        (
            "one private address among public ones",
            "egress_fetch",
            named("mixed.test"),
            egress_fetch_input(&format!("http://mixed.test:{port}/ok"), "GET"),
            denied(
                eg,
                &format!("http://mixed.test:{port}/ok"),
                "10.0.0.1 (private)",
            ),
        ),
        (
            "redirect to a non-granted host, followed by the guest",
            "egress_follow_redirect",
            local.clone(),
            format!(
                r#"{{"url":"{}"}}"#,
                u("/redirect?to=http://evil.test/stolen")
            ),
            denied(
                eg,
                "http://evil.test:80/stolen",
                "no egress rule for host `evil.test`",
            ),
        ),
        (
            "redirect to a non-granted path on the same host",
            "egress_follow_redirect",
            local.clone(),
            format!(
                r#"{{"url":"{}"}}"#,
                u(&format!("/redirect?to=http://127.0.0.1:{port}/admin"))
            ),
            denied(eg, &u("/admin"), "no egress rule allows path `/admin`"),
        ),
        (
            "oversized response (Content-Length)",
            "egress_fetch",
            format!("{local}\nlimits: {{ max_response: 1MiB }}"),
            egress_fetch_input(&u("/big"), "GET"),
            denied(
                eg,
                &u("/big"),
                "exceeds limits.max_response (1048576 bytes)",
            ),
        ),
        (
            "oversized response (chunked)",
            "egress_fetch",
            format!("{local}\nlimits: {{ max_response: 1MiB }}"),
            egress_fetch_input(&u("/big-chunked"), "GET"),
            denied(
                eg,
                &u("/big-chunked"),
                "exceeds limits.max_response (1048576 bytes)",
            ),
        ),
        (
            "slow response",
            "egress_fetch",
            format!("{local}\nlimits: {{ timeout: 500ms }}"),
            egress_fetch_input(&u("/slow"), "GET"),
            Expect::Exact(CallError::Timeout { limit_ms: 500 }),
        ),
    ];
    for (name, guest, spec, input, expect) in cases {
        let r = h.call(guest, &spec, CallGrant::default(), &input).await;
        check(name, &r.result, &expect);
        if let Expect::Denied { target, .. } = &expect {
            let attempt = r
                .audit
                .egress
                .iter()
                .find(|a| !a.allowed)
                .unwrap_or_else(|| panic!("{name}: no denied attempt audited"));
            assert_eq!(&attempt.target, target, "{name}");
            if !name.starts_with("oversized") {
                assert_eq!(
                    attempt.connected_to, None,
                    "{name}: connected before refusing"
                );
            }
        }
    }
    // Only the redirect, oversized and slow cases reached the server: 2 redirects + 2 big + 1 slow.
    let paths: Vec<String> = server
        .seen
        .lock()
        .unwrap()
        .iter()
        .map(|s| s.path.clone())
        .collect();
    assert!(
        paths
            .iter()
            .all(|p| ["/redirect", "/big", "/big-chunked", "/slow"].contains(&p.as_str())),
        "{paths:?}"
    );
    assert_eq!(server.connections(), 5, "{paths:?}");
}

// ---------------------------------------------------------------- https egress

/// A test CA and an HTTPS server on 127.0.0.1 presenting a certificate that CA signed for
/// `names`; records the SNI name of every handshake. Answers every request `200 hello`.
struct TlsSite {
    port: u16,
    ca: sandgraph::sandbox::egress::ExtraRoots,
    sni: Arc<std::sync::Mutex<Vec<String>>>,
}

fn tls_site(names: &[&str]) -> TlsSite {
    let test_ca = common::test_ca::TestCa::new(names);
    let acceptor = tokio_rustls::TlsAcceptor::from(test_ca.server.clone());
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let sni = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = sni.clone();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let (acceptor, seen) = (acceptor.clone(), seen.clone());
                tokio::spawn(async move {
                    // A client that rejects the certificate ends the handshake here.
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    if let Some(name) = tls.get_ref().1.server_name() {
                        seen.lock().unwrap().push(name.to_owned());
                    }
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !head.ends_with(b"\r\n\r\n") {
                        match tls.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let _ = tls
                        .write_all(
                            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
                        )
                        .await;
                    let _ = tls.shutdown().await;
                });
            }
        });
    });
    TlsSite {
        port,
        ca: vec![("test CA".to_owned(), test_ca.ca.clone())],
        sni,
    }
}

/// A harness resolving `api.test` to 127.0.0.1 (which the operator allows), trusting `roots`
/// besides the public ones.
fn https_harness(roots: sandgraph::sandbox::egress::ExtraRoots) -> Harness {
    let mut resolver = StaticResolver::default();
    resolver
        .names
        .insert("api.test".into(), vec!["127.0.0.1".parse().unwrap()]);
    let mut h = Harness::with_roots(resolver, SecretStore::default(), roots);
    h.policy.allow_private = vec!["127.0.0.1".parse().unwrap()];
    h
}

/// `GET https://api.test:<port>/ok` through the egress_fetch guest, allowed by its manifest.
async fn fetch_api_test(h: &Harness, port: u16) -> sandgraph::sandbox::outcome::CallReport {
    let spec = format!("egress: [{{ scheme: https, host: api.test, port: {port} }}]");
    let input = egress_fetch_input(&format!("https://api.test:{port}/ok"), "GET");
    h.call("egress_fetch", &spec, CallGrant::default(), &input)
        .await
}

/// The call failed with `code` before anything was sent, the audit naming `why`.
fn tls_failure(r: &sandgraph::sandbox::outcome::CallReport, code: &str, why: &str) {
    match &r.result {
        Err(CallError::ToolFailed { message }) => {
            assert!(message.contains(code), "want {code}: {message}")
        }
        other => panic!("want a {code} failure, got {other:?}"),
    }
    let attempt = &r.audit.egress[0];
    assert!(attempt.allowed, "{attempt:?}");
    assert_eq!(attempt.status, None, "nothing was sent: {attempt:?}");
    let reason = attempt.tls_error.as_deref().unwrap_or_default();
    assert!(reason.contains(why), "want `{why}` in {attempt:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn https_egress_verifies_the_certificate_for_the_name_against_public_and_operator_roots() {
    let site = tls_site(&["api.test"]);
    let wrong_name = tls_site(&["other.test"]);
    let plain = TestServer::start();

    // Trusted through the operator's CA: the request goes out under the name's SNI.
    let r = fetch_api_test(&https_harness(site.ca.clone()), site.port).await;
    let out: serde_json::Value = serde_json::from_str(r.result.as_ref().unwrap()).unwrap();
    assert_eq!(
        (out["status"].as_u64(), out["body"].as_str()),
        (Some(200), Some("hello"))
    );
    assert_eq!(*site.sni.lock().unwrap(), vec!["api.test".to_owned()]);
    assert_eq!(
        r.audit.egress[0].connected_to.as_deref(),
        Some(format!("127.0.0.1:{}", site.port).as_str())
    );

    // A certificate for another name, even from a trusted CA, is refused.
    let h = https_harness(wrong_name.ca.clone());
    let r = fetch_api_test(&h, wrong_name.port).await;
    tls_failure(&r, "TlsCertificateError", "not valid for name \"api.test\"");

    // A plain-HTTP server behind an https URL fails the handshake.
    let r = fetch_api_test(&h, plain.port()).await;
    tls_failure(&r, "TlsProtocolError", "");

    // Without the operator's CA only the public roots count: the test CA is unknown.
    let r = fetch_api_test(&https_harness(Vec::new()), site.port).await;
    tls_failure(&r, "TlsCertificateError", "UnknownIssuer");
    assert_eq!(
        site.sni.lock().unwrap().len(),
        1,
        "no request after a refused handshake"
    );
}

#[test]
fn operator_ca_files_are_checked_with_specific_errors() {
    use sandgraph::sandbox::egress::{TlsRoots, TlsRootsError};
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.pem");
    assert!(matches!(
        TlsRoots::read_pem_file(&missing),
        Err(TlsRootsError::File { .. })
    ));
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "no certificates here\n").unwrap();
    let e = TlsRoots::read_pem_file(&empty).unwrap_err();
    assert!(matches!(e, TlsRootsError::Empty { .. }), "{e}");
    assert!(e.to_string().contains("empty.pem"), "{e}");
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(
        &garbage,
        "-----BEGIN CERTIFICATE-----\nnot base64 !!\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let e = TlsRoots::read_pem_file(&garbage).unwrap_err();
    assert!(matches!(e, TlsRootsError::File { .. }), "{e}");
    // Well-formed PEM around bytes that are not a certificate: refused as a trust anchor.
    let not_cert = dir.path().join("not-cert.pem");
    std::fs::write(
        &not_cert,
        "-----BEGIN CERTIFICATE-----\naGVsbG8gd29ybGQ=\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let roots = TlsRoots::read_pem_file(&not_cert).unwrap();
    let e = TlsRoots::new(&roots).unwrap_err();
    assert!(matches!(e, TlsRootsError::Anchor { index: 1, .. }), "{e}");
    // A real CA file loads.
    let site_ca = dir.path().join("ca.pem");
    std::fs::write(
        &site_ca,
        common::test_ca::TestCa::new(&["api.test"]).ca_pem(),
    )
    .unwrap();
    let roots = TlsRoots::read_pem_file(&site_ca).unwrap();
    assert_eq!(roots.len(), 1);
    TlsRoots::new(&roots).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn loopback_is_refused_unless_the_operator_allows_that_address() {
    let server = TestServer::start();
    let spec = format!(
        "egress: [{{ scheme: http, host: 127.0.0.1, port: {} }}]",
        server.port()
    );
    let url = server.url("/ok");
    let mut h = Harness::new();
    let r = h
        .call(
            "egress_fetch",
            &spec,
            CallGrant::default(),
            &egress_fetch_input(&url, "GET"),
        )
        .await;
    check(
        "loopback",
        &r.result,
        &denied(Capability::Egress, &url, "127.0.0.1 (loopback)"),
    );
    assert_eq!(server.connections(), 0);

    h.policy.allow_private = vec!["127.0.0.1".parse().unwrap()];
    let r = h
        .call(
            "egress_fetch",
            &spec,
            CallGrant::default(),
            &egress_fetch_input(&url, "GET"),
        )
        .await;
    assert_eq!(
        r.result,
        Ok(r#"{"status":200,"headers":[["content-length","5"]],"body":"hello"}"#.into())
    );
    let a = &r.audit.egress[0];
    assert!(a.allowed);
    assert_eq!(
        a.connected_to.as_deref(),
        Some(server.addr.to_string().as_str())
    );
    assert_eq!((a.status, a.bytes_in), (Some(200), 5));
    assert_eq!(server.connections(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn injected_secret_reaches_the_server_but_never_the_guest() {
    let server = TestServer::start();
    let secret = "s3cr3t-token-value";
    let mut secrets = SecretStore::default();
    secrets.insert("EXAMPLE_TOKEN", secret);
    let mut h = Harness::with(StaticResolver::default(), secrets);
    h.policy.allow_private = vec!["127.0.0.1".parse().unwrap()];
    let spec = format!(
        "egress:\n  - scheme: http\n    host: 127.0.0.1\n    port: {}\n    inject:\n      - {{ header: Authorization, secret: EXAMPLE_TOKEN, format: \"Bearer {{secret}}\" }}",
        server.port()
    );
    // The guest sets its own Authorization and reads the environment for the secret's name.
    let input = format!(
        r#"{{"url":"{}","method":"GET","authorization":"Bearer guess"}}"#,
        server.url("/echo-auth")
    );
    let r = h
        .call("egress_fetch", &spec, CallGrant::default(), &input)
        .await;
    let out = r.result.clone().expect("call succeeds");
    assert!(
        out.contains(r#""status":200"#) && out.contains(r#""body":"seen""#),
        "{out}"
    );
    assert!(!out.contains(secret), "guest saw the secret: {out}");
    assert!(
        !out.to_ascii_lowercase().contains("x-reflect"),
        "reflected secret header reached the guest: {out}"
    );
    let seen = server.seen.lock().unwrap().clone();
    let auth: Vec<&str> = seen[0]
        .headers
        .iter()
        .filter(|(k, _)| k == "authorization")
        .map(|(_, v)| v.as_str())
        .collect();
    assert_eq!(
        auth,
        vec![format!("Bearer {secret}").as_str()],
        "server must see only the injected value"
    );
    let audit = serde_json::to_string(&r.audit).unwrap();
    assert!(!audit.contains(secret), "audit leaks the secret");
    assert_eq!(
        r.audit.egress[0].injected,
        vec!["Authorization (overwrote the guest's value)"]
    );

    // A server that reflects the header in its body: each occurrence is masked to the same
    // length, also when it arrives split across chunks.
    for route in ["/echo-auth-body", "/echo-auth-chunked"] {
        let input = format!(r#"{{"url":"{}","method":"GET"}}"#, server.url(route));
        let r = h
            .call("egress_fetch", &spec, CallGrant::default(), &input)
            .await;
        let out: serde_json::Value =
            serde_json::from_str(r.result.as_ref().expect("call succeeds")).unwrap();
        let body = out["body"].as_str().unwrap();
        let masked = "*".repeat(secret.len());
        assert_eq!(
            body,
            format!("you sent Bearer {masked}; again: Bearer {masked}."),
            "{route}"
        );
        assert_eq!(r.audit.egress[0].secrets_masked, 2, "{route}");
        assert_eq!(r.audit.egress[0].bytes_in, body.len() as u64, "{route}");
    }

    let r = h
        .call(
            "env_read",
            "",
            CallGrant::default(),
            r#"{"name":"EXAMPLE_TOKEN"}"#,
        )
        .await;
    check(
        "secret via env",
        &r.result,
        &Expect::ToolDenied("env: EXAMPLE_TOKEN: not granted"),
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_secret_missing_from_the_store_is_a_secret_denial() {
    let server = TestServer::start();
    let mut h = Harness::new();
    h.policy.allow_private = vec!["127.0.0.1".parse().unwrap()];
    let spec = format!(
        "egress: [{{ scheme: http, host: 127.0.0.1, port: {}, inject: [{{ header: X-Api-Key, secret: MISSING_KEY }}] }}]",
        server.port()
    );
    let r = h
        .call(
            "egress_fetch",
            &spec,
            CallGrant::default(),
            &egress_fetch_input(&server.url("/ok"), "GET"),
        )
        .await;
    check(
        "missing secret",
        &r.result,
        &denied(
            Capability::Secret,
            "MISSING_KEY",
            "operator secret store has no `MISSING_KEY`",
        ),
    );
    assert_eq!(server.connections(), 0);
}

// ---------------------------------------------------------------- sockets

#[tokio::test(flavor = "multi_thread")]
async fn raw_sockets_are_refused() {
    let server = TestServer::start();
    let h = Harness::new();
    let addr = server.addr.to_string();
    let r = h
        .call(
            "sockets_tcp_connect",
            "",
            CallGrant::default(),
            &format!(r#"{{"addr":"{addr}"}}"#),
        )
        .await;
    // wasmtime checks the implicit bind (0.0.0.0:0) before the connect; that check is let
    // through (audited), so the refusal names the address the guest was trying to reach.
    check(
        "tcp",
        &r.result,
        &denied(Capability::Sockets, &addr, "wasi:sockets is not granted"),
    );
    let uses: Vec<(&str, &str, bool)> = r
        .audit
        .egress
        .iter()
        .map(|a| (a.method.as_str(), a.target.as_str(), a.allowed))
        .collect();
    assert_eq!(
        uses,
        [
            ("TcpBind", "0.0.0.0:0", true),
            ("TcpConnect", addr.as_str(), false)
        ]
    );
    assert_eq!(server.connections(), 0);
    // An explicit bind to the unspecified address and port 0 is that same check: it succeeds,
    // audited, and the socket can reach nothing (every send, receive and connect is checked).
    let r = h
        .call("sockets_udp_send", "", CallGrant::default(), "{}")
        .await;
    assert_eq!(r.result, Ok(r#"{"bound":true}"#.to_string()));
    assert_eq!(r.audit.egress.len(), 1);
    assert_eq!(
        (r.audit.egress[0].method.as_str(), r.audit.egress[0].allowed),
        ("UdpBind", true)
    );
}

// ---------------------------------------------------------------- components and cache

#[test]
fn bad_components_are_refused_with_the_reason() {
    let h = Harness::new();
    let real = std::fs::read(hostile("limits_panic")).unwrap();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "core module",
            b"\0asm\x01\0\0\0".to_vec(),
            "core WebAssembly module, not a component",
        ),
        (
            "random bytes",
            (0..4096u32)
                .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
                .collect(),
            "not a WebAssembly binary",
        ),
        ("empty file", vec![], "not a WebAssembly binary"),
        (
            "truncated component",
            real[..real.len() / 2].to_vec(),
            "cannot compile the component",
        ),
    ];
    for (name, bytes, reason) in cases {
        match h.sandbox.registry().load(&bytes) {
            Err(CallError::BadComponent { reason: r }) => {
                assert!(r.contains(reason), "{name}: {r}")
            }
            Err(other) => panic!("{name}: {other:?}"),
            Ok(_) => panic!("{name}: loaded"),
        }
    }
    match h
        .sandbox
        .registry()
        .load_file(hostile("component_wrong_world").as_ref())
    {
        Err(CallError::BadComponent { reason }) => {
            assert!(
                reason.contains("does not export the sandgraph:tool world"),
                "{reason}"
            )
        }
        Err(other) => panic!("wrong world: {other:?}"),
        Ok(_) => panic!("wrong world: loaded"),
    }
}

fn fresh_sandbox(cache: &std::path::Path) -> sandgraph::sandbox::Sandbox {
    sandgraph::sandbox::Sandbox::new(sandgraph::sandbox::SandboxConfig {
        cache_dir: Some(cache.to_path_buf()),
        ..Default::default()
    })
    .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn stale_and_corrupt_cache_entries_are_recompiled_not_trusted() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(hostile("limits_panic")).unwrap();
    let digest = Registry::digest(&bytes);

    let sb = fresh_sandbox(dir.path());
    let first = sb.registry().load(&bytes).unwrap();
    assert_eq!(first.cache, CacheStatus::Compiled);
    let again = sb.registry().load(&bytes).unwrap();
    assert!(
        std::sync::Arc::ptr_eq(&first, &again),
        "loaded once per process"
    );
    let path = sb.registry().cache_path(&digest).unwrap();
    drop(sb);
    assert_eq!(
        fresh_sandbox(dir.path())
            .registry()
            .load(&bytes)
            .unwrap()
            .cache,
        CacheStatus::Hit
    );

    // Corrupt: flip one byte of the compiled code.
    let mut entry = std::fs::read(&path).unwrap();
    let mid = entry.len() - 100;
    entry[mid] ^= 0xff;
    std::fs::write(&path, &entry).unwrap();
    let sb = fresh_sandbox(dir.path());
    let tool = sb.registry().load(&bytes).unwrap();
    assert_eq!(tool.cache, CacheStatus::RecompiledCorrupt);
    let info = sb.info(&tool).await.unwrap();
    assert_eq!(info.name, "limits_panic");
    drop(sb);
    assert_eq!(
        fresh_sandbox(dir.path())
            .registry()
            .load(&bytes)
            .unwrap()
            .cache,
        CacheStatus::Hit
    );

    // Stale: an entry whose key names another wasmtime version.
    let entry = std::fs::read(&path).unwrap();
    let text = String::from_utf8_lossy(&entry[..200]).into_owned();
    let at = text.find("wasmtime-48.0.8").expect("key in header");
    let mut stale = entry.clone();
    stale[at + "wasmtime-".len()..at + "wasmtime-48".len()].copy_from_slice(b"47");
    std::fs::write(&path, &stale).unwrap();
    let sb = fresh_sandbox(dir.path());
    assert_eq!(
        sb.registry().load(&bytes).unwrap().cache,
        CacheStatus::RecompiledStale
    );

    // Garbage in place of the entry.
    std::fs::write(&path, b"not a cache entry").unwrap();
    let sb = fresh_sandbox(dir.path());
    assert_eq!(
        sb.registry().load(&bytes).unwrap().cache,
        CacheStatus::RecompiledCorrupt
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn invalid_json_input_is_refused_before_the_guest_runs() {
    let h = Harness::new();
    let r = h
        .call("limits_panic", "", CallGrant::default(), "not json")
        .await;
    match r.result {
        Err(CallError::InvalidInput { message }) => assert!(
            message.contains("input is not a JSON document"),
            "{message}"
        ),
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn operator_policy_and_call_grant_only_narrow_the_manifest() {
    let server = TestServer::start();
    let spec = format!(
        "egress: [{{ scheme: http, host: 127.0.0.1, port: {} }}]\nlimits: {{ timeout: 5s }}",
        server.port()
    );
    let url = server.url("/ok");
    let mut h = Harness::new();
    h.policy.allow_private = vec!["127.0.0.1".parse().unwrap()];

    // The operator allows only *.example.com: the manifest's 127.0.0.1 rule is dropped.
    h.policy.egress_hosts = Some(vec!["*.example.com".into()]);
    let r = h
        .call(
            "egress_fetch",
            &spec,
            CallGrant::default(),
            &egress_fetch_input(&url, "GET"),
        )
        .await;
    check(
        "operator narrows egress",
        &r.result,
        &denied(
            Capability::Egress,
            &url,
            "no egress rule for host `127.0.0.1`",
        ),
    );

    // The call grants a tighter timeout than the manifest's 5s.
    h.policy.egress_hosts = None;
    let grant = CallGrant {
        limits: Some(sandgraph::sandbox::manifest::Limits {
            timeout: Duration::from_millis(200),
            ..Default::default()
        }),
        ..CallGrant::default()
    };
    let r = h.call("limits_infinite_loop", &spec, grant, "{}").await;
    assert_eq!(r.result, Err(CallError::Timeout { limit_ms: 200 }));

    // And a call grant asking for more than the manifest gets the manifest's value.
    let grant = CallGrant {
        limits: Some(sandgraph::sandbox::manifest::Limits {
            timeout: Duration::from_secs(60),
            ..Default::default()
        }),
        ..CallGrant::default()
    };
    let r = h
        .call(
            "limits_infinite_loop",
            "limits: { timeout: 250ms }",
            grant,
            "{}",
        )
        .await;
    assert_eq!(r.result, Err(CallError::Timeout { limit_ms: 250 }));
    assert_eq!(server.connections(), 0);
}
