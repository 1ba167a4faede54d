//! Graph YAML validation, Spin style: every invalid graph is a file under
//! `fixtures/graphs/<case>.yaml` with `<case>.expected` beside it, one line per diagnostic
//! (`line:col: text the message contains`), all reported at once and in source order.

use std::path::{Path, PathBuf};

use sandgraph::graph::{self, CompiledGraph, spec::Graph, validate, yaml};
use sandgraph::sandbox::manifest::Manifest;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn components() -> Vec<Manifest> {
    let manifests = graph::components(&[root().join("tools"), root().join("agents")])
        .expect("tool and agent manifests load");
    assert!(
        manifests.iter().any(|m| m.metadata.name == "calc"),
        "{manifests:?}"
    );
    manifests
}

fn fixtures() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/graphs");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("fixtures folder")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

#[test]
fn every_invalid_graph_reports_its_expected_messages_and_locations() {
    let components = components();
    let cases = fixtures();
    assert!(cases.len() >= 20, "only {} invalid graphs", cases.len());
    let mut failures = Vec::new();
    for case in &cases {
        let name = case.file_name().unwrap().to_string_lossy().to_string();
        let bytes = std::fs::read(case).unwrap();
        let expected_path = case.with_extension("expected");
        let expected = std::fs::read_to_string(&expected_path)
            .unwrap_or_else(|_| panic!("{} has no .expected file", name));
        let expected: Vec<&str> = expected.lines().filter(|l| !l.trim().is_empty()).collect();
        // Bytes that are not UTF-8 are refused before validation, as `graph::load` does.
        let result = match yaml::utf8(bytes) {
            Ok(source) => validate::validate(&name, &source, &components),
            Err(e) => Err(graph::Diagnostics(vec![graph::Diagnostic {
                file: name.clone(),
                pos: e.pos,
                message: e.message,
            }])),
        };
        let got = match result {
            Ok(_) => {
                failures.push(format!(
                    "{name}: accepted, expected {} errors",
                    expected.len()
                ));
                continue;
            }
            Err(d) => d.0,
        };
        let rendered: Vec<String> = got.iter().map(|d| d.to_string()).collect();
        if got.len() != expected.len() {
            failures.push(format!(
                "{name}: {} diagnostics, expected {}:\n  {}",
                got.len(),
                expected.len(),
                rendered.join("\n  ")
            ));
            continue;
        }
        for (d, want) in got.iter().zip(&expected) {
            let (loc, text) = want
                .split_once(": ")
                .expect("expected line is `line:col: text`");
            if d.pos.to_string() != loc || !d.message.contains(text) || d.file != name {
                failures.push(format!("{name}: got `{d}`, expected `{name}:{want}`"));
            }
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

#[test]
fn billion_laughs_is_refused_at_its_first_anchor() {
    let source = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/graphs/billion_laughs.yaml"),
    )
    .unwrap();
    let err = yaml::parse(&source).unwrap_err();
    assert_eq!((err.pos.line, err.pos.col), (4, 12));
    assert!(
        err.message.contains("anchors are not allowed"),
        "{}",
        err.message
    );
}

#[test]
fn huge_document_is_refused_before_parsing() {
    let mut source = String::from("apiVersion: sandgraph.dev/v1\nkind: Graph\n# ");
    source.push_str(&"x".repeat(yaml::MAX_DOCUMENT_BYTES));
    let err = validate::validate("big.yaml", &source, &components()).unwrap_err();
    assert_eq!(err.0.len(), 1);
    assert!(err.0[0].message.contains("byte limit"), "{}", err.0[0]);

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.yaml");
    std::fs::write(&path, &source).unwrap();
    let err = graph::load(&path, &components()).unwrap_err();
    assert!(err.0[0].message.contains("byte limit"), "{}", err.0[0]);
}

#[test]
fn nesting_far_past_the_limit_is_refused_without_recursion() {
    let depth = 100_000;
    let source = format!("a: {}{}", "[".repeat(depth), "]".repeat(depth));
    let err = yaml::parse(&source).unwrap_err();
    assert!(
        err.message.contains("nesting deeper than 64"),
        "{}",
        err.message
    );
}

fn example_paths() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(root().join("graphs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    v.sort();
    v
}

fn load_example(name: &str) -> CompiledGraph {
    graph::load(&root().join("graphs").join(name), &components())
        .unwrap_or_else(|d| panic!("{name} is invalid:\n{d}"))
}

#[test]
fn every_example_graph_validates() {
    let examples = example_paths();
    assert!(examples.len() >= 3, "{examples:?}");
    for path in examples {
        graph::load(&path, &components()).unwrap_or_else(|d| panic!("{}:\n{d}", path.display()));
    }
}

#[test]
fn fan_out_fan_in_compiles_to_one_entry_and_one_join() {
    let g = load_example("fan-out-fan-in.yaml");
    let entry: Vec<&str> = g
        .entries
        .iter()
        .map(|&i| g.graph[i].spec.id.as_str())
        .collect();
    assert_eq!(entry, ["fetch"]);
    assert_eq!(g.joins.len(), 1);
    let (join, waits) = g.joins.iter().next().unwrap();
    assert_eq!(g.graph[*join].spec.id, "total");
    assert_eq!(waits.len(), 2);
    let fetch = &g.graph[g.by_id["fetch"]];
    assert_eq!(fetch.retry.max_attempts, 3);
    assert_eq!(fetch.retry.initial_backoff.as_millis(), 500);
    assert_eq!(fetch.timeout.map(|t| t.as_secs()), Some(10));
    assert_eq!(fetch.input.len(), 1);
    assert_eq!(g.deadline.map(|d| d.as_secs()), Some(120));
}

#[test]
fn conditional_loop_marks_its_back_edge_and_bound() {
    let g = load_example("conditional-loop.yaml");
    let double = g.by_id["double"];
    assert_eq!(g.graph[double].max_iterations, Some(10));
    let back: Vec<_> = g
        .graph
        .edge_indices()
        .filter(|&e| g.graph[e].back_edge)
        .collect();
    assert_eq!(back.len(), 1);
    assert_eq!(g.graph.edge_endpoints(back[0]), Some((double, double)));
    assert!(g.graph[back[0]].when.is_some());
    assert!(g.joins.is_empty(), "a loop's back edge is not waited for");
}

#[test]
fn retry_defaults_apply_when_a_node_sets_none() {
    let source = "apiVersion: sandgraph.dev/v1\nkind: Graph\nmetadata: { name: d }\nspec:\n  nodes:\n    - { id: a, kind: tool, component: calc }\n";
    let g = CompiledGraph::compile(validate::validate("d.yaml", source, &components()).unwrap());
    let r = g.graph[g.by_id["a"]].retry;
    assert_eq!(
        (r.max_attempts, r.initial_backoff.as_millis(), r.multiplier),
        (3, 500, 2.0)
    );
}

#[test]
fn digest_ignores_formatting_but_not_content() {
    let a = "apiVersion: sandgraph.dev/v1\nkind: Graph\nmetadata: { name: d }\nspec:\n  nodes:\n    - { id: a, kind: tool, component: calc, input: { expr: \"'1+1'\" } }\n";
    let b = "# same graph, other layout\nkind: Graph\napiVersion: sandgraph.dev/v1\nmetadata:\n  name: d\nspec:\n  nodes:\n    - component: calc\n      input:\n        expr: \"'1+1'\"\n      kind: tool\n      id: a\n";
    let c = a.replace("1+1", "1+2");
    let digest = |s: &str| {
        CompiledGraph::compile(validate::validate("x.yaml", s, &components()).unwrap()).digest
    };
    assert_eq!(digest(a), digest(b));
    assert_ne!(digest(a), digest(&c));
}

#[test]
fn committed_json_schema_matches_the_spec_types() {
    let generated = serde_json::to_string_pretty(&schemars::schema_for!(Graph)).unwrap() + "\n";
    let path = root().join("graphs/schema/graph-v1.schema.json");
    if std::env::var_os("SANDGRAPH_BLESS").is_some() {
        std::fs::write(&path, &generated).unwrap();
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "graphs/schema/graph-v1.schema.json is stale; regenerate with SANDGRAPH_BLESS=1 cargo nextest run -p sandgraph --test graph_validation"
    );
}

#[test]
fn cli_graph_validate_prints_every_error_and_fails_or_prints_the_digest() {
    let bin = env!("CARGO_BIN_EXE_sandgraph");
    let tools = root().join("tools");
    let ok = std::process::Command::new(bin)
        .args(["graph", "validate", "--tools"])
        .arg(&tools)
        .arg(root().join("graphs/fan-out-fan-in.yaml"))
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let stdout = String::from_utf8(ok.stdout).unwrap();
    let digest = load_example("fan-out-fan-in.yaml").digest_hex();
    assert!(
        stdout.contains("graph 'fan-out-fan-in' is valid: 4 nodes, 4 edges"),
        "{stdout}"
    );
    assert!(stdout.contains(&format!("sha256:{digest}")), "{stdout}");

    let fixture = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/graphs/many_errors_at_once.yaml");
    let bad = std::process::Command::new(bin)
        .args(["graph", "validate", "--tools"])
        .arg(&tools)
        .arg(&fixture)
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(1));
    let stderr = String::from_utf8(bad.stderr).unwrap();
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 5, "{stderr}");
    let prefix = format!(
        "{}:7:43: node 'fetch' uses unknown component",
        fixture.display()
    );
    assert!(lines[0].starts_with(&prefix), "{stderr}");
    assert!(
        lines[4].contains(":12:26: edge 'parse -> store' points to unknown node 'store'"),
        "{stderr}"
    );
}

fn schema_validator() -> jsonschema::Validator {
    let text = std::fs::read_to_string(root().join("graphs/schema/graph-v1.schema.json")).unwrap();
    jsonschema::validator_for(&serde_json::from_str(&text).unwrap()).unwrap()
}

fn as_json(source: &str) -> serde_json::Value {
    yaml::from_yaml(&yaml::parse(source).unwrap().0).unwrap()
}

#[test]
fn every_example_graph_matches_the_json_schema() {
    let validator = schema_validator();
    for path in example_paths() {
        let doc = as_json(&std::fs::read_to_string(&path).unwrap());
        let errors: Vec<String> = validator.iter_errors(&doc).map(|e| e.to_string()).collect();
        assert!(errors.is_empty(), "{}: {errors:?}", path.display());
    }
}

#[test]
fn json_schema_rejects_what_the_spec_types_reject() {
    let validator = schema_validator();
    for case in [
        "unknown_fields_everywhere.yaml",
        "bad_node_kind.yaml",
        "missing_component.yaml",
    ] {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/graphs")
            .join(case);
        let doc = as_json(&std::fs::read_to_string(&path).unwrap());
        assert!(!validator.is_valid(&doc), "{case} passes the schema");
    }
}

#[test]
fn diagnostics_are_capped_with_a_count_of_the_rest() {
    let mut source = String::from(
        "apiVersion: sandgraph.dev/v1\nkind: Graph\nmetadata: { name: many }\nspec:\n  nodes:\n",
    );
    for i in 0..300 {
        source.push_str(&format!(
            "    - {{ id: n{i}, kind: tool, component: nope }}\n"
        ));
    }
    let d = validate::validate("many.yaml", &source, &components()).unwrap_err();
    assert_eq!(d.0.len(), validate::MAX_DIAGNOSTICS + 1);
    assert!(
        d.0[99]
            .message
            .contains("node 'n99' uses unknown component 'nope'")
    );
    let last = &d.0[100];
    assert_eq!(last.pos.to_string(), "106:42", "{last}");
    assert!(
        last.message
            .starts_with("200 more problems from here on are not listed"),
        "{last}"
    );
}

#[test]
fn a_duplicate_key_in_a_huge_mapping_is_found_where_it_is() {
    let mut source = String::from(
        "apiVersion: sandgraph.dev/v1\nkind: Graph\nmetadata: { name: wide }\nspec:\n  nodes:\n    - id: a\n      kind: tool\n      component: calc\n      input:\n",
    );
    for i in 0..50_000 {
        source.push_str(&format!("        f{i}: \"'1'\"\n"));
    }
    source.push_str("        f7: \"'2'\"\n");
    let d = validate::validate("wide.yaml", &source, &components()).unwrap_err();
    assert_eq!(
        d.0[0].to_string(),
        "wide.yaml:50010:9: duplicate key 'f7' (first at 17:9); remove one"
    );
}

/// Graphs that must stay valid as the checks grow (`fixtures/valid_graphs/`): well-typed
/// expressions of every kind the type checker judges, a self-loop entry node.
#[test]
fn every_valid_fixture_validates() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/valid_graphs");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("valid fixtures folder")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 2, "{files:?}");
    for path in files {
        graph::load(&path, &components()).unwrap_or_else(|d| panic!("{}:\n{d}", path.display()));
    }
}

