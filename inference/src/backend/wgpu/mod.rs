//! The wgpu backend: the Llama forward pass as WGSL compute kernels, so one code path runs on
//! any Vulkan/Metal/DX12 GPU and, through Mesa's lavapipe, on CPUs in CI. Weights stay quantized
//! on the device; every buffer is allocated when the session opens; a forward is one command
//! encoder per pass of up to `MAX_ROWS` tokens, and only the chosen token ids (or logits when
//! asked) come back to the host.

mod device;
pub mod kernels;
mod ops;
pub mod probe;
mod profile;
pub mod weights;

pub use device::{
    AdapterPolicy, GpuContext, KERNELS_ENV, KernelVariant, WgpuOptions, describe_adapters,
    hardware_adapter_available,
};

use super::{Backend, BackendError, SeqChunk, validate_batch, validate_copy};
use crate::gguf::GgmlType;
use crate::model::{LlamaConfig, LlamaModel};
use kernels::{ARGMAX_SEGMENTS, Kernels, TOPK_MAX, TOPK_SEGMENTS};
use ops::{
    AttentionBuffers, EmbedOp, FusedNorm, MatOp, bind, bind_attention, fwd_words, record_1d,
    record_2d, record_attention, record_norm, rope_table,
};
pub use profile::{ForwardStats, KernelTime, StepProfile};
use profile::{Rec, Timestamps};
use std::time::Instant;
use weights::{GpuMatrix, f32_buffer, scratch, staging, uniform};

/// Tokens per device pass; longer batches run as several passes.
pub const MAX_ROWS: usize = 256;
/// Layers per command buffer within a pass: the device starts on the first layers while the
/// host still records the rest (recording a whole decode step is a large share of it on a fast
/// GPU; see docs/PERFORMANCE.md, "Inference: wgpu").
const LAYERS_PER_SUBMIT: usize = 4;

/// Why the wgpu backend could not start or run.
#[derive(Debug, thiserror::Error)]
pub enum WgpuError {
    #[error(
        "no {} wgpu adapter found (adapters seen: {}); install a GPU driver or Mesa's software Vulkan (Debian: mesa-vulkan-drivers), or use --backend cpu",
        if *policy == AdapterPolicy::HardwareOnly { "hardware GPU" } else { "compute-capable" },
        if seen.is_empty() { "none".to_string() } else { seen.join(", ") }
    )]
    NoAdapter {
        policy: AdapterPolicy,
        seen: Vec<String>,
    },
    #[error("adapter '{adapter}' refused a device: {reason}")]
    RequestDevice { adapter: String, reason: String },
    #[error(
        "adapter '{adapter}' has no usable subgroups (feature missing or subgroup size not fixed); use the tiled or rows kernels"
    )]
    NoSubgroups { adapter: String },
    #[error("unknown kernel variant: {0}")]
    BadKernelChoice(String),
    #[error("kernel '{kernel}' failed to compile: {message}")]
    Shader { kernel: String, message: String },
    #[error("weight type {} is not supported by the wgpu kernels; use F32, F16, Q8_0, Q4_0 or Q4_1, or --backend cpu", .0.name())]
    UnsupportedType(GgmlType),
    #[error("unsupported shape: {0}")]
    UnsupportedShape(String),
    #[error("too large for this adapter: {0}")]
    TooLarge(String),
    #[error("device error: {0}")]
    Device(String),
}

impl From<WgpuError> for BackendError {
    fn from(e: WgpuError) -> BackendError {
        match e {
            WgpuError::Device(m) => BackendError::Device(m),
            other => BackendError::Unavailable(other.to_string()),
        }
    }
}

