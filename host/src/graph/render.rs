//! A graph as a picture: a layered layout computed here (no layout engine needed to look at a
//! graph), drawn as SVG, or handed to Graphviz (DOT) or Mermaid as text. Forward edges go down
//! the layers; an edge that closes a loop is drawn dashed, back up. A run's node states colour
//! the nodes, with each node's step count.

use std::collections::HashMap;
use std::fmt::Write as _;

use petgraph::Direction;
use petgraph::stable_graph::NodeIndex;
use petgraph::visit::{EdgeRef, IntoEdgeReferences};

use super::CompiledGraph;
use super::spec::NodeKind;

/// What a node did in one run, as its colour says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeState {
    Pending,
    Running,
    Waiting,
    Succeeded,
    Failed,
    Cancelled,
}

impl NodeState {
    fn colours(self) -> (&'static str, &'static str) {
        match self {
            NodeState::Pending => ("#f4f4f5", "#a1a1aa"),
            NodeState::Running => ("#dbeafe", "#2563eb"),
            NodeState::Waiting => ("#fef9c3", "#ca8a04"),
            NodeState::Succeeded => ("#dcfce7", "#16a34a"),
            NodeState::Failed => ("#fee2e2", "#dc2626"),
            NodeState::Cancelled => ("#e4e4e7", "#52525b"),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            NodeState::Pending => "pending",
            NodeState::Running => "running",
            NodeState::Waiting => "waiting",
            NodeState::Succeeded => "succeeded",
            NodeState::Failed => "failed",
            NodeState::Cancelled => "cancelled",
        }
    }
}

/// A node's state in a run and how many steps of it ran.
#[derive(Debug, Clone, Copy)]
pub struct NodeRun {
    pub state: NodeState,
    pub steps: u32,
}

/// Node box size and the gaps between layers and between boxes of one layer, in pixels.
const BOX_W: f64 = 168.0;
const BOX_H: f64 = 48.0;
const LAYER_GAP: f64 = 64.0;
const NODE_GAP: f64 = 24.0;
const MARGIN: f64 = 24.0;
/// Edge conditions are shown up to this many characters.
const LABEL_MAX: usize = 48;

/// Where each node goes: its layer (longest path from an entry over forward edges) and its
/// place in the layer (ordered to cross fewer edges).
#[derive(Debug)]
pub struct Layout {
    /// Per node, in the graph's declaration order: (layer, position in the layer).
    pub place: HashMap<NodeIndex, (usize, usize)>,
    pub layers: Vec<Vec<NodeIndex>>,
}

