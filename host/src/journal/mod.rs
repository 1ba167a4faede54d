//! The durable event log of graph runs: every run is an append-only sequence of events (run and
//! step lifecycle, and every boundary crossing inside a step), so an interrupted run can be resumed
//! and a finished one replayed offline. Stored through a [`store::Store`] (sled embedded);
//! large payloads once, by sha256.

pub mod crossings;
pub mod event;
mod group_commit;
pub mod migrate;
pub mod postgres;
pub mod queue;
pub mod store;
pub mod usage;
pub mod wal;
pub mod workspace;

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use event::{
    Crossing, Event, PayloadRef, PinnedComponent, RunStatus, Snapshot, SnapshotMoment,
};
use group_commit::GroupCommit;
use store::{SledStore, Store};

/// Identifies one run; keys of its events start with these 16 bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct RunId(pub [u8; 16]);

impl RunId {
    /// A fresh id from the clock, the process and a counter (unique within and across processes).
    pub fn new() -> RunId {
        static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let mut h = Sha256::new();
        h.update(now_nanos().to_le_bytes());
        h.update(std::process::id().to_le_bytes());
        h.update(
            COUNTER
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                .to_le_bytes(),
        );
        let d = h.finalize();
        let mut id = [0u8; 16];
        id.copy_from_slice(&d[..16]);
        RunId(id)
    }

    pub fn parse(s: &str) -> Result<RunId, JournalError> {
        let bad = || JournalError::BadRunId { text: s.to_owned() };
        let bytes = hex::decode(s).map_err(|_| bad())?;
        Ok(RunId(bytes.try_into().map_err(|_| bad())?))
    }
}

impl Default for RunId {
    fn default() -> Self {
        RunId::new()
    }
}

impl std::fmt::Display for RunId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

/// Whether an append must be on disk before it returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Flushed (with group commit) before `append` returns: step completed, run finished.
    Durable,
    /// In the tree, flushed by the next durable append or sled's background flush.
    Buffered,
}

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("cannot open the journal at {path}: {source}")]
    Open { path: String, source: sled::Error },
    #[error(
        "the journal at {path} is in use by another process (it holds the journal's lock); stop that process or point this one at another journal"
    )]
    InUse { path: String },
    #[error("cannot recover the journal at {path} from its write-ahead log: {detail}")]
    Recover { path: String, detail: String },
    #[error("journal storage failed: {0}")]
    Storage(#[from] sled::Error),
    #[error("journal flush failed, the append may not be durable: {0}")]
    Flush(String),
    #[error("run {run} event {seq} is corrupt: {reason}")]
    Corrupt {
        run: RunId,
        seq: u64,
        reason: String,
    },
    #[error("run {run} has a corrupt summary record: {reason}")]
    CorruptRun { run: RunId, reason: String },
    #[error("payload {digest} is missing from the journal's blob store")]
    MissingBlob { digest: String },
    #[error("payload {digest} does not match its sha256; the blob store is corrupt")]
    CorruptBlob { digest: String },
    #[error("a workspace snapshot's manifest is corrupt: {0}")]
    CorruptSnapshot(String),
    #[error("run {run} is not in the journal")]
    UnknownRun { run: RunId },
    #[error("run {run} already exists in the journal")]
    RunExists { run: RunId },
    #[error("journal database {url}: {detail}")]
    Database { url: String, detail: String },
    #[error(
        "the journal database has schema version {found}, newer than this sandgraph supports ({supported}); upgrade sandgraph"
    )]
    SchemaTooNew { found: i32, supported: i32 },
    #[error(
        "run {run} is leased to another host now ({why}); this host's writes to it are refused and it stops executing it"
    )]
    Fenced { run: RunId, why: String },
    #[error("'{text}' is not a run id (expected 32 hex digits)")]
    BadRunId { text: String },
}

impl JournalError {
    /// Whether this is the journal's store being unavailable (a database connection lost or a
    /// flush failed) or this host being fenced off a run, rather than bad data: a run stopped
    /// by it is left to resume, not ended as failed.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            JournalError::Database { .. } | JournalError::Fenced { .. } | JournalError::Flush(_)
        )
    }
}

