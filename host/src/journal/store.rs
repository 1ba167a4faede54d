//! Where the journal's bytes live. [`Journal`](super::Journal) keeps the semantics (sequence
//! numbers, run summaries, group commit, watchers, payload digests); a [`Store`] keeps three
//! collections: events by (run, sequence), run summaries by run, and payload blobs by sha256.
//! Values are opaque bytes here (the journal encodes them), so every backend stores exactly what
//! the others store and `journal migrate` can copy them verbatim.
//!
//! Contract: `put_event` never overwrites (the journal hands out each sequence once per run);
//! reads see every write made before them through the same store; `flush` returns once every
//! write made before it is durable.

use std::path::Path;
use std::sync::Arc;

use super::wal::{self, Op, Wal, WalOptions};
use super::{JournalError, RunId};

/// Called with each stored event (run, sequence, record) by [`Store::for_each_event`].
pub type EventVisitor<'a> = dyn FnMut(RunId, u64, &[u8]) -> Result<(), JournalError> + 'a;

/// A blob as stored: when it was first written (ms since the Unix epoch) and its bytes.
pub struct StoredBlob {
    pub created_ms: u64,
    pub body: Vec<u8>,
}

/// The storage a journal runs on (sled embedded, PostgreSQL for several replicas).
pub trait Store: Send + Sync {
    /// The backend in words, for errors and `sandgraph journal` output.
    fn describe(&self) -> String;
    fn put_event(&self, run: RunId, seq: u64, record: &[u8]) -> Result<(), JournalError>;
    /// The highest sequence stored for `run`.
    fn last_seq(&self, run: RunId) -> Result<Option<u64>, JournalError>;
    /// `run`'s events with sequence `from` or later, in order.
    fn events_from(&self, run: RunId, from: u64) -> Result<Vec<(u64, Vec<u8>)>, JournalError>;
    /// Every stored event of every run (gc's reachability scan), run by run in order.
    fn for_each_event(&self, f: &mut EventVisitor<'_>) -> Result<(), JournalError>;
    /// Removes every event of `run`; returns how many there were.
    fn remove_events(&self, run: RunId) -> Result<usize, JournalError>;
    fn put_summary(&self, run: RunId, summary: &[u8]) -> Result<(), JournalError>;
    fn summary(&self, run: RunId) -> Result<Option<Vec<u8>>, JournalError>;
    /// Every run's summary, in no particular order.
    fn summaries(&self) -> Result<Vec<(RunId, Vec<u8>)>, JournalError>;
    fn remove_summary(&self, run: RunId) -> Result<(), JournalError>;
    fn has_blob(&self, digest: &[u8; 32]) -> Result<bool, JournalError>;
    /// Whether the journal asks [`Store::has_blob`] before it stores a blob of `len` bytes
    /// that may be stored already. Asking costs a read, which waits (a round trip on a shared
    /// store); not asking costs writing the body again, which [`Store::put_blob`] ignores but
    /// still sends. Default: always ask.
    fn ask_before_put_blob(&self, _len: usize) -> bool {
        true
    }
    /// Stores a blob unless one with this digest exists (equal digests, equal content).
    fn put_blob(&self, digest: &[u8; 32], created_ms: u64, body: &[u8])
    -> Result<(), JournalError>;
    fn blob(&self, digest: &[u8; 32]) -> Result<Option<StoredBlob>, JournalError>;
    /// Every blob's digest and creation time.
    fn blob_ages(&self) -> Result<Vec<([u8; 32], u64)>, JournalError>;
    fn remove_blob(&self, digest: &[u8; 32]) -> Result<(), JournalError>;
    /// Makes every write so far durable.
    fn flush(&self) -> Result<(), String>;
    /// Overwrites one stored event's bytes. Only for tests of corruption handling.
    fn overwrite_event(&self, run: RunId, seq: u64, record: &[u8]) -> Result<(), JournalError>;
    // Keyed records in named spaces: the API's graph versions, uploaded tools and idempotency
    // keys. Writes join the journal's next flush, like its own.

    fn kv_get(&self, space: &str, key: &[u8]) -> Result<Option<Vec<u8>>, JournalError>;
    fn kv_put(&self, space: &str, key: &[u8], value: &[u8]) -> Result<(), JournalError>;
    /// Stores `value` unless `key` holds one already (decided atomically, across every host
    /// sharing the store); returns whether it stored.
    fn kv_put_new(&self, space: &str, key: &[u8], value: &[u8]) -> Result<bool, JournalError>;
    fn kv_remove(&self, space: &str, key: &[u8]) -> Result<(), JournalError>;
    /// Removes `key` if it still holds `value`; returns whether it did.
    fn kv_remove_if(&self, space: &str, key: &[u8], value: &[u8]) -> Result<bool, JournalError>;
    /// Every record whose key starts with `prefix`, in key order.
    fn kv_scan(&self, space: &str, prefix: &[u8]) -> Result<Vec<KeyValue>, JournalError>;

    // Fencing: a store several hosts share checks each write to a leased run against the lease
    // epoch this host holds, so a host that lost a run's lease can no longer write to it.

    /// Calls `wake` with each run another host appended to, from now on (as those appends
    /// commit); returns whether this store can (a store only this process writes cannot, and
    /// need not).
    fn on_remote_append(&self, wake: RemoteAppend) -> bool {
        let _ = wake;
        false
    }

    /// Checks `run`'s writes against lease `epoch` from now on (`None`: no longer).
    fn fence(&self, run: RunId, epoch: Option<i64>) {
        let _ = (run, epoch);
    }
    /// Refuses every later write to `run` from this host: it lost the run's lease.
    fn fence_lost(&self, run: RunId, why: String) {
        let _ = (run, why);
    }
    /// Fails when a write to `run` was refused by its fence (checked after a flush, so a durable
    /// append learns that its event was not stored).
    fn check_fence(&self, run: RunId) -> Result<(), JournalError> {
        let _ = run;
        Ok(())
    }
}

/// See [`Store::on_remote_append`].
pub type RemoteAppend = Box<dyn Fn(RunId) + Send + Sync>;

/// One keyed record: key and value.
pub type KeyValue = (Vec<u8>, Vec<u8>);

/// The embedded store: three sled trees in one database, behind a write-ahead log on disk.
pub struct SledStore {
    db: sled::Db,
    events: sled::Tree,
    runs: sled::Tree,
    blobs: sled::Tree,
    /// On-disk databases: every write is logged here, and a flush syncs the log (see
    /// [`wal`]); in memory: none.
    wal: Option<Wal>,
    what: String,
    /// Trees of the keyed-record spaces opened so far.
    spaces: std::sync::Mutex<std::collections::HashMap<String, sled::Tree>>,
}

impl SledStore {
    /// The store over an open database; `path` is where it lives on disk (None: in memory).
    /// On disk, the write-ahead log under `path/wal` is replayed into the database first.
    pub fn new(
        db: sled::Db,
        path: Option<&Path>,
        log: WalOptions,
    ) -> Result<SledStore, JournalError> {
        let wal = match path {
            Some(p) => {
                let disk = Arc::new(DiskSync::open(p).map_err(JournalError::Flush)?);
                let sled = db.clone();
                let checkpoint: wal::Checkpoint = Box::new(move || {
                    sled.flush().map_err(|e| e.to_string())?;
                    disk.sync()
                });
                let wal = Wal::open(&p.join("wal"), &db, checkpoint, log).map_err(|e| {
                    JournalError::Recover {
                        path: p.display().to_string(),
                        detail: e,
                    }
                })?;
                Some(wal)
            }
            None => None,
        };
        Ok(SledStore {
            events: db.open_tree("events")?,
            runs: db.open_tree("runs")?,
            blobs: db.open_tree("blobs")?,
            db,
            wal,
            spaces: std::sync::Mutex::default(),
            what: match path {
                Some(p) => format!("sled journal at {}", p.display()),
                None => "in-memory sled journal".into(),
            },
        })
    }

