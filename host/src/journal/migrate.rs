//! `sandgraph journal migrate`: copies one journal into another (sled into PostgreSQL, the way
//! from one host to several), verbatim: events, run summaries, payload blobs and the API's keyed
//! records. Idempotent: what the target already holds identically is skipped, so an interrupted
//! migration is simply run again; a target holding something different under the same key is
//! refused, never overwritten. Verified by counting and hashing both sides afterwards.

use sha2::{Digest, Sha256};

use super::{Journal, JournalError, RunId};

/// The API's keyed-record spaces (graph versions, tools, component bytes, idempotency keys).
pub const API_SPACES: &[&str] = &[
    "api_graphs",
    "api_tools",
    "api_tool_wasm",
    "api_idempotency",
];

/// What a migration copied and found, and the verification of both sides.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MigrateReport {
    pub runs: usize,
    pub events_copied: usize,
    pub events_present: usize,
    pub blobs_copied: usize,
    pub blobs_present: usize,
    pub records_copied: usize,
    pub records_present: usize,
    /// sha256 over every (run, sequence, record) of the source, in order; equal on the target.
    pub events_digest: String,
    /// Runs not finished in the source (a host must claim them in the target).
    pub unfinished: Vec<RunId>,
}

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error("source and target are the same journal ({0})")]
    SameJournal(String),
    #[error(
        "the target already holds {what} with different content; it was not overwritten (is the target another deployment's journal?)"
    )]
    Conflict { what: String },
    #[error("verification failed: {0}")]
    Verify(String),
}

/// Copies `from` into `to` and verifies the result.
pub fn migrate(from: &Journal, to: &Journal) -> Result<MigrateReport, MigrateError> {
    if from.describe() == to.describe() {
        return Err(MigrateError::SameJournal(from.describe()));
    }
    let (src, dst) = (&from.store, &to.store);
    let mut report = MigrateReport::default();
    // Payloads first, so no copied event ever names a blob the target lacks.
    for (digest, created_ms) in src.blob_ages()? {
        if dst.has_blob(&digest)? {
            report.blobs_present += 1;
            continue;
        }
        let blob = src
            .blob(&digest)?
            .ok_or_else(|| JournalError::MissingBlob {
                digest: hex::encode(digest),
            })?;
        if <[u8; 32]>::from(Sha256::digest(&blob.body)) != digest {
            return Err(JournalError::CorruptBlob {
                digest: hex::encode(digest),
            }
            .into());
        }
        dst.put_blob(&digest, created_ms, &blob.body)?;
        report.blobs_copied += 1;
    }
    for space in API_SPACES {
        for (key, value) in src.kv_scan(space, b"")? {
            if dst.kv_put_new(space, &key, &value)? {
                report.records_copied += 1;
            } else if dst.kv_get(space, &key)?.as_deref() == Some(&value[..]) {
                report.records_present += 1;
            } else {
                return Err(MigrateError::Conflict {
                    what: format!("'{space}' record {}", String::from_utf8_lossy(&key)),
                });
            }
        }
    }
    let mut runs = src.summaries()?;
    runs.sort_by_key(|(r, _)| r.0);
    for (run, summary) in &runs {
        let there: std::collections::HashMap<u64, Vec<u8>> =
            dst.events_from(*run, 0)?.into_iter().collect();
        for (seq, record) in src.events_from(*run, 0)? {
            match there.get(&seq) {
                Some(r) if *r == record => report.events_present += 1,
                Some(_) => {
                    return Err(MigrateError::Conflict {
                        what: format!("run {run} event {seq}"),
                    });
                }
                None => {
                    dst.put_event(*run, seq, &record)?;
                    report.events_copied += 1;
                }
            }
        }
        // The summary last: a run is listed in the target once its events are there.
        dst.put_summary(*run, summary)?;
        let s = super::decode_summary(*run, summary)?;
        if !s.status.is_finished() {
            report.unfinished.push(*run);
        }
    }
    to.sync()?;
    report.runs = runs.len();
    // Verify: the same runs with the same events, byte for byte, and every blob present.
    let digest_of = |j: &Journal| -> Result<(usize, String), JournalError> {
        let mut h = Sha256::new();
        let mut n = 0;
        for (run, _) in &runs {
            for (seq, record) in j.store.events_from(*run, 0)? {
                h.update(run.0);
                h.update(seq.to_be_bytes());
                h.update((record.len() as u64).to_be_bytes());
                h.update(&record);
                n += 1;
            }
        }
        Ok((n, hex::encode(h.finalize())))
    };
    let (n_src, d_src) = digest_of(from)?;
    let (n_dst, d_dst) = digest_of(to)?;
    if (n_src, &d_src) != (n_dst, &d_dst) {
        return Err(MigrateError::Verify(format!(
            "source has {n_src} events (sha256 {d_src}), target {n_dst} (sha256 {d_dst})"
        )));
    }
    for (digest, _) in src.blob_ages()? {
        if !dst.has_blob(&digest)? {
            return Err(MigrateError::Verify(format!(
                "payload {} is missing from the target",
                hex::encode(digest)
            )));
        }
    }
    for space in API_SPACES {
        let (a, b) = (src.kv_scan(space, b"")?, dst.kv_scan(space, b"")?);
        let missing = a.iter().filter(|kv| !b.contains(kv)).count();
        if missing > 0 {
            return Err(MigrateError::Verify(format!(
                "{missing} '{space}' records are missing from the target"
            )));
        }
    }
    report.events_digest = d_src;
    Ok(report)
}
