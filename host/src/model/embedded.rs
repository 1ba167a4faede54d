//! The `embedded` provider: the in-process sandgraph-inference engine. One engine per model
//! file and settings is loaded per process, on the first call that needs it (a graph without
//! agents never loads it), and shared by every run: its continuous batcher puts concurrent
//! agent steps into the same forwards. Requests go through the inference server's own
//! chat-completion core, so the embedded engine and `sandgraph-infer serve` answer alike.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use sandgraph_inference::backend::Backend;
use sandgraph_inference::backend::cpu::CpuBackend;
use sandgraph_inference::backend::wgpu::{WgpuBackend, WgpuOptions, hardware_adapter_available};
use sandgraph_inference::model::LlamaModel;
use sandgraph_inference::server::Ready;
use sandgraph_inference::server::batcher::Batcher;
use sandgraph_inference::server::chat::start_chat;
use sandgraph_inference::server::errors::ApiError;
use sandgraph_inference::server::metrics::Metrics;
use sandgraph_inference::server::openai::parse_body;
use sandgraph_inference::tokenizer::{ChatTemplate, Tokenizer};
use tokio::sync::OnceCell;

use super::{
    ChatRequest, ChatResponse, ModelError, ModelProvider, ModelTiming, TokenSink, ToolCall, Usage,
    wire,
};

/// Which hardware runs the engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EmbeddedBackend {
    /// A hardware GPU through wgpu when the inference crate finds one, else the CPU.
    Auto,
    Cpu,
    Wgpu,
}

/// How to load one embedded engine.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EmbeddedSettings {
    /// The GGUF model file.
    pub path: PathBuf,
    pub backend: EmbeddedBackend,
    /// Requests decoded together (KV-cache slots).
    pub slots: usize,
    /// Context length of each slot, in tokens.
    pub context: usize,
    /// CPU threads (`None`: all cores).
    pub threads: Option<usize>,
    /// Requests that may wait for a slot before new ones are refused as unavailable.
    pub max_waiting: usize,
}

impl EmbeddedSettings {
    /// The defaults for `path`: CPU unless the inference crate finds a hardware GPU, 8 slots of
    /// 2048 tokens, all cores, 256 waiting requests.
    pub fn new(path: PathBuf) -> EmbeddedSettings {
        EmbeddedSettings {
            path,
            backend: EmbeddedBackend::Auto,
            slots: 8,
            context: 2048,
            threads: None,
            max_waiting: 256,
        }
    }
}

/// A loaded engine: the batcher over the backend, with the tokenizer and chat template.
pub struct EmbeddedEngine {
    ready: Ready,
    metrics: Arc<Metrics>,
    backend: String,
    next_id: AtomicU64,
}

impl std::fmt::Debug for EmbeddedEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedEngine")
            .field("model", &self.ready.model_name)
            .field("backend", &self.backend)
            .finish()
    }
}

impl EmbeddedEngine {
    /// Loads the model and starts the engine thread (blocking: seconds for a large model).
    pub fn load(s: &EmbeddedSettings) -> Result<EmbeddedEngine, String> {
        let shown = s.path.display();
        if !s.path.is_file() {
            return Err(format!(
                "model file {shown} does not exist; fetch it with `sandgraph-infer pull smollm2-135m` (or scripts/setup.sh) or point the models file at another GGUF file"
            ));
        }
        let model = LlamaModel::load(&s.path).map_err(|e| format!("loading {shown}: {e}"))?;
        let tok = Tokenizer::from_gguf(&model.file)
            .map_err(|e| format!("reading the tokenizer of {shown}: {e}"))?;
        let template = ChatTemplate::detect(tok.chat_template())
            .map_err(|e| format!("the chat template of {shown}: {e}"))?;
        let use_wgpu = match s.backend {
            EmbeddedBackend::Cpu => false,
            EmbeddedBackend::Wgpu => true,
            EmbeddedBackend::Auto => hardware_adapter_available(),
        };
        let (backend, name): (Box<dyn Backend>, String) = if use_wgpu {
            let b = WgpuBackend::new(&model, s.slots, s.context, &WgpuOptions::default())
                .map_err(|e| format!("opening the wgpu backend for {shown}: {e}; use `backend: cpu` to run without a GPU"))?;
            let name = format!("wgpu on {}", b.describe());
            (Box::new(b), name)
        } else {
            let threads = s
                .threads
                .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
            let b = CpuBackend::with_threads(&model, s.slots, s.context, threads)
                .map_err(|e| format!("opening the CPU backend for {shown}: {e}"))?;
            let name = format!("cpu ({} threads)", b.threads());
            (Box::new(b), name)
        };
        let model_name = s
            .path
            .file_stem()
            .map_or_else(|| "model".into(), |n| n.to_string_lossy().into_owned());
        let tok = Arc::new(tok);
        let metrics = Arc::new(Metrics::for_model(&model_name));
        let batcher = Batcher::start(backend, tok.clone(), s.max_waiting, metrics.clone());
        tracing::info!(model = %model_name, backend = %name, "embedded model engine loaded");
        Ok(EmbeddedEngine {
            ready: Ready::new(batcher, tok, template, model_name),
            metrics,
            backend: name,
            next_id: AtomicU64::new(1),
        })
    }