/// One row of `runs()`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunSummary {
    pub run: RunId,
    pub graph_name: String,
    pub graph_digest: String,
    pub status: RunStatus,
    pub created_ms: u64,
    /// When the summary was last rewritten (the run's last durable append).
    pub updated_ms: u64,
    /// Events in the run as of its last durable append (exact once the run has finished).
    pub events: u64,
}

/// A stored event with its place in the run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub seq: u64,
    /// When it was appended, ms since the Unix epoch.
    pub at_ms: u64,
    pub event: Event,
}

/// What `gc` removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GcReport {
    pub runs: usize,
    pub events: usize,
    pub blobs: usize,
}

/// What a run's subscribers ([`Journal::subscribe`]) are told as it changes: the last sequence
/// appended through this journal, whether one of those appends ended the run, and how many times
/// another host announced appends to it (what those were is only in the store).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Appended {
    pub seq: u64,
    pub ended: bool,
    pub remote: u64,
}

/// The journal; share one per process (it is `Sync`).
pub struct Journal {
    store: Box<dyn Store>,
    /// Next sequence number per run, loaded from the log on first use.
    next_seq: Mutex<HashMap<RunId, u64>>,
    /// Summaries of unfinished runs this journal has written, so a durable append rewrites its
    /// run's summary without reading it back from the store first (a round trip on
    /// PostgreSQL). Also serialises the read-modify-write of one run's summary.
    summaries: Mutex<HashMap<RunId, RunSummary>>,
    commit: Arc<GroupCommit>,
    /// Called after every append has fully taken effect (crash-injection tests stop here).
    after_append: std::sync::RwLock<Vec<AppendHook>>,
    /// Per run with live readers (the API's event streams and waits): what was appended.
    watchers: Arc<Mutex<HashMap<RunId, tokio::sync::watch::Sender<Appended>>>>,
    /// Whether the store tells this journal of other hosts' appends (started on the first
    /// subscription; see [`Journal::follows_other_hosts`]).
    listening: std::sync::OnceLock<bool>,
    /// Told how long each disk flush took (the API's flush-latency histogram).
    on_flush: std::sync::OnceLock<FlushHook>,
}

/// How long [`Journal::open`] waits for the journal's lock.
pub const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// See [`Journal::set_on_flush`].
pub type FlushHook = Box<dyn Fn(std::time::Duration) + Send + Sync>;

/// See [`Journal::set_after_append`].
pub type AppendHook = Box<dyn Fn(RunId, u64, &Event) + Send + Sync>;

impl Journal {
    /// Opens (or creates) the journal at `path`, waiting up to [`LOCK_WAIT`] for a process or
    /// handle that is letting go of it.
    pub fn open(path: &Path) -> Result<Journal, JournalError> {
        Journal::open_waiting(path, LOCK_WAIT)
    }

    /// [`Journal::open`], waiting at most `wait` for the journal's lock. sled locks the journal
    /// for one owner; a handle just dropped in this process can keep it a moment longer (sled's
    /// background IO threads close the file after the last handle goes), and so can a process
    /// that is exiting.
    pub fn open_waiting(path: &Path, wait: std::time::Duration) -> Result<Journal, JournalError> {
        Journal::open_with(path, wait, wal::WalOptions::default())
    }

