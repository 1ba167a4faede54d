//! RFC 9457 problem details: every error the API returns is `application/problem+json` with a
//! stable `type` a client can branch on, a human `detail` that names the fix, and for graph
//! documents the validator's diagnostics with line and column.

use http::StatusCode;
use serde::Serialize;

/// Prefix of every problem `type` URI; the slug after it is the stable part.
pub const TYPE_BASE: &str = "https://sandgraph.dev/problems/";

/// One located problem in a submitted document.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Located {
    pub line: usize,
    pub column: usize,
    pub message: String,
}

/// A problem; boxed so `Result<_, Problem>` stays small on the happy path.
#[derive(Debug, Clone)]
pub struct Problem(Box<ProblemBody>);

impl std::ops::Deref for Problem {
    type Target = ProblemBody;
    fn deref(&self) -> &ProblemBody {
        &self.0
    }
}

impl std::ops::DerefMut for Problem {
    fn deref_mut(&mut self) -> &mut ProblemBody {
        &mut self.0
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ProblemBody {
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<Located>,
    /// Extension members (RFC 9457 §3.2), such as the failed checks of a `/readyz` answer.
    #[serde(flatten)]
    pub extensions: serde_json::Map<String, serde_json::Value>,
    /// Seconds to wait before retrying (429/503); sent as `Retry-After` too.
    #[serde(skip)]
    pub retry_after: Option<u64>,
    /// Extra response headers (`WWW-Authenticate` from authentication).
    #[serde(skip)]
    pub headers: Vec<(http::HeaderName, String)>,
}

impl Problem {
    /// A problem of type `<TYPE_BASE><slug>`.
    pub fn new(status: StatusCode, slug: &str, detail: impl Into<String>) -> Problem {
        Problem(Box::new(ProblemBody {
            kind: format!("{TYPE_BASE}{slug}"),
            title: status.canonical_reason().unwrap_or("Error").to_owned(),
            status: status.as_u16(),
            detail: detail.into(),
            errors: Vec::new(),
            extensions: serde_json::Map::new(),
            retry_after: None,
            headers: Vec::new(),
        }))
    }

    pub fn slug(&self) -> &str {
        self.kind.strip_prefix(TYPE_BASE).unwrap_or(&self.kind)
    }

    pub fn bad_request(slug: &str, detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::BAD_REQUEST, slug, detail)
    }

    pub fn not_found(slug: &str, detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::NOT_FOUND, slug, detail)
    }

    pub fn unprocessable(slug: &str, detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::UNPROCESSABLE_ENTITY, slug, detail)
    }

    pub fn internal(detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", detail)
    }

    pub fn with_errors(mut self, errors: Vec<Located>) -> Problem {
        self.errors = errors;
        self
    }

    pub fn retry_after(mut self, seconds: u64) -> Problem {
        self.retry_after = Some(seconds);
        self
    }

    pub fn body(&self) -> String {
        serde_json::to_string(&*self.0).unwrap_or_else(|_| "{}".to_owned())
    }
}
