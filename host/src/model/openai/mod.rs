//! The `openai` provider: any OpenAI-compatible endpoint (`sandgraph-infer serve`, vLLM,
//! llama.cpp's server, a hosted API). Each call POSTs `/chat/completions`, streamed or whole,
//! under connect and read timeouts; 429, 5xx, lost connections and timeouts are retried with
//! exponential backoff and equal jitter, honouring `Retry-After`; a circuit breaker per
//! endpoint stops calling one that keeps failing, so the alias's fallback is used at once.
//! The API key comes from the operator's secret store: it is sent only in the
//! `Authorization` header, never logged, and masked out of anything the server says back.

pub mod backoff;
pub mod breaker;
pub mod client;

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use serde_json::Value;

use super::{ChatRequest, ChatResponse, ModelError, ModelProvider, ModelTiming, TokenSink, wire};
use backoff::{Backoff, parse_retry_after};
use breaker::CircuitBreaker;
use client::{Client, Response, SendError, SseDecoder, bearer};

/// Largest whole (non-streamed) answer read.
const MAX_ANSWER_BYTES: usize = 16 << 20;

/// An operator secret's value; `Debug` and `Display` never show it.
#[derive(Clone)]
pub struct ApiKey {
    secret: String,
    value: String,
}

impl ApiKey {
    /// The value of operator secret `secret`.
    pub fn new(secret: &str, value: &str) -> ApiKey {
        ApiKey {
            secret: secret.to_owned(),
            value: value.to_owned(),
        }
    }

    /// The secret's name (safe to show).
    pub fn secret_name(&self) -> &str {
        &self.secret
    }

    /// `text` with every occurrence of the key replaced, for errors built from what the
    /// server said.
    pub fn mask(&self, text: &str) -> String {
        if self.value.is_empty() {
            return text.to_owned();
        }
        text.replace(&self.value, "[redacted]")
    }
}

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ApiKey({}: [redacted])", self.secret)
    }
}

/// How one `openai` provider calls its endpoint.
#[derive(Debug, Clone)]
pub struct OpenAiSettings {
    pub endpoint: client::Endpoint,
    /// The model name sent to the endpoint.
    pub model: String,
    pub api_key: Option<ApiKey>,
    pub timeouts: client::Timeouts,
    /// Tries after the first one, for retryable failures.
    pub retries: u32,
    pub backoff: Backoff,
    /// Stream the answer (`stream: true`): tokens reach the sink as they arrive and the time to
    /// the first one is measured.
    pub stream: bool,
}

/// One OpenAI-compatible endpoint behind one alias.
#[derive(Debug)]
pub struct OpenAiProvider {
    name: String,
    settings: OpenAiSettings,
    client: Client,
    breaker: Arc<CircuitBreaker>,
}

/// How one attempt failed, and what that says about retrying and the endpoint's health.
struct Failure {
    error: ModelError,
    /// `Some(delay)`: try again (after `delay` when the server said so); `None`: final.
    retry: Option<Option<Duration>>,
    /// Whether the failure counts against the endpoint (no answer, 5xx).
    endpoint_failed: bool,
}

impl OpenAiProvider {
    /// A provider for `alias`; `breaker` is shared by every provider of the same endpoint.
    pub fn new(
        alias: &str,
        settings: OpenAiSettings,
        breaker: Arc<CircuitBreaker>,
    ) -> Result<OpenAiProvider, String> {
        let client = Client::new(settings.endpoint.clone(), settings.timeouts)?;
        Ok(OpenAiProvider {
            name: format!("openai:{alias}"),
            settings,
            client,
            breaker,
        })
    }

    pub fn breaker(&self) -> &Arc<CircuitBreaker> {
        &self.breaker
    }

    fn mask(&self, text: &str) -> String {
        match &self.settings.api_key {
            Some(k) => k.mask(text),
            None => text.to_owned(),
        }
    }

    fn unavailable(&self, why: impl std::fmt::Display) -> ModelError {
        ModelError::Unavailable(self.mask(&format!(
            "{} ({}): {why}",
            self.name, self.settings.endpoint.url
        )))
    }

