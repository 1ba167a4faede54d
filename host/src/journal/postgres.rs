//! The PostgreSQL store: the journal's three collections as three tables, so several host
//! replicas can share one journal. Each connection lives on its own thread with a small runtime
//! of its own, so journal calls block like sled's and work from any caller; a dropped connection
//! is opened again, with backoff, on the next call.
//!
//! Writes do not wait: they are queued for the writing connection, which sends the writes queued
//! one behind another together (pipelined: every statement sent before the first answer is read,
//! the server running them in order), so a burst of appends costs one round trip, not one each;
//! a burst's events go as one multi-row statement. Payloads go to a third connection, committed
//! outside the shared transaction and before each commit of it (see [`Payloads`]).
//!
//! Group commit: writes go into one open transaction (reads on the same connection see them,
//! as a sled journal's reader sees its buffered writes) and `flush` commits it, so the durable
//! appends the journal's group commit gathers share one COMMIT and one WAL flush (PostgreSQL's
//! default `synchronous_commit = on`). A connection lost with writes uncommitted fails the next
//! call with that reason: those writes were never acknowledged as durable. A transaction left
//! idle for [`BACKGROUND_COMMIT`] is committed without waiting for a flush, so buffered writes
//! never hold locks for long; the server ends a session idle in a transaction for longer than
//! [`IDLE_TX_TIMEOUT`] (a paused host), which releases its locks for the host taking over.
//!
//! Fencing: the first write of a transaction to a run this host leased (see `queue.rs`) takes
//! a share lock on the run's lease row and checks its epoch in the same statement; a claim by
//! another host bumps the epoch under an exclusive lock, so either the write commits before the
//! claim (and the new owner reads it) or it sees the new epoch and changes nothing, without
//! aborting the shared transaction.
//!
//! The schema is versioned in `sandgraph_schema` and created on open under an advisory lock,
//! so replicas starting together migrate once.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use postgres::{Client, NoTls};

use super::store::{EventVisitor, KeyValue, Store, StoredBlob};
use super::{JournalError, RunId};

/// The schema version this build writes; a database at a newer version is refused.
pub const SCHEMA_VERSION: i32 = 2;

/// An open transaction idle this long is committed in the background.
pub const BACKGROUND_COMMIT: Duration = Duration::from_millis(100);

/// The server ends a journal session idle inside a transaction for longer than this.
pub const IDLE_TX_TIMEOUT: Duration = Duration::from_secs(2);

/// Blobs up to this size are written without asking whether they are stored already.
const ASK_BEFORE_PUT_BLOB: usize = 64 * 1024;

/// Key of the advisory lock held while the schema is created or migrated.
const MIGRATION_LOCK: i64 = 0x5a4e_4447_5241_5048; // "SANDGRAPH"-ish, any fixed number

const MIGRATIONS: &[&str] = &[
    // 1: events by (run, sequence), run summaries, content-addressed payloads.
    "CREATE TABLE sandgraph_events (
         run bytea NOT NULL,
         seq bigint NOT NULL,
         record bytea NOT NULL,
         PRIMARY KEY (run, seq));
     CREATE TABLE sandgraph_runs (run bytea PRIMARY KEY, summary bytea NOT NULL);
     CREATE TABLE sandgraph_blobs (
         digest bytea PRIMARY KEY,
         created_ms bigint NOT NULL,
         body bytea NOT NULL);",
    // 2: keyed records (the API's graphs, tools, idempotency keys), the run queue with leases,
    // and commands (cancel, approvals) for whichever host executes a run.
    "CREATE TABLE sandgraph_kv (
         space text NOT NULL,
         key bytea NOT NULL,
         value bytea NOT NULL,
         PRIMARY KEY (space, key));
     CREATE TABLE sandgraph_leases (
         run bytea PRIMARY KEY,
         state text NOT NULL CHECK (state IN ('queued', 'running', 'done')),
         owner text,
         epoch bigint NOT NULL DEFAULT 0,
         lease_until timestamptz,
         queued_at timestamptz NOT NULL DEFAULT clock_timestamp());
     CREATE INDEX sandgraph_leases_open ON sandgraph_leases (queued_at) WHERE state <> 'done';
     CREATE TABLE sandgraph_commands (
         id bigserial PRIMARY KEY,
         run bytea NOT NULL,
         command text NOT NULL);
     CREATE INDEX sandgraph_commands_run ON sandgraph_commands (run);",
];

/// What a connection thread is asked to do: a write to pipeline with the writes queued next to
/// it, or anything else, run on its own.
enum Job {
    Write(Write),
    Run(Box<dyn FnOnce(&mut Connection) + Send>),
}

/// How many times the writes of a transaction aborted to break a deadlock are run again.
const DEADLOCK_RETRIES: usize = 3;

/// The most writes one pipelined batch sends before it reads their answers.
const PIPELINE: usize = 256;

/// A parameter a queued write owns until its statement runs.
type Param = Box<dyn postgres::types::ToSql + Send + Sync>;

/// One journal write: in the writing connection's open transaction, or (a payload) on the payload
/// connection. Writes queued one after another are sent together, without waiting for each
/// answer (the server still runs them one by one, in order); the events among them go as one
/// statement, and so do the payloads (see [`Part`]).
struct Write {
    /// Its number in [`Dirty`].
    seq: u64,
    what: WriteOf,
    /// The failure when it changes no row (a conflict it must not pass over), if that is one.
    if_no_row: Option<String>,
}

/// What a [`Write`] writes.
enum WriteOf {
    /// A statement as it is, to no run (or to a run without its fence: a summary removed, an
    /// event overwritten).
    Statement {
        sql: &'static str,
        params: Vec<Param>,
        /// The table it changes, when it is one whose rows the batch's events or payloads are
        /// written to: those must not move past it.
        orders: Ordered,
    },
    /// A statement to a run, fenced when the run is leased.
    RunStatement {
        run: RunId,
        sql: &'static str,
        /// Run when this transaction has not checked the run's fence yet. Its one extra
        /// parameter, last, is the epoch the run's lease row must carry; it share-locks that
        /// row (held to the commit) and changes nothing when the epoch moved on or the row is
        /// gone.
        fenced_sql: &'static str,
        params: Vec<Param>,
    },
    /// A run's event, stored only after its predecessor (fenced when the run is leased).
    Event {
        run: RunId,
        seq: i64,
        record: Vec<u8>,
    },
    /// A content-addressed payload, stored unless its digest is there already.
    Blob {
        digest: [u8; 32],
        created_ms: i64,
        body: Vec<u8>,
    },
}

/// The table a [`WriteOf::Statement`] changes, as far as the batching of events and payloads
/// must know.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Ordered {
    Events,
    Blobs,
    Neither,
}

impl Write {
    /// The run whose fence must allow this write (and whose commit notifies).
    fn run(&self) -> Option<RunId> {
        match &self.what {
            WriteOf::RunStatement { run, .. } | WriteOf::Event { run, .. } => Some(*run),
            WriteOf::Statement { .. } | WriteOf::Blob { .. } => None,
        }
    }
}

/// A batch's events as one statement: each row is stored only after the event before it in its
/// run (`after`, -1 for a run's first event), which a row of the same statement cannot be (a
/// statement does not see its own rows): the rows of a run that follow one another share the
/// first one's check. A row whose `epoch` is set is stored only while the run's lease row
/// carries it, share-locking that row to the commit. Answers the rows stored. (`OFFSET 0` keeps
/// the predecessor's check a lookup by key per row: without it the planner may turn the
/// `EXISTS` into a hash of the whole events table, read again by every statement.)
const INSERT_EVENTS: &str = "INSERT INTO sandgraph_events (run, seq, record)
     SELECT e.run, e.seq, e.record
     FROM unnest($1::bytea[], $2::bigint[], $3::bytea[], $4::bigint[], $5::bigint[])
         AS e(run, seq, record, after, epoch)
     WHERE (e.after < 0 OR EXISTS (
             SELECT 1 FROM sandgraph_events p WHERE p.run = e.run AND p.seq = e.after OFFSET 0))
       AND (e.epoch IS NULL OR EXISTS (
             SELECT 1 FROM sandgraph_leases l WHERE l.run = e.run AND l.epoch = e.epoch
             FOR SHARE))
     ON CONFLICT (run, seq) DO NOTHING
     RETURNING run, seq";

/// A batch's payloads as one statement, by digest (so two hosts' statements take the digests'
/// locks in the same order); whoever stored a digest first keeps its creation time.
const INSERT_BLOBS: &str = "INSERT INTO sandgraph_blobs (digest, created_ms, body)
     SELECT * FROM unnest($1::bytea[], $2::bigint[], $3::bytea[])
     ON CONFLICT (digest) DO NOTHING";

/// A statement of a pipelined batch: one write, or the batch's events or payloads together
/// (with the indices of the event writes, whose answers are read per write).
enum Part<'w> {
    One {
        i: usize,
        sql: &'static str,
        params: Vec<&'w (dyn postgres::types::ToSql + Sync)>,
    },
    Events {
        members: Vec<usize>,
        rows: EventRows<'w>,
    },
    Blobs(BlobRows<'w>),
}

