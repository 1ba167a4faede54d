//! Replay of runs that used a workspace, on the real `workspace-fs` tool and the example graph
//! `graphs/workspace-notes.yaml` (write a note, read it back read-only, list the tree): every
//! step attempt journals the workspace it saw (and, granted `rw`, the one it left), replay lays
//! that out in a private directory whatever became of the original, a tampered snapshot is a
//! divergence naming the path, an over-cap workspace is journaled as not snapshotted and replay
//! says it cannot replay those steps, `sandgraph replay` does the same from the command line,
//! and `rw` steps sharing the workspace never overlap.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use serde_json::{Value, json};

use sandgraph::graph::catalog::Catalog;
use sandgraph::graph::engine::{Engine, EngineConfig, RunOutcome};
use sandgraph::graph::replay::StepReplay;
use sandgraph::graph::{self, CompiledGraph, validate};
use sandgraph::journal::workspace::{self, EntryKind, Manifest, SnapshotLimits};
use sandgraph::journal::{
    Durability, Event, Journal, JournalError, PayloadRef, RunId, RunStatus, Snapshot,
    SnapshotMoment,
};
use sandgraph::sandbox::egress::{SecretStore, StaticResolver};
use sandgraph::sandbox::engine::Allocator;
use sandgraph::sandbox::manifest::Manifest as ToolManifest;
use sandgraph::sandbox::{Sandbox, SandboxConfig};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn sandbox() -> Arc<Sandbox> {
    Arc::new(
        Sandbox::new(SandboxConfig {
            allocator: Allocator::Pooling,
            cache_dir: Some(common::cache_dir()),
            resolver: Arc::new(StaticResolver::default()),
            secrets: SecretStore::default(),
            extra_roots: Vec::new(),
        })
        .expect("sandbox"),
    )
}

/// An engine on a fresh temporary journal with `workspace` as its workspace directory.
fn engine(workspace: Option<&Path>, limits: SnapshotLimits) -> Engine {
    Engine::new(
        sandbox(),
        Arc::new(Journal::temporary().expect("journal")),
        EngineConfig {
            workspace: workspace.map(Path::to_path_buf),
            workspace_snapshots: limits,
            ..EngineConfig::default()
        },
    )
}

/// An engine on `journal` with no workspace at all (what `sandgraph replay` has).
fn bare_engine(journal: &Arc<Journal>) -> Engine {
    Engine::new(sandbox(), journal.clone(), EngineConfig::default())
}

/// Every tool under `tools/` with its own manifest.
fn catalog() -> Catalog {
    let mut catalog = Catalog::default();
    for (name, wasm) in sandgraph_test_artifacts::TOOLS {
        let path = root()
            .join("tools")
            .join(name)
            .join(format!("{name}.sandgraph.yaml"));
        let text = std::fs::read_to_string(&path).unwrap();
        let manifest = ToolManifest::parse(&path.display().to_string(), &text).unwrap();
        catalog.insert(manifest, text, std::fs::read(wasm).unwrap());
    }
    catalog
}

fn notes_graph(catalog: &Catalog) -> Arc<CompiledGraph> {
    let path = root().join("graphs/workspace-notes.yaml");
    Arc::new(graph::load(&path, &catalog.manifests()).unwrap_or_else(|d| panic!("{d}")))
}

fn output(outcome: &RunOutcome) -> Value {
    assert_eq!(
        outcome.status,
        RunStatus::Succeeded,
        "run failed: {:?}",
        outcome.error
    );
    serde_json::from_str(outcome.output.as_deref().unwrap()).unwrap()
}

/// Whether the notes graph's output (the `list` step's) shows the note it wrote.
fn wrote_the_note(out: &Value) -> bool {
    out["list"]["entries"]
        .as_array()
        .is_some_and(|e| e.contains(&json!({"kind": "file", "path": "notes/today.txt", "size": 8})))
}

/// A workspace directory holding `seed.txt` (300 bytes, so it goes to the blob store).
fn seeded_workspace() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("seed.txt"), "s".repeat(300)).unwrap();
    dir
}

