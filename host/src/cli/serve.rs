//! `sandgraph serve`: runs the HTTP API until SIGTERM or SIGINT, then shuts down gracefully
//! (stop accepting, let runs finish within the grace period, flush the journal, exit 0).
//! Settings come from `SANDGRAPH_*` environment variables and an optional config file.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use crate::api::{self, config::Source};

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// A YAML config file (keys as the env vars without `SANDGRAPH_`, lower case); env wins.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// The models file: which provider answers each model alias agents name (default: alias
    /// `default` is the embedded engine over models/SmolLM2-135M-Instruct.Q4_1.gguf).
    #[arg(long, env = "SANDGRAPH_MODELS", value_name = "FILE")]
    pub models: Option<PathBuf>,
}

/// Runs the server; returns when it has shut down.
pub fn serve(args: ServeArgs) -> Result<(), String> {
    let source = Source::from_process(args.config.as_deref()).map_err(|e| e.to_string())?;
    let config = api::Config::from_source(&source).map_err(|e| e.to_string())?;
    // A bad models file stops the server before it listens; `apiKeySecret` names a file of
    // the operator's `secrets_dir`.
    let secrets = config.secret_store().map_err(|e| e.to_string())?;
    let models =
        crate::model::cli_models(args.models.as_deref(), &secrets).map_err(|e| e.to_string())?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    let result = rt.block_on(async {
        let running = api::start_with_models(config, Some(models))
            .await
            .map_err(|e| e.to_string())?;
        // The bound address on stdout, so a supervisor (or a test) using port 0 can find it.
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "listening on {}", running.addr);
        let _ = out.flush();
        drop(out);
        let token = running.shutdown_token();
        tokio::spawn(async move {
            use tokio::signal::unix::{SignalKind, signal};
            let (Ok(mut term), Ok(mut int)) = (
                signal(SignalKind::terminate()),
                signal(SignalKind::interrupt()),
            ) else {
                tracing::error!("cannot install signal handlers");
                return;
            };
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM received"),
                _ = int.recv() => tracing::info!("SIGINT received"),
            }
            token.cancel();
        });
        running.stopped().await;
        Ok(())
    });
    // Run tasks still executing past the grace period are dropped here; they resume next start.
    rt.shutdown_timeout(Duration::from_secs(1));
    result
}
