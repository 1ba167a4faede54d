//! `sandgraph graph ...`: checks graph files from the command line so authors see every
//! located error before a run, the same diagnostics the engine would refuse a graph with.

use std::path::PathBuf;

use clap::Subcommand;

use crate::graph;

#[derive(Debug, Subcommand)]
pub enum GraphCommand {
    /// Validate a graph file and print every problem as file:line:col: message.
    Validate {
        /// The graph YAML file.
        file: PathBuf,
        /// Folder whose `*/*.sandgraph.yaml` manifests name the known components (repeatable;
        /// default: tools and agents).
        #[arg(long, value_name = "DIR", default_values = ["tools", "agents"])]
        tools: Vec<PathBuf>,
    },
}

/// Ok: a one-line summary with the digest. Err: the diagnostics, one per line.
pub fn run(cmd: GraphCommand) -> Result<String, String> {
    match cmd {
        GraphCommand::Validate { file, tools } => {
            let components = graph::components(&tools).map_err(|e| {
                format!("{e}; pass --tools <dir> (repeatable) naming the tools and agents folders")
            })?;
            let compiled = graph::load(&file, &components).map_err(|d| d.to_string())?;
            Ok(format!(
                "{}: graph '{}' is valid: {} nodes, {} edges, digest sha256:{}",
                file.display(),
                compiled.spec.metadata.name,
                compiled.spec.spec.nodes.len(),
                compiled.spec.spec.edges.len(),
                compiled.digest_hex()
            ))
        }
    }
}
