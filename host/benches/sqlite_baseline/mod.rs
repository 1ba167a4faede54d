//! The SQLite baseline the journal benchmarks compare against: an `events (run, seq, body)`
//! table in WAL mode with `synchronous=FULL`, so a commit is durable like a journal flush.

use std::path::Path;
use std::time::Duration;

/// A connection to the baseline database at `path`, durable commits, waiting on locks.
pub fn connect(path: &Path) -> rusqlite::Connection {
    let c = rusqlite::Connection::open(path).expect("open sqlite");
    c.pragma_update(None, "journal_mode", "WAL").expect("WAL");
    c.pragma_update(None, "synchronous", "FULL")
        .expect("synchronous");
    c.busy_timeout(Duration::from_secs(60))
        .expect("busy timeout");
    c
}

/// Creates the events table in a new database at `path`.
pub fn create(path: &Path) {
    connect(path)
        .execute_batch(
            "CREATE TABLE events (run BLOB NOT NULL, seq INTEGER NOT NULL, body BLOB NOT NULL, PRIMARY KEY (run, seq))",
        )
        .expect("schema");
}
