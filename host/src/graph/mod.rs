//! Graphs of tool and agent steps: the YAML v1 format, its validation with located errors,
//! and the compiled petgraph form that the scheduler runs and the journal pins by digest.
//! Loading never trusts the document: size, nesting and aliases are bounded before parsing.

pub mod compile;
pub mod spec;
pub mod validate;
pub mod yaml;

use std::path::Path;

pub use compile::CompiledGraph;
pub use validate::{Diagnostic, Diagnostics};

/// Reads, validates and compiles a graph file; `components` are the known component names.
pub fn load(path: &Path, components: &[String]) -> Result<CompiledGraph, Diagnostics> {
    let file = path.display().to_string();
    let source = read_bounded(path).map_err(|message| {
        Diagnostics(vec![Diagnostic {
            file: file.clone(),
            pos: yaml::Pos { line: 1, col: 1 },
            message,
        }])
    })?;
    let graph = validate::validate(&file, &source, components)?;
    Ok(CompiledGraph::compile(graph))
}

/// Reads at most `MAX_DOCUMENT_BYTES + 1` bytes so a huge file is refused without loading it.
fn read_bounded(path: &Path) -> Result<String, String> {
    use std::io::Read;
    let f = std::fs::File::open(path).map_err(|e| format!("cannot open graph file: {e}"))?;
    let mut buf = Vec::new();
    f.take(yaml::MAX_DOCUMENT_BYTES as u64 + 1)
        .read_to_end(&mut buf)
        .map_err(|e| format!("cannot read graph file: {e}"))?;
    if buf.len() > yaml::MAX_DOCUMENT_BYTES {
        return Err(format!(
            "document is over the {} byte limit; split the graph or shorten it",
            yaml::MAX_DOCUMENT_BYTES
        ));
    }
    String::from_utf8(buf).map_err(|e| format!("graph file is not UTF-8: {e}"))
}

/// Names of the tool components under `dir` (each `*.sandgraph.yaml`'s `metadata.name`).
pub fn component_names(dir: &Path) -> std::io::Result<Vec<String>> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let sub = entry?.path();
        if !sub.is_dir() {
            continue;
        }
        for file in std::fs::read_dir(&sub)? {
            let p = file?.path();
            if p.to_string_lossy().ends_with(".sandgraph.yaml")
                && let Ok(text) = std::fs::read_to_string(&p)
                && let Ok(v) = serde_norway::from_str::<serde_norway::Value>(&text)
                && let Some(name) = v
                    .get("metadata")
                    .and_then(|m| m.get("name"))
                    .and_then(|n| n.as_str())
            {
                names.push(name.to_string());
            }
        }
    }
    names.sort();
    names.dedup();
    Ok(names)
}
