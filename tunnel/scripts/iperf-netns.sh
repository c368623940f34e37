#!/usr/bin/env bash
# Quick side-by-side throughput check (not a benchmark suite): iperf3 over a plain veth
# pair, then through two wireseal-tunnel processes, optionally through wireguard-go, in
# network namespaces on this machine. Root only. Usage:
#   iperf-netns.sh [path/to/wireseal-tunnel] [seconds] [with-wggo]
set -euo pipefail
umask 077
BIN=${1:-target/release/wireseal-tunnel}
SECS=${2:-5}
WGGO=${3:-}
P=wsperf$$
A=$P-a; B=$P-b
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  ip netns del "$A" 2>/dev/null || true; ip netns del "$B" 2>/dev/null || true
  rm -rf "/tmp/$P"
}
trap cleanup EXIT
mkdir -p "/tmp/$P"
ip netns add "$A"; ip netns add "$B"
ip link add va netns "$A" type veth peer name vb netns "$B"
ip -n "$A" addr add 10.252.0.1/24 dev va; ip -n "$B" addr add 10.252.0.2/24 dev vb
for n in "$A" "$B"; do ip -n "$n" link set lo up; done
ip -n "$A" link set va up; ip -n "$B" link set vb up

tput() { # ns dst -> Mbit/s received
  ip netns exec "$B" iperf3 -s -1 -D -I "/tmp/$P/iperf.pid" >/dev/null
  for _ in $(seq 50); do ip netns exec "$B" ss -ltn | grep -q :5201 && break; sleep 0.1; done
  ip netns exec "$A" iperf3 -c "$1" -t "$SECS" -O 1 -J | python3 -c \
    'import json,sys; print(round(json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"]/1e6))'
}
up() { # kind iface
  local kind=$1 i=$2
  if [ "$kind" = wireseal ]; then
    ip netns exec "$A" "$BIN" --interface "${i}a" >/dev/null 2>&1 & PIDS+=($!)
    ip netns exec "$B" "$BIN" --interface "${i}b" >/dev/null 2>&1 & PIDS+=($!)
  else
    ip netns exec "$A" env LOG_LEVEL=error wireguard-go -f "${i}a" >/dev/null 2>&1 & PIDS+=($!)
    ip netns exec "$B" env LOG_LEVEL=error wireguard-go -f "${i}b" >/dev/null 2>&1 & PIDS+=($!)
  fi
  for _ in $(seq 100); do
    ip netns exec "$A" wg show "${i}a" >/dev/null 2>&1 && ip netns exec "$B" wg show "${i}b" >/dev/null 2>&1 && break
    sleep 0.1
  done
  wg genkey > "/tmp/$P/a"; wg genkey > "/tmp/$P/b"
  local pa pb; pa=$(wg pubkey < "/tmp/$P/a"); pb=$(wg pubkey < "/tmp/$P/b")
  ip netns exec "$A" wg set "${i}a" listen-port "$3" private-key "/tmp/$P/a" peer "$pb" allowed-ips "$4.2/32" endpoint "10.252.0.2:$3"
  ip netns exec "$B" wg set "${i}b" listen-port "$3" private-key "/tmp/$P/b" peer "$pa" allowed-ips "$4.1/32" endpoint "10.252.0.1:$3"
  ip -n "$A" addr add "$4.1/32" dev "${i}a"; ip -n "$B" addr add "$4.2/32" dev "${i}b"
  ip -n "$A" link set "${i}a" mtu 1420 up; ip -n "$B" link set "${i}b" mtu 1420 up
  ip -n "$A" route add "$4.2/32" dev "${i}a"; ip -n "$B" route add "$4.1/32" dev "${i}b"
  ip netns exec "$A" ping -c 1 -W 5 "$4.2" >/dev/null
}

veth=$(tput 10.252.0.2)
up wireseal ws 51830 10.253.0
ws=$(tput 10.253.0.2)
echo "veth ${veth} Mbit/s; wireseal-tunnel ${ws} Mbit/s; ratio $(python3 -c "print(round($ws/$veth,3))")"
if [ -n "$WGGO" ]; then
  up wggo wg 51840 10.254.0
  wg=$(tput 10.254.0.2)
  echo "wireguard-go ${wg} Mbit/s; ratio $(python3 -c "print(round($wg/$veth,3))"); wireseal/wireguard-go $(python3 -c "print(round($ws/$wg,3))")"
fi
