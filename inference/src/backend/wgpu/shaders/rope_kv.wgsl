// RoPE on adjacent pairs (2i, 2i + 1) ("normal" rotation, as llama.cpp applies to llama GGUFs,
// whose Q/K weights are stored permuted for it), then the KV-cache store: rotated K and plain V
// of token t go to cache row (slot, pos). QKV rows hold [q | k | v] of one token (R.stride
// floats); q is rotated in place. The cos/sin table RT[pos, i] is computed once on the host in
// f64. One invocation per (pair over all q and kv heads, token).
struct Rope {
    n_head: u32,
    n_kv: u32,
    hd: u32,
    max_ctx: u32,
    stride: u32,
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

@group(0) @binding(0) var<storage, read_write> QKV: array<vec2<f32>>;
@group(0) @binding(1) var<storage, read> META: array<vec4<u32>>;
@group(0) @binding(2) var<storage, read_write> KC: array<vec2<f32>>;
@group(0) @binding(3) var<storage, read_write> VC: array<vec2<f32>>;
@group(0) @binding(4) var<storage, read> RT: array<vec2<f32>>;
@group(0) @binding(5) var<uniform> R: Rope;
@group(0) @binding(6) var<uniform> F: Fwd;

fn rotate(v: vec2<f32>, cs: vec2<f32>) -> vec2<f32> {
    return vec2<f32>(v.x * cs.x - v.y * cs.y, v.x * cs.y + v.y * cs.x);
}

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let half = R.hd / 2u;
    let p = gid.x;
    let t = gid.y;
    if (p >= (R.n_head + R.n_kv) * half || t >= F.n) {
        return;
    }
    let row = META[t];
    let slot = row.y;
    let pos = row.z;
    let head = p / half;
    let i = p % half;
    let cs = RT[pos * half + i];
    let base = t * (R.stride / 2u);
    if (head < R.n_head) {
        QKV[base + p] = rotate(QKV[base + p], cs);
    } else {
        let kvp = p - R.n_head * half;
        let k = base + R.n_head * half + kvp;
        let c = (slot * R.max_ctx + pos) * R.n_kv * half + kvp;
        KC[c] = rotate(QKV[k], cs);
        VC[c] = QKV[k + R.n_kv * half];
    }
}
