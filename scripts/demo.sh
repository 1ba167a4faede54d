#!/usr/bin/env bash
# The main job, end to end on the embedded defaults. Until the graph engine lands this is
# what a graph step does: tool calls through the sandbox and a model call on the embedded
# inference engine. Installs what is missing first (scripts/setup.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo guests
wasm=target/wasm32-wasip2/release
call() { cargo run -q -p sandgraph -- tool call "$@"; }

echo "== tool calc: 2 * (3 + 4) ^ 2"
call "$wasm/tool_calc.wasm" --manifest tools/calc/calc.sandgraph.yaml \
    --input '{"expr":"2 * (3 + 4) ^ 2"}'

echo "== tool text-stats"
call "$wasm/tool_text_stats.wasm" --manifest tools/text-stats/text-stats.sandgraph.yaml \
    --input '{"text":"Sandboxes keep tools honest. Every call is isolated."}'

echo "== tool calc with a bad expression (typed error on stderr, non-zero exit)"
if call "$wasm/tool_calc.wasm" --manifest tools/calc/calc.sandgraph.yaml --input '{"expr":"1 + * 2"}'; then
    echo "expected a failure" >&2
    exit 1
fi

echo "== model call on the embedded engine (SmolLM2-135M-Instruct, greedy)"
cargo run -q -p sandgraph-inference -- generate --chat \
    --system "You are a helpful assistant." --prompt "What is the capital of France?" \
    --temperature 0 --max-tokens 32
