//! The OpenAI-compatible HTTP server behind `sandgraph-infer serve`: hyper on tokio in front of
//! one continuous-batching engine thread. `routes` maps paths to handlers, `chat` is the
//! chat-completion core (shared with in-process callers such as the host's embedded model
//! provider), `openai` holds the wire shapes, `batcher` schedules the backend, `sse` streams,
//! `metrics`/`errors` as named.

pub mod batcher;
pub mod chat;
pub mod errors;
pub mod metrics;
pub mod openai;
pub mod probe;
pub mod routes;
pub mod sse;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::constrain::TokenTrie;
use crate::tokenizer::{ChatTemplate, Tokenizer};
use batcher::Batcher;
use metrics::Metrics;

/// Limits and switches of one server.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Request bodies above this many bytes get a 413 before being read in full.
    pub max_body_bytes: usize,
    /// Requests allowed to wait for a slot; past this they get a 429.
    pub max_waiting: usize,
    /// Log prompts and outputs (off by default: they may hold private data).
    pub log_prompts: bool,
    /// The `model_name` label of every metric (the model file's stem; vLLM's label).
    pub model_name: String,
    /// The names requests may give as `model` (the first is the one answers carry); a request
    /// naming another model gets 404 `model_not_found`. Empty: the loaded model's own name.
    pub served_names: Vec<String>,
    /// Most choices (`n`) one request may ask for; each is a job of its own (they share the
    /// prompt's prefill), so this bounds what one request can take of the slots and queue.
    pub max_n: usize,
    /// When set, `/v1/*` requests need `Authorization: Bearer <key>` (401 otherwise, in
    /// OpenAI's error shape); `/health` and `/metrics` stay open for probes and scrapers.
    pub api_key: Option<String>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            max_body_bytes: 4 << 20,
            max_waiting: 64,
            log_prompts: false,
            model_name: "model".to_owned(),
            served_names: Vec::new(),
            max_n: 8,
            api_key: None,
        }
    }
}

/// What exists once the model has loaded.
pub struct Ready {
    pub batcher: Batcher,
    pub tok: Arc<Tokenizer>,
    pub template: ChatTemplate,
    pub model_name: String,
    /// Vocabulary trie for constrained decoding, built on the first structured request.
    trie: OnceLock<Arc<TokenTrie>>,
}

impl Ready {
    pub fn new(
        batcher: Batcher,
        tok: Arc<Tokenizer>,
        template: ChatTemplate,
        model_name: String,
    ) -> Ready {
        Ready {
            batcher,
            tok,
            template,
            model_name,
            trie: OnceLock::new(),
        }
    }

    /// The shared token trie structured-output constraints use.
    pub fn trie(&self) -> Arc<TokenTrie> {
        self.trie
            .get_or_init(|| Arc::new(TokenTrie::new(&self.tok)))
            .clone()
    }
}

/// State shared by every connection.
pub struct AppState {
    pub config: ServerConfig,
    pub metrics: Arc<Metrics>,
    ready: OnceLock<Ready>,
    next_id: AtomicU64,
    /// Set once a shutdown began: `/health` answers 503 so balancers stop sending work.
    draining: AtomicBool,
    /// When the server started (Unix seconds): the `created` of its model objects.
    pub started_at: u64,
}

impl AppState {
    pub fn new(config: ServerConfig) -> Arc<AppState> {
        Arc::new(AppState {
            started_at: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            metrics: Arc::new(Metrics::for_model(&config.model_name)),
            config,
            ready: OnceLock::new(),
            next_id: AtomicU64::new(1),
            draining: AtomicBool::new(false),
        })
    }

    /// Marks the model loaded: /health turns 200 and requests are served.
    pub fn set_ready(&self, r: Ready) {
        let _ = self.ready.set(r);
    }

    pub fn ready(&self) -> Option<&Ready> {
        self.ready.get()
    }

    /// Whether a shutdown began.
    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    fn next_request_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }
}

/// Serves connections from `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, state: Arc<AppState>) {
    serve_until(listener, state, std::future::pending(), Duration::ZERO).await;
}

/// Serves connections from `listener` until `shutdown` completes, then drains: stops
/// accepting, answers `/health` with 503, lets requests in flight (streams included) finish
/// for up to `grace`, closes idle keep-alive connections, and returns. Returns whether every
/// connection ended within `grace`.
pub async fn serve_until(
    listener: TcpListener,
    state: Arc<AppState>,
    shutdown: impl std::future::Future<Output = ()>,
    grace: Duration,
) -> bool {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.as_mut() => break,
        };
        let stream = match accepted {
            Ok((s, _)) => s,
            Err(e) => {
                // Out of file descriptors and similar: keep serving the open connections.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let st = state.clone();
        let svc = service_fn(move |req| routes::handle(req, st.clone()));
        let conn =
            graceful.watch(http1::Builder::new().serve_connection(TokioIo::new(stream), svc));
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    state.draining.store(true, Ordering::SeqCst);
    tracing::info!(
        grace_ms = grace.as_millis() as u64,
        "shutting down: draining requests in flight"
    );
    let drained = tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_ok();
    if drained {
        tracing::info!("drained; exiting");
    } else {
        tracing::warn!("grace period over with requests still in flight; exiting");
    }
    drained
}