impl<'w> Part<'w> {
    /// The statements of `writes` (fenced with `epochs`), in order. Events and payloads go
    /// together at the first one's place: they are independent of the other writes but for
    /// a statement changing their own table, which ends their group.
    fn of(writes: &[&'w Write], epochs: &'w [Option<i64>]) -> Vec<Part<'w>> {
        let mut parts = Vec::new();
        // Where the open group of events, and of payloads, is in `parts`.
        let (mut events, mut blobs): (Option<usize>, Option<usize>) = (None, None);
        for (i, w) in writes.iter().enumerate() {
            match &w.what {
                WriteOf::Event { run, seq, record } => {
                    let at = *events.get_or_insert_with(|| {
                        parts.push(Part::Events {
                            members: Vec::new(),
                            rows: EventRows::default(),
                        });
                        parts.len() - 1
                    });
                    if let Some(Part::Events { members, rows }) = parts.get_mut(at) {
                        members.push(i);
                        rows.push(run, *seq, record, epochs[i]);
                    }
                }
                WriteOf::Blob {
                    digest,
                    created_ms,
                    body,
                } => {
                    let at = *blobs.get_or_insert_with(|| {
                        parts.push(Part::Blobs(BlobRows::default()));
                        parts.len() - 1
                    });
                    if let Some(Part::Blobs(rows)) = parts.get_mut(at) {
                        rows.by_digest
                            .entry(&digest[..])
                            .or_insert((*created_ms, &body[..]));
                    }
                }
                WriteOf::Statement {
                    sql,
                    params,
                    orders,
                } => {
                    match orders {
                        Ordered::Events => events = None,
                        Ordered::Blobs => blobs = None,
                        Ordered::Neither => {}
                    }
                    parts.push(Part::One {
                        i,
                        sql,
                        params: params.iter().map(as_param).collect(),
                    });
                }
                WriteOf::RunStatement {
                    sql,
                    fenced_sql,
                    params,
                    ..
                } => {
                    let mut params: Vec<_> = params.iter().map(as_param).collect();
                    let sql = match &epochs[i] {
                        Some(epoch) => {
                            params.push(epoch);
                            fenced_sql
                        }
                        None => sql,
                    };
                    parts.push(Part::One { i, sql, params });
                }
            }
        }
        for part in &mut parts {
            if let Part::Blobs(rows) = part {
                rows.seal();
            }
        }
        parts
    }

    /// Its statement and parameters, and whether its answer is the rows it returns.
    fn statement(
        &self,
    ) -> (
        &'static str,
        Vec<&(dyn postgres::types::ToSql + Sync)>,
        bool,
    ) {
        match self {
            Part::One { sql, params, .. } => (sql, params.clone(), false),
            Part::Events { rows, .. } => (INSERT_EVENTS, rows.params(), true),
            Part::Blobs(rows) => (INSERT_BLOBS, rows.params(), false),
        }
    }
}

fn as_param(p: &Param) -> &(dyn postgres::types::ToSql + Sync) {
    p.as_ref()
}

/// The parameters of [`INSERT_EVENTS`] for a group of event writes.
#[derive(Default)]
struct EventRows<'w> {
    runs: Vec<&'w [u8]>,
    seqs: Vec<i64>,
    records: Vec<&'w [u8]>,
    after: Vec<i64>,
    epochs: Vec<Option<i64>>,
    /// Each run's last event in the group so far, and the check it was stored under.
    last: HashMap<RunId, (i64, i64)>,
}

impl<'w> EventRows<'w> {
    fn push(&mut self, run: &'w RunId, seq: i64, record: &'w [u8], epoch: Option<i64>) {
        let after = match self.last.get(run) {
            Some((prev, after)) if *prev + 1 == seq => *after,
            _ => seq - 1,
        };
        self.last.insert(*run, (seq, after));
        self.runs.push(&run.0[..]);
        self.seqs.push(seq);
        self.records.push(record);
        self.after.push(after);
        self.epochs.push(epoch);
    }

    fn params(&self) -> Vec<&(dyn postgres::types::ToSql + Sync)> {
        vec![
            &self.runs,
            &self.seqs,
            &self.records,
            &self.after,
            &self.epochs,
        ]
    }
}

/// The parameters of [`INSERT_BLOBS`] for a group of payload writes: each digest once, in
/// order (gathered in `by_digest`, then laid out by [`BlobRows::seal`]).
#[derive(Default)]
struct BlobRows<'w> {
    by_digest: std::collections::BTreeMap<&'w [u8], (i64, &'w [u8])>,
    digests: Vec<&'w [u8]>,
    created: Vec<i64>,
    bodies: Vec<&'w [u8]>,
}

impl BlobRows<'_> {
    /// Lays the payloads gathered out as the statement's arrays, by digest.
    fn seal(&mut self) {
        for (digest, (created, body)) in std::mem::take(&mut self.by_digest) {
            self.digests.push(digest);
            self.created.push(created);
            self.bodies.push(body);
        }
    }

    fn params(&self) -> Vec<&(dyn postgres::types::ToSql + Sync)> {
        vec![&self.digests, &self.created, &self.bodies]
    }
}

/// What a batch's answers said: the first failure, and the leased runs whose fenced write
/// changed nothing (with the epoch it asked for and the failure to report if the fence still
/// holds).
#[derive(Default)]
struct Outcome {
    failure: Option<JournalError>,
    unchanged: Vec<(RunId, i64, Option<String>)>,
}

/// A client that prepares each distinct statement once per connection (a prepared statement
/// runs in one round trip where a statement given as text takes two: prepare, then execute), on
/// a runtime of its own so it can be called from any thread and can pipeline.
pub(crate) struct Pg {
    client: tokio_postgres::Client,
    runtime: tokio::runtime::Runtime,
    prepared: HashMap<String, postgres::Statement>,
    /// A call failed in a way that ends the session (closed, or a FATAL error from the server)
    /// before the connection's task noticed.
    broken: bool,
}

type Params<'a> = &'a [&'a (dyn postgres::types::ToSql + Sync)];

/// Statements to pipeline, each with its parameters.
type Pipeline<'a> = [(&'a str, Vec<&'a (dyn postgres::types::ToSql + Sync)>)];

impl Pg {
    /// Connects to `url` (see [`config`] for its timeouts and TLS).
    pub(crate) fn connect(url: &str) -> Result<Pg, JournalError> {
        let shown = redact(url);
        let (config, tls) = config(url)?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| JournalError::Database {
                url: shown.clone(),
                detail: format!("cannot start the client's runtime: {e}"),
            })?;
        let client = match tls {
            None => {
                let (client, conn) = runtime
                    .block_on(config.connect(NoTls))
                    .map_err(|e| db_error(&shown, e))?;
                runtime.spawn(conn);
                client
            }
            Some(tls) => {
                let (client, conn) = runtime
                    .block_on(config.connect(tls))
                    .map_err(|e| db_error(&shown, e))?;
                runtime.spawn(conn);
                client
            }
        };
        Ok(Pg {
            client,
            runtime,
            prepared: HashMap::new(),
            broken: false,
        })
    }

    /// Passes `r` on, noting an error that means the session is over.
    fn seen<T>(&mut self, r: Result<T, postgres::Error>) -> Result<T, postgres::Error> {
        if let Err(e) = &r
            && (e.is_closed()
                || e.as_db_error()
                    .is_some_and(|d| matches!(d.severity(), "FATAL" | "PANIC")))
        {
            self.broken = true;
        }
        r
    }

    fn statement(&mut self, sql: &str) -> Result<postgres::Statement, postgres::Error> {
        if let Some(s) = self.prepared.get(sql) {
            return Ok(s.clone());
        }
        let s = self.runtime.block_on(self.client.prepare(sql));
        let s = self.seen(s)?;
        self.prepared.insert(sql.to_owned(), s.clone());
        Ok(s)
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.broken || self.client.is_closed()
    }

    /// Runs `sql` (one or more statements, no parameters) as a simple query.
    pub(crate) fn batch_execute(&mut self, sql: &str) -> Result<(), postgres::Error> {
        let r = self.runtime.block_on(self.client.batch_execute(sql));
        self.seen(r)
    }

    pub(crate) fn execute(
        &mut self,
        sql: &str,
        params: Params<'_>,
    ) -> Result<u64, postgres::Error> {
        let s = self.statement(sql)?;
        let r = self.runtime.block_on(self.client.execute(&s, params));
        self.seen(r)
    }

    pub(crate) fn query(
        &mut self,
        sql: &str,
        params: Params<'_>,
    ) -> Result<Vec<postgres::Row>, postgres::Error> {
        let s = self.statement(sql)?;
        let r = self.runtime.block_on(self.client.query(&s, params));
        self.seen(r)
    }

    pub(crate) fn query_opt(
        &mut self,
        sql: &str,
        params: Params<'_>,
    ) -> Result<Option<postgres::Row>, postgres::Error> {
        let s = self.statement(sql)?;
        let r = self.runtime.block_on(self.client.query_opt(&s, params));
        self.seen(r)
    }

    pub(crate) fn query_one(
        &mut self,
        sql: &str,
        params: Params<'_>,
    ) -> Result<postgres::Row, postgres::Error> {
        let s = self.statement(sql)?;
        let r = self.runtime.block_on(self.client.query_one(&s, params));
        self.seen(r)
    }

    /// The prepared statements of `pipeline`, in order.
    fn statements(
        &mut self,
        pipeline: &Pipeline<'_>,
    ) -> Result<Vec<postgres::Statement>, postgres::Error> {
        pipeline
            .iter()
            .map(|(sql, _)| self.statement(sql))
            .collect()
    }

    /// Runs each statement with its parameters, all sent before the first answer is read,
    /// after a `BEGIN` in the same pipeline when `begin` is set; the answers in order (after a
    /// failed one, the rest of a transaction fail too): the rows of a statement whose
    /// `returning` flag is set, the number of rows changed of the others. A failed `BEGIN`
    /// fails them all. (On a live session it cannot fail; a broken connection fails everything
    /// sent after it too.)
    fn execute_pipelined(
        &mut self,
        begin: bool,
        statements: &Pipeline<'_>,
        returning: &[bool],
    ) -> Result<Vec<Result<Answer, postgres::Error>>, postgres::Error> {
        let prepared = self.statements(statements)?;
        let client = &self.client;
        let (began, answers) = self.runtime.block_on(futures_util::future::join(
            async {
                if begin {
                    client.batch_execute("BEGIN").await
                } else {
                    Ok(())
                }
            },
            futures_util::future::join_all(prepared.iter().zip(statements).zip(returning).map(
                |((s, (_, params)), rows)| async move {
                    if *rows {
                        client.query(s, params).await.map(Answer::Rows)
                    } else {
                        client.execute(s, params).await.map(Answer::Changed)
                    }
                },
            )),
        ));
        self.seen(began)?;
        Ok(answers.into_iter().map(|r| self.seen(r)).collect())
    }
}

