//! The embedded journal's write-ahead log: the durability point of the sled store.
//!
//! Every write to the store (an insert or a removal in one of its trees) is applied to sled in
//! memory and framed into this log under one lock, so the log holds the writes in the order sled
//! saw them. A durable append then costs one `write` and one `fdatasync` of the current log
//! segment (group commit shares it among concurrent appenders), where sled's own flush plus a
//! sync of its files would cost two device round trips and rewrite pages.
//!
//! sled is the index and materialised view behind the log. When a segment fills, a background
//! checkpoint starts a new segment, makes sled's state durable (its flush and an `fdatasync` of
//! its files) and deletes the old segment. On open, every record newer than what sled holds is
//! replayed into sled before anything else reads it, and the log starts afresh.
//!
//! Each write also records its log sequence number (LSN) in sled's default tree, so after a crash
//! recovery knows how far sled's own files got: records at or below that LSN are already in sled
//! (sled recovers a prefix of its writes), and replaying only the newer ones leaves the store
//! exactly as it was after the last record that reached the disk, never a mix of older and newer
//! values.
//!
//! On disk: `wal/<number>.log`, each a 16-byte header (magic and format) followed by frames of
//! `payload length (u32 LE) | crc32 (u32 LE) of length, LSN and payload | LSN (u64 LE) | payload`.
//! Segments are preallocated, so a sync does not also have to commit a new file size; a frame
//! whose length is zero, whose crc fails or whose LSN does not follow the previous one ends the
//! segment (a torn or never-written tail).

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, Mutex, Weak};

/// A new segment is started once the current one holds this many bytes.
pub const DEFAULT_SEGMENT_BYTES: u64 = 16 << 20;
/// Logged records waiting in memory are written (not synced) once they reach this size, so a
/// long stretch of buffered appends does not grow memory without bound.
const WRITE_BEHIND_BYTES: usize = 1 << 20;
const MAGIC: &[u8; 8] = b"SGJWAL\0\0";
const FORMAT: u64 = 1;
const HEADER: u64 = 16;
const FRAME: usize = 16;
/// Key in sled's default tree holding the LSN of the last write applied to sled.
pub(crate) const LSN_KEY: &[u8] = b"sandgraph.wal.lsn";

const INSERT: u8 = 1;
const REMOVE: u8 = 2;

/// Told the path and synced length of a log segment after every `fdatasync` of it (and after a
/// new segment is created): everything in the segment up to that length is on stable storage.
/// The power-loss tests use it to know which bytes a power cut may take.
pub type SyncHook = Arc<dyn Fn(&Path, u64) + Send + Sync>;

/// How the write-ahead log is laid out and observed.
#[derive(Clone)]
pub struct WalOptions {
    /// Bytes per segment before the next checkpoint starts a new one.
    pub segment_bytes: u64,
    pub on_sync: Option<SyncHook>,
}

impl Default for WalOptions {
    fn default() -> Self {
        WalOptions {
            segment_bytes: DEFAULT_SEGMENT_BYTES,
            on_sync: None,
        }
    }
}

/// One write to the store.
pub(crate) enum Op<'a> {
    Insert {
        tree: &'a str,
        key: &'a [u8],
        value: &'a [u8],
    },
    Remove {
        tree: &'a str,
        key: &'a [u8],
    },
}

/// Makes sled's state durable: its flush plus a sync of its files.
pub(crate) type Checkpoint = Box<dyn Fn() -> Result<(), String> + Send + Sync>;

pub(crate) struct Wal {
    inner: Arc<Inner>,
}

struct Inner {
    dir: PathBuf,
    options: WalOptions,
    logged: Mutex<Logged>,
    segment: Mutex<Segment>,
    checkpoint: Checkpoint,
    /// Wakes the checkpoint thread, which holds the log weakly: it ends once the log is dropped.
    wake: Mutex<Sender<()>>,
}

/// Records framed and not yet written, and the LSN counter.
struct Logged {
    bytes: Vec<u8>,
    next_lsn: u64,
}

/// The segment being written.
struct Segment {
    file: File,
    path: PathBuf,
    number: u64,
    /// Bytes written (header included).
    end: u64,
    /// Bytes on stable storage.
    synced: u64,
    /// A write or sync failed: later syncs cannot promise anything, so they all fail.
    failed: Option<String>,
    /// A checkpoint has been asked for and has not swapped segments yet.
    checkpoint_asked: bool,
}

