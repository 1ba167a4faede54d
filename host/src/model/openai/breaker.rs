//! A circuit breaker per remote endpoint: after `threshold` consecutive failures the endpoint
//! is skipped for `cooldown`, then one probe request is let through (half-open); its success
//! closes the circuit, its failure opens it again. The state is readable for metrics.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// What the breaker lets through now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

impl BreakerState {
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }
}

#[derive(Debug)]
enum Inner {
    Closed {
        failures: u32,
    },
    Open {
        until: Instant,
    },
    /// The cooldown has passed and one probe is in flight; others are refused until it ends.
    HalfOpen,
}

/// One endpoint's breaker, shared by every provider that calls it.
#[derive(Debug)]
pub struct CircuitBreaker {
    threshold: u32,
    cooldown: Duration,
    inner: Mutex<Inner>,
}

/// Why a call was not let through: the circuit is open (or a probe is in flight) for this long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused {
    pub retry_in: Duration,
}

impl CircuitBreaker {
    pub fn new(threshold: u32, cooldown: Duration) -> CircuitBreaker {
        CircuitBreaker {
            threshold: threshold.max(1),
            cooldown,
            inner: Mutex::new(Inner::Closed { failures: 0 }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The state now (an open circuit whose cooldown has passed reads as half-open).
    pub fn state(&self) -> BreakerState {
        match &*self.lock() {
            Inner::Closed { .. } => BreakerState::Closed,
            Inner::Open { until } if Instant::now() >= *until => BreakerState::HalfOpen,
            Inner::Open { .. } => BreakerState::Open,
            Inner::HalfOpen => BreakerState::HalfOpen,
        }
    }

    /// Asks to send one request: allowed when closed, or as the one probe once the cooldown
    /// has passed.
    pub fn acquire(&self) -> Result<(), Refused> {
        let mut inner = self.lock();
        match &*inner {
            Inner::Closed { .. } => Ok(()),
            Inner::Open { until } => {
                let now = Instant::now();
                if now >= *until {
                    *inner = Inner::HalfOpen;
                    Ok(())
                } else {
                    Err(Refused {
                        retry_in: *until - now,
                    })
                }
            }
            Inner::HalfOpen => Err(Refused {
                retry_in: self.cooldown,
            }),
        }
    }

    /// The request reached a healthy endpoint: the circuit closes.
    pub fn success(&self) {
        *self.lock() = Inner::Closed { failures: 0 };
    }

    /// The endpoint failed (no connection, a timeout, a 5xx): counts towards opening; a failed
    /// probe opens the circuit again at once.
    pub fn failure(&self) {
        let mut inner = self.lock();
        let open = Inner::Open {
            until: Instant::now() + self.cooldown,
        };
        *inner = match &*inner {
            Inner::Closed { failures } if failures + 1 < self.threshold => Inner::Closed {
                failures: failures + 1,
            },
            Inner::Closed { .. } | Inner::HalfOpen => open,
            // Failures of requests let through before it opened: keep the current cooldown.
            Inner::Open { until } => Inner::Open { until: *until },
        };
    }

    /// A request that was let through ended without telling anything about the endpoint's
    /// health (cancelled, refused as invalid): a probe slot is released for the next caller.
    pub fn release(&self) {
        let mut inner = self.lock();
        if matches!(*inner, Inner::HalfOpen) {
            *inner = Inner::Open {
                until: Instant::now(),
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_threshold_and_probes_after_cooldown() {
        let b = CircuitBreaker::new(3, Duration::from_millis(0));
        for _ in 0..2 {
            b.acquire().unwrap();
            b.failure();
        }
        assert_eq!(b.state(), BreakerState::Closed);
        b.acquire().unwrap();
        b.failure();
        // Cooldown 0: the next call is the half-open probe; a second one waits for it.
        assert_eq!(b.state(), BreakerState::HalfOpen);
        b.acquire().unwrap();
        assert!(b.acquire().is_err());
        b.success();
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[test]
    fn open_circuit_refuses_until_cooldown() {
        let b = CircuitBreaker::new(1, Duration::from_secs(60));
        b.acquire().unwrap();
        b.failure();
        assert_eq!(b.state(), BreakerState::Open);
        let r = b.acquire().unwrap_err();
        assert!(r.retry_in > Duration::from_secs(50));
    }

    #[test]
    fn a_failed_probe_reopens() {
        let b = CircuitBreaker::new(1, Duration::from_millis(0));
        b.acquire().unwrap();
        b.failure();
        b.acquire().unwrap();
        b.failure();
        assert_ne!(b.state(), BreakerState::Closed);
    }
}