/// What a pipelined statement answered.
enum Answer {
    /// The number of rows it changed.
    Changed(u64),
    /// The rows it returned.
    Rows(Vec<postgres::Row>),
}

/// A journal store in a PostgreSQL database.
pub struct PostgresStore {
    jobs: mpsc::Sender<Job>,
    /// A second connection for reads of committed data, so readers (event streams, claims,
    /// the API) do not queue behind the writes; reads of what this store wrote and has not
    /// committed yet go to the writing connection (see [`Dirty`]).
    reader: mpsc::Sender<Job>,
    /// A third connection storing payloads outside the shared transaction (see [`Payloads`]).
    payloads: Payloads,
    dirty: Arc<Dirty>,
    /// The URL without its password.
    shown: String,
    fences: Fences,
    /// The full URL, for the notification listener's own connection.
    url: String,
    /// Stops the notification listener, if one was started.
    listener_stop: Arc<std::sync::atomic::AtomicBool>,
    /// This store's name in its notifications (random, one per store).
    origin: String,
}

/// What this store wrote and has not committed yet, by the number of the write: runs with
/// events or summaries written, and whether anything else (blobs, keyed records) was. A read
/// that could see such a write goes to the writing connection (which sees its own
/// transaction); any other goes to the reader. Marked when a write is queued, cleared when the
/// writing connection has committed (or lost) it.
#[derive(Default)]
struct Dirty {
    next: std::sync::atomic::AtomicU64,
    marks: Mutex<DirtyMarks>,
}

#[derive(Default)]
struct DirtyMarks {
    runs: HashMap<RunId, u64>,
    other: Option<u64>,
}

/// What a read may see.
#[derive(Clone, Copy)]
enum Scope {
    Run(RunId),
    /// Keyed records (and, on the payload connection's marks, payloads).
    Other,
    /// Every run and collection.
    All,
}

impl Dirty {
    /// Marks a write about to be queued; returns its number.
    fn mark(&self, run: Option<RunId>) -> u64 {
        let seq = self.next.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
        let mut m = self.marks.lock().unwrap_or_else(|p| p.into_inner());
        match run {
            Some(r) => {
                m.runs.insert(r, seq);
            }
            None => m.other = Some(seq),
        }
        seq
    }

    /// Whether a read of `scope` could see an uncommitted write.
    fn covers(&self, scope: Scope) -> bool {
        let m = self.marks.lock().unwrap_or_else(|p| p.into_inner());
        match scope {
            Scope::Run(r) => m.runs.contains_key(&r),
            Scope::Other => m.other.is_some(),
            Scope::All => !m.runs.is_empty() || m.other.is_some(),
        }
    }

    /// Writes numbered up to `upto` are committed (or gone).
    fn settled(&self, upto: u64) {
        let mut m = self.marks.lock().unwrap_or_else(|p| p.into_inner());
        m.runs.retain(|_, s| *s > upto);
        if m.other.is_some_and(|s| s <= upto) {
            m.other = None;
        }
    }
}

/// The lease epochs this host writes its runs under, and the runs whose writes were refused.
#[derive(Clone, Default)]
struct Fences {
    epochs: Arc<Mutex<HashMap<RunId, i64>>>,
    lost: Arc<Mutex<HashMap<RunId, String>>>,
}

impl Fences {
    fn epoch(&self, run: RunId) -> Option<i64> {
        self.epochs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&run)
            .copied()
    }

    fn lost(&self, run: RunId) -> Option<String> {
        self.lost
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&run)
            .cloned()
    }

    fn lose(&self, run: RunId, why: String) {
        self.lost
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(run)
            .or_insert(why);
    }
}

/// What the payload connection tells the writing one: the first payload write that failed since
/// the writing connection last looked, and whether payloads were stored since its last durable
/// commit (the payload connection commits without waiting for the WAL flush; the writing
/// connection's next commit flushes it).
#[derive(Clone, Default)]
struct PayloadState {
    failed: Arc<Mutex<Option<JournalError>>>,
    unflushed: Arc<std::sync::atomic::AtomicBool>,
}

/// The payload connection, as the writing connection and the store see it. Payloads are stored
/// outside the shared transaction, each batch committed at once: two replicas' open group
/// transactions never wait for each other's uncommitted insert of the same digest (which could
/// deadlock), and payloads leave the writing connection's pipeline. Every commit on the writing
/// connection first waits for the payloads queued before it, so no event is committed before a
/// payload it names.
#[derive(Clone)]
struct Payloads {
    jobs: mpsc::Sender<Job>,
    /// The payload writes queued and not stored yet.
    dirty: Arc<Dirty>,
    state: PayloadState,
}

struct Connection {
    url: String,
    client: Option<Pg>,
    /// Writes since the last commit are in an open transaction.
    in_tx: bool,
    /// The first write of the open transaction that failed.
    failed: Option<JournalError>,
    /// Leased runs whose lease row this transaction holds a share lock on (epoch checked).
    checked: HashSet<RunId>,
    /// Runs this transaction appended events to: notified on [`CHANNEL`] as it commits.
    appended: HashSet<RunId>,
    /// The queued writes the open transaction ran, kept to run again in a new transaction when
    /// the server aborts it to break a deadlock (see [`Connection::write_all`]).
    tx_writes: Vec<Write>,
    /// The open transaction ran something other than queued writes (a job), so it cannot be
    /// run again from `tx_writes`.
    tx_opaque: bool,
    /// The last batch failed because the server chose this transaction to break a deadlock.
    deadlocked: bool,
    /// The number of the last write this connection ran (see [`Dirty`]).
    processed: u64,
    /// The writing connection's marks, cleared as it commits; `None` on the reader.
    dirty: Option<Arc<Dirty>>,
    fences: Fences,
    /// The store's name in the notifications its commits send.
    origin: String,
    /// Set on the payload connection, which commits each write on its own: where it reports
    /// to the writing connection.
    autocommit: Option<PayloadState>,
    /// Set on the writing connection: the payload connection, whose writes queued before a
    /// commit must be stored before it.
    payloads: Option<Payloads>,
}

impl Connection {
    fn new(url: &str, fences: Fences, origin: &str) -> Connection {
        Connection {
            url: url.to_owned(),
            client: None,
            in_tx: false,
            failed: None,
            checked: HashSet::new(),
            appended: HashSet::new(),
            tx_writes: Vec::new(),
            tx_opaque: false,
            deadlocked: false,
            processed: 0,
            dirty: None,
            fences,
            origin: origin.to_owned(),
            autocommit: None,
            payloads: None,
        }
    }

    /// The client inside an open transaction.
    fn begin(&mut self, url: &str) -> Result<&mut Pg, JournalError> {
        // Connected first: a broken connection ends the open transaction with it, and the
        // write must then open one on the new connection. (Read before reconnecting, the old
        // `in_tx` let the write run in autocommit and commit past the lost writes before it,
        // leaving a gap in its run's sequence.)
        self.client()?;
        if !self.in_tx {
            let c = self.client.as_mut().expect("connected above");
            c.batch_execute("BEGIN").map_err(|e| db_error(url, e))?;
            self.checked.clear();
            self.tx_writes.clear();
        }
        self.in_tx = true;
        // Only jobs open or join a transaction this way.
        self.tx_opaque = true;
        Ok(self.client.as_mut().expect("connected above"))
    }