    /// [`Journal::open_waiting`] with the write-ahead log laid out and observed as `log` says.
    pub fn open_with(
        path: &Path,
        wait: std::time::Duration,
        log: wal::WalOptions,
    ) -> Result<Journal, JournalError> {
        let deadline = std::time::Instant::now() + wait;
        let db = loop {
            match sled::Config::new().path(path).open() {
                Ok(db) => break db,
                Err(sled::Error::Io(e)) if e.to_string().contains("could not acquire lock") => {
                    if std::time::Instant::now() >= deadline {
                        return Err(JournalError::InUse {
                            path: path.display().to_string(),
                        });
                    }
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(source) => {
                    return Err(JournalError::Open {
                        path: path.display().to_string(),
                        source,
                    });
                }
            }
        };
        Ok(Journal::on(Box::new(SledStore::new(db, Some(path), log)?)))
    }

    /// Opens the journal `location` names: a `postgres://` or `postgresql://` URL (a database
    /// several replicas share), else a directory for the embedded sled journal.
    pub fn open_location(location: &str) -> Result<Journal, JournalError> {
        if is_database_url(location) {
            Ok(Journal::on(Box::new(postgres::PostgresStore::open(
                location,
            )?)))
        } else {
            Journal::open(Path::new(location))
        }
    }

    /// A journal that lives in memory only (tests, `tool call` replays).
    pub fn temporary() -> Result<Journal, JournalError> {
        let db = sled::Config::new().temporary(true).open()?;
        Ok(Journal::on(Box::new(SledStore::new(
            db,
            None,
            wal::WalOptions::default(),
        )?)))
    }

    /// A journal over `store`.
    pub fn on(store: Box<dyn Store>) -> Journal {
        Journal {
            store,
            next_seq: Mutex::default(),
            summaries: Mutex::default(),
            commit: Arc::default(),
            after_append: std::sync::RwLock::default(),
            watchers: Arc::default(),
            listening: std::sync::OnceLock::new(),
            on_flush: std::sync::OnceLock::new(),
        }
    }

    /// The storage backend in words.
    pub fn describe(&self) -> String {
        self.store.describe()
    }

    /// Stores a payload: inline when small, otherwise once in the blob tree under its sha256.
    pub fn put_payload(&self, bytes: &[u8]) -> Result<PayloadRef, JournalError> {
        self.put_payload_within(bytes, event::INLINE_LIMIT)
    }

    /// [`Journal::put_payload`] keeping payloads of up to `inline_limit` bytes inside the event
    /// (for payloads no other event will share, such as [`event::AUDIT_INLINE_LIMIT`]).
    pub fn put_payload_within(
        &self,
        bytes: &[u8],
        inline_limit: usize,
    ) -> Result<PayloadRef, JournalError> {
        if bytes.len() <= inline_limit {
            return Ok(PayloadRef::Inline(bytes.to_vec()));
        }
        self.put_blob(Sha256::digest(bytes).into(), bytes)
    }

    /// Stores `bytes` under `digest` unless a blob is there already.
    fn put_blob(&self, digest: [u8; 32], bytes: &[u8]) -> Result<PayloadRef, JournalError> {
        if !self.store.ask_before_put_blob(bytes.len()) || !self.store.has_blob(&digest)? {
            self.store.put_blob(&digest, now_ms(), bytes)?;
        }
        Ok(PayloadRef::Blob(digest))
    }

    /// [`Journal::put_payload`] for bytes whose sha256 the caller computed already
    /// (`sha256:<hex>`, as the graph catalog keeps for each component): a run pins its
    /// components without hashing them again. `digest` must be `bytes`' own; reading the payload
    /// back checks it as always. A digest that does not parse is computed instead.
    pub fn put_payload_known(
        &self,
        bytes: &[u8],
        digest: &str,
    ) -> Result<PayloadRef, JournalError> {
        let known = digest
            .strip_prefix("sha256:")
            .and_then(|h| hex::decode(h).ok())
            .and_then(|d| <[u8; 32]>::try_from(d).ok());
        match known.filter(|_| bytes.len() > event::INLINE_LIMIT) {
            Some(digest) => self.put_blob(digest, bytes),
            None => self.put_payload(bytes),
        }
    }

    pub fn payload(&self, r: &PayloadRef) -> Result<Vec<u8>, JournalError> {
        match r {
            PayloadRef::Inline(b) => Ok(b.clone()),
            PayloadRef::Blob(d) => {
                let digest = hex::encode(d);
                let v = self
                    .store
                    .blob(d)?
                    .ok_or_else(|| JournalError::MissingBlob {
                        digest: digest.clone(),
                    })?;
                if <[u8; 32]>::from(Sha256::digest(&v.body)) != *d {
                    return Err(JournalError::CorruptBlob { digest });
                }
                Ok(v.body)
            }
        }
    }

    /// Appends `event` to `run`'s log and returns its sequence number. `RunCreated` must be the
    /// first event of a run; `RunFinished` marks it finished in `runs()`.
    pub fn append(
        &self,
        run: RunId,
        event: &Event,
        durability: Durability,
    ) -> Result<u64, JournalError> {
        let seq = self.store_event(run, event, durability)?;
        let flushed = (durability == Durability::Durable)
            .then(|| self.commit.wait_durable(|| self.flush_db()));
        self.appended(run, seq, event, flushed)
    }

    /// `append` for async code: a durable append waits for its group commit without holding a
    /// thread (only the flush's leader uses one of tokio's blocking pool, see `group_commit`), so
    /// concurrent steps share flushes however many of them wait.
    pub async fn append_async(
        self: &Arc<Self>,
        run: RunId,
        event: &Event,
        durability: Durability,
    ) -> Result<u64, JournalError> {
        let seq = self.store_event(run, event, durability)?;
        let flushed = match durability {
            Durability::Durable => Some(self.flushed_async().await),
            Durability::Buffered => None,
        };
        self.appended(run, seq, event, flushed)
    }

    /// Stores `event` under its sequence number, and the run's summary where it changes.
    fn store_event(
        &self,
        run: RunId,
        event: &Event,
        durability: Durability,
    ) -> Result<u64, JournalError> {
        self.store.check_fence(run)?;
        let seq = {
            let mut next = self.next_seq.lock().unwrap_or_else(|p| p.into_inner());
            let seq = match next.get(&run) {
                Some(s) => *s,
                None => self.last_seq(run)?.map_or(0, |s| s + 1),
            };
            if matches!(event, Event::RunCreated { .. }) && seq != 0 {
                return Err(JournalError::RunExists { run });
            }
            if !matches!(event, Event::RunCreated { .. }) && seq == 0 {
                return Err(JournalError::UnknownRun { run });
            }
            // Inserted under the lock so sequence order is append order.
            self.store.put_event(run, seq, &event.encode(now_ms()))?;
            next.insert(run, seq + 1);
            seq
        };
        // The summary (status, counts) is rewritten at the points that change a run's status and
        // at durable appends, not on every buffered one: it costs a read, decode, encode and
        // insert, and the buffered events in between are never durable on their own anyway.
        if (durability == Durability::Durable
            || matches!(event, Event::RunCreated { .. } | Event::RunFinished { .. }))
            && let Err(e) = self.update_summary(run, seq, event)
        {
            self.recount();
            return Err(e);
        }
        Ok(seq)
    }

    /// The end of an append: for a durable one, the result of the group commit it waited for
    /// (`flushed`) and the run's fence. A write refused by the fence is not an error of the flush
    /// (other runs' writes committed with it), so it is asked for here.
    fn appended(
        &self,
        run: RunId,
        seq: u64,
        event: &Event,
        flushed: Option<Result<(), String>>,
    ) -> Result<u64, JournalError> {
        if let Some(flushed) = flushed
            && let Err(e) = flushed
                .map_err(JournalError::Flush)
                .and_then(|()| self.store.check_fence(run))
        {
            self.recount();
            return Err(e);
        }
        self.announce(run, seq, event);
        Ok(seq)
    }

    /// Tells the append hooks and the run's watchers about an append that has taken effect.
    fn announce(&self, run: RunId, seq: u64, event: &Event) {
        for hook in self
            .after_append
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            hook(run, seq, event);
        }
        let mut watchers = self.watchers.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(tx) = watchers.get(&run) {
            let ended = matches!(event, Event::RunFinished { .. });
            tx.send_modify(|a| {
                a.seq = seq;
                a.ended |= ended;
            });
            if tx.receiver_count() == 0 {
                watchers.remove(&run);
            }
        }
    }

