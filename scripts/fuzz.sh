#!/usr/bin/env bash
# Fuzzes the parsers at the trust boundary with cargo-fuzz (libFuzzer; `--sanitizer none`, so
# stable Rust suffices). Targets are in fuzz/fuzz_targets, committed seeds in fuzz/seeds/<target>
# (every seed runs first, so a crash once found and added there stays a regression test), and
# the growing corpus in fuzz/corpus/<target> (not committed).
#
#   scripts/fuzz.sh smoke [SECONDS]        every target for SECONDS each (default 5): CI
#   scripts/fuzz.sh run TARGET SECONDS     one longer campaign
#
# Prints one line per target with its executions; exits non-zero on the first crash, leak or
# timeout, leaving the input under fuzz/artifacts/<target>/.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo fuzz --version >/dev/null 2>&1 || cargo install --locked cargo-fuzz --version 0.13.2

flags=(--sanitizer none --dev)
libfuzzer=(-rss_limit_mb=4096 -timeout=20 -print_final_stats=1)

campaign() {
    local target=$1 seconds=$2 log
    mkdir -p "fuzz/corpus/$target" "fuzz/seeds/$target"
    log=$(mktemp)
    if ! cargo fuzz run "${flags[@]}" "$target" "fuzz/corpus/$target" "fuzz/seeds/$target" \
        -- "${libfuzzer[@]}" -max_total_time="$seconds" >"$log" 2>&1; then
        tail -60 "$log" >&2
        echo "fuzz: $target failed; the input is under fuzz/artifacts/$target/" >&2
        rm -f "$log"
        return 1
    fi
    local runs corpus
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    corpus=$(find "fuzz/corpus/$target" -type f | wc -l)
    printf '%-22s %10s executions in %ss, corpus %s inputs\n' "$target" "${runs:-?}" "$seconds" "$corpus"
    rm -f "$log"
}

case "${1:-}" in
smoke)
    seconds=${2:-5}
    cargo fuzz build "${flags[@]}"
    for target in $(cargo fuzz list); do
        campaign "$target" "$seconds"
    done
    ;;
run)
    [ $# -eq 3 ] || { echo "usage: $0 run TARGET SECONDS" >&2; exit 2; }
    cargo fuzz build "${flags[@]}" "$2"
    campaign "$2" "$3"
    ;;
*)
    echo "usage: $0 smoke [SECONDS] | run TARGET SECONDS" >&2
    exit 2
    ;;
esac