    /// Runs `batch` in the open transaction (begun if none is, in the same pipeline), in one
    /// round trip. A write to a run this host did not lease goes as it is. A write to a leased
    /// run this transaction has not checked yet goes with the fence folded in: it share-locks
    /// the run's lease row (held to the commit) and writes only if the row still carries this
    /// host's epoch. When such a write changes nothing, the lease row is read: a superseded
    /// epoch marks the run lost (its writes were skipped, and the shared transaction goes on);
    /// an epoch still this host's means the write itself was refused (a conflict). The first
    /// write that fails poisons the transaction: the next flush rolls it back and reports why.
    ///
    /// Replicas store equal payloads (content-addressed) in their own open transactions, so two
    /// of them can wait for each other's uncommitted insert of the same digest; the server then
    /// aborts one transaction to break the deadlock. That transaction is rolled back and its
    /// writes run again in a new one (up to [`DEADLOCK_RETRIES`] times), unless it also ran a job
    /// that cannot be repeated: nothing is lost, and no caller sees the deadlock.
    fn write_all(&mut self, url: &str, batch: Vec<Write>) {
        let Some(last) = batch.last().map(|w| w.seq) else {
            return;
        };
        if let Some(state) = self.autocommit.clone() {
            // Committed as it ran (each statement its own transaction): nothing to run again.
            if let Err(e) = self.write_batch(url, &batch) {
                state
                    .failed
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get_or_insert(e);
            }
            state
                .unflushed
                .store(true, std::sync::atomic::Ordering::SeqCst);
            self.processed = last;
            self.settled();
            return;
        }
        let mut batch = batch;
        let mut result = self.write_batch(url, &batch);
        let mut tries = 0;
        while result.is_err()
            && std::mem::take(&mut self.deadlocked)
            && !self.tx_opaque
            && self.failed.is_none()
            && tries < DEADLOCK_RETRIES
        {
            tries += 1;
            tracing::debug!(
                tries,
                "a journal transaction was aborted to break a deadlock; running its writes again"
            );
            let rolled_back = self
                .client
                .as_mut()
                .map(|c| c.batch_execute("ROLLBACK"))
                .transpose();
            if rolled_back.is_err() {
                break;
            }
            self.in_tx = false;
            self.checked.clear();
            self.appended.clear();
            let mut again = std::mem::take(&mut self.tx_writes);
            again.append(&mut batch);
            batch = again;
            result = self.write_batch(url, &batch);
        }
        self.deadlocked = false;
        self.tx_writes.append(&mut batch);
        if let Err(e) = result {
            self.failed.get_or_insert(e);
        }
        self.processed = last;
    }

    fn write_batch(&mut self, url: &str, batch: &[Write]) -> Result<(), JournalError> {
        // Connected first: a broken connection ends the transaction and its checks with it.
        self.client()?;
        let begin = !self.in_tx && self.autocommit.is_none();
        if begin {
            self.checked.clear();
            self.tx_writes.clear();
            self.tx_opaque = false;
        }
        let allowed: Vec<&Write> = batch
            .iter()
            .filter(|w| w.run().is_none_or(|r| self.fences.lost(r).is_none()))
            .collect();
        // The epoch each write must find on its run's lease row, where the fence is folded in.
        let epochs: Vec<Option<i64>> = allowed
            .iter()
            .map(|w| {
                w.run()
                    .filter(|r| !self.checked.contains(r))
                    .and_then(|r| self.fences.epoch(r))
            })
            .collect();
        let parts = Part::of(&allowed, &epochs);
        let (statements, returning): (Vec<_>, Vec<_>) = parts
            .iter()
            .map(|p| {
                let (sql, params, rows) = p.statement();
                ((sql, params), rows)
            })
            .unzip();
        let c = self.client.as_mut().expect("connected above");
        let answers = c
            .execute_pipelined(begin, &statements, &returning)
            .map_err(|e| db_error(url, e))?;
        if begin {
            self.in_tx = true;
        }
        let mut outcome = Outcome::default();
        for (part, answer) in parts.iter().zip(answers) {
            let answer = match answer {
                Ok(a) => a,
                Err(e) => {
                    if e.code() == Some(&postgres::error::SqlState::T_R_DEADLOCK_DETECTED) {
                        self.deadlocked = true;
                    }
                    outcome.failure.get_or_insert(db_error(url, e));
                    continue;
                }
            };
            match (part, answer) {
                (Part::One { i, .. }, Answer::Changed(n)) => {
                    self.changed(url, allowed[*i], epochs[*i], n, &mut outcome)
                }
                (Part::Events { members, .. }, Answer::Rows(rows)) => {
                    let stored: HashSet<(RunId, i64)> = rows
                        .iter()
                        .map(|r| (run_of(r.get::<_, &[u8]>(0)), r.get::<_, i64>(1)))
                        .collect();
                    for i in members {
                        let w = allowed[*i];
                        let n = match (&w.what, w.run()) {
                            (WriteOf::Event { seq, .. }, Some(run)) => {
                                u64::from(stored.contains(&(run, *seq)))
                            }
                            _ => 0,
                        };
                        self.changed(url, w, epochs[*i], n, &mut outcome);
                    }
                }
                // Payloads already there are not a conflict: equal digests, equal content.
                (Part::Blobs(_), _) => {}
                (_, _) => {
                    outcome.failure.get_or_insert(JournalError::Database {
                        url: url.to_owned(),
                        detail: "a pipelined journal write got an answer of the wrong kind".into(),
                    });
                }
            }
        }
        if outcome.failure.is_some() {
            // The transaction is aborted: the flush rolls it all back, whatever the fences say.
            return outcome.failure.map_or(Ok(()), Err);
        }
        let mut first_failure = None;
        for (run, epoch, refused) in outcome.unchanged {
            let c = self.client.as_mut().expect("connected above");
            let row = c
                .query_opt(
                    "SELECT epoch, owner FROM sandgraph_leases WHERE run = $1",
                    &[&&run.0[..]],
                )
                .map_err(|e| db_error(url, e))?;
            match row.map(|r| (r.get::<_, i64>(0), r.get::<_, Option<String>>(1))) {
                Some((e, _)) if e == epoch => {
                    first_failure.get_or_insert(JournalError::Database {
                        url: url.to_owned(),
                        detail: refused.unwrap_or_else(|| {
                            format!("a write to run {run} changed nothing though its lease is this host's")
                        }),
                    });
                }
                Some((e, owner)) => self.fences.lose(
                    run,
                    format!(
                        "its lease epoch is {e} (owner {}), this host held epoch {epoch}",
                        owner.as_deref().unwrap_or("none")
                    ),
                ),
                None => self.fences.lose(run, "its lease row is gone".into()),
            }
        }
        first_failure.map_or(Ok(()), Err)
    }

    /// Notes what write `w` (sent fenced with `epoch`, if that is set) did: it changed `n` rows.
    fn changed(&mut self, url: &str, w: &Write, epoch: Option<i64>, n: u64, outcome: &mut Outcome) {
        match (n, w.run(), epoch) {
            (0, Some(run), Some(epoch)) => {
                if !outcome.unchanged.iter().any(|(r, _, _)| *r == run) {
                    outcome.unchanged.push((run, epoch, w.if_no_row.clone()));
                }
            }
            (0, _, _) if w.if_no_row.is_some() => {
                outcome.failure.get_or_insert(JournalError::Database {
                    url: url.to_owned(),
                    detail: w.if_no_row.clone().unwrap_or_default(),
                });
            }
            (_, Some(run), epoch) => {
                self.appended.insert(run);
                if epoch.is_some() {
                    // The lease row is share-locked now, to the commit.
                    self.checked.insert(run);
                }
            }
            (_, None, _) => {}
        }
    }

    /// The open client, reconnecting (up to ~3 s of backoff) when the last one broke.
    fn client(&mut self) -> Result<&mut Pg, JournalError> {
        if self.client.as_ref().is_some_and(|c| c.is_closed()) {
            self.client = None;
            self.checked.clear();
            // The transaction died with the connection. Its loss stays recorded until a flush
            // reports it: every write until then goes into a transaction that flush rolls back,
            // so nothing written after the lost writes can commit without them (the journal
            // counts its sequences again from the store when the flush fails).
            self.tx_writes.clear();
            if std::mem::take(&mut self.in_tx) {
                self.failed.get_or_insert(JournalError::Database {
                    url: redact(&self.url),
                    detail: "the connection broke with journal writes not yet committed; they are lost (none was acknowledged as durable)".into(),
                });
            }
            self.settled();
        }
        if self.client.is_none() {
            let mut wait = Duration::from_millis(50);
            let mut last = None;
            for _ in 0..6 {
                match Pg::connect(&self.url) {
                    Ok(mut c) => {
                        // A paused host must not hold its locks (and block the host taking
                        // its runs over) for longer than this.
                        // The payload connection's commits need no WAL flush of their own: the
                        // writing connection's next commit flushes them (see `payloads_stored`).
                        let settings = format!(
                            "SET idle_in_transaction_session_timeout = {}{}",
                            IDLE_TX_TIMEOUT.as_millis(),
                            if self.autocommit.is_some() {
                                "; SET synchronous_commit = off"
                            } else {
                                ""
                            }
                        );
                        if let Err(e) = c.batch_execute(&settings) {
                            last = Some(db_error(&redact(&self.url), e));
                            continue;
                        }
                        self.client = Some(c);
                        break;
                    }
                    Err(e) => {
                        last = Some(e);
                        std::thread::sleep(wait);
                        wait *= 2;
                    }
                }
            }
            if self.client.is_none() {
                return Err(last.expect("tried at least once"));
            }
        }
        Ok(self.client.as_mut().expect("connected above"))
    }
}

impl Connection {
    /// Commits an open transaction nobody flushed for a while (its writes were buffered, so no
    /// caller waits on them); one that failed stays for the next flush to roll back and report.
    fn commit_idle(&mut self, url: &str) {
        if !self.in_tx || self.failed.is_some() {
            return;
        }
        if let Err(e) = self.payloads_stored(false) {
            // Reported by the next flush, which rolls back the events that named them.
            self.failed.get_or_insert(e);
            return;
        }
        self.in_tx = false;
        self.checked.clear();
        self.tx_writes.clear();
        let appended = std::mem::take(&mut self.appended);
        let done = match self.client.as_mut() {
            Some(c) => notify_and_commit(c, &appended, &self.origin).map_err(|e| db_error(url, e)),
            None => Ok(()),
        };
        if let Err(e) = done {
            // Reported by the next flush, which also rolls back whatever was written since.
            self.failed.get_or_insert(e);
        }
        self.settled();
    }

