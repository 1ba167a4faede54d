//! The WGSL kernels: assembling each shader from `shaders/*.wgsl` (a dequant snippet per weight
//! type plus the kernel body, specialised by text constants), compiling the pipelines once per
//! session, and the workgroup counts each dispatch needs.

use std::collections::HashMap;

use super::WgpuError;
use super::device::{GpuContext, KernelVariant};
use crate::gguf::GgmlType;

const MATMUL_COMMON: &str = include_str!("shaders/matmul_common.wgsl");
const MATMUL_ROWS: &str = include_str!("shaders/matmul_rows.wgsl");
const MATMUL_ROWS_SG: &str = include_str!("shaders/matmul_rows_sg.wgsl");
const MATMUL_TILED: &str = include_str!("shaders/matmul_tiled.wgsl");
const MATMUL_NORM: &str = include_str!("shaders/matmul_norm.wgsl");
const REDUCE_SHARED: &str = include_str!("shaders/reduce_shared.wgsl");
const REDUCE_SUBGROUP: &str = include_str!("shaders/reduce_subgroup.wgsl");
const LAYOUT: &str = include_str!("shaders/layout.wgsl");
const EMBED: &str = include_str!("shaders/embed.wgsl");
const RMSNORM: &str = include_str!("shaders/rmsnorm.wgsl");
const RMSNORM_WG: &str = include_str!("shaders/rmsnorm_wg.wgsl");
const ROPE_KV: &str = include_str!("shaders/rope_kv.wgsl");
const ATTENTION: &str = include_str!("shaders/attention.wgsl");
const ATTENTION_TILED: &str = include_str!("shaders/attention_tiled.wgsl");
const ATTENTION_WG: &str = include_str!("shaders/attention_wg.wgsl");
const ATTENTION_WG_CACHE: &str = include_str!("shaders/attention_wg_cache.wgsl");
const ATTENTION_WG_ROPE: &str = include_str!("shaders/attention_wg_rope.wgsl");
const SWIGLU: &str = include_str!("shaders/swiglu.wgsl");
const SELECT: &str = include_str!("shaders/select.wgsl");

/// Environment variable that, set to `invocation`, makes GPU variants use the
/// one-invocation-per-row RMSNorm of the CPU-adapter variants, and set to `separate`, the
/// workgroup-per-row RMSNorm kernel, instead of RMSNorm fused into the matmul that reads it
/// (measurement knobs).
pub const NORM_ENV: &str = "SANDGRAPH_WGPU_NORM";
/// Environment variable that, set to `lanes`, makes GPU variants use the attention kernel that
/// chains each invocation through its share of positions (attention_tiled.wgsl) instead of
/// spreading each tile over the workgroup (attention_wg.wgsl): a measurement knob.
pub const ATTENTION_ENV: &str = "SANDGRAPH_WGPU_ATTENTION";
/// Environment variable that, set to `separate`, keeps SwiGLU as its own kernel on GPU
/// variants instead of fusing it into the down matmul's input (a measurement knob).
pub const SWIGLU_ENV: &str = "SANDGRAPH_WGPU_SWIGLU";
/// Environment variable that, set to `separate`, keeps RoPE and the KV-cache store as their own
/// kernel (rope_kv.wgsl) on GPU variants instead of fusing them into the workgroup attention
/// kernel (a measurement knob).
pub const ROPE_ENV: &str = "SANDGRAPH_WGPU_ROPE";
/// Cache positions per tile of the workgroup attention kernel.
const ATTENTION_TILE: u32 = 256;
/// Tokens per matmul invocation for batches of more than one row (1 for single rows).
pub const BATCH_TB: u32 = 8;
/// The largest k that `top_k` computes on the device; larger k fall back to the host.
pub const TOPK_MAX: usize = 64;
/// Logit segments scanned in parallel by argmax and by top-k (stage 1).
pub const ARGMAX_SEGMENTS: u32 = 256;
pub const TOPK_SEGMENTS: u32 = 64;
/// Workgroup size of every one-dimensional barrier-free kernel.
pub const WG1: u32 = 64;
/// Rows per workgroup and lanes per row of the shared-memory tiled matmul.
const SHARED_ROWS: u32 = 8;
const SHARED_LANES: u32 = 32;

