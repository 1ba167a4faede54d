// Argmax and top-k over the logits rows, in two barrier-free stages: stage 1 scans one segment
// of one row per invocation, stage 2 merges a row's segment results in segment order. Ties go
// to the lower token id (strict comparisons, ascending scans). The Rust side prepends
// `const KMAX` (the largest k served on the device).
struct Sel {
    vocab: u32,
    segs: u32,
    k: u32,
    rows: u32,
}

@group(0) @binding(0) var<storage, read> L: array<f32>;
@group(0) @binding(1) var<storage, read_write> P: array<vec2<u32>>;
@group(0) @binding(2) var<storage, read_write> OUT: array<vec2<u32>>;
@group(0) @binding(3) var<uniform> S: Sel;

const NONE: u32 = 0xffffffffu;

@compute @workgroup_size(64)
fn argmax_segments(@builtin(global_invocation_id) gid: vec3<u32>) {
    let s = gid.x;
    let c = gid.y;
    if (s >= S.segs || c >= S.rows) {
        return;
    }
    let len = (S.vocab + S.segs - 1u) / S.segs;
    let end = min(S.vocab, (s + 1u) * len);
    var best = -3.4e38;
    var id = NONE;
    for (var i = s * len; i < end; i++) {
        let v = L[c * S.vocab + i];
        if (id == NONE || v > best) {
            best = v;
            id = i;
        }
    }
    P[c * S.segs + s] = vec2<u32>(bitcast<u32>(best), id);
}

@compute @workgroup_size(64)
fn argmax_merge(@builtin(global_invocation_id) gid: vec3<u32>) {
    let c = gid.x;
    if (c >= S.rows) {
        return;
    }
    var best = -3.4e38;
    var id = NONE;
    for (var s = 0u; s < S.segs; s++) {
        let e = P[c * S.segs + s];
        let v = bitcast<f32>(e.x);
        if (e.y != NONE && (id == NONE || v > best)) {
            best = v;
            id = e.y;
        }
    }
    OUT[c] = vec2<u32>(id, bitcast<u32>(best));
}

// Inserts (v, i) into the descending list of n entries (capacity S.k); returns the new n.
fn insert(vals: ptr<function, array<f32, KMAX>>, ids: ptr<function, array<u32, KMAX>>, n: u32,
          v: f32, i: u32) -> u32 {
    var j = n;
    if (n == S.k) {
        if (!(v > (*vals)[n - 1u])) {
            return n;
        }
        j = n - 1u;
    }
    while (j > 0u && v > (*vals)[j - 1u]) {
        (*vals)[j] = (*vals)[j - 1u];
        (*ids)[j] = (*ids)[j - 1u];
        j--;
    }
    (*vals)[j] = v;
    (*ids)[j] = i;
    return min(n + 1u, S.k);
}

@compute @workgroup_size(64)
fn topk_segments(@builtin(global_invocation_id) gid: vec3<u32>) {
    let s = gid.x;
    let c = gid.y;
    if (s >= S.segs || c >= S.rows) {
        return;
    }
    let len = (S.vocab + S.segs - 1u) / S.segs;
    let end = min(S.vocab, (s + 1u) * len);
    var vals: array<f32, KMAX>;
    var ids: array<u32, KMAX>;
    var n = 0u;
    for (var i = s * len; i < end; i++) {
        n = insert(&vals, &ids, n, L[c * S.vocab + i], i);
    }
    let o = (c * S.segs + s) * S.k;
    for (var j = 0u; j < S.k; j++) {
        if (j < n) {
            P[o + j] = vec2<u32>(bitcast<u32>(vals[j]), ids[j]);
        } else {
            P[o + j] = vec2<u32>(0u, NONE);
        }
    }
}

@compute @workgroup_size(64)
fn topk_merge(@builtin(global_invocation_id) gid: vec3<u32>) {
    let c = gid.x;
    if (c >= S.rows) {
        return;
    }
    var vals: array<f32, KMAX>;
    var ids: array<u32, KMAX>;
    var n = 0u;
    for (var e = 0u; e < S.segs * S.k; e++) {
        let x = P[c * S.segs * S.k + e];
        if (x.y != NONE) {
            n = insert(&vals, &ids, n, bitcast<f32>(x.x), x.y);
        }
    }
    for (var j = 0u; j < S.k; j++) {
        if (j < n) {
            OUT[c * S.k + j] = vec2<u32>(ids[j], bitcast<u32>(vals[j]));
        } else {
            OUT[c * S.k + j] = vec2<u32>(NONE, 0u);
        }
    }
}
