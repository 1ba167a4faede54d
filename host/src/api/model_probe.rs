//! Whether the configured model backend can answer, as `/readyz` reports it.
//!
//! The backend is an OpenAI-compatible inference server (`sandgraph-infer serve`, or vLLM or
//! llama.cpp's server, which answer the same way): `GET <model_url>/health` answers 200 once the
//! model is loaded and 503 while it loads. Anything else — no connection, no answer within the
//! probe timeout, another status — makes the host not ready, with the reason in the 503 problem.
//!
//! One result serves every probe for [`REUSE`]: a burst of `/readyz` calls (several kubelets, a
//! load balancer) costs the backend one request, and concurrent callers wait for the one probe in
//! flight rather than each opening a connection.

use std::time::{Duration, Instant};

use http_body_util::Empty;
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;

/// How long one probe's result answers later readiness checks.
pub const REUSE: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ModelUrlError {
    #[error("`{0}` is not a URL like http://sandgraph-infer:8081")]
    NotAUrl(String),
    #[error(
        "`{0}`: only plain http is probed (point it at the in-cluster service, not through TLS)"
    )]
    NotHttp(String),
    #[error("`{0}` has no host")]
    NoHost(String),
    #[error("`{0}` must not carry a query or credentials")]
    Extra(String),
}

/// The readiness probe of one model backend.
#[derive(Debug)]
pub struct ModelProbe {
    /// The configured base URL, as reported.
    url: String,
    /// `host:port` to connect to.
    authority: String,
    /// The health path under the base URL's path.
    path: String,
    timeout: Duration,
    last: tokio::sync::Mutex<Option<(Instant, Result<(), String>)>>,
}

impl ModelProbe {
    /// Checks `url` (a plain-http base URL) and keeps it for probing within `timeout`.
    pub fn new(url: &str, timeout: Duration) -> Result<ModelProbe, ModelUrlError> {
        let uri: http::Uri = url
            .parse()
            .map_err(|_| ModelUrlError::NotAUrl(url.to_owned()))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some(_) => return Err(ModelUrlError::NotHttp(url.to_owned())),
            None => return Err(ModelUrlError::NotAUrl(url.to_owned())),
        }
        let authority = uri
            .authority()
            .filter(|a| !a.host().is_empty())
            .ok_or_else(|| ModelUrlError::NoHost(url.to_owned()))?;
        if uri.query().is_some() || authority.as_str().contains('@') {
            return Err(ModelUrlError::Extra(url.to_owned()));
        }
        let port = authority.port_u16().unwrap_or(80);
        Ok(ModelProbe {
            url: url.trim_end_matches('/').to_owned(),
            authority: format!("{}:{port}", authority.host()),
            path: format!("{}/health", uri.path().trim_end_matches('/')),
            timeout,
            last: tokio::sync::Mutex::new(None),
        })
    }

    /// The base URL as configured (without a trailing slash).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// `Ok` when the backend answered its health check with a success status, within [`REUSE`]
    /// of now; otherwise why not, in words.
    pub async fn check(&self) -> Result<(), String> {
        let mut last = self.last.lock().await;
        if let Some((at, result)) = last.as_ref()
            && at.elapsed() < REUSE
        {
            return result.clone();
        }
        let result = match tokio::time::timeout(self.timeout, self.probe()).await {
            Ok(result) => result,
            Err(_) => Err(format!(
                "GET {}{} got no answer within {} ms",
                self.url_root(),
                self.path,
                self.timeout.as_millis()
            )),
        };
        *last = Some((Instant::now(), result.clone()));
        result
    }

    fn url_root(&self) -> String {
        format!("http://{}", self.authority)
    }

    async fn probe(&self) -> Result<(), String> {
        let target = format!("{}{}", self.url_root(), self.path);
        let stream = tokio::net::TcpStream::connect(&self.authority)
            .await
            .map_err(|e| format!("cannot connect to {}: {e}", self.authority))?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("GET {target}: {e}"))?;
        let request = hyper::Request::get(self.path.as_str())
            .header(hyper::header::HOST, self.authority.as_str())
            .header(hyper::header::USER_AGENT, "sandgraph-readyz")
            .body(Empty::<Bytes>::new())
            .map_err(|e| format!("GET {target}: {e}"))?;
        // The connection is driven here, not spawned: when the probe ends (answered, or cut off
        // by its timeout) the socket goes with it, so a backend that never answers cannot pile
        // up one open connection per probe.
        tokio::pin!(connection);
        let send = sender.send_request(request);
        tokio::pin!(send);
        let response = tokio::select! {
            biased;
            response = &mut send => response,
            // The connection ended (a server closing after its answer, or without one): what
            // it delivered, if anything, is already with the request.
            _ = &mut connection => send.await,
        }
        .map_err(|e| format!("GET {target}: {e}"))?;
        match response.status() {
            s if s.is_success() => Ok(()),
            s if s == hyper::StatusCode::SERVICE_UNAVAILABLE => Err(format!(
                "GET {target} answered 503 (the model is still loading)"
            )),
            s => Err(format!("GET {target} answered {s}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_checked_and_the_health_path_kept_under_the_base_path() {
        let t = Duration::from_secs(1);
        let p = ModelProbe::new("http://infer:8081/", t).unwrap();
        assert_eq!(p.url(), "http://infer:8081");
        assert_eq!(p.authority, "infer:8081");
        assert_eq!(p.path, "/health");
        let p = ModelProbe::new("http://gateway/models/smol", t).unwrap();
        assert_eq!(p.authority, "gateway:80");
        assert_eq!(p.path, "/models/smol/health");

        let err = |u: &str| ModelProbe::new(u, t).unwrap_err();
        assert!(matches!(err("infer:8081"), ModelUrlError::NotAUrl(_)));
        assert!(matches!(
            err("https://infer:8081"),
            ModelUrlError::NotHttp(_)
        ));
        assert!(matches!(err("not a url"), ModelUrlError::NotAUrl(_)));
        assert!(matches!(err("/health"), ModelUrlError::NotAUrl(_)));
        assert!(matches!(
            err("http://u:p@infer:8081"),
            ModelUrlError::Extra(_)
        ));
        assert!(matches!(err("http://infer/?x=1"), ModelUrlError::Extra(_)));
    }
}
