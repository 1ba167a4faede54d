//! Power loss: a child process appends to an on-disk journal from eight threads (durable and
//! buffered appends, inline and blob payloads, runs created and finished) and is SIGKILLed at a
//! random moment. The parent then makes the disk look as a power cut would have left it:
//!
//! - every byte of the write-ahead log past its last `fdatasync` (the journal reports each sync's
//!   length) is dropped sector by sector: kept, zeroed, or scrambled, chosen at random;
//! - sled's own files are either kept as the kill left them, or rolled back to their state before
//!   the workload began (nothing sled wrote since its last sync survives).
//!
//! Reopening must find every durable append the child was told had succeeded, each run's events
//! a gapless prefix holding exactly what was appended, and a journal that takes new appends.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use common::power_cut::{
    Rng, Writer, cut_power_to_log, note_sync, ready_then_wait_for_go, seed, sync_reporter,
};
use sandgraph::journal::wal::WalOptions;
use sandgraph::journal::{
    Crossing, Durability, Event, Journal, LOCK_WAIT, PayloadRef, RunId, RunStatus,
};

mod common;

const CHILD_ENV: &str = "SANDGRAPH_POWER_LOSS_CHILD";
const SEGMENT_ENV: &str = "SANDGRAPH_POWER_LOSS_SEGMENT_BYTES";
const EVENTS_PER_RUN: u64 = 40;
const WRITERS: usize = 8;

/// The event appended at `seq` of every run, and whether the append is durable.
fn expected(journal: Option<&Journal>, seq: u64) -> (Event, Durability) {
    let payload = |bytes: Vec<u8>| match journal {
        Some(j) => j.put_payload(&bytes).unwrap(),
        None => PayloadRef::Inline(bytes),
    };
    match seq {
        0 => (
            Event::RunCreated {
                graph_name: "power-loss".into(),
                graph_digest: "sha256:00".into(),
                graph: PayloadRef::Inline(b"{}".to_vec()),
                components: vec![],
                input: PayloadRef::Inline(b"{}".to_vec()),
            },
            Durability::Durable,
        ),
        s if s == EVENTS_PER_RUN - 1 => (
            Event::RunFinished {
                status: RunStatus::Succeeded,
                output: Some(PayloadRef::Inline(s.to_le_bytes().to_vec())),
                error: None,
            },
            Durability::Durable,
        ),
        s if s.is_multiple_of(3) => (
            Event::StepCompleted {
                step: format!("s{s}"),
                attempt: 1,
                output: payload(completion_body(s)),
            },
            Durability::Durable,
        ),
        s => (
            Event::Crossing {
                step: format!("s{s}"),
                attempt: 1,
                crossing: Crossing::Random {
                    bytes: s.to_be_bytes().to_vec(),
                },
            },
            Durability::Buffered,
        ),
    }
}

/// The output of the completion at `seq`: every fourth is large enough for the blob tree.
fn completion_body(seq: u64) -> Vec<u8> {
    let len = if seq.is_multiple_of(4) { 3000 } else { 40 };
    (0..len).map(|i| (seq as usize * 31 + i) as u8).collect()
}

/// In the child process (each test starts its own binary again, filtered to itself, with
/// [`CHILD_ENV`] set): becomes the appender and never returns. In the test itself: nothing.
fn be_the_child_if_started_as_one() {
    if let Ok(dir) = std::env::var(CHILD_ENV) {
        append_until_killed(&dir);
    }
}

