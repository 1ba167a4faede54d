//! Components by content: each is named by the sha256 of its bytes, validated once as a
//! `sandgraph:tool` or `sandgraph:agent` component, compiled once and kept on disk, and pre-linked (`InstancePre`)
//! so a call only has to instantiate. Cache entries carry their key and a checksum and are
//! verified before `deserialize`; a stale or corrupt entry is recompiled, never trusted.

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
        format!("{}/{digest}", self.key_prefix)
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
        let (component, cache) = self.compile_cached(bytes, &digest)?;
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
    ) -> Result<(Component, CacheStatus), CallError> {
        let compile = || {
            Component::new(&self.engine, bytes)
                .map_err(|e| bad(format!("cannot compile the component: {e:#}")))
        };
        let Some(path) = self.cache_path(digest) else {
            return Ok((compile()?, CacheStatus::Uncached));
        };
        let key = self.cache_key(digest);
        let status = match std::fs::read(&path) {
            Err(_) => CacheStatus::Compiled,
            Ok(entry) => match verify_entry(&entry, &key) {
                Entry::Valid(payload) => {
                    // SAFETY: the payload is exactly what `precompile_component` produced for
                    // this key (wasmtime version, engine config and component digest), as the
                    // sha256 checksum in the header proves; it was never trusted unverified.
                    match unsafe { Component::deserialize(&self.engine, payload) } {
                        Ok(c) => return Ok((c, CacheStatus::Hit)),
                        Err(_) => CacheStatus::RecompiledCorrupt,
                    }
                }
                Entry::Stale => CacheStatus::RecompiledStale,
                Entry::Corrupt => CacheStatus::RecompiledCorrupt,
            },
        };
        let serialized = self
            .engine
            .precompile_component(bytes)
            .map_err(|e| bad(format!("cannot compile the component: {e:#}")))?;
        // Best effort: a read-only cache directory only costs a recompile next time.
        let _ = write_entry(&path, &key, &serialized);
        // SAFETY: `serialized` was produced by this engine a moment ago.
        let component = unsafe { Component::deserialize(&self.engine, &serialized) }
            .map_err(|e| bad(format!("cannot load the compiled component: {e:#}")))?;
        Ok((component, status))
    }
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