    fn timeout(&self, why: impl std::fmt::Display) -> ModelError {
        ModelError::Timeout(self.mask(&format!(
            "{} ({}): {why}",
            self.name, self.settings.endpoint.url
        )))
    }

    fn send_failure(&self, e: SendError) -> Failure {
        let error = match &e {
            SendError::ConnectTimeout(_) | SendError::ReadTimeout(_) => self.timeout(&e),
            SendError::Connect(_) | SendError::Broken(_) => self.unavailable(&e),
        };
        Failure {
            error,
            retry: Some(None),
            endpoint_failed: true,
        }
    }

    /// One POST and its answer.
    async fn attempt(
        &self,
        body: Bytes,
        tokens: Option<&TokenSink>,
        started: Instant,
        streamed: &mut bool,
    ) -> Result<(wire::Answer, Option<Duration>), Failure> {
        let mut headers = Vec::new();
        if let Some(key) = &self.settings.api_key {
            let value = bearer(&key.value).map_err(|why| Failure {
                error: self.unavailable(format!("operator secret `{}`: {why}", key.secret)),
                retry: None,
                endpoint_failed: false,
            })?;
            headers.push((http::header::AUTHORIZATION, value));
        }
        let mut response = self
            .client
            .post_json("/chat/completions", &headers, body)
            .await
            .map_err(|e| self.send_failure(e))?;
        if response.status != 200 {
            return Err(self.status_failure(&mut response).await);
        }
        let is_sse = response
            .headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"));
        if !is_sse {
            let bytes = response
                .bytes(MAX_ANSWER_BYTES)
                .await
                .map_err(|e| self.send_failure(e))?;
            let v: Value = serde_json::from_slice(&bytes).map_err(|e| Failure {
                error: self.unavailable(format!("the answer is not JSON: {e}")),
                retry: Some(None),
                endpoint_failed: true,
            })?;
            let answer = wire::parse_completion(&v).map_err(|why| Failure {
                error: self.unavailable(format!("the answer does not fit the chat API: {why}")),
                retry: Some(None),
                endpoint_failed: true,
            })?;
            if let Some(sink) = tokens
                && !answer.content.is_empty()
            {
                sink(&answer.content);
            }
            return Ok((answer, None));
        }
        let mut decoder = SseDecoder::default();
        let mut assembler = wire::ChunkAssembler::default();
        let mut first_token = None;
        let mut done = false;
        while !done {
            let chunk = response.chunk().await.map_err(|e| self.send_failure(e))?;
            let events = match &chunk {
                Some(bytes) => decoder.push(bytes),
                None => decoder.finish().into_iter().collect(),
            };
            for data in events {
                if data.trim() == "[DONE]" {
                    done = true;
                    break;
                }
                let v: Value = serde_json::from_str(&data).map_err(|e| Failure {
                    error: self.unavailable(format!("a streamed chunk is not JSON: {e}")),
                    retry: (!*streamed).then_some(None),
                    endpoint_failed: true,
                })?;
                let added = assembler.push(&v).map_err(|why| Failure {
                    error: self.unavailable(why),
                    retry: (!*streamed).then_some(None),
                    endpoint_failed: true,
                })?;
                if !added.is_empty() {
                    first_token.get_or_insert_with(|| started.elapsed());
                    *streamed = true;
                    if let Some(sink) = tokens {
                        sink(&added);
                    }
                }
            }
            if chunk.is_none() {
                break;
            }
        }
        let answer = assembler.finish().map_err(|why| Failure {
            error: self.unavailable(why),
            retry: (!*streamed).then_some(None),
            endpoint_failed: true,
        })?;
        Ok((answer, first_token))
    }

