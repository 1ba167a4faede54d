// Q8_0 block, repacked at upload from 34 to 36 bytes (9 u32 words) so it is word aligned:
// word 0 = f16 scale d (low half, high half zero), words 1..8 = the 32 signed bytes unchanged.
const BLOCK_WORDS: u32 = 9u;

fn load_block(base: u32) -> array<vec4<f32>, 8> {
    let d = unpack2x16float(W[base]).x;
    var wv: array<vec4<f32>, 8>;
    for (var i = 0u; i < 8u; i++) {
        let q = bitcast<i32>(W[base + 1u + i]);
        wv[i] = vec4<f32>(f32(extractBits(q, 0u, 8u)), f32(extractBits(q, 8u, 8u)), f32(extractBits(q, 16u, 8u)), f32(extractBits(q, 24u, 8u))) * d;
    }
    return wv;
}
