// Where weight words live. With IL = 1 rows are stored one after another (the GGUF order).
// With IL > 1 (the barrier-free variant on CPU adapters) each group of IL rows is stored
// word-interleaved: word j of row r sits at ((r / IL) * row_words + j) * IL + r % IL, so IL
// neighbouring invocations (one SIMD vector on lavapipe) read IL consecutive words.
fn block_base(r: u32, b: u32, row_words: u32) -> u32 {
    return ((r / IL) * row_words + b * BLOCK_WORDS) * IL + r % IL;
}

// One block of 32 weights: value j = w[j] * d + m (m = 0 unless HAS_MIN). Named fields rather
// than an array so no backend has to keep them in indexable memory; d and m are applied once
// per block dot product, not per weight.
struct Block {
    w0: vec4<f32>,
    w1: vec4<f32>,
    w2: vec4<f32>,
    w3: vec4<f32>,
    w4: vec4<f32>,
    w5: vec4<f32>,
    w6: vec4<f32>,
    w7: vec4<f32>,
    d: f32,
    m: f32,
}

// The block's dot product with 32 activations given as 8 vec4.
fn block_dot8(v: Block, x0: vec4<f32>, x1: vec4<f32>, x2: vec4<f32>, x3: vec4<f32>,
              x4: vec4<f32>, x5: vec4<f32>, x6: vec4<f32>, x7: vec4<f32>) -> f32 {
    var s = v.d * (dot(v.w0, x0) + dot(v.w1, x1) + dot(v.w2, x2) + dot(v.w3, x3)
                 + dot(v.w4, x4) + dot(v.w5, x5) + dot(v.w6, x6) + dot(v.w7, x7));
    if (HAS_MIN) {
        s += v.m * dot(((x0 + x1) + (x2 + x3)) + ((x4 + x5) + (x6 + x7)), vec4<f32>(1.0));
    }
    return s;
}

