#!/usr/bin/env bash
# Benchmarks the inference engine against llama.cpp on the same GGUF and thread count, in one
# run: rounds alternate ours/theirs so machine noise (other builds) hits both alike, and the
# table reports per-round medians and their ratio. llama.cpp comes from llama-cpp-python in a
# throwaway venv (benchmark-only; never a dependency of the project).
#
#   scripts/bench-inference.sh [rounds]      env: THREADS (2), BACKENDS (cpu; e.g. cpu,wgpu), REPS (3),
#                                                 PROMPT_TOKENS (128), DECODE_TOKENS (64),
#                                                 LLAMA_VENV (/tmp/sandgraph-llama-venv)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/llama-venv.sh
rounds=${1:-3}
threads=${THREADS:-2}
backends=${BACKENDS:-cpu}
venv=${LLAMA_VENV:-/tmp/sandgraph-llama-venv}
model=${SANDGRAPH_MODEL:-models/SmolLM2-135M-Instruct.Q4_1.gguf}
prompt=${PROMPT_TOKENS:-128}
decode=${DECODE_TOKENS:-64}
reps=${REPS:-3}

[ -f "$model" ] || bash scripts/setup.sh
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target/inference}
cargo build -q -p sandgraph-inference --bin sandgraph-infer
ours="$CARGO_TARGET_DIR/debug/sandgraph-infer"

ensure_llama_venv "$venv" 'llama-cpp-python==0.3.36'

out=$(mktemp)
for r in $(seq "$rounds"); do
    echo "round $r/$rounds" >&2
    "$ours" bench --model "$model" --backend "$backends" --batch 1,8 --threads "$threads" \
        --prompt-tokens "$prompt" --decode-tokens "$decode" --reps "$reps" --csv \
        $([ "$r" = 1 ] || echo --no-bandwidth) 2>/dev/null | grep '^csv,' >>"$out"
    "$venv/bin/python" inference/bench/llama_cpp_bench.py --model "$model" --threads "$threads" \
        --prompt-tokens "$prompt" --decode-tokens "$decode" --reps "$reps" 2>/dev/null | grep '^csv,' >>"$out"
done

python3 - "$out" "$threads" "$rounds" <<'PY'
import collections, statistics, sys
rows = collections.defaultdict(lambda: ([], []))
bw = None
for line in open(sys.argv[1]):
    f = line.strip().split(",")
    if f[1] == "bandwidth":
        bw = (float(f[2]), int(f[3]), float(f[4]))
        continue
    rows[(f[1], int(f[2]))][0].append(float(f[3]))
    rows[(f[1], int(f[2]))][1].append(float(f[4]))
med = {k: (statistics.median(p), statistics.median(d)) for k, (p, d) in rows.items()}
print(f"threads {sys.argv[2]}, {sys.argv[3]} interleaved rounds; medians of per-round medians")
print(f"{'engine':<10} {'batch':>5} {'prefill tok/s':>14} {'decode tok/s':>13} {'decode vs llama.cpp b1':>23}")
ref = med.get(("llama.cpp", 1))
for (name, b), (p, d) in sorted(med.items()):
    ratio = f"{d / ref[1]:.2f}x" if ref else "-"
    print(f"{name:<10} {b:>5} {p:>14.1f} {d:>13.1f} {ratio:>23}")
if bw:
    print(f"weights per decode step {bw[1] / 1e6:.1f} MB, streaming read {bw[0] / 1e9:.1f} GB/s "
          f"-> DRAM bandwidth bound {bw[2]:.0f} tok/s at batch 1")
PY
rm -f "$out"