impl Wal {
    /// Opens the log in `dir` (creating it), replays into `db` every record newer than what
    /// `db` holds, makes `db` durable with `checkpoint`, and starts a fresh segment.
    pub(crate) fn open(
        dir: &Path,
        db: &sled::Db,
        checkpoint: Checkpoint,
        options: WalOptions,
    ) -> Result<Wal, String> {
        let fresh = !dir.exists();
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create the journal's log at {}: {e}", dir.display()))?;
        if fresh && let Some(parent) = dir.parent() {
            sync_dir(parent)?;
        }
        let segments = list_segments(dir)?;
        let applied = lsn_in(db)?;
        // The last record seen so far, and the segment that ended in a damaged frame.
        let mut last: Option<u64> = None;
        let mut torn_in: Option<PathBuf> = None;
        for (_, path) in &segments {
            let bytes = std::fs::read(path)
                .map_err(|e| format!("cannot read journal log {}: {e}", path.display()))?;
            let ended_clean = read_frames(&bytes, |lsn, payload| {
                if let Some(torn) = &torn_in {
                    return Err(format!(
                        "journal log {} ends in a damaged record, yet the later segment {} holds records: the log is corrupt, not cut short",
                        torn.display(),
                        path.display()
                    ));
                }
                let expected = last.map_or(applied.min(lsn), |l| l + 1);
                if lsn > expected.max(applied + 1) || lsn < expected {
                    return Err(format!(
                        "journal log {}: record {lsn} follows record {} (the store holds up to {applied}): records are missing",
                        path.display(),
                        last.map_or("none".to_string(), |l| l.to_string()),
                    ));
                }
                if lsn > applied {
                    apply(db, payload, lsn)
                        .map_err(|e| format!("{}: record {lsn}: {e}", path.display()))?;
                }
                last = Some(lsn);
                Ok(())
            })?;
            if !ended_clean {
                torn_in = Some(path.clone());
            }
        }
        let last = last.unwrap_or(0).max(applied);
        checkpoint()?;
        let number = segments.last().map_or(1, |(n, _)| n + 1);
        let segment = Segment::create(dir, number, &options)?;
        for (_, path) in &segments {
            std::fs::remove_file(path)
                .map_err(|e| format!("cannot remove replayed log {}: {e}", path.display()))?;
        }
        sync_dir(dir)?;
        let (tx, rx) = std::sync::mpsc::channel();
        let inner = Arc::new(Inner {
            dir: dir.to_path_buf(),
            options,
            logged: Mutex::new(Logged {
                bytes: Vec::new(),
                next_lsn: last + 1,
            }),
            segment: Mutex::new(segment),
            checkpoint,
            wake: Mutex::new(tx),
        });
        spawn_checkpointer(Arc::downgrade(&inner), rx);
        Ok(Wal { inner })
    }

    /// Applies a write with `apply` and logs it, under one lock so the log's order is sled's.
    /// `apply` gets the write's LSN and says whether it wrote anything (a compare-and-swap may
    /// not); only writes that happened are logged.
    pub(crate) fn write<E>(
        &self,
        op: Op<'_>,
        apply: impl FnOnce(u64) -> Result<bool, E>,
    ) -> Result<bool, E> {
        let behind = {
            let mut logged = lock(&self.inner.logged);
            let lsn = logged.next_lsn;
            if !apply(lsn)? {
                return Ok(false);
            }
            logged.next_lsn += 1;
            frame(&mut logged.bytes, lsn, &op);
            logged.bytes.len() >= WRITE_BEHIND_BYTES
        };
        if behind && let Ok(mut seg) = self.inner.segment.try_lock() {
            // Best effort: a failure here is kept and reported by the next sync. (A segment held
            // by a flush is about to take these records anyway.)
            let _ = self.inner.write_out(&mut seg);
        }
        Ok(true)
    }

    /// Writes every logged record and syncs the segment: the group commit's durability point.
    pub(crate) fn sync(&self) -> Result<(), String> {
        let inner = &self.inner;
        let mut seg = lock(&inner.segment);
        inner.write_out(&mut seg)?;
        inner.sync_segment(&mut seg)?;
        if seg.end >= inner.options.segment_bytes && !seg.checkpoint_asked {
            seg.checkpoint_asked = true;
            let _ = lock(&inner.wake).send(());
        }
        Ok(())
    }
}

