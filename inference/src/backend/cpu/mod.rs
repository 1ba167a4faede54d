//! The CPU backend: the reference implementation of the model and the fallback when no GPU
//! exists. Weights stay in their quantized GGUF blocks; each forward pass runs on a persistent
//! thread pool, phase by phase, with every matmul sharing one pass over the weights for all
//! rows of the batch.

mod kernels;
mod pool;

pub use kernels::{Act, ActBlock, Isa, dot_quant_portable, dot_rows, dot_rows2, quantize_act};

use std::collections::HashMap;
use std::ops::Range;
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use super::{Backend, BackendError, SeqChunk, argmax_of, top_k_of, validate_batch, validate_copy};
use crate::gguf::{GgmlType, GgufFile, dequantize_row};
use crate::model::{LlamaConfig, LlamaModel, LlamaWeights, TensorRef};
use pool::{Phase, Pool};

/// A raw view of a buffer that several threads write in disjoint parts between barriers.
#[derive(Clone, Copy)]
struct Buf<T> {
    ptr: *mut T,
    len: usize,
}
// SAFETY: access discipline (disjoint writes, reads only after a barrier) is kept by `forward`.
unsafe impl<T: Send> Send for Buf<T> {}
unsafe impl<T: Send> Sync for Buf<T> {}

impl<T> Buf<T> {
    fn of(v: &mut [T]) -> Self {
        Buf {
            ptr: v.as_mut_ptr(),
            len: v.len(),
        }
    }
    /// SAFETY: no other thread accesses `r` while the returned slice lives.
    #[allow(clippy::mut_from_ref)]
    unsafe fn slice_mut<'x>(self, r: Range<usize>) -> &'x mut [T] {
        assert!(r.start <= r.end && r.end <= self.len);
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(r.start), r.end - r.start) }
    }
    /// SAFETY: no thread writes `r` while the returned slice lives.
    unsafe fn slice<'x>(self, r: Range<usize>) -> &'x [T] {
        assert!(r.start <= r.end && r.end <= self.len);
        unsafe { std::slice::from_raw_parts(self.ptr.add(r.start), r.end - r.start) }
    }
}

#[derive(Default)]
struct Scratch {
    /// Residual stream, one row per batch token.
    x: Vec<f32>,
    /// Per-thread normalised/quantized copies of a matmul's input rows.
    local_f: Vec<f32>,
    local_q: Vec<ActBlock>,
    /// Queries after RoPE.
    q: Vec<f32>,
    /// Attention outputs.
    att: Vec<f32>,
    /// SwiGLU hidden activations.
    h: Vec<f32>,
    rope: Vec<(f32, f32)>,
    scores: Vec<f32>,
}

#[derive(Clone, Copy)]
struct RowInfo {
    slot: usize,
    pos: usize,
}

/// The weight bytes the kernels read: a copy in anonymous memory backed by transparent huge
/// pages when the OS allows it (fewer TLB misses while streaming ~100 MB per token), else the
/// mapped file itself. Either way the blocks are the file's, byte for byte.
struct WeightStore {
    file: Arc<GgufFile>,
    arena: Option<(memmap2::MmapMut, HashMap<String, Range<usize>>)>,
}

impl WeightStore {
    fn new(file: Arc<GgufFile>, tensors: &[&TensorRef]) -> WeightStore {
        if std::env::var_os("SANDGRAPH_CPU_MMAP_WEIGHTS").is_some() {
            return WeightStore { file, arena: None };
        }
        let mut ranges = HashMap::new();
        let mut total = 0usize;
        for t in tensors {
            if !ranges.contains_key(&t.name) {
                let len = file.tensor_data(&t.info).len();
                ranges.insert(t.name.clone(), total..total + len);
                total = (total + len).next_multiple_of(4096);
            }
        }
        let Ok(mut map) = memmap2::MmapMut::map_anon(total.max(1)) else {
            return WeightStore { file, arena: None };
        };
        #[cfg(target_os = "linux")]
        let _ = map.advise(memmap2::Advice::HugePage);
        for t in tensors {
            let r = ranges[&t.name].clone();
            map[r].copy_from_slice(file.tensor_data(&t.info));
        }
        WeightStore {
            file,
            arena: Some((map, ranges)),
        }
    }

