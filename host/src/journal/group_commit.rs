//! Group commit: a durable append returns only after a flush that covers it, and appenders that
//! arrive while a flush is running share the next one (leader/follower), so N concurrent durable
//! appends cost far fewer than N fsyncs.
//!
//! Waiters come in two kinds, sharing one leader at a time: threads (`wait_durable`, parked on a
//! condition variable) and async tasks (`wait_durable_async`). An async follower waits on a watch
//! channel and holds no thread, so any number of steps can wait for one flush; an async leader
//! hands the flush to tokio's blocking pool, where it is recorded when it ends even if the leader
//! stopped waiting.

use std::sync::{Arc, Condvar, Mutex};

use tokio::runtime::Handle;
use tokio::sync::watch;

#[derive(Default)]
struct State {
    /// Tickets handed out; a ticket is taken after its write is in the tree.
    issued: u64,
    /// Every ticket up to this one is covered by a finished flush.
    flushed: u64,
    flushing: bool,
    flushes: u64,
    /// The last flush failed; waiters covered by it get this message.
    failed: Option<(u64, String)>,
}

/// What a waiter holding `ticket` does next.
enum Turn {
    Done(Result<(), String>),
    /// Flush everything issued up to this ticket.
    Lead(u64),
    Wait,
}

impl State {
    fn turn(&mut self, ticket: u64) -> Turn {
        if let Some((upto, msg)) = &self.failed
            && *upto >= ticket
            && self.flushed < ticket
        {
            return Turn::Done(Err(msg.clone()));
        }
        if self.flushed >= ticket {
            return Turn::Done(Ok(()));
        }
        if self.flushing {
            return Turn::Wait;
        }
        self.flushing = true;
        Turn::Lead(self.issued)
    }
}

pub struct GroupCommit {
    state: Mutex<State>,
    done: Condvar,
    /// The number of flushes finished, for async waiters.
    finished: watch::Sender<u64>,
}

impl Default for GroupCommit {
    fn default() -> Self {
        GroupCommit {
            state: Mutex::default(),
            done: Condvar::new(),
            finished: watch::Sender::new(0),
        }
    }
}

impl GroupCommit {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn ticket(&self) -> u64 {
        let mut s = self.lock();
        s.issued += 1;
        s.issued
    }

    /// Records the leader's flush of everything up to `target` and wakes every waiter.
    fn finish(&self, target: u64, result: Result<(), String>) {
        let mut s = self.lock();
        s.flushing = false;
        s.flushes += 1;
        match result {
            Ok(()) => s.flushed = s.flushed.max(target),
            Err(msg) => s.failed = Some((target, msg)),
        }
        drop(s);
        self.done.notify_all();
        self.finished.send_modify(|n| *n += 1);
    }

    /// Blocks until a flush started after this call has finished. `flush` runs on whichever
    /// waiter becomes the leader; the others wait for it.
    pub fn wait_durable(&self, flush: impl Fn() -> Result<(), String>) -> Result<(), String> {
        let ticket = self.ticket();
        let mut s = self.lock();
        loop {
            match s.turn(ticket) {
                Turn::Done(result) => return result,
                Turn::Lead(target) => {
                    drop(s);
                    self.finish(target, flush());
                    s = self.lock();
                }
                Turn::Wait => s = self.done.wait(s).unwrap_or_else(|p| p.into_inner()),
            }
        }
    }

    /// `wait_durable` for async code: a follower awaits the leader's flush without holding a
    /// thread, and a leader hands its flush to the blocking pool and then waits like a follower
    /// (see the module's notes). Dropping the future never strands a flush half-recorded.
    pub async fn wait_durable_async(
        self: &Arc<Self>,
        flush: impl FnOnce() -> Result<(), String> + Send + 'static,
    ) -> Result<(), String> {
        // Subscribed before the ticket is looked at, so a flush that ends in between still
        // wakes this waiter.
        let mut finished = self.finished.subscribe();
        let ticket = self.ticket();
        let mut flush = Some(flush);
        loop {
            let turn = self.lock().turn(ticket);
            match turn {
                Turn::Done(result) => return result,
                Turn::Lead(target) => {
                    // A waiter leads at most once: the flush it leads covers its own ticket.
                    let Some(flush) = flush.take() else {
                        self.finish(target, Err("group commit: a waiter led twice".to_owned()));
                        continue;
                    };
                    let commit = self.clone();
                    let job = move || commit.finish(target, flush());
                    match Handle::try_current() {
                        Ok(h) => drop(h.spawn_blocking(job)),
                        Err(_) => job(),
                    }
                }
                // The sender lives as long as `self`, so this never reports it gone.
                Turn::Wait => {
                    let _ = finished.changed().await;
                }
            }
        }
    }

    /// Flushes run so far (for tests and the benchmark).
    pub fn flushes(&self) -> u64 {
        self.lock().flushes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::Duration;

    /// Thread and async waiters, arriving together, all return only after a flush that started
    /// after they took their ticket, and they share flushes.
    #[test]
    fn threads_and_tasks_share_flushes_and_each_waits_for_one_that_covers_it() {
        let commit = Arc::new(GroupCommit::default());
        // The number of tickets issued when the flush that last finished started.
        let covered = Arc::new(AtomicU64::new(0));
        let flush = {
            let (commit, covered) = (commit.clone(), covered.clone());
            move || {
                let issued = commit.lock().issued;
                std::thread::sleep(Duration::from_millis(2));
                covered.store(issued, Ordering::SeqCst);
                Ok(())
            }
        };
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .build()
            .expect("runtime");
        let mut tasks = Vec::new();
        for _ in 0..16 {
            let (commit, covered, flush) = (commit.clone(), covered.clone(), flush.clone());
            tasks.push(rt.spawn(async move {
                let mine = commit.lock().issued + 1;
                commit.wait_durable_async(flush).await.expect("flush");
                assert!(covered.load(Ordering::SeqCst) >= mine);
            }));
        }
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (commit, covered, flush) = (commit.clone(), covered.clone(), flush.clone());
                std::thread::spawn(move || {
                    let mine = commit.lock().issued + 1;
                    commit.wait_durable(flush).expect("flush");
                    assert!(covered.load(Ordering::SeqCst) >= mine);
                })
            })
            .collect();
        for t in threads {
            t.join().expect("thread waiter");
        }
        rt.block_on(async {
            for t in tasks {
                t.await.expect("task waiter");
            }
        });
        let flushes = commit.flushes();
        assert!(
            (1..24).contains(&flushes),
            "{flushes} flushes for 24 waiters"
        );
    }

    /// A failed flush fails the waiters it covered, and the next waiter leads a new flush.
    #[tokio::test]
    async fn a_failed_flush_fails_its_waiters_and_the_next_one_flushes_again() {
        let commit = Arc::new(GroupCommit::default());
        let err = commit
            .wait_durable_async(|| Err("disk gone".to_owned()))
            .await;
        assert_eq!(err, Err("disk gone".to_owned()));
        assert_eq!(commit.wait_durable_async(|| Ok(())).await, Ok(()));
        assert_eq!(commit.flushes(), 2);
    }
}