impl Inner {
    /// Moves the logged records into the segment (written, not synced).
    fn write_out(&self, seg: &mut Segment) -> Result<(), String> {
        if let Some(why) = &seg.failed {
            return Err(why.clone());
        }
        let bytes = std::mem::take(&mut lock(&self.logged).bytes);
        if bytes.is_empty() {
            return Ok(());
        }
        if let Err(e) = seg.file.write_all_at(&bytes, seg.end) {
            return Err(seg.fail(format!("write: {e}")));
        }
        seg.end += bytes.len() as u64;
        Ok(())
    }

    fn sync_segment(&self, seg: &mut Segment) -> Result<(), String> {
        if seg.synced == seg.end {
            return Ok(());
        }
        if let Err(e) = seg.file.sync_data() {
            return Err(seg.fail(format!("fdatasync: {e}")));
        }
        seg.synced = seg.end;
        if let Some(hook) = &self.options.on_sync {
            hook(&seg.path, seg.synced);
        }
        Ok(())
    }

    /// Starts a new segment, makes sled durable, and deletes the segments sled now covers.
    fn run_checkpoint(&self) -> Result<(), String> {
        let number = lock(&self.segment).number + 1;
        let fresh = Segment::create(&self.dir, number, &self.options)?;
        sync_dir(&self.dir)?;
        let old = {
            let mut seg = lock(&self.segment);
            // Records written behind and not synced yet must be durable before waiters whose
            // flush goes to the new segment are told so.
            self.sync_segment(&mut seg)?;
            let old = std::mem::replace(&mut *seg, fresh);
            old.path
        };
        // Every record in the old segment was applied to sled before the swap.
        (self.checkpoint)()?;
        std::fs::remove_file(&old)
            .map_err(|e| format!("cannot remove checkpointed log {}: {e}", old.display()))?;
        sync_dir(&self.dir)
    }
}

impl Segment {
    fn create(dir: &Path, number: u64, options: &WalOptions) -> Result<Segment, String> {
        let path = dir.join(format!("{number:016}.log"));
        let fail = |what: &str, e: std::io::Error| {
            format!("cannot {what} journal log {}: {e}", path.display())
        };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .map_err(|e| fail("create", e))?;
        preallocate(&file, options.segment_bytes.max(HEADER)).map_err(|e| fail("allocate", e))?;
        let mut header = [0u8; HEADER as usize];
        header[..8].copy_from_slice(MAGIC);
        header[8..].copy_from_slice(&FORMAT.to_le_bytes());
        file.write_all_at(&header, 0)
            .map_err(|e| fail("write", e))?;
        file.sync_all().map_err(|e| fail("sync", e))?;
        if let Some(hook) = &options.on_sync {
            hook(&path, HEADER);
        }
        Ok(Segment {
            file,
            path,
            number,
            end: HEADER,
            synced: HEADER,
            failed: None,
            checkpoint_asked: false,
        })
    }

    fn fail(&mut self, what: String) -> String {
        let why = format!(
            "journal log {}: {what}; appends can no longer be made durable, restart the host",
            self.path.display()
        );
        self.failed = Some(why.clone());
        why
    }
}

