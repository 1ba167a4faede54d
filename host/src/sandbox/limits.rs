//! Per-call resource caps: memory (every linear memory and table of the component plus the
//! host-side buffers the call owns, through `ResourceLimiter` and a scan of the resource table),
//! CPU time (epoch deadline, see `engine`), output size, handles, open files, connections,
//! workspace writes, files created and random bytes (`CallBudget`), and the guest's
//! stdout/stderr, captured with a cap into the call's log. A guest hitting any cap gets a typed
//! outcome, never a host panic, a hang or an OOM.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::io::AsyncWrite;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi_http::p2::types::{
    HostIncomingResponse, HostOutgoingRequest, HostOutgoingResponse,
};
use wasmtime_wasi_http::{FieldMap, WasiHttpHooks};

use super::manifest::Limits;
use super::outcome::{LimitedResource, ResourceUsage};

/// Bytes of guest stdout (and, separately, stderr) kept per call.
pub const LOG_CAP: usize = 64 * 1024;

/// Bytes one table element costs the host (a pointer-sized reference).
pub const TABLE_ELEMENT_BYTES: usize = 8;

/// Largest body chunk a guest may hand the host at once for an outgoing request or response.
pub const BODY_CHUNK_BYTES: usize = 64 * 1024;

/// Chunks the host buffers for an outgoing body the peer has not taken yet (one more slot is
/// always kept free by wasmtime-wasi-http).
pub const BODY_BUFFER_CHUNKS: usize = 1;

/// Host memory an outgoing body with data not yet sent can hold.
pub const BODY_RESERVE_BYTES: u64 = ((BODY_BUFFER_CHUNKS + 1) * BODY_CHUNK_BYTES) as u64;

/// Largest header set (names plus values) the guest may build; wasmtime-wasi-http's
/// `field_size_limit`.
pub const FIELD_SIZE_LIMIT: usize = 64 * 1024;

/// What the host charges for a resource-table entry it cannot size more precisely.
pub const HANDLE_OVERHEAD_BYTES: u64 = 256;

/// Per-entry cost wasmtime's `HeaderMap` adds to each header beyond its name and value.
const HEADER_OVERHEAD_BYTES: u64 = 32;

/// Deepest nesting of arrays and objects a tool's output may have: one limit, checked where the
/// output leaves the sandbox, below serde_json's own recursion limit (128) that the graph
/// engine and the API parse with, so an output `tool call` accepts is one a graph accepts.
pub const MAX_OUTPUT_DEPTH: u32 = super::MAX_JSON_DEPTH as u32;

/// The deepest nesting of arrays and objects in a JSON text, without recursion (strings and
/// their escapes are skipped). Meant for text already known to be JSON.
pub fn json_depth(text: &str) -> u32 {
    let (mut depth, mut deepest, mut in_string, mut escaped) = (0u32, 0u32, false, false);
    for b in text.bytes() {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

/// Caps the memory of one call and remembers its peak: the sum of all linear memories, all
/// tables, and the host-side bytes the last resource-table scan found.
#[derive(Debug)]
pub struct MemoryLimiter {
    limit: u64,
    linear: u64,
    tables: u64,
    host: u64,
    peak: u64,
    linear_peak: u64,
    tables_peak: u64,
    host_peak: u64,
    exceeded: bool,
}

impl MemoryLimiter {
    pub fn new(limit_bytes: u64) -> Self {
        MemoryLimiter {
            limit: limit_bytes,
            linear: 0,
            tables: 0,
            host: 0,
            peak: 0,
            linear_peak: 0,
            tables_peak: 0,
            host_peak: 0,
            exceeded: false,
        }
    }

    /// Most bytes held at once: memories, tables and host buffers together.
    pub fn peak(&self) -> u64 {
        self.peak
    }

    pub fn exceeded(&self) -> bool {
        self.exceeded
    }

    /// Bytes held now.
    pub fn total(&self) -> u64 {
        self.linear + self.tables + self.host
    }

    /// Fills the memory figures of `usage`.
    pub fn report(&self, usage: &mut ResourceUsage) {
        usage.linear_memory_bytes = self.linear_peak;
        usage.table_bytes = self.tables_peak;
        usage.host_bytes = self.host_peak;
    }

    /// Accounts a new total of host-side bytes; `false` when it puts the call over its limit.
    /// These bytes were already held (the scan found them), so the peak records them even
    /// when they are over the limit: the audit says what the call really held.
    pub fn set_host_bytes(&mut self, bytes: u64) -> bool {
        self.host = bytes;
        self.host_peak = self.host_peak.max(bytes);
        self.peak = self.peak.max(self.total());
        self.admit()
    }

    fn admit(&mut self) -> bool {
        let total = self.total();
        if total > self.limit {
            self.exceeded = true;
            return false;
        }
        self.peak = self.peak.max(total);
        true
    }

    /// Replaces one memory's (or table's) size `current` by `desired` in `counter`, unless the
    /// whole call would then be over the limit.
    fn grow(&mut self, which: Which, current: usize, desired: usize) -> bool {
        let delta = (desired as u64).saturating_sub(current as u64);
        let counter = match which {
            Which::Linear => &mut self.linear,
            Which::Tables => &mut self.tables,
        };
        *counter += delta;
        if !self.admit() {
            let counter = match which {
                Which::Linear => &mut self.linear,
                Which::Tables => &mut self.tables,
            };
            *counter -= delta;
            return false;
        }
        self.linear_peak = self.linear_peak.max(self.linear);
        self.tables_peak = self.tables_peak.max(self.tables);
        true
    }
}

#[derive(Clone, Copy)]
enum Which {
    Linear,
    Tables,
}

impl wasmtime::ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        // Called for every memory of every core instance, at creation (current = 0) and on
        // each `memory.grow`: the running sum is the call's linear memory.
        Ok(self.grow(Which::Linear, current, desired))
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(self.grow(
            Which::Tables,
            current.saturating_mul(TABLE_ELEMENT_BYTES),
            desired.saturating_mul(TABLE_ELEMENT_BYTES),
        ))
    }
}

