//! Sandgraph's tools for any agent framework, over the Model Context Protocol (the `rmcp` SDK):
//! `tools/list` names every tool component of the catalog with the description and input and
//! output JSON Schemas its `info()` declares; `tools/call` is a sandboxed call exactly like a
//! graph step (a fresh instance, the grant the operator's policy and the tool's manifest
//! intersect to, its audit record). A refusal or failure comes back as a tool error the model
//! can read (`isError`, the typed error as structured content); only a call that cannot be
//! routed (unknown tool) is a JSON-RPC error. Served over stdio ([`stdio`]) by `sandgraph mcp`
//! and over streamable HTTP ([`http`]) at `/mcp` by `sandgraph serve`.

pub mod http;
pub mod stdio;

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use rmcp::ServerHandler;
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, ErrorCode, ErrorData,
    Implementation, JsonObject, ListToolsResult, PaginatedRequestParams, ProtocolVersion,
    ServerCapabilities, ServerConfig, Tool,
};
use rmcp::service::{NotificationContext, Peer, RequestContext, RoleServer};
use serde_json::Value;

use crate::graph::catalog::Catalog;
use crate::graph::engine::Engine;
use crate::journal::{Event, RunStatus};
use crate::sandbox::Sandbox;
use crate::sandbox::manifest::{CallGrant, EffectiveGrant, OperatorPolicy};
use crate::sandbox::outcome::{AuditRecord, CallError};
use crate::sandbox::registry::LoadedTool;

/// What one client's credentials narrow its calls to, beyond the operator's policy and each
/// tool's manifest (the API derives it from the token's scopes): `tools` names the only tools it
/// may list and call, `egress_hosts` the only host patterns its calls may reach. `None`: no
/// narrowing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientGrant {
    pub tools: Option<std::collections::BTreeSet<String>>,
    pub egress_hosts: Option<Vec<String>>,
}

impl ClientGrant {
    fn allows(&self, tool: &str) -> bool {
        self.tools.as_ref().is_none_or(|t| t.contains(tool))
    }
}

/// The client's grant, where the transport carries one (streamable HTTP, from the API).
fn client_grant(extensions: &rmcp::model::Extensions) -> ClientGrant {
    extensions
        .get::<::http::request::Parts>()
        .and_then(|p| p.extensions.get::<ClientGrant>())
        .cloned()
        .unwrap_or_default()
}

/// The catalog as it is now (the API's changes as tools are uploaded).
pub type CatalogSource = Arc<dyn Fn() -> Arc<Catalog> + Send + Sync>;

/// Sees every call's audit record (the API's metrics).
pub type CallObserver = Arc<dyn Fn(&AuditRecord) + Send + Sync>;

/// The MCP server's handler; one per process, cloned into every session.
#[derive(Clone)]
pub struct McpTools {
    inner: Arc<Inner>,
}

struct Inner {
    sandbox: Arc<Sandbox>,
    catalog: CatalogSource,
    policy: OperatorPolicy,
    grant: CallGrant,
    observer: Option<CallObserver>,
    /// When set, every call is a one-step run of this engine: journaled, listed with the runs,
    /// replayable offline.
    engine: Option<Arc<Engine>>,
    /// Sessions that finished `initialize`, told when the tool list changes.
    peers: Mutex<Vec<Peer<RoleServer>>>,
    /// Per component digest: what `tools/list` shows of it and its input validator.
    described: Mutex<HashMap<String, Arc<Described>>>,
}

/// One tool as listed, with what a call needs.
struct Described {
    tool: Tool,
    input: Option<Arc<jsonschema::Validator>>,
    loaded: Arc<LoadedTool>,
}

impl McpTools {
    /// Serves the tools of `catalog` under the operator's `policy`; `grant` is what every call
    /// is handed besides (a workspace). With `engine`, calls are journaled as runs of it (its
    /// sandbox and policy are then the ones calls run under).
    pub fn new(
        sandbox: Arc<Sandbox>,
        catalog: CatalogSource,
        policy: OperatorPolicy,
        grant: CallGrant,
        observer: Option<CallObserver>,
        engine: Option<Arc<Engine>>,
    ) -> McpTools {
        McpTools {
            inner: Arc::new(Inner {
                sandbox,
                catalog,
                policy,
                grant,
                observer,
                engine,
                peers: Mutex::default(),
                described: Mutex::default(),
            }),
        }
    }