struct Layer {
    /// The RMSNorm dispatches before attention and the FFN; None where the matmuls after them
    /// apply the norm themselves (`Kernels::fuse_norm`).
    norm_attn: Option<wgpu::BindGroup>,
    /// Q, K and V into one [q | k | v] row per token: one op when the three share a type.
    qkv: Vec<MatOp>,
    /// RoPE and the KV-cache store; None where attention does both (`Kernels::fuse_rope`).
    rope: Option<wgpu::BindGroup>,
    attention: wgpu::BindGroup,
    o: MatOp,
    norm_ffn: Option<wgpu::BindGroup>,
    /// Gate and up into one [gate | up] row per token, likewise.
    gate_up: Vec<MatOp>,
    down: MatOp,
    /// The down matmul reading [gate | up] through SwiGLU, for single-row passes on GPU
    /// variants (`Kernels::fuse_swiglu`): one dispatch fewer per layer at decode. Wider passes
    /// keep the separate SwiGLU kernel: there every row's workgroup would recompute silu for
    /// all tokens, which measured slower than the extra dispatch (docs/PERFORMANCE.md).
    down_swiglu: Option<MatOp>,
    /// This layer's K and V caches, [slot][pos][kv_dim] f32 each (prefix copies address them).
    k_cache: wgpu::Buffer,
    v_cache: wgpu::Buffer,
    // Keep the per-layer buffers alive with their bind groups.
    _buffers: Vec<wgpu::Buffer>,
}

/// A model session on a wgpu device: weights, KV caches and activations live on the device.
pub struct WgpuBackend {
    ctx: GpuContext,
    k: Kernels,
    cfg: LlamaConfig,
    max_slots: usize,
    max_context: usize,
    filled: Vec<usize>,
    /// Chunks of the last successful forward (rows of `logits`); 0 before the first.
    n_out: usize,
    embed: EmbedOp,
    layers: Vec<Layer>,
    swiglu: wgpu::BindGroup,
    /// None where the output matmul applies the final norm itself.
    norm_out: Option<wgpu::BindGroup>,
    logits_op: MatOp,
    select: wgpu::BindGroup,
    meta: wgpu::Buffer,
    fwd: wgpu::Buffer,
    fwd_out: wgpu::Buffer,
    sel_u: wgpu::Buffer,
    x: wgpu::Buffer,
    xg: wgpu::Buffer,
    logits: wgpu::Buffer,
    sel_out: wgpu::Buffer,
    staging: wgpu::Buffer,
    kv_bounce: wgpu::Buffer,
    _keep: Vec<wgpu::Buffer>,
    _matrices: Vec<GpuMatrix>,
    /// Set only inside `profile_step`: every dispatch then gets its own timed pass.
    prof: Option<Timestamps>,
    last_forward: ForwardStats,
}

impl WgpuBackend {
    /// Opens a device per `opts` and uploads the model for `max_slots` sequences of up to
    /// `max_context` tokens.
    pub fn new(
        model: &LlamaModel,
        max_slots: usize,
        max_context: usize,
        opts: &WgpuOptions,
    ) -> Result<WgpuBackend, WgpuError> {
        let ctx = GpuContext::new(opts)?;
        Self::with_context(ctx, model, max_slots, max_context)
    }

    /// Kernels recorded by the last forward and the host time spent recording them.
    pub fn last_forward_stats(&self) -> ForwardStats {
        self.last_forward
    }

    /// The adapter and kernel choice, for logs and `bench`.
    pub fn describe(&self) -> String {
        self.ctx.describe()
    }

