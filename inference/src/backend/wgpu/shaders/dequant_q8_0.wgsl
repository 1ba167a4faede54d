// Q8_0 block, repacked at upload from 34 to 36 bytes (9 u32 words) so it is word aligned:
// word 0 = f16 scale d (low half, high half zero), words 1..8 = the 32 signed bytes unchanged.
// Words of one block are `s` words apart (see layout.wgsl).
const BLOCK_WORDS: u32 = 9u;
const HAS_MIN: bool = false;

fn i8x4(w: u32) -> vec4<f32> {
    let q = bitcast<i32>(w);
    return vec4<f32>(f32(extractBits(q, 0u, 8u)), f32(extractBits(q, 8u, 8u)), f32(extractBits(q, 16u, 8u)), f32(extractBits(q, 24u, 8u)));
}

fn load_block(base: u32, s: u32) -> Block {
    let d = unpack2x16float(W[base]).x;
    return Block(i8x4(W[base + s]), i8x4(W[base + 2u * s]), i8x4(W[base + 3u * s]),
                 i8x4(W[base + 4u * s]), i8x4(W[base + 5u * s]), i8x4(W[base + 6u * s]),
                 i8x4(W[base + 7u * s]), i8x4(W[base + 8u * s]), d, 0.0);
}
