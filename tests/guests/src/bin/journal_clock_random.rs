//! Reads every non-deterministic value WASI offers a guest (wall clock, monotonic clock, secure
//! and insecure random, the insecure seed) and returns them, so the host can check that a
//! journaled replay hands back exactly the recorded values.
use sandgraph_hostile_guests::*;
use wasip2::clocks::{monotonic_clock, wall_clock};
use wasip2::random::{insecure, insecure_seed, random};

struct Case;

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Guest for Case {
    fn info() -> ToolInfo {
        info("journal_clock_random")
    }
    fn invoke(_input: String) -> Result<String, ToolError> {
        let wall = wall_clock::now();
        let mono_a = monotonic_clock::now();
        let secure = random::get_random_bytes(16);
        let word = random::get_random_u64();
        let weak = insecure::get_insecure_random_bytes(8);
        let (seed_a, seed_b) = insecure_seed::insecure_seed();
        // std's clock goes through the same WASI import.
        let std_now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let mono_b = monotonic_clock::now();
        Ok(format!(
            "{{\"wall\":[{},{}],\"mono\":[{mono_a},{mono_b}],\"secure\":\"{}\",\"word\":{word},\"insecure\":\"{}\",\"seed\":[{seed_a},{seed_b}],\"std_now\":{std_now}}}",
            wall.seconds,
            wall.nanoseconds,
            hex(&secure),
            hex(&weak)
        ))
    }
}

sandgraph_hostile_guests::bindings::export_tool!(Case);

fn main() {}
