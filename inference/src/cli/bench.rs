//! `sandgraph-infer bench`: prefill and decode throughput per backend and batch size, plus the
//! memory-bandwidth bound, printed as one table (and CSV for scripts).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Result;

use super::{DEFAULT_MODEL, load_model, open_backend};
use sandgraph_inference::backend::{Backend, BackendKind, SeqChunk};
use sandgraph_inference::model::LlamaModel;
use sandgraph_inference::sampling::{
    Penalties, Rng, Sampling, SeenTokens, choose, fetch_candidates,
};

#[derive(clap::Args)]
pub struct BenchArgs {
    #[arg(long, env = "SANDGRAPH_MODEL", default_value = DEFAULT_MODEL)]
    model: PathBuf,
    /// Backends to measure: cpu, wgpu, or both as "cpu,wgpu".
    #[arg(long, default_value = "cpu", value_delimiter = ',')]
    backend: Vec<BackendKind>,
    /// Batch sizes (sequences decoded together).
    #[arg(long, default_value = "1,8", value_delimiter = ',')]
    batch: Vec<usize>,
    /// Prompt tokens per sequence.
    #[arg(long, default_value_t = 128)]
    prompt_tokens: usize,
    /// Decode steps per sequence.
    #[arg(long, default_value_t = 64)]
    decode_tokens: usize,
    /// Repetitions; the median is reported.
    #[arg(long, default_value_t = 3)]
    reps: usize,
    #[arg(long)]
    threads: Option<usize>,
    /// Also print machine-readable CSV lines prefixed with "csv,".
    #[arg(long)]
    csv: bool,
    /// Skip the memory-bandwidth measurement.
    #[arg(long)]
    no_bandwidth: bool,
    /// Instead of the throughput table: the decode step under each sampling setting (the
    /// server's own token selection: temperature, top-p, top-k, penalties) against greedy,
    /// measured in the same run with the settings interleaved in every repetition.
    #[arg(long)]
    sampling: bool,
}

