//! A graph document from an untrusted author, as `POST /v1/graphs` and `sandgraph graph
//! validate` take it: any bytes are a located error (not UTF-8, not YAML, not a graph) or a
//! compiled graph; and a compiled graph's canonical JSON, the form a run pins in the journal,
//! reads back to the same graph with the same digest (what resume and replay rely on).
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use sandgraph::graph::compile::{CompiledGraph, digest_of};
use sandgraph::graph::spec::Graph;
use sandgraph::graph::{validate, yaml};
use sandgraph::sandbox::manifest::Manifest;

/// The example tools' manifests: the components graphs in graphs/ and the fixtures name.
static COMPONENTS: LazyLock<Vec<Manifest>> = LazyLock::new(|| {
    [
        ("calc", include_str!("../../tools/calc/calc.sandgraph.yaml")),
        (
            "http-get",
            include_str!("../../tools/http-get/http-get.sandgraph.yaml"),
        ),
        (
            "json-query",
            include_str!("../../tools/json-query/json-query.sandgraph.yaml"),
        ),
        (
            "text-stats",
            include_str!("../../tools/text-stats/text-stats.sandgraph.yaml"),
        ),
        (
            "workspace-fs",
            include_str!("../../tools/workspace-fs/workspace-fs.sandgraph.yaml"),
        ),
    ]
    .into_iter()
    .map(|(name, text)| Manifest::parse(name, text).expect("example manifests parse"))
    .collect()
});

fuzz_target!(|data: &[u8]| {
    let Ok(source) = yaml::utf8(data.to_vec()) else {
        return;
    };
    let Ok(compiled) = validate::validate_compiled("fuzz.yaml", &source, &COMPONENTS) else {
        return;
    };
    let pinned = serde_json::to_vec(&compiled.spec).expect("a valid graph serialises");
    let back: Graph = serde_json::from_slice(&pinned).unwrap_or_else(|e| {
        panic!(
            "the pinned JSON of a valid graph does not read back: {e}\n{}",
            String::from_utf8_lossy(&pinned)
        )
    });
    assert_eq!(
        back, compiled.spec,
        "the pinned JSON reads back to another graph"
    );
    assert_eq!(
        digest_of(&back),
        compiled.digest,
        "the digest changed on the round trip"
    );
    let again = CompiledGraph::compile(back);
    assert_eq!(again.entries, compiled.entries);
    assert_eq!(again.graph.edge_count(), compiled.graph.edge_count());
});
