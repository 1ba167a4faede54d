//! OpenTelemetry trace export for `sandgraph serve` (on when `otlp_endpoint` is set): one span
//! per run, step attempt, tool call and egress request, sent over OTLP/HTTP (protobuf).
//! Spans are rebuilt from what the host already records (journal appends, the sandbox's audit
//! record of each call) instead of threading tracing spans through wasmtime's async calls.
//!
//! Timing: `run` and `step` spans open and close when their journal events are appended;
//! `tool_call` ends when the sandbox reports the call and starts its measured duration earlier;
//! `egress` spans take their times from the journaled `HttpIntent` (start) and `HttpResponse`
//! or `HttpFailed` (end) crossings, matched by method and URL; a denial is an instant at its
//! `Denial` crossing. A request served from the journal (a resumed attempt) and a refused socket
//! leave no crossing of their own and are an instant at the call's end. Attributes carry ids,
//! names, digests, outcomes and sizes, never a body, a header value or a URL's query (where
//! callers put tokens).
//!
//! A run's trace id is its run id (both are 16 bytes, written as 32 hex digits): an operator
//! finds a run's trace by the id the API returned, and a run resumed after a restart, in this
//! process or another, continues the same trace with a new `run` span marked resumed.

use std::cell::Cell;
use std::collections::{HashMap, VecDeque};
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use opentelemetry::trace::{
    SpanId, Status, TraceContextExt, TraceId, Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_http::{Bytes, HttpClient, HttpError, Request, Response};
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{IdGenerator, RandomIdGenerator, SdkTracer, SdkTracerProvider};

use crate::journal::{Crossing, Event, RunId};
use crate::sandbox::outcome::AuditRecord;

/// The OTLP/HTTP path for traces, appended to the configured endpoint.
pub const TRACES_PATH: &str = "/v1/traces";

/// How long one export request may take.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// Largest collector response read back.
const MAX_RESPONSE: u64 = 4 << 20;

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error(
        "otlp_endpoint `{endpoint}`: {reason}; give the collector's OTLP/HTTP base URL, e.g. http://127.0.0.1:4318"
    )]
    Endpoint { endpoint: String, reason: String },
    #[error("cannot build the OTLP exporter: {0}")]
    Exporter(String),
    #[error("otlp_ca: {0}")]
    Tls(String),
}

/// Checks an `otlp_endpoint` value: an `http://` or `https://host[:port][/base]` URL.
pub fn check_endpoint(endpoint: &str) -> Result<http::Uri, TelemetryError> {
    let err = |reason: &str| TelemetryError::Endpoint {
        endpoint: endpoint.to_owned(),
        reason: reason.to_owned(),
    };
    let uri: http::Uri = endpoint.parse().map_err(|_| err("not a URL"))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        _ => return Err(err("the URL must start with http:// or https://")),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(err("the URL has no host"));
    }
    if uri.query().is_some() {
        return Err(err("the URL must not have a query"));
    }
    if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
        return Err(err(
            "the URL must not carry credentials; send them as otlp_headers",
        ));
    }
    Ok(uri)
}

/// Headers sent with every export (a collector's API key, a tenant id), parsed from the
/// `OTEL_EXPORTER_OTLP_HEADERS` format: `name=value` pairs separated by commas, values
/// percent-decoded. Values are credentials: `Debug` shows the names only.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct ExportHeaders(pub Vec<(String, String)>);

impl std::fmt::Debug for ExportHeaders {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.0.iter().map(|(k, _)| format!("{k}=<redacted>")))
            .finish()
    }
}

