//! Outgoing HTTP for guests, through the `wasi:http` `send_request` hook: every request is matched
//! against the effective egress rules, the host resolves the name itself and connects only to a
//! vetted public address, injects operator secrets the guest never sees, caps the response, and
//! audits each attempt. `wasi:sockets` is refused wholesale here too (`socket_check`).

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
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

use super::manifest::{EgressRule, UrlScheme, host_matches};
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
}

impl SecretStore {
    pub fn insert(&mut self, name: impl Into<String>, value: impl Into<String>) {
        self.values.insert(name.into(), value.into());
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

/// Why an address is not public, or `None` when it is.
pub fn non_public_reason(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => v4_reason(v4),
        IpAddr::V6(v6) => v6_reason(v6),
    }
}

fn v4_reason(ip: Ipv4Addr) -> Option<&'static str> {
    let o = ip.octets();
    Some(match o {
        [169, 254, 169, 254] => "cloud metadata",
        [0, ..] => "unspecified / this-network",
        [127, ..] => "loopback",
        [10, ..] => "private",
        [172, b, ..] if (16..32).contains(&b) => "private",
        [192, 168, ..] => "private",
        [169, 254, ..] => "link-local",
        [100, b, ..] if (64..128).contains(&b) => "carrier-grade NAT",
        [192, 0, 0, _] => "IETF protocol assignments",
        [192, 0, 2, _] | [198, 51, 100, _] | [203, 0, 113, _] => "documentation",
        [198, 18..=19, ..] => "benchmarking",
        [a, ..] if (224..240).contains(&a) => "multicast",
        [a, ..] if a >= 240 => "reserved / broadcast",
        _ => return None,
    })
}

fn v6_reason(ip: Ipv6Addr) -> Option<&'static str> {
    let s = ip.segments();
    if ip.is_unspecified() {
        return Some("unspecified");
    }
    if ip.is_loopback() {
        return Some("loopback");
    }
    if let Some(v4) = ip.to_ipv4_mapped() {
        // IPv4-mapped addresses are refused whatever they map to: a resolver handing
        // them out is trying to slip a v4 target past v4 rules.
        let _ = v4;
        return Some("IPv4-mapped IPv6");
    }
    Some(match s[0] {
        0 if s[1..6] == [0; 5] => "IPv4-compatible IPv6",
        0x64 if s[1] == 0xff9b => "NAT64",
        0x2002 => "6to4",
        0x2001 if s[1] == 0x0db8 => "documentation",
        0x2001 if s[1] == 0 => "Teredo",
        x if x & 0xfe00 == 0xfc00 => "unique-local",
        x if x & 0xffc0 == 0xfe80 => "link-local",
        x if x & 0xffc0 == 0xfec0 => "site-local",
        x if x & 0xff00 == 0xff00 => "multicast",
        _ => return None,
    })
}

/// Does a path glob match? `*` matches within one segment, `**` across segments.
pub fn path_matches(glob: &str, path: &str) -> bool {
    fn go(g: &[u8], p: &[u8]) -> bool {
        match g {
            [] => p.is_empty(),
            [b'/', b'*', b'*'] => {
                // `/x/**` matches `/x`, `/x/` and everything below.
                p.is_empty() || p[0] == b'/'
            }
            [b'*', b'*', rest @ ..] => (0..=p.len()).any(|i| go(rest, &p[i..])),
            [b'*', rest @ ..] => {
                let seg = p.iter().position(|&c| c == b'/').unwrap_or(p.len());
                (0..=seg).any(|i| go(rest, &p[i..]))
            }
            [c, rest @ ..] => p.first() == Some(c) && go(rest, &p[1..]),
        }
    }
    go(glob.as_bytes(), path.as_bytes())
}

