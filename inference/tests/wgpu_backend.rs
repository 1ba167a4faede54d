//! The whole wgpu backend against the CPU backend on seeded tiny models (each weight type), plus
//! its batching, multi-pass, slot-reuse and error behaviour. Needs a wgpu adapter (lavapipe on
//! CI); finding none fails the tests.
//!
//! Tolerance against the CPU backend: max |wgpu - cpu| over a logits row <= 3% of that row's
//! spread (max - min) on the CPU: the CPU multiplies with 8-bit-quantized activations, the wgpu
//! kernels in f32 (the real-model test shows wgpu within 1e-3 of an f64 reference). Between two
//! wgpu runs of the same tokens (different batching) the logits agree to 1e-4.

use sandgraph_inference::backend::cpu::CpuBackend;
use sandgraph_inference::backend::wgpu::{
    GpuContext, MAX_ROWS, WgpuBackend, WgpuError, WgpuOptions,
};
use sandgraph_inference::backend::{Backend, BackendError, SeqChunk, argmax_of, top_k_of};
use sandgraph_inference::gguf::GgmlType;
use sandgraph_inference::model::LlamaModel;
use sandgraph_inference::testutil::{
    TestRng, TinySpec, copied_prefix_continues_like_its_source, tiny_model,
};

const TYPES: [GgmlType; 5] = [
    GgmlType::F32,
    GgmlType::F16,
    GgmlType::Q8_0,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
];

fn wgpu(model: &LlamaModel, slots: usize, ctx: usize) -> WgpuBackend {
    WgpuBackend::new(model, slots, ctx, &WgpuOptions::default())
        .unwrap_or_else(|e| panic!("wgpu tests need an adapter: {e}"))
}

fn tokens(rng: &mut TestRng, n: usize, vocab: usize) -> Vec<u32> {
    (0..n).map(|_| rng.below(vocab) as u32).collect()
}