impl ExportHeaders {
    pub fn parse(text: &str) -> Result<ExportHeaders, String> {
        let mut out = Vec::new();
        for pair in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let Some((name, value)) = pair.split_once('=') else {
                let shown = pair.chars().take(40).collect::<String>();
                return Err(format!(
                    "`{shown}` is not name=value (pairs are separated by commas)"
                ));
            };
            let name = name.trim().to_ascii_lowercase();
            http::HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| format!("`{name}` is not a header name"))?;
            if matches!(
                name.as_str(),
                "host" | "content-length" | "content-type" | "connection" | "transfer-encoding"
            ) {
                return Err(format!("`{name}` is set by the exporter itself"));
            }
            let value = percent_encoding::percent_decode_str(value.trim())
                .decode_utf8()
                .map_err(|_| format!("the value of `{name}` is not UTF-8 once percent-decoded"))?
                .into_owned();
            http::HeaderValue::from_str(&value).map_err(|_| {
                format!("the value of `{name}` has characters a header cannot carry")
            })?;
            out.push((name, value));
        }
        Ok(ExportHeaders(out))
    }
}

/// The exporter's transport: one blocking HTTP/1.1 POST per batch over TCP, with TLS for
/// `https` endpoints (the public roots plus the operator's CA file). It runs on the batch
/// processor's own thread, never on a tokio worker.
#[derive(Debug)]
struct Transport {
    timeout: Duration,
    tls: crate::sandbox::egress::TlsRoots,
}

#[async_trait::async_trait]
impl HttpClient for Transport {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        post(&request, self.timeout, &self.tls)
    }
}

fn post(
    request: &Request<Bytes>,
    timeout: Duration,
    tls: &crate::sandbox::egress::TlsRoots,
) -> Result<Response<Bytes>, HttpError> {
    let uri = request.uri();
    let host = uri.host().ok_or("the export URL has no host")?;
    let https = uri.scheme_str() == Some("https");
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    let mut last = None;
    let mut stream = None;
    for addr in (host, port).to_socket_addrs()? {
        match TcpStream::connect_timeout(&addr, timeout) {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) => last = Some(e),
        }
    }
    let stream = match (stream, last) {
        (Some(s), _) => s,
        (None, Some(e)) => return Err(e.into()),
        (None, None) => return Err(format!("{host} resolves to no address").into()),
    };
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let mut head = format!(
        "{} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nContent-Length: {}\r\n",
        request.method(),
        uri.authority().map_or(host, |a| a.as_str()),
        request.body().len()
    );
    for (name, value) in request.headers() {
        if let Ok(v) = value.to_str() {
            head.push_str(&format!("{name}: {v}\r\n"));
        }
    }
    head.push_str("\r\n");
    let exchange = |mut s: Box<dyn ReadWrite>| -> Result<Response<Bytes>, HttpError> {
        s.write_all(head.as_bytes())?;
        s.write_all(request.body())?;
        s.flush()?;
        let mut raw = Vec::new();
        match s.take(MAX_RESPONSE).read_to_end(&mut raw) {
            Ok(_) => {}
            // A TLS peer that closes without close_notify after a complete response (common
            // with `Connection: close`) has still answered.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && complete(&raw) => {}
            Err(e) => return Err(e.into()),
        }
        parse_response(&raw)
    };
    if !https {
        return exchange(Box::new(stream));
    }
    // An IP literal is checked against the certificate's IP addresses, a name by SNI + DNS names.
    let name = rustls::pki_types::ServerName::try_from(host.trim_matches(['[', ']']).to_owned())
        .map_err(|e| format!("{host}: {e}"))?;
    let conn = rustls::ClientConnection::new(tls.client_config(), name)?;
    exchange(Box::new(rustls::StreamOwned::new(conn, stream)))
}

/// Whether `raw` holds a whole response: its head and, when it declares one, the full
/// Content-Length body.
fn complete(raw: &[u8]) -> bool {
    let Some(split) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
        return false;
    };
    let head = String::from_utf8_lossy(&raw[..split]).to_ascii_lowercase();
    let length = head.lines().find_map(|l| {
        l.strip_prefix("content-length:")
            .and_then(|v| v.trim().parse::<usize>().ok())
    });
    match length {
        Some(n) => raw.len() >= split + 4 + n,
        None => false,
    }
}

trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

