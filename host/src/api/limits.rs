//! Back-pressure for the API: a token bucket per authenticated subject, and a bound on runs in
//! flight with a bounded queue behind it. Past either limit a request gets 429 and a
//! `Retry-After` instead of piling up work the host cannot finish.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// How long the client should wait before trying again (the `Retry-After` header).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryAfter(pub Duration);

impl RetryAfter {
    /// Whole seconds, rounded up and at least 1, as `Retry-After` wants them.
    pub fn seconds(&self) -> u64 {
        let d = self.0;
        let s = d.as_secs() + u64::from(d.subsec_nanos() > 0);
        s.max(1)
    }
}

/// A bad limit setting (from the environment or the config file).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LimitsConfigError {
    #[error("rate limit {0} per second is not a positive finite number")]
    Rate(f64),
    #[error("rate limit burst must be at least 1")]
    Burst,
    #[error("max running runs must be at least 1 (and at most {max})", max = Semaphore::MAX_PERMITS)]
    MaxRunning,
}

/// Monotonic time since an arbitrary origin; injectable so tests never sleep.
pub trait Clock: Send + Sync {
    fn now(&self) -> Duration;
}

/// The process's monotonic clock.
#[derive(Debug)]
pub struct MonotonicClock(Instant);

impl Default for MonotonicClock {
    fn default() -> Self {
        MonotonicClock(Instant::now())
    }
}

impl Clock for MonotonicClock {
    fn now(&self) -> Duration {
        self.0.elapsed()
    }
}

/// A clock that moves only when told to.
#[derive(Debug, Clone, Default)]
pub struct ManualClock(Arc<Mutex<Duration>>);

impl ManualClock {
    pub fn advance(&self, by: Duration) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) += by;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Duration {
        *self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Duration,
}

/// Buckets kept before full (idle) ones are dropped; a full bucket is the same as none.
const PRUNE_ABOVE: usize = 4096;

/// A token bucket per subject: `burst` requests at once, refilled at `per_second`.
pub struct RateLimiter {
    rate: f64,
    burst: f64,
    clock: Arc<dyn Clock>,
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl std::fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimiter")
            .field("per_second", &self.rate)
            .field("burst", &self.burst)
            .finish()
    }
}

impl RateLimiter {
    /// # Panics
    /// If `per_second` is not positive and finite or `burst` is 0; use [`RateLimiter::try_new`]
    /// for values from configuration.
    pub fn new(per_second: f64, burst: u32) -> Self {
        match Self::try_new(per_second, burst) {
            Ok(limiter) => limiter,
            Err(e) => panic!("{e}"),
        }
    }

    pub fn try_new(per_second: f64, burst: u32) -> Result<Self, LimitsConfigError> {
        Self::with_clock(per_second, burst, Arc::new(MonotonicClock::default()))
    }

    pub fn with_clock(
        per_second: f64,
        burst: u32,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, LimitsConfigError> {
        if !(per_second.is_finite() && per_second > 0.0) {
            return Err(LimitsConfigError::Rate(per_second));
        }
        if burst == 0 {
            return Err(LimitsConfigError::Burst);
        }
        Ok(RateLimiter {
            rate: per_second,
            burst: f64::from(burst),
            clock,
            buckets: Mutex::new(HashMap::new()),
        })
    }

    /// Takes one token from `subject`'s bucket, or says when one will be there.
    pub fn check(&self, subject: &str) -> Result<(), RetryAfter> {
        let now = self.clock.now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.len() >= PRUNE_ABOVE && !buckets.contains_key(subject) {
            let (rate, burst) = (self.rate, self.burst);
            buckets.retain(|_, b| refilled(b, now, rate, burst) < burst);
        }
        let bucket = buckets.entry(subject.to_string()).or_insert(Bucket {
            tokens: self.burst,
            at: now,
        });
        bucket.tokens = refilled(bucket, now, self.rate, self.burst);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            let wait = (1.0 - bucket.tokens) / self.rate;
            Err(RetryAfter(Duration::from_secs_f64(wait)))
        }
    }
}

fn refilled(bucket: &Bucket, now: Duration, rate: f64, burst: f64) -> f64 {
    let elapsed = now.saturating_sub(bucket.at).as_secs_f64();
    (bucket.tokens + elapsed * rate).min(burst)
}

/// At most `max_running` runs at once; up to `max_queued` more wait in order for a slot; the
/// rest are refused. Clones share the same bound.
#[derive(Clone)]
pub struct Admission {
    slots: Arc<Semaphore>,
    max_running: usize,
    max_queued: usize,
    queued: Arc<AtomicUsize>,
    retry_after: Duration,
}

impl std::fmt::Debug for Admission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admission")
            .field("max_running", &self.max_running)
            .field("max_queued", &self.max_queued)
            .field("running", &self.running())
            .field("queued", &self.queued())
            .finish()
    }
}

