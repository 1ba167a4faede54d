//! Outgoing HTTP for guests, through the `wasi:http` `send_request` hook: every request is matched
//! against the effective egress rules, the host resolves the name itself and connects only to a
//! vetted public address, injects operator secrets the guest never sees, caps the response, and
//! audits each attempt. `wasi:sockets` is refused wholesale here too (`socket_check`).
//! The pieces: `address` (which hosts and addresses), `path` (normalised paths and rule
//! matching), `mask` (keeping secrets out of responses); docs/SECURITY.md states the guarantees.

pub mod address;
pub mod mask;
pub mod path;

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::HeaderValue;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use wasmtime_wasi::sockets::SocketAddrUse;
use wasmtime_wasi_http::io::TokioIo;
use wasmtime_wasi_http::{Error as HttpError, RequestOptions, WasiBody, WasiHttpHooks};

pub use address::non_public_reason;
use address::vet_authority;
use mask::{MaskCounts, Masked, SecretMasker};
pub use path::{match_rule, path_matches};

use super::manifest::{EgressRule, UrlScheme};
use super::outcome::{Capability, EgressAttempt};
use crate::journal::crossings::{HttpPlan, StepCrossings};

/// Turns a host name into addresses. Pluggable so tests can map names to private addresses
/// without any traffic.
pub trait Resolver: Send + Sync + 'static {
    fn resolve(
        &self,
        host: &str,
        port: u16,
    ) -> Pin<Box<dyn Future<Output = io::Result<Vec<IpAddr>>> + Send>>;
}

/// The system resolver (`getaddrinfo` through tokio).
pub struct SystemResolver;

impl Resolver for SystemResolver {
    fn resolve(
        &self,
        host: &str,
        port: u16,
    ) -> Pin<Box<dyn Future<Output = io::Result<Vec<IpAddr>>> + Send>> {
        let host = host.to_string();
        Box::pin(async move {
            Ok(tokio::net::lookup_host((host.as_str(), port))
                .await?
                .map(|a| a.ip())
                .collect())
        })
    }
}

/// A fixed name → addresses table; unknown names fail to resolve.
#[derive(Default, Clone)]
pub struct StaticResolver {
    pub names: HashMap<String, Vec<IpAddr>>,
}

impl Resolver for StaticResolver {
    fn resolve(
        &self,
        host: &str,
        _port: u16,
    ) -> Pin<Box<dyn Future<Output = io::Result<Vec<IpAddr>>> + Send>> {
        let found = self.names.get(&host.to_ascii_lowercase()).cloned();
        let host = host.to_string();
        Box::pin(async move {
            found.ok_or_else(|| {
                io::Error::new(io::ErrorKind::NotFound, format!("{host}: no such name"))
            })
        })
    }
}

/// Operator secrets, by name. `Debug` never prints values.
#[derive(Default, Clone)]
pub struct SecretStore {
    values: HashMap<String, String>,
    /// Finds every stored value in responses; built on first use.
    masker: OnceLock<Option<Arc<SecretMasker>>>,
}

impl SecretStore {
    pub fn insert(&mut self, name: impl Into<String>, value: impl Into<String>) {
        self.values.insert(name.into(), value.into());
        self.masker = OnceLock::new();
    }

    /// What masks every stored value in egress responses; `None` when the store is empty.
    pub fn masker(&self) -> Option<Arc<SecretMasker>> {
        self.masker
            .get_or_init(|| {
                SecretMasker::new(self.values.values().map(|v| v.as_bytes())).map(Arc::new)
            })
            .clone()
    }
    pub fn get(&self, name: &str) -> Option<&str> {
        self.values.get(name).map(String::as_str)
    }
    pub fn values(&self) -> impl Iterator<Item = &str> {
        self.values.values().map(String::as_str)
    }
}

impl std::fmt::Debug for SecretStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut names: Vec<&String> = self.values.keys().collect();
        names.sort();
        f.debug_struct("SecretStore")
            .field("names", &names)
            .finish()
    }
}

/// The egress half of an effective grant, shared by every request of one call.
pub struct EgressPolicy {
    pub rules: Vec<EgressRule>,
    pub allow_private: Vec<IpAddr>,
    pub resolver: Arc<dyn Resolver>,
    pub secrets: Arc<SecretStore>,
    pub max_response: u64,
    pub timeout: Duration,
    /// The certificates `https` targets are verified against.
    pub tls: TlsRoots,
}

