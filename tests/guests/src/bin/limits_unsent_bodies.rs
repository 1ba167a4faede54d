//! Creates input `count` outgoing requests, fills each body with as much as the host accepts
//! and never sends any: host-side buffers the call's memory limit must cover.
use sandgraph_hostile_guests::*;
use wasip2::http::types::{Fields, OutgoingRequest};

struct Case;

impl Guest for Case {
    fn info() -> ToolInfo {
        info("limits_unsent_bodies")
    }
    fn invoke(input: String) -> Result<String, ToolError> {
        let count = num(&input, "count").unwrap_or(1000);
        let mut held = Vec::new();
        let mut buffered = 0u64;
        for _ in 0..count {
            let req = OutgoingRequest::new(Fields::new());
            let body = req.body().map_err(|_| ToolError::Failed("body taken".into()))?;
            let stream = body.write().map_err(|_| ToolError::Failed("stream taken".into()))?;
            // Write while the host says it has room; it buffers what the peer has not taken.
            while let Ok(n) = stream.check_write() {
                if n == 0 {
                    break;
                }
                let chunk = vec![b'b'; n as usize];
                if stream.write(&chunk).is_err() {
                    break;
                }
                buffered += n;
            }
            // Children first: the stream belongs to the body.
            held.push((stream, body, req));
        }
        spin_ms(num(&input, "hold_ms").unwrap_or(0));
        Ok(format!("{{\"held\":{},\"buffered\":{buffered}}}", held.len()))
    }
}

sandgraph_hostile_guests::bindings::export_tool!(Case);

fn main() {}