/// A run slot; dropping it frees the slot for the next queued run.
#[derive(Debug)]
pub struct AdmissionPermit {
    _slot: OwnedSemaphorePermit,
    waited: Duration,
}

impl AdmissionPermit {
    /// Time spent in the queue before the slot was granted (zero when admitted at once).
    pub fn waited(&self) -> Duration {
        self.waited
    }
}

/// Undoes a queue reservation however the waiting future ends (granted or dropped).
struct QueueSlot(Arc<AtomicUsize>);

impl Drop for QueueSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Admission {
    /// # Panics
    /// If `max_running` is 0 or above the semaphore limit; use [`Admission::try_new`] for
    /// values from configuration.
    pub fn new(max_running: usize, max_queued: usize) -> Self {
        match Self::try_new(max_running, max_queued) {
            Ok(a) => a,
            Err(e) => panic!("{e}"),
        }
    }

    pub fn try_new(max_running: usize, max_queued: usize) -> Result<Self, LimitsConfigError> {
        if max_running == 0 || max_running > Semaphore::MAX_PERMITS {
            return Err(LimitsConfigError::MaxRunning);
        }
        Ok(Admission {
            slots: Arc::new(Semaphore::new(max_running)),
            max_running,
            max_queued,
            queued: Arc::new(AtomicUsize::new(0)),
            retry_after: Duration::from_secs(1),
        })
    }

    /// The `Retry-After` given when the queue is full (default 1 s).
    pub fn with_retry_after(mut self, retry_after: Duration) -> Self {
        self.retry_after = retry_after;
        self
    }

    /// The configured bound on runs in flight.
    pub fn max_running(&self) -> usize {
        self.max_running
    }

    /// The configured bound on runs waiting for a slot.
    pub fn max_queued(&self) -> usize {
        self.max_queued
    }

    /// Runs holding a slot now.
    pub fn running(&self) -> usize {
        self.max_running - self.slots.available_permits()
    }

