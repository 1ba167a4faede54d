#!/usr/bin/env bash
# The main job: graphs/plan-execute-review.yaml, a planner agent, an executor agent and a
# reviewer agent (each an isolated WebAssembly component) working a goal that needs three tools
# (calc, http-get on a page served on 127.0.0.1, text-stats), first on the embedded
# SmolLM2-135M-Instruct (greedy, CPU, in-process, no server), then the same graph through the
# `openai` provider against a `sandgraph-infer serve` started here. Every step and every model
# and tool call is journaled (sled, in a throwaway folder); the finished run is inspected and
# replayed offline, with no model and no network. Installs what is missing first.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo guests
cargo build -q -p sandgraph -p sandgraph-inference --bin sandgraph --bin sandgraph-infer
# Wherever cargo puts its output (CARGO_TARGET_DIR or the workspace's target/).
target=$(cargo metadata --format-version 1 --no-deps |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
sandgraph=$target/debug/sandgraph
infer=$target/debug/sandgraph-infer
work=$(mktemp -d)
trap 'kill ${page:-} ${engine:-} 2>/dev/null || true; rm -rf "$work"' EXIT
export SANDGRAPH_JOURNAL="$work/journal"
# Mesa's Vulkan loader complains on stderr when a headless shell has no runtime dir.
if [ -z "${XDG_RUNTIME_DIR:-}" ]; then
    export XDG_RUNTIME_DIR="$work/xdg"
    mkdir -m 700 "$XDG_RUNTIME_DIR"
fi
wait_port() {
    for _ in $(seq 100); do
        python3 -c 'import socket, sys; socket.create_connection(("127.0.0.1", int(sys.argv[1])), 0.2)' "$1" \
            2>/dev/null && return 0
        sleep 0.1
    done
    echo "nothing listens on 127.0.0.1:$1" >&2
    return 1
}

# The page the goal is about. The http-get manifest allows http://127.0.0.1:8000; the operator
# (--allow-private below) allows that one private address.
mkdir -p "$work/site"
printf '%s\n' "Sandboxes keep tools honest." "Every call is isolated and journaled." >"$work/site/page.txt"
python3 -m http.server 8000 --bind 127.0.0.1 --directory "$work/site" >/dev/null 2>&1 &
page=$!
wait_port 8000

input='{"goal": "Compute 17*23 and count the words of the page", "url": "http://127.0.0.1:8000/page.txt"}'
cat >"$work/embedded.yaml" <<YAML
models:
  default: { provider: embedded, path: $PWD/models/SmolLM2-135M-Instruct.Q4_1.gguf, backend: cpu }
YAML

echo "== main job: plan -> execute -> review on the embedded SmolLM2-135M (greedy, CPU, no server)"
$sandgraph run graphs/plan-execute-review.yaml --models "$work/embedded.yaml" \
    --allow-private 127.0.0.1 --input "$input"
echo

run=$($sandgraph runs list | awk 'NR > 1 && $3 == "plan-execute-review" { print $1 }' | tail -1)
echo "== the journal: the steps of run $run (model and tool calls are boundary crossings)"
$sandgraph runs show "$run"

echo "== offline replay of $run: recorded model answers and tool results are served back"
kill "$page"
page=
$sandgraph replay "$run"

echo "== the same graph through the openai provider, against sandgraph-infer serve on 127.0.0.1"
python3 -m http.server 8000 --bind 127.0.0.1 --directory "$work/site" >/dev/null 2>&1 &
page=$!
wait_port 8000
$infer serve --backend cpu --listen 127.0.0.1:0 --slots 2 --context 2048 \
    --model models/SmolLM2-135M-Instruct.Q4_1.gguf >"$work/engine.out" 2>"$work/engine.err" &
engine=$!
for _ in $(seq 300); do
    grep -q '^listening on ' "$work/engine.out" 2>/dev/null && break
    sleep 0.1
done
endpoint=$(sed -n 's/^listening on //p' "$work/engine.out" | head -1)
[ -n "$endpoint" ] || { cat "$work/engine.err" >&2; exit 1; }
cat >"$work/openai.yaml" <<YAML
models:
  default: { provider: openai, endpoint: "$endpoint/v1", model: smollm2, timeout: { connect: 2s, read: 120s } }
YAML
$sandgraph run graphs/plan-execute-review.yaml --models "$work/openai.yaml" \
    --allow-private 127.0.0.1 --input "$input"
echo
