#!/usr/bin/env bash
# One-shot check of the wgpu backend on a real GPU machine (no Rust toolchain, no network):
# prints the adapters, runs the golden prompt greedily on wgpu (default kernels, then the
# workgroup-memory variant), then the wgpu kernel table with the device read bandwidth and the
# end-to-end benchmark at batch 1 and 8 (cpu alongside as the baseline of the same run).
# `wgpu_bench --profile` adds the decode step's host/wait split and GPU time per kernel kind.
# Everything is time-boxed so the whole script finishes in about 3 minutes.
#
# Usage: scripts/gpu-check.sh SANDGRAPH_INFER MODEL.gguf [WGPU_BENCH]
#   SANDGRAPH_INFER  release build of the CLI:   cargo build --release -p sandgraph-inference
#   MODEL.gguf       SmolLM2-135M-Instruct.Q4_1.gguf
#   WGPU_BENCH       optional kernel table:      cargo build --release -p sandgraph-inference --example wgpu_bench
#                    (target/release/examples/wgpu_bench)
set -uo pipefail

if [ $# -lt 2 ]; then
    sed -n '2,13p' "$0"
    exit 2
fi
BIN=$1
MODEL=$2
KBENCH=${3:-}
[ -x "$BIN" ] || { echo "not executable: $BIN" >&2; exit 2; }
[ -f "$MODEL" ] || { echo "no model file: $MODEL" >&2; exit 2; }

status=0
section() { printf '\n=== %s (%s)\n' "$1" "$(date -u +%H:%M:%S)"; }

section "machine"
uname -m
nproc
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
command -v vulkaninfo >/dev/null && vulkaninfo --summary 2>/dev/null | grep -E 'deviceName|deviceType|driverName|apiVersion'
ls /usr/share/vulkan/icd.d/ /etc/vulkan/icd.d/ 2>/dev/null

want="The capital of France is Paris."
golden() { # $1: label; kernel variant from SANDGRAPH_WGPU_KERNELS (empty: the adapter's default)
    section "golden prompt on wgpu, $1 kernels (greedy)"
    out=$(timeout 60 "$BIN" generate --model "$MODEL" --backend wgpu --chat \
        --system "You are a helpful assistant." --prompt "What is the capital of France?" \
        --temperature 0 --max-tokens 24 --context 128 2>/tmp/gpu-check-generate.err)
    rc=$?
    cat /tmp/gpu-check-generate.err
    echo "output: $out"
    if [ $rc -eq 0 ] && [ "$(printf '%s' "$out" | head -c ${#want})" = "$want" ]; then
        echo "GOLDEN ($1): PASS"
    else
        echo "GOLDEN ($1): FAIL (exit $rc; want \"$want\")"
        status=1
    fi
}
golden default
# The other GPU variant too: workgroup-memory reduction with barriers instead of subgroups.
SANDGRAPH_WGPU_KERNELS=tiled golden tiled

if [ -n "$KBENCH" ]; then
    section "wgpu kernels, device bandwidth, decode step profile"
    timeout 90 "$KBENCH" --profile "$MODEL" || { echo "wgpu_bench failed or timed out"; status=1; }
    # The same decode profile with RMSNorm, RoPE and the KV-cache store as kernels of their
    # own, as the GPU variants ran them until 2026-12-07 (398 tok/s at batch 1 on an H100,
    # docs/PERFORMANCE.md): before/after on one machine.
    section "decode step profile, RMSNorm and RoPE unfused (before)"
    SANDGRAPH_WGPU_NORM=separate SANDGRAPH_WGPU_ROPE=separate \
        timeout 90 "$KBENCH" --decode-only "$MODEL" \
        || { echo "wgpu_bench failed or timed out"; status=1; }
fi

section "bench: wgpu and cpu, batch 1 and 8"
timeout 120 "$BIN" bench --model "$MODEL" --backend wgpu,cpu --batch 1,8 \
    --prompt-tokens 128 --decode-tokens 64 --reps 3 --csv \
    || { echo "bench failed or timed out"; status=1; }

section "bench: wgpu with RMSNorm and RoPE unfused (before), batch 1 and 8"
SANDGRAPH_WGPU_NORM=separate SANDGRAPH_WGPU_ROPE=separate \
    timeout 60 "$BIN" bench --model "$MODEL" --backend wgpu \
    --batch 1,8 --prompt-tokens 128 --decode-tokens 64 --reps 3 --csv \
    || { echo "bench failed or timed out"; status=1; }

section "done"
exit $status
