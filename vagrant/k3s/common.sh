#!/usr/bin/env bash
# Every node, first: the host tools the provisioning and the checks use.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
# curl: the k3s installer. tcpdump: the wire capture on ws-1 (check.sh).
# wireguard-tools: `wg show wireseal0` on the host, for either datapath.
apt-get install -y -q --no-install-recommends curl ca-certificates iproute2 tcpdump wireguard-tools
