//! A small blocking HTTP client over `wasi:http/outgoing-handler`.
//!
//! Tools reach the network only through the host's egress filter; this module makes that
//! one call easy (`get`, `post`, a builder with headers, a response-size cap) and maps the
//! host's refusal (`HttpRequestDenied`) to [`ToolError::Denied`].

use std::{fmt, time::Duration};

use crate::ToolError;

/// Default cap on the bytes of a response body the client reads: 4 MiB.
pub const DEFAULT_MAX_BODY: usize = 4 * 1024 * 1024;

/// The HTTP methods the client sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Head,
    Post,
    Put,
    Patch,
    Delete,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Head => "HEAD",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Patch => "PATCH",
            Method::Delete => "DELETE",
        }
    }
}

/// What to do when a response body is longer than the limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyLimit {
    /// Fail with [`HttpError::BodyTooLarge`].
    Error(usize),
    /// Keep the first `n` bytes and set [`Response::truncated`].
    Truncate(usize),
}

/// Why a request produced no response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HttpError {
    /// The URL is not `http(s)://host[:port][/path][?query]`.
    InvalidUrl { url: String, reason: String },
    /// A header name or value the host rejects.
    InvalidHeader { name: String, reason: String },
    /// The sandbox's egress filter refused the request.
    Denied { url: String, detail: String },
    /// The response body exceeded the limit set with [`BodyLimit::Error`].
    BodyTooLarge { limit: usize },
    /// DNS, connection, TLS, protocol or timeout failure reported by the host.
    Transport { url: String, detail: String },
    /// Called outside a `wasm32-wasip2` component (e.g. in a native unit test).
    Unsupported,
}

impl fmt::Display for HttpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::InvalidUrl { url, reason } => write!(f, "invalid URL `{url}`: {reason}"),
            Self::InvalidHeader { name, reason } => write!(f, "invalid header `{name}`: {reason}"),
            // `capability: target: reason`, the shape the host parses denials from.
            Self::Denied { url, detail } => write!(
                f,
                "egress: {url}: {detail}; no egress rule of the tool's manifest and the operator policy grants it"
            ),
            Self::BodyTooLarge { limit } => {
                write!(f, "the response body is larger than the {limit}-byte limit")
            }
            Self::Transport { url, detail } => write!(f, "request to {url} failed: {detail}"),
            Self::Unsupported => {
                write!(
                    f,
                    "HTTP requests need wasi:http, which only exists inside a wasm32-wasip2 component"
                )
            }
        }
    }
}

impl std::error::Error for HttpError {}

impl From<HttpError> for ToolError {
    fn from(e: HttpError) -> Self {
        match e {
            HttpError::InvalidUrl { .. } | HttpError::InvalidHeader { .. } => {
                ToolError::invalid_input(e.to_string())
            }
            HttpError::Denied { .. } => ToolError::denied(e.to_string()),
            _ => ToolError::failed(e.to_string()),
        }
    }
}

/// A parsed `http(s)` URL, split the way `wasi:http` wants it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    pub https: bool,
    /// `host` or `host:port`.
    pub authority: String,
    /// Path and query, at least `/`. The fragment is dropped.
    pub path_with_query: String,
}

