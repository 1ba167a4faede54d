//! One HTTP/1.1 exchange with an OpenAI-compatible endpoint, under the provider's timeouts:
//! `connect` bounds the TCP connection and TLS handshake, `read` bounds every wait for bytes
//! (the response head, then each piece of the body), so a server that stops mid-stream is
//! caught as surely as one that never answers. `https` uses rustls with the public web roots.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

/// Where requests go: parsed once from the models file's `endpoint`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// As configured, without a trailing slash (for messages).
    pub url: String,
    https: bool,
    host: String,
    port: u16,
    /// The base path, without a trailing slash (`/v1`).
    base_path: String,
}

impl Endpoint {
    /// Reads `http://host:port/base` or `https://…`; no query, fragment or credentials.
    pub fn parse(url: &str) -> Result<Endpoint, String> {
        let uri: http::Uri = url
            .parse()
            .map_err(|_| format!("`{url}` is not a URL like http://127.0.0.1:8080/v1"))?;
        let https = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => return Err(format!("`{url}`: use an http:// or https:// URL")),
        };
        let authority = uri
            .authority()
            .filter(|a| !a.host().is_empty())
            .ok_or_else(|| format!("`{url}` has no host"))?;
        if authority.as_str().contains('@') {
            return Err(format!(
                "`{url}` carries credentials; put the key in the operator's secrets and name it with apiKeySecret"
            ));
        }
        if uri.query().is_some() || url.contains('#') {
            return Err(format!("`{url}` must not carry a query or fragment"));
        }
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        Ok(Endpoint {
            url: url.trim_end_matches('/').to_owned(),
            https,
            port: authority.port_u16().unwrap_or(if https { 443 } else { 80 }),
            host,
            base_path: uri.path().trim_end_matches('/').to_owned(),
        })
    }

    /// `host:port`, the breaker's key and the `Host` header.
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    fn path(&self, tail: &str) -> String {
        format!("{}{tail}", self.base_path)
    }
}

/// Connect and read limits of one provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    pub connect: Duration,
    pub read: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(5),
            read: Duration::from_secs(120),
        }
    }
}

/// Why an exchange produced no response.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    #[error("cannot connect: {0}")]
    Connect(String),
    #[error("no connection within the connect timeout of {0:?}")]
    ConnectTimeout(Duration),
    #[error("no answer within the read timeout of {0:?}")]
    ReadTimeout(Duration),
    #[error("the exchange failed: {0}")]
    Broken(String),
}

/// Aborts the task driving the connection when the exchange is done with it.
struct ConnectionTask(tokio::task::JoinHandle<()>);

impl Drop for ConnectionTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A response whose body is read under the read timeout.
pub struct Response {
    pub status: u16,
    pub headers: http::HeaderMap,
    body: Incoming,
    read: Duration,
    _connection: ConnectionTask,
}

impl Response {
    /// The next piece of the body; `Ok(None)` at its end.
    pub async fn chunk(&mut self) -> Result<Option<Bytes>, SendError> {
        loop {
            let frame = tokio::time::timeout(self.read, self.body.frame())
                .await
                .map_err(|_| SendError::ReadTimeout(self.read))?;
            match frame {
                None => return Ok(None),
                Some(Err(e)) => return Err(SendError::Broken(e.to_string())),
                Some(Ok(f)) => {
                    if let Ok(data) = f.into_data() {
                        return Ok(Some(data));
                    }
                }
            }
        }
    }

    /// The whole body, refusing more than `limit` bytes.
    pub async fn bytes(&mut self, limit: usize) -> Result<Vec<u8>, SendError> {
        let mut out = Vec::new();
        while let Some(c) = self.chunk().await? {
            if out.len() + c.len() > limit {
                return Err(SendError::Broken(format!(
                    "the response body is larger than {limit} bytes"
                )));
            }
            out.extend_from_slice(&c);
        }
        Ok(out)
    }
}

/// An HTTP client for one endpoint.
#[derive(Clone)]
pub struct Client {
    endpoint: Endpoint,
    timeouts: Timeouts,
    tls: Option<tokio_rustls::TlsConnector>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("endpoint", &self.endpoint.url)
            .field("timeouts", &self.timeouts)
            .finish()
    }
}

