//! WASI clocks and randomness for a call that runs under the journal: every value the guest reads
//! goes through the step's `StepCrossings`, so a resumed or replayed step sees the same time and
//! the same random bytes. Without a journal the WASI defaults stay in place.

use std::convert::Infallible;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rand::{Rng, TryRng};
use wasmtime_wasi::WasiCtxBuilder;
use wasmtime_wasi::clocks::{HostMonotonicClock, HostWallClock};

use crate::journal::crossings::StepCrossings;

/// Installs journaled clocks and random sources; leaves the defaults when `crossings` is `None`.
pub fn configure(builder: &mut WasiCtxBuilder, crossings: Option<&StepCrossings>) {
    let Some(c) = crossings else { return };
    builder.wall_clock(WallClock(c.clone()));
    builder.monotonic_clock(MonotonicClock {
        crossings: c.clone(),
        start: Instant::now(),
    });
    builder.secure_random(JournaledRandom::new(c));
    builder.insecure_random(JournaledRandom::new(c));
    let mut seed = [0u8; 16];
    c.random(&mut seed, |b| wasmtime_wasi::thread_rng().fill_bytes(b));
    builder.insecure_random_seed(u128::from_le_bytes(seed));
}

struct WallClock(StepCrossings);

impl HostWallClock for WallClock {
    fn resolution(&self) -> Duration {
        Duration::from_nanos(1)
    }

    fn now(&self) -> Duration {
        self.0.wall_clock(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
        })
    }
}

struct MonotonicClock {
    crossings: StepCrossings,
    start: Instant,
}

impl HostMonotonicClock for MonotonicClock {
    fn resolution(&self) -> u64 {
        1
    }

    fn now(&self) -> u64 {
        self.crossings
            .monotonic_clock(|| self.start.elapsed().as_nanos() as u64)
    }
}

/// Serves recorded bytes, or draws live ones from a per-store generator seeded like WASI's.
struct JournaledRandom {
    crossings: StepCrossings,
    live: Box<dyn Rng + Send>,
}

impl JournaledRandom {
    fn new(crossings: &StepCrossings) -> Self {
        JournaledRandom {
            crossings: crossings.clone(),
            live: wasmtime_wasi::thread_rng(),
        }
    }

    fn fill(&mut self, dst: &mut [u8]) {
        let live = &mut self.live;
        self.crossings.random(dst, |b| live.fill_bytes(b));
    }
}

impl TryRng for JournaledRandom {
    type Error = Infallible;

    fn try_next_u32(&mut self) -> Result<u32, Infallible> {
        let mut b = [0u8; 4];
        self.fill(&mut b);
        Ok(u32::from_le_bytes(b))
    }

    fn try_next_u64(&mut self) -> Result<u64, Infallible> {
        let mut b = [0u8; 8];
        self.fill(&mut b);
        Ok(u64::from_le_bytes(b))
    }

    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Infallible> {
        self.fill(dst);
        Ok(())
    }
}
