#!/usr/bin/env bash
# Lays out the root filesystem of one image from binaries already built on this machine (no
# base image can be pulled here): the binary, exactly the shared libraries it links (ldd, so
# glibc and libgcc from this Debian release), CA roots, a passwd/group naming the numeric user
# 10001, and empty directories for the volumes the pods mount. No shell, no package manager.
#
#   rootfs.sh host OUT SANDGRAPH_BIN COMPONENTS_DIR
#   rootfs.sh inference OUT SANDGRAPH_INFER_BIN
#
# COMPONENTS_DIR holds the built tool and agent components (`<name>.wasm`, `tool_<name>.wasm`
# or `agent_<name>.wasm`); their manifests come from tools/ and agents/.
set -euo pipefail
trap 'echo "$(basename "$0"): failed at line $LINENO: $BASH_COMMAND" >&2' ERR
root=$(cd "$(dirname "$0")/../.." && pwd)
kind=$1 out=$2 bin=$3

rm -rf "$out" "$out.state" && mkdir -p "$out"
copy() { # a file, at its own path (links resolved), under $out
  local src=$1 dst=$out${2:-$1}
  mkdir -p "$(dirname "$dst")"
  cp -L "$src" "$dst"
}
libs() { # every shared library $1 loads, the dynamic loader included
  ldd "$1" | awk '/=> \// { print $3 } /^[ \t]*\/lib/ { print $1 }' | sort -u
}

mkdir -p "$out/usr/local/bin" "$out/etc" "$out/tmp"
chmod 1777 "$out/tmp"
printf 'root:x:0:0::/:/nonexistent\nsandgraph:x:10001:10001::/nonexistent:/nonexistent\n' >"$out/etc/passwd"
printf 'root:x:0:\nsandgraph:x:10001:\n' >"$out/etc/group"
copy /etc/ssl/certs/ca-certificates.crt

case $kind in
host)
  components=$4
  install -m 0755 "$bin" "$out/usr/local/bin/sandgraph"
  for l in $(libs "$bin"); do copy "$l"; done
  for folder in tools agents; do
    for manifest in "$root/$folder"/*/*.sandgraph.yaml; do
      name=$(basename "$manifest" .sandgraph.yaml)
      mkdir -p "$out/opt/sandgraph/$folder/$name"
      cp "$manifest" "$out/opt/sandgraph/$folder/$name/"
      found=
      for w in "$name.wasm" "tool_${name//-/_}.wasm" "agent_${name//-/_}.wasm"; do
        if [[ -f $components/$w ]]; then
          mkdir -p "$out/opt/sandgraph/components"
          cp "$components/$w" "$out/opt/sandgraph/components/$name.wasm"
          found=1
          break
        fi
      done
      [[ -n $found ]] || { echo "rootfs.sh: component '$name' is not built in $components" >&2; exit 1; }
    done
  done
  mkdir -p "$out/etc/sandgraph/auth" "$out/etc/sandgraph/models" "$out/etc/sandgraph/secrets"
  # The journal and the compile cache: the only places the host writes (volumes in a pod). They
  # go into the image owned by 10001 (a COPY of their own, host.Dockerfile), so a fresh Docker
  # volume mounted there starts writable by the user the container runs as.
  mkdir -p "$out.state/var/lib/sandgraph" "$out.state/var/cache/sandgraph"
  ;;
inference)
  install -m 0755 "$bin" "$out/usr/local/bin/sandgraph-infer"
  for l in $(libs "$bin"); do copy "$l"; done
  # wgpu opens the Vulkan loader at run time (dlopen), so ldd does not list it; lavapipe
  # (Mesa's software Vulkan) serves CPU-only nodes, the NVIDIA ICD the toolkit mounts on GPU
  # nodes (with NVIDIA_DRIVER_CAPABILITIES including graphics).
  loader=$("$(command -v ldconfig || echo /sbin/ldconfig)" -p | awk '/libvulkan\.so\.1 .*x86-64/ && !found { print $NF; found = 1 }')
  [[ -n $loader ]] || { echo "rootfs.sh: no Vulkan loader (apt-get install libvulkan1)" >&2; exit 1; }
  copy "$loader" /usr/lib/x86_64-linux-gnu/libvulkan.so.1
  icd=/usr/share/vulkan/icd.d/lvp_icd.x86_64.json
  [[ -f $icd ]] || { echo "rootfs.sh: no lavapipe (apt-get install mesa-vulkan-drivers)" >&2; exit 1; }
  copy "$icd"
  lvp=$(sed -n 's/.*"library_path": *"\([^"]*\)".*/\1/p' "$icd")
  copy "$lvp"
  for l in $(libs "$lvp"); do copy "$l"; done
  # The fallback NVIDIA ICD: the toolkit mounts the driver's libraries but, on some hosts, not
  # this file; the loader then finds the driver through it.
  mkdir -p "$out/etc/vulkan/icd.d"
  cat >"$out/etc/vulkan/icd.d/nvidia_icd.json" <<'JSON'
{
    "file_format_version": "1.0.0",
    "ICD": {
        "library_path": "libGLX_nvidia.so.0",
        "api_version": "1.3.0"
    }
}
JSON
  mkdir -p "$out/models"
  ;;
*)
  echo "rootfs.sh: kind is host or inference, not '$kind'" >&2
  exit 2
  ;;
esac
