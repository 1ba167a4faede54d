//! Idempotency keys for `POST /v1/runs`: a key remembers the request's digest and the run it
//! started for `idempotency_ttl`, after which it may start a new run. Submissions are serialised
//! per key only, so different keys wait for run slots in parallel.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::journal::{Journal, JournalError};

/// What a key remembers.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct IdempotentRun {
    /// sha256 (hex) of the request body.
    pub request: String,
    pub run: String,
    /// When the key was stored, ms since the Unix epoch (0 in entries written before keys had
    /// a lifetime: those count as expired).
    #[serde(default)]
    pub created_ms: u64,
}

impl IdempotentRun {
    pub fn expired(&self, now_ms: u64, ttl_ms: u64) -> bool {
        self.created_ms == 0 || now_ms.saturating_sub(self.created_ms) >= ttl_ms
    }
}

/// One async lock per key in use; a key's entry goes when its last holder or waiter is done.
#[derive(Default)]
pub struct KeyLocks {
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// Held while one submission checks its key and starts its run.
pub struct KeyGuard<'a> {
    owner: &'a KeyLocks,
    key: String,
    lock: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl KeyLocks {
    pub async fn lock(&self, key: &str) -> KeyGuard<'_> {
        let lock = self
            .locks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(key.to_owned())
            .or_default()
            .clone();
        // The guard exists before the wait, so a cancelled waiter still cleans up through it
        // (the pending lock future, declared later, drops first and releases its reference).
        let mut guard = KeyGuard {
            owner: self,
            key: key.to_owned(),
            lock: None,
        };
        let pending = lock.lock_owned();
        guard.lock = Some(pending.await);
        guard
    }

    /// Keys with a lock entry now (held or waited on).
    #[cfg(test)]
    pub fn in_use(&self) -> usize {
        self.locks.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

impl Drop for KeyGuard<'_> {
    fn drop(&mut self) {
        let mut locks = self.owner.locks.lock().unwrap_or_else(|p| p.into_inner());
        drop(self.lock.take());
        // Only the map's reference left: nobody holds or waits on this key.
        if locks
            .get(&self.key)
            .is_some_and(|l| Arc::strong_count(l) == 1)
        {
            locks.remove(&self.key);
        }
    }
}

/// The journal's keyed-record space holding idempotency keys.
pub const SPACE: &str = "api_idempotency";

/// Removes every expired key; returns how many went. Entries that do not decode are removed
/// too (nothing could replay them).
pub fn sweep(journal: &Journal, now_ms: u64, ttl_ms: u64) -> Result<usize, JournalError> {
    let mut removed = 0;
    for (k, v) in journal.kv_scan(SPACE, b"")? {
        let expired = serde_json::from_slice::<IdempotentRun>(&v)
            .map(|r| r.expired(now_ms, ttl_ms))
            .unwrap_or(true);
        // Only if unchanged: an entry rewritten meanwhile (a new run under the key) stays.
        if expired && journal.kv_remove_if(SPACE, &k, &v)? {
            removed += 1;
        }
    }
    journal.sync()?;
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(created_ms: u64) -> Vec<u8> {
        serde_json::to_vec(&IdempotentRun {
            request: "d".into(),
            run: "r".into(),
            created_ms,
        })
        .unwrap()
    }

    #[test]
    fn sweep_removes_only_expired_and_undecodable_keys() {
        let journal = Journal::temporary().unwrap();
        journal.kv_put(SPACE, b"old", &entry(1_000)).unwrap();
        journal.kv_put(SPACE, b"edge", &entry(5_000)).unwrap();
        journal.kv_put(SPACE, b"young", &entry(5_001)).unwrap();
        journal.kv_put(SPACE, b"junk", b"not json").unwrap();
        // ttl 5 s at t = 10 s: created at or before 5 s has expired.
        assert_eq!(sweep(&journal, 10_000, 5_000).unwrap(), 3);
        let left: Vec<_> = journal
            .kv_scan(SPACE, b"")
            .unwrap()
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(left, vec![b"young".to_vec()]);
        // Entries without created_ms (written before keys expired) count as expired.
        let legacy: IdempotentRun = serde_json::from_str(r#"{"request":"d","run":"r"}"#).unwrap();
        assert!(legacy.expired(1, 86_400_000));
    }

    #[tokio::test]
    async fn different_keys_do_not_wait_for_each_other_and_entries_are_dropped() {
        let locks = KeyLocks::default();
        let a = locks.lock("a").await;
        // A different key is granted while "a" is held.
        let b = tokio::time::timeout(std::time::Duration::from_secs(10), locks.lock("b"))
            .await
            .expect("key b is not blocked by key a");
        assert_eq!(locks.in_use(), 2);
        // The same key waits until the holder is done.
        let waiting = locks.lock("a");
        tokio::pin!(waiting);
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        assert!(
            std::future::Future::poll(waiting.as_mut(), &mut cx).is_pending(),
            "a second holder of key a must wait"
        );
        drop(a);
        let a2 = waiting.await;
        drop(a2);
        drop(b);
        assert_eq!(locks.in_use(), 0);
    }
}
