//! The real SmolLM2-135M-Instruct model end to end on the CPU backend: tokenization agrees
//! with llama.cpp on the same GGUF, and greedy decoding of the reference conversation gives
//! llama.cpp's answer. A missing model fails (run `scripts/setup.sh` or
//! `sandgraph-infer pull smollm2-135m`), it never skips.

use std::path::PathBuf;

use sandgraph_inference::backend::cpu::CpuBackend;
use sandgraph_inference::generate::{CancelToken, FinishReason, Request, Sampling, generate};
use sandgraph_inference::model::LlamaModel;
use sandgraph_inference::tokenizer::{ChatMessage, ChatTemplate, Tokenizer};

fn model_path() -> PathBuf {
    let p = match std::env::var_os("SANDGRAPH_MODEL") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../models/SmolLM2-135M-Instruct.Q4_1.gguf"),
    };
    assert!(
        p.is_file(),
        "model file {} is missing: run scripts/setup.sh (or `cargo run -p sandgraph-inference -- pull smollm2-135m`), or point SANDGRAPH_MODEL at the GGUF",
        p.display()
    );
    p
}

const PROMPT: &str = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n";

#[test]
fn tokenizer_matches_llama_cpp_on_the_real_vocabulary() {
    let model = LlamaModel::load(model_path()).unwrap();
    let tok = Tokenizer::from_gguf(&model.file).unwrap();
    assert_eq!(tok.vocab_size(), 49_152);
    // Expected ids from llama.cpp's tokenizer (llama-cpp-python 0.3.36, special=True).
    let cases: [(&str, &[u32]); 3] = [
        (
            PROMPT,
            &[
                1, 9690, 198, 2683, 359, 253, 5356, 11173, 30, 2, 198, 1, 4093, 198, 1780, 314,
                260, 3575, 282, 4649, 47, 2, 198, 1, 520, 9531, 198,
            ],
        ),
        (
            "Hello world's  12345 é中🦀\n\n  x",
            &[
                19556, 905, 506, 256, 33, 34, 35, 36, 37, 26411, 28589, 10813, 116, 218, 8866, 1792,
            ],
        ),
        (
            "The capital of France is Paris.",
            &[504, 3575, 282, 4649, 314, 7042, 30],
        ),
    ];
    for (text, want) in cases {
        assert_eq!(tok.encode(text, true), want, "{text:?}");
        assert_eq!(tok.decode(want), text.as_bytes());
    }
    // The model's own template is ChatML and renders the reference conversation exactly.
    let tpl = ChatTemplate::detect(tok.chat_template()).unwrap();
    let msgs = [
        ChatMessage::new("system", "You are a helpful assistant."),
        ChatMessage::new("user", "What is the capital of France?"),
    ];
    assert_eq!(tpl.render(&msgs), PROMPT);
}

#[test]
fn greedy_cpu_decoding_answers_paris() {
    let model = LlamaModel::load(model_path()).unwrap();
    let tok = Tokenizer::from_gguf(&model.file).unwrap();
    let mut cpu = CpuBackend::new(&model, 1, 256).unwrap();
    let req = Request {
        prompt: tok.encode(PROMPT, true),
        max_tokens: 32,
        sampling: Sampling::greedy(),
        stop: vec![],
    };
    let mut streamed = String::new();
    let (out, _) = generate(&mut cpu, &tok, &[req], &CancelToken::new(), &mut |_, s| {
        streamed.push_str(s)
    })
    .unwrap();
    assert_eq!(out[0].text, "The capital of France is Paris.");
    assert_eq!(out[0].finish, FinishReason::EndOfSequence);
    assert_eq!(streamed, out[0].text);
}
