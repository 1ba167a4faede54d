//! Command-line front end of the inference crate: argument parsing and the subcommands.

mod bench;
mod pull;
mod serve;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

use sandgraph_inference::backend::cpu::CpuBackend;
use sandgraph_inference::backend::wgpu::{WgpuBackend, WgpuOptions, hardware_adapter_available};
use sandgraph_inference::backend::{Backend, BackendKind};
use sandgraph_inference::generate::{CancelToken, Request, Sampling, generate};
use sandgraph_inference::gguf::{GgufFile, Value};
use sandgraph_inference::model::LlamaModel;
use sandgraph_inference::tokenizer::{ChatMessage, ChatTemplate, Tokenizer};

/// Where tests, scripts and the CLI look for the model unless told otherwise.
pub const DEFAULT_MODEL: &str = "models/SmolLM2-135M-Instruct.Q4_1.gguf";

#[derive(Parser)]
#[command(
    name = "sandgraph-infer",
    version,
    about = "GGUF llama inference on wgpu and CPU"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Generate text from a prompt.
    Generate(GenerateArgs),
    /// Print a GGUF file's metadata and tensor table.
    Inspect {
        /// The GGUF file.
        path: PathBuf,
        /// Print long arrays (vocabularies) in full.
        #[arg(long)]
        full: bool,
    },
    /// Measure prefill and decode tokens/s per backend at batch 1 and 8.
    Bench(bench::BenchArgs),
    /// Download a known model and verify its checksum.
    Pull(pull::PullArgs),
    /// Serve the OpenAI-compatible HTTP API with continuous batching.
    Serve(serve::ServeArgs),
    /// Probe a running server (the container's HEALTHCHECK): exit 0 on a 2xx answer.
    Health {
        #[arg(long, default_value = "http://127.0.0.1:8000/health")]
        url: String,
    },
}