fn parse_response(raw: &[u8]) -> Result<Response<Bytes>, HttpError> {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("the collector's response has no complete head")?;
    let head = std::str::from_utf8(&raw[..split])?;
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or("the collector's response has no status line")?;
    let mut builder = Response::builder().status(status);
    let mut chunked = false;
    for line in lines {
        if let Some((k, v)) = line.split_once(':') {
            let (k, v) = (k.trim(), v.trim());
            chunked |= k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked");
            builder = builder.header(k, v);
        }
    }
    let body = &raw[split + 4..];
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_vec()
    };
    Ok(builder.body(Bytes::from(body))?)
}

/// The data of a chunked body (trailers ignored; a cut-off body yields what arrived).
fn dechunk(mut body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = body.windows(2).position(|w| w == b"\r\n") {
        let size = std::str::from_utf8(&body[..eol])
            .ok()
            .and_then(|s| usize::from_str_radix(s.split(';').next()?.trim(), 16).ok());
        let Some(size) = size.filter(|&n| n > 0) else {
            break;
        };
        let data = &body[eol + 2..];
        out.extend_from_slice(&data[..size.min(data.len())]);
        body = data.get(size + 2..).unwrap_or_default();
    }
    out
}

/// Times of one outbound request, from its journaled crossings.
struct HttpTiming {
    method: String,
    uri: String,
    start: SystemTime,
    end: Option<SystemTime>,
}

struct LiveStep {
    cx: Context,
    http: Vec<HttpTiming>,
    /// (capability, when) of each journaled denial.
    denials: VecDeque<(String, SystemTime)>,
}

struct LiveRun {
    cx: Context,
    steps: HashMap<(String, u32), LiveStep>,
}

thread_local! {
    /// The trace id the next root span started on this thread takes (see [`RunTraceIds`]).
    static NEXT_TRACE_ID: Cell<Option<TraceId>> = const { Cell::new(None) };
}

/// Random ids, except that a `run` span's trace id is its run id: [`Telemetry::run_span`] sets it
/// on the thread right before starting the span, which asks for a trace id synchronously.
#[derive(Debug, Default)]
struct RunTraceIds(RandomIdGenerator);

impl IdGenerator for RunTraceIds {
    fn new_trace_id(&self) -> TraceId {
        NEXT_TRACE_ID
            .with(Cell::take)
            .unwrap_or_else(|| self.0.new_trace_id())
    }

    fn new_span_id(&self) -> SpanId {
        self.0.new_span_id()
    }
}

/// The trace id of `run`'s spans.
pub fn trace_id(run: RunId) -> TraceId {
    TraceId::from_bytes(run.0)
}

/// The trace exporter and the spans still open.
pub struct Telemetry {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
    live: Mutex<HashMap<RunId, LiveRun>>,
}

impl Telemetry {
    /// Starts exporting to `endpoint` + [`TRACES_PATH`] under `service_name`, sending `headers`
    /// with every export and verifying an `https` collector against `tls`.
    pub fn start(
        endpoint: &str,
        service_name: &str,
        headers: &ExportHeaders,
        tls: crate::sandbox::egress::TlsRoots,
    ) -> Result<Telemetry, TelemetryError> {
        check_endpoint(endpoint)?;
        let url = format!("{}{TRACES_PATH}", endpoint.trim_end_matches('/'));
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_http_client(Transport {
                timeout: EXPORT_TIMEOUT,
                tls,
            })
            .with_headers(headers.0.iter().cloned().collect())
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(url)
            .with_timeout(EXPORT_TIMEOUT)
            .build()
            .map_err(|e| TelemetryError::Exporter(e.to_string()))?;
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_id_generator(RunTraceIds::default())
            .with_resource(
                Resource::builder_empty()
                    .with_service_name(service_name.to_owned())
                    .build(),
            )
            .build();
        let tracer = provider.tracer("sandgraph");
        Ok(Telemetry {
            provider,
            tracer,
            live: Mutex::default(),
        })
    }

    fn live(&self) -> std::sync::MutexGuard<'_, HashMap<RunId, LiveRun>> {
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn child(
        &self,
        name: &'static str,
        parent: &Context,
        start: SystemTime,
        attrs: Vec<KeyValue>,
    ) -> Context {
        let span = self
            .tracer
            .span_builder(name)
            .with_start_time(start)
            .with_attributes(attrs)
            .start_with_context(&self.tracer, parent);
        parent.with_span(span)
    }

