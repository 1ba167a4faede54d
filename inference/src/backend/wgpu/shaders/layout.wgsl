// Where weight words live. With IL = 1 rows are stored one after another (the GGUF order).
// With IL > 1 (the barrier-free variant on CPU adapters) each group of IL rows is stored
// word-interleaved: word j of row r sits at ((r / IL) * row_words + j) * IL + r % IL, so IL
// neighbouring invocations (one SIMD vector on lavapipe) read IL consecutive words.
fn block_base(r: u32, b: u32, row_words: u32) -> u32 {
    return ((r / IL) * row_words + b * BLOCK_WORDS) * IL + r % IL;
}

// 32 dequantized weights in order, as named fields rather than an array so no backend has to
// keep them in indexable memory.
struct Block {
    w0: vec4<f32>,
    w1: vec4<f32>,
    w2: vec4<f32>,
    w3: vec4<f32>,
    w4: vec4<f32>,
    w5: vec4<f32>,
    w6: vec4<f32>,
    w7: vec4<f32>,
}