/// Host-side bytes the entries of a call's resource table hold: header sets at their size,
/// requests and responses with their headers and the body buffer the host keeps for them, and
/// a fixed overhead for every other handle. Also returns the number of entries.
pub fn host_bytes(table: &mut ResourceTable) -> (u64, u64) {
    fn fields(f: &FieldMap) -> u64 {
        f.iter()
            .map(|(n, v)| n.as_str().len() as u64 + v.len() as u64 + HEADER_OVERHEAD_BYTES)
            .sum()
    }
    let (mut bytes, mut entries) = (0u64, 0u64);
    for entry in table.iter_mut() {
        entries += 1;
        bytes += HANDLE_OVERHEAD_BYTES;
        if let Some(f) = entry.downcast_ref::<FieldMap>() {
            bytes += fields(f);
        } else if let Some(r) = entry.downcast_ref::<HostOutgoingRequest>() {
            bytes += fields(&r.headers)
                + if r.body.is_some() {
                    BODY_RESERVE_BYTES
                } else {
                    0
                };
        } else if let Some(r) = entry.downcast_ref::<HostOutgoingResponse>() {
            bytes += fields(&r.headers)
                + if r.body.is_some() {
                    BODY_RESERVE_BYTES
                } else {
                    0
                };
        } else if let Some(r) = entry.downcast_ref::<HostIncomingResponse>() {
            bytes += fields(&r.headers);
        }
    }
    (bytes, entries)
}

/// A cap the call ran into; the host call that found it fails with this error (a trap), and
/// the call's outcome is `resource_limit_exceeded`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{resource:?} limit of {limit} reached (limits.{})", resource.manifest_key())]
pub struct LimitExceeded {
    pub resource: LimitedResource,
    pub limit: u64,
}

/// The countable resources of one call, shared by every host capability that hands them out.
/// Cheap to clone (one `Arc`).
#[derive(Clone, Debug)]
pub struct CallBudget {
    inner: Arc<BudgetInner>,
}

#[derive(Debug)]
struct BudgetInner {
    limits: Limits,
    open_files: AtomicU64,
    open_files_peak: AtomicU64,
    connections: AtomicU64,
    written: AtomicU64,
    created: AtomicU64,
    random: AtomicU64,
    handles_peak: AtomicU64,
    hit: Mutex<Option<LimitExceeded>>,
}

impl CallBudget {
    pub fn new(limits: &Limits) -> Self {
        CallBudget {
            inner: Arc::new(BudgetInner {
                limits: *limits,
                open_files: AtomicU64::new(0),
                open_files_peak: AtomicU64::new(0),
                connections: AtomicU64::new(0),
                written: AtomicU64::new(0),
                created: AtomicU64::new(0),
                random: AtomicU64::new(0),
                handles_peak: AtomicU64::new(0),
                hit: Mutex::new(None),
            }),
        }
    }

