//! `sandgraph-infer`: run, inspect, benchmark and fetch GGUF models from the command line.

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