struct Row {
    backend: String,
    batch: usize,
    prefill: f64,
    decode: f64,
    decode_best: f64,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// A deterministic pseudo-prompt of ordinary tokens (ids 200..).
fn prompt(seq: usize, n: usize, vocab: usize) -> Vec<u32> {
    (0..n)
        .map(|i| (200 + (i * 131 + seq * 977) % (vocab - 200)) as u32)
        .collect()
}

/// Prefills every prompt (sequence i in slot i), 256 tokens per sequence per forward.
fn prefill(b: &mut dyn Backend, prompts: &[Vec<u32>]) -> Result<()> {
    let len = prompts.iter().map(Vec::len).max().unwrap_or(0);
    let mut done = 0;
    while done < len {
        let end = (done + 256).min(len);
        let chunks: Vec<SeqChunk> = prompts
            .iter()
            .enumerate()
            .map(|(s, p)| SeqChunk {
                slot: s,
                start_pos: done,
                tokens: &p[done..end],
            })
            .collect();
        b.forward(&chunks)?;
        done = end;
    }
    Ok(())
}

/// One decode step: token `next[i]` of sequence i at position `pos`.
fn feed(b: &mut dyn Backend, next: &[u32], pos: usize) -> Result<()> {
    let toks: Vec<[u32; 1]> = next.iter().map(|&t| [t]).collect();
    let chunks: Vec<SeqChunk> = toks
        .iter()
        .enumerate()
        .map(|(s, t)| SeqChunk {
            slot: s,
            start_pos: pos,
            tokens: t,
        })
        .collect();
    b.forward(&chunks)?;
    Ok(())
}

fn measure(
    b: &mut dyn Backend,
    batch: usize,
    a: &BenchArgs,
    vocab: usize,
) -> Result<(Duration, Duration)> {
    let prompts: Vec<Vec<u32>> = (0..batch)
        .map(|s| prompt(s, a.prompt_tokens, vocab))
        .collect();
    let t0 = Instant::now();
    prefill(b, &prompts)?;
    let mut next = b.argmax()?;
    let prefill = t0.elapsed();
    let t1 = Instant::now();
    for step in 0..a.decode_tokens {
        feed(b, &next, a.prompt_tokens + step)?;
        next = b.argmax()?;
    }
    Ok((prefill, t1.elapsed()))
}

/// Bytes of weights read per decoded token (every matrix once, plus one embedding row).
pub fn weight_bytes_per_token(m: &LlamaModel) -> u64 {
    let w = &m.weights;
    let mut total = (w.output.rows * w.output.row_bytes()) as u64;
    total += w.token_embd.row_bytes() as u64;
    for l in &w.layers {
        for t in [
            &l.wq,
            &l.wk,
            &l.wv,
            &l.wo,
            &l.w_gate,
            &l.w_up,
            &l.w_down,
            &l.attn_norm,
            &l.ffn_norm,
        ] {
            total += (t.rows * t.row_bytes()) as u64;
        }
    }
    total
}

/// Streaming-read bandwidth over a buffer much larger than the caches, on `threads` threads.
pub fn memory_bandwidth(threads: usize) -> f64 {
    let n = 1usize << 27; // 128 Mi u64 = 1 GiB
    let buf: Vec<u64> = (0..n as u64).collect();
    let per = n / threads;
    let mut best = 0.0f64;
    for _ in 0..3 {
        let t = Instant::now();
        let sums: Vec<u64> = std::thread::scope(|s| {
            let hs: Vec<_> = buf
                .chunks(per)
                .map(|c| {
                    s.spawn(move || {
                        let mut acc = [0u64; 8];
                        for block in c.chunks_exact(8) {
                            for i in 0..8 {
                                acc[i] = acc[i].wrapping_add(block[i]);
                            }
                        }
                        acc.iter().fold(0u64, |a, b| a.wrapping_add(*b))
                    })
                })
                .collect();
            hs.into_iter()
                .map(|h| h.join().expect("bandwidth thread"))
                .collect()
        });
        std::hint::black_box(sums);
        best = best.max((n * 8) as f64 / t.elapsed().as_secs_f64());
    }
    best
}

pub fn run(a: BenchArgs) -> Result<()> {
    if a.sampling {
        return run_sampling(&a);
    }
    let model = load_model(&a.model)?;
    let vocab = model.config.vocab_size;
    let ctx = (a.prompt_tokens + a.decode_tokens).max(12) + 1;
    let threads = a
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let mut rows = Vec::new();
    for &kind in &a.backend {
        let max_batch = a.batch.iter().copied().max().unwrap_or(1);
        let mut b = open_backend(kind, &model, max_batch, ctx, Some(threads))?;
        // Warm-up: page the weights in, compile pipelines.
        measure(
            b.as_mut(),
            1,
            &BenchArgs {
                prompt_tokens: 8,
                decode_tokens: 4,
                ..a.clone_shallow()
            },
            vocab,
        )?;
        for &batch in &a.batch {
            let mut pf = Vec::new();
            let mut dc = Vec::new();
            for _ in 0..a.reps.max(1) {
                let (p, d) = measure(b.as_mut(), batch, &a, vocab)?;
                pf.push((batch * a.prompt_tokens) as f64 / p.as_secs_f64());
                dc.push((batch * a.decode_tokens) as f64 / d.as_secs_f64());
            }
            let decode_best = dc.iter().cloned().fold(0.0, f64::max);
            rows.push(Row {
                backend: b.name().to_string(),
                batch,
                prefill: median(pf),
                decode: median(dc),
                decode_best,
            });
        }
    }
    let bytes = weight_bytes_per_token(&model);
    println!(
        "model {} | {} prompt + {} decode tokens per sequence | {} threads | median of {}",
        a.model.display(),
        a.prompt_tokens,
        a.decode_tokens,
        threads,
        a.reps
    );
    println!(
        "{:<8} {:>5} {:>14} {:>14} {:>12}",
        "backend", "batch", "prefill tok/s", "decode tok/s", "decode best"
    );
    for r in &rows {
        println!(
            "{:<8} {:>5} {:>14.1} {:>14.1} {:>12.1}",
            r.backend, r.batch, r.prefill, r.decode, r.decode_best
        );
        if a.csv {
            println!(
                "csv,{},{},{:.2},{:.2},{:.2}",
                r.backend, r.batch, r.prefill, r.decode, r.decode_best
            );
        }
    }
    if !a.no_bandwidth {
        let bw = memory_bandwidth(threads);
        let bound = bw / bytes as f64;
        println!(
            "weights read per decode step: {:.1} MB; streaming read bandwidth ({threads} threads): {:.1} GB/s; bandwidth bound at batch 1: {:.1} tok/s",
            bytes as f64 / 1e6,
            bw / 1e9,
            bound
        );
        if a.csv {
            println!("csv,bandwidth,{:.0},{},{:.2}", bw, bytes, bound);
        }
    }
    Ok(())
}

impl BenchArgs {
    fn clone_shallow(&self) -> BenchArgs {
        BenchArgs {
            model: self.model.clone(),
            backend: self.backend.clone(),
            batch: self.batch.clone(),
            prompt_tokens: self.prompt_tokens,
            decode_tokens: self.decode_tokens,
            reps: self.reps,
            threads: self.threads,
            csv: self.csv,
            no_bandwidth: self.no_bandwidth,
            sampling: self.sampling,
        }
    }
}

/// The settings `--sampling` compares, greedy first (the baseline).
fn sampling_settings() -> Vec<(&'static str, Sampling)> {
    let s = |temperature, top_k, top_p, penalties| Sampling {
        temperature,
        top_k,
        top_p,
        seed: 7,
        logit_bias: Vec::new(),
        penalties,
    };
    let pen = Penalties {
        frequency: 0.5,
        presence: 0.3,
        repetition: 1.1,
    };
    vec![
        ("greedy", Sampling::greedy()),
        (
            "temperature 1 (OpenAI default)",
            s(1.0, 0, 1.0, Penalties::NONE),
        ),
        (
            "temperature 0.7, top_p 0.9",
            s(0.7, 0, 0.9, Penalties::NONE),
        ),
        (
            "temperature 0.8, top_k 40",
            s(0.8, 40, 1.0, Penalties::NONE),
        ),
        ("top_k 40, top_p 0.95", s(0.8, 40, 0.95, Penalties::NONE)),
        (
            "greedy, repetition 1.1",
            s(
                0.0,
                0,
                1.0,
                Penalties {
                    repetition: 1.1,
                    ..Penalties::NONE
                },
            ),
        ),
        ("temperature 1, penalties", s(1.0, 0, 1.0, pen)),
        ("top_p 0.95, top_k 50, penalties", s(0.9, 50, 0.95, pen)),
    ]
}

/// Decode time of `batch` sequences under `sampling`: forward, then the token selection the
/// server's batcher runs (`fetch_candidates` + `choose`), the picks fed back.
fn measure_sampling(
    b: &mut dyn Backend,
    batch: usize,
    a: &BenchArgs,
    vocab: usize,
    sampling: &Sampling,
) -> Result<Duration> {
    let prompts: Vec<Vec<u32>> = (0..batch)
        .map(|s| prompt(s, a.prompt_tokens, vocab))
        .collect();
    prefill(b, &prompts)?;
    let samplings: Vec<&Sampling> = vec![sampling; batch];
    let mut rngs: Vec<Rng> = (0..batch).map(|i| Rng::new(i as u64)).collect();
    let mut seen: Vec<SeenTokens> = prompts
        .iter()
        .map(|p| SeenTokens::new(p, &sampling.penalties))
        .collect();
    let mut next = b.argmax()?;
    let t = Instant::now();
    for step in 0..a.decode_tokens {
        feed(b, &next, a.prompt_tokens + step)?;
        next = fetch_candidates(b, &samplings)?
            .into_iter()
            .enumerate()
            .map(|(i, c)| choose(c, sampling, &mut rngs[i], &seen[i]))
            .collect();
        for (i, &t) in next.iter().enumerate() {
            seen[i].push(t);
        }
    }
    Ok(t.elapsed())
}

fn run_sampling(a: &BenchArgs) -> Result<()> {
    let model = load_model(&a.model)?;
    let vocab = model.config.vocab_size;
    let ctx = (a.prompt_tokens + a.decode_tokens).max(12) + 1;
    let threads = a
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let settings = sampling_settings();
    println!(
        "model {} | vocabulary {vocab} | {} prompt + {} decode tokens per sequence | {threads} threads | median of {} interleaved repetitions",
        a.model.display(),
        a.prompt_tokens,
        a.decode_tokens,
        a.reps
    );
    println!(
        "{:<8} {:>5}  {:<34} {:>12} {:>10}",
        "backend", "batch", "sampling", "ms / step", "vs greedy"
    );
    for &kind in &a.backend {
        let max_batch = a.batch.iter().copied().max().unwrap_or(1);
        let mut b = open_backend(kind, &model, max_batch, ctx, Some(threads))?;
        let warm = BenchArgs {
            prompt_tokens: 8,
            decode_tokens: 4,
            ..a.clone_shallow()
        };
        measure_sampling(b.as_mut(), 1, &warm, vocab, &settings[1].1)?;
        for &batch in &a.batch {
            let mut times: Vec<Vec<f64>> = vec![Vec::new(); settings.len()];
            for _ in 0..a.reps.max(1) {
                for (k, (_, s)) in settings.iter().enumerate() {
                    let d = measure_sampling(b.as_mut(), batch, a, vocab, s)?;
                    times[k].push(d.as_secs_f64() * 1e3 / a.decode_tokens as f64);
                }
            }
            let med: Vec<f64> = times.into_iter().map(median).collect();
            for (k, (name, _)) in settings.iter().enumerate() {
                println!(
                    "{:<8} {:>5}  {:<34} {:>12.3} {:>9.3}x",
                    b.name(),
                    batch,
                    name,
                    med[k],
                    med[k] / med[0]
                );
                if a.csv {
                    println!(
                        "csv,sampling,{},{batch},{name},{:.4},{:.4}",
                        b.name(),
                        med[k],
                        med[k] / med[0]
                    );
                }
            }
        }
    }
    Ok(())
}
