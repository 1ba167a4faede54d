//! Every WGSL kernel against a scalar reference on seeded random data, for each weight type and
//! each kernel variant the adapter can run. These tests need a wgpu adapter (lavapipe on CI):
//! finding none is a failure, never a skip.
//!
//! Tolerance: a matmul/embedding output may differ from the f64 reference over the
//! dequantized weights by at most 1e-4 x sum|w*x| + 1e-5 (f32 accumulation order); norms, SwiGLU
//! and attention by 1e-4 relative + 1e-5 absolute. Argmax/top-k must match exactly.

use sandgraph_inference::backend::wgpu::probe::Probe;
use sandgraph_inference::backend::wgpu::weights::GpuMatrix;
use sandgraph_inference::backend::wgpu::{GpuContext, KernelVariant, WgpuOptions};
use sandgraph_inference::backend::{argmax_of, top_k_of};
use sandgraph_inference::gguf::{GgmlType, dequantize_row, quantize_row};
use sandgraph_inference::testutil::TestRng;

const TYPES: [GgmlType; 5] = [
    GgmlType::F32,
    GgmlType::F16,
    GgmlType::Q8_0,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
];

fn ctx(variant: Option<KernelVariant>, max_binding: Option<u64>) -> GpuContext {
    let opts = WgpuOptions {
        variant,
        max_binding_bytes: max_binding,
        ..WgpuOptions::default()
    };
    GpuContext::new(&opts).unwrap_or_else(|e| panic!("wgpu tests need an adapter: {e}"))
}

/// The variants this adapter can run: rows and tiled always, subgroups when offered.
fn variants() -> Vec<KernelVariant> {
    let c = ctx(None, None);
    let mut v = vec![KernelVariant::Rows, KernelVariant::TiledShared];
    if c.subgroups && c.info.subgroup_min_size == c.info.subgroup_max_size {
        // `lanes` is filled in from the adapter when the context opens.
        v.push(KernelVariant::TiledSubgroup { lanes: 0 });
        v.push(KernelVariant::RowsSubgroup { lanes: 0 });
    }
    v
}

fn randn(rng: &mut TestRng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.next_f32()).collect()
}

/// Quantized bytes of a rows x cols matrix and its dequantized values.
fn matrix(rng: &mut TestRng, ty: GgmlType, rows: usize, cols: usize) -> (Vec<u8>, Vec<f32>) {
    let mut bytes = Vec::new();
    let mut deq = vec![0.0; rows * cols];
    for r in 0..rows {
        let row = quantize_row(ty, &randn(rng, cols)).unwrap();
        dequantize_row(ty, &row, &mut deq[r * cols..(r + 1) * cols]).unwrap();
        bytes.extend(row);
    }
    (bytes, deq)
}

fn assert_close(got: &[f32], want: &[f64], scale: &[f64], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, ((&g, &w), &s)) in got.iter().zip(want).zip(scale).enumerate() {
        let tol = 1e-4 * s + 1e-5;
        assert!(
            (g as f64 - w).abs() <= tol,
            "{what}: element {i}: got {g}, want {w} (tolerance {tol})"
        );
    }
}

#[allow(clippy::too_many_arguments)]
fn check_matmul(
    p: &Probe,
    rng: &mut TestRng,
    ty: GgmlType,
    rows: usize,
    cols: usize,
    n: usize,
    acc: bool,
    what: &str,
) {
    let (w, deq) = matrix(rng, ty, rows, cols);
    let x = randn(rng, n * cols);
    let init = randn(rng, n * rows);
    let got = p
        .matmul(ty, rows, cols, &w, &x, n, acc.then_some(&init[..]))
        .unwrap();
    let mut want = vec![0.0f64; n * rows];
    let mut scale = vec![0.0f64; n * rows];
    for t in 0..n {
        for r in 0..rows {
            let (mut s, mut a) = (0.0f64, 0.0f64);
            for c in 0..cols {
                let prod = deq[r * cols + c] as f64 * x[t * cols + c] as f64;
                s += prod;
                a += prod.abs();
            }
            if acc {
                s += init[t * rows + r] as f64;
                a += (init[t * rows + r] as f64).abs();
            }
            want[t * rows + r] = s;
            scale[t * rows + r] = a;
        }
    }
    assert_close(&got, &want, &scale, what);
}

