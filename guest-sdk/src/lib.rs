//! Guest SDK for Sandgraph tools.
