//! The `sandgraph` command line. Kept apart from `main.rs` so its parsing and behaviour are
//! testable as a library; `main.rs` only wires it to the process (exit code, stdout, stderr).

pub mod deploy;
pub mod graph;
pub mod mcp;
pub mod progress;
pub mod run;
pub mod runs;
pub mod serve;
pub mod tool;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "sandgraph",
    version,
    about = "Runs sandboxed WebAssembly tools and multi-agent graphs"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Inspect or call a single tool component.
    #[command(subcommand)]
    Tool(tool::ToolCommand),
    /// Validate graph files.
    #[command(subcommand)]
    Graph(graph::GraphCommand),
    /// Run a graph locally with the embedded journal; prints progress on stderr and the output
    /// JSON on stdout.
    Run(run::RunArgs),
    /// Resume every unfinished run in the journal (after a crash) and wait for them.
    Resume(run::HostArgs),
    /// List and inspect runs in the journal.
    #[command(subcommand)]
    Runs(runs::RunsCommand),
    /// Re-execute a run's completed steps offline from its journal and report any divergence.
    Replay(run::ReplayArgs),
    /// Journal maintenance.
    #[command(subcommand)]
    Journal(runs::JournalCommand),
    /// Serve the HTTP API (settings from SANDGRAPH_* env vars and an optional config file).
    Serve(serve::ServeArgs),
    /// Serve the tools over MCP on stdin/stdout (each call sandboxed like a graph step).
    Mcp(mcp::McpArgs),
    /// Generate deployment artifacts from the project's files.
    #[command(subcommand)]
    Deploy(deploy::DeployCommand),
    /// Probe a running `sandgraph serve` (the container's HEALTHCHECK): exit 0 on a 2xx answer.
    Health {
        #[arg(long, default_value = "http://127.0.0.1:8080/healthz")]
        url: String,
    },
}
