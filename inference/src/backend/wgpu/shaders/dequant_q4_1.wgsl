// Q4_1 block as stored in GGUF (20 bytes = 5 u32 words, so uploaded unchanged):
// word 0 = f16 scale d (low half) | f16 minimum m (high half), words 1..4 = 32 nibbles.
// Byte j holds element j in its low nibble and element j + 16 in its high nibble.
// Words of one block are `s` words apart (see layout.wgsl).
const BLOCK_WORDS: u32 = 5u;
const HAS_MIN: bool = true;

fn nib_lo(q: u32) -> vec4<f32> {
    return vec4<f32>(f32(q & 15u), f32((q >> 8u) & 15u), f32((q >> 16u) & 15u), f32((q >> 24u) & 15u));
}
fn nib_hi(q: u32) -> vec4<f32> {
    return vec4<f32>(f32((q >> 4u) & 15u), f32((q >> 12u) & 15u), f32((q >> 20u) & 15u), f32(q >> 28u));
}

fn load_block(base: u32, s: u32) -> Block {
    let dm = unpack2x16float(W[base]);
    let d = dm.x;
    let m = dm.y;
    let q0 = W[base + s];
    let q1 = W[base + 2u * s];
    let q2 = W[base + 3u * s];
    let q3 = W[base + 4u * s];
    return Block(nib_lo(q0), nib_lo(q1), nib_lo(q2), nib_lo(q3),
                 nib_hi(q0), nib_hi(q1), nib_hi(q2), nib_hi(q3), d, m);
}
