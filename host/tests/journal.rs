//! The durable journal: every event type round-trips, payloads are stored once, durable appends
//! survive reopening, corruption is a typed error naming run and sequence, group commit shares
//! flushes, gc drops only finished old runs, and the recording seam replays crossings. The
//! storage tests run on every store: sled, and PostgreSQL in a throwaway cluster.

mod common;

use std::net::IpAddr;
use std::sync::{Arc, Barrier};
use std::time::Duration;

use common::{Harness, TestServer, hostile};

use sandgraph::journal::crossings::{CrossingError, HttpPlan, StepCrossings};
use sandgraph::journal::{
    Crossing, Durability, Event, Journal, JournalError, PayloadRef, PinnedComponent, RunId,
    RunStatus,
};

/// One journal store under test; `open` opens (again) the same storage.
struct Backend {
    name: &'static str,
    open: Box<dyn Fn() -> Journal>,
    _keep: Box<dyn std::any::Any>,
}

/// Every store a journal runs on: sled in a temporary directory, and a fresh database in a
/// throwaway PostgreSQL cluster.
fn backends() -> Vec<Backend> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    let pg = common::postgres::Postgres::start();
    let url = pg.database("journal_test");
    vec![
        Backend {
            name: "sled",
            open: Box::new(move || Journal::open(&path).unwrap()),
            _keep: Box::new(dir),
        },
        Backend {
            name: "postgres",
            open: Box::new(move || Journal::open_location(&url).unwrap()),
            _keep: Box::new(pg),
        },
    ]
}

