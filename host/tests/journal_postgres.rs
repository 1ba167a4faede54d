//! The PostgreSQL journal store beyond the shared journal suite (journal.rs runs that on both
//! stores): two journals on one database see each other's durable events, the schema is
//! created once and a newer one refused, bad URLs and credentials name the problem (never the
//! password), and a broken connection loses only unacknowledged writes, then reconnects.

mod common;

use common::postgres::Postgres;
use sandgraph::journal::postgres::PostgresStore;
use sandgraph::journal::{Durability, Event, Journal, JournalError, PayloadRef, RunId};

fn created(journal: &Journal) -> Event {
    Event::RunCreated {
        graph_name: "demo".into(),
        graph_digest: "sha256:aa".into(),
        graph: journal.put_payload(br#"{"kind":"Graph"}"#).unwrap(),
        components: vec![],
        input: journal.put_payload(&vec![4u8; 5000]).unwrap(),
    }
}

fn succeeded() -> Event {
    Event::RunFinished {
        status: sandgraph::journal::RunStatus::Succeeded,
        output: None,
        error: None,
    }
}

fn step(i: u32) -> Event {
    Event::StepCompleted {
        step: format!("s{i}"),
        attempt: 1,
        output: PayloadRef::Inline(vec![i as u8]),
    }
}

/// Two hosts' journals on a fresh database `name` of `pg`, and its URL.
fn two_journals(pg: &Postgres, name: &str) -> (String, Journal, Journal) {
    let url = pg.database(name);
    let a = Journal::open_location(&url).unwrap();
    let b = Journal::open_location(&url).unwrap();
    (url, a, b)
}

/// [`two_journals`] at the store level.
fn two_stores(pg: &Postgres, name: &str) -> (PostgresStore, PostgresStore) {
    let url = pg.database(name);
    (
        PostgresStore::open(&url).unwrap(),
        PostgresStore::open(&url).unwrap(),
    )
}

#[test]
fn two_journals_on_one_database_share_durable_events_and_blobs() {
    let pg = Postgres::start();
    let (_, a, b) = two_journals(&pg, "shared");
    assert!(
        a.describe()
            .contains("PostgreSQL journal at postgres://sandgraph@127.0.0.1")
    );
    let run = RunId::new();
    a.append(run, &created(&a), Durability::Durable).unwrap();
    a.append(run, &step(1), Durability::Durable).unwrap();
    // What one replica made durable, the other reads, payloads included.
    let seen = b.events(run).unwrap();
    assert_eq!(seen.len(), 2);
    match &seen[0].event {
        Event::RunCreated { input, .. } => assert_eq!(b.payload(input).unwrap(), vec![4u8; 5000]),
        other => panic!("expected RunCreated, got {other:?}"),
    }
    assert_eq!(b.runs().unwrap()[0].run, run);
    // A buffered append is committed in the background once its connection is idle (so it
    // holds no locks for long); a sync makes it visible at once.
    a.append(run, &step(2), Durability::Buffered).unwrap();
    common::wait_for("the buffered event committed in the background", || {
        b.events(run).unwrap().len() == 3
    });
    a.append(run, &step(3), Durability::Buffered).unwrap();
    a.sync().unwrap();
    assert_eq!(b.events(run).unwrap().len(), 4);
}

#[test]
fn the_schema_is_created_once_and_a_newer_one_is_refused() {
    let pg = Postgres::start();
    let url = pg.database("schema");
    drop(Journal::open_location(&url).unwrap());
    drop(Journal::open_location(&url).unwrap());
    let mut c = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    let versions: Vec<i32> = c
        .query("SELECT version FROM sandgraph_schema", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(versions, vec![1, 2]);
    c.execute("INSERT INTO sandgraph_schema (version) VALUES (99)", &[])
        .unwrap();
    match Journal::open_location(&url) {
        Err(e @ JournalError::SchemaTooNew { found: 99, .. }) => {
            assert!(e.to_string().contains("upgrade sandgraph"), "{e}")
        }
        Err(other) => panic!("expected SchemaTooNew, got {other}"),
        Ok(_) => panic!("a newer schema was accepted"),
    }
}

#[test]
fn bad_urls_and_credentials_are_named_without_the_password() {
    let pg = Postgres::start();
    let no_db = pg.url("no_such_database");
    let e = Journal::open_location(&no_db).err().expect("refused");
    let text = e.to_string();
    assert!(
        text.contains("no_such_database") && text.contains("3D000"),
        "{text}"
    );
    // Nothing listens on this port: refused after the reconnect backoff.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let closed = format!("postgres://app:hunter2@127.0.0.1:{port}/x");
    let text = Journal::open_location(&closed)
        .err()
        .expect("refused")
        .to_string();
    assert!(
        text.contains("postgres://app:***@127.0.0.1") && !text.contains("hunter2"),
        "{text}"
    );
}

#[test]
fn a_broken_connection_loses_only_unacknowledged_writes_then_reconnects() {
    let pg = Postgres::start();
    let url = pg.database("broken");
    // Without background commits, so the buffered write is still uncommitted when the
    // connection goes.
    let journal = Journal::on(Box::new(PostgresStore::open_with(&url, None).unwrap()));
    let run = RunId::new();
    journal
        .append(run, &created(&journal), Durability::Durable)
        .unwrap();
    journal.append(run, &step(1), Durability::Buffered).unwrap();
    // The server ends every session of this database (as a restart or failover would).
    let mut admin = postgres::Client::connect(&pg.url("postgres"), postgres::NoTls).unwrap();
    admin
        .execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = 'broken'",
            &[],
        )
        .unwrap();
    // The buffered write was never acknowledged as durable: the durable append that would have
    // covered it fails, saying so.
    let e = journal
        .append(run, &step(2), Durability::Durable)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("not yet committed") || e.contains("rolled back"),
        "{e}"
    );
    // The journal reconnects and carries on from what is durable.
    assert_eq!(journal.events(run).unwrap().len(), 1);
    let seq = journal.append(run, &step(3), Durability::Durable).unwrap();
    assert_eq!(seq, 1);
    let fresh = Journal::open_location(&url).unwrap();
    assert_eq!(fresh.events(run).unwrap().len(), 2);
}

