//! The real model on the wgpu backend (lavapipe on CI): greedy ChatML answer must be the one
//! llama.cpp gives, and the top-5 logits must agree with the CPU backend at every position of a
//! 64-token sequence. Needs the model file (scripts/setup.sh fetches it) and an adapter; missing
//! either is a failure with the fix in the message, never a skip.

use std::path::PathBuf;

use sandgraph_inference::backend::wgpu::{WgpuBackend, WgpuOptions};
use sandgraph_inference::backend::{Backend, SeqChunk};
use sandgraph_inference::model::LlamaModel;
use sandgraph_inference::tokenizer::Tokenizer;

fn model_path() -> PathBuf {
    match std::env::var_os("SANDGRAPH_MODEL") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../models/SmolLM2-135M-Instruct.Q4_1.gguf"),
    }
}

fn load() -> (LlamaModel, Tokenizer) {
    let p = model_path();
    let model = LlamaModel::load(&p).unwrap_or_else(|e| {
        panic!(
            "golden test needs the model at {} (run scripts/setup.sh or set SANDGRAPH_MODEL): {e}",
            p.display()
        )
    });
    let tok = Tokenizer::from_gguf(&model.file).expect("tokenizer in the model");
    (model, tok)
}

const PROMPT: &str = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n";

fn greedy_answer(opts: &WgpuOptions) -> String {
    let (model, tok) = load();
    let mut be = WgpuBackend::new(&model, 1, 128, opts).unwrap();
    eprintln!("adapter: {}", be.describe());
    let prompt = tok.encode(PROMPT, true);
    let end = tok.token_id("<|im_end|>").expect("<|im_end|> in vocab");
    let mut pos = 0;
    let mut chunk = prompt.clone();
    let mut out = vec![];
    for _ in 0..24 {
        be.forward(&[SeqChunk {
            slot: 0,
            start_pos: pos,
            tokens: &chunk,
        }])
        .unwrap();
        pos += chunk.len();
        let next = be.argmax().unwrap()[0];
        if next == end {
            break;
        }
        out.push(next);
        chunk = vec![next];
    }
    tok.decode_lossy(&out)
}

#[test]
fn wgpu_greedy_answer_is_paris() {
    assert_eq!(
        greedy_answer(&WgpuOptions::default()),
        "The capital of France is Paris."
    );
}

/// The kernels a hardware GPU gets (tiled; with subgroups where the adapter has them), run
/// here on lavapipe so the rented-GPU check is not their first run on the real model.
#[test]
fn wgpu_greedy_answer_is_paris_with_the_gpu_kernels() {
    use sandgraph_inference::backend::wgpu::{GpuContext, KernelVariant};
    let c = GpuContext::new(&WgpuOptions::default()).unwrap();
    let mut variants = vec![KernelVariant::TiledShared];
    if c.subgroups && c.info.subgroup_min_size == c.info.subgroup_max_size {
        variants.push(KernelVariant::TiledSubgroup { lanes: 0 });
    }
    for v in variants {
        let opts = WgpuOptions {
            variant: Some(v),
            ..WgpuOptions::default()
        };
        assert_eq!(
            greedy_answer(&opts),
            "The capital of France is Paris.",
            "{v}"
        );
    }
}

/// The 64-token sequence: the golden prompt followed by the reference answer and more chat,
/// cut at 64 tokens.
fn sequence(tok: &Tokenizer) -> Vec<u32> {
    let text = format!(
        "{PROMPT}The capital of France is Paris.<|im_end|>\n<|im_start|>user\nAnd what river flows through it, and which famous tower stands near its banks?<|im_end|>\n<|im_start|>assistant\nThe Seine flows through Paris, and the Eiffel Tower stands near it."
    );
    let mut ids = tok.encode(&text, true);
    assert!(ids.len() >= 64, "sequence has only {} tokens", ids.len());
    ids.truncate(64);
    ids
}

/// Largest |wgpu - cpu| allowed for a top-5 logit. The CPU backend multiplies with
/// activations quantized to 8 bits (as llama.cpp does) and the wgpu kernels in f32: wgpu stays
/// within 1e-3 of an f64 reference (test below) while the CPU logits move by up to ~0.7 on the
/// top-5 of this sequence (and ~2 on the whole vocabulary), so near-ties may swap ranks.
const TOL: f32 = 1.0;