    /// Tells every connected session that the tool list changed
    /// (`notifications/tools/list_changed`); sessions that ended are forgotten.
    pub fn tools_changed(&self) {
        let peers: Vec<Peer<RoleServer>> = {
            let mut peers = self.inner.peers.lock().unwrap_or_else(|p| p.into_inner());
            peers.retain(|p| !p.is_transport_closed());
            peers.clone()
        };
        for peer in peers {
            tokio::spawn(async move {
                if let Err(e) = peer.notify_tool_list_changed().await {
                    tracing::debug!(error = %e, "an MCP session missed a tool list change");
                }
            });
        }
    }

    /// Every tool of the catalog `client` may use, as listed (agents are not tools: they
    /// need a model).
    async fn tools(&self, client: &ClientGrant) -> Vec<Arc<Described>> {
        let catalog = (self.inner.catalog)();
        let mut out = Vec::new();
        for m in catalog.manifests() {
            let name = m.metadata.name.clone();
            if !client.allows(&name) {
                continue;
            }
            match self.describe(&catalog, &name).await {
                Ok(Some(d)) => out.push(d),
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(tool = %name, error = %e, "tool left out of the MCP tool list")
                }
            }
        }
        out
    }

    /// `name` as listed; `None` when it is an agent; an error when it cannot be loaded.
    async fn describe(
        &self,
        catalog: &Catalog,
        name: &str,
    ) -> Result<Option<Arc<Described>>, CallError> {
        let Some(entry) = catalog.get(name) else {
            return Ok(None);
        };
        let key = format!("{name}\u{0}{}", entry.digest);
        if let Some(d) = self
            .inner
            .described
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
        {
            return Ok(Some(d.clone()));
        }
        let sandbox = &self.inner.sandbox;
        let loaded = match sandbox.registry().loaded(&entry.digest) {
            Some(l) => l,
            None => {
                let wasm = entry.wasm.clone();
                let s = sandbox.clone();
                tokio::task::spawn_blocking(move || s.registry().load(&wasm))
                    .await
                    .map_err(|e| CallError::BadComponent {
                        reason: format!("loading the component ended abnormally: {e}"),
                    })??
            }
        };
        if loaded.is_agent() {
            return Ok(None);
        }
        let info = &sandbox.described(&loaded).await?.info;
        let input_schema = schema_object(&info.input_schema);
        let mut tool = Tool::new_with_raw(
            name.to_owned(),
            Some(Cow::Owned(info.description.clone())),
            Arc::new(input_schema.clone().unwrap_or_else(any_object)),
        );
        tool.title = Some(format!("{} {}", info.name, info.version));
        // Only an object schema is a valid MCP output schema.
        if let Some(out) = schema_object(&info.output_schema)
            .filter(|o| o.get("type").and_then(Value::as_str) == Some("object"))
        {
            tool = tool.with_raw_output_schema(Arc::new(out));
        }
        let input = input_schema.and_then(|s| {
            jsonschema::validator_for(&Value::Object(s))
                .map(Arc::new)
                .map_err(|e| {
                    tracing::warn!(tool = %name, error = %e, "input schema does not compile; calls are not checked against it")
                })
                .ok()
        });
        let d = Arc::new(Described {
            tool,
            input,
            loaded,
        });
        self.inner
            .described
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, d.clone());
        Ok(Some(d))
    }

    /// One `tools/call`: checked against the tool's input schema, then run in a fresh instance
    /// under the effective grant, unless the client cancels it first.
    async fn call(
        &self,
        request: CallToolRequestParams,
        client: &ClientGrant,
        cancelled: tokio_util::sync::CancellationToken,
    ) -> Result<CallToolResult, ErrorData> {
        let name = request.name.to_string();
        let catalog = (self.inner.catalog)();
        let unknown = || {
            ErrorData::new(
                ErrorCode::INVALID_PARAMS,
                format!("unknown tool '{name}'; tools/list names the tools this server has"),
                Some(serde_json::json!({ "tool": name })),
            )
        };
        // A tool outside the client's grant is unknown to it, as in its list.
        let Some(entry) = catalog.get(&name).filter(|_| client.allows(&name)) else {
            return Err(unknown());
        };
        let described = match self.describe(&catalog, &name).await {
            Ok(Some(d)) => d,
            Ok(None) => return Err(unknown()),
            Err(e) => return Ok(failed(&e)),
        };
        let arguments = Value::Object(request.arguments.unwrap_or_default());
        if let Some(v) = &described.input {
            let errors: Vec<String> = crate::graph::engine::schema_errors(v, &arguments)
                .take(8)
                .collect();
            if !errors.is_empty() {
                return Ok(failed(&CallError::InvalidInput {
                    message: format!(
                        "the arguments do not match the tool's input schema: {}",
                        errors.join("; ")
                    ),
                }));
            }
        }
        if let Some(engine) = &self.inner.engine {
            return journaled(engine, &catalog, &name, arguments, cancelled).await;
        }
        let mut call_grant = self.inner.grant.clone();
        if let Some(hosts) = &client.egress_hosts {
            call_grant.egress_hosts = Some(hosts.clone());
        }
        let grant = EffectiveGrant::intersect(&self.inner.policy, &entry.manifest, &call_grant);
        let input = arguments.to_string();
        let span = tracing::info_span!("mcp.tools/call", tool = %name);
        let call = self.inner.sandbox.call(&described.loaded, &grant, &input);
        let report = tokio::select! {
            report = tracing::Instrument::instrument(call, span) => report,
            _ = cancelled.cancelled() => {
                // The instance is dropped with the call's future: nothing of it runs on.
                tracing::info!(tool = %name, "MCP tool call cancelled by the client");
                return Err(ErrorData::new(
                    ErrorCode::INTERNAL_ERROR,
                    "the call was cancelled by the client",
                    None,
                ));
            }
        };
        if let Some(observe) = &self.inner.observer {
            observe(&report.audit);
        }
        Ok(match report.result {
            Ok(out) => match serde_json::from_str::<Value>(&out) {
                Ok(v @ Value::Object(_)) => CallToolResult::structured(v),
                _ => CallToolResult::success(vec![ContentBlock::text(out)]),
            },
            Err(e) => failed(&e),
        })
    }
}