#[test]
fn serve_names_an_unreachable_journal_database_without_the_password() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sandgraph"))
        .arg("serve")
        .env("SANDGRAPH_LISTEN", "127.0.0.1:0")
        .env("SANDGRAPH_JOURNAL", "postgres://app:hunter2@127.0.0.1:1/x")
        .env("SANDGRAPH_CACHE_DIR", common::cache_dir())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("postgres://app:***@127.0.0.1:1/x") && !err.contains("hunter2"),
        "{err}"
    );
    assert!(
        !std::path::Path::new("postgres:").exists(),
        "no directory named after the URL"
    );
}

fn migrate(from: &std::path::Path, to: &str) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_sandgraph"))
        .args(["journal", "migrate", "--journal"])
        .arg(from)
        .args(["--to", to])
        .output()
        .unwrap()
}

#[test]
fn journal_migrate_copies_sled_into_postgresql_idempotently_and_verified() {
    let pg = Postgres::start();
    let url = pg.database("migrated");
    let dir = tempfile::tempdir().unwrap();
    let (done, open) = (RunId::new(), RunId::new());
    {
        let sled = Journal::open(&dir.path().join("journal")).unwrap();
        for run in [done, open] {
            sled.append(run, &created(&sled), Durability::Durable)
                .unwrap();
            sled.append(run, &step(1), Durability::Durable).unwrap();
        }
        sled.append(done, &succeeded(), Durability::Durable)
            .unwrap();
        sled.kv_put("api_graphs", b"g\0v1", b"{\"graph\":1}")
            .unwrap();
        sled.kv_put("api_idempotency", b"key", b"{\"run\":2}")
            .unwrap();
    }
    let out = migrate(&dir.path().join("journal"), &url);
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("migrated 2 runs")
            && text.contains("5 events copied (0 already there)")
            && text.contains("1 payloads copied")
            && text.contains("2 graph/tool/key records copied")
            && text.contains("1 unfinished runs queued"),
        "{text}"
    );
    // Again: nothing to copy, the same digest.
    let again = migrate(&dir.path().join("journal"), &url);
    let text2 = String::from_utf8_lossy(&again.stdout).to_string();
    assert!(again.status.success(), "{text2}");
    assert!(
        text2.contains("0 events copied (5 already there)"),
        "{text2}"
    );
    let digest = |t: &str| t.split("sha256 ").nth(1).map(|d| d[..64].to_owned());
    assert_eq!(digest(&text), digest(&text2));
    // The target serves the same runs, payloads and records.
    let target = Journal::open_location(&url).unwrap();
    let source = Journal::open(&dir.path().join("journal")).unwrap();
    for run in [done, open] {
        assert_eq!(target.events(run).unwrap(), source.events(run).unwrap());
    }
    match &target.events(done).unwrap()[0].event {
        Event::RunCreated { input, .. } => {
            assert_eq!(target.payload(input).unwrap(), vec![4u8; 5000])
        }
        other => panic!("expected RunCreated, got {other:?}"),
    }
    assert_eq!(
        target.kv_get("api_graphs", b"g\0v1").unwrap().as_deref(),
        Some(&b"{\"graph\":1}"[..])
    );
    let mut c = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    let queued: Vec<Vec<u8>> = c
        .query(
            "SELECT run FROM sandgraph_leases WHERE state = 'queued'",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(queued, vec![open.0.to_vec()]);
    // Different content under a key the target holds is refused, not overwritten.
    drop(source);
    target
        .kv_put("api_idempotency", b"key", b"{\"run\":3}")
        .unwrap();
    let refused = migrate(&dir.path().join("journal"), &url);
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "{err}");
    assert!(
        err.contains("different content") && err.contains("api_idempotency"),
        "{err}"
    );
    assert_eq!(
        target.kv_get("api_idempotency", b"key").unwrap().as_deref(),
        Some(&b"{\"run\":3}"[..])
    );
}