    fn bytes(&self, t: &TensorRef) -> &[u8] {
        match &self.arena {
            Some((map, ranges)) => &map[ranges[&t.name].clone()],
            None => self.file.tensor_data(&t.info),
        }
    }
}

pub struct CpuBackend {
    store: WeightStore,
    cfg: LlamaConfig,
    w: LlamaWeights,
    attn_norms: Vec<Vec<f32>>,
    ffn_norms: Vec<Vec<f32>>,
    out_norm: Vec<f32>,
    inv_freq: Vec<f32>,
    isa: Isa,
    pool: Pool,
    max_slots: usize,
    max_context: usize,
    /// Per slot: K then V caches, each [layer][pos][kv_dim], allocated on first use.
    kv: Vec<(Vec<f32>, Vec<f32>)>,
    filled: Vec<usize>,
    scratch: Scratch,
    logits: Vec<f32>,
    n_logits: usize,
}

fn dequant_vec(file: &GgufFile, t: &TensorRef) -> Vec<f32> {
    let mut out = vec![0.0; t.rows * t.cols];
    dequantize_row(t.ty, file.tensor_data(&t.info), &mut out).expect("validated at load");
    out
}

impl CpuBackend {
    /// A CPU session with `max_slots` KV caches of `max_context` positions, on all cores.
    pub fn new(
        model: &LlamaModel,
        max_slots: usize,
        max_context: usize,
    ) -> Result<Self, BackendError> {
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        Self::with_threads(model, max_slots, max_context, threads)
    }

    pub fn with_threads(
        model: &LlamaModel,
        max_slots: usize,
        max_context: usize,
        threads: usize,
    ) -> Result<Self, BackendError> {
        if max_slots == 0 || max_context == 0 {
            return Err(BackendError::Unavailable(
                "CPU backend needs at least one slot and a context of at least one token".into(),
            ));
        }
        let cfg = model.config.clone();
        let file = model.file.clone();
        let w = model.weights.clone();
        let mut mats = vec![&w.token_embd, &w.output];
        for l in &w.layers {
            mats.extend([&l.wq, &l.wk, &l.wv, &l.wo, &l.w_gate, &l.w_up, &l.w_down]);
        }
        let store = WeightStore::new(file.clone(), &mats);
        let attn_norms = w
            .layers
            .iter()
            .map(|l| dequant_vec(&file, &l.attn_norm))
            .collect();
        let ffn_norms = w
            .layers
            .iter()
            .map(|l| dequant_vec(&file, &l.ffn_norm))
            .collect();
        let out_norm = dequant_vec(&file, &w.output_norm);
        let hd = cfg.head_dim;
        let inv_freq = (0..hd / 2)
            .map(|i| (cfg.rope_base as f64).powf(-2.0 * i as f64 / hd as f64) as f32)
            .collect();
        Ok(CpuBackend {
            store,
            cfg,
            w,
            attn_norms,
            ffn_norms,
            out_norm,
            inv_freq,
            isa: Isa::detect(),
            pool: Pool::new(threads),
            max_slots,
            max_context,
            kv: (0..max_slots).map(|_| (Vec::new(), Vec::new())).collect(),
            filled: vec![0; max_slots],
            scratch: Scratch::default(),
            logits: Vec::new(),
            n_logits: 0,
        })
    }

    pub fn threads(&self) -> usize {
        self.pool.n_threads()
    }

    pub fn isa(&self) -> Isa {
        self.isa
    }

    fn logits_rows(&self) -> Result<impl Iterator<Item = &[f32]>, BackendError> {
        if self.n_logits == 0 {
            return Err(BackendError::NoLogits);
        }
        Ok(self.logits.chunks_exact(self.cfg.vocab_size))
    }
}

