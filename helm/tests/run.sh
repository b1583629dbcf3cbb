#!/usr/bin/env bash
# Checks of the Helm chart, the container image recipe, the Grafana dashboard
# and the Prometheus alerts, against the real binaries. Called by .ci/run
# after the workspace is built; needs target/debug/{herald,herald-node,
# herald-edge}, Go >= 1.24, and promtool + prometheus (Debian: prometheus).
#
#   helm/tests/run.sh            everything
#   HERALD_BIN=dir run.sh        binaries from another directory
#
# Steps, each failing the script on its own:
#   1. helm lint --strict and helm template for every value set (the
#      defaults and helm/tests/values/*.yaml), NOTES.txt rendered too;
#      values.schema.json rejects misspelt keys and wrong types.
#   2. every rendered manifest decoded strictly into the Kubernetes 1.33 API
#      types (helm/validate), and known-broken manifests rejected.
#   3. promtool check rules / test rules on deploy/prometheus/alerts.yaml
#      and on the rules the chart renders; every metric the alerts and the
#      dashboard use is exported by the node or edge code.
#   4. every flag and variable the chart passes is accepted by the binary,
#      and the rendered pods run locally until their probes pass (nodes
#      with their own certificates from `herald certs`, gRPC over TLS,
#      where the values ask for it; each pod's certificate is checked at
#      render time, and a swapped one is caught); a client
#      receives a publication through the rendered edge; the membership
#      Jobs scale the voters 3 -> 5 -> 3.
#   5. a real Prometheus scrapes a local cluster; the dashboard's publish
#      rate and connection count queries return what was done.
set -euo pipefail
cd "$(dirname "$0")/../.."

HELM_VERSION=v3.22.0
KUBE_VERSION=1.33.0 # must match helm/validate/go.mod (k8s.io/api v0.33.x)
NAMESPACE=herald
RELEASE=herald
CHART=helm/herald
BIN=${HERALD_BIN:-target/debug}
OUT=$(mktemp -d -t herald-helm-XXXXXX)
RENDER=$OUT/render # one file per render
mkdir -p "$RENDER"
# Kept when a step fails: the harness's process logs are in there.
trap 'if (($? == 0)); then rm -rf "$OUT"; else echo "helm/tests/run.sh: work files kept in $OUT" >&2; fi' EXIT

step() { echo "== helm: $*"; }
fail() {
  echo "helm/tests/run.sh: $*" >&2
  exit 1
}

step "tools"
command -v go >/dev/null || fail "Go >= 1.24 is required (helm is built with go install)"
# No VCS stamping: the checkout may belong to another user than the build.
export GOFLAGS="${GOFLAGS:-} -buildvcs=false"
GOBIN=${GOBIN:-$(go env GOPATH)/bin}
HELM=$GOBIN/helm
if [[ ! -x $HELM ]]; then
  echo "installing helm $HELM_VERSION with go install (takes a few minutes)"
  GOBIN=$GOBIN go install "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
fi
for tool in promtool prometheus; do
  command -v "$tool" >/dev/null || fail "$tool is required (apt-get install prometheus)"
done
for b in herald herald-node herald-edge; do
  [[ -x $BIN/$b ]] || fail "$BIN/$b is missing: build the workspace first"
done
(
  cd helm/validate
  unformatted=$(gofmt -l .)
  [[ -z $unformatted ]] || fail "gofmt: $unformatted"
  go vet ./...
  go test ./...
  go build -o "$OUT/validate" .
)
VALIDATE=$OUT/validate
"$HELM" version --short

