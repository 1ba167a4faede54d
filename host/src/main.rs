//! The `sandgraph` binary: parses the command line, runs it, prints results and typed errors.

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;
use sandgraph::cli::{Cli, Command, graph, tool};

fn main() -> ExitCode {
    // Logs (including the audit event) go to stderr only when RUST_LOG asks for them, so a
    // failing call's stderr is exactly one JSON document.
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Tool(cmd) => tool::run(cmd),
        Command::Graph(cmd) => {
            return match graph::run(cmd) {
                Ok(out) => {
                    println!("{out}");
                    ExitCode::SUCCESS
                }
                Err(diagnostics) => {
                    eprintln!("{diagnostics}");
                    ExitCode::from(1)
                }
            };
        }
    };
    match result {
        Ok(out) => {
            // A reader that closed early (`| head`) is not an error of the call.
            match writeln!(std::io::stdout().lock(), "{out}") {
                Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
                    eprintln!("writing the output: {e}");
                    ExitCode::from(1)
                }
                _ => ExitCode::SUCCESS,
            }
        }
        Err(e) => {
            eprintln!("{}", e.to_json());
            ExitCode::from(match e {
                tool::CliError::Call(_) => 1,
                tool::CliError::Usage(_) => 2,
            })
        }
    }
}