/// Activation rows `idx` of buffers holding `width` values per row.
/// SAFETY: the rows are not written while the returned slices live.
unsafe fn acts<'x>(f: Buf<f32>, q: Buf<ActBlock>, width: usize, idx: Range<usize>) -> Vec<Act<'x>> {
    idx.map(|b| unsafe {
        Act {
            f: std::slice::from_raw_parts(f.ptr.add(b * width), width),
            q: std::slice::from_raw_parts(q.ptr.add(b * width / 32), width / 32),
        }
    })
    .collect()
}

fn rmsnorm(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let ss: f32 = x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32;
    let scale = 1.0 / (ss + eps).sqrt();
    for ((o, &v), &g) in out.iter_mut().zip(x).zip(w) {
        *o = v * scale * g;
    }
}

/// Rotates adjacent pairs (2i, 2i+1) of each head ("normal" RoPE, as GGUF llama weights expect).
fn rope(v: &mut [f32], head_dim: usize, cs: &[(f32, f32)]) {
    for head in v.chunks_exact_mut(head_dim) {
        for (pair, &(c, s)) in head.chunks_exact_mut(2).zip(cs) {
            let (a, b) = (pair[0], pair[1]);
            pair[0] = a * c - b * s;
            pair[1] = a * s + b * c;
        }
    }
}

/// One query head and the cached keys and values it attends over: the kv head at column
/// `col` of rows `kvd` wide.
struct Head<'a> {
    q: &'a [f32],
    kc: &'a [f32],
    vc: &'a [f32],
    kvd: usize,
    col: usize,
    scale: f32,
}

/// softmax(q . K^T * scale) . V over the cached positions, into `out`; `sc` holds the scores.
fn attend(head: &Head<'_>, sc: &mut [f32], out: &mut [f32]) {
    // The same code compiled for 256-bit vectors where the CPU has them. Rust never fuses a
    // multiply and an add on its own, so both versions compute the same bits.
    #[cfg(target_arch = "x86_64")]
    if kernels::avx2_allowed() {
        #[target_feature(enable = "avx2")]
        unsafe fn wide(head: &Head<'_>, sc: &mut [f32], out: &mut [f32]) {
            attend_body(head, sc, out)
        }
        // SAFETY: AVX2 was detected at run time.
        return unsafe { wide(head, sc, out) };
    }
    attend_body(head, sc, out)
}

#[inline(always)]
fn attend_body(head: &Head<'_>, sc: &mut [f32], out: &mut [f32]) {
    let Head {
        q,
        kc,
        vc,
        kvd,
        col,
        scale,
    } = *head;
    let hd = q.len();
    let mut mx = f32::NEG_INFINITY;
    for (t, s) in sc.iter_mut().enumerate() {
        let k = &kc[t * kvd + col..t * kvd + col + hd];
        // Eight running sums, lane i taking elements i, i + 8, ...: whole chunks of eight
        // give the compiler a vector loop (indexing `acc[i % 8]` kept it scalar).
        let mut acc = [0.0f32; 8];
        let (qc, kc8) = (q.chunks_exact(8), k.chunks_exact(8));
        let (qr, kr) = (qc.remainder(), kc8.remainder());
        for (a, b) in qc.zip(kc8) {
            for l in 0..8 {
                acc[l] += a[l] * b[l];
            }
        }
        for (l, (a, b)) in qr.iter().zip(kr).enumerate() {
            acc[l] += a * b;
        }
        *s = acc.iter().sum::<f32>() * scale;
        mx = mx.max(*s);
    }
    let mut sum = 0.0;
    for s in sc.iter_mut() {
        *s = (*s - mx).exp();
        sum += *s;
    }
    out.fill(0.0);
    let inv = 1.0 / sum;
    for (t, &p) in sc.iter().enumerate() {
        let v = &vc[t * kvd + col..t * kvd + col + hd];
        let p = p * inv;
        for (o, &vv) in out.iter_mut().zip(v) {
            *o += p * vv;
        }
    }
}