# Renders NOTES.txt (which helm template skips) by wrapping it in a
# ConfigMap in a copy of the chart.
render_notes() {
  local notes_chart=$OUT/notes-chart
  rm -rf "$notes_chart"
  cp -r "$CHART" "$notes_chart"
  {
    echo '{{- define "herald.notes" }}'
    cat "$notes_chart/templates/NOTES.txt"
    echo '{{- end }}'
  } >"$notes_chart/templates/_notes.tpl"
  rm "$notes_chart/templates/NOTES.txt"
  printf 'apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: notes\ndata:\n  notes: {{ include "herald.notes" . | quote }}\n' \
    >"$notes_chart/templates/zz-notes.yaml"
  "$HELM" template "$RELEASE" "$notes_chart" --namespace "$NAMESPACE" --kube-version "$KUBE_VERSION" \
    --show-only templates/zz-notes.yaml "$@" >/dev/null
}

step "lint and template (Kubernetes $KUBE_VERSION)"
declare -A VALUES=([default]="")
for f in helm/tests/values/*.yaml; do
  VALUES[$(basename "$f" .yaml)]=$f
done
for name in $(printf '%s\n' "${!VALUES[@]}" | sort); do
  args=()
  [[ -n ${VALUES[$name]} ]] && args=(-f "${VALUES[$name]}")
  "$HELM" lint --strict --quiet --kube-version "$KUBE_VERSION" "$CHART" "${args[@]}" >"$OUT/lint" 2>&1 ||
    { cat "$OUT/lint"; fail "helm lint --strict ($name values)"; }
  "$HELM" template "$RELEASE" "$CHART" --namespace "$NAMESPACE" --kube-version "$KUBE_VERSION" \
    "${args[@]}" >"$RENDER/$name.yaml"
  render_notes "${args[@]}"
  echo "  $name: lint ok, $(grep -c '^kind:' "$RENDER/$name.yaml") objects, NOTES.txt renders"
done
# The renders a `helm upgrade` changing node.replicas produces (in a real
# cluster the chart reads the previous count with lookup).
"$HELM" template "$RELEASE" "$CHART" --namespace "$NAMESPACE" --kube-version "$KUBE_VERSION" \
  --set node.replicas=5 --set node.membership.previousReplicas=3 >"$OUT/scale-up.yaml"
"$HELM" template "$RELEASE" "$CHART" --namespace "$NAMESPACE" --kube-version "$KUBE_VERSION" \
  --set node.membership.previousReplicas=5 >"$OUT/scale-down.yaml"

step "values.schema.json and template checks reject bad values"
reject() {
  local why=$1
  shift
  if "$HELM" template "$RELEASE" "$CHART" --kube-version "$KUBE_VERSION" "$@" >/dev/null 2>"$OUT/err"; then
    fail "accepted $why ($*)"
  fi
  echo "  rejected $why: $(grep -m1 -E 'at |error' "$OUT/err" | sed 's/^ *//')"
}
reject "a misspelt key" --set node.replicsa=3
reject "a misspelt nested key" --set edge.ingress.tlss=x
reject "a wrong type" --set node.grpcPort=grpc
reject "an unknown enum value" --set node.antiAffinity=always
reject "a Raft timeout the node refuses" --set node.raft.electionTimeoutMs=150
reject "cert-manager without an issuer" --set tls.certManager.enabled=true
reject "an unknown TLS mode" --set tls.mode=none
reject "edges nobody could connect to" --set auth.jwt.hs256SecretKey= --set edge.allowAnonymous=false