#[test]
fn sslmode_require_is_tls_verified_against_the_journal_ca() {
    let ca = common::test_ca::TestCa::new(&["127.0.0.1"]);
    let pg = Postgres::start_with_tls(&ca.server_cert_pem, &ca.server_key_pem);
    let url = pg.database("tls") + "?sslmode=require";
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("journal-ca.pem");
    std::fs::write(&ca_file, ca.ca_pem()).unwrap();
    let list = |ca: Option<&std::path::Path>| {
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_sandgraph"));
        c.args(["runs", "list", "--journal", &url])
            .env_remove("SANDGRAPH_JOURNAL_CA");
        if let Some(ca) = ca {
            c.env("SANDGRAPH_JOURNAL_CA", ca);
        }
        c.output().unwrap()
    };
    // A server certificate from a CA the host does not trust is refused.
    let refused = list(None);
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "{err}");
    assert!(err.to_lowercase().contains("certificate"), "{err}");
    // Trusted through SANDGRAPH_JOURNAL_CA, the journal opens, and its session is TLS.
    let ok = list(Some(&ca_file));
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    // SAFETY: set before this test starts any thread that reads the environment.
    unsafe { std::env::set_var("SANDGRAPH_JOURNAL_CA", &ca_file) };
    let journal = Journal::open_location(&url).unwrap();
    journal
        .append(RunId::new(), &created(&journal), Durability::Durable)
        .unwrap();
    let mut admin = postgres::Client::connect(&pg.url("postgres"), postgres::NoTls).unwrap();
    let row = admin
        .query_one(
            "SELECT count(*), bool_and(s.ssl) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) WHERE a.datname = 'tls'",
            &[],
        )
        .unwrap();
    let (sessions, all_tls): (i64, Option<bool>) = (row.get(0), row.get(1));
    assert!(sessions >= 1);
    assert_eq!(all_tls, Some(true));
}

#[test]
fn a_subscriber_is_woken_by_another_hosts_commit_and_not_by_its_own() {
    let pg = Postgres::start();
    let url = pg.database("notify");
    let (a, b) = (
        Journal::open_location(&url).unwrap(),
        Journal::open_location(&url).unwrap(),
    );
    let run = RunId::new();
    a.append(run, &created(&a), Durability::Durable).unwrap();
    let mut woken = b.subscribe(run);
    assert!(b.follows_other_hosts());
    // The listener is connected once a notification sent after subscribing arrives; appends
    // until then may be missed (that is what readers' slow safety poll is for).
    let mut seq = 1;
    common::wait_for("a notification of another journal's append", || {
        a.append(run, &step(seq), Durability::Durable).unwrap();
        seq += 1;
        std::thread::sleep(std::time::Duration::from_millis(50));
        woken.has_changed().unwrap()
    });
    woken.borrow_and_update();
    // From then on every commit wakes it, buffered appends included once committed.
    a.append(run, &step(99), Durability::Buffered).unwrap();
    a.sync().unwrap();
    common::wait_for("the next notification", || woken.has_changed().unwrap());
    assert!(b.events(run).unwrap().len() >= 3);
    // B's own appends wake B's readers directly; its own commits' notifications are passed
    // over, so a reader is not made to re-read the store for each of them.
    let own = RunId::new();
    let mut mine = b.subscribe(own);
    b.append(own, &created(&b), Durability::Durable).unwrap();
    for i in 1..=5 {
        b.append(own, &step(i), Durability::Durable).unwrap();
    }
    // Notifications arrive in commit order on one listener: once a later commit of A's woke
    // B, the notifications of B's own commits before it have been delivered (or dropped).
    woken.borrow_and_update();
    a.append(run, &step(100), Durability::Durable).unwrap();
    common::wait_for("A's notification after B's appends", || {
        woken.has_changed().unwrap()
    });
    let seen = *mine.borrow_and_update();
    assert_eq!(
        seen.remote, 0,
        "B's own notifications woke its reader: {seen:?}"
    );
    assert_eq!((seen.seq, seen.ended), (5, false));
    b.append(own, &succeeded(), Durability::Durable).unwrap();
    assert!(mine.borrow_and_update().ended);
    // An embedded journal has no other hosts to follow.
    assert!(!Journal::temporary().unwrap().follows_other_hosts());
}