    /// The engine as the inference server holds it (batcher, tokenizer, template).
    pub fn ready(&self) -> &Ready {
        &self.ready
    }

    /// The continuous batcher (its counters show how requests shared forwards).
    pub fn batcher(&self) -> &Batcher {
        &self.ready.batcher
    }

    /// The engine's Prometheus metrics (`sandgraph_infer_*`, as the server exports them).
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The model's name (its file stem).
    pub fn model_name(&self) -> &str {
        &self.ready.model_name
    }

    /// Which backend runs it, in words.
    pub fn backend(&self) -> &str {
        &self.backend
    }

    /// Answers one chat request through the server's chat-completion core; text pieces go to
    /// `tokens` as they are generated. `provider` names this provider in the answer.
    pub async fn chat(
        &self,
        provider: &str,
        request: &ChatRequest,
        tokens: Option<&TokenSink>,
    ) -> Result<ChatResponse, ModelError> {
        let started = Instant::now();
        let body = wire::request_body(request, &self.ready.model_name, false);
        let wire_request = parse_body(body.to_string().as_bytes()).map_err(api_error)?;
        let id = format!("embedded-{}", self.next_id.fetch_add(1, Ordering::Relaxed));
        let mut job =
            start_chat(&self.ready, id, wire_request, started, false).map_err(api_error)?;
        let mut first_token = None;
        let answer = job
            .collect(&mut |piece| {
                first_token.get_or_insert_with(|| started.elapsed());
                if let Some(sink) = tokens {
                    sink(piece);
                }
            })
            .await
            .map_err(api_error)?;
        let tool_calls: Vec<ToolCall> = answer
            .tool_call
            .into_iter()
            .map(|c| ToolCall {
                id: c.id,
                name: c.name,
                arguments: c.arguments,
            })
            .collect();
        Ok(ChatResponse {
            model: job.model.clone(),
            provider: provider.to_owned(),
            content: answer.content.unwrap_or_default(),
            tool_calls,
            finish_reason: wire::finish_reason(answer.finish_reason),
            usage: Usage {
                prompt_tokens: answer.prompt_tokens as u32,
                completion_tokens: answer.completion_tokens as u32,
            },
            timing: ModelTiming {
                total: started.elapsed(),
                first_token,
            },
        })
    }
}

/// The engine's refusals as model errors: a 4xx is the request's fault (no other provider would
/// do better), a full queue or a failed engine is unavailability.
fn api_error(e: ApiError) -> ModelError {
    let status = e.status.as_u16();
    if (400..500).contains(&status) && status != 429 {
        ModelError::InvalidRequest(e.message)
    } else {
        ModelError::Unavailable(format!("embedded engine: {}", e.message))
    }
}

type EngineCell = Arc<OnceCell<Arc<EmbeddedEngine>>>;

/// The engines of this process, one per settings (the same file under other settings is
/// another engine).
fn engines() -> &'static Mutex<HashMap<EmbeddedSettings, EngineCell>> {
    static ENGINES: OnceLock<Mutex<HashMap<EmbeddedSettings, EngineCell>>> = OnceLock::new();
    ENGINES.get_or_init(Default::default)
}

/// The in-process engine behind one model alias.
pub struct EmbeddedProvider {
    name: String,
    alias: String,
    settings: EmbeddedSettings,
    engine: EngineCell,
}

impl std::fmt::Debug for EmbeddedProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedProvider")
            .field("alias", &self.alias)
            .field("settings", &self.settings)
            .finish()
    }
}

impl EmbeddedProvider {
    /// A provider for `alias` over the process's engine for `settings` (loaded on first use).
    pub fn new(alias: &str, mut settings: EmbeddedSettings) -> EmbeddedProvider {
        if let Ok(p) = settings.path.canonicalize() {
            settings.path = p;
        }
        let engine = engines()
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(settings.clone())
            .or_default()
            .clone();
        EmbeddedProvider {
            name: "embedded".into(),
            alias: alias.to_owned(),
            settings,
            engine,
        }
    }

    pub fn path(&self) -> &Path {
        &self.settings.path
    }

    /// The engine, loading it if this is the first use in the process; concurrent first calls
    /// wait for the one load. A failed load is not kept: the next call tries again.
    pub async fn engine(&self) -> Result<Arc<EmbeddedEngine>, ModelError> {
        self.engine
            .get_or_try_init(|| async {
                let settings = self.settings.clone();
                let loaded = tokio::task::spawn_blocking(move || EmbeddedEngine::load(&settings))
                    .await
                    .map_err(|e| format!("the model loading task failed: {e}"))
                    .and_then(|r| r);
                loaded.map(Arc::new).map_err(|why| {
                    ModelError::Unavailable(format!("model alias `{}`: {why}", self.alias))
                })
            })
            .await
            .cloned()
    }
}

#[async_trait::async_trait]
impl ModelProvider for EmbeddedProvider {
    fn name(&self) -> &str {
        &self.name
    }

    async fn chat(
        &self,
        request: &ChatRequest,
        tokens: Option<&TokenSink>,
    ) -> Result<ChatResponse, ModelError> {
        let engine = self.engine().await?;
        engine.chat(&self.name, request, tokens).await
    }
}