#[inline]
fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

/// One weight matrix as the kernels see it.
struct Matrix<'a> {
    bytes: &'a [u8],
    ty: GgmlType,
    cols: usize,
}

impl Matrix<'_> {
    /// Computes rows `r` for every activation, calling `sink(row, act_index, value)`; rows go
    /// in pairs and activations in groups of up to four, so each weight block and each
    /// activation block loaded is used several times.
    #[inline]
    fn run(
        &self,
        isa: Isa,
        r: Range<usize>,
        acts: &[Act<'_>],
        mut sink: impl FnMut(usize, usize, f32),
    ) {
        let rb = self.ty.row_bytes(self.cols);
        let row_bytes = |row: usize| &self.bytes[row * rb..(row + 1) * rb];
        let mut row = r.start;
        while row < r.end {
            let pair = row + 1 < r.end;
            let mut g = 0;
            while g < acts.len() {
                let n = (acts.len() - g).min(4);
                let (mut o0, mut o1) = ([0.0f32; 4], [0.0f32; 4]);
                if pair {
                    dot_rows2(
                        isa,
                        self.ty,
                        [row_bytes(row), row_bytes(row + 1)],
                        self.cols,
                        &acts[g..g + n],
                        &mut o0,
                        &mut o1,
                    );
                } else {
                    dot_rows(
                        isa,
                        self.ty,
                        row_bytes(row),
                        self.cols,
                        &acts[g..g + n],
                        &mut o0,
                    );
                }
                for j in 0..n {
                    sink(row, g + j, o0[j]);
                    if pair {
                        sink(row + 1, g + j, o1[j]);
                    }
                }
                g += n;
            }
            row += if pair { 2 } else { 1 };
        }
    }
}