impl Client {
    pub fn new(endpoint: Endpoint, timeouts: Timeouts) -> Result<Client, String> {
        let tls = if endpoint.https {
            let roots =
                crate::sandbox::egress::TlsRoots::new(&Vec::new()).map_err(|e| e.to_string())?;
            Some(tokio_rustls::TlsConnector::from(roots.client_config()))
        } else {
            None
        };
        Ok(Client {
            endpoint,
            timeouts,
            tls,
        })
    }

    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// POSTs `body` (JSON) to `<base><tail>` with `headers`; returns once the response head
    /// has arrived.
    pub async fn post_json(
        &self,
        tail: &str,
        headers: &[(http::header::HeaderName, http::HeaderValue)],
        body: Bytes,
    ) -> Result<Response, SendError> {
        let authority = self.endpoint.authority();
        let connect = async {
            let tcp =
                tokio::net::TcpStream::connect((self.endpoint.host.as_str(), self.endpoint.port))
                    .await
                    .map_err(|e| SendError::Connect(format!("{authority}: {e}")))?;
            let _ = tcp.set_nodelay(true);
            Ok::<_, SendError>(tcp)
        };
        let connect_timeout = self.timeouts.connect;
        let tcp = tokio::time::timeout(connect_timeout, connect)
            .await
            .map_err(|_| SendError::ConnectTimeout(connect_timeout))??;
        let request = hyper::Request::post(self.endpoint.path(tail))
            .header(http::header::HOST, authority.as_str())
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(http::header::ACCEPT, "application/json, text/event-stream")
            .header(http::header::USER_AGENT, "sandgraph");
        let mut request = request
            .body(Full::new(body))
            .map_err(|e| SendError::Broken(e.to_string()))?;
        for (name, value) in headers {
            request.headers_mut().insert(name.clone(), value.clone());
        }
        let (status, headers, body, connection) = match &self.tls {
            None => self.exchange(TokioIo::new(tcp), request).await?,
            Some(tls) => {
                let name = rustls::pki_types::ServerName::try_from(self.endpoint.host.clone())
                    .map_err(|e| SendError::Connect(format!("{}: {e}", self.endpoint.host)))?;
                let stream = tokio::time::timeout(connect_timeout, tls.connect(name, tcp))
                    .await
                    .map_err(|_| SendError::ConnectTimeout(connect_timeout))?
                    .map_err(|e| SendError::Connect(format!("TLS with {authority}: {e}")))?;
                self.exchange(TokioIo::new(stream), request).await?
            }
        };
        Ok(Response {
            status,
            headers,
            body,
            read: self.timeouts.read,
            _connection: connection,
        })
    }

    async fn exchange<T>(
        &self,
        io: T,
        request: hyper::Request<Full<Bytes>>,
    ) -> Result<(u16, http::HeaderMap, Incoming, ConnectionTask), SendError>
    where
        T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    {
        let read = self.timeouts.read;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(|e| SendError::Broken(e.to_string()))?;
        let task = ConnectionTask(tokio::spawn(async move {
            let _ = connection.await;
        }));
        let response = tokio::time::timeout(read, sender.send_request(request))
            .await
            .map_err(|_| SendError::ReadTimeout(read))?
            .map_err(|e| SendError::Broken(e.to_string()))?;
        let (parts, body) = response.into_parts();
        Ok((parts.status.as_u16(), parts.headers, body, task))
    }
}

/// Splits a `text/event-stream` into the `data` of each event (multi-line data joined by
/// newlines, comments and other fields skipped), across arbitrary chunk boundaries.
#[derive(Debug, Default)]
pub struct SseDecoder {
    buf: Vec<u8>,
    data: Option<String>,
}

impl SseDecoder {
    /// Feeds bytes; returns the events they completed.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<String> {
        self.buf.extend_from_slice(bytes);
        let mut events = Vec::new();
        while let Some(nl) = self.buf.iter().position(|&b| b == b'\n') {
            let mut line: Vec<u8> = self.buf.drain(..=nl).collect();
            line.pop();
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            let line = String::from_utf8_lossy(&line);
            if line.is_empty() {
                if let Some(d) = self.data.take() {
                    events.push(d);
                }
                continue;
            }
            if let Some(rest) = line.strip_prefix("data:") {
                let rest = rest.strip_prefix(' ').unwrap_or(rest);
                match &mut self.data {
                    Some(d) => {
                        d.push('\n');
                        d.push_str(rest);
                    }
                    None => self.data = Some(rest.to_owned()),
                }
            }
        }
        events
    }

    /// The event left without its closing blank line when the stream ended.
    pub fn finish(&mut self) -> Option<String> {
        self.data.take()
    }
}

/// The `Authorization` value for an API key, marked sensitive (hyper and `Debug` hide it).
pub fn bearer(key: &str) -> Result<http::HeaderValue, String> {
    let mut v = http::HeaderValue::from_str(&format!("Bearer {key}"))
        .map_err(|_| "the API key holds bytes a header cannot carry".to_owned())?;
    v.set_sensitive(true);
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse_and_refuse_credentials() {
        let e = Endpoint::parse("http://127.0.0.1:8080/v1/").unwrap();
        assert_eq!(e.authority(), "127.0.0.1:8080");
        assert_eq!(e.path("/chat/completions"), "/v1/chat/completions");
        assert_eq!(
            Endpoint::parse("https://api.example.com/v1").unwrap().port,
            443
        );
        assert!(
            Endpoint::parse("http://u:p@h/v1")
                .unwrap_err()
                .contains("credentials")
        );
        assert!(Endpoint::parse("ftp://h/v1").is_err());
        assert!(Endpoint::parse("http://h/v1?x=1").is_err());
    }

    #[test]
    fn sse_events_survive_any_split() {
        let stream = b"data: {\"a\":1}\n\n: comment\ndata: x\r\ndata: y\r\n\r\ndata: [DONE]\n\n";
        for split in 0..stream.len() {
            let mut d = SseDecoder::default();
            let mut got = d.push(&stream[..split]);
            got.extend(d.push(&stream[split..]));
            assert_eq!(got, vec!["{\"a\":1}", "x\ny", "[DONE]"], "split at {split}");
        }
    }
}