/// The layered layout of `graph`.
pub fn layout(graph: &CompiledGraph) -> Layout {
    let g = &graph.graph;
    let declared: Vec<NodeIndex> = graph
        .spec
        .spec
        .nodes
        .iter()
        .filter_map(|n| graph.by_id.get(&n.id).copied())
        .collect();
    // Longest path over forward edges, in topological order (back edges close loops and are
    // left out, so the forward graph is acyclic).
    let mut indegree: HashMap<NodeIndex, usize> = declared.iter().map(|n| (*n, 0)).collect();
    for e in g.edge_references() {
        if !e.weight().back_edge {
            *indegree.entry(e.target()).or_default() += 1;
        }
    }
    let mut layer: HashMap<NodeIndex, usize> = HashMap::new();
    let mut ready: Vec<NodeIndex> = declared
        .iter()
        .filter(|n| indegree[n] == 0)
        .copied()
        .collect();
    ready.reverse();
    while let Some(n) = ready.pop() {
        let here = *layer.entry(n).or_insert(0);
        for e in g.edges_directed(n, Direction::Outgoing) {
            if e.weight().back_edge {
                continue;
            }
            let t = e.target();
            let l = layer.entry(t).or_insert(0);
            *l = (*l).max(here + 1);
            let d = indegree.get_mut(&t).expect("every node counted");
            *d -= 1;
            if *d == 0 {
                ready.push(t);
            }
        }
    }
    // A node left over (only on a cycle of forward edges, which validation refuses) goes last.
    let last = layer.values().copied().max().unwrap_or(0);
    for n in &declared {
        layer.entry(*n).or_insert(last + 1);
    }
    let depth = layer.values().copied().max().map_or(0, |m| m + 1);
    let mut layers: Vec<Vec<NodeIndex>> = vec![Vec::new(); depth];
    for n in &declared {
        layers[layer[n]].push(*n);
    }
    // Barycentre ordering, a few sweeps down and up: each node moves towards the mean position
    // of its neighbours in the layer before (or after).
    let position = |layers: &Vec<Vec<NodeIndex>>| -> HashMap<NodeIndex, f64> {
        layers
            .iter()
            .flat_map(|l| l.iter().enumerate().map(|(i, n)| (*n, i as f64)))
            .collect()
    };
    for sweep in 0..4 {
        let down = sweep % 2 == 0;
        let order: Vec<usize> = if down {
            (1..depth).collect()
        } else {
            (0..depth.saturating_sub(1)).rev().collect()
        };
        for li in order {
            let pos = position(&layers);
            let dir = if down {
                Direction::Incoming
            } else {
                Direction::Outgoing
            };
            let mut keyed: Vec<(f64, usize, NodeIndex)> = layers[li]
                .iter()
                .enumerate()
                .map(|(i, n)| {
                    let near: Vec<f64> = g
                        .edges_directed(*n, dir)
                        .filter(|e| !e.weight().back_edge)
                        .map(|e| if down { e.source() } else { e.target() })
                        .filter_map(|m| pos.get(&m).copied())
                        .collect();
                    let key = if near.is_empty() {
                        i as f64
                    } else {
                        near.iter().sum::<f64>() / near.len() as f64
                    };
                    (key, i, *n)
                })
                .collect();
            keyed.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
            layers[li] = keyed.into_iter().map(|(_, _, n)| n).collect();
        }
    }
    let place = layers
        .iter()
        .enumerate()
        .flat_map(|(l, nodes)| nodes.iter().enumerate().map(move |(i, n)| (*n, (l, i))))
        .collect();
    Layout { place, layers }
}

/// Text escaped for XML content and attribute values.
fn xml(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c if (c as u32) < 0x20 && c != '\t' && c != '\n' => out.push('\u{fffd}'),
            c => out.push(c),
        }
    }
    out
}

/// `text` cut to `max` characters, with an ellipsis when cut.
fn clip(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_owned();
    }
    let mut s: String = text.chars().take(max.saturating_sub(1)).collect();
    s.push('…');
    s
}

