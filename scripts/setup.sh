#!/usr/bin/env bash
# Installs what building and testing Sandgraph needs on a fresh Debian machine.
# Idempotent: every step checks first, so running it twice costs seconds.
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

# Mesa's software Vulkan (lavapipe) lets the wgpu backend run without a GPU.
need_apt=()
dpkg -s mesa-vulkan-drivers >/dev/null 2>&1 || need_apt+=(mesa-vulkan-drivers)
dpkg -s libvulkan1 >/dev/null 2>&1 || need_apt+=(libvulkan1)
if [ ${#need_apt[@]} -gt 0 ]; then
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "${need_apt[@]}"
fi

# Guest components are built for WASI 0.2.
rustup target list --installed | grep -qx wasm32-wasip2 || rustup target add wasm32-wasip2
command -v cargo-nextest >/dev/null || cargo install --locked cargo-nextest
