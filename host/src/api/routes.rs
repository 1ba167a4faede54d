//! The routes: parse and bound the request, call the graph layer or the journal, answer JSON or
//! a problem. Each handler returns `Result<Response, Problem>`; `handle` turns problems into
//! RFC 9457 responses and logs one line per request with its request id.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tracing::Instrument;

use super::State;
use super::auth::{AuthError, Scope};
use super::idempotency::{self, IdempotentRun};
use super::metrics::RunLabels;
use super::problem::{Located, Problem};
use super::sse::{self, ApiBody};
use super::store::{GraphVersion, ToolRecord};
use crate::graph::CompiledGraph;
use crate::graph::engine::{EngineError, now_ms};
use crate::graph::validate;
use crate::journal::queue::Command;
use crate::journal::{Event, JournalError, Record, RunId};
use crate::sandbox::manifest::Manifest;

type Reply = Result<Response<ApiBody>, Problem>;

pub(super) async fn handle(
    state: Arc<State>,
    req: Request<Incoming>,
    peer: SocketAddr,
) -> Response<ApiBody> {
    let request_id = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| v.len() <= 64 && v.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'))
        .map(str::to_owned)
        .unwrap_or_else(|| {
            format!(
                "req-{:x}-{}",
                now_ms(),
                state.next_request.fetch_add(1, Ordering::Relaxed)
            )
        });
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let span = tracing::info_span!(
        "request",
        request_id = %request_id,
        %method,
        path = %path,
        subject = tracing::field::Empty
    );
    let started = Instant::now();
    let (route, result) = route(state.clone(), req).instrument(span.clone()).await;
    let mut response = match result {
        Ok(r) => r,
        Err(p) => problem_response(&p),
    };
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert("x-request-id", v);
    }
    let status = response.status().as_u16();
    state.metrics.request(route, status);
    span.in_scope(|| {
        tracing::info!(
            status,
            route,
            peer = %peer,
            ms = started.elapsed().as_millis() as u64,
            "answered"
        )
    });
    response
}

pub(super) fn problem_response(p: &Problem) -> Response<ApiBody> {
    let mut r = Response::builder()
        .status(StatusCode::from_u16(p.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .header(header::CONTENT_TYPE, "application/problem+json");
    if let Some(s) = p.retry_after {
        r = r.header(header::RETRY_AFTER, s.to_string());
    }
    for (k, v) in &p.headers {
        r = r.header(k, v);
    }
    r.body(ApiBody::full(p.body()))
        .expect("problem responses are well formed")
}

fn json_response(status: StatusCode, v: &Value) -> Response<ApiBody> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(ApiBody::full(v.to_string()))
        .expect("JSON responses are well formed")
}

/// Dispatches on method and path; returns the route template for metrics.
async fn route(state: Arc<State>, req: Request<Incoming>) -> (&'static str, Reply) {
    // hyper only refuses heads that overflow its buffer; the documented limit is enforced here,
    // exactly, before any route (or authentication) sees the request.
    if super::head_limit::head_size(&req) > super::head_limit::MAX_HEAD {
        let mut p = super::head_limit::head_too_large(super::head_limit::MAX_HEAD);
        p.headers.push((header::CONNECTION, "close".to_owned()));
        return ("unrouted", Err(p));
    }
    let path = req.uri().path().to_owned();
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let method = req.method().clone();
    let not_allowed = |allowed: &str| {
        let mut p = Problem::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method-not-allowed",
            format!("{method} is not allowed on {path}; use {allowed}"),
        );
        p.headers.push((header::ALLOW, allowed.to_owned()));
        Err(p)
    };
    let template = route_template(&segments);
    let mut req = req;
    // The console's page and assets are public (they hold no data; every call they make
    // carries the token the user types).
    if matches!(segments.as_slice(), ["ui", ..]) {
        return (template, super::console::asset(&method, &segments[1..]));
    }
    if !matches!(segments.as_slice(), ["healthz" | "readyz" | "metrics"]) {
        let scope = match (&method, segments.as_slice()) {
            (&Method::POST, ["v1", "graphs"]) => Scope::GraphsWrite,
            (&Method::POST, ["v1", "tools"]) => Scope::ToolsWrite,
            (&Method::POST, ["v1", "runs", ..]) => Scope::RunsWrite,
            (_, ["mcp"]) => Scope::ToolsCall,
            _ => Scope::RunsRead,
        };
        match authorize(&state, req.headers(), scope) {
            // What the caller's scopes narrow its MCP calls to travels with its request.
            Ok(principal) => {
                req.extensions_mut().insert(principal.grant.clone());
                req.extensions_mut().insert(principal);
            }
            // Counted under the route it was refused on, like any other answer there.
            Err(p) => return (template, Err(p)),
        }
    }
    let reply = match segments.as_slice() {
        ["mcp"] => Ok(state.mcp.1.handle(req).await.map(ApiBody::Boxed)),
        ["healthz"] => match method {
            Method::GET => Ok(json_response(StatusCode::OK, &json!({"status": "ok"}))),
            _ => not_allowed("GET"),
        },
        ["readyz"] => match method {
            Method::GET => Ok(readyz(&state).await),
            _ => not_allowed("GET"),
        },
        ["metrics"] => match method {
            Method::GET => Ok(metrics(&state)),
            _ => not_allowed("GET"),
        },
        ["v1", "graphs"] => match method {
            Method::POST => post_graph(&state, req).await,
            Method::GET => list_graphs(&state),
            _ => not_allowed("GET, POST"),
        },
        ["v1", "graphs", name] => match method {
            Method::GET => get_graph(&state, name, req.uri().query()),
            _ => not_allowed("GET"),
        },
        ["v1", "graphs", name, "picture"] => match method {
            Method::GET => graph_picture(&state, name, req.uri().query()),
            _ => not_allowed("GET"),
        },
        ["v1", "tools"] => match method {
            Method::POST => post_tool(&state, req).await,
            Method::GET => list_tools(&state),
            _ => not_allowed("GET, POST"),
        },
        ["v1", "tools", name] => match method {
            Method::GET => get_tool(&state, name).await,
            _ => not_allowed("GET"),
        },
        ["v1", "runs"] => match method {
            Method::POST => post_run(&state, req).await,
            Method::GET => list_runs(&state, req.uri().query()),
            _ => not_allowed("GET, POST"),
        },
        ["v1", "runs", id] => match method {
            Method::GET => get_run(&state, id).await,
            _ => not_allowed("GET"),
        },
        ["v1", "runs", id, "cancel"] => match method {
            Method::POST => cancel_run(&state, id).await,
            _ => not_allowed("POST"),
        },
        ["v1", "runs", id, "picture"] => match method {
            Method::GET => run_picture(&state, id, req.uri().query()).await,
            _ => not_allowed("GET"),
        },
        ["v1", "runs", id, "events"] => match method {
            Method::GET => sse::events(&state, id, req.headers()).await,
            _ => not_allowed("GET"),
        },
        ["v1", "runs", id, "steps", step, "approval"] => match method {
            Method::POST => post_approval(&state, id, step, req).await,
            _ => not_allowed("POST"),
        },
        ["v1", "runs", id, "steps", step] => match method {
            Method::GET => super::steps::step(&state, id, step)
                .await
                .map(|v| json_response(StatusCode::OK, &v)),
            _ => not_allowed("GET"),
        },
        ["v1", "runs", id, "replay"] => match method {
            Method::POST => replay_run(&state, id).await,
            _ => not_allowed("POST"),
        },
        ["v1", "whoami"] => match method {
            Method::GET => Ok(whoami(&req)),
            _ => not_allowed("GET"),
        },
        _ => Err(Problem::not_found(
            "unknown-route",
            format!("no route {path}; see docs/openapi.yaml for the routes"),
        )),
    };
    (template, reply)
}

