//! Checks a graph document and reports every problem at once, each with `file:line:col` and
//! the fix, so an author fixes a graph in one pass instead of one error per run. Structure
//! comes from the spec types; references, expressions, cycles and joins are checked here.
//!
//! Rules beyond the types:
//! - A node on a cycle (a strongly connected component of more than one node, or a self-loop)
//!   needs `maxIterations` on at least one node of that cycle; the error sits on the edge that
//!   closes the cycle (the back edge found by a depth-first walk from the entry nodes).
//! - Entry nodes are those without inbound edges other than their own self-loops (a self-loop
//!   is always a back edge); every node must be reachable from one.
//! - A join (a node with two or more inbound forward edges) waits for all of them. Two inbound
//!   edges can never both arrive when they descend from the two sides of a mutually exclusive
//!   pair of edges out of one node: edges whose `when` are `c` and `!c` / `!(c)` (compared with
//!   whitespace removed). Such a join is an error; it is only a syntactic check, so exclusive
//!   conditions written differently are not found.
//! - Expressions are type-checked against the input schema, known output schemas and the
//!   reducers (`super::typecheck`); the error sits on the operator that cannot succeed.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::time::Duration;

use std::sync::Arc;

use super::compile::{CompiledGraph, ExprCache};
use super::expr::{ExprError, Expression};
use super::spec::{self, Graph, Node};
use super::typecheck::{TypeEnv, TypeError};
use super::yaml::{self, Located, Pos, Yaml};
use crate::sandbox::manifest::{self, Manifest, WorkspaceMode, host_matches};

/// One problem found in a graph file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{pos}: {message}")]
pub struct Diagnostic {
    pub file: String,
    pub pos: Pos,
    pub message: String,
}

/// Every problem found, in source order.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", .0.iter().map(|d| d.to_string()).collect::<Vec<_>>().join("\n"))]
pub struct Diagnostics(pub Vec<Diagnostic>);

pub use super::expr::STATE_ROOTS;

/// Parses and validates `source`; `components` are the manifests node `component`s may name.
/// A node, edge or top-level field that does not fit the format is reported and the rest is
/// still checked, so one structural error never hides the others.
pub fn validate(file: &str, source: &str, components: &[Manifest]) -> Result<Graph, Diagnostics> {
    super::expr::on_parse_stack(|| {
        validate_with(file, source, components, &NO_OUTPUTS, &mut ExprCache::new())
    })
}

/// Validates and compiles, each distinct expression compiled once.
pub fn validate_compiled(
    file: &str,
    source: &str,
    components: &[Manifest],
) -> Result<CompiledGraph, Diagnostics> {
    validate_compiled_with_outputs(file, source, components, &NO_OUTPUTS)
}

/// [`validate_compiled`] where the output JSON Schemas of some components are known
/// (component name -> schema), so expressions reading `nodes.<id>` are type-checked against
/// them; a component without one gives outputs of unknown (`dyn`) type.
pub fn validate_compiled_with_outputs(
    file: &str,
    source: &str,
    components: &[Manifest],
    outputs: &BTreeMap<String, serde_json::Value>,
) -> Result<CompiledGraph, Diagnostics> {
    super::expr::on_parse_stack(|| {
        let mut cache = ExprCache::new();
        let graph = validate_with(file, source, components, outputs, &mut cache)?;
        Ok(CompiledGraph::compile_with(graph, &mut cache))
    })
}

static NO_OUTPUTS: BTreeMap<String, serde_json::Value> = BTreeMap::new();

fn validate_with(
    file: &str,
    source: &str,
    components: &[Manifest],
    outputs: &BTreeMap<String, serde_json::Value>,
    cache: &mut ExprCache,
) -> Result<Graph, Diagnostics> {
    let (root, mut errs) = yaml::parse(source).map_err(|e| Diagnostics(vec![diag(file, e)]))?;
    let (graph, broken) = structure(&root, &mut errs);
    let text = Text {
        source,
        line_starts: line_starts(source),
    };
    semantics(
        &graph, &broken, &root, &text, components, outputs, cache, &mut errs,
    );
    if errs.is_empty() {
        return Ok(graph);
    }
    errs.sort_by(|a, b| a.pos.cmp(&b.pos).then(a.message.cmp(&b.message)));
    errs.dedup();
    if errs.len() > MAX_DIAGNOSTICS {
        let rest = errs.len() - MAX_DIAGNOSTICS;
        let next = errs[MAX_DIAGNOSTICS].pos;
        errs.truncate(MAX_DIAGNOSTICS);
        errs.push(Located {
            pos: next,
            message: format!(
                "{rest} more problem{} from here on are not listed; fix these and validate again",
                if rest == 1 { "" } else { "s" }
            ),
        });
    }
    Err(Diagnostics(
        errs.into_iter().map(|e| diag(file, e)).collect(),
    ))
}

/// At most this many problems are listed (in source order); one more line counts the rest.
pub const MAX_DIAGNOSTICS: usize = 100;

fn diag(file: &str, e: Located) -> Diagnostic {
    Diagnostic {
        file: file.to_string(),
        pos: e.pos,
        message: e.message,
    }
}

