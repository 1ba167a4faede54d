#!/usr/bin/env bash
# The main job, end to end on the embedded defaults: example graphs run by the host with every
# step an isolated component and every step journaled (sled, in a throwaway folder), a finished
# run inspected and replayed offline, and a model call on the embedded inference engine.
# Installs what is missing first (scripts/setup.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo guests
cargo build -q -p sandgraph
# Wherever cargo puts its output (CARGO_TARGET_DIR or the workspace's target/).
target=$(cargo metadata --format-version 1 --no-deps |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
sandgraph=$target/debug/sandgraph
components=$target/wasm32-wasip2/release
work=$(mktemp -d)
trap 'kill "${server:-}" 2>/dev/null || true; rm -rf "$work"' EXIT
export SANDGRAPH_JOURNAL="$work/journal"
# Mesa's Vulkan loader complains on stderr when a headless shell has no runtime dir.
if [ -z "${XDG_RUNTIME_DIR:-}" ]; then
    export XDG_RUNTIME_DIR="$work/xdg"
    mkdir -m 700 "$XDG_RUNTIME_DIR"
fi

echo "== graph conditional-loop: seed, double until past the limit (a bounded loop), report"
$sandgraph run graphs/conditional-loop.yaml --components "$components" --input '{"start": 3, "limit": 50}'

echo "== graph fan-out-fan-in: fetch a page from a local server, measure it two ways in parallel, join"
mkdir -p "$work/site"
printf '%s\n' "Sandboxes keep tools honest." "Every call is isolated and journaled." >"$work/site/index.txt"
python3 -m http.server 8000 --bind 127.0.0.1 --directory "$work/site" >/dev/null 2>&1 &
server=$!
for _ in $(seq 50); do
    python3 -c 'import socket; socket.create_connection(("127.0.0.1", 8000), 0.2)' 2>/dev/null && break
    sleep 0.1
done
# The http-get manifest allows http://127.0.0.1:8000; the operator allows that one private IP.
$sandgraph run graphs/fan-out-fan-in.yaml --components "$components" --allow-private 127.0.0.1 \
    --input '{"url": "http://127.0.0.1:8000/index.txt"}'
kill "$server"

run=$($sandgraph runs list | awk 'NR > 1 && $3 == "fan-out-fan-in" { print $1 }' | tail -1)
echo "== the journal: runs, and the steps of run $run"
$sandgraph runs list
$sandgraph runs show "$run"

echo "== offline replay of $run (the server is gone; recorded responses are served back)"
$sandgraph replay "$run"

echo "== graph workspace-notes: write a note into the workspace, read it back read-only, list it"
mkdir -p "$work/workspace"
echo "seeded before the run" >"$work/workspace/seed.txt"
$sandgraph run graphs/workspace-notes.yaml --components "$components" --workspace "$work/workspace" \
    --input '{"note": "buy milk"}'
run=$($sandgraph runs list | awk 'NR > 1 && $3 == "workspace-notes" { print $1 }' | tail -1)
rm -rf "$work/workspace"
echo "== offline replay of $run (its workspace is gone; each step gets its journaled snapshot)"
$sandgraph replay "$run"

echo "== a step that fails for good: calc on a bad expression (invalid input is never retried), so the run fails"
cat >"$work/bad.yaml" <<'YAML'
apiVersion: sandgraph.dev/v1
kind: Graph
metadata: { name: bad-expression }
spec:
  nodes:
    - id: calc
      kind: tool
      component: calc
      input: { expr: "'1 + * 2'" }
      retry: { maxAttempts: 2, initialBackoff: 100ms }
YAML
if $sandgraph run "$work/bad.yaml" --components "$components"; then
    echo "expected the run to fail" >&2
    exit 1
fi

echo "== model call on the embedded engine (SmolLM2-135M-Instruct, greedy)"
cargo run -q -p sandgraph-inference -- generate --chat \
    --system "You are a helpful assistant." --prompt "What is the capital of France?" \
    --temperature 0 --max-tokens 32