/// The route template a path belongs to, for metrics (`unknown` when there is none).
fn route_template(segments: &[&str]) -> &'static str {
    match segments {
        ["healthz"] => "/healthz",
        ["readyz"] => "/readyz",
        ["metrics"] => "/metrics",
        ["mcp"] => "/mcp",
        ["v1", "graphs"] => "/v1/graphs",
        ["v1", "graphs", _] => "/v1/graphs/{name}",
        ["v1", "graphs", _, "picture"] => "/v1/graphs/{name}/picture",
        ["v1", "tools"] => "/v1/tools",
        ["v1", "tools", _] => "/v1/tools/{name}",
        ["v1", "runs"] => "/v1/runs",
        ["v1", "runs", _] => "/v1/runs/{id}",
        ["v1", "runs", _, "cancel"] => "/v1/runs/{id}/cancel",
        ["v1", "runs", _, "events"] => "/v1/runs/{id}/events",
        ["v1", "runs", _, "picture"] => "/v1/runs/{id}/picture",
        ["v1", "runs", _, "steps", _, "approval"] => "/v1/runs/{id}/steps/{step}/approval",
        ["v1", "runs", _, "steps", _] => "/v1/runs/{id}/steps/{step}",
        ["v1", "runs", _, "replay"] => "/v1/runs/{id}/replay",
        ["v1", "whoami"] => "/v1/whoami",
        ["ui", ..] => "/ui/",
        _ => "unknown",
    }
}

/// Authenticates the caller, checks the route's scope, then the caller's rate limit.
fn authorize(
    state: &State,
    headers: &http::HeaderMap,
    scope: Scope,
) -> Result<super::auth::Principal, Problem> {
    let refused = |e: AuthError| {
        let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::UNAUTHORIZED);
        let mut p = Problem::new(status, e.problem_type(), e.detail());
        p.headers
            .push((header::WWW_AUTHENTICATE, e.www_authenticate()));
        tracing::info!(
            reason = e.problem_type(),
            "request refused by authentication"
        );
        p
    };
    let principal = state.auth.authenticate(headers).map_err(refused)?;
    principal.require(scope).map_err(refused)?;
    state.rate.check(&principal.subject).map_err(|retry| {
        Problem::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate-limited",
            format!(
                "subject '{}' is over its request rate; retry in {} s",
                principal.subject,
                retry.seconds()
            ),
        )
        .retry_after(retry.seconds())
    })?;
    tracing::Span::current().record("subject", principal.subject.as_str());
    Ok(principal)
}

async fn readyz(state: &State) -> Response<ApiBody> {
    let warm = state.ready.load(Ordering::SeqCst);
    let accepting = !state.shutdown.is_cancelled();
    let model = match &state.model {
        Some(probe) if warm && accepting => Some(probe.check().await),
        _ => None,
    };
    // A replica on a shared journal is ready only while it reaches the database.
    let database = match &state.queue {
        Some(q) if warm && accepting => {
            let q = q.clone();
            let ping = tokio::task::spawn_blocking(move || q.depth());
            Some(
                match tokio::time::timeout(Duration::from_secs(2), ping).await {
                    Ok(Ok(Ok(_))) => Ok(()),
                    Ok(Ok(Err(e))) => Err(e.to_string()),
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(_) => Err("no answer within 2s".to_owned()),
                },
            )
        }
        _ => None,
    };
    let checks = json!({
        "journal": match &database {
            None => json!("open"),
            Some(Ok(())) => json!({"store": state.journal.describe(), "status": "reachable"}),
            Some(Err(e)) => json!({"store": state.journal.describe(), "status": "unreachable", "reason": e}),
        },
        "engine": if warm { "warm" } else { "starting" },
        "accepting": accepting,
        "model": match (&state.model, &model) {
            (None, _) => json!("not configured"),
            (Some(p), Some(Ok(()))) => json!({"url": p.url(), "status": "ready"}),
            (Some(p), Some(Err(e))) => json!({"url": p.url(), "status": "unreachable", "reason": e}),
            (Some(p), None) => json!({"url": p.url(), "status": "not probed"}),
        },
    });
    let detail = if !warm || !accepting {
        Some("the host is starting or shutting down".to_owned())
    } else if let Some(Err(reason)) = &database {
        Some(format!("the journal database is unreachable: {reason}"))
    } else if let Some(Err(reason)) = &model {
        Some(format!("the model backend is not ready: {reason}"))
    } else {
        None
    };
    match detail {
        None => json_response(
            StatusCode::OK,
            &json!({"status": "ready", "checks": checks}),
        ),
        Some(detail) => {
            let mut p = Problem::new(StatusCode::SERVICE_UNAVAILABLE, "not-ready", detail);
            p.retry_after = Some(1);
            p.extensions.insert("checks".to_owned(), checks);
            problem_response(&p)
        }
    }
}

fn metrics(state: &State) -> Response<ApiBody> {
    Response::builder()
        .status(StatusCode::OK)
        .header(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )
        .body(ApiBody::full({
            if state.queue.is_none() {
                // On a shared journal the heartbeat sets it from the shared queue.
                state
                    .metrics
                    .queue_depth
                    .set(state.admission.queued() as i64);
            }
            state.metrics.render(state.journal.flush_count())
        }))
        .expect("metrics responses are well formed")
}

/// The media type without parameters, lower-cased.
fn media_type(req: &Request<Incoming>) -> Option<String> {
    req.headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
}

fn require_type(req: &Request<Incoming>, allowed: &[&str]) -> Result<(), Problem> {
    match media_type(req) {
        Some(t) if allowed.contains(&t.as_str()) => Ok(()),
        got => Err(Problem::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported-media-type",
            format!(
                "Content-Type {} is not accepted here; send {}",
                got.map_or("(none)".to_owned(), |t| format!("`{t}`")),
                allowed.join(" or ")
            ),
        )),
    }
}

