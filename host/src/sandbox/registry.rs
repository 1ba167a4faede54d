//! Components by content: each is named by the sha256 of its bytes, validated once as a
//! `sandgraph:tool` or `sandgraph:agent` component, compiled once and kept on disk, and pre-linked (`InstancePre`)
//! so a call only has to instantiate. Cache entries carry their key and a checksum and are
//! verified before `deserialize`; a stale or corrupt entry is recompiled, never trusted.
//!
//! A component that exports the start-up hook `wizer-initialize` (the `sandgraph:tool/tool-preinit`
//! world the guest SDK builds) is pre-initialised first: the hook runs once, in an instance whose
//! every import traps, under a fuel and memory limit, and what it leaves in memory is snapshotted
//! into the component that is compiled. Every call then starts a fresh instance of that snapshot,
//! never of one another's state. A hook that calls an import (which would bake a host value such
//! as a time or random bytes into every call), traps or runs out of fuel leaves the component as it
//! was.

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::{Component, Linker};

use super::CallState;
use super::agent::bindings::AgentPre;
use super::bindings::ToolPre;
use super::outcome::{AuditRecord, CallError};

const MAGIC: &[u8; 8] = b"SGCWASM1";

/// The start-up hook a component may export (`sandgraph:tool/tool-preinit`).
pub const PREINIT_EXPORT: &str = "wizer-initialize";

/// How much a component's start-up hook may run when it is registered, in wasmtime fuel (about
/// one unit per wasm instruction): a bound that does not depend on how fast the machine is.
pub const PREINIT_FUEL: u64 = 1_000_000_000;

/// How large the hook may grow the component's memory (all of it lands in the snapshot).
pub const PREINIT_MEMORY: usize = 64 << 20;

/// Names how compiled entries were produced, in their cache key: an entry compiled before
/// snapshots existed (or under another snapshot scheme) is stale.
const PREINIT_SCHEME: &str = "preinit-1";

/// What the disk cache did for one load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheStatus {
    /// Read from a verified disk entry.
    Hit,
    /// No entry; compiled and written.
    Compiled,
    /// Entry was written for another wasmtime version or engine config; recompiled.
    RecompiledStale,
    /// Entry failed its checksum or was malformed; recompiled.
    RecompiledCorrupt,
    /// No cache directory configured; compiled in memory.
    Uncached,
}

/// Which world a component exports, pre-linked for it.
pub enum ComponentPre {
    /// `sandgraph:tool` (info, invoke).
    Tool(ToolPre<CallState>),
    /// `sandgraph:agent` (info, step).
    Agent(AgentPre<CallState>),
}

impl ComponentPre {
    /// The world's name as errors and the validator say it.
    pub fn world(&self) -> &'static str {
        match self {
            ComponentPre::Tool(_) => "sandgraph:tool",
            ComponentPre::Agent(_) => "sandgraph:agent",
        }
    }
}

/// A validated, compiled, pre-linked tool or agent component.
pub struct LoadedTool {
    /// `sha256:<hex>` of the component bytes.
    pub digest: String,
    pub component: Component,
    pub pre: ComponentPre,
    pub cache: CacheStatus,
    /// Calls start from a snapshot taken after the component's start-up hook.
    pub preinitialized: bool,
    /// What the component's `info()` said, once asked (`Sandbox::described`).
    pub(crate) described: tokio::sync::OnceCell<super::Described>,
}

impl LoadedTool {
    pub fn is_agent(&self) -> bool {
        matches!(self.pre, ComponentPre::Agent(_))
    }
}

pub struct Registry {
    engine: Engine,
    linker: Arc<Linker<CallState>>,
    cache_dir: Option<PathBuf>,
    key_prefix: String,
    loaded: Mutex<HashMap<String, Arc<LoadedTool>>>,
    /// The engine start-up hooks run on, made when the first one runs.
    hook_engine: std::sync::OnceLock<Result<Engine, String>>,
}