pub use crate::tls_roots::{ExtraRoots, TlsRoots, TlsRootsError};

/// The shared per-call list of attempts (egress and sockets).
pub type AttemptLog = Arc<Mutex<Vec<EgressAttempt>>>;

fn with_log<R>(log: &AttemptLog, f: impl FnOnce(&mut Vec<EgressAttempt>) -> R) -> R {
    f(&mut log.lock().unwrap_or_else(|p| p.into_inner()))
}

/// The `WasiHttpHooks` of one call.
pub struct EgressHooks {
    policy: Arc<EgressPolicy>,
    log: AttemptLog,
    /// The step's recording seam when the call runs under the journal; `None` for `tool call`.
    crossings: Option<StepCrossings>,
}

impl EgressHooks {
    pub fn new(policy: Arc<EgressPolicy>, log: AttemptLog) -> Self {
        EgressHooks {
            policy,
            log,
            crossings: None,
        }
    }

    /// Routes every allowed request through `crossings`: journaled live, or served from the
    /// journal when it holds the result.
    pub fn journaled(mut self, crossings: Option<StepCrossings>) -> Self {
        self.crossings = crossings;
        self
    }
}

type IoFuture = Box<dyn Future<Output = Result<(), HttpError>> + Send>;

impl WasiHttpHooks for EgressHooks {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        fut: Box<dyn Future<Output = Result<(), HttpError>> + Send>,
    ) -> Box<dyn Future<Output = Result<(http::Response<WasiBody>, IoFuture), HttpError>> + Send>
    {
        drop(fut);
        let policy = self.policy.clone();
        let log = self.log.clone();
        Box::new(send_vetted(
            policy,
            log,
            self.crossings.clone(),
            request,
            options,
        ))
    }
}

fn attempt(capability: Capability, method: &str, target: &str) -> EgressAttempt {
    EgressAttempt {
        capability,
        method: method.to_string(),
        target: target.to_string(),
        allowed: false,
        reason: String::new(),
        connected_to: None,
        status: None,
        bytes_out: 0,
        bytes_in: 0,
        injected: Vec::new(),
        timed_out: false,
        tls_error: None,
        secrets_masked: 0,
        masked_forms: Default::default(),
        headers_withheld: Vec::new(),
        normalised_from: None,
        rewritten: Vec::new(),
        secret_unusable: false,
    }
}

trait Stream: AsyncRead + AsyncWrite + Send + Sync + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Sync + Unpin + 'static> Stream for T {}