/// Reads the body up to `limit` bytes within the body timeout.
async fn read_body(state: &State, req: Request<Incoming>, limit: usize) -> Result<Bytes, Problem> {
    let too_large = || {
        Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body-too-large",
            format!("the request body is over this route's {limit} byte limit"),
        )
    };
    if let Some(len) = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        && len > limit as u64
    {
        return Err(too_large());
    }
    let body = Limited::new(req.into_body(), limit);
    match tokio::time::timeout(state.config.body_timeout, body.collect()).await {
        Err(_) => Err(Problem::new(
            StatusCode::REQUEST_TIMEOUT,
            "body-timeout",
            format!(
                "the request body did not arrive within {} ms",
                state.config.body_timeout.as_millis()
            ),
        )),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(too_large()),
        Ok(Err(e)) => Err(Problem::bad_request(
            "bad-body",
            format!("reading the request body failed: {e}"),
        )),
        Ok(Ok(c)) => Ok(c.to_bytes()),
    }
}

fn query_param<'a>(query: Option<&'a str>, key: &str) -> Option<&'a str> {
    query?
        .split('&')
        .filter_map(|kv| kv.split_once('=').or(Some((kv, ""))))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v)
}

fn store_err(e: impl std::fmt::Display) -> Problem {
    Problem::internal(format!("the store failed: {e}"))
}

fn journal_err(e: JournalError) -> Problem {
    match e {
        JournalError::UnknownRun { run } => {
            Problem::not_found("unknown-run", format!("run {run} is not in the journal"))
        }
        JournalError::BadRunId { text } => Problem::bad_request(
            "invalid-run-id",
            format!("'{text}' is not a run id (32 hex digits)"),
        ),
        other => Problem::internal(format!("the journal failed: {other}")),
    }
}

pub(super) fn parse_run(id: &str) -> Result<RunId, Problem> {
    RunId::parse(id).map_err(journal_err)
}

fn diagnostics_problem(d: &validate::Diagnostics) -> Problem {
    let errors: Vec<Located> =
        d.0.iter()
            .map(|d| Located {
                line: d.pos.line,
                column: d.pos.col,
                message: d.message.clone(),
            })
            .collect();
    let first = errors
        .first()
        .map(|e| format!("{}:{}: {}", e.line, e.column, e.message))
        .unwrap_or_default();
    Problem::unprocessable(
        "graph-invalid",
        format!(
            "the graph has {} problem{}; first at {first}",
            errors.len(),
            if errors.len() == 1 { "" } else { "s" }
        ),
    )
    .with_errors(errors)
}

fn validate_source(state: &State, source: &str) -> Result<CompiledGraph, Problem> {
    let catalog = state
        .catalog
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    validate::validate_compiled_with_outputs(
        "graph.yaml",
        source,
        &catalog.manifests(),
        &catalog.output_schemas(),
    )
    .map_err(|d| diagnostics_problem(&d))
}

async fn post_graph(state: &Arc<State>, req: Request<Incoming>) -> Reply {
    require_type(
        &req,
        &["application/yaml", "application/x-yaml", "text/yaml"],
    )?;
    let body = read_body(state, req, state.config.max_graph_bytes).await?;
    state.sync_catalog().await.map_err(store_err)?;
    let source = crate::graph::yaml::utf8(body.to_vec()).map_err(|e| {
        Problem::bad_request(
            "bad-encoding",
            format!("the graph is not UTF-8: {}: {}", e.pos, e.message),
        )
    })?;
    let compiled = validate_source(state, &source)?;
    let version = GraphVersion {
        name: compiled.spec.metadata.name.clone(),
        version: compiled.digest_hex(),
        created_ms: now_ms(),
        source,
    };
    let new = state.store.put_graph(&version).map_err(store_err)?;
    let stored = state
        .store
        .graph(&version.name, Some(&version.version))
        .map_err(store_err)?
        .unwrap_or(version);
    state
        .compiled
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(
            (stored.name.clone(), stored.version.clone()),
            Arc::new(compiled),
        );
    tracing::info!(graph = %stored.name, version = %stored.version, new, "graph stored");
    let mut r = json_response(
        if new {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        },
        &json!({"name": stored.name, "version": stored.version, "created_ms": stored.created_ms}),
    );
    if let Ok(v) = HeaderValue::from_str(&format!(
        "/v1/graphs/{}?version={}",
        stored.name, stored.version
    )) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    Ok(r)
}

fn list_graphs(state: &State) -> Reply {
    let graphs: Vec<Value> = state
        .store
        .graphs()
        .map_err(store_err)?
        .into_iter()
        .map(|(g, n)| {
            json!({"name": g.name, "latest": g.version, "created_ms": g.created_ms, "versions": n})
        })
        .collect();
    Ok(json_response(StatusCode::OK, &json!({ "graphs": graphs })))
}

/// The `format` query parameter of a picture route (default `svg`).
fn picture_format(query: Option<&str>) -> Result<crate::graph::render::Format, Problem> {
    let name = query_param(query, "format").unwrap_or("svg");
    crate::graph::render::Format::parse(name).ok_or_else(|| {
        Problem::new(
            StatusCode::BAD_REQUEST,
            "invalid-format",
            format!("format '{name}' is not one of svg, dot, mermaid"),
        )
    })
}

/// A picture, served so that nothing in it can run: an SVG opened on its own gets no script,
/// style or fetch (`default-src 'none'`), and is never sniffed as something else.
fn picture_response(format: crate::graph::render::Format, body: String) -> Response<ApiBody> {
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, format.media_type())
        .header(header::X_CONTENT_TYPE_OPTIONS, "nosniff")
        .header(
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; sandbox",
        )
        .header(header::CACHE_CONTROL, "no-store")
        .body(ApiBody::full(body))
        .expect("picture responses are well formed")
}

/// `GET /v1/graphs/{name}/picture`: a stored graph (its latest version, or `version`) drawn.
fn graph_picture(state: &State, name: &str, query: Option<&str>) -> Reply {
    let format = picture_format(query)?;
    let graph = compiled_graph(state, name, query_param(query, "version"))?;
    Ok(picture_response(
        format,
        crate::graph::render::draw(&graph, format, None),
    ))
}

/// `GET /v1/runs/{id}/picture`: the graph the run pinned, each node coloured by its state in
/// the run, with its step count.
async fn run_picture(state: &Arc<State>, id: &str, query: Option<&str>) -> Reply {
    let format = picture_format(query)?;
    let run = parse_run(id)?;
    state.journal.run_summary(run).map_err(journal_err)?;
    let journal = state.journal.clone();
    let drawn = tokio::task::spawn_blocking(move || {
        let records = journal.events(run)?;
        let graph = crate::graph::render::pinned_graph(&journal, &records);
        Ok::<_, JournalError>(graph.map(|g| {
            let runs = crate::graph::render::node_runs(&records);
            crate::graph::render::draw(&g, format, Some(&runs))
        }))
    })
    .await
    .map_err(|e| Problem::internal(format!("reading the run failed: {e}")))?
    .map_err(journal_err)?
    .map_err(|e| Problem::internal(format!("run {run}: {e}")))?;
    Ok(picture_response(format, drawn))
}

