// The workgroup is exactly one subgroup (ROWS = 1, LANES = the adapter's fixed subgroup
// size), so one subgroupAdd per token sums the row; no barriers. `sh` stays unused.
fn reduce_lanes(lid: u32, lane: u32, acc: ptr<function, array<f32, TB>>) {
    for (var t = 0u; t < TB; t++) {
        (*acc)[t] = subgroupAdd((*acc)[t]);
    }
}