#[test]
fn a_node_whose_only_inbound_edge_is_its_bounded_self_loop_is_the_entry() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/valid_graphs/self_loop_entry.yaml");
    let g = graph::load(&path, &components()).unwrap_or_else(|d| panic!("{d}"));
    let entries: Vec<&str> = g
        .entries
        .iter()
        .map(|&i| g.graph[i].spec.id.as_str())
        .collect();
    assert_eq!(entries, ["count"]);
    assert!(g.joins.is_empty());
    // Two nodes that only feed each other still have no entry.
    let source = std::fs::read_to_string(&path).unwrap().replace(
        "  edges:\n",
        "    - { id: other, kind: tool, component: calc }\n  edges:\n    - { from: other, to: count }\n    - { from: count, to: other }\n",
    );
    let d = validate::validate("two.yaml", &source, &components()).unwrap_err();
    assert!(d.to_string().contains("graph has no entry node"), "{d}");
}

/// Where a component's output schema is known, `nodes.<id>` is typed by it: a field it does
/// not allow, or an operation its types cannot do, is an error at its line:col.
#[test]
fn node_outputs_are_typed_by_known_output_schemas() {
    let source = r#"apiVersion: sandgraph.dev/v1
kind: Graph
metadata: { name: typed }
spec:
  nodes:
    - { id: a, kind: tool, component: calc, input: { expr: "'1 + 1'" } }
    - { id: b, kind: tool, component: calc, input: { expr: "nodes.a.valeu + ' * 2'" } }
    - { id: c, kind: tool, component: calc, input: { expr: "string(nodes.a.value * 2.0)" } }
  edges:
    - { from: a, to: b, when: "nodes.a.value > 'x'" }
    - { from: a, to: c }
"#;
    let outputs = [(
        "calc".to_string(),
        serde_json::json!({
            "type": "object",
            "additionalProperties": false,
            "properties": {"value": {"type": "number"}}
        }),
    )]
    .into();
    let d = validate::validate_compiled_with_outputs("typed.yaml", source, &components(), &outputs)
        .unwrap_err();
    let got: Vec<String> =
        d.0.iter()
            .map(|d| format!("{}: {}", d.pos, d.message))
            .collect();
    assert_eq!(got.len(), 2, "{got:#?}");
    assert!(got[0].starts_with("7:68: node 'b' input 'expr': expression `nodes.a.valeu + ' * 2'` reads field 'valeu', which node 'a''s output schema does not allow"), "{got:#?}");
    assert!(got[1].starts_with("10:46: edge 'a -> b' when: expression `nodes.a.value > 'x'` orders a number against a string"), "{got:#?}");
    // Without the schemas the same graph is valid: outputs are of unknown type.
    validate::validate_compiled("typed.yaml", source, &components()).unwrap();
}

