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
pub mod routes;
pub mod sse;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

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
}

impl AppState {
    pub fn new(config: ServerConfig) -> Arc<AppState> {
        Arc::new(AppState {
            metrics: Arc::new(Metrics::for_model(&config.model_name)),
            config,
            ready: OnceLock::new(),
            next_id: AtomicU64::new(1),
        })
    }

    /// Marks the model loaded: /health turns 200 and requests are served.
    pub fn set_ready(&self, r: Ready) {
        let _ = self.ready.set(r);
    }

    pub fn ready(&self) -> Option<&Ready> {
        self.ready.get()
    }

    fn next_request_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }
}

/// Serves connections from `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, state: Arc<AppState>) {
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                // Out of file descriptors and similar: keep serving the open connections.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let st = state.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| routes::handle(req, st.clone()));
            if let Err(e) = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await
            {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
}
