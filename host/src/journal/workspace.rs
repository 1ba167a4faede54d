//! Snapshots of the workspace a step saw: a manifest of every entry (relative path, kind, size,
//! sha256, modification time) with file bytes in the payload store, deduplicated by content.
//! Journaled before and after each attempt of a step granted a workspace, so replay can give the
//! step the same files offline and compare the tree it leaves; bounded, and never silent when a
//! workspace is too large or holds what cannot be recorded.

use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{Journal, JournalError, PayloadRef, Snapshot};

/// How much of a workspace is snapshotted; past either bound the snapshot is skipped with the
/// reason, and replay of that step says it cannot be replayed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotLimits {
    /// Bytes of all files together.
    pub max_bytes: u64,
    /// Files, directories and links together.
    pub max_entries: u64,
}

impl Default for SnapshotLimits {
    fn default() -> Self {
        SnapshotLimits {
            max_bytes: 64 * 1024 * 1024,
            max_entries: 10_000,
        }
    }
}

/// First byte of an encoded [`Manifest`].
const MANIFEST_VERSION: u8 = 1;

/// Every entry of a workspace, sorted by path (parents before their children).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub entries: Vec<ManifestEntry>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestEntry {
    /// Relative to the workspace root, `/`-separated, never empty.
    pub path: String,
    pub kind: EntryKind,
    /// Modification time (seconds, nanoseconds since the Unix epoch), restored on replay.
    pub modified: Option<(u64, u32)>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum EntryKind {
    Dir,
    File {
        size: u64,
        sha256: [u8; 32],
        content: PayloadRef,
    },
    Symlink {
        target: String,
    },
}

/// What a tree holds at one path, for comparing trees (times aside: a file a step writes gets
/// the host's clock).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Shape {
    Dir,
    File { size: u64, sha256: [u8; 32] },
    Symlink { target: String },
}

impl std::fmt::Display for Shape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Shape::Dir => f.write_str("a directory"),
            Shape::File { size, sha256 } => write!(
                f,
                "a file of {size} bytes (sha256 {})",
                &hex::encode(sha256)[..16]
            ),
            Shape::Symlink { target } => write!(f, "a symbolic link to '{target}'"),
        }
    }
}

/// A tree as (path, shape), sorted by path.
pub type Tree = Vec<(String, Shape)>;

impl Manifest {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![MANIFEST_VERSION];
        out.extend(postcard::to_stdvec(self).expect("postcard encodes manifests"));
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Manifest, String> {
        match bytes.split_first() {
            Some((&MANIFEST_VERSION, body)) => match postcard::take_from_bytes(body) {
                Ok((m, [])) => Ok(m),
                Ok((_, rest)) => Err(format!("{} trailing bytes after the manifest", rest.len())),
                Err(e) => Err(format!("undecodable manifest: {e}")),
            },
            Some((v, _)) => Err(format!(
                "manifest format {v}, this build reads format {MANIFEST_VERSION}"
            )),
            None => Err("empty manifest".into()),
        }
    }

    /// The manifest stored at `r`.
    pub fn load(journal: &Journal, r: &PayloadRef) -> Result<Manifest, JournalError> {
        Manifest::decode(&journal.payload(r)?).map_err(JournalError::CorruptSnapshot)
    }

    pub fn tree(&self) -> Tree {
        self.entries
            .iter()
            .map(|e| {
                let shape = match &e.kind {
                    EntryKind::Dir => Shape::Dir,
                    EntryKind::File { size, sha256, .. } => Shape::File {
                        size: *size,
                        sha256: *sha256,
                    },
                    EntryKind::Symlink { target } => Shape::Symlink {
                        target: target.clone(),
                    },
                };
                (e.path.clone(), shape)
            })
            .collect()
    }

    /// File contents this manifest refers to in the blob store (for garbage collection).
    pub fn blobs(&self) -> impl Iterator<Item = [u8; 32]> + '_ {
        self.entries.iter().filter_map(|e| match &e.kind {
            EntryKind::File {
                content: PayloadRef::Blob(d),
                ..
            } => Some(*d),
            _ => None,
        })
    }
}

/// One entry as read from disk.
struct Found {
    path: String,
    modified: Option<(u64, u32)>,
    what: Content,
}

enum Content {
    Dir,
    File(Vec<u8>),
    Symlink(String),
}

