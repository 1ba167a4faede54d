// Y[t, row_start + r] (=|+=) sum_k W[r, k] * X[t, k] for t < F.n, r < M.rows.
// The Rust side prepends `const TB`, `const LANES`, `const ROWS`, `const IL`, `const XROW`,
// `const NORM`, layout.wgsl and one dequant_*.wgsl, which provides BLOCK_WORDS and
// load_block(word, stride) -> Block. XROW = 2 fuses SwiGLU into the input: rows of X then hold
// [gate | up] (2k floats) and the kernel reads silu(gate) * up. NORM fuses RMSNorm into the
// input (matmul_norm.wgsl, tiled variants only).
struct Mat {
    rows: u32,        // rows of W held by this binding (one split of a big tensor)
    k: u32,           // columns, a multiple of 32
    row_start: u32,   // first output column this split writes
    out_stride: u32,  // floats per output row of Y
    accumulate: u32,  // 1: add into Y (fused residual add), 0: overwrite
    eps: f32,         // RMSNorm epsilon when NORM
    _p1: u32,
    _p2: u32,
}
struct Fwd {
    n: u32,  // activation rows (tokens) in this pass
    _p0: u32,
    _p1: u32,
    _p2: u32,
}

@group(0) @binding(0) var<storage, read> W: array<u32>;
@group(0) @binding(1) var<storage, read> X: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> Y: array<f32>;
@group(0) @binding(3) var<uniform> M: Mat;
@group(0) @binding(4) var<uniform> F: Fwd;

fn store(t: u32, r: u32, v: f32) {
    let o = t * M.out_stride + M.row_start + r;
    if (M.accumulate != 0u) {
        Y[o] = Y[o] + v;
    } else {
        Y[o] = v;
    }
}

// Four activations at vec4 index i of a row (XROW = 2: silu(gate) * up, up k floats later).
fn xv(i: u32) -> vec4<f32> {
    if (XROW == 2u) {
        let g = X[i];
        return g / (1.0 + exp(-g)) * X[i + M.k / 4u];
    }
    return X[i];
}

// Dot product of a block with the 32 activations starting at vec4 index xb.
fn block_x(v: Block, xb: u32) -> f32 {
    return block_dot8(v, xv(xb), xv(xb + 1u), xv(xb + 2u), xv(xb + 3u), xv(xb + 4u), xv(xb + 5u),
                      xv(xb + 6u), xv(xb + 7u));
}

// block_dot(r, b, row_words, t0) (adds block b of row r times tokens t0..t0 + TB into the
// private accumulators acc_0.., and with NORM the tokens' sums of squares into ss_0..),
// acc_get() and ss_get() are generated per TB by the Rust side, unrolled.