async fn send_vetted(
    policy: Arc<EgressPolicy>,
    log: AttemptLog,
    crossings: Option<StepCrossings>,
    mut request: http::Request<WasiBody>,
    options: Option<RequestOptions>,
) -> Result<(http::Response<WasiBody>, IoFuture), HttpError> {
    let method = request.method().as_str().to_string();
    let uri = request.uri().clone();
    let scheme = match uri.scheme_str() {
        Some("http") => UrlScheme::Http,
        Some("https") => UrlScheme::Https,
        _ => return Err(HttpError::HttpProtocolError),
    };
    let authority = uri
        .authority()
        .ok_or(HttpError::HttpRequestUriInvalid)?
        .as_str()
        .to_string();
    let raw_host = uri.host().ok_or(HttpError::HttpRequestUriInvalid)?;
    let port = uri.port_u16().unwrap_or(scheme.default_port());
    let raw_path_and_query = uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/")
        .to_string();
    // What the guest asked for, as it wrote it (for refusals that happen before normalising).
    let asked = format!("{}://{authority}{raw_path_and_query}", scheme.as_str());

    let deny = |mut record: EgressAttempt, capability: Capability, reason: String, url: &str| {
        // Under the journal the denial is a crossing too, so `runs events` shows it in order.
        if let Some(c) = &crossings
            && let Err(e) = c.denial(&format!("{capability:?}").to_ascii_lowercase(), url)
        {
            c.note_problem(e);
        }
        record.capability = capability;
        record.allowed = false;
        record.reason = reason;
        with_log(&log, |l| l.push(record));
        Err(HttpError::HttpRequestDenied)
    };

    let host = match vet_authority(&authority, raw_host) {
        Ok(h) => h,
        Err(e) => {
            let record = attempt(Capability::Egress, &method, &asked);
            return deny(record, Capability::Egress, e.to_string(), &asked);
        }
    };
    let shown_host = if host.contains(':') {
        format!("[{host}]")
    } else {
        host.clone()
    };
    let normalised = match path::normalise(&raw_path_and_query) {
        Ok(n) => n,
        Err(e) => {
            let url = format!(
                "{}://{shown_host}:{port}{raw_path_and_query}",
                scheme.as_str()
            );
            let record = attempt(Capability::Egress, &method, &url);
            return deny(record, Capability::Egress, e.to_string(), &url);
        }
    };
    let path_and_query = normalised.path_and_query.clone();
    let target = format!("{}://{shown_host}:{port}{path_and_query}", scheme.as_str());

    let mut record = attempt(Capability::Egress, &method, &target);
    if path_and_query != raw_path_and_query {
        record.normalised_from = Some(raw_path_and_query.clone());
    }

    let rule_index = match match_rule(
        &policy.rules,
        scheme,
        &host,
        port,
        &normalised.path,
        &method,
    ) {
        Ok(i) => i,
        Err(reason) => return deny(record, Capability::Egress, reason, &target),
    };
    let rule = &policy.rules[rule_index];

    // Inject operator secrets, overwriting anything the guest set under the same name.
    for inj in &rule.inject {
        let Some(secret) = policy.secrets.get(&inj.secret) else {
            record.target = inj.secret.clone();
            return deny(
                record,
                Capability::Secret,
                format!(
                    "operator secret store has no `{}` (needed for header {} to `{host}`)",
                    inj.secret, inj.header
                ),
                &target,
            );
        };
        let name = http::HeaderName::from_bytes(inj.header.as_bytes())
            .map_err(|_| HttpError::HttpRequestDenied)?;
        let value = inj.format.replace("{secret}", secret);
        let mut value = match HeaderValue::from_str(&value) {
            Ok(v) => v,
            Err(_) => {
                record.target = inj.secret.clone();
                record.secret_unusable = true;
                return deny(
                    record,
                    Capability::Secret,
                    format!(
                        "its value is not a valid value for header `{}` (control characters, line breaks or non-ASCII bytes); fix the value in the operator secret store",
                        inj.header
                    ),
                    &target,
                );
            }
        };
        value.set_sensitive(true);
        if request.headers_mut().remove(&name).is_some() {
            record
                .injected
                .push(format!("{} (overwrote the guest's value)", inj.header));
        } else {
            record.injected.push(inj.header.clone());
        }
        request.headers_mut().insert(name, value);
    }

    // The Host header names exactly the vetted authority, whatever the guest set.
    let host_header = if port == scheme.default_port() {
        shown_host.clone()
    } else {
        format!("{shown_host}:{port}")
    };
    match HeaderValue::from_str(&host_header) {
        Ok(v) => {
            request.headers_mut().insert(http::header::HOST, v);
        }
        Err(_) => return Err(HttpError::HttpRequestUriInvalid),
    }
    // With secrets to keep from the guest, every response must be one the host can read:
    // no content codings, no transfer codings but chunked, no byte ranges (a range request
    // reads a secret a few bytes at a time, each piece too short to recognise).
    let masker = policy.secrets.masker();
    if masker.is_some() {
        rewrite_for_masking(request.headers_mut(), &mut record.rewritten);
    }

    // Under the journal: serve a recorded result, or journal the intent (durably) and send the
    // request with an idempotency key derived from run, step and position.
    if let Some(c) = &crossings {
        match c.http_request(&method, &target) {
            Ok(HttpPlan::Send { idempotency_key }) => {
                let value = HeaderValue::from_str(&idempotency_key)
                    .map_err(|_| HttpError::HttpRequestDenied)?;
                request.headers_mut().insert("idempotency-key", value);
            }
            Ok(HttpPlan::Replay {
                status,
                headers,
                body,
            }) => {
                record.allowed = true;
                record.reason = "replayed from the journal".into();
                record.status = Some(status);
                record.bytes_in = body.len() as u64;
                with_log(&log, |l| l.push(record));
                return replayed_response(status, headers, body, request.into_body());
            }
            Ok(HttpPlan::ReplayFailure { message }) => {
                record.allowed = true;
                record.reason = format!("failure replayed from the journal: {message}");
                with_log(&log, |l| l.push(record));
                return Err(error_from_journal(&message));
            }
            Err(e) => {
                let message = e.to_string();
                record.allowed = true;
                record.reason = message.clone();
                with_log(&log, |l| l.push(record));
                c.note_problem(e);
                return Err(HttpError::InternalError(Some(message)));
            }
        }
    }
    let live = send_live(
        &policy,
        &log,
        request,
        options,
        record,
        LiveTarget {
            scheme,
            host,
            port,
            path_and_query,
            masker,
            private_named: !rule.host.contains('*'),
            rule_reason: format!("rule {}://{}", rule.scheme.as_str(), rule.host),
        },
    );
    let Some(c) = crossings else {
        return live.await;
    };
    journal_result(&c, &method, live.await).await
}

