#!/bin/sh
# Entry point of the DaemonSet's `tunnel` container (installed in the image as
# /usr/local/bin/wireseal-tunnel-entrypoint).
#
# The userspace datapath (wireseal-tunnel) runs in a container of its own so it
# keeps forwarding while the agent container restarts. But a running tunnel owns
# a TUN device named like the agent's interface, and `wireseal agent
# --datapath auto` adopts such a device as the userspace datapath: a tunnel that
# always started would make every node userspace, even where the kernel has
# WireGuard. So this script starts the tunnel only when the agent will want it:
#
#   WIRESEAL_ENCRYPTION=ipsec    stay idle: IPsec mode is the kernel's alone
#   WIRESEAL_DATAPATH=userspace  start wireseal-tunnel
#   WIRESEAL_DATAPATH=kernel     stay idle
#   WIRESEAL_DATAPATH=auto       (default, as the agent's) ask the kernel the
#                                agent's question: can a wireguard link be
#                                created? Yes: idle. "Unknown device type" /
#                                "not supported": start wireseal-tunnel.
#                                Any other error: exit 1 (the container restarts
#                                and its log says why).
#
# With --check it is the container's liveness probe instead: a running tunnel
# (its UAPI socket exists) must answer `wireseal-tunnel --check` (every datapath
# thread made progress in the last 10 s); an idle container passes.
#
# Idle means: stay up doing nothing (so the pod stays Ready and the container is
# not restarted in a loop) and exit 0 on SIGTERM. wireseal-tunnel reads its
# settings from the same WIRESEAL_* variables (WIRESEAL_INTERFACE, required).
set -eu

me=wireseal-tunnel-entrypoint
datapath="${WIRESEAL_DATAPATH:-auto}"
encryption="${WIRESEAL_ENCRYPTION:-wireguard}"
interface="${WIRESEAL_INTERFACE:?set it to the interface the agent uses (its --interface)}"
# A scratch link name that never collides with the agent's interface.
probe=wireseal-probe

if [ "${1:-}" = "--check" ]; then
    if [ -S "${WIRESEAL_UAPI_DIR:-/var/run/wireguard}/$interface.sock" ]; then
        exec wireseal-tunnel --check
    fi
    exit 0
fi

idle() {
    echo "$me: $1; the agent uses the kernel's datapath, wireseal-tunnel is not started" >&2
    sleeper=
    trap 'if [ -n "$sleeper" ]; then kill "$sleeper" 2>/dev/null || true; fi; exit 0' TERM INT
    while :; do
        sleep 3600 &
        sleeper=$!
        wait "$sleeper" || true
    done
}

start_tunnel() {
    echo "$me: $1; starting wireseal-tunnel for $interface" >&2
    exec wireseal-tunnel
}

case "$encryption" in
    ipsec) idle "WIRESEAL_ENCRYPTION=ipsec" ;;
    wireguard) ;;
    *)
        echo "$me: WIRESEAL_ENCRYPTION=$encryption: expected wireguard or ipsec" >&2
        exit 1
        ;;
esac

case "$datapath" in
    userspace) start_tunnel "WIRESEAL_DATAPATH=userspace" ;;
    kernel) idle "WIRESEAL_DATAPATH=kernel" ;;
    auto) ;;
    *)
        echo "$me: WIRESEAL_DATAPATH=$datapath: expected auto, kernel or userspace" >&2
        exit 1
        ;;
esac

# A leftover from a probe killed half-way would make the next one fail with
# "File exists".
ip link delete "$probe" 2>/dev/null || true
if out=$(ip link add "$probe" type wireguard 2>&1); then
    ip link delete "$probe"
    idle "the kernel has WireGuard"
fi
case "$out" in
    # The errors the agent itself takes for "no WireGuard" (EOPNOTSUPP, ENODEV, ENOENT).
    *"Unknown device type"* | *"Operation not supported"* | *"No such device"* | *"No such file or directory"*)
        start_tunnel "the kernel has no WireGuard ($out)"
        ;;
esac
echo "$me: cannot tell whether the kernel has WireGuard: ip link add $probe type wireguard: $out" >&2
exit 1
