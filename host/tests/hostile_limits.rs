//! Hostile guests against the per-call limits: memory that lives outside linear memory (header
//! sets, unsent bodies), host calls that would block past the deadline, descriptors, workspace
//! writes, files created, links, random bytes, connections, and outcomes a guest could make
//! lie (exit, forged denials). Each case is data and asserts the exact typed outcome plus the
//! audit figures the host measured. `every_hostile_guest_has_a_case` (tests/hostile.rs) lists
//! these guests as covered here.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{Harness, TestServer};
use sandgraph::sandbox::filesystem::LINKS_REFUSED;
use sandgraph::sandbox::manifest::{CallGrant, WorkspaceMode};
use sandgraph::sandbox::outcome::{CallError, CallReport, Capability, LimitedResource};

/// How long past its timeout a call may take to come back: the deadline is checked every
/// epoch tick and in every awaited host call, so this only absorbs scheduling on a busy machine.
const MARGIN: Duration = Duration::from_secs(3);

/// A workspace inside a scratch dir that also holds a file the guest must not reach.
struct Scratch {
    _root: tempfile::TempDir,
    ws: PathBuf,
}

fn scratch() -> Scratch {
    let root = tempfile::tempdir().unwrap();
    let ws = root.path().join("ws");
    std::fs::create_dir_all(&ws).unwrap();
    std::fs::create_dir_all(root.path().join("outside")).unwrap();
    std::fs::write(root.path().join("outside/secret.txt"), "outside secret").unwrap();
    std::fs::write(ws.join("inside.txt"), "inside").unwrap();
    Scratch { _root: root, ws }
}

fn rw(ws: &Path) -> CallGrant {
    CallGrant {
        workspace: Some((ws.to_path_buf(), WorkspaceMode::Rw)),
        ..CallGrant::default()
    }
}

fn limit(resource: LimitedResource, limit: u64) -> CallError {
    CallError::ResourceLimitExceeded { resource, limit }
}

fn assert_outcome(case: &str, r: &CallReport, want: &Result<String, CallError>) {
    assert_eq!(&r.result, want, "case {case}");
    let kind = match &r.result {
        Ok(_) => "ok",
        Err(e) => e.kind(),
    };
    assert_eq!(r.audit.outcome, kind, "case {case}: audit outcome");
}

/// The audit's memory figure is the host's own sum: at least every memory and table the call
/// still held at the end, at most the sum of each part's peak, and within the limit when the
/// call succeeded.
fn assert_memory_figures(case: &str, r: &CallReport, limit_bytes: u64) {
    let u = &r.audit.usage;
    assert!(u.linear_memory_bytes > 0, "case {case}: {u:?}");
    assert!(
        r.audit.memory_peak_bytes >= u.linear_memory_bytes + u.table_bytes,
        "case {case}: peak {} < memories + tables in {u:?}",
        r.audit.memory_peak_bytes
    );
    assert!(
        r.audit.memory_peak_bytes <= u.linear_memory_bytes + u.table_bytes + u.host_bytes,
        "case {case}: peak {} > parts {u:?}",
        r.audit.memory_peak_bytes
    );
    if r.result.is_ok() {
        assert!(r.audit.memory_peak_bytes <= limit_bytes, "case {case}");
    } else if matches!(r.result, Err(CallError::MemoryLimitExceeded { .. })) {
        assert!(
            r.audit.memory_peak_bytes + (1 << 20) > limit_bytes,
            "case {case}: over the limit, yet the audit says {}",
            r.audit.memory_peak_bytes
        );
    }
}

// ---------------------------------------------------------------- memory beyond linear memory