fn spawn_checkpointer(inner: Weak<Inner>, rx: Receiver<()>) {
    let spawned = std::thread::Builder::new()
        .name("journal-checkpoint".into())
        .spawn(move || {
            while rx.recv().is_ok() {
                let Some(inner) = inner.upgrade() else { return };
                if let Err(e) = inner.run_checkpoint() {
                    tracing::warn!(error = %e, "journal checkpoint failed; the log keeps growing until one succeeds");
                }
                lock(&inner.segment).checkpoint_asked = false;
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "cannot start the journal's checkpoint thread; its log is checkpointed on the next open");
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn frame(out: &mut Vec<u8>, lsn: u64, op: &Op<'_>) {
    let start = out.len();
    out.extend_from_slice(&[0u8; FRAME]);
    match op {
        Op::Insert { tree, key, value } => {
            out.push(INSERT);
            put_bytes(out, tree.as_bytes());
            put_bytes(out, key);
            put_bytes(out, value);
        }
        Op::Remove { tree, key } => {
            out.push(REMOVE);
            put_bytes(out, tree.as_bytes());
            put_bytes(out, key);
        }
    }
    let len = (out.len() - start - FRAME) as u32;
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    out[start + 8..start + 16].copy_from_slice(&lsn.to_le_bytes());
    let crc = frame_crc(&out[start..start + 4], &out[start + 8..]);
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

fn frame_crc(len: &[u8], lsn_and_payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(len);
    h.update(lsn_and_payload);
    h.finalize()
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u32).to_le_bytes());
    out.extend_from_slice(b);
}

/// Calls `visit` with each intact record of a segment, in order; returns whether the segment
/// ended cleanly (zeros or its end) rather than at a damaged frame.
fn read_frames(
    bytes: &[u8],
    mut visit: impl FnMut(u64, &[u8]) -> Result<(), String>,
) -> Result<bool, String> {
    if bytes.len() < HEADER as usize || &bytes[..8] != MAGIC {
        // Created but its header never reached the disk: nothing was ever synced into it.
        return Ok(bytes.iter().all(|b| *b == 0));
    }
    let format = u64::from_le_bytes(bytes[8..16].try_into().expect("8 bytes"));
    if format != FORMAT {
        return Err(format!(
            "journal log format {format} is not one this sandgraph reads ({FORMAT})"
        ));
    }
    let mut at = HEADER as usize;
    let mut previous: Option<u64> = None;
    while at + FRAME <= bytes.len() {
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes")) as usize;
        if len == 0 {
            return Ok(bytes[at..].iter().all(|b| *b == 0));
        }
        let Some(end) = (at + FRAME).checked_add(len).filter(|e| *e <= bytes.len()) else {
            return Ok(false);
        };
        let crc = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().expect("4 bytes"));
        if crc != frame_crc(&bytes[at..at + 4], &bytes[at + 8..end]) {
            return Ok(false);
        }
        let lsn = u64::from_le_bytes(bytes[at + 8..at + 16].try_into().expect("8 bytes"));
        if previous.is_some_and(|p| lsn != p + 1) {
            return Ok(false);
        }
        previous = Some(lsn);
        visit(lsn, &bytes[at + FRAME..end])?;
        at = end;
    }
    Ok(bytes[at..].iter().all(|b| *b == 0))
}

/// Applies one logged payload to sled, with its LSN.
fn apply(db: &sled::Db, payload: &[u8], lsn: u64) -> Result<(), String> {
    let mut r = Reader(payload);
    let tag = r.byte()?;
    let tree = std::str::from_utf8(r.bytes()?).map_err(|_| "tree name is not UTF-8".to_string())?;
    let key = r.bytes()?;
    let tree = db.open_tree(tree).map_err(|e| e.to_string())?;
    match tag {
        INSERT => {
            tree.insert(key, r.bytes()?).map_err(|e| e.to_string())?;
        }
        REMOVE => {
            tree.remove(key).map_err(|e| e.to_string())?;
        }
        other => return Err(format!("unknown record kind {other}")),
    }
    db.insert(LSN_KEY, &lsn.to_be_bytes())
        .map_err(|e| e.to_string())?;
    Ok(())
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn byte(&mut self) -> Result<u8, String> {
        let (&b, rest) = self.0.split_first().ok_or("record cut short")?;
        self.0 = rest;
        Ok(b)
    }

    fn bytes(&mut self) -> Result<&'a [u8], String> {
        if self.0.len() < 4 {
            return Err("record cut short".into());
        }
        let (len, rest) = self.0.split_at(4);
        let len = u32::from_le_bytes(len.try_into().expect("4 bytes")) as usize;
        if rest.len() < len {
            return Err("record cut short".into());
        }
        let (b, rest) = rest.split_at(len);
        self.0 = rest;
        Ok(b)
    }
}

/// The LSN of the last write sled holds (0: none logged yet).
pub(crate) fn lsn_in(db: &sled::Db) -> Result<u64, String> {
    Ok(match db.get(LSN_KEY).map_err(|e| e.to_string())? {
        Some(v) => u64::from_be_bytes(v.as_ref().try_into().unwrap_or([0; 8])),
        None => 0,
    })
}

