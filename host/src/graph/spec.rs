//! Graph YAML v1 as plain serde types: the one definition of the format that the loader
//! deserializes, the validator checks and the JSON Schema is generated from. Durations and
//! conditions stay strings here; `validate` parses them so every bad value gets a location.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub const API_VERSION: &str = "sandgraph.dev/v1";
pub const KIND: &str = "Graph";

/// A whole graph document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Graph {
    /// Must be `sandgraph.dev/v1`.
    pub api_version: String,
    /// Must be `Graph`.
    pub kind: String,
    pub metadata: Metadata,
    pub spec: Spec,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Metadata {
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Spec {
    /// JSON Schema of the run input (`input` in expressions).
    #[serde(default)]
    pub input: Option<serde_json::Value>,
    #[serde(default)]
    pub nodes: Vec<Node>,
    #[serde(default)]
    pub edges: Vec<Edge>,
    #[serde(default)]
    pub limits: RunLimits,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum NodeKind {
    Tool,
    Agent,
}

/// One step of the graph: a tool or agent component called with a mapped input.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Node {
    pub id: String,
    pub kind: NodeKind,
    /// Component name (a tool's `metadata.name`).
    pub component: String,
    /// Input field -> CEL expression over the run state (`input`, `nodes.<id>`, `state`).
    #[serde(default)]
    pub input: BTreeMap<String, String>,
    /// Narrows the component's manifest for this node; can never widen it.
    #[serde(default)]
    pub grant: Option<Grant>,
    #[serde(default)]
    pub retry: Option<Retry>,
    /// Per-attempt timeout, e.g. `30s`, `500ms`.
    #[serde(default)]
    pub timeout: Option<String>,
    /// How many times this node may run in one run; required for nodes on a cycle.
    #[serde(default)]
    pub max_iterations: Option<u32>,
    /// How this node's output merges into `state`: output field -> reducer.
    #[serde(default)]
    pub reducers: BTreeMap<String, Reducer>,
    /// Agent nodes: the tools (catalog names) the agent may call through `tools.call`, each in
    /// its own sandbox under this node's grant ∩ the tool's manifest ∩ operator policy.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tools: Vec<String>,
    /// Agent nodes: the model aliases the agent may ask; the first is its default.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub models: Vec<String>,
    /// Agent nodes: tokens (prompt + completion) one step of this node may spend on model calls.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u64>,
    /// `required`: the run pauses before each step of this node until someone approves it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<Approval>,
}

/// Whether a node's steps wait for a person before they execute.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Approval {
    /// The run pauses (`waiting`) before the step until it is approved or rejected.
    Required,
    /// No pause (the same as leaving `approval` out).
    None,
}

/// Per-node capability grant, the same shape as `sandbox::manifest::CallGrant`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Grant {
    /// `none`, `ro` or `rw`: at most the manifest's mode.
    #[serde(default)]
    pub workspace: Option<String>,
    /// Egress host patterns, a subset of the manifest's.
    #[serde(default)]
    pub egress_hosts: Option<Vec<String>>,
    #[serde(default)]
    pub limits: Option<GrantLimits>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct GrantLimits {
    #[serde(default)]
    pub memory: Option<String>,
    #[serde(default)]
    pub timeout: Option<String>,
    #[serde(default)]
    pub max_output: Option<String>,
    #[serde(default)]
    pub max_response: Option<String>,
}

/// Exponential backoff with jitter; defaults 0.5 s, x2, 3 attempts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Retry {
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    #[serde(default = "default_initial_backoff")]
    pub initial_backoff: String,
    #[serde(default = "default_multiplier")]
    pub multiplier: f64,
}

fn default_max_attempts() -> u32 {
    3
}
fn default_initial_backoff() -> String {
    "500ms".into()
}
fn default_multiplier() -> f64 {
    2.0
}

impl Default for Retry {
    fn default() -> Self {
        Retry {
            max_attempts: default_max_attempts(),
            initial_backoff: default_initial_backoff(),
            multiplier: default_multiplier(),
        }
    }
}

/// How a node output field merges into the run state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Reducer {
    /// The newest value wins.
    Replace,
    /// Lists are concatenated in completion order.
    Append,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Edge {
    pub from: String,
    pub to: String,
    /// CEL condition over the run state; absent means always.
    #[serde(default)]
    pub when: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RunLimits {
    #[serde(default)]
    pub max_steps: Option<u32>,
    /// Wall-clock deadline for the whole run, e.g. `10m`.
    #[serde(default)]
    pub deadline: Option<String>,
    /// Tokens (prompt + completion) all model calls of one run may spend. Checked before each
    /// call: a call's `max_tokens` is capped to what is left, and nothing left is
    /// `budget_exhausted` for the agent.
    #[serde(default)]
    pub token_budget: Option<u64>,
}
