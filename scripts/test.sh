#!/usr/bin/env bash
# Runs every test of the workspace from a fresh checkout: installs what is
# missing, fetches the model, builds the guest components, runs the suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh

# CI builds once from a clean clone: the incremental cache would only cost disk.
if [ "${CI:-}" = true ]; then export CARGO_INCREMENTAL=0; fi

# A full debug test build takes several GiB; when the disk runs out the linker
# fails with a message buried in a huge command line, so say it plainly first.
target_dir=${CARGO_TARGET_DIR:-target}
mkdir -p "$target_dir"
free_kib=$(df -Pk "$target_dir" | awk 'NR == 2 { print $4 }')
need_kib=$((8 * 1024 * 1024))
if [ "${free_kib:-0}" -lt "$need_kib" ]; then
    echo "warning: $((free_kib / 1024)) MiB free under $target_dir; a clean test build needs about 8 GiB" >&2
fi

# Every fuzz target for a few seconds over its committed seeds (each past crash is one of them).
bash scripts/fuzz.sh smoke "${SANDGRAPH_FUZZ_SECONDS:-5}"

cargo nextest run --workspace --no-fail-fast "$@"
bash deploy/check.sh  # offline checks of deploy/ (kustomize, strict schemas, checkov, manifest assertions)
