#!/usr/bin/env bash
# ws-1: the k3s server. flannel with the host-gw backend, so the CNI's routes
# between nodes are plain routes over eth1 and wireseal has to win by policy
# routing, as in the project's own labs. Traefik and the service load balancer
# are left out: the lab needs neither, and they cost memory.
set -euo pipefail
ip="$1"
token="$2"
curl -sfL https://get.k3s.io | INSTALL_K3S_VERSION="${K3S_VERSION:-}" INSTALL_K3S_EXEC="server \
    --node-ip $ip --flannel-iface eth1 --flannel-backend host-gw \
    --disable traefik --disable servicelb \
    --token $token --write-kubeconfig-mode 0600" sh -
until k3s kubectl get nodes >/dev/null 2>&1; do sleep 2; done
