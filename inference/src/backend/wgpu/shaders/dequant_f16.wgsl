// F16 weights as stored in GGUF: 32 values = 16 u32 words, two halves per word (low first).
// Words of one block are `s` words apart (see layout.wgsl).
const BLOCK_WORDS: u32 = 16u;
const HAS_MIN: bool = false;

fn h4(base: u32, s: u32, i: u32) -> vec4<f32> {
    let a = unpack2x16float(W[base + 2u * i * s]);
    let b = unpack2x16float(W[base + (2u * i + 1u) * s]);
    return vec4<f32>(a.x, a.y, b.x, b.y);
}

fn load_block(base: u32, s: u32) -> Block {
    return Block(h4(base, s, 0u), h4(base, s, 1u), h4(base, s, 2u), h4(base, s, 3u),
                 h4(base, s, 4u), h4(base, s, 5u), h4(base, s, 6u), h4(base, s, 7u), 1.0, 0.0);
}