fn bad(reason: impl Into<String>) -> CallError {
    CallError::BadComponent {
        reason: reason.into(),
    }
}

/// Cheap checks that give a precise reason before the compiler gives a generic one.
fn check_header(bytes: &[u8]) -> Result<(), CallError> {
    if bytes.len() < 8 || &bytes[..4] != b"\0asm" {
        return Err(bad(
            "not a WebAssembly binary (no `\\0asm` header); build the tool for wasm32-wasip2",
        ));
    }
    match bytes[4..8] {
        [1, 0, 0, 0] => Err(bad(
            "this is a core WebAssembly module, not a component; build it for wasm32-wasip2 \
             (or wrap it with `wasm-tools component new`)",
        )),
        [_, _, 1, 0] => Ok(()),
        _ => Err(bad(
            "unknown WebAssembly binary version; expected a component (layer 1)",
        )),
    }
}

impl Registry {
    pub fn new(
        engine: Engine,
        linker: Arc<Linker<CallState>>,
        cache_dir: Option<PathBuf>,
        key_prefix: String,
    ) -> Self {
        Registry {
            engine,
            linker,
            cache_dir,
            key_prefix,
            loaded: Mutex::new(HashMap::new()),
            hook_engine: std::sync::OnceLock::new(),
        }
    }

    pub fn digest(bytes: &[u8]) -> String {
        format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
    }

    /// Path of the disk entry for a component digest.
    pub fn cache_path(&self, digest: &str) -> Option<PathBuf> {
        let hexd = digest.strip_prefix("sha256:").unwrap_or(digest);
        self.cache_dir
            .as_ref()
            .map(|d| d.join(format!("{hexd}.cwasm")))
    }

    fn cache_key(&self, digest: &str) -> String {
        format!("{}/{PREINIT_SCHEME}/{digest}", self.key_prefix)
    }

    /// Reads a component file and loads it.
    pub fn load_file(&self, path: &Path) -> Result<Arc<LoadedTool>, CallError> {
        let bytes =
            std::fs::read(path).map_err(|e| bad(format!("cannot read {}: {e}", path.display())))?;
        self.load(&bytes)
    }

    /// The component with `digest` (`sha256:<hex>`) if this registry loaded it already.
    pub fn loaded(&self, digest: &str) -> Option<Arc<LoadedTool>> {
        self.loaded
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(digest)
            .cloned()
    }

    /// [`Registry::load`] for bytes whose digest the caller computed already (`sha256:<hex>`,
    /// the graph catalog's): a component loaded before is found without hashing its bytes
    /// again, which starting every run would otherwise do. `digest` must be `bytes`' own.
    pub fn load_known(&self, bytes: &[u8], digest: &str) -> Result<Arc<LoadedTool>, CallError> {
        match self.loaded(digest) {
            Some(tool) => Ok(tool),
            None => self.load(bytes),
        }
    }

    /// Validates, compiles (or reads from cache) and pre-links a component. A refused
    /// component leaves an audit record too (outcome `bad_component`, its digest and why).
    pub fn load(&self, bytes: &[u8]) -> Result<Arc<LoadedTool>, CallError> {
        let started = std::time::Instant::now();
        let digest = Self::digest(bytes);
        self.load_digest(bytes, digest.clone()).inspect_err(|e| {
            refusal_audit(&digest, bytes.len(), started.elapsed(), e).emit();
        })
    }

