//! MCP's streamable HTTP transport, as the API serves it at `/mcp` behind its own
//! authentication and rate limits (the SDK's service does neither, and ignores the path).
//!
//! A POST body is read here first, up to the configured size: one over it is answered 413 and
//! one that is not JSON 400, each with a JSON-RPC error body a client can show (the SDK would
//! answer 415 with plain text). Sessions (`Mcp-Session-Id`), the SSE streams and cancellation
//! are the SDK's; they end when the server shuts down.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, Limited};
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use tokio_util::sync::CancellationToken;

use super::McpTools;

/// The `/mcp` endpoint: the SDK's streamable HTTP service with body checks in front.
#[derive(Clone)]
pub struct McpHttp {
    service: StreamableHttpService<McpTools, LocalSessionManager>,
    max_body: usize,
}

impl McpHttp {
    /// Serves `tools`; messages up to `max_body` bytes; streams end when `shutdown` fires.
    pub fn new(tools: McpTools, max_body: usize, shutdown: CancellationToken) -> McpHttp {
        let config = StreamableHttpServerConfig::default()
            // Callers are authenticated by bearer token before they get here, and the host is
            // reached by whatever name its Service has: the SDK's localhost-only Host check
            // (a defence for unauthenticated local servers) would refuse every pod.
            .disable_allowed_hosts()
            .with_sse_keep_alive(Some(Duration::from_secs(15)))
            .with_max_request_body_bytes(max_body)
            .with_cancellation_token(shutdown);
        let service = StreamableHttpService::new(
            move || Ok(tools.clone()),
            Arc::new(LocalSessionManager::default()),
            config,
        );
        McpHttp { service, max_body }
    }

    /// Answers one request to `/mcp`.
    pub async fn handle<B>(&self, request: Request<B>) -> Response<BoxBody<Bytes, Infallible>>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: std::error::Error + Send + Sync + 'static,
    {
        if request.method() == Method::DELETE {
            // The session ended: 204, which every client takes as success (the SDK answers
            // 202, which the Python SDK's 1.x line logs as a failed termination).
            let mut response = self.service.handle(request).await;
            if response.status() == StatusCode::ACCEPTED {
                *response.status_mut() = StatusCode::NO_CONTENT;
            }
            return response;
        }
        if request.method() != Method::POST {
            return self.service.handle(request).await;
        }
        let (parts, body) = request.into_parts();
        let body = match Limited::new(body, self.max_body).collect().await {
            Ok(b) => b.to_bytes(),
            Err(e)
                if e.downcast_ref::<http_body_util::LengthLimitError>()
                    .is_some() =>
            {
                return rpc_error(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    -32600,
                    &format!("message larger than {} bytes", self.max_body),
                );
            }
            Err(e) => {
                return rpc_error(
                    StatusCode::BAD_REQUEST,
                    -32600,
                    &format!("the request body could not be read: {e}"),
                );
            }
        };
        if let Err(e) = serde_json::from_slice::<serde::de::IgnoredAny>(&body) {
            return rpc_error(
                StatusCode::BAD_REQUEST,
                -32700,
                &format!("parse error: the message is not JSON ({e})"),
            );
        }
        self.service
            .handle(Request::from_parts(parts, Full::new(body)))
            .await
    }
}

/// A JSON-RPC error response (`id: null`: the message's id could not be read).
fn rpc_error(status: StatusCode, code: i64, message: &str) -> Response<BoxBody<Bytes, Infallible>> {
    let body = serde_json::json!({
        "jsonrpc": "2.0",
        "id": null,
        "error": { "code": code, "message": message },
    })
    .to_string();
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)).boxed())
        .expect("error responses are well formed")
}
