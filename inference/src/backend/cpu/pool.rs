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

/// One step of a forward pass whose work (`total` units) any thread may claim in chunks.
///
/// Threads never wait for each other to *arrive*, only for a step's work to be *finished*: a
/// thread that the OS has descheduled just finds a later step already done and skips ahead,
/// so an oversubscribed machine costs at most the chunk a sleeping thread holds, instead of a
/// scheduler time slice at every barrier.
pub struct Phase {
    total: usize,
    claimed: AtomicUsize,
    done: AtomicUsize,
    /// Threads reading this step's inputs; the step only counts as finished when none is,
    /// so the next step cannot overwrite inputs a late thread is still reading.
    preparing: AtomicUsize,
}

impl Phase {
    pub fn new(total: usize) -> Phase {
        Phase {
            total,
            claimed: AtomicUsize::new(0),
            done: AtomicUsize::new(0),
            preparing: AtomicUsize::new(0),
        }
    }

    /// Waits until every unit is done and no thread is still preparing inputs. Panics
    /// (instead of waiting forever) once `abort` is set by a thread that panicked mid-step.
    pub fn wait_complete(&self, abort: &AtomicBool) {
        let mut spins = 0u32;
        while self.done.load(Ordering::SeqCst) < self.total
            || self.preparing.load(Ordering::SeqCst) != 0
        {
            if abort.load(Ordering::SeqCst) {
                panic!("another CPU backend thread panicked during this forward pass");
            }
            backoff(&mut spins);
        }
    }

    /// Unless all work is already claimed: builds this thread's inputs with `prepare`, then
    /// claims chunks of `chunk` units and runs `work` on each.
    pub fn run<P>(
        &self,
        chunk: usize,
        prepare: impl FnOnce() -> P,
        mut work: impl FnMut(&P, std::ops::Range<usize>),
    ) {
        // Announce before checking (both SeqCst): a thread that completes the step either sees
        // this announcement and waits for it, or claimed everything before the check below.
        self.preparing.fetch_add(1, Ordering::SeqCst);
        if self.claimed.load(Ordering::SeqCst) >= self.total {
            self.preparing.fetch_sub(1, Ordering::SeqCst);
            return;
        }
        let inputs = prepare();
        self.preparing.fetch_sub(1, Ordering::SeqCst);
        loop {
            let start = self.claimed.fetch_add(chunk, Ordering::SeqCst);
            if start >= self.total {
                return;
            }
            let end = (start + chunk).min(self.total);
            work(&inputs, start..end);
            self.done.fetch_add(end - start, Ordering::SeqCst);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_run_every_unit_once_and_in_order() {
        let pool = Pool::new(3);
        for _ in 0..50 {
            let phases: Vec<Phase> = (0..20).map(|_| Phase::new(37)).collect();
            let counts: Vec<AtomicUsize> = (0..20 * 37).map(|_| AtomicUsize::new(0)).collect();
            pool.run(&|_tid| {
                for (p, ph) in phases.iter().enumerate() {
                    if p > 0 {
                        phases[p - 1].wait_complete(&AtomicBool::new(false));
                    }
                    ph.run(
                        5,
                        || {
                            // Inputs of step p are complete: every unit of p - 1 ran once.
                            if p > 0 {
                                for u in 0..37 {
                                    assert_eq!(counts[(p - 1) * 37 + u].load(Ordering::SeqCst), 1);
                                }
                            }
                        },
                        |_, r| {
                            for u in r {
                                counts[p * 37 + u].fetch_add(1, Ordering::SeqCst);
                            }
                        },
                    );
                }
            });
            assert!(counts.iter().all(|c| c.load(Ordering::SeqCst) == 1));
        }
    }

    #[test]
    fn a_thread_panicking_mid_step_fails_the_job_instead_of_hanging_it() {
        let pool = Pool::new(2);
        let phase = Phase::new(4);
        let abort = AtomicBool::new(false);
        let r = catch_unwind(AssertUnwindSafe(|| {
            pool.run(&|tid| {
                let body = || {
                    // Only thread 1 works, and it fails on its first unit.
                    if tid == 1 {
                        phase.run(1, || (), |_, _| panic!("kernel bug"));
                    }
                    phase.wait_complete(&abort);
                };
                if let Err(p) = catch_unwind(AssertUnwindSafe(body)) {
                    abort.store(true, Ordering::SeqCst);
                    resume_unwind(p);
                }
            })
        }));
        assert!(r.is_err());
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