#[test]
fn cli_resume_leaves_the_replicas_queued_runs_to_them() {
    let pg = Postgres::start();
    let url = pg.database("shared_resume");
    let (queued, own) = (RunId::new(), RunId::new());
    {
        let journal = Journal::open_location(&url).unwrap();
        for run in [queued, own] {
            journal
                .append(run, &created(&journal), Durability::Durable)
                .unwrap();
        }
        sandgraph::journal::queue::RunQueue::open(&url, "test", std::time::Duration::from_secs(15))
            .unwrap()
            .enqueue(queued)
            .unwrap();
    }
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sandgraph"))
        .args(["resume", "--journal", &url, "--cache-dir"])
        .arg(common::cache_dir())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!(
            "{queued} skipped: it is in the replicas' run queue"
        )),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The run the CLI owns was resumed (its pinned graph is a stub: it ends failed, saying so).
    assert!(stdout.contains(&format!("{own} failed")), "{stdout}");
    let journal = Journal::open_location(&url).unwrap();
    assert_eq!(
        journal.run_summary(queued).unwrap().status,
        sandgraph::journal::RunStatus::Running
    );
}

#[test]
fn writes_lost_with_a_background_commit_leave_no_gap_in_the_run() {
    let pg = Postgres::start();
    let url = pg.database("lostbg");
    // Background commits after 1 s idle (100 ms by default), so the session is surely ended
    // before the idle transaction is committed, however loaded the machine.
    let journal = Journal::on(Box::new(
        PostgresStore::open_with(&url, Some(std::time::Duration::from_secs(1))).unwrap(),
    ));
    let mut admin = postgres::Client::connect(&pg.url("postgres"), postgres::NoTls).unwrap();
    let run = RunId::new();
    journal
        .append(run, &created(&journal), Durability::Durable)
        .unwrap();
    journal.append(run, &step(1), Durability::Buffered).unwrap();
    admin
        .execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = 'lostbg'",
            &[],
        )
        .unwrap();
    // The idle transaction's background commit meets the dead connection: step 1 is lost.
    std::thread::sleep(std::time::Duration::from_millis(1500));
    // The next durable append must not commit after the lost event: it fails, saying so...
    let e = journal
        .append(run, &step(2), Durability::Durable)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("rolled back") || e.contains("not yet committed"),
        "{e}"
    );
    // ...and the journal carries on from what is durable, without a gap.
    let seq = journal.append(run, &step(3), Durability::Durable).unwrap();
    assert_eq!(seq, 1);
    let seqs: Vec<u64> = Journal::open_location(&url)
        .unwrap()
        .events(run)
        .unwrap()
        .iter()
        .map(|r| r.seq)
        .collect();
    assert_eq!(seqs, vec![0, 1]);
}

