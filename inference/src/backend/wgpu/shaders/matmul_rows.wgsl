// Barrier-free variant for CPU adapters (lavapipe): one invocation per weight row, TB tokens
// per invocation so a batch reads each weight block once per TB tokens.
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let r = gid.x + gid.y * nwg.x * 64u;
    let t0 = gid.z * TB;
    if (r >= M.rows || t0 >= F.n) {
        return;
    }
    let nb = M.k / 32u;
    let row_words = nb * BLOCK_WORDS;
    for (var b = 0u; b < nb; b++) {
        block_dot(r, b, row_words, t0);
    }
    let acc = acc_get();
    for (var t = 0u; t < TB; t++) {
        if (t0 + t < F.n) {
            store(t0 + t, r, acc[t]);
        }
    }
}
