//! Recording one kernel dispatch: the bind groups each kernel takes, built once per session,
//! and the helpers that put them into a compute pass. Shared by the backend and by `probe`.

use super::device::GpuContext;
use super::kernels::{Kernels, MatInput, WG1, split_groups};
use super::weights::{GpuMatrix, uniform};
use crate::gguf::GgmlType;

pub(crate) fn bind(
    ctx: &GpuContext,
    name: &str,
    layout: &wgpu::BindGroupLayout,
    buffers: &[&wgpu::Buffer],
) -> wgpu::BindGroup {
    let entries: Vec<_> = buffers
        .iter()
        .enumerate()
        .map(|(i, b)| wgpu::BindGroupEntry {
            binding: i as u32,
            resource: b.as_entire_binding(),
        })
        .collect();
    ctx.device.create_bind_group(&wgpu::BindGroupDescriptor {
        label: Some(name),
        layout,
        entries: &entries,
    })
}

/// A matmul Y (=|+=) W X with its bind groups, one per split of W; output row t gets W's
/// results at columns col_offset.. of a row of out_stride floats.
pub(crate) struct MatOp {
    ty: GgmlType,
    splits: Vec<(u32, wgpu::BindGroup)>,
    input: MatInput,
}

/// The norm a `MatInput::RmsNorm` matmul applies to its input rows: weights and epsilon.
#[derive(Clone, Copy)]
pub(crate) struct FusedNorm<'a> {
    pub(crate) weights: &'a wgpu::Buffer,
    pub(crate) eps: f32,
}