    /// A root `run` span in the trace whose id is the run id.
    fn run_span(&self, run: RunId, start: SystemTime, attrs: Vec<KeyValue>) -> Context {
        NEXT_TRACE_ID.with(|next| next.set(Some(trace_id(run))));
        let cx = self.child("run", &Context::new(), start, attrs);
        // Unused if the span was not sampled; never let it leak into another root.
        NEXT_TRACE_ID.with(Cell::take);
        cx
    }

    /// The open span of `run`, opened now for a run this process did not create (resumed).
    fn run_entry<'a>(&self, live: &'a mut HashMap<RunId, LiveRun>, run: RunId) -> &'a mut LiveRun {
        live.entry(run).or_insert_with(|| LiveRun {
            cx: self.run_span(
                run,
                SystemTime::now(),
                vec![
                    KeyValue::new("sandgraph.run.id", run.to_string()),
                    KeyValue::new("sandgraph.run.resumed", true),
                ],
            ),
            steps: HashMap::new(),
        })
    }

    /// The journal's append hook: opens and closes run and step spans, times egress requests.
    pub fn on_append(&self, run: RunId, event: &Event) {
        let now = SystemTime::now();
        let mut live = self.live();
        match event {
            Event::RunCreated {
                graph_name,
                graph_digest,
                ..
            } => {
                let cx = self.run_span(
                    run,
                    now,
                    vec![
                        KeyValue::new("sandgraph.run.id", run.to_string()),
                        KeyValue::new("sandgraph.graph.name", graph_name.clone()),
                        KeyValue::new("sandgraph.graph.digest", graph_digest.clone()),
                    ],
                );
                live.insert(
                    run,
                    LiveRun {
                        cx,
                        steps: HashMap::new(),
                    },
                );
            }
            Event::StepStarted { step, attempt } => {
                let r = self.run_entry(&mut live, run);
                let node = step.split('#').next().unwrap_or(step).to_owned();
                let cx = self.child(
                    "step",
                    &r.cx,
                    now,
                    vec![
                        KeyValue::new("sandgraph.run.id", run.to_string()),
                        KeyValue::new("sandgraph.step.id", step.clone()),
                        KeyValue::new("sandgraph.node", node),
                        KeyValue::new("sandgraph.step.attempt", i64::from(*attempt)),
                    ],
                );
                r.steps.insert(
                    (step.clone(), *attempt),
                    LiveStep {
                        cx,
                        http: Vec::new(),
                        denials: VecDeque::new(),
                    },
                );
            }
            Event::Crossing {
                step,
                attempt,
                crossing,
            } => {
                let Some(s) = live
                    .get_mut(&run)
                    .and_then(|r| r.steps.get_mut(&(step.clone(), *attempt)))
                else {
                    return;
                };
                match crossing {
                    Crossing::HttpIntent { method, uri, .. } => s.http.push(HttpTiming {
                        method: method.clone(),
                        uri: uri.clone(),
                        start: now,
                        end: None,
                    }),
                    Crossing::HttpResponse { .. } | Crossing::HttpFailed { .. } => {
                        if let Some(t) = s.http.iter_mut().rev().find(|t| t.end.is_none()) {
                            t.end = Some(now);
                        }
                    }
                    Crossing::Denial { capability, .. } => {
                        s.denials.push_back((capability.clone(), now))
                    }
                    _ => {}
                }
            }
            Event::StepCompleted { step, attempt, .. } => {
                if let Some(s) = live
                    .get_mut(&run)
                    .and_then(|r| r.steps.remove(&(step.clone(), *attempt)))
                {
                    let span = s.cx.span();
                    span.set_attribute(KeyValue::new("sandgraph.step.outcome", "ok"));
                    span.set_status(Status::Ok);
                    span.end_with_timestamp(now);
                }
            }
            Event::StepFailed {
                step,
                attempt,
                kind,
                retry_in_ms,
                ..
            } => {
                if let Some(s) = live
                    .get_mut(&run)
                    .and_then(|r| r.steps.remove(&(step.clone(), *attempt)))
                {
                    let span = s.cx.span();
                    span.set_attribute(KeyValue::new("sandgraph.step.outcome", kind.clone()));
                    if let Some(ms) = retry_in_ms {
                        span.set_attribute(KeyValue::new("sandgraph.step.retry_in_ms", *ms as i64));
                    }
                    span.set_status(Status::error(kind.clone()));
                    span.end_with_timestamp(now);
                }
            }
            Event::RunFinished { status, .. } => {
                if let Some(r) = live.remove(&run) {
                    end_run(r, status.as_str(), now);
                }
            }
            Event::StepScheduled { .. }
            | Event::StepAwaitingApproval { .. }
            | Event::StepApproval { .. }
            | Event::StepAudit { .. }
            | Event::WorkspaceSnapshot { .. } => {}
        }
    }

    /// The engine's call observer: one `tool_call` span under the step attempt, one `egress`
    /// span under it per outbound request or socket use.
    pub fn on_call(&self, run: RunId, step: &str, attempt: u32, audit: &AuditRecord) {
        let end = SystemTime::now();
        let start = end
            .checked_sub(Duration::from_micros(audit.duration_us))
            .unwrap_or(end);
        let mut live = self.live();
        let Some(s) = live
            .get_mut(&run)
            .and_then(|r| r.steps.get_mut(&(step.to_owned(), attempt)))
        else {
            return;
        };
        let (http, denials) = (&mut s.http, &mut s.denials);
        self.call_spans(&s.cx, audit, start, end, |a| {
            if a.allowed {
                let live = http
                    .iter()
                    .position(|t| t.method == a.method && t.uri == a.target);
                match live.map(|i| http.remove(i)) {
                    Some(t) => (t.start, t.end.unwrap_or(end)),
                    None => (end, end),
                }
            } else {
                let name = capability(a.capability);
                let journaled = denials.iter().position(|(c, _)| c == name);
                let t = journaled
                    .and_then(|i| denials.remove(i))
                    .map_or(end, |(_, t)| t);
                (t, t)
            }
        });
    }

    /// A tool call outside any run (MCP's `tools/call`): a trace of its own, its root
    /// `mcp_tools_call` holding the `tool_call` span and its `egress` spans (a request spans
    /// the call, a denial is an instant at its end: no journal times them).
    pub fn on_mcp_call(&self, audit: &AuditRecord) {
        let end = SystemTime::now();
        let start = end
            .checked_sub(Duration::from_micros(audit.duration_us))
            .unwrap_or(end);
        let root = self.child(
            "mcp_tools_call",
            &Context::new(),
            start,
            vec![KeyValue::new("sandgraph.tool.name", audit.tool.clone())],
        );
        self.call_spans(&root, audit, start, end, |a| {
            if a.allowed { (start, end) } else { (end, end) }
        });
        if audit.outcome != "ok" {
            root.span().set_status(Status::error(audit.outcome.clone()));
        }
        root.span().end_with_timestamp(end);
    }

    /// The `tool_call` span of `audit` under `parent`, with one `egress` span per attempt
    /// timed by `timing`.
    fn call_spans(
        &self,
        parent: &Context,
        audit: &AuditRecord,
        start: SystemTime,
        end: SystemTime,
        mut timing: impl FnMut(&crate::sandbox::outcome::EgressAttempt) -> (SystemTime, SystemTime),
    ) {
        let call = self.child(
            "tool_call",
            parent,
            start,
            vec![
                KeyValue::new("sandgraph.tool.name", audit.tool.clone()),
                KeyValue::new(
                    "sandgraph.tool.component_digest",
                    audit.component_digest.clone(),
                ),
                KeyValue::new("sandgraph.tool.duration_us", audit.duration_us as i64),
                KeyValue::new("sandgraph.tool.outcome", audit.outcome.clone()),
                KeyValue::new(
                    "sandgraph.tool.memory_peak_bytes",
                    audit.memory_peak_bytes as i64,
                ),
                KeyValue::new("sandgraph.tool.bytes_in", audit.bytes_in as i64),
                KeyValue::new("sandgraph.tool.bytes_out", audit.bytes_out as i64),
            ],
        );
        for a in &audit.egress {
            // Requests served from the journal and socket refusals left no crossing of their
            // own: an instant at the call's end.
            let (from, to) = timing(a);
            let mut attrs = vec![
                KeyValue::new("sandgraph.egress.capability", capability(a.capability)),
                KeyValue::new("http.request.method", a.method.clone()),
                KeyValue::new("sandgraph.egress.target", redact(&a.target)),
                KeyValue::new("sandgraph.egress.allowed", a.allowed),
                KeyValue::new("sandgraph.egress.bytes_out", a.bytes_out as i64),
                KeyValue::new("sandgraph.egress.bytes_in", a.bytes_in as i64),
            ];
            if let Some(code) = a.status {
                attrs.push(KeyValue::new("http.response.status_code", i64::from(code)));
            }
            if a.allowed {
                attrs.push(KeyValue::new("sandgraph.egress.rule", a.reason.clone()));
            } else {
                attrs.push(KeyValue::new(
                    "sandgraph.egress.denial_reason",
                    a.reason.clone(),
                ));
            }
            if a.timed_out {
                attrs.push(KeyValue::new("sandgraph.egress.timed_out", true));
            }
            let e = self.child("egress", &call, from, attrs);
            if !a.allowed {
                e.span().set_status(Status::error("denied"));
            }
            e.span().end_with_timestamp(to);
        }
        let span = call.span();
        if audit.outcome != "ok" {
            span.set_status(Status::error(audit.outcome.clone()));
        }
        span.end_with_timestamp(end);
    }

    /// The engine's model observer: one `chat` span per model call under the step attempt,
    /// with the OpenTelemetry GenAI attributes. A call served from the journal on resume is
    /// marked `sandgraph.model.replayed`.
    pub fn on_model_call(
        &self,
        run: RunId,
        step: &str,
        attempt: u32,
        call: &crate::sandbox::agent::ModelCallRecord,
    ) {
        let mut live = self.live();
        let Some(s) = live
            .get_mut(&run)
            .and_then(|r| r.steps.get_mut(&(step.to_owned(), attempt)))
        else {
            return;
        };
        let mut attrs = vec![
            KeyValue::new("gen_ai.operation.name", "chat"),
            KeyValue::new("gen_ai.request.model", call.model.clone()),
            KeyValue::new("gen_ai.usage.input_tokens", i64::from(call.prompt_tokens)),
            KeyValue::new(
                "gen_ai.usage.output_tokens",
                i64::from(call.completion_tokens),
            ),
            KeyValue::new("sandgraph.model.outcome", call.outcome.clone()),
            KeyValue::new("sandgraph.model.replayed", call.replayed),
        ];
        if let Some(t) = call.first_token {
            attrs.push(KeyValue::new(
                "sandgraph.model.time_to_first_token_ms",
                t.as_millis() as i64,
            ));
        }
        let cx = self.child("chat", &s.cx, call.started, attrs);
        if call.outcome != "ok" {
            cx.span().set_status(Status::error(call.outcome.clone()));
        }
        cx.span().end_with_timestamp(call.ended);
    }

    /// Ends the spans still open (runs this process leaves unfinished) and sends everything
    /// buffered. Blocks up to the export timeout; call it off the async workers.
    pub fn shutdown(&self) {
        let now = SystemTime::now();
        for (_, r) in self.live().drain() {
            end_run(r, "unfinished", now);
        }
        if let Err(e) = self.provider.shutdown() {
            tracing::warn!(error = %e, "trace export at shutdown failed");
        }
    }
}