fn get_graph(state: &State, name: &str, query: Option<&str>) -> Reply {
    let version = query_param(query, "version");
    let g = state
        .store
        .graph(name, version)
        .map_err(store_err)?
        .ok_or_else(|| match version {
            Some(v) => Problem::not_found(
                "unknown-graph-version",
                format!("graph '{name}' has no version {v}; GET /v1/graphs/{name} lists them"),
            ),
            None => Problem::not_found(
                "unknown-graph",
                format!("no graph named '{name}'; POST its YAML to /v1/graphs first"),
            ),
        })?;
    let versions: Vec<Value> = state
        .store
        .graph_versions(name)
        .map_err(store_err)?
        .into_iter()
        .map(|v| json!({"version": v.version, "created_ms": v.created_ms}))
        .collect();
    Ok(json_response(
        StatusCode::OK,
        &json!({
            "name": g.name, "version": g.version, "created_ms": g.created_ms,
            "source": g.source, "versions": versions,
        }),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ToolUpload {
    /// The capability manifest's YAML text.
    manifest: String,
    /// The component bytes, standard base64.
    component: String,
}

async fn post_tool(state: &Arc<State>, req: Request<Incoming>) -> Reply {
    require_type(&req, &["application/json"])?;
    let body = read_body(state, req, state.config.max_tool_bytes).await?;
    let upload: ToolUpload = serde_json::from_slice(&body).map_err(|e| {
        Problem::bad_request(
            "bad-json",
            format!("the body is not {{\"manifest\": yaml text, \"component\": base64}}: {e}"),
        )
    })?;
    let manifest = Manifest::parse("manifest", &upload.manifest)
        .map_err(|e| Problem::unprocessable("manifest-invalid", e.to_string()))?;
    let wasm = base64::engine::general_purpose::STANDARD
        .decode(upload.component.trim())
        .map_err(|e| {
            Problem::bad_request("bad-encoding", format!("`component` is not base64: {e}"))
        })?;
    let sandbox = state.engine.sandbox().clone();
    let bytes = wasm.clone();
    let tool = tokio::task::spawn_blocking(move || sandbox.registry().load(&bytes))
        .await
        .map_err(|e| Problem::internal(format!("compiling the component failed: {e}")))?
        .map_err(|e| Problem::unprocessable("not-a-tool-component", e.to_string()))?;
    let described = state.engine.sandbox().described(&tool).await.map_err(|e| {
        Problem::unprocessable(
            "not-a-tool-component",
            format!("the component's info() failed: {e}"),
        )
    })?;
    let info = &described.info;
    if info.name != manifest.metadata.name {
        return Err(Problem::unprocessable(
            "tool-name-mismatch",
            format!(
                "the component calls itself '{}' but the manifest names '{}'; make them agree",
                info.name, manifest.metadata.name
            ),
        ));
    }
    let record = ToolRecord {
        name: manifest.metadata.name.clone(),
        digest: tool.digest.clone(),
        manifest: upload.manifest.clone(),
        size: wasm.len() as u64,
        created_ms: now_ms(),
    };
    state.store.put_tool(&record, &wasm).map_err(store_err)?;
    {
        let mut catalog = state.catalog.write().unwrap_or_else(|p| p.into_inner());
        let mut next = (**catalog).clone();
        let output_schema = described.output.as_ref().map(|o| o.schema.clone());
        next.insert_described(manifest, upload.manifest, wasm, output_schema);
        *catalog = Arc::new(next);
    }
    state.mcp.0.tools_changed();
    tracing::info!(tool = %record.name, digest = %record.digest, "tool stored");
    Ok(json_response(
        StatusCode::CREATED,
        &json!({"name": record.name, "digest": record.digest, "version": info.version}),
    ))
}

fn list_tools(state: &State) -> Reply {
    let catalog = state
        .catalog
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let tools: Vec<Value> = catalog
        .manifests()
        .iter()
        .filter_map(|m| catalog.get(&m.metadata.name))
        .map(|e| json!({"name": e.manifest.metadata.name, "digest": e.digest}))
        .collect();
    Ok(json_response(StatusCode::OK, &json!({ "tools": tools })))
}

async fn get_tool(state: &State, name: &str) -> Reply {
    let entry = state
        .catalog
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .get(name)
        .cloned()
        .ok_or_else(|| {
            Problem::not_found(
                "unknown-tool",
                format!("no tool named '{name}'; POST it to /v1/tools first"),
            )
        })?;
    let sandbox = state.engine.sandbox().clone();
    let wasm = entry.wasm.clone();
    let tool = tokio::task::spawn_blocking(move || sandbox.registry().load(&wasm))
        .await
        .map_err(|e| Problem::internal(e.to_string()))?
        .map_err(|e| Problem::internal(format!("the stored component no longer loads: {e}")))?;
    let info = &state
        .engine
        .sandbox()
        .described(&tool)
        .await
        .map_err(|e| Problem::internal(format!("the tool's info() failed: {e}")))?
        .info;
    let schema = |s: &str| serde_json::from_str::<Value>(s).unwrap_or(Value::String(s.into()));
    let spec = &entry.manifest.spec;
    let egress: Vec<Value> = spec
        .egress
        .iter()
        .map(|r| json!({"host": r.host, "port": r.port, "scheme": r.scheme.as_str(), "methods": r.methods}))
        .collect();
    Ok(json_response(
        StatusCode::OK,
        &json!({
            "name": entry.manifest.metadata.name,
            "digest": entry.digest,
            "version": info.version,
            "description": info.description,
            "input_schema": schema(&info.input_schema),
            "output_schema": schema(&info.output_schema),
            "capabilities": {
                "egress": egress,
                "env": spec.env.keys().collect::<Vec<_>>(),
                "workspace": format!("{:?}", spec.workspace).to_lowercase(),
                "limits": {
                    "memory": spec.limits.memory,
                    "timeout_ms": spec.limits.timeout.as_millis() as u64,
                    "max_output": spec.limits.max_output,
                    "max_response": spec.limits.max_response,
                },
            },
            "manifest": entry.manifest_text,
        }),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RunRequest {
    graph: String,
    version: Option<String>,
    #[serde(default)]
    input: Value,
}

async fn post_run(state: &Arc<State>, req: Request<Incoming>) -> Reply {
    require_type(&req, &["application/json"])?;
    let wait = matches!(query_param(req.uri().query(), "wait"), Some("true" | "1"));
    let key = req
        .headers()
        .get("idempotency-key")
        .map(|v| {
            v.to_str()
                .ok()
                .filter(|k| !k.is_empty() && k.len() <= 255)
                .map(str::to_owned)
                .ok_or_else(|| {
                    Problem::bad_request(
                        "invalid-idempotency-key",
                        "Idempotency-Key must be 1 to 255 visible ASCII characters",
                    )
                })
        })
        .transpose()?;
    let body = read_body(state, req, state.config.max_run_bytes).await?;
    state.sync_catalog().await.map_err(store_err)?;
    let request: RunRequest = serde_json::from_slice(&body).map_err(|e| {
        Problem::bad_request(
            "bad-json",
            format!(
                "the body is not {{\"graph\": name, \"version\"?: digest, \"input\": JSON}}: {e}"
            ),
        )
    })?;
    let graph = compiled_graph(state, &request.graph, request.version.as_deref())?;
    if let Some(key) = &key {
        // Submissions with the same key wait for each other here; across replicas sharing a
        // journal, storing the key only if absent decides which submission starts the run.
        let guard = state.idempotency.lock(key).await;
        let digest = hex::encode(Sha256::digest(&body));
        let ttl_ms = state.config.idempotency_ttl.as_millis() as u64;
        sweep_idempotency_keys(state, ttl_ms);
        let run = RunId::new();
        let mine = serde_json::to_vec(&IdempotentRun {
            request: digest.clone(),
            run: run.to_string(),
            created_ms: now_ms(),
        })
        .expect("serialises");
        let journal = state.journal.clone();
        loop {
            if journal
                .kv_put_new(idempotency::SPACE, key.as_bytes(), &mine)
                .map_err(journal_err)?
            {
                break;
            }
            let Some(bytes) = journal
                .kv_get(idempotency::SPACE, key.as_bytes())
                .map_err(journal_err)?
            else {
                // Removed since (expired): try to store it again.
                continue;
            };
            let prev = match serde_json::from_slice::<IdempotentRun>(&bytes) {
                Ok(prev) if !prev.expired(now_ms(), ttl_ms) => prev,
                // Expired (or unreadable): the key is free for a new run.
                _ => {
                    journal
                        .kv_remove_if(idempotency::SPACE, key.as_bytes(), &bytes)
                        .map_err(journal_err)?;
                    continue;
                }
            };
            if prev.request != digest {
                return Err(Problem::unprocessable(
                    "idempotency-key-reused",
                    format!(
                        "Idempotency-Key '{key}' was used for a different request (run {}); use a new key",
                        prev.run
                    ),
                ));
            }
            let run = parse_run(&prev.run)?;
            let mut r = run_accepted(run, StatusCode::OK);
            r.headers_mut()
                .insert("idempotent-replayed", HeaderValue::from_static("true"));
            return Ok(r);
        }
        let started = start_run(state, run, graph, request.input).await;
        if started.is_err() {
            // No run exists under the key: free it for a retry.
            let _ = journal.kv_remove_if(idempotency::SPACE, key.as_bytes(), &mine);
            let _ = journal.sync();
        }
        let task = started?;
        drop(guard);
        return finish_submit(state, run, task, wait).await;
    }
    let run = RunId::new();
    let task = start_run(state, run, graph, request.input).await?;
    finish_submit(state, run, task, wait).await
}

/// Removes expired idempotency keys in the background, at most once per sweep interval (a tenth
/// of the TTL, between 1 s and 10 min), so the store does not grow with keys nobody can replay.
fn sweep_idempotency_keys(state: &Arc<State>, ttl_ms: u64) {
    let now = now_ms();
    let every = (ttl_ms / 10).clamp(1_000, 600_000);
    let last = state.idempotency_swept.load(Ordering::Relaxed);
    if now.saturating_sub(last) < every
        || state
            .idempotency_swept
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
    {
        return;
    }
    let journal = state.journal.clone();
    tokio::task::spawn_blocking(move || match idempotency::sweep(&journal, now, ttl_ms) {
        Ok(0) => {}
        Ok(n) => tracing::info!(removed = n, "expired idempotency keys removed"),
        Err(e) => tracing::warn!(error = %e, "sweeping idempotency keys failed"),
    });
}

fn compiled_graph(
    state: &State,
    name: &str,
    version: Option<&str>,
) -> Result<Arc<CompiledGraph>, Problem> {
    let g = state
        .store
        .graph(name, version)
        .map_err(store_err)?
        .ok_or_else(|| match version {
            Some(v) => Problem::not_found(
                "unknown-graph-version",
                format!("graph '{name}' has no version {v}"),
            ),
            None => Problem::not_found(
                "unknown-graph",
                format!("no graph named '{name}'; POST its YAML to /v1/graphs first"),
            ),
        })?;
    let key = (g.name.clone(), g.version.clone());
    let cached = state
        .compiled
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(&key)
        .cloned();
    if let Some(c) = cached {
        return Ok(c);
    }
    let c = Arc::new(validate_source(state, &g.source)?);
    state
        .compiled
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(key, c.clone());
    Ok(c)
}

/// What `POST /v1/runs?wait=true` waits on: the run's task in this process, or (on a shared
/// journal, where any replica may execute it) its end in the journal.
type Started = Option<tokio::task::JoinHandle<crate::graph::engine::RunOutcome>>;

/// Waits for a run slot (or refuses when the queue is full), then starts the run. On a shared
/// journal the run is journaled and queued instead, for whichever replica claims it.
async fn start_run(
    state: &Arc<State>,
    run: RunId,
    graph: Arc<CompiledGraph>,
    input: Value,
) -> Result<Started, Problem> {
    if state.shutdown.is_cancelled() {
        return Err(shutting_down());
    }
    if let Some(queue) = state.queue.clone() {
        let catalog = state
            .catalog
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let name = graph.spec.metadata.name.clone();
        let labels = run_labels_of(&graph);
        let created = state
            .engine
            .create_held(run, graph, &catalog, input)
            .await
            .map_err(engine_problem)?;
        // With a run slot free here, the run is queued already claimed by this replica (unless
        // older runs wait for a host) and starts from what it was created with; otherwise
        // whoever claims it reads it from the database, this replica included.
        let permit = state.admission.try_admit();
        let claim_here = permit.is_some();
        let queued = tokio::task::spawn_blocking(move || {
            if claim_here {
                queue.enqueue_or_claim(run)
            } else {
                queue.enqueue(run).map(|()| None)
            }
        })
        .await
        .map_err(|e| Problem::internal(format!("queueing the run failed: {e}")))
        .and_then(|r| r.map_err(journal_err));
        let claim = match queued {
            Ok(claim) => claim,
            Err(p) => {
                state.journal.forget(run);
                return Err(p);
            }
        };
        match (claim, permit) {
            (Some(claim), Some(permit)) => {
                state.journal.fence_created(run, claim.epoch);
                state
                    .claims
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(run, claim);
                state.metrics.queue_wait.observe(0.0);
                let handle = state.engine.start_created(created);
                tracing::info!(run_id = %run, graph = %name, "run queued and claimed here");
                state.clone().supervise(handle, labels, Some(permit));
            }
            _ => {
                drop(created);
                state.journal.forget(run);
                state.claim_wake.notify_one();
                tracing::info!(run_id = %run, graph = %name, "run queued");
            }
        }
        return Ok(None);
    }
    let permit = tokio::select! {
        p = state.admission.admit() => p.map_err(|retry| {
            Problem::new(
                StatusCode::TOO_MANY_REQUESTS,
                "run-queue-full",
                format!(
                    "{} runs are executing and {} more are queued; retry later",
                    state.config.max_concurrent_runs, state.config.run_queue
                ),
            )
            .retry_after(retry.seconds())
        })?,
        _ = state.shutdown.cancelled() => return Err(shutting_down()),
    };
    state
        .metrics
        .queue_wait
        .observe(permit.waited().as_secs_f64());
    let labels = run_labels_of(&graph);
    let catalog = state
        .catalog
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let handle = state
        .engine
        .start_as(run, graph, &catalog, input)
        .await
        .map_err(engine_problem)?;
    tracing::info!(run_id = %run, graph = %labels.graph, "run started");
    Ok(Some(state.clone().supervise(handle, labels, Some(permit))))
}

/// The metric labels of a run of `graph`.
fn run_labels_of(graph: &CompiledGraph) -> RunLabels {
    RunLabels {
        graph: graph.spec.metadata.name.clone(),
        components: graph
            .spec
            .spec
            .nodes
            .iter()
            .map(|n| (n.id.clone(), n.component.clone()))
            .collect(),
    }
}

fn shutting_down() -> Problem {
    Problem::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "shutting-down",
        "the host is shutting down; retry against another instance or after it restarts",
    )
    .retry_after(1)
}

fn engine_problem(e: EngineError) -> Problem {
    match e {
        EngineError::InvalidInput(errors) => Problem::unprocessable(
            "invalid-input",
            format!(
                "the input does not match the graph's input schema: {}",
                errors.join("; ")
            ),
        ),
        e @ EngineError::InputTooDeep { .. } => {
            Problem::unprocessable("invalid-input", e.to_string())
        }
        EngineError::UnknownComponent { node, component } => Problem::unprocessable(
            "unknown-tool",
            format!(
                "node '{node}' names tool '{component}', which is not uploaded; POST it to /v1/tools"
            ),
        ),
        e @ (EngineError::UnknownModel { .. } | EngineError::WrongWorld { .. }) => {
            Problem::unprocessable("graph-invalid", e.to_string())
        }
        other => Problem::internal(other.to_string()),
    }
}

fn run_accepted(run: RunId, status: StatusCode) -> Response<ApiBody> {
    let mut r = json_response(
        status,
        &json!({"run": run.to_string(), "status": "running", "events": format!("/v1/runs/{run}/events")}),
    );
    if let Ok(v) = HeaderValue::from_str(&format!("/v1/runs/{run}")) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r
}

async fn finish_submit(state: &Arc<State>, run: RunId, task: Started, wait: bool) -> Reply {
    if !wait {
        return Ok(run_accepted(run, StatusCode::ACCEPTED));
    }
    let Some(task) = task else {
        return wait_in_journal(state, run).await;
    };
    tokio::select! {
        o = task => {
            let o = o.map_err(|e| Problem::internal(format!("the run's task failed: {e}")))?;
            Ok(json_response(StatusCode::OK, &json!({
                "run": run.to_string(),
                "status": o.status.as_str(),
                "output": o.output.as_deref().map(output_json),
                "error": o.error,
            })))
        }
        _ = state.shutdown.cancelled() => Err(shutting_down()),
    }
}

/// Waits for `run`'s `RunFinished`, wherever the run executes, and answers as a waited submit.
async fn wait_in_journal(state: &Arc<State>, run: RunId) -> Reply {
    let mut appended = state.journal.subscribe(run);
    // What the last look at the journal saw; `None`: look now.
    let mut looked: Option<crate::journal::Appended> = None;
    loop {
        let now = *appended.borrow_and_update();
        // An append through this journal that did not end the run cannot have ended it: only
        // the first pass, an end, another host's appends or the safety poll read the store (on
        // a shared store each read is a round trip, and a run wakes this on every step).
        let unchanged = looked.is_some_and(|l| !now.ended && now.remote == l.remote);
        looked = Some(now);
        let journal = state.journal.clone();
        let end = if unchanged {
            None
        } else {
            tokio::task::spawn_blocking(move || {
                if !journal.run_summary(run)?.status.is_finished() {
                    return Ok(None);
                }
                match journal.events(run)?.pop().map(|r| r.event) {
                    Some(Event::RunFinished {
                        status,
                        output,
                        error,
                    }) => {
                        let output = match output {
                            Some(p) => {
                                Some(String::from_utf8_lossy(&journal.payload(&p)?).into_owned())
                            }
                            None => None,
                        };
                        Ok::<_, JournalError>(Some((status, output, error)))
                    }
                    _ => Ok(None),
                }
            })
            .await
            .map_err(|e| Problem::internal(format!("reading the run failed: {e}")))?
            .map_err(journal_err)?
        };
        if let Some((status, output, error)) = end {
            return Ok(json_response(
                StatusCode::OK,
                &json!({
                    "run": run.to_string(),
                    "status": status.as_str(),
                    "output": output.as_deref().map(output_json),
                    "error": error,
                }),
            ));
        }
        tokio::select! {
            _ = appended.changed() => {}
            _ = tokio::time::sleep(if state.journal.follows_other_hosts() {
                super::claims::SAFETY_POLL
            } else {
                super::claims::POLL * 2
            }) => looked = None,
            _ = state.shutdown.cancelled() => return Err(shutting_down()),
        }
    }
}

fn output_json(s: &str) -> Value {
    serde_json::from_str(s).unwrap_or_else(|_| Value::String(s.to_owned()))
}

/// The default and largest page of `GET /v1/runs`.
const RUNS_PAGE: usize = 100;
const RUNS_PAGE_MAX: usize = 1000;

/// A page position: the last run of the previous page, as `created_ms.run` in URL-safe base64.
/// Runs are ordered by (creation time, id), so a cursor stays valid as new runs arrive.
fn encode_cursor(created_ms: u64, run: RunId) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("{created_ms}.{run}"))
}

fn decode_cursor(cursor: &str) -> Result<(u64, RunId), Problem> {
    let bad = || {
        Problem::bad_request(
            "invalid-cursor",
            format!(
                "cursor '{}' is not one this server handed out; pass next_cursor from the previous page unchanged",
                cursor.chars().take(64).collect::<String>()
            ),
        )
    };
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(cursor)
        .map_err(|_| bad())?;
    let text = String::from_utf8(bytes).map_err(|_| bad())?;
    let (ms, run) = text.split_once('.').ok_or_else(bad)?;
    let ms = ms.parse::<u64>().map_err(|_| bad())?;
    let run = RunId::parse(run).map_err(|_| bad())?;
    Ok((ms, run))
}

fn list_runs(state: &State, query: Option<&str>) -> Reply {
    let graph = query_param(query, "graph");
    let status = query_param(query, "status");
    if let Some(s) = status
        && !["running", "waiting", "succeeded", "failed", "cancelled"].contains(&s)
    {
        return Err(Problem::bad_request(
            "invalid-query",
            format!("status '{s}' is not one of running, succeeded, failed, cancelled"),
        ));
    }
    let limit = match query_param(query, "limit") {
        None => RUNS_PAGE,
        Some(v) => v
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=RUNS_PAGE_MAX).contains(n))
            .ok_or_else(|| {
                Problem::bad_request(
                    "invalid-limit",
                    format!(
                        "limit '{}' is not a whole number from 1 to {RUNS_PAGE_MAX}",
                        v.chars().take(32).collect::<String>()
                    ),
                )
            })?,
    };
    let newest_first = match query_param(query, "order") {
        None | Some("asc") => false,
        Some("desc") => true,
        Some(o) => {
            return Err(Problem::bad_request(
                "invalid-query",
                format!(
                    "order '{}' is not asc (oldest first) or desc (newest first)",
                    o.chars().take(32).collect::<String>()
                ),
            ));
        }
    };
    let with_usage = match query_param(query, "usage") {
        None | Some("false") => false,
        Some("true") => true,
        Some(u) => {
            return Err(Problem::bad_request(
                "invalid-query",
                format!(
                    "usage '{}' is not true or false",
                    u.chars().take(32).collect::<String>()
                ),
            ));
        }
    };
    let after = query_param(query, "cursor")
        .map(decode_cursor)
        .transpose()?;
    // `runs()` is ordered by (created_ms, run); a cursor is the last run of the previous page
    // in the order asked for.
    let mut runs = state.journal.runs().map_err(journal_err)?;
    if newest_first {
        runs.reverse();
    }
    let mut matching = runs
        .into_iter()
        .filter(|r| graph.is_none_or(|g| r.graph_name == g))
        .filter(|r| status.is_none_or(|s| r.status.as_str() == s))
        .filter(|r| {
            after.is_none_or(|a| {
                if newest_first {
                    (r.created_ms, r.run) < a
                } else {
                    (r.created_ms, r.run) > a
                }
            })
        })
        .peekable();
    let mut page = Vec::with_capacity(limit.min(64));
    let mut last = None;
    while page.len() < limit {
        let Some(r) = matching.next() else { break };
        last = Some((r.created_ms, r.run));
        let mut entry = json!({
            "run": r.run.to_string(), "graph": r.graph_name, "graph_version": r.graph_digest,
            "status": r.status.as_str(), "created_ms": r.created_ms, "updated_ms": r.updated_ms,
            "events": r.events,
        });
        if with_usage {
            let (_, total) = crate::journal::usage::model_usage(
                &state.journal.events(r.run).map_err(journal_err)?,
            );
            entry["usage"] = json!(total);
        }
        page.push(entry);
    }
    let next_cursor = match (matching.peek(), last) {
        (Some(_), Some((ms, run))) => Value::String(encode_cursor(ms, run)),
        _ => Value::Null,
    };
    Ok(json_response(
        StatusCode::OK,
        &json!({ "runs": page, "next_cursor": next_cursor }),
    ))
}

async fn get_run(state: &Arc<State>, id: &str) -> Reply {
    let run = parse_run(id)?;
    let journal = state.journal.clone();
    // The summary before the events: a run's events commit no later than the summary that
    // counts them, so a summary read first never says "finished" beside events without the
    // end (on a shared journal the run may be committing on another replica meanwhile). An
    // end among the events then tells the status the summary did not have yet.
    let (mut summary, records): (_, Vec<Record>) = tokio::task::spawn_blocking(move || {
        let summary = journal.run_summary(run)?;
        Ok::<_, JournalError>((summary, journal.events(run)?))
    })
    .await
    .map_err(|e| Problem::internal(e.to_string()))?
    .map_err(journal_err)?;
    if let Some(Event::RunFinished { status, .. }) = records.last().map(|r| &r.event) {
        summary.status = *status;
    }
    let mut steps: Vec<(String, serde_json::Map<String, Value>)> = Vec::new();
    let mut output = Value::Null;
    let mut error = Value::Null;
    for r in &records {
        let step_entry = |steps: &mut Vec<(String, serde_json::Map<String, Value>)>, step: &str| {
            if let Some(i) = steps.iter().position(|(s, _)| s == step) {
                i
            } else {
                steps.push((step.to_owned(), serde_json::Map::new()));
                steps.len() - 1
            }
        };
        match &r.event {
            Event::StepScheduled {
                step,
                node,
                iteration,
                ..
            } => {
                let i = step_entry(&mut steps, step);
                let m = &mut steps[i].1;
                m.insert("node".into(), json!(node));
                m.insert("iteration".into(), json!(iteration));
                m.insert("status".into(), json!("scheduled"));
            }
            Event::StepStarted { step, attempt } => {
                let i = step_entry(&mut steps, step);
                steps[i].1.insert("status".into(), json!("running"));
                steps[i].1.insert("attempts".into(), json!(attempt));
            }
            Event::StepCompleted { step, output, .. } => {
                let i = step_entry(&mut steps, step);
                steps[i].1.insert("status".into(), json!("completed"));
                let bytes = state.journal.payload(output).map_err(journal_err)?;
                steps[i].1.insert(
                    "output".into(),
                    output_json(&String::from_utf8_lossy(&bytes)),
                );
            }
            Event::StepFailed {
                step,
                kind,
                message,
                retry_in_ms,
                ..
            } => {
                let i = step_entry(&mut steps, step);
                let m = &mut steps[i].1;
                m.insert(
                    "status".into(),
                    json!(if retry_in_ms.is_some() {
                        "retrying"
                    } else {
                        "failed"
                    }),
                );
                m.insert("error".into(), json!({"kind": kind, "message": message}));
            }
            Event::RunFinished {
                output: o,
                error: e,
                ..
            } => {
                if let Some(o) = o {
                    let bytes = state.journal.payload(o).map_err(journal_err)?;
                    output = output_json(&String::from_utf8_lossy(&bytes));
                }
                error = json!(e);
            }
            Event::StepAwaitingApproval { step, input } => {
                let i = step_entry(&mut steps, step);
                steps[i]
                    .1
                    .insert("status".into(), json!("awaiting_approval"));
                let bytes = state.journal.payload(input).map_err(journal_err)?;
                steps[i].1.insert(
                    "pending_input".into(),
                    output_json(&String::from_utf8_lossy(&bytes)),
                );
            }
            Event::StepApproval {
                step,
                approved,
                comment,
            } => {
                let i = step_entry(&mut steps, step);
                steps[i].1.remove("pending_input");
                steps[i].1.insert(
                    "status".into(),
                    json!(if *approved { "approved" } else { "rejected" }),
                );
                steps[i].1.insert(
                    "approval".into(),
                    json!({"approved": approved, "comment": comment}),
                );
            }
            Event::RunCreated { .. }
            | Event::Crossing { .. }
            | Event::WorkspaceSnapshot { .. }
            | Event::StepAudit { .. } => {}
        }
    }
    let (usage, total) = crate::journal::usage::model_usage(&records);
    let steps: Vec<Value> = steps
        .into_iter()
        .map(|(s, mut m)| {
            if let Some(u) = usage.get(&s) {
                m.insert("usage".into(), json!(u));
            }
            m.insert("step".into(), json!(s));
            Value::Object(m)
        })
        .collect();
    Ok(json_response(
        StatusCode::OK,
        &json!({
            "run": run.to_string(), "graph": summary.graph_name, "graph_version": summary.graph_digest,
            "status": summary.status.as_str(), "created_ms": summary.created_ms,
            "updated_ms": summary.updated_ms, "events": summary.events,
            "steps": steps, "output": output, "error": error, "usage": total,
        }),
    ))
}

/// The body of `POST /v1/runs/{id}/steps/{step}/approval`.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ApprovalRequest {
    decision: ApprovalDecision,
    #[serde(default)]
    comment: Option<String>,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "lowercase")]