    /// The tree holding keyed-record space `space` (named as the API's trees always were).
    fn space(&self, space: &str) -> Result<sled::Tree, JournalError> {
        assert!(
            !matches!(space, "events" | "runs" | "blobs"),
            "space '{space}' belongs to the journal"
        );
        let mut spaces = self.spaces.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(t) = spaces.get(space) {
            return Ok(t.clone());
        }
        let t = self.db.open_tree(space)?;
        spaces.insert(space.to_owned(), t.clone());
        Ok(t)
    }

    /// Applies a write to sled and logs it (one lock keeps the log in sled's order). `apply`
    /// says whether it wrote (a compare-and-swap may not); only writes that happened are logged.
    fn write(
        &self,
        op: Op<'_>,
        apply: impl FnOnce() -> Result<bool, sled::Error>,
    ) -> Result<bool, JournalError> {
        let Some(wal) = &self.wal else {
            return Ok(apply()?);
        };
        Ok(wal.write(op, |lsn| -> Result<bool, sled::Error> {
            if !apply()? {
                return Ok(false);
            }
            self.db.insert(wal::LSN_KEY, &lsn.to_be_bytes())?;
            Ok(true)
        })?)
    }

    fn insert(
        &self,
        tree: &sled::Tree,
        name: &str,
        key: &[u8],
        value: &[u8],
    ) -> Result<(), JournalError> {
        self.write(
            Op::Insert {
                tree: name,
                key,
                value,
            },
            || {
                tree.insert(key, value)?;
                Ok(true)
            },
        )?;
        Ok(())
    }