fn spread(a: &[f32]) -> f32 {
    let (lo, hi) = a
        .iter()
        .fold((f32::MAX, f32::MIN), |(l, h), &v| (l.min(v), h.max(v)));
    hi - lo
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Runs the same batch on both backends and checks logits, argmax and top-k.
fn step(g: &mut WgpuBackend, c: &mut CpuBackend, batch: &[SeqChunk<'_>], what: &str) -> Vec<u32> {
    g.forward(batch).unwrap();
    c.forward(batch).unwrap();
    let gl = g.logits().unwrap();
    let cl = c.logits().unwrap();
    assert_eq!(gl.len(), batch.len(), "{what}: one logits row per chunk");
    for (i, (a, b)) in gl.iter().zip(&cl).enumerate() {
        let (d, s) = (max_diff(a, b), spread(b));
        assert!(d <= 0.03 * s, "{what}: chunk {i}: max diff {d}, spread {s}");
    }
    let am = g.argmax().unwrap();
    let tk = g.top_k(5).unwrap();
    for (i, l) in gl.iter().enumerate() {
        assert_eq!(am[i], argmax_of(l), "{what}: device argmax of chunk {i}");
        assert_eq!(tk[i], top_k_of(l, 5), "{what}: device top-5 of chunk {i}");
    }
    c.argmax().unwrap()
}

#[test]
fn wgpu_matches_cpu_on_tiny_models_for_every_weight_type() {
    for (n, ty) in TYPES.into_iter().enumerate() {
        let mut spec = TinySpec::new(40 + n as u64, ty);
        spec.tied = n % 2 == 0;
        let model = tiny_model(&spec).unwrap();
        let vocab = model.config.vocab_size;
        let mut rng = TestRng::new(7);
        let mut g = wgpu(&model, 3, 64);
        let mut c = CpuBackend::new(&model, 3, 64).unwrap();
        let what = format!("{ty:?} tied={}", spec.tied);
        // Two prefills of different lengths in one batch.
        let (p0, p1, p2) = (
            tokens(&mut rng, 9, vocab),
            tokens(&mut rng, 3, vocab),
            tokens(&mut rng, 5, vocab),
        );
        let next = step(
            &mut g,
            &mut c,
            &[
                SeqChunk {
                    slot: 0,
                    start_pos: 0,
                    tokens: &p0,
                },
                SeqChunk {
                    slot: 1,
                    start_pos: 0,
                    tokens: &p1,
                },
            ],
            &format!("{what} prefill"),
        );
        // Decodes of slots 0 and 1 batched with a prefill of slot 2, in a different order.
        let mut last = step(
            &mut g,
            &mut c,
            &[
                SeqChunk {
                    slot: 2,
                    start_pos: 0,
                    tokens: &p2,
                },
                SeqChunk {
                    slot: 1,
                    start_pos: 3,
                    tokens: &next[1..2],
                },
                SeqChunk {
                    slot: 0,
                    start_pos: 9,
                    tokens: &next[0..1],
                },
            ],
            &format!("{what} mixed"),
        );
        // Batched single-token decodes.
        let mut pos = [10, 4, 5];
        for s in 0..4 {
            let order = [2, 1, 0];
            let toks: Vec<[u32; 1]> = (0..3).map(|i| [last[i]]).collect();
            let batch: Vec<SeqChunk> = (0..3)
                .map(|i| SeqChunk {
                    slot: order[i],
                    start_pos: pos[order[i]],
                    tokens: &toks[i],
                })
                .collect();
            let picked = step(&mut g, &mut c, &batch, &format!("{what} decode {s}"));
            for i in 0..3 {
                pos[order[i]] += 1;
            }
            // Keep each slot's picks attached to the same batch position next round.
            last = picked;
        }
    }
}

/// One forward whose long chunk spans two passes equals prefilling it in pieces, with the
/// adapter's own kernels and with the GPU ones (where attention applies RoPE and stores the
/// cache itself, so the second pass must read the first pass's rows from the cache and its own
/// rows from the pass).
#[test]
fn a_prompt_longer_than_one_pass_matches_chunked_prefill() {
    use sandgraph_inference::backend::wgpu::KernelVariant;
    let model = tiny_model(&TinySpec::new(3, GgmlType::Q4_1)).unwrap();
    let vocab = model.config.vocab_size;
    let n = MAX_ROWS + 44;
    let prompt = tokens(&mut TestRng::new(9), n, vocab);
    for variant in [None, Some(KernelVariant::TiledShared)] {
        let opts = WgpuOptions {
            variant,
            ..WgpuOptions::default()
        };
        let open = || WgpuBackend::new(&model, 2, n, &opts).unwrap();
        let mut one = open();
        // Slot 1 gets a short chunk in the same batch so the long one spans two passes with it.
        one.forward(&[
            SeqChunk {
                slot: 0,
                start_pos: 0,
                tokens: &prompt,
            },
            SeqChunk {
                slot: 1,
                start_pos: 0,
                tokens: &prompt[..5],
            },
        ])
        .unwrap();
        let l_one = one.logits().unwrap();
        let mut chunked = open();
        for (i, part) in prompt.chunks(100).enumerate() {
            chunked
                .forward(&[SeqChunk {
                    slot: 0,
                    start_pos: i * 100,
                    tokens: part,
                }])
                .unwrap();
        }
        let l_chunked = chunked.logits().unwrap();
        let d = max_diff(&l_one[0], &l_chunked[0]);
        assert!(d <= 1e-4, "{variant:?}: long chunk differs by {d}");
        chunked
            .forward(&[SeqChunk {
                slot: 1,
                start_pos: 0,
                tokens: &prompt[..5],
            }])
            .unwrap();
        let d = max_diff(&l_one[1], &chunked.logits().unwrap()[0]);
        assert!(d <= 1e-4, "{variant:?}: short chunk differs by {d}");
    }
}

#[test]
fn restarting_a_slot_at_position_zero_forgets_the_old_sequence() {
    let model = tiny_model(&TinySpec::new(5, GgmlType::Q8_0)).unwrap();
    let vocab = model.config.vocab_size;
    let mut rng = TestRng::new(10);
    let (a, b) = (tokens(&mut rng, 12, vocab), tokens(&mut rng, 6, vocab));
    let mut g = wgpu(&model, 1, 32);
    g.forward(&[SeqChunk {
        slot: 0,
        start_pos: 0,
        tokens: &a,
    }])
    .unwrap();
    g.forward(&[SeqChunk {
        slot: 0,
        start_pos: 0,
        tokens: &b,
    }])
    .unwrap();
    let reused = g.logits().unwrap();
    let mut fresh = wgpu(&model, 1, 32);
    fresh
        .forward(&[SeqChunk {
            slot: 0,
            start_pos: 0,
            tokens: &b,
        }])
        .unwrap();
    assert!(max_diff(&reused[0], &fresh.logits().unwrap()[0]) <= 1e-5);
}

#[test]
fn a_copied_prefix_continues_like_its_source_on_the_device() {
    let model = tiny_model(&TinySpec::new(8, GgmlType::Q4_1)).unwrap();
    let mut g = wgpu(&model, 4, 32);
    copied_prefix_continues_like_its_source(&mut g);
}

#[test]
fn bad_calls_get_specific_errors() {
    let model = tiny_model(&TinySpec::new(6, GgmlType::F16)).unwrap();
    let vocab = model.config.vocab_size;
    let mut g = wgpu(&model, 2, 8);
    assert!(matches!(g.logits(), Err(BackendError::NoLogits)));
    assert!(matches!(g.argmax(), Err(BackendError::NoLogits)));
    assert!(matches!(g.top_k(3), Err(BackendError::NoLogits)));
    let bad = [vocab as u32];
    let e = g
        .forward(&[SeqChunk {
            slot: 0,
            start_pos: 0,
            tokens: &bad,
        }])
        .unwrap_err();
    assert!(matches!(e, BackendError::TokenOutOfRange { token, .. } if token == vocab as u32));
    let e = g
        .forward(&[SeqChunk {
            slot: 0,
            start_pos: 4,
            tokens: &[1],
        }])
        .unwrap_err();
    assert!(matches!(e, BackendError::PositionGap { filled: 0, .. }));
    let e = g
        .forward(&[SeqChunk {
            slot: 1,
            start_pos: 0,
            tokens: &[1; 9],
        }])
        .unwrap_err();
    assert!(matches!(
        e,
        BackendError::ContextOverflow {
            needed: 9,
            max_context: 8,
            ..
        }
    ));
    let e = g
        .forward(&[SeqChunk {
            slot: 2,
            start_pos: 0,
            tokens: &[1],
        }])
        .unwrap_err();
    assert!(matches!(
        e,
        BackendError::SlotOutOfRange {
            slot: 2,
            max_slots: 2
        }
    ));
    // Rejected batches did no work: still nothing to read, and a good batch works after.
    assert!(matches!(g.argmax(), Err(BackendError::NoLogits)));
    g.forward(&[SeqChunk {
        slot: 0,
        start_pos: 0,
        tokens: &[1, 2],
    }])
    .unwrap();
    assert_eq!(g.argmax().unwrap().len(), 1);
    // k beyond the device list falls back to the host and still sorts the whole row.
    let all = g.top_k(vocab + 10).unwrap();
    assert_eq!(all[0].len(), vocab);
    assert_eq!(all[0], top_k_of(&g.logits().unwrap()[0], vocab));
    assert_eq!(g.top_k(0).unwrap(), vec![Vec::<(u32, f32)>::new()]);
}

#[test]
fn kv_caches_beyond_the_binding_limit_are_refused_by_name() {
    let model = tiny_model(&TinySpec::new(8, GgmlType::Q4_0)).unwrap();
    let ctx = GpuContext::new(&WgpuOptions::default()).unwrap();
    let per_pos = model.config.kv_dim() as u64 * 4;
    let context = (ctx.max_binding / per_pos + 1) as usize;
    let e = WgpuBackend::with_context(ctx, &model, 1, context)
        .err()
        .expect("must fail");
    assert!(
        matches!(&e, WgpuError::TooLarge(m) if m.contains("k_cache.0")),
        "{e}"
    );
    let e = WgpuBackend::new(&model, 0, 8, &WgpuOptions::default())
        .err()
        .expect("must fail");
    assert!(matches!(e, WgpuError::UnsupportedShape(_)), "{e}");
}

/// A tiny Q4_1 model whose attn_v and ffn_up are re-encoded as Q8_0, as mixed-type GGUFs do.
fn mixed_type_model() -> LlamaModel {
    use sandgraph_inference::gguf::{
        GgufFile, GgufWriter, WriterTensor, dequantize_row, quantize_row,
    };
    use sandgraph_inference::testutil::tiny_model_bytes;
    let src = GgufFile::from_bytes(tiny_model_bytes(&TinySpec::new(21, GgmlType::Q4_1))).unwrap();
    let mut w = GgufWriter::new();
    for (k, v) in src.metadata() {
        w.meta(k.clone(), v.clone());
    }
    for t in src.tensors() {
        let data = src.tensor_data(t).to_vec();
        if t.name.contains("attn_v") || t.name.contains("ffn_up") {
            let mut vals = vec![0.0; t.n_elements() as usize];
            dequantize_row(t.ty, &data, &mut vals).unwrap();
            let q = quantize_row(GgmlType::Q8_0, &vals).unwrap();
            w.tensor(WriterTensor::new(
                t.name.clone(),
                t.dims.clone(),
                GgmlType::Q8_0,
                q,
            ));
        } else {
            w.tensor(WriterTensor::new(
                t.name.clone(),
                t.dims.clone(),
                t.ty,
                data,
            ));
        }
    }
    LlamaModel::from_gguf(GgufFile::from_bytes(w.to_bytes()).unwrap()).unwrap()
}

#[test]
fn mixed_weight_types_in_one_layer_match_cpu() {
    let model = mixed_type_model();
    assert_eq!(model.weights.layers[0].wv.ty, GgmlType::Q8_0);
    assert_eq!(model.weights.layers[0].wq.ty, GgmlType::Q4_1);
    let vocab = model.config.vocab_size;
    let mut rng = TestRng::new(22);
    let mut g = wgpu(&model, 1, 32);
    let mut c = CpuBackend::new(&model, 1, 32).unwrap();
    let p = tokens(&mut rng, 7, vocab);
    let next = step(
        &mut g,
        &mut c,
        &[SeqChunk {
            slot: 0,
            start_pos: 0,
            tokens: &p,
        }],
        "mixed prefill",
    );
    step(
        &mut g,
        &mut c,
        &[SeqChunk {
            slot: 0,
            start_pos: 7,
            tokens: &next,
        }],
        "mixed decode",
    );
}

/// Every kernel variant the adapter can run (the GPU ones included, here with lavapipe's
/// subgroup size) gives the whole model the CPU's logits.
#[test]
fn every_kernel_variant_runs_the_whole_model_like_cpu() {
    use sandgraph_inference::backend::wgpu::KernelVariant;
    let probe = GpuContext::new(&WgpuOptions::default()).unwrap();
    let mut variants = vec![KernelVariant::Rows, KernelVariant::TiledShared];
    if probe.subgroups && probe.info.subgroup_min_size == probe.info.subgroup_max_size {
        variants.push(KernelVariant::RowsSubgroup { lanes: 0 });
        variants.push(KernelVariant::TiledSubgroup { lanes: 0 });
    }
    for ty in [GgmlType::Q4_1, GgmlType::Q8_0] {
        let model = tiny_model(&TinySpec::new(30, ty)).unwrap();
        let vocab = model.config.vocab_size;
        for &v in &variants {
            let opts = WgpuOptions {
                variant: Some(v),
                ..WgpuOptions::default()
            };
            let mut g = WgpuBackend::new(&model, 2, 32, &opts).unwrap();
            let mut c = CpuBackend::new(&model, 2, 32).unwrap();
            let mut rng = TestRng::new(31);
            let (a, b) = (tokens(&mut rng, 6, vocab), tokens(&mut rng, 2, vocab));
            let what = format!("{ty:?} {v}");
            let next = step(
                &mut g,
                &mut c,
                &[
                    SeqChunk {
                        slot: 0,
                        start_pos: 0,
                        tokens: &a,
                    },
                    SeqChunk {
                        slot: 1,
                        start_pos: 0,
                        tokens: &b,
                    },
                ],
                &what,
            );
            let next = step(
                &mut g,
                &mut c,
                &[
                    SeqChunk {
                        slot: 0,
                        start_pos: 6,
                        tokens: &next[..1],
                    },
                    SeqChunk {
                        slot: 1,
                        start_pos: 2,
                        tokens: &next[1..],
                    },
                ],
                &what,
            );
            // A single-row pass: the GPU variants' SwiGLU-fused down matmul runs only there.
            step(
                &mut g,
                &mut c,
                &[SeqChunk {
                    slot: 0,
                    start_pos: 7,
                    tokens: &next[..1],
                }],
                &what,
            );
        }
    }
}

#[test]
fn kernel_variant_names_parse_and_unknown_ones_are_refused() {
    use sandgraph_inference::backend::wgpu::KernelVariant;
    assert_eq!(KernelVariant::parse("rows").unwrap(), KernelVariant::Rows);
    assert_eq!(
        KernelVariant::parse("tiled").unwrap(),
        KernelVariant::TiledShared
    );
    assert!(matches!(
        KernelVariant::parse("tiled-subgroup").unwrap(),
        KernelVariant::TiledSubgroup { .. }
    ));
    let e = KernelVariant::parse("fast").unwrap_err();
    assert!(
        matches!(&e, WgpuError::BadKernelChoice(m) if m.contains("'fast'")),
        "{e}"
    );
}

/// The log-probabilities the server reports (`sampling::logprobs` over a backend's logits row)
/// agree across the backends: the chosen token's within twice the logits tolerance (a
/// log-softmax shifts each logit by the same log-sum-exp, so it at most doubles the error),
/// and so do the top alternatives' rank by rank.
#[test]
fn logprobs_agree_across_cpu_and_wgpu() {
    use sandgraph_inference::sampling::logprobs;
    let model = tiny_model(&TinySpec::new(77, GgmlType::Q8_0)).unwrap();
    let vocab = model.config.vocab_size;
    let mut rng = TestRng::new(5);
    let mut g = wgpu(&model, 2, 64);
    let mut c = CpuBackend::with_threads(&model, 2, 64, 1).unwrap();
    let prompts = [tokens(&mut rng, 9, vocab), tokens(&mut rng, 14, vocab)];
    let batch: Vec<SeqChunk> = prompts
        .iter()
        .enumerate()
        .map(|(i, p)| SeqChunk {
            slot: i,
            start_pos: 0,
            tokens: p,
        })
        .collect();
    let mut next = step(&mut g, &mut c, &batch, "prefill");
    for pos in 0..12 {
        let toks: Vec<[u32; 1]> = next.iter().map(|&t| [t]).collect();
        let batch: Vec<SeqChunk> = toks
            .iter()
            .enumerate()
            .map(|(i, t)| SeqChunk {
                slot: i,
                start_pos: prompts[i].len() + pos,
                tokens: t,
            })
            .collect();
        next = step(&mut g, &mut c, &batch, "decode");
        let (gl, cl) = (g.logits().unwrap(), c.logits().unwrap());
        for (i, (gr, cr)) in gl.iter().zip(&cl).enumerate() {
            let tol = 0.06 * spread(cr);
            let (gc, gtop) = logprobs(gr, next[i], 5);
            let (cc, ctop) = logprobs(cr, next[i], 5);
            assert!(
                (gc - cc).abs() <= tol,
                "chosen: {gc} against {cc} (tolerance {tol})"
            );
            for (a, b) in gtop.iter().zip(&ctop) {
                assert!((a.1 - b.1).abs() <= tol, "top: {a:?} against {b:?}");
            }
            assert!(gtop.iter().map(|t| (t.1 as f64).exp()).sum::<f64>() <= 1.0 + 1e-5);
        }
    }
}