/// `name` called with `arguments` as a one-step run of `engine` (node `call`), so the call is
/// journaled with its crossings, listed with the runs and replayable; the run id comes back in
/// the result's `_meta` (`sandgraph/run`). A client's cancellation cancels the run.
async fn journaled(
    engine: &Arc<Engine>,
    catalog: &Catalog,
    name: &str,
    arguments: Value,
    cancelled: tokio_util::sync::CancellationToken,
) -> Result<CallToolResult, ErrorData> {
    let internal = |what: &str, e: &dyn std::fmt::Display| {
        ErrorData::new(ErrorCode::INTERNAL_ERROR, format!("{what}: {e}"), None)
    };
    // One input field per argument, each read from the run input as it is.
    let mut nodes = serde_json::Map::new();
    if let Value::Object(args) = &arguments {
        for key in args.keys() {
            let literal = serde_json::to_string(key).unwrap_or_default();
            nodes.insert(key.clone(), Value::String(format!("input[{literal}]")));
        }
    }
    let source = serde_json::json!({
        "apiVersion": "sandgraph.dev/v1",
        "kind": "Graph",
        "metadata": { "name": "mcp-call" },
        "spec": { "nodes": [ { "id": "call", "kind": "tool", "component": name, "input": nodes } ] },
    })
    .to_string();
    let graph = crate::graph::validate::validate("mcp-call", &source, &catalog.manifests())
        .map_err(|d| internal("the call's one-step graph is invalid", &d))?;
    let graph = Arc::new(crate::graph::CompiledGraph::compile(graph));
    let handle = engine
        .start(graph, catalog, arguments)
        .await
        .map_err(|e| internal("the call could not be journaled", &e))?;
    let run = handle.run;
    let cancel = handle.canceller();
    let outcome = tokio::select! {
        outcome = handle.wait() => outcome,
        _ = cancelled.cancelled() => {
            cancel.cancel();
            tracing::info!(tool = %name, run_id = %run, "MCP tool call cancelled by the client");
            return Err(ErrorData::new(
                ErrorCode::INTERNAL_ERROR,
                "the call was cancelled by the client",
                None,
            ));
        }
    };
    let mut result = match outcome.status {
        RunStatus::Succeeded => {
            let output: Value = outcome
                .output
                .as_deref()
                .and_then(|o| serde_json::from_str(o).ok())
                .unwrap_or(Value::Null);
            match output.get("call") {
                Some(v @ Value::Object(_)) => CallToolResult::structured(v.clone()),
                Some(v) => CallToolResult::success(vec![ContentBlock::text(v.to_string())]),
                None => CallToolResult::success(vec![]),
            }
        }
        _ => {
            // The step's typed failure, as the journal recorded it.
            let failed = engine.journal().events(run).ok().and_then(|records| {
                records.into_iter().rev().find_map(|r| match r.event {
                    Event::StepFailed { kind, message, .. } => Some((kind, message)),
                    _ => None,
                })
            });
            let (kind, message) = failed.unwrap_or_else(|| {
                (
                    outcome.status.as_str().to_owned(),
                    outcome.error.clone().unwrap_or_default(),
                )
            });
            let mut r = CallToolResult::error(vec![ContentBlock::text(message.clone())]);
            r.structured_content = Some(serde_json::json!({ "kind": kind, "message": message }));
            r
        }
    };
    let mut meta = JsonObject::new();
    meta.insert("sandgraph/run".into(), Value::String(run.to_string()));
    result.meta = Some(rmcp::model::MetaObject(meta));
    Ok(result)
}