    fn load_digest(&self, bytes: &[u8], digest: String) -> Result<Arc<LoadedTool>, CallError> {
        if let Some(t) = self
            .loaded
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&digest)
        {
            return Ok(t.clone());
        }
        check_header(bytes)?;
        let (component, cache, preinitialized) = self.compile_cached(bytes, &digest)?;
        let instance_pre = self.linker.instantiate_pre(&component).map_err(|e| {
            bad(format!(
                "component imports something the sandbox does not provide: {e:#}"
            ))
        })?;
        let pre = match ToolPre::new(instance_pre.clone()) {
            Ok(pre) => ComponentPre::Tool(pre),
            Err(tool_err) => match AgentPre::new(instance_pre) {
                Ok(pre) => ComponentPre::Agent(pre),
                Err(agent_err) => {
                    return Err(bad(format!(
                        "component does not export the sandgraph:tool world (info, invoke) \
                         nor the sandgraph:agent world (info, step): as a tool: {tool_err:#}; \
                         as an agent: {agent_err:#}"
                    )));
                }
            },
        };
        let tool = Arc::new(LoadedTool {
            digest: digest.clone(),
            component,
            pre,
            cache,
            preinitialized,
            described: tokio::sync::OnceCell::new(),
        });
        self.loaded
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(digest, tool.clone());
        Ok(tool)
    }

    fn compile_cached(
        &self,
        bytes: &[u8],
        digest: &str,
    ) -> Result<(Component, CacheStatus, bool), CallError> {
        let Some(path) = self.cache_path(digest) else {
            let (image, snapshot) = self.call_image(bytes, digest);
            let component = Component::new(&self.engine, &image)
                .map_err(|e| bad(format!("cannot compile the component: {e:#}")))?;
            return Ok((component, CacheStatus::Uncached, snapshot));
        };
        let key = self.cache_key(digest);
        let status = match std::fs::read(&path) {
            Err(_) => CacheStatus::Compiled,
            Ok(entry) => match verify_entry(&entry, &key) {
                // The payload: one byte (1: compiled from the start-up snapshot), then what
                // `precompile_component` produced.
                Entry::Valid([snapshot @ (0 | 1), compiled @ ..]) => {
                    // SAFETY: the payload is exactly what `precompile_component` produced for
                    // this key (wasmtime version, engine config and component digest), as the
                    // sha256 checksum in the header proves; it was never trusted unverified.
                    match unsafe { Component::deserialize(&self.engine, compiled) } {
                        Ok(c) => return Ok((c, CacheStatus::Hit, *snapshot == 1)),
                        Err(_) => CacheStatus::RecompiledCorrupt,
                    }
                }
                Entry::Valid(_) => CacheStatus::RecompiledCorrupt,
                Entry::Stale => CacheStatus::RecompiledStale,
                Entry::Corrupt => CacheStatus::RecompiledCorrupt,
            },
        };
        let (image, snapshot) = self.call_image(bytes, digest);
        let mut payload = vec![u8::from(snapshot)];
        payload.extend(
            self.engine
                .precompile_component(&image)
                .map_err(|e| bad(format!("cannot compile the component: {e:#}")))?,
        );
        // Best effort: a read-only cache directory only costs a recompile next time.
        let _ = write_entry(&path, &key, &payload);
        // SAFETY: the payload after its first byte was produced by this engine a moment ago.
        let component = unsafe { Component::deserialize(&self.engine, &payload[1..]) }
            .map_err(|e| bad(format!("cannot load the compiled component: {e:#}")))?;
        Ok((component, status, snapshot))
    }
}