fn created(journal: &Journal) -> Event {
    Event::RunCreated {
        graph_name: "demo".into(),
        graph_digest: "sha256:aa".into(),
        graph: journal.put_payload(br#"{"kind":"Graph"}"#).unwrap(),
        components: vec![PinnedComponent {
            name: "fetch".into(),
            digest: "sha256:bb".into(),
            wasm: journal.put_payload(&vec![9u8; 4096]).unwrap(),
            manifest: journal.put_payload(b"kind: ToolManifest").unwrap(),
        }],
        input: journal.put_payload(br#"{"q":1}"#).unwrap(),
    }
}

fn every_event(journal: &Journal) -> Vec<Event> {
    let big = journal.put_payload(&vec![7u8; 10_000]).unwrap();
    let small = journal.put_payload(b"{}").unwrap();
    let step = || "fetch".to_string();
    let crossing = |c| Event::Crossing {
        step: step(),
        attempt: 1,
        crossing: c,
    };
    vec![
        created(journal),
        Event::StepScheduled {
            step: step(),
            node: "fetch".into(),
            iteration: 1,
            input: small.clone(),
        },
        Event::StepStarted {
            step: step(),
            attempt: 1,
        },
        crossing(Crossing::ToolRequest {
            tool: "http-get".into(),
            input: small.clone(),
        }),
        crossing(Crossing::ToolResult {
            ok: true,
            output: big.clone(),
        }),
        crossing(Crossing::HttpIntent {
            method: "POST".into(),
            uri: "http://127.0.0.1:1/x".into(),
            idempotency_key: "k".into(),
        }),
        crossing(Crossing::HttpResponse {
            status: 201,
            headers: vec![("content-type".into(), b"text/plain".to_vec())],
            body: big.clone(),
        }),
        crossing(Crossing::HttpFailed {
            message: "connection reset".into(),
        }),
        crossing(Crossing::WallClock {
            seconds: 1_800_000_000,
            nanoseconds: 5,
        }),
        crossing(Crossing::MonotonicClock { nanoseconds: 42 }),
        crossing(Crossing::Random {
            bytes: vec![1, 2, 3],
        }),
        crossing(Crossing::Denial {
            capability: "http".into(),
            target: "example.invalid".into(),
        }),
        Event::StepFailed {
            step: step(),
            attempt: 1,
            kind: "tool_failed".into(),
            message: "boom".into(),
            retry_in_ms: Some(500),
        },
        Event::StepCompleted {
            step: step(),
            attempt: 2,
            output: big,
        },
        Event::RunFinished {
            status: RunStatus::Succeeded,
            output: Some(small),
            error: None,
        },
    ]
}

#[test]
fn every_event_type_round_trips_in_order() {
    for b in backends() {
        eprintln!("store: {}", b.name);
        let journal = (b.open)();
        let run = RunId::new();
        let events = every_event(&journal);
        for (i, e) in events.iter().enumerate() {
            assert_eq!(
                journal.append(run, e, Durability::Buffered).unwrap(),
                i as u64
            );
        }
        let read: Vec<Event> = journal
            .events(run)
            .unwrap()
            .into_iter()
            .map(|r| r.event)
            .collect();
        assert_eq!(read, events);
        let runs = journal.runs().unwrap();
        assert_eq!(runs.len(), 1);
        assert_eq!(runs[0].status, RunStatus::Succeeded);
        assert_eq!(runs[0].events, events.len() as u64);
        assert!(journal.unfinished_runs().unwrap().is_empty());
    }
}

#[test]
fn equal_payloads_are_stored_once_and_read_back() {
    for b in backends() {
        eprintln!("store: {}", b.name);
        let journal = (b.open)();
        let body = vec![9u8; 100_000];
        let a = journal.put_payload(&body).unwrap();
        let b = journal.put_payload(&body).unwrap();
        assert_eq!(a, b);
        assert!(matches!(a, PayloadRef::Blob(_)));
        assert_eq!(journal.payload(&a).unwrap(), body);
        let small = journal.put_payload(b"tiny").unwrap();
        assert_eq!(small, PayloadRef::Inline(b"tiny".to_vec()));
        let missing = PayloadRef::Blob([3; 32]);
        match journal.payload(&missing) {
            Err(JournalError::MissingBlob { digest }) => assert_eq!(digest, "03".repeat(32)),
            other => panic!("expected MissingBlob, got {other:?}"),
        }
    }
}

#[test]
fn durable_events_survive_reopening() {
    for b in backends() {
        eprintln!("store: {}", b.name);
        let run = RunId::new();
        {
            let journal = (b.open)();
            journal
                .append(run, &created(&journal), Durability::Durable)
                .unwrap();
            let out = journal.put_payload(&vec![1u8; 4096]).unwrap();
            let done = Event::StepCompleted {
                step: "a".into(),
                attempt: 1,
                output: out,
            };
            journal.append(run, &done, Durability::Durable).unwrap();
        }
        let journal = (b.open)();
        let events = journal.events(run).unwrap();
        assert_eq!(events.len(), 2);
        match &events[1].event {
            Event::StepCompleted { output, .. } => {
                assert_eq!(journal.payload(output).unwrap(), vec![1u8; 4096])
            }
            other => panic!("expected StepCompleted, got {other:?}"),
        }
        assert_eq!(journal.unfinished_runs().unwrap()[0].run, run);
        // Sequence numbering continues after reopening.
        let seq = journal
            .append(
                run,
                &Event::StepStarted {
                    step: "b".into(),
                    attempt: 1,
                },
                Durability::Durable,
            )
            .unwrap();
        assert_eq!(seq, 2);
    }
}

#[test]
fn corrupt_record_names_run_and_sequence() {
    for b in backends() {
        eprintln!("store: {}", b.name);
        let journal = (b.open)();
        let run = RunId::new();
        journal
            .append(run, &created(&journal), Durability::Buffered)
            .unwrap();
        journal
            .append(
                run,
                &Event::StepStarted {
                    step: "a".into(),
                    attempt: 1,
                },
                Durability::Buffered,
            )
            .unwrap();
        journal
            .overwrite_raw_for_test(run, 1, &[2, 0, 0, 0, 0, 0, 0, 0, 1, 0xff, 0xff])
            .unwrap();
        match journal.events(run) {
            Err(JournalError::Corrupt {
                run: r,
                seq,
                reason,
            }) => {
                assert_eq!((r, seq), (run, 1));
                assert!(reason.contains("undecodable"), "{reason}");
            }
            other => panic!("expected Corrupt, got {other:?}"),
        }
        journal.overwrite_raw_for_test(run, 1, &[99, 0]).unwrap();
        let err = journal.events(run).unwrap_err().to_string();
        assert_eq!(
            err,
            format!(
                "run {run} event 1 is corrupt: format version 99, this build reads versions 2 to 5"
            )
        );
        journal.overwrite_raw_for_test(run, 1, &[2, 0, 0]).unwrap();
        let err = journal.events(run).unwrap_err().to_string();
        assert_eq!(
            err,
            format!("run {run} event 1 is corrupt: record shorter than its header")
        );
    }
}

#[test]
fn appends_to_unknown_or_recreated_runs_are_refused() {
    for b in backends() {
        eprintln!("store: {}", b.name);
        let journal = (b.open)();
        let run = RunId::new();
        let started = Event::StepStarted {
            step: "a".into(),
            attempt: 1,
        };
        assert!(matches!(
            journal.append(run, &started, Durability::Buffered),
            Err(JournalError::UnknownRun { run: r }) if r == run
        ));
        journal
            .append(run, &created(&journal), Durability::Buffered)
            .unwrap();
        assert!(matches!(
            journal.append(run, &created(&journal), Durability::Buffered),
            Err(JournalError::RunExists { run: r }) if r == run
        ));
        assert!(matches!(
            RunId::parse("xyz"),
            Err(JournalError::BadRunId { text }) if text == "xyz"
        ));
        assert_eq!(RunId::parse(&run.to_string()).unwrap(), run);
    }
}

#[test]
fn concurrent_durable_appends_share_flushes() {
    for b in backends() {
        eprintln!("store: {}", b.name);
        let journal = Arc::new((b.open)());
        const WRITERS: usize = 16;
        const PER_WRITER: usize = 25;
        let runs: Vec<RunId> = (0..WRITERS).map(|_| RunId::new()).collect();
        for run in &runs {
            journal
                .append(*run, &created(&journal), Durability::Buffered)
                .unwrap();
        }
        let before = journal.flush_count();
        let barrier = Arc::new(Barrier::new(WRITERS));
        let handles: Vec<_> = runs
            .iter()
            .map(|run| {
                let (journal, barrier, run) = (journal.clone(), barrier.clone(), *run);
                std::thread::spawn(move || {
                    barrier.wait();
                    for i in 0..PER_WRITER {
                        let e = Event::StepCompleted {
                            step: format!("s{i}"),
                            attempt: 1,
                            output: PayloadRef::Inline(vec![i as u8]),
                        };
                        journal.append(run, &e, Durability::Durable).unwrap();
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        let flushes = journal.flush_count() - before;
        eprintln!("{}: {flushes} flushes", b.name);
        let appends = (WRITERS * PER_WRITER) as u64;
        assert!(flushes >= 1);
        assert!(
            flushes * 2 <= appends,
            "{appends} durable appends took {flushes} flushes; group commit should share them"
        );
        drop(journal);
        let journal = (b.open)();
        for run in &runs {
            assert_eq!(journal.events(*run).unwrap().len(), PER_WRITER + 1);
        }
    }
}

#[test]
fn gc_removes_only_finished_runs_and_their_blobs() {
    for b in backends() {
        eprintln!("store: {}", b.name);
        let journal = (b.open)();
        let (done, running) = (RunId::new(), RunId::new());
        for run in [done, running] {
            journal
                .append(run, &created(&journal), Durability::Buffered)
                .unwrap();
        }
        let only_done = journal.put_payload(&vec![5u8; 1000]).unwrap();
        let shared = journal.put_payload(&vec![6u8; 1000]).unwrap();
        for (run, out) in [(done, &only_done), (done, &shared), (running, &shared)] {
            let e = Event::StepCompleted {
                step: "a".into(),
                attempt: 1,
                output: out.clone(),
            };
            journal.append(run, &e, Durability::Buffered).unwrap();
        }
        let fin = Event::RunFinished {
            status: RunStatus::Failed,
            output: None,
            error: Some("boom".into()),
        };
        journal.append(done, &fin, Durability::Durable).unwrap();
        // Too young: nothing goes.
        let r = journal.gc(Duration::from_secs(3600)).unwrap();
        assert_eq!((r.runs, r.events, r.blobs), (0, 0, 0));
        let r = journal.gc(Duration::ZERO).unwrap();
        assert_eq!((r.runs, r.events, r.blobs), (1, 4, 1));
        assert!(matches!(
            journal.events(done),
            Err(JournalError::UnknownRun { .. })
        ));
        assert_eq!(journal.payload(&shared).unwrap(), vec![6u8; 1000]);
        assert!(matches!(
            journal.payload(&only_done),
            Err(JournalError::MissingBlob { .. })
        ));
        assert_eq!(journal.runs().unwrap().len(), 1);
    }
}

fn journal_with_run() -> (Arc<Journal>, RunId) {
    let journal = Arc::new(Journal::temporary().unwrap());
    let run = RunId::new();
    journal
        .append(run, &created(&journal), Durability::Buffered)
        .unwrap();
    (journal, run)
}

#[test]
fn clock_and_random_replay_in_order_then_go_live() {
    let (journal, run) = journal_with_run();
    let rec = StepCrossings::record(journal.clone(), run, "s", 1);
    let wall = rec.wall_clock(|| Duration::new(100, 7));
    let mono = rec.monotonic_clock(|| 55);
    let mut buf = [0u8; 4];
    rec.random(&mut buf, |b| b.copy_from_slice(&[1, 2, 3, 4]));
    assert_eq!((wall, mono, buf), (Duration::new(100, 7), 55, [1, 2, 3, 4]));

    let rep = StepCrossings::replay(journal.clone(), run, "s", 1).unwrap();
    assert_eq!(rep.pending_recorded(), 3);
    assert_eq!(
        rep.wall_clock(|| panic!("live clock read during replay")),
        wall
    );
    assert_eq!(rep.monotonic_clock(|| panic!("live read")), 55);
    let mut again = [0u8; 4];
    rep.random(&mut again, |_| panic!("live random during replay"));
    assert_eq!(again, buf);
    // Past the recording: live and journaled.
    assert_eq!(rep.monotonic_clock(|| 99), 99);
    assert!(rep.take_problem().is_none());
    let crossings = journal
        .events(run)
        .unwrap()
        .into_iter()
        .filter(|r| matches!(r.event, Event::Crossing { .. }))
        .count();
    assert_eq!(crossings, 4);
}

#[test]
fn replay_that_asks_for_something_else_reports_divergence() {
    let (journal, run) = journal_with_run();
    let rec = StepCrossings::record(journal.clone(), run, "s", 1);
    rec.monotonic_clock(|| 1);
    let rep = StepCrossings::replay(journal, run, "s", 1).unwrap();
    let mut buf = [0u8; 2];
    rep.random(&mut buf, |b| b.fill(8));
    assert_eq!(buf, [8, 8]);
    let problem = rep.take_problem().unwrap().to_string();
    assert!(
        problem.contains(
            "recorded as a monotonic-clock read, but the guest now asks for 2 random bytes"
        ),
        "{problem}"
    );
}

#[test]
fn http_is_replayed_and_interrupted_post_is_outcome_unknown() {
    let (journal, run) = journal_with_run();
    let rec = StepCrossings::record(journal.clone(), run, "s", 1);
    let key_get = match rec.http_request("GET", "http://127.0.0.1:9/a").unwrap() {
        HttpPlan::Send { idempotency_key } => idempotency_key,
        other => panic!("expected Send, got {other:?}"),
    };
    rec.http_response(200, vec![("x".into(), b"y".to_vec())], &vec![4u8; 600])
        .unwrap();
    let key_post = match rec.http_request("POST", "http://127.0.0.1:9/b").unwrap() {
        HttpPlan::Send { idempotency_key } => idempotency_key,
        other => panic!("expected Send, got {other:?}"),
    };
    assert_ne!(key_get, key_post);
    // Crash here: the POST's intent is durable, its result never arrived.

    let rep = StepCrossings::replay(journal.clone(), run, "s", 1).unwrap();
    assert_eq!(
        rep.http_request("GET", "http://127.0.0.1:9/a").unwrap(),
        HttpPlan::Replay {
            status: 200,
            headers: vec![("x".into(), b"y".to_vec())],
            body: vec![4u8; 600],
        }
    );
    match rep.http_request("POST", "http://127.0.0.1:9/b") {
        Err(CrossingError::OutcomeUnknown {
            method,
            idempotency_key,
            ..
        }) => assert_eq!(
            (method.as_str(), idempotency_key),
            ("POST", key_post.clone())
        ),
        other => panic!("expected OutcomeUnknown, got {other:?}"),
    }

    // With a remote that honours the key, the same POST is re-sent with the same key.
    let rep = StepCrossings::replay(journal.clone(), run, "s", 1).unwrap();
    rep.set_idempotency_key_honoured(true);
    rep.http_request("GET", "http://127.0.0.1:9/a").unwrap();
    assert_eq!(
        rep.http_request("POST", "http://127.0.0.1:9/b").unwrap(),
        HttpPlan::Send {
            idempotency_key: key_post
        }
    );

    // A replay that asks for a different request diverges.
    let rep = StepCrossings::replay(journal, run, "s", 1).unwrap();
    match rep.http_request("GET", "http://127.0.0.1:9/other") {
        Err(CrossingError::Divergence { recorded, .. }) => {
            assert_eq!(recorded, "GET http://127.0.0.1:9/a")
        }
        other => panic!("expected Divergence, got {other:?}"),
    }
}

#[test]
fn interrupted_get_is_sent_again_with_the_same_key() {
    let (journal, run) = journal_with_run();
    let rec = StepCrossings::record(journal.clone(), run, "s", 1);
    let HttpPlan::Send { idempotency_key } =
        rec.http_request("GET", "http://127.0.0.1:9/a").unwrap()
    else {
        panic!("expected Send")
    };
    let rep = StepCrossings::replay(journal, run, "s", 1).unwrap();
    assert_eq!(
        rep.http_request("GET", "http://127.0.0.1:9/a").unwrap(),
        HttpPlan::Send { idempotency_key }
    );
}

// ------------------------------------------------------------ real guests through the sandbox

fn crossing_count(journal: &Journal, run: RunId) -> usize {
    journal
        .events(run)
        .unwrap()
        .iter()
        .filter(|r| matches!(r.event, Event::Crossing { .. }))
        .count()
}

fn local_harness() -> Harness {
    let mut h = Harness::new();
    h.policy.allow_private = vec!["127.0.0.1".parse::<IpAddr>().unwrap()];
    h
}

#[tokio::test(flavor = "multi_thread")]
async fn guest_clock_and_random_replay_byte_for_byte() {
    let h = Harness::new();
    let tool = h.load(hostile("journal_clock_random"));
    let grant = h.grant("journal_clock_random", "");
    let (journal, run) = journal_with_run();

    let rec = StepCrossings::record(journal.clone(), run, "clock", 1);
    let recorded = h
        .sandbox
        .call_journaled(&tool, &grant, "{}", &rec)
        .await
        .unwrap();
    let output = recorded.result.clone().unwrap();
    let crossings = crossing_count(&journal, run);
    assert!(crossings >= 7, "only {crossings} crossings journaled");

    let rep = StepCrossings::replay(journal.clone(), run, "clock", 1).unwrap();
    let replayed = h
        .sandbox
        .call_journaled(&tool, &grant, "{}", &rep)
        .await
        .unwrap();
    assert_eq!(replayed.result.unwrap(), output);
    assert_eq!(rep.pending_recorded(), 0);
    assert_eq!(crossing_count(&journal, run), crossings, "replay went live");

    // Without a journal the values are live: the random bytes differ.
    let live = h.sandbox.call(&tool, &grant, "{}").await.result.unwrap();
    assert_ne!(live, output);
}

#[tokio::test(flavor = "multi_thread")]
async fn http_is_replayed_from_the_journal_without_the_network() {
    let server = TestServer::start();
    let h = local_harness();
    let tool = h.load(hostile("egress_fetch"));
    let spec = format!(
        "egress: [{{ scheme: http, host: 127.0.0.1, port: {}, paths: ['/ok'] }}]",
        server.port()
    );
    let grant = h.grant("egress_fetch", &spec);
    let input = format!(r#"{{"url":"{}","method":"GET"}}"#, server.url("/ok"));
    let (journal, run) = journal_with_run();

    let rec = StepCrossings::record(journal.clone(), run, "fetch", 1);
    let first = h
        .sandbox
        .call_journaled(&tool, &grant, &input, &rec)
        .await
        .unwrap();
    let output = first.result.clone().unwrap();
    let connections = server.connections();
    assert_eq!(connections, 1);
    let seen = server.seen.lock().unwrap().clone();
    let key = seen[0]
        .headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("idempotency-key"))
        .map(|(_, v)| v.clone())
        .expect("the request carries an Idempotency-Key");
    let intent_key = journal
        .events(run)
        .unwrap()
        .into_iter()
        .find_map(|r| match r.event {
            Event::Crossing {
                crossing:
                    Crossing::HttpIntent {
                        idempotency_key, ..
                    },
                ..
            } => Some(idempotency_key),
            _ => None,
        })
        .unwrap();
    assert_eq!(key, intent_key);

    let rep = StepCrossings::replay(journal.clone(), run, "fetch", 1).unwrap();
    let again = h
        .sandbox
        .call_journaled(&tool, &grant, &input, &rep)
        .await
        .unwrap();
    assert_eq!(again.result.unwrap(), output);
    assert_eq!(
        server.connections(),
        connections,
        "replay touched the network"
    );
    assert_eq!(again.audit.egress[0].reason, "replayed from the journal");
}

/// Waits (with a deadline) until the server has recorded `n` requests.
fn wait_for_requests(server: &TestServer, n: usize) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while server.seen.lock().unwrap().len() < n {
        assert!(
            std::time::Instant::now() < deadline,
            "server never saw {n} requests"
        );
        std::thread::yield_now();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn interrupted_post_is_outcome_unknown_and_not_sent_again() {
    let server = TestServer::start();
    let h = local_harness();
    let tool = h.load(hostile("egress_fetch"));
    let spec = format!(
        "egress: [{{ scheme: http, host: 127.0.0.1, port: {}, paths: ['/slow'], methods: [POST] }}]\nlimits: {{ timeout: 500ms }}",
        server.port()
    );
    let grant = h.grant("egress_fetch", &spec);
    let url = server.url("/slow");
    let input = format!(r#"{{"url":"{url}","method":"POST"}}"#);
    let (journal, run) = journal_with_run();

    // The first attempt is cut off while the POST is in flight (the server never answers in
    // time): the intent is journaled, the result is not.
    let first = StepCrossings::record(journal.clone(), run, "post", 1);
    let report = h
        .sandbox
        .call_journaled(&tool, &grant, &input, &first)
        .await
        .unwrap();
    assert!(
        matches!(
            report.result,
            Err(sandgraph::sandbox::outcome::CallError::Timeout { .. })
        ),
        "{:?}",
        report.result
    );
    wait_for_requests(&server, 1);
    let seen = server.seen.lock().unwrap().clone();
    assert_eq!(seen[0].method, "POST");
    let sent_key = seen[0]
        .headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("idempotency-key"))
        .map(|(_, v)| v.clone())
        .expect("the POST carries an Idempotency-Key");

    let resumed = StepCrossings::replay(journal.clone(), run, "post", 1).unwrap();
    match h
        .sandbox
        .call_journaled(&tool, &grant, &input, &resumed)
        .await
    {
        Err(CrossingError::OutcomeUnknown {
            method,
            uri,
            idempotency_key,
            ..
        }) => {
            assert_eq!((method.as_str(), uri.as_str()), ("POST", url.as_str()));
            assert_eq!(idempotency_key, sent_key);
        }
        Err(other) => panic!("expected OutcomeUnknown, got {other}"),
        Ok(report) => panic!("expected OutcomeUnknown, got {:?}", report.result),
    }
    assert_eq!(server.connections(), 1, "the POST was sent again");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_request_replays_with_the_same_error_code() {
    // A port with nothing listening: the live request is refused.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let h = local_harness();
    let tool = h.load(hostile("egress_fetch"));
    let spec = format!("egress: [{{ scheme: http, host: 127.0.0.1, port: {port} }}]");
    let grant = h.grant("egress_fetch", &spec);
    let input = format!(r#"{{"url":"http://127.0.0.1:{port}/x","method":"GET"}}"#);
    let (journal, run) = journal_with_run();

    let rec = StepCrossings::record(journal.clone(), run, "fetch", 1);
    let live = h
        .sandbox
        .call_journaled(&tool, &grant, &input, &rec)
        .await
        .unwrap()
        .result;
    let recorded = journal
        .events(run)
        .unwrap()
        .into_iter()
        .find_map(|r| match r.event {
            Event::Crossing {
                crossing: Crossing::HttpFailed { message },
                ..
            } => Some(message),
            _ => None,
        })
        .expect("the failure is journaled");
    assert_eq!(recorded, "ConnectionRefused");

    let rep = StepCrossings::replay_offline(journal.clone(), run, "fetch", 1).unwrap();
    let replayed = h
        .sandbox
        .call_journaled(&tool, &grant, &input, &rep)
        .await
        .unwrap()
        .result;
    assert_eq!(
        replayed, live,
        "the guest saw a different failure on replay"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_denied_request_is_journaled_as_a_denial() {
    let h = local_harness();
    let tool = h.load(hostile("egress_fetch"));
    let grant = h.grant(
        "egress_fetch",
        "egress: [{ scheme: https, host: api.example.com }]",
    );
    let input = r#"{"url":"http://127.0.0.1:9/secret","method":"GET"}"#;
    let (journal, run) = journal_with_run();
    let rec = StepCrossings::record(journal.clone(), run, "fetch", 1);
    let report = h
        .sandbox
        .call_journaled(&tool, &grant, input, &rec)
        .await
        .unwrap();
    assert_eq!(report.result.unwrap_err().kind(), "denied");
    let denials: Vec<(String, String)> = journal
        .events(run)
        .unwrap()
        .into_iter()
        .filter_map(|r| match r.event {
            Event::Crossing {
                crossing: Crossing::Denial { capability, target },
                ..
            } => Some((capability, target)),
            _ => None,
        })
        .collect();
    assert_eq!(
        denials,
        [(
            "egress".to_string(),
            "http://127.0.0.1:9/secret".to_string()
        )]
    );
}

#[test]
fn a_payload_sled_keeps_in_a_blob_file_is_synced_and_read_back_after_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let big: Vec<u8> = (0..400_000u32).map(|i| (i % 251) as u8).collect();
    let run = RunId::new();
    let r = {
        let journal = Journal::open(dir.path()).unwrap();
        journal
            .append(run, &created(&journal), Durability::Buffered)
            .unwrap();
        let r = journal.put_payload(&big).unwrap();
        let done = Event::StepCompleted {
            step: "a#1".into(),
            attempt: 1,
            output: r.clone(),
        };
        journal.append(run, &done, Durability::Durable).unwrap();
        // sled keeps values this large in files of their own under blobs/: the durable
        // append synced them too, and syncing again finds nothing new.
        assert!(
            std::fs::read_dir(dir.path().join("blobs")).unwrap().count() > 0,
            "expected sled to store the payload in a blob file"
        );
        journal.sync().unwrap();
        r
    };
    let journal = Journal::open(dir.path()).unwrap();
    assert_eq!(journal.payload(&r).unwrap(), big);
    assert_eq!(journal.events(run).unwrap().len(), 2);
}

#[test]
fn a_journal_in_use_is_refused_by_name_and_opens_once_let_go() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("journal");
    let held = Journal::open(&path).unwrap();
    let e = Journal::open_waiting(&path, Duration::from_millis(100))
        .err()
        .expect("a second owner is refused");
    assert!(matches!(e, JournalError::InUse { .. }), "{e}");
    assert!(
        e.to_string().contains("is in use by another process"),
        "{e}"
    );
    // Dropped and reopened at once, as a process that reads what it just wrote does.
    drop(held);
    for _ in 0..20 {
        drop(Journal::open(&path).unwrap());
    }
}

#[test]
fn a_payload_stored_under_its_known_digest_is_the_blob_put_payload_stores() {
    let journal = Journal::temporary().unwrap();
    let wasm = vec![3u8; 5000];
    let digest = format!(
        "sha256:{}",
        hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&wasm))
    );
    let known = journal.put_payload_known(&wasm, &digest).unwrap();
    assert_eq!(known, journal.put_payload(&wasm).unwrap());
    assert_eq!(journal.payload(&known).unwrap(), wasm);
    // Small payloads stay inline, and a digest that does not parse is computed instead.
    assert_eq!(
        journal.put_payload_known(b"{}", &digest).unwrap(),
        PayloadRef::Inline(b"{}".to_vec())
    );
    assert_eq!(journal.put_payload_known(&wasm, "md5:00").unwrap(), known);
}
