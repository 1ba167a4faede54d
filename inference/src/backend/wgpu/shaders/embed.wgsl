// Embedding lookup: Y[t, :] = dequantized row META[t].x of the token table. The Rust side
// prepends `const IL`, layout.wgsl and one dequant_*.wgsl. One invocation per (32-value block, token); a split table
// dispatches once per split and each split writes only the tokens it holds.
struct Emb {
    rows: u32,
    k: u32,
    row_start: u32,
    _p0: u32,
}
struct Fwd {
    n: u32,
    _p0: u32,
    _p1: u32,
    _p2: u32,
}

@group(0) @binding(0) var<storage, read> W: array<u32>;
@group(0) @binding(1) var<storage, read> META: array<vec4<u32>>;
@group(0) @binding(2) var<storage, read_write> Y: array<vec4<f32>>;
@group(0) @binding(3) var<uniform> E: Emb;
@group(0) @binding(4) var<uniform> F: Fwd;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let nb = E.k / 32u;
    let b = gid.x;
    let t = gid.y;
    if (b >= nb || t >= F.n) {
        return;
    }
    let token = META[t].x;
    if (token < E.row_start || token >= E.row_start + E.rows) {
        return;
    }
    let wv = load_block(block_base(token - E.row_start, b, nb * BLOCK_WORDS), IL);
    let o = t * (E.k / 4u) + b * 8u;
    Y[o] = wv.w0 * wv.d + wv.m;
    Y[o + 1u] = wv.w1 * wv.d + wv.m;
    Y[o + 2u] = wv.w2 * wv.d + wv.m;
    Y[o + 3u] = wv.w3 * wv.d + wv.m;
    Y[o + 4u] = wv.w4 * wv.d + wv.m;
    Y[o + 5u] = wv.w5 * wv.d + wv.m;
    Y[o + 6u] = wv.w6 * wv.d + wv.m;
    Y[o + 7u] = wv.w7 * wv.d + wv.m;
}