#[test]
fn an_adapter_is_present() {
    let c = ctx(None, None);
    eprintln!("wgpu adapter: {}", c.describe());
    assert!(c.max_binding >= 1 << 20, "binding limit {}", c.max_binding);
}

#[test]
fn matmul_matches_reference_for_every_type_variant_and_batch() {
    let mut rng = TestRng::new(11);
    for v in variants() {
        let p = Probe::new(ctx(Some(v), None), &TYPES, 64).unwrap();
        for ty in TYPES {
            // 70 rows: not a multiple of any workgroup; n = 1 (TB 1), 5 and 11 (TB 8, partial).
            for (n, acc) in [(1, false), (5, true), (11, false)] {
                let what = format!("{v} {} n={n} acc={acc}", ty.name());
                check_matmul(&p, &mut rng, ty, 70, 96, n, acc, &what);
            }
        }
    }
}

/// RMSNorm fused into the matmul (the GPU variants' qkv, gate_up and output projections):
/// against RMSNorm then matmul in f64, for every weight type, widths of fewer blocks than lanes
/// and of more (not a multiple of the lanes), and passes of 1, 5 and 11 rows. The barrier-free
/// variants refuse it with an error instead of compiling it.
#[test]
fn rmsnorm_fused_into_matmul_matches_reference_for_every_type_tiled_variant_and_batch() {
    let mut rng = TestRng::new(17);
    let eps = 1e-5f32;
    for v in variants() {
        let p = Probe::new(ctx(Some(v), None), &TYPES, 64).unwrap();
        let tiled = matches!(
            v,
            KernelVariant::TiledShared | KernelVariant::TiledSubgroup { .. }
        );
        if !tiled {
            let (w, _) = matrix(&mut rng, GgmlType::F32, 4, 32);
            let err = p
                .matmul_rmsnorm(GgmlType::F32, 4, 32, &w, &[1.0; 32], 1, &[1.0; 32], eps)
                .unwrap_err();
            assert!(err.to_string().contains("not fused"), "{v}: {err}");
            continue;
        }
        for ty in TYPES {
            for (cols, n) in [(96, 1), (608, 5), (96, 11), (608, 1)] {
                let rows = 70;
                let what = format!("{v} {} cols={cols} n={n}", ty.name());
                let (w, deq) = matrix(&mut rng, ty, rows, cols);
                // Activations well away from unit scale, so a missing norm cannot pass.
                let x: Vec<f32> = randn(&mut rng, n * cols).iter().map(|v| v * 6.0).collect();
                let g = randn(&mut rng, cols);
                let got = p
                    .matmul_rmsnorm(ty, rows, cols, &w, &x, n, &g, eps)
                    .unwrap();
                let mut want = vec![0.0f64; n * rows];
                let mut scale = vec![0.0f64; n * rows];
                for t in 0..n {
                    let xt = &x[t * cols..(t + 1) * cols];
                    let ms = xt.iter().map(|&v| v as f64 * v as f64).sum::<f64>() / cols as f64;
                    let inv = 1.0 / (ms + eps as f64).sqrt();
                    for r in 0..rows {
                        let (mut sum, mut abs) = (0.0f64, 0.0f64);
                        for c in 0..cols {
                            let prod = deq[r * cols + c] as f64 * xt[c] as f64 * inv * g[c] as f64;
                            sum += prod;
                            abs += prod.abs();
                        }
                        want[t * rows + r] = sum;
                        scale[t * rows + r] = abs;
                    }
                }
                assert_close(&got, &want, &scale, &what);
            }
        }
    }
}

#[test]
fn matmul_splits_tensors_bigger_than_one_binding() {
    let mut rng = TestRng::new(12);
    // A 600-byte binding cap forces a 300 x 64 Q8_0 matrix (72 device bytes per row) into
    // 38 splits of 8 rows (the last one shorter).
    let c = ctx(None, Some(600));
    let (w, _) = matrix(&mut rng, GgmlType::Q8_0, 300, 64);
    let m = GpuMatrix::upload(&c, "w", GgmlType::Q8_0, 300, 64, &w).unwrap();
    assert_eq!(m.splits.len(), 38);
    assert_eq!((m.splits[37].row_start, m.splits[37].rows), (296, 4));
    let p = Probe::new(c, &[GgmlType::Q8_0, GgmlType::Q4_1], 64).unwrap();
    check_matmul(
        &p,
        &mut rng,
        GgmlType::Q8_0,
        300,
        64,
        3,
        false,
        "split q8_0",
    );
    check_matmul(&p, &mut rng, GgmlType::Q4_1, 300, 64, 1, true, "split q4_1");
}

