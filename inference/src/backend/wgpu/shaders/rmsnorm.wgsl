// RMSNorm: Y[t, i] = X[t, i] / sqrt(mean(X[t, :]^2) + eps) * G[i]. One invocation per row:
// rows are short (the model width), so this stays barrier-free on every adapter.
struct Norm {
    dim: u32,
    eps: f32,
    _p0: u32,
    _p1: u32,
}
struct Fwd {
    n: u32,
    _p0: u32,
    _p1: u32,
    _p2: u32,
}

@group(0) @binding(0) var<storage, read> X: array<f32>;
@group(0) @binding(1) var<storage, read> G: array<f32>;
@group(0) @binding(2) var<storage, read_write> Y: array<f32>;
@group(0) @binding(3) var<uniform> N: Norm;
@group(0) @binding(4) var<uniform> F: Fwd;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let t = gid.x;
    if (t >= F.n) {
        return;
    }
    let o = t * N.dim;
    var ss = 0.0;
    for (var i = 0u; i < N.dim; i++) {
        let v = X[o + i];
        ss += v * v;
    }
    let scale = 1.0 / sqrt(ss / f32(N.dim) + N.eps);
    for (var i = 0u; i < N.dim; i++) {
        Y[o + i] = X[o + i] * scale * G[i];
    }
}
