//! What the host adds to one model call on the embedded engine: `Models::chat` (alias lookup,
//! the host request as the OpenAI body, the server's parsing and checks, the answer mapped
//! back) against the baseline of calling the engine's chat-completion core directly with an
//! already-parsed request. Both generate the same 64 greedy tokens on the same engine,
//! interleaved call by call; the table gives medians and the overhead as a share of the call.
//!
//! Run: `cargo bench -p sandgraph --bench model_overhead` (`SANDGRAPH_BENCH_REPS`, default 15).

use std::time::{Duration, Instant};

use sandgraph::model::embedded::{EmbeddedBackend, EmbeddedProvider, EmbeddedSettings};
use sandgraph::model::{ChatRequest, Message, Models, Role, wire};
use sandgraph::sandbox::egress::SecretStore;
use sandgraph_inference::server::chat::start_chat;
use sandgraph_inference::server::openai::{ChatRequest as WireRequest, parse_body};

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let reps: usize = std::env::var("SANDGRAPH_BENCH_REPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(15);
    let yaml = "models:\n  default: { provider: embedded, path: models/SmolLM2-135M-Instruct.Q4_1.gguf, backend: cpu, slots: 2, context: 512 }\n";
    let models = Models::parse("bench", yaml, &repo, &SecretStore::default()).expect("models");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let request = ChatRequest {
        model: "default".into(),
        messages: vec![Message {
            role: Role::User,
            content: "Write a long story about a dragon who learns to cook.".into(),
            tool_calls: vec![],
            tool_call_id: None,
        }],
        max_tokens: Some(64),
        temperature: Some(0.0),
        top_p: None,
        seed: Some(1),
        stop: vec![],
        response_format: None,
        tools: vec![],
        tool_choice: None,
    };
    // The same engine the alias uses (one per settings per process).
    let provider = EmbeddedProvider::new(
        "bench",
        EmbeddedSettings {
            backend: EmbeddedBackend::Cpu,
            slots: 2,
            context: 512,
            ..EmbeddedSettings::new(repo.join("models/SmolLM2-135M-Instruct.Q4_1.gguf"))
        },
    );
    let engine = rt.block_on(provider.engine()).expect("engine");
    let body = wire::request_body(&request, engine.model_name(), false).to_string();
    let parsed: WireRequest = parse_body(body.as_bytes()).expect("request");
    let direct = || async {
        let started = Instant::now();
        let mut job = start_chat(
            engine.ready(),
            "direct".into(),
            parsed.clone(),
            started,
            false,
        )
        .unwrap();
        let a = job.collect(&mut |_| {}).await.unwrap();
        (started.elapsed(), a.completion_tokens)
    };
    let hosted = || async {
        let started = Instant::now();
        let a = models.chat("default", &request, None).await.unwrap();
        (started.elapsed(), a.usage.completion_tokens as usize)
    };
    // Warm-up: caches, the slot's prefix reuse, the allocator.
    rt.block_on(async {
        direct().await;
        hosted().await;
    });
    let (mut d, mut h, mut diffs) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..reps {
        let (a, b) = rt.block_on(async {
            // Alternate which goes first so drift hits both alike.
            if i % 2 == 0 {
                let a = direct().await;
                (a, hosted().await)
            } else {
                let b = hosted().await;
                (direct().await, b)
            }
        });
        assert_eq!(a.1, 64, "the baseline generated {} tokens, not 64", a.1);
        assert_eq!(b.1, 64, "the provider generated {} tokens, not 64", b.1);
        d.push(a.0);
        h.push(b.0);
        diffs.push(b.0.as_secs_f64() - a.0.as_secs_f64());
    }
    diffs.sort_by(|a, b| a.partial_cmp(b).unwrap());
    // The host's own work per call, without the engine: the alias's request as the OpenAI
    // body and back through the server's parsing and checks (what the provider adds).
    let n = 2000;
    let started = Instant::now();
    for _ in 0..n {
        let body = wire::request_body(&request, engine.model_name(), false).to_string();
        let mut r: WireRequest = parse_body(body.as_bytes()).unwrap();
        std::hint::black_box(r.params(512, engine.ready().tok.vocab_size()).unwrap());
        std::hint::black_box(r.chat_messages().unwrap());
    }
    let host_work = started.elapsed() / n;
    let (md, mh) = (median(d), median(h));
    let paired = diffs[diffs.len() / 2];
    println!(
        "model call overhead, embedded engine ({}), 64 greedy tokens, {reps} calls each, interleaved",
        engine.backend()
    );
    println!("{:<34} {:>12}", "path", "median ms");
    println!(
        "{:<34} {:>12.2}",
        "engine core directly (baseline)",
        md.as_secs_f64() * 1e3
    );
    println!(
        "{:<34} {:>12.2}",
        "Models::chat -> embedded provider",
        mh.as_secs_f64() * 1e3
    );
    println!(
        "paired median difference: {:.3} ms per call = {:.2} % of the baseline call (noise included)",
        paired * 1e3,
        paired / md.as_secs_f64() * 100.0
    );
    println!(
        "host-side work alone: {:.1} us per call = {:.4} % of the baseline call",
        host_work.as_secs_f64() * 1e6,
        host_work.as_secs_f64() / md.as_secs_f64() * 100.0
    );
}
