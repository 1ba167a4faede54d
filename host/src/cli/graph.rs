//! `sandgraph graph ...`: checks graph files from the command line so authors see every
//! located error before a run, the same diagnostics the engine would refuse a graph with.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use clap::Subcommand;

use super::tool::CacheArgs;
use crate::graph;
use crate::graph::catalog::{Catalog, CatalogError};
use crate::sandbox::{Sandbox, SandboxConfig};

/// How a graph is drawn.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum PictureFormat {
    /// A standalone SVG, laid out by Sandgraph.
    Svg,
    /// Graphviz's DOT language (`dot -Tsvg`).
    Dot,
    /// A Mermaid flowchart (renders in GitHub and most docs tools).
    Mermaid,
}

/// `graph` drawn in `format`, coloured by `runs` when given.
pub fn picture(
    graph: &graph::CompiledGraph,
    format: PictureFormat,
    runs: Option<&std::collections::HashMap<String, graph::render::NodeRun>>,
) -> String {
    let format = match format {
        PictureFormat::Svg => graph::render::Format::Svg,
        PictureFormat::Dot => graph::render::Format::Dot,
        PictureFormat::Mermaid => graph::render::Format::Mermaid,
    };
    graph::render::draw(graph, format, runs)
}

#[derive(Debug, Subcommand)]
pub enum GraphCommand {
    /// Draw a graph file: SVG laid out here, or DOT or Mermaid text, on stdout.
    Render {
        /// The graph YAML file.
        file: PathBuf,
        #[arg(long, value_enum, default_value = "svg")]
        format: PictureFormat,
        /// Folder whose `*/*.sandgraph.yaml` manifests name the known components (repeatable;
        /// default: tools and agents).
        #[arg(long, value_name = "DIR", default_values = ["tools", "agents"])]
        tools: Vec<PathBuf>,
    },
    /// Validate a graph file and print every problem as file:line:col: message.
    Validate {
        /// The graph YAML file.
        file: PathBuf,
        /// Folder whose `*/*.sandgraph.yaml` manifests name the known components (repeatable;
        /// default: tools and agents).
        #[arg(long, value_name = "DIR", default_values = ["tools", "agents"])]
        tools: Vec<PathBuf>,
        /// Folder with the built components; their declared output schemas type-check
        /// expressions that read `nodes.<id>` (without them those reads are unchecked).
        #[arg(long, default_value = "target/wasm32-wasip2/release")]
        components: PathBuf,
        #[command(flatten)]
        cache: CacheArgs,
    },
}

/// Ok: a one-line summary with the digest (and a note when output types went unchecked).
/// Err: the diagnostics, one per line.
pub fn run(cmd: GraphCommand) -> Result<String, String> {
    match cmd {
        GraphCommand::Render {
            file,
            format,
            tools,
        } => {
            let manifests = graph::components(&tools).map_err(|e| {
                format!("{e}; pass --tools <dir> (repeatable) naming the tools and agents folders")
            })?;
            let compiled = graph::load(&file, &manifests).map_err(|d| d.to_string())?;
            let out = picture(&compiled, format, None);
            Ok(out.trim_end().to_owned())
        }
        GraphCommand::Validate {
            file,
            tools,
            components,
            cache,
        } => {
            let manifests = graph::components(&tools).map_err(|e| {
                format!("{e}; pass --tools <dir> (repeatable) naming the tools and agents folders")
            })?;
            let untyped = graph::load(&file, &manifests).map_err(|d| d.to_string())?;
            let named = untyped.component_names();
            let (outputs, note) = match output_schemas(&tools, &components, &cache, &named) {
                Ok(found) => found,
                Err(why) => (BTreeMap::new(), Some(why)),
            };
            let compiled =
                graph::load_typed(&file, &manifests, &outputs).map_err(|d| d.to_string())?;
            let mut out = format!(
                "{}: graph '{}' is valid: {} nodes, {} edges, digest sha256:{}",
                file.display(),
                compiled.spec.metadata.name,
                compiled.spec.spec.nodes.len(),
                compiled.spec.spec.edges.len(),
                compiled.digest_hex()
            );
            if let Some(why) = note {
                out.push_str(&format!(
                    "\nnote: reads of node outputs were not type-checked: {why}"
                ));
            }
            Ok(out)
        }
    }
}

/// The declared output schemas of the components `named`, asked from the built components,
/// and which of them could not answer.
type Described = (BTreeMap<String, serde_json::Value>, Option<String>);

fn output_schemas(
    tools: &[PathBuf],
    wasm_dir: &std::path::Path,
    cache: &CacheArgs,
    named: &std::collections::BTreeSet<String>,
) -> Result<Described, String> {
    let mut catalog = Catalog::from_dirs(tools, wasm_dir).map_err(|e| match e {
        CatalogError::MissingWasm { name, dir, .. } => format!(
            "component '{name}' is not built in {dir} (build with `cargo guests`, or pass --components <dir>)"
        ),
        e => e.to_string(),
    })?;
    let sandbox = Sandbox::new(SandboxConfig {
        cache_dir: cache.dir(),
        ..SandboxConfig::default()
    })
    .map_err(|e| e.to_string())?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    let failed = rt.block_on(catalog.describe(&Arc::new(sandbox), Some(named)));
    let note = (!failed.is_empty()).then(|| {
        failed
            .iter()
            .map(|(name, why)| format!("component '{name}': {why}"))
            .collect::<Vec<_>>()
            .join("; ")
    });
    Ok((catalog.output_schemas(), note))
}