#[derive(clap::Args)]
struct GenerateArgs {
    /// GGUF model file.
    #[arg(long, env = "SANDGRAPH_MODEL", default_value = DEFAULT_MODEL)]
    model: PathBuf,
    #[arg(long)]
    prompt: String,
    /// Render the prompt as a user message with the model's chat template.
    #[arg(long)]
    chat: bool,
    /// System message (with --chat).
    #[arg(long, requires = "chat")]
    system: Option<String>,
    /// auto, cpu or wgpu.
    #[arg(long, default_value = "auto")]
    backend: BackendKind,
    #[arg(long, default_value_t = 256)]
    max_tokens: usize,
    /// 0 decodes greedily.
    #[arg(long, default_value_t = 0.7)]
    temperature: f32,
    #[arg(long, default_value_t = 40)]
    top_k: usize,
    #[arg(long, default_value_t = 0.95)]
    top_p: f32,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Stop before this text (repeatable).
    #[arg(long)]
    stop: Vec<String>,
    /// KV cache length of the session.
    #[arg(long, default_value_t = 2048)]
    context: usize,
    /// CPU threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Cmd::Health { url } = &cli.cmd {
        return sandgraph_inference::server::probe::exit_code(url);
    }
    let r = match cli.cmd {
        Cmd::Generate(a) => run_generate(a),
        Cmd::Inspect { path, full } => inspect(&path, full),
        Cmd::Bench(a) => bench::run(a),
        Cmd::Pull(a) => pull::run(a),
        Cmd::Serve(a) => serve::run(a),
        Cmd::Health { .. } => unreachable!("handled above"),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

pub fn load_model(path: &Path) -> Result<LlamaModel> {
    LlamaModel::load(path).with_context(|| {
        format!(
            "loading model {} (fetch it with `sandgraph-infer pull smollm2-135m`)",
            path.display()
        )
    })
}

/// Opens a backend session of the requested kind.
pub fn open_backend(
    kind: BackendKind,
    model: &LlamaModel,
    slots: usize,
    context: usize,
    threads: Option<usize>,
) -> Result<Box<dyn Backend>> {
    let use_wgpu = match kind {
        BackendKind::Cpu => false,
        BackendKind::Wgpu => true,
        BackendKind::Auto => hardware_adapter_available(),
    };
    if use_wgpu {
        let b = WgpuBackend::new(model, slots, context, &WgpuOptions::default())
            .context("opening the wgpu backend (use --backend cpu to run without a GPU)")?;
        eprintln!("backend: wgpu on {}", b.describe());
        return Ok(Box::new(b));
    }
    let threads =
        threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let b = CpuBackend::with_threads(model, slots, context, threads)?;
    eprintln!(
        "backend: cpu ({} threads, {:?} kernels)",
        b.threads(),
        b.isa()
    );
    Ok(Box::new(b))
}

/// The prompt as text, chat-rendered when asked.
pub fn render_prompt(
    tok: &Tokenizer,
    prompt: &str,
    chat: bool,
    system: Option<&str>,
) -> Result<String> {
    if !chat {
        return Ok(prompt.to_owned());
    }
    let tpl = ChatTemplate::detect(tok.chat_template())?;
    let mut msgs = Vec::new();
    if let Some(s) = system {
        msgs.push(ChatMessage::new("system", s));
    }
    msgs.push(ChatMessage::new("user", prompt));
    Ok(tpl.render(&msgs))
}

fn run_generate(a: GenerateArgs) -> Result<()> {
    let model = load_model(&a.model)?;
    let tok = Tokenizer::from_gguf(&model.file)?;
    let text = render_prompt(&tok, &a.prompt, a.chat, a.system.as_deref())?;
    let prompt = tok.encode(&text, true);
    let mut backend = open_backend(a.backend, &model, 1, a.context, a.threads)?;
    let req = Request {
        prompt,
        max_tokens: a.max_tokens,
        sampling: Sampling {
            temperature: a.temperature,
            top_k: a.top_k,
            top_p: a.top_p,
            seed: a.seed,
            logit_bias: Vec::new(),
            penalties: Default::default(),
        },
        stop: a.stop,
    };
    let cancel = CancelToken::new();
    let mut stdout = std::io::stdout();
    let (out, t) = generate(backend.as_mut(), &tok, &[req], &cancel, &mut |_, s| {
        let _ = stdout.write_all(s.as_bytes());
        let _ = stdout.flush();
    })?;
    println!();
    eprintln!(
        "[{:?}; prompt {} tokens in {:.1} ms, {} tokens at {:.1} tok/s]",
        out[0].finish,
        t.prompt_tokens,
        t.prefill.as_secs_f64() * 1e3,
        t.generated_tokens,
        t.generated_tokens as f64 / t.decode.as_secs_f64().max(1e-9)
    );
    Ok(())
}

fn show(v: &Value, full: bool) -> String {
    match v {
        Value::String(s) => format!("{s:?}"),
        Value::Array(ty, items) => {
            let n = if full {
                items.len()
            } else {
                items.len().min(8)
            };
            let shown: Vec<String> = items[..n].iter().map(|i| show(i, full)).collect();
            let more = if n < items.len() {
                format!(", ... ({} total)", items.len())
            } else {
                String::new()
            };
            format!("[{ty:?}; {}{more}]", shown.join(", "))
        }
        other => format!("{other:?}"),
    }
}

fn inspect(path: &Path, full: bool) -> Result<()> {
    let f = GgufFile::open(path).with_context(|| format!("reading {}", path.display()))?;
    println!(
        "{}: GGUF v{}, {} bytes, alignment {}",
        path.display(),
        f.version,
        f.len(),
        f.alignment
    );
    println!("\nmetadata ({} keys):", f.metadata().len());
    for (k, v) in f.metadata() {
        let mut s = show(v, full);
        if !full && s.len() > 200 {
            let cut = (0..=200)
                .rev()
                .find(|&i| s.is_char_boundary(i))
                .unwrap_or(0);
            s = format!("{}... ({} chars)", &s[..cut], s.len());
        }
        println!("  {k} = {s}");
    }
    println!("\ntensors ({}):", f.tensors().len());
    let mut total = 0u64;
    for t in f.tensors() {
        total += t.size;
        println!(
            "  {:<32} {:<5} {:?} {} bytes @ {}",
            t.name,
            t.ty.name(),
            t.dims,
            t.size,
            t.offset
        );
    }
    println!("total tensor bytes: {total}");
    if let Ok(m) = LlamaModel::from_gguf(GgufFile::open(path)?) {
        println!("\nmodel: {:?}", m.config);
    }
    Ok(())
}
