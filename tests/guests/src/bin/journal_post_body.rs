//! Sends input `method` to input `url` with a body of input `size` bytes (a fixed pattern),
//! the way the guest SDK does: `handle` first, then the body streamed in 4 KiB writes.
//! `framing: "fixed"` declares a Content-Length, `"streamed"` leaves the framing to the host.
//! Returns the status and the response body, so replay compares what the guest saw.
use sandgraph_hostile_guests::*;
use wasip2::http::outgoing_handler;
use wasip2::http::types::{Fields, Method, OutgoingBody, OutgoingRequest, Scheme};

struct Case;

fn send(url: &str, method: &str, size: usize, fixed: bool) -> Result<String, String> {
    let rest = url.strip_prefix("http://").ok_or("http urls only")?;
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let fields = Fields::new();
    if fixed {
        fields
            .append("content-length", size.to_string().as_bytes())
            .map_err(|e| format!("content-length: {e:?}"))?;
    }
    let req = OutgoingRequest::new(fields);
    let m = match method {
        "PUT" => Method::Put,
        _ => Method::Post,
    };
    req.set_method(&m).map_err(|_| "bad method")?;
    req.set_scheme(Some(&Scheme::Http)).map_err(|_| "bad scheme")?;
    req.set_authority(Some(authority)).map_err(|_| "bad authority")?;
    req.set_path_with_query(Some(if path.is_empty() { "/" } else { path }))
        .map_err(|_| "bad path")?;
    let body = req.body().map_err(|_| "no body")?;
    let future = outgoing_handler::handle(req, None).map_err(|e| format!("handle: {e:?}"))?;
    {
        let stream = body.write().map_err(|_| "no body stream")?;
        let pattern: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
        for chunk in pattern.chunks(4096) {
            stream
                .blocking_write_and_flush(chunk)
                .map_err(|e| format!("sending the request body failed: {e:?}"))?;
        }
    }
    OutgoingBody::finish(body, None).map_err(|e| format!("finish: {e:?}"))?;
    future.subscribe().block();
    let resp = future
        .get()
        .ok_or("no response")?
        .map_err(|_| "response taken twice")?
        .map_err(|e| format!("{e:?}"))?;
    let status = resp.status();
    let incoming = resp.consume().map_err(|_| "no body")?;
    let stream = incoming.stream().map_err(|_| "no stream")?;
    let mut got = Vec::new();
    loop {
        match stream.blocking_read(64 * 1024) {
            Ok(chunk) => got.extend_from_slice(&chunk),
            Err(wasip2::io::streams::StreamError::Closed) => break,
            Err(e) => return Err(format!("body: {e:?}")),
        }
    }
    Ok(format!(
        "{{\"status\":{status},\"body\":{}}}",
        json_str(&String::from_utf8_lossy(&got))
    ))
}

impl Guest for Case {
    fn info() -> ToolInfo {
        info("journal_post_body")
    }
    fn invoke(input: String) -> Result<String, ToolError> {
        let url = field(&input, "url").ok_or(ToolError::InvalidInput("need url".into()))?;
        let method = field(&input, "method").unwrap_or_else(|| "POST".into());
        let size = field(&input, "size")
            .and_then(|s| s.parse().ok())
            .ok_or(ToolError::InvalidInput("need size as a string of digits".into()))?;
        let fixed = field(&input, "framing").as_deref() == Some("fixed");
        send(&url, &method, size, fixed).map_err(ToolError::Failed)
    }
}

sandgraph_hostile_guests::bindings::export_tool!(Case);

fn main() {}
