//! What a durable step record costs: `Journal::append(.., Durable)` (sled, group commit) against
//! the same records appended to SQLite (WAL, synchronous=FULL, one transaction per record), at 1
//! and 8 concurrent writers, measured in the same run. Prints records/s, p50 and p99 per append,
//! and how many flushes the journal needed.
//!
//! With `SANDGRAPH_BENCH_POSTGRES=postgres://…` it also measures the journal on that PostgreSQL
//! database and, as its baseline, the same inserts as plain autocommitted SQL (one connection
//! per writer); scripts/bench-postgres.sh starts a throwaway cluster and runs it.
//!
//! Run: `cargo bench -p sandgraph --bench journal` (`SANDGRAPH_BENCH_RECORDS` sets records per writer)

mod sqlite_baseline;

use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use sandgraph::journal::{Durability, Event, Journal, PayloadRef, RunId};

/// One step-completed record: a ~200-byte JSON output, as a trivial tool step produces.
fn record(i: usize) -> Event {
    Event::StepCompleted {
        step: format!("step-{i}"),
        attempt: 1,
        output: PayloadRef::Inline(
            format!("{{\"result\":{i},\"pad\":\"{}\"}}", "x".repeat(170)).into_bytes(),
        ),
    }
}

struct Outcome {
    records: usize,
    elapsed: Duration,
    latencies: Vec<Duration>,
    flushes: Option<u64>,
}

fn run_writers(
    writers: usize,
    per_writer: usize,
    append: Arc<dyn Fn(usize, usize) + Send + Sync>,
) -> (Duration, Vec<Duration>) {
    let barrier = Arc::new(Barrier::new(writers + 1));
    let handles: Vec<_> = (0..writers)
        .map(|w| {
            let (barrier, append) = (barrier.clone(), append.clone());
            std::thread::spawn(move || {
                barrier.wait();
                let mut lat = Vec::with_capacity(per_writer);
                for i in 0..per_writer {
                    let t = Instant::now();
                    append(w, i);
                    lat.push(t.elapsed());
                }
                lat
            })
        })
        .collect();
    barrier.wait();
    let start = Instant::now();
    let mut latencies = Vec::new();
    for h in handles {
        latencies.extend(h.join().expect("writer thread"));
    }
    (start.elapsed(), latencies)
}

fn journal(writers: usize, per_writer: usize, open: &dyn Fn() -> Journal) -> Outcome {
    let journal = Arc::new(open());
    let runs: Vec<RunId> = (0..writers).map(|_| RunId::new()).collect();
    for run in &runs {
        let created = Event::RunCreated {
            graph_name: "bench".into(),
            graph_digest: "sha256:00".into(),
            graph: PayloadRef::Inline(b"{}".to_vec()),
            components: vec![],
            input: PayloadRef::Inline(b"{}".to_vec()),
        };
        journal
            .append(*run, &created, Durability::Durable)
            .expect("append");
    }
    let before = journal.flush_count();
    let j = journal.clone();
    let (elapsed, latencies) = run_writers(
        writers,
        per_writer,
        Arc::new(move |w, i| {
            j.append(runs[w], &record(i), Durability::Durable)
                .expect("durable append");
        }),
    );
    Outcome {
        records: writers * per_writer,
        elapsed,
        latencies,
        flushes: Some(journal.flush_count() - before),
    }
}

/// A plain-SQL baseline: `writers` threads, each with its own connection from `connect`,
/// inserting one record per call through `insert` (run, sequence, encoded record).
fn plain_inserts<C: Send + 'static>(
    writers: usize,
    per_writer: usize,
    connect: impl Fn() -> C,
    insert: fn(&mut C, &RunId, i64, Vec<u8>),
) -> Outcome {
    let conns: Arc<Vec<std::sync::Mutex<C>>> = Arc::new(
        (0..writers)
            .map(|_| std::sync::Mutex::new(connect()))
            .collect(),
    );
    let runs: Arc<Vec<RunId>> = Arc::new((0..writers).map(|_| RunId::new()).collect());
    let (elapsed, latencies) = run_writers(
        writers,
        per_writer,
        Arc::new(move |w, i| {
            let mut c = conns[w].lock().expect("connection");
            insert(&mut c, &runs[w], i as i64, record(i).encode(0));
        }),
    );
    Outcome {
        records: writers * per_writer,
        elapsed,
        latencies,
        flushes: None,
    }
}

/// The same inserts as plain SQL on PostgreSQL: each insert its own (durable) transaction.
fn postgres_plain(url: &str, writers: usize, per_writer: usize) -> Outcome {
    let connect = || postgres::Client::connect(url, postgres::NoTls).expect("connect");
    connect()
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS bench_events (run bytea, seq bigint, body bytea, PRIMARY KEY (run, seq))",
        )
        .expect("create table");
    plain_inserts(writers, per_writer, connect, |c, run, seq, body| {
        c.execute(
            "INSERT INTO bench_events (run, seq, body) VALUES ($1, $2, $3)",
            &[&&run.0[..], &seq, &body],
        )
        .expect("insert");
    })
}

fn sqlite(writers: usize, per_writer: usize) -> Outcome {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("journal.sqlite");
    sqlite_baseline::create(&path);
    plain_inserts(
        writers,
        per_writer,
        || sqlite_baseline::connect(&path),
        |c, run, seq, body| {
            c.execute(
                "INSERT INTO events (run, seq, body) VALUES (?1, ?2, ?3)",
                rusqlite::params![&run.0[..], seq, body],
            )
            .expect("insert");
        },
    )
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else is understood.
    let per_writer_total: usize = std::env::var("SANDGRAPH_BENCH_RECORDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    println!(
        "{:<10} {:>7} {:>8} {:>11} {:>10} {:>10} {:>8} {:>10}",
        "store", "writers", "records", "records/s", "p50 us", "p99 us", "flushes", "vs sqlite"
    );
    let pg = std::env::var("SANDGRAPH_BENCH_POSTGRES").ok();
    for writers in [1usize, 8] {
        let per_writer = (per_writer_total / writers).max(1);
        let base = sqlite(writers, per_writer);
        let dir = tempfile::tempdir().expect("tempdir");
        let ours = journal(writers, per_writer, &|| {
            Journal::open(dir.path()).expect("open journal")
        });
        let rate = |o: &Outcome| o.records as f64 / o.elapsed.as_secs_f64();
        let base_rate = rate(&base);
        let mut rows = vec![("sqlite", base), ("journal", ours)];
        if let Some(url) = &pg {
            rows.push(("pg-sql", postgres_plain(url, writers, per_writer)));
            rows.push((
                "pg-journal",
                journal(writers, per_writer, &|| {
                    Journal::open_location(url).expect("open PostgreSQL journal")
                }),
            ));
        }
        for (name, mut o) in rows {
            o.latencies.sort();
            println!(
                "{:<10} {:>7} {:>8} {:>11.0} {:>10.0} {:>10.0} {:>8} {:>9.2}x",
                name,
                writers,
                o.records,
                rate(&o),
                percentile(&o.latencies, 0.5).as_secs_f64() * 1e6,
                percentile(&o.latencies, 0.99).as_secs_f64() * 1e6,
                o.flushes.map_or("-".to_string(), |f| f.to_string()),
                rate(&o) / base_rate,
            );
        }
    }
}
