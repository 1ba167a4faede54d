// Keys and values for attention_wg.wgsl with RoPE and the KV-cache store fused in (no rope_kv
// dispatch). QKV rows hold [q | k | v] of each token of this pass, unrotated. A token attends
// to positions before `first` (the first position of its slot in this pass) from the cache,
// which earlier passes filled, and to its slot's positions in this pass from their QKV rows,
// rotating each key as it is read; the rows of one slot are consecutive, so position p sits
// pos - p rows before the token's own. Each token's rotated key and its value are stored in the
// cache by the workgroup of the first query head of their KV group, for later passes. No
// workgroup of this dispatch reads a cache row this dispatch writes: those positions are at or
// after `first` of their slot. Rotation as rope_kv.wgsl: adjacent pairs, RT[pos, pair] =
// (cos, sin) computed on the host.
@group(0) @binding(0) var<storage, read> QKV: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> KC: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> VC: array<f32>;
@group(0) @binding(7) var<storage, read> RT: array<vec2<f32>>;

// Pairs 2 * i4 and 2 * i4 + 1 of a head vector, rotated for position p.
fn rot4(v: vec4<f32>, p: u32, i4: u32) -> vec4<f32> {
    let c = p * (HD / 2u) + 2u * i4;
    let a = RT[c];
    let b = RT[c + 1u];
    return vec4<f32>(v.x * a.x - v.y * a.y, v.x * a.y + v.y * a.x,
                     v.z * b.x - v.w * b.y, v.z * b.y + v.w * b.x);
}

// vec4 index of the key of KV head kh in QKV row r.
fn key_base(r: u32, kh: u32) -> u32 {
    return (r * A.q_stride) / 4u + A.n_head * H4 + kh * H4;
}

fn load_query(lid: u32, t: u32, h: u32, pos: u32) {
    if (lid < H4) {
        qw[lid] = rot4(QKV[(t * A.q_stride) / 4u + h * H4 + lid], pos, lid);
    }
    workgroupBarrier();
}

fn key_dot(slot: u32, kh: u32, t: u32, pos: u32, first: u32, p: u32) -> f32 {
    var s = 0.0;
    if (p < first) {
        let kb = (slot * A.max_ctx + p) * A.n_kv * H4 + kh * H4;
        for (var i = 0u; i < H4; i++) {
            s += dot(qw[i], KC[kb + i]);
        }
    } else {
        let kb = key_base(t - (pos - p), kh);
        for (var i = 0u; i < H4; i++) {
            s += dot(qw[i], rot4(QKV[kb + i], p, i));
        }
    }
    return s;
}

fn value_at(slot: u32, kh: u32, t: u32, pos: u32, first: u32, p: u32, d: u32) -> f32 {
    if (p < first) {
        return VC[(slot * A.max_ctx + p) * A.n_kv * HD + kh * HD + d];
    }
    let f = (t - (pos - p)) * A.q_stride + (A.n_head + A.n_kv) * HD + kh * HD + d;
    return QKV[f / 4u][f % 4u];
}

fn store_kv(lid: u32, t: u32, h: u32, kh: u32, slot: u32, pos: u32) {
    if (h % (A.n_head / A.n_kv) != 0u) {
        return;
    }
    let c = (slot * A.max_ctx + pos) * A.n_kv;
    if (lid < H4) {
        KC[c * H4 + kh * H4 + lid] = rot4(QKV[key_base(t, kh) + lid], pos, lid);
    }
    if (lid < HD) {
        let f = t * A.q_stride + (A.n_head + A.n_kv) * HD + kh * HD + lid;
        VC[c * HD + kh * HD + lid] = QKV[f / 4u][f % 4u];
    }
}