/// The child: prints `sync <segment> <length>` after each sync of the log and `ack <run> <seq>`
/// after each durable append returns, and appends until it is killed.
fn append_until_killed(dir: &str) -> ! {
    let segment_bytes: u64 = std::env::var(SEGMENT_ENV).unwrap().parse().unwrap();
    let out = Arc::new(Mutex::new(std::io::stdout()));
    let say = {
        let out = out.clone();
        move |line: String| {
            let mut o = out.lock().unwrap();
            writeln!(o, "{line}").unwrap();
            o.flush().unwrap();
        }
    };
    let options = WalOptions {
        segment_bytes,
        on_sync: Some(sync_reporter(say.clone())),
    };
    let journal = Arc::new(Journal::open_with(Path::new(dir), LOCK_WAIT, options).unwrap());
    ready_then_wait_for_go(&say, "power-loss child");
    for _ in 0..WRITERS {
        let (journal, say) = (journal.clone(), say.clone());
        std::thread::spawn(move || {
            loop {
                let run = RunId::new();
                for seq in 0..EVENTS_PER_RUN {
                    let (event, durability) = expected(Some(&journal), seq);
                    let got = journal.append(run, &event, durability).unwrap();
                    assert_eq!(got, seq);
                    if durability == Durability::Durable {
                        say(format!("ack {run} {seq}"));
                    }
                }
            }
        });
    }
    // The writers append until the parent kills this process.
    loop {
        std::thread::park();
    }
}