/// (step, attempt, moment, writable, snapshot) of every snapshot event, in journal order.
fn snapshots(journal: &Journal, run: RunId) -> Vec<(String, u32, SnapshotMoment, bool, Snapshot)> {
    journal
        .events(run)
        .unwrap()
        .into_iter()
        .filter_map(|r| match r.event {
            Event::WorkspaceSnapshot {
                step,
                attempt,
                moment,
                writable,
                snapshot,
            } => Some((step, attempt, moment, writable, snapshot)),
            _ => None,
        })
        .collect()
}

fn identical(steps: &[&str]) -> Vec<StepReplay> {
    steps
        .iter()
        .map(|s| StepReplay::Identical {
            step: (*s).into(),
            attempt: 1,
        })
        .collect()
}

/// Rewrites the snapshot of `step` at `moment`: `change` edits its manifest.
fn tamper_snapshot(
    journal: &Journal,
    run: RunId,
    step: &str,
    moment: SnapshotMoment,
    change: impl FnOnce(&Journal, &mut Manifest),
) {
    let record = journal
        .events(run)
        .unwrap()
        .into_iter()
        .find(|r| {
            matches!(&r.event, Event::WorkspaceSnapshot { step: s, moment: m, .. } if s == step && *m == moment)
        })
        .expect("the snapshot to tamper with");
    let Event::WorkspaceSnapshot {
        step,
        attempt,
        moment,
        writable,
        snapshot: Snapshot::Taken {
            manifest, entries, ..
        },
    } = record.event
    else {
        panic!("not a taken snapshot: {:?}", record.event);
    };
    let mut m = Manifest::load(journal, &manifest).unwrap();
    change(journal, &mut m);
    let changed = Event::WorkspaceSnapshot {
        step,
        attempt,
        moment,
        writable,
        snapshot: Snapshot::Taken {
            manifest: journal.put_payload(&m.encode()).unwrap(),
            entries,
            bytes: 0,
        },
    };
    journal
        .overwrite_raw_for_test(run, record.seq, &changed.encode(record.at_ms))
        .unwrap();
}