    pub fn with_context(
        ctx: GpuContext,
        model: &LlamaModel,
        max_slots: usize,
        max_context: usize,
    ) -> Result<WgpuBackend, WgpuError> {
        let c = model.config.clone();
        let w = &model.weights;
        if max_slots == 0 || max_context == 0 {
            return Err(WgpuError::UnsupportedShape(format!(
                "a session needs at least one slot and one position (got {max_slots} slots, context {max_context})"
            )));
        }
        let cache_bytes = (max_slots * max_context * c.kv_dim() * 4) as u64;
        if cache_bytes > ctx.max_binding {
            return Err(WgpuError::TooLarge(format!(
                "buffer 'k_cache.0' needs {cache_bytes} bytes ({max_slots} slots x {max_context} positions), over the adapter's storage binding limit of {} bytes; use fewer slots or a shorter context",
                ctx.max_binding
            )));
        }
        let mut types = vec![w.token_embd.ty, w.output.ty];
        for l in &w.layers {
            types.extend([
                l.wq.ty,
                l.wk.ty,
                l.wv.ty,
                l.wo.ty,
                l.w_gate.ty,
                l.w_up.ty,
                l.w_down.ty,
            ]);
        }
        types.sort_by_key(|t| t.id());
        types.dedup();
        let k = Kernels::new(&ctx, &types, c.head_dim)?;
        let upload = |t: &crate::model::TensorRef| {
            GpuMatrix::upload(&ctx, &t.name, t.ty, t.rows, t.cols, model.bytes(t))
        };
        let f32s =
            |t: &crate::model::TensorRef| f32_buffer(&ctx, &t.name, &model.dequantize(t), false);
        let rows = MAX_ROWS as u64;
        let (dim, qd, kvd, ffn, vocab) = (
            c.dim as u64,
            c.q_dim() as u64,
            c.kv_dim() as u64,
            c.ffn_dim as u64,
            c.vocab_size as u64,
        );
        let x = scratch(&ctx, "x", rows * dim * 4)?;
        let xn = scratch(&ctx, "xn", rows * dim * 4)?;
        let qkv_stride = qd + 2 * kvd;
        let qkv = scratch(&ctx, "qkv", rows * qkv_stride * 4)?;
        let ao = scratch(&ctx, "attn_out", rows * qd * 4)?;
        let gu = scratch(&ctx, "gate_up", rows * 2 * ffn * 4)?;
        let h = scratch(&ctx, "ffn_hidden", rows * ffn * 4)?;
        let meta = scratch(&ctx, "meta", rows * 16)?;
        let slots = max_slots as u64;
        let xg = scratch(&ctx, "x_last", slots * dim * 4)?;
        let xgn = scratch(&ctx, "x_last_norm", slots * dim * 4)?;
        let logits = scratch(&ctx, "logits", slots * vocab * 4)?;
        let partial_entries = (ARGMAX_SEGMENTS as u64).max(TOPK_SEGMENTS as u64 * TOPK_MAX as u64);
        let partials = scratch(&ctx, "select_partials", slots * partial_entries * 8)?;
        let sel_out = scratch(&ctx, "select_out", slots * TOPK_MAX as u64 * 8)?;
        let staging = staging(&ctx, slots * vocab * 4);
        // A buffer cannot be copied into itself: prefix copies between slots of one cache
        // bounce through this one, a slot's worth of one layer's K or V.
        let kv_bounce = scratch(&ctx, "kv_bounce", max_context as u64 * kvd * 4)?;
        let fwd = uniform(&ctx, "fwd", &fwd_words(0));
        let fwd_out = uniform(&ctx, "fwd_out", &fwd_words(0));
        let sel_u = uniform(&ctx, "select", &[0; 4]);
        let table = f32_buffer(
            &ctx,
            "rope_table",
            &rope_table(max_context, c.head_dim, c.rope_base),
            false,
        );
        let norm_u = uniform(&ctx, "norm", &[c.dim as u32, c.norm_eps.to_bits()]);
        let rope_u = uniform(
            &ctx,
            "rope",
            &[
                c.n_heads as u32,
                c.n_kv_heads as u32,
                c.head_dim as u32,
                max_context as u32,
                qkv_stride as u32,
            ],
        );
        let att_u = uniform(
            &ctx,
            "attention",
            &[
                c.n_heads as u32,
                c.n_kv_heads as u32,
                max_context as u32,
                (1.0 / (c.head_dim as f32).sqrt()).to_bits(),
                qkv_stride as u32,
            ],
        );
        let swi_u = uniform(&ctx, "swiglu", &[c.ffn_dim as u32]);

        let embd = upload(&w.token_embd)?;
        let embed = EmbedOp::new(&ctx, &k, &embd, &meta, &x, &fwd);
        let mut matrices = vec![];
        let mut layers = Vec::with_capacity(c.n_layers);
        // With the norm fused, the matmuls after each norm read the residual `x` and the norm
        // weights; otherwise they read `xn`, written by an RMSNorm dispatch.
        let eps = c.norm_eps;
        let norm_in = if k.fuse_norm { &x } else { &xn };
        let norm_op = |name: &str, g: &wgpu::Buffer| {
            (!k.fuse_norm).then(|| bind(&ctx, name, &k.norm_layout, &[&x, g, &xn, &norm_u, &fwd]))
        };
        for (i, l) in w.layers.iter().enumerate() {
            let an = f32s(&l.attn_norm);
            let fnorm = f32s(&l.ffn_norm);
            let kc = scratch(&ctx, &format!("k_cache.{i}"), cache_bytes)?;
            let vc = scratch(&ctx, &format!("v_cache.{i}"), cache_bytes)?;
            let wo = upload(&l.wo)?;
            let wd = upload(&l.w_down)?;
            let qkv_ops = stacked(
                &ctx,
                &k,
                model,
                &[&l.wq, &l.wk, &l.wv],
                (norm_in, fused_norm(&k, &an, eps)),
                (&qkv, qkv_stride as usize, &fwd),
                &mut matrices,
            )?;
            let gu_ops = stacked(
                &ctx,
                &k,
                model,
                &[&l.w_gate, &l.w_up],
                (norm_in, fused_norm(&k, &fnorm, eps)),
                (&gu, 2 * ffn as usize, &fwd),
                &mut matrices,
            )?;
            layers.push(Layer {
                norm_attn: norm_op("attn_norm", &an),
                qkv: qkv_ops,
                rope: (!k.fuse_rope).then(|| {
                    bind(
                        &ctx,
                        "rope_kv",
                        &k.rope_layout,
                        &[&qkv, &meta, &kc, &vc, &table, &rope_u, &fwd],
                    )
                }),
                attention: bind_attention(
                    &ctx,
                    &k,
                    "attention",
                    &AttentionBuffers {
                        qkv: &qkv,
                        meta: &meta,
                        k_cache: &kc,
                        v_cache: &vc,
                        out: &ao,
                        params: &att_u,
                        fwd: &fwd,
                        rope_table: &table,
                    },
                ),
                o: MatOp::new(&ctx, &k, "o", &wo, &ao, &x, dim as usize, 0, true, &fwd),
                norm_ffn: norm_op("ffn_norm", &fnorm),
                gate_up: gu_ops,
                down: MatOp::new(&ctx, &k, "down", &wd, &h, &x, dim as usize, 0, true, &fwd),
                down_swiglu: k.fuse_swiglu.then(|| {
                    MatOp::new(&ctx, &k, "down", &wd, &gu, &x, dim as usize, 0, true, &fwd)
                        .with_swiglu_input()
                }),
                k_cache: kc,
                v_cache: vc,
                _buffers: vec![an, fnorm],
            });
            matrices.extend([wo, wd]);
        }
        let swiglu = bind(&ctx, "swiglu", &k.swiglu_layout, &[&gu, &h, &swi_u, &fwd]);
        let onorm = f32s(&w.output_norm);
        let norm_out = (!k.fuse_norm).then(|| {
            bind(
                &ctx,
                "output_norm",
                &k.norm_layout,
                &[&xg, &onorm, &xgn, &norm_u, &fwd_out],
            )
        });
        let out = if w.tied_output {
            None
        } else {
            Some(upload(&w.output)?)
        };
        let out_w = out.as_ref().unwrap_or(&embd);
        let logits_op = match fused_norm(&k, &onorm, eps) {
            Some(norm) => MatOp::normed(
                &ctx,
                &k,
                "output",
                out_w,
                &xg,
                norm,
                &logits,
                c.vocab_size,
                0,
                &fwd_out,
            ),
            None => MatOp::new(
                &ctx,
                &k,
                "output",
                out_w,
                &xgn,
                &logits,
                c.vocab_size,
                0,
                false,
                &fwd_out,
            ),
        };
        let select = bind(
            &ctx,
            "select",
            &k.select_layout,
            &[&logits, &partials, &sel_out, &sel_u],
        );
        matrices.push(embd);
        matrices.extend(out);
        if let Some(e) = ctx.take_error() {
            return Err(WgpuError::Device(e));
        }
        Ok(WgpuBackend {
            k,
            cfg: c,
            max_slots,
            max_context,
            filled: vec![0; max_slots],
            n_out: 0,
            embed,
            layers,
            swiglu,
            norm_out,
            logits_op,
            select,
            meta,
            fwd,
            fwd_out,
            sel_u,
            x,
            xg,
            logits,
            sel_out,
            staging,
            kv_bounce,
            _keep: vec![
                xn, qkv, ao, gu, h, xgn, partials, table, norm_u, rope_u, att_u, swi_u, onorm,
            ],
            _matrices: matrices,
            prof: None,
            last_forward: ForwardStats::default(),
            ctx,
        })
    }