/// What the child reported before it died.
#[derive(Default)]
struct Reported {
    /// Synced length per segment file name.
    synced: HashMap<String, u64>,
    /// Per run, the highest sequence acknowledged durable.
    acked: HashMap<RunId, u64>,
    acks: usize,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum SledFiles {
    /// As the kill left them (written to the OS, so still there).
    Kept,
    /// As they were synced before the workload started.
    RolledBack,
}

/// Copies sled's files (not the log) from `from` to `to`.
fn copy_sled_files(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        if entry.file_name() == "wal" {
            continue;
        }
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_sled_files(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// Every file under `dir` except the log, so a rollback also removes what sled created later.
fn clear_sled_files(dir: &Path) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        if entry.file_name() == "wal" {
            continue;
        }
        if entry.file_type().unwrap().is_dir() {
            std::fs::remove_dir_all(entry.path()).unwrap();
        } else {
            std::fs::remove_file(entry.path()).unwrap();
        }
    }
}

/// Notes one line the child printed.
fn note_report(line: &str, r: &mut Reported) {
    if note_sync(line, &mut r.synced) {
        return;
    }
    let mut words = line.split(' ');
    if let (Some("ack"), Some(run), Some(seq)) = (words.next(), words.next(), words.next()) {
        let (run, seq) = (RunId::parse(run).unwrap(), seq.parse::<u64>().unwrap());
        let e = r.acked.entry(run).or_default();
        *e = (*e).max(seq);
        r.acks += 1;
    }
}

/// One power cut; returns how many segments the log had used.
fn power_cut(test: &str, seed: u64, segment_bytes: u64, sled: SledFiles) -> usize {
    eprintln!("power cut: seed {seed}, segments of {segment_bytes} bytes, sled files {sled:?}");
    let mut rng = Rng(seed);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("journal");
    let before = tmp.path().join("sled-before");
    let reported = Arc::new(Mutex::new(Reported::default()));
    let mut writer = Writer::start(
        test,
        &[
            (CHILD_ENV, dir.display().to_string()),
            (SEGMENT_ENV, segment_bytes.to_string()),
        ],
        {
            let reported = reported.clone();
            move |line| note_report(&line, &mut reported.lock().unwrap())
        },
    );
    if sled == SledFiles::RolledBack {
        copy_sled_files(&dir, &before);
    }
    writer.go();
    // Let it acknowledge a few hundred durable appends, then cut at a random moment.
    let want = 200 + (rng.next() % 400) as usize;
    writer.kill_when(&mut rng, "acknowledged appends", || {
        reported.lock().unwrap().acks >= want
    });
    let reported = Arc::try_unwrap(reported)
        .ok()
        .unwrap()
        .into_inner()
        .unwrap();

    let segments = std::fs::read_dir(dir.join("wal")).unwrap().count();
    let sectors = cut_power_to_log(&dir, &reported.synced, &mut rng);
    if sled == SledFiles::RolledBack {
        clear_sled_files(&dir);
        copy_sled_files(&before, &dir);
    }
    eprintln!(
        "  {} acknowledged appends in {} runs; {sectors} unsynced log sectors rewritten; {segments} segment(s) on disk",
        reported.acks,
        reported.acked.len()
    );

    let journal = Journal::open(&dir).unwrap();
    check(&journal, &reported);
    // The recovered journal takes appends where each run left off, and they last.
    let (run, _) = reported.acked.iter().next().unwrap();
    let next = journal.events(*run).unwrap().len() as u64;
    if next < EVENTS_PER_RUN {
        let (event, _) = expected(Some(&journal), next);
        assert_eq!(
            journal.append(*run, &event, Durability::Durable).unwrap(),
            next
        );
    }
    let count = journal.events(*run).unwrap().len();
    drop(journal);
    let journal = Journal::open(&dir).unwrap();
    check(&journal, &reported);
    assert_eq!(journal.events(*run).unwrap().len(), count);
    reported.synced.len()
}

/// Every acknowledged append is there, and every run holds a gapless prefix of what was
/// appended to it, byte for byte.
fn check(journal: &Journal, reported: &Reported) {
    let mut lengths: BTreeMap<RunId, u64> = BTreeMap::new();
    for summary in journal.runs().unwrap() {
        let events = journal.events(summary.run).unwrap();
        for (i, record) in events.iter().enumerate() {
            assert_eq!(record.seq, i as u64, "run {} has a gap", summary.run);
            let what = format!("run {} event {}", summary.run, record.seq);
            match &record.event {
                // The payload is read back (a blob must have survived with its event).
                Event::StepCompleted {
                    step,
                    attempt,
                    output,
                } => {
                    assert_eq!(
                        (step.as_str(), *attempt),
                        (format!("s{}", record.seq).as_str(), 1),
                        "{what}"
                    );
                    let body = journal
                        .payload(output)
                        .unwrap_or_else(|e| panic!("{what}: {e}"));
                    assert_eq!(body, completion_body(record.seq), "{what}");
                }
                other => assert_eq!(
                    *other,
                    expected(None, record.seq).0,
                    "{what} differs from what was appended"
                ),
            }
        }
        lengths.insert(summary.run, events.len() as u64);
    }
    for (run, seq) in &reported.acked {
        let have = lengths.get(run).copied().unwrap_or(0);
        assert!(
            have > *seq,
            "run {run}: event {seq} was acknowledged durable, but only {have} events survived"
        );
    }
}

#[test]
fn acknowledged_appends_survive_a_power_cut_with_sled_files_kept() {
    be_the_child_if_started_as_one();
    for _ in 0..3 {
        power_cut(
            "acknowledged_appends_survive_a_power_cut_with_sled_files_kept",
            seed(),
            16 << 20,
            SledFiles::Kept,
        );
    }
}

#[test]
fn acknowledged_appends_survive_a_power_cut_that_loses_everything_sled_wrote() {
    be_the_child_if_started_as_one();
    for _ in 0..3 {
        power_cut(
            "acknowledged_appends_survive_a_power_cut_that_loses_everything_sled_wrote",
            seed(),
            16 << 20,
            SledFiles::RolledBack,
        );
    }
}

#[test]
fn acknowledged_appends_survive_a_power_cut_across_checkpoints() {
    be_the_child_if_started_as_one();
    for _ in 0..2 {
        let segments = power_cut(
            "acknowledged_appends_survive_a_power_cut_across_checkpoints",
            seed(),
            32 << 10,
            SledFiles::Kept,
        );
        assert!(
            segments >= 3,
            "the log should have moved through several segments, it used {segments}"
        );
    }
}

/// The log's framing rejects what is not a log: a segment of garbage is refused by name rather
/// than replayed, and an empty log directory opens.
#[test]
fn a_log_segment_that_is_not_a_log_is_refused_by_name() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("journal");
    drop(Journal::open(&dir).unwrap());
    let segment: PathBuf = std::fs::read_dir(dir.join("wal"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let mut header = b"SGJWAL\0\0".to_vec();
    header.extend_from_slice(&99u64.to_le_bytes());
    std::fs::write(&segment, header).unwrap();
    let e = Journal::open(&dir).err().expect("an unknown log format");
    let msg = e.to_string();
    assert!(
        msg.contains("cannot recover the journal") && msg.contains("format 99"),
        "{msg}"
    );
}
