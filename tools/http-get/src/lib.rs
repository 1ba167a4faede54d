//! `http-get`: fetches one URL and returns status, headers and body text.
//!
//! The reference tool for egress: everything it reaches passes the host's rule match,
//! address checks and size caps, so it is also how operators try out an egress policy.

use std::collections::BTreeMap;

use sandgraph_guest::{
    ToolError,
    http::{Request, Response},
    tool,
};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Largest body the tool returns, whatever the input asks: 1 MiB.
pub const MAX_BODY_LIMIT: u32 = 1024 * 1024;

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Input {
    /// `http://` or `https://` URL; the tool's grant decides whether it is reachable.
    pub url: String,
    /// Extra request headers, e.g. `{"Accept": "application/json"}`.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// `GET` (default) or `HEAD`.
    #[serde(default)]
    pub method: Method,
    /// Return at most this many body bytes and set `truncated` (default 256 KiB).
    #[serde(default = "default_max_body")]
    #[schemars(range(max = 1048576))]
    pub max_body_bytes: u32,
    /// Fail with the status when it is not 2xx (default false: return it).
    #[serde(default)]
    pub fail_on_error_status: bool,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "UPPERCASE")]
pub enum Method {
    #[default]
    Get,
    Head,
}

fn default_max_body() -> u32 {
    256 * 1024
}

#[derive(Debug, Serialize, JsonSchema, PartialEq)]
pub struct Output {
    pub status: u16,
    /// Response headers, lower-case names; repeated headers joined with `, `.
    pub headers: BTreeMap<String, String>,
    /// The body as UTF-8 text (invalid sequences replaced with U+FFFD).
    pub body: String,
    /// The body was longer than `max_body_bytes` and was cut.
    pub truncated: bool,
}

/// The request the input describes.
pub fn request(input: &Input) -> Request {
    let method = match input.method {
        Method::Get => sandgraph_guest::http::Method::Get,
        Method::Head => sandgraph_guest::http::Method::Head,
    };
    let mut request = Request::new(method, input.url.clone())
        .truncate_body_at(input.max_body_bytes.min(MAX_BODY_LIMIT) as usize);
    for (name, value) in &input.headers {
        request = request.header(name.clone(), value.clone());
    }
    request
}

/// The output for `response`, or a failure when the caller asked for 2xx only.
pub fn output(input: &Input, response: Response) -> Result<Output, ToolError> {
    if input.fail_on_error_status && !response.is_success() {
        return Err(ToolError::failed(format!(
            "{} answered with HTTP status {}",
            input.url, response.status
        )));
    }
    let mut headers: BTreeMap<String, String> = BTreeMap::new();
    for (name, value) in &response.headers {
        headers
            .entry(name.to_ascii_lowercase())
            .and_modify(|v| {
                v.push_str(", ");
                v.push_str(value);
            })
            .or_insert_with(|| value.clone());
    }
    Ok(Output {
        status: response.status,
        headers,
        body: response.text(),
        truncated: response.truncated,
    })
}

#[tool(
    name = "http-get",
    description = "Fetches a URL with GET or HEAD and returns the status, headers and body text (cut at max_body_bytes)."
)]
fn invoke(input: Input) -> Result<Output, ToolError> {
    let response = request(&input).send()?;
    output(&input, response)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sandgraph_guest::{http::BodyLimit, runtime};

    fn input(json: &str) -> Input {
        sandgraph_guest::schema::parse_input(json).unwrap()
    }

    fn response(status: u16, body: &[u8], truncated: bool) -> Response {
        Response {
            status,
            headers: vec![
                ("Content-Type".into(), "text/plain".into()),
                ("set-cookie".into(), "a=1".into()),
                ("set-cookie".into(), "b=2".into()),
            ],
            body: body.to_vec(),
            truncated,
        }
    }

    #[test]
    fn request_carries_method_headers_and_limit() {
        let i = input(
            r#"{"url":"http://127.0.0.1:8080/x","headers":{"Accept":"text/plain"},"method":"HEAD","max_body_bytes":10}"#,
        );
        let r = request(&i);
        assert_eq!(r.method, sandgraph_guest::http::Method::Head);
        assert_eq!(r.url, "http://127.0.0.1:8080/x");
        assert_eq!(
            r.headers,
            vec![("Accept".to_owned(), "text/plain".to_owned())]
        );
        assert_eq!(r.body_limit, BodyLimit::Truncate(10));
        assert_eq!(
            request(&input(r#"{"url":"http://h/"}"#)).body_limit,
            BodyLimit::Truncate(256 * 1024)
        );
    }

    #[test]
    fn output_joins_repeated_headers_and_keeps_truncation() {
        let i = input(r#"{"url":"http://h/"}"#);
        let out = output(&i, response(200, "héllo".as_bytes(), true)).unwrap();
        assert_eq!(out.status, 200);
        assert_eq!(out.body, "héllo");
        assert!(out.truncated);
        assert_eq!(out.headers["content-type"], "text/plain");
        assert_eq!(out.headers["set-cookie"], "a=1, b=2");
    }

    #[test]
    fn invalid_utf8_is_replaced_not_an_error() {
        let out = output(
            &input(r#"{"url":"http://h/"}"#),
            response(200, &[0x66, 0xff], false),
        )
        .unwrap();
        assert_eq!(out.body, "f\u{fffd}");
    }

    #[test]
    fn error_status_is_returned_or_fails_on_request() {
        let out = output(&input(r#"{"url":"http://h/"}"#), response(503, b"", false)).unwrap();
        assert_eq!(out.status, 503);
        assert_eq!(
            output(
                &input(r#"{"url":"http://h/","fail_on_error_status":true}"#),
                response(503, b"", false)
            )
            .unwrap_err(),
            ToolError::failed("http://h/ answered with HTTP status 503")
        );
    }

    #[test]
    fn bad_inputs_are_invalid_input() {
        assert_eq!(
            runtime::call::<SandgraphTool>(r#"{"url":"http://h/","method":"POST"}"#).unwrap_err(),
            ToolError::invalid_input(r#"at `method`: string "POST" is not one of ["GET","HEAD"]"#)
        );
        assert_eq!(
            runtime::call::<SandgraphTool>(r#"{"url":"http://h/","max_body_bytes":2000000}"#)
                .unwrap_err(),
            ToolError::invalid_input(
                "at `max_body_bytes`: 2000000 is greater than the maximum 1048576"
            )
        );
        assert_eq!(
            runtime::call::<SandgraphTool>(r#"{"url":"ftp://h/"}"#).unwrap_err(),
            ToolError::invalid_input("invalid URL `ftp://h/`: only http and https are supported")
        );
        assert_eq!(
            runtime::call::<SandgraphTool>(r#"{"url":"http://h/","headers":{"X":"a\r\nB: c"}}"#)
                .unwrap_err(),
            ToolError::invalid_input("invalid header `X`: the value contains a line break or NUL")
        );
    }
}
