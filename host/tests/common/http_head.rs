//! The request head as the tests' small loopback servers read it.

use std::io::{self, BufRead};

#[derive(Debug, Clone, Default)]
pub struct RequestHead {
    pub method: String,
    /// The request target as sent (path and query).
    pub target: String,
    /// Header names lower-cased, values trimmed, in order.
    pub headers: Vec<(String, String)>,
}

impl RequestHead {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The declared body length (0 when absent or unreadable).
    pub fn content_length(&self) -> usize {
        self.header("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }
}

/// Reads a request line and headers up to the blank line; `None` when the connection ended
/// before the head did (a client killed mid-request, a probe that only connected).
pub fn read_request_head(r: &mut impl BufRead) -> io::Result<Option<RequestHead>> {
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        return Ok(None);
    }
    let mut parts = line.split_whitespace();
    let mut head = RequestHead {
        method: parts.next().unwrap_or_default().to_owned(),
        target: parts.next().unwrap_or_default().to_owned(),
        headers: Vec::new(),
    };
    loop {
        let mut h = String::new();
        if r.read_line(&mut h)? == 0 {
            return Ok(None);
        }
        if h == "\r\n" || h == "\n" {
            return Ok(Some(head));
        }
        if let Some((k, v)) = h.trim_end().split_once(':') {
            head.headers
                .push((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
        }
    }
}
