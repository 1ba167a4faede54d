//! A container health probe with nothing but std: `GET` a loopback URL and report the status.
//! The images have no shell or curl, so `HEALTHCHECK` runs the server's own binary
//! (`sandgraph-infer health`, `sandgraph health`).

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

/// `GET url` (plain `http://host:port/path`) within `timeout` for each of connect, write and
/// read; the status code of the answer.
pub fn http_status(url: &str, timeout: Duration) -> Result<u16, String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("`{url}` is not an http:// URL"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let addr = authority
        .to_socket_addrs()
        .map_err(|e| format!("`{authority}`: {e}"))?
        .next()
        .ok_or_else(|| format!("`{authority}` has no address"))?;
    let mut conn =
        TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("{addr}: {e}"))?;
    conn.set_read_timeout(Some(timeout)).ok();
    conn.set_write_timeout(Some(timeout)).ok();
    // One write: a server may answer and close as soon as it has the request line.
    let request = format!("GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n");
    conn.write_all(request.as_bytes())
        .map_err(|e| format!("{addr}: {e}"))?;
    // The status line is all that is needed; at most 64 bytes of it.
    let mut head = [0u8; 64];
    let mut got = 0;
    while got < head.len() {
        match conn.read(&mut head[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) => return Err(format!("{addr}: {e}")),
        }
        if head[..got].contains(&b'\n') {
            break;
        }
    }
    let line = String::from_utf8_lossy(&head[..got]);
    line.split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("{addr}: not an HTTP answer: {line:?}"))
}

/// The exit status of a probe command: 0 on a 2xx answer, 1 otherwise (the reason on stderr).
pub fn exit_code(url: &str) -> std::process::ExitCode {
    match http_status(url, Duration::from_secs(3)) {
        Ok(s) if (200..300).contains(&s) => std::process::ExitCode::SUCCESS,
        Ok(s) => {
            eprintln!("{url}: {s}");
            std::process::ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("{e}");
            std::process::ExitCode::from(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_status_of_a_loopback_answer_and_refuses_other_schemes() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for (i, conn) in listener.incoming().enumerate() {
                let mut conn = conn.unwrap();
                // The whole request head, then the answer.
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") && conn.read(&mut byte).unwrap_or(0) == 1 {
                    head.push(byte[0]);
                }
                let status = if i == 0 {
                    "200 OK"
                } else {
                    "503 Service Unavailable"
                };
                let _ = write!(conn, "HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n");
            }
        });
        let url = format!("http://127.0.0.1:{port}/health");
        assert_eq!(http_status(&url, Duration::from_secs(2)), Ok(200));
        assert_eq!(http_status(&url, Duration::from_secs(2)), Ok(503));
        assert!(
            http_status("https://127.0.0.1:1/", Duration::from_secs(1))
                .unwrap_err()
                .contains("not an http:// URL")
        );
    }
}