    /// Waits until the payloads queued before now are stored (committed on the payload
    /// connection), and, when `durable` (this connection has no transaction whose commit would
    /// flush the WAL), makes them durable; fails with the first payload write that failed.
    fn payloads_stored(&mut self, durable: bool) -> Result<(), JournalError> {
        use std::sync::atomic::Ordering;
        let Some(p) = self.payloads.clone() else {
            return Ok(());
        };
        let unflushed = p.state.unflushed.swap(false, Ordering::SeqCst);
        let flush = durable && unflushed;
        if p.dirty.covers(Scope::Other) || flush {
            let url = redact(&self.url);
            let stored = ask(&p.jobs, move |conn| {
                if !flush {
                    return Ok(());
                }
                // A transaction with an id commits with a WAL flush, which covers every commit
                // before it.
                conn.client().and_then(|c| {
                    c.batch_execute(
                        "BEGIN; SET LOCAL synchronous_commit = on; \
                         SELECT pg_current_xact_id(); COMMIT",
                    )
                    .map_err(|e| db_error(&url, e))
                })
            })
            .unwrap_or_else(|| {
                Err(JournalError::Database {
                    url: redact(&self.url),
                    detail: "the journal's payload connection thread has stopped".into(),
                })
            });
            if let Err(e) = stored {
                p.state.unflushed.store(true, Ordering::SeqCst);
                return Err(e);
            }
        }
        let failed = p
            .state
            .failed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        match failed {
            Some(JournalError::Database { url, detail }) => Err(JournalError::Database {
                url,
                detail: format!("storing a payload failed: {detail}"),
            }),
            Some(other) => Err(other),
            None => Ok(()),
        }
    }

    /// Everything this connection wrote so far is committed or gone.
    fn settled(&self) {
        if let Some(d) = &self.dirty {
            d.settled(self.processed);
        }
    }
}

/// Where the PEM CA files the journal's TLS connections trust (besides the public roots) are
/// named: a comma-separated list of files.
pub const CA_ENV: &str = "SANDGRAPH_JOURNAL_CA";

/// The PEM file of the client certificate (then its chain) the journal's TLS connections
/// present, for a database that authenticates clients by certificate (`hostssl … cert`).
pub const CERT_ENV: &str = "SANDGRAPH_JOURNAL_CERT";

/// The PEM file of that certificate's private key (PKCS#8, PKCS#1 or SEC1).
pub const KEY_ENV: &str = "SANDGRAPH_JOURNAL_KEY";

/// The client certificate chain and key named by [`CERT_ENV`] and [`KEY_ENV`]: both, or
/// neither (one without the other is an error naming the missing one).
#[allow(clippy::type_complexity)]
fn client_identity() -> Result<
    Option<(
        Vec<rustls::pki_types::CertificateDer<'static>>,
        rustls::pki_types::PrivateKeyDer<'static>,
    )>,
    String,
> {
    use rustls::pki_types::pem::PemObject;
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
    let (cert, key) = match (var(CERT_ENV), var(KEY_ENV)) {
        (None, None) => return Ok(None),
        (Some(_), None) => {
            return Err(format!(
                "{CERT_ENV} is set but {KEY_ENV} is not: set both, or neither"
            ));
        }
        (None, Some(_)) => {
            return Err(format!(
                "{KEY_ENV} is set but {CERT_ENV} is not: set both, or neither"
            ));
        }
        (Some(c), Some(k)) => (c, k),
    };
    let read =
        |name: &str, path: &str| std::fs::read(path).map_err(|e| format!("{name}: {path}: {e}"));
    let chain = rustls::pki_types::CertificateDer::pem_slice_iter(&read(CERT_ENV, &cert)?)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{CERT_ENV}: {cert}: not PEM: {e}"))?;
    if chain.is_empty() {
        return Err(format!(
            "{CERT_ENV}: {cert} holds no PEM `CERTIFICATE` block"
        ));
    }
    let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(&read(KEY_ENV, &key)?)
        .map_err(|e| format!("{KEY_ENV}: {key}: no private key in it ({e})"))?;
    Ok(Some((chain, key)))
}

/// Connects to `url`. With `sslmode=require` (or `prefer`) in the URL the connection is TLS,
/// and the server's certificate must chain to the public roots or a CA in [`CA_ENV`] and name
/// the host the URL names; otherwise it is plain TCP.
///
/// Unless the URL sets them, a connection attempt gives up after 5 s and an established
/// connection whose data goes unacknowledged for 10 s is closed (`tcp_user_timeout`, and TCP
/// keepalives), so a partitioned database fails calls instead of hanging them, and the replica
/// stops its runs before their leases pass to another.
pub(crate) fn connect(url: &str) -> Result<Client, JournalError> {
    let shown = redact(url);
    let (config, tls) = config(url)?;
    let config = postgres::Config::from(config);
    match tls {
        None => config.connect(NoTls),
        Some(tls) => config.connect(tls),
    }
    .map_err(|e| db_error(&shown, e))
}

/// `url` parsed, with [`connect`]'s timeouts where the URL sets none, and the TLS connector
/// when the URL asks for TLS.
fn config(
    url: &str,
) -> Result<
    (
        tokio_postgres::Config,
        Option<tokio_postgres_rustls::MakeRustlsConnect>,
    ),
    JournalError,
> {
    let shown = redact(url);
    let mut config: tokio_postgres::Config = url.parse().map_err(|e| db_error(&shown, e))?;
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(Duration::from_secs(5));
    }
    if config.get_tcp_user_timeout().is_none() {
        config.tcp_user_timeout(Duration::from_secs(10));
    }
    config.keepalives(true);
    config.keepalives_idle(Duration::from_secs(10));
    let tls_wanted = url
        .split(['?', '&', ' '])
        .any(|p| matches!(p, "sslmode=require" | "sslmode=prefer"));
    if !tls_wanted {
        return Ok((config, None));
    }
    let tls = tls_connector().map_err(|detail| JournalError::Database {
        url: shown.clone(),
        detail,
    })?;
    Ok((config, Some(tls)))
}

/// The rustls connector of [`connect`], built once per process.
fn tls_connector() -> Result<tokio_postgres_rustls::MakeRustlsConnect, String> {
    static TLS: std::sync::OnceLock<Result<tokio_postgres_rustls::MakeRustlsConnect, String>> =
        std::sync::OnceLock::new();
    TLS.get_or_init(|| {
        let files: Vec<std::path::PathBuf> = std::env::var(CA_ENV)
            .unwrap_or_default()
            .split(',')
            .map(str::trim)
            .filter(|f| !f.is_empty())
            .map(std::path::PathBuf::from)
            .collect();
        let extra = crate::tls_roots::TlsRoots::read_pem_files(&files)
            .map_err(|e| format!("{CA_ENV}: {e}"))?;
        let roots = match client_identity()? {
            None => crate::tls_roots::TlsRoots::new(&extra),
            Some((chain, key)) => {
                crate::tls_roots::TlsRoots::with_client_identity(&extra, chain, key)
            }
        }
        .map_err(|e| format!("the journal's TLS settings: {e}"))?;
        Ok(tokio_postgres_rustls::MakeRustlsConnect::new(
            (*roots.client_config()).clone(),
        ))
    })
    .clone()
}

/// Runs `job` on the connection thread behind `jobs` and waits for its answer; `None` when that
/// thread has stopped.
fn ask<T: Send + 'static>(
    jobs: &mpsc::Sender<Job>,
    job: impl FnOnce(&mut Connection) -> T + Send + 'static,
) -> Option<T> {
    let (tx, rx) = mpsc::sync_channel(1);
    jobs.send(Job::Run(Box::new(move |conn: &mut Connection| {
        let _ = tx.send(job(conn));
    })))
    .ok()?;
    rx.recv().ok()
}

/// A connection on its own thread running the jobs sent to it in order; the writing one also
/// commits a transaction left idle for `background_commit`.
fn connection_thread(
    name: &str,
    mut conn: Connection,
    background_commit: Option<Duration>,
) -> Result<mpsc::Sender<Job>, JournalError> {
    let (jobs, rx) = mpsc::channel::<Job>();
    let shown = redact(&conn.url);
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            let idle = background_commit.unwrap_or(Duration::from_secs(3600));
            // A job taken off the queue while gathering writes, run next.
            let mut next: Option<Job> = None;
            loop {
                let job = match next.take() {
                    Some(job) => job,
                    None => match rx.recv_timeout(idle) {
                        Ok(job) => job,
                        Err(mpsc::RecvTimeoutError::Timeout) if background_commit.is_some() => {
                            conn.commit_idle(&shown);
                            continue;
                        }
                        Err(mpsc::RecvTimeoutError::Timeout) => continue,
                        Err(mpsc::RecvTimeoutError::Disconnected) => break,
                    },
                };
                match job {
                    Job::Run(job) => job(&mut conn),
                    Job::Write(write) => {
                        // The writes queued behind this one go with it, up to the first job
                        // that is not a write (it runs after them, as it was queued).
                        let mut batch = vec![write];
                        while batch.len() < PIPELINE {
                            match rx.try_recv() {
                                Ok(Job::Write(w)) => batch.push(w),
                                Ok(other) => {
                                    next = Some(other);
                                    break;
                                }
                                Err(_) => break,
                            }
                        }
                        conn.write_all(&shown, batch);
                    }
                }
            }
        })
        .map_err(|e| JournalError::Flush(format!("cannot start the journal thread: {e}")))?;
    Ok(jobs)
}

