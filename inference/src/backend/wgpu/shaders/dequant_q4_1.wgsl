// Q4_1 block as stored in GGUF (20 bytes = 5 u32 words, so uploaded unchanged):
// word 0 = f16 scale d (low half) | f16 minimum m (high half), words 1..4 = 32 nibbles.
// Byte j holds element j in its low nibble and element j + 16 in its high nibble.
const BLOCK_WORDS: u32 = 5u;

fn load_block(base: u32) -> array<vec4<f32>, 8> {
    let dm = unpack2x16float(W[base]);
    let d = dm.x;
    let m = dm.y;
    var wv: array<vec4<f32>, 8>;
    for (var i = 0u; i < 4u; i++) {
        let q = W[base + 1u + i];
        wv[i] = vec4<f32>(f32(q & 15u), f32((q >> 8u) & 15u), f32((q >> 16u) & 15u), f32((q >> 24u) & 15u)) * d + m;
        wv[4u + i] = vec4<f32>(f32((q >> 4u) & 15u), f32((q >> 12u) & 15u), f32((q >> 20u) & 15u), f32(q >> 28u)) * d + m;
    }
    return wv;
}
