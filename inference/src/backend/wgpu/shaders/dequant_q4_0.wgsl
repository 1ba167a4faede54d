// Q4_0 block, repacked at upload from 18 to 20 bytes (5 u32 words) so it is word aligned:
// word 0 = f16 scale d (low half, high half zero), words 1..4 = the 16 nibble bytes unchanged.
// Element value = (nibble - 8) * d.
const BLOCK_WORDS: u32 = 5u;

fn load_block(base: u32) -> array<vec4<f32>, 8> {
    let d = unpack2x16float(W[base]).x;
    var wv: array<vec4<f32>, 8>;
    for (var i = 0u; i < 4u; i++) {
        let q = W[base + 1u + i];
        wv[i] = (vec4<f32>(f32(q & 15u), f32((q >> 8u) & 15u), f32((q >> 16u) & 15u), f32((q >> 24u) & 15u)) - 8.0) * d;
        wv[4u + i] = (vec4<f32>(f32((q >> 4u) & 15u), f32((q >> 12u) & 15u), f32((q >> 20u) & 15u), f32(q >> 28u)) - 8.0) * d;
    }
    return wv;
}
