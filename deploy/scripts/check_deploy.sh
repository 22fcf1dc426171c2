#!/usr/bin/env bash
# Checks the deploy files with the real tools (installed by tools.sh); `make check-deploy` runs it and
# `make test` depends on it, so a broken manifest, rule, dashboard or Dockerfile fails the build.
#
#   check_deploy.sh [ROOT]     ROOT: the tree holding deploy/ (default: this repository)
#
# 1. kustomize build of every entry point (deploy/k8s, deploy/k8s-gpu, deploy/k8s/schema), each
#    validated by kubeconform --strict against the offline Kubernetes schemas (unknown fields, wrong
#    types and unknown kinds fail) and scored by kube-score (warnings fail; the checks ignored below are
#    deliberate, with the reason).
# 2. promtool check rules (rules.yaml) and check config (scrape.yaml as a prometheus.yml with the rules),
#    promtool test rules (deploy/prometheus/tests: the alerts' unit tests).
# 3. check_promql.py: the dashboard's PromQL parses, every metric the rules and the dashboard select is
#    one recd exports, every alert has a firing unit test.
# 4. hadolint on deploy/docker/Dockerfile*.
# Every step runs; the script exits 1 after them if any failed, naming them.
set -euo pipefail

SCRIPTS_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$SCRIPTS_DIR/../.." && pwd)"
ROOT="$(cd "${1:-$REPO}" && pwd)"
DEPLOY="$ROOT/deploy"
# The Python that can import recd (for the exported metric names): the project's virtualenv.
PYTHON="${RECD_PYTHON:-$REPO/.venv/bin/python}"
TOOLS="$SCRIPTS_DIR/tools.sh"

"$TOOLS" install
KUSTOMIZE=$("$TOOLS" path kustomize)
KUBECONFORM=$("$TOOLS" path kubeconform)
KUBE_SCORE=$("$TOOLS" path kube-score)
PROMTOOL=$("$TOOLS" path promtool)
HADOLINT=$("$TOOLS" path hadolint)
SCHEMAS=$("$TOOLS" schemas)

# Deliberate departures from kube-score's defaults:
# - no CPU limits: CFS throttling against a 100 ms latency budget (deploy/k8s/frontend.yaml says why);
# - imagePullPolicy IfNotPresent, not Always: tags are pinned and never reused (image/kustomization.yaml),
#   so Always only adds a registry round trip to every start and fails starts while the registry is down;
# - host anti-affinity on Deployments: topologySpreadConstraints on kubernetes.io/hostname with
#   DoNotSchedule does it (one pod per node), which kube-score does not recognise.
KUBE_SCORE_ARGS=(
  score --output-format ci --exit-one-on-warning --ignore-container-cpu-limit
  --ignore-test container-image-pull-policy --ignore-test deployment-has-host-podantiaffinity
)

failed=()
step() {
  local name=$1
  shift
  printf '\n== %s\n' "$name"
  if "$@"; then printf 'ok: %s\n' "$name"; else printf 'FAILED: %s\n' "$name" >&2; failed+=("$name"); fi
}

render_dir() { mktemp -d "${TMPDIR:-/tmp}/recd-check-deploy.XXXXXX"; }
WORK=$(render_dir)
trap 'rm -rf "$WORK"' EXIT

check_kustomization() {
  local dir=$1 out
  out="$WORK/$(echo "${dir#"$DEPLOY"/}" | tr / _).yaml"
  "$KUSTOMIZE" build "$dir" >"$out" || return 1
  "$KUBECONFORM" -strict -summary -output text \
    -schema-location "$SCHEMAS/{{.ResourceKind}}{{.KindSuffix}}.json" "$out" || return 1
  local extra=()
  # The schema kustomization carries the namespace's network policies, whose pods are the workloads'.
  [[ $dir == */schema ]] && extra=(--ignore-test networkpolicy-targets-pod)
  # kube-score prints every check; only the findings matter here.
  "$KUBE_SCORE" "${KUBE_SCORE_ARGS[@]}" "${extra[@]}" "$out" | { grep -v '^\[\(OK\|SKIPPED\)\]' || true; }
  return "${PIPESTATUS[0]}"
}

check_prometheus_config() {
  local config="$WORK/prometheus.yml"
  # scrape.yaml is the scrape_configs fragment of prometheus.yml; check it as one, with the rules.
  { cat "$DEPLOY/prometheus/scrape.yaml"; printf '\nrule_files:\n  - %s\n' "$DEPLOY/prometheus/rules.yaml"; } >"$config"
  "$PROMTOOL" check config "$config"
}

check_rule_tests() {
  local tests=("$DEPLOY"/prometheus/tests/*.yaml)
  [[ -e ${tests[0]} ]] || { echo "no unit tests in $DEPLOY/prometheus/tests" >&2; return 1; }
  # rule_files in the tests are relative to the test file.
  (cd "$DEPLOY/prometheus/tests" && "$PROMTOOL" test rules "${tests[@]##*/}")
}

for entry in k8s k8s-gpu k8s/schema; do
  step "kubeconform + kube-score: deploy/$entry" check_kustomization "$DEPLOY/$entry"
done
step "promtool check rules" "$PROMTOOL" check rules "$DEPLOY/prometheus/rules.yaml"
step "promtool check config" check_prometheus_config
step "promtool test rules" check_rule_tests
step "dashboard and rule PromQL against the code" "$PYTHON" "$SCRIPTS_DIR/check_promql.py" \
  --promtool "$PROMTOOL" --rules "$DEPLOY/prometheus/rules.yaml" \
  --dashboard "$DEPLOY/grafana/recd.json" --tests-dir "$DEPLOY/prometheus/tests"
step "hadolint" "$HADOLINT" "$DEPLOY"/docker/Dockerfile*

if ((${#failed[@]})); then
  printf '\ncheck_deploy: %d check(s) failed:\n' "${#failed[@]}" >&2
  printf '  - %s\n' "${failed[@]}" >&2
  exit 1
fi
printf '\ncheck_deploy: all deploy files pass\n'
