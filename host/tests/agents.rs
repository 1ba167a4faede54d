//! Agent steps on the host: an agent component (tests/guests/src/bin/agent_*.rs) calls the
//! model and tools its node grants, each nested tool in a fresh sandbox with its own audit
//! record; ungranted ones are denied readably and audited; a tool where an agent is expected is
//! a clear error; token budgets stop a run; a resumed agent step gets its recorded model
//! answers and tool results back (the provider is not asked again, the side effect is not
//! repeated); an offline replay needs no model.
//!
//! The model here is a small deterministic scripted `ModelProvider` that counts its calls. The
//! same cases against the real providers (embedded engine, `openai` against a
//! `sandgraph-infer serve`) belong with the providers' `Models` registry.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};

use sandgraph::graph::catalog::Catalog;
use sandgraph::graph::engine::{Engine, EngineConfig, EngineError};
use sandgraph::graph::{CompiledGraph, validate};
use sandgraph::journal::{Crossing, Event, Journal, PayloadRef, RunId, RunStatus};
use sandgraph::model::{
    ChatRequest, ChatResponse, FinishReason, ModelError, ModelProvider, ModelTiming, TokenSink,
    Usage,
};
use sandgraph::sandbox::agent::ModelRouter;
use sandgraph::sandbox::egress::{SecretStore, StaticResolver};
use sandgraph::sandbox::engine::Allocator;
use sandgraph::sandbox::manifest::Manifest;
use sandgraph::sandbox::outcome::AuditRecord;
use sandgraph::sandbox::{Sandbox, SandboxConfig};

// ------------------------------------------------------------------------------ the model

/// Answers a request whose last message is the agent's input (it names `"tool"`) with
/// `plan`, anything else with `reviewed <n> bytes`. Usage: 10 prompt tokens, 5 completion
/// tokens (fewer when `max_tokens` is lower). Records every request it receives.
struct Scripted {
    plan: String,
    calls: AtomicU32,
    seen: Mutex<Vec<ChatRequest>>,
}

impl Scripted {
    fn new(plan: &str) -> Arc<Scripted> {
        Arc::new(Scripted {
            plan: plan.to_owned(),
            calls: AtomicU32::new(0),
            seen: Mutex::default(),
        })
    }
    fn calls(&self) -> u32 {
        self.calls.load(Ordering::SeqCst)
    }
}

#[async_trait::async_trait]
impl ModelProvider for Scripted {
    fn name(&self) -> &str {
        "scripted"
    }
    async fn chat(
        &self,
        request: &ChatRequest,
        _tokens: Option<&TokenSink>,
    ) -> Result<ChatResponse, ModelError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.seen.lock().unwrap().push(request.clone());
        let last = request.messages.last().map_or("", |m| m.content.as_str());
        let content = if last.contains("\"tool\"") {
            self.plan.clone()
        } else {
            format!("reviewed {} bytes", last.len())
        };
        Ok(ChatResponse {
            model: "scripted-1".into(),
            provider: "scripted".into(),
            content,
            tool_calls: vec![],
            finish_reason: FinishReason::Stop,
            usage: Usage {
                prompt_tokens: 10,
                completion_tokens: request.max_tokens.unwrap_or(5).min(5),
            },
            timing: ModelTiming::default(),
        })
    }
}

/// The alias `default` served by one provider (what the providers' `Models` does per alias).
struct OneAlias(Arc<Scripted>);

#[async_trait::async_trait]
impl ModelRouter for OneAlias {
    fn contains(&self, alias: &str) -> bool {
        alias == "default"
    }
    fn aliases(&self) -> Vec<String> {
        vec!["default".into()]
    }
    async fn chat(
        &self,
        _alias: &str,
        request: &ChatRequest,
        tokens: Option<&TokenSink>,
    ) -> Result<ChatResponse, ModelError> {
        self.0.chat(request, tokens).await
    }
}