/// Snapshots `dir` into `journal`'s payload store. A workspace past `limits`, or holding what
/// cannot be recorded (a special file, a name that is not UTF-8, an unreadable entry), is
/// `Snapshot::Skipped` with the reason; only a failing journal is an error. Blocking.
pub fn capture(
    journal: &Journal,
    dir: &Path,
    limits: SnapshotLimits,
) -> Result<Snapshot, JournalError> {
    let found = match walk(dir, limits) {
        Ok(found) => found,
        Err(reason) => return Ok(Snapshot::Skipped { reason }),
    };
    let mut entries = Vec::with_capacity(found.len());
    let mut bytes = 0u64;
    for f in found {
        let kind = match f.what {
            Content::Dir => EntryKind::Dir,
            Content::Symlink(target) => EntryKind::Symlink { target },
            Content::File(data) => {
                bytes += data.len() as u64;
                EntryKind::File {
                    size: data.len() as u64,
                    sha256: Sha256::digest(&data).into(),
                    content: journal.put_payload(&data)?,
                }
            }
        };
        entries.push(ManifestEntry {
            path: f.path,
            kind,
            modified: f.modified,
        });
    }
    let count = entries.len() as u64;
    let manifest = journal.put_payload(&Manifest { entries }.encode())?;
    Ok(Snapshot::Taken {
        manifest,
        entries: count,
        bytes,
    })
}

/// The shape of the tree under `dir` (what replay compares with the journaled one). Blocking.
pub fn scan(dir: &Path, limits: SnapshotLimits) -> Result<Tree, String> {
    Ok(walk(dir, limits)?
        .into_iter()
        .map(|f| {
            let shape = match f.what {
                Content::Dir => Shape::Dir,
                Content::Symlink(target) => Shape::Symlink { target },
                Content::File(data) => Shape::File {
                    size: data.len() as u64,
                    sha256: Sha256::digest(&data).into(),
                },
            };
            (f.path, shape)
        })
        .collect())
}

/// The first path where two trees differ: (path, what `recorded` holds there, what `replayed`
/// holds there), `None` meaning absent.
pub fn first_difference(
    recorded: &Tree,
    replayed: &Tree,
) -> Option<(String, Option<Shape>, Option<Shape>)> {
    let (mut a, mut b) = (recorded.iter().peekable(), replayed.iter().peekable());
    loop {
        match (a.peek(), b.peek()) {
            (None, None) => return None,
            (Some((p, s)), None) => return Some((p.clone(), Some(s.clone()), None)),
            (None, Some((p, s))) => return Some((p.clone(), None, Some(s.clone()))),
            (Some((pa, sa)), Some((pb, sb))) => match pa.cmp(pb) {
                std::cmp::Ordering::Less => return Some((pa.clone(), Some(sa.clone()), None)),
                std::cmp::Ordering::Greater => {
                    return Some((pb.clone(), None, Some(sb.clone())));
                }
                std::cmp::Ordering::Equal if sa != sb => {
                    return Some((pa.clone(), Some(sa.clone()), Some(sb.clone())));
                }
                std::cmp::Ordering::Equal => {
                    a.next();
                    b.next();
                }
            },
        }
    }
}

/// Why a snapshot could not be laid out again.
#[derive(Debug, thiserror::Error)]
pub enum MaterializeError {
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error("the snapshot's entry '{path}' is not a plain relative path")]
    BadPath { path: String },
    #[error("the snapshot's file '{path}' does not match its recorded sha256")]
    Tampered { path: String },
    #[error("cannot recreate '{path}' in {dir}: {source}")]
    Io {
        path: String,
        dir: PathBuf,
        source: std::io::Error,
    },
}

/// Lays `manifest` out under `dir` (an empty directory): every directory, file (checked against
/// its sha256) and link, then the recorded modification times. Blocking.
pub fn materialize(
    journal: &Journal,
    manifest: &Manifest,
    dir: &Path,
) -> Result<(), MaterializeError> {
    let io = |path: &str| {
        let (path, dir) = (path.to_owned(), dir.to_path_buf());
        move |source| MaterializeError::Io { path, dir, source }
    };
    for e in &manifest.entries {
        let target = dir.join(checked(&e.path)?);
        match &e.kind {
            EntryKind::Dir => std::fs::create_dir(&target).map_err(io(&e.path))?,
            EntryKind::File {
                sha256, content, ..
            } => {
                let data = journal.payload(content)?;
                if <[u8; 32]>::from(Sha256::digest(&data)) != *sha256 {
                    return Err(MaterializeError::Tampered {
                        path: e.path.clone(),
                    });
                }
                std::fs::write(&target, data).map_err(io(&e.path))?;
            }
            EntryKind::Symlink { target: to } => {
                std::os::unix::fs::symlink(to, &target).map_err(io(&e.path))?
            }
        }
    }
    // Deepest first, so setting a directory's time comes after everything created inside it.
    for e in manifest.entries.iter().rev() {
        let (Some((secs, nanos)), false) =
            (e.modified, matches!(e.kind, EntryKind::Symlink { .. }))
        else {
            continue;
        };
        let at = UNIX_EPOCH + Duration::new(secs, nanos);
        std::fs::File::open(dir.join(&e.path))
            .and_then(|f| f.set_times(std::fs::FileTimes::new().set_modified(at)))
            .map_err(io(&e.path))?;
    }
    Ok(())
}