    fn max_dim(&self) -> u32 {
        self.ctx.limits.max_compute_workgroups_per_dimension
    }

    /// Records `layers` for a pass of `n` rows.
    fn record_layers(&self, rec: &mut Rec<'_>, layers: &[Layer], n: u32) {
        let c = &self.cfg;
        let (k, md) = (&self.k, self.max_dim());
        for l in layers {
            if let Some(bg) = &l.norm_attn {
                record_norm(rec.pass("rmsnorm"), k, bg, n, md);
            }
            for op in &l.qkv {
                op.record(rec.pass("matmul qkv"), k, n, md);
            }
            let pairs = ((c.n_heads + c.n_kv_heads) * c.head_dim / 2) as u32;
            if let Some(bg) = &l.rope {
                record_2d(rec.pass("rope_kv"), &k.rope_kv, bg, pairs, n);
            }
            record_attention(
                rec.pass("attention"),
                k,
                &l.attention,
                n * c.n_heads as u32,
                md,
            );
            l.o.record(rec.pass("matmul o (+=)"), k, n, md);
            if let Some(bg) = &l.norm_ffn {
                record_norm(rec.pass("rmsnorm"), k, bg, n, md);
            }
            for op in &l.gate_up {
                op.record(rec.pass("matmul gate_up"), k, n, md);
            }
            match &l.down_swiglu {
                Some(op) if n == 1 => op.record(rec.pass("matmul down (+=)"), k, n, md),
                _ => {
                    record_1d(
                        rec.pass("swiglu"),
                        &k.swiglu,
                        &self.swiglu,
                        n * c.ffn_dim as u32,
                        md,
                    );
                    l.down.record(rec.pass("matmul down (+=)"), k, n, md);
                }
            }
        }
    }