/// The failure as journaled: the wasi-http error code's name (`ConnectionRefused`) where it has
/// no payload, so replay hands the guest the same code; otherwise its message.
fn error_for_journal(e: &HttpError) -> String {
    // Connect and TLS I/O errors reach the guest as these codes (wasi-http's default hooks).
    match e {
        HttpError::Connect(io)
            if io.kind() != std::io::ErrorKind::AddrNotAvailable
                && !io
                    .to_string()
                    .starts_with("failed to lookup address information") =>
        {
            return "ConnectionRefused".into();
        }
        HttpError::Tls(_) => return "TlsProtocolError".into(),
        _ => {}
    }
    let name = format!("{e:?}");
    match error_from_journal(&name) {
        HttpError::InternalError(Some(_)) => e.to_string(),
        _ => name,
    }
}

/// The error a journaled failure stands for (`error_for_journal` in reverse); any other text
/// becomes an internal error carrying it.
fn error_from_journal(text: &str) -> HttpError {
    match text {
        "DnsTimeout" => HttpError::DnsTimeout,
        "DestinationNotFound" => HttpError::DestinationNotFound,
        "DestinationUnavailable" => HttpError::DestinationUnavailable,
        "DestinationIpProhibited" => HttpError::DestinationIpProhibited,
        "DestinationIpUnroutable" => HttpError::DestinationIpUnroutable,
        "ConnectionRefused" => HttpError::ConnectionRefused,
        "ConnectionTerminated" => HttpError::ConnectionTerminated,
        "ConnectionTimeout" => HttpError::ConnectionTimeout,
        "ConnectionReadTimeout" => HttpError::ConnectionReadTimeout,
        "ConnectionWriteTimeout" => HttpError::ConnectionWriteTimeout,
        "ConnectionLimitReached" => HttpError::ConnectionLimitReached,
        "TlsProtocolError" => HttpError::TlsProtocolError,
        "TlsCertificateError" => HttpError::TlsCertificateError,
        "HttpRequestDenied" => HttpError::HttpRequestDenied,
        "HttpRequestLengthRequired" => HttpError::HttpRequestLengthRequired,
        "HttpRequestMethodInvalid" => HttpError::HttpRequestMethodInvalid,
        "HttpRequestUriInvalid" => HttpError::HttpRequestUriInvalid,
        "HttpRequestUriTooLong" => HttpError::HttpRequestUriTooLong,
        "HttpResponseIncomplete" => HttpError::HttpResponseIncomplete,
        "HttpResponseTimeout" => HttpError::HttpResponseTimeout,
        "HttpUpgradeFailed" => HttpError::HttpUpgradeFailed,
        "HttpProtocolError" => HttpError::HttpProtocolError,
        "LoopDetected" => HttpError::LoopDetected,
        "ConfigurationError" => HttpError::ConfigurationError,
        "InternalError(None)" | "" => HttpError::InternalError(None),
        other => HttpError::InternalError(Some(other.to_owned())),
    }
}

/// Where a vetted request goes, as worked out by `send_vetted`.
struct LiveTarget {
    scheme: UrlScheme,
    host: String,
    port: u16,
    path_and_query: String,
    /// Masks operator secrets in the response; `None` when the store is empty.
    masker: Option<Arc<SecretMasker>>,
    /// The rule names this host (no wildcard), so an operator allowance for a non-public
    /// address it resolves to applies.
    private_named: bool,
    /// Which rule allowed it, for the audit record.
    rule_reason: String,
}

