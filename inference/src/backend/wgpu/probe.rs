//! Runs one kernel at a time on host data, through the same pipelines and bind-group builders as
//! the backend, so tests can check each WGSL kernel against a scalar reference on seeded data.

use super::WgpuError;
use super::device::GpuContext;
use super::kernels::{ARGMAX_SEGMENTS, Kernels, TOPK_MAX, TOPK_SEGMENTS};
use super::ops::{
    AttentionBuffers, EmbedOp, FusedNorm, MatOp, bind, bind_attention, fwd_words, record_1d,
    record_2d, record_attention, record_norm, rope_table,
};
use super::weights::{GpuMatrix, f32_buffer, scratch, staging, uniform};
use crate::gguf::GgmlType;

/// One device plus compiled kernels for probing.
pub struct Probe {
    pub ctx: GpuContext,
    k: Kernels,
}

fn floats(b: &[u8]) -> Vec<f32> {
    bytemuck::cast_slice::<u8, f32>(b).to_vec()
}

impl Probe {
    /// Compiles the kernels for `types` and a head size of `head_dim` on `ctx`.
    pub fn new(ctx: GpuContext, types: &[GgmlType], head_dim: usize) -> Result<Probe, WgpuError> {
        let k = Kernels::new(&ctx, types, head_dim)?;
        Ok(Probe { ctx, k })
    }

