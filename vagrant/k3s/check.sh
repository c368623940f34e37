#!/usr/bin/env bash
# The checks and the benchmark of the Vagrant cluster: run on ws-1 as root once
# `vagrant up` has finished (all three nodes joined, wireseal deployed):
#
#   vagrant provision ws-1 --provision-with check
#   vagrant ssh ws-1 -c 'sudo /wireseal/vagrant/k3s/check.sh [--bench-seconds N] [--no-userspace]'
#
# Phases, each on the real DaemonSet from deploy/:
#   1. wireseal as installed (--datapath auto: kernel WireGuard on Debian 12):
#      status and handshakes on every node, pod-to-pod between all nodes, a wire
#      capture on ws-1's eth1 (only WireGuard, the canary never in clear), the
#      agent containers of ws-1 and ws-2 restarted under a 10/s ping (no loss),
#      iperf3 pod to pod.
#   2. uninstall (delete the DaemonSet, run deploy/cleanup/): nothing of wireseal
#      left on ws-1, and the same capture now sees the canary (so the capture can
#      fail), iperf3 over the CNI's plain routes.
#   3. the same as 1 with WIRESEAL_DATAPATH=userspace (the tunnel container), then
#      uninstall again.
#   4. reinstall as in 1, leaving the cluster as `vagrant up` did.
# Results: a summary on stdout and in /share/k3s-check/<time>/ (the shared folder,
# ../build/vagrant-share on the host) with every capture, ping and iperf3 output.
# Exit status 0 only when every check passed.
set -uo pipefail

REPO=/wireseal
NS=wireseal
LAB=wireseal-lab
NODES=(ws-1 ws-2 ws-3)
UNDERLAY=eth1
PORT=51830
TABLE=51830
CANARY='WIRESEAL-CANARY!'
CANARY_HEX=$(printf %s "$CANARY" | od -An -tx1 | tr -d ' \n')
BENCH_SECONDS=10
USERSPACE=1

while (($#)); do
    case "$1" in
        --bench-seconds) BENCH_SECONDS="$2"; shift 2 ;;
        --no-userspace) USERSPACE=0; shift ;;
        -h | --help) sed -n '2,24p' "$0"; exit 0 ;;
        *) echo "unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
[ "$(id -u)" = 0 ] || { echo "run as root (sudo)" >&2; exit 2; }

OUT=/share/k3s-check/$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$OUT"
kc() { k3s kubectl "$@"; }

RESULTS=()
FAILED=0
pass() { RESULTS+=("PASS  $(printf '%-52s' "$1") $2"); echo "PASS $1: $2"; }
fail() { RESULTS+=("FAIL  $(printf '%-52s' "$1") $2"); echo "FAIL $1: $2" >&2; FAILED=$((FAILED + 1)); }
die() { fail "$1" "$2"; summary; exit 1; }

BACKGROUND=()
# shellcheck disable=SC2317 # called by the EXIT trap
cleanup_background() { for pid in "${BACKGROUND[@]}"; do kill "$pid" 2>/dev/null; done; }
trap cleanup_background EXIT

summary() {
    {
        echo "== k3s lab summary ($(date -u +%FT%TZ), $(k3s --version | head -1), kernel $(uname -r))"
        printf '%s\n' "${RESULTS[@]}"
        if ((FAILED)); then echo "== FAIL ($FAILED failed)"; else echo "== PASS (${#RESULTS[@]} lines)"; fi
    } | tee "$OUT/summary.txt"
}

# ---------------------------------------------------------------- cluster state

declare -A POD IP AGENT

wait_nodes() {
    local ready=0
    for _ in $(seq 180); do
        ready=$(kc get nodes --no-headers 2>/dev/null | awk '$2 == "Ready"' | wc -l)
        [ "$ready" -ge "${#NODES[@]}" ] && return 0
        sleep 5
    done
    die "cluster: ${#NODES[@]} nodes Ready" "only $ready after 15 min"
}