enum ApprovalDecision {
    Approve,
    Reject,
}

/// Approves or rejects a step awaiting approval; the paused run continues (or fails with the
/// comment, when rejected).
async fn post_approval(state: &Arc<State>, id: &str, step: &str, req: Request<Incoming>) -> Reply {
    let run = parse_run(id)?;
    let step = percent_encoding::percent_decode_str(step)
        .decode_utf8()
        .map_err(|e| Problem::bad_request("bad-step", format!("step name is not UTF-8: {e}")))?
        .into_owned();
    let body = read_body(state, req, 64 * 1024).await?;
    let request: ApprovalRequest = serde_json::from_slice(&body).map_err(|e| {
        Problem::bad_request(
            "bad-json",
            format!(
                "the body is not {{\"decision\": \"approve\" | \"reject\", \"comment\"?: string}}: {e}"
            ),
        )
    })?;
    let approved = matches!(request.decision, ApprovalDecision::Approve);
    let local = state
        .active
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .contains_key(&run);
    if !local && state.queue.is_some() {
        // Another replica executes (or will claim) the run: check the decision against the
        // shared journal here, and leave it for that replica to journal and act on.
        let journal = state.journal.clone();
        let s = step.clone();
        let checked = tokio::task::spawn_blocking(move || {
            crate::graph::engine::check_decision(&journal, run, &s)
        })
        .await
        .map_err(|e| Problem::internal(format!("checking the decision failed: {e}")))?;
        return match checked {
            Ok(()) => {
                let command = Command::Decide {
                    step: step.clone(),
                    approved,
                    comment: request.comment.clone(),
                };
                if !forward(state, run, command).await? {
                    return Err(Problem::new(
                        StatusCode::CONFLICT,
                        "run-not-local",
                        format!("run {run} is not executed by any replica"),
                    ));
                }
                Ok(json_response(
                    StatusCode::ACCEPTED,
                    &json!({"run": run.to_string(), "step": step, "approved": approved, "comment": request.comment, "forwarded": true}),
                ))
            }
            Err(e) => Err(decision_problem(e)),
        };
    }
    match state
        .engine
        .decide(run, &step, approved, request.comment.clone())
        .await
    {
        Ok(()) => Ok(json_response(
            StatusCode::OK,
            &json!({"run": run.to_string(), "step": step, "approved": approved, "comment": request.comment}),
        )),
        Err(e) => Err(decision_problem(e)),
    }
}

