// Tiled variant for GPUs: LANES invocations share one weight row (lane l takes blocks
// l, l + LANES, ...), ROWS rows per workgroup, partial sums reduced across lanes by
// reduce_lanes (workgroup memory + barriers, or one subgroupAdd when the workgroup is
// exactly one subgroup). With NORM the sums of squares are reduced the same way and scale the
// dot products (matmul_norm.wgsl).
const WG: u32 = LANES * ROWS;
var<workgroup> sh: array<f32, WG * TB>;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let r = (wid.x + wid.y * nwg.x) * ROWS + lid / LANES;
    let lane = lid % LANES;
    let t0 = wid.z * TB;
    let live = r < M.rows && t0 < F.n;
    if (live) {
        let nb = M.k / 32u;
        let row_words = nb * BLOCK_WORDS;
        for (var b = lane; b < nb; b += LANES) {
            block_dot(r, b, row_words, t0);
        }
    }
    var acc = acc_get();
    reduce_lanes(lid, lane, &acc);
    if (NORM) {
        var ss = ss_get();
        reduce_lanes(lid, lane, &ss);
        for (var t = 0u; t < TB; t++) {
            acc[t] *= 1.0 / sqrt(ss[t] / f32(M.k) + M.eps);
        }
    }
    if (live && lane == 0u) {
        for (var t = 0u; t < TB; t++) {
            if (t0 + t < F.n) {
                store(t0 + t, r, acc[t]);
            }
        }
    }
}
