// F32 weights as stored in GGUF: 32 values = 32 u32 words.
const BLOCK_WORDS: u32 = 32u;

fn load_block(base: u32) -> array<vec4<f32>, 8> {
    var wv: array<vec4<f32>, 8>;
    for (var i = 0u; i < 8u; i++) {
        let o = base + 4u * i;
        wv[i] = vec4<f32>(bitcast<f32>(W[o]), bitcast<f32>(W[o + 1u]), bitcast<f32>(W[o + 2u]), bitcast<f32>(W[o + 3u]));
    }
    return wv;
}