#[test]
fn embedding_rows_match_dequantized_table_for_every_type() {
    let mut rng = TestRng::new(13);
    for cap in [None, Some(2100)] {
        let p = Probe::new(ctx(None, cap), &TYPES, 64).unwrap();
        for ty in TYPES {
            let (w, deq) = matrix(&mut rng, ty, 50, 64);
            let tokens = [0u32, 49, 7, 7, 31];
            let got = p.embed(ty, 50, 64, &w, &tokens).unwrap();
            let want: Vec<f64> = tokens
                .iter()
                .flat_map(|&t| {
                    deq[t as usize * 64..(t as usize + 1) * 64]
                        .iter()
                        .map(|&v| v as f64)
                })
                .collect();
            let scale: Vec<f64> = want.iter().map(|v| v.abs()).collect();
            assert_close(
                &got,
                &want,
                &scale,
                &format!("embed {} cap {cap:?}", ty.name()),
            );
        }
    }
}

#[test]
fn rmsnorm_and_swiglu_match_reference() {
    let mut rng = TestRng::new(14);
    // Every variant: the GPU ones normalise a row per workgroup, the others per invocation.
    // Widths below, at and above the 64-invocation workgroup, not multiples of it.
    for v in variants() {
        let p = Probe::new(ctx(Some(v), None), &[GgmlType::F32], 64).unwrap();
        for (dim, n) in [(40, 1), (96, 3), (600, 2)] {
            let eps = 1e-5f32;
            let x = randn(&mut rng, n * dim);
            let g = randn(&mut rng, dim);
            let got = p.rmsnorm(&x, &g, dim, eps).unwrap();
            let mut want = vec![];
            for row in x.chunks(dim) {
                let ms = row.iter().map(|&v| v as f64 * v as f64).sum::<f64>() / dim as f64;
                let s = 1.0 / (ms + eps as f64).sqrt();
                want.extend(row.iter().zip(&g).map(|(&v, &w)| v as f64 * s * w as f64));
            }
            let scale: Vec<f64> = want.iter().map(|v| v.abs()).collect();
            assert_close(&got, &want, &scale, &format!("rmsnorm {v:?} dim {dim}"));
        }
    }
    let p = Probe::new(ctx(None, None), &[GgmlType::F32], 64).unwrap();

    let gate: Vec<f32> = randn(&mut rng, 2 * 80).iter().map(|v| v * 8.0).collect();
    let up = randn(&mut rng, 2 * 80);
    let got = p.swiglu(&gate, &up, 80).unwrap();
    let want: Vec<f64> = gate
        .iter()
        .zip(&up)
        .map(|(&g, &u)| g as f64 / (1.0 + (-g as f64).exp()) * u as f64)
        .collect();
    let scale: Vec<f64> = want.iter().map(|v| v.abs()).collect();
    assert_close(&got, &want, &scale, "swiglu");
}

/// Adjacent-pair RoPE of one head vector at `pos`.
fn rope(v: &mut [f64], pos: usize, base: f64) {
    let hd = v.len();
    for i in 0..hd / 2 {
        let a = pos as f64 * base.powf(-2.0 * i as f64 / hd as f64);
        let (x, y) = (v[2 * i], v[2 * i + 1]);
        v[2 * i] = x * a.cos() - y * a.sin();
        v[2 * i + 1] = x * a.sin() + y * a.cos();
    }
}

#[test]
fn rope_kv_store_and_gqa_attention_match_reference() {
    let mut rng = TestRng::new(15);
    let (nh, nkv, hd, base) = (6, 2, 16, 10000.0f32);
    // Barrier-free and GPU attention (RoPE and the cache store fused in; start 0: every key from
    // the pass's own rows); 70 cached rows span more than one workgroup's width, 600
    // more than two of the GPU kernel's 256-position tiles (merged with online softmax).
    for (v, start) in [
        (KernelVariant::Rows, 5),
        (KernelVariant::TiledShared, 0),
        (KernelVariant::TiledShared, 5),
        (KernelVariant::TiledShared, 70),
        (KernelVariant::TiledShared, 600),
    ] {
        let p = Probe::new(ctx(Some(v), None), &[GgmlType::F32], hd).unwrap();
        check_attention(
            &p,
            &mut rng,
            nh,
            nkv,
            hd,
            base,
            start,
            &format!("{v} start {start}"),
        );
    }
}