/// A tool error the model can read: the error's message as text, the typed error (`kind` and
/// its fields, as `sandgraph tool call` prints it) as structured content.
fn failed(e: &CallError) -> CallToolResult {
    let mut r = CallToolResult::error(vec![ContentBlock::text(e.to_string())]);
    r.structured_content = serde_json::to_value(e).ok();
    r
}

/// `text` as a JSON object, if it is one.
fn schema_object(text: &str) -> Option<JsonObject> {
    match serde_json::from_str(text) {
        Ok(Value::Object(o)) => Some(o),
        _ => None,
    }
}

/// The input schema of a tool that declares none usable: any object.
fn any_object() -> JsonObject {
    let mut o = JsonObject::new();
    o.insert("type".into(), Value::String("object".into()));
    o
}

impl ServerHandler for McpTools {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(
            ServerCapabilities::builder()
                .enable_tools()
                .enable_tool_list_changed()
                .build(),
        )
        .with_server_info(Implementation::new("sandgraph", env!("CARGO_PKG_VERSION")))
        .with_instructions(
            "Sandgraph's tools, each call run in a fresh WebAssembly sandbox with only the \
             capabilities its manifest and the operator grant. A refused capability comes back \
             as a tool error naming what was refused.",
        )
    }

    /// Sessions start with `initialize` (revisions up to 2025-11-25), so every session is known
    /// here and told of tool list changes.
    fn supported_protocol_versions(&self) -> Cow<'static, [ProtocolVersion]> {
        Cow::Borrowed(ProtocolVersion::known_up_to(&ProtocolVersion::V_2025_11_25))
    }

    async fn on_initialized(&self, context: NotificationContext<RoleServer>) {
        self.inner
            .peers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(context.peer);
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        let client = client_grant(&context.extensions);
        let tools = self
            .tools(&client)
            .await
            .iter()
            .map(|d| d.tool.clone())
            .collect();
        Ok(ListToolsResult::with_all_items(tools))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let client = client_grant(&context.extensions);
        self.call(request, &client, context.ct)
            .await
            .map(Into::into)
    }
}
