#!/bin/bash
# Install the pinned upstream releases the project's objects need: Knative Serving + Kourier,
# Knative Eventing + MT channel broker, cert-manager. kubectl apply makes re-runs safe.
# The Pulumi program fetches the kubeconfig only after this script wrote its ready file.
set -euo pipefail

# shellcheck source=/dev/null
. /etc/xray-triage/platform.env
: "${KNATIVE_SERVING_VERSION:?}" "${KNATIVE_EVENTING_VERSION:?}" "${KOURIER_VERSION:?}" "${CERT_MANAGER_VERSION:?}"

kubectl() {
  k3s kubectl "$@"
}

apply_url() {
  # The cluster may still be settling (webhooks not yet serving): retry each release file.
  local url="$1"
  for _ in $(seq 1 30); do
    if kubectl apply -f "$url"; then
      return 0
    fi
    sleep 10
  done
  echo "could not apply $url" >&2
  return 1
}

serving="https://github.com/knative/serving/releases/download/knative-$KNATIVE_SERVING_VERSION"
eventing="https://github.com/knative/eventing/releases/download/knative-$KNATIVE_EVENTING_VERSION"
kourier="https://github.com/knative/net-kourier/releases/download/knative-$KOURIER_VERSION"
cert_manager="https://github.com/cert-manager/cert-manager/releases/download/$CERT_MANAGER_VERSION"

apply_url "$serving/serving-crds.yaml"
apply_url "$eventing/eventing-crds.yaml"
kubectl wait --for=condition=Established crd --all --timeout=300s

apply_url "$serving/serving-core.yaml"
apply_url "$kourier/kourier.yaml"
apply_url "$eventing/eventing-core.yaml"
apply_url "$eventing/in-memory-channel.yaml"
apply_url "$eventing/mt-channel-broker.yaml"
apply_url "$cert_manager/cert-manager.yaml"
kubectl wait --for=condition=Established crd --all --timeout=300s

for namespace in knative-serving kourier-system knative-eventing cert-manager; do
  kubectl wait --for=condition=Available deployment --all -n "$namespace" --timeout=900s
done

mkdir -p /var/lib/xray-triage
date -u +%Y-%m-%dT%H:%M:%SZ > /var/lib/xray-triage/platform.ready
echo "platform ready"
