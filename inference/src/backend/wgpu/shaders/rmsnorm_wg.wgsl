// RMSNorm for GPUs: one workgroup of 64 invocations per row. Each invocation sums the squares
// of every 64th element, the workgroup reduces the partial sums in workgroup memory, then each
// invocation scales its elements. The one-invocation-per-row kernel (rmsnorm.wgsl) leaves a
// GPU running a single thread per row through ~1,700 memory operations, which was most of a
// decode step on a real GPU (docs/PERFORMANCE.md). Same bindings and results as rmsnorm.wgsl.
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

var<workgroup> part: array<f32, 64>;

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let t = wid.x + wid.y * nwg.x;
    // Uniform across the workgroup, so the barriers below are reached by all or none.
    if (t >= F.n) {
        return;
    }
    let o = t * N.dim;
    var ss = 0.0;
    for (var i = lid; i < N.dim; i += 64u) {
        let v = X[o + i];
        ss += v * v;
    }
    part[lid] = ss;
    workgroupBarrier();
    for (var s = 32u; s > 0u; s = s / 2u) {
        if (lid < s) {
            part[lid] += part[lid + s];
        }
        workgroupBarrier();
    }
    let scale = 1.0 / sqrt(part[0] / f32(N.dim) + N.eps);
    for (var i = lid; i < N.dim; i += 64u) {
        Y[o + i] = X[o + i] * scale * G[i];
    }
}
