use super::*;
use crate::testutil::{TinySpec, tiny_model};

/// A deliberately plain f32 forward pass (dequantized weights, no batching, no threads) that
/// the optimised backend must agree with.
struct Reference {
    m: LlamaModel,
    k: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
}

impl Reference {
    fn new(m: LlamaModel) -> Self {
        let n = m.config.n_layers;
        Reference {
            m,
            k: vec![Vec::new(); n],
            v: vec![Vec::new(); n],
        }
    }

    fn matvec(&self, t: &TensorRef, x: &[f32]) -> Vec<f32> {
        let w = self.m.dequantize(t);
        w.chunks_exact(t.cols)
            .map(|r| r.iter().zip(x).map(|(a, b)| a * b).sum())
            .collect()
    }

    fn step(&mut self, token: u32, pos: usize) -> Vec<f32> {
        let c = self.m.config.clone();
        let emb = self.m.dequantize(&self.m.weights.token_embd);
        let mut x = emb[token as usize * c.dim..(token as usize + 1) * c.dim].to_vec();
        let hd = c.head_dim;
        let cs: Vec<(f32, f32)> = (0..hd / 2)
            .map(|i| {
                let f = (c.rope_base as f64).powf(-2.0 * i as f64 / hd as f64) as f32;
                let (s, co) = (pos as f32 * f).sin_cos();
                (co, s)
            })
            .collect();
        for l in 0..c.n_layers {
            let lw = self.m.weights.layers[l].clone();
            let mut xn = vec![0.0; c.dim];
            rmsnorm(&x, &self.m.dequantize(&lw.attn_norm), c.norm_eps, &mut xn);
            let mut q = self.matvec(&lw.wq, &xn);
            let mut k = self.matvec(&lw.wk, &xn);
            let v = self.matvec(&lw.wv, &xn);
            rope(&mut q, hd, &cs);
            rope(&mut k, hd, &cs);
            self.k[l].extend_from_slice(&k);
            self.v[l].extend_from_slice(&v);
            let mut att = vec![0.0; c.q_dim()];
            for h in 0..c.n_heads {
                let g = h / (c.n_heads / c.n_kv_heads);
                let qh = &q[h * hd..(h + 1) * hd];
                let sc: Vec<f32> = (0..=pos)
                    .map(|t| {
                        let kt = &self.k[l][t * c.kv_dim() + g * hd..][..hd];
                        qh.iter().zip(kt).map(|(a, b)| a * b).sum::<f32>() / (hd as f32).sqrt()
                    })
                    .collect();
                let mx = sc.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
                let e: Vec<f32> = sc.iter().map(|s| (s - mx).exp()).collect();
                let z: f32 = e.iter().sum();
                for (t, et) in e.iter().enumerate() {
                    let vt = &self.v[l][t * c.kv_dim() + g * hd..][..hd];
                    for i in 0..hd {
                        att[h * hd + i] += et / z * vt[i];
                    }
                }
            }
            let o = self.matvec(&lw.wo, &att);
            x.iter_mut().zip(&o).for_each(|(a, b)| *a += b);
            rmsnorm(&x, &self.m.dequantize(&lw.ffn_norm), c.norm_eps, &mut xn);
            let g = self.matvec(&lw.w_gate, &xn);
            let u = self.matvec(&lw.w_up, &xn);
            let h: Vec<f32> = g.iter().zip(&u).map(|(g, u)| silu(*g) * u).collect();
            let d = self.matvec(&lw.w_down, &h);
            x.iter_mut().zip(&d).for_each(|(a, b)| *a += b);
        }
        let mut xn = vec![0.0; c.dim];
        rmsnorm(
            &x,
            &self.m.dequantize(&self.m.weights.output_norm),
            c.norm_eps,
            &mut xn,
        );
        let out = self.m.weights.output.clone();
        self.matvec(&out, &xn)
    }
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn spread(a: &[f32]) -> f32 {
    let mx = a.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    let mn = a.iter().cloned().fold(f32::INFINITY, f32::min);
    mx - mn
}

#[test]
fn cpu_forward_matches_the_f32_reference_for_every_weight_type() {
    let tokens = [5u32, 70, 200, 3, 42, 299, 17, 8];
    for ty in GgmlType::ALL {
        for tied in [true, false] {
            let spec = TinySpec {
                tied,
                ..TinySpec::new(11, ty)
            };
            let mut reference = Reference::new(tiny_model(&spec).unwrap());
            let model = tiny_model(&spec).unwrap();
            let mut cpu = CpuBackend::with_threads(&model, 1, 64, 2).unwrap();
            for (pos, &t) in tokens.iter().enumerate() {
                let want = reference.step(t, pos);
                cpu.forward(&[SeqChunk {
                    slot: 0,
                    start_pos: pos,
                    tokens: &[t],
                }])
                .unwrap();
                let got = cpu.logits().unwrap().remove(0);
                // Float weights are computed in f32: tight. Quantized weights use 8-bit
                // activations: within 3% of the logit range.
                let tol = match ty {
                    GgmlType::F32 | GgmlType::F16 => 1e-3,
                    _ => 0.03 * spread(&want),
                };
                let diff = max_abs_diff(&want, &got);
                assert!(
                    diff <= tol,
                    "{ty} tied={tied} pos {pos}: max diff {diff} > {tol}"
                );
            }
        }
    }
}

#[test]
fn prefill_chunks_batches_and_thread_counts_agree_with_single_steps() {
    let model = tiny_model(&TinySpec::new(5, GgmlType::Q4_1)).unwrap();
    let a = [10u32, 11, 12, 13, 14, 15];
    let b = [100u32, 90, 80];
    // One token at a time, one thread.
    let mut single = CpuBackend::with_threads(&model, 2, 32, 1).unwrap();
    let mut want_a = Vec::new();
    for (p, t) in a.iter().enumerate() {
        single
            .forward(&[SeqChunk {
                slot: 0,
                start_pos: p,
                tokens: &[*t],
            }])
            .unwrap();
        want_a.push(single.logits().unwrap().remove(0));
    }
    let mut want_b = Vec::new();
    for (p, t) in b.iter().enumerate() {
        single
            .forward(&[SeqChunk {
                slot: 1,
                start_pos: p,
                tokens: &[*t],
            }])
            .unwrap();
        want_b.push(single.logits().unwrap().remove(0));
    }
    // Both prompts prefilled in one batch on three threads, then one decode step each.
    let mut batched = CpuBackend::with_threads(&model, 2, 32, 3).unwrap();
    batched
        .forward(&[
            SeqChunk {
                slot: 0,
                start_pos: 0,
                tokens: &a[..5],
            },
            SeqChunk {
                slot: 1,
                start_pos: 0,
                tokens: &b[..2],
            },
        ])
        .unwrap();
    let l = batched.logits().unwrap();
    assert!(max_abs_diff(&l[0], &want_a[4]) < 1e-4);
    assert!(max_abs_diff(&l[1], &want_b[1]) < 1e-4);
    batched
        .forward(&[
            SeqChunk {
                slot: 1,
                start_pos: 2,
                tokens: &b[2..],
            },
            SeqChunk {
                slot: 0,
                start_pos: 5,
                tokens: &a[5..],
            },
        ])
        .unwrap();
    let l = batched.logits().unwrap();
    assert!(max_abs_diff(&l[0], &want_b[2]) < 1e-4);
    assert!(max_abs_diff(&l[1], &want_a[5]) < 1e-4);
    assert_eq!(
        batched.argmax().unwrap(),
        vec![argmax_of(&want_b[2]), argmax_of(&want_a[5])]
    );
    let top = batched.top_k(3).unwrap();
    assert_eq!(top[1], top_k_of(&want_a[5], 3));
}

#[test]
fn restarting_a_slot_at_position_zero_forgets_the_old_sequence() {
    let model = tiny_model(&TinySpec::new(6, GgmlType::Q8_0)).unwrap();
    let mut cpu = CpuBackend::with_threads(&model, 1, 16, 2).unwrap();
    cpu.forward(&[SeqChunk {
        slot: 0,
        start_pos: 0,
        tokens: &[1, 2, 3],
    }])
    .unwrap();
    cpu.forward(&[SeqChunk {
        slot: 0,
        start_pos: 0,
        tokens: &[7, 8],
    }])
    .unwrap();
    let again = cpu.logits().unwrap();
    let mut fresh = CpuBackend::with_threads(&model, 1, 16, 2).unwrap();
    fresh
        .forward(&[SeqChunk {
            slot: 0,
            start_pos: 0,
            tokens: &[7, 8],
        }])
        .unwrap();
    assert_eq!(again, fresh.logits().unwrap());
}

#[test]
fn bad_batches_are_rejected_before_any_work() {
    let model = tiny_model(&TinySpec::new(6, GgmlType::Q4_0)).unwrap();
    let mut cpu = CpuBackend::with_threads(&model, 1, 4, 1).unwrap();
    assert!(matches!(cpu.logits(), Err(BackendError::NoLogits)));
    let e = cpu
        .forward(&[SeqChunk {
            slot: 0,
            start_pos: 0,
            tokens: &[1, 2, 3, 4, 5],
        }])
        .unwrap_err();
    assert!(
        matches!(
            e,
            BackendError::ContextOverflow {
                needed: 5,
                max_context: 4,
                ..
            }
        ),
        "{e}"
    );
    let e = cpu
        .forward(&[SeqChunk {
            slot: 0,
            start_pos: 0,
            tokens: &[100_000],
        }])
        .unwrap_err();
    assert!(
        matches!(e, BackendError::TokenOutOfRange { token: 100_000, .. }),
        "{e}"
    );
}

#[test]
fn a_copied_prefix_continues_like_its_source() {
    let model = tiny_model(&TinySpec::new(8, GgmlType::Q4_1)).unwrap();
    let mut cpu = CpuBackend::with_threads(&model, 4, 32, 2).unwrap();
    crate::testutil::copied_prefix_continues_like_its_source(&mut cpu);
}

/// The vector build of `attend` computes the same bits as the portable one, for head sizes
/// with and without a remainder after whole groups of eight.
#[test]
fn wide_attention_equals_the_portable_loop_bit_for_bit() {
    let mut rng = crate::testutil::TestRng::new(31);
    for (hd, kvd, col) in [(64, 192, 64), (12, 36, 24), (5, 5, 0)] {
        let positions = 37;
        let q: Vec<f32> = (0..hd).map(|_| rng.next_f32()).collect();
        let kc: Vec<f32> = (0..positions * kvd).map(|_| rng.next_f32()).collect();
        let vc: Vec<f32> = (0..positions * kvd).map(|_| rng.next_f32()).collect();
        let (mut s1, mut s2) = (vec![0.0; positions], vec![0.0; positions]);
        let (mut o1, mut o2) = (vec![0.0; hd], vec![0.0; hd]);
        let head = Head {
            q: &q,
            kc: &kc,
            vc: &vc,
            kvd,
            col,
            scale: 0.125,
        };
        attend(&head, &mut s1, &mut o1);
        attend_body(&head, &mut s2, &mut o2);
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&s1), bits(&s2), "scores, head size {hd}");
        assert_eq!(bits(&o1), bits(&o2), "output, head size {hd}");
        // And both equal the plain one-key-at-a-time loop, element i into running sum i % 8.
        let mut sc: Vec<f32> = (0..positions)
            .map(|t| {
                let k = &kc[t * kvd + col..t * kvd + col + hd];
                let mut acc = [0.0f32; 8];
                for (i, (a, b)) in q.iter().zip(k).enumerate() {
                    acc[i % 8] += a * b;
                }
                acc.iter().sum::<f32>() * 0.125
            })
            .collect();
        let mx = sc.iter().fold(f32::NEG_INFINITY, |m, &s| m.max(s));
        let mut sum = 0.0;
        for s in sc.iter_mut() {
            *s = (*s - mx).exp();
            sum += *s;
        }
        let mut o = vec![0.0f32; hd];
        for (t, &p) in sc.iter().enumerate() {
            let p = p * (1.0 / sum);
            for (o, &v) in o.iter_mut().zip(&vc[t * kvd + col..t * kvd + col + hd]) {
                *o += p * v;
            }
        }
        assert_eq!(
            bits(&s1),
            bits(&sc),
            "scores against the plain loop, head size {hd}"
        );
        assert_eq!(
            bits(&o1),
            bits(&o),
            "output against the plain loop, head size {hd}"
        );
    }
}