/// Request headers changed so the response can be searched for secrets: `accept-encoding`
/// forced to `identity`; `te`, `range` and `if-range` dropped. Each change is noted in `notes`.
fn rewrite_for_masking(headers: &mut http::HeaderMap, notes: &mut Vec<String>) {
    let identity = HeaderValue::from_static("identity");
    let asked: Vec<String> = headers
        .get_all(http::header::ACCEPT_ENCODING)
        .iter()
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .collect();
    if asked
        .iter()
        .any(|v| !v.trim().eq_ignore_ascii_case("identity"))
    {
        notes.push(format!(
            "accept-encoding: identity (the guest asked for `{}`)",
            asked.join(", ")
        ));
    }
    headers.insert(http::header::ACCEPT_ENCODING, identity);
    for name in [
        http::header::TE,
        http::header::RANGE,
        http::header::IF_RANGE,
    ] {
        if headers.remove(&name).is_some() {
            notes.push(format!("{name} dropped"));
        }
    }
}

/// A recorded response as the guest first saw it.
///
/// The guest may still be writing the request body it sent live (a WASI guest calls `handle`
/// first and streams the body after), so the replayed exchange consumes that body as the live
/// connection did; dropping it would fail the guest's writes with `StreamError::Closed`, a false
/// divergence that depended on how far the guest had got when the recorded answer came back.
fn replayed_response(
    status: u16,
    headers: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
    request_body: WasiBody,
) -> Result<(http::Response<WasiBody>, IoFuture), HttpError> {
    let mut builder = http::Response::builder().status(status);
    for (name, value) in headers {
        builder = builder.header(name, value);
    }
    let body = http_body_util::Full::new(Bytes::from(body))
        .map_err(|never| match never {})
        .boxed_unsync();
    let response = builder
        .body(body)
        .map_err(|e| HttpError::InternalError(Some(format!("journaled response: {e}"))))?;
    let io: IoFuture = Box::new(async move {
        let _ = request_body.collect().await;
        Ok(())
    });
    Ok((response, io))
}

/// Journals what a live request produced. The body is read whole first, so the journal holds
/// exactly the bytes the guest will see.
///
/// A failure after the request may have reached the server (no answer in time, connection cut)
/// leaves the outcome unknown. For a request that is not safe to repeat, only its intent stays
/// in the journal, so a resumed step reports `OutcomeUnknown` instead of replaying a failure
/// the server may never have produced.
async fn journal_result(
    c: &StepCrossings,
    method: &str,
    result: Result<(http::Response<WasiBody>, IoFuture), HttpError>,
) -> Result<(http::Response<WasiBody>, IoFuture), HttpError> {
    let failed = |e: HttpError| {
        let outcome_unknown = !failed_before_sending(&e)
            && !crate::journal::crossings::is_idempotent(method)
            && !c.idempotency_key_honoured();
        if !outcome_unknown && let Err(je) = c.http_failed(&error_for_journal(&e)) {
            c.note_problem(je);
        }
        Err(e)
    };
    let (response, io) = match result {
        Ok(r) => r,
        Err(e) => return failed(e),
    };
    let (parts, body) = response.into_parts();
    let bytes = match body.collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) => return failed(e),
    };
    let headers = parts
        .headers
        .iter()
        .map(|(k, v)| (k.as_str().to_owned(), v.as_bytes().to_vec()))
        .collect();
    if let Err(e) = c.http_response(parts.status.as_u16(), headers, &bytes) {
        let message = e.to_string();
        c.note_problem(e);
        return Err(HttpError::InternalError(Some(message)));
    }
    let body = http_body_util::Full::new(bytes)
        .map_err(|never| match never {})
        .boxed_unsync();
    Ok((http::Response::from_parts(parts, body), io))
}

/// Errors that prove the request never reached the remote (refused, unresolvable, not
/// connected, rejected by the host before sending).
fn failed_before_sending(e: &HttpError) -> bool {
    matches!(
        e,
        HttpError::DnsTimeout
            | HttpError::DestinationNotFound
            | HttpError::DestinationUnavailable
            | HttpError::DestinationIpProhibited
            | HttpError::DestinationIpUnroutable
            | HttpError::ConnectionRefused
            | HttpError::ConnectionTimeout
            | HttpError::ConnectionLimitReached
            | HttpError::TlsProtocolError
            | HttpError::TlsCertificateError
            | HttpError::HttpRequestDenied
            | HttpError::HttpRequestMethodInvalid
            | HttpError::HttpRequestUriInvalid
            | HttpError::HttpRequestUriTooLong
    )
}