impl Backend for CpuBackend {
    fn name(&self) -> &'static str {
        "cpu"
    }
    fn max_slots(&self) -> usize {
        self.max_slots
    }
    fn max_context(&self) -> usize {
        self.max_context
    }

    fn forward(&mut self, batch: &[SeqChunk<'_>]) -> Result<(), BackendError> {
        validate_batch(batch, &self.filled, self.max_context, self.cfg.vocab_size)?;
        self.n_logits = 0;
        let c = &self.cfg;
        let (dim, hd, qd, kvd, ffn, vocab) = (
            c.dim,
            c.head_dim,
            c.q_dim(),
            c.kv_dim(),
            c.ffn_dim,
            c.vocab_size,
        );
        let (n_layers, n_heads, group) = (c.n_layers, c.n_heads, c.n_heads / c.n_kv_heads);
        let eps = c.norm_eps;
        let max_ctx = self.max_context;

        // Rows of the batch, and the row whose logits each chunk wants.
        let mut rows = Vec::new();
        let mut tokens = Vec::new();
        let mut out_rows = Vec::with_capacity(batch.len());
        for ch in batch {
            for (i, &t) in ch.tokens.iter().enumerate() {
                rows.push(RowInfo {
                    slot: ch.slot,
                    pos: ch.start_pos + i,
                });
                tokens.push(t);
            }
            out_rows.push(rows.len() - 1);
        }
        let nb = rows.len();
        let n_out = out_rows.len();
        let threads = self.pool.n_threads();

        for ch in batch {
            let kv = &mut self.kv[ch.slot];
            if kv.0.is_empty() {
                kv.0 = vec![0.0; n_layers * max_ctx * kvd];
                kv.1 = vec![0.0; n_layers * max_ctx * kvd];
            }
        }
        let s = &mut self.scratch;
        let fit = |v: &mut Vec<f32>, n: usize| {
            if v.len() < n {
                v.resize(n, 0.0)
            }
        };
        let fitq = |v: &mut Vec<ActBlock>, n: usize| {
            if v.len() < n {
                v.resize(n, ActBlock::default())
            }
        };
        // Per-thread activations (normalised + quantized): every thread prepares the inputs
        // of a matmul itself, which costs a few microseconds and saves a barrier per matmul.
        let wmax = dim.max(qd).max(ffn);
        fit(&mut s.x, nb * dim);
        fit(&mut s.local_f, threads * nb * wmax);
        fitq(&mut s.local_q, threads * nb * wmax / 32);
        fit(&mut s.q, nb * qd);
        fit(&mut s.att, nb * qd);
        fit(&mut s.h, nb * ffn);
        fit(&mut s.scores, threads * max_ctx);
        s.rope.clear();
        for r in &rows {
            s.rope.extend(
                self.inv_freq
                    .iter()
                    .map(|&f| (r.pos as f32 * f).sin_cos())
                    .map(|(s, c)| (c, s)),
            );
        }
        // Embeddings.
        let emb = &self.w.token_embd;
        let emb_bytes = self.store.bytes(emb);
        let erb = emb.row_bytes();
        for (b, &t) in tokens.iter().enumerate() {
            let t = t as usize;
            dequantize_row(
                emb.ty,
                &emb_bytes[t * erb..(t + 1) * erb],
                &mut s.x[b * dim..(b + 1) * dim],
            )
            .expect("validated");
        }
        if self.logits.len() < n_out * vocab {
            self.logits.resize(n_out * vocab, 0.0);
        }

        let (x, qb, att, hb) = (
            Buf::of(&mut s.x),
            Buf::of(&mut s.q),
            Buf::of(&mut s.att),
            Buf::of(&mut s.h),
        );
        let (local_f, local_q, scores) = (
            Buf::of(&mut s.local_f),
            Buf::of(&mut s.local_q),
            Buf::of(&mut s.scores),
        );
        let logits = Buf::of(&mut self.logits);
        let ropes = &s.rope;
        let kv_bufs: Vec<(Buf<f32>, Buf<f32>)> = self
            .kv
            .iter_mut()
            .map(|(k, v)| (Buf::of(k), Buf::of(v)))
            .collect();
        let store = &self.store;
        let isa = self.isa;
        let one = |t: &TensorRef| Matrix {
            bytes: store.bytes(t),
            ty: t.ty,
            cols: t.cols,
        };
        let layers: Vec<[Matrix; 7]> = self
            .w
            .layers
            .iter()
            .map(|l| {
                [
                    one(&l.wq),
                    one(&l.wk),
                    one(&l.wv),
                    one(&l.wo),
                    one(&l.w_gate),
                    one(&l.w_up),
                    one(&l.w_down),
                ]
            })
            .collect();
        let output = one(&self.w.output);
        let (attn_norms, ffn_norms, out_norm) = (&self.attn_norms, &self.ffn_norms, &self.out_norm);
        let rows = &rows;
        let out_rows = &out_rows;
        let scale = 1.0 / (hd as f32).sqrt();
        let q_units = n_heads;
        let kv_heads = c.n_kv_heads;
        // About four chunks per thread per matmul: enough to rebalance when a thread is
        // descheduled, few enough that the shared counter's cache line rarely moves.
        let chunk = |rows: usize| (rows / (threads * 4)).max(16);
        let mut phases = Vec::with_capacity(n_layers * 5 + 1);
        for _ in 0..n_layers {
            phases.push(Phase::new(q_units + 2 * kv_heads));
            phases.push(Phase::new(nb * n_heads));
            phases.push(Phase::new(dim));
            phases.push(Phase::new(ffn));
            phases.push(Phase::new(dim));
        }
        phases.push(Phase::new(vocab));
        let phases = &phases;

        // SAFETY (all `unsafe` below): within a phase each thread writes only its own local
        // buffers and the rows or items it claimed from that phase's counter, and reads shared
        // data only after the barrier that ends the phase writing it.
        let abort = AtomicBool::new(false);
        let abort = &abort;
        let body = |tid: usize| unsafe {
            let mut ph = 0usize;
            // The next step, once the previous one is finished.
            let mut next = || {
                if ph > 0 {
                    phases[ph - 1].wait_complete(abort);
                }
                ph += 1;
                &phases[ph - 1]
            };
            let lf = local_f.slice_mut(tid * nb * wmax..(tid + 1) * nb * wmax);
            let lq = local_q.slice_mut(tid * nb * wmax / 32..(tid + 1) * nb * wmax / 32);
            let lf = Buf::of(lf);
            let lq = Buf::of(lq);
            // Normalises (when `norm` is given) and quantizes `n` rows of `src` into the
            // thread's local activations, returning them.
            let prepare = |src: Buf<f32>,
                           width: usize,
                           idx: &[usize],
                           norm: Option<&[f32]>|
             -> Vec<Act<'static>> {
                for (k, &b) in idx.iter().enumerate() {
                    let from = src.slice(b * width..(b + 1) * width);
                    let dst = lf.slice_mut(k * width..(k + 1) * width);
                    match norm {
                        Some(w) => rmsnorm(from, w, eps, dst),
                        None => dst.copy_from_slice(from),
                    }
                    quantize_act(dst, lq.slice_mut(k * width / 32..(k + 1) * width / 32));
                }
                acts(lf, lq, width, 0..idx.len())
            };
            let all: Vec<usize> = (0..nb).collect();
            for (l, [wq, wk, wv, wo, wgate, wup, wdown]) in layers.iter().enumerate() {
                // 1. Q, K, V per head; RoPE and the KV-cache store happen in the same pass.
                next().run(
                    1,
                    || prepare(x, dim, &all, Some(&attn_norms[l])),
                    |a, r| {
                        for u in r {
                            let (w, head) = if u < q_units {
                                (wq, u)
                            } else if u < q_units + kv_heads {
                                (wk, u - q_units)
                            } else {
                                (wv, u - q_units - kv_heads)
                            };
                            let base = head * hd;
                            // Rows of this head for every activation.
                            let out = |b: usize| -> &mut [f32] {
                                if u < q_units {
                                    qb.slice_mut(b * qd + base..b * qd + base + hd)
                                } else {
                                    let RowInfo { slot, pos } = rows[b];
                                    let at = (l * max_ctx + pos) * kvd + base;
                                    let cache = if u < q_units + kv_heads {
                                        kv_bufs[slot].0
                                    } else {
                                        kv_bufs[slot].1
                                    };
                                    cache.slice_mut(at..at + hd)
                                }
                            };
                            w.run(isa, base..base + hd, a, |row, b, v| out(b)[row - base] = v);
                            if u < q_units + kv_heads {
                                for b in 0..nb {
                                    rope(out(b), hd, &ropes[b * hd / 2..(b + 1) * hd / 2]);
                                }
                            }
                        }
                    },
                );
                // 2. Attention per (row, head).
                next().run(
                    1,
                    || (),
                    |_, r| {
                        for item in r {
                            let (b, h) = (item / n_heads, item % n_heads);
                            let RowInfo { slot, pos } = rows[b];
                            let g = h / group;
                            let q = qb.slice(b * qd + h * hd..b * qd + (h + 1) * hd);
                            let kc = kv_bufs[slot]
                                .0
                                .slice(l * max_ctx * kvd..(l * max_ctx + pos + 1) * kvd);
                            let vc = kv_bufs[slot]
                                .1
                                .slice(l * max_ctx * kvd..(l * max_ctx + pos + 1) * kvd);
                            let sc = scores.slice_mut(tid * max_ctx..tid * max_ctx + pos + 1);
                            let head = Head {
                                q,
                                kc,
                                vc,
                                kvd,
                                col: g * hd,
                                scale,
                            };
                            attend(
                                &head,
                                sc,
                                att.slice_mut(b * qd + h * hd..b * qd + (h + 1) * hd),
                            );
                        }
                    },
                );
                // 3. Output projection + residual.
                next().run(
                    chunk(dim),
                    || prepare(att, qd, &all, None),
                    |a, r| {
                        wo.run(isa, r, a, |row, b, v| {
                            x.slice_mut(b * dim + row..b * dim + row + 1)[0] += v
                        });
                    },
                );
                // 4. FFN norm, gate and up fused into SwiGLU.
                next().run(
                    chunk(ffn),
                    || prepare(x, dim, &all, Some(&ffn_norms[l])),
                    |a, r| {
                        wgate.run(isa, r.clone(), a, |row, b, v| {
                            hb.slice_mut(b * ffn + row..b * ffn + row + 1)[0] = v
                        });
                        wup.run(isa, r, a, |row, b, v| {
                            let hv = &mut hb.slice_mut(b * ffn + row..b * ffn + row + 1)[0];
                            *hv = silu(*hv) * v;
                        });
                    },
                );
                // 5. Down projection + residual.
                next().run(
                    chunk(dim),
                    || prepare(hb, ffn, &all, None),
                    |a, r| {
                        wdown.run(isa, r, a, |row, b, v| {
                            x.slice_mut(b * dim + row..b * dim + row + 1)[0] += v
                        });
                    },
                );
            }
            // Final norm of the rows that need logits, then the vocabulary projection.
            next().run(
                chunk(vocab),
                || prepare(x, dim, out_rows, Some(out_norm)),
                |a, r| {
                    output.run(isa, r, a, |row, o, v| {
                        logits.slice_mut(o * vocab + row..o * vocab + row + 1)[0] = v
                    });
                },
            );
        };
        // A panicking thread (a bug) must not leave the others waiting for its unfinished work.
        let job = |tid: usize| {
            if let Err(p) = catch_unwind(AssertUnwindSafe(|| body(tid))) {
                abort.store(true, Ordering::SeqCst);
                resume_unwind(p);
            }
        };
        self.pool.run(&job);
        for ch in batch {
            self.filled[ch.slot] = ch.start_pos + ch.tokens.len();
        }
        self.n_logits = n_out;
        Ok(())
    }

    fn logits(&mut self) -> Result<Vec<Vec<f32>>, BackendError> {
        let n = self.n_logits;
        Ok(self.logits_rows()?.take(n).map(<[f32]>::to_vec).collect())
    }

    fn argmax(&mut self) -> Result<Vec<u32>, BackendError> {
        let n = self.n_logits;
        Ok(self.logits_rows()?.take(n).map(argmax_of).collect())
    }

    fn top_k(&mut self, k: usize) -> Result<Vec<Vec<(u32, f32)>>, BackendError> {
        let n = self.n_logits;
        Ok(self
            .logits_rows()?
            .take(n)
            .map(|l| top_k_of(l, k))
            .collect())
    }

    fn copy_prefix(
        &mut self,
        src: usize,
        dst: usize,
        from: usize,
        to: usize,
    ) -> Result<(), BackendError> {
        validate_copy(src, dst, from, to, &self.filled)?;
        if from < to {
            let (layers, max_ctx, kvd) = (self.cfg.n_layers, self.max_context, self.cfg.kv_dim());
            let (lo, hi) = (src.min(dst), src.max(dst));
            let (head, tail) = self.kv.split_at_mut(hi);
            let (s, d) = if src < dst {
                (&head[lo], &mut tail[0])
            } else {
                (&tail[0], &mut head[lo])
            };
            if d.0.is_empty() {
                d.0 = vec![0.0; layers * max_ctx * kvd];
                d.1 = vec![0.0; layers * max_ctx * kvd];
            }
            for l in 0..layers {
                let r = (l * max_ctx + from) * kvd..(l * max_ctx + to) * kvd;
                d.0[r.clone()].copy_from_slice(&s.0[r.clone()]);
                d.1[r.clone()].copy_from_slice(&s.1[r]);
            }
        }
        self.filled[dst] = to;
        Ok(())
    }
}

#[cfg(test)]
mod tests;