/// The graph as a standalone SVG document; with `runs`, each node coloured by its state and
/// labelled with its step count.
pub fn svg(graph: &CompiledGraph, runs: Option<&HashMap<String, NodeRun>>) -> String {
    let layout = layout(graph);
    let widest = layout.layers.iter().map(Vec::len).max().unwrap_or(1).max(1);
    let content = widest as f64 * BOX_W + (widest as f64 - 1.0) * NODE_GAP;
    // Loops are drawn to the right of the boxes, their conditions beside them.
    let g = &graph.graph;
    let loop_room = g
        .edge_references()
        .filter(|e| e.weight().back_edge)
        .map(|e| {
            48.0 + e
                .weight()
                .when_source
                .as_deref()
                .map_or(0.0, |w| clip(w, LABEL_MAX).chars().count() as f64 * 6.0)
        })
        .fold(0.0, f64::max);
    // A run's picture carries the six-state legend below: never narrower than it.
    let legend = if runs.is_some() { 6.0 * 84.0 } else { 0.0 };
    let width = (MARGIN * 2.0 + content + loop_room).max(MARGIN * 2.0 + legend);
    let height = MARGIN * 2.0
        + layout.layers.len().max(1) as f64 * BOX_H
        + (layout.layers.len().max(1) as f64 - 1.0) * LAYER_GAP
        + if runs.is_some() { 28.0 } else { 0.0 };
    // Each layer centred.
    let centre = |n: NodeIndex| -> (f64, f64) {
        let (l, i) = layout.place[&n];
        let count = layout.layers[l].len() as f64;
        let row = count * BOX_W + (count - 1.0) * NODE_GAP;
        let x0 = MARGIN + (content - row) / 2.0;
        (
            x0 + i as f64 * (BOX_W + NODE_GAP) + BOX_W / 2.0,
            MARGIN + l as f64 * (BOX_H + LAYER_GAP) + BOX_H / 2.0,
        )
    };
    let mut out = String::new();
    let name = &graph.spec.metadata.name;
    let _ = write!(
        out,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0}" height="{height:.0}" viewBox="0 0 {width:.0} {height:.0}" font-family="system-ui, sans-serif" font-size="12" role="img" aria-label="graph {}">
<title>{}</title>
<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="8" markerHeight="8" orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" fill="#52525b"/></marker></defs>
<rect width="100%" height="100%" fill="#ffffff"/>
"##,
        xml(name),
        xml(name)
    );
    for e in g.edge_references() {
        let (sx, sy) = centre(e.source());
        let (tx, ty) = centre(e.target());
        let label = e
            .weight()
            .when_source
            .as_deref()
            .map(|w| clip(w, LABEL_MAX));
        if e.weight().back_edge {
            // Back up the right-hand side of both boxes (a loop on one box: out near its top,
            // in near its bottom).
            let (x1, x2) = (sx + BOX_W / 2.0, tx + BOX_W / 2.0);
            let (y1, y2) = (sy - BOX_H / 4.0, ty + BOX_H / 4.0);
            let bulge = x1.max(x2) + 36.0;
            let _ = writeln!(
                out,
                r##"<path class="edge back" d="M{x1:.1},{y1:.1} C{bulge:.1},{y1:.1} {bulge:.1},{y2:.1} {x2:.1},{y2:.1}" fill="none" stroke="#52525b" stroke-dasharray="5 4" marker-end="url(#arrow)"/>"##
            );
            if let Some(l) = label {
                let _ = writeln!(
                    out,
                    r##"<text x="{:.1}" y="{:.1}" fill="#3f3f46" font-size="10">{}</text>"##,
                    bulge + 4.0,
                    (sy + ty) / 2.0,
                    xml(&l)
                );
            }
        } else {
            let (y1, y2) = (sy + BOX_H / 2.0, ty - BOX_H / 2.0);
            let _ = writeln!(
                out,
                r##"<path class="edge" d="M{sx:.1},{y1:.1} C{sx:.1},{:.1} {tx:.1},{:.1} {tx:.1},{y2:.1}" fill="none" stroke="#52525b" marker-end="url(#arrow)"/>"##,
                y1 + LAYER_GAP / 2.0,
                y2 - LAYER_GAP / 2.0
            );
            if let Some(l) = label {
                let _ = writeln!(
                    out,
                    r##"<text x="{:.1}" y="{:.1}" fill="#3f3f46" font-size="10" text-anchor="middle">{}</text>"##,
                    (sx + tx) / 2.0,
                    (y1 + y2) / 2.0,
                    xml(&l)
                );
            }
        }
    }
    for n in g.node_indices() {
        let node = &g[n].spec;
        let (cx, cy) = centre(n);
        let run = runs.and_then(|r| r.get(&node.id)).copied();
        let state = run.map_or(NodeState::Pending, |r| r.state);
        let (fill, stroke) = if runs.is_some() {
            state.colours()
        } else {
            ("#ffffff", "#3f3f46")
        };
        let kind = match node.kind {
            NodeKind::Tool => "tool",
            NodeKind::Agent => "agent",
        };
        let rx = if node.kind == NodeKind::Agent { 16 } else { 4 };
        let _ = writeln!(
            out,
            r##"<g class="node {kind}" data-node="{}" data-state="{}"><rect x="{:.1}" y="{:.1}" width="{BOX_W}" height="{BOX_H}" rx="{rx}" fill="{fill}" stroke="{stroke}" stroke-width="1.5"/><text x="{cx:.1}" y="{:.1}" text-anchor="middle" font-weight="600" fill="#18181b">{}</text><text x="{cx:.1}" y="{:.1}" text-anchor="middle" fill="#52525b" font-size="10">{} {}</text>"##,
            xml(&node.id),
            if runs.is_some() { state.as_str() } else { "" },
            cx - BOX_W / 2.0,
            cy - BOX_H / 2.0,
            cy - 3.0,
            xml(&clip(&node.id, 24)),
            cy + 13.0,
            kind,
            xml(&clip(&node.component, 18)),
        );
        if let Some(r) = run.filter(|r| r.steps > 1) {
            let _ = write!(
                out,
                r##"<text x="{:.1}" y="{:.1}" text-anchor="end" fill="{stroke}" font-size="10">×{}</text>"##,
                cx + BOX_W / 2.0 - 6.0,
                cy - BOX_H / 2.0 + 12.0,
                r.steps
            );
        }
        out.push_str("</g>\n");
    }
    if runs.is_some() {
        let mut x = MARGIN;
        let y = height - 14.0;
        for s in [
            NodeState::Pending,
            NodeState::Running,
            NodeState::Waiting,
            NodeState::Succeeded,
            NodeState::Failed,
            NodeState::Cancelled,
        ] {
            let (fill, stroke) = s.colours();
            let _ = writeln!(
                out,
                r##"<rect x="{x:.1}" y="{:.1}" width="12" height="12" fill="{fill}" stroke="{stroke}"/><text x="{:.1}" y="{y:.1}" font-size="10" fill="#3f3f46">{}</text>"##,
                y - 10.0,
                x + 16.0,
                s.as_str()
            );
            x += 84.0;
        }
    }
    out.push_str("</svg>\n");
    out
}