impl Url {
    pub fn parse(url: &str) -> Result<Url, HttpError> {
        let bad = |reason: &str| HttpError::InvalidUrl {
            url: url.to_owned(),
            reason: reason.to_owned(),
        };
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| bad("missing `http://` or `https://`"))?;
        let https = match scheme.to_ascii_lowercase().as_str() {
            "https" => true,
            "http" => false,
            _ => return Err(bad("only http and https are supported")),
        };
        let rest = rest.split('#').next().unwrap_or_default();
        let split = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, path) = rest.split_at(split);
        if authority.is_empty() {
            return Err(bad("missing host"));
        }
        if authority.contains('@') {
            return Err(bad(
                "credentials in the URL are not supported; send an Authorization header (or let the host inject it)",
            ));
        }
        if authority
            .chars()
            .any(|c| c.is_whitespace() || c.is_control())
            || path.chars().any(char::is_whitespace)
        {
            return Err(bad("whitespace is not allowed; percent-encode it"));
        }
        if let Some((_, port)) = authority.rsplit_once(':')
            && !authority.ends_with(']')
            && port.parse::<u16>().is_err()
        {
            return Err(bad("the port is not a number between 0 and 65535"));
        }
        let path_with_query = if path.starts_with('?') {
            format!("/{path}")
        } else if path.is_empty() {
            "/".to_owned()
        } else {
            path.to_owned()
        };
        Ok(Url {
            https,
            authority: authority.to_owned(),
            path_with_query,
        })
    }
}

/// An outgoing request; build with [`Request::get`]/[`Request::post`], send with [`Request::send`].
#[derive(Debug, Clone)]
pub struct Request {
    pub method: Method,
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub body: Option<Vec<u8>>,
    pub body_limit: BodyLimit,
    pub timeout: Option<Duration>,
}

impl Request {
    pub fn new(method: Method, url: impl Into<String>) -> Self {
        Request {
            method,
            url: url.into(),
            headers: Vec::new(),
            body: None,
            body_limit: BodyLimit::Error(DEFAULT_MAX_BODY),
            timeout: None,
        }
    }

    pub fn get(url: impl Into<String>) -> Self {
        Self::new(Method::Get, url)
    }

    pub fn post(url: impl Into<String>, body: impl Into<Vec<u8>>) -> Self {
        Self::new(Method::Post, url).body(body)
    }

    /// Adds a header (repeat for several values).
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = Some(body.into());
        self
    }

    /// Fail with [`HttpError::BodyTooLarge`] when the body exceeds `bytes`.
    pub fn max_body(mut self, bytes: usize) -> Self {
        self.body_limit = BodyLimit::Error(bytes);
        self
    }

    /// Keep only the first `bytes` of the body and mark the response truncated.
    pub fn truncate_body_at(mut self, bytes: usize) -> Self {
        self.body_limit = BodyLimit::Truncate(bytes);
        self
    }

    /// Connect, first-byte and between-bytes timeout (the host may cap it lower).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Sends the request through the host and reads the response body within the limit.
    pub fn send(self) -> Result<Response, HttpError> {
        let url = Url::parse(&self.url)?;
        for (name, value) in &self.headers {
            validate_header(name, value)?;
        }
        transport::send(&self, &url)
    }
}

/// A response with its body read (up to the request's limit).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    /// Header names as the host reports them (lower case), in order.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// The body was cut at the [`BodyLimit::Truncate`] limit.
    pub truncated: bool,
}

impl Response {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body as text; invalid UTF-8 is replaced with U+FFFD.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body parsed as JSON.
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_slice(&self.body)
    }

    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

/// `GET url` with the default body limit.
pub fn get(url: &str) -> Result<Response, HttpError> {
    Request::get(url).send()
}

/// `POST url` with `body` and the default body limit.
pub fn post(url: &str, body: impl Into<Vec<u8>>) -> Result<Response, HttpError> {
    Request::post(url, body).send()
}

fn validate_header(name: &str, value: &str) -> Result<(), HttpError> {
    let bad = |reason: &str| HttpError::InvalidHeader {
        name: name.to_owned(),
        reason: reason.to_owned(),
    };
    if name.is_empty() {
        return Err(bad("the name is empty"));
    }
    let token = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
    if !name.chars().all(token) {
        return Err(bad(
            "the name may only contain letters, digits and !#$%&'*+-.^_`|~",
        ));
    }
    if value.chars().any(|c| c == '\r' || c == '\n' || c == '\0') {
        return Err(bad("the value contains a line break or NUL"));
    }
    Ok(())
}