fn decision_problem(e: crate::graph::engine::DecisionError) -> Problem {
    use crate::graph::engine::DecisionError;
    match e {
        DecisionError::Journal(e) => journal_err(e),
        e @ DecisionError::Finished { .. } => {
            Problem::new(StatusCode::CONFLICT, "run-finished", e.to_string())
        }
        e @ DecisionError::NotAwaiting { .. } => {
            Problem::new(StatusCode::CONFLICT, "not-awaiting-approval", e.to_string())
        }
    }
}

/// `GET /v1/whoami`: the caller's subject and scopes (what the console shows and enables).
fn whoami(req: &Request<Incoming>) -> Response<ApiBody> {
    match req.extensions().get::<super::auth::Principal>() {
        Some(p) => json_response(
            StatusCode::OK,
            &json!({
                "subject": p.subject,
                "scopes": p.scopes.iter().map(|s| s.as_str()).collect::<Vec<_>>(),
            }),
        ),
        None => problem_response(&Problem::internal("the caller was not authenticated")),
    }
}

/// `POST /v1/runs/{id}/replay`: every completed step executed again offline from the run's
/// pinned graph and components with only its journaled crossings served, and its output compared
/// byte for byte (what `sandgraph replay` does, on the server's journal). Nothing is written.
async fn replay_run(state: &Arc<State>, id: &str) -> Reply {
    let run = parse_run(id)?;
    state.journal.run_summary(run).map_err(journal_err)?;
    let report = crate::graph::replay::replay(&state.engine, run)
        .await
        .map_err(|e| Problem::internal(format!("replay of run {run} failed: {e}")))?;
    let identical = report.identical();
    let mut body = serde_json::to_value(&report).unwrap_or_default();
    if let Value::Object(m) = &mut body {
        m.insert("identical".into(), json!(identical));
    }
    Ok(json_response(StatusCode::OK, &body))
}