/// The channel on which a committing transaction names the runs it appended to: the hex run id,
/// a space and the writing store's origin (so a host's listener passes over its own appends,
/// which woke its readers already).
pub const CHANNEL: &str = "sandgraph_events";

/// Commits the open transaction with a notification per run in `runs` (delivered to listeners
/// as it commits), both sent before either answer is read.
fn notify_and_commit(
    c: &mut Pg,
    runs: &HashSet<RunId>,
    origin: &str,
) -> Result<(), postgres::Error> {
    if runs.is_empty() {
        return c.batch_execute("COMMIT");
    }
    let ids: Vec<String> = runs.iter().map(|r| format!("{r} {origin}")).collect();
    let notify = c.statement("SELECT pg_notify($1, r) FROM unnest($2::text[]) AS r")?;
    let client = &c.client;
    let (notified, committed) = c.runtime.block_on(futures_util::future::join(
        client.execute(&notify, &[&CHANNEL, &ids]),
        client.batch_execute("COMMIT"),
    ));
    // A failed notify aborted the transaction, and COMMIT then rolls it back without an error:
    // the notify's answer decides.
    let notified = c.seen(notified);
    let committed = c.seen(committed);
    notified.and(committed)
}

/// Listens on [`CHANNEL`] on its own connection (reconnecting with backoff) and calls `wake`
/// with each run another host's commit named (not `origin`'s, this store's own), until `stop`
/// is set.
fn listen(
    url: String,
    wake: super::store::RemoteAppend,
    stop: Arc<std::sync::atomic::AtomicBool>,
    origin: String,
) {
    use postgres::fallible_iterator::FallibleIterator;
    use std::sync::atomic::Ordering;
    let mut wait = Duration::from_millis(100);
    while !stop.load(Ordering::Relaxed) {
        let mut client = match connect(&url).and_then(|mut c| {
            c.batch_execute(&format!("LISTEN {CHANNEL}"))
                .map_err(|e| db_error(&redact(&url), e))?;
            Ok(c)
        }) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "journal notifications: cannot listen; retrying");
                std::thread::sleep(wait);
                wait = (wait * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        wait = Duration::from_millis(100);
        loop {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            let next = client
                .notifications()
                .timeout_iter(Duration::from_millis(500))
                .next();
            match next {
                Ok(Some(n)) => {
                    let (run, from) = n.payload().split_once(' ').unwrap_or((n.payload(), ""));
                    if from != origin
                        && let Ok(run) = RunId::parse(run)
                    {
                        wake(run);
                    }
                }
                Ok(None) => {
                    if client.is_closed() {
                        break;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "journal notifications: the connection broke; listening again");
                    break;
                }
            }
        }
    }
}

/// The URL without its password, for messages.
pub(crate) fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.find(':') {
                Some(c) => format!("{}{}:***{}", &url[..s + 3], &creds[..c], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

pub(crate) fn db_error(url: &str, e: postgres::Error) -> JournalError {
    let detail = match e.as_db_error() {
        Some(d) => format!("{} ({})", d.message(), d.code().code()),
        // The client's own message ("error performing TLS handshake") and what caused it.
        None => {
            let mut text = e.to_string();
            let mut cause = std::error::Error::source(&e);
            while let Some(c) = cause {
                text.push_str(&format!(": {c}"));
                cause = c.source();
            }
            text
        }
    };
    JournalError::Database {
        url: url.to_owned(),
        detail,
    }
}

impl PostgresStore {
    /// Connects to `url` (`postgres://user:password@host:port/database`), creating or checking
    /// the schema. Fails with the reason when the database cannot be reached, refuses the
    /// credentials, or holds a schema newer than this build.
    pub fn open(url: &str) -> Result<PostgresStore, JournalError> {
        PostgresStore::open_with(url, Some(BACKGROUND_COMMIT))
    }

    /// [`PostgresStore::open`] committing an idle transaction after `background_commit`, or
    /// only on flush (`None`: for tests of writes lost with a connection).
    pub fn open_with(
        url: &str,
        background_commit: Option<Duration>,
    ) -> Result<PostgresStore, JournalError> {
        let shown = redact(url);
        let fences = Fences::default();
        let dirty = Arc::new(Dirty::default());
        // Random, like a run id: tells this store's notifications from other hosts'.
        let origin = RunId::new().to_string();
        let payloads = {
            let state = PayloadState::default();
            let dirty = Arc::new(Dirty::default());
            let mut conn = Connection::new(url, fences.clone(), &origin);
            conn.dirty = Some(dirty.clone());
            conn.autocommit = Some(state.clone());
            Payloads {
                jobs: connection_thread("sandgraph-journal-pg-payloads", conn, None)?,
                dirty,
                state,
            }
        };
        let mut writer = Connection::new(url, fences.clone(), &origin);
        writer.dirty = Some(dirty.clone());
        writer.payloads = Some(payloads.clone());
        let jobs = connection_thread("sandgraph-journal-pg", writer, background_commit)?;
        let reader = connection_thread(
            "sandgraph-journal-pg-read",
            Connection::new(url, fences.clone(), &origin),
            None,
        )?;
        let store = PostgresStore {
            jobs,
            reader,
            payloads,
            dirty,
            shown: shown.clone(),
            fences,
            url: url.to_owned(),
            listener_stop: Arc::default(),
            origin,
        };
        store.call(move |c| migrate(c, &shown))?;
        Ok(store)
    }

    /// Queues write `sql` into the open transaction (begun if none is) and returns at once: the
    /// connection thread runs jobs in order, so any later read on this store sees it. A write
    /// that fails poisons the transaction; the next flush rolls it back and reports why.
    fn write(&self, sql: &'static str, params: Vec<Param>) -> Result<(), JournalError> {
        self.write_ordered(sql, params, Ordered::Neither)
    }

    /// [`PostgresStore::write`] of a statement that changes the events or the payloads, which
    /// the batch's own events or payloads must not pass.
    fn write_ordered(
        &self,
        sql: &'static str,
        params: Vec<Param>,
        orders: Ordered,
    ) -> Result<(), JournalError> {
        let seq = self.dirty.mark(None);
        self.send_write(Write {
            seq,
            what: WriteOf::Statement {
                sql,
                params,
                orders,
            },
            if_no_row: None,
        })
    }

    /// [`PostgresStore::write`] of a write to `run`, skipped when the run's fence refuses it;
    /// one that changes no row fails with `if_no_row` when that is given.
    fn write_run(
        &self,
        run: RunId,
        sql: &'static str,
        fenced_sql: &'static str,
        params: Vec<Param>,
        if_no_row: Option<String>,
    ) -> Result<(), JournalError> {
        self.check_fence(run)?;
        let seq = self.dirty.mark(Some(run));
        self.send_write(Write {
            seq,
            what: WriteOf::RunStatement {
                run,
                sql,
                fenced_sql,
                params,
            },
            if_no_row,
        })
    }

    fn send_write(&self, write: Write) -> Result<(), JournalError> {
        self.jobs
            .send(Job::Write(write))
            .map_err(|_| self.stopped())
    }

    /// Queues a payload write (or removal) for the payload connection (see [`Payloads`]).
    fn write_payload(&self, what: WriteOf) -> Result<(), JournalError> {
        let seq = self.payloads.dirty.mark(None);
        self.payloads
            .jobs
            .send(Job::Write(Write {
                seq,
                what,
                if_no_row: None,
            }))
            .map_err(|_| self.stopped())
    }

    /// Runs read `f` of the payloads where it sees them: on the payload connection, behind
    /// the payload writes still queued there, or else on the reader.
    fn read_payloads<T: Send + 'static>(
        &self,
        f: impl Fn(&mut Pg) -> Result<T, JournalError> + Send + 'static,
    ) -> Result<T, JournalError> {
        if !self.payloads.dirty.covers(Scope::Other) {
            return self.read_committed(f);
        }
        ask(&self.payloads.jobs, move |conn| conn.client().and_then(f))
            .unwrap_or_else(|| Err(self.stopped()))
    }

    /// Commits the open transaction, if any; rolls it back when one of its writes failed.
    fn commit(&self) -> Result<(), JournalError> {
        let url = self.shown.clone();
        self.job(move |conn| {
            let was_open = std::mem::take(&mut conn.in_tx);
            // Before the commit: no event may be committed before a payload it names.
            if let Err(e) = conn.payloads_stored(!was_open) {
                conn.failed.get_or_insert(e);
            }
            conn.checked.clear();
            conn.tx_writes.clear();
            let appended = std::mem::take(&mut conn.appended);
            if let Some(e) = conn.failed.take() {
                if was_open && let Ok(c) = conn.client() {
                    let _ = c.batch_execute("ROLLBACK");
                }
                conn.settled();
                // The write's own error already names the database: keep only its detail.
                let why = match e {
                    JournalError::Database { detail, .. } => detail,
                    other => other.to_string(),
                };
                return Err(JournalError::Database {
                    url,
                    detail: format!(
                        "{why}; the journal writes since the last commit were rolled back"
                    ),
                });
            }
            if was_open {
                let origin = conn.origin.clone();
                let c = conn.client()?;
                let done = notify_and_commit(c, &appended, &origin).map_err(|e| db_error(&url, e));
                conn.settled();
                if done.is_err()
                    && let Some(p) = &conn.payloads
                {
                    // The payloads stored before it may not be durable yet either.
                    p.state
                        .unflushed
                        .store(true, std::sync::atomic::Ordering::SeqCst);
                }
                done?;
            }
            Ok(())
        })
    }

    fn stopped(&self) -> JournalError {
        JournalError::Database {
            url: self.shown.clone(),
            detail: "the journal's connection thread has stopped".into(),
        }
    }

    /// [`PostgresStore::job`] for a job that writes (about `run`, or about blobs and records).
    fn write_job<T: Send + 'static>(
        &self,
        run: Option<RunId>,
        job: impl FnOnce(&mut Connection) -> Result<T, JournalError> + Send + 'static,
    ) -> Result<T, JournalError> {
        let seq = self.dirty.mark(run);
        self.job(move |conn| {
            conn.processed = seq;
            job(conn)
        })
    }

    /// Runs read `f` where it sees what it must: on the reader, unless this store wrote
    /// something in `scope` that is not committed yet.
    fn read<T: Send + 'static>(
        &self,
        scope: Scope,
        f: impl Fn(&mut Pg) -> Result<T, JournalError> + Send + 'static,
    ) -> Result<T, JournalError> {
        if self.dirty.covers(scope) {
            return self.call(f);
        }
        self.read_committed(f)
    }

    /// Runs read `f` on the reader, which sees committed data.
    fn read_committed<T: Send + 'static>(
        &self,
        f: impl Fn(&mut Pg) -> Result<T, JournalError> + Send + 'static,
    ) -> Result<T, JournalError> {
        ask(&self.reader, move |conn| {
            let r = conn.client().and_then(&f);
            // A reader holds no transaction: a connection found broken by this read is opened
            // again and the read repeated, once.
            if r.is_err() && conn.client.as_ref().is_some_and(|c| c.is_closed()) {
                return conn.client().and_then(&f);
            }
            r
        })
        .unwrap_or_else(|| Err(self.stopped()))
    }

    /// Runs read `f` on the connection thread and waits for its answer.
    fn call<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Pg) -> Result<T, JournalError> + Send + 'static,
    ) -> Result<T, JournalError> {
        self.job(move |conn| conn.client().and_then(f))
    }

    /// Runs `job` on the connection thread and waits for its answer.
    fn job<T: Send + 'static>(
        &self,
        job: impl FnOnce(&mut Connection) -> Result<T, JournalError> + Send + 'static,
    ) -> Result<T, JournalError> {
        ask(&self.jobs, job).unwrap_or_else(|| Err(self.stopped()))
    }

    fn url(&self) -> String {
        self.shown.clone()
    }
}