/// Resolves, vets the addresses, connects and sends a request the rules allowed.
async fn send_live(
    policy: &Arc<EgressPolicy>,
    log: &AttemptLog,
    mut request: http::Request<WasiBody>,
    options: Option<RequestOptions>,
    mut record: EgressAttempt,
    target: LiveTarget,
) -> Result<(http::Response<WasiBody>, IoFuture), HttpError> {
    let LiveTarget {
        scheme,
        host,
        port,
        path_and_query,
        masker,
        private_named,
        rule_reason,
    } = target;
    let log = log.clone();
    let deny = |mut record: EgressAttempt, capability: Capability, reason: String| {
        record.capability = capability;
        record.allowed = false;
        record.reason = reason;
        with_log(&log, |l| l.push(record));
        Err(HttpError::HttpRequestDenied)
    };
    // Resolve ourselves and vet every address before any connection is made.
    let addrs: Vec<IpAddr> = match host.parse::<IpAddr>() {
        Ok(ip) => vec![ip],
        Err(_) => {
            match tokio::time::timeout(policy.timeout, policy.resolver.resolve(&host, port)).await {
                Ok(Ok(a)) if !a.is_empty() => a,
                Ok(Ok(_)) | Ok(Err(_)) => {
                    record.allowed = true;
                    record.reason = format!("{host} did not resolve");
                    with_log(&log, |l| l.push(record));
                    return Err(HttpError::DnsError {
                        rcode: Some("NXDOMAIN".into()),
                        info_code: None,
                    });
                }
                Err(_) => return Err(HttpError::DnsTimeout),
            }
        }
    };
    for ip in &addrs {
        let Some(why) = non_public_reason(*ip) else {
            continue;
        };
        let allowed = policy.allow_private.contains(ip);
        if allowed && private_named {
            continue;
        }
        let fix = if allowed {
            format!(
                "the operator allows {ip}, but only to rules that name it (its address or an exact host name), never to a wildcard rule"
            )
        } else {
            format!("only an operator allow-list entry for exactly {ip} permits it")
        };
        return deny(
            record,
            Capability::Egress,
            format!("`{host}` resolves to {ip} ({why}); {fix}"),
        );
    }
    let ip = addrs[0];
    record.allowed = true;
    record.reason = rule_reason;
    let index = with_log(&log, |l| {
        l.push(record);
        l.len() - 1
    });
    let update = {
        let log = log.clone();
        move |f: &dyn Fn(&mut EgressAttempt)| with_log(&log, |l| f(&mut l[index]))
    };

    let timeout = options
        .and_then(|o| o.connect_timeout)
        .map_or(policy.timeout, |t| t.min(policy.timeout));
    let addr = SocketAddr::new(ip, port);
    let tcp = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(HttpError::Connect(e)),
        Err(_) => {
            update(&|a| a.timed_out = true);
            return Err(HttpError::ConnectionTimeout);
        }
    };
    update(&|a| a.connected_to = Some(addr.to_string()));
    let stream: Box<dyn Stream> = match scheme {
        UrlScheme::Http => Box::new(tcp),
        UrlScheme::Https => {
            let name = rustls::pki_types::ServerName::try_from(host.clone())
                .map_err(|_| HttpError::TlsProtocolError)?;
            let tls = tokio_rustls::TlsConnector::from(policy.tls.client_config())
                .connect(name, tcp)
                .await
                .map_err(|e| {
                    let reason = e.to_string();
                    update(&|a| a.tls_error = Some(reason.clone()));
                    // A certificate that does not verify is its own code, so a tool (and its
                    // operator) can tell it from a broken handshake.
                    match e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
                        Some(rustls::Error::InvalidCertificate(_)) => {
                            HttpError::TlsCertificateError
                        }
                        _ => HttpError::Tls(e),
                    }
                })?;
            Box::new(tls)
        }
    };
    let (mut sender, conn) = hyper::client::conn::http1::Builder::new()
        .handshake(TokioIo::new(stream))
        .await?;
    let conn = tokio::spawn(conn);

    *request.uri_mut() = http::Uri::builder()
        .path_and_query(path_and_query.as_str())
        .build()
        .map_err(|_| HttpError::HttpRequestUriInvalid)?;
    let request = request.map(|body| Counted {
        inner: body,
        seen: 0,
        limit: None,
        on_frame: Box::new({
            let log = log.clone();
            move |n, _| with_log(&log, |l| l[index].bytes_out = n)
        }),
    });

    let first_byte = options
        .and_then(|o| o.first_byte_timeout)
        .map_or(policy.timeout, |t| t.min(policy.timeout));
    let response = match tokio::time::timeout(first_byte, sender.send_request(request)).await {
        Ok(r) => r?,
        Err(_) => {
            update(&|a| a.timed_out = true);
            return Err(HttpError::ConnectionReadTimeout);
        }
    };
    let (mut parts, incoming) = response.into_parts();
    update(&|a| a.status = Some(parts.status.as_u16()));
    if let Some(masker) = &masker {
        // Never hand the guest a header that carries a secret back, in any form masking knows.
        let leaking: Vec<http::HeaderName> = parts
            .headers
            .iter()
            .filter(|(k, v)| masker.finds(k.as_str().as_bytes()) || masker.finds(v.as_bytes()))
            .map(|(k, _)| k.clone())
            .collect();
        for k in &leaking {
            parts.headers.remove(k);
        }
        if !leaking.is_empty() {
            // A name can carry the secret too: the audit gets it masked.
            let mut names: Vec<String> = leaking
                .iter()
                .map(|k| {
                    let mut name = k.as_str().as_bytes().to_vec();
                    masker.mask(&mut name);
                    String::from_utf8_lossy(&name).into_owned()
                })
                .collect();
            names.dedup();
            update(&|a| a.headers_withheld.extend(names.iter().cloned()));
        }
        // A body the host cannot read is a body it cannot mask.
        if let Some(coding) = unreadable_coding(&parts.headers) {
            update(&|a| {
                a.allowed = false;
                a.reason = format!(
                    "the response is {coding}, which the host cannot search for secrets (it asked for `accept-encoding: identity`); the server must answer uncompressed"
                );
            });
            conn.abort();
            return Err(HttpError::HttpProtocolError);
        }
    }

    let limit = policy.max_response;
    let declared = parts
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(len) = declared
        && len > limit
    {
        update(&|a| {
            a.allowed = false;
            a.reason =
                format!("response of {len} bytes exceeds limits.max_response ({limit} bytes)");
        });
        conn.abort();
        return Err(HttpError::HttpResponseBodySize(Some(len)));
    }
    let body = Counted {
        inner: incoming.map_err(HttpError::from),
        seen: 0,
        limit: Some(limit),
        on_frame: Box::new({
            let log = log.clone();
            move |n, over| {
                with_log(&log, |l| {
                    let a = &mut l[index];
                    a.bytes_in = n;
                    if over {
                        a.allowed = false;
                        a.reason = format!("response exceeds limits.max_response ({limit} bytes)");
                    }
                })
            }
        }),
    };
    // A server that reflects the request (an echo endpoint, an error page quoting the
    // Authorization header) or stored a secret earlier would hand it to the guest in the body:
    // every recognisable occurrence is masked, byte for byte, so lengths and framing stay as
    // the server sent them.
    let body = match masker {
        None => body.boxed_unsync(),
        Some(masker) => Masked::new(body, masker, {
            let log = log.clone();
            move |counts: &MaskCounts, trailers_dropped| {
                with_log(&log, |l| {
                    let a = &mut l[index];
                    a.secrets_masked = counts.values().sum();
                    a.masked_forms = counts
                        .iter()
                        .map(|(f, n)| (f.as_str().to_string(), *n))
                        .collect();
                    if trailers_dropped && !a.headers_withheld.iter().any(|h| h == "trailers") {
                        a.headers_withheld.push("trailers".into());
                    }
                })
            }
        })
        .boxed_unsync(),
    };
    let response = http::Response::from_parts(parts, body);
    let io: IoFuture = Box::new(async move {
        match conn.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(HttpError::from(e)),
            Err(_) => Err(HttpError::ConnectionTerminated),
        }
    });
    Ok((response, io))
}

