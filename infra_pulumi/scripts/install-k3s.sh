#!/bin/bash
# Install k3s at the pinned version as server (node1) or agent, then wait until the node is ready.
# Safe to re-run: an installed, running k3s of the same version is left alone.
# Usage: install-k3s.sh server|agent   (settings in /etc/xray-triage/k3s.env, or $XRAY_TRIAGE_K3S_ENV)
set -euo pipefail

role="$1"
# shellcheck source=/dev/null
. "${XRAY_TRIAGE_K3S_ENV:-/etc/xray-triage/k3s.env}"
: "${K3S_VERSION:?}" "${K3S_TOKEN:?}" "${NODE_IP:?}" "${NODE_NAME:?}" "${SERVER_IP:?}"

case "$role" in
  server) unit=k3s ;;
  agent) unit=k3s-agent ;;
  *) echo "role must be server or agent, not $role" >&2; exit 2 ;;
esac

retry() {
  # retry COUNT DELAY COMMAND...: the network and the API server come up at their own pace.
  local count="$1" delay="$2"
  shift 2
  for _ in $(seq 1 "$count"); do
    if "$@"; then
      return 0
    fi
    sleep "$delay"
  done
  echo "gave up after $count tries: $*" >&2
  return 1
}

installed_version() {
  if command -v k3s >/dev/null 2>&1; then
    k3s --version | awk 'NR == 1 {print $3}'
  fi
}

if [ "$(installed_version)" = "$K3S_VERSION" ] && systemctl is-active --quiet "$unit"; then
  echo "k3s $K3S_VERSION already running as $role"
else
  installer="$(mktemp)"
  trap 'rm -f "$installer"' EXIT
  # The installer of the pinned release, not the moving get.k3s.io one.
  retry 30 10 curl -sfL -o "$installer" "https://raw.githubusercontent.com/k3s-io/k3s/${K3S_VERSION/+/%2B}/install.sh"
  export INSTALL_K3S_VERSION="$K3S_VERSION" K3S_TOKEN
  if [ "$role" = server ]; then
    sh "$installer" server \
      --node-name "$NODE_NAME" --node-ip "$NODE_IP" --advertise-address "$NODE_IP" \
      --tls-san "$FLOATING_IP" --tls-san "$NODE_IP" \
      --disable traefik \
      --node-label "$DATA_NODE_LABEL=true" \
      --default-local-storage-path "$DATA_DIR/k3s-storage" \
      --write-kubeconfig-mode 0600
  else
    retry 120 5 curl -ks -o /dev/null "https://$SERVER_IP:6443/ping"
    K3S_URL="https://$SERVER_IP:6443" sh "$installer" agent --node-name "$NODE_NAME" --node-ip "$NODE_IP"
  fi
fi

if [ "$role" = server ]; then
  retry 60 5 k3s kubectl get node "$NODE_NAME" >/dev/null
  k3s kubectl wait --for=condition=Ready "node/$NODE_NAME" --timeout=600s
else
  retry 120 5 systemctl is-active --quiet k3s-agent
  retry 120 5 curl -sf -o /dev/null http://127.0.0.1:10248/healthz
fi
echo "k3s $role $NODE_NAME ready"
