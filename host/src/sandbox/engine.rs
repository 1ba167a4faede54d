//! The one shared wasmtime `Engine`: configuration every component is compiled against, the
//! instance allocator (pooling for speed, on-demand as a baseline), and the epoch ticker thread
//! that turns a call's time limit into an epoch deadline.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use sha2::{Digest, Sha256};
use wasmtime::{Config, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

/// How often the ticker advances the engine epoch; the CPU limit's resolution.
pub const EPOCH_TICK: Duration = Duration::from_millis(5);

/// Set to `1` to have guest code named in `perf` profiles (a perf map per process).
pub const PERF_MAP_ENV: &str = "SANDGRAPH_WASM_PERF_MAP";

/// Largest linear memory any guest may ever have, whatever operator policy says.
pub const MAX_MEMORY_BYTES: usize = 4 << 30;

/// Calls that may hold an instance at once. The pool reserves this many slots, and the
/// sandbox queues calls beyond it instead of failing them.
pub const MAX_CONCURRENT_CALLS: usize = 256;

/// Bytes of each pooled memory and table that may be reset in place between calls.
const KEEP_RESIDENT_BYTES: usize = 4 << 20;

/// Which instance allocator the engine uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Allocator {
    /// Pre-reserved slots: instantiation is a few page-table operations.
    Pooling,
    /// mmap per instance; the baseline the benchmark compares against.
    OnDemand,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot configure the wasmtime engine: {0}")]
pub struct EngineError(String);

/// The engine plus its epoch ticker; dropping it stops the ticker.
pub struct SandboxEngine {
    engine: Engine,
    stop: Arc<AtomicBool>,
    ticker: Option<JoinHandle<()>>,
}

impl SandboxEngine {
    pub fn new(allocator: Allocator) -> Result<Self, EngineError> {
        let mut config = Config::new();
        config.wasm_component_model(true);
        config.epoch_interruption(true);
        config.max_wasm_stack(512 * 1024);
        config.async_stack_size(2 << 20);
        // `perf` can name guest functions when wasmtime writes /tmp/perf-<pid>.map for them.
        if std::env::var_os(PERF_MAP_ENV).is_some_and(|v| v == "1") {
            config.profiler(wasmtime::ProfilingStrategy::PerfMap);
        }
        if allocator == Allocator::Pooling {
            let mut pool = PoolingAllocationConfig::new();
            pool.total_component_instances(MAX_CONCURRENT_CALLS as u32)
                .total_core_instances(1024)
                .total_memories(512)
                .total_tables(1024)
                .total_stacks(MAX_CONCURRENT_CALLS as u32)
                .max_core_instances_per_component(32)
                .max_memories_per_component(8)
                .max_tables_per_component(32)
                .max_memory_size(MAX_MEMORY_BYTES)
                // Between calls, reset only the pages a guest dirtied (found with the
                // PAGEMAP_SCAN ioctl where the kernel has it) with memset, instead of an
                // madvise per slot, whose TLB shootdowns dominate a small call.
                .pagemap_scan(Enabled::Auto)
                .linear_memory_keep_resident(KEEP_RESIDENT_BYTES)
                .table_keep_resident(KEEP_RESIDENT_BYTES)
                .decommit_batch_size(16);
            config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        }
        let engine = Engine::new(&config).map_err(|e| EngineError(format!("{e:#}")))?;
        let stop = Arc::new(AtomicBool::new(false));
        let ticker = {
            let engine = engine.weak();
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("sandgraph-epoch".into())
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        std::thread::sleep(EPOCH_TICK);
                        match engine.upgrade() {
                            Some(e) => e.increment_epoch(),
                            None => break,
                        }
                    }
                })
                .map_err(|e| EngineError(format!("cannot start the epoch thread: {e}")))?
        };
        Ok(SandboxEngine {
            engine,
            stop,
            ticker: Some(ticker),
        })
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Epoch ticks that cover `limit` (rounded up, at least one).
    pub fn ticks_for(limit: Duration) -> u64 {
        (limit.as_micros().div_ceil(EPOCH_TICK.as_micros()) as u64).max(1)
    }

    /// Identifies everything that makes compiled code valid for this engine: the wasmtime
    /// version and the engine's compatibility hash (target, tunables, features).
    pub fn cache_key_prefix(&self) -> String {
        struct ShaHasher(Sha256);
        impl std::hash::Hasher for ShaHasher {
            fn finish(&self) -> u64 {
                0
            }
            fn write(&mut self, bytes: &[u8]) {
                self.0.update(bytes);
            }
        }
        let mut h = ShaHasher(Sha256::new());
        std::hash::Hash::hash(&self.engine.precompile_compatibility_hash(), &mut h);
        format!(
            "wasmtime-{}-{}",
            wasmtime_version(),
            hex::encode(&h.0.finalize()[..16])
        )
    }
}

/// The wasmtime version compiled code depends on (pinned in the workspace manifest).
pub fn wasmtime_version() -> &'static str {
    "48.0.8"
}

impl Drop for SandboxEngine {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.ticker.take() {
            let _ = t.join();
        }
    }
}
