// Y[t, row_start + r] (=|+=) sum_k W[r, k] * X[t, k] for t < F.n, r < M.rows.
// The Rust side prepends `const TB`, `const LANES`, `const ROWS`, `const IL`, layout.wgsl and
// one dequant_*.wgsl, which provides BLOCK_WORDS and load_block(word, stride) -> Block.
struct Mat {
    rows: u32,        // rows of W held by this binding (one split of a big tensor)
    k: u32,           // columns, a multiple of 32
    row_start: u32,   // first output column this split writes
    out_stride: u32,  // floats per output row of Y
    accumulate: u32,  // 1: add into Y (fused residual add), 0: overwrite
    _p0: u32,
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

// Dot product of a block with the 32 activations starting at vec4 index xb.
fn block_x(v: Block, xb: u32) -> f32 {
    return block_dot8(v, X[xb], X[xb + 1u], X[xb + 2u], X[xb + 3u], X[xb + 4u], X[xb + 5u],
                      X[xb + 6u], X[xb + 7u]);
}

// block_dot(r, b, row_words, t0) (adds block b of row r times tokens t0..t0 + TB into the
// private accumulators acc_0..) and acc_get() are generated per TB by the Rust side, unrolled.
