//! Kernel-level numbers for the wgpu backend on whatever adapter is present: the adapter and
//! kernel choice, the device's streaming read bandwidth, each matmul of a model at batch 1 and 8
//! (GB/s of weights read), and the decode bandwidth bound for the model. End-to-end tokens/s
//! come from `sandgraph-infer bench --backend wgpu`.
//!
//! With `--profile`, it then decodes with the whole backend at batch 1 and 8 and prints where a
//! decode step's time goes: host time to record and submit the forward, the wait for the
//! chosen tokens, and (where the adapter has timestamp queries) GPU time per kernel kind.
//!
//! With `--decode-only`, it skips the kernel table and only profiles decoding (the dispatch
//! count and host recording time per step need no GPU: lavapipe shows them too).
//!
//! Usage: wgpu_bench [--profile | --decode-only] [MODEL.gguf]   (default: models/SmolLM2-135M-Instruct.Q4_1.gguf
//! or $SANDGRAPH_MODEL)

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use sandgraph_inference::backend::wgpu::probe::Probe;
use sandgraph_inference::backend::wgpu::{GpuContext, WgpuBackend, WgpuOptions, describe_adapters};
use sandgraph_inference::backend::{Backend, SeqChunk};
use sandgraph_inference::model::LlamaModel;

fn main() -> Result<()> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let profile = args.iter().any(|a| a == "--profile");
    let decode_only = args.iter().any(|a| a == "--decode-only");
    args.retain(|a| a != "--profile" && a != "--decode-only");
    let path = args
        .first()
        .cloned()
        .or_else(|| std::env::var("SANDGRAPH_MODEL").ok())
        .unwrap_or_else(|| "models/SmolLM2-135M-Instruct.Q4_1.gguf".into());
    println!("adapters:");
    for a in describe_adapters() {
        println!("  {a}");
    }
    let ctx = GpuContext::new(&WgpuOptions::default()).context("opening a wgpu adapter")?;
    println!("using: {}", ctx.describe());
    let model = LlamaModel::load(&path).with_context(|| format!("loading {path}"))?;
    if decode_only {
        for batch in [1, 8] {
            profile_decode(&model, batch)?;
        }
        return Ok(());
    }
    let w = &model.weights;
    let l = &w.layers[0];
    let shapes = [
        ("attn_q", &l.wq),
        ("attn_k", &l.wk),
        ("attn_output", &l.wo),
        ("ffn_gate", &l.w_gate),
        ("ffn_down", &l.w_down),
        ("output", &w.output),
    ];
    let mut types = Vec::new();
    for (_, t) in &shapes {
        if !types.contains(&t.ty) {
            types.push(t.ty);
        }
    }
    let probe = Probe::new(ctx, &types, model.config.head_dim)?;
    let bw = probe.device_read_bandwidth()?;
    println!("device streaming read bandwidth: {:.1} GB/s", bw / 1e9);
    println!(
        "{:<12} {:>6} {:>13} {:>7} {:>12} {:>10}",
        "matrix", "type", "rows x cols", "batch", "us/dispatch", "GB/s"
    );
    for (name, t) in shapes {
        for n in [1, 8] {
            let d = probe.time_matmul(t.ty, t.rows, t.cols, n, 20);
            let bytes = (t.rows * t.row_bytes()) as f64;
            println!(
                "{:<12} {:>6} {:>13} {:>7} {:>12.1} {:>10.2}",
                name,
                t.ty.name(),
                format!("{}x{}", t.rows, t.cols),
                n,
                d.as_secs_f64() * 1e6,
                bytes / d.as_secs_f64() / 1e9
            );
        }
    }
    let mut per_token = (w.output.rows * w.output.row_bytes() + w.token_embd.row_bytes()) as f64;
    for l in &w.layers {
        for t in [&l.wq, &l.wk, &l.wv, &l.wo, &l.w_gate, &l.w_up, &l.w_down] {
            per_token += (t.rows * t.row_bytes()) as f64;
        }
    }
    println!(
        "weights read per decode step: {:.1} MB; bandwidth bound at batch 1: {:.0} tok/s",
        per_token / 1e6,
        bw / per_token
    );
    if profile {
        for batch in [1, 8] {
            profile_decode(&model, batch)?;
        }
    }
    Ok(())
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Prefills `batch` sequences of 64 tokens, then times decode steps (forward + argmax) and
/// profiles one.
fn profile_decode(model: &LlamaModel, batch: usize) -> Result<()> {
    let (prompt, warm, steps) = (64, 8, 32);
    let mut b = WgpuBackend::new(model, batch, 256, &WgpuOptions::default())?;
    let vocab = model.config.vocab_size as u32;
    let prompts: Vec<Vec<u32>> = (0..batch)
        .map(|s| {
            (0..prompt)
                .map(|i| (s as u32 * 7919 + i as u32 * 104_729 + 1) % vocab)
                .collect()
        })
        .collect();
    let chunks: Vec<SeqChunk> = prompts
        .iter()
        .enumerate()
        .map(|(slot, t)| SeqChunk {
            slot,
            start_pos: 0,
            tokens: t,
        })
        .collect();
    b.forward(&chunks)?;
    let mut next = b.argmax()?;
    let mut pos = prompt;
    let (mut rec, mut wait, mut total, mut recording) = (vec![], vec![], vec![], vec![]);
    let mut kernels = 0;
    for step in 0..warm + steps {
        let toks: Vec<[u32; 1]> = next.iter().map(|&t| [t]).collect();
        let chunks: Vec<SeqChunk> = toks
            .iter()
            .enumerate()
            .map(|(slot, t)| SeqChunk {
                slot,
                start_pos: pos,
                tokens: t,
            })
            .collect();
        let t0 = Instant::now();
        b.forward(&chunks)?;
        let t1 = Instant::now();
        next = b.argmax()?;
        let t2 = Instant::now();
        pos += 1;
        if step >= warm {
            let stats = b.last_forward_stats();
            kernels = stats.kernels;
            recording.push(stats.recording);
            rec.push(t1 - t0);
            wait.push(t2 - t1);
            total.push(t2 - t0);
        }
    }
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    let step = median(&mut total);
    println!(
        "\ndecode batch {batch} (context {prompt}..{pos}, median of {steps} steps): {:.0} us/step = {:.1} tok/s; host records+submits the forward in {:.0} us, then waits {:.0} us for argmax",
        us(step),
        batch as f64 / step.as_secs_f64(),
        us(median(&mut rec)),
        us(median(&mut wait)),
    );
    println!(
        "  forward: {kernels} kernel dispatches, recorded by the host in {:.0} us (median; command buffers built, not submitted)",
        us(median(&mut recording)),
    );
    let toks: Vec<[u32; 1]> = next.iter().map(|&t| [t]).collect();
    let chunks: Vec<SeqChunk> = toks
        .iter()
        .enumerate()
        .map(|(slot, t)| SeqChunk {
            slot,
            start_pos: pos,
            tokens: t,
        })
        .collect();
    let Some((_, p)) = b.profile_step(&chunks)? else {
        println!("  (no timestamp queries on this adapter: no GPU-side breakdown)");
        return Ok(());
    };
    let sum: f64 = p.kernels.iter().map(|k| k.seconds).sum();
    let mut ks = p.kernels.clone();
    ks.sort_by(|a, b| b.seconds.total_cmp(&a.seconds));
    println!(
        "  GPU time per kernel kind (one profiled step, each dispatch timed in its own pass):"
    );
    println!(
        "  {:<18} {:>10} {:>10} {:>12} {:>7}",
        "kernel", "dispatches", "total us", "us/dispatch", "share"
    );
    for k in &ks {
        println!(
            "  {:<18} {:>10} {:>10.1} {:>12.2} {:>6.1}%",
            k.kind,
            k.dispatches,
            k.seconds * 1e6,
            k.seconds * 1e6 / k.dispatches as f64,
            100.0 * k.seconds / sum
        );
    }
    println!(
        "  kernels sum {:.0} us; first start to last end {:.0} us (includes the host round trip before argmax)",
        sum * 1e6,
        p.span_seconds * 1e6
    );
    Ok(())
}