fn migrate(c: &mut Pg, url: &str) -> Result<(), JournalError> {
    let e = |err| db_error(url, err);
    c.execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
        .map_err(e)?;
    let result = (|| {
        c.batch_execute("CREATE TABLE IF NOT EXISTS sandgraph_schema (version integer NOT NULL)")
            .map_err(e)?;
        let at: i32 = c
            .query_opt("SELECT max(version) FROM sandgraph_schema", &[])
            .map_err(e)?
            .and_then(|r| r.get::<_, Option<i32>>(0))
            .unwrap_or(0);
        if at > SCHEMA_VERSION {
            return Err(JournalError::SchemaTooNew {
                found: at,
                supported: SCHEMA_VERSION,
            });
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(at as usize) {
            let version = i as i32 + 1;
            c.batch_execute("BEGIN").map_err(e)?;
            let step = (|| {
                c.batch_execute(sql)?;
                c.execute(
                    "INSERT INTO sandgraph_schema (version) VALUES ($1)",
                    &[&version],
                )?;
                c.batch_execute("COMMIT")
            })();
            if let Err(err) = step {
                let _ = c.batch_execute("ROLLBACK");
                return Err(e(err));
            }
        }
        Ok(())
    })();
    let unlock = c
        .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
        .map_err(e);
    result.and(unlock.map(|_| ()))
}

fn seq_i64(seq: u64) -> i64 {
    i64::try_from(seq).unwrap_or(i64::MAX)
}

pub(crate) fn run_of(bytes: &[u8]) -> RunId {
    let mut id = [0u8; 16];
    let n = bytes.len().min(16);
    id[..n].copy_from_slice(&bytes[..n]);
    RunId(id)
}

impl Store for PostgresStore {
    fn describe(&self) -> String {
        format!("PostgreSQL journal at {}", self.shown)
    }

    fn put_event(&self, run: RunId, seq: u64, record: &[u8]) -> Result<(), JournalError> {
        // A conflict must not abort the shared transaction (other runs' writes are in it): it
        // is reported, not raised. An event is stored only after its predecessor, so a run's
        // events never have a gap, whatever was lost with a connection: a write the journal
        // numbered before it learnt of the loss is refused, not committed past the lost ones
        // (see [`INSERT_EVENTS`]).
        self.check_fence(run)?;
        let missing = seq
            .checked_sub(1)
            .map(|p| format!(", or lacks event {p} (an earlier write was lost)"))
            .unwrap_or_default();
        let mark = self.dirty.mark(Some(run));
        self.send_write(Write {
            seq: mark,
            what: WriteOf::Event {
                run,
                seq: seq_i64(seq),
                record: record.to_vec(),
            },
            if_no_row: Some(format!(
                "run {run} already has an event {seq}: another writer appended to this run{missing}"
            )),
        })
    }

    fn last_seq(&self, run: RunId) -> Result<Option<u64>, JournalError> {
        let url = self.url();
        self.read(Scope::Run(run), move |c| {
            let row = c
                .query_one(
                    "SELECT max(seq) FROM sandgraph_events WHERE run = $1",
                    &[&&run.0[..]],
                )
                .map_err(|e| db_error(&url, e))?;
            Ok(row.get::<_, Option<i64>>(0).map(|s| s as u64))
        })
    }

    fn events_from(&self, run: RunId, from: u64) -> Result<Vec<(u64, Vec<u8>)>, JournalError> {
        let url = self.url();
        self.read(Scope::Run(run), move |c| {
            let rows = c
                .query(
                    "SELECT seq, record FROM sandgraph_events WHERE run = $1 AND seq >= $2 ORDER BY seq",
                    &[&&run.0[..], &seq_i64(from)],
                )
                .map_err(|e| db_error(&url, e))?;
            Ok(rows
                .iter()
                .map(|r| (r.get::<_, i64>(0) as u64, r.get::<_, Vec<u8>>(1)))
                .collect())
        })
    }

    fn for_each_event(&self, f: &mut EventVisitor<'_>) -> Result<(), JournalError> {
        // Run by run, so memory stays one run's events at a time.
        let url = self.url();
        let runs: Vec<RunId> = self.read(Scope::All, move |c| {
            let rows = c
                .query(
                    "SELECT DISTINCT run FROM sandgraph_events ORDER BY run",
                    &[],
                )
                .map_err(|e| db_error(&url, e))?;
            Ok(rows.iter().map(|r| run_of(r.get::<_, &[u8]>(0))).collect())
        })?;
        for run in runs {
            for (seq, record) in self.events_from(run, 0)? {
                f(run, seq, &record)?;
            }
        }
        Ok(())
    }

    fn remove_events(&self, run: RunId) -> Result<usize, JournalError> {
        let url = self.url();
        self.write_job(Some(run), move |conn| {
            let n = conn.begin(&url).and_then(|c| {
                c.execute(
                    "DELETE FROM sandgraph_events WHERE run = $1",
                    &[&&run.0[..]],
                )
                .map_err(|e| db_error(&url, e))
            });
            match n {
                Ok(n) => Ok(n as usize),
                Err(e) => {
                    // The transaction is aborted now: the next flush rolls it back.
                    conn.failed.get_or_insert(JournalError::Database {
                        url: url.clone(),
                        detail: format!("removing run {run}'s events failed"),
                    });
                    Err(e)
                }
            }
        })
    }

    fn put_summary(&self, run: RunId, summary: &[u8]) -> Result<(), JournalError> {
        self.write_run(
            run,
            "INSERT INTO sandgraph_runs (run, summary) VALUES ($1, $2)
             ON CONFLICT (run) DO UPDATE SET summary = EXCLUDED.summary",
            "INSERT INTO sandgraph_runs (run, summary)
             SELECT $1::bytea, $2::bytea
             WHERE EXISTS (
                 SELECT 1 FROM sandgraph_leases WHERE run = $1::bytea AND epoch = $3::bigint
                 FOR SHARE)
             ON CONFLICT (run) DO UPDATE SET summary = EXCLUDED.summary",
            vec![Box::new(run.0.to_vec()), Box::new(summary.to_vec())],
            None,
        )
    }

    fn summary(&self, run: RunId) -> Result<Option<Vec<u8>>, JournalError> {
        let url = self.url();
        self.read(Scope::Run(run), move |c| {
            let row = c
                .query_opt(
                    "SELECT summary FROM sandgraph_runs WHERE run = $1",
                    &[&&run.0[..]],
                )
                .map_err(|e| db_error(&url, e))?;
            Ok(row.map(|r| r.get::<_, Vec<u8>>(0)))
        })
    }

    fn summaries(&self) -> Result<Vec<(RunId, Vec<u8>)>, JournalError> {
        let url = self.url();
        self.read(Scope::All, move |c| {
            let rows = c
                .query("SELECT run, summary FROM sandgraph_runs", &[])
                .map_err(|e| db_error(&url, e))?;
            Ok(rows
                .iter()
                .map(|r| (run_of(r.get::<_, &[u8]>(0)), r.get::<_, Vec<u8>>(1)))
                .collect())
        })
    }

    fn remove_summary(&self, run: RunId) -> Result<(), JournalError> {
        self.dirty.mark(Some(run));
        self.write(
            "DELETE FROM sandgraph_runs WHERE run = $1",
            vec![Box::new(run.0.to_vec())],
        )
    }

    fn has_blob(&self, digest: &[u8; 32]) -> Result<bool, JournalError> {
        let (url, d) = (self.url(), *digest);
        self.read_payloads(move |c| {
            let row = c
                .query_opt(
                    "SELECT 1 FROM sandgraph_blobs WHERE digest = $1",
                    &[&&d[..]],
                )
                .map_err(|e| db_error(&url, e))?;
            Ok(row.is_some())
        })
    }

    /// Only for large bodies: a small one is written again (`ON CONFLICT DO NOTHING`, queued
    /// and pipelined with the other writes) rather than waited for a read.
    fn ask_before_put_blob(&self, len: usize) -> bool {
        len > ASK_BEFORE_PUT_BLOB
    }

    fn put_blob(
        &self,
        digest: &[u8; 32],
        created_ms: u64,
        body: &[u8],
    ) -> Result<(), JournalError> {
        // Equal digests, equal content: whoever wrote it first keeps its creation time.
        self.write_payload(WriteOf::Blob {
            digest: *digest,
            created_ms: seq_i64(created_ms),
            body: body.to_vec(),
        })
    }

    fn blob(&self, digest: &[u8; 32]) -> Result<Option<StoredBlob>, JournalError> {
        let (url, d) = (self.url(), *digest);
        self.read_payloads(move |c| {
            let row = c
                .query_opt(
                    "SELECT created_ms, body FROM sandgraph_blobs WHERE digest = $1",
                    &[&&d[..]],
                )
                .map_err(|e| db_error(&url, e))?;
            Ok(row.map(|r| StoredBlob {
                created_ms: r.get::<_, i64>(0) as u64,
                body: r.get(1),
            }))
        })
    }

    fn blob_ages(&self) -> Result<Vec<([u8; 32], u64)>, JournalError> {
        let url = self.url();
        self.read_payloads(move |c| {
            let rows = c
                .query("SELECT digest, created_ms FROM sandgraph_blobs", &[])
                .map_err(|e| db_error(&url, e))?;
            Ok(rows
                .iter()
                .map(|r| {
                    let d: &[u8] = r.get(0);
                    (d.try_into().unwrap_or([0; 32]), r.get::<_, i64>(1) as u64)
                })
                .collect())
        })
    }

    fn remove_blob(&self, digest: &[u8; 32]) -> Result<(), JournalError> {
        self.write_payload(WriteOf::Statement {
            sql: "DELETE FROM sandgraph_blobs WHERE digest = $1",
            params: vec![Box::new(digest.to_vec())],
            orders: Ordered::Blobs,
        })
    }

    fn flush(&self) -> Result<(), String> {
        self.commit().map_err(|e| e.to_string())
    }

    fn kv_get(&self, space: &str, key: &[u8]) -> Result<Option<Vec<u8>>, JournalError> {
        let (url, space, key) = (self.url(), space.to_owned(), key.to_vec());
        self.read(Scope::Other, move |c| {
            let row = c
                .query_opt(
                    "SELECT value FROM sandgraph_kv WHERE space = $1 AND key = $2",
                    &[&space, &key],
                )
                .map_err(|e| db_error(&url, e))?;
            Ok(row.map(|r| r.get::<_, Vec<u8>>(0)))
        })
    }

    fn kv_put(&self, space: &str, key: &[u8], value: &[u8]) -> Result<(), JournalError> {
        self.write(
            "INSERT INTO sandgraph_kv (space, key, value) VALUES ($1, $2, $3)
             ON CONFLICT (space, key) DO UPDATE SET value = EXCLUDED.value",
            vec![
                Box::new(space.to_owned()),
                Box::new(key.to_vec()),
                Box::new(value.to_vec()),
            ],
        )
    }

    fn kv_put_new(&self, space: &str, key: &[u8], value: &[u8]) -> Result<bool, JournalError> {
        let (url, space, key, value) = (self.url(), space.to_owned(), key.to_vec(), value.to_vec());
        self.write_job(None, move |conn| {
            // Another host's uncommitted insert of the same key makes this wait for its
            // commit: exactly one of them stores.
            let n = conn.begin(&url).and_then(|c| {
                c.execute(
                    "INSERT INTO sandgraph_kv (space, key, value) VALUES ($1, $2, $3)
                     ON CONFLICT (space, key) DO NOTHING",
                    &[&space, &key, &value],
                )
                .map_err(|e| db_error(&url, e))
            });
            match n {
                Ok(n) => Ok(n == 1),
                Err(e) => {
                    conn.failed.get_or_insert(JournalError::Database {
                        url: url.clone(),
                        detail: format!("storing a '{space}' record failed"),
                    });
                    Err(e)
                }
            }
        })
    }

    fn kv_remove(&self, space: &str, key: &[u8]) -> Result<(), JournalError> {
        self.write(
            "DELETE FROM sandgraph_kv WHERE space = $1 AND key = $2",
            vec![Box::new(space.to_owned()), Box::new(key.to_vec())],
        )
    }

    fn kv_remove_if(&self, space: &str, key: &[u8], value: &[u8]) -> Result<bool, JournalError> {
        let (url, space, key, value) = (self.url(), space.to_owned(), key.to_vec(), value.to_vec());
        self.write_job(None, move |conn| {
            let n = conn.begin(&url).and_then(|c| {
                c.execute(
                    "DELETE FROM sandgraph_kv WHERE space = $1 AND key = $2 AND value = $3",
                    &[&space, &key, &value],
                )
                .map_err(|e| db_error(&url, e))
            });
            match n {
                Ok(n) => Ok(n == 1),
                Err(e) => {
                    conn.failed.get_or_insert(JournalError::Database {
                        url: url.clone(),
                        detail: format!("removing a '{space}' record failed"),
                    });
                    Err(e)
                }
            }
        })
    }

    fn kv_scan(&self, space: &str, prefix: &[u8]) -> Result<Vec<KeyValue>, JournalError> {
        let (url, space, prefix) = (self.url(), space.to_owned(), prefix.to_vec());
        self.read(Scope::Other, move |c| {
            let rows = c
                .query(
                    "SELECT key, value FROM sandgraph_kv
                     WHERE space = $1 AND substr(key, 1, length($2::bytea)) = $2::bytea
                     ORDER BY key",
                    &[&space, &prefix],
                )
                .map_err(|e| db_error(&url, e))?;
            Ok(rows
                .iter()
                .map(|r| (r.get::<_, Vec<u8>>(0), r.get::<_, Vec<u8>>(1)))
                .collect())
        })
    }

    fn on_remote_append(&self, wake: super::store::RemoteAppend) -> bool {
        let (url, stop, origin) = (
            self.url.clone(),
            self.listener_stop.clone(),
            self.origin.clone(),
        );
        std::thread::Builder::new()
            .name("sandgraph-journal-listen".into())
            .spawn(move || listen(url, wake, stop, origin))
            .is_ok()
    }

    fn fence(&self, run: RunId, epoch: Option<i64>) {
        let mut epochs = self.fences.epochs.lock().unwrap_or_else(|p| p.into_inner());
        self.fences
            .lost
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&run);
        match epoch {
            Some(e) => epochs.insert(run, e),
            None => epochs.remove(&run),
        };
    }

    fn fence_lost(&self, run: RunId, why: String) {
        self.fences.lose(run, why);
    }

    fn check_fence(&self, run: RunId) -> Result<(), JournalError> {
        match self.fences.lost(run) {
            Some(why) => Err(JournalError::Fenced { run, why }),
            None => Ok(()),
        }
    }

    fn overwrite_event(&self, run: RunId, seq: u64, record: &[u8]) -> Result<(), JournalError> {
        self.dirty.mark(Some(run));
        self.write_ordered(
            "UPDATE sandgraph_events SET record = $3 WHERE run = $1 AND seq = $2",
            vec![
                Box::new(run.0.to_vec()),
                Box::new(seq_i64(seq)),
                Box::new(record.to_vec()),
            ],
            Ordered::Events,
        )
    }
}

impl Drop for PostgresStore {
    /// Commits what is pending, as a sled journal flushes on close.
    fn drop(&mut self) {
        self.listener_stop
            .store(true, std::sync::atomic::Ordering::Relaxed);
        if let Err(e) = self.commit() {
            tracing::warn!(error = %e, "journal writes not committed on close");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn passwords_never_reach_messages() {
        assert_eq!(
            redact("postgres://app:s3cret@db:5432/sandgraph"),
            "postgres://app:***@db:5432/sandgraph"
        );
        assert_eq!(
            redact("postgres://app@db/sandgraph"),
            "postgres://app@db/sandgraph"
        );
        assert_eq!(redact("postgres://db/x"), "postgres://db/x");
    }
}
