// Q4_0 block, repacked at upload from 18 to 20 bytes (5 u32 words) so it is word aligned:
// word 0 = f16 scale d (low half, high half zero), words 1..4 = the 16 nibble bytes unchanged.
// Element value = (nibble - 8) * d. Words of one block are `s` words apart (see layout.wgsl).
const BLOCK_WORDS: u32 = 5u;
const HAS_MIN: bool = false;

fn nib_lo(q: u32) -> vec4<f32> {
    return vec4<f32>(f32(q & 15u), f32((q >> 8u) & 15u), f32((q >> 16u) & 15u), f32((q >> 24u) & 15u));
}
fn nib_hi(q: u32) -> vec4<f32> {
    return vec4<f32>(f32((q >> 4u) & 15u), f32((q >> 12u) & 15u), f32((q >> 20u) & 15u), f32(q >> 28u));
}

fn load_block(base: u32, s: u32) -> Block {
    let d = unpack2x16float(W[base]).x;
    let q0 = W[base + s];
    let q1 = W[base + 2u * s];
    let q2 = W[base + 3u * s];
    let q3 = W[base + 4u * s];
    return Block(nib_lo(q0) - 8.0, nib_lo(q1) - 8.0, nib_lo(q2) - 8.0, nib_lo(q3) - 8.0,
                 nib_hi(q0) - 8.0, nib_hi(q1) - 8.0, nib_hi(q2) - 8.0, nib_hi(q3) - 8.0, d, 0.0);
}