/// A quoted DOT identifier or label.
fn dot_quote(text: &str) -> String {
    let mut out = String::from("\"");
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The graph in Graphviz's DOT language (`dot -Tsvg`); loop edges dashed, against the flow.
pub fn dot(graph: &CompiledGraph, runs: Option<&HashMap<String, NodeRun>>) -> String {
    let g = &graph.graph;
    let mut out = format!(
        "digraph {} {{\n  rankdir=TB;\n  node [shape=box, style=\"rounded,filled\", fillcolor=\"#ffffff\", fontname=\"sans-serif\"];\n",
        dot_quote(&graph.spec.metadata.name)
    );
    for n in g.node_indices() {
        let node = &g[n].spec;
        let kind = match node.kind {
            NodeKind::Tool => "tool",
            NodeKind::Agent => "agent",
        };
        let mut attrs = format!(
            "label={}",
            dot_quote(&format!("{}\n{kind} {}", node.id, node.component))
        );
        if let Some(r) = runs.and_then(|r| r.get(&node.id)) {
            let (fill, stroke) = r.state.colours();
            let _ = write!(
                attrs,
                ", fillcolor=\"{fill}\", color=\"{stroke}\", tooltip={}",
                dot_quote(&format!("{} ({} steps)", r.state.as_str(), r.steps))
            );
        }
        let _ = writeln!(out, "  {} [{attrs}];", dot_quote(&node.id));
    }
    for e in g.edge_references() {
        let mut attrs = Vec::new();
        if let Some(w) = &e.weight().when_source {
            attrs.push(format!("label={}", dot_quote(w)));
        }
        if e.weight().back_edge {
            attrs.push("style=dashed, constraint=false".to_owned());
        }
        let _ = writeln!(
            out,
            "  {} -> {}{};",
            dot_quote(&g[e.source()].spec.id),
            dot_quote(&g[e.target()].spec.id),
            if attrs.is_empty() {
                String::new()
            } else {
                format!(" [{}]", attrs.join(", "))
            }
        );
    }
    out.push_str("}\n");
    out
}

/// Text for a Mermaid label (inside `"…"`): quotes and markup characters as entities.
fn mermaid_text(text: &str) -> String {
    let mut out = String::new();
    for c in text.chars() {
        match c {
            '"' => out.push_str("#quot;"),
            '<' => out.push_str("#lt;"),
            '>' => out.push_str("#gt;"),
            '|' => out.push_str("#124;"),
            '\n' => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

/// The graph as a Mermaid flowchart (renders in GitHub and most docs tools); nodes are named
/// `n0`, `n1`, … with their ids as labels, loop edges dotted.
pub fn mermaid(graph: &CompiledGraph, runs: Option<&HashMap<String, NodeRun>>) -> String {
    let g = &graph.graph;
    let names: HashMap<NodeIndex, String> = g
        .node_indices()
        .enumerate()
        .map(|(i, n)| (n, format!("n{i}")))
        .collect();
    let mut out = String::from("flowchart TD\n");
    for n in g.node_indices() {
        let node = &g[n].spec;
        let label = mermaid_text(&format!("{} · {}", node.id, node.component));
        let (open, close) = match node.kind {
            NodeKind::Tool => ("[\"", "\"]"),
            NodeKind::Agent => ("([\"", "\"])"),
        };
        let _ = writeln!(out, "  {}{open}{label}{close}", names[&n]);
    }
    for e in g.edge_references() {
        let arrow = if e.weight().back_edge { "-.->" } else { "-->" };
        let label = e
            .weight()
            .when_source
            .as_deref()
            .map(|w| format!("|\"{}\"|", mermaid_text(w)))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "  {} {arrow}{label} {}",
            names[&e.source()],
            names[&e.target()]
        );
    }
    if let Some(runs) = runs {
        for n in g.node_indices() {
            if let Some(r) = runs.get(&g[n].spec.id) {
                let (fill, stroke) = r.state.colours();
                let _ = writeln!(out, "  style {} fill:{fill},stroke:{stroke}", names[&n]);
            }
        }
    }
    out
}

/// Each node's state and step count in a run, from its journal (steps are `<node>#<n>`).
pub fn node_runs(records: &[crate::journal::Record]) -> HashMap<String, NodeRun> {
    use crate::journal::{Event, RunStatus};
    let mut out: HashMap<String, NodeRun> = HashMap::new();
    let mut steps: HashMap<String, std::collections::HashSet<String>> = HashMap::new();
    let node_of = |step: &str| step.split('#').next().unwrap_or(step).to_owned();
    for r in records {
        let (step, state) = match &r.event {
            Event::StepScheduled { step, .. } => (step, NodeState::Pending),
            Event::StepStarted { step, .. } => (step, NodeState::Running),
            Event::StepAwaitingApproval { step, .. } => (step, NodeState::Waiting),
            Event::StepCompleted { step, .. } => (step, NodeState::Succeeded),
            // A failure with a retry to come is not the node's end.
            Event::StepFailed {
                step, retry_in_ms, ..
            } => (
                step,
                if retry_in_ms.is_some() {
                    NodeState::Pending
                } else {
                    NodeState::Failed
                },
            ),
            Event::RunFinished { status, .. } => {
                // What was still under way when the run ended stopped there.
                if *status != RunStatus::Succeeded {
                    for n in out.values_mut() {
                        if matches!(
                            n.state,
                            NodeState::Running | NodeState::Pending | NodeState::Waiting
                        ) {
                            n.state = NodeState::Cancelled;
                        }
                    }
                }
                continue;
            }
            _ => continue,
        };
        let node = node_of(step);
        let seen = steps.entry(node.clone()).or_default();
        if matches!(state, NodeState::Running) {
            seen.insert(step.clone());
        }
        let n = out.entry(node).or_insert(NodeRun { state, steps: 0 });
        n.state = state;
        n.steps = seen.len() as u32;
    }
    out
}

/// The three pictures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Svg,
    Dot,
    Mermaid,
}

impl Format {
    /// `svg`, `dot` or `mermaid`.
    pub fn parse(name: &str) -> Option<Format> {
        match name {
            "svg" => Some(Format::Svg),
            "dot" => Some(Format::Dot),
            "mermaid" => Some(Format::Mermaid),
            _ => None,
        }
    }

    /// The media type a picture in this format is served as.
    pub fn media_type(self) -> &'static str {
        match self {
            Format::Svg => "image/svg+xml",
            Format::Dot => "text/vnd.graphviz; charset=utf-8",
            Format::Mermaid => "text/plain; charset=utf-8",
        }
    }
}

/// `graph` drawn in `format`, coloured by `runs` when given.
pub fn draw(
    graph: &CompiledGraph,
    format: Format,
    runs: Option<&HashMap<String, NodeRun>>,
) -> String {
    match format {
        Format::Svg => svg(graph, runs),
        Format::Dot => dot(graph, runs),
        Format::Mermaid => mermaid(graph, runs),
    }
}

/// The graph a run pinned when it was created (its first journal event), compiled.
pub fn pinned_graph(
    journal: &crate::journal::Journal,
    records: &[crate::journal::Record],
) -> Result<CompiledGraph, String> {
    let Some(crate::journal::Event::RunCreated { graph, .. }) = records.first().map(|r| &r.event)
    else {
        return Err("the run has no RunCreated event: is it in this journal?".into());
    };
    let bytes = journal.payload(graph).map_err(|e| e.to_string())?;
    let spec: super::spec::Graph = serde_json::from_slice(&bytes)
        .map_err(|e| format!("the run's pinned graph does not parse: {e}"))?;
    Ok(CompiledGraph::compile(spec))
}