/// What did not deserialize: those parts stand in as placeholders for the graph checks and
/// get no checks of their own (their structural error is already reported).
#[derive(Default)]
struct Broken {
    nodes: HashSet<usize>,
    edges: HashSet<usize>,
    /// `apiVersion`, `kind`, `metadata`, `spec.input` or `spec.limits`.
    top: bool,
}

fn scalar(item: &Yaml, key: &str) -> Option<String> {
    item.get(key).and_then(Yaml::as_str).map(str::to_owned)
}

/// Deserializes nodes and edges one by one so each bad one is reported, then the rest.
fn structure(root: &Yaml, errs: &mut Vec<Located>) -> (Graph, Broken) {
    let spec_node = root.get("spec");
    let mut broken = Broken::default();
    let mut nodes = Vec::new();
    let mut edges = Vec::new();
    for (i, item) in spec_node
        .and_then(|s| s.get("nodes"))
        .map(Yaml::items)
        .unwrap_or(&[])
        .iter()
        .enumerate()
    {
        match yaml::from_yaml::<Node>(item) {
            Ok(n) => nodes.push(n),
            Err(e) => {
                errs.push(e);
                broken.nodes.insert(i);
                nodes.push(Node {
                    // A node without a usable id gets one no edge can name.
                    id: scalar(item, "id").unwrap_or_else(|| format!("\u{0}node#{i}")),
                    kind: spec::NodeKind::Tool,
                    component: scalar(item, "component").unwrap_or_default(),
                    input: Default::default(),
                    grant: None,
                    retry: None,
                    timeout: None,
                    max_iterations: scalar(item, "maxIterations").and_then(|m| m.parse().ok()),
                    reducers: Default::default(),
                    tools: Vec::new(),
                    models: Vec::new(),
                    max_tokens: None,
                    approval: None,
                });
            }
        }
    }
    for (i, item) in spec_node
        .and_then(|s| s.get("edges"))
        .map(Yaml::items)
        .unwrap_or(&[])
        .iter()
        .enumerate()
    {
        match yaml::from_yaml::<spec::Edge>(item) {
            Ok(e) => edges.push(e),
            Err(e) => {
                errs.push(e);
                broken.edges.insert(i);
                edges.push(spec::Edge {
                    from: scalar(item, "from").unwrap_or_default(),
                    to: scalar(item, "to").unwrap_or_default(),
                    when: None,
                });
            }
        }
    }
    // The rest of the document, with the already-checked lists emptied.
    let mut rest = root.clone();
    if let yaml::YamlValue::Map(entries) = &mut rest.value {
        for (k, v) in entries.iter_mut() {
            if k.as_str() == Some("spec")
                && let yaml::YamlValue::Map(spec_entries) = &mut v.value
            {
                for (sk, sv) in spec_entries.iter_mut() {
                    if matches!(sk.as_str(), Some("nodes" | "edges"))
                        && matches!(sv.value, yaml::YamlValue::Seq(_))
                    {
                        sv.value = yaml::YamlValue::Seq(Vec::new());
                    }
                }
            }
        }
    }
    let mut graph = match yaml::from_yaml::<Graph>(&rest) {
        Ok(g) => g,
        Err(e) => {
            errs.push(e);
            broken.top = true;
            Graph {
                api_version: spec::API_VERSION.into(),
                kind: spec::KIND.into(),
                metadata: spec::Metadata {
                    name: String::new(),
                },
                spec: spec::Spec::default(),
            }
        }
    };
    graph.spec.nodes = nodes;
    graph.spec.edges = edges;
    (graph, broken)
}

/// `500ms`, `2s`, `5m`, `1h`; positive.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let value: f64 = num
        .parse()
        .map_err(|_| format!("'{text}' is not a duration; write e.g. 500ms, 30s, 5m or 1h"))?;
    let secs = match unit {
        "ms" => value / 1000.0,
        "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        _ => {
            return Err(format!(
                "'{text}' has no valid unit; write e.g. 500ms, 30s, 5m or 1h"
            ));
        }
    };
    if !(secs > 0.0 && secs <= 7.0 * 24.0 * 3600.0) {
        return Err(format!("'{text}' must be more than 0 and at most 168h"));
    }
    Ok(Duration::from_secs_f64(secs))
}

fn node_yaml(root: &Yaml, i: usize) -> Option<&Yaml> {
    root.get("spec")?.get("nodes")?.items().get(i)
}
fn edge_yaml(root: &Yaml, i: usize) -> Option<&Yaml> {
    root.get("spec")?.get("edges")?.items().get(i)
}
fn pos_of(node: Option<&Yaml>, path: &[&str]) -> Pos {
    let mut cur = node;
    let mut best = node.map(|n| n.pos).unwrap_or_default();
    for p in path {
        cur = cur.and_then(|c| c.get(p));
        if let Some(c) = cur {
            best = c.pos;
        }
    }
    best
}

/// Compiles a CEL expression within the limits of [`super::expr`] and checks it reads only
/// the run state; the message quotes the expression (shortened when long).
pub fn check_expression(src: &str) -> Result<Expression, String> {
    Expression::compile(src).map_err(|e| refusal(src, &e))
}

