//! A tool manifest from an untrusted author: any text is a located error or a manifest.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sandgraph::sandbox::manifest::Manifest;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = Manifest::parse("fuzz.sandgraph.yaml", text);
    }
});
