//! MCP over stdio: one JSON-RPC message per line on stdin and stdout (stderr is for logs).
//!
//! The SDK's own line transport drops a line that is not JSON, or longer than its cap, without
//! a word, leaving the client waiting for an answer. Lines are framed here instead: a line over
//! [`MAX_LINE`] bytes is skipped to its end and answered with an invalid-request error, a line
//! that is not JSON with a parse error (JSON-RPC's -32700), both with `id: null` as JSON-RPC
//! says when the id cannot be read; every other line goes on to the SDK, which answers
//! malformed requests and unknown methods itself.

use rmcp::ServiceExt;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;

use super::McpTools;

/// The longest message accepted, in bytes.
pub const MAX_LINE: usize = 4 << 20;

/// Serves MCP on `input`/`output` until the client closes its end (or the session fails).
pub async fn serve(
    tools: McpTools,
    input: impl AsyncRead + Send + Unpin + 'static,
    output: impl AsyncWrite + Send + Unpin + 'static,
) -> Result<(), String> {
    // Lines for the SDK, and the SDK's answers, through in-process pipes.
    let (sdk_in, mut to_sdk) = tokio::io::duplex(64 << 10);
    let (from_sdk, sdk_out) = tokio::io::duplex(64 << 10);
    let (errors_tx, errors_rx) = mpsc::unbounded_channel::<String>();
    let reader = tokio::spawn(async move {
        let mut input = BufReader::with_capacity(64 << 10, input);
        loop {
            match next_line(&mut input).await {
                Ok(Line::End) => break,
                Ok(Line::TooLong) => {
                    let _ = errors_tx.send(error_line(
                        -32600,
                        &format!("message larger than {MAX_LINE} bytes; nothing of it was read"),
                    ));
                }
                Ok(Line::Text(line)) => {
                    if line.iter().all(u8::is_ascii_whitespace) {
                        continue;
                    }
                    if let Err(e) = serde_json::from_slice::<serde::de::IgnoredAny>(&line) {
                        let _ = errors_tx.send(error_line(
                            -32700,
                            &format!("parse error: the message is not JSON ({e})"),
                        ));
                        continue;
                    }
                    if to_sdk.write_all(&line).await.is_err()
                        || to_sdk.write_all(b"\n").await.is_err()
                    {
                        break;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "reading MCP messages from stdin failed");
                    break;
                }
            }
        }
        // Closing the SDK's input ends the session.
        let _ = to_sdk.shutdown().await;
    });
    let writer = tokio::spawn(write_lines(from_sdk, errors_rx, output));
    let running = tools
        .serve((sdk_in, sdk_out))
        .await
        .map_err(|e| format!("the MCP session did not start: {e}"))?;
    let quit = running.waiting().await;
    reader.abort();
    let _ = writer.await;
    quit.map(|_| ())
        .map_err(|e| format!("the MCP session ended abnormally: {e}"))
}

/// Copies the SDK's lines and the framing errors onto `output`, whole lines at a time.
async fn write_lines(
    from_sdk: impl AsyncRead + Unpin,
    mut errors: mpsc::UnboundedReceiver<String>,
    mut output: impl AsyncWrite + Unpin,
) {
    let mut lines = BufReader::new(from_sdk).lines();
    let mut errors_open = true;
    loop {
        let line = tokio::select! {
            l = lines.next_line() => match l {
                Ok(Some(l)) => l,
                _ => break,
            },
            e = errors.recv(), if errors_open => match e {
                Some(e) => e,
                None => { errors_open = false; continue; }
            },
        };
        if output.write_all(line.as_bytes()).await.is_err()
            || output.write_all(b"\n").await.is_err()
            || output.flush().await.is_err()
        {
            break;
        }
    }
}

/// A JSON-RPC error response to a message whose id could not be read.
fn error_line(code: i64, message: &str) -> String {
    serde_json::json!({
        "jsonrpc": "2.0",
        "id": null,
        "error": { "code": code, "message": message },
    })
    .to_string()
}

enum Line {
    Text(Vec<u8>),
    TooLong,
    End,
}

/// The next line of `input` without its end, or `TooLong` (the line skipped to its end).
async fn next_line(input: &mut (impl AsyncBufReadExt + Unpin)) -> std::io::Result<Line> {
    let mut line = Vec::new();
    let mut too_long = false;
    loop {
        let buf = input.fill_buf().await?;
        if buf.is_empty() {
            return Ok(match (too_long, line.is_empty()) {
                (true, _) => Line::TooLong,
                (false, true) => Line::End,
                (false, false) => Line::Text(line),
            });
        }
        let (chunk, done) = match buf.iter().position(|b| *b == b'\n') {
            Some(i) => (&buf[..i], Some(i + 1)),
            None => (buf, None),
        };
        if !too_long {
            if line.len() + chunk.len() > MAX_LINE {
                too_long = true;
                line = Vec::new();
            } else {
                line.extend_from_slice(chunk);
            }
        }
        let used = done.unwrap_or(buf.len());
        input.consume(used);
        if done.is_some() {
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            return Ok(if too_long {
                Line::TooLong
            } else {
                Line::Text(line)
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn lines(input: &[u8]) -> Vec<String> {
        let mut r = BufReader::with_capacity(7, input);
        let mut out = Vec::new();
        loop {
            match next_line(&mut r).await.unwrap() {
                Line::End => return out,
                Line::TooLong => out.push("<too long>".into()),
                Line::Text(t) => out.push(String::from_utf8(t).unwrap()),
            }
        }
    }

    #[tokio::test]
    async fn lines_are_framed_and_an_oversized_one_is_skipped_to_its_end() {
        let big = "x".repeat(MAX_LINE + 1);
        let input = format!("{{\"a\":1}}\r\n\n{big}\nafter\nlast");
        assert_eq!(
            lines(input.as_bytes()).await,
            vec!["{\"a\":1}", "", "<too long>", "after", "last"]
        );
        let exact = "y".repeat(MAX_LINE);
        assert_eq!(lines(format!("{exact}\n").as_bytes()).await, vec![exact]);
    }
}