/// The block dequantizer for a weight type, or None when the GPU kernels do not read it.
fn dequant_source(ty: GgmlType) -> Option<&'static str> {
    Some(match ty {
        GgmlType::Q4_1 => include_str!("shaders/dequant_q4_1.wgsl"),
        GgmlType::Q4_0 => include_str!("shaders/dequant_q4_0.wgsl"),
        GgmlType::Q8_0 => include_str!("shaders/dequant_q8_0.wgsl"),
        GgmlType::F16 => include_str!("shaders/dequant_f16.wgsl"),
        GgmlType::F32 => include_str!("shaders/dequant_f32.wgsl"),
        #[allow(unreachable_patterns)]
        _ => return None,
    })
}

/// Whether the wgpu kernels can read weights of this type.
pub fn supports(ty: GgmlType) -> bool {
    dequant_source(ty).is_some()
}

fn lanes_rows(v: KernelVariant) -> (u32, u32) {
    match v {
        KernelVariant::Rows => (1, 1),
        KernelVariant::RowsSubgroup { lanes } => (lanes, 1),
        KernelVariant::TiledShared => (SHARED_LANES, SHARED_ROWS),
        KernelVariant::TiledSubgroup { lanes } => (lanes, 1),
    }
}

/// What a matmul reads as its activations.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MatInput {
    /// X as it is.
    Plain,
    /// Rows of [gate | up]; the kernel reads silu(gate) * up.
    SwiGlu,
    /// Residual rows; the kernel reads RMSNorm(X) * G, with the norm weights G bound beside X
    /// (shaders/matmul_norm.wgsl). Tiled variants only.
    RmsNorm,
}

/// The full WGSL text of a matmul kernel for one weight type, batch width, variant and input
/// (`SwiGlu` not for `RowsSubgroup`, whose activation loads are generated separately;
/// `RmsNorm` only for the tiled variants, whose lanes share a row).
pub fn matmul_source(
    ty: GgmlType,
    tb: u32,
    v: KernelVariant,
    input: MatInput,
) -> Result<String, WgpuError> {
    let dq = dequant_source(ty).ok_or(WgpuError::UnsupportedType(ty))?;
    let tiled = matches!(
        v,
        KernelVariant::TiledShared | KernelVariant::TiledSubgroup { .. }
    );
    let norm = input == MatInput::RmsNorm;
    if norm && !tiled {
        return Err(WgpuError::UnsupportedShape(format!(
            "RMSNorm fused into a matmul needs a tiled kernel variant, not {v}"
        )));
    }
    let (lanes, rows) = lanes_rows(v);
    let body = match v {
        KernelVariant::Rows => MATMUL_ROWS.to_string(),
        KernelVariant::RowsSubgroup { .. } => MATMUL_ROWS_SG.to_string(),
        KernelVariant::TiledShared => format!("{MATMUL_TILED}\n{REDUCE_SHARED}"),
        KernelVariant::TiledSubgroup { .. } => format!("{MATMUL_TILED}\n{REDUCE_SUBGROUP}"),
    };
    let il = v.interleave();
    let unrolled = match v {
        KernelVariant::RowsSubgroup { lanes } => token_unrolled_shared_x(tb, lanes),
        _ => token_unrolled(tb, norm),
    };
    let xrow = if input == MatInput::SwiGlu { 2 } else { 1 };
    let norm_fns = if norm { MATMUL_NORM } else { "" };
    Ok(format!(
        "const TB: u32 = {tb}u;\nconst LANES: u32 = {lanes}u;\nconst ROWS: u32 = {rows}u;\nconst IL: u32 = {il}u;\nconst XROW: u32 = {xrow}u;\nconst NORM: bool = {norm};\n{LAYOUT}\n{dq}\n{MATMUL_COMMON}\n{norm_fns}\n{unrolled}\n{body}"
    ))
}