fn refusal(src: &str, e: &ExprError) -> String {
    format!("expression `{}` {e}", abbreviate(src))
}

/// [`check_expression`] through `cache`, so a graph's identical expressions compile once and
/// the compiled graph reuses them.
fn check_cached(src: &str, cache: &mut ExprCache) -> Result<(), String> {
    let compiled = cache
        .entry(src.to_owned())
        .or_insert_with(|| Expression::compile(src).map(Arc::new));
    compiled.as_ref().map(|_| ()).map_err(|e| refusal(src, e))
}

/// Type errors of `src` (compiled through `cache`), each checked once per graph.
fn type_errors(
    src: &str,
    condition: bool,
    env: &TypeEnv,
    cache: &ExprCache,
    seen: &mut HashMap<(String, bool), Vec<TypeError>>,
) -> Vec<TypeError> {
    let Some(Ok(expr)) = cache.get(src) else {
        return Vec::new();
    };
    seen.entry((src.to_owned(), condition))
        .or_insert_with(|| expr.type_errors(env, condition))
        .clone()
}

/// The document and where its lines start, to place errors inside an expression.
struct Text<'a> {
    source: &'a str,
    line_starts: Vec<usize>,
}

fn line_starts(source: &str) -> Vec<usize> {
    std::iter::once(0)
        .chain(source.match_indices('\n').map(|(i, _)| i + 1))
        .collect()
}

impl Text<'_> {
    /// Where character `offset` of expression `expr`, written as scalar `node`, is in the
    /// file: exact when the scalar is plain or quoted and its text up to there is written
    /// as is (no escapes, on one line); the scalar's own position otherwise.
    fn pos_in(&self, node: Option<&Yaml>, expr: &str, offset: Option<usize>) -> Pos {
        let Some(node) = node else {
            return Pos::default();
        };
        let line_index = node
            .pos
            .line
            .checked_sub(1)
            .and_then(|l| self.line_starts.get(l));
        let (Some(offset), Some(&start)) = (offset, line_index) else {
            return node.pos;
        };
        let line = self.source[start..].split('\n').next().unwrap_or("");
        let Some((at, _)) = line.char_indices().nth(node.pos.col.saturating_sub(1)) else {
            return node.pos;
        };
        let raw = &line[at..];
        let quote = usize::from(raw.starts_with(['"', '\'']));
        let prefix: String = expr.chars().take(offset).collect();
        // An escape or a line break before the spot makes the text differ from the value.
        if raw[quote..].starts_with(&prefix) {
            Pos {
                line: node.pos.line,
                col: node.pos.col + quote + offset,
            }
        } else {
            node.pos
        }
    }
}

/// At most 80 characters of `src`, marked when cut.
pub fn abbreviate(src: &str) -> String {
    const KEEP: usize = 80;
    if src.chars().count() <= KEEP {
        src.to_owned()
    } else {
        let cut: String = src.chars().take(KEEP).collect();
        format!("{cut}… ({} bytes)", src.len())
    }
}

