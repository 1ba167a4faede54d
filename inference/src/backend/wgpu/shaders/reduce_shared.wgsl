// Tree reduction of each row's LANES partial sums in workgroup memory; every invocation
// reaches every barrier. Lane 0 of each row ends with the total in acc.
fn reduce_lanes(lid: u32, lane: u32, acc: ptr<function, array<f32, TB>>) {
    for (var t = 0u; t < TB; t++) {
        sh[lid * TB + t] = (*acc)[t];
    }
    workgroupBarrier();
    for (var stride = LANES / 2u; stride > 0u; stride = stride / 2u) {
        if (lane < stride) {
            for (var t = 0u; t < TB; t++) {
                sh[lid * TB + t] += sh[(lid + stride) * TB + t];
            }
        }
        workgroupBarrier();
    }
    for (var t = 0u; t < TB; t++) {
        (*acc)[t] = sh[lid * TB + t];
    }
}