/// The rule that allows a request, or the reason none does (what rule is missing).
pub fn match_rule(
    rules: &[EgressRule],
    scheme: UrlScheme,
    host: &str,
    port: u16,
    path: &str,
    method: &str,
) -> Result<usize, String> {
    let by_host: Vec<usize> = (0..rules.len())
        .filter(|&i| host_matches(&rules[i].host, host))
        .collect();
    if by_host.is_empty() {
        return Err(format!("no egress rule for host `{host}`"));
    }
    let by_origin: Vec<usize> = by_host
        .into_iter()
        .filter(|&i| {
            let r = &rules[i];
            r.scheme == scheme && r.port.unwrap_or(r.scheme.default_port()) == port
        })
        .collect();
    if by_origin.is_empty() {
        return Err(format!(
            "no egress rule for {}://{host}:{port} (scheme and port must match a rule)",
            scheme.as_str()
        ));
    }
    let by_path: Vec<usize> = by_origin
        .into_iter()
        .filter(|&i| rules[i].paths.iter().any(|g| path_matches(g, path)))
        .collect();
    if by_path.is_empty() {
        return Err(format!("no egress rule allows path `{path}` on `{host}`"));
    }
    by_path
        .iter()
        .copied()
        .find(|&i| rules[i].methods.iter().any(|m| m == method))
        .ok_or_else(|| format!("method {method} is not allowed for `{host}{path}`"))
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

/// The TLS client settings of `https` egress: the public web PKI (Mozilla's roots, as
/// webpki-roots ships them) plus the CA certificates the operator adds (an internal CA, a
/// TLS-inspecting proxy's). Built once per sandbox and shared by every call.
#[derive(Clone)]
pub struct TlsRoots(Arc<rustls::ClientConfig>);

impl std::fmt::Debug for TlsRoots {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TlsRoots")
    }
}

/// Why operator CA certificates cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsRootsError {
    #[error("CA file {path}: {reason}")]
    File { path: String, reason: String },
    #[error("CA file {path} holds no PEM `CERTIFICATE` block")]
    Empty { path: String },
    #[error("CA certificate {index} of {source_name} is not a usable trust anchor: {reason}")]
    Anchor {
        source_name: String,
        index: usize,
        reason: String,
    },
    #[error("cannot set up TLS: {0}")]
    Config(String),
}

