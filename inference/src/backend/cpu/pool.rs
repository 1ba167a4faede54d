//! A small persistent thread pool for the CPU backend: one job per forward pass runs on every
//! thread, and phases inside it synchronise with a spinning barrier. Spawning threads per
//! matmul (or a work-stealing pool per op) costs more than a decode step's matmuls take.

use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

type Job = dyn Fn(usize) + Sync;

struct Shared {
    /// Incremented for every job; workers run a job when they see a new generation.
    generation: AtomicU64,
    job: Mutex<Option<&'static Job>>,
    remaining: AtomicUsize,
    shutdown: AtomicBool,
    panicked: Mutex<Option<Box<dyn std::any::Any + Send>>>,
    sleepers: AtomicUsize,
    lock: Mutex<()>,
    wake: Condvar,
}

pub struct Pool {
    shared: Arc<Shared>,
    handles: Vec<JoinHandle<()>>,
    n_threads: usize,
}

/// How long an idle worker spins/yields before it sleeps on the condition variable.
const HOT_WAIT: Duration = Duration::from_millis(2);

impl Pool {
    pub fn new(n_threads: usize) -> Pool {
        let n_threads = n_threads.max(1);
        let shared = Arc::new(Shared {
            generation: AtomicU64::new(0),
            job: Mutex::new(None),
            remaining: AtomicUsize::new(0),
            shutdown: AtomicBool::new(false),
            panicked: Mutex::new(None),
            sleepers: AtomicUsize::new(0),
            lock: Mutex::new(()),
            wake: Condvar::new(),
        });
        let handles = (1..n_threads)
            .map(|tid| {
                let s = shared.clone();
                std::thread::Builder::new()
                    .name(format!("sandgraph-cpu-{tid}"))
                    .spawn(move || worker(s, tid))
                    .expect("spawn CPU backend worker thread")
            })
            .collect();
        Pool {
            shared,
            handles,
            n_threads,
        }
    }

    pub fn n_threads(&self) -> usize {
        self.n_threads
    }

    /// Runs `f(tid)` on every thread (the caller is thread 0) and waits for all of them.
    pub fn run<'a>(&self, f: &'a (dyn Fn(usize) + Sync + 'a)) {
        if self.n_threads == 1 {
            f(0);
            return;
        }
        // SAFETY: the reference is only used by workers until `remaining` reaches zero, which
        // this function waits for before returning, so it never outlives `f`.
        let job: &'static Job =
            unsafe { std::mem::transmute::<&'a (dyn Fn(usize) + Sync + 'a), &'static Job>(f) };
        *self.shared.job.lock().unwrap() = Some(job);
        self.shared
            .remaining
            .store(self.n_threads - 1, Ordering::SeqCst);
        self.shared.generation.fetch_add(1, Ordering::SeqCst);
        if self.shared.sleepers.load(Ordering::SeqCst) > 0 {
            let _g = self.shared.lock.lock().unwrap();
            self.shared.wake.notify_all();
        }
        let mine = catch_unwind(AssertUnwindSafe(|| f(0)));
        let mut spins = 0u32;
        while self.shared.remaining.load(Ordering::Acquire) != 0 {
            backoff(&mut spins);
        }
        *self.shared.job.lock().unwrap() = None;
        if let Err(p) = mine {
            resume_unwind(p);
        }
        let worker_panic = self.shared.panicked.lock().unwrap().take();
        if let Some(p) = worker_panic {
            resume_unwind(p);
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.shared.shutdown.store(true, Ordering::SeqCst);
        self.shared.generation.fetch_add(1, Ordering::SeqCst);
        {
            let _g = self.shared.lock.lock().unwrap();
            self.shared.wake.notify_all();
        }
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
    }
}

/// Spins briefly (a PAUSE is ~100+ cycles on recent x86), then yields the core: with more
/// runnable threads than cores, spinning on would only delay the thread being waited for.
#[inline]
fn backoff(spins: &mut u32) {
    *spins += 1;
    if *spins < 128 {
        std::hint::spin_loop();
    } else {
        std::thread::yield_now();
    }
}

fn worker(s: Arc<Shared>, tid: usize) {
    let mut seen = 0u64;
    loop {
        // Wait for a new generation: spin, then yield, then sleep.
        let start = Instant::now();
        let mut spins = 0u32;
        loop {
            let g = s.generation.load(Ordering::Acquire);
            if g != seen {
                seen = g;
                break;
            }
            if start.elapsed() < HOT_WAIT {
                backoff(&mut spins);
                continue;
            }
            let guard = s.lock.lock().unwrap();
            s.sleepers.fetch_add(1, Ordering::SeqCst);
            let _guard = s
                .wake
                .wait_while(guard, |_| s.generation.load(Ordering::SeqCst) == seen)
                .unwrap();
            s.sleepers.fetch_sub(1, Ordering::SeqCst);
        }
        if s.shutdown.load(Ordering::SeqCst) {
            return;
        }
        let job = *s.job.lock().unwrap();
        if let Some(job) = job
            && let Err(p) = catch_unwind(AssertUnwindSafe(|| job(tid)))
        {
            *s.panicked.lock().unwrap() = Some(p);
        }
        s.remaining.fetch_sub(1, Ordering::Release);
    }
}

/// A reusable spinning barrier for the threads of one job.
pub struct SpinBarrier {
    n: usize,
    count: AtomicUsize,
    generation: AtomicUsize,
}

impl SpinBarrier {
    pub fn new(n: usize) -> Self {
        SpinBarrier {
            n,
            count: AtomicUsize::new(0),
            generation: AtomicUsize::new(0),
        }
    }

    pub fn wait(&self) {
        if self.n == 1 {
            return;
        }
        let g = self.generation.load(Ordering::Acquire);
        if self.count.fetch_add(1, Ordering::AcqRel) + 1 == self.n {
            self.count.store(0, Ordering::Relaxed);
            self.generation.fetch_add(1, Ordering::Release);
        } else {
            let mut spins = 0u32;
            while self.generation.load(Ordering::Acquire) == g {
                backoff(&mut spins);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_thread_runs_each_job_and_barriers_order_phases() {
        let pool = Pool::new(3);
        for _ in 0..50 {
            let hits = AtomicUsize::new(0);
            let after = AtomicUsize::new(0);
            let barrier = SpinBarrier::new(3);
            pool.run(&|_tid| {
                hits.fetch_add(1, Ordering::SeqCst);
                barrier.wait();
                // Every thread sees all three arrivals once past the barrier.
                assert_eq!(hits.load(Ordering::SeqCst), 3);
                after.fetch_add(1, Ordering::SeqCst);
            });
            assert_eq!(after.load(Ordering::SeqCst), 3);
        }
    }

    #[test]
    fn a_panicking_worker_is_reported_to_the_caller() {
        let pool = Pool::new(2);
        let r = catch_unwind(AssertUnwindSafe(|| {
            pool.run(&|tid| {
                if tid == 1 {
                    panic!("worker failed");
                }
            })
        }));
        assert!(r.is_err());
        // The pool stays usable.
        let n = AtomicUsize::new(0);
        pool.run(&|_| {
            n.fetch_add(1, Ordering::SeqCst);
        });
        assert_eq!(n.load(Ordering::SeqCst), 2);
    }
}