    /// One forward of `batch` and one argmax, as `forward` + `argmax` do, but with each
    /// dispatch in its own pass timed on the device: the GPU time per kernel kind. None when
    /// the adapter has no timestamp queries. Only for measuring: the extra passes and
    /// timestamps make the step itself slower.
    pub fn profile_step(
        &mut self,
        batch: &[SeqChunk<'_>],
    ) -> Result<Option<(Vec<u32>, StepProfile)>, BackendError> {
        if !self.ctx.timestamps {
            return Ok(None);
        }
        self.prof = Some(Timestamps::new(&self.ctx, 2048));
        let ids = self.forward(batch).and_then(|()| self.argmax());
        let prof = self.prof.take().expect("set above");
        let ids = ids?;
        Ok(Some((ids, prof.finish(&self.ctx)?)))
    }

    fn check_device(&self) -> Result<(), BackendError> {
        match self.ctx.take_error() {
            Some(e) => Err(BackendError::Device(e)),
            None => Ok(()),
        }
    }

    /// Runs the select kernels (argmax when k == 0, else top-k) and reads `OUT`.
    fn select(&mut self, k: usize) -> Result<Vec<[u32; 2]>, BackendError> {
        if self.n_out == 0 {
            return Err(BackendError::NoLogits);
        }
        let rows = self.n_out as u32;
        let segs = if k == 0 {
            ARGMAX_SEGMENTS
        } else {
            TOPK_SEGMENTS
        };
        let words = [self.cfg.vocab_size as u32, segs, k as u32, rows];
        self.ctx
            .queue
            .write_buffer(&self.sel_u, 0, bytemuck::cast_slice(&words));
        let mut enc = self.ctx.device.create_command_encoder(&Default::default());
        let mut prof = self.prof.take();
        {
            let mut rec = Rec::new(&mut enc, prof.as_mut());
            let (s1, s2) = if k == 0 {
                (&self.k.argmax_segments, &self.k.argmax_merge)
            } else {
                (&self.k.topk_segments, &self.k.topk_merge)
            };
            record_2d(rec.pass("select segments"), s1, &self.select, segs, rows);
            record_1d(
                rec.pass("select merge"),
                s2,
                &self.select,
                rows,
                self.max_dim(),
            );
        }
        self.prof = prof;
        let entries = self.n_out * k.max(1);
        let bytes =
            self.ctx
                .submit_and_read(enc, &self.sel_out, entries as u64 * 8, &self.staging)?;
        Ok(bytemuck::cast_slice::<u8, u32>(&bytes)
            .chunks_exact(2)
            .map(|p| [p[0], p[1]])
            .collect())
    }
}

impl Backend for WgpuBackend {
    fn name(&self) -> &'static str {
        "wgpu"
    }