step "strict manifest validation"
"$VALIDATE" manifests -external-secret herald-credentials -external-secret herald-node-tls -external-secret herald-certs -external-secret herald-node-certs "$RENDER"/*.yaml "$OUT"/scale-*.yaml
# A node pod given another node's certificate (node-1's files swapped
# with node-2's) is caught at render time.
sed -e 's/key: node-1\.pem$/key: node-X.pem/' -e 's/key: node-2\.pem$/key: node-1.pem/' -e 's/key: node-X\.pem$/key: node-2.pem/' \
  "$RENDER/default.yaml" >"$OUT/swapped-certs.yaml"
cmp -s "$RENDER/default.yaml" "$OUT/swapped-certs.yaml" && fail "no node-<id>.pem item to swap in the default render"
if "$VALIDATE" manifests -external-secret herald-certs -external-secret herald-node-certs "$OUT/swapped-certs.yaml" >/dev/null 2>"$OUT/err"; then
  fail "the validator accepted a node pod mounting another node's certificate"
fi
echo "  rejected swapped node certificates: $(grep -m1 -o "pod [^ ]* (node [0-9]*) mounts [^ ]*" "$OUT/err")"
for f in helm/tests/broken/*.yaml; do
  if "$VALIDATE" manifests "$f" >/dev/null 2>"$OUT/err"; then
    fail "the validator accepted $f"
  fi
  echo "  rejected $(basename "$f"): $(head -n1 "$OUT/err" | cut -d: -f3- | cut -c1-100)"
done

step "alert rules and dashboard"
cmp -s deploy/prometheus/alerts.yaml "$CHART/files/alerts.yaml" ||
  fail "$CHART/files/alerts.yaml differs from deploy/prometheus/alerts.yaml (copy it)"
promtool check rules deploy/prometheus/alerts.yaml
promtool test rules deploy/prometheus/alerts.test.yaml
"$VALIDATE" manifests -external-secret herald-credentials -external-secret herald-node-tls -external-secret herald-certs -external-secret herald-node-certs -write-rules "$OUT/chart-rules.yaml" "$RENDER/ha.yaml" >/dev/null
promtool check rules "$OUT/chart-rules.yaml"
missing=()
for m in $(grep -ohE 'herald_[a-z0-9_]+' deploy/prometheus/alerts.yaml deploy/grafana/herald.json |
  sed -E 's/_(bucket|count|sum)$//' | sort -u); do
  grep -rqF "\"$m\"" node/src edge/src || missing+=("$m")
done
((${#missing[@]} == 0)) || fail "alerts or dashboard use metrics no code exports: ${missing[*]}"
echo "  every metric in the alerts and the dashboard is exported by node/ or edge/"

step "container image recipe builds every binary the chart runs"
for b in $(grep -hA1 -E '^ +command:$' "$RENDER"/*.yaml "$OUT"/scale-*.yaml | grep -oE '^ +- [a-z-]+$' | awk '{print $2}' | sort -u); do
  grep -qE -- "--bin $b( |$)" deploy/Dockerfile || fail "deploy/Dockerfile does not build $b"
  echo "  $b"
done

step "flags and environment against the binaries (bad ones are refused)"
sed 's/^            - --id-from-hostname$/&\n            - --no-such-flag/' "$RENDER/default.yaml" >"$OUT/bad-flag.yaml"
if "$VALIDATE" run -workdir "$OUT" -bin "$BIN" -namespace "$NAMESPACE" "$OUT/bad-flag.yaml" >/dev/null 2>"$OUT/err"; then
  fail "an unknown flag was accepted"
fi
grep -q 'no-such-flag is not a flag of' "$OUT/err" || { cat "$OUT/err"; fail "unexpected failure"; }
echo "  an unknown flag is refused"

step "rendered pods as local processes"
for name in $(printf '%s\n' "${!VALUES[@]}" | sort); do
  echo "  -- $name"
  if [[ $name == default ]]; then
    "$VALIDATE" run -workdir "$OUT" -bin "$BIN" -namespace "$NAMESPACE" \
      -scale-up "$OUT/scale-up.yaml" -scale-down "$OUT/scale-down.yaml" "$RENDER/default.yaml"
  else
    "$VALIDATE" run -workdir "$OUT" -bin "$BIN" -namespace "$NAMESPACE" "$RENDER/$name.yaml"
  fi
done

step "Prometheus scrapes a local cluster"
"$VALIDATE" scrape -workdir "$OUT" -bin "$BIN" -rules deploy/prometheus/alerts.yaml -dashboard deploy/grafana/herald.json

echo "== helm: all checks passed"