fn end_run(r: LiveRun, status: &str, now: SystemTime) {
    for (_, s) in r.steps {
        let span = s.cx.span();
        span.set_attribute(KeyValue::new("sandgraph.step.outcome", "abandoned"));
        span.end_with_timestamp(now);
    }
    let span = r.cx.span();
    span.set_attribute(KeyValue::new("sandgraph.run.status", status.to_owned()));
    match status {
        "succeeded" => span.set_status(Status::Ok),
        "running" | "unfinished" => {}
        other => span.set_status(Status::error(other.to_owned())),
    }
    span.end_with_timestamp(now);
}

fn capability(c: crate::sandbox::outcome::Capability) -> &'static str {
    use crate::sandbox::outcome::Capability::*;
    match c {
        Egress => "egress",
        Filesystem => "filesystem",
        Env => "env",
        Secret => "secret",
        Sockets => "sockets",
        Model => "model",
        Tool => "tool",
    }
}

/// A request target without its query, fragment or user info (where callers put tokens).
fn redact(target: &str) -> String {
    let cut = target.find(['?', '#']).unwrap_or(target.len());
    let t = &target[..cut];
    match t.split_once("://") {
        Some((scheme, rest)) => {
            let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
            let host = authority.rsplit('@').next().unwrap_or(authority);
            format!("{scheme}://{host}{path}")
        }
        None => t.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_lose_query_fragment_and_user_info() {
        assert_eq!(
            redact("http://user:pw@127.0.0.1:8080/ok?token=abc#x"),
            "http://127.0.0.1:8080/ok"
        );
        assert_eq!(redact("https://a.b"), "https://a.b");
        assert_eq!(redact("10.0.0.1:443"), "10.0.0.1:443");
    }

    #[test]
    fn bad_endpoints_say_what_to_give() {
        for (endpoint, reason) in [
            ("collector:4318", "must start with http://"),
            ("ftp://collector", "must start with http://"),
            ("http://collector:4318?x=1", "must not have a query"),
            ("http://u:p@collector:4318", "must not carry credentials"),
            ("http:// bad", "not a URL"),
        ] {
            let e = check_endpoint(endpoint).unwrap_err().to_string();
            assert!(e.contains(reason), "{endpoint}: {e}");
            assert!(e.contains("http://127.0.0.1:4318"), "{e}");
        }
        assert!(check_endpoint("http://127.0.0.1:4318").is_ok());
        assert!(check_endpoint("http://otel-collector:4318/base/").is_ok());
        assert!(check_endpoint("https://api.collector.example:443").is_ok());
    }

    #[test]
    fn export_is_off_unless_an_endpoint_is_configured() {
        use crate::api::config::{Config, Source};
        let config = |pairs: &[(&str, &str)]| {
            let env = pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            Config::from_source(&Source::new(env, None).unwrap())
        };
        let c = config(&[]).unwrap();
        assert_eq!(c.otlp_endpoint, None);
        assert_eq!(c.otlp_service_name, "sandgraph");
        let c = config(&[
            ("SANDGRAPH_OTLP_ENDPOINT", "http://127.0.0.1:4318"),
            ("SANDGRAPH_OTLP_SERVICE_NAME", "sandgraph-prod"),
        ])
        .unwrap();
        assert_eq!(c.otlp_endpoint.as_deref(), Some("http://127.0.0.1:4318"));
        assert_eq!(c.otlp_service_name, "sandgraph-prod");
        let e = config(&[("SANDGRAPH_OTLP_ENDPOINT", "grpc://collector:4317")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("SANDGRAPH_OTLP_ENDPOINT"), "{e}");
        assert!(e.contains("must start with http:// or https://"), "{e}");
    }

    #[test]
    fn a_response_is_complete_once_its_declared_body_arrived() {
        assert!(complete(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi"));
        assert!(!complete(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nh"));
        assert!(!complete(b"HTTP/1.1 200 OK\r\nContent-Len"));
        // Without a length only the end of the stream says it is complete.
        assert!(!complete(b"HTTP/1.1 200 OK\r\n\r\nhi"));
    }

    #[test]
    fn chunked_and_plain_collector_responses_parse() {
        let r = parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi").unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.body().as_ref(), b"hi");
        let r = parse_response(
            b"HTTP/1.1 400 Bad Request\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
        )
        .unwrap();
        assert_eq!(r.status(), 400);
        assert_eq!(r.body().as_ref(), b"abcde");
        assert!(parse_response(b"HTTP/1.1 200").is_err());
    }
}