    fn remove(&self, tree: &sled::Tree, name: &str, key: &[u8]) -> Result<(), JournalError> {
        self.write(Op::Remove { tree: name, key }, || {
            tree.remove(key)?;
            Ok(true)
        })?;
        Ok(())
    }
}

impl Store for SledStore {
    fn describe(&self) -> String {
        self.what.clone()
    }

    fn put_event(&self, run: RunId, seq: u64, record: &[u8]) -> Result<(), JournalError> {
        self.insert(&self.events, "events", &key(run, seq), record)
    }

    fn last_seq(&self, run: RunId) -> Result<Option<u64>, JournalError> {
        match self.events.scan_prefix(run.0).next_back() {
            None => Ok(None),
            Some(kv) => Ok(Some(seq_of(&kv?.0))),
        }
    }

    fn events_from(&self, run: RunId, from: u64) -> Result<Vec<(u64, Vec<u8>)>, JournalError> {
        let mut out = Vec::new();
        for kv in self.events.range(key(run, from)..=key(run, u64::MAX)) {
            let (k, v) = kv?;
            out.push((seq_of(&k), v.to_vec()));
        }
        Ok(out)
    }

    fn for_each_event(&self, f: &mut EventVisitor<'_>) -> Result<(), JournalError> {
        for kv in self.events.iter() {
            let (k, v) = kv?;
            let (run, seq) = split_key(&k);
            f(run, seq, &v)?;
        }
        Ok(())
    }

    fn remove_events(&self, run: RunId) -> Result<usize, JournalError> {
        let keys: Vec<_> = self
            .events
            .scan_prefix(run.0)
            .keys()
            .collect::<Result<_, _>>()?;
        for k in &keys {
            self.remove(&self.events, "events", k)?;
        }
        Ok(keys.len())
    }

    fn put_summary(&self, run: RunId, summary: &[u8]) -> Result<(), JournalError> {
        self.insert(&self.runs, "runs", &run.0, summary)
    }

    fn summary(&self, run: RunId) -> Result<Option<Vec<u8>>, JournalError> {
        Ok(self.runs.get(run.0)?.map(|v| v.to_vec()))
    }

    fn summaries(&self) -> Result<Vec<(RunId, Vec<u8>)>, JournalError> {
        let mut out = Vec::new();
        for kv in self.runs.iter() {
            let (k, v) = kv?;
            let mut id = [0u8; 16];
            id.copy_from_slice(&k[..16.min(k.len())]);
            out.push((RunId(id), v.to_vec()));
        }
        Ok(out)
    }

    fn remove_summary(&self, run: RunId) -> Result<(), JournalError> {
        self.remove(&self.runs, "runs", &run.0)
    }

    fn has_blob(&self, digest: &[u8; 32]) -> Result<bool, JournalError> {
        Ok(self.blobs.contains_key(digest)?)
    }

    fn put_blob(
        &self,
        digest: &[u8; 32],
        created_ms: u64,
        body: &[u8],
    ) -> Result<(), JournalError> {
        let mut value = created_ms.to_be_bytes().to_vec();
        value.extend_from_slice(body);
        // Equal content under equal keys: a concurrent writer of the same blob is harmless.
        self.insert(&self.blobs, "blobs", digest, &value)
    }

    fn blob(&self, digest: &[u8; 32]) -> Result<Option<StoredBlob>, JournalError> {
        let Some(v) = self.blobs.get(digest)? else {
            return Ok(None);
        };
        let body = v.get(8..).ok_or_else(|| JournalError::CorruptBlob {
            digest: hex::encode(digest),
        })?;
        Ok(Some(StoredBlob {
            created_ms: created_of(&v),
            body: body.to_vec(),
        }))
    }

    fn blob_ages(&self) -> Result<Vec<([u8; 32], u64)>, JournalError> {
        let mut out = Vec::new();
        for kv in self.blobs.iter() {
            let (k, v) = kv?;
            let digest: [u8; 32] = k.as_ref().try_into().unwrap_or([0; 32]);
            out.push((digest, created_of(&v)));
        }
        Ok(out)
    }

    fn remove_blob(&self, digest: &[u8; 32]) -> Result<(), JournalError> {
        self.remove(&self.blobs, "blobs", digest)
    }

