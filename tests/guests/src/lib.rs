//! Shared pieces of the hostile guests: the `sandgraph:tool` bindings and a tiny wasi:http
//! client and input reader, so each `src/bin/<area>_<case>.rs` holds only its attack.

/// Bindings for the `sandgraph:tool` world (guest-sdk/wit/tool.wit).
pub mod bindings {
    wit_bindgen::generate!({
        path: "../../guest-sdk/wit/tool.wit",
        world: "tool",
        pub_export_macro: true,
        export_macro_name: "export_tool",
        default_bindings_module: "sandgraph_hostile_guests::bindings",
    });
}

/// Bindings for the `sandgraph:tool-preinit` world (`tool` plus the `wizer-initialize` hook the
/// host runs once before snapshotting), sharing the `types` of [`bindings`].
pub mod preinit_bindings {
    wit_bindgen::generate!({
        path: "../../guest-sdk/wit/tool.wit",
        world: "tool-preinit",
        pub_export_macro: true,
        export_macro_name: "export_tool_preinit",
        default_bindings_module: "sandgraph_hostile_guests::preinit_bindings",
        with: { "sandgraph:tool/types@0.1.0": crate::bindings::sandgraph::tool::types },
    });
}

/// Bindings for the `sandgraph:agent` world (guest-sdk/wit/agent.wit), for the test agents
/// (`src/bin/agent_*.rs`), raw wit-bindgen so they do not depend on the guest SDK.
pub mod agent_bindings {
    wit_bindgen::generate!({
        path: "../../guest-sdk/wit/agent.wit",
        world: "agent",
        pub_export_macro: true,
        export_macro_name: "export_agent",
        default_bindings_module: "sandgraph_hostile_guests::agent_bindings",
    });
}

pub use bindings::{Guest, ToolError, ToolInfo};

use wasip2::http::outgoing_handler;
use wasip2::http::types::{Fields, Method, OutgoingBody, OutgoingRequest, Scheme};

/// The `info()` every hostile guest returns.
pub fn info(name: &str) -> ToolInfo {
    ToolInfo {
        name: name.to_string(),
        version: "0.1.0".into(),
        description: "A hostile guest used by the sandbox test suite.".into(),
        input_schema: "{}".into(),
        output_schema: "{}".into(),
    }
}

/// Pulls a string field out of a flat JSON object without a JSON dependency.
pub fn field(input: &str, key: &str) -> Option<String> {
    let pat = format!("\"{key}\"");
    let at = input.find(&pat)? + pat.len();
    let rest = input[at..].trim_start().strip_prefix(':')?.trim_start();
    let rest = rest.strip_prefix('"')?;
    let end = rest.find('"')?;
    Some(rest[..end].to_string())
}

/// The `/workspace` preopen as a raw `wasi:filesystem` descriptor, for calls std does not
/// expose on stable Rust (positional writes, links).
pub fn workspace_dir() -> Option<wasip2::filesystem::types::Descriptor> {
    wasip2::filesystem::preopens::get_directories()
        .into_iter()
        .find(|(_, p)| p == "/workspace")
        .map(|(d, _)| d)
}

/// Spins in guest code (not in a host call) for `ms` milliseconds.
pub fn spin_ms(ms: u64) {
    let start = wasip2::clocks::monotonic_clock::now();
    while wasip2::clocks::monotonic_clock::now() - start < ms * 1_000_000 {
        std::hint::spin_loop();
    }
}

/// A number given as a string field (`"count":"4000"`).
pub fn num(input: &str, key: &str) -> Option<u64> {
    field(input, key)?.parse().ok()
}

/// Escapes a string for embedding in JSON output.
pub fn json_str(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// One HTTP request through wasi:http; errors come back as text.
pub fn fetch(method: &str, url: &str, headers: &[(&str, &str)]) -> Result<Response, String> {
    let (scheme, rest) = url.split_once("://").ok_or("url needs a scheme")?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let fields = Fields::new();
    for (k, v) in headers {
        fields
            .append(&k.to_string(), &v.as_bytes().to_vec())
            .map_err(|e| format!("header {k}: {e:?}"))?;
    }
    let req = OutgoingRequest::new(fields);
    let m = match method {
        "GET" => Method::Get,
        "POST" => Method::Post,
        "PUT" => Method::Put,
        "DELETE" => Method::Delete,
        "HEAD" => Method::Head,
        other => Method::Other(other.to_string()),
    };
    req.set_method(&m).map_err(|_| "bad method")?;
    let s = match scheme {
        "http" => Scheme::Http,
        "https" => Scheme::Https,
        other => Scheme::Other(other.to_string()),
    };
    req.set_scheme(Some(&s)).map_err(|_| "bad scheme")?;
    req.set_authority(Some(authority))
        .map_err(|_| "bad authority")?;
    req.set_path_with_query(Some(path))
        .map_err(|_| "bad path")?;
    let body = req.body().map_err(|_| "no body")?;
    OutgoingBody::finish(body, None).map_err(|e| format!("finish: {e:?}"))?;
    let fut = outgoing_handler::handle(req, None).map_err(|e| format!("{e:?}"))?;
    fut.subscribe().block();
    let resp = fut
        .get()
        .ok_or("no response")?
        .map_err(|_| "response taken twice")?
        .map_err(|e| format!("{e:?}"))?;
    let status = resp.status();
    let headers = resp
        .headers()
        .entries()
        .into_iter()
        .map(|(k, v)| (k, String::from_utf8_lossy(&v).into_owned()))
        .collect();
    let incoming = resp.consume().map_err(|_| "no body")?;
    let stream = incoming.stream().map_err(|_| "no stream")?;
    let mut body = Vec::new();
    loop {
        match stream.blocking_read(64 * 1024) {
            Ok(chunk) => body.extend_from_slice(&chunk),
            Err(wasip2::io::streams::StreamError::Closed) => break,
            Err(e) => return Err(format!("body: {e:?}")),
        }
    }
    Ok(Response {
        status,
        headers,
        body,
    })
}

/// Maps a failed fetch to the tool error a well-behaved tool would return.
pub fn egress_error(url: &str, e: String) -> ToolError {
    if e.contains("HttpRequestDenied") {
        ToolError::Denied(format!("egress: {url}: {e}"))
    } else {
        ToolError::Failed(format!("{url}: {e}"))
    }
}

/// Renders a response as the JSON output of a fetch-style guest.
pub fn response_json(r: &Response) -> String {
    let headers: Vec<String> = r
        .headers
        .iter()
        .map(|(k, v)| format!("[{},{}]", json_str(k), json_str(v)))
        .collect();
    format!(
        "{{\"status\":{},\"headers\":[{}],\"body\":{}}}",
        r.status,
        headers.join(","),
        json_str(&String::from_utf8_lossy(&r.body))
    )
}
