// SwiGLU: H[t, i] = silu(gate) * up, where row t of GU holds [gate | up] (2 * S.width floats),
// over the first F.n rows.
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

@group(0) @binding(0) var<storage, read> GU: array<f32>;
@group(0) @binding(1) var<storage, read_write> H: array<f32>;
@group(0) @binding(2) var<uniform> S: Swi;
@group(0) @binding(3) var<uniform> F: Fwd;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * 64u;
    if (i >= F.n * S.width) {
        return;
    }
    let t = i / S.width;
    let j = i % S.width;
    let g = GU[t * 2u * S.width + j];
    H[i] = g / (1.0 + exp(-g)) * GU[(t * 2u + 1u) * S.width + j];
}
