//! The real model's tokenizer on arbitrary bytes: encoding never panics, every id is in the
//! vocabulary, and decoding gives back exactly the input whenever every byte of it has a token
//! of its own (special-token parsing off). SmolLM2's vocabulary lacks a few bytes (some ASCII
//! controls and bytes that never occur in UTF-8); those encode to the unknown token, the one
//! documented lossy case, found here by encoding each byte alone.
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use sandgraph_inference::gguf::GgufFile;
use sandgraph_inference::tokenizer::Tokenizer;

static TOKENIZER: LazyLock<Tokenizer> = LazyLock::new(|| {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../models/SmolLM2-135M-Instruct.Q4_1.gguf");
    let file = GgufFile::open(path).expect("the model (scripts/setup.sh fetches it)");
    Tokenizer::from_gguf(&file).expect("tokenizer")
});

/// Bytes without a token of their own in the vocabulary.
static LOSSY: LazyLock<[bool; 256]> = LazyLock::new(|| {
    let mut lossy = [false; 256];
    for b in 0..=255u8 {
        lossy[b as usize] = TOKENIZER.decode(&TOKENIZER.encode_bytes(&[b], false)) != [b];
    }
    lossy
});

fuzz_target!(|data: &[u8]| {
    let tok = &*TOKENIZER;
    let ids = tok.encode_bytes(data, false);
    assert!(ids.iter().all(|&id| (id as usize) < tok.vocab_size()));
    if !data.iter().any(|&b| LOSSY[b as usize]) {
        assert_eq!(tok.decode(&ids), data, "decode(encode(x)) != x for {ids:?}");
    }
});
