//! Kernel-level numbers for the wgpu backend on whatever adapter is present: the adapter and
//! kernel choice, the device's streaming read bandwidth, each matmul of a model at batch 1 and 8
//! (GB/s of weights read), and the decode bandwidth bound for the model. End-to-end tokens/s
//! come from `sandgraph-infer bench --backend wgpu`.
//!
//! Usage: wgpu_bench [MODEL.gguf]   (default: models/SmolLM2-135M-Instruct.Q4_1.gguf or
//! $SANDGRAPH_MODEL)

use anyhow::{Context, Result};
use sandgraph_inference::backend::wgpu::probe::Probe;
use sandgraph_inference::backend::wgpu::{GpuContext, WgpuOptions, describe_adapters};
use sandgraph_inference::model::LlamaModel;

fn main() -> Result<()> {
    let path = std::env::args()
        .nth(1)
        .or_else(|| std::env::var("SANDGRAPH_MODEL").ok())
        .unwrap_or_else(|| "models/SmolLM2-135M-Instruct.Q4_1.gguf".into());
    println!("adapters:");
    for a in describe_adapters() {
        println!("  {a}");
    }
    let ctx = GpuContext::new(&WgpuOptions::default()).context("opening a wgpu adapter")?;
    println!("using: {}", ctx.describe());
    let model = LlamaModel::load(&path).with_context(|| format!("loading {path}"))?;
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
    Ok(())
}