/// Like `token_unrolled`, but a subgroup of `lanes` loads each token's 32 activations once
/// (spread over the lanes) and `subgroupBroadcast`s them.
fn token_unrolled_shared_x(tb: u32, lanes: u32) -> String {
    let per_lane = (8 / lanes).max(1);
    let mut s = String::new();
    for t in 0..tb {
        s += &format!("var<private> acc_{t}: f32 = 0.0;\n");
    }
    s += "fn block_dot(r: u32, b: u32, row_words: u32, t0: u32, lane: u32) {\n";
    s += "    let v = load_block(block_base(r, b, row_words), IL);\n";
    s += "    let k4 = M.k / 4u;\n";
    for t in 0..tb {
        let guard = if t == 0 {
            "if (true)".to_string()
        } else {
            format!("if (t0 + {t}u < F.n)")
        };
        s += &format!("    {guard} {{\n        let xb = (t0 + {t}u) * k4 + b * 8u;\n");
        for j in 0..per_lane {
            s += &format!(
                "        let xs{j} = X[xb + (lane + {}u) % 8u];\n",
                j * lanes
            );
        }
        let xs: Vec<String> = (0..8)
            .map(|i| {
                let (src, from) = if lanes <= 8 {
                    (i / lanes, i % lanes)
                } else {
                    (0, i)
                };
                format!("subgroupBroadcast(xs{src}, {from}u)")
            })
            .collect();
        s += &format!(
            "        acc_{t} += block_dot8(v, {});\n    }}\n",
            xs.join(", ")
        );
    }
    s += "}\nfn acc_get() -> array<f32, TB> {\n    return array<f32, TB>(";
    s += &(0..tb)
        .map(|t| format!("acc_{t}"))
        .collect::<Vec<_>>()
        .join(", ");
    s += ");\n}\n";
    s
}