/// The content or transfer coding of a response the host could not search for secrets
/// (`gzip`, `br`, a transfer coding other than `chunked`), or `None`.
fn unreadable_coding(headers: &http::HeaderMap) -> Option<String> {
    for v in headers.get_all(http::header::CONTENT_ENCODING) {
        let v = String::from_utf8_lossy(v.as_bytes());
        for coding in v.split(',').map(str::trim).filter(|c| !c.is_empty()) {
            if !coding.eq_ignore_ascii_case("identity") {
                return Some(format!("`content-encoding: {coding}`"));
            }
        }
    }
    for v in headers.get_all(http::header::TRANSFER_ENCODING) {
        let v = String::from_utf8_lossy(v.as_bytes());
        for coding in v.split(',').map(str::trim).filter(|c| !c.is_empty()) {
            if !coding.eq_ignore_ascii_case("chunked") {
                return Some(format!("`transfer-encoding: {coding}`"));
            }
        }
    }
    None
}

/// A body that counts bytes as they pass and fails once past `limit`.
struct Counted<B> {
    inner: B,
    seen: u64,
    limit: Option<u64>,
    on_frame: Box<dyn Fn(u64, bool) + Send>,
}

impl<B> Body for Counted<B>
where
    B: Body<Data = Bytes, Error = HttpError> + Unpin,
{
    type Data = Bytes;
    type Error = HttpError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, HttpError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.seen += data.len() as u64;
                    let over = this.limit.is_some_and(|l| this.seen > l);
                    (this.on_frame)(this.seen, over);
                    if over {
                        return Poll::Ready(Some(Err(HttpError::HttpResponseBodySize(Some(
                            this.seen,
                        )))));
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            other => other,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The `wasi:sockets` address check of every call: records each use and refuses every address
/// a socket would reach. Before a `connect` or `send` on an unbound socket wasmtime first
/// checks the implicit bind to the unspecified address and port 0; that check alone is let
/// through (it binds nothing, and an explicit bind there can still reach nothing: listen,
/// accept, connect, send and receive are all checked), so the refusal the guest gets, and the
/// audit, name the address it was trying to reach.
pub fn socket_check(
    log: AttemptLog,
) -> impl Fn(SocketAddr, SocketAddrUse) -> Pin<Box<dyn Future<Output = bool> + Send + Sync>>
+ Send
+ Sync
+ 'static {
    move |addr, usage| {
        let mut a = attempt(
            Capability::Sockets,
            &format!("{usage:?}"),
            &addr.to_string(),
        );
        let implicit_bind = matches!(usage, SocketAddrUse::TcpBind | SocketAddrUse::UdpBind)
            && addr.ip().is_unspecified()
            && addr.port() == 0;
        if implicit_bind {
            a.allowed = true;
            a.reason = "binding an ephemeral port on the unspecified address; every address the socket could reach is still refused".into();
        } else {
            a.reason = "wasi:sockets is not granted to tools; use egress rules for HTTP".into();
        }
        with_log(&log, |l| l.push(a));
        Box::pin(async move { implicit_bind })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_store_debug_hides_values() {
        let mut s = SecretStore::default();
        s.insert("TOKEN", "hunter2");
        let d = format!("{s:?}");
        assert!(d.contains("TOKEN") && !d.contains("hunter2"), "{d}");
    }

    #[test]
    fn requests_are_rewritten_so_responses_stay_readable() {
        let mut h = http::HeaderMap::new();
        h.insert("accept-encoding", HeaderValue::from_static("gzip, br"));
        h.insert("range", HeaderValue::from_static("bytes=0-3"));
        h.insert("te", HeaderValue::from_static("gzip"));
        let mut notes = Vec::new();
        rewrite_for_masking(&mut h, &mut notes);
        assert_eq!(h.get("accept-encoding").unwrap(), "identity");
        assert!(h.get("range").is_none() && h.get("te").is_none());
        assert_eq!(
            notes,
            [
                "accept-encoding: identity (the guest asked for `gzip, br`)",
                "te dropped",
                "range dropped"
            ]
        );
        let coded = |k: &'static str, v: &'static str| {
            let mut h = http::HeaderMap::new();
            h.insert(k, HeaderValue::from_static(v));
            unreadable_coding(&h)
        };
        assert_eq!(
            coded("content-encoding", "gzip").as_deref(),
            Some("`content-encoding: gzip`")
        );
        assert_eq!(
            coded("content-encoding", "identity, br").as_deref(),
            Some("`content-encoding: br`")
        );
        assert_eq!(
            coded("transfer-encoding", "gzip, chunked").as_deref(),
            Some("`transfer-encoding: gzip`")
        );
        assert_eq!(coded("transfer-encoding", "chunked"), None);
        assert_eq!(coded("content-encoding", "identity"), None);
    }
}