lab_pods() {
    kc apply -f - <<EOF >/dev/null
apiVersion: v1
kind: Namespace
metadata:
  name: $LAB
---
apiVersion: apps/v1
kind: DaemonSet
metadata:
  name: lab-pod
  namespace: $LAB
spec:
  selector:
    matchLabels: {app: wireseal-lab-pod}
  template:
    metadata:
      labels: {app: wireseal-lab-pod}
    spec:
      tolerations: [{operator: Exists}]
      terminationGracePeriodSeconds: 1
      containers:
        - name: pod
          image: localhost/wireseal-lab-pod:1
          imagePullPolicy: Never
EOF
    kc -n "$LAB" rollout status daemonset/lab-pod --timeout=300s >/dev/null ||
        die "lab pods running" "see: k3s kubectl -n $LAB describe pods"
    local node name ip
    while read -r node name ip; do
        POD[$node]=$name
        IP[$node]=$ip
    done < <(kc -n "$LAB" get pods -l app=wireseal-lab-pod \
        -o jsonpath='{range .items[*]}{.spec.nodeName} {.metadata.name} {.status.podIP}{"\n"}{end}')
    for node in "${NODES[@]}"; do
        [ -n "${IP[$node]:-}" ] || die "lab pods running" "no lab pod on $node"
    done
}

agents() {
    local node name
    AGENT=()
    while read -r node name; do
        AGENT[$node]=$name
    done < <(kc -n "$NS" get pods -l app.kubernetes.io/component=agent \
        -o jsonpath='{range .items[*]}{.spec.nodeName} {.metadata.name}{"\n"}{end}')
}

restarts() { # pod container
    kc -n "$NS" get pod "$1" -o jsonpath="{.status.containerStatuses[?(@.name==\"$2\")].restartCount}"
}

pod_filter() { # tcpdump filter for every node's pod CIDR
    kc get nodes -o jsonpath='{range .items[*]}{.spec.podCIDR}{"\n"}{end}' |
        awk 'NF { printf "%snet %s", (n++ ? " or " : ""), $1 }'
}

in_pod() { local node="$1"; shift; kc -n "$LAB" exec "${POD[$node]}" -- "$@"; }
in_agent() { local node="$1"; shift; kc -n "$NS" exec "${AGENT[$node]}" -c agent -- "$@"; }

# ---------------------------------------------------------------- install

install_wireseal() { # "" (the manifests as they are) or a WIRESEAL_DATAPATH value
    # The admission policies too: the agents publish under them, as installed.
    kc apply -f "$REPO/deploy/kubernetes/00-namespace.yaml" -f "$REPO/deploy/kubernetes/10-rbac.yaml" \
        -f "$REPO/deploy/kubernetes/30-admission.yaml" >/dev/null
    if [ -z "$1" ]; then
        kc apply -f "$REPO/deploy/kubernetes/20-daemonset.yaml" >/dev/null
    else
        # Both containers read it: the agent's choice and the tunnel's entry point.
        kc set env --local -f "$REPO/deploy/kubernetes/20-daemonset.yaml" --containers='*' \
            "WIRESEAL_DATAPATH=$1" -o yaml | kc apply -f - >/dev/null
    fi
    kc -n "$NS" rollout status daemonset/wireseal --timeout=600s >/dev/null ||
        die "wireseal ${1:-as installed}: rollout" "see: k3s kubectl -n $NS describe pods"
    agents
}

