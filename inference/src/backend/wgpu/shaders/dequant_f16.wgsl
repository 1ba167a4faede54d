// F16 weights as stored in GGUF: 32 values = 16 u32 words, two halves per word (low first).
const BLOCK_WORDS: u32 = 16u;

fn load_block(base: u32) -> array<vec4<f32>, 8> {
    var wv: array<vec4<f32>, 8>;
    for (var i = 0u; i < 8u; i++) {
        let a = unpack2x16float(W[base + 2u * i]);
        let b = unpack2x16float(W[base + 2u * i + 1u]);
        wv[i] = vec4<f32>(a.x, a.y, b.x, b.y);
    }
    return wv;
}
