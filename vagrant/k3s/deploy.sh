#!/usr/bin/env bash
# ws-1, after the server is up: wireseal from deploy/kubernetes/, exactly as a
# user installs it. The pods on ws-2 and ws-3 start when those nodes join (their
# image is preloaded). check.sh waits for all three.
set -euo pipefail
k3s kubectl wait --for=condition=Ready node/ws-1 --timeout=300s
k3s kubectl apply -f /wireseal/deploy/kubernetes/
k3s kubectl -n wireseal rollout status daemonset/wireseal --timeout=300s
k3s kubectl -n wireseal get pods -o wide