uninstall_wireseal() { # label
    local label="$1" logs done_count
    kc delete -f "$REPO/deploy/kubernetes/20-daemonset.yaml" --wait=true --timeout=120s >/dev/null
    kc -n "$NS" wait --for=delete pod -l app.kubernetes.io/component=agent --timeout=120s >/dev/null 2>&1
    kc apply -f "$REPO/deploy/cleanup/wireseal-cleanup.yaml" >/dev/null
    if ! kc -n "$NS" rollout status daemonset/wireseal-cleanup --timeout=300s >/dev/null; then
        fail "$label: cleanup DaemonSet" "not done on every node in 5 min"
    fi
    logs=$(kc -n "$NS" logs -l app.kubernetes.io/component=cleanup -c cleanup --prefix --tail=-1)
    echo "$logs" >"$OUT/cleanup-$label.log"
    done_count=$(grep -c "wireseal is off this node" <<<"$logs")
    if [ "$done_count" -eq "${#NODES[@]}" ]; then
        pass "$label: wireseal cleanup on every node" "$done_count/${#NODES[@]}"
    else
        fail "$label: wireseal cleanup on every node" "$done_count/${#NODES[@]} (cleanup-$label.log)"
    fi
    kc delete -f "$REPO/deploy/cleanup/wireseal-cleanup.yaml" --wait=true --timeout=120s >/dev/null
    local left=()
    ip link show wireseal0 >/dev/null 2>&1 && left+=("link wireseal0")
    ip rule | grep -q "lookup $TABLE" && left+=("IPv4 rule")
    ip -6 rule 2>/dev/null | grep -q "lookup $TABLE" && left+=("IPv6 rule")
    [ -n "$(ip route show table "$TABLE" 2>/dev/null)" ] && left+=("routes in table $TABLE")
    if ((${#left[@]} == 0)); then
        pass "$label: ws-1 has nothing of wireseal left" "no link, rule or route"
    else
        fail "$label: ws-1 has nothing of wireseal left" "left: ${left[*]}"
    fi
}

# ---------------------------------------------------------------- checks

ping_all_pairs() { # label [pattern-free]
    local label="$1" a b bad=()
    for a in "${NODES[@]}"; do
        for b in "${NODES[@]}"; do
            [ "$a" = "$b" ] && continue
            in_pod "$a" ping -c 3 -i 0.2 -W 2 -p "$CANARY_HEX" "${IP[$b]}" >"$OUT/ping-$label-$a-$b.txt" 2>&1 ||
                bad+=("$a->$b")
        done
    done
    if ((${#bad[@]} == 0)); then
        pass "$label: pod to pod, all 6 directions" "3 canary pings each"
    else
        fail "$label: pod to pod, all 6 directions" "no answer: ${bad[*]}"
    fi
}

wait_encrypted() { # label: every agent reports 2/2 peers encrypted
    local label="$1" node status want="$((${#NODES[@]} - 1))/$((${#NODES[@]} - 1)) peers encrypted"
    local start=$SECONDS
    for node in "${NODES[@]}"; do
        while :; do
            # Traffic starts handshakes at once (the agent also asks for them).
            in_pod "$node" ping -c 1 -W 1 "${IP[ws-1]}" >/dev/null 2>&1
            status=$(in_agent "$node" wireseal status 2>&1)
            grep -q "$want" <<<"$status" && break
            if ((SECONDS - start > 180)); then
                echo "$status" >"$OUT/status-$label-$node.txt"
                die "$label: every node reports $want" "$node did not within 180 s (status-$label-$node.txt)"
            fi
            sleep 3
        done
    done
    pass "$label: every node reports $want" "$((SECONDS - start)) s after the rollout"
}

per_node() { # label datapath
    local label="$1" datapath="$2" node status hs kind now old fresh
    for node in "${NODES[@]}"; do
        status=$(in_agent "$node" wireseal status 2>&1)
        echo "$status" >"$OUT/status-$label-$node.txt"
        if grep -q "datapath $datapath " <<<"$status"; then
            pass "$label: $node wireseal status" "$(head -1 <<<"$status" | awk '{print $3, $4}'), $(grep 'peers encrypted' <<<"$status")"
        else
            fail "$label: $node wireseal status" "expected datapath $datapath: $(head -1 <<<"$status")"
        fi
        hs=$(in_agent "$node" sh -c 'wg show wireseal0 latest-handshakes && date +%s' 2>&1)
        echo "$hs" >"$OUT/wg-$label-$node.txt"
        now=$(tail -1 <<<"$hs")
        fresh=$(head -n -1 <<<"$hs" | awk -v now="$now" '$2 > 0 && now - $2 < 180' | wc -l)
        old=$(head -n -1 <<<"$hs" | wc -l)
        if [ "$fresh" -eq "$((${#NODES[@]} - 1))" ]; then
            pass "$label: $node wg show: handshakes < 180 s" "$fresh of $old peers"
        else
            fail "$label: $node wg show: handshakes < 180 s" "$fresh of $old peers (wg-$label-$node.txt)"
        fi
        kind=$(in_agent "$node" ip -d link show wireseal0 2>&1 | awk 'NR == 3 { print $1 }')
        case "$datapath:$kind" in
            kernel:wireguard | userspace:tun) pass "$label: $node wireseal0 link kind" "$kind" ;;
            *) fail "$label: $node wireseal0 link kind" "expected for $datapath: got '$kind'" ;;
        esac
    done
}

capture() { # label expect(encrypted|plain)
    local label="$1" expect="$2"
    local pcap="$OUT/wire-$label.pcap" filter pid b
    filter=$(pod_filter)
    tcpdump -i "$UNDERLAY" -nn -U -s 0 -w "$pcap" "($filter) or udp port $PORT" 2>"$pcap.log" &
    pid=$!
    BACKGROUND+=("$pid")
    sleep 2
    # Only what crosses ws-1's eth1 is visible here: pairs with ws-1 at one end.
    for b in ws-2 ws-3; do
        in_pod ws-1 ping -c 5 -i 0.2 -W 2 -p "$CANARY_HEX" "${IP[$b]}" >/dev/null 2>&1
        in_pod "$b" ping -c 5 -i 0.2 -W 2 -p "$CANARY_HEX" "${IP[ws-1]}" >/dev/null 2>&1
    done
    sleep 1
    kill -INT "$pid"
    wait "$pid" 2>/dev/null
    local plain wg data udp other canary=0
    plain=$(tcpdump -r "$pcap" -nn "$filter" 2>/dev/null | wc -l)
    udp=$(tcpdump -r "$pcap" -nn "udp port $PORT" 2>/dev/null | wc -l)
    # A WireGuard message: type 1-4, then three zero bytes.
    wg=$(tcpdump -r "$pcap" -nn "udp port $PORT and udp[8] >= 1 and udp[8] <= 4 and udp[9] = 0 and udp[10] = 0 and udp[11] = 0" 2>/dev/null | wc -l)
    data=$(tcpdump -r "$pcap" -nn "udp port $PORT and udp[8] = 4 and udp[9] = 0 and udp[10] = 0 and udp[11] = 0" 2>/dev/null | wc -l)
    other=$((udp - wg))
    grep -a -F -q "$CANARY" "$pcap" && canary=1
    if [ "$expect" = encrypted ]; then
        if [ "$plain" -eq 0 ] && [ "$other" -eq 0 ] && [ "$data" -gt 0 ]; then
            pass "$label: wire: only WireGuard between pods" "$wg WireGuard ($data data), 0 pod-addressed, 0 other on UDP $PORT"
        else
            fail "$label: wire: only WireGuard between pods" "$plain pod-addressed packets, $wg WireGuard ($data data), $other other on UDP $PORT"
        fi
        if [ "$canary" -eq 0 ]; then
            pass "$label: wire: canary never in clear" "0 hits in $(basename "$pcap")"
        else
            fail "$label: wire: canary never in clear" "found in $(basename "$pcap")"
        fi
    else
        if [ "$plain" -gt 0 ] && [ "$canary" -eq 1 ]; then
            pass "$label: wire: the capture sees plaintext" "$plain pod-addressed packets, canary present (so the checks can fail)"
        else
            fail "$label: wire: the capture sees plaintext" "$plain pod-addressed packets, canary $canary: the capture cannot tell"
        fi
    fi
}

host_to_pod() { # label: the node's own packets to a pod on another node
    local label="$1" src
    # The agent gives them a source inside ws-1's pod CIDR (flannel's cni0
    # address, there once a pod runs), which ws-2's allowed IPs accept.
    src=$(ip route get "${IP[ws-2]}" 2>/dev/null | grep -o 'src [0-9.]*' || true)
    if ping -c 3 -W 2 "${IP[ws-2]}" >"$OUT/host-to-pod-$label.txt" 2>&1; then
        pass "$label: ws-1 host network -> pod on ws-2" "answers, ${src:-no src}"
    else
        fail "$label: ws-1 host network -> pod on ws-2" "no answer, ${src:-no src} (see 'host src' in wireseal status)"
    fi
}

restart_agents() { # label: ws-1's agent container stopped by the runtime, ws-2's SIGTERMed
    local label="$1" a=ws-1 b=ws-2 pid id ra rb ta tb start back=""
    ra=$(restarts "${AGENT[$a]}" agent); rb=$(restarts "${AGENT[$b]}" agent)
    ta=$(restarts "${AGENT[$a]}" tunnel); tb=$(restarts "${AGENT[$b]}" tunnel)
    in_pod "$a" ping -i 0.1 -c 400 -W 1 "${IP[$b]}" >"$OUT/restart-$label.ping" 2>&1 &
    pid=$!
    BACKGROUND+=("$pid")
    start=$SECONDS
    sleep 3
    # As after a crash: the runtime stops the container, the kubelet starts it again.
    id=$(k3s crictl ps -q --name '^agent$' --label "io.kubernetes.pod.namespace=$NS")
    k3s crictl stop "$id" >/dev/null
    kc -n "$NS" exec "${AGENT[$b]}" -c agent -- sh -c 'kill -TERM 1' >/dev/null 2>&1
    for _ in $(seq 60); do
        if [ "$(restarts "${AGENT[$a]}" agent)" -gt "$ra" ] && [ "$(restarts "${AGENT[$b]}" agent)" -gt "$rb" ] &&
            kc -n "$NS" wait --for=condition=Ready pod "${AGENT[$a]}" "${AGENT[$b]}" --timeout=1s >/dev/null 2>&1; then
            back=$((SECONDS - start))
            break
        fi
        sleep 1
    done
    wait "$pid"
    local summary
    summary=$(grep 'packet loss' "$OUT/restart-$label.ping")
    if [ -z "$back" ]; then
        fail "$label: agent restart: both agents back" "not restarted and Ready within 60 s"
    elif ((back >= 40)); then
        fail "$label: agent restart: no packet lost" "agents back after $back s, after the 40 s ping ended"
    elif grep -q ' 0% packet loss' <<<"$summary"; then
        pass "$label: agent restart: no packet lost" "$summary (ping at 10/s; both agents back after $back s)"
    else
        fail "$label: agent restart: no packet lost" "$summary (restart-$label.ping)"
    fi
    if [ "$(restarts "${AGENT[$a]}" tunnel)" = "$ta" ] && [ "$(restarts "${AGENT[$b]}" tunnel)" = "$tb" ]; then
        pass "$label: agent restart: tunnel containers untouched" "restart counts unchanged"
    else
        fail "$label: agent restart: tunnel containers untouched" "a tunnel container restarted too"
    fi
}

BENCH=()
bench() { # label
    local label="$1"
    local out="$OUT/iperf3-$label.txt" rate
    in_pod ws-1 iperf3 -c "${IP[ws-2]}" -t "$BENCH_SECONDS" -f m >"$out" 2>&1
    rate=$(awk '/receiver/ { for (i = 2; i <= NF; i++) if ($i ~ /bits\/sec$/) print $(i - 1), $i }' "$out")
    if [ -n "$rate" ]; then
        pass "$label: iperf3 ws-1 pod -> ws-2 pod, ${BENCH_SECONDS} s" "$rate"
        BENCH+=("$(printf '%-28s %s' "$label" "$rate")")
    else
        fail "$label: iperf3 ws-1 pod -> ws-2 pod" "no result ($(basename "$out"))"
    fi
}

phase_wireseal() { # label datapath
    local label="$1" datapath="$2"
    wait_encrypted "$label"
    per_node "$label" "$datapath"
    ping_all_pairs "$label"
    capture "$label" encrypted
    host_to_pod "$label"
    restart_agents "$label"
    bench "$label"
}

# ---------------------------------------------------------------- run

echo "results in $OUT"
wait_nodes
lab_pods
install_wireseal ""
phase_wireseal kernel kernel

uninstall_wireseal uninstall
ping_all_pairs plain
capture plain plain
bench plain

if ((USERSPACE)); then
    install_wireseal userspace
    phase_wireseal userspace userspace
    uninstall_wireseal uninstall-userspace
fi

install_wireseal ""
pass "reinstalled as deploy/kubernetes/ has it" "$(kc -n "$NS" get daemonset wireseal --no-headers | awk '{print $4 "/" $2 " ready"}')"

{
    echo "== iperf3, TCP, ${BENCH_SECONDS} s, ws-1 pod -> ws-2 pod (single runs)"
    printf '%s\n' "${BENCH[@]}"
} | tee "$OUT/bench.txt"
summary
exit $((FAILED > 0))