    fn max_slots(&self) -> usize {
        self.max_slots
    }

    fn max_context(&self) -> usize {
        self.max_context
    }

    fn forward(&mut self, batch: &[SeqChunk<'_>]) -> Result<(), BackendError> {
        validate_batch(batch, &self.filled, self.max_context, self.cfg.vocab_size)?;
        self.n_out = 0;
        // One row per token: (token, slot, position, first position of the slot in its pass,
        // set per pass below); `last[c]` = row of chunk c's last token.
        let mut rows: Vec<[u32; 4]> = Vec::new();
        let mut last = Vec::with_capacity(batch.len());
        for ch in batch {
            for (i, &t) in ch.tokens.iter().enumerate() {
                rows.push([t, ch.slot as u32, (ch.start_pos + i) as u32, 0]);
            }
            last.push(rows.len() - 1);
        }
        let q = &self.ctx.queue;
        q.write_buffer(
            &self.fwd_out,
            0,
            bytemuck::cast_slice(&fwd_words(batch.len() as u32)),
        );
        let dim_bytes = self.cfg.dim as u64 * 4;
        let pieces = rows.len().div_ceil(MAX_ROWS);
        let mut stats = ForwardStats::default();
        for (pi, piece) in rows.chunks_mut(MAX_ROWS).enumerate() {
            mark_pass_starts(piece);
            let piece = &*piece;
            let base = pi * MAX_ROWS;
            let n = piece.len() as u32;
            q.write_buffer(&self.meta, 0, bytemuck::cast_slice(piece));
            q.write_buffer(&self.fwd, 0, bytemuck::cast_slice(&fwd_words(n)));
            let mut prof = self.prof.take();
            let mut groups: Vec<&[Layer]> = self.layers.chunks(LAYERS_PER_SUBMIT).collect();
            if groups.is_empty() {
                groups.push(&[]);
            }
            for (gi, group) in groups.iter().enumerate().take(groups.len() - 1) {
                let t0 = Instant::now();
                let mut enc = self.ctx.device.create_command_encoder(&Default::default());
                {
                    let mut rec = Rec::new(&mut enc, prof.as_mut());
                    if gi == 0 {
                        self.embed.record(rec.pass("embed"), &self.k, n);
                    }
                    self.record_layers(&mut rec, group, n);
                    stats.kernels += rec.kernels;
                }
                let cb = enc.finish();
                stats.recording += t0.elapsed();
                q.submit([cb]);
            }
            let t0 = Instant::now();
            let mut enc = self.ctx.device.create_command_encoder(&Default::default());
            {
                let mut rec = Rec::new(&mut enc, prof.as_mut());
                if groups.len() == 1 {
                    self.embed.record(rec.pass("embed"), &self.k, n);
                }
                self.record_layers(&mut rec, groups[groups.len() - 1], n);
                for (c, &r) in last.iter().enumerate() {
                    if (base..base + piece.len()).contains(&r) {
                        let src = (r - base) as u64 * dim_bytes;
                        rec.encoder().copy_buffer_to_buffer(
                            &self.x,
                            src,
                            &self.xg,
                            c as u64 * dim_bytes,
                            dim_bytes,
                        );
                    }
                }
                if pi + 1 == pieces {
                    let out = batch.len() as u32;
                    let md = self.max_dim();
                    if let Some(bg) = &self.norm_out {
                        record_norm(rec.pass("rmsnorm"), &self.k, bg, out, md);
                    }
                    self.logits_op
                        .record(rec.pass("matmul output"), &self.k, out, md);
                }
                stats.kernels += rec.kernels;
            }
            self.prof = prof;
            let cb = enc.finish();
            stats.recording += t0.elapsed();
            q.submit([cb]);
        }
        self.last_forward = stats;
        self.check_device()?;
        for ch in batch {
            self.filled[ch.slot] = ch.start_pos + ch.tokens.len();
        }
        self.n_out = batch.len();
        Ok(())
    }

    fn logits(&mut self) -> Result<Vec<Vec<f32>>, BackendError> {
        if self.n_out == 0 {
            return Err(BackendError::NoLogits);
        }
        let v = self.cfg.vocab_size;
        let enc = self.ctx.device.create_command_encoder(&Default::default());
        let bytes = self.ctx.submit_and_read(
            enc,
            &self.logits,
            (self.n_out * v * 4) as u64,
            &self.staging,
        )?;
        Ok(bytemuck::cast_slice::<u8, f32>(&bytes)
            .chunks_exact(v)
            .map(|r| r.to_vec())
            .collect())
    }

    fn argmax(&mut self) -> Result<Vec<u32>, BackendError> {
        Ok(self.select(0)?.into_iter().map(|[id, _]| id).collect())
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
            let row = self.cfg.kv_dim() as u64 * 4;
            let ctx = self.max_context as u64;
            let at = |slot: usize| (slot as u64 * ctx + from as u64) * row;
            let bytes = (to - from) as u64 * row;
            let mut enc = self.ctx.device.create_command_encoder(&Default::default());
            for l in &self.layers {
                for cache in [&l.k_cache, &l.v_cache] {
                    enc.copy_buffer_to_buffer(cache, at(src), &self.kv_bounce, 0, bytes);
                    enc.copy_buffer_to_buffer(&self.kv_bounce, 0, cache, at(dst), bytes);
                }
            }
            self.ctx.queue.submit([enc.finish()]);
            self.check_device()?;
        }
        self.filled[dst] = to;
        Ok(())
    }

