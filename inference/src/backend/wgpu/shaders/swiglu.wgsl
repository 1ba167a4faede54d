// SwiGLU gate: G = silu(G) * U element-wise over the first F.n rows of width S.width.
struct Swi {
    width: u32,
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

@group(0) @binding(0) var<storage, read_write> G: array<f32>;
@group(0) @binding(1) var<storage, read> U: array<f32>;
@group(0) @binding(2) var<uniform> S: Swi;
@group(0) @binding(3) var<uniform> F: Fwd;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * 64u;
    if (i >= F.n * S.width) {
        return;
    }
    let g = G[i];
    G[i] = g / (1.0 + exp(-g)) * U[i];
}