/// CA certificates from the operator, each with where it came from (for errors).
pub type ExtraRoots = Vec<(String, rustls::pki_types::CertificateDer<'static>)>;

impl TlsRoots {
    /// The public roots plus `extra`.
    pub fn new(extra: &ExtraRoots) -> Result<TlsRoots, TlsRootsError> {
        let mut roots = rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.into(),
        };
        for (index, (source_name, der)) in extra.iter().enumerate() {
            roots.add(der.clone()).map_err(|e| TlsRootsError::Anchor {
                source_name: source_name.clone(),
                index: index + 1,
                reason: e.to_string(),
            })?;
        }
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsRootsError::Config(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
        Ok(TlsRoots(Arc::new(config)))
    }

    /// The rustls client settings (for other TLS clients of the host, such as trace export).
    pub fn client_config(&self) -> Arc<rustls::ClientConfig> {
        self.0.clone()
    }

    /// Every `CERTIFICATE` block of each PEM file, in order.
    pub fn read_pem_files(paths: &[std::path::PathBuf]) -> Result<ExtraRoots, TlsRootsError> {
        let mut roots = Vec::new();
        for path in paths {
            roots.extend(TlsRoots::read_pem_file(path)?);
        }
        Ok(roots)
    }

    /// Every `CERTIFICATE` block of a PEM file.
    pub fn read_pem_file(path: &std::path::Path) -> Result<ExtraRoots, TlsRootsError> {
        use rustls::pki_types::pem::PemObject;
        let shown = path.display().to_string();
        let bytes = std::fs::read(path).map_err(|e| TlsRootsError::File {
            path: shown.clone(),
            reason: e.to_string(),
        })?;
        let certs = rustls::pki_types::CertificateDer::pem_slice_iter(&bytes)
            .map(|c| c.map(|der| (shown.clone(), der)))
            .collect::<Result<ExtraRoots, _>>()
            .map_err(|e| TlsRootsError::File {
                path: shown.clone(),
                reason: format!("not PEM: {e}"),
            })?;
        if certs.is_empty() {
            return Err(TlsRootsError::Empty { path: shown });
        }
        Ok(certs)
    }
}

impl Default for TlsRoots {
    fn default() -> Self {
        TlsRoots::new(&Vec::new()).expect("the public roots alone always build")
    }
}

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
    let host = uri
        .host()
        .ok_or(HttpError::HttpRequestUriInvalid)?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_ascii_lowercase();
    let port = uri.port_u16().unwrap_or(scheme.default_port());
    let path = uri.path().to_string();
    let path_and_query = uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/")
        .to_string();
    let target = format!("{}://{host}:{port}{path_and_query}", scheme.as_str());

    let mut record = attempt(Capability::Egress, &method, &target);
    let deny = |mut record: EgressAttempt, capability: Capability, reason: String| {
        // Under the journal the denial is a crossing too, so `runs events` shows it in order.
        if let Some(c) = &crossings
            && let Err(e) = c.denial(&format!("{capability:?}").to_ascii_lowercase(), &target)
        {
            c.note_problem(e);
        }
        record.capability = capability;
        record.allowed = false;
        record.reason = reason;
        with_log(&log, |l| l.push(record));
        Err(HttpError::HttpRequestDenied)
    };

    let rule = match match_rule(&policy.rules, scheme, &host, port, &path, &method) {
        Ok(i) => &policy.rules[i],
        Err(reason) => return deny(record, Capability::Egress, reason),
    };

    // Inject operator secrets, overwriting anything the guest set under the same name.
    let mut secret_values = Vec::new();
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
            );
        };
        let name = http::HeaderName::from_bytes(inj.header.as_bytes())
            .map_err(|_| HttpError::HttpRequestDenied)?;
        let value = inj.format.replace("{secret}", secret);
        let mut value = HeaderValue::from_str(&value).map_err(|_| HttpError::HttpRequestDenied)?;
        value.set_sensitive(true);
        if request.headers_mut().remove(&name).is_some() {
            record
                .injected
                .push(format!("{} (overwrote the guest's value)", inj.header));
        } else {
            record.injected.push(inj.header.clone());
        }
        request.headers_mut().insert(name, value);
        secret_values.push(secret.to_string());
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
            secret_values,
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
    secret_values: Vec<String>,
    /// Which rule allowed it, for the audit record.
    rule_reason: String,
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
        secret_values,
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
        if let Some(why) = non_public_reason(*ip)
            && !policy.allow_private.contains(ip)
        {
            return deny(
                record,
                Capability::Egress,
                format!(
                    "`{host}` resolves to {ip} ({why}); only an operator allow-list entry for exactly {ip} permits it"
                ),
            );
        }
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
            let tls = tokio_rustls::TlsConnector::from(policy.tls.0.clone())
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
    // Never hand the guest a header that carries an injected secret back.
    let leaking: Vec<http::HeaderName> = parts
        .headers
        .iter()
        .filter(|(_, v)| {
            let v = String::from_utf8_lossy(v.as_bytes());
            secret_values
                .iter()
                .any(|s| !s.is_empty() && v.contains(s.as_str()))
        })
        .map(|(k, _)| k.clone())
        .collect();
    for k in leaking {
        parts.headers.remove(k);
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
    // Authorization header) would hand the injected secret to the guest in the body: every
    // occurrence is masked, byte for byte, so lengths and framing stay as the server sent them.
    let secrets: Vec<Vec<u8>> = secret_values
        .iter()
        .filter(|s| !s.is_empty())
        .map(|s| s.as_bytes().to_vec())
        .collect();
    let body = if secrets.is_empty() {
        body.boxed_unsync()
    } else {
        Masked::new(body, secrets, {
            let log = log.clone();
            move |n| with_log(&log, |l| l[index].secrets_masked = n)
        })
        .boxed_unsync()
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

/// A response body with every occurrence of the injected secrets replaced by `*` of the same
/// length, also where an occurrence spans frames: the last `longest - 1` bytes of each frame
/// wait for the next one (or the end) before they are handed on.
struct Masked<B> {
    inner: B,
    secrets: Vec<Vec<u8>>,
    /// Bytes already masked but not yet handed on (a secret may continue in the next frame).
    held: Vec<u8>,
    /// Trailers that arrived while bytes were held; handed on after them.
    trailers: Option<Frame<Bytes>>,
    ended: bool,
    masked: u32,
    on_mask: Box<dyn Fn(u32) + Send>,
}

impl<B> Masked<B> {
    fn new(inner: B, secrets: Vec<Vec<u8>>, on_mask: impl Fn(u32) + Send + 'static) -> Self {
        Masked {
            inner,
            secrets,
            held: Vec::new(),
            trailers: None,
            ended: false,
            masked: 0,
            on_mask: Box::new(on_mask),
        }
    }

    /// Masks every complete occurrence in `held`.
    fn mask(&mut self) {
        let before = self.masked;
        for secret in &self.secrets {
            let mut from = 0;
            while let Some(i) = find_bytes(&self.held[from..], secret) {
                let at = from + i;
                self.held[at..at + secret.len()].fill(b'*');
                self.masked += 1;
                from = at + secret.len();
            }
        }
        if self.masked != before {
            (self.on_mask)(self.masked);
        }
    }

    /// How many held bytes may still be the start of a secret.
    fn keep(&self) -> usize {
        let longest = self.secrets.iter().map(Vec::len).max().unwrap_or(1);
        (longest - 1).min(self.held.len())
    }
}

fn find_bytes(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || hay.len() < needle.len() {
        return None;
    }
    hay.windows(needle.len()).position(|w| w == needle)
}

impl<B> Body for Masked<B>
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
        loop {
            if this.ended {
                if !this.held.is_empty() {
                    let rest = std::mem::take(&mut this.held);
                    return Poll::Ready(Some(Ok(Frame::data(Bytes::from(rest)))));
                }
                return Poll::Ready(this.trailers.take().map(Ok));
            }
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => {
                        this.held.extend_from_slice(&data);
                        this.mask();
                        let ready = this.held.len() - this.keep();
                        if ready > 0 {
                            let out: Vec<u8> = this.held.drain(..ready).collect();
                            return Poll::Ready(Some(Ok(Frame::data(Bytes::from(out)))));
                        }
                    }
                    Err(trailers) => {
                        this.trailers = Some(trailers);
                        this.ended = true;
                    }
                },
                Poll::Ready(None) => this.ended = true,
                other => return other,
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.held.is_empty() && self.trailers.is_none() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let inner = self.inner.size_hint();
        let held = self.held.len() as u64;
        let mut hint = SizeHint::new();
        hint.set_lower(inner.lower() + held);
        if let Some(upper) = inner.upper() {
            hint.set_upper(upper + held);
        }
        hint
    }
}