#[test]
fn wgpu_and_cpu_top5_agree_at_every_position_of_64_tokens() {
    use sandgraph_inference::backend::cpu::CpuBackend;
    let (model, tok) = load();
    let ids = sequence(&tok);
    let mut gpu = WgpuBackend::new(&model, 1, 64, &WgpuOptions::default()).unwrap();
    let mut cpu = CpuBackend::new(&model, 1, 64).unwrap();
    let mut worst = 0.0f32;
    let mut swaps = 0;
    for (pos, &t) in ids.iter().enumerate() {
        let chunk = [SeqChunk {
            slot: 0,
            start_pos: pos,
            tokens: &[t],
        }];
        gpu.forward(&chunk).unwrap();
        cpu.forward(&chunk).unwrap();
        let g = gpu.top_k(5).unwrap().remove(0);
        let c = cpu.top_k(5).unwrap().remove(0);
        let gl = gpu.logits().unwrap().remove(0);
        let cl = cpu.logits().unwrap().remove(0);
        // The device top-k is exactly the top-k of the device's own logits.
        assert_eq!(
            g,
            sandgraph_inference::backend::top_k_of(&gl, 5),
            "position {pos}"
        );
        for (rank, (&(gi, _), &(ci, _))) in g.iter().zip(&c).enumerate() {
            for id in [gi, ci] {
                let d = (gl[id as usize] - cl[id as usize]).abs();
                worst = worst.max(d);
                assert!(
                    d <= TOL,
                    "position {pos}: token {id}: wgpu {} cpu {}",
                    gl[id as usize],
                    cl[id as usize]
                );
            }
            // Ids must match, except near-ties (within TOL on the CPU) may trade places.
            if gi != ci {
                swaps += 1;
                let gap = (cl[gi as usize] - cl[ci as usize]).abs();
                assert!(
                    gap <= TOL,
                    "position {pos} rank {rank}: wgpu picks {gi}, cpu {ci} (cpu logits {} vs {}); wgpu {g:?} cpu {c:?}",
                    cl[gi as usize],
                    cl[ci as usize]
                );
            }
        }
    }
    eprintln!("largest top-5 logit difference: {worst}; near-tie rank swaps: {swaps}");
}

/// A scalar f64 forward pass over the dequantized weights: the ground truth for the kernels.
struct Ref {
    c: sandgraph_inference::model::LlamaConfig,
    emb: Vec<f32>,
    onorm: Vec<f32>,
    layers: Vec<[Vec<f32>; 9]>,
}