    fn limit_of(&self, resource: LimitedResource) -> u64 {
        let l = &self.inner.limits;
        match resource {
            LimitedResource::Handles => l.max_handles,
            LimitedResource::OpenFiles => l.max_open_files,
            LimitedResource::Connections => l.max_connections,
            LimitedResource::WorkspaceBytes => l.max_write,
            LimitedResource::FilesCreated => l.max_files_created,
            LimitedResource::RandomBytes => l.max_random,
        }
    }

    fn counter(&self, resource: LimitedResource) -> &AtomicU64 {
        let i = &self.inner;
        match resource {
            LimitedResource::Handles => &i.handles_peak,
            LimitedResource::OpenFiles => &i.open_files,
            LimitedResource::Connections => &i.connections,
            LimitedResource::WorkspaceBytes => &i.written,
            LimitedResource::FilesCreated => &i.created,
            LimitedResource::RandomBytes => &i.random,
        }
    }

    /// Records that the call ran into `resource`'s cap and returns the error to fail with.
    pub fn exceeded(&self, resource: LimitedResource) -> LimitExceeded {
        let e = LimitExceeded {
            resource,
            limit: self.limit_of(resource),
        };
        let mut hit = self.inner.hit.lock().unwrap_or_else(|p| p.into_inner());
        hit.get_or_insert(e);
        e
    }

    /// Takes `n` units of `resource`, or records the cap and fails without taking any.
    pub fn take(&self, resource: LimitedResource, n: u64) -> Result<(), LimitExceeded> {
        let limit = self.limit_of(resource);
        let counter = self.counter(resource);
        let mut now = counter.load(Ordering::Relaxed);
        loop {
            let next = now.saturating_add(n);
            if next > limit {
                return Err(self.exceeded(resource));
            }
            match counter.compare_exchange_weak(now, next, Ordering::AcqRel, Ordering::Relaxed) {
                Ok(_) => break,
                Err(actual) => now = actual,
            }
        }
        if resource == LimitedResource::OpenFiles {
            self.inner
                .open_files_peak
                .fetch_max(now + n, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Gives back units of a resource held at once (open files).
    pub fn release(&self, resource: LimitedResource, n: u64) {
        let _ = self
            .counter(resource)
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |v| {
                Some(v.saturating_sub(n))
            });
    }

    /// Opens one outgoing connection against `limits.max_connections`. For the egress module:
    /// call it once per connection before connecting.
    pub fn open_connection(&self) -> Result<(), LimitExceeded> {
        self.take(LimitedResource::Connections, 1)
    }

    /// Notes the number of handles alive now (for the peak).
    pub fn note_handles(&self, n: u64) {
        self.inner.handles_peak.fetch_max(n, Ordering::Relaxed);
    }

    /// The first cap the call ran into, if any.
    pub fn hit(&self) -> Option<LimitExceeded> {
        *self.inner.hit.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Fills the counted figures of `usage`.
    pub fn report(&self, usage: &mut ResourceUsage) {
        let i = &self.inner;
        usage.handles_peak = i.handles_peak.load(Ordering::Relaxed);
        usage.open_files_peak = i.open_files_peak.load(Ordering::Relaxed);
        usage.connections = i.connections.load(Ordering::Relaxed);
        usage.workspace_bytes_written = i.written.load(Ordering::Relaxed);
        usage.files_created = i.created.load(Ordering::Relaxed);
        usage.random_bytes = i.random.load(Ordering::Relaxed);
    }
}

/// The call's `wasi:http` hooks with the host-side buffering bounded (small body chunks, one
/// buffered chunk) and every outgoing request counted against `limits.max_connections` (each
/// request opens its own connection). Everything else is the inner hooks' decision.
pub struct LimitedHooks<H> {
    pub inner: H,
    pub budget: CallBudget,
}

type HttpIoFuture =
    Box<dyn std::future::Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>;

impl<H: WasiHttpHooks> WasiHttpHooks for LimitedHooks<H> {
    fn is_forbidden_header(&mut self, name: &http::HeaderName) -> bool {
        self.inner.is_forbidden_header(name)
    }
    fn forbidden_header_filter(&mut self) -> wasmtime_wasi_http::ForbiddenHeaderFilter {
        self.inner.forbidden_header_filter()
    }
    fn is_supported_scheme(&mut self, scheme: &http::uri::Scheme) -> bool {
        self.inner.is_supported_scheme(scheme)
    }
    fn set_host_header(&mut self) -> bool {
        self.inner.set_host_header()
    }
    fn default_scheme(&mut self) -> Option<http::uri::Scheme> {
        self.inner.default_scheme()
    }
    fn send_request(
        &mut self,
        request: http::Request<wasmtime_wasi_http::WasiBody>,
        options: Option<wasmtime_wasi_http::RequestOptions>,
        fut: HttpIoFuture,
    ) -> Box<
        dyn std::future::Future<
                Output = Result<
                    (http::Response<wasmtime_wasi_http::WasiBody>, HttpIoFuture),
                    wasmtime_wasi_http::Error,
                >,
            > + Send,
    > {
        if self.budget.open_connection().is_err() {
            // The guest sees the standard error; the call's outcome names the cap.
            return Box::new(async { Err(wasmtime_wasi_http::Error::ConnectionLimitReached) });
        }
        self.inner.send_request(request, options, fut)
    }
    fn p2_outgoing_body_buffer_chunks(&mut self) -> usize {
        BODY_BUFFER_CHUNKS
    }
    fn p2_outgoing_body_chunk_size(&mut self) -> usize {
        BODY_CHUNK_BYTES.min(self.inner.p2_outgoing_body_chunk_size())
    }
    fn p2_error_from_hyper(
        &mut self,
        err: &hyper::Error,
    ) -> wasmtime_wasi_http::p2::bindings::http::types::ErrorCode {
        self.inner.p2_error_from_hyper(err)
    }
    fn p2_error_from_connect(
        &mut self,
        err: &std::io::Error,
    ) -> wasmtime_wasi_http::p2::bindings::http::types::ErrorCode {
        self.inner.p2_error_from_connect(err)
    }
    fn p2_error_from_tls(
        &mut self,
        err: &std::io::Error,
    ) -> wasmtime_wasi_http::p2::bindings::http::types::ErrorCode {
        self.inner.p2_error_from_tls(err)
    }
}

/// `HasData` for `wasi:random` served under the call's `limits.max_random`: a guest asking for
/// more random bytes than its budget traps at once (the host never generates them), instead of
/// spending seconds of host CPU no deadline can interrupt.
pub struct BudgetedRandom;

impl wasmtime::component::HasData for BudgetedRandom {
    type Data<'a> = RandomView<'a>;
}

/// The WASI random context plus the call's budget.
pub struct RandomView<'a> {
    pub ctx: &'a mut wasmtime_wasi::random::WasiRandomCtx,
    pub budget: &'a CallBudget,
}

impl RandomView<'_> {
    fn take(&self, n: u64) -> wasmtime::Result<()> {
        self.budget
            .take(LimitedResource::RandomBytes, n)
            .map_err(wasmtime::Error::from)
    }
}

impl wasmtime_wasi::p2::bindings::random::random::Host for RandomView<'_> {
    fn get_random_bytes(&mut self, len: u64) -> wasmtime::Result<Vec<u8>> {
        self.take(len)?;
        wasmtime_wasi::p2::bindings::random::random::Host::get_random_bytes(self.ctx, len)
    }

