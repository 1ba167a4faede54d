// RMSNorm fused into the matmul that reads its output (GPU variants): X holds the residual rows
// as they are, G the norm weights. Each block is dotted with X * G, and the same activations'
// squares are summed beside it; once the lanes are reduced, each token's dot product is scaled
// by 1 / sqrt(mean(X^2) + eps). The lanes of a weight row visit every block of it between them,
// so the reduced sum of squares is the whole activation row's: no separate RMSNorm dispatch,
// no normalised copy of X, and no extra pass over memory.
@group(0) @binding(5) var<storage, read> G: array<vec4<f32>>;

// Dot product of a block with X * G at vec4 index xb of X and gb of G.
fn block_xn(v: Block, xb: u32, gb: u32) -> f32 {
    return block_dot8(v, X[xb] * G[gb], X[xb + 1u] * G[gb + 1u], X[xb + 2u] * G[gb + 2u],
                      X[xb + 3u] * G[gb + 3u], X[xb + 4u] * G[gb + 4u], X[xb + 5u] * G[gb + 5u],
                      X[xb + 6u] * G[gb + 6u], X[xb + 7u] * G[gb + 7u]);
}

// Sum of squares of the 32 activations at vec4 index xb.
fn block_ss(xb: u32) -> f32 {
    let a = X[xb];
    let b = X[xb + 1u];
    let c = X[xb + 2u];
    let d = X[xb + 3u];
    let e = X[xb + 4u];
    let f = X[xb + 5u];
    let g = X[xb + 6u];
    let h = X[xb + 7u];
    return ((dot(a, a) + dot(b, b)) + (dot(c, c) + dot(d, d)))
         + ((dot(e, e) + dot(f, f)) + (dot(g, g) + dot(h, h)));
}