/// `graph validate` with the built components at hand asks each one for its declared output
/// schema, so a read of a node's output is type-checked: calc declares `value` a number, and
/// adding a string to it is a located error. Without the components the same graph is valid
/// with a note saying those reads went unchecked.
#[test]
fn cli_graph_validate_type_checks_node_outputs_against_declared_schemas() {
    let bin = env!("CARGO_BIN_EXE_sandgraph");
    let (_, calc) = sandgraph_test_artifacts::TOOLS
        .iter()
        .find(|(name, _)| *name == "calc")
        .expect("calc is built");
    let wasm_dir = Path::new(calc).parent().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let graph = dir.path().join("typed.yaml");
    std::fs::write(
        &graph,
        "apiVersion: sandgraph.dev/v1\nkind: Graph\nmetadata:\n  name: typed\nspec:\n  nodes:\n    - id: a\n      kind: tool\n      component: calc\n      input: { expr: \"'1 + 2'\" }\n    - id: b\n      kind: tool\n      component: calc\n      input: { expr: \"nodes.a.value + ' * 2'\" }\n  edges:\n    - { from: a, to: b }\n",
    )
    .unwrap();
    let validate = |components: &Path| {
        std::process::Command::new(bin)
            .args(["graph", "validate", "--tools"])
            .arg(root().join("tools"))
            .arg("--tools")
            .arg(root().join("agents"))
            .arg("--components")
            .arg(components)
            .arg("--cache-dir")
            .arg(dir.path().join("cache"))
            .arg(&graph)
            .output()
            .unwrap()
    };

    let typed = validate(wasm_dir);
    let stderr = String::from_utf8_lossy(&typed.stderr);
    assert_eq!(typed.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(
            "typed.yaml:14:37: node 'b' input 'expr': expression `nodes.a.value + ' * 2'` adds a number and a string with `+`, which always fails"
        ),
        "{stderr}"
    );

    let untyped = validate(&dir.path().join("not-built"));
    let stdout = String::from_utf8_lossy(&untyped.stdout);
    assert!(untyped.status.success(), "{stdout}");
    assert!(
        stdout.contains("graph 'typed' is valid")
            && stdout.contains(
                "note: reads of node outputs were not type-checked: component 'calc' is not built"
            ),
        "{stdout}"
    );
}