    fn get_random_u64(&mut self) -> wasmtime::Result<u64> {
        self.take(8)?;
        wasmtime_wasi::p2::bindings::random::random::Host::get_random_u64(self.ctx)
    }
}

impl wasmtime_wasi::p2::bindings::random::insecure::Host for RandomView<'_> {
    fn get_insecure_random_bytes(&mut self, len: u64) -> wasmtime::Result<Vec<u8>> {
        self.take(len)?;
        wasmtime_wasi::p2::bindings::random::insecure::Host::get_insecure_random_bytes(
            self.ctx, len,
        )
    }

    fn get_insecure_random_u64(&mut self) -> wasmtime::Result<u64> {
        self.take(8)?;
        wasmtime_wasi::p2::bindings::random::insecure::Host::get_insecure_random_u64(self.ctx)
    }
}

/// A guest output stream that keeps the first `cap` bytes and silently drops the rest,
/// so a chatty guest can neither fail on a full pipe nor grow host memory.
#[derive(Clone)]
pub struct CappedLog {
    inner: Arc<Mutex<LogBuf>>,
}

struct LogBuf {
    bytes: Vec<u8>,
    cap: usize,
    dropped: u64,
}

impl CappedLog {
    pub fn new(cap: usize) -> Self {
        CappedLog {
            inner: Arc::new(Mutex::new(LogBuf {
                bytes: Vec::new(),
                cap,
                dropped: 0,
            })),
        }
    }

    /// The captured text, with a marker when bytes were dropped.
    pub fn text(&self) -> String {
        let buf = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let mut s = String::from_utf8_lossy(&buf.bytes).into_owned();
        if buf.dropped > 0 {
            s.push_str(&format!(
                "\n[sandgraph: {} more bytes dropped]",
                buf.dropped
            ));
        }
        s
    }