#[allow(clippy::too_many_arguments)]
fn semantics(
    g: &Graph,
    broken: &Broken,
    root: &Yaml,
    text: &Text,
    components: &[Manifest],
    outputs: &BTreeMap<String, serde_json::Value>,
    cache: &mut ExprCache,
    errs: &mut Vec<Located>,
) {
    let mut push = |pos: Pos, message: String| errs.push(Located { pos, message });
    let input_schema_ok = g
        .spec
        .input
        .as_ref()
        .is_none_or(|s| jsonschema::validator_for(s).is_ok());
    let mut types = TypeEnv::new(g, outputs);
    if !input_schema_ok {
        types.input = super::typecheck::Ty::Dyn;
    }
    let mut typed: HashMap<(String, bool), Vec<TypeError>> = HashMap::new();
    if !broken.top && g.api_version != spec::API_VERSION {
        push(
            pos_of(Some(root), &["apiVersion"]),
            format!(
                "apiVersion '{}' is not supported; use {}",
                g.api_version,
                spec::API_VERSION
            ),
        );
    }
    if let Some(schema) = &g.spec.input
        && let Err(e) = jsonschema::validator_for(schema)
    {
        push(
            pos_of(Some(root), &["spec", "input"]),
            format!("spec.input is not a valid JSON Schema: {e}"),
        );
    }
    if g.kind != spec::KIND {
        push(
            pos_of(Some(root), &["kind"]),
            format!("kind '{}' is not Graph; use kind: Graph", g.kind),
        );
    }
    if g.spec.nodes.is_empty() && !broken.top {
        push(
            pos_of(Some(root), &["spec"]),
            "graph has no nodes; add at least one under spec.nodes".into(),
        );
    }
    let mut ids: HashMap<&str, usize> = HashMap::new();
    for (i, n) in g.spec.nodes.iter().enumerate() {
        let y = node_yaml(root, i);
        if let Some(first) = ids.get(n.id.as_str()) {
            push(
                pos_of(y, &["id"]),
                format!(
                    "duplicate node id '{}' (first at {}); give each node its own id",
                    n.id,
                    pos_of(node_yaml(root, *first), &["id"])
                ),
            );
        } else {
            ids.insert(&n.id, i);
        }
        if broken.nodes.contains(&i) {
            continue;
        }
        let manifest = components.iter().find(|c| c.metadata.name == n.component);
        if manifest.is_none() {
            let names: Vec<&str> = components
                .iter()
                .map(|c| c.metadata.name.as_str())
                .collect();
            push(
                pos_of(y, &["component"]),
                format!(
                    "node '{}' uses unknown component '{}'; known components: {}",
                    n.id,
                    n.component,
                    names.join(", ")
                ),
            );
        }
        check_agent_fields(n, y, components, &mut push);
        for (field, expr) in &n.input {
            if let Err(m) = check_cached(expr, cache) {
                push(
                    pos_of(y, &["input", field]),
                    format!("node '{}' input '{field}': {m}", n.id),
                );
                continue;
            }
            let scalar = y.and_then(|y| y.get("input")).and_then(|i| i.get(field));
            for t in type_errors(expr, false, &types, cache, &mut typed) {
                push(
                    text.pos_in(scalar, expr, t.offset),
                    format!(
                        "node '{}' input '{field}': expression `{}` {}",
                        n.id,
                        abbreviate(expr),
                        t.message
                    ),
                );
            }
        }
        if let Some(t) = &n.timeout
            && let Err(m) = parse_duration(t)
        {
            push(
                pos_of(y, &["timeout"]),
                format!("node '{}' timeout {m}", n.id),
            );
        }
        if n.max_iterations == Some(0) {
            push(
                pos_of(y, &["maxIterations"]),
                format!("node '{}' maxIterations must be at least 1", n.id),
            );
        }
        if let Some(r) = &n.retry {
            if r.max_attempts == 0 || r.max_attempts > 20 {
                push(
                    pos_of(y, &["retry", "maxAttempts"]),
                    format!(
                        "node '{}' retry.maxAttempts must be 1..=20, not {}",
                        n.id, r.max_attempts
                    ),
                );
            }
            if !(r.multiplier >= 1.0 && r.multiplier <= 10.0) {
                push(
                    pos_of(y, &["retry", "multiplier"]),
                    format!(
                        "node '{}' retry.multiplier must be 1..=10, not {}",
                        n.id, r.multiplier
                    ),
                );
            }
            if let Err(m) = parse_duration(&r.initial_backoff) {
                push(
                    pos_of(y, &["retry", "initialBackoff"]),
                    format!("node '{}' retry.initialBackoff {m}", n.id),
                );
            }
        }
        if let Some(grant) = &n.grant {
            for (pos, m) in check_grant(&n.id, grant, manifest) {
                push(pos_of(y, &pos), m);
            }
        }
    }
    if let Some(d) = &g.spec.limits.deadline
        && let Err(m) = parse_duration(d)
    {
        push(
            pos_of(Some(root), &["spec", "limits", "deadline"]),
            format!("limits.deadline {m}"),
        );
    }
    if g.spec.limits.max_steps == Some(0) {
        push(
            pos_of(Some(root), &["spec", "limits", "maxSteps"]),
            "limits.maxSteps must be at least 1".into(),
        );
    }

    // Edges: references and conditions.
    let mut edges_ok: Vec<(usize, usize, usize)> = Vec::new(); // (edge, from, to)
    for (i, e) in g.spec.edges.iter().enumerate() {
        let y = edge_yaml(root, i);
        let from = ids.get(e.from.as_str()).copied();
        let to = ids.get(e.to.as_str()).copied();
        if broken.edges.contains(&i) {
            if let (Some(f), Some(t)) = (from, to) {
                edges_ok.push((i, f, t));
            }
            continue;
        }
        if from.is_none() {
            push(
                pos_of(y, &["from"]),
                format!(
                    "edge '{} -> {}' starts at unknown node '{}'; declare it under spec.nodes",
                    e.from, e.to, e.from
                ),
            );
        }
        if to.is_none() {
            push(
                pos_of(y, &["to"]),
                format!(
                    "edge '{} -> {}' points to unknown node '{}'; declare it under spec.nodes",
                    e.from, e.to, e.to
                ),
            );
        }
        if let Some(w) = &e.when {
            if let Err(m) = check_cached(w, cache) {
                push(
                    pos_of(y, &["when"]),
                    format!("edge '{} -> {}' when: {m}", e.from, e.to),
                );
            } else {
                let scalar = y.and_then(|y| y.get("when"));
                for t in type_errors(w, true, &types, cache, &mut typed) {
                    push(
                        text.pos_in(scalar, w, t.offset),
                        format!(
                            "edge '{} -> {}' when: expression `{}` {}",
                            e.from,
                            e.to,
                            abbreviate(w),
                            t.message
                        ),
                    );
                }
            }
        }
        if let (Some(f), Some(t)) = (from, to) {
            edges_ok.push((i, f, t));
        }
    }
    if ids.len() != g.spec.nodes.len() {
        return; // graph checks need unique ids
    }
    let topo = Topology::new(g.spec.nodes.len(), &edges_ok);

    // Cycles: the first back edge (else the first edge) inside each component, found in one
    // pass over the edges.
    let mut scc_of = vec![usize::MAX; g.spec.nodes.len()];
    for (k, scc) in topo.cyclic_sccs.iter().enumerate() {
        for &n in scc {
            scc_of[n] = k;
        }
    }
    let mut closing: Vec<Option<(usize, usize, usize)>> = vec![None; topo.cyclic_sccs.len()];
    for &(ei, f, t) in topo.back_edges.iter().chain(&edges_ok) {
        let k = scc_of[f];
        if k != usize::MAX && scc_of[t] == k && closing[k].is_none() {
            closing[k] = Some((ei, f, t));
        }
    }
    for (scc, closing) in topo.cyclic_sccs.iter().zip(closing) {
        if scc
            .iter()
            .any(|&n| g.spec.nodes[n].max_iterations.is_some())
        {
            continue;
        }
        if let Some((ei, _, t)) = closing {
            let e = &g.spec.edges[ei];
            push(
                pos_of(edge_yaml(root, ei), &[]),
                format!(
                    "edge '{} -> {}' closes a cycle with no max_iterations; add max_iterations to node '{}'",
                    e.from, e.to, g.spec.nodes[t].id
                ),
            );
        }
    }

    // Reachability.
    if topo.entries.is_empty() && !g.spec.nodes.is_empty() {
        push(
            pos_of(Some(root), &["spec", "nodes"]),
            "graph has no entry node (every node has an inbound edge); remove an edge into the first node".into(),
        );
    } else {
        let reached = topo.reach(&topo.entries);
        for (i, n) in g.spec.nodes.iter().enumerate() {
            // A broken edge may be the one that reaches it.
            if !reached.contains(&i) && broken.edges.is_empty() {
                push(
                    pos_of(node_yaml(root, i), &["id"]),
                    format!(
                        "node '{}' is unreachable from the entry nodes; add an edge to it or remove it",
                        n.id
                    ),
                );
            }
        }
    }

    // Joins over mutually exclusive branches. Each exclusive pair walks what its two sides
    // reach once; only joins fed from one side are then looked at, so the cost is the size of
    // the regions, not pairs x joins x inbound edges.
    let n = g.spec.nodes.len();
    let (mut in_a, mut in_b) = (vec![false; n], vec![false; n]);
    let (mut list_a, mut list_b) = (Vec::new(), Vec::new());
    for (s, outs) in topo.out.iter().enumerate() {
        for (ai, &(ea, _, xa)) in outs.iter().enumerate() {
            for &(eb, _, xb) in &outs[ai + 1..] {
                let (Some(ca), Some(cb)) = (&g.spec.edges[ea].when, &g.spec.edges[eb].when) else {
                    continue;
                };
                if !exclusive(ca, cb) {
                    continue;
                }
                topo.one_sided(xa, xb, &mut in_a, &mut in_b, &mut list_a, &mut list_b);
                // Joins with an inbound edge from the a side only (or the edge `ea` itself).
                let mut candidates: Vec<usize> = list_a
                    .iter()
                    .filter(|&&f| f != s && !in_b[f])
                    .flat_map(|&f| topo.out[f].iter().map(|e| e.2))
                    .chain([xa])
                    .filter(|&t| topo.forward_in[t].len() >= 2)
                    .collect();
                candidates.sort_unstable();
                candidates.dedup();
                for j in candidates {
                    let ins = &topo.forward_in[j];
                    let side = |&(ei, f, _): &(usize, usize, usize),
                                mine: usize,
                                r: &[bool],
                                other: &[bool]| {
                        ei == mine || (f != s && r[f] && !other[f])
                    };
                    let a = ins.iter().find(|e| side(e, ea, &in_a, &in_b));
                    let b = ins.iter().find(|e| side(e, eb, &in_b, &in_a));
                    if let (Some(&(a, ..)), Some(&(b, ..))) = (a, b) {
                        let ed = |k: usize| {
                            format!("{} -> {}", g.spec.edges[k].from, g.spec.edges[k].to)
                        };
                        push(
                            pos_of(node_yaml(root, j), &["id"]),
                            format!(
                                "node '{}' waits for '{}' and '{}', which can never both arrive: they follow the exclusive conditions of '{}' and '{}' out of '{}'; join them through a node that both branches reach, or drop one edge",
                                g.spec.nodes[j].id,
                                ed(a),
                                ed(b),
                                ed(ea),
                                ed(eb),
                                g.spec.nodes[s].id
                            ),
                        );
                    }
                }
                for &f in &list_a {
                    in_a[f] = false;
                }
                for &f in &list_b {
                    in_b[f] = false;
                }
            }
        }
    }
}

