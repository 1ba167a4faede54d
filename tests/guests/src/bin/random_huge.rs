//! Asks `wasi:random` (input `api`: `secure` or `insecure`) for input `len` bytes, input
//! `times` times: the host must refuse past the call's budget instead of generating them.
use sandgraph_hostile_guests::*;

struct Case;

impl Guest for Case {
    fn info() -> ToolInfo {
        info("random_huge")
    }
    fn invoke(input: String) -> Result<String, ToolError> {
        let len = num(&input, "len").unwrap_or(60_000_000);
        let times = num(&input, "times").unwrap_or(1);
        let secure = field(&input, "api").as_deref() != Some("insecure");
        let mut total = 0u64;
        for _ in 0..times {
            let bytes = if secure {
                wasip2::random::random::get_random_bytes(len)
            } else {
                wasip2::random::insecure::get_insecure_random_bytes(len)
            };
            total += bytes.len() as u64;
        }
        Ok(format!("{{\"bytes\":{total}}}"))
    }
}

sandgraph_hostile_guests::bindings::export_tool!(Case);

fn main() {}