    /// What a non-200 answer means.
    async fn status_failure(&self, response: &mut Response) -> Failure {
        let status = response.status;
        let retry_after = response
            .headers
            .get(http::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, SystemTime::now()));
        // The server's own words, when it sent an OpenAI error object (bounded, masked).
        let said = match response.bytes(64 << 10).await {
            Ok(b) => serde_json::from_slice::<Value>(&b)
                .ok()
                .and_then(|v| {
                    v.pointer("/error/message")
                        .and_then(Value::as_str)
                        .map(str::to_owned)
                })
                .unwrap_or_else(|| String::from_utf8_lossy(&b).chars().take(300).collect()),
            Err(_) => String::new(),
        };
        let said = if said.is_empty() {
            String::new()
        } else {
            format!(": {said}")
        };
        match status {
            401 | 403 => Failure {
                error: self.unavailable(format!(
                    "the endpoint refused the credentials (HTTP {status}){said}; check the operator secret {}",
                    self.settings
                        .api_key
                        .as_ref()
                        .map_or("(none is configured: set apiKeySecret)".to_owned(), |k| format!(
                            "`{}`",
                            k.secret
                        ))
                )),
                retry: None,
                endpoint_failed: false,
            },
            408 | 429 | 500..=599 => Failure {
                error: self.unavailable(format!("HTTP {status}{said}")),
                retry: Some(retry_after),
                endpoint_failed: status != 429,
            },
            400 | 413 | 422 => Failure {
                error: ModelError::InvalidRequest(
                    self.mask(&format!("{} refused the request (HTTP {status}){said}", self.name)),
                ),
                retry: None,
                endpoint_failed: false,
            },
            _ => Failure {
                error: self.unavailable(format!("HTTP {status}{said}")),
                retry: None,
                endpoint_failed: false,
            },
        }
    }
}

#[async_trait::async_trait]
impl ModelProvider for OpenAiProvider {
    fn name(&self) -> &str {
        &self.name
    }

    async fn chat(
        &self,
        request: &ChatRequest,
        tokens: Option<&TokenSink>,
    ) -> Result<ChatResponse, ModelError> {
        let started = Instant::now();
        let body = Bytes::from(
            wire::request_body(request, &self.settings.model, self.settings.stream).to_string(),
        );
        // Once text has reached the sink a retry would repeat it: such a failure is final.
        let mut streamed = false;
        let mut retry = 0u32;
        loop {
            if let Err(refused) = self.breaker.acquire() {
                return Err(self.unavailable(format!(
                    "circuit open after repeated failures; the endpoint is tried again in {} ms",
                    refused.retry_in.as_millis()
                )));
            }
            let failure = match self
                .attempt(body.clone(), tokens, started, &mut streamed)
                .await
            {
                Ok((answer, first_token)) => {
                    self.breaker.success();
                    return Ok(ChatResponse {
                        model: if answer.model.is_empty() {
                            self.settings.model.clone()
                        } else {
                            answer.model
                        },
                        provider: self.name.clone(),
                        content: answer.content,
                        tool_calls: answer.tool_calls,
                        finish_reason: answer.finish_reason.unwrap_or(super::FinishReason::Stop),
                        usage: answer.usage,
                        timing: ModelTiming {
                            total: started.elapsed(),
                            first_token,
                        },
                    });
                }
                Err(f) => f,
            };
            if failure.endpoint_failed {
                self.breaker.failure();
            } else {
                self.breaker.release();
            }
            let Some(server_delay) = failure.retry.filter(|_| !streamed) else {
                return Err(failure.error);
            };
            if retry >= self.settings.retries {
                return Err(with_attempts(failure.error, retry + 1));
            }
            let delay = match server_delay {
                Some(d) if d > self.settings.backoff.max_retry_after => {
                    return Err(self.unavailable(format!(
                        "the server asked to retry after {} s, longer than the {} s this provider waits ({})",
                        d.as_secs(),
                        self.settings.backoff.max_retry_after.as_secs(),
                        failure.error
                    )));
                }
                Some(d) => d,
                None => self.settings.backoff.delay(retry),
            };
            tracing::warn!(
                provider = %self.name,
                attempt = retry + 1,
                delay_ms = delay.as_millis() as u64,
                error = %failure.error,
                "model call failed; retrying"
            );
            tokio::time::sleep(delay).await;
            retry += 1;
        }
    }
}

/// Says how many attempts a final retryable failure took.
fn with_attempts(e: ModelError, attempts: u32) -> ModelError {
    let note = |m: String| format!("{m} (after {attempts} attempts)");
    match e {
        ModelError::Unavailable(m) => ModelError::Unavailable(note(m)),
        ModelError::Timeout(m) => ModelError::Timeout(note(m)),
        other => other,
    }
}
