//! A client's `response_format` schema: the first line of the input is a JSON Schema, the rest
//! bytes fed to the compiled matcher. Compiling is an error or a grammar; matching never panics,
//! and a document the matcher accepts as complete is valid JSON.
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use sandgraph_inference::constrain::Grammar;
use sandgraph_inference::constrain::matcher::Matcher;

fuzz_target!(|data: &[u8]| {
    let split = data.iter().position(|&b| b == b'\n').unwrap_or(data.len());
    let (schema, doc) = data.split_at(split);
    let Ok(schema) = serde_json::from_slice::<serde_json::Value>(schema) else {
        return;
    };
    let Ok(grammar) = Grammar::compile(&schema) else {
        return;
    };
    let doc = doc.get(1..).unwrap_or_default();
    let mut m = Matcher::new(Arc::new(grammar));
    let _ = m.min_close_bytes();
    if m.advance_all(doc) && m.is_complete() {
        assert!(
            serde_json::from_slice::<serde_json::Value>(doc).is_ok(),
            "the matcher completed a document that is not JSON: {:?}",
            String::from_utf8_lossy(doc)
        );
    }
});