    fn flush(&self) -> Result<(), String> {
        match &self.wal {
            Some(wal) => wal.sync(),
            None => self.db.flush().map(|_| ()).map_err(|e| e.to_string()),
        }
    }

    fn overwrite_event(&self, run: RunId, seq: u64, record: &[u8]) -> Result<(), JournalError> {
        self.insert(&self.events, "events", &key(run, seq), record)
    }

    fn kv_get(&self, space: &str, key: &[u8]) -> Result<Option<Vec<u8>>, JournalError> {
        Ok(self.space(space)?.get(key)?.map(|v| v.to_vec()))
    }

    fn kv_put(&self, space: &str, key: &[u8], value: &[u8]) -> Result<(), JournalError> {
        self.insert(&self.space(space)?, space, key, value)
    }

    fn kv_put_new(&self, space: &str, key: &[u8], value: &[u8]) -> Result<bool, JournalError> {
        let tree = self.space(space)?;
        self.write(
            Op::Insert {
                tree: space,
                key,
                value,
            },
            || {
                Ok(tree
                    .compare_and_swap(key, None as Option<&[u8]>, Some(value))?
                    .is_ok())
            },
        )
    }

    fn kv_remove(&self, space: &str, key: &[u8]) -> Result<(), JournalError> {
        self.remove(&self.space(space)?, space, key)
    }

    fn kv_remove_if(&self, space: &str, key: &[u8], value: &[u8]) -> Result<bool, JournalError> {
        let tree = self.space(space)?;
        self.write(Op::Remove { tree: space, key }, || {
            Ok(tree
                .compare_and_swap(key, Some(value), None as Option<&[u8]>)?
                .is_ok())
        })
    }

    fn kv_scan(&self, space: &str, prefix: &[u8]) -> Result<Vec<KeyValue>, JournalError> {
        let mut out = Vec::new();
        for kv in self.space(space)?.scan_prefix(prefix) {
            let (k, v) = kv?;
            out.push((k.to_vec(), v.to_vec()));
        }
        Ok(out)
    }
}

fn created_of(v: &[u8]) -> u64 {
    v.get(..8)
        .map_or(0, |b| u64::from_be_bytes(b.try_into().unwrap_or([0; 8])))
}

fn key(run: RunId, seq: u64) -> [u8; 24] {
    let mut k = [0u8; 24];
    k[..16].copy_from_slice(&run.0);
    k[16..].copy_from_slice(&seq.to_be_bytes());
    k
}

fn split_key(k: &[u8]) -> (RunId, u64) {
    let mut id = [0u8; 16];
    id.copy_from_slice(&k[..16]);
    (RunId(id), seq_of(k))
}

fn seq_of(k: &[u8]) -> u64 {
    u64::from_be_bytes(k[16..24].try_into().unwrap_or([0; 8]))
}

/// sled 0.34 writes its log with `sync_file_range` (data reaches the device, the device's
/// volatile cache is not flushed) and never syncs the files it keeps values over ~128 KiB in.
/// So that a checkpoint (after which the write-ahead log's old segments are deleted) survives
/// power loss and not only a killed process, it also `fdatasync`s sled's log and `fsync`s blob
/// files that appeared since the last checkpoint.
struct DiskSync {
    log: std::fs::File,
    blob_dir: std::path::PathBuf,
    synced_blobs: std::sync::Mutex<std::collections::HashSet<std::ffi::OsString>>,
}

impl DiskSync {
    fn open(path: &Path) -> Result<DiskSync, String> {
        let log = std::fs::File::open(path.join("db"))
            .map_err(|e| format!("cannot open {} to sync it: {e}", path.join("db").display()))?;
        Ok(DiskSync {
            log,
            blob_dir: path.join("blobs"),
            synced_blobs: std::sync::Mutex::default(),
        })
    }

    fn sync(&self) -> Result<(), String> {
        self.log
            .sync_data()
            .map_err(|e| format!("fdatasync of the journal log: {e}"))?;
        let Ok(entries) = std::fs::read_dir(&self.blob_dir) else {
            return Ok(());
        };
        let mut synced = self.synced_blobs.lock().unwrap_or_else(|p| p.into_inner());
        let mut any = false;
        for entry in entries.flatten() {
            let name = entry.file_name();
            if synced.contains(&name) {
                continue;
            }
            std::fs::File::open(entry.path())
                .and_then(|f| f.sync_all())
                .map_err(|e| format!("fsync of {}: {e}", entry.path().display()))?;
            synced.insert(name);
            any = true;
        }
        if any {
            std::fs::File::open(&self.blob_dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| format!("fsync of {}: {e}", self.blob_dir.display()))?;
        }
        Ok(())
    }
}
