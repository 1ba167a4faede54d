// Streaming read of a whole buffer (grid-stride, neighbouring invocations on neighbouring
// vec4s), folded into one word per invocation so the reads cannot be optimised away. Measures
// the device's read bandwidth, the bound for decoding with weights read once per token.
@group(0) @binding(0) var<storage, read> B: array<vec4<u32>>;
@group(0) @binding(1) var<storage, read_write> O: array<u32>;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let total = arrayLength(&B);
    let stride = nwg.x * 256u;
    var acc = vec4<u32>(0u);
    for (var i = gid.x; i < total; i += stride) {
        acc ^= B[i];
    }
    O[gid.x] = acc.x ^ acc.y ^ acc.z ^ acc.w;
}
