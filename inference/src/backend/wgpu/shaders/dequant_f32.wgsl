// F32 weights as stored in GGUF: 32 values = 32 u32 words.
// Words of one block are `s` words apart (see layout.wgsl).
const BLOCK_WORDS: u32 = 32u;
const HAS_MIN: bool = false;

fn f4(base: u32, s: u32, i: u32) -> vec4<f32> {
    let o = base + 4u * i * s;
    return vec4<f32>(bitcast<f32>(W[o]), bitcast<f32>(W[o + s]), bitcast<f32>(W[o + 2u * s]), bitcast<f32>(W[o + 3u * s]));
}

fn load_block(base: u32, s: u32) -> Block {
    return Block(f4(base, s, 0u), f4(base, s, 1u), f4(base, s, 2u), f4(base, s, 3u),
                 f4(base, s, 4u), f4(base, s, 5u), f4(base, s, 6u), f4(base, s, 7u), 1.0, 0.0);
}