/// Reads a body from `read` (chunks until `None`) applying `limit`.
/// Returns the bytes and whether they were truncated.
#[cfg_attr(not(all(target_arch = "wasm32", target_os = "wasi")), allow(dead_code))]
fn read_limited(
    limit: BodyLimit,
    mut read: impl FnMut(usize) -> Result<Option<Vec<u8>>, String>,
) -> Result<(Vec<u8>, bool), Result<HttpError, String>> {
    let max = match limit {
        BodyLimit::Error(n) | BodyLimit::Truncate(n) => n,
    };
    let mut body = Vec::new();
    // Ask for one byte past the limit so an exactly-full body is not reported as over.
    while let Some(chunk) = read((max + 1 - body.len()).min(64 * 1024)).map_err(Err)? {
        body.extend_from_slice(&chunk);
        if body.len() > max {
            return match limit {
                BodyLimit::Error(limit) => Err(Ok(HttpError::BodyTooLarge { limit })),
                BodyLimit::Truncate(_) => {
                    body.truncate(max);
                    Ok((body, true))
                }
            };
        }
    }
    Ok((body, false))
}

#[cfg(all(target_arch = "wasm32", target_os = "wasi"))]
mod transport {
    //! The real transport: `wasi:http/outgoing-handler`.
    use wasi::http::{outgoing_handler, types};
    use wasi::io::streams::StreamError;

    use super::{HttpError, Method, Request, Response, Url, read_limited};

