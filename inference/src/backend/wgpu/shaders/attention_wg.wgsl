// Causal GQA attention for GPUs, one workgroup of WG invocations per (query head, token), with
// the work spread over the whole workgroup instead of chained through each invocation: per tile
// of up to TILE cache positions, invocations score positions (one dot product each) into
// workgroup memory, the workgroup reduces the tile's max and sum, and the WG invocations then
// form SPLIT = WG / HDP groups of HDP (HD rounded up to a power of two): invocation d < HD of
// group g accumulates output dimension d over the tile positions g, g + SPLIT, ...
// (neighbouring invocations read neighbouring floats of each V row); the groups' partial sums
// are added at the end. Tiles are merged with the online-softmax rescaling, so any context
// length works. The Rust side prepends `const HD` (head dim, a multiple of 4), `const HDP`,
// `const WG` (a power-of-two multiple of HDP), `const TILE`, and where keys and values come
// from: attention_wg_cache.wgsl (the cache only, after rope_kv; same bindings and results as
// attention.wgsl) or attention_wg_rope.wgsl (RoPE and the KV-cache store fused in: this pass's
// own positions are read from the unrotated QKV rows). Either provides the bindings Q/QKV, KC
// and VC and the functions load_query, key_dot, value_at and store_kv.
struct Att {
    n_head: u32,
    n_kv: u32,
    max_ctx: u32,
    scale: f32,
    q_stride: u32,
    _p0: u32,
    _p1: u32,
    _p2: u32,
}
struct Fwd {
    n: u32,
    _p0: u32,
    _p1: u32,
    _p2: u32,
}

// META[t] = (token, slot, position, first position of this pass's rows of that slot).
@group(0) @binding(1) var<storage, read> META: array<vec4<u32>>;
@group(0) @binding(4) var<storage, read_write> O: array<f32>;
@group(0) @binding(5) var<uniform> A: Att;
@group(0) @binding(6) var<uniform> F: Fwd;

const H4: u32 = HD / 4u;
const SPLIT: u32 = WG / HDP;
var<workgroup> sc: array<f32, TILE>;
var<workgroup> red: array<f32, WG>;
var<workgroup> wpos: u32;
// The query head, rotated, shared by the workgroup's dot products.
var<workgroup> qw: array<vec4<f32>, H4>;

fn reduce_max(lid: u32, v: f32) -> f32 {
    red[lid] = v;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s = s / 2u) {
        if (lid < s) {
            red[lid] = max(red[lid], red[lid + s]);
        }
        workgroupBarrier();
    }
    let r = red[0];
    workgroupBarrier();
    return r;
}

fn reduce_sum(lid: u32, v: f32) -> f32 {
    red[lid] = v;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s = s / 2u) {
        if (lid < s) {
            red[lid] = red[lid] + red[lid + s];
        }
        workgroupBarrier();
    }
    let r = red[0];
    workgroupBarrier();
    return r;
}

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let idx = wid.x + wid.y * nwg.x;
    // Uniform across the workgroup, so the barriers below are reached by all or none.
    if (idx >= F.n * A.n_head) {
        return;
    }
    let t = idx / A.n_head;
    let h = idx % A.n_head;
    let kh = h / (A.n_head / A.n_kv);
    let row = META[t];
    let slot = row.y;
    if (lid == 0u) {
        wpos = row.z;
    }
    // The position bounds the tile loop, whose body has barriers: load it as uniform.
    let pos = workgroupUniformLoad(&wpos);
    let first = row.w;
    load_query(lid, t, h, pos);
    var m = -3.0e38;
    var l = 0.0;
    var acc = 0.0;
    for (var t0 = 0u; t0 <= pos; t0 += TILE) {
        let cnt = min(TILE, pos + 1u - t0);
        var tmax = -3.0e38;
        for (var j = lid; j < cnt; j += WG) {
            let s = key_dot(slot, kh, t, pos, first, t0 + j) * A.scale;
            sc[j] = s;
            tmax = max(tmax, s);
        }
        let m_new = max(m, reduce_max(lid, tmax));
        var tsum = 0.0;
        for (var j = lid; j < cnt; j += WG) {
            let e = exp(sc[j] - m_new);
            sc[j] = e;
            tsum += e;
        }
        let c = exp(m - m_new);
        l = l * c + reduce_sum(lid, tsum);
        m = m_new;
        let d = lid % HDP;
        if (d < HD) {
            var a = acc * c;
            for (var j = lid / HDP; j < cnt; j += SPLIT) {
                a += sc[j] * value_at(slot, kh, t, pos, first, t0 + j, d);
            }
            acc = a;
        }
        // Everyone is done reading this tile's weights before the next tile overwrites them.
        workgroupBarrier();
    }
    // Add the groups' partial sums (m and l are the same in every invocation).
    red[lid] = acc;
    workgroupBarrier();
    if (lid < HD) {
        var o = 0.0;
        for (var g = 0u; g < SPLIT; g++) {
            o += red[g * HDP + lid];
        }
        O[(t * A.n_head + h) * HD + lid] = o / l;
    }
    store_kv(lid, t, h, kh, slot, pos);
}