#[test]
fn a_database_that_authenticates_clients_by_certificate_accepts_the_journals_certificate() {
    let ca = common::test_ca::TestCa::new(&["127.0.0.1"]);
    // TLS sessions of `sandgraph` must present a certificate the CA signed, named `sandgraph`;
    // the test's own plain sessions are trusted as before.
    let pg = Postgres::start_with(
        &[
            "ssl=on",
            "ssl_cert_file=server.crt",
            "ssl_key_file=server.key",
            "ssl_ca_file=ca.crt",
        ],
        &[
            ("server.crt", &ca.server_cert_pem),
            ("server.key", &ca.server_key_pem),
            ("ca.crt", &ca.ca_pem()),
            (
                "pg_hba.conf",
                "local all all trust\nhostssl all sandgraph 127.0.0.1/32 cert\nhost all all 127.0.0.1/32 trust\n",
            ),
        ],
    );
    let url = pg.database("certs") + "?sslmode=require";
    let dir = tempfile::tempdir().unwrap();
    let file = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    let (ca_file, cert, key) = (
        file("journal-ca.pem", &ca.ca_pem()),
        file("journal.crt", &ca.client_cert_pem),
        file("journal.key", &ca.client_key_pem),
    );
    let list = |env: &[(&str, &std::path::Path)]| {
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_sandgraph"));
        c.args(["runs", "list", "--journal", &url])
            .env_remove("SANDGRAPH_JOURNAL_CERT")
            .env_remove("SANDGRAPH_JOURNAL_KEY")
            .env("SANDGRAPH_JOURNAL_CA", &ca_file);
        for (k, v) in env {
            c.env(k, v);
        }
        let out = c.output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    // Without a client certificate the server refuses the session.
    let (ok, err) = list(&[]);
    assert!(!ok);
    assert!(err.contains("certificate"), "{err}");
    // Half the pair is named as such.
    let (ok, err) = list(&[("SANDGRAPH_JOURNAL_CERT", &cert)]);
    assert!(!ok);
    assert!(
        err.contains("SANDGRAPH_JOURNAL_CERT is set but SANDGRAPH_JOURNAL_KEY is not"),
        "{err}"
    );
    // With it, the journal opens.
    let (ok, err) = list(&[
        ("SANDGRAPH_JOURNAL_CERT", &cert),
        ("SANDGRAPH_JOURNAL_KEY", &key),
    ]);
    assert!(ok, "{err}");
    // SAFETY: set before this test starts any thread that reads the environment.
    unsafe {
        std::env::set_var("SANDGRAPH_JOURNAL_CA", &ca_file);
        std::env::set_var("SANDGRAPH_JOURNAL_CERT", &cert);
        std::env::set_var("SANDGRAPH_JOURNAL_KEY", &key);
    }
    let journal = Journal::open_location(&url).unwrap();
    journal
        .append(RunId::new(), &created(&journal), Durability::Durable)
        .unwrap();
    let mut admin = postgres::Client::connect(&pg.url("postgres"), postgres::NoTls).unwrap();
    let dns: Vec<String> = admin
        .query(
            "SELECT s.client_dn FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) WHERE a.datname = 'certs'",
            &[],
        )
        .unwrap()
        .iter()
        .filter_map(|r| r.get::<_, Option<String>>(0))
        .collect();
    assert!(!dns.is_empty(), "no TLS session of the journal");
    assert!(dns.iter().all(|dn| dn.contains("CN=sandgraph")), "{dns:?}");
}

#[test]
fn a_submission_is_claimed_by_its_replica_only_when_no_older_run_waits() {
    use sandgraph::journal::queue::RunQueue;
    use std::time::Duration;
    let pg = Postgres::start();
    let url = pg.database("claim_own");
    let a = RunQueue::open(&url, "a", Duration::from_secs(15)).unwrap();
    let b = RunQueue::open(&url, "b", Duration::from_secs(15)).unwrap();
    let mut db = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    let lease = |db: &mut postgres::Client, run: RunId| -> (String, Option<String>, i64) {
        let r = db
            .query_one(
                "SELECT state, owner, epoch FROM sandgraph_leases WHERE run = $1",
                &[&&run.0[..]],
            )
            .unwrap();
        (r.get(0), r.get(1), r.get(2))
    };
    let (older, newer, own) = (RunId::new(), RunId::new(), RunId::new());
    // One run waits for a host: a newer submission queues behind it instead of jumping it.
    a.enqueue(older).unwrap();
    assert_eq!(b.enqueue_or_claim(newer).unwrap(), None);
    assert_eq!(lease(&mut db, newer), ("queued".into(), None, 0));
    // The queue hands them out oldest first.
    assert_eq!(a.claim().unwrap().map(|c| c.run), Some(older));
    assert_eq!(a.claim().unwrap().map(|c| c.run), Some(newer));
    // Nothing waits now: the submitting host holds its run at once, under the first epoch,
    // and no other host can claim it while the lease lasts.
    let claim = b.enqueue_or_claim(own).unwrap().expect("claimed at once");
    assert_eq!((claim.run, claim.epoch), (own, 1));
    let (state, owner, epoch) = lease(&mut db, own);
    assert_eq!((state.as_str(), epoch), ("running", 1));
    assert!(owner.is_some_and(|o| o == "b"));
    assert_eq!(a.claim().unwrap(), None);
    // A run queued already stays as it is (a second submission of the same run claims nothing).
    assert_eq!(a.enqueue_or_claim(own).unwrap(), None);
    assert_eq!(lease(&mut db, own).1.as_deref(), Some("b"));
    // A run whose lease ran out waits for a host too: the next submission queues behind it.
    let short = RunQueue::open(&url, "c", Duration::from_millis(1)).unwrap();
    let (expired, after) = (RunId::new(), RunId::new());
    assert!(short.enqueue_or_claim(expired).unwrap().is_some());
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(a.enqueue_or_claim(after).unwrap(), None);
    let next = a.claim().unwrap().expect("the expired lease is claimable");
    assert_eq!((next.run, next.epoch), (expired, 2));
    assert_eq!(a.claim().unwrap().map(|c| c.run), Some(after));
    // A host with several free slots claims a backlog in one call, oldest first, and no more
    // than it asked for.
    let backlog: Vec<RunId> = (0..3).map(|_| RunId::new()).collect();
    for run in &backlog {
        b.enqueue(*run).unwrap();
    }
    let two = a.claim_up_to(2).unwrap();
    assert_eq!(two.iter().map(|c| c.run).collect::<Vec<_>>(), backlog[..2]);
    assert!(two.iter().all(|c| c.epoch == 1));
    let rest = a.claim_up_to(16).unwrap();
    assert_eq!(rest.iter().map(|c| c.run).collect::<Vec<_>>(), backlog[2..]);
    assert!(a.claim_up_to(16).unwrap().is_empty());
}

#[test]
fn a_host_that_lost_a_runs_lease_writes_nothing_more_to_it_and_its_other_runs_commit() {
    use sandgraph::journal::queue::RunQueue;
    use std::time::Duration;
    let pg = Postgres::start();
    let (url, a, b) = two_journals(&pg, "fenced_writes");
    let (leased, other) = (RunId::new(), RunId::new());
    for run in [leased, other] {
        a.append(run, &created(&a), Durability::Durable).unwrap();
    }
    // Host a claims the run under a lease that runs out at once, so host b can take it over.
    let a_queue = RunQueue::open(&url, "a", Duration::from_millis(1)).unwrap();
    let claim = a_queue.enqueue_or_claim(leased).unwrap().expect("claimed");
    a.fence(leased, claim.epoch);
    a.append(leased, &step(1), Durability::Durable).unwrap();
    assert_eq!(b.events(leased).unwrap().len(), 2);
    std::thread::sleep(Duration::from_millis(20));
    let b_claim = RunQueue::open(&url, "b", Duration::from_secs(15))
        .unwrap()
        .claim()
        .unwrap()
        .expect("the lease ran out");
    assert_eq!((b_claim.run, b_claim.epoch), (leased, 2));
    b.fence(leased, b_claim.epoch);
    // Read afresh each time (a journal caches the summaries of runs it writes).
    let summary = || {
        Journal::open_location(&url)
            .unwrap()
            .run_summary(leased)
            .unwrap()
    };
    let summary_before = summary();
    // In one transaction: a buffered write to a's other run, then a's durable write to the run
    // it lost. The lost run's write is refused; the other run's commits with the flush.
    a.append(other, &step(1), Durability::Buffered).unwrap();
    match a.append(leased, &step(2), Durability::Durable) {
        Err(JournalError::Fenced { run, why }) => {
            assert_eq!(run, leased);
            assert!(why.contains("epoch is 2"), "{why}");
        }
        other => panic!("expected the write to be fenced off, got {other:?}"),
    }
    assert_eq!(b.events(other).unwrap().len(), 2);
    assert_eq!(b.events(leased).unwrap().len(), 2);
    let summary_after = summary();
    assert_eq!(
        (summary_after.events, summary_after.updated_ms),
        (summary_before.events, summary_before.updated_ms),
        "the summary was not rewritten by the host that lost the run"
    );
    // Later writes are refused before they reach the database; the new owner writes on.
    assert!(matches!(
        a.append(leased, &step(3), Durability::Durable),
        Err(JournalError::Fenced { .. })
    ));
    b.append(leased, &step(2), Durability::Durable).unwrap();
    assert_eq!(b.events(leased).unwrap().len(), 3);
}

#[test]
fn two_hosts_storing_the_same_payloads_in_opposite_order_both_commit_everything() {
    let pg = Postgres::start();
    let (url, a, b) = two_journals(&pg, "blob_deadlock");
    let (run_a, run_b) = (RunId::new(), RunId::new());
    a.append(run_a, &created(&a), Durability::Durable).unwrap();
    b.append(run_b, &created(&b), Durability::Durable).unwrap();
    // Each host's open transaction holds an event while it stores one payload, then the payload
    // the other host stored first. Stored inside the open transactions, each insert would wait
    // for the other's uncommitted one (a deadlock the server breaks by aborting one); payloads
    // are committed on a connection of their own, so neither waits.
    a.append(run_a, &step(1), Durability::Buffered).unwrap();
    b.append(run_b, &step(1), Durability::Buffered).unwrap();
    let (x, y) = (vec![b'x'; 4096], vec![b'y'; 4096]);
    // A read of a run with uncommitted writes goes to the writing connection, behind the
    // writes queued before it: each insert has run when its host's read returns.
    let ax = a.put_payload(&x).unwrap();
    a.events(run_a).unwrap();
    let by = b.put_payload(&y).unwrap();
    b.events(run_b).unwrap();
    let ay = a.put_payload(&y).unwrap();
    let bx = b.put_payload(&x).unwrap();
    assert_eq!((&ax, &ay), (&bx, &by));
    // Both flushes succeed, nothing is missing.
    let (sa, sb) = std::thread::scope(|s| {
        let sa = s.spawn(|| a.sync());
        let sb = s.spawn(|| b.sync());
        (sa.join().unwrap(), sb.join().unwrap())
    });
    sa.unwrap();
    sb.unwrap();
    let fresh = Journal::open_location(&url).unwrap();
    assert_eq!(fresh.events(run_a).unwrap().len(), 2);
    assert_eq!(fresh.events(run_b).unwrap().len(), 2);
    assert_eq!(fresh.payload(&ax).unwrap(), x);
    assert_eq!(fresh.payload(&ay).unwrap(), y);
}

#[test]
fn a_transaction_aborted_to_break_a_deadlock_is_run_again_and_nothing_is_lost() {
    use sandgraph::journal::store::Store;
    let pg = Postgres::start();
    let (a, b) = two_stores(&pg, "deadlock");
    for key in [b"x", b"y"] {
        a.kv_put("records", key, b"0").unwrap();
    }
    a.flush().unwrap();
    // Each store's open transaction updates one record, then the record the other updated
    // first: each waits for the other, and the server aborts one transaction. A read of a
    // record this store wrote goes behind its queued writes, so each update has run when the
    // read returns.
    a.kv_put("records", b"x", b"a").unwrap();
    a.kv_get("records", b"x").unwrap();
    b.kv_put("records", b"y", b"b").unwrap();
    b.kv_get("records", b"y").unwrap();
    a.kv_put("records", b"y", b"a").unwrap();
    b.kv_put("records", b"x", b"b").unwrap();
    let (fa, fb) = std::thread::scope(|s| {
        let fa = s.spawn(|| a.flush());
        let fb = s.spawn(|| b.flush());
        (fa.join().unwrap(), fb.join().unwrap())
    });
    // Both flushes succeed: the aborted transaction's writes ran again after the other's.
    fa.unwrap();
    fb.unwrap();
    let x = a.kv_get("records", b"x").unwrap().unwrap();
    let y = a.kv_get("records", b"y").unwrap().unwrap();
    // Whichever ran again wrote both records last.
    assert!(x == y && (x == b"a" || x == b"b"), "{x:?} {y:?}");
}

/// Writes queued while the writing connection is busy go as one pipelined batch, where the
/// events share one statement. Events of a run that follow one another in the batch are
/// stored, and an event whose predecessor is missing fails the transaction. A payload removed
/// and stored again is there afterwards, and equal payloads are stored once.
#[test]
fn writes_queued_together_keep_their_order_and_their_checks() {
    use sandgraph::journal::store::Store;
    use std::time::Duration;
    let pg = Postgres::start();
    let (a, b) = two_stores(&pg, "one_batch");
    let old = [7u8; 32];
    a.put_blob(&old, 1, b"old payload").unwrap();
    a.flush().unwrap();
    // Makes a's writing connection wait (for b's uncommitted record) while `queue` queues
    // writes behind it, then lets it go: they all run as one batch.
    let behind_a_wait = |queue: &dyn Fn()| {
        assert!(b.kv_put_new("records", b"k", b"b").unwrap());
        std::thread::scope(|s| {
            let waiting = s.spawn(|| a.kv_put_new("records", b"k", b"a"));
            std::thread::sleep(Duration::from_millis(300));
            queue();
            b.flush().unwrap();
            assert!(!waiting.join().unwrap().unwrap());
        });
        b.kv_remove("records", b"k").unwrap();
        b.flush().unwrap();
    };
    let (r1, r2) = (RunId::new(), RunId::new());
    let new = [9u8; 32];
    behind_a_wait(&|| {
        for seq in 0..3u64 {
            a.put_event(r1, seq, format!("r1 {seq}").as_bytes())
                .unwrap();
            a.put_blob(&new, 2, b"new payload").unwrap();
            a.put_event(r2, seq, format!("r2 {seq}").as_bytes())
                .unwrap();
        }
        a.remove_blob(&old).unwrap();
        a.put_blob(&old, 3, b"old payload").unwrap();
        a.put_event(r1, 3, b"r1 3").unwrap();
    });
    a.flush().unwrap();
    let events = |run| -> Vec<u64> {
        b.events_from(run, 0)
            .unwrap()
            .into_iter()
            .map(|(s, _)| s)
            .collect()
    };
    assert_eq!(events(r1), vec![0, 1, 2, 3]);
    assert_eq!(events(r2), vec![0, 1, 2]);
    assert_eq!(b.events_from(r2, 2).unwrap()[0].1, b"r2 2".to_vec());
    assert_eq!(b.blob(&new).unwrap().unwrap().body, b"new payload".to_vec());
    let again = b
        .blob(&old)
        .unwrap()
        .expect("stored again after its removal");
    assert_eq!((again.created_ms, again.body), (3, b"old payload".to_vec()));

    // In one batch: a run's first events, and an event of another run whose predecessor was
    // never written. The gap is refused and the whole transaction rolled back.
    let (r3, r4) = (RunId::new(), RunId::new());
    behind_a_wait(&|| {
        a.put_event(r3, 0, b"r3 0").unwrap();
        a.put_event(r3, 1, b"r3 1").unwrap();
        a.put_event(r4, 0, b"r4 0").unwrap();
        a.put_event(r4, 2, b"r4 2").unwrap();
    });
    let err = a.flush().expect_err("an event after a gap").to_string();
    assert!(
        err.contains(&format!("run {r4}")) && err.contains("lacks event 1"),
        "{err}"
    );
    assert!(events(r3).is_empty() && events(r4).is_empty());
    // The next transaction is a fresh one.
    a.put_event(r3, 0, b"r3 0").unwrap();
    a.flush().unwrap();
    assert_eq!(events(r3), vec![0]);
}

/// Payloads are committed outside the shared transaction, before it: when storing one fails,
/// the flush fails and the events written since the last commit (one naming it) are rolled
/// back, never committed without it; the next transaction starts clean.
#[test]
fn a_payload_that_cannot_be_stored_fails_the_flush_and_no_event_naming_it_commits() {
    let pg = Postgres::start();
    let url = pg.database("payload_fails");
    let journal = Journal::open_location(&url).unwrap();
    let run = RunId::new();
    journal
        .append(run, &created(&journal), Durability::Durable)
        .unwrap();
    let mut admin = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    admin
        .batch_execute("ALTER TABLE sandgraph_blobs RENAME TO sandgraph_blobs_away")
        .unwrap();
    // A completion naming a payload stored just before it.
    let completed = || {
        let payload = journal.put_payload(&vec![5u8; 9000]).unwrap();
        let event = Event::StepCompleted {
            step: "s1".into(),
            attempt: 1,
            output: payload.clone(),
        };
        (payload, event)
    };
    let (_, named) = completed();
    let err = journal
        .append(run, &named, Durability::Durable)
        .expect_err("the payload could not be stored")
        .to_string();
    assert!(
        err.contains("storing a payload failed") && err.contains("sandgraph_blobs"),
        "{err}"
    );
    let fresh = || Journal::open_location(&url).unwrap();
    assert_eq!(fresh().events(run).unwrap().len(), 1);
    admin
        .batch_execute("ALTER TABLE sandgraph_blobs_away RENAME TO sandgraph_blobs")
        .unwrap();
    let (payload, named) = completed();
    journal.append(run, &named, Durability::Durable).unwrap();
    let events = fresh().events(run).unwrap();
    assert_eq!(events.len(), 2);
    assert_eq!(fresh().payload(&payload).unwrap(), vec![5u8; 9000]);
}
