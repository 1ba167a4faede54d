#!/usr/bin/env bash
# The CPU backend against the fastest llama.cpp this machine can run (issue 16, goal 4).
#
# llama.cpp is built from the llama-cpp-python source package on the package index (the only
# way to get it offline here), with its own tools: `llama-batched-bench` runs the same shape
# as `sandgraph-infer bench` (B sequences of P prompt tokens prefilled in one batch, then D
# decode steps for all of them). Each configuration is a build (`-march=native` with OpenMP,
# and with ggml's own thread pool instead) crossed with run settings (flash attention off/on)
# and thread counts; rounds interleave every configuration with ours, so machine noise hits
# all alike, and the table reports medians over rounds and ours against the best llama.cpp
# row per thread count. Benchmark only: llama.cpp is never a dependency of the project.
#
#   scripts/bench-llama-cpp.sh [rounds]   env: THREADS ("1 2"), PROMPT_TOKENS (64),
#                                              DECODE_TOKENS (32), LLAMA_DIR (/tmp/sandgraph-llama-cpp),
#                                              OTHER_INFER (another sandgraph-infer build to run
#                                              in the same rounds, e.g. the commit before a change)
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
threads=${THREADS:-1 2}
prompt=${PROMPT_TOKENS:-64}
decode=${DECODE_TOKENS:-32}
dir=${LLAMA_DIR:-/tmp/sandgraph-llama-cpp}
version=0.3.36
model=${SANDGRAPH_MODEL:-models/SmolLM2-135M-Instruct.Q4_1.gguf}

[ -f "$model" ] || bash scripts/setup.sh
cargo build -q -p sandgraph-inference --bin sandgraph-infer
ours=target/debug/sandgraph-infer

mkdir -p "$dir"
if [ ! -x "$dir/venv/bin/cmake" ]; then
    python3 -m venv "$dir/venv"
    "$dir/venv/bin/pip" install --quiet cmake ninja
fi
src="$dir/llama_cpp_python-$version/vendor/llama.cpp"
if [ ! -d "$src" ]; then
    # The source package only: its build requirements come as wheels, nothing is built here.
    "$dir/venv/bin/pip" download --quiet --no-deps --no-binary llama-cpp-python \
        "llama-cpp-python==$version" -d "$dir"
    tar -xzf "$dir/llama_cpp_python-$version.tar.gz" -C "$dir"
fi
# ggml's AMX kernels crash in some VMs; -march=native would turn them on where the CPU has AMX.
cflags=""
grep -qw amx_int8 /proc/cpuinfo && cflags="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
build() { # name, extra cmake flags
    local out="$dir/build-$1"
    shift
    [ -x "$out/bin/llama-batched-bench" ] && return 0
    echo "building llama.cpp ($out)" >&2
    PATH="$dir/venv/bin:$PATH" cmake -S "$src" -B "$out" -G Ninja -DCMAKE_BUILD_TYPE=Release \
        -DGGML_NATIVE=ON -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
        -DLLAMA_BUILD_SERVER=OFF -DBUILD_SHARED_LIBS=OFF -DCMAKE_C_FLAGS="$cflags" \
        -DCMAKE_CXX_FLAGS="$cflags" "$@" >"$out.log" 2>&1
    PATH="$dir/venv/bin:$PATH" ninja -C "$out" llama-batched-bench >>"$out.log" 2>&1
}
build native-openmp -DGGML_OPENMP=ON
build native-threadpool -DGGML_OPENMP=OFF

out=$(mktemp)
for r in $(seq "$rounds"); do
    echo "round $r/$rounds" >&2
    for t in $threads; do
        for bin in "$ours" ${OTHER_INFER:-}; do
            label="sandgraph cpu"
            [ "$bin" = "$ours" ] || label="sandgraph cpu (OTHER_INFER)"
            "$bin" bench --model "$model" --batch 1,8 --threads "$t" --prompt-tokens "$prompt" \
                --decode-tokens "$decode" --reps 3 --csv --no-bandwidth 2>/dev/null |
                awk -F, -v t="$t" -v l="$label" '/^csv,/ { print l "," t "," $3 "," $4 "," $5 }' >>"$out"
        done
        for b in native-openmp native-threadpool; do
            for fa in off on; do
                "$dir/build-$b/bin/llama-batched-bench" -m "$model" -c 2048 -b 2048 -ub 512 \
                    -npp "$prompt" -ntg "$decode" -npl 1,8 -t "$t" -tb "$t" -fa "$fa" \
                    --output-format jsonl 2>/dev/null |
                    python3 -c '
import json, sys
for line in sys.stdin:
    if line.startswith("{"):
        j = json.loads(line)
        print("llama.cpp %s fa %s,%s,%s,%s,%s" % (*sys.argv[1:4], j["pl"], j["speed_pp"], j["speed_tg"]))
' "$b" "$fa" "$t" >>"$out"
            done
        done
    done
done

python3 - "$out" "$rounds" "$prompt" "$decode" <<'PY'
import collections, os, statistics, sys
rows = collections.defaultdict(lambda: ([], []))
for line in open(sys.argv[1]):
    name, t, b, p, d = line.strip().split(",")
    rows[(int(t), name, int(b))][0].append(float(p))
    rows[(int(t), name, int(b))][1].append(float(d))
med = {k: (statistics.median(p), statistics.median(d)) for k, (p, d) in rows.items()}
print(f"{sys.argv[3]} prompt + {sys.argv[4]} decode tokens per sequence, {sys.argv[2]} interleaved "
      f"rounds, medians; load average {os.getloadavg()[0]:.2f} at the end")
print(f"| threads | engine | batch | prefill tok/s | decode tok/s |")
print(f"|---:|---|---:|---:|---:|")
for (t, name, b), (p, d) in sorted(med.items()):
    print(f"| {t} | {name} | {b} | {p:.1f} | {d:.1f} |")
for t in sorted({k[0] for k in med}):
    ours = {b: med.get((t, "sandgraph cpu", b)) for b in (1, 8)}
    theirs = {k: v for k, v in med.items() if k[0] == t and k[1].startswith("llama.cpp")}
    if not theirs or None in ours.values():
        continue
    best_d = max((v[1], k[1]) for k, v in theirs.items() if k[2] == 1)
    best_p = max((v[0], k[1]) for k, v in theirs.items() if k[2] == 8)
    print(f"{t} threads: decode batch 1 {ours[1][1]:.1f} vs best llama.cpp {best_d[0]:.1f} ({best_d[1]}): "
          f"{ours[1][1] / best_d[0]:.2f}x; prefill batch 8 {ours[8][0]:.1f} vs best {best_p[0]:.1f} "
          f"({best_p[1]}): {ours[8][0] / best_p[0]:.2f}x")
PY
rm -f "$out"