/// The `wasi:sockets` address check of every call: records the attempt and refuses it.
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
        a.reason = "wasi:sockets is not granted to tools; use egress rules for HTTP".into();
        with_log(&log, |l| l.push(a));
        Box::pin(async { false })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A body of the given frames.
    struct Frames(std::collections::VecDeque<Frame<Bytes>>);

    impl Body for Frames {
        type Data = Bytes;
        type Error = HttpError;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, HttpError>>> {
            Poll::Ready(self.0.pop_front().map(Ok))
        }
    }

    #[tokio::test]
    async fn secrets_are_masked_wherever_the_frames_split_them() {
        let text = b"a=s3cret; b=s3cret; c=s3cre; token=longer-secret!".to_vec();
        let want = b"a=******; b=******; c=s3cre; token=*************!".to_vec();
        for size in 1..=text.len() {
            let mut frames: std::collections::VecDeque<Frame<Bytes>> = text
                .chunks(size)
                .map(|c| Frame::data(Bytes::copy_from_slice(c)))
                .collect();
            let mut trailers = http::HeaderMap::new();
            trailers.insert("x-trailer", HeaderValue::from_static("1"));
            frames.push_back(Frame::trailers(trailers));
            let counted = Arc::new(Mutex::new(0));
            let seen = counted.clone();
            let body = Masked::new(
                Frames(frames),
                vec![b"s3cret".to_vec(), b"longer-secret".to_vec()],
                move |n| *seen.lock().unwrap() = n,
            );
            let collected = body.collect().await.unwrap();
            assert!(
                collected.trailers().is_some(),
                "chunk size {size}: trailers lost"
            );
            assert_eq!(collected.to_bytes().to_vec(), want, "chunk size {size}");
            assert_eq!(*counted.lock().unwrap(), 3, "chunk size {size}");
        }
    }

    fn rule(host: &str, port: Option<u16>, paths: &[&str], methods: &[&str]) -> EgressRule {
        EgressRule {
            scheme: UrlScheme::Http,
            host: host.into(),
            port,
            paths: paths.iter().map(|s| s.to_string()).collect(),
            methods: methods.iter().map(|s| s.to_string()).collect(),
            inject: vec![],
        }
    }

    #[test]
    fn globs() {
        assert!(path_matches("/**", "/"));
        assert!(path_matches("/**", "/a/b"));
        assert!(path_matches("/v1/**", "/v1"));
        assert!(path_matches("/v1/**", "/v1/x/y"));
        assert!(!path_matches("/v1/**", "/v10"));
        assert!(!path_matches("/v1/**", "/v2/x"));
        assert!(path_matches("/v1/*/items", "/v1/abc/items"));
        assert!(!path_matches("/v1/*/items", "/v1/a/b/items"));
        assert!(path_matches("/exact", "/exact"));
        assert!(!path_matches("/exact", "/exact/more"));
    }

    #[test]
    fn rule_matching_names_what_is_missing() {
        let rules = vec![rule("api.test", Some(8080), &["/v1/**"], &["GET"])];
        let m = |s, h, p, path, meth| match_rule(&rules, s, h, p, path, meth);
        assert_eq!(m(UrlScheme::Http, "api.test", 8080, "/v1/x", "GET"), Ok(0));
        assert_eq!(
            m(UrlScheme::Http, "evil.test", 8080, "/v1/x", "GET"),
            Err("no egress rule for host `evil.test`".into())
        );
        assert!(
            m(UrlScheme::Https, "api.test", 8080, "/v1/x", "GET")
                .unwrap_err()
                .contains("scheme and port")
        );
        assert!(
            m(UrlScheme::Http, "api.test", 80, "/v1/x", "GET")
                .unwrap_err()
                .contains("scheme and port")
        );
        assert_eq!(
            m(UrlScheme::Http, "api.test", 8080, "/admin", "GET"),
            Err("no egress rule allows path `/admin` on `api.test`".into())
        );
        assert_eq!(
            m(UrlScheme::Http, "api.test", 8080, "/v1/x", "POST"),
            Err("method POST is not allowed for `api.test/v1/x`".into())
        );
    }

    #[test]
    fn non_public_addresses() {
        for (ip, why) in [
            ("127.0.0.1", "loopback"),
            ("10.0.0.1", "private"),
            ("172.16.5.4", "private"),
            ("192.168.1.1", "private"),
            ("169.254.169.254", "cloud metadata"),
            ("169.254.1.1", "link-local"),
            ("100.64.0.1", "carrier-grade NAT"),
            ("0.0.0.0", "unspecified / this-network"),
            ("224.0.0.1", "multicast"),
            ("255.255.255.255", "reserved / broadcast"),
            ("::", "unspecified"),
            ("::1", "loopback"),
            ("fd00::1", "unique-local"),
            ("fd00:ec2::254", "unique-local"),
            ("fe80::1", "link-local"),
            ("ff02::1", "multicast"),
            ("::ffff:10.0.0.1", "IPv4-mapped IPv6"),
            ("::ffff:8.8.8.8", "IPv4-mapped IPv6"),
            ("64:ff9b::a00:1", "NAT64"),
        ] {
            assert_eq!(non_public_reason(ip.parse().unwrap()), Some(why), "{ip}");
        }
        for ip in [
            "8.8.8.8",
            "1.1.1.1",
            "2606:4700::1111",
            "172.32.0.1",
            "100.128.0.1",
        ] {
            assert_eq!(non_public_reason(ip.parse().unwrap()), None, "{ip}");
        }
    }

    #[test]
    fn secret_store_debug_hides_values() {
        let mut s = SecretStore::default();
        s.insert("TOKEN", "hunter2");
        let d = format!("{s:?}");
        assert!(d.contains("TOKEN") && !d.contains("hunter2"), "{d}");
    }
}
