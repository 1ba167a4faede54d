//! `sandgraph-infer serve`: binds the listener first (so /health answers 503 while the model
//! loads), then loads the model, opens the backend and hands both to the server.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};

use sandgraph_inference::backend::BackendKind;
use sandgraph_inference::server::batcher::Batcher;
use sandgraph_inference::server::{AppState, Ready, ServerConfig, serve_until};
use sandgraph_inference::tokenizer::{ChatTemplate, Tokenizer};

#[derive(clap::Args)]
pub struct ServeArgs {
    /// GGUF model file.
    #[arg(long, env = "SANDGRAPH_MODEL", default_value = super::DEFAULT_MODEL)]
    model: PathBuf,
    /// auto, cpu or wgpu.
    #[arg(long, default_value = "auto")]
    backend: BackendKind,
    /// Address to listen on (port 0 picks a free port; the chosen address is printed).
    #[arg(long, default_value = "127.0.0.1:8000")]
    listen: SocketAddr,
    /// Requests decoded together (KV-cache slots).
    #[arg(long, default_value_t = 8)]
    slots: usize,
    /// Context length of each slot.
    #[arg(long, default_value_t = 2048)]
    context: usize,
    /// Requests that may wait for a slot before new ones get 429.
    #[arg(long, default_value_t = 64)]
    max_waiting: usize,
    /// Most choices (`n`) one request may ask for.
    #[arg(long, default_value_t = 8)]
    max_n: usize,
    /// Largest accepted request body in bytes.
    #[arg(long, default_value_t = 4 << 20)]
    max_body_bytes: usize,
    /// Most tokens one engine step feeds (running decodes plus prompt chunks of newcomers);
    /// long prompts are spread over several steps so running streams keep producing.
    #[arg(long, default_value_t = sandgraph_inference::server::batcher::DEFAULT_STEP_TOKENS)]
    step_tokens: usize,
    /// CPU threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Log prompts and generated text (off by default).
    #[arg(long)]
    log_prompts: bool,
    /// Names the model is served under (repeat or separate with commas): requests naming
    /// another model get 404 `model_not_found`. The first is the name answers and metrics
    /// carry. Default: the file's stem, then the aliases of a model `pull` knows
    /// (SmolLM2-135M-Instruct.Q4_1.gguf also answers to smollm2 and smollm2-135m).
    #[arg(long, env = "SANDGRAPH_INFER_SERVED_MODEL_NAME", value_delimiter = ',')]
    served_model_name: Vec<String>,
    /// Require `Authorization: Bearer <key>` on /v1/* (health and metrics stay open).
    #[arg(long, env = "SANDGRAPH_INFER_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// On SIGTERM or SIGINT: how long requests in flight may take to finish before the
    /// server exits anyway (it stops accepting and answers /health with 503 at once).
    #[arg(long, default_value = "30s", value_parser = parse_grace)]
    shutdown_grace: std::time::Duration,
}

/// The names the model answers to: `given` (blank entries dropped), else the file's stem and
/// the catalog's aliases for that file.
fn served_names(model: &std::path::Path, given: &[String]) -> Result<Vec<String>> {
    let mut names: Vec<String> = given
        .iter()
        .map(|n| n.trim().to_owned())
        .filter(|n| !n.is_empty())
        .collect();
    if names.is_empty() && !given.is_empty() {
        anyhow::bail!("--served-model-name holds no name; give at least one, e.g. smollm2");
    }
    if names.is_empty() {
        names.push(
            model
                .file_stem()
                .map_or_else(|| "model".into(), |n| n.to_string_lossy().into_owned()),
        );
        let file = model.file_name().map(|f| f.to_string_lossy().into_owned());
        names.extend(
            super::pull::aliases_of(file.as_deref().unwrap_or(""))
                .iter()
                .map(|a| a.to_string()),
        );
    }
    let mut seen = std::collections::HashSet::new();
    names.retain(|n| seen.insert(n.clone()));
    Ok(names)
}

fn parse_grace(v: &str) -> Result<std::time::Duration, String> {
    let (n, unit) = v.split_at(v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len()));
    let n: u64 = n
        .parse()
        .map_err(|_| format!("`{v}` is not a duration like 30s, 500ms or 2m"))?;
    match unit {
        "ms" => Ok(std::time::Duration::from_millis(n)),
        "s" | "" => Ok(std::time::Duration::from_secs(n)),
        "m" => Ok(std::time::Duration::from_secs(n * 60)),
        _ => Err(format!("`{v}` is not a duration like 30s, 500ms or 2m")),
    }
}

/// Resolves on the first SIGTERM or SIGINT (a container stop, Ctrl-C).
async fn stop_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; stop with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
}

pub fn run(a: ServeArgs) -> Result<()> {
    tracing_subscriber::fmt()
        .json()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    let served = served_names(&a.model, &a.served_model_name)?;
    let result = rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(a.listen)
            .await
            .with_context(|| format!("binding {}", a.listen))?;
        let addr = listener.local_addr()?;
        // Tests and scripts read this line to find the port.
        println!("listening on http://{addr}");
        tracing::info!(%addr, "listening; loading the model");
        let state = AppState::new(ServerConfig {
            max_body_bytes: a.max_body_bytes,
            max_waiting: a.max_waiting,
            log_prompts: a.log_prompts,
            model_name: served[0].clone(),
            served_names: served.clone(),
            max_n: a.max_n.max(1),
            api_key: a.api_key.clone().filter(|k| !k.is_empty()),
        });
        let grace = a.shutdown_grace;
        let server = tokio::spawn(serve_until(listener, state.clone(), stop_signal(), grace));
        let st = state.clone();
        tokio::task::spawn_blocking(move || -> Result<()> {
            let model = super::load_model(&a.model)?;
            let tok = Tokenizer::from_gguf(&model.file)?;
            let template = ChatTemplate::detect(tok.chat_template())?;
            let backend = super::open_backend(a.backend, &model, a.slots, a.context, a.threads)?;
            let model_name = served[0].clone();
            let tok = Arc::new(tok);
            let batcher = Batcher::with_step_tokens(
                backend,
                tok.clone(),
                a.max_waiting,
                st.metrics.clone(),
                a.step_tokens,
            );
            st.set_ready(Ready::new(batcher, tok, template, model_name));
            tracing::info!("model loaded; serving");
            Ok(())
        })
        .await
        .context("model loading task")??;
        server.await.context("server task")?;
        Ok(())
    });
    // A generation cut off by the grace period must not hold the exit.
    rt.shutdown_timeout(std::time::Duration::from_secs(1));
    result
}
