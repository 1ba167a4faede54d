//! Group commit: a durable append returns only after a flush that covers it, and appenders that
//! arrive while a flush is running share the next one (leader/follower), so N concurrent durable
//! appends cost far fewer than N fsyncs.

use std::sync::{Condvar, Mutex};

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

#[derive(Default)]
pub struct GroupCommit {
    state: Mutex<State>,
    done: Condvar,
}

impl GroupCommit {
    /// Blocks until a flush started after this call has finished. `flush` runs on whichever
    /// waiter becomes the leader; the others wait for it.
    pub fn wait_durable(&self, flush: impl Fn() -> Result<(), String>) -> Result<(), String> {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.issued += 1;
        let ticket = s.issued;
        loop {
            if let Some((upto, msg)) = &s.failed
                && *upto >= ticket
                && s.flushed < ticket
            {
                return Err(msg.clone());
            }
            if s.flushed >= ticket {
                return Ok(());
            }
            if !s.flushing {
                s.flushing = true;
                let target = s.issued;
                drop(s);
                let result = flush();
                s = self.state.lock().unwrap_or_else(|p| p.into_inner());
                s.flushing = false;
                s.flushes += 1;
                match result {
                    Ok(()) => s.flushed = s.flushed.max(target),
                    Err(msg) => s.failed = Some((target, msg)),
                }
                self.done.notify_all();
            } else {
                s = self.done.wait(s).unwrap_or_else(|p| p.into_inner());
            }
        }
    }

    /// Flushes run so far (for tests and the benchmark).
    pub fn flushes(&self) -> u64 {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).flushes
    }
}
