//! A journal record read back from a damaged disk: decoding any bytes is an error or an event,
//! never a panic, and a decoded event encodes to bytes that decode to the same event.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sandgraph::journal::Event;

fuzz_target!(|data: &[u8]| {
    if let Ok((at_ms, event)) = Event::decode(data) {
        let again = Event::decode(&event.encode(at_ms)).expect("a re-encoded event decodes");
        assert_eq!(again, (at_ms, event));
    }
});
