//! Graph pictures: layout and SVG of graphs of 50, 500 and 2,000 nodes (an entry fanning out to
//! chains of 6 that join at the end), next to validating and compiling the same graph from
//! YAML, in the same run. Run: `cargo bench -p sandgraph --bench render`.

use std::time::{Duration, Instant};

use sandgraph::graph::CompiledGraph;
use sandgraph::graph::render;
use sandgraph::graph::validate;
use sandgraph::sandbox::manifest::Manifest;

fn source(nodes: usize) -> String {
    let chains = (nodes - 2) / 6;
    let mut n = String::from(
        "    - { id: start, kind: tool, component: calc, input: { expr: \"'1'\" } }\n",
    );
    let mut e = String::new();
    for c in 0..chains {
        for i in 0..6 {
            n.push_str(&format!(
                "    - {{ id: c{c}n{i}, kind: tool, component: calc, input: {{ expr: \"'1'\" }} }}\n"
            ));
            let from = if i == 0 {
                "start".to_owned()
            } else {
                format!("c{c}n{}", i - 1)
            };
            e.push_str(&format!("    - {{ from: {from}, to: c{c}n{i} }}\n"));
        }
        e.push_str(&format!("    - {{ from: c{c}n5, to: end }}\n"));
    }
    n.push_str("    - { id: end, kind: tool, component: calc, input: { expr: \"'1'\" } }\n");
    format!(
        "apiVersion: sandgraph.dev/v1\nkind: Graph\nmetadata: {{ name: big }}\nspec:\n  limits: {{ maxSteps: 10000 }}\n  nodes:\n{n}  edges:\n{e}"
    )
}

/// The median of `runs` timings of `f`.
fn median(runs: usize, mut f: impl FnMut()) -> Duration {
    let mut t: Vec<Duration> = (0..runs)
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed()
        })
        .collect();
    t.sort();
    t[t.len() / 2]
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let calc = Manifest::parse(
        "calc",
        "apiVersion: sandgraph.dev/v1\nkind: ToolManifest\nmetadata: { name: calc }\nspec: {}\n",
    )
    .unwrap();
    println!(
        "{:<8} {:>14} {:>14} {:>14} {:>10}",
        "nodes", "validate+compile", "layout", "layout+SVG", "SVG KiB"
    );
    for nodes in [50, 500, 2000] {
        let text = source(nodes);
        let compile = || {
            let spec = validate::validate("big.yaml", &text, std::slice::from_ref(&calc)).unwrap();
            CompiledGraph::compile(spec)
        };
        let graph = compile();
        assert_eq!(graph.spec.spec.nodes.len(), nodes - (nodes - 2) % 6);
        let c = median(5, || {
            compile();
        });
        let l = median(5, || {
            render::layout(&graph);
        });
        let mut size = 0;
        let s = median(5, || {
            size = render::svg(&graph, None).len();
        });
        println!(
            "{:<8} {:>13.1}ms {:>13.1}ms {:>13.1}ms {:>10}",
            graph.spec.spec.nodes.len(),
            c.as_secs_f64() * 1e3,
            l.as_secs_f64() * 1e3,
            s.as_secs_f64() * 1e3,
            size / 1024
        );
    }
}
