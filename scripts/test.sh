#!/usr/bin/env bash
# Runs every test of the workspace from a fresh checkout: installs what is
# missing, fetches the model, builds the guest components, runs the suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo nextest run --workspace --no-fail-fast "$@"