/// `path` as a relative path of normal components only.
fn checked(path: &str) -> Result<&Path, MaterializeError> {
    let p = Path::new(path);
    let plain = !path.is_empty()
        && p.components()
            .all(|c| matches!(c, std::path::Component::Normal(_)));
    if plain {
        Ok(p)
    } else {
        Err(MaterializeError::BadPath {
            path: path.to_owned(),
        })
    }
}

/// Every entry under `root` with file contents, sorted by path, or why the tree cannot be
/// snapshotted. Links are recorded, never followed.
fn walk(root: &Path, limits: SnapshotLimits) -> Result<Vec<Found>, String> {
    let mut found: Vec<Found> = Vec::new();
    let (mut entries, mut bytes) = (0u64, 0u64);
    let mut over = false;
    // Counting stops here once over a limit, so a huge tree is not walked to its end.
    let count_cap = limits.max_entries.saturating_mul(4).saturating_add(1000);
    let mut complete = true;
    let mut pending = vec![(root.to_path_buf(), String::new())];
    'walk: while let Some((dir, rel)) = pending.pop() {
        let listing = std::fs::read_dir(&dir)
            .map_err(|e| format!("not snapshotted: cannot list '{}': {e}", shown(&rel)))?;
        let mut names = Vec::new();
        for entry in listing {
            let entry = entry
                .map_err(|e| format!("not snapshotted: cannot list '{}': {e}", shown(&rel)))?;
            names.push(entry.file_name());
        }
        names.sort();
        for name in names {
            let Some(name_str) = name.to_str() else {
                return Err(format!(
                    "not snapshotted: '{}' holds a name that is not UTF-8 ({})",
                    shown(&rel),
                    name.to_string_lossy()
                ));
            };
            let path = if rel.is_empty() {
                name_str.to_owned()
            } else {
                format!("{rel}/{name_str}")
            };
            let full = dir.join(&name);
            let meta = std::fs::symlink_metadata(&full)
                .map_err(|e| format!("not snapshotted: cannot read '{path}': {e}"))?;
            entries += 1;
            let ft = meta.file_type();
            if ft.is_file() {
                bytes = bytes.saturating_add(meta.len());
            }
            if entries > limits.max_entries || bytes > limits.max_bytes {
                over = true;
                found.clear();
                if entries >= count_cap {
                    complete = false;
                    break 'walk;
                }
            }
            let modified = meta
                .modified()
                .ok()
                .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                .map(|d| (d.as_secs(), d.subsec_nanos()));
            let what = if ft.is_dir() {
                pending.push((full, path.clone()));
                Content::Dir
            } else if ft.is_file() {
                if over {
                    Content::File(Vec::new())
                } else {
                    let data = std::fs::read(&full)
                        .map_err(|e| format!("not snapshotted: cannot read '{path}': {e}"))?;
                    // The file may have grown since its metadata was read.
                    bytes = bytes
                        .saturating_add(data.len() as u64)
                        .saturating_sub(meta.len());
                    Content::File(data)
                }
            } else if ft.is_symlink() {
                let to = std::fs::read_link(&full)
                    .map_err(|e| format!("not snapshotted: cannot read link '{path}': {e}"))?;
                let Some(to) = to.to_str() else {
                    return Err(format!(
                        "not snapshotted: link '{path}' points to a name that is not UTF-8"
                    ));
                };
                Content::Symlink(to.to_owned())
            } else {
                return Err(format!(
                    "not snapshotted: '{path}' is a named pipe, socket or device, which a snapshot cannot hold"
                ));
            };
            if !over {
                found.push(Found {
                    path,
                    modified,
                    what,
                });
            }
        }
    }
    if over || bytes > limits.max_bytes {
        let at_least = if complete { "" } else { "at least " };
        return Err(format!(
            "not snapshotted ({at_least}{bytes} bytes, limit {}; {at_least}{entries} files and directories, limit {})",
            limits.max_bytes, limits.max_entries
        ));
    }
    // Depth-first by directory, so sort once: parents sort before their children.
    found.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(found)
}