    /// Makes every append so far durable (group commit: concurrent callers share one flush).
    /// Blocking; call it from `spawn_blocking` in async code.
    pub fn sync(&self) -> Result<(), JournalError> {
        self.commit
            .wait_durable(|| self.flush_db())
            .map_err(JournalError::Flush)
    }

    /// `sync` for async code, without a thread of the blocking pool (see `append_async`).
    pub async fn sync_async(self: &Arc<Self>) -> Result<(), JournalError> {
        self.flushed_async().await.map_err(JournalError::Flush)
    }

    /// Waits, without holding a thread, for a group-commit flush that covers every write so far.
    async fn flushed_async(self: &Arc<Self>) -> Result<(), String> {
        let journal = self.clone();
        self.commit
            .wait_durable_async(move || journal.flush_db())
            .await
    }

    /// Adds a hook called after each append has taken effect (the event is in the tree, and on
    /// disk when durable), in the order hooks were added: the API's metrics count denials here,
    /// and the crash-injection test stops the host at every journal event in turn.
    pub fn set_after_append(&self, hook: AppendHook) {
        self.after_append
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .push(hook);
    }

    fn update_summary(&self, run: RunId, seq: u64, event: &Event) -> Result<(), JournalError> {
        let now = now_ms();
        let mut cache = self.summaries.lock().unwrap_or_else(|p| p.into_inner());
        let summary = match event {
            Event::RunCreated {
                graph_name,
                graph_digest,
                ..
            } => RunSummary {
                run,
                graph_name: graph_name.clone(),
                graph_digest: graph_digest.clone(),
                status: RunStatus::Running,
                created_ms: now,
                updated_ms: now,
                events: 1,
            },
            _ => {
                let mut s = match cache.get(&run) {
                    Some(s) => s.clone(),
                    None => self.summary(run)?,
                };
                s.updated_ms = now;
                s.events = s.events.max(seq + 1);
                match event {
                    Event::RunFinished { status, .. } => s.status = *status,
                    Event::StepAwaitingApproval { .. } => s.status = RunStatus::Waiting,
                    Event::StepApproval { .. } => s.status = RunStatus::Running,
                    _ => {}
                }
                s
            }
        };
        let bytes = postcard::to_stdvec(&summary).expect("postcard encodes run summaries");
        self.store.put_summary(run, &bytes)?;
        if summary.status.is_finished() {
            cache.remove(&run);
        } else {
            cache.insert(run, summary);
        }
        Ok(())
    }