    fn top_k(&mut self, k: usize) -> Result<Vec<Vec<(u32, f32)>>, BackendError> {
        if self.n_out == 0 {
            return Err(BackendError::NoLogits);
        }
        let k = k.min(self.cfg.vocab_size);
        if k == 0 {
            return Ok(vec![Vec::new(); self.n_out]);
        }
        if k > TOPK_MAX {
            // Beyond the device kernel's private list size: select on the host instead.
            return Ok(self
                .logits()?
                .iter()
                .map(|l| super::top_k_of(l, k))
                .collect());
        }
        let out = self.select(k)?;
        Ok(out
            .chunks_exact(k)
            .map(|c| c.iter().map(|&[id, v]| (id, f32::from_bits(v))).collect())
            .collect())
    }
}

/// Sets each row's word 3 to the first position of its slot among the pass's rows: a chunk's
/// rows are consecutive, but a chunk split over two passes starts the second at a later
/// position. Attention with RoPE fused reads positions from there on from the pass's own rows.
fn mark_pass_starts(rows: &mut [[u32; 4]]) {
    for i in 0..rows.len() {
        let [_, slot, pos, _] = rows[i];
        rows[i][3] = match i.checked_sub(1).map(|j| rows[j]) {
            Some([_, s, p, first]) if s == slot && p + 1 == pos => first,
            _ => pos,
        };
    }
}