fn shown(rel: &str) -> &str {
    if rel.is_empty() { "." } else { rel }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn journal() -> Journal {
        Journal::temporary().expect("journal")
    }

    fn taken(s: Snapshot) -> PayloadRef {
        match s {
            Snapshot::Taken { manifest, .. } => manifest,
            Snapshot::Skipped { reason } => panic!("skipped: {reason}"),
        }
    }

    #[test]
    fn a_tree_with_dirs_files_and_links_round_trips_with_its_times() {
        let j = journal();
        let src = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(src.path().join("a/b")).unwrap();
        std::fs::write(src.path().join("a/b/big.bin"), vec![9u8; 5000]).unwrap();
        std::fs::write(src.path().join("a-c.txt"), "small").unwrap();
        std::fs::write(src.path().join("empty"), "").unwrap();
        std::os::unix::fs::symlink("a/b/big.bin", src.path().join("link")).unwrap();
        let old = UNIX_EPOCH + Duration::new(1_600_000_000, 123_456_789);
        std::fs::File::open(src.path().join("a-c.txt"))
            .unwrap()
            .set_times(std::fs::FileTimes::new().set_modified(old))
            .unwrap();
        let manifest = Manifest::load(
            &j,
            &taken(capture(&j, src.path(), SnapshotLimits::default()).unwrap()),
        )
        .unwrap();
        let paths: Vec<&str> = manifest.entries.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            ["a", "a-c.txt", "a/b", "a/b/big.bin", "empty", "link"]
        );

        let dst = tempfile::tempdir().unwrap();
        materialize(&j, &manifest, dst.path()).unwrap();
        assert_eq!(
            scan(dst.path(), SnapshotLimits::default()).unwrap(),
            manifest.tree()
        );
        assert_eq!(
            std::fs::read_link(dst.path().join("link")).unwrap(),
            Path::new("a/b/big.bin")
        );
        let modified = std::fs::metadata(dst.path().join("a-c.txt"))
            .unwrap()
            .modified()
            .unwrap();
        assert_eq!(modified, old);
        let a = std::fs::metadata(src.path().join("a"))
            .unwrap()
            .modified()
            .unwrap();
        let b = std::fs::metadata(dst.path().join("a"))
            .unwrap()
            .modified()
            .unwrap();
        assert_eq!(a, b, "a directory's time is restored after its contents");
    }

    #[test]
    fn a_manifest_path_that_leaves_the_directory_is_refused() {
        let j = journal();
        let dst = tempfile::tempdir().unwrap();
        for bad in ["../escape", "/etc/passwd", "a/../../x", "", "./a"] {
            let m = Manifest {
                entries: vec![ManifestEntry {
                    path: bad.into(),
                    kind: EntryKind::Dir,
                    modified: None,
                }],
            };
            match materialize(&j, &m, dst.path()) {
                Err(MaterializeError::BadPath { path }) => assert_eq!(path, bad),
                other => panic!("{bad}: expected BadPath, got {other:?}"),
            }
        }
        assert_eq!(std::fs::read_dir(dst.path()).unwrap().count(), 0);
    }

    #[test]
    fn what_a_manifest_cannot_hold_is_skipped_with_the_reason() {
        let j = journal();
        let dir = tempfile::tempdir().unwrap();
        let fifo =
            std::ffi::CString::new(dir.path().join("pipe").as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: mkfifo(3) with a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
        assert_eq!(
            capture(&j, dir.path(), SnapshotLimits::default()).unwrap(),
            Snapshot::Skipped {
                reason: "not snapshotted: 'pipe' is a named pipe, socket or device, which a snapshot cannot hold".into()
            }
        );
        let missing = dir.path().join("nope");
        match capture(&j, &missing, SnapshotLimits::default()).unwrap() {
            Snapshot::Skipped { reason } => {
                assert!(
                    reason.starts_with("not snapshotted: cannot list '.': "),
                    "{reason}"
                )
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_huge_tree_is_counted_only_so_far() {
        let j = journal();
        let dir = tempfile::tempdir().unwrap();
        for i in 0..1100 {
            std::fs::write(dir.path().join(format!("f{i}")), "").unwrap();
        }
        let limits = SnapshotLimits {
            max_bytes: 10,
            max_entries: 2,
        };
        assert_eq!(
            capture(&j, dir.path(), limits).unwrap(),
            Snapshot::Skipped {
                reason: "not snapshotted (at least 0 bytes, limit 10; at least 1008 files and directories, limit 2)".into()
            }
        );
    }

    #[test]
    fn first_difference_names_the_first_path_in_order() {
        let file = |n: u8| Shape::File {
            size: 1,
            sha256: [n; 32],
        };
        let a: Tree = vec![("a".into(), Shape::Dir), ("a/x".into(), file(1))];
        assert_eq!(first_difference(&a, &a.clone()), None);
        let changed: Tree = vec![("a".into(), Shape::Dir), ("a/x".into(), file(2))];
        assert_eq!(
            first_difference(&a, &changed),
            Some(("a/x".into(), Some(file(1)), Some(file(2))))
        );
        let extra: Tree = vec![
            ("a".into(), Shape::Dir),
            ("a/w".into(), file(1)),
            ("a/x".into(), file(1)),
        ];
        assert_eq!(
            first_difference(&a, &extra),
            Some(("a/w".into(), None, Some(file(1))))
        );
        assert_eq!(
            first_difference(&a, &a[..1].to_vec()),
            Some(("a/x".into(), Some(file(1)), None))
        );
    }
}
