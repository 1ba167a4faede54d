//! The `sandgraph` binary: parses the command line, runs it, prints results and typed errors.

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;
use sandgraph::cli::{Cli, Command, deploy, graph, mcp, run, runs, serve, tool};

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Serve(args) = cli.command {
        // The server logs JSON lines on stderr (level from RUST_LOG, default info).
        tracing_subscriber::fmt()
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
            )
            .with_writer(std::io::stderr)
            .init();
        return match serve::serve(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!(error = %e, "serve failed");
                eprintln!("error: {e}");
                ExitCode::from(1)
            }
        };
    }
    // Logs (including the audit event) go to stderr only when RUST_LOG asks for them, so a
    // failing call's stderr is exactly one JSON document.
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }
    let printed = |r: Result<String, String>| match r {
        Ok(out) => print_out(&out),
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    };
    let finished = |r: Result<run::Finished, String>| match r {
        Ok(f) => {
            let code = print_out(&f.stdout);
            if code != ExitCode::SUCCESS {
                return code;
            }
            ExitCode::from(f.code)
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    };
    let result = match cli.command {
        Command::Run(args) => return finished(run::run(args)),
        Command::Resume(args) => return finished(run::resume(args)),
        Command::Replay(args) => return finished(run::replay(args)),
        Command::Runs(cmd) => return printed(runs::runs(cmd)),
        Command::Journal(cmd) => return printed(runs::journal(cmd)),
        Command::Deploy(cmd) => return printed(deploy::run(cmd)),
        Command::Mcp(args) => return printed(mcp::mcp(args)),
        Command::Tool(cmd) => tool::run(cmd),
        Command::Serve(_) => unreachable!("handled above"),
        Command::Health { url } => return sandgraph_inference::server::probe::exit_code(&url),
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
        Ok(out) => print_out(&out),
        Err(e) => {
            eprintln!("{}", e.to_json());
            ExitCode::from(match e {
                tool::CliError::Call(_) => 1,
                tool::CliError::Usage(_) => 2,
            })
        }
    }
}

/// Prints `out` on stdout; a reader that closed early (`| head`) is not an error.
fn print_out(out: &str) -> ExitCode {
    if out.is_empty() {
        return ExitCode::SUCCESS;
    }
    match writeln!(std::io::stdout().lock(), "{out}") {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            eprintln!("writing the output: {e}");
            ExitCode::from(1)
        }
        _ => ExitCode::SUCCESS,
    }
}
