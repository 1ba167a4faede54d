// Causal GQA attention for GPUs: one workgroup of WGA invocations per (query head, token).
// Invocation i takes cache rows i, i + WGA, ... with its own online softmax (max, sum, weighted
// values); the WGA partial states are then merged pairwise in workgroup memory. The Rust side
// prepends `const HD` (head dim, a multiple of 4) and `const WGA` (a power of two sized to the
// adapter's workgroup memory). Same bindings and results as attention.wgsl.
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

@group(0) @binding(0) var<storage, read> Q: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read> META: array<vec4<u32>>;
@group(0) @binding(2) var<storage, read> KC: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> VC: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read_write> O: array<vec4<f32>>;
@group(0) @binding(5) var<uniform> A: Att;
@group(0) @binding(6) var<uniform> F: Fwd;

const H4: u32 = HD / 4u;
var<workgroup> sm: array<f32, WGA>;
var<workgroup> sl: array<f32, WGA>;
var<workgroup> sacc: array<vec4<f32>, WGA * H4>;

@compute @workgroup_size(WGA)
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
    let pos = row.z;
    var q: array<vec4<f32>, H4>;
    var acc: array<vec4<f32>, H4>;
    let qb = (t * A.q_stride) / 4u + h * H4;
    for (var i = 0u; i < H4; i++) {
        q[i] = Q[qb + i] * A.scale;
    }
    var m = -3.0e38;
    var l = 0.0;
    let kv4 = A.n_kv * H4;
    for (var p = lid; p <= pos; p += WGA) {
        let kb = (slot * A.max_ctx + p) * kv4 + kh * H4;
        var s = 0.0;
        for (var i = 0u; i < H4; i++) {
            s += dot(q[i], KC[kb + i]);
        }
        let m_new = max(m, s);
        let c = exp(m - m_new);
        let e = exp(s - m_new);
        l = l * c + e;
        for (var i = 0u; i < H4; i++) {
            acc[i] = acc[i] * c + e * VC[kb + i];
        }
        m = m_new;
    }
    sm[lid] = m;
    sl[lid] = l;
    for (var i = 0u; i < H4; i++) {
        sacc[lid * H4 + i] = acc[i];
    }
    workgroupBarrier();
    for (var stride = WGA / 2u; stride > 0u; stride = stride / 2u) {
        if (lid < stride) {
            let o = lid + stride;
            let m2 = sm[o];
            let mn = max(m, m2);
            let c1 = exp(m - mn);
            let c2 = exp(m2 - mn);
            l = l * c1 + sl[o] * c2;
            for (var i = 0u; i < H4; i++) {
                acc[i] = acc[i] * c1 + sacc[o * H4 + i] * c2;
            }
            m = mn;
            sm[lid] = m;
            sl[lid] = l;
            for (var i = 0u; i < H4; i++) {
                sacc[lid * H4 + i] = acc[i];
            }
        }
        workgroupBarrier();
    }
    if (lid == 0u) {
        let inv = 1.0 / l;
        let ob = (t * A.n_head + h) * H4;
        for (var i = 0u; i < H4; i++) {
            O[ob + i] = acc[i] * inv;
        }
    }
}
