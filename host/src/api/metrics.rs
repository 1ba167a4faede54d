//! Prometheus metrics of the API: what users feel (run outcomes, queueing, step latency) and
//! what operators alert on (tool failures, egress denials, journal flushes, open streams).
//! Fed by the engine's progress hook and the journal's append hook, never by polling.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::journal::{Crossing, Event, RunId};

type Labels = Vec<(String, String)>;

fn latency() -> Histogram {
    // 1 ms .. ~65 s
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

/// What the metrics need to know about a run to label its steps.
#[derive(Debug, Clone, Default)]
pub struct RunLabels {
    pub graph: String,
    /// node id -> component name
    pub components: HashMap<String, String>,
}

/// A run's labels and when each of its steps' current attempt started.
type LiveRun = (RunLabels, HashMap<String, Instant>);

pub struct Metrics {
    registry: Registry,
    pub runs: Family<Labels, Counter>,
    pub runs_in_flight: Gauge,
    pub queue_depth: Gauge,
    pub queue_wait: Histogram,
    pub step_duration: Family<Labels, Histogram>,
    pub tool_call_duration: Family<Labels, Histogram>,
    pub tool_outcomes: Family<Labels, Counter>,
    pub egress_denials: Family<Labels, Counter>,
    pub journal_flushes: Counter,
    pub journal_flush: Histogram,
    pub sse_streams: Gauge,
    pub requests: Family<Labels, Counter>,
    pub auth_reloads: Family<Labels, Counter>,
    pub model_calls: Family<Labels, Counter>,
    pub model_input_tokens: Family<Labels, Counter>,
    pub model_output_tokens: Family<Labels, Counter>,
    pub model_call_duration: Family<Labels, Histogram>,
    pub model_first_token: Family<Labels, Histogram>,
    /// Per active run: labels and when each step's attempt started.
    live: Mutex<HashMap<RunId, LiveRun>>,
    /// Journal flush count already reported.
    flushes_seen: Mutex<u64>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("sandgraph");
        let m = Metrics {
            runs: Family::default(),
            runs_in_flight: Gauge::default(),
            queue_depth: Gauge::default(),
            queue_wait: latency(),
            step_duration: Family::new_with_constructor(latency as fn() -> Histogram),
            tool_call_duration: Family::new_with_constructor(latency as fn() -> Histogram),
            tool_outcomes: Family::default(),
            egress_denials: Family::default(),
            journal_flushes: Counter::default(),
            journal_flush: Histogram::new(exponential_buckets(0.0001, 2.0, 17)),
            sse_streams: Gauge::default(),
            requests: Family::default(),
            auth_reloads: Family::default(),
            model_calls: Family::default(),
            model_input_tokens: Family::default(),
            model_output_tokens: Family::default(),
            model_call_duration: Family::new_with_constructor(latency as fn() -> Histogram),
            model_first_token: Family::new_with_constructor(latency as fn() -> Histogram),
            live: Mutex::default(),
            flushes_seen: Mutex::default(),
            registry: Registry::default(),
        };
        registry.register("runs", "Runs finished, by status", m.runs.clone());
        registry.register(
            "runs_in_flight",
            "Runs executing now",
            m.runs_in_flight.clone(),
        );
        registry.register(
            "run_queue_depth",
            "Run submissions waiting for a free run slot (on a shared PostgreSQL journal: runs waiting for any replica)",
            m.queue_depth.clone(),
        );
        registry.register(
            "run_queue_wait_seconds",
            "Time a submission waited for a run slot",
            m.queue_wait.clone(),
        );
        registry.register(
            "step_duration_seconds",
            "Step attempt duration, by graph and node",
            m.step_duration.clone(),
        );
        registry.register(
            "tool_call_duration_seconds",
            "Tool call duration, by tool",
            m.tool_call_duration.clone(),
        );
        registry.register(
            "tool_outcomes",
            "Tool call outcomes, by tool and outcome (ok or the error kind)",
            m.tool_outcomes.clone(),
        );
        registry.register(
            "egress_denials",
            "Capabilities refused to a step, by tool and reason",
            m.egress_denials.clone(),
        );
        registry.register(
            "journal_flushes",
            "Journal flushes to disk (group commit)",
            m.journal_flushes.clone(),
        );
        registry.register(
            "journal_flush_seconds",
            "Duration of each journal flush to disk",
            m.journal_flush.clone(),
        );
        registry.register(
            "sse_streams_in_flight",
            "Open run event streams",
            m.sse_streams.clone(),
        );
        registry.register(
            "http_requests",
            "HTTP requests answered, by route and status",
            m.requests.clone(),
        );
        registry.register(
            "auth_reloads",
            "Changed tokens or JWKS files, by outcome (reloaded, or refused with the old credentials kept)",
            m.auth_reloads.clone(),
        );
        registry.register(
            "model_calls",
            "Model calls of agent steps, by model alias and outcome (ok or the model error kind)",
            m.model_calls.clone(),
        );
        registry.register(
            "model_input_tokens",
            "Prompt tokens of answered model calls, by model alias",
            m.model_input_tokens.clone(),
        );
        registry.register(
            "model_output_tokens",
            "Generated tokens of answered model calls, by model alias",
            m.model_output_tokens.clone(),
        );
        registry.register(
            "model_call_duration_seconds",
            "Model call duration (provider time, retries included), by model alias",
            m.model_call_duration.clone(),
        );
        registry.register(
            "model_time_to_first_token_seconds",
            "Time from request to the first generated token, by model alias (streaming providers)",
            m.model_first_token.clone(),
        );
        Metrics { registry, ..m }
    }

    /// One model call of an agent step. Answers served from the journal on resume are not
    /// counted again (they were counted when the provider gave them).
    pub fn on_model_call(&self, call: &crate::sandbox::agent::ModelCallRecord) {
        if call.replayed {
            return;
        }
        let model = vec![("model".to_owned(), call.model.clone())];
        self.model_calls
            .get_or_create(&vec![
                ("model".into(), call.model.clone()),
                ("outcome".into(), call.outcome.clone()),
            ])
            .inc();
        self.model_input_tokens
            .get_or_create(&model)
            .inc_by(u64::from(call.prompt_tokens));
        self.model_output_tokens
            .get_or_create(&model)
            .inc_by(u64::from(call.completion_tokens));
        if call.outcome == "ok" {
            self.model_call_duration
                .get_or_create(&model)
                .observe(call.model_time.as_secs_f64());
            if let Some(t) = call.first_token {
                self.model_first_token
                    .get_or_create(&model)
                    .observe(t.as_secs_f64());
            }
        }
    }

    /// Labels for the steps of `run` (call before the run's first step).
    pub fn track(&self, run: RunId, labels: RunLabels) {
        self.live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(run, (labels, HashMap::new()));
    }

    /// The engine's progress hook.
    pub fn on_progress(&self, run: RunId, event: &Event) {
        let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        match event {
            Event::StepStarted { step, .. } => {
                if let Some((_, started)) = live.get_mut(&run) {
                    started.insert(step.clone(), Instant::now());
                }
            }
            Event::StepCompleted { step, .. } | Event::StepFailed { step, .. } => {
                let Some((labels, started)) = live.get_mut(&run) else {
                    return;
                };
                let node = step.split('#').next().unwrap_or(step).to_owned();
                let tool = labels.components.get(&node).cloned().unwrap_or_default();
                let outcome = match event {
                    Event::StepFailed { kind, .. } => kind.clone(),
                    _ => "ok".to_owned(),
                };
                if let Some(t) = started.remove(step) {
                    let secs = t.elapsed().as_secs_f64();
                    self.step_duration
                        .get_or_create(&vec![
                            ("graph".into(), labels.graph.clone()),
                            ("node".into(), node),
                        ])
                        .observe(secs);
                    self.tool_call_duration
                        .get_or_create(&vec![("tool".into(), tool.clone())])
                        .observe(secs);
                }
                self.tool_outcomes
                    .get_or_create(&vec![("tool".into(), tool), ("outcome".into(), outcome)])
                    .inc();
            }
            Event::RunFinished { status, .. } => {
                live.remove(&run);
                self.runs
                    .get_or_create(&vec![("status".into(), status.as_str().to_owned())])
                    .inc();
            }
            _ => {}
        }
    }

    /// A tool call outside any run (MCP's `tools/call`), from its audit record.
    pub fn on_tool_call(&self, audit: &crate::sandbox::outcome::AuditRecord) {
        let tool = audit.tool.clone();
        self.tool_call_duration
            .get_or_create(&vec![("tool".into(), tool.clone())])
            .observe(audit.duration_us as f64 / 1e6);
        for denied in audit.egress.iter().filter(|a| !a.allowed) {
            self.egress_denials
                .get_or_create(&vec![
                    ("tool".into(), tool.clone()),
                    (
                        "reason".into(),
                        format!("{:?}", denied.capability).to_lowercase(),
                    ),
                ])
                .inc();
        }
        self.tool_outcomes
            .get_or_create(&vec![
                ("tool".into(), tool),
                ("outcome".into(), audit.outcome.clone()),
            ])
            .inc();
    }

    /// The journal's append hook: sees crossings, which do not pass the progress hook.
    pub fn on_append(&self, run: RunId, event: &Event) {
        if let Event::Crossing {
            step,
            crossing: Crossing::Denial { capability, .. },
            ..
        } = event
        {
            let node = step.split('#').next().unwrap_or(step);
            let tool = self
                .live
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&run)
                .and_then(|(l, _)| l.components.get(node).cloned())
                .unwrap_or_default();
            self.egress_denials
                .get_or_create(&vec![
                    ("tool".into(), tool),
                    ("reason".into(), capability.clone()),
                ])
                .inc();
        }
    }

    pub fn request(&self, route: &str, status: u16) {
        self.requests
            .get_or_create(&vec![
                ("route".into(), route.to_owned()),
                ("status".into(), status.to_string()),
            ])
            .inc();
    }

    /// The Prometheus text exposition; `flushes` is the journal's flush count now.
    pub fn render(&self, flushes: u64) -> String {
        {
            let mut seen = self.flushes_seen.lock().unwrap_or_else(|p| p.into_inner());
            if flushes > *seen {
                self.journal_flushes.inc_by(flushes - *seen);
                *seen = flushes;
            }
        }
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}