    /// Runs waiting for a slot now.
    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Acquire)
    }

    /// A slot now if one is free; never waits or queues.
    pub fn try_admit(&self) -> Option<AdmissionPermit> {
        let slot = self.slots.clone().try_acquire_owned().ok()?;
        Some(AdmissionPermit {
            _slot: slot,
            waited: Duration::ZERO,
        })
    }

    /// A slot now, or after the runs queued before this one; `RetryAfter` when the queue is
    /// full. Waiters are served in arrival order.
    pub async fn admit(&self) -> Result<AdmissionPermit, RetryAfter> {
        if let Ok(slot) = self.slots.clone().try_acquire_owned() {
            return Ok(AdmissionPermit {
                _slot: slot,
                waited: Duration::ZERO,
            });
        }
        let reserved = self
            .queued
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |q| {
                (q < self.max_queued).then_some(q + 1)
            });
        if reserved.is_err() {
            return Err(RetryAfter(self.retry_after));
        }
        let _queue_slot = QueueSlot(self.queued.clone());
        let start = Instant::now();
        let slot = self
            .slots
            .clone()
            .acquire_owned()
            .await
            .expect("the admission semaphore is never closed");
        Ok(AdmissionPermit {
            _slot: slot,
            waited: start.elapsed(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(per_second: f64, burst: u32) -> (RateLimiter, ManualClock) {
        let clock = ManualClock::default();
        let limiter = RateLimiter::with_clock(per_second, burst, Arc::new(clock.clone())).unwrap();
        (limiter, clock)
    }

    #[test]
    fn burst_then_refill_at_the_rate() {
        let (limiter, clock) = limiter(2.0, 3);
        for _ in 0..3 {
            assert_eq!(limiter.check("alice"), Ok(()));
        }
        // Empty: the next token comes in 1/rate = 500 ms.
        assert_eq!(
            limiter.check("alice"),
            Err(RetryAfter(Duration::from_millis(500)))
        );
        clock.advance(Duration::from_millis(250));
        assert_eq!(
            limiter.check("alice"),
            Err(RetryAfter(Duration::from_millis(250)))
        );
        clock.advance(Duration::from_millis(250));
        assert_eq!(limiter.check("alice"), Ok(()));
        assert!(limiter.check("alice").is_err());
        // A long idle period refills only up to the burst.
        clock.advance(Duration::from_secs(3600));
        for _ in 0..3 {
            assert_eq!(limiter.check("alice"), Ok(()));
        }
        assert!(limiter.check("alice").is_err());
    }

    #[test]
    fn subjects_have_separate_buckets() {
        let (limiter, _clock) = limiter(1.0, 1);
        assert_eq!(limiter.check("alice"), Ok(()));
        assert!(limiter.check("alice").is_err());
        assert_eq!(limiter.check("bob"), Ok(()));
    }

    #[test]
    fn idle_buckets_are_pruned_without_forgetting_busy_ones() {
        let (limiter, clock) = limiter(1.0, 2);
        limiter.check("busy").unwrap();
        limiter.check("busy").unwrap();
        for i in 0..PRUNE_ABOVE {
            limiter.check(&format!("s{i}")).unwrap();
        }
        // One second later every `s*` bucket is full again; `busy` has one token of two.
        clock.advance(Duration::from_secs(1));
        limiter.check("newcomer").unwrap();
        let buckets = limiter.buckets.lock().unwrap();
        assert!(buckets.len() <= 3, "{} buckets kept", buckets.len());
        assert!(buckets.contains_key("busy"));
    }

    #[test]
    fn retry_after_header_rounds_up_to_whole_seconds() {
        assert_eq!(RetryAfter(Duration::from_millis(1)).seconds(), 1);
        assert_eq!(RetryAfter(Duration::ZERO).seconds(), 1);
        assert_eq!(RetryAfter(Duration::from_millis(2001)).seconds(), 3);
        assert_eq!(RetryAfter(Duration::from_secs(2)).seconds(), 2);
    }

    #[test]
    fn bad_settings_are_refused() {
        assert_eq!(
            RateLimiter::try_new(0.0, 1).unwrap_err(),
            LimitsConfigError::Rate(0.0)
        );
        assert!(matches!(
            RateLimiter::try_new(f64::NAN, 1),
            Err(LimitsConfigError::Rate(_))
        ));
        assert_eq!(
            RateLimiter::try_new(1.0, 0).unwrap_err(),
            LimitsConfigError::Burst
        );
        assert_eq!(
            Admission::try_new(0, 10).unwrap_err(),
            LimitsConfigError::MaxRunning
        );
    }

    /// Polls `cond` until it holds, yielding to other tasks; fails after a deadline.
    async fn until(what: &str, cond: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !cond() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn admission_bounds_running_and_queued_runs() {
        let admission = Admission::new(2, 2).with_retry_after(Duration::from_secs(5));
        let first = admission.admit().await.unwrap();
        let second = admission.admit().await.unwrap();
        assert_eq!(first.waited(), Duration::ZERO);
        assert_eq!((admission.max_running(), admission.max_queued()), (2, 2));
        assert_eq!((admission.running(), admission.queued()), (2, 0));

        // Two more wait in the queue, in order.
        let (order_tx, mut order_rx) = tokio::sync::mpsc::unbounded_channel();
        let mut waiters = Vec::new();
        for n in 0..2 {
            let a = admission.clone();
            let tx = order_tx.clone();
            waiters.push(tokio::spawn(async move {
                let permit = a.admit().await.unwrap();
                tx.send(n).unwrap();
                permit
            }));
            let want = n + 1;
            until("the waiter to queue", || admission.queued() == want).await;
        }

        // The queue is full: refused with the configured Retry-After.
        assert_eq!(
            admission.admit().await.unwrap_err(),
            RetryAfter(Duration::from_secs(5))
        );

        // Freeing a slot admits the first waiter, then the second.
        drop(first);
        assert_eq!(order_rx.recv().await, Some(0));
        until("one waiter left", || admission.queued() == 1).await;
        drop(second);
        assert_eq!(order_rx.recv().await, Some(1));
        until("an empty queue", || admission.queued() == 0).await;
        let permits: Vec<AdmissionPermit> = futures_join(waiters).await;
        assert_eq!(admission.running(), 2);
        // With the queue empty again, one more may wait.
        let a = admission.clone();
        let pending = tokio::spawn(async move { a.admit().await.map(|_| ()) });
        until("the new waiter to queue", || admission.queued() == 1).await;
        drop(permits);
        assert_eq!(pending.await.unwrap(), Ok(()));
        until("all slots free", || admission.running() == 0).await;
    }

    #[tokio::test]
    async fn a_cancelled_waiter_gives_its_queue_place_back() {
        let admission = Admission::new(1, 1);
        let held = admission.admit().await.unwrap();
        let a = admission.clone();
        let waiter = tokio::spawn(async move { a.admit().await.map(|_| ()) });
        until("the waiter to queue", || admission.queued() == 1).await;
        assert!(admission.admit().await.is_err(), "queue of one is full");
        waiter.abort();
        assert!(waiter.await.unwrap_err().is_cancelled());
        assert_eq!(admission.queued(), 0);
        let a = admission.clone();
        let next = tokio::spawn(async move { a.admit().await.map(|_| ()) });
        until("the next waiter to queue", || admission.queued() == 1).await;
        drop(held);
        assert_eq!(next.await.unwrap(), Ok(()));
    }

    #[tokio::test]
    async fn no_queue_means_refuse_at_once() {
        let admission = Admission::new(1, 0);
        let _held = admission.admit().await.unwrap();
        assert_eq!(
            admission.admit().await.unwrap_err(),
            RetryAfter(Duration::from_secs(1))
        );
    }

    async fn futures_join<T>(handles: Vec<tokio::task::JoinHandle<T>>) -> Vec<T> {
        let mut out = Vec::new();
        for h in handles {
            out.push(h.await.unwrap());
        }
        out
    }
}