    pub(super) fn send(request: &Request, url: &Url) -> Result<Response, HttpError> {
        let transport = |detail: String| HttpError::Transport {
            url: request.url.clone(),
            detail,
        };
        let fail = |code: types::ErrorCode| match code {
            types::ErrorCode::HttpRequestDenied => HttpError::Denied {
                url: request.url.clone(),
                detail: "HTTP-request-denied".into(),
            },
            other => transport(format!("{other:?}")),
        };

        let entries: Vec<(String, Vec<u8>)> = request
            .headers
            .iter()
            .map(|(n, v)| (n.clone(), v.clone().into_bytes()))
            .collect();
        let headers = types::Fields::from_list(&entries).map_err(|e| HttpError::InvalidHeader {
            name: entries
                .iter()
                .map(|(n, _)| n.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            reason: format!(
                "the host rejected it ({e:?}); some headers such as Host or Connection are reserved"
            ),
        })?;
        let outgoing = types::OutgoingRequest::new(headers);
        let method = match request.method {
            Method::Get => types::Method::Get,
            Method::Head => types::Method::Head,
            Method::Post => types::Method::Post,
            Method::Put => types::Method::Put,
            Method::Patch => types::Method::Patch,
            Method::Delete => types::Method::Delete,
        };
        let invalid = |reason: &str| HttpError::InvalidUrl {
            url: request.url.clone(),
            reason: reason.into(),
        };
        outgoing
            .set_method(&method)
            .map_err(|()| invalid("the host rejected the method"))?;
        let scheme = if url.https {
            types::Scheme::Https
        } else {
            types::Scheme::Http
        };
        outgoing
            .set_scheme(Some(&scheme))
            .map_err(|()| invalid("the host rejected the scheme"))?;
        outgoing
            .set_authority(Some(&url.authority))
            .map_err(|()| invalid("the host rejected the authority"))?;
        outgoing
            .set_path_with_query(Some(&url.path_with_query))
            .map_err(|()| invalid("the host rejected the path"))?;

        let options = request.timeout.map(|t| {
            let options = types::RequestOptions::new();
            let nanos = u64::try_from(t.as_nanos()).unwrap_or(u64::MAX);
            // A host that does not support a timeout keeps its own; that is fine.
            let _ = options.set_connect_timeout(Some(nanos));
            let _ = options.set_first_byte_timeout(Some(nanos));
            let _ = options.set_between_bytes_timeout(Some(nanos));
            options
        });

        let body = outgoing
            .body()
            .map_err(|()| transport("the request body was already taken".into()))?;
        let future = outgoing_handler::handle(outgoing, options).map_err(fail)?;
        {
            let stream = body
                .write()
                .map_err(|()| transport("the request body stream was already taken".into()))?;
            if let Some(bytes) = &request.body {
                // blocking-write-and-flush accepts at most 4096 bytes per call.
                for chunk in bytes.chunks(4096) {
                    stream.blocking_write_and_flush(chunk).map_err(|e| {
                        transport(format!("sending the request body failed: {e:?}"))
                    })?;
                }
            }
        }
        types::OutgoingBody::finish(body, None).map_err(fail)?;

        let incoming = loop {
            match future.get() {
                Some(Ok(Ok(response))) => break response,
                Some(Ok(Err(code))) => return Err(fail(code)),
                Some(Err(())) => return Err(transport("the response was already taken".into())),
                None => future.subscribe().block(),
            }
        };
        let status = incoming.status();
        let headers = incoming
            .headers()
            .entries()
            .into_iter()
            .map(|(n, v)| (n, String::from_utf8_lossy(&v).into_owned()))
            .collect();
        let (body, truncated) = {
            let body = incoming
                .consume()
                .map_err(|()| transport("the response body was already taken".into()))?;
            let stream = body
                .stream()
                .map_err(|()| transport("the response body stream was already taken".into()))?;
            let read = read_limited(request.body_limit, |n| {
                match stream.blocking_read(n as u64) {
                    Ok(bytes) => Ok(Some(bytes)),
                    Err(StreamError::Closed) => Ok(None),
                    Err(StreamError::LastOperationFailed(e)) => {
                        Err(match types::http_error_code(&e) {
                            Some(types::ErrorCode::HttpRequestDenied) => {
                                "HTTP-request-denied".to_owned()
                            }
                            Some(code) => format!("{code:?}"),
                            None => e.to_debug_string(),
                        })
                    }
                }
            });
            drop(stream);
            drop(body);
            match read {
                Ok(read) => read,
                Err(Ok(e)) => return Err(e),
                Err(Err(detail)) => {
                    return Err(transport(format!(
                        "reading the response body failed: {detail}"
                    )));
                }
            }
        };
        Ok(Response {
            status,
            headers,
            body,
            truncated,
        })
    }
}

#[cfg(not(all(target_arch = "wasm32", target_os = "wasi")))]
mod transport {
    //! Native builds (unit tests) have no `wasi:http`; say so instead of panicking.
    use super::{HttpError, Request, Response, Url};