    fn summary(&self, run: RunId) -> Result<RunSummary, JournalError> {
        let v = self
            .store
            .summary(run)?
            .ok_or(JournalError::UnknownRun { run })?;
        decode_summary(run, &v)
    }

    fn last_seq(&self, run: RunId) -> Result<Option<u64>, JournalError> {
        self.store.last_seq(run)
    }

    /// Every event of `run`, in order.
    pub fn events(&self, run: RunId) -> Result<Vec<Record>, JournalError> {
        let out = self.events_from(run, 0)?;
        if out.is_empty() {
            return Err(JournalError::UnknownRun { run });
        }
        Ok(out)
    }

    /// Installs a hook told the duration of every disk flush (set once).
    pub fn set_on_flush(&self, hook: FlushHook) {
        let _ = self.on_flush.set(hook);
    }

    /// One sled flush, timed for the flush hook.
    fn flush_db(&self) -> Result<(), String> {
        let start = std::time::Instant::now();
        let r = self.store.flush();
        if let Some(hook) = self.on_flush.get() {
            hook(start.elapsed());
        }
        if r.is_err() {
            // Whichever call led the failed flush (a durable append, or `sync` after buffered
            // completions), the buffered writes it should have committed may be gone.
            self.recount();
        }
        r
    }

    /// Forgets the counted sequences and cached summaries: a store that lost uncommitted writes
    /// (PostgreSQL rolls a broken transaction back) may hold fewer events than counted, so the
    /// next append counts again from the store. Without this a run's next event after a lost
    /// transaction left a gap where the lost buffered events were.
    fn recount(&self) {
        self.next_seq
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        self.summaries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }

    /// The events of `run` from sequence `from` on, in order (empty when there are none yet).
    pub fn events_from(&self, run: RunId, from: u64) -> Result<Vec<Record>, JournalError> {
        let mut out = Vec::new();
        for (seq, v) in self.store.events_from(run, from)? {
            let (at_ms, event) =
                Event::decode(&v).map_err(|reason| JournalError::Corrupt { run, seq, reason })?;
            out.push(Record { seq, at_ms, event });
        }
        Ok(out)
    }

