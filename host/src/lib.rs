//! Sandgraph host: runs tools and agent steps as sandboxed WebAssembly components.

pub mod api;
pub mod cli;
pub mod graph;
pub mod journal;
pub mod mcp;
pub mod model;
pub mod sandbox;
pub mod tls_roots;
