#!/usr/bin/env bash
# Builds the two images, sandgraph/host:TAG and sandgraph/inference:TAG, from binaries built on
# this machine, writes an SBOM of each (target/docker/<kind>.cdx.json, CycloneDX) and prints
# their sizes (goals: host <= 60 MB, inference <= 250 MB).
#
#   deploy/docker/build.sh [TAG]            release build of both binaries and the components
#
# SANDGRAPH_BIN, SANDGRAPH_INFER_BIN and SANDGRAPH_COMPONENTS use binaries and components
# already built instead (the container test passes its debug build's).
set -euo pipefail
trap 'echo "$(basename "$0"): failed at line $LINENO: $BASH_COMMAND" >&2' ERR
cd "$(dirname "$0")/../.."
tag=${1:-0.1.0}
revision=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
work=${CARGO_TARGET_DIR:-target}/docker

if [[ -z ${SANDGRAPH_BIN:-} || -z ${SANDGRAPH_INFER_BIN:-} || -z ${SANDGRAPH_COMPONENTS:-} ]]; then
  cargo build --release -p sandgraph --bin sandgraph -p sandgraph-inference --bin sandgraph-infer
  cargo guests
  : "${SANDGRAPH_BIN:=${CARGO_TARGET_DIR:-target}/release/sandgraph}"
  : "${SANDGRAPH_INFER_BIN:=${CARGO_TARGET_DIR:-target}/release/sandgraph-infer}"
  : "${SANDGRAPH_COMPONENTS:=${CARGO_TARGET_DIR:-target}/wasm32-wasip2/release}"
fi

mkdir -p "$work/bin"
# Symbols are not needed at run time (panics still print their message and location).
strip -o "$work/bin/sandgraph" "$SANDGRAPH_BIN"
strip -o "$work/bin/sandgraph-infer" "$SANDGRAPH_INFER_BIN"

for kind in host inference; do
  ctx=$work/$kind
  case $kind in
    host) bash deploy/docker/rootfs.sh host "$ctx/rootfs" "$work/bin/sandgraph" "$SANDGRAPH_COMPONENTS" ;;
    inference) bash deploy/docker/rootfs.sh inference "$ctx/rootfs" "$work/bin/sandgraph-infer" ;;
  esac
  cp "deploy/docker/$kind.Dockerfile" "$ctx/Dockerfile"
  printf 'Dockerfile\n' >"$ctx/.dockerignore"
  docker build -q -f "$ctx/Dockerfile" \
    --build-arg "REVISION=$revision" --build-arg "VERSION=$tag" \
    -t "sandgraph/$kind:$tag" "$ctx" >/dev/null
  # The image's SBOM (CycloneDX) beside it: crates, Debian packages, components.
  python3 deploy/docker/sbom.py "$kind" "$ctx/rootfs" \
    "$([[ $kind == host ]] && echo sandgraph || echo sandgraph-inference)" "$work/$kind.cdx.json" >/dev/null
  size=$(docker image inspect --format '{{.Size}}' "sandgraph/$kind:$tag")
  printf 'sandgraph/%s:%s  %d MB\n' "$kind" "$tag" $((size / 1000000))
done