/// The norm a matmul applies itself when the kernels fuse RMSNorm, else None.
fn fused_norm<'a>(k: &Kernels, weights: &'a wgpu::Buffer, eps: f32) -> Option<FusedNorm<'a>> {
    k.fuse_norm.then_some(FusedNorm { weights, eps })
}

/// Matmuls that read the same input (`input.0`, through the fused norm `input.1` when given)
/// and write side by side into one output row ([m0 | m1 | ...], `out.1` floats per row):
/// uploaded as one matrix of stacked rows (one dispatch) when their types agree, else as one
/// op per matrix at its column offset.
fn stacked(
    ctx: &GpuContext,
    k: &Kernels,
    model: &LlamaModel,
    parts: &[&crate::model::TensorRef],
    input: (&wgpu::Buffer, Option<FusedNorm<'_>>),
    out: (&wgpu::Buffer, usize, &wgpu::Buffer),
    keep: &mut Vec<GpuMatrix>,
) -> Result<Vec<MatOp>, WgpuError> {
    let (x, norm) = input;
    let (y, stride, fwd) = out;
    let op = |name: &str, m: &GpuMatrix, col: usize| match norm {
        Some(n) => MatOp::normed(ctx, k, name, m, x, n, y, stride, col, fwd),
        None => MatOp::new(ctx, k, name, m, x, y, stride, col, false, fwd),
    };
    let first = parts[0];
    let mut ops = Vec::new();
    if parts
        .iter()
        .all(|t| t.ty == first.ty && t.cols == first.cols)
    {
        let rows: usize = parts.iter().map(|t| t.rows).sum();
        let mut bytes = Vec::with_capacity(rows * first.row_bytes());
        for t in parts {
            bytes.extend_from_slice(model.bytes(t));
        }
        let m = GpuMatrix::upload(ctx, &first.name, first.ty, rows, first.cols, &bytes)?;
        ops.push(op(&first.name, &m, 0));
        keep.push(m);
    } else {
        let mut col = 0;
        for t in parts {
            let m = GpuMatrix::upload(ctx, &t.name, t.ty, t.rows, t.cols, model.bytes(t))?;
            ops.push(op(&t.name, &m, col));
            col += t.rows;
            keep.push(m);
        }
    }
    Ok(ops)
}

#[cfg(test)]
mod tests {
    use super::mark_pass_starts;

    #[test]
    fn each_row_gets_its_slots_first_position_in_the_pass() {
        // (token, slot, position, _): slot 0 continues at 256 (the first pass ended at 255),
        // slot 1 starts at 0, slot 2 decodes one token at 40.
        let mut rows = vec![
            [7, 0, 256, 0],
            [8, 0, 257, 0],
            [9, 0, 258, 0],
            [1, 1, 0, 0],
            [2, 1, 1, 0],
            [3, 2, 40, 0],
        ];
        mark_pass_starts(&mut rows);
        let firsts: Vec<u32> = rows.iter().map(|r| r[3]).collect();
        assert_eq!(firsts, [256, 256, 256, 0, 0, 40]);
        // Neighbouring rows of different slots at consecutive positions are not one run.
        let mut rows = vec![[0, 0, 4, 0], [0, 1, 5, 0]];
        mark_pass_starts(&mut rows);
        assert_eq!([rows[0][3], rows[1][3]], [4, 5]);
    }
}
