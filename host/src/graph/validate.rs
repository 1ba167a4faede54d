//! Checks a graph document and reports every problem at once, each with `file:line:col` and
//! the fix, so an author fixes a graph in one pass instead of one error per run. Structure
//! comes from the spec types; references, expressions, cycles and joins are checked here.
//!
//! Rules beyond the types:
//! - A node on a cycle (a strongly connected component of more than one node, or a self-loop)
//!   needs `maxIterations` on at least one node of that cycle; the error sits on the edge that
//!   closes the cycle (the back edge found by a depth-first walk from the entry nodes).
//! - Entry nodes are those without inbound edges; every node must be reachable from one.
//! - A join (a node with two or more inbound forward edges) waits for all of them. Two inbound
//!   edges can never both arrive when they descend from the two sides of a mutually exclusive
//!   pair of edges out of one node: edges whose `when` are `c` and `!c` / `!(c)` (compared with
//!   whitespace removed). Such a join is an error; it is only a syntactic check, so exclusive
//!   conditions written differently are not found.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::Duration;

use super::expr::Expression;
use super::spec::{self, Graph, Node};
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
    let (root, mut errs) = yaml::parse(source).map_err(|e| Diagnostics(vec![diag(file, e)]))?;
    let (graph, broken) = structure(&root, &mut errs);
    semantics(&graph, &broken, &root, components, &mut errs);
    if errs.is_empty() {
        return Ok(graph);
    }
    errs.sort_by(|a, b| a.pos.cmp(&b.pos).then(a.message.cmp(&b.message)));
    errs.dedup();
    Err(Diagnostics(
        errs.into_iter().map(|e| diag(file, e)).collect(),
    ))
}

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
    Expression::compile(src).map_err(|e| format!("expression `{}` {e}", abbreviate(src)))
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

fn semantics(
    g: &Graph,
    broken: &Broken,
    root: &Yaml,
    components: &[Manifest],
    errs: &mut Vec<Located>,
) {
    let mut push = |pos: Pos, message: String| errs.push(Located { pos, message });
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
        for (field, expr) in &n.input {
            if let Err(m) = check_expression(expr) {
                push(
                    pos_of(y, &["input", field]),
                    format!("node '{}' input '{field}': {m}", n.id),
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
        if let Some(w) = &e.when
            && let Err(m) = check_expression(w)
        {
            push(
                pos_of(y, &["when"]),
                format!("edge '{} -> {}' when: {m}", e.from, e.to),
            );
        }
        if let (Some(f), Some(t)) = (from, to) {
            edges_ok.push((i, f, t));
        }
    }
    if ids.len() != g.spec.nodes.len() {
        return; // graph checks need unique ids
    }
    let topo = Topology::new(g.spec.nodes.len(), &edges_ok);

    // Cycles.
    for scc in &topo.cyclic_sccs {
        if scc
            .iter()
            .any(|&n| g.spec.nodes[n].max_iterations.is_some())
        {
            continue;
        }
        let set: HashSet<usize> = scc.iter().copied().collect();
        let closing = topo
            .back_edges
            .iter()
            .find(|&&(_, f, t)| set.contains(&f) && set.contains(&t))
            .or_else(|| {
                edges_ok
                    .iter()
                    .find(|&&(_, f, t)| set.contains(&f) && set.contains(&t))
            });
        if let Some(&(ei, _, t)) = closing {
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

    // Joins over mutually exclusive branches.
    for (s, outs) in topo.out.iter().enumerate() {
        for (ai, &(ea, _, xa)) in outs.iter().enumerate() {
            for &(eb, _, xb) in &outs[ai + 1..] {
                let (Some(ca), Some(cb)) = (&g.spec.edges[ea].when, &g.spec.edges[eb].when) else {
                    continue;
                };
                if !exclusive(ca, cb) {
                    continue;
                }
                let ra = topo.reach(&[xa]);
                let rb = topo.reach(&[xb]);
                for (j, ins) in topo.forward_in.iter().enumerate() {
                    if ins.len() < 2 {
                        continue;
                    }
                    let side = |&(ei, f, _): &(usize, usize, usize),
                                mine: usize,
                                r: &BTreeSet<usize>,
                                other: &BTreeSet<usize>| {
                        ei == mine || (f != s && r.contains(&f) && !other.contains(&f))
                    };
                    let a = ins.iter().find(|e| side(e, ea, &ra, &rb));
                    let b = ins.iter().find(|e| side(e, eb, &rb, &ra));
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
            }
        }
    }
}

/// A grant may only narrow its component's manifest: workspace mode, egress hosts, limits.
/// Returns (path under the node, message) for each widening or bad value.
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
    pub entries: Vec<usize>,
    pub back_edges: Vec<(usize, usize, usize)>,
    pub cyclic_sccs: Vec<Vec<usize>>,
}

impl Topology {
    pub(crate) fn new(n: usize, edges: &[(usize, usize, usize)]) -> Topology {
        let mut out = vec![Vec::new(); n];
        let mut has_in = vec![false; n];
        let mut g = petgraph::graph::DiGraph::<(), ()>::new();
        let idx: Vec<_> = (0..n).map(|_| g.add_node(())).collect();
        for &(ei, f, t) in edges {
            out[f].push((ei, f, t));
            has_in[t] = true;
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
        let mut cyclic_sccs: Vec<Vec<usize>> = petgraph::algo::tarjan_scc(&g)
            .into_iter()
            .map(|c| {
                let mut v: Vec<usize> = c.into_iter().map(|i| i.index()).collect();
                v.sort();
                v
            })
            .filter(|c| c.len() > 1 || edges.iter().any(|&(_, f, t)| f == c[0] && t == c[0]))
            .collect();
        cyclic_sccs.sort();
        Topology {
            out,
            forward_in,
            entries,
            back_edges,
            cyclic_sccs,
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