/// `block_dot`, `acc_get` and `ss_get` for `tb` tokens, written out token by token: one named
/// private accumulator per token instead of an indexed array, which lavapipe would keep in
/// memory. With `norm`, each token's block is dotted with X * G and its squares summed into
/// `ss_t` (shaders/matmul_norm.wgsl); without, `ss_get` is zeros and never read.
fn token_unrolled(tb: u32, norm: bool) -> String {
    let mut s = String::new();
    for t in 0..tb {
        s += &format!("var<private> acc_{t}: f32 = 0.0;\n");
        if norm {
            s += &format!("var<private> ss_{t}: f32 = 0.0;\n");
        }
    }
    s += "fn block_dot(r: u32, b: u32, row_words: u32, t0: u32) {\n";
    s += "    let v = load_block(block_base(r, b, row_words), IL);\n";
    s += "    let k4 = XROW * M.k / 4u;\n    let xb = t0 * k4 + b * 8u;\n";
    let body = |t: u32| {
        let xb = if t == 0 {
            "xb".to_string()
        } else {
            format!("xb + {t}u * k4")
        };
        if norm {
            format!("acc_{t} += block_xn(v, {xb}, b * 8u); ss_{t} += block_ss({xb});")
        } else {
            format!("acc_{t} += block_x(v, {xb});")
        }
    };
    s += &format!("    {}\n", body(0));
    for t in 1..tb {
        s += &format!("    if (t0 + {t}u < F.n) {{ {} }}\n", body(t));
    }
    let list = |name: &str| {
        (0..tb)
            .map(|t| format!("{name}_{t}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    s += "}\nfn acc_get() -> array<f32, TB> {\n    return array<f32, TB>(";
    s += &list("acc");
    s += ");\n}\nfn ss_get() -> array<f32, TB> {\n    return array<f32, TB>(";
    if norm {
        s += &list("ss");
    }
    s += ");\n}\n";
    s
}

/// What a binding slot holds.
#[derive(Clone, Copy)]
enum Slot {
    Read,
    ReadWrite,
    Uniform,
}

fn layout(dev: &wgpu::Device, name: &str, slots: &[Slot]) -> wgpu::BindGroupLayout {
    let entries: Vec<_> = slots
        .iter()
        .enumerate()
        .map(|(i, s)| wgpu::BindGroupLayoutEntry {
            binding: i as u32,
            visibility: wgpu::ShaderStages::COMPUTE,
            ty: match s {
                Slot::Read => wgpu::BindingType::Buffer {
                    ty: wgpu::BufferBindingType::Storage { read_only: true },
                    has_dynamic_offset: false,
                    min_binding_size: None,
                },
                Slot::ReadWrite => wgpu::BindingType::Buffer {
                    ty: wgpu::BufferBindingType::Storage { read_only: false },
                    has_dynamic_offset: false,
                    min_binding_size: None,
                },
                Slot::Uniform => wgpu::BindingType::Buffer {
                    ty: wgpu::BufferBindingType::Uniform,
                    has_dynamic_offset: false,
                    min_binding_size: None,
                },
            },
            count: None,
        })
        .collect();
    dev.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
        label: Some(name),
        entries: &entries,
    })
}

/// Every pipeline a session uses, with the bind group layouts they share.
pub struct Kernels {
    pub variant: KernelVariant,
    pub matmul_layout: wgpu::BindGroupLayout,
    /// The matmul's bindings plus the norm weights, for `MatInput::RmsNorm`.
    pub matmul_norm_layout: wgpu::BindGroupLayout,
    pub embed_layout: wgpu::BindGroupLayout,
    pub norm_layout: wgpu::BindGroupLayout,
    pub rope_layout: wgpu::BindGroupLayout,
    /// Seven bindings, or eight with `fuse_rope` (the caches written, the rope table added).
    pub attention_layout: wgpu::BindGroupLayout,
    pub swiglu_layout: wgpu::BindGroupLayout,
    pub select_layout: wgpu::BindGroupLayout,
    /// By (type, tokens per invocation, input).
    matmul: HashMap<(GgmlType, u32, MatInput), wgpu::ComputePipeline>,
    /// GPU variants have a down matmul that reads [gate | up] and applies SwiGLU itself, for
    /// single-row passes (decode at batch 1): one dispatch per layer fewer.
    pub fuse_swiglu: bool,
    embed: HashMap<GgmlType, wgpu::ComputePipeline>,
    /// GPU variants fold each RMSNorm into the matmul that reads its output
    /// (`MatInput::RmsNorm`): two dispatches fewer per layer and one per forward, and no
    /// normalised copy of the activations.
    pub fuse_norm: bool,
    pub rmsnorm: wgpu::ComputePipeline,
    /// RMSNorm runs one workgroup per row (GPU variants) instead of one invocation per row
    /// (the barrier-free variants for CPU adapters).
    pub norm_per_workgroup: bool,
    pub rope_kv: wgpu::ComputePipeline,
    /// The workgroup attention kernel applies RoPE and stores the KV cache itself
    /// (shaders/attention_wg_rope.wgsl): no rope_kv dispatch.
    pub fuse_rope: bool,
    pub attention: wgpu::ComputePipeline,
    /// Invocations per (head, token) of the tiled attention; 0 = barrier-free kernel (one
    /// invocation per head and token).
    pub attention_wga: u32,
    pub swiglu: wgpu::ComputePipeline,
    pub argmax_segments: wgpu::ComputePipeline,
    pub argmax_merge: wgpu::ComputePipeline,
    pub topk_segments: wgpu::ComputePipeline,
    pub topk_merge: wgpu::ComputePipeline,
}

/// Compiles one kernel, turning WGSL or pipeline validation errors into `WgpuError::Shader`.
pub(crate) fn compile(
    ctx: &GpuContext,
    name: &str,
    src: &str,
    entry: &str,
    bgl: &wgpu::BindGroupLayout,
) -> Result<wgpu::ComputePipeline, WgpuError> {
    let dev = &ctx.device;
    let scope = dev.push_error_scope(wgpu::ErrorFilter::Validation);
    let module = dev.create_shader_module(wgpu::ShaderModuleDescriptor {
        label: Some(name),
        source: wgpu::ShaderSource::Wgsl(src.into()),
    });
    let pl = dev.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
        label: Some(name),
        bind_group_layouts: &[Some(bgl)],
        immediate_size: 0,
    });
    let p = dev.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
        label: Some(name),
        layout: Some(&pl),
        module: &module,
        entry_point: Some(entry),
        compilation_options: Default::default(),
        cache: None,
    });
    if let Some(e) = pollster::block_on(scope.pop()) {
        return Err(WgpuError::Shader {
            kernel: name.to_string(),
            message: e.to_string(),
        });
    }
    Ok(p)
}

