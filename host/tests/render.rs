//! Graphs as pictures from the command line: `sandgraph graph render FILE --format
//! svg|dot|mermaid` for every shipped graph, strings from a graph escaped in each format, a
//! graph of 500 nodes laid out in layers, and `sandgraph runs show RUN --format svg` colouring
//! each node by what it did in the run.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn sandgraph(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sandgraph"))
        .args(args)
        .current_dir(repo())
        .env_remove("RUST_LOG")
        .output()
        .expect("run sandgraph")
}

fn ok(o: Output) -> String {
    assert!(
        o.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap()
}

fn render(file: &Path, format: &str) -> String {
    ok(sandgraph(&[
        "graph",
        "render",
        file.to_str().unwrap(),
        "--format",
        format,
    ]))
}

#[test]
fn every_shipped_graph_renders_in_each_format_with_every_node_and_edge() {
    for name in [
        "plan-execute-review",
        "conditional-loop",
        "fan-out-fan-in",
        "retry-timeout",
        "workspace-notes",
    ] {
        let file = repo().join(format!("graphs/{name}.yaml"));
        let text = std::fs::read_to_string(&file).unwrap();
        let spec: serde_json::Value = serde_norway::from_str(&text).unwrap();
        let nodes: Vec<&str> = spec["spec"]["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["id"].as_str().unwrap())
            .collect();
        let edges = spec["spec"]["edges"].as_array().map_or(0, Vec::len);
        let svg = render(&file, "svg");
        assert!(
            svg.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""),
            "{svg}"
        );
        assert!(svg.trim_end().ends_with("</svg>"), "{name}");
        assert_eq!(
            svg.matches("<g class=\"node").count(),
            nodes.len(),
            "{name}: {svg}"
        );
        assert_eq!(svg.matches("class=\"edge").count(), edges, "{name}: {svg}");
        for n in &nodes {
            assert!(svg.contains(&format!("data-node=\"{n}\"")), "{name}: {n}");
        }
        let dot = render(&file, "dot");
        assert!(dot.starts_with(&format!("digraph \"{name}\" {{")), "{dot}");
        assert_eq!(dot.matches(" -> ").count(), edges, "{name}: {dot}");
        let mermaid = render(&file, "mermaid");
        assert!(mermaid.starts_with("flowchart TD\n"), "{mermaid}");
        assert_eq!(
            mermaid
                .lines()
                .filter(|l| l.contains(" -->") || l.contains(" -.->"))
                .count(),
            edges,
            "{name}: {mermaid}"
        );
    }
    // The loop closing on `double` is drawn against the flow, dashed, with its condition.
    let svg = render(&repo().join("graphs/conditional-loop.yaml"), "svg");
    assert!(svg.contains("class=\"edge back\""), "{svg}");
    assert!(svg.contains("nodes.double.value &lt; input.limit"), "{svg}");
    let dot = render(&repo().join("graphs/conditional-loop.yaml"), "dot");
    assert!(
        dot.contains("\"double\" -> \"double\" [label=\"nodes.double.value < input.limit\", style=dashed, constraint=false]"),
        "{dot}"
    );
}

#[test]
fn strings_from_the_graph_are_escaped_in_every_format() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("g.yaml");
    std::fs::write(
        &file,
        r#"
apiVersion: sandgraph.dev/v1
kind: Graph
metadata: { name: escapes }
spec:
  nodes:
    - { id: a, kind: tool, component: calc, input: { expr: "'1'" } }
    - { id: b, kind: tool, component: calc, input: { expr: "'2'" } }
  edges:
    - { from: a, to: b, when: "'<script>alert(\"x\")</script>' != string(nodes.a.value)" }
"#,
    )
    .unwrap();
    let svg = render(&file, "svg");
    assert!(!svg.contains("<script"), "{svg}");
    assert!(svg.contains("&lt;script&gt;"), "{svg}");
    let dot = render(&file, "dot");
    assert!(dot.contains(r#"alert(\"x\")"#), "{dot}");
    let mermaid = render(&file, "mermaid");
    assert!(!mermaid.contains("<script"), "{mermaid}");
    assert!(mermaid.contains("#lt;script#gt;"), "{mermaid}");
}

#[test]
fn a_graph_of_500_nodes_is_laid_out_in_layers() {
    // An entry fanning out to 83 chains of 6 nodes that join at the end: 500 nodes.
    let mut nodes = String::from(
        "    - { id: start, kind: tool, component: calc, input: { expr: \"'1'\" } }\n",
    );
    let mut edges = String::new();
    for c in 0..83 {
        for i in 0..6 {
            nodes.push_str(&format!(
                "    - {{ id: c{c}n{i}, kind: tool, component: calc, input: {{ expr: \"'1'\" }} }}\n"
            ));
            let from = if i == 0 {
                "start".to_owned()
            } else {
                format!("c{c}n{}", i - 1)
            };
            edges.push_str(&format!("    - {{ from: {from}, to: c{c}n{i} }}\n"));
        }
        edges.push_str(&format!("    - {{ from: c{c}n5, to: end }}\n"));
    }
    nodes.push_str("    - { id: end, kind: tool, component: calc, input: { expr: \"'1'\" } }\n");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("big.yaml");
    std::fs::write(
        &file,
        format!(
            "apiVersion: sandgraph.dev/v1\nkind: Graph\nmetadata: {{ name: big }}\nspec:\n  limits: {{ maxSteps: 1000 }}\n  nodes:\n{nodes}  edges:\n{edges}"
        ),
    )
    .unwrap();
    let svg = render(&file, "svg");
    assert_eq!(svg.matches("<g class=\"node").count(), 500);
    // 8 layers (start, 6 chain links, end) of at most 83 boxes: the picture's height is that of
    // 8 layers, not 500.
    let height: f64 = svg
        .split("height=\"")
        .nth(1)
        .and_then(|h| h.split('"').next())
        .and_then(|h| h.parse().ok())
        .unwrap();
    assert!(height < 8.0 * 112.0 + 100.0, "height {height}");
}

#[test]
fn runs_show_draws_the_pinned_graph_coloured_by_each_nodes_state() {
    let journal = tempfile::tempdir().unwrap();
    let journal = journal.path().join("journal");
    let components = Path::new(sandgraph_test_artifacts::TOOLS[0].1)
        .parent()
        .unwrap()
        .to_path_buf();
    let out = Command::new(env!("CARGO_BIN_EXE_sandgraph"))
        .args(["run", "graphs/conditional-loop.yaml", "--input"])
        .arg(r#"{"start": 3, "limit": 20}"#)
        .arg("--components")
        .arg(&components)
        .arg("--journal")
        .arg(&journal)
        .arg("--cache-dir")
        .arg(common::cache_dir())
        .current_dir(repo())
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    ok(out);
    let list = ok(sandgraph(&[
        "runs",
        "list",
        "--journal",
        journal.to_str().unwrap(),
    ]));
    // The header line, then one line per run.
    let run = list
        .lines()
        .nth(1)
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("no run listed: {list}"))
        .to_owned();
    let svg = ok(sandgraph(&[
        "runs",
        "show",
        &run,
        "--format",
        "svg",
        "--journal",
        journal.to_str().unwrap(),
    ]));
    for node in ["seed", "double", "report"] {
        assert!(
            svg.contains(&format!("data-node=\"{node}\" data-state=\"succeeded\"")),
            "{node}: {svg}"
        );
    }
    // 3 → 6 → 12 → 24: `double` ran three times.
    assert!(svg.contains(">×3</text>"), "{svg}");
    // A run that is not there is named.
    let o = sandgraph(&[
        "runs",
        "show",
        "00000000000000000000000000000000",
        "--format",
        "svg",
        "--journal",
        journal.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("00000000000000000000000000000000"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}