/// Gives the manifest's `path` the content `text` (size and sha256 to match).
fn set_file(journal: &Journal, m: &mut Manifest, path: &str, text: &str) {
    use sha2::Digest;
    let i = m
        .entries
        .iter()
        .position(|e| e.path == path)
        .unwrap_or_else(|| panic!("no '{path}' in {m:?}"));
    m.entries[i].kind = EntryKind::File {
        size: text.len() as u64,
        sha256: sha2::Sha256::digest(text.as_bytes()).into(),
        content: journal.put_payload(text.as_bytes()).unwrap(),
    };
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workspace_run_replays_identically_after_its_directory_changed_or_is_gone() {
    let ws = seeded_workspace();
    let engine = engine(Some(ws.path()), SnapshotLimits::default());
    let catalog = catalog();
    let outcome = engine
        .run(notes_graph(&catalog), &catalog, json!({"note": "buy milk"}))
        .await
        .unwrap();
    let out = output(&outcome);
    assert_eq!(out["list"]["entries"].as_array().unwrap().len(), 3, "{out}");
    assert_eq!(
        std::fs::read_to_string(ws.path().join("notes/today.txt")).unwrap(),
        "buy milk"
    );

    // What the journal holds: write saw seed.txt and left three entries; read and list (ro)
    // saw those three and have no after-snapshot.
    let snaps = snapshots(engine.journal(), outcome.run);
    let shape: Vec<(&str, SnapshotMoment, bool, u64, u64)> = snaps
        .iter()
        .map(|(step, attempt, moment, writable, snapshot)| {
            assert_eq!(*attempt, 1);
            match snapshot {
                Snapshot::Taken { entries, bytes, .. } => {
                    (step.as_str(), *moment, *writable, *entries, *bytes)
                }
                Snapshot::Skipped { reason } => panic!("{step}: {reason}"),
            }
        })
        .collect();
    assert_eq!(
        shape,
        [
            ("write#1", SnapshotMoment::Before, true, 1, 300),
            ("write#1", SnapshotMoment::After, true, 3, 308),
            ("read#1", SnapshotMoment::Before, false, 3, 308),
            ("list#1", SnapshotMoment::Before, false, 3, 308),
        ]
    );

    // The original directory changed: replay still gives each step what it saw.
    std::fs::write(ws.path().join("notes/today.txt"), "sell milk").unwrap();
    std::fs::remove_file(ws.path().join("seed.txt")).unwrap();
    let report = engine.replay(outcome.run).await.unwrap();
    assert_eq!(report.steps, identical(&["write#1", "read#1", "list#1"]));
    assert_eq!(
        std::fs::read_to_string(ws.path().join("notes/today.txt")).unwrap(),
        "sell milk",
        "replay wrote into the operator's workspace"
    );

    // Gone, and replayed by an engine that has no workspace at all.
    let gone = ws.path().to_path_buf();
    drop(ws);
    assert!(!gone.exists());
    let report = bare_engine(engine.journal())
        .replay(outcome.run)
        .await
        .unwrap();
    assert_eq!(report.steps, identical(&["write#1", "read#1", "list#1"]));
    assert!(report.identical());
    assert!(!gone.exists(), "replay recreated the original workspace");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tampered_workspace_snapshot_is_a_divergence_naming_the_path() {
    let ws = seeded_workspace();
    let engine = engine(Some(ws.path()), SnapshotLimits::default());
    let catalog = catalog();
    let outcome = engine
        .run(notes_graph(&catalog), &catalog, json!({"note": "buy milk"}))
        .await
        .unwrap();
    output(&outcome);
    let journal = engine.journal();

    // What `read` saw is not what it read: its output diverges.
    tamper_snapshot(
        journal,
        outcome.run,
        "read#1",
        SnapshotMoment::Before,
        |j, m| set_file(j, m, "notes/today.txt", "buy beer"),
    );
    // What `write` left is not what it writes on replay: the tree diverges at that path.
    tamper_snapshot(
        journal,
        outcome.run,
        "write#1",
        SnapshotMoment::After,
        |j, m| set_file(j, m, "notes/today.txt", "buy nothing"),
    );
    // A file `list` saw that is gone: its output diverges too.
    tamper_snapshot(
        journal,
        outcome.run,
        "list#1",
        SnapshotMoment::Before,
        |_, m| m.entries.retain(|e| e.path != "seed.txt"),
    );

    let report = bare_engine(journal).replay(outcome.run).await.unwrap();
    assert!(!report.identical());
    assert_eq!(report.steps.len(), 3, "{:?}", report.steps);
    match &report.steps[0] {
        StepReplay::WorkspaceDiverged {
            step,
            attempt,
            path,
            recorded,
            replayed,
        } => {
            assert_eq!((step.as_str(), *attempt), ("write#1", 1));
            assert_eq!(path, "notes/today.txt");
            assert!(
                recorded.starts_with("a file of 11 bytes (sha256 "),
                "{recorded}"
            );
            assert!(
                replayed.starts_with("a file of 8 bytes (sha256 "),
                "{replayed}"
            );
        }
        other => panic!("expected write#1's tree to diverge, got {other:?}"),
    }
    match &report.steps[1] {
        StepReplay::Diverged {
            step,
            recorded,
            replayed,
            ..
        } => {
            assert_eq!(step, "read#1");
            assert!(recorded.contains("buy milk"), "{recorded}");
            assert!(replayed.contains("buy beer"), "{replayed}");
        }
        other => panic!("expected read#1 to diverge, got {other:?}"),
    }
    match &report.steps[2] {
        StepReplay::Diverged { step, replayed, .. } => {
            assert_eq!(step, "list#1");
            assert!(!replayed.contains("seed.txt"), "{replayed}");
        }
        other => panic!("expected list#1 to diverge, got {other:?}"),
    }

    // A snapshot's file whose bytes no longer match its digest is refused, not served.
    tamper_snapshot(
        journal,
        outcome.run,
        "read#1",
        SnapshotMoment::Before,
        |j, m| {
            let e = m.entries.iter_mut().find(|e| e.path == "seed.txt").unwrap();
            if let EntryKind::File { content, .. } = &mut e.kind {
                *content = j.put_payload(b"not the seed").unwrap();
            }
        },
    );
    let report = bare_engine(journal).replay(outcome.run).await.unwrap();
    match &report.steps[1] {
        StepReplay::Failed { step, message, .. } => {
            assert_eq!(step, "read#1");
            assert!(
                message
                    .contains("the snapshot's file 'seed.txt' does not match its recorded sha256"),
                "{message}"
            );
        }
        other => panic!("expected read#1 to fail, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_over_cap_workspace_is_journaled_as_not_snapshotted_and_replay_says_it_cannot() {
    let ws = tempfile::tempdir().unwrap();
    std::fs::write(ws.path().join("big.bin"), vec![7u8; 4000]).unwrap();
    let limits = SnapshotLimits {
        max_bytes: 1000,
        max_entries: 100,
    };
    let engine = engine(Some(ws.path()), limits);
    let catalog = catalog();
    let outcome = engine
        .run(notes_graph(&catalog), &catalog, json!({"note": "buy milk"}))
        .await
        .unwrap();
    // The run itself is unaffected.
    assert!(wrote_the_note(&output(&outcome)));

    let snaps = snapshots(engine.journal(), outcome.run);
    assert_eq!(snaps.len(), 4);
    let (_, _, _, _, first) = &snaps[0];
    assert_eq!(
        first,
        &Snapshot::Skipped {
            reason: "not snapshotted (4000 bytes, limit 1000; 1 files and directories, limit 100)"
                .into()
        }
    );
    let (_, _, _, _, after) = &snaps[1];
    assert_eq!(
        after,
        &Snapshot::Skipped {
            reason: "not snapshotted (4008 bytes, limit 1000; 3 files and directories, limit 100)"
                .into()
        }
    );

    let report = bare_engine(engine.journal())
        .replay(outcome.run)
        .await
        .unwrap();
    assert!(!report.identical());
    let reasons: Vec<(&str, &str)> = report
        .steps
        .iter()
        .map(|s| match s {
            StepReplay::NotReplayable { step, reason, .. } => (step.as_str(), reason.as_str()),
            other => panic!("expected every step to be not replayable, got {other:?}"),
        })
        .collect();
    assert_eq!(
        reasons,
        [
            (
                "write#1",
                "its workspace was not snapshotted (4000 bytes, limit 1000; 1 files and directories, limit 100), so the files the step saw are not in the journal"
            ),
            (
                "read#1",
                "its workspace was not snapshotted (4008 bytes, limit 1000; 3 files and directories, limit 100), so the files the step saw are not in the journal"
            ),
            (
                "list#1",
                "its workspace was not snapshotted (4008 bytes, limit 1000; 3 files and directories, limit 100), so the files the step saw are not in the journal"
            ),
        ]
    );

    // Too many entries is the same, whatever their size.
    let many = tempfile::tempdir().unwrap();
    for i in 0..5 {
        std::fs::write(many.path().join(format!("f{i}")), "x").unwrap();
    }
    let engine = self::engine(
        Some(many.path()),
        SnapshotLimits {
            max_bytes: 1000,
            max_entries: 3,
        },
    );
    let outcome = engine
        .run(notes_graph(&catalog), &catalog, json!({"note": "n"}))
        .await
        .unwrap();
    output(&outcome);
    assert_eq!(
        snapshots(engine.journal(), outcome.run)[0].4,
        Snapshot::Skipped {
            reason: "not snapshotted (5 bytes, limit 1000; 5 files and directories, limit 3)"
                .into()
        }
    );
}

/// Two `rw` steps of one run in parallel: each holds the workspace from its before-snapshot to
/// its after-snapshot, so their snapshots never interleave and replay reproduces both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rw_steps_sharing_the_workspace_take_turns_so_each_snapshot_is_their_own() {
    let ws = tempfile::tempdir().unwrap();
    let engine = engine(Some(ws.path()), SnapshotLimits::default());
    let catalog = catalog();
    let source = r#"apiVersion: sandgraph.dev/v1
kind: Graph
metadata: { name: two-writers }
spec:
  nodes:
    - id: a
      kind: tool
      component: workspace-fs
      input: { op: "'write'", path: "'log.txt'", content: "'a'", mode: "'append'" }
    - id: b
      kind: tool
      component: workspace-fs
      input: { op: "'write'", path: "'log.txt'", content: "'b'", mode: "'append'" }
    - id: c
      kind: tool
      component: workspace-fs
      input: { op: "'write'", path: "'log.txt'", content: "'c'", mode: "'append'" }
"#;
    let spec = validate::validate("two-writers.yaml", source, &catalog.manifests())
        .unwrap_or_else(|d| panic!("{d}"));
    let graph = Arc::new(CompiledGraph::compile(spec));
    let outcome = engine.run(graph, &catalog, json!({})).await.unwrap();
    output(&outcome);
    let mut content = std::fs::read_to_string(ws.path().join("log.txt")).unwrap();
    assert_eq!(content.len(), 3);

    let snaps = snapshots(engine.journal(), outcome.run);
    assert_eq!(snaps.len(), 6);
    for pair in snaps.chunks(2) {
        assert_eq!(pair[0].0, pair[1].0, "snapshots interleave: {snaps:?}");
        assert_eq!(
            (pair[0].2, pair[1].2),
            (SnapshotMoment::Before, SnapshotMoment::After)
        );
    }
    let report = bare_engine(engine.journal())
        .replay(outcome.run)
        .await
        .unwrap();
    assert!(report.identical(), "{:?}", report.steps);
    // Replay wrote nothing into the workspace.
    let mut again = std::fs::read_to_string(ws.path().join("log.txt")).unwrap();
    sorted_chars(&mut content);
    sorted_chars(&mut again);
    assert_eq!(content, again);
}

fn sorted_chars(s: &mut String) {
    let mut c: Vec<char> = s.chars().collect();
    c.sort();
    *s = c.into_iter().collect();
}

/// `sandgraph run` with `--workspace`, the directory removed, `sandgraph replay`: exit 0 and
/// every step identical; with a cap the workspace exceeds, replay exits 1 and says which steps
/// cannot be replayed and why.
#[test]
fn sandgraph_replay_reproduces_a_workspace_run_from_the_command_line() {
    let work = tempfile::tempdir().unwrap();
    let journal = work.path().join("journal");
    let components = Path::new(
        sandgraph_test_artifacts::TOOLS
            .iter()
            .find(|(n, _)| *n == "workspace-fs")
            .unwrap()
            .1,
    )
    .parent()
    .unwrap()
    .to_path_buf();
    let sandgraph = |args: &[&std::ffi::OsStr]| {
        let out = Command::new(env!("CARGO_BIN_EXE_sandgraph"))
            .args(args)
            .arg("--journal")
            .arg(&journal)
            .arg("--cache-dir")
            .arg(common::cache_dir())
            .env_remove("RUST_LOG")
            .env_remove("SANDGRAPH_FAULT_KILL_AFTER_EVENT")
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let run = |ws: &Path, extra: &[&str]| {
        let graph = root().join("graphs/workspace-notes.yaml");
        let tools = root().join("tools");
        let mut args: Vec<&std::ffi::OsStr> = vec![
            "run".as_ref(),
            graph.as_os_str(),
            "--input".as_ref(),
            r#"{"note":"buy milk"}"#.as_ref(),
            "--tools".as_ref(),
            tools.as_os_str(),
            "--components".as_ref(),
            components.as_os_str(),
            "--workspace".as_ref(),
            ws.as_os_str(),
            "--quiet".as_ref(),
        ];
        args.extend(extra.iter().map(|a| std::ffi::OsStr::new(*a)));
        let (code, stdout, stderr) = sandgraph(&args);
        assert_eq!(code, Some(0), "run: {stdout}{stderr}");
        let out: Value = serde_json::from_str(&stdout).unwrap();
        assert!(wrote_the_note(&out), "{out}");
    };
    let last_run = || {
        let j = Journal::open(&journal).unwrap();
        let runs = j.runs().unwrap();
        runs.last().unwrap().run.to_string()
    };

    let ws = work.path().join("ws");
    std::fs::create_dir(&ws).unwrap();
    std::fs::write(ws.join("seed.txt"), "seed").unwrap();
    run(&ws, &[]);
    let id = last_run();
    std::fs::remove_dir_all(&ws).unwrap();
    let (code, stdout, stderr) = sandgraph(&["replay".as_ref(), id.as_ref()]);
    assert_eq!(code, Some(0), "replay: {stdout}{stderr}");
    assert_eq!(
        stdout.trim(),
        format!(
            "write#1 (attempt 1): identical\nread#1 (attempt 1): identical\nlist#1 (attempt 1): identical\nrun {id}: 3 of 3 steps identical"
        )
    );
    assert!(!ws.exists());

    std::fs::create_dir(&ws).unwrap();
    std::fs::write(ws.join("big.bin"), vec![1u8; 2048]).unwrap();
    run(&ws, &["--workspace-snapshot-max", "1KiB"]);
    let id = last_run();
    let (code, stdout, stderr) = sandgraph(&["replay".as_ref(), id.as_ref()]);
    assert_eq!(code, Some(1), "replay: {stdout}{stderr}");
    assert!(
        stdout.contains(
            "write#1 (attempt 1): CANNOT BE REPLAYED: its workspace was not snapshotted (2048 bytes, limit 1024; 1 files and directories, limit 10000)"
        ),
        "{stdout}"
    );
    assert!(
        stdout.trim_end().ends_with(&format!(
            "run {id}: 0 of 3 steps identical; 3 steps cannot be replayed"
        )),
        "{stdout}"
    );
}

/// Journal garbage collection keeps the files a kept run's snapshot names (reached only
/// through its manifest), however old, and removes them with the run.
#[test]
fn journal_gc_keeps_the_files_of_a_kept_runs_snapshots() {
    let ws = seeded_workspace();
    let journal = Journal::temporary().unwrap();
    let run = RunId::new();
    let inline = |s: &str| PayloadRef::Inline(s.as_bytes().to_vec());
    journal
        .append(
            run,
            &Event::RunCreated {
                graph_name: "g".into(),
                graph_digest: "d".into(),
                graph: inline("{}"),
                components: vec![],
                input: inline("{}"),
            },
            Durability::Durable,
        )
        .unwrap();
    let snapshot = workspace::capture(&journal, ws.path(), SnapshotLimits::default()).unwrap();
    assert!(
        matches!(
            snapshot,
            Snapshot::Taken {
                entries: 1,
                bytes: 300,
                ..
            }
        ),
        "{snapshot:?}"
    );
    journal
        .append(
            run,
            &Event::WorkspaceSnapshot {
                step: "s#1".into(),
                attempt: 1,
                moment: SnapshotMoment::Before,
                writable: true,
                snapshot,
            },
            Durability::Durable,
        )
        .unwrap();
    let seed = PayloadRef::Blob({
        use sha2::Digest;
        sha2::Sha256::digest("s".repeat(300).as_bytes()).into()
    });
    journal.gc(std::time::Duration::ZERO).unwrap();
    assert_eq!(journal.payload(&seed).unwrap(), "s".repeat(300).as_bytes());
    journal
        .append(
            run,
            &Event::RunFinished {
                status: RunStatus::Succeeded,
                output: None,
                error: None,
            },
            Durability::Durable,
        )
        .unwrap();
    journal.gc(std::time::Duration::ZERO).unwrap();
    assert!(matches!(
        journal.payload(&seed),
        Err(JournalError::MissingBlob { .. })
    ));
}