impl Kernels {
    /// Compiles the kernels for the given weight types (matmul and embedding) and head size.
    pub fn new(
        ctx: &GpuContext,
        types: &[GgmlType],
        head_dim: usize,
    ) -> Result<Kernels, WgpuError> {
        use Slot::*;
        let dev = &ctx.device;
        let v = ctx.variant;
        let matmul_layout = layout(dev, "matmul", &[Read, Read, ReadWrite, Uniform, Uniform]);
        let matmul_norm_layout = layout(
            dev,
            "matmul_norm",
            &[Read, Read, ReadWrite, Uniform, Uniform, Read],
        );
        let embed_layout = layout(dev, "embed", &[Read, Read, ReadWrite, Uniform, Uniform]);
        let norm_layout = layout(dev, "rmsnorm", &[Read, Read, ReadWrite, Uniform, Uniform]);
        let rope_layout = layout(
            dev,
            "rope_kv",
            &[
                ReadWrite, Read, ReadWrite, ReadWrite, Read, Uniform, Uniform,
            ],
        );
        let swiglu_layout = layout(dev, "swiglu", &[Read, ReadWrite, Uniform, Uniform]);
        let select_layout = layout(dev, "select", &[Read, ReadWrite, ReadWrite, Uniform]);
        let mut matmul = HashMap::new();
        let mut embed = HashMap::new();
        let gpu = matches!(
            v,
            KernelVariant::TiledShared | KernelVariant::TiledSubgroup { .. }
        );
        let fuse_swiglu = gpu && std::env::var(SWIGLU_ENV).as_deref() != Ok("separate");
        let norm_choice = std::env::var(NORM_ENV);
        // `invocation` measures the earliest kernels, `separate` the workgroup RMSNorm kernel.
        let fuse_norm = gpu && !matches!(norm_choice.as_deref(), Ok("invocation" | "separate"));
        for &ty in types {
            if embed.contains_key(&ty) {
                continue;
            }
            for tb in [1, BATCH_TB] {
                for input in [MatInput::Plain, MatInput::SwiGlu, MatInput::RmsNorm] {
                    let (wanted, suffix, bgl) = match input {
                        MatInput::Plain => (true, "", &matmul_layout),
                        MatInput::SwiGlu => (fuse_swiglu && tb == 1, "_swiglu", &matmul_layout),
                        MatInput::RmsNorm => (fuse_norm, "_norm", &matmul_norm_layout),
                    };
                    if !wanted {
                        continue;
                    }
                    let src = matmul_source(ty, tb, v, input)?;
                    let name = format!("matmul_{}_tb{tb}{suffix}", ty.name());
                    let p = compile(ctx, &name, &src, "main", bgl)?;
                    matmul.insert((ty, tb, input), p);
                }
            }
            let dq = dequant_source(ty).ok_or(WgpuError::UnsupportedType(ty))?;
            let src = format!(
                "const IL: u32 = {}u;\n{LAYOUT}\n{dq}\n{EMBED}",
                v.interleave()
            );
            let name = format!("embed_{}", ty.name());
            embed.insert(ty, compile(ctx, &name, &src, "main", &embed_layout)?);
        }
        if !head_dim.is_multiple_of(4) {
            return Err(WgpuError::UnsupportedShape(format!(
                "head size {head_dim} is not a multiple of 4"
            )));
        }
        // The workgroup attention kernel: groups of HDP invocations, invocation d < HD of each
        // owning output dimension d, 256 invocations in all when the head fits.
        let hdp = (head_dim as u32).next_power_of_two();
        let wg_attention = hdp.max(256);
        let use_wg_attention = gpu
            && std::env::var(ATTENTION_ENV).as_deref() != Ok("lanes")
            && wg_attention <= ctx.limits.max_compute_invocations_per_workgroup
            && (ATTENTION_TILE + wg_attention + 1 + head_dim as u32) * 4
                <= ctx.limits.max_compute_workgroup_storage_size;
        // The workgroup attention kernel can rotate and store keys itself: one dispatch per
        // layer fewer (rope_kv), and q is never written back.
        let fuse_rope = use_wg_attention && std::env::var(ROPE_ENV).as_deref() != Ok("separate");
        let attention_layout = if fuse_rope {
            // [QKV, META, KC, VC, O, Att, Fwd, rope table]: the caches are written.
            layout(
                dev,
                "attention_rope",
                &[
                    Read, Read, ReadWrite, ReadWrite, ReadWrite, Uniform, Uniform, Read,
                ],
            )
        } else {
            layout(
                dev,
                "attention",
                &[Read, Read, Read, Read, ReadWrite, Uniform, Uniform],
            )
        };
        let attention_wga = match v {
            _ if use_wg_attention => wg_attention,
            KernelVariant::TiledShared | KernelVariant::TiledSubgroup { .. } => {
                // Partial softmax states of all invocations must fit in workgroup memory.
                let per = (head_dim * 4 + 8) as u32;
                let limit = ctx.limits.max_compute_workgroup_storage_size;
                let mut w = 32u32.min(ctx.limits.max_compute_invocations_per_workgroup);
                while w > 1 && w * per > limit {
                    w /= 2;
                }
                w
            }
            _ => 0,
        };
        let att_src = if use_wg_attention {
            let kv_source = if fuse_rope {
                ATTENTION_WG_ROPE
            } else {
                ATTENTION_WG_CACHE
            };
            format!(
                "const HD: u32 = {head_dim}u;\nconst HDP: u32 = {hdp}u;\nconst WG: u32 = {attention_wga}u;\nconst TILE: u32 = {ATTENTION_TILE}u;\n{ATTENTION_WG}\n{kv_source}"
            )
        } else if attention_wga > 0 {
            format!(
                "const HD: u32 = {head_dim}u;\nconst WGA: u32 = {attention_wga}u;\n{ATTENTION_TILED}"
            )
        } else {
            format!("const HD: u32 = {head_dim}u;\n{ATTENTION}")
        };
        let sel_src = format!("const KMAX: u32 = {TOPK_MAX}u;\n{SELECT}");
        // GPU variants normalise a row per workgroup; `SANDGRAPH_WGPU_NORM=invocation` forces
        // the one-invocation-per-row kernel (for before/after measurements on a GPU).
        let norm_per_workgroup = gpu && norm_choice.as_deref() != Ok("invocation");
        let norm_src = if norm_per_workgroup {
            RMSNORM_WG
        } else {
            RMSNORM
        };
        Ok(Kernels {
            variant: v,
            rmsnorm: compile(ctx, "rmsnorm", norm_src, "main", &norm_layout)?,
            norm_per_workgroup,
            fuse_norm,
            fuse_rope,
            rope_kv: compile(ctx, "rope_kv", ROPE_KV, "main", &rope_layout)?,
            attention: compile(ctx, "attention", &att_src, "main", &attention_layout)?,
            swiglu: compile(ctx, "swiglu", SWIGLU, "main", &swiglu_layout)?,
            argmax_segments: compile(
                ctx,
                "argmax_segments",
                &sel_src,
                "argmax_segments",
                &select_layout,
            )?,
            argmax_merge: compile(
                ctx,
                "argmax_merge",
                &sel_src,
                "argmax_merge",
                &select_layout,
            )?,
            topk_segments: compile(
                ctx,
                "topk_segments",
                &sel_src,
                "topk_segments",
                &select_layout,
            )?,
            topk_merge: compile(ctx, "topk_merge", &sel_src, "topk_merge", &select_layout)?,
            matmul_layout,
            matmul_norm_layout,
            embed_layout,
            norm_layout,
            rope_layout,
            attention_layout,
            attention_wga,
            swiglu_layout,
            select_layout,
            matmul,
            fuse_swiglu,
            embed,
        })
    }