/// A grant may only narrow its component's manifest: workspace mode, egress hosts, limits.
/// Returns (path under the node, message) for each widening or bad value.
/// Agent-only fields on tool nodes, and the tools an agent node grants.
fn check_agent_fields(
    n: &Node,
    y: Option<&Yaml>,
    components: &[Manifest],
    push: &mut impl FnMut(Pos, String),
) {
    if n.kind == spec::NodeKind::Tool {
        for (field, set) in [
            ("tools", !n.tools.is_empty()),
            ("models", !n.models.is_empty()),
            ("maxTokens", n.max_tokens.is_some()),
        ] {
            if set {
                push(
                    pos_of(y, &[field]),
                    format!(
                        "node '{}' is kind: tool, but `{field}` is only for agent nodes; \
                         remove it or make the node kind: agent",
                        n.id
                    ),
                );
            }
        }
        return;
    }
    let mut seen = HashSet::new();
    for (i, tool) in n.tools.iter().enumerate() {
        let at = y
            .and_then(|y| y.get("tools"))
            .and_then(|t| t.items().get(i))
            .map_or_else(|| pos_of(y, &["tools"]), |t| t.pos);
        if !seen.insert(tool.as_str()) {
            push(at, format!("node '{}' lists tool '{tool}' twice", n.id));
        } else if !components.iter().any(|c| c.metadata.name == *tool) {
            let names: Vec<&str> = components
                .iter()
                .map(|c| c.metadata.name.as_str())
                .collect();
            push(
                at,
                format!(
                    "node '{}' grants unknown tool '{tool}'; known components: {}",
                    n.id,
                    names.join(", ")
                ),
            );
        }
    }
    if n.max_tokens == Some(0) {
        push(
            pos_of(y, &["maxTokens"]),
            format!("node '{}' maxTokens must be at least 1", n.id),
        );
    }
}