impl Registry {
    /// What calls of `bytes` start from, and whether it is a snapshot: the snapshot after its
    /// start-up hook when it exports one and the hook runs clean, else the component as it is.
    /// (A component that is not valid fails the compile after this, with the compiler's reason.)
    fn call_image<'b>(&self, bytes: &'b [u8], digest: &str) -> (Cow<'b, [u8]>, bool) {
        if !exports_func(bytes, PREINIT_EXPORT) {
            return (Cow::Borrowed(bytes), false);
        }
        // A hostile component must not take the host down: a panic inside the snapshotting
        // library (it asserts its own output in debug builds) refuses the hook like an error.
        let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.preinit(bytes)))
            .unwrap_or_else(|_| Err(wasmtime::format_err!("the snapshotting library panicked")));
        match run {
            Ok(snapshot) => (Cow::Owned(snapshot), true),
            Err(e) => {
                tracing::warn!(
                    component = %digest,
                    error = %format!("{e:#}"),
                    "the component's start-up hook was refused; its calls start without a snapshot"
                );
                (Cow::Borrowed(bytes), false)
            }
        }
    }

    /// Runs the start-up hook of `bytes` in an instance whose imports all trap, within
    /// [`PREINIT_FUEL`] and [`PREINIT_MEMORY`], and returns the component rewritten to start
    /// from the memory and globals it left.
    fn preinit(&self, bytes: &[u8]) -> wasmtime::Result<Vec<u8>> {
        struct Hook {
            limits: wasmtime::StoreLimits,
        }
        // The hook runs once, on a copy of the component that is compiled only for that: a
        // fast, unoptimised compile on an engine of its own that counts fuel. (The snapshot is
        // compiled on the sandbox's engine afterwards, like any component.)
        let engine = self
            .hook_engine
            .get_or_init(|| {
                let mut config = wasmtime::Config::new();
                config.wasm_component_model(true);
                config.consume_fuel(true);
                config.cranelift_opt_level(wasmtime::OptLevel::None);
                config.max_wasm_stack(512 * 1024);
                Engine::new(&config).map_err(|e| format!("{e:#}"))
            })
            .as_ref()
            .map_err(|e| wasmtime::format_err!("cannot make the start-up hooks' engine: {e}"))?;
        let mut store = wasmtime::Store::new(
            engine,
            Hook {
                limits: wasmtime::StoreLimitsBuilder::new()
                    .memory_size(PREINIT_MEMORY)
                    .trap_on_grow_failure(true)
                    .build(),
            },
        );
        store.limiter(|h| &mut h.limits);
        store.set_fuel(PREINIT_FUEL)?;
        let mut wizer = wasmtime_wizer::Wizer::new();
        // Kept: dropping it leaves the component lifting a core export that is gone (invalid
        // output in wasmtime-wizer 48). The host never calls it again.
        wizer.keep_init_func(true);
        let run = wizer.run_component(&mut store, bytes, async |store, component| {
            let mut linker = Linker::new(store.engine());
            linker.define_unknown_imports_as_traps(component)?;
            linker.instantiate_async(store, component).await
        });
        // Nothing in the hook's instance waits on I/O (every import traps), so any executor
        // polls it to the end; wasmtime runs it on a fiber of its own.
        let (snapshot, _) = futures_executor::block_on(run)?;
        Ok(snapshot)
    }
}

/// Whether component `bytes` exports a function `name` at its top level. Malformed bytes say
/// no (the compiler reports them).
fn exports_func(bytes: &[u8], name: &str) -> bool {
    use wasmparser::{ComponentExternalKind, Parser, Payload};
    let mut depth = 0usize;
    for payload in Parser::new(0).parse_all(bytes) {
        let Ok(payload) = payload else { return false };
        match payload {
            Payload::ModuleSection { .. } | Payload::ComponentSection { .. } => depth += 1,
            Payload::End(_) if depth == 0 => break,
            Payload::End(_) => depth -= 1,
            Payload::ComponentExportSection(exports) if depth == 0 => {
                for export in exports.into_iter().flatten() {
                    if export.name.name == name && export.kind == ComponentExternalKind::Func {
                        return true;
                    }
                }
            }
            _ => {}
        }
    }
    false
}

/// The audit record of a component the registry refused: no call ran, so only the digest, the
/// input size and the reason are known.
pub fn refusal_audit(
    digest: &str,
    len: usize,
    took: std::time::Duration,
    e: &CallError,
) -> AuditRecord {
    AuditRecord {
        component_digest: digest.to_string(),
        duration_us: took.as_micros() as u64,
        bytes_in: len as u64,
        outcome: e.kind().into(),
        ..AuditRecord::default()
    }
}