#[tokio::test(flavor = "multi_thread")]
async fn host_side_buffers_count_against_the_memory_limit() {
    let h = Harness::new();
    struct Case {
        name: &'static str,
        guest: &'static str,
        spec: &'static str,
        input: &'static str,
        want: Result<String, CallError>,
    }
    let mem16 = CallError::MemoryLimitExceeded {
        limit_bytes: 16 << 20,
    };
    let cases = [
        Case {
            name: "4,000 big header sets",
            guest: "limits_header_sets",
            spec: "limits: { memory: 16MiB, max_handles: 10000 }",
            input: r#"{"count":"4000","size":"60000"}"#,
            want: Err(mem16.clone()),
        },
        Case {
            name: "8,000 mid-sized header sets",
            guest: "limits_header_sets",
            spec: "limits: { memory: 16MiB, max_handles: 10000 }",
            input: r#"{"count":"8000","size":"30000"}"#,
            want: Err(mem16.clone()),
        },
        Case {
            name: "4,000 small header sets hit the handle cap",
            guest: "limits_header_sets",
            spec: "",
            input: r#"{"count":"4000","size":"10"}"#,
            want: Err(limit(LimitedResource::Handles, 1024)),
        },
        Case {
            name: "a tighter handle cap from the manifest",
            guest: "limits_header_sets",
            spec: "limits: { max_handles: 100 }",
            input: r#"{"count":"500","size":"10"}"#,
            want: Err(limit(LimitedResource::Handles, 100)),
        },
        Case {
            name: "unsent request bodies",
            guest: "limits_unsent_bodies",
            spec: "limits: { memory: 16MiB, max_handles: 10000 }",
            input: r#"{"count":"1000"}"#,
            want: Err(mem16.clone()),
        },
        Case {
            name: "a few header sets fit (control)",
            guest: "limits_header_sets",
            spec: "limits: { memory: 16MiB }",
            input: r#"{"count":"20","size":"1000","hold_ms":"250"}"#,
            want: Ok(r#"{"held":20}"#.into()),
        },
        Case {
            name: "a few unsent bodies fit (control)",
            guest: "limits_unsent_bodies",
            spec: "limits: { memory: 16MiB }",
            input: r#"{"count":"4","hold_ms":"250"}"#,
            want: Ok(format!(
                r#"{{"held":4,"buffered":{}}}"#,
                4 * sandgraph::sandbox::limits::BODY_RESERVE_BYTES
            )),
        },
    ];
    for c in &cases {
        let r = h.call(c.guest, c.spec, CallGrant::default(), c.input).await;
        assert_outcome(c.name, &r, &c.want);
        assert_memory_figures(c.name, &r, 16 << 20);
        if c.want.is_ok() || matches!(c.want, Err(CallError::MemoryLimitExceeded { .. })) {
            assert!(
                r.audit.usage.host_bytes > 0,
                "case {}: host buffers not counted: {:?}",
                c.name,
                r.audit.usage
            );
        }
    }
    // The control's figures: 20 header sets of 1,000-byte values are at least 20,000 host
    // bytes, and the handle peak counts every one of them. (Host buffers are sampled at every
    // 5 ms epoch tick, so the guest holds them for 250 ms: many ticks, even on a loaded machine
    // where the ticker thread runs late.)
    let r = h
        .call(
            "limits_header_sets",
            "",
            CallGrant::default(),
            r#"{"count":"20","size":"1000","hold_ms":"250"}"#,
        )
        .await;
    assert!(r.audit.usage.host_bytes >= 20 * 1000, "{:?}", r.audit.usage);
    assert!(r.audit.usage.handles_peak >= 20, "{:?}", r.audit.usage);
}

// ---------------------------------------------------------------- deadlines

#[tokio::test(flavor = "multi_thread")]
async fn no_blocking_host_call_outlives_the_deadline() {
    let h = Harness::new();
    let server = TestServer::start();
    let s = scratch();
    std::fs::write(s.ws.join("big.bin"), vec![7u8; 32 << 20]).unwrap();
    let slow = server.url("/slow");
    let egress = format!(
        "egress: [{{ scheme: http, host: 127.0.0.1, port: {} }}]\nlimits: {{ timeout: 500ms, max_write: 1000GiB }}\nworkspace: rw",
        server.port()
    );
    let mut h = h;
    h.policy.allow_private = vec!["127.0.0.1".parse().unwrap()];
    // The write case must run into its deadline, not its quota, even on a fast disk.
    h.policy.max_limits.max_write = u64::MAX;
    let cases = [
        ("monotonic-clock sleep", r#"{"how":"sleep"}"#.to_string()),
        ("poll on never-ready pollables", r#"{"how":"poll"}"#.into()),
        ("reading a big file forever", r#"{"how":"read"}"#.into()),
        ("rewriting a file forever", r#"{"how":"write"}"#.into()),
        ("stdout flood", r#"{"how":"stdout"}"#.into()),
        (
            "a server that never answers",
            format!(r#"{{"how":"http","url":"{slow}"}}"#),
        ),
    ];
    for (name, input) in &cases {
        let started = Instant::now();
        let r = h
            .call("limits_blocking_calls", &egress, rw(&s.ws), input)
            .await;
        let took = started.elapsed();
        assert_outcome(name, &r, &Err(CallError::Timeout { limit_ms: 500 }));
        assert!(
            took < Duration::from_millis(500) + MARGIN,
            "case {name}: the call took {took:?} under a 500ms limit"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn huge_random_requests_are_refused_before_the_host_generates_them() {
    let h = Harness::new();
    let mib = 1u64 << 20;
    let cases = [
        (
            "60 MB secure",
            "",
            r#"{"len":"60000000"}"#,
            Err(limit(LimitedResource::RandomBytes, mib)),
        ),
        (
            "60 MB insecure",
            "",
            r#"{"len":"60000000","api":"insecure"}"#,
            Err(limit(LimitedResource::RandomBytes, mib)),
        ),
        (
            "many small requests add up",
            "limits: { max_random: 64KiB }",
            r#"{"len":"4096","times":"100"}"#,
            Err(limit(LimitedResource::RandomBytes, 64 << 10)),
        ),
        (
            "within the budget (control)",
            "",
            r#"{"len":"4096","times":"4"}"#,
            Ok(r#"{"bytes":16384}"#.to_string()),
        ),
    ];
    for (name, spec, input, want) in &cases {
        let started = Instant::now();
        let r = h
            .call("random_huge", spec, CallGrant::default(), input)
            .await;
        assert_outcome(name, &r, want);
        assert!(
            started.elapsed() < Duration::from_secs(5) + MARGIN,
            "case {name}"
        );
    }
    let r = h
        .call(
            "random_huge",
            "",
            CallGrant::default(),
            r#"{"len":"4096","times":"4"}"#,
        )
        .await;
    // The guest's own runtime may draw a few bytes (hash seeds) besides the 16 KiB it asked.
    assert!(
        (16384..16384 + 1024).contains(&r.audit.usage.random_bytes),
        "{:?}",
        r.audit.usage
    );
}

/// How the host names a FIFO or socket (wasmtime-wasi reports both as `unknown`).
const SPECIAL: &str = "a named pipe, socket or other special file";

#[tokio::test(flavor = "multi_thread")]
async fn special_files_in_the_workspace_are_refused_not_opened() {
    let h = Harness::new();
    let s = scratch();
    let fifo = s.ws.join("pipe");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path; mkfifo only creates a directory entry.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0, "mkfifo");
    let _listener = std::os::unix::net::UnixListener::bind(s.ws.join("sock")).unwrap();
    std::os::unix::fs::symlink("pipe", s.ws.join("to-pipe")).unwrap();
    let cases = [
        ("a FIFO", "/workspace/pipe", SPECIAL),
        ("a unix socket", "/workspace/sock", SPECIAL),
        ("a symlink to a FIFO", "/workspace/to-pipe", SPECIAL),
    ];
    for (name, path, what) in cases {
        for guest in ["fs_read", "fs_write"] {
            let started = Instant::now();
            let r = h
                .call(
                    guest,
                    "workspace: rw",
                    rw(&s.ws),
                    &format!(r#"{{"path":"{path}"}}"#),
                )
                .await;
            match &r.result {
                Err(CallError::Denied {
                    capability: Capability::Filesystem,
                    target,
                    missing_rule,
                }) => {
                    assert_eq!(target, path, "case {name} {guest}");
                    assert!(
                        missing_rule.starts_with(what),
                        "case {name}: {missing_rule}"
                    );
                }
                other => panic!("case {name} {guest}: {other:?}"),
            }
            assert_eq!(r.audit.filesystem[0].operation, "open", "case {name}");
            assert!(
                started.elapsed() < Duration::from_secs(5) + MARGIN,
                "case {name}"
            );
        }
    }
}

// ---------------------------------------------------------------- descriptors and files

#[tokio::test(flavor = "multi_thread")]
async fn descriptors_writes_and_created_files_are_capped() {
    let h = Harness::new();
    struct Case {
        name: &'static str,
        guest: &'static str,
        spec: &'static str,
        input: &'static str,
        want: CallError,
        /// The usage figure the cap is about, as the audit must report it.
        figure: fn(&sandgraph::sandbox::outcome::ResourceUsage) -> u64,
    }
    let cases = [
        Case {
            name: "holding 5,000 new files open",
            guest: "fs_many_files",
            spec: "workspace: rw",
            input: r#"{"count":"5000","hold":"1"}"#,
            want: limit(LimitedResource::OpenFiles, 128),
            figure: |u| u.open_files_peak,
        },
        Case {
            name: "opening one file 5,000 times",
            guest: "fs_many_files",
            spec: "workspace: rw",
            input: r#"{"count":"5000","open":"inside.txt"}"#,
            want: limit(LimitedResource::OpenFiles, 128),
            figure: |u| u.open_files_peak,
        },
        Case {
            name: "a tighter open-file cap",
            guest: "fs_many_files",
            spec: "workspace: ro\nlimits: { max_open_files: 7 }",
            input: r#"{"count":"50","open":"inside.txt"}"#,
            want: limit(LimitedResource::OpenFiles, 7),
            figure: |u| u.open_files_peak,
        },
        Case {
            name: "creating 5,000 files",
            guest: "fs_many_files",
            spec: "workspace: rw",
            input: r#"{"count":"5000"}"#,
            want: limit(LimitedResource::FilesCreated, 1000),
            figure: |u| u.files_created,
        },
        Case {
            name: "creating 500 directories under a cap of 50",
            guest: "fs_many_files",
            spec: "workspace: rw\nlimits: { max_files_created: 50 }",
            input: r#"{"count":"500","kind":"dir"}"#,
            want: limit(LimitedResource::FilesCreated, 50),
            figure: |u| u.files_created,
        },
        Case {
            name: "streaming 200 MiB into the workspace",
            guest: "fs_fill",
            spec: "workspace: rw\nlimits: { max_write: 8MiB }",
            input: r#"{"bytes":"209715200","chunk":"1048576"}"#,
            want: limit(LimitedResource::WorkspaceBytes, 8 << 20),
            figure: |u| u.workspace_bytes_written,
        },
        Case {
            name: "positional writes past the quota",
            guest: "fs_fill",
            spec: "workspace: rw\nlimits: { max_write: 8MiB }",
            input: r#"{"bytes":"209715200","chunk":"65536","how":"at"}"#,
            want: limit(LimitedResource::WorkspaceBytes, 8 << 20),
            figure: |u| u.workspace_bytes_written,
        },
        Case {
            name: "growing a file with set_len past the quota",
            guest: "fs_fill",
            spec: "workspace: rw\nlimits: { max_write: 8MiB }",
            input: r#"{"bytes":"1073741824","chunk":"1048576","how":"grow"}"#,
            want: limit(LimitedResource::WorkspaceBytes, 8 << 20),
            figure: |u| u.workspace_bytes_written,
        },
    ];
    for c in &cases {
        let s = scratch();
        let r = h.call(c.guest, c.spec, rw(&s.ws), c.input).await;
        assert_outcome(c.name, &r, &Err(c.want.clone()));
        let CallError::ResourceLimitExceeded { limit, .. } = c.want else {
            unreachable!()
        };
        let got = (c.figure)(&r.audit.usage);
        assert!(
            got <= limit && got + (1 << 20) >= limit,
            "case {}: audit says {got}, limit {limit}",
            c.name
        );
        // What is on disk matches what the audit counted.
        let on_disk: u64 = std::fs::read_dir(&s.ws)
            .unwrap()
            .map(|e| e.unwrap().metadata().unwrap())
            .filter(|m| m.is_file())
            .map(|m| m.len())
            .sum();
        let entries = std::fs::read_dir(&s.ws).unwrap().count() as u64 - 1;
        match c.want {
            CallError::ResourceLimitExceeded {
                resource: LimitedResource::WorkspaceBytes,
                ..
            } => assert_eq!(on_disk - 6, got, "case {}: bytes on disk", c.name),
            CallError::ResourceLimitExceeded {
                resource: LimitedResource::FilesCreated,
                ..
            } => assert_eq!(entries, got, "case {}: entries on disk", c.name),
            _ => {}
        }
    }
    // Control: a write inside the quota succeeds and the audit counts exactly its bytes.
    let s = scratch();
    let r = h
        .call(
            "fs_fill",
            "workspace: rw",
            rw(&s.ws),
            r#"{"bytes":"1048576","chunk":"65536"}"#,
        )
        .await;
    assert_outcome("control", &r, &Ok(r#"{"written":1048576}"#.into()));
    assert_eq!(r.audit.usage.workspace_bytes_written, 1 << 20);
    assert_eq!(r.audit.usage.files_created, 1);
    assert_eq!(
        std::fs::metadata(s.ws.join("fill.bin")).unwrap().len(),
        1 << 20
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn connections_per_call_are_capped() {
    let server = TestServer::start();
    let mut h = Harness::new();
    h.policy.allow_private = vec!["127.0.0.1".parse().unwrap()];
    let spec = format!(
        "egress: [{{ scheme: http, host: 127.0.0.1, port: {} }}]\nlimits: {{ max_connections: 5 }}",
        server.port()
    );
    let ok = server.url("/ok");
    let r = h
        .call(
            "limits_many_requests",
            &spec,
            CallGrant::default(),
            &format!(r#"{{"url":"{ok}","count":"40"}}"#),
        )
        .await;
    assert_outcome(
        "40 requests",
        &r,
        &Err(limit(LimitedResource::Connections, 5)),
    );
    assert_eq!(r.audit.usage.connections, 5);
    assert_eq!(server.connections(), 5);
    let r = h
        .call(
            "limits_many_requests",
            &spec,
            CallGrant::default(),
            &format!(r#"{{"url":"{ok}","count":"5"}}"#),
        )
        .await;
    assert_outcome("5 requests (control)", &r, &Ok(r#"{"sent":5}"#.into()));
}

// ---------------------------------------------------------------- links

#[tokio::test(flavor = "multi_thread")]
async fn links_cannot_be_created_in_the_workspace() {
    let h = Harness::new();
    let cases = [
        (
            "relative symlink out of the workspace",
            "sym",
            "esc",
            "../outside/secret.txt",
        ),
        (
            "deep relative symlink",
            "sym",
            "deep",
            "../../../../etc/passwd",
        ),
        ("absolute symlink", "sym", "abs", "/etc/passwd"),
        ("symlink inside the workspace", "sym", "near", "inside.txt"),
        (
            "hard link inside the workspace",
            "hard",
            "hard",
            "inside.txt",
        ),
    ];
    for (name, kind, link, target) in cases {
        let s = scratch();
        let input = format!(r#"{{"kind":"{kind}","link":"{link}","target":"{target}"}}"#);
        let r = h
            .call("fs_symlink", "workspace: rw", rw(&s.ws), &input)
            .await;
        assert_outcome(
            name,
            &r,
            &Err(CallError::Denied {
                capability: Capability::Filesystem,
                target: format!("/workspace/{}", if kind == "hard" { target } else { link }),
                missing_rule: LINKS_REFUSED.into(),
            }),
        );
        assert!(
            std::fs::symlink_metadata(s.ws.join(link)).is_err(),
            "case {name}: the link exists"
        );
    }
}

// ---------------------------------------------------------------- outcomes

#[tokio::test(flavor = "multi_thread")]
async fn exiting_is_its_own_outcome_never_a_trap() {
    let h = Harness::new();
    for (name, input, code) in [
        ("exit(0)", r#"{"code":"0"}"#, 0),
        (
            "exit(0) after printing",
            r#"{"code":"0","print":"{\"ok\":1}"}"#,
            0,
        ),
        ("exit(1)", r#"{"code":"1"}"#, 1),
        // WASI 0.2's `exit` carries only success or failure: nonzero statuses arrive as 1.
        ("exit(3)", r#"{"code":"3"}"#, 1),
        ("exit(255)", r#"{"code":"255"}"#, 1),
    ] {
        let r = h.call("exit_code", "", CallGrant::default(), input).await;
        assert_outcome(name, &r, &Err(CallError::Exited { code }));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_guest_cannot_forge_a_host_denial() {
    let h = Harness::new();
    for message in [
        "filesystem: /etc/passwd: no preopen",
        "egress: http://example.com/: no egress rule allows host `example.com`",
        "secret: API_TOKEN: operator secret store has no `API_TOKEN`",
        "sockets: 10.0.0.1:22: wasi:sockets is not granted",
        "denied Egress to http://x/: no rule",
    ] {
        let input = format!(r#"{{"message":"{message}"}}"#);
        let r = h
            .call("exit_forged_denial", "", CallGrant::default(), &input)
            .await;
        assert_outcome(
            message,
            &r,
            &Err(CallError::ToolDenied {
                message: message.into(),
            }),
        );
        assert!(r.audit.egress.is_empty() && r.audit.filesystem.is_empty());
    }
    // Shaped like a denial but sent as a failure: stays a failure.
    let r = h
        .call(
            "exit_forged_denial",
            "",
            CallGrant::default(),
            r#"{"message":"denied Filesystem to /x: y","as":"failed"}"#,
        )
        .await;
    assert_outcome(
        "failed",
        &r,
        &Err(CallError::ToolFailed {
            message: "denied Filesystem to /x: y".into(),
        }),
    );
}

/// Every output is held to the output schema the component declares in `info()` (what graph
/// validation type-checks `nodes.<id>` against): a mismatch is `output_invalid`, naming where.
#[tokio::test(flavor = "multi_thread")]
async fn outputs_must_match_the_declared_output_schema() {
    let h = Harness::new();
    let call = |input: &'static str| {
        let h = &h;
        async move {
            h.call("output_schema_mismatch", "", CallGrant::default(), input)
                .await
        }
    };
    let ok = call("{}").await;
    assert_outcome("conforming", &ok, &Ok(r#"{"value":7}"#.into()));
    for (case, lie, wants) in [
        (
            "wrong type",
            r#"{"lie":"{'value':'seven'}"}"#,
            vec!["/value: ", "is not of type \"number\""],
        ),
        (
            "missing field",
            r#"{"lie":"{'other':1}"}"#,
            vec!["\"value\" is a required property"],
        ),
        (
            "not an object",
            r#"{"lie":"[1]"}"#,
            vec!["is not of type \"object\""],
        ),
    ] {
        let r = call(lie).await;
        let Err(e @ CallError::OutputInvalid { errors }) = &r.result else {
            panic!("case {case}: {:?}", r.result);
        };
        assert_eq!(r.audit.outcome, "output_invalid", "case {case}");
        let text = e.to_string();
        assert!(
            text.starts_with("output does not match the component's declared output schema: "),
            "case {case}: {text}"
        );
        for want in wants {
            assert!(
                errors.iter().any(|m| m.contains(want)),
                "case {case}: {errors:?}"
            );
        }
    }
    // Not JSON at all stays what it was.
    let r = call(r#"{"lie":"seven"}"#).await;
    assert_eq!(r.result.unwrap_err().kind(), "tool_failed");
}

#[tokio::test(flavor = "multi_thread")]
async fn output_nesting_has_one_depth_limit_at_the_boundary() {
    use sandgraph::sandbox::limits::MAX_OUTPUT_DEPTH;
    let h = Harness::new();
    let too_deep = Err(CallError::OutputTooDeep {
        max_depth: MAX_OUTPUT_DEPTH,
    });
    for (name, depth, kind, want) in [
        ("at the limit, arrays", MAX_OUTPUT_DEPTH, "array", None),
        ("at the limit, objects", MAX_OUTPUT_DEPTH, "object", None),
        (
            "one past, arrays",
            MAX_OUTPUT_DEPTH + 1,
            "array",
            Some(&too_deep),
        ),
        (
            "one past, objects",
            MAX_OUTPUT_DEPTH + 1,
            "object",
            Some(&too_deep),
        ),
        (
            "far past serde_json's own limit",
            100_000,
            "array",
            Some(&too_deep),
        ),
    ] {
        let input = format!(r#"{{"depth":"{depth}","kind":"{kind}"}}"#);
        let r = h
            .call("limits_deep_output", "", CallGrant::default(), &input)
            .await;
        match want {
            Some(want) => assert_outcome(name, &r, want),
            None => {
                // What passes the boundary is what the graph engine parses.
                let out = r.result.expect(name);
                serde_json::from_str::<serde_json::Value>(&out).expect(name);
            }
        }
    }
}
