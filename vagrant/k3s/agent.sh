#!/usr/bin/env bash
# ws-2, ws-3: k3s agents joining ws-1.
set -euo pipefail
ip="$1"
token="$2"
server="$3"
curl -sfL https://get.k3s.io | INSTALL_K3S_VERSION="${K3S_VERSION:-}" K3S_URL="https://$server:6443" \
    K3S_TOKEN="$token" INSTALL_K3S_EXEC="agent --node-ip $ip --flannel-iface eth1" sh -