    /// Wakes on every append to `run` (changes coalesce: a reader re-reads with `events_from`
    /// after each change, so a slow reader never falls behind by more than one re-read).
    pub fn subscribe(&self, run: RunId) -> tokio::sync::watch::Receiver<Appended> {
        self.follows_other_hosts();
        let mut watchers = self.watchers.lock().unwrap_or_else(|p| p.into_inner());
        watchers.retain(|_, tx| tx.receiver_count() > 0);
        watchers
            .entry(run)
            .or_insert_with(|| tokio::sync::watch::Sender::new(Appended::default()))
            .subscribe()
    }

    /// Whether subscribers are woken by other hosts' appends too (a shared store that notifies,
    /// as PostgreSQL does with LISTEN/NOTIFY); the first call starts listening. Without it, a
    /// reader following a run another host executes must poll.
    pub fn follows_other_hosts(&self) -> bool {
        *self.listening.get_or_init(|| {
            let watchers = self.watchers.clone();
            self.store.on_remote_append(Box::new(move |run| {
                let watchers = watchers.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(tx) = watchers.get(&run) {
                    tx.send_modify(|a| a.remote += 1);
                }
            }))
        })
    }

    /// One run's summary row.
    pub fn run_summary(&self, run: RunId) -> Result<RunSummary, JournalError> {
        self.summary(run)
    }

    /// The record under `key` in keyed-record space `space` (the API's graphs, tools and
    /// idempotency keys live in spaces beside the journal, in the same store).
    pub fn kv_get(&self, space: &str, key: &[u8]) -> Result<Option<Vec<u8>>, JournalError> {
        self.store.kv_get(space, key)
    }

    /// Stores `value` under `key` and makes it durable.
    pub fn kv_put(&self, space: &str, key: &[u8], value: &[u8]) -> Result<(), JournalError> {
        self.store.kv_put(space, key, value)?;
        self.sync()
    }

    /// Stores `value` unless `key` holds one (atomic across hosts sharing the store), durably;
    /// returns whether it stored.
    pub fn kv_put_new(&self, space: &str, key: &[u8], value: &[u8]) -> Result<bool, JournalError> {
        let stored = self.store.kv_put_new(space, key, value)?;
        self.sync()?;
        Ok(stored)
    }

    /// Removes `key` (durable with the next flush).
    pub fn kv_remove(&self, space: &str, key: &[u8]) -> Result<(), JournalError> {
        self.store.kv_remove(space, key)
    }

    /// Removes `key` if it still holds `value` (durable with the next flush); returns whether
    /// it did.
    pub fn kv_remove_if(
        &self,
        space: &str,
        key: &[u8],
        value: &[u8],
    ) -> Result<bool, JournalError> {
        self.store.kv_remove_if(space, key, value)
    }

    /// Every record of `space` whose key starts with `prefix`, in key order.
    pub fn kv_scan(
        &self,
        space: &str,
        prefix: &[u8],
    ) -> Result<Vec<store::KeyValue>, JournalError> {
        self.store.kv_scan(space, prefix)
    }

    /// From now on, `run`'s writes are checked against lease `epoch` (a host that just claimed
    /// the run); what this journal cached about the run is read again from the store, where the
    /// previous owner left it.
    pub fn fence(&self, run: RunId, epoch: i64) {
        self.forget(run);
        self.store.fence(run, Some(epoch));
    }

    /// [`Journal::fence`] for a run this host created and claimed before any other host could
    /// see it in the queue: what this journal cached about it stays true.
    pub fn fence_created(&self, run: RunId, epoch: i64) {
        self.store.fence(run, Some(epoch));
    }

    /// `run` is no longer leased by this host (it ended, or was handed back): its fence and
    /// cached state go.
    pub fn unfence(&self, run: RunId) {
        self.forget(run);
        self.store.fence(run, None);
    }

