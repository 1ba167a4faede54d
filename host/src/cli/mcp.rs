//! `sandgraph mcp`: the catalog's tools as an MCP server on stdin/stdout, each call sandboxed
//! as a graph step is. Logs go to stderr (with RUST_LOG), never to stdout.

use std::path::PathBuf;
use std::sync::Arc;

use clap::Args;

use super::tool::{CacheArgs, OperatorArgs};
use crate::graph::catalog::Catalog;
use crate::graph::engine::{Engine, EngineConfig};
use crate::mcp::McpTools;
use crate::sandbox::manifest::{CallGrant, OperatorPolicy, WorkspaceMode};
use crate::sandbox::{Sandbox, SandboxConfig};

#[derive(Debug, Args)]
pub struct McpArgs {
    /// Folder whose `*/*.sandgraph.yaml` manifests name the tools (repeatable).
    #[arg(long, value_name = "DIR", default_values = ["tools"])]
    pub tools: Vec<PathBuf>,
    /// Folder with the built components (`<name>.wasm` or `tool_<name>.wasm`).
    #[arg(long, default_value = "target/wasm32-wasip2/release")]
    pub components: PathBuf,
    #[command(flatten)]
    pub operator: OperatorArgs,
    /// Host directory handed as /workspace to tools whose manifest asks for one (read-only
    /// unless `--workspace-rw`).
    #[arg(long)]
    pub workspace: Option<PathBuf>,
    /// Let tools that ask for a read-write workspace write to it.
    #[arg(long, requires = "workspace")]
    pub workspace_rw: bool,
    #[command(flatten)]
    pub cache: CacheArgs,
    /// Journal every call as a one-step run in this journal (a directory, or a postgres:// URL):
    /// listed by `sandgraph runs list`, replayable by `sandgraph replay`; each result names its
    /// run in `_meta` (`sandgraph/run`).
    #[arg(long, value_name = "DIR|URL")]
    pub journal: Option<PathBuf>,
}

/// Serves until the client closes stdin.
pub fn mcp(args: McpArgs) -> Result<String, String> {
    let catalog = Catalog::from_dirs(&args.tools, &args.components).map_err(|e| e.to_string())?;
    let sandbox = Sandbox::new(SandboxConfig {
        cache_dir: args.cache.dir(),
        secrets: args.operator.secret_store()?,
        extra_roots: args.operator.extra_roots()?,
        ..SandboxConfig::default()
    })
    .map_err(|e| e.to_string())?;
    let policy = OperatorPolicy {
        allow_private: args.operator.allow_private.clone(),
        ..OperatorPolicy::default()
    };
    let grant = CallGrant {
        workspace: args.workspace.clone().map(|d| {
            let mode = if args.workspace_rw {
                WorkspaceMode::Rw
            } else {
                WorkspaceMode::Ro
            };
            (d, mode)
        }),
        ..CallGrant::default()
    };
    let sandbox = Arc::new(sandbox);
    let engine = match &args.journal {
        Some(location) => {
            let journal = super::run::JournalArgs {
                journal: Some(location.clone()),
            }
            .open()?;
            Some(Arc::new(Engine::new(
                sandbox.clone(),
                Arc::new(journal),
                EngineConfig {
                    policy: policy.clone(),
                    workspace: args.workspace.clone(),
                    ..EngineConfig::default()
                },
            )))
        }
        None => None,
    };
    let catalog = Arc::new(catalog);
    let tools = McpTools::new(
        sandbox,
        Arc::new(move || catalog.clone()),
        policy,
        grant,
        None,
        engine,
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    runtime.block_on(crate::mcp::stdio::serve(
        tools,
        tokio::io::stdin(),
        tokio::io::stdout(),
    ))?;
    Ok(String::new())
}