fn mv(w: &[f32], x: &[f64], rows: usize) -> Vec<f64> {
    let k = x.len();
    (0..rows)
        .map(|r| {
            w[r * k..(r + 1) * k]
                .iter()
                .zip(x)
                .map(|(&a, &b)| a as f64 * b)
                .sum()
        })
        .collect()
}
fn norm(x: &[f64], g: &[f32], eps: f64) -> Vec<f64> {
    let ms = x.iter().map(|v| v * v).sum::<f64>() / x.len() as f64;
    let s = 1.0 / (ms + eps).sqrt();
    x.iter().zip(g).map(|(v, &w)| v * s * w as f64).collect()
}
fn rope(v: &mut [f64], pos: usize, base: f64) {
    let hd = v.len();
    for i in 0..hd / 2 {
        let a = pos as f64 * base.powf(-2.0 * i as f64 / hd as f64);
        let (x, y) = (v[2 * i], v[2 * i + 1]);
        v[2 * i] = x * a.cos() - y * a.sin();
        v[2 * i + 1] = x * a.sin() + y * a.cos();
    }
}
impl Ref {
    fn logits(&self, ids: &[u32]) -> Vec<Vec<f64>> {
        let c = &self.c;
        let hd = c.head_dim;
        let (nh, nkv) = (c.n_heads, c.n_kv_heads);
        let mut kc: Vec<Vec<Vec<f64>>> = vec![vec![]; c.n_layers];
        let mut vc: Vec<Vec<Vec<f64>>> = vec![vec![]; c.n_layers];
        let mut out = vec![];
        for (pos, &t) in ids.iter().enumerate() {
            let mut x: Vec<f64> = self.emb[t as usize * c.dim..][..c.dim]
                .iter()
                .map(|&v| v as f64)
                .collect();
            for (l, w) in self.layers.iter().enumerate() {
                let xn = norm(&x, &w[0], c.norm_eps as f64);
                let mut q = mv(&w[1], &xn, nh * hd);
                let mut k = mv(&w[2], &xn, nkv * hd);
                let v = mv(&w[3], &xn, nkv * hd);
                for h in 0..nh {
                    rope(&mut q[h * hd..(h + 1) * hd], pos, c.rope_base as f64);
                }
                for h in 0..nkv {
                    rope(&mut k[h * hd..(h + 1) * hd], pos, c.rope_base as f64);
                }
                kc[l].push(k);
                vc[l].push(v);
                let mut ao = vec![0.0; nh * hd];
                for h in 0..nh {
                    let kh = h / (nh / nkv);
                    let sc: Vec<f64> = (0..=pos)
                        .map(|p| {
                            (0..hd)
                                .map(|d| q[h * hd + d] * kc[l][p][kh * hd + d])
                                .sum::<f64>()
                                / (hd as f64).sqrt()
                        })
                        .collect();
                    let m = sc.iter().cloned().fold(f64::MIN, f64::max);
                    let e: Vec<f64> = sc.iter().map(|s| (s - m).exp()).collect();
                    let z: f64 = e.iter().sum();
                    for d in 0..hd {
                        ao[h * hd + d] = (0..=pos).map(|p| e[p] / z * vc[l][p][kh * hd + d]).sum();
                    }
                }
                let o = mv(&w[4], &ao, c.dim);
                for i in 0..c.dim {
                    x[i] += o[i];
                }
                let xn = norm(&x, &w[5], c.norm_eps as f64);
                let g = mv(&w[6], &xn, c.ffn_dim);
                let u = mv(&w[7], &xn, c.ffn_dim);
                let h: Vec<f64> = g
                    .iter()
                    .zip(&u)
                    .map(|(g, u)| g / (1.0 + (-g).exp()) * u)
                    .collect();
                let d = mv(&w[8], &h, c.dim);
                for i in 0..c.dim {
                    x[i] += d[i];
                }
            }
            let xn = norm(&x, &self.onorm, c.norm_eps as f64);
            out.push(mv(&self.emb, &xn, c.vocab_size));
        }
        out
    }
}

#[test]
fn wgpu_logits_match_an_f64_reference_at_the_first_12_positions() {
    let (model, tok) = load();
    let w = &model.weights;
    let dq = |t| model.dequantize(t);
    let r = Ref {
        c: model.config.clone(),
        emb: dq(&w.token_embd),
        onorm: dq(&w.output_norm),
        layers: w
            .layers
            .iter()
            .map(|l| {
                [
                    dq(&l.attn_norm),
                    dq(&l.wq),
                    dq(&l.wk),
                    dq(&l.wv),
                    dq(&l.wo),
                    dq(&l.ffn_norm),
                    dq(&l.w_gate),
                    dq(&l.w_up),
                    dq(&l.w_down),
                ]
            })
            .collect(),
    };
    let ids = &sequence(&tok)[..12];
    let want = r.logits(ids);
    let mut gpu = WgpuBackend::new(&model, 1, 64, &WgpuOptions::default()).unwrap();
    // Prefill the first 8 as one chunk (the batched kernels), then one token at a time.
    gpu.forward(&[SeqChunk {
        slot: 0,
        start_pos: 0,
        tokens: &ids[..8],
    }])
    .unwrap();
    let mut got = vec![(7, gpu.logits().unwrap().remove(0))];
    for pos in 8..12 {
        gpu.forward(&[SeqChunk {
            slot: 0,
            start_pos: pos,
            tokens: &ids[pos..pos + 1],
        }])
        .unwrap();
        got.push((pos, gpu.logits().unwrap().remove(0)));
    }
    for (pos, g) in got {
        let worst = g
            .iter()
            .zip(&want[pos])
            .map(|(&a, &b)| (a as f64 - b).abs())
            .fold(0.0, f64::max);
        assert!(
            worst <= 1e-3,
            "position {pos}: max |wgpu - f64 reference| = {worst}"
        );
    }
}
