#!/usr/bin/env bash
# The main job, end to end (for now: single tool calls through the sandbox).
# Installs what is missing, builds the guest components, then calls two tools.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo guests
wasm=target/wasm32-wasip2/release
run() { cargo run -q -p sandgraph -- tool call "$@"; }

echo "== calc: 2 * (3 + 4) ^ 2"
run "$wasm/tool_calc.wasm" --manifest tools/calc/calc.sandgraph.yaml \
    --input '{"expr":"2 * (3 + 4) ^ 2"}'

if [ -f "$wasm/tool_text_stats.wasm" ]; then
    echo "== text-stats"
    run "$wasm/tool_text_stats.wasm" --manifest tools/text-stats/text-stats.sandgraph.yaml \
        --input '{"text":"Sandboxes keep tools honest. Every call is isolated."}'
fi

echo "== calc with a bad expression (typed error on stderr, non-zero exit)"
if run "$wasm/tool_calc.wasm" --manifest tools/calc/calc.sandgraph.yaml --input '{"expr":"1 + * 2"}'; then
    echo "expected a failure" >&2
    exit 1
fi