/// Checks every agent node's `models:` against the aliases the host's models file defines
/// (run where the models are known: `sandgraph run`, `sandgraph serve`).
pub fn check_models(
    file: &str,
    source: &str,
    graph: &Graph,
    known: &[String],
) -> Result<(), Diagnostics> {
    let root = yaml::parse(source).ok().map(|(root, _)| root);
    let mut out = Vec::new();
    for (i, n) in graph.spec.nodes.iter().enumerate() {
        let y = root.as_ref().and_then(|r| node_yaml(r, i));
        for (j, m) in n.models.iter().enumerate() {
            if !known.iter().any(|k| k == m) {
                let pos = y
                    .and_then(|y| y.get("models"))
                    .and_then(|t| t.items().get(j))
                    .map_or_else(|| pos_of(y, &["models"]), |t| t.pos);
                out.push(Diagnostic {
                    file: file.to_owned(),
                    pos,
                    message: format!(
                        "node '{}' names unknown model alias '{m}'; the models file defines: {}",
                        n.id,
                        if known.is_empty() {
                            "none".to_owned()
                        } else {
                            known.join(", ")
                        }
                    ),
                });
            }
        }
    }
    if out.is_empty() {
        Ok(())
    } else {
        Err(Diagnostics(out))
    }
}

fn check_grant(
    id: &str,
    grant: &spec::Grant,
    manifest: Option<&Manifest>,
) -> Vec<(Vec<&'static str>, String)> {
    let mut out = Vec::new();
    let allowed = manifest.map(|m| &m.spec);
    if let Some(w) = &grant.workspace {
        let mode = match w.as_str() {
            "none" => Some(WorkspaceMode::None),
            "ro" => Some(WorkspaceMode::Ro),
            "rw" => Some(WorkspaceMode::Rw),
            _ => None,
        };
        match (mode, allowed) {
            (None, _) => out.push((
                vec!["grant", "workspace"],
                format!("node '{id}' grant.workspace '{w}' is not none, ro or rw"),
            )),
            (Some(mode), Some(spec)) if mode > spec.workspace => out.push((
                vec!["grant", "workspace"],
                format!(
                    "node '{id}' grant.workspace '{w}' widens the manifest's workspace ({}); a grant can only narrow it",
                    format!("{:?}", spec.workspace).to_lowercase()
                ),
            )),
            _ => {}
        }
    }
    if let (Some(hosts), Some(spec)) = (&grant.egress_hosts, allowed) {
        for h in hosts {
            let covered = spec.egress.iter().any(|r| {
                r.host == "*"
                    || r.host.eq_ignore_ascii_case(h)
                    || host_matches(&r.host, h.strip_prefix("*.").unwrap_or(h))
            });
            if !covered {
                let rules: Vec<&str> = spec.egress.iter().map(|r| r.host.as_str()).collect();
                out.push((
                    vec!["grant", "egressHosts"],
                    format!(
                        "node '{id}' grant.egressHosts '{h}' is not allowed by the manifest (egress hosts: [{}]); a grant can only narrow it",
                        rules.join(", ")
                    ),
                ));
            }
        }
    }
    if let Some(l) = &grant.limits {
        let pairs: [(&'static str, &Option<String>, bool); 4] = [
            ("memory", &l.memory, false),
            ("timeout", &l.timeout, true),
            ("maxOutput", &l.max_output, false),
            ("maxResponse", &l.max_response, false),
        ];
        for (field, value, is_duration) in pairs {
            let Some(v) = value else { continue };
            let parsed = if is_duration {
                manifest::parse_duration(v).map(|d| d.as_millis() as u64)
            } else {
                manifest::parse_size(v)
            };
            let ceiling = allowed.map(|s| match field {
                "memory" => s.limits.memory,
                "timeout" => s.limits.timeout.as_millis() as u64,
                "maxOutput" => s.limits.max_output,
                _ => s.limits.max_response,
            });
            match (parsed, ceiling) {
                (Err(m), _) => out.push((
                    vec!["grant", "limits", field],
                    format!("node '{id}' grant.limits.{field}: {m}"),
                )),
                (Ok(v2), Some(c)) if v2 > c => out.push((
                    vec!["grant", "limits", field],
                    format!("node '{id}' grant.limits.{field} '{v}' is above the manifest's limit; a grant can only narrow it"),
                )),
                _ => {}
            }
        }
    }
    out
}

/// Whether `a` and `b` are written as `c` and `!c` (or `!(c)`).
fn exclusive(a: &str, b: &str) -> bool {
    let norm = |s: &str| s.chars().filter(|c| !c.is_whitespace()).collect::<String>();
    let (a, b) = (norm(a), norm(b));
    let neg = |x: &str, y: &str| x == format!("!{y}") || x == format!("!({y})");
    neg(&a, &b) || neg(&b, &a)
}

/// Edges by node, entries, back edges and cyclic components of a graph with unique ids.
pub(crate) struct Topology {
    pub out: Vec<Vec<(usize, usize, usize)>>,
    pub forward_in: Vec<Vec<(usize, usize, usize)>>,
    /// Nodes with no inbound edge but their own self-loops, in declaration order.
    pub entries: Vec<usize>,
    pub back_edges: Vec<(usize, usize, usize)>,
    pub cyclic_sccs: Vec<Vec<usize>>,
    /// The strongly connected component of each node, numbered in topological order of the
    /// condensation (every edge between components goes to a higher number).
    scc_of: Vec<usize>,
    scc_nodes: Vec<Vec<usize>>,
    /// Edges between components, deduplicated.
    scc_out: Vec<Vec<usize>>,
}

impl Topology {
    pub(crate) fn new(n: usize, edges: &[(usize, usize, usize)]) -> Topology {
        let mut out = vec![Vec::new(); n];
        // Inbound edges other than self-loops: a node with a bounded self-loop and nothing
        // else coming in is an entry (its self-loop is a back edge, never awaited).
        let mut has_in = vec![false; n];
        let mut g = petgraph::graph::DiGraph::<(), ()>::new();
        let idx: Vec<_> = (0..n).map(|_| g.add_node(())).collect();
        for &(ei, f, t) in edges {
            out[f].push((ei, f, t));
            if f != t {
                has_in[t] = true;
            }
            g.add_edge(idx[f], idx[t], ());
        }
        let entries: Vec<usize> = (0..n).filter(|&i| !has_in[i]).collect();
        // Iterative DFS from the entries (then any unvisited node) to classify back edges.
        let mut state = vec![0u8; n]; // 0 new, 1 on stack, 2 done
        let mut back_edges = Vec::new();
        let starts: Vec<usize> = entries.iter().copied().chain(0..n).collect();
        for s in starts {
            if state[s] != 0 {
                continue;
            }
            let mut stack = vec![(s, 0usize)];
            state[s] = 1;
            while let Some((v, k)) = stack.pop() {
                if k < out[v].len() {
                    stack.push((v, k + 1));
                    let e = out[v][k];
                    match state[e.2] {
                        0 => {
                            state[e.2] = 1;
                            stack.push((e.2, 0));
                        }
                        1 => back_edges.push(e),
                        _ => {}
                    }
                } else {
                    state[v] = 2;
                }
            }
        }
        let back: HashSet<usize> = back_edges.iter().map(|e| e.0).collect();
        let mut forward_in = vec![Vec::new(); n];
        for &(ei, f, t) in edges {
            if !back.contains(&ei) {
                forward_in[t].push((ei, f, t));
            }
        }
        let self_loops: HashSet<usize> = edges
            .iter()
            .filter(|&&(_, f, t)| f == t)
            .map(|&(_, f, _)| f)
            .collect();
        // Tarjan lists components in reverse topological order.
        let mut sccs: Vec<Vec<usize>> = petgraph::algo::tarjan_scc(&g)
            .into_iter()
            .map(|c| {
                let mut v: Vec<usize> = c.into_iter().map(|i| i.index()).collect();
                v.sort();
                v
            })
            .collect();
        sccs.reverse();
        let mut scc_of = vec![0; n];
        for (k, c) in sccs.iter().enumerate() {
            for &v in c {
                scc_of[v] = k;
            }
        }
        let mut scc_out: Vec<Vec<usize>> = vec![Vec::new(); sccs.len()];
        for &(_, f, t) in edges {
            let (cf, ct) = (scc_of[f], scc_of[t]);
            if cf != ct {
                scc_out[cf].push(ct);
            }
        }
        for o in &mut scc_out {
            o.sort_unstable();
            o.dedup();
        }
        let mut cyclic_sccs: Vec<Vec<usize>> = sccs
            .iter()
            .filter(|c| c.len() > 1 || self_loops.contains(&c[0]))
            .cloned()
            .collect();
        cyclic_sccs.sort();
        Topology {
            out,
            forward_in,
            entries,
            back_edges,
            cyclic_sccs,
            scc_of,
            scc_nodes: sccs,
            scc_out,
        }
    }

    /// Marks the nodes reachable from `xa` but not from `xb` in `in_a`, and those reachable
    /// from `xb` but not `xa` in `in_b`, listing every mark it set; nodes reachable from both
    /// are left unmarked. Works on the components of the graph (a node reaches everything its
    /// component reaches, its component included), settled in topological order, so once every
    /// component waiting is reachable from both sides, so is everything after them and the
    /// walk stops instead of covering the whole graph downstream of the pair: the cost is the
    /// size of the one-sided regions, with loops as without.
    pub(crate) fn one_sided(
        &self,
        xa: usize,
        xb: usize,
        in_a: &mut [bool],
        in_b: &mut [bool],
        list_a: &mut Vec<usize>,
        list_b: &mut Vec<usize>,
    ) {
        use std::cmp::Reverse;
        use std::collections::BinaryHeap;
        list_a.clear();
        list_b.clear();
        // Components queued: (reached from a, from b, taken off the heap).
        let mut queued: HashMap<usize, (bool, bool, bool)> = HashMap::new();
        let mut heap = BinaryHeap::new();
        // Queued, not yet taken, and reachable from one side only so far.
        let mut pending = 0usize;
        let visit = |c: usize,
                     a: bool,
                     b: bool,
                     heap: &mut BinaryHeap<Reverse<usize>>,
                     queued: &mut HashMap<usize, (bool, bool, bool)>,
                     pending: &mut usize| {
            match queued.get_mut(&c) {
                None => {
                    queued.insert(c, (a, b, false));
                    heap.push(Reverse(c));
                    *pending += usize::from(a != b);
                }
                Some(m) => {
                    let was_one_sided = m.0 != m.1;
                    m.0 |= a;
                    m.1 |= b;
                    if !m.2 && was_one_sided && m.0 == m.1 {
                        *pending -= 1;
                    }
                }
            }
        };
        visit(
            self.scc_of[xa],
            true,
            false,
            &mut heap,
            &mut queued,
            &mut pending,
        );
        visit(
            self.scc_of[xb],
            false,
            true,
            &mut heap,
            &mut queued,
            &mut pending,
        );
        while pending > 0 {
            let Some(Reverse(c)) = heap.pop() else {
                break;
            };
            let m = queued.get_mut(&c).expect("queued before pushed");
            m.2 = true;
            let (a, b, _) = *m;
            pending -= usize::from(a != b);
            for &t in &self.scc_out[c] {
                visit(t, a, b, &mut heap, &mut queued, &mut pending);
            }
        }
        // Components still queued were reached only through ones already settled on both
        // sides or are settled themselves: their marks are final.
        for (c, (a, b, _)) in queued {
            if a == b {
                continue;
            }
            let (marks, list) = if a {
                (&mut *in_a, &mut *list_a)
            } else {
                (&mut *in_b, &mut *list_b)
            };
            for &v in &self.scc_nodes[c] {
                marks[v] = true;
                list.push(v);
            }
        }
    }

    /// Nodes reachable from `starts`, the starts included.
    pub(crate) fn reach(&self, starts: &[usize]) -> BTreeSet<usize> {
        let mut seen: BTreeSet<usize> = starts.iter().copied().collect();
        let mut todo: Vec<usize> = starts.to_vec();
        while let Some(v) = todo.pop() {
            for &(_, _, t) in &self.out[v] {
                if seen.insert(t) {
                    todo.push(t);
                }
            }
        }
        seen
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `one_sided` agrees with walking both sides in full, on random graphs with and without
    /// loops.
    #[test]
    fn one_sided_walk_matches_the_full_walk() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut rand = |n: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % n as u64) as usize
        };
        for round in 0..300 {
            let n = 2 + rand(30);
            let mut edges = Vec::new();
            for _ in 0..rand(3 * n) {
                let (f, t) = (rand(n), rand(n));
                // Mostly forward; some rounds get loops.
                if f < t || round % 3 == 0 {
                    edges.push((edges.len(), f, t));
                }
            }
            let topo = Topology::new(n, &edges);
            let (mut in_a, mut in_b) = (vec![false; n], vec![false; n]);
            let (mut la, mut lb) = (Vec::new(), Vec::new());
            for xa in 0..n {
                for xb in 0..n {
                    if xa == xb {
                        continue;
                    }
                    let ra = topo.reach(&[xa]);
                    let rb = topo.reach(&[xb]);
                    topo.one_sided(xa, xb, &mut in_a, &mut in_b, &mut la, &mut lb);
                    for v in 0..n {
                        let want = (
                            ra.contains(&v) && !rb.contains(&v),
                            rb.contains(&v) && !ra.contains(&v),
                        );
                        // Only one-sided nodes are marked, each on its side.
                        assert_eq!(
                            (in_a[v], in_b[v]),
                            want,
                            "round {round}: {xa} vs {xb}, node {v}, {edges:?}"
                        );
                    }
                    for &v in &la {
                        in_a[v] = false;
                    }
                    for &v in &lb {
                        in_b[v] = false;
                    }
                    assert!(in_a.iter().chain(&in_b).all(|m| !m));
                }
            }
        }
    }
}