async fn cancel_run(state: &State, id: &str) -> Reply {
    let run = parse_run(id)?;
    // The journal decides: a run whose RunFinished is written has ended, even while its task
    // is still being cleaned up.
    let summary = state.journal.run_summary(run).map_err(journal_err)?;
    if summary.status.is_finished() {
        return Err(Problem::new(
            StatusCode::CONFLICT,
            "run-finished",
            format!("run {run} already ended {}", summary.status),
        ));
    }
    let token = state
        .active
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(&run)
        .cloned();
    match token {
        Some(t) => {
            t.cancel();
            tracing::info!(run_id = %run, "run cancel requested");
            Ok(json_response(
                StatusCode::ACCEPTED,
                &json!({"run": run.to_string(), "status": "cancelling"}),
            ))
        }
        None => match forward(state, run, Command::Cancel).await? {
            true => {
                tracing::info!(run_id = %run, "run cancel requested (forwarded to its replica)");
                Ok(json_response(
                    StatusCode::ACCEPTED,
                    &json!({"run": run.to_string(), "status": "cancelling"}),
                ))
            }
            false => Err(Problem::new(
                StatusCode::CONFLICT,
                "run-not-local",
                format!("run {run} is running but not in this process; cancel it where it runs"),
            )),
        },
    }
}

/// Leaves `command` for the replica executing `run` (on a shared journal, for a run another
/// replica holds or will claim); false when the run is not in the shared queue.
async fn forward(state: &State, run: RunId, command: Command) -> Result<bool, Problem> {
    let Some(queue) = state.queue.clone() else {
        return Ok(false);
    };
    tokio::task::spawn_blocking(move || {
        if !queue.holds(run)? {
            return Ok(false);
        }
        queue.send(run, &command)?;
        Ok(true)
    })
    .await
    .map_err(|e| Problem::internal(format!("forwarding to the run's replica failed: {e}")))?
    .map_err(journal_err)
}