impl MatOp {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        ctx: &GpuContext,
        k: &Kernels,
        name: &str,
        m: &GpuMatrix,
        x: &wgpu::Buffer,
        y: &wgpu::Buffer,
        out_stride: usize,
        col_offset: usize,
        accumulate: bool,
        fwd: &wgpu::Buffer,
    ) -> MatOp {
        Self::build(
            ctx, k, name, m, x, None, y, out_stride, col_offset, accumulate, fwd,
        )
    }

    /// A matmul over RMSNorm(x) * weights, the norm computed inside the kernel
    /// (`Kernels::fuse_norm`); x holds the rows as they are.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn normed(
        ctx: &GpuContext,
        k: &Kernels,
        name: &str,
        m: &GpuMatrix,
        x: &wgpu::Buffer,
        norm: FusedNorm<'_>,
        y: &wgpu::Buffer,
        out_stride: usize,
        col_offset: usize,
        fwd: &wgpu::Buffer,
    ) -> MatOp {
        Self::build(
            ctx,
            k,
            name,
            m,
            x,
            Some(norm),
            y,
            out_stride,
            col_offset,
            false,
            fwd,
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn build(
        ctx: &GpuContext,
        k: &Kernels,
        name: &str,
        m: &GpuMatrix,
        x: &wgpu::Buffer,
        norm: Option<FusedNorm<'_>>,
        y: &wgpu::Buffer,
        out_stride: usize,
        col_offset: usize,
        accumulate: bool,
        fwd: &wgpu::Buffer,
    ) -> MatOp {
        let splits = m
            .splits
            .iter()
            .map(|s| {
                let u = uniform(
                    ctx,
                    name,
                    &[
                        s.rows as u32,
                        m.cols as u32,
                        (col_offset + s.row_start) as u32,
                        out_stride as u32,
                        accumulate as u32,
                        norm.map_or(0, |n| n.eps.to_bits()),
                    ],
                );
                let bg = match norm {
                    Some(n) => bind(
                        ctx,
                        name,
                        &k.matmul_norm_layout,
                        &[&s.buffer, x, y, &u, fwd, n.weights],
                    ),
                    None => bind(ctx, name, &k.matmul_layout, &[&s.buffer, x, y, &u, fwd]),
                };
                (s.rows as u32, bg)
            })
            .collect();
        MatOp {
            ty: m.ty,
            splits,
            input: if norm.is_some() {
                MatInput::RmsNorm
            } else {
                MatInput::Plain
            },
        }
    }

    /// Makes the op read its input as [gate | up] rows through SwiGLU (`Kernels::fuse_swiglu`).
    pub(crate) fn with_swiglu_input(mut self) -> MatOp {
        debug_assert_eq!(self.input, MatInput::Plain);
        self.input = MatInput::SwiGlu;
        self
    }

    /// Records the dispatches for `n` activation rows.
    pub(crate) fn record(
        &self,
        pass: &mut wgpu::ComputePass<'_>,
        k: &Kernels,
        n: u32,
        max_dim: u32,
    ) {
        let (p, tb) = k.matmul_for(self.ty, n, self.input);
        pass.set_pipeline(p);
        for (rows, bg) in &self.splits {
            let [x, y, z] = k.matmul_groups(*rows, n, tb, max_dim);
            pass.set_bind_group(0, bg, &[]);
            pass.dispatch_workgroups(x, y, z);
        }
    }
}

/// Embedding lookup from a (maybe split) token table into X.
pub(crate) struct EmbedOp {
    ty: GgmlType,
    blocks: u32,
    splits: Vec<wgpu::BindGroup>,
}

impl EmbedOp {
    pub(crate) fn new(
        ctx: &GpuContext,
        k: &Kernels,
        m: &GpuMatrix,
        meta: &wgpu::Buffer,
        x: &wgpu::Buffer,
        fwd: &wgpu::Buffer,
    ) -> EmbedOp {
        let splits = m
            .splits
            .iter()
            .map(|s| {
                let u = uniform(
                    ctx,
                    "embed",
                    &[s.rows as u32, m.cols as u32, s.row_start as u32],
                );
                bind(
                    ctx,
                    "embed",
                    &k.embed_layout,
                    &[&s.buffer, meta, x, &u, fwd],
                )
            })
            .collect();
        EmbedOp {
            ty: m.ty,
            blocks: (m.cols / 32) as u32,
            splits,
        }
    }

    pub(crate) fn record(&self, pass: &mut wgpu::ComputePass<'_>, k: &Kernels, n: u32) {
        pass.set_pipeline(k.embed_for(self.ty));
        for bg in &self.splits {
            pass.set_bind_group(0, bg, &[]);
            pass.dispatch_workgroups(self.blocks.div_ceil(WG1), n, 1);
        }
    }
}

/// Records a one-dimensional barrier-free kernel over `items` invocations (x, then y when the
/// count exceeds the per-dimension limit).
pub(crate) fn record_1d(
    pass: &mut wgpu::ComputePass<'_>,
    p: &wgpu::ComputePipeline,
    bg: &wgpu::BindGroup,
    items: u32,
    max_dim: u32,
) {
    let (x, y) = split_groups(items.div_ceil(WG1), max_dim);
    pass.set_pipeline(p);
    pass.set_bind_group(0, bg, &[]);
    pass.dispatch_workgroups(x, y, 1);
}

/// Records RMSNorm over `rows` rows: one invocation or one workgroup per row, per the kernel.
pub(crate) fn record_norm(
    pass: &mut wgpu::ComputePass<'_>,
    k: &Kernels,
    bg: &wgpu::BindGroup,
    rows: u32,
    max_dim: u32,
) {
    if k.norm_per_workgroup {
        let (x, y) = split_groups(rows, max_dim);
        pass.set_pipeline(&k.rmsnorm);
        pass.set_bind_group(0, bg, &[]);
        pass.dispatch_workgroups(x, y, 1);
    } else {
        record_1d(pass, &k.rmsnorm, bg, rows, max_dim);
    }
}

/// Records a kernel whose x covers `items` invocations and y covers `rows`.
pub(crate) fn record_2d(
    pass: &mut wgpu::ComputePass<'_>,
    p: &wgpu::ComputePipeline,
    bg: &wgpu::BindGroup,
    items: u32,
    rows: u32,
) {
    pass.set_pipeline(p);
    pass.set_bind_group(0, bg, &[]);
    pass.dispatch_workgroups(items.div_ceil(WG1), rows, 1);
}

/// The `Fwd` uniform: how many activation rows a pass holds.
pub(crate) fn fwd_words(n: u32) -> [u32; 4] {
    [n, 0, 0, 0]
}

/// cos/sin of pos * base^(-2i/head_dim) for every position and pair, computed in f64.
pub(crate) fn rope_table(max_context: usize, head_dim: usize, base: f32) -> Vec<f32> {
    let half = head_dim / 2;
    let mut t = Vec::with_capacity(max_context * half * 2);
    for pos in 0..max_context {
        for i in 0..half {
            let theta = (base as f64).powf(-2.0 * i as f64 / head_dim as f64);
            let a = pos as f64 * theta;
            t.push(a.cos() as f32);
            t.push(a.sin() as f32);
        }
    }
    t
}

/// The buffers the attention kernel reads and writes; the rope table only matters where it
/// applies RoPE itself (`Kernels::fuse_rope`).
pub(crate) struct AttentionBuffers<'a> {
    pub(crate) qkv: &'a wgpu::Buffer,
    pub(crate) meta: &'a wgpu::Buffer,
    pub(crate) k_cache: &'a wgpu::Buffer,
    pub(crate) v_cache: &'a wgpu::Buffer,
    pub(crate) out: &'a wgpu::Buffer,
    pub(crate) params: &'a wgpu::Buffer,
    pub(crate) fwd: &'a wgpu::Buffer,
    pub(crate) rope_table: &'a wgpu::Buffer,
}

/// The attention kernel's bind group, for the layout the kernels chose.
pub(crate) fn bind_attention(
    ctx: &GpuContext,
    k: &Kernels,
    name: &str,
    b: &AttentionBuffers<'_>,
) -> wgpu::BindGroup {
    let mut buffers = vec![b.qkv, b.meta, b.k_cache, b.v_cache, b.out, b.params, b.fwd];
    if k.fuse_rope {
        buffers.push(b.rope_table);
    }
    bind(ctx, name, &k.attention_layout, &buffers)
}

/// Records the attention kernel over `items` (head, token) pairs: one invocation each for the
/// barrier-free kernel, one workgroup each for the tiled one.
pub(crate) fn record_attention(
    pass: &mut wgpu::ComputePass<'_>,
    k: &Kernels,
    bg: &wgpu::BindGroup,
    items: u32,
    max_dim: u32,
) {
    if k.attention_wga == 0 {
        record_1d(pass, &k.attention, bg, items, max_dim);
    } else {
        let (x, y) = split_groups(items, max_dim);
        pass.set_pipeline(&k.attention);
        pass.set_bind_group(0, bg, &[]);
        pass.dispatch_workgroups(x, y, 1);
    }
}