    /// This host lost `run`'s lease: its later writes to the run are refused, here and by the
    /// store.
    pub fn fence_lost(&self, run: RunId, why: String) {
        self.store.fence_lost(run, why);
        self.forget(run);
    }

    /// Fails when this host's writes to `run` are refused (it lost the run's lease).
    pub fn check_fence(&self, run: RunId) -> Result<(), JournalError> {
        self.store.check_fence(run)
    }

    /// Drops what this journal cached about `run` (its next sequence, its summary): another
    /// host may write to it next.
    pub fn forget(&self, run: RunId) {
        self.next_seq
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&run);
        self.summaries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&run);
    }

    /// Every run with its status, oldest first.
    pub fn runs(&self) -> Result<Vec<RunSummary>, JournalError> {
        let mut out = Vec::new();
        for (run, v) in self.store.summaries()? {
            out.push(decode_summary(run, &v)?);
        }
        out.sort_by_key(|s| (s.created_ms, s.run));
        Ok(out)
    }

    /// Runs that have not finished: what the host resumes on start.
    pub fn unfinished_runs(&self) -> Result<Vec<RunSummary>, JournalError> {
        Ok(self
            .runs()?
            .into_iter()
            .filter(|s| !s.status.is_finished())
            .collect())
    }

    /// Removes finished runs last touched at least `older_than` ago, then blobs no remaining event
    /// refers to (blobs younger than `older_than` stay: their event may not be appended yet).
    pub fn gc(&self, older_than: Duration) -> Result<GcReport, JournalError> {
        let cutoff = now_ms().saturating_sub(older_than.as_millis() as u64);
        let mut report = GcReport::default();
        for s in self.runs()? {
            if s.status.is_finished() && s.updated_ms <= cutoff {
                report.events += self.store.remove_events(s.run)?;
                self.store.remove_summary(s.run)?;
                self.next_seq
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&s.run);
                report.runs += 1;
            }
        }
        let mut live = HashSet::new();
        self.store.for_each_event(&mut |run, seq, v| {
            let (_, event) =
                Event::decode(v).map_err(|reason| JournalError::Corrupt { run, seq, reason })?;
            live.extend(event.blobs());
            if let Event::WorkspaceSnapshot {
                snapshot: Snapshot::Taken { manifest, .. },
                ..
            } = &event
            {
                match workspace::Manifest::load(self, manifest) {
                    Ok(m) => live.extend(m.blobs()),
                    // Its files cannot be found without it: nothing more to keep.
                    Err(JournalError::MissingBlob { .. }) => {}
                    Err(e) => return Err(e),
                }
            }
            Ok(())
        })?;
        for (digest, created) in self.store.blob_ages()? {
            if !live.contains(&digest) && created <= cutoff {
                self.store.remove_blob(&digest)?;
                report.blobs += 1;
            }
        }
        self.commit
            .wait_durable(|| self.flush_db())
            .map_err(JournalError::Flush)?;
        Ok(report)
    }

    /// Flushes run so far by durable appends (group commit makes this far below their count).
    pub fn flush_count(&self) -> u64 {
        self.commit.flushes()
    }

    /// Overwrites the raw bytes of one stored event. Only for tests of corruption handling.
    #[doc(hidden)]
    pub fn overwrite_raw_for_test(
        &self,
        run: RunId,
        seq: u64,
        bytes: &[u8],
    ) -> Result<(), JournalError> {
        self.store.overwrite_event(run, seq, bytes)
    }
}

/// Whether a journal location names a PostgreSQL database (a `postgres://` or `postgresql://`
/// URL) rather than a sled directory.
pub fn is_database_url(location: &str) -> bool {
    location.starts_with("postgres://") || location.starts_with("postgresql://")
}

fn decode_summary(run: RunId, bytes: &[u8]) -> Result<RunSummary, JournalError> {
    postcard::from_bytes(bytes).map_err(|e| JournalError::CorruptRun {
        run,
        reason: e.to_string(),
    })
}

fn now_nanos() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

fn now_ms() -> u64 {
    (now_nanos() / 1_000_000) as u64
}
