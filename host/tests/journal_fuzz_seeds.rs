//! The seed corpus of the `journal_decode` fuzz target (fuzz/seeds/journal_decode): one stored
//! record of every event and crossing kind. The test keeps them current — each seed decodes to
//! the event it was written from, so a change of the record format shows up here and not as a
//! fuzzer that only ever sees undecodable bytes. `SANDGRAPH_WRITE_FUZZ_SEEDS=1` rewrites them.

use std::path::{Path, PathBuf};

use sandgraph::journal::{Crossing, Event, PayloadRef, PinnedComponent, RunStatus};

fn seeds_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds/journal_decode")
}

fn events() -> Vec<(&'static str, Event)> {
    let blob = PayloadRef::Blob([7; 32]);
    let inline = PayloadRef::Inline(br#"{"value": 42}"#.to_vec());
    let crossing = |c| Event::Crossing {
        step: "fetch#1".into(),
        attempt: 2,
        crossing: c,
    };
    vec![
        (
            "run_created",
            Event::RunCreated {
                graph_name: "conditional-loop".into(),
                graph_digest: "ab".repeat(32),
                graph: blob.clone(),
                components: vec![PinnedComponent {
                    name: "calc".into(),
                    digest: "cd".repeat(32),
                    wasm: blob.clone(),
                    manifest: inline.clone(),
                }],
                input: inline.clone(),
            },
        ),
        (
            "step_scheduled",
            Event::StepScheduled {
                step: "double#3".into(),
                node: "double".into(),
                iteration: 3,
                input: inline.clone(),
            },
        ),
        (
            "step_started",
            Event::StepStarted {
                step: "double#3".into(),
                attempt: 1,
            },
        ),
        (
            "step_completed",
            Event::StepCompleted {
                step: "double#3".into(),
                attempt: 1,
                output: blob.clone(),
            },
        ),
        (
            "step_failed",
            Event::StepFailed {
                step: "fetch#1".into(),
                attempt: 1,
                kind: "timeout".into(),
                message: "the call ran past its 5s limit".into(),
                retry_in_ms: Some(250),
            },
        ),
        (
            "crossing_tool_request",
            crossing(Crossing::ToolRequest {
                tool: "calc".into(),
                input: inline.clone(),
            }),
        ),
        (
            "crossing_tool_result",
            crossing(Crossing::ToolResult {
                ok: false,
                output: inline.clone(),
            }),
        ),
        (
            "crossing_http_intent",
            crossing(Crossing::HttpIntent {
                method: "POST".into(),
                uri: "http://127.0.0.1:8000/orders?x=1".into(),
                idempotency_key: "run-step-1".into(),
            }),
        ),
        (
            "crossing_http_response",
            crossing(Crossing::HttpResponse {
                status: 201,
                headers: vec![("content-type".into(), b"application/json".to_vec())],
                body: blob.clone(),
            }),
        ),
        (
            "crossing_http_failed",
            crossing(Crossing::HttpFailed {
                message: "ConnectionRefused".into(),
            }),
        ),
        (
            "crossing_wall_clock",
            crossing(Crossing::WallClock {
                seconds: 1_764_900_000,
                nanoseconds: 999_999_999,
            }),
        ),
        (
            "crossing_monotonic_clock",
            crossing(Crossing::MonotonicClock {
                nanoseconds: u64::MAX,
            }),
        ),
        (
            "crossing_random",
            crossing(Crossing::Random {
                bytes: (0..=255).collect(),
            }),
        ),
        (
            "crossing_denial",
            crossing(Crossing::Denial {
                capability: "egress".into(),
                target: "http://169.254.169.254/latest".into(),
            }),
        ),
        (
            "run_finished",
            Event::RunFinished {
                status: RunStatus::Failed,
                output: Some(blob),
                error: Some("step fetch#1 failed".into()),
            },
        ),
    ]
}

#[test]
fn every_journal_decode_seed_is_a_current_record_of_each_event_kind() {
    let dir = seeds_dir();
    let write = std::env::var_os("SANDGRAPH_WRITE_FUZZ_SEEDS").is_some();
    let at_ms = 1_764_900_000_123;
    for (name, event) in events() {
        let path = dir.join(format!("{name}.bin"));
        if write {
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(&path, event.encode(at_ms)).unwrap();
        }
        let bytes = std::fs::read(&path).unwrap_or_else(|e| {
            panic!(
                "{}: {e}; run with SANDGRAPH_WRITE_FUZZ_SEEDS=1 to write the seeds",
                path.display()
            )
        });
        assert_eq!(
            Event::decode(&bytes),
            Ok((at_ms, event)),
            "{} no longer decodes to its event; rewrite the seeds with SANDGRAPH_WRITE_FUZZ_SEEDS=1",
            path.display()
        );
    }
}
