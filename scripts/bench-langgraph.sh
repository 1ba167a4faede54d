#!/usr/bin/env bash
# Sandgraph and LangGraph side by side on the main job (host/benches/langgraph_compare.rs).
# LangGraph is benchmark-only: it goes into a throwaway venv under target/, never into the
# test suite's tools.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
venv=target/langgraph-venv
if ! "$venv/bin/python" -c 'import importlib.metadata as m; assert m.version("langgraph") == "0.6.7" and m.version("openai") == "1.109.1"' 2>/dev/null; then
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet 'langgraph==0.6.7' 'openai==1.109.1'
fi
cargo build -p sandgraph-inference --bin sandgraph-infer
SANDGRAPH_LANGGRAPH_PYTHON="$PWD/$venv/bin/python" \
SANDGRAPH_INFER_BIN="$PWD/target/debug/sandgraph-infer" \
    cargo bench -p sandgraph --bench langgraph_compare "$@"
