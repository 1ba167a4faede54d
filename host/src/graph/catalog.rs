//! The components a graph may name: each tool's capability manifest and component bytes, found
//! on disk (a tools folder of manifests and a folder of built `.wasm` files) or added directly.
//! A run pins the entries it uses into the journal, so the catalog may change under it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::sandbox::Sandbox;
use crate::sandbox::manifest::Manifest;
use crate::sandbox::registry::Registry;

/// One component: its manifest (parsed and as written) and its bytes.
#[derive(Debug, Clone)]
pub struct CatalogEntry {
    pub manifest: Manifest,
    pub manifest_text: String,
    pub wasm: Vec<u8>,
    /// `sha256:<hex>` of `wasm`.
    pub digest: String,
    /// The output JSON Schema the component's `info()` declares, once asked
    /// ([`Catalog::describe`]); the type checker reads `nodes.<id>` through it. `None`: not
    /// asked yet, or the component declares nothing usable (outputs are then `dyn`).
    pub output_schema: Option<Arc<serde_json::Value>>,
}

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("{path}: {reason}")]
    Io { path: String, reason: String },
    #[error("{0}")]
    Manifest(String),
    #[error(
        "component '{name}': no {wanted} in {dir}; build the tools first (`cargo guests`) or pass --components <dir>"
    )]
    MissingWasm {
        name: String,
        wanted: String,
        dir: String,
    },
    #[error("component '{name}' is declared twice ({first} and {second})")]
    Duplicate {
        name: String,
        first: String,
        second: String,
    },
}

#[derive(Debug, Clone, Default)]
pub struct Catalog {
    entries: BTreeMap<String, CatalogEntry>,
}

impl Catalog {
    /// Every `<dir>/*/*.sandgraph.yaml` manifest of every folder in `dirs` (tools/ and agents/
    /// as shipped) with its component from `wasm_dir`, named `<name>.wasm` or, as cargo builds
    /// them, `tool_<name with _ for ->.wasm` (`agent_<name>.wasm` for agents). A name declared
    /// twice, in one folder or across them, is an error naming both manifests.
    pub fn from_dirs(dirs: &[PathBuf], wasm_dir: &Path) -> Result<Catalog, CatalogError> {
        let mut catalog = Catalog::default();
        let mut seen: BTreeMap<String, PathBuf> = BTreeMap::new();
        let mut manifests = Vec::new();
        for dir in dirs {
            manifests.extend(manifest_files(dir)?);
        }
        for manifest_path in manifests {
            let text = std::fs::read_to_string(&manifest_path).map_err(|e| CatalogError::Io {
                path: manifest_path.display().to_string(),
                reason: e.to_string(),
            })?;
            let manifest = Manifest::parse(&manifest_path.display().to_string(), &text)
                .map_err(|e| CatalogError::Manifest(e.to_string()))?;
            let name = manifest.metadata.name.clone();
            if let Some(first) = seen.get(&name) {
                return Err(CatalogError::Duplicate {
                    name,
                    first: first.display().to_string(),
                    second: manifest_path.display().to_string(),
                });
            }
            seen.insert(name.clone(), manifest_path.clone());
            let candidates = [
                wasm_dir.join(format!("{name}.wasm")),
                wasm_dir.join(format!("tool_{}.wasm", name.replace('-', "_"))),
                // Agents build as `agent-<name>` packages (agents/).
                wasm_dir.join(format!("agent_{}.wasm", name.replace('-', "_"))),
            ];
            let Some(path) = candidates.iter().find(|p| p.is_file()) else {
                return Err(CatalogError::MissingWasm {
                    wanted: format!(
                        "{} or {}",
                        file_name(&candidates[0]),
                        file_name(&candidates[1])
                    ),
                    name,
                    dir: wasm_dir.display().to_string(),
                });
            };
            let wasm = std::fs::read(path).map_err(|e| CatalogError::Io {
                path: path.display().to_string(),
                reason: e.to_string(),
            })?;
            catalog.insert(manifest, text, wasm);
        }
        Ok(catalog)
    }

    /// Adds (or replaces) a component under its manifest's name; its output schema is not
    /// known until [`Catalog::describe`] asks it.
    pub fn insert(&mut self, manifest: Manifest, manifest_text: String, wasm: Vec<u8>) {
        self.insert_described(manifest, manifest_text, wasm, None);
    }

    /// [`Catalog::insert`] with the output schema the component already declared
    /// ([`Sandbox::described`]).
    pub fn insert_described(
        &mut self,
        manifest: Manifest,
        manifest_text: String,
        wasm: Vec<u8>,
        output_schema: Option<Arc<serde_json::Value>>,
    ) {
        let digest = Registry::digest(&wasm);
        self.entries.insert(
            manifest.metadata.name.clone(),
            CatalogEntry {
                manifest,
                manifest_text,
                wasm,
                digest,
                output_schema,
            },
        );
    }

    /// Asks every component (of `only`, when given) whose output schema is not known yet for
    /// its `info()` ([`Sandbox::described`], asked once per loaded component) and keeps the
    /// output schema it declares. A component that does not load or answer keeps an unknown schema and is named
    /// in the result with the reason (a run of it would fail with that reason anyway).
    pub async fn describe(
        &mut self,
        sandbox: &Arc<Sandbox>,
        only: Option<&std::collections::BTreeSet<String>>,
    ) -> Vec<(String, String)> {
        let mut failed = Vec::new();
        for (name, entry) in self.entries.iter_mut() {
            if entry.output_schema.is_some() || only.is_some_and(|o| !o.contains(name)) {
                continue;
            }
            let (s, wasm) = (sandbox.clone(), entry.wasm.clone());
            let loaded = match tokio::task::spawn_blocking(move || s.registry().load(&wasm)).await {
                Ok(Ok(tool)) => tool,
                Ok(Err(e)) => {
                    failed.push((name.clone(), e.to_string()));
                    continue;
                }
                Err(e) => {
                    failed.push((name.clone(), e.to_string()));
                    continue;
                }
            };
            match sandbox.described(&loaded).await {
                Ok(d) => entry.output_schema = d.output.as_ref().map(|o| o.schema.clone()),
                Err(e) => failed.push((name.clone(), format!("info() failed: {e}"))),
            }
        }
        failed
    }

    /// Component name -> declared output JSON Schema, for the components whose schema is known.
    pub fn output_schemas(&self) -> BTreeMap<String, serde_json::Value> {
        self.entries
            .iter()
            .filter_map(|(n, e)| Some((n.clone(), e.output_schema.as_deref()?.clone())))
            .collect()
    }

    pub fn get(&self, name: &str) -> Option<&CatalogEntry> {
        self.entries.get(name)
    }

    /// The manifests, for graph validation.
    pub fn manifests(&self) -> Vec<Manifest> {
        self.entries.values().map(|e| e.manifest.clone()).collect()
    }
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// `<dir>/*/*.sandgraph.yaml`, sorted.
fn manifest_files(dir: &Path) -> Result<Vec<PathBuf>, CatalogError> {
    let io = |p: &Path, e: std::io::Error| CatalogError::Io {
        path: p.display().to_string(),
        reason: format!("cannot list components: {e}"),
    };
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| io(dir, e))? {
        let sub = entry.map_err(|e| io(dir, e))?.path();
        let Ok(files) = std::fs::read_dir(&sub) else {
            continue;
        };
        for file in files {
            let p = file.map_err(|e| io(&sub, e))?.path();
            if p.to_string_lossy().ends_with(".sandgraph.yaml") {
                out.push(p);
            }
        }
    }
    out.sort();
    Ok(out)
}