// ------------------------------------------------------------------------------ plumbing

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn sandbox() -> Arc<Sandbox> {
    Arc::new(
        Sandbox::new(SandboxConfig {
            allocator: Allocator::Pooling,
            cache_dir: Some(common::cache_dir()),
            resolver: Arc::new(StaticResolver::default()),
            secrets: SecretStore::default(),
            extra_roots: Vec::new(),
        })
        .expect("sandbox"),
    )
}

type Audits = Arc<Mutex<Vec<(String, AuditRecord)>>>;

/// An engine on `journal` with the scripted model (if any); nested audit records collected.
fn engine(journal: Arc<Journal>, model: Option<Arc<Scripted>>) -> (Engine, Audits) {
    let mut config = EngineConfig::default();
    config.policy.allow_private = vec!["127.0.0.1".parse().unwrap()];
    let audits: Audits = Arc::default();
    let seen = audits.clone();
    let mut engine = Engine::new(sandbox(), journal, config).with_call_observer(Arc::new(
        move |_, step, _, audit| seen.lock().unwrap().push((step.to_owned(), audit.clone())),
    ));
    if let Some(m) = model {
        engine = engine.with_models(Arc::new(OneAlias(m)));
    }
    (engine, audits)
}

fn manifest_text(name: &str, spec_yaml: &str) -> String {
    let mut text =
        format!("apiVersion: sandgraph.dev/v1\nkind: ToolManifest\nmetadata: {{ name: {name} }}\n");
    if !spec_yaml.is_empty() {
        text.push_str("spec:\n");
        for line in spec_yaml.lines() {
            text.push_str("  ");
            text.push_str(line);
            text.push('\n');
        }
    }
    text
}

fn add(catalog: &mut Catalog, name: &str, wasm: &str, spec_yaml: &str) {
    let text = manifest_text(name, spec_yaml);
    let manifest = Manifest::parse("test.yaml", &text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    catalog.insert(manifest, text, std::fs::read(wasm).unwrap());
}

/// calc (from tools/), the two test agents, and `poster` (a guest that POSTs to 127.0.0.1).
fn catalog(poster_port: u16) -> Catalog {
    let mut c = Catalog::default();
    let calc = root().join("tools/calc/calc.sandgraph.yaml");
    let text = std::fs::read_to_string(&calc).unwrap();
    c.insert(
        Manifest::parse("calc", &text).unwrap(),
        text,
        std::fs::read(sandgraph_test_artifacts::TOOL_CALC).unwrap(),
    );
    add(
        &mut c,
        "agent_tool_and_model",
        common::hostile("agent_tool_and_model"),
        "",
    );
    add(
        &mut c,
        "agent_ungranted",
        common::hostile("agent_ungranted"),
        "",
    );
    add(
        &mut c,
        "agent_bad_output",
        common::hostile("agent_bad_output"),
        "",
    );
    add(
        &mut c,
        "poster",
        common::hostile("journal_post_body"),
        &format!(
            "egress:\n  - {{ scheme: http, host: 127.0.0.1, port: {poster_port}, methods: [POST] }}"
        ),
    );
    c
}

fn compile(source: &str, catalog: &Catalog) -> Arc<CompiledGraph> {
    let spec = validate::validate("test.yaml", source, &catalog.manifests())
        .unwrap_or_else(|d| panic!("{d}\n{source}"));
    Arc::new(CompiledGraph::compile(spec))
}

fn agent_graph(tools: &str, extra: &str, limits: &str) -> String {
    format!(
        r#"apiVersion: sandgraph.dev/v1
kind: Graph
metadata: {{ name: agent-test }}
spec:
  nodes:
    - id: act
      kind: agent
      component: agent_tool_and_model
      tools: [{tools}]
      models: [default]
      input:
        tool: input.tool
{extra}
{limits}
"#
    )
}

/// A loopback server counting the POSTs it receives per path (the nested tool's side effect).
fn counting_server() -> (u16, Arc<Mutex<HashMap<String, u32>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let counts: Arc<Mutex<HashMap<String, u32>>> = Arc::default();
    let c = counts.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let c = c.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(conn.try_clone().unwrap());
                let Ok(Some(head)) = common::http_head::read_request_head(&mut reader) else {
                    return;
                };
                let mut body = vec![0; head.content_length().min(1 << 16)];
                let _ = reader.read_exact(&mut body);
                *c.lock().unwrap().entry(head.target.clone()).or_default() += 1;
                let mut out = conn;
                let _ = write!(
                    out,
                    "HTTP/1.1 200 OK\r\nContent-Length: 4\r\nConnection: close\r\n\r\ndone"
                );
                let _ = out.flush();
                let _ = reader.fill_buf();
            });
        }
    });
    (port, counts)
}

