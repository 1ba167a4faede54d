//! When to try a remote model call again: exponential backoff with equal jitter (half the
//! delay fixed, half random, so a crowd of clients spreads out but none retries at once), and
//! the server's own `Retry-After` (delta-seconds or an HTTP date) taking precedence.

use std::time::{Duration, SystemTime};

use rand::Rng;

/// Backoff settings of one provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// Delay before the first retry (before jitter).
    pub base: Duration,
    /// Largest delay computed from the exponent (before jitter).
    pub cap: Duration,
    /// Largest `Retry-After` honoured; a server asking for longer ends the retries.
    pub max_retry_after: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            base: Duration::from_millis(200),
            cap: Duration::from_secs(10),
            max_retry_after: Duration::from_secs(60),
        }
    }
}

impl Backoff {
    /// The delay before retry number `retry` (0 for the first): `d = min(cap, base * 2^retry)`,
    /// then `d/2 + uniform(0, d/2)`.
    pub fn delay(&self, retry: u32) -> Duration {
        let d = self
            .base
            .saturating_mul(2u32.saturating_pow(retry.min(30)))
            .min(self.cap);
        let half = d / 2;
        let unit = f64::from(wasmtime_wasi::thread_rng().next_u32()) / f64::from(u32::MAX);
        let jitter = half.mul_f64(unit);
        half + jitter
    }
}

/// Reads a `Retry-After` value: delta-seconds (`120`) or an HTTP date (`Wed, 21 Oct 2015
/// 07:28:00 GMT`, measured against `now`; a date in the past means at once).
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let v = value.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(v).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_jitter_stays_within_half_and_whole() {
        let b = Backoff {
            base: Duration::from_millis(100),
            cap: Duration::from_millis(800),
            max_retry_after: Duration::from_secs(1),
        };
        for retry in 0..6 {
            let full = Duration::from_millis(100 * (1 << retry)).min(Duration::from_millis(800));
            for _ in 0..50 {
                let d = b.delay(retry);
                assert!(
                    d >= full / 2 && d <= full,
                    "retry {retry}: {d:?} vs {full:?}"
                );
            }
        }
    }

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        let now = httpdate::parse_http_date("Wed, 21 Oct 2015 07:28:00 GMT").unwrap();
        assert_eq!(parse_retry_after("3", now), Some(Duration::from_secs(3)));
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:05 GMT", now),
            Some(Duration::from_secs(5))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:27:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-1", now), None);
    }
}
