//! Spends its whole life in one kind of host call (input `how`): `sleep` (a monotonic-clock
//! wait far past any deadline), `poll` (waiting on many never-ready pollables), `read` (reading
//! a big workspace file over and over), `write` (rewriting a workspace file), `stdout` (an
//! endless flood), `http` (a request to input `url` that never gets an answer). The call must
//! end at its deadline with `timeout`.
use sandgraph_hostile_guests::*;
use std::io::{Read, Write};

struct Case;

impl Guest for Case {
    fn info() -> ToolInfo {
        info("limits_blocking_calls")
    }
    fn invoke(input: String) -> Result<String, ToolError> {
        let how = field(&input, "how").unwrap_or_default();
        match how.as_str() {
            "sleep" => {
                wasip2::clocks::monotonic_clock::subscribe_duration(3600 * 1_000_000_000).block();
            }
            "poll" => {
                let hour = 3600 * 1_000_000_000;
                let ps: Vec<_> = (0..64)
                    .map(|_| wasip2::clocks::monotonic_clock::subscribe_duration(hour))
                    .collect();
                let refs: Vec<_> = ps.iter().collect();
                wasip2::io::poll::poll(&refs);
            }
            "read" => {
                let path = field(&input, "path").unwrap_or_else(|| "/workspace/big.bin".into());
                let mut buf = vec![0u8; 1 << 20];
                loop {
                    let mut f = std::fs::File::open(&path)
                        .map_err(|e| ToolError::Failed(format!("open {path}: {e}")))?;
                    while f.read(&mut buf).map_err(|e| ToolError::Failed(e.to_string()))? > 0 {}
                }
            }
            "write" => {
                let buf = vec![b'w'; 1 << 20];
                loop {
                    let mut f = std::fs::File::create("/workspace/spin.bin")
                        .map_err(|e| ToolError::Failed(format!("create: {e}")))?;
                    for _ in 0..8 {
                        f.write_all(&buf).map_err(|e| ToolError::Failed(e.to_string()))?;
                    }
                }
            }
            "stdout" => {
                let line = "flood ".repeat(10_000);
                loop {
                    let _ = std::io::stdout().write_all(line.as_bytes());
                }
            }
            "http" => {
                let url = field(&input, "url").ok_or(ToolError::InvalidInput("need url".into()))?;
                let r = fetch("GET", &url, &[]);
                return Err(ToolError::Failed(format!("fetch returned: {:?}", r.err())));
            }
            other => return Err(ToolError::InvalidInput(format!("unknown how `{other}`"))),
        }
        Ok("{\"returned\":true}".into())
    }
}

sandgraph_hostile_guests::bindings::export_tool!(Case);

fn main() {}