    /// The matmul pipeline for a weight type, input and a pass of `n` activation rows, with
    /// its tokens-per-invocation.
    pub fn matmul_for(
        &self,
        ty: GgmlType,
        n: u32,
        input: MatInput,
    ) -> (&wgpu::ComputePipeline, u32) {
        let tb = if n <= 1 { 1 } else { BATCH_TB };
        (&self.matmul[&(ty, tb, input)], tb)
    }

    pub fn embed_for(&self, ty: GgmlType) -> &wgpu::ComputePipeline {
        &self.embed[&ty]
    }

    /// Workgroup counts for a matmul over `rows` weight rows and `n` activation rows.
    pub fn matmul_groups(&self, rows: u32, n: u32, tb: u32, max_dim: u32) -> [u32; 3] {
        let per_group = match self.variant {
            KernelVariant::Rows | KernelVariant::RowsSubgroup { .. } => WG1,
            v => lanes_rows(v).1,
        };
        let (x, y) = split_groups(rows.div_ceil(per_group), max_dim);
        [x, y, n.div_ceil(tb)]
    }
}

/// Spreads `groups` workgroups over x and y so neither exceeds the per-dimension limit; the
/// shaders recompute the linear index as x + y * num_workgroups.x (and skip the overshoot).
pub fn split_groups(groups: u32, max_dim: u32) -> (u32, u32) {
    if groups <= max_dim {
        (groups.max(1), 1)
    } else {
        let y = groups.div_ceil(max_dim);
        (groups.div_ceil(y), y)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workgroup_counts_beyond_one_dimension_spill_into_y() {
        assert_eq!(split_groups(0, 65535), (1, 1));
        assert_eq!(split_groups(768, 65535), (768, 1));
        let (x, y) = split_groups(200_000, 65535);
        assert!(x <= 65535 && x * y >= 200_000 && y == 4, "{x} x {y}");
    }

    #[test]
    fn fused_norm_code_sums_squares_beside_each_token_and_only_tiled_variants_take_it() {
        let src = token_unrolled(2, true);
        assert!(
            src.contains(
                "acc_1 += block_xn(v, xb + 1u * k4, b * 8u); ss_1 += block_ss(xb + 1u * k4);"
            ),
            "{src}"
        );
        assert!(src.contains("return array<f32, TB>(ss_0, ss_1);"), "{src}");
        let plain = token_unrolled(2, false);
        assert!(!plain.contains("ss_0") && plain.contains("return array<f32, TB>();"));
        let tiled = matmul_source(
            GgmlType::Q4_1,
            1,
            KernelVariant::TiledShared,
            MatInput::RmsNorm,
        )
        .unwrap();
        assert!(tiled.contains("const NORM: bool = true;") && tiled.contains("@binding(5)"));
        let err = matmul_source(GgmlType::Q4_1, 1, KernelVariant::Rows, MatInput::RmsNorm);
        assert!(matches!(err, Err(WgpuError::UnsupportedShape(_))));
    }

    #[test]
    fn shared_activation_code_broadcasts_each_vec4_from_the_lane_that_loaded_it() {
        // 4 lanes: two vec4 per lane; element 5 comes from the second load of lane 1.
        let src = token_unrolled_shared_x(1, 4);
        assert!(src.contains("let xs1 = X[xb + (lane + 4u) % 8u];"), "{src}");
        assert!(src.contains("subgroupBroadcast(xs1, 1u)"), "{src}");
        // 32 lanes: lanes 0..7 hold one vec4 each.
        let src = token_unrolled_shared_x(8, 32);
        assert!(
            src.contains("subgroupBroadcast(xs0, 7u)") && !src.contains("xs1"),
            "{src}"
        );
        assert!(src.contains("if (t0 + 7u < F.n)"), "{src}");
    }
}