    fn append(&self, data: &[u8]) {
        let mut buf = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let room = buf.cap.saturating_sub(buf.bytes.len());
        let take = room.min(data.len());
        buf.bytes.extend_from_slice(&data[..take]);
        buf.dropped += (data.len() - take) as u64;
    }
}

impl IsTerminal for CappedLog {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for CappedLog {
    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

impl AsyncWrite for CappedLog {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.append(data);
        Poll::Ready(Ok(data.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasmtime::ResourceLimiter;

    #[test]
    fn log_keeps_the_head_and_counts_the_rest() {
        let log = CappedLog::new(4);
        log.append(b"abcdef");
        log.append(b"gh");
        assert_eq!(log.text(), "abcd\n[sandgraph: 4 more bytes dropped]");
    }

    #[test]
    fn memory_limiter_refuses_growth_past_the_limit() {
        let mut l = MemoryLimiter::new(1 << 20);
        assert!(l.memory_growing(0, 65536, None).unwrap());
        assert!(!l.exceeded());
        assert!(!l.memory_growing(65536, (1 << 20) + 65536, None).unwrap());
        assert!(l.exceeded());
        assert_eq!(l.peak(), 65536);
    }

    #[test]
    fn memory_limit_covers_the_sum_of_all_memories_tables_and_host_bytes() {
        let mut l = MemoryLimiter::new(1 << 20);
        // Eight memories of 120 KiB each fit (960 KiB); a ninth does not, though each alone
        // is far under the limit.
        for _ in 0..8 {
            assert!(l.memory_growing(0, 120 << 10, None).unwrap());
        }
        assert!(!l.exceeded());
        assert!(!l.memory_growing(0, 120 << 10, None).unwrap());
        assert!(l.exceeded());
        assert_eq!(l.peak(), 960 << 10);
        // Tables count at pointer size per element.
        let mut l = MemoryLimiter::new(1 << 20);
        assert!(l.memory_growing(0, 512 << 10, None).unwrap());
        assert!(l.table_growing(0, 1000, None).unwrap());
        assert_eq!(l.total(), (512 << 10) + 1000 * TABLE_ELEMENT_BYTES as u64);
        // Host bytes close the gap.
        assert!(!l.set_host_bytes(600 << 10));
        assert!(l.exceeded());
        let mut usage = ResourceUsage::default();
        l.report(&mut usage);
        assert_eq!(usage.linear_memory_bytes, 512 << 10);
        assert_eq!(usage.table_bytes, 8000);
        assert_eq!(usage.host_bytes, 600 << 10);
    }

    #[test]
    fn json_depth_counts_nesting_outside_strings() {
        assert_eq!(json_depth("1"), 0);
        assert_eq!(json_depth(r#"{"a":[1,{"b":[]}]}"#), 4);
        assert_eq!(json_depth(r#"["[[[[", "\\\"{{{"]"#), 1);
        let deep = format!("{}{}", "[".repeat(5000), "]".repeat(5000));
        assert_eq!(json_depth(&deep), 5000);
        // What passes the check parses with serde_json's default limit.
        let ok = format!(
            "{}{}",
            "[".repeat(MAX_OUTPUT_DEPTH as usize),
            "]".repeat(MAX_OUTPUT_DEPTH as usize)
        );
        assert!(serde_json::from_str::<serde_json::Value>(&ok).is_ok());
    }

    #[test]
    fn budget_counts_and_records_the_first_cap_hit() {
        let limits = Limits {
            max_write: 100,
            max_open_files: 2,
            ..Limits::default()
        };
        let b = CallBudget::new(&limits);
        b.take(LimitedResource::WorkspaceBytes, 60).unwrap();
        assert_eq!(
            b.take(LimitedResource::WorkspaceBytes, 41),
            Err(LimitExceeded {
                resource: LimitedResource::WorkspaceBytes,
                limit: 100
            })
        );
        b.take(LimitedResource::WorkspaceBytes, 40).unwrap();
        b.take(LimitedResource::OpenFiles, 1).unwrap();
        b.take(LimitedResource::OpenFiles, 1).unwrap();
        assert!(b.take(LimitedResource::OpenFiles, 1).is_err());
        b.release(LimitedResource::OpenFiles, 1);
        b.take(LimitedResource::OpenFiles, 1).unwrap();
        assert_eq!(
            b.hit().map(|h| h.resource),
            Some(LimitedResource::WorkspaceBytes)
        );
        let mut u = ResourceUsage::default();
        b.report(&mut u);
        assert_eq!(u.workspace_bytes_written, 100);
        assert_eq!(u.open_files_peak, 2);
    }
}
