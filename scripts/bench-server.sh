#!/usr/bin/env bash
# Load benchmark of `sandgraph-infer serve` (release build) against llama.cpp's
# OpenAI-compatible server (llama-cpp-python[server], benchmark-only, in a throwaway venv) on
# the same GGUF and thread count, in one run: both servers stay up on 127.0.0.1 and
# inference/bench/server_load.py interleaves them round by round at every concurrency, then
# prints medians over rounds and our throughput as a ratio of llama.cpp's.
#
#   scripts/bench-server.sh [rounds]   env: THREADS (2), CONCURRENCY ("1 8 32"), MAX_TOKENS (64),
#                                           REQUESTS_PER_CLIENT (2), SLOTS (32),
#                                           LLAMA_VENV (/tmp/sandgraph-llama-venv)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/llama-venv.sh
rounds=${1:-3}
threads=${THREADS:-2}
concurrency=${CONCURRENCY:-1 8 32}
max_tokens=${MAX_TOKENS:-64}
per_client=${REQUESTS_PER_CLIENT:-2}
slots=${SLOTS:-32}
venv=${LLAMA_VENV:-/tmp/sandgraph-llama-venv}
model=${SANDGRAPH_MODEL:-models/SmolLM2-135M-Instruct.Q4_1.gguf}

[ -f "$model" ] || bash scripts/setup.sh
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target/inference}
cargo build -q --release -p sandgraph-inference --bin sandgraph-infer
ours="$CARGO_TARGET_DIR/release/sandgraph-infer"

ensure_llama_venv "$venv" 'llama-cpp-python[server]==0.3.36'

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

wait_ready() { # URL
    for _ in $(seq 600); do
        python3 -c "import urllib.request,sys; urllib.request.urlopen(sys.argv[1]+'/v1/models')" "$1" \
            2>/dev/null && return 0
        sleep 0.2
    done
    echo "server at $1 never became ready" >&2
    return 1
}

log=$(mktemp -d)
"$ours" serve --model "$model" --backend cpu --threads "$threads" --slots "$slots" \
    --context 512 --max-waiting 256 --listen 127.0.0.1:0 >"$log/ours.out" 2>"$log/ours.err" &
pids+=($!)
for _ in $(seq 100); do grep -q '^listening on ' "$log/ours.out" && break; sleep 0.1; done
ours_url=$(sed -n 's/^listening on //p' "$log/ours.out")
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$venv/bin/python" -m llama_cpp.server --model "$model" --n_threads "$threads" \
    --n_threads_batch "$threads" --n_ctx 2048 --interrupt_requests False \
    --host 127.0.0.1 --port "$port" \
    >"$log/llama.out" 2>&1 &
pids+=($!)
llama_url="http://127.0.0.1:$port"
wait_ready "$ours_url"
wait_ready "$llama_url"

echo "threads $threads, our slots $slots, max_tokens $max_tokens, $per_client requests per client" >&2
# shellcheck disable=SC2086
python3 inference/bench/server_load.py --target "sandgraph=$ours_url" \
    --target "llama.cpp=$llama_url" --reference llama.cpp --rounds "$rounds" \
    --concurrency $concurrency --requests-per-client "$per_client" --max-tokens "$max_tokens"
rm -rf "$log"
