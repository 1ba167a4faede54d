//! The runnable form of a validated graph: a petgraph of nodes with their compiled CEL
//! programs, entry nodes, the forward edges each join waits for, and loop bounds, plus a
//! content digest of the canonical graph that a run pins so a redeploy never changes it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use petgraph::stable_graph::{EdgeIndex, NodeIndex, StableDiGraph};
use sha2::{Digest, Sha256};

use super::expr::{ExprError, Expression};
use super::spec::{Graph, Node, Reducer, Retry};
use super::validate::{Topology, parse_duration};

/// An expression of the graph, or why it cannot run. Validation refuses graphs with bad
/// expressions, but a run's pinned graph may predate a limit: its step fails with the reason
/// when the expression is needed, instead of the expression being dropped or trusted.
pub type CompiledExpr = Result<Arc<Expression>, ExprError>;

/// Expressions already compiled, by source text.
pub type ExprCache = HashMap<String, CompiledExpr>;

fn compile_expr(src: &str, cache: &mut ExprCache) -> CompiledExpr {
    cache
        .entry(src.to_owned())
        .or_insert_with(|| Expression::compile(src).map(Arc::new))
        .clone()
}

/// A node ready to schedule.
#[derive(Debug)]
pub struct CompiledNode {
    pub spec: Node,
    /// Input field -> compiled expression, in field order.
    pub input: Vec<(String, CompiledExpr)>,
    pub retry: RetryPolicy,
    pub timeout: Option<Duration>,
    /// `None`: the node is not on a cycle and runs at most once.
    pub max_iterations: Option<u32>,
    pub reducers: Vec<(String, Reducer)>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub initial_backoff: Duration,
    pub multiplier: f64,
}

/// An edge: its condition, and whether it closes a loop (a back edge joins never wait for).
#[derive(Debug)]
pub struct CompiledEdge {
    pub when: Option<CompiledExpr>,
    pub when_source: Option<String>,
    pub back_edge: bool,
}

#[derive(Debug)]
pub struct CompiledGraph {
    pub spec: Graph,
    pub graph: StableDiGraph<CompiledNode, CompiledEdge>,
    pub by_id: HashMap<String, NodeIndex>,
    /// Nodes without inbound edges, in declaration order.
    pub entries: Vec<NodeIndex>,
    /// For each node with two or more forward inbound edges: the edges it waits for.
    pub joins: HashMap<NodeIndex, Vec<EdgeIndex>>,
    pub max_steps: Option<u32>,
    pub deadline: Option<Duration>,
    /// sha256 of the canonical JSON of the spec.
    pub digest: [u8; 32],
    /// The spec's canonical JSON ([`canonical_json`]), which every run pins: built once here
    /// rather than for each run.
    pub canonical: std::sync::Arc<[u8]>,
}

impl CompiledGraph {
    /// The components the graph's nodes name.
    pub fn component_names(&self) -> std::collections::BTreeSet<String> {
        self.spec
            .spec
            .nodes
            .iter()
            .map(|n| n.component.clone())
            .collect()
    }

    /// Compiles a graph that `validate` accepted. Durations were checked there; one that still
    /// fails here is left out. An expression that fails keeps its error for the step to report.
    pub fn compile(spec: Graph) -> CompiledGraph {
        CompiledGraph::compile_with(spec, &mut ExprCache::new())
    }

    /// [`CompiledGraph::compile`] reusing (and adding to) already compiled expressions.
    pub fn compile_with(spec: Graph, cache: &mut ExprCache) -> CompiledGraph {
        let mut graph = StableDiGraph::new();
        let mut by_id = HashMap::new();
        let mut idx = Vec::new();
        for n in &spec.spec.nodes {
            let retry = n.retry.clone().unwrap_or_default();
            let node = CompiledNode {
                spec: n.clone(),
                input: n
                    .input
                    .iter()
                    .map(|(k, v)| (k.clone(), compile_expr(v, cache)))
                    .collect(),
                retry: RetryPolicy {
                    max_attempts: retry.max_attempts,
                    initial_backoff: parse_duration(&retry.initial_backoff)
                        .unwrap_or_else(|_| default_backoff()),
                    multiplier: retry.multiplier,
                },
                timeout: n.timeout.as_deref().and_then(|t| parse_duration(t).ok()),
                max_iterations: n.max_iterations,
                reducers: n.reducers.iter().map(|(k, r)| (k.clone(), *r)).collect(),
            };
            let i = graph.add_node(node);
            by_id.insert(n.id.clone(), i);
            idx.push(i);
        }
        let numbered: Vec<(usize, usize, usize)> = spec
            .spec
            .edges
            .iter()
            .enumerate()
            .filter_map(|(i, e)| Some((i, *by_id.get(&e.from)?, *by_id.get(&e.to)?)))
            .map(|(i, f, t)| (i, f.index(), t.index()))
            .collect();
        let topo = Topology::new(idx.len(), &numbered);
        let back: std::collections::HashSet<usize> = topo.back_edges.iter().map(|e| e.0).collect();
        let mut edge_idx = HashMap::new();
        for &(i, f, t) in &numbered {
            let e = &spec.spec.edges[i];
            let ei = graph.add_edge(
                idx[f],
                idx[t],
                CompiledEdge {
                    when: e.when.as_deref().map(|w| compile_expr(w, cache)),
                    when_source: e.when.clone(),
                    back_edge: back.contains(&i),
                },
            );
            edge_idx.insert(i, ei);
        }
        let joins = topo
            .forward_in
            .iter()
            .enumerate()
            .filter(|(_, ins)| ins.len() >= 2)
            .map(|(n, ins)| (idx[n], ins.iter().map(|e| edge_idx[&e.0]).collect()))
            .collect();
        let entries = topo.entries.iter().map(|&i| idx[i]).collect();
        let canonical: std::sync::Arc<[u8]> = canonical_json(&spec).into();
        let digest = Sha256::digest(&canonical).into();
        CompiledGraph {
            max_steps: spec.spec.limits.max_steps,
            deadline: spec
                .spec
                .limits
                .deadline
                .as_deref()
                .and_then(|d| parse_duration(d).ok()),
            spec,
            graph,
            by_id,
            entries,
            joins,
            digest,
            canonical,
        }
    }

    pub fn digest_hex(&self) -> String {
        hex::encode(self.digest)
    }
}

fn default_backoff() -> Duration {
    parse_duration(&Retry::default().initial_backoff).unwrap_or(Duration::from_millis(500))
}

/// sha256 over the canonical JSON form: fields in declaration order, maps sorted by key,
/// so formatting, comments and key order in the YAML do not change the digest.
pub fn digest_of(graph: &Graph) -> [u8; 32] {
    Sha256::digest(canonical_json(graph)).into()
}

/// The graph as canonical JSON (maps sorted by key): what a run pins and the digest covers.
pub fn canonical_json(graph: &Graph) -> Vec<u8> {
    let value = serde_json::to_value(graph).unwrap_or(serde_json::Value::Null);
    serde_json::to_vec(&sort(value)).unwrap_or_default()
}

fn sort(v: serde_json::Value) -> serde_json::Value {
    match v {
        serde_json::Value::Object(m) => {
            let mut entries: Vec<_> = m.into_iter().map(|(k, v)| (k, sort(v))).collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            serde_json::Value::Object(entries.into_iter().collect())
        }
        serde_json::Value::Array(a) => serde_json::Value::Array(a.into_iter().map(sort).collect()),
        other => other,
    }
}