fn crossings(journal: &Journal, run: RunId) -> Vec<Crossing> {
    journal
        .events(run)
        .unwrap()
        .into_iter()
        .filter_map(|r| match r.event {
            Event::Crossing { crossing, .. } => Some(crossing),
            _ => None,
        })
        .collect()
}

fn count(cs: &[Crossing], pred: impl Fn(&Crossing) -> bool) -> usize {
    cs.iter().filter(|c| pred(c)).count()
}

// ------------------------------------------------------------------------------ cases

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_calls_its_granted_tool_and_model_and_replays_without_a_model() {
    let catalog = catalog(1);
    let graph = compile(&agent_graph("calc", "", ""), &catalog);
    let journal = Arc::new(Journal::temporary().unwrap());
    let model = Scripted::new(r#"{"expr":"6 * 7"}"#);
    let (engine, audits) = engine(journal.clone(), Some(model.clone()));
    let out = engine
        .run(graph, &catalog, json!({"tool": "calc"}))
        .await
        .unwrap();
    assert_eq!(out.status, RunStatus::Succeeded, "{:?}", out.error);
    let v: Value = serde_json::from_str(out.output.as_deref().unwrap()).unwrap();
    let act = &v["act"];
    assert_eq!(act["tools"], json!(["calc"]), "{v}");
    assert_eq!(act["plan"], r#"{"expr":"6 * 7"}"#, "{v}");
    assert_eq!(act["tool_output"]["value"], json!(42.0), "{v}");
    assert_eq!(act["tokens"], 30, "{v}");
    assert_eq!(model.calls(), 2);

    // Two model calls and one nested tool call, all journaled.
    let cs = crossings(&journal, out.run);
    assert_eq!(
        count(&cs, |c| matches!(c, Crossing::ModelRequest { .. })),
        2
    );
    assert_eq!(
        count(&cs, |c| matches!(
            c,
            Crossing::ModelResponse { ok: true, .. }
        )),
        2
    );
    assert_eq!(
        count(
            &cs,
            |c| matches!(c, Crossing::ToolRequest { tool, .. } if tool == "calc")
        ),
        1
    );
    assert_eq!(
        count(&cs, |c| matches!(c, Crossing::ToolResult { ok: true, .. })),
        1
    );

    // The nested call has its own audit record, linked to the agent step.
    let audits = audits.lock().unwrap().clone();
    let nested: Vec<_> = audits.iter().filter(|(_, a)| a.tool == "calc").collect();
    assert_eq!(nested.len(), 1, "{audits:?}");
    assert_eq!(nested[0].1.outcome, "ok");
    let parent = nested[0].1.parent.as_deref().unwrap();
    assert_eq!(parent, format!("{}/act#1@1", out.run), "{parent}");

    // Usage as `runs show` and GET /v1/runs/{id} report it, from the journal.
    let (per_step, total) =
        sandgraph::journal::usage::model_usage(&journal.events(out.run).unwrap());
    assert_eq!(
        (total.model_calls, total.input_tokens, total.output_tokens),
        (2, 20, 10)
    );
    assert_eq!(per_step["act#1"], total);

    // Offline replay: no model provider at all, and the step is identical.
    let (offline, _) = self::engine(journal.clone(), None);
    let report = offline.replay(out.run).await.unwrap();
    assert!(report.identical(), "{report:?}");
    assert_eq!(model.calls(), 2, "replay asked the model");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ungranted_tools_and_models_are_denied_readably_and_audited() {
    let catalog = catalog(1);
    let source = agent_graph("calc", "", "").replace("agent_tool_and_model", "agent_ungranted");
    let graph = compile(&source, &catalog);
    let journal = Arc::new(Journal::temporary().unwrap());
    let model = Scripted::new("{}");
    let (engine, audits) = engine(journal.clone(), Some(model.clone()));
    let out = engine
        .run(graph, &catalog, json!({"tool": "calc"}))
        .await
        .unwrap();
    assert_eq!(out.status, RunStatus::Succeeded, "{:?}", out.error);
    let v: Value = serde_json::from_str(out.output.as_deref().unwrap()).unwrap();
    let model_error = v["act"]["model_error"].as_str().unwrap();
    assert!(
        model_error.starts_with("ModelError::Denied"),
        "{model_error}"
    );
    assert!(
        model_error.contains("model 'forbidden' is not granted to node 'act' (it grants: default)"),
        "{model_error}"
    );
    let tool_error = v["act"]["tool_error"].as_str().unwrap();
    assert!(tool_error.starts_with("ToolError::Denied"), "{tool_error}");
    assert!(
        tool_error.contains("tool 'forbidden' is not granted to node 'act' (it grants: calc)"),
        "{tool_error}"
    );
    assert_eq!(model.calls(), 0, "a denied model call reached the provider");
    let audits = audits.lock().unwrap().clone();
    for tool in ["model:forbidden", "forbidden"] {
        let a = audits
            .iter()
            .find(|(_, a)| a.tool == tool)
            .unwrap_or_else(|| panic!("no audit record for {tool}: {audits:?}"));
        assert_eq!(a.1.outcome, "denied");
        assert!(a.1.parent.as_deref().unwrap().ends_with("/act#1@1"));
    }
    let cs = crossings(&journal, out.run);
    assert_eq!(
        count(
            &cs,
            |c| matches!(c, Crossing::Denial { capability, target } if capability == "model" && target == "forbidden")
        ),
        1
    );
    assert_eq!(
        count(
            &cs,
            |c| matches!(c, Crossing::Denial { capability, target } if capability == "tool" && target == "forbidden")
        ),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_that_gives_up_on_a_denial_fails_its_step_as_a_host_denial() {
    // The node grants calc only; the agent is told to call `poster`.
    let catalog = catalog(1);
    let graph = compile(&agent_graph("calc", "", ""), &catalog);
    let journal = Arc::new(Journal::temporary().unwrap());
    let (engine, _) = engine(journal, Some(Scripted::new("{}")));
    let out = engine
        .run(graph, &catalog, json!({"tool": "poster"}))
        .await
        .unwrap();
    assert_eq!(out.status, RunStatus::Failed);
    let e = out.error.unwrap();
    assert!(e.contains("denied Tool to poster"), "{e}");
    assert!(e.contains("add it to the node's `tools:`"), "{e}");
}

/// An agent's output is held to the output schema it declares, like a tool's: a mismatch fails
/// the step once (never retried) as `output_invalid`, and the journal says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_output_that_breaks_its_declared_schema_fails_the_step() {
    let catalog = catalog(1);
    let source = agent_graph("", "", "")
        .replace(
            "component: agent_tool_and_model",
            "component: agent_bad_output",
        )
        .replace("      tools: []\n", "");
    let graph = compile(&source, &catalog);
    let journal = Arc::new(Journal::temporary().unwrap());
    let (engine, _) = engine(journal.clone(), Some(Scripted::new("{}")));
    let out = engine
        .run(graph, &catalog, json!({"tool": "calc"}))
        .await
        .unwrap();
    assert_eq!(out.status, RunStatus::Failed);
    let e = out.error.unwrap();
    assert!(
        e.contains("step 'act#1' failed after 1 attempt: output does not match the component's declared output schema: /verdict: "),
        "{e}"
    );
    let failed: Vec<String> = journal
        .events(out.run)
        .unwrap()
        .into_iter()
        .filter_map(|r| match r.event {
            Event::StepFailed { kind, .. } => Some(kind),
            _ => None,
        })
        .collect();
    assert_eq!(failed, ["output_invalid"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tool_where_an_agent_is_expected_is_a_clear_error() {
    let catalog = catalog(1);
    let journal = Arc::new(Journal::temporary().unwrap());
    let (engine, _) = engine(journal, Some(Scripted::new("{}")));
    // kind: agent on a tool component.
    let source =
        agent_graph("", "", "").replace("component: agent_tool_and_model", "component: calc");
    let graph = compile(&source.replace("      tools: []\n", ""), &catalog);
    match engine.start(graph, &catalog, json!({"tool": "calc"})).await {
        Err(e @ EngineError::WrongWorld { .. }) => {
            let m = e.to_string();
            assert!(
                m.contains("node 'act' is kind: agent, but component 'calc' exports the sandgraph:tool world"),
                "{m}"
            );
        }
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("started"),
    }
    // An agent granted as a tool.
    let graph = compile(&agent_graph("agent_ungranted", "", ""), &catalog);
    let e = engine
        .start(graph, &catalog, json!({"tool": "calc"}))
        .await
        .err()
        .expect("refused");
    assert!(e.to_string().contains("may name only tools"), "{e}");
    // At the sandbox: a tool component called as an agent, an agent called as a tool.
    let sb = sandbox();
    let calc = sb
        .registry()
        .load(&std::fs::read(sandgraph_test_artifacts::TOOL_CALC).unwrap())
        .unwrap();
    let agent = sb
        .registry()
        .load_file(common::hostile("agent_ungranted").as_ref())
        .unwrap();
    assert!(agent.is_agent() && !calc.is_agent());
    let grant = sandgraph::sandbox::manifest::EffectiveGrant::intersect(
        &sandgraph::sandbox::manifest::OperatorPolicy::default(),
        &Manifest::parse("x", &manifest_text("agent_ungranted", "")).unwrap(),
        &sandgraph::sandbox::manifest::CallGrant::default(),
    );
    let report = sb.call(&agent, &grant, "{}").await;
    let e = report.result.unwrap_err().to_string();
    assert!(
        e.contains("exports the sandgraph:agent world (info, step), not sandgraph:tool"),
        "{e}"
    );
    // A component that exports neither world.
    let e = sb
        .registry()
        .load_file(common::hostile("component_wrong_world").as_ref())
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("nor the sandgraph:agent world (info, step)"),
        "{e}"
    );
}

#[test]
fn the_validator_refuses_agent_fields_on_tool_nodes_and_unknown_tools_and_models() {
    let catalog = catalog(1);
    let tool_node = r#"apiVersion: sandgraph.dev/v1
kind: Graph
metadata: { name: t }
spec:
  nodes:
    - id: a
      kind: tool
      component: calc
      tools: [calc]
      maxTokens: 10
"#;
    let e = validate::validate("g.yaml", tool_node, &catalog.manifests())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("g.yaml:9:14: node 'a' is kind: tool, but `tools` is only for agent nodes"),
        "{e}"
    );
    assert!(
        e.contains("g.yaml:10:18: node 'a' is kind: tool, but `maxTokens`"),
        "{e}"
    );
    let source = agent_graph("calc, nope", "", "");
    let e = validate::validate("g.yaml", &source, &catalog.manifests())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("g.yaml:9:21: node 'act' grants unknown tool 'nope'"),
        "{e}"
    );
    let graph =
        validate::validate("g.yaml", &agent_graph("calc", "", ""), &catalog.manifests()).unwrap();
    let e = validate::check_models(
        "g.yaml",
        &agent_graph("calc", "", ""),
        &graph,
        &["big".into()],
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("g.yaml:10:16: node 'act' names unknown model alias 'default'; the models file defines: big"),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_budget_caps_calls_and_ends_the_run_when_spent() {
    let catalog = catalog(1);
    let graph = compile(
        &agent_graph("calc", "", "  limits:\n    tokenBudget: 12"),
        &catalog,
    );
    let journal = Arc::new(Journal::temporary().unwrap());
    let model = Scripted::new(r#"{"expr":"1 + 1"}"#);
    let (engine, _) = engine(journal.clone(), Some(model.clone()));
    let out = engine
        .run(graph, &catalog, json!({"tool": "calc"}))
        .await
        .unwrap();
    assert_eq!(out.status, RunStatus::Failed);
    let e = out.error.unwrap();
    assert!(
        e.contains("token budget exhausted: no tokens left for node 'act'"),
        "{e}"
    );
    assert!(e.contains("run used 15 of its tokenBudget"), "{e}");
    // The first call went out with max_tokens capped to the 12 left; the second never did.
    assert_eq!(model.calls(), 1);
    assert_eq!(model.seen.lock().unwrap()[0].max_tokens, Some(12));
    let cs = crossings(&journal, out.run);
    assert_eq!(
        count(&cs, |c| matches!(
            c,
            Crossing::ModelResponse { ok: false, .. }
        )),
        1
    );

    // The node's maxTokens alone does the same.
    let graph = compile(&agent_graph("calc", "      maxTokens: 15", ""), &catalog);
    let model = Scripted::new(r#"{"expr":"1 + 1"}"#);
    let (engine, _) = self::engine(Arc::new(Journal::temporary().unwrap()), Some(model.clone()));
    let out = engine
        .run(graph, &catalog, json!({"tool": "calc"}))
        .await
        .unwrap();
    assert_eq!(out.status, RunStatus::Failed);
    assert!(out.error.unwrap().contains("node maxTokens 15"));
    assert_eq!(model.calls(), 1);
}

/// Copies `run`'s events from `from` into `to` up to and including the first `stop` event
/// (payloads too): the journal a host SIGKILLed right after that append leaves behind.
fn journal_cut_after(from: &Journal, to: &Journal, run: RunId, stop: impl Fn(&Event) -> bool) {
    let copy = |p: &PayloadRef| to.put_payload(&from.payload(p).unwrap()).unwrap();
    for r in from.events(run).unwrap() {
        for blob in r.event.blobs() {
            copy(&PayloadRef::Blob(blob));
        }
        to.append(run, &r.event, sandgraph::journal::Durability::Durable)
            .unwrap();
        if stop(&r.event) {
            return;
        }
    }
    panic!("the stop event never came");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_agent_step_gets_recorded_answers_and_does_not_repeat_the_side_effect() {
    let (port, effects) = counting_server();
    let catalog = catalog(port);
    let graph = compile(&agent_graph("poster", "", ""), &catalog);
    let plan = format!(r#"{{"url":"http://127.0.0.1:{port}/effect/1","size":"3"}}"#);

    // The crash-free run.
    let full = Arc::new(Journal::temporary().unwrap());
    let model = Scripted::new(&plan);
    let (engine, _) = engine(full.clone(), Some(model.clone()));
    let clean = engine
        .run(graph.clone(), &catalog, json!({"tool": "poster"}))
        .await
        .unwrap();
    assert_eq!(clean.status, RunStatus::Succeeded, "{:?}", clean.error);
    assert_eq!(model.calls(), 2);
    assert_eq!(effects.lock().unwrap().get("/effect/1"), Some(&1));

    // The host died right after the nested tool's result was journaled.
    let cut = Arc::new(Journal::temporary().unwrap());
    journal_cut_after(&full, &cut, clean.run, |e| {
        matches!(
            e,
            Event::Crossing {
                crossing: Crossing::ToolResult { .. },
                ..
            }
        )
    });
    let model = Scripted::new(&plan);
    let (engine, _) = self::engine(cut.clone(), Some(model.clone()));
    let resumed = engine.resume(clean.run).await.unwrap().wait().await;
    assert_eq!(resumed.status, RunStatus::Succeeded, "{:?}", resumed.error);
    assert_eq!(resumed.output, clean.output);
    assert_eq!(
        model.calls(),
        1,
        "only the unrecorded second model call goes live"
    );
    assert_eq!(
        effects.lock().unwrap().get("/effect/1"),
        Some(&1),
        "the nested POST was sent again"
    );

    // Died after the first model answer: the tool runs now (once), the first call is not asked.
    let cut = Arc::new(Journal::temporary().unwrap());
    journal_cut_after(&full, &cut, clean.run, |e| {
        matches!(
            e,
            Event::Crossing {
                crossing: Crossing::ModelResponse { .. },
                ..
            }
        )
    });
    let model = Scripted::new(&plan);
    let (engine, _) = self::engine(cut.clone(), Some(model.clone()));
    let resumed = engine.resume(clean.run).await.unwrap().wait().await;
    assert_eq!(resumed.status, RunStatus::Succeeded, "{:?}", resumed.error);
    assert_eq!(model.calls(), 1);
    assert_eq!(effects.lock().unwrap().get("/effect/1"), Some(&2));

    // Died with the POST's intent on disk but no response: outcome unknown, not sent again.
    let cut = Arc::new(Journal::temporary().unwrap());
    journal_cut_after(&full, &cut, clean.run, |e| {
        matches!(
            e,
            Event::Crossing {
                crossing: Crossing::HttpIntent { .. },
                ..
            }
        )
    });
    let model = Scripted::new(&plan);
    let (engine, _) = self::engine(cut.clone(), Some(model.clone()));
    let resumed = engine.resume(clean.run).await.unwrap().wait().await;
    assert_eq!(resumed.status, RunStatus::Failed);
    assert!(
        resumed
            .error
            .as_deref()
            .unwrap()
            .contains("outcome unknown"),
        "{resumed:?}"
    );
    assert_eq!(model.calls(), 0);
    assert_eq!(effects.lock().unwrap().get("/effect/1"), Some(&2));

    // And the finished run replays offline, identical, with no model.
    let (offline, _) = self::engine(full.clone(), None);
    assert!(offline.replay(clean.run).await.unwrap().identical());
}

#[test]
fn version_2_journal_records_still_decode() {
    let event = Event::StepStarted {
        step: "a#1".into(),
        attempt: 1,
    };
    // Events a version-2 build can hold are still written as version 2 and read back.
    let bytes = event.encode(7);
    assert_eq!(bytes[0], 2);
    assert_eq!(Event::decode(&bytes).unwrap(), (7, event));
    // The model crossings need version 4.
    let model = Event::Crossing {
        step: "a#1".into(),
        attempt: 1,
        crossing: Crossing::ModelRequest {
            digest: "ab".into(),
            request: PayloadRef::Inline(b"{}".to_vec()),
        },
    };
    let bytes = model.encode(7);
    assert_eq!(bytes[0], 4);
    assert_eq!(Event::decode(&bytes).unwrap(), (7, model));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_calls_are_metered_by_alias_and_outcome() {
    let catalog = catalog(1);
    let graph = compile(&agent_graph("calc", "", ""), &catalog);
    let metrics = Arc::new(sandgraph::api::metrics::Metrics::new());
    let m = metrics.clone();
    let (engine, _) = engine(
        Arc::new(Journal::temporary().unwrap()),
        Some(Scripted::new(r#"{"expr":"2"}"#)),
    );
    let engine = engine.with_model_observer(Arc::new(move |_, _, _, call| m.on_model_call(call)));
    let out = engine
        .run(graph, &catalog, json!({"tool": "calc"}))
        .await
        .unwrap();
    assert_eq!(out.status, RunStatus::Succeeded, "{:?}", out.error);
    let text = metrics.render(0);
    for line in [
        r#"sandgraph_model_calls_total{model="default",outcome="ok"} 2"#,
        r#"sandgraph_model_input_tokens_total{model="default"} 20"#,
        r#"sandgraph_model_output_tokens_total{model="default"} 10"#,
        r#"sandgraph_model_call_duration_seconds_count{model="default"} 2"#,
    ] {
        assert!(text.contains(line), "no `{line}` in\n{text}");
    }
}

fn approval_graph() -> String {
    r#"apiVersion: sandgraph.dev/v1
kind: Graph
metadata: { name: approval-test }
spec:
  nodes:
    - id: sum
      kind: tool
      component: calc
      approval: required
      input:
        expr: input.expr
"#
    .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approval_pause_survives_a_restart_and_a_rejection_fails_the_run() {
    let catalog = catalog(1);
    let graph = compile(&approval_graph(), &catalog);
    let journal = Arc::new(Journal::temporary().unwrap());
    // A host that exits when only approvals are left (`sandgraph run`).
    let config = EngineConfig {
        exit_when_waiting: true,
        ..Default::default()
    };
    let first = Engine::new(sandbox(), journal.clone(), config);
    let out = first
        .run(graph.clone(), &catalog, json!({"expr": "2 + 3"}))
        .await
        .unwrap();
    assert_eq!(out.status, RunStatus::Waiting, "{out:?}");
    assert_eq!(
        out.error.as_deref(),
        Some("waiting for approval of step sum#1")
    );
    assert_eq!(
        journal.run_summary(out.run).unwrap().status,
        RunStatus::Waiting
    );
    let pending = journal
        .events(out.run)
        .unwrap()
        .into_iter()
        .find_map(|r| match r.event {
            Event::StepAwaitingApproval { input, .. } => Some(journal.payload(&input).unwrap()),
            _ => None,
        });
    assert_eq!(pending.as_deref(), Some(&br#"{"expr":"2 + 3"}"#[..]));
    drop(first);
    // Deciding a step that is not waiting is refused by name.
    let e = sandgraph::graph::engine::record_decision(&journal, out.run, "other#1", true, None)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("has no step 'other#1' awaiting approval (awaiting: sum#1)"),
        "{e}"
    );
    sandgraph::graph::engine::record_decision(&journal, out.run, "sum#1", true, None).unwrap();
    // A fresh host resumes it: the approved step runs.
    let (second, _) = engine(journal.clone(), None);
    let done = second.resume(out.run).await.unwrap().wait().await;
    assert_eq!(done.status, RunStatus::Succeeded, "{done:?}");
    assert_eq!(done.output.as_deref(), Some(r#"{"sum":{"value":5.0}}"#));

    // A live host waits in process; a rejection ends the run with the comment.
    let handle = second
        .start(graph, &catalog, json!({"expr": "1"}))
        .await
        .unwrap();
    let run = handle.run;
    common::wait_for("the run to wait for approval", || {
        journal.run_summary(run).map(|s| s.status).ok() == Some(RunStatus::Waiting)
    });
    second
        .decide(run, "sum#1", false, Some("not today".into()))
        .await
        .unwrap();
    let done = handle.wait().await;
    assert_eq!(done.status, RunStatus::Failed);
    assert_eq!(
        done.error.as_deref(),
        Some("step 'sum#1' was rejected: not today")
    );
}