enum Entry<'a> {
    Valid(&'a [u8]),
    Stale,
    Corrupt,
}

/// Entry layout: MAGIC, u32 key length, key, 32-byte sha256 of payload, u64 payload length, payload.
fn verify_entry<'a>(entry: &'a [u8], key: &str) -> Entry<'a> {
    let Some(rest) = entry.strip_prefix(MAGIC.as_slice()) else {
        return Entry::Corrupt;
    };
    if rest.len() < 4 {
        return Entry::Corrupt;
    }
    let klen = u32::from_le_bytes(rest[..4].try_into().unwrap_or_default()) as usize;
    let rest = &rest[4..];
    if rest.len() < klen + 40 {
        return Entry::Corrupt;
    }
    if &rest[..klen] != key.as_bytes() {
        return Entry::Stale;
    }
    let rest = &rest[klen..];
    let sum = &rest[..32];
    let plen = u64::from_le_bytes(rest[32..40].try_into().unwrap_or_default());
    let payload = &rest[40..];
    if payload.len() as u64 != plen || Sha256::digest(payload).as_slice() != sum {
        return Entry::Corrupt;
    }
    Entry::Valid(payload)
}

fn write_entry(path: &Path, key: &str, payload: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut out = Vec::with_capacity(payload.len() + key.len() + 64);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(key.len() as u32).to_le_bytes());
    out.extend_from_slice(key.as_bytes());
    out.extend_from_slice(&Sha256::digest(payload));
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    out.extend_from_slice(payload);
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, &out)?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_checks_name_the_problem() {
        let e = check_header(b"hello world").unwrap_err().to_string();
        assert!(e.contains("not a WebAssembly binary"), "{e}");
        let e = check_header(b"\0asm\x01\0\0\0").unwrap_err().to_string();
        assert!(e.contains("core WebAssembly module"), "{e}");
        assert!(check_header(b"\0asm\x0d\0\x01\0").is_ok());
    }

    #[test]
    fn a_refused_component_leaves_an_audit_record() {
        #[derive(Clone, Default)]
        struct Buf(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Buf {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let engine = Engine::default();
        let linker = Arc::new(Linker::new(&engine));
        let registry = Registry::new(engine, linker, None, "k".into());
        let buf = Buf::default();
        for (bytes, reason) in [
            (&b"not wasm at all"[..], "not a WebAssembly binary"),
            (&b"\0asm\x01\0\0\0"[..], "core WebAssembly module"),
        ] {
            buf.0.lock().unwrap().clear();
            let writer = buf.clone();
            let subscriber = tracing_subscriber::fmt()
                .json()
                .with_writer(move || writer.clone())
                .finish();
            let err = tracing::subscriber::with_default(subscriber, || {
                registry.load(bytes).err().expect("refused")
            });
            assert!(err.to_string().contains(reason), "{err}");
            let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
            let v: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
            assert_eq!(v["target"], "sandgraph::audit");
            assert_eq!(v["fields"]["outcome"], "bad_component");
            assert_eq!(
                v["fields"]["component_digest"],
                Registry::digest(bytes).as_str()
            );
            assert_eq!(v["fields"]["bytes_in"], bytes.len());
        }
    }

    #[test]
    fn entries_verify_key_and_checksum() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.cwasm");
        write_entry(&p, "k1", b"payload").unwrap();
        let e = std::fs::read(&p).unwrap();
        assert!(matches!(verify_entry(&e, "k1"), Entry::Valid(b"payload")));
        assert!(matches!(verify_entry(&e, "k2"), Entry::Stale));
        let mut flipped = e.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert!(matches!(verify_entry(&flipped, "k1"), Entry::Corrupt));
        assert!(matches!(
            verify_entry(&e[..e.len() - 1], "k1"),
            Entry::Corrupt
        ));
        assert!(matches!(verify_entry(b"garbage", "k1"), Entry::Corrupt));
    }
}
