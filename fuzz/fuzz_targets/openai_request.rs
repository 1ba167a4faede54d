//! Bodies of `/v1/chat/completions` and `/v1/completions`: parsing, parameter checks, chat
//! messages, prompts and structured-output settings are errors or values, never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sandgraph_inference::server::openai::{ChatRequest, CompletionRequest, parse_body};

fuzz_target!(|data: &[u8]| {
    if let Ok(mut r) = parse_body::<ChatRequest>(data) {
        let _ = r.params(2048, 49_152);
        let _ = r.chat_messages();
        let _ = r.structured();
    }
    if let Ok(mut r) = parse_body::<CompletionRequest>(data) {
        let _ = r.params(2048, 49_152);
        let _ = r.prompt_input(49_152);
    }
});
