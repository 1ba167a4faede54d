// Causal grouped-query attention over the KV cache with a one-pass (online) softmax.
// One invocation per (query head, token): token t of slot s at position p attends to cache rows
// 0..=p of slot s, which rope_kv filled (earlier forwards and this one). The Rust side prepends
// `const HD` (head dim, a multiple of 4). Barrier-free, so it suits lavapipe and GPUs alike.
struct Att {
    n_head: u32,
    n_kv: u32,
    max_ctx: u32,
    scale: f32,
    q_stride: u32,  // floats per QKV row (q of one token, then its k and v)
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

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let idx = gid.x;
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
    let ob = (t * A.n_head + h) * H4;
    var m = -3.0e38;
    var l = 0.0;
    let kv4 = A.n_kv * H4;
    for (var p = 0u; p <= pos; p++) {
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
    let inv = 1.0 / l;
    for (var i = 0u; i < H4; i++) {
        O[ob + i] = acc[i] * inv;
    }
}
