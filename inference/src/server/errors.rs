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
        Response::builder()
            .status(self.status)
            .header("content-type", "application/json")
            .body(body)
            .expect("static headers are valid")
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
    }
}
