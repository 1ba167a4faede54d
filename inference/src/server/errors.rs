//! OpenAI-style error objects: every 4xx/5xx the server sends is
//! `{"error":{"message","type","param","code"}}`, so existing clients surface our messages the
//! same way they surface OpenAI's.

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Response, StatusCode};

/// A request the server refuses, with the HTTP status and the OpenAI error fields.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{status}: {message}")]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    /// OpenAI's `type`: `invalid_request_error`, `server_error`, ...
    pub kind: &'static str,
    pub param: Option<String>,
    pub code: Option<&'static str>,
}

impl ApiError {
    pub fn invalid(message: impl Into<String>, param: Option<&str>, code: &'static str) -> Self {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            kind: "invalid_request_error",
            param: param.map(str::to_owned),
            code: Some(code),
        }
    }

    pub fn with_status(mut self, status: StatusCode) -> Self {
        self.status = status;
        self
    }

    pub fn not_found(path: &str) -> Self {
        ApiError {
            status: StatusCode::NOT_FOUND,
            message: format!(
                "no route for {path}; this server offers /health, /metrics, /v1/models, /v1/completions and /v1/chat/completions"
            ),
            kind: "invalid_request_error",
            param: None,
            code: Some("unknown_url"),
        }
    }

    /// A request for a model this server does not serve (OpenAI's 404 `model_not_found`).
    pub fn model_not_found(asked: &str, served: &[String]) -> Self {
        ApiError {
            status: StatusCode::NOT_FOUND,
            message: format!(
                "The model '{asked}' does not exist on this server; it serves {} (GET /v1/models lists them)",
                served.join(", ")
            ),
            kind: "invalid_request_error",
            param: Some("model".to_owned()),
            code: Some("model_not_found"),
        }
    }

    /// A `/v1/*` request without the server's API key (OpenAI's 401 shape).
    pub fn unauthorized() -> Self {
        ApiError {
            status: StatusCode::UNAUTHORIZED,
            message: "Incorrect or missing API key; send it as 'Authorization: Bearer <key>' (the key `sandgraph-infer serve --api-key` or SANDGRAPH_INFER_API_KEY set)".to_owned(),
            kind: "invalid_request_error",
            param: None,
            code: Some("invalid_api_key"),
        }
    }

    pub fn overloaded(message: impl Into<String>, status: StatusCode) -> Self {
        ApiError {
            status,
            message: message.into(),
            kind: "server_error",
            param: None,
            code: Some(if status == StatusCode::TOO_MANY_REQUESTS {
                "queue_full"
            } else {
                "unavailable"
            }),
        }
    }

    pub fn internal(message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message: message.into(),
            kind: "server_error",
            param: None,
            code: Some("engine_error"),
        }
    }

    pub fn body_json(&self) -> serde_json::Value {
        serde_json::json!({
            "error": {
                "message": self.message,
                "type": self.kind,
                "param": self.param,
                "code": self.code,
            }
        })
    }

    pub fn into_response(self) -> Response<Full<Bytes>> {
        let body = Full::new(Bytes::from(self.body_json().to_string()));
        let mut b = Response::builder()
            .status(self.status)
            .header("content-type", "application/json");
        // Every 429 and 503 says when to come back (RFC 9110 §10.2.3); OpenAI's clients honour
        // it in their retry loop instead of their own backoff.
        if let Some(secs) = self.retry_after_secs() {
            b = b.header("retry-after", secs.to_string());
        }
        b.body(body).expect("static headers are valid")
    }

    /// The `Retry-After` this answer carries: a full queue drains in about a second; a server
    /// still loading its model or draining needs a few.
    pub fn retry_after_secs(&self) -> Option<u64> {
        match self.status {
            StatusCode::TOO_MANY_REQUESTS => Some(1),
            StatusCode::SERVICE_UNAVAILABLE => Some(5),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_object_has_the_four_openai_fields() {
        let e = ApiError::invalid("max_tokens must be positive", Some("max_tokens"), "bad");
        let v = e.body_json();
        assert_eq!(v["error"]["message"], "max_tokens must be positive");
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert_eq!(v["error"]["param"], "max_tokens");
        assert_eq!(v["error"]["code"], "bad");
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        assert!(e.into_response().headers().get("retry-after").is_none());
    }

    #[test]
    fn every_429_and_503_says_when_to_retry() {
        for (status, secs) in [
            (StatusCode::TOO_MANY_REQUESTS, "1"),
            (StatusCode::SERVICE_UNAVAILABLE, "5"),
        ] {
            let r = ApiError::overloaded("busy", status).into_response();
            assert_eq!(r.status(), status);
            assert_eq!(r.headers()["retry-after"], secs);
        }
    }
}
