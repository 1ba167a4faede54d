// Y[t, row_start + r] (=|+=) sum_k W[r, k] * X[t, k] for t < F.n, r < M.rows.
// The Rust side prepends `const TB`, `const LANES`, `const ROWS` and one dequant_*.wgsl,
// which provides BLOCK_WORDS and load_block(word offset) -> 32 weights as 8 vec4.
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

// Adds the dot products of weight block b of the row at word `row_base` with the
// activations of tokens t0..t0+TB into acc.
fn block_dot(row_base: u32, b: u32, t0: u32, acc: ptr<function, array<f32, TB>>) {
    let wv = load_block(row_base + b * BLOCK_WORDS);
    let k4 = M.k / 4u;
    for (var t = 0u; t < TB; t++) {
        if (t0 + t < F.n) {
            let xb = (t0 + t) * k4 + b * 8u;
            var s = 0.0;
            for (var i = 0u; i < 8u; i++) {
                s += dot(wv[i], X[xb + i]);
            }
            (*acc)[t] += s;
        }
    }
}