    fn run(
        &self,
        rec: impl FnOnce(&mut wgpu::ComputePass<'_>),
        out: &wgpu::Buffer,
        bytes: u64,
    ) -> Result<Vec<u8>, WgpuError> {
        let mut enc = self.ctx.device.create_command_encoder(&Default::default());
        {
            let mut pass = enc.begin_compute_pass(&Default::default());
            rec(&mut pass);
        }
        let st = staging(&self.ctx, bytes);
        self.ctx.submit_and_read(enc, out, bytes, &st)
    }

    fn max_dim(&self) -> u32 {
        self.ctx.limits.max_compute_workgroups_per_dimension
    }

    /// Records `op` over `n` activation rows and reads back its `n` x `rows` outputs from `y`.
    fn run_matmul(
        &self,
        op: &MatOp,
        y: &wgpu::Buffer,
        n: usize,
        rows: usize,
    ) -> Result<Vec<f32>, WgpuError> {
        let b = self.run(
            |p| op.record(p, &self.k, n as u32, self.max_dim()),
            y,
            (n * rows * 4) as u64,
        )?;
        Ok(floats(&b))
    }

    /// Y[t, r] = sum_c W[r, c] X[t, c] (+ `y_init` when given: the fused residual add), with W
    /// as GGUF bytes of `rows` x `cols` values of `ty` and X as `n` rows of `cols`.
    #[allow(clippy::too_many_arguments)]
    pub fn matmul(
        &self,
        ty: GgmlType,
        rows: usize,
        cols: usize,
        w: &[u8],
        x: &[f32],
        n: usize,
        y_init: Option<&[f32]>,
    ) -> Result<Vec<f32>, WgpuError> {
        let m = GpuMatrix::upload(&self.ctx, "w", ty, rows, cols, w)?;
        let xb = f32_buffer(&self.ctx, "x", x, false);
        let y = match y_init {
            Some(v) => f32_buffer(&self.ctx, "y", v, true),
            None => scratch(&self.ctx, "y", (n * rows * 4) as u64)?,
        };
        let fwd = uniform(&self.ctx, "fwd", &fwd_words(n as u32));
        let op = MatOp::new(
            &self.ctx,
            &self.k,
            "w",
            &m,
            &xb,
            &y,
            rows,
            0,
            y_init.is_some(),
            &fwd,
        );
        self.run_matmul(&op, &y, n, rows)
    }

    /// Y[t, r] = sum_c W[r, c] RMSNorm(X[t])[c] g[c], with the norm computed inside the
    /// matmul (`Kernels::fuse_norm`, tiled variants); W and X as for `matmul`.
    #[allow(clippy::too_many_arguments)]
    pub fn matmul_rmsnorm(
        &self,
        ty: GgmlType,
        rows: usize,
        cols: usize,
        w: &[u8],
        x: &[f32],
        n: usize,
        g: &[f32],
        eps: f32,
    ) -> Result<Vec<f32>, WgpuError> {
        if !self.k.fuse_norm {
            return Err(WgpuError::UnsupportedShape(format!(
                "RMSNorm is not fused into matmuls with the {} kernels",
                self.k.variant
            )));
        }
        let m = GpuMatrix::upload(&self.ctx, "w", ty, rows, cols, w)?;
        let xb = f32_buffer(&self.ctx, "x", x, false);
        let gb = f32_buffer(&self.ctx, "g", g, false);
        let y = scratch(&self.ctx, "y", (n * rows * 4) as u64)?;
        let fwd = uniform(&self.ctx, "fwd", &fwd_words(n as u32));
        let norm = FusedNorm { weights: &gb, eps };
        let op = MatOp::normed(&self.ctx, &self.k, "w", &m, &xb, norm, &y, rows, 0, &fwd);
        self.run_matmul(&op, &y, n, rows)
    }

    /// Rows `tokens[t]` of a `rows` x `cols` table of `ty`, dequantized.
    pub fn embed(
        &self,
        ty: GgmlType,
        rows: usize,
        cols: usize,
        w: &[u8],
        tokens: &[u32],
    ) -> Result<Vec<f32>, WgpuError> {
        let m = GpuMatrix::upload(&self.ctx, "table", ty, rows, cols, w)?;
        let meta: Vec<u32> = tokens.iter().flat_map(|&t| [t, 0, 0, 0]).collect();
        let mb = self.words_buffer("meta", &meta);
        let n = tokens.len();
        let y = scratch(&self.ctx, "y", (n * cols * 4) as u64)?;
        let fwd = uniform(&self.ctx, "fwd", &fwd_words(n as u32));
        let op = EmbedOp::new(&self.ctx, &self.k, &m, &mb, &y, &fwd);
        let b = self.run(
            |p| op.record(p, &self.k, n as u32),
            &y,
            (n * cols * 4) as u64,
        )?;
        Ok(floats(&b))
    }

    fn words_buffer(&self, name: &str, words: &[u32]) -> wgpu::Buffer {
        f32_buffer(&self.ctx, name, bytemuck::cast_slice(words), false)
    }

    /// RMSNorm of each `dim`-wide row of `x` with weights `g`.
    pub fn rmsnorm(
        &self,
        x: &[f32],
        g: &[f32],
        dim: usize,
        eps: f32,
    ) -> Result<Vec<f32>, WgpuError> {
        let n = x.len() / dim;
        let (xb, gb) = (
            f32_buffer(&self.ctx, "x", x, false),
            f32_buffer(&self.ctx, "g", g, false),
        );
        let y = scratch(&self.ctx, "y", (x.len() * 4) as u64)?;
        let u = uniform(&self.ctx, "norm", &[dim as u32, eps.to_bits()]);
        let fwd = uniform(&self.ctx, "fwd", &fwd_words(n as u32));
        let bg = bind(
            &self.ctx,
            "rmsnorm",
            &self.k.norm_layout,
            &[&xb, &gb, &y, &u, &fwd],
        );
        let b = self.run(
            |p| record_norm(p, &self.k, &bg, n as u32, self.max_dim()),
            &y,
            (x.len() * 4) as u64,
        )?;
        Ok(floats(&b))
    }

    /// silu(g) * u element-wise, rows of `width`.
    pub fn swiglu(&self, g: &[f32], u: &[f32], width: usize) -> Result<Vec<f32>, WgpuError> {
        let n = g.len() / width;
        // The kernel reads rows of [gate | up].
        let gu: Vec<f32> = g
            .chunks(width)
            .zip(u.chunks(width))
            .flat_map(|(a, b)| a.iter().chain(b).copied())
            .collect();
        let gub = f32_buffer(&self.ctx, "gate_up", &gu, false);
        let hb = scratch(&self.ctx, "h", (g.len() * 4) as u64)?;
        let su = uniform(&self.ctx, "swiglu", &[width as u32]);
        let fwd = uniform(&self.ctx, "fwd", &fwd_words(n as u32));
        let bg = bind(
            &self.ctx,
            "swiglu",
            &self.k.swiglu_layout,
            &[&gub, &hb, &su, &fwd],
        );
        let b = self.run(
            |p| record_1d(p, &self.k.swiglu, &bg, g.len() as u32, self.max_dim()),
            &hb,
            (g.len() * 4) as u64,
        )?;
        Ok(floats(&b))
    }

    /// RoPE + KV-cache store + causal GQA attention for `n` new tokens of one sequence at
    /// positions `start..start + n`, with `prior_k`/`prior_v` (start rows of kv_dim) already in
    /// the cache: rope_kv then attention, or attention alone where it applies RoPE itself
    /// (`Kernels::fuse_rope`). Returns the attention output (n rows of n_head * head_dim) and the
    /// K and V caches after it (start + n rows of kv_dim each).
    #[allow(clippy::too_many_arguments)]
    pub fn attention(
        &self,
        n_head: usize,
        n_kv: usize,
        head_dim: usize,
        rope_base: f32,
        start: usize,
        prior_k: &[f32],
        prior_v: &[f32],
        q: &[f32],
        k: &[f32],
        v: &[f32],
    ) -> Result<[Vec<f32>; 3], WgpuError> {
        let kvd = n_kv * head_dim;
        let n = q.len() / (n_head * head_dim);
        let ctx_len = start + n;
        let mut kc = prior_k.to_vec();
        kc.resize(ctx_len * kvd, 0.0);
        let mut vc = prior_v.to_vec();
        vc.resize(ctx_len * kvd, 0.0);
        let c = &self.ctx;
        // The kernels read rows of [q | k | v] per token.
        let qd = n_head * head_dim;
        let qkv: Vec<f32> = (0..n)
            .flat_map(|t| {
                q[t * qd..(t + 1) * qd]
                    .iter()
                    .chain(&k[t * kvd..(t + 1) * kvd])
                    .chain(&v[t * kvd..(t + 1) * kvd])
                    .copied()
                    .collect::<Vec<_>>()
            })
            .collect();
        let qkvb = f32_buffer(c, "qkv", &qkv, true);
        let (kcb, vcb) = (
            f32_buffer(c, "kc", &kc, true),
            f32_buffer(c, "vc", &vc, true),
        );
        let meta: Vec<u32> = (0..n)
            .flat_map(|i| [0, 0, (start + i) as u32, start as u32])
            .collect();
        let mb = self.words_buffer("meta", &meta);
        let table = f32_buffer(c, "rope", &rope_table(ctx_len, head_dim, rope_base), false);
        let ao = scratch(c, "ao", (q.len() * 4) as u64)?;
        let fwd = uniform(c, "fwd", &fwd_words(n as u32));
        let ru = uniform(
            c,
            "rope",
            &[
                n_head as u32,
                n_kv as u32,
                head_dim as u32,
                ctx_len as u32,
                (qd + 2 * kvd) as u32,
            ],
        );
        let au = uniform(
            c,
            "att",
            &[
                n_head as u32,
                n_kv as u32,
                ctx_len as u32,
                (1.0 / (head_dim as f32).sqrt()).to_bits(),
                (qd + 2 * kvd) as u32,
            ],
        );
        let rbg = bind(
            c,
            "rope",
            &self.k.rope_layout,
            &[&qkvb, &mb, &kcb, &vcb, &table, &ru, &fwd],
        );
        let abg = bind_attention(
            c,
            &self.k,
            "att",
            &AttentionBuffers {
                qkv: &qkvb,
                meta: &mb,
                k_cache: &kcb,
                v_cache: &vcb,
                out: &ao,
                params: &au,
                fwd: &fwd,
                rope_table: &table,
            },
        );
        let pairs = ((n_head + n_kv) * head_dim / 2) as u32;
        let b = self.run(
            |p| {
                if !self.k.fuse_rope {
                    record_2d(p, &self.k.rope_kv, &rbg, pairs, n as u32);
                }
                record_attention(p, &self.k, &abg, (n * n_head) as u32, self.max_dim());
            },
            &ao,
            (q.len() * 4) as u64,
        )?;
        let cache_bytes = (kc.len() * 4) as u64;
        let read = |buf: &wgpu::Buffer| {
            let enc = c.device.create_command_encoder(&Default::default());
            let st = staging(c, cache_bytes);
            c.submit_and_read(enc, buf, cache_bytes, &st)
                .map(|b| floats(&b))
        };
        Ok([floats(&b), read(&kcb)?, read(&vcb)?])
    }

    /// Argmax (k = 0) or top-k (1..=64) of each `vocab`-wide row, as (id, value) pairs.
    pub fn select(
        &self,
        logits: &[f32],
        vocab: usize,
        k: usize,
    ) -> Result<Vec<Vec<(u32, f32)>>, WgpuError> {
        assert!(k <= TOPK_MAX, "probe top-k is limited to {TOPK_MAX}");
        let rows = logits.len() / vocab;
        let segs = if k == 0 {
            ARGMAX_SEGMENTS
        } else {
            TOPK_SEGMENTS
        };
        let c = &self.ctx;
        let lb = f32_buffer(c, "logits", logits, false);
        let partials = scratch(c, "partials", (rows * segs as usize * k.max(1) * 8) as u64)?;
        let out = scratch(c, "out", (rows * k.max(1) * 8) as u64)?;
        let su = uniform(c, "select", &[vocab as u32, segs, k as u32, rows as u32]);
        let bg = bind(
            c,
            "select",
            &self.k.select_layout,
            &[&lb, &partials, &out, &su],
        );
        let (s1, s2) = if k == 0 {
            (&self.k.argmax_segments, &self.k.argmax_merge)
        } else {
            (&self.k.topk_segments, &self.k.topk_merge)
        };
        let b = self.run(
            |p| {
                record_2d(p, s1, &bg, segs, rows as u32);
                record_1d(p, s2, &bg, rows as u32, self.max_dim());
            },
            &out,
            (rows * k.max(1) * 8) as u64,
        )?;
        let w: &[u32] = bytemuck::cast_slice(&b);
        Ok(w.chunks_exact(2 * k.max(1))
            .map(|r| {
                r.chunks_exact(2)
                    .map(|p| (p[0], f32::from_bits(p[1])))
                    .collect()
            })
            .collect())
    }
}

impl Probe {
    /// Mean device time of one matmul dispatch over `reps` in one pass (after a warm-up),
    /// on zero weights: for kernel benchmarks, not a test.
    pub fn time_matmul(
        &self,
        ty: GgmlType,
        rows: usize,
        cols: usize,
        n: usize,
        reps: usize,
    ) -> std::time::Duration {
        let w = vec![0u8; rows * ty.row_bytes(cols)];
        let m = GpuMatrix::upload(&self.ctx, "w", ty, rows, cols, &w).unwrap();
        let xb = f32_buffer(&self.ctx, "x", &vec![0.5; n * cols], false);
        let y = scratch(&self.ctx, "y", (n * rows * 4) as u64).unwrap();
        let fwd = uniform(&self.ctx, "fwd", &fwd_words(n as u32));
        let op = MatOp::new(&self.ctx, &self.k, "w", &m, &xb, &y, rows, 0, false, &fwd);
        self.run(|p| op.record(p, &self.k, n as u32, 65535), &y, 4)
            .unwrap();
        let t0 = std::time::Instant::now();
        self.run(
            |p| {
                for _ in 0..reps {
                    op.record(p, &self.k, n as u32, 65535)
                }
            },
            &y,
            4,
        )
        .unwrap();
        t0.elapsed() / reps as u32
    }
}

impl Probe {
    /// Device read bandwidth in bytes/s: best of 5 passes of `reads` streaming reads of a
    /// buffer of up to 256 MiB (capped by the binding limit).
    pub fn device_read_bandwidth(&self) -> Result<f64, WgpuError> {
        let c = &self.ctx;
        let bytes = c.max_binding.min(256 << 20) / 16 * 16;
        let src = c.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("bandwidth"),
            size: bytes,
            usage: wgpu::BufferUsages::STORAGE,
            mapped_at_creation: false,
        });
        let groups = 2048u32.min(c.limits.max_compute_workgroups_per_dimension);
        let out = scratch(c, "bandwidth_out", groups as u64 * 256 * 4)?;
        let layout = c
            .device
            .create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
                label: Some("bandwidth"),
                entries: &[storage_entry(0, true), storage_entry(1, false)],
            });
        let p = super::kernels::compile(c, "bandwidth", BANDWIDTH, "main", &layout)?;
        let bg = bind(c, "bandwidth", &layout, &[&src, &out]);
        let reads = 4;
        let mut best = 0.0f64;
        for _ in 0..5 {
            let t0 = std::time::Instant::now();
            self.run(
                |pass| {
                    pass.set_pipeline(&p);
                    pass.set_bind_group(0, &bg, &[]);
                    for _ in 0..reads {
                        pass.dispatch_workgroups(groups, 1, 1);
                    }
                },
                &out,
                4,
            )?;
            best = best.max((bytes * reads) as f64 / t0.elapsed().as_secs_f64());
        }
        Ok(best)
    }
}

const BANDWIDTH: &str = include_str!("shaders/bandwidth.wgsl");

fn storage_entry(binding: u32, read_only: bool) -> wgpu::BindGroupLayoutEntry {
    wgpu::BindGroupLayoutEntry {
        binding,
        visibility: wgpu::ShaderStages::COMPUTE,
        ty: wgpu::BindingType::Buffer {
            ty: wgpu::BufferBindingType::Storage { read_only },
            has_dynamic_offset: false,
            min_binding_size: None,
        },
        count: None,
    }
}