    pub(super) fn send(_request: &Request, _url: &Url) -> Result<Response, HttpError> {
        Err(HttpError::Unsupported)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> Url {
        Url::parse(s).unwrap()
    }

    fn url_err(s: &str) -> String {
        Url::parse(s).unwrap_err().to_string()
    }

    #[test]
    fn urls_split_into_scheme_authority_and_path() {
        assert_eq!(
            url("https://api.example.com/v1/items?q=a#frag"),
            Url {
                https: true,
                authority: "api.example.com".into(),
                path_with_query: "/v1/items?q=a".into()
            }
        );
        assert_eq!(url("http://127.0.0.1:8080").path_with_query, "/");
        assert_eq!(url("http://127.0.0.1:8080").authority, "127.0.0.1:8080");
        assert_eq!(url("http://h?x=1").path_with_query, "/?x=1");
        assert_eq!(url("HTTP://[::1]:80/a").authority, "[::1]:80");
    }

    #[test]
    fn bad_urls_say_why() {
        assert_eq!(
            url_err("example.com"),
            "invalid URL `example.com`: missing `http://` or `https://`"
        );
        assert_eq!(
            url_err("ftp://x/"),
            "invalid URL `ftp://x/`: only http and https are supported"
        );
        assert_eq!(
            url_err("https:///path"),
            "invalid URL `https:///path`: missing host"
        );
        assert!(url_err("https://user:pw@h/").contains("credentials in the URL are not supported"));
        assert_eq!(
            url_err("http://h:99999/"),
            "invalid URL `http://h:99999/`: the port is not a number between 0 and 65535"
        );
        assert!(url_err("http://h/a b").contains("whitespace"));
    }

    #[test]
    fn header_validation() {
        assert!(validate_header("X-Api-Key", "abc").is_ok());
        assert_eq!(
            validate_header("Bad Header", "v").unwrap_err().to_string(),
            "invalid header `Bad Header`: the name may only contain letters, digits and !#$%&'*+-.^_`|~"
        );
        assert_eq!(
            validate_header("X", "a\r\nInjected: 1")
                .unwrap_err()
                .to_string(),
            "invalid header `X`: the value contains a line break or NUL"
        );
    }

    #[test]
    fn builder_collects_headers_body_and_limits() {
        let r = Request::post("http://h/", "hi")
            .header("A", "1")
            .header("A", "2")
            .truncate_body_at(10)
            .timeout(Duration::from_secs(2));
        assert_eq!(r.method, Method::Post);
        assert_eq!(r.body.as_deref(), Some(&b"hi"[..]));
        assert_eq!(
            r.headers,
            vec![("A".into(), "1".into()), ("A".into(), "2".into())]
        );
        assert_eq!(r.body_limit, BodyLimit::Truncate(10));
        assert_eq!(
            Request::get("http://h/").max_body(5).body_limit,
            BodyLimit::Error(5)
        );
    }

    fn chunks(parts: &[&[u8]]) -> impl FnMut(usize) -> Result<Option<Vec<u8>>, String> {
        let mut parts: Vec<Vec<u8>> = parts.iter().map(|p| p.to_vec()).collect();
        parts.reverse();
        move |max| {
            let Some(mut next) = parts.pop() else {
                return Ok(None);
            };
            if next.len() > max {
                let rest = next.split_off(max);
                parts.push(rest);
            }
            Ok(Some(next))
        }
    }

    #[test]
    fn body_limit_errors_or_truncates() {
        assert_eq!(
            read_limited(BodyLimit::Error(5), chunks(&[b"abc", b"de"])),
            Ok((b"abcde".to_vec(), false))
        );
        assert_eq!(
            read_limited(BodyLimit::Error(5), chunks(&[b"abc", b"def"])),
            Err(Ok(HttpError::BodyTooLarge { limit: 5 }))
        );
        assert_eq!(
            read_limited(BodyLimit::Truncate(4), chunks(&[b"abc", b"def"])),
            Ok((b"abcd".to_vec(), true))
        );
        assert_eq!(
            read_limited(BodyLimit::Truncate(0), chunks(&[b"x"])),
            Ok((Vec::new(), true))
        );
        assert_eq!(
            read_limited(BodyLimit::Error(0), chunks(&[])),
            Ok((Vec::new(), false))
        );
    }

    #[test]
    fn errors_map_to_tool_errors() {
        let denied = HttpError::Denied {
            url: "https://x/".into(),
            detail: "HTTP-request-denied".into(),
        };
        assert_eq!(
            ToolError::from(denied),
            ToolError::denied(
                "egress: https://x/: HTTP-request-denied; no egress rule of the tool's manifest and the operator policy grants it"
            )
        );
        assert!(matches!(
            ToolError::from(HttpError::BodyTooLarge { limit: 3 }),
            ToolError::Failed(_)
        ));
        assert!(matches!(
            ToolError::from(Url::parse("x").unwrap_err()),
            ToolError::InvalidInput(_)
        ));
    }

    #[test]
    fn native_builds_report_unsupported_instead_of_panicking() {
        assert_eq!(get("http://127.0.0.1:9/"), Err(HttpError::Unsupported));
    }
}