fn list_segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>, String> {
    let entries = std::fs::read_dir(dir)
        .map_err(|e| format!("cannot list the journal's log at {}: {e}", dir.display()))?;
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| format!("cannot list {}: {e}", dir.display()))?;
        let name = entry.file_name();
        let Some(number) = name
            .to_str()
            .and_then(|n| n.strip_suffix(".log"))
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        out.push((number, entry.path()));
    }
    out.sort();
    Ok(out)
}

fn sync_dir(dir: &Path) -> Result<(), String> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| format!("fsync of {}: {e}", dir.display()))
}

/// Reserves `len` bytes for the file, so writes into it do not change its size.
fn preallocate(file: &File, len: u64) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let len = libc::off_t::try_from(len).unwrap_or(libc::off_t::MAX);
    // SAFETY: the descriptor is open for the call's duration; fallocate reads no memory.
    let rc = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, len) };
    if rc == 0 {
        return Ok(());
    }
    let e = std::io::Error::last_os_error();
    match e.raw_os_error() {
        // The filesystem cannot reserve space: a sparse file of that size still reads as zeros.
        Some(libc::EOPNOTSUPP) | Some(libc::ENOSYS) => file.set_len(len as u64),
        _ => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segment_with(records: &[(u64, Op<'_>)]) -> Vec<u8> {
        let mut bytes = MAGIC.to_vec();
        bytes.extend_from_slice(&FORMAT.to_le_bytes());
        for (lsn, op) in records {
            frame(&mut bytes, *lsn, op);
        }
        bytes
    }

    fn lsns(bytes: &[u8]) -> (Vec<u64>, bool) {
        let mut seen = Vec::new();
        let clean = read_frames(bytes, |lsn, _| {
            seen.push(lsn);
            Ok(())
        })
        .unwrap();
        (seen, clean)
    }

    const A: Op<'static> = Op::Insert {
        tree: "events",
        key: b"k",
        value: b"value",
    };

    #[test]
    fn frames_read_back_in_order_and_a_zero_tail_ends_cleanly() {
        let mut bytes = segment_with(&[
            (5, A),
            (
                6,
                Op::Remove {
                    tree: "runs",
                    key: b"r",
                },
            ),
        ]);
        bytes.extend_from_slice(&[0; 100]);
        assert_eq!(lsns(&bytes), (vec![5, 6], true));
    }

    #[test]
    fn a_damaged_or_cut_frame_ends_the_segment_as_torn() {
        let whole = segment_with(&[(1, A), (2, A), (3, A)]);
        let one = segment_with(&[(1, A)]).len();
        // A flipped payload byte in the second frame.
        let mut flipped = whole.clone();
        flipped[one + FRAME + 3] ^= 1;
        assert_eq!(lsns(&flipped), (vec![1], false));
        // The third frame cut short.
        assert_eq!(lsns(&whole[..whole.len() - 2]), (vec![1, 2], false));
        // An LSN that does not follow: a frame from elsewhere.
        let mut jumped = segment_with(&[(1, A)]);
        frame(&mut jumped, 9, &A);
        assert_eq!(lsns(&jumped), (vec![1], false));
        // Garbage after zeros is not a clean end either.
        let mut garbage = segment_with(&[(1, A)]);
        garbage.extend_from_slice(&[0; 16]);
        garbage.push(7);
        assert_eq!(lsns(&garbage), (vec![1], false));
    }

    #[test]
    fn replayed_records_land_in_their_trees_with_their_lsn() {
        let db = sled::Config::new().temporary(true).open().unwrap();
        let mut bytes = Vec::new();
        frame(&mut bytes, 7, &A);
        apply(&db, &bytes[FRAME..], 7).unwrap();
        assert_eq!(
            db.open_tree("events").unwrap().get(b"k").unwrap().unwrap(),
            b"value".as_slice()
        );
        assert_eq!(lsn_in(&db).unwrap(), 7);
        let mut bytes = Vec::new();
        frame(
            &mut bytes,
            8,
            &Op::Remove {
                tree: "events",
                key: b"k",
            },
        );
        apply(&db, &bytes[FRAME..], 8).unwrap();
        assert!(db.open_tree("events").unwrap().get(b"k").unwrap().is_none());
        assert!(apply(&db, &[9], 9).unwrap_err().contains("cut short"));
    }
}