#[allow(clippy::too_many_arguments)]
fn check_attention(
    p: &Probe,
    rng: &mut TestRng,
    nh: usize,
    nkv: usize,
    hd: usize,
    base: f32,
    start: usize,
    what: &str,
) {
    let n = 4;
    let kvd = nkv * hd;
    // The cache already holds `start` rotated keys and values.
    let prior_k = randn(rng, start * kvd);
    let prior_v = randn(rng, start * kvd);
    let q = randn(rng, n * nh * hd);
    let k = randn(rng, n * kvd);
    let v = randn(rng, n * kvd);
    let [got, k_cache, v_cache] = p
        .attention(nh, nkv, hd, base, start, &prior_k, &prior_v, &q, &k, &v)
        .unwrap();
    let mut keys: Vec<f64> = prior_k.iter().map(|&x| x as f64).collect();
    let mut vals: Vec<f64> = prior_v.iter().map(|&x| x as f64).collect();
    for t in 0..n {
        for h in 0..nkv {
            let mut kk: Vec<f64> = k[t * kvd + h * hd..][..hd]
                .iter()
                .map(|&x| x as f64)
                .collect();
            rope(&mut kk, start + t, base as f64);
            keys.extend(kk);
        }
        vals.extend(v[t * kvd..(t + 1) * kvd].iter().map(|&x| x as f64));
    }
    let mut want = vec![];
    for t in 0..n {
        let pos = start + t;
        for h in 0..nh {
            let kh = h / (nh / nkv);
            let mut qq: Vec<f64> = q[(t * nh + h) * hd..][..hd]
                .iter()
                .map(|&x| x as f64)
                .collect();
            rope(&mut qq, pos, base as f64);
            let scores: Vec<f64> = (0..=pos)
                .map(|p| {
                    let kr = &keys[p * kvd + kh * hd..][..hd];
                    qq.iter().zip(kr).map(|(a, b)| a * b).sum::<f64>() / (hd as f64).sqrt()
                })
                .collect();
            let m = scores.iter().cloned().fold(f64::MIN, f64::max);
            let e: Vec<f64> = scores.iter().map(|s| (s - m).exp()).collect();
            let z: f64 = e.iter().sum();
            for d in 0..hd {
                want.push(
                    (0..=pos)
                        .map(|p| e[p] / z * vals[p * kvd + kh * hd + d])
                        .sum(),
                );
            }
        }
    }
    let scale = vec![1.0; want.len()];
    assert_close(&got, &want, &scale, what);
    // The cache keeps the prior rows and gains this pass's rotated keys and plain values.
    let ones = vec![1.0; keys.len()];
    assert_close(&k_cache, &keys, &ones, &format!("{what}: K cache"));
    assert_close(&v_cache, &vals, &ones, &format!("{what}: V cache"));
}

#[test]
fn argmax_and_top_k_match_host_selection_including_ties() {
    let mut rng = TestRng::new(16);
    let p = Probe::new(ctx(None, None), &[GgmlType::F32], 64).unwrap();
    let vocab = 1000;
    let mut logits = randn(&mut rng, 3 * vocab);
    // Ties across segments and inside one: the lower id must win.
    logits[10] = 5.0;
    logits[900] = 5.0;
    logits[vocab + 400] = 3.0;
    logits[vocab + 401] = 3.0;
    logits[2 * vocab + 999] = 9.0;
    let am = p.select(&logits, vocab, 0).unwrap();
    for (r, row) in logits.chunks(vocab).enumerate() {
        assert_eq!(am[r][0].0, argmax_of(row), "argmax row {r}");
    }
    for k in [1, 5, 40, 64] {
        let tk = p.select(&logits, vocab, k).unwrap();
        for (r, row) in logits.chunks(vocab).enumerate() {
            assert_eq!(tk[r], top_k_of(row, k), "top-{k} row {r}");
        }
    }
}
