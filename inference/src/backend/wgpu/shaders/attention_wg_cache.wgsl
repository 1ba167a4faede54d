// Keys and values for attention_wg.wgsl from the KV cache alone: rope_kv has already rotated q
// in place and stored this pass's keys and values.
@group(0) @binding(0) var<storage, read> Q: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> KC: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> VC: array<f32>;

fn load_query(lid: u32, t: u32, h: u32, pos: u32) {
    if (lid < H4) {
        qw[lid] = Q[(t * A.q_stride) / 4u + h * H4 + lid];
    }
    workgroupBarrier();
}

fn key_dot(slot: u32, kh: u32, t: u32, pos: u32, first: u32, p: u32) -> f32 {
    let kb = (slot * A.max_ctx + p) * A.n_kv * H4 + kh * H4;
    var s = 0.0;
    for (var i = 0u; i < H4; i++) {
        s += dot(qw[i], KC[kb + i]);
    }
    return s;
}

fn value_at(slot: u32, kh: u32, t: u32, pos: u32, first: u32, p: u32, d: u32) -> f32 {
    return VC[(slot * A.max_ctx + p) * A.n_kv * HD + kh * HD + d];
}

fn store_kv(lid: u32, t: u32, h: u32, kh: u32, slot: u32, pos: u32) {}
