//! Graph validation cost by size and shape: chains, fan-in to one join, and chains of
//! exclusive `c` / `!c` diamonds whose joins are all errors (the shape that was cubic), also
//! followed by a self-loop (a graph with a loop, which was quadratic). Prints a
//! table of the median wall time of `validate_compiled` (validate + compile, what `graph
//! validate` and `POST /v1/graphs` do) and the number of diagnostics returned (capped).
//!
//! `cargo bench -p sandgraph --bench graph_validate` (`-- 1000 5000` for other sizes).

use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use sandgraph::graph::{self, validate};

fn header(name: &str) -> String {
    format!("apiVersion: sandgraph.dev/v1\nkind: Graph\nmetadata: {{ name: {name} }}\nspec:\n")
}

fn node(out: &mut String, id: &str, expr: &str) {
    let _ = writeln!(
        out,
        "    - {{ id: {id}, kind: tool, component: calc, input: {{ expr: \"{expr}\" }} }}"
    );
}

/// n0 -> n1 -> ... ; each step reads the previous one's output.
fn chain(n: usize) -> String {
    let mut s = header("chain");
    s.push_str("  nodes:\n");
    node(&mut s, "n0", "'1 + 1'");
    for i in 1..n {
        node(
            &mut s,
            &format!("n{i}"),
            &format!("string(nodes.n{}.value) + ' + 1'", i - 1),
        );
    }
    s.push_str("  edges:\n");
    for i in 1..n {
        let _ = writeln!(s, "    - {{ from: n{}, to: n{i} }}", i - 1);
    }
    s
}

/// One entry, n - 2 parallel nodes, one join waiting for all of them.
fn fan_in(n: usize) -> String {
    let mut s = header("fan-in");
    s.push_str("  nodes:\n");
    node(&mut s, "start", "'1 + 1'");
    for i in 0..n - 2 {
        node(
            &mut s,
            &format!("m{i}"),
            &format!("string(nodes.start.value) + ' * {i}'"),
        );
    }
    node(&mut s, "join", "'0 + 0'");
    s.push_str("  edges:\n");
    for i in 0..n - 2 {
        let _ = writeln!(s, "    - {{ from: start, to: m{i} }}");
        let _ = writeln!(s, "    - {{ from: m{i}, to: join }}");
    }
    s
}

/// s0 -c-> a0, s0 -!c-> b0, a0 -> s1, b0 -> s1, ...: every s_k (k > 0) joins exclusive
/// branches, an error each.
fn exclusive_joins(n: usize) -> String {
    let mut s = header("exclusive");
    s.push_str("  nodes:\n");
    let diamonds = n / 3;
    for k in 0..=diamonds {
        node(&mut s, &format!("s{k}"), "'1 + 1'");
        if k < diamonds {
            node(&mut s, &format!("a{k}"), "'2 + 2'");
            node(&mut s, &format!("b{k}"), "'3 + 3'");
        }
    }
    s.push_str("  edges:\n");
    for k in 0..diamonds {
        let _ = writeln!(s, "    - {{ from: s{k}, to: a{k}, when: \"input.c\" }}");
        let _ = writeln!(s, "    - {{ from: s{k}, to: b{k}, when: \"!input.c\" }}");
        let _ = writeln!(s, "    - {{ from: a{k}, to: s{} }}", k + 1);
        let _ = writeln!(s, "    - {{ from: b{k}, to: s{} }}", k + 1);
    }
    s
}

/// The exclusive joins followed by a node with a bounded self-loop: the same errors, in a
/// graph that has a loop (which used to send every exclusive pair through a walk of the
/// whole graph).
fn exclusive_joins_and_loop(n: usize) -> String {
    let s = exclusive_joins(n - 1);
    let last = (n - 1) / 3;
    let (nodes, edges) = s.split_once("  edges:\n").expect("edges");
    let mut out = nodes.to_string();
    let _ = writeln!(
        out,
        "    - {{ id: tail, kind: tool, component: calc, maxIterations: 3, input: {{ expr: \"'1 + 1'\" }} }}"
    );
    out.push_str("  edges:\n");
    out.push_str(edges);
    let _ = writeln!(out, "    - {{ from: s{last}, to: tail }}");
    let _ = writeln!(
        out,
        "    - {{ from: tail, to: tail, when: \"nodes.tail.value < 3.0\" }}"
    );
    out
}

/// Builds a graph of that many nodes.
type Shape = fn(usize) -> String;

fn main() {
    let sizes: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let sizes = if sizes.is_empty() {
        vec![1_000, 5_000, 20_000]
    } else {
        sizes
    };
    let tools = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tools");
    let components = graph::components(std::slice::from_ref(&tools)).expect("tool manifests");
    let shapes: [(&str, Shape); 4] = [
        ("chain", chain),
        ("fan-in", fan_in),
        ("exclusive joins", exclusive_joins),
        ("excl. + loop", exclusive_joins_and_loop),
    ];
    println!(
        "{:<16} {:>7} {:>10} {:>12} {:>12}",
        "shape", "nodes", "bytes", "median", "diagnostics"
    );
    for (name, make) in shapes {
        for &n in &sizes {
            let source = make(n);
            let reps = if n >= 20_000 { 1 } else { 3 };
            let mut times: Vec<Duration> = Vec::new();
            let mut diagnostics = 0;
            for _ in 0..reps {
                let t = Instant::now();
                let result = validate::validate_compiled("bench.yaml", &source, &components);
                times.push(t.elapsed());
                diagnostics = result.err().map_or(0, |d| d.0.len());
            }
            times.sort();
            println!(
                "{:<16} {:>7} {:>10} {:>12} {:>12}",
                name,
                n,
                source.len(),
                format!("{:.3?}", times[times.len() / 2]),
                diagnostics
            );
        }
    }
}
