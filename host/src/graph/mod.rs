//! Graphs of tool and agent steps: the YAML v1 format, its validation with located errors,
//! and the compiled petgraph form that the scheduler runs and the journal pins by digest.
//! Loading never trusts the document: size, nesting and aliases are bounded before parsing.

pub mod catalog;
pub mod compile;
pub mod engine;
pub mod expr;
pub mod render;
pub mod replay;
pub mod scheduler;
pub mod spec;
pub mod state;
pub mod typecheck;
pub mod validate;
pub mod yaml;

use std::path::{Path, PathBuf};

use crate::sandbox::manifest::Manifest;

pub use compile::CompiledGraph;
pub use validate::{Diagnostic, Diagnostics};

/// Reads, validates and compiles a graph file; `components` are the known component manifests.
pub fn load(path: &Path, components: &[Manifest]) -> Result<CompiledGraph, Diagnostics> {
    load_typed(path, components, &Default::default())
}

/// [`load`] with the components' declared output schemas (component name -> JSON Schema, as
/// [`catalog::Catalog::output_schemas`] gives them), so expressions reading `nodes.<id>` are
/// type-checked against what that node's component says it returns.
pub fn load_typed(
    path: &Path,
    components: &[Manifest],
    outputs: &std::collections::BTreeMap<String, serde_json::Value>,
) -> Result<CompiledGraph, Diagnostics> {
    let file = path.display().to_string();
    let source = read_bounded(path).map_err(|e| {
        Diagnostics(vec![Diagnostic {
            file: file.clone(),
            pos: e.pos,
            message: e.message,
        }])
    })?;
    validate::validate_compiled_with_outputs(&file, &source, components, outputs)
}

/// Reads at most `MAX_DOCUMENT_BYTES + 1` bytes so a huge file is refused without loading it;
/// a byte that is not UTF-8 is reported at its line:col.
fn read_bounded(path: &Path) -> Result<String, yaml::Located> {
    use std::io::Read;
    let start = |message: String| yaml::Located {
        pos: yaml::Pos { line: 1, col: 1 },
        message,
    };
    let f = std::fs::File::open(path).map_err(|e| start(format!("cannot open graph file: {e}")))?;
    let mut buf = Vec::new();
    f.take(yaml::MAX_DOCUMENT_BYTES as u64 + 1)
        .read_to_end(&mut buf)
        .map_err(|e| start(format!("cannot read graph file: {e}")))?;
    if buf.len() > yaml::MAX_DOCUMENT_BYTES {
        return Err(start(format!(
            "document is over the {} byte limit; split the graph or shorten it",
            yaml::MAX_DOCUMENT_BYTES
        )));
    }
    yaml::utf8(buf)
}

/// The component manifests under each of `dirs` (each `*/*.sandgraph.yaml`), sorted by name;
/// a name declared twice is an error naming both files.
pub fn components(dirs: &[PathBuf]) -> Result<Vec<Manifest>, String> {
    let mut out: Vec<Manifest> = Vec::new();
    let mut seen: std::collections::BTreeMap<String, PathBuf> = Default::default();
    for dir in dirs {
        let entries = std::fs::read_dir(dir)
            .map_err(|e| format!("{}: cannot list components: {e}", dir.display()))?;
        let mut files = Vec::new();
        for entry in entries {
            let sub = entry.map_err(|e| format!("{}: {e}", dir.display()))?.path();
            let Ok(listing) = std::fs::read_dir(&sub) else {
                continue;
            };
            for file in listing {
                let p = file.map_err(|e| format!("{}: {e}", sub.display()))?.path();
                if p.to_string_lossy().ends_with(".sandgraph.yaml") {
                    files.push(p);
                }
            }
        }
        files.sort();
        for p in files {
            let manifest = Manifest::from_file(&p).map_err(|e| e.to_string())?;
            let name = manifest.metadata.name.clone();
            if let Some(first) = seen.insert(name.clone(), p.clone()) {
                return Err(format!(
                    "component '{name}' is declared twice ({} and {})",
                    first.display(),
                    p.display()
                ));
            }
            out.push(manifest);
        }
    }
    out.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    Ok(out)
}
