//! The `sandgraph` command line. Kept apart from `main.rs` so its parsing and behaviour are
//! testable as a library; `main.rs` only wires it to the process (exit code, stdout, stderr).

pub mod graph;
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
}
