#!/usr/bin/env bash
# Contour installed with Helm: apply this component to the chart's output.
#   helm install contour <contour chart> --post-renderer deploy/components/contour/helm-post-renderer.sh
# Helm pipes the rendered manifests in; kustomize applies the component; the result goes out.
# (Values alone cannot do it: Contour's charts hard-code the shutdown-manager's command and
# share its image with Contour itself.)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cat > "$work/rendered.yaml"
printf 'resources: [rendered.yaml]\ncomponents: [%s]\n' "$(realpath --relative-to="$work" "$here")" \
  > "$work/kustomization.yaml"
kubectl kustomize "$work"
