// Barrier-free variant for CPU adapters that have subgroups (lavapipe): one invocation per
// weight row like matmul_rows.wgsl, but each subgroup loads a block's 32 activations once,
// spread over its lanes, and hands them round with subgroupBroadcast, instead of every lane
// loading all 32. Every lane stays active to the end (lanes past the last row recompute it).
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(subgroup_invocation_id) lane: u32) {
    let r = gid.x + gid.y * nwg.x * 64u;
    let t0 = gid.z * TB;
    if (t0 >= F.n) {
        return;
    }
    let live = r < M.rows;
    let rr = select(M.rows - 1u, r, live);
    let nb = M.k / 32u;
    let row_words = nb * BLOCK_WORDS;
    for (var b = 0u; b < nb; b++) {
        block_dot(rr, b, row_words, t0, lane);
    }
    if (live) {
        let acc = acc_get();
        for (var t = 0u; t < TB; t++) {
            if (t0 + t < F.n) {
                store(t0 + t, r, acc[t]);
            }
        }
    }
}
