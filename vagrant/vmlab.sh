#!/usr/bin/env bash
# Commands for the guests are single-quoted on purpose: they expand inside the VM.
# shellcheck disable=SC2016
# wireseal VM lab: proves the agent's kernel datapaths (WireGuard, then IPsec) in
# three small qemu VMs.
#
#   sudo vagrant/vmlab.sh [--no-install] [--bench [--rounds N] [--bench-out FILE]]
#                         [--timeout SECONDS] [--keep-logs]
#
# As root on Debian 12 (bookworm). It installs its tools from Debian's packages,
# fetches Debian's cloud kernel (linux-image-cloud-amd64), builds a cached base
# initramfs (busybox, bash, iproute2, wireguard-tools, iputils-ping, iperf3, kmod
# and the kernel modules the lab needs) under build/vmlab/, appends a per-run cpio
# with the workspace's debug `wireseal` binary, the netlink crate's kernel WireGuard
# tests and a kubeconfig, and boots three VMs on a bridge inside a network namespace
# created for the run, where the fake apiserver also runs. node-1 and node-2 form
# the cluster; node-3 first runs the kernel tests (5,000 peers), then joins and
# leaves it. The end-to-end assertions run against kernel WireGuard, then the
# agents run again in IPsec mode (ESP) through the same kind of checks; all end
# in a PASS/FAIL summary; the exit status is non-zero on failure.
# Everything it starts is stopped at the end, on failure, on Ctrl-C and on timeout.
#
# See vagrant/README.md for the topology and the reasons behind it.

set -euo pipefail
shopt -s inherit_errexit

SELF_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$SELF_DIR/.." && pwd)
WORK="$REPO/build/vmlab"
RUN="$WORK/run"
BIN_DIR="${WIRESEAL_BIN_DIR:-$REPO/target/debug}"
TUNNEL_BIN="${WIRESEAL_TUNNEL_BIN:-$BIN_DIR/wireseal-tunnel}"

# The lab's addresses. The underlay is a benchmarking range (RFC 2544), the pod
# CIDRs are flannel's defaults.
UNDERLAY_PREFIX=198.19.0
HOST_IP="$UNDERLAY_PREFIX.1"
API_PORT=6443
WG_PORT=51830
WG_TABLE=51830
WG_IFACE=wireseal0
NODES=(1 2 3)     # every VM
ACTIVE=(1 2)      # the nodes in the cluster, running an agent
CANARY='WIRESEAL-CANARY!'
VM_MEM=256
ROTATION_LEAD=20  # --key-rotation-lead of the agents: the scheduled rotation (7b)

INSTALL=1
BENCH=0
ROUNDS=3
BENCH_OUT=""
TIME_LIMIT=600
KEEP_LOGS=0

NS="wsv-$$"
BRIDGE=wsv-br0
PIDS=()          # every background process this run started
declare -A QEMU_PID CTL_FD
RESULTS=()
FAILED=0
SEQ=0
OUT=""
RC=0
T0=$(date +%s)

usage() {
    sed -n "4,18p" "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
    cat <<'EOF'
Options:
  --no-install      do not apt-get install missing tools (fail naming them instead)
  --bench           also measure pod to pod (iperf3 TCP and UDP, ping) in alternating
                    rounds: plain, kernel WireGuard, wireseal's userspace datapath
  --rounds N        rounds of --bench (default 3); each runs the three in a rotated order
  --bench-out FILE  write the --bench samples and medians there as JSON
  --timeout SECONDS bound on the whole run (default 600)
  --keep-logs       keep build/vmlab/run/ even when everything passes
Environment:
  WIRESEAL_BIN_DIR  where wireseal, wireseal-tunnel and fake-apiserver are (target/debug)
  WIRESEAL_TUNNEL_BIN  the wireseal-tunnel --bench runs (e.g. target/release/wireseal-tunnel
                    from 'cargo build --release -p wireseal-tunnel'; not built for the host CPU)
  WIRESEAL_KERNEL_TESTS  the netlink crate's kernel_wireguard test binary (default: built
                    with 'cargo test -p wireseal-netlink --test kernel_wireguard --no-run')
  WIRESEAL_KERNEL_XFRM_TESTS  its kernel_xfrm test binary (default: built the same way)
  VMLAB_HOLD        seconds to keep the VMs up after a failure, for a look inside
EOF
}

while [ $# -gt 0 ]; do
    case "$1" in
        --no-install) INSTALL=0 ;;
        --bench) BENCH=1 ;;
        --rounds)
            [ $# -ge 2 ] || { echo "vmlab: --rounds needs a number" >&2; exit 2; }
            ROUNDS=$2
            shift
            ;;
        --bench-out)
            [ $# -ge 2 ] || { echo "vmlab: --bench-out needs a file name" >&2; exit 2; }
            BENCH_OUT=$2
            shift
            ;;
        --timeout)
            [ $# -ge 2 ] || { echo "vmlab: --timeout needs a number of seconds" >&2; exit 2; }
            TIME_LIMIT=$2
            shift
            ;;
        --keep-logs) KEEP_LOGS=1 ;;
        -h | --help) usage; exit 0 ;;
        *) echo "vmlab: unknown argument '$1' (see --help)" >&2; exit 2 ;;
    esac
    shift
done
[[ "$TIME_LIMIT" =~ ^[0-9]+$ ]] || { echo "vmlab: --timeout '$TIME_LIMIT' is not a number of seconds" >&2; exit 2; }
[[ "$ROUNDS" =~ ^[1-9][0-9]*$ ]] || { echo "vmlab: --rounds '$ROUNDS' is not a positive number" >&2; exit 2; }

say() { printf '[vmlab %4ds] %s\n' "$(($(date +%s) - T0))" "$*"; }
die() {
    printf '[vmlab %4ds] ERROR: %s\n' "$(($(date +%s) - T0))" "$*" >&2
    hold
    exit 1
}

# VMLAB_HOLD=SECONDS keeps the VMs up after a failure, for a look inside:
#   printf 'CMD\n' >build/vmlab/run/vm1.dbg.in; tail build/vmlab/run/vm1.dbg.log
# (the rescue shell on ttyS1; vm1.ctl.* is the control shell, on virtio-serial)
# Creating build/vmlab/run/release ends the wait.
hold() {
    [ -n "${VMLAB_HOLD:-}" ] && [ ${#QEMU_PID[@]} -gt 0 ] || return 0
    echo "vmlab: holding the VMs up to $VMLAB_HOLD s (touch $RUN/release to end)" >&2
    local end=$(($(date +%s) + VMLAB_HOLD))
    while [ ! -e "$RUN/release" ] && [ "$(date +%s)" -lt "$end" ]; do sleep 1; done
}

# ---------------------------------------------------------------- teardown ----

teardown() {
    local rc=$?
    trap - EXIT INT TERM USR1
    set +e
    local fd
    for fd in "${CTL_FD[@]}"; do
        exec {fd}>&-
    done
    # Reverse order: VMs, captures and the apiserver, then the readers.
    local i pid
    for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
        pid=${PIDS[i]}
        kill "$pid" 2>/dev/null
    done
    for pid in "${PIDS[@]}"; do
        for _ in 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20; do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null
        wait "$pid" 2>/dev/null
    done
    if ip netns list 2>/dev/null | grep -qw "^$NS"; then
        ip netns del "$NS"
    fi
    if [ "$rc" -ne 0 ] && [ -d "$RUN" ]; then
        echo "vmlab: logs of this run are in $RUN (console, control shell, agents, apiserver)" >&2
    elif [ "$KEEP_LOGS" -eq 0 ] && [ -d "$RUN" ]; then
        rm -rf "$RUN"
    fi
    exit "$rc"
}

on_signal() { # on_signal WHAT EXIT-STATUS
    say "$1: stopping every VM and process of this run"
    exit "$2"
}

# A watchdog bounds the whole run: it sends USR1 to this shell, whose trap tears
# down and exits with 124, as timeout(1) does.
start_watchdog() {
    (
        sleep "$TIME_LIMIT" &
        sp=$!
        trap 'kill "$sp" 2>/dev/null; exit 0' TERM
        wait "$sp"
        echo "[vmlab] ERROR: the run exceeded --timeout $TIME_LIMIT s" >&2
        kill -USR1 $$
    ) &
    PIDS+=($!)
}

# ------------------------------------------------------------------- setup ----

need_root() {
    [ "$(id -u)" -eq 0 ] || die "run as root (network namespace, taps, bridge): sudo $0"
}

# tool → Debian package
declare -A TOOL_PKG=(
    [qemu-system-x86_64]=qemu-system-x86 [busybox]=busybox-static [ip]=iproute2
    [wg]=wireguard-tools [iperf3]=iperf3 [ping]=iputils-ping [kmod]=kmod [depmod]=kmod
    [cpio]=cpio [lz4]=lz4 [tcpdump]=tcpdump [bash]=bash [dpkg-deb]=dpkg
    [apt-get]=apt [update-ca-certificates]=ca-certificates [objcopy]=binutils [gzip]=gzip [sha256sum]=coreutils [ldd]=libc-bin
)

install_tools() {
    local missing=() pkgs=() tool
    for tool in "${!TOOL_PKG[@]}"; do
        command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
    done
    # busybox must be the static build: it runs in the guest without libraries.
    if command -v busybox >/dev/null 2>&1 && ldd "$(command -v busybox)" >/dev/null 2>&1; then
        missing+=(busybox)
    fi
    [ ${#missing[@]} -eq 0 ] && return 0
    for tool in "${missing[@]}"; do pkgs+=("${TOOL_PKG[$tool]}"); done
    mapfile -t pkgs < <(printf '%s\n' "${pkgs[@]}" | sort -u)
    if [ "$INSTALL" -eq 0 ]; then
        die "missing tools: ${missing[*]} (apt-get install --no-install-recommends ${pkgs[*]})"
    fi
    say "installing ${pkgs[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${pkgs[@]}" >"$WORK/apt.log" 2>&1 ||
        { apt-get update >>"$WORK/apt.log" 2>&1 &&
            DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${pkgs[@]}" >>"$WORK/apt.log" 2>&1; } ||
        die "apt-get install ${pkgs[*]} failed; see $WORK/apt.log"
}

check_binaries() {
    local b
    for b in wireseal fake-apiserver; do
        [ -x "$BIN_DIR/$b" ] || die "$BIN_DIR/$b is missing: run 'cargo build --bins' in $REPO (or set WIRESEAL_BIN_DIR)"
    done
    if bench_userspace && [ ! -x "$TUNNEL_BIN" ]; then
        die "$TUNNEL_BIN is missing (--bench runs the userspace datapath): cargo build --bins, or set WIRESEAL_TUNNEL_BIN"
    fi
    # Nodes join and leave the cluster through the apiserver, as kubelets and
    # operators do it.
    command -v kubectl >/dev/null 2>&1 || die "kubectl is missing (the lab creates and deletes a Node with it)"
    locate_kernel_tests
}

# The netlink crate's kernel WireGuard tests, as a test binary to run in a VM.
locate_kernel_tests() {
    KERNEL_TESTS=${WIRESEAL_KERNEL_TESTS:-}
    KERNEL_XFRM_TESTS=${WIRESEAL_KERNEL_XFRM_TESTS:-}
    if [ -z "$KERNEL_TESTS" ] || [ -z "$KERNEL_XFRM_TESTS" ]; then
        command -v cargo >/dev/null 2>&1 ||
            die "cargo is missing: it builds the kernel tests (or set WIRESEAL_KERNEL_TESTS and WIRESEAL_KERNEL_XFRM_TESTS)"
        say "building the kernel tests (cargo test -p wireseal-netlink --test kernel_wireguard --test kernel_xfrm --no-run)"
        local built
        built=$(cd "$REPO" && cargo test --locked -p wireseal-netlink --test kernel_wireguard --test kernel_xfrm \
            --no-run --message-format=json 2>"$WORK/kernel-tests-build.log") ||
            die "building the kernel tests failed; see $WORK/kernel-tests-build.log"
        [ -n "$KERNEL_TESTS" ] ||
            KERNEL_TESTS=$(sed -n 's/.*"name":"kernel_wireguard".*"executable":"\([^"]*\)".*/\1/p' <<<"$built" | tail -n1)
        [ -n "$KERNEL_XFRM_TESTS" ] ||
            KERNEL_XFRM_TESTS=$(sed -n 's/.*"name":"kernel_xfrm".*"executable":"\([^"]*\)".*/\1/p' <<<"$built" | tail -n1)
    fi
    [[ -n "$KERNEL_TESTS" && -x "$KERNEL_TESTS" ]] ||
        die "no kernel WireGuard test binary (${KERNEL_TESTS:-cargo named none}); see $WORK/kernel-tests-build.log"
    [[ -n "$KERNEL_XFRM_TESTS" && -x "$KERNEL_XFRM_TESTS" ]] ||
        die "no kernel IPsec test binary (${KERNEL_XFRM_TESTS:-cargo named none}); see $WORK/kernel-tests-build.log"
}

# Resolves the cloud kernel from the metapackage, downloads and unpacks it once,
# extracts an uncompressed vmlinux (PVH entry: no decompression under TCG).
fetch_kernel() {
    local pkg deb
    pkg=$(apt-cache depends linux-image-cloud-amd64 2>/dev/null | awk '/Depends: linux-image-/ {print $2; exit}')
    if [ -z "$pkg" ]; then
        apt-get update >"$WORK/apt.log" 2>&1 || die "apt-get update failed; see $WORK/apt.log"
        pkg=$(apt-cache depends linux-image-cloud-amd64 2>/dev/null | awk '/Depends: linux-image-/ {print $2; exit}')
    fi
    [ -n "$pkg" ] || die "cannot resolve linux-image-cloud-amd64 to a kernel package (apt-cache depends)"
    KVER=${pkg#linux-image-}
    deb=$(find "$WORK" -maxdepth 1 -name "${pkg}_*_amd64.deb" | head -n1)
    if [ -z "$deb" ]; then
        say "downloading $pkg"
        (cd "$WORK" && apt-get download "$pkg" >"$WORK/download.log" 2>&1) ||
            die "apt-get download $pkg failed; see $WORK/download.log"
        deb=$(find "$WORK" -maxdepth 1 -name "${pkg}_*_amd64.deb" | head -n1)
        [ -n "$deb" ] || die "apt-get download $pkg left no .deb in $WORK"
    fi
    KDEB=$deb
    KDIR="$WORK/kernel-$KVER"
    # Only the current kernel stays cached.
    find "$WORK" -maxdepth 1 \( -name 'linux-image-*.deb' ! -name "$(basename "$deb")" \
        -o -name 'kernel-*' ! -name "kernel-$KVER" \) -exec rm -rf {} +
    if [ ! -f "$KDIR/.done" ]; then
        say "unpacking $(basename "$deb")"
        rm -rf "$KDIR"
        mkdir -p "$KDIR"
        dpkg-deb -x "$deb" "$KDIR/root" || die "dpkg-deb -x $deb failed"
        depmod -b "$KDIR/root" "$KVER" || die "depmod -b $KDIR/root $KVER failed"
        extract_vmlinux "$KDIR/root/boot/vmlinuz-$KVER" "$KDIR/vmlinux"
        touch "$KDIR/.done"
    fi
    KERNEL="$KDIR/vmlinux"
    [ -s "$KERNEL" ] || KERNEL="$KDIR/root/boot/vmlinuz-$KVER"
}

# Debian's 6.1 kernels are LZ4-compressed: find the first LZ4 frame and unpack it.
# Falls back to the bzImage (qemu decompresses it, about a second slower).
extract_vmlinux() {
    local src=$1 dst=$2 off
    off=$(LC_ALL=C grep -obUaP '\x02\x21\x4c\x18' "$src" | head -n1 | cut -d: -f1 || true)
    if [ -n "$off" ]; then
        tail -c +"$((off + 1))" "$src" | lz4 -dc >"$dst" 2>/dev/null || true
    fi
    if [ "$(head -c 4 "$dst" 2>/dev/null | od -An -c | tr -d ' ')" != '177ELF' ]; then
        say "no LZ4 vmlinux inside $(basename "$src"); booting the compressed image"
        rm -f "$dst"
    fi
}

# Copies a binary and the libraries ldd names into the root $1, at their paths.
copy_with_libs() {
    local root=$1 bin=$2 dest=${3:-$2} lib
    mkdir -p "$root$(dirname "$dest")"
    cp -L "$bin" "$root$dest"
    # /lib is a symlink to usr/lib in the guest; an appended archive holding a real
    # /lib directory would replace it, so libraries go to /usr/lib directly.
    while read -r lib; do
        local to=$lib
        [[ "$lib" == /lib/* ]] && to=/usr$lib
        [ -e "$root$to" ] && continue
        mkdir -p "$root$(dirname "$to")"
        cp -L "$lib" "$root$to"
    done < <(ldd "$bin" 2>/dev/null | awk '/=> \// {print $3} /^\t\/lib/ {print $1}')
}

GUEST_TOOLS=(bash ip wg ping iperf3 kmod)
CA_FILE=/etc/ssl/certs/ca-certificates.crt
GUEST_MODULES=(virtio_pci virtio_net virtio_rng virtio_console veth wireguard tun
    # IPsec: ESP, the XFRM netlink API and interfaces, and the crypto that
    # rfc4106(gcm(aes)) and the kernel's IV generation load by name (drbg and
    # sha512, or SA creation fails to initialise its crypto).
    esp4 esp6 xfrm_user xfrm_interface drbg sha512_generic gcm ghash_generic ctr seqiv echainiv)
# Loaded on the VM that runs the netlink crate's IPsec tests.
IPSEC_MODULES="esp4 esp6 xfrm_user xfrm_interface drbg sha512_generic gcm ghash_generic ctr seqiv echainiv"

# The base initramfs: rebuilt only when the kernel, the guest tools, the module
# list or guest-init.sh change.
build_base() {
    local manifest stamp root t m
    manifest=$(
        echo "layout 1"  # bump when build_base itself changes
        echo "kernel $(basename "$KDEB")"
        echo "modules ${GUEST_MODULES[*]}"
        sha256sum "$SELF_DIR/guest-init.sh" "$(readlink -f "$(command -v busybox)")" "$CA_FILE"
        for t in "${GUEST_TOOLS[@]}"; do sha256sum "$(readlink -f "$(command -v "$t")")"; done
    )
    stamp=$(sha256sum <<<"$manifest" | cut -c1-16)
    BASE="$WORK/base-$stamp.cpio.lz4"
    [ -s "$BASE" ] && { say "base initramfs cached: $(basename "$BASE")"; return 0; }
    say "building the base initramfs"
    root="$WORK/base-root"
    rm -rf "$root"
    mkdir -p "$root"/{usr/bin,usr/sbin,usr/lib/x86_64-linux-gnu,lib64,bb,etc,proc,sys,dev,run,tmp,var}
    ln -s usr/bin "$root/bin"
    ln -s usr/sbin "$root/sbin"
    ln -s usr/lib "$root/lib"
    ln -s ../run "$root/var/run"
    cp "$(readlink -f "$(command -v busybox)")" "$root/usr/bin/busybox"
    for t in $("$root/usr/bin/busybox" --list); do ln -s ../usr/bin/busybox "$root/bb/$t"; done
    for t in "${GUEST_TOOLS[@]}"; do
        copy_with_libs "$root" "$(readlink -f "$(command -v "$t")")" "/usr/bin/$t"
    done
    for t in modprobe insmod rmmod lsmod depmod modinfo; do ln -s ../bin/kmod "$root/usr/sbin/$t"; done
    ln -s ../bin/ip "$root/usr/sbin/ip"
    # Modules and their dependencies, as modules.dep lists them.
    for m in "${GUEST_MODULES[@]}"; do
        modprobe -d "$KDIR/root" -S "$KVER" --show-depends "$m" ||
            die "module $m (or a dependency) is missing from $(basename "$KDEB")"
    done | awk '$1 == "insmod" {print $2}' | sort -u | while read -r m; do
        t=${m#"$KDIR/root"}
        mkdir -p "$root$(dirname "$t")"
        cp "$m" "$root$t"
    done
    cp "$KDIR/root/lib/modules/$KVER/modules.builtin"* "$KDIR/root/lib/modules/$KVER/modules.order" \
        "$root/lib/modules/$KVER/"
    depmod -b "$root" "$KVER" || die "depmod of the initramfs modules failed"
    install -m 0755 "$SELF_DIR/guest-init.sh" "$root/init"
    # The agent's HTTP client loads the system's CA store even for plain HTTP.
    mkdir -p "$root/etc/ssl/certs"
    cp "$CA_FILE" "$root/etc/ssl/certs/ca-certificates.crt"
    printf 'root:x:0:0:root:/root:/usr/bin/bash\n' >"$root/etc/passwd"
    printf 'root:x:0:\n' >"$root/etc/group"
    (cd "$root" && find . | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet) | lz4 -l -9 -q >"$BASE.tmp" ||
        die "packing the base initramfs failed"
    mv "$BASE.tmp" "$BASE"
    find "$WORK" -maxdepth 1 -name 'base-*.cpio.*' ! -name "$(basename "$BASE")" -delete
    rm -rf "$root"
    say "base initramfs: $(basename "$BASE") ($(du -h "$BASE" | cut -f1))"
}

# The per-run archive, appended to the base one: later files win.
build_run_cpio() {
    local root="$RUN/run-root" b src
    mkdir -p "$root/etc/wsv" "$root/usr/bin"
    for b in wireseal wireseal-tunnel wireseal-kernel-tests wireseal-kernel-xfrm-tests; do
        src="$BIN_DIR/$b"
        # Only when the bench runs the userspace datapath: a debug build of
        # it alone outgrows what a 256 MiB VM can unpack.
        [ "$b" = wireseal-tunnel ] && { bench_userspace || continue; src=$TUNNEL_BIN; }
        [ "$b" = wireseal-kernel-tests ] && src=$KERNEL_TESTS
        [ "$b" = wireseal-kernel-xfrm-tests ] && src=$KERNEL_XFRM_TESTS
        # Debug info off (the binaries stay the same build): halves their size in
        # the guests' 256 MiB.
        objcopy --strip-debug "$src" "$RUN/$b" || die "objcopy --strip-debug $src failed"
        copy_with_libs "$root" "$RUN/$b" "/usr/bin/$b"
        rm -f "$RUN/$b"
    done
    cp "$RUN/kubeconfig" "$root/etc/wsv/kubeconfig"
    (cd "$root" && find . | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet) | lz4 -l -q >"$RUN/run.cpio.lz4" ||
        die "packing the per-run initramfs failed"
    cat "$BASE" "$RUN/run.cpio.lz4" >"$RUN/initrd"
    rm -rf "$root"
}

# ----------------------------------------------------------------- network ----

net_up() {
    ip netns add "$NS" || die "ip netns add $NS failed"
    ns() { ip netns exec "$NS" "$@"; }
    ns sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1
    ns ip link set lo up
    ns ip link add "$BRIDGE" type bridge || die "creating bridge $BRIDGE in $NS failed"
    ns ip addr add "$HOST_IP/24" dev "$BRIDGE"
    ns ip link set "$BRIDGE" up
    local n
    for n in "${NODES[@]}"; do
        ns ip tuntap add dev "wsv-t$n" mode tap || die "creating tap wsv-t$n in $NS failed"
        ns ip link set "wsv-t$n" master "$BRIDGE"
        ns ip link set "wsv-t$n" up
    done
}

node_ip() { echo "$UNDERLAY_PREFIX.1$1"; }
pod_cidr() { echo "10.244.$1.0/24"; }
pod_ip() { echo "10.244.$1.2"; }
pod_gw() { echo "10.244.$1.1"; }

# A second pod CIDR for node-2, announced through wireseal.dev/pod-cidrs only
# while the allowed-IP checks run.
EXTRA_CIDR=10.244.102.0/24
EXTRA_POD_IP=10.244.102.2
EXTRA_POD_GW=10.244.102.1

node_yaml() { # node_yaml N: the Node object of node-N, as its kubelet registers it
    local n=$1
    cat <<EOF
---
apiVersion: v1
kind: Node
metadata:
  name: node-$n
  labels:
    kubernetes.io/hostname: node-$n
spec:
  podCIDR: $(pod_cidr "$n")
  podCIDRs: [$(pod_cidr "$n")]
status:
  addresses:
  - {type: InternalIP, address: $(node_ip "$n")}
  - {type: Hostname, address: node-$n}
EOF
}

write_nodes() {
    local n
    for n in "${ACTIVE[@]}"; do node_yaml "$n"; done >"$RUN/nodes.yaml"
}

# kubectl against the fake apiserver, from the run's namespace.
kube() {
    ip netns exec "$NS" kubectl --kubeconfig "$RUN/kubeconfig" --request-timeout 20s "$@"
}

# The fake apiserver runs in the run's namespace, on the bridge address: the VMs
# reach it over the underlay as nodes reach a real apiserver, and it stays out of
# the VMs' 256 MiB.
start_apiserver() {
    write_nodes
    ip netns exec "$NS" "$BIN_DIR/fake-apiserver" --listen "$HOST_IP:$API_PORT" \
        --nodes "$RUN/nodes.yaml" --kubeconfig-out "$RUN/kubeconfig" \
        >"$RUN/apiserver.out" 2>"$RUN/apiserver.log" &
    PIDS+=($!)
    local pid=$! deadline=$(($(date +%s) + 20))
    until grep -q '^listening on' "$RUN/apiserver.out" 2>/dev/null; do
        kill -0 "$pid" 2>/dev/null || die "fake-apiserver exited: $(tail -n5 "$RUN/apiserver.log")"
        [ "$(date +%s)" -lt "$deadline" ] || die "fake-apiserver did not print 'listening on' within 20 s"
        sleep 0.1
    done
    say "fake apiserver: $(head -n1 "$RUN/apiserver.out") (in namespace $NS)"
}

# --------------------------------------------------------------------- VMs ----

accel_args() {
    if grep -qE '^flags.*\b(vmx|svm)\b' /proc/cpuinfo && [ -w /dev/kvm ]; then
        ACCEL=KVM
        ACCEL_ARGS=(-accel kvm -cpu host)
    else
        ACCEL=TCG
        ACCEL_ARGS=(-accel 'tcg,thread=multi' -cpu qemu64)
    fi
}

start_vm() {
    local n=$1 base="$RUN/vm$1"
    mkfifo "$base.ctl.in" "$base.ctl.out" "$base.dbg.in" "$base.dbg.out"
    : >"$base.ctl.log"
    # no_timer_check: under TCG on a busy host the kernel's early check of the
    # IO-APIC timer can miss its ticks and panic ("IO-APIC + timer doesn't
    # work"); the emulated timer is fine, only the check's timing is not.
    ip netns exec "$NS" qemu-system-x86_64 -name "wsv-node-$n" "${ACCEL_ARGS[@]}" -M pc \
        -m "$VM_MEM" -smp 1 -nodefaults -display none -no-reboot \
        -kernel "$KERNEL" -initrd "$RUN/initrd" \
        -append "console=ttyS0,115200 panic=-1 quiet no_timer_check wsv.name=node-$n wsv.ip=$(node_ip "$n")/24" \
        -serial "file:$base.console" -serial "pipe:$base.dbg" \
        -device virtio-serial-pci -chardev "pipe,id=ctl,path=$base.ctl" \
        -device virtserialport,chardev=ctl,name=wsv.ctl \
        -netdev "tap,id=n0,ifname=wsv-t$n,script=no,downscript=no" \
        -device "virtio-net-pci,netdev=n0,mac=52:54:00:00:00:0$n" \
        -device virtio-rng-pci \
        >"$base.qemu.log" 2>&1 &
    QEMU_PID[$n]=$!
    PIDS+=($!)
    # Read-write opens of the FIFOs never block, whatever qemu's state.
    local fd
    exec {fd}<>"$base.ctl.in"
    CTL_FD[$n]=$fd
    cat "$base.ctl.out" >>"$base.ctl.log" &
    PIDS+=($!)
    exec {fd}<>"$base.dbg.in"
    CTL_FD[dbg$n]=$fd
    cat "$base.dbg.out" >>"$base.dbg.log" &
    PIDS+=($!)
}

wait_vm_ready() {
    local n=$1 deadline=$(($(date +%s) + 120)) base="$RUN/vm$1"
    until grep -q "WSV-READY" "$base.console" 2>/dev/null; do
        if ! kill -0 "${QEMU_PID[$n]}" 2>/dev/null; then
            die "VM node-$n (qemu) exited during boot: $(tail -n5 "$base.qemu.log") / console: $(tail -n5 "$base.console" 2>/dev/null)"
        fi
        if grep -q "WSV-FAIL" "$base.console" 2>/dev/null; then
            die "VM node-$n: $(grep WSV-FAIL "$base.console")"
        fi
        [ "$(date +%s)" -lt "$deadline" ] || die "VM node-$n did not boot within 120 s; console: $(tail -n5 "$base.console")"
        sleep 0.1
    done
    vm_exec "$n" 20 'echo hello' || die "the control shell of node-$n does not answer: $OUT"
}

# vm_exec VM TIMEOUT COMMAND: runs COMMAND in a bash subshell inside the VM; sets
# OUT (its stdout+stderr) and RC, returns RC. 124 when it did not finish in time,
# 125 when the VM is gone, 126 when its control shell ended.
vm_exec() {
    local n=$1 limit=$2 cmd=$3 log="$RUN/vm$1.ctl.log" start seq deadline
    SEQ=$((SEQ + 1))
    seq=$SEQ
    start=$(stat -c %s "$log")
    # A subshell: options (set -e) and variables of one command do not leak into
    # the next. Its status is kept before the echo that ends its output (whose
    # own status, always 0, `$?` would otherwise report).
    printf '(\n%s\n) </dev/null 2>&1; wsv_rc=$?; echo; echo "@@RC %s $wsv_rc"\n' "$cmd" "$seq" >&"${CTL_FD[$n]}"
    deadline=$(($(date +%s) + limit))
    while :; do
        if grep -q WSV-CTL-EXIT "$RUN/vm$n.console"; then
            OUT="the control shell of node-$n ended: $(grep WSV-CTL-EXIT "$RUN/vm$n.console" | head -n2 | tr '\n' ' ')"
            RC=126
            return 126
        fi
        if tail -c +"$((start + 1))" "$log" | grep -q "^@@RC $seq "; then
            OUT=$(tail -c +"$((start + 1))" "$log" | sed "/^@@RC $seq /,\$d")
            RC=$(tail -c +"$((start + 1))" "$log" | sed -n "s/^@@RC $seq \([0-9]*\).*/\1/p" | head -n1)
            # Drop the blank line printed before the marker.
            OUT=${OUT%$'\n'}
            return "$RC"
        fi
        if [ "$(date +%s)" -ge "$deadline" ]; then
            OUT="(no answer from node-$n within $limit s to: $cmd) $(tail -c +"$((start + 1))" "$log" | tail -n5)"
            RC=124
            return 124
        fi
        kill -0 "${QEMU_PID[$n]}" 2>/dev/null || { OUT="node-$n's qemu has exited"; RC=125; return 125; }
        sleep 0.1
    done
}

# vm_must VM TIMEOUT COMMAND: vm_exec, dying with the output on failure.
vm_must() {
    vm_exec "$@" || die "node-$1: '$3' failed (rc $RC): $OUT"
}

# ------------------------------------------------------------- assertions ----

result() { # result PASS|FAIL NAME DETAIL
    RESULTS+=("$(printf '%-4s %-44s %s' "$1" "$2" "$3")")
    [ "$1" = PASS ] || FAILED=$((FAILED + 1))
    say "$1 $2${3:+ — $3}"
}
check() { # check NAME DETAIL COMMAND...
    local name=$1 detail=$2
    shift 2
    if "$@"; then result PASS "$name" "$detail"; else result FAIL "$name" "$detail"; fi
}

# pod_ping FROM TO COUNT [ping options]: from node FROM's pod to node TO's pod
# (TO may also be an address).
pod_ping() {
    local n=$1 to=$2 count=$3
    shift 3
    [[ "$to" == *.* ]] || to=$(pod_ip "$to")
    vm_exec "$n" 60 "ip netns exec pod ping -n -q -c $count -i 0.2 -W 2 $* $to"
}

# add_pod VM NETNS ADDR GATEWAY: a pod as a host-gw CNI makes one: a veth into
# the pod's own namespace, the node's end as its gateway.
add_pod() {
    local n=$1 pod=$2 ip=$3 gw=$4
    vm_must "$n" 30 "set -e
ip netns add $pod
ip link add veth-$pod type veth peer name eth0 netns $pod
ip addr add $gw/24 dev veth-$pod
ip link set veth-$pod up
ip netns exec $pod ip link set lo up
ip netns exec $pod ip addr add $ip/24 dev eth0
ip netns exec $pod ip link set eth0 up
ip netns exec $pod ip route add default via $gw"
}

# The CNI's side: a pod on every node, host-gw routes to every other node's pod
# CIDR (and to node-2's second CIDR), whether or not the node runs wireseal.
setup_pods() {
    local n=$1 m routes=""
    add_pod "$n" pod "$(pod_ip "$n")" "$(pod_gw "$n")"
    for m in "${NODES[@]}"; do
        [ "$m" = "$n" ] || routes+="ip route add $(pod_cidr "$m") via $(node_ip "$m") dev eth0"$'\n'
    done
    if [ "$n" = 2 ]; then
        add_pod 2 pod2 "$EXTRA_POD_IP" "$EXTRA_POD_GW"
    else
        routes+="ip route add $EXTRA_CIDR via $(node_ip 2) dev eth0"
    fi
    vm_must "$n" 30 "set -e"$'\n'"$routes"
}

# Background pings that span a change, and their verdict. A ping started with
# bg_ping runs until bg_ping_stop; losses are sequence numbers that never got
# an answer, except the last one sent, which may still be in flight when the
# ping is stopped.
bg_ping() { # bg_ping FROM TO NAME: carries the canary, for captures that span it
    vm_must "$1" 20 "ip netns exec pod ping -n -i 0.1 -W 1 -p $(canary_hex) $(pod_ip "$2") >/tmp/$3.log 2>&1 &
echo \$! >/run/$3.pid"
}
bg_ping_stop() { # bg_ping_stop FROM NAME: sets PING_SENT and PING_LOST
    vm_must "$1" 30 "pid=\$(cat /run/$2.pid); kill -INT \$pid
while kill -0 \$pid 2>/dev/null; do sleep 0.1; done; cat /tmp/$2.log"
    read -r PING_SENT PING_LOST < <(awk '
        /bytes from/ { for (i = 1; i <= NF; i++) if ($i ~ /^icmp_seq=/) { split($i, a, "="); got[a[2]] = 1 } }
        /packets transmitted/ { sent = $1 }
        END { lost = 0; for (s = 1; s < sent; s++) if (!(s in got)) lost++; print sent + 0, lost }' <<<"$OUT")
}

canary_hex() { printf '%s' "$CANARY" | od -An -tx1 | tr -d ' \n'; }

start_capture() { # start_capture NAME
    CAP="$RUN/$1.pcap"
    # Every port of the bridge: each frame is seen twice (in on one tap, out on
    # another), which changes counts, not verdicts.
    ip netns exec "$NS" tcpdump -i any -s 0 -U -nn --immediate-mode -w "$CAP" >/dev/null 2>"$CAP.log" &
    CAP_PID=$!
    PIDS+=($!)
    local deadline=$(($(date +%s) + 10))
    until grep -q 'listening on' "$CAP.log" 2>/dev/null; do
        kill -0 "$CAP_PID" 2>/dev/null || die "tcpdump exited: $(cat "$CAP.log")"
        [ "$(date +%s)" -lt "$deadline" ] || die "tcpdump did not start listening within 10 s"
        sleep 0.05
    done
}

stop_capture() {
    kill -INT "$CAP_PID" 2>/dev/null || true
    wait "$CAP_PID" 2>/dev/null || true
    forget_pid "$CAP_PID"
}

# The process has been reaped: teardown must not signal its (reusable) id.
forget_pid() {
    local i
    for i in "${!PIDS[@]}"; do
        [ "${PIDS[i]}" = "$1" ] && unset 'PIDS[i]'
    done
    PIDS=("${PIDS[@]}")
}

# A WireGuard message: UDP to wireseal's port, type 1-4 and three zero bytes.
WG_FILTER="udp and dst port $WG_PORT and udp[8] >= 1 and udp[8] <= 4 and udp[9] = 0 and udp[10] = 0 and udp[11] = 0"
# The control plane: the agents' connections to the apiserver.
CTL_FILTER="tcp and host $HOST_IP and port $API_PORT"

count_frames() { # count_frames PCAP FILTER
    tcpdump -r "$1" -nn "$2" 2>/dev/null | wc -l
}
canary_hits() { LC_ALL=C grep -a -o "$CANARY" "$1" | wc -l || true; }

# The peers every active agent should have: the other active nodes.
mesh() { echo "$((${#ACTIVE[@]} - 1))/$((${#ACTIVE[@]} - 1)) peers encrypted"; }

# Every active agent reports all its peers encrypted; pings start the handshakes.
wait_encrypted() {
    local deadline=$(($(date +%s) + $1)) n m ok want
    want=$(mesh)
    while :; do
        ok=1
        for n in "${ACTIVE[@]}"; do
            vm_exec "$n" 20 'kill -0 "$(cat /run/agent.pid)" || { echo "agent exited:"; tail -n 20 /var/log/agent.log; }' ||
                die "node-$n: $OUT"
            [[ "$OUT" == *"agent exited"* ]] && die "node-$n: $OUT"
            vm_exec "$n" 20 'wireseal status' >/dev/null 2>&1 || true
            [[ "$OUT" == *"$want"* ]] || ok=0
        done
        [ "$ok" -eq 1 ] && return 0
        if [ "$(date +%s)" -ge "$deadline" ]; then
            for n in "${ACTIVE[@]}"; do
                vm_exec "$n" 20 'wireseal status; tail -n 30 /var/log/agent.log' || true
                echo "--- node-$n (want $want) ---"$'\n'"$OUT" >&2
            done
            return 1
        fi
        for n in "${ACTIVE[@]}"; do
            for m in "${ACTIVE[@]}"; do
                [ "$m" = "$n" ] || pod_ping "$n" "$m" 1 >/dev/null || true
            done
        done
    done
}

# expect_mesh NAME SECONDS: wait_encrypted as a check, timed from now.
expect_mesh() {
    local t0
    t0=$(date +%s)
    if wait_encrypted "$2"; then
        result PASS "$1" "$(($(date +%s) - t0)) s after the agent started"
    else
        result FAIL "$1" "not within $2 s (logs above)"
        return 1
    fi
}

# wait_for VM SECONDS COMMAND: polls COMMAND in the VM until it succeeds.
wait_for() {
    local n=$1 deadline=$(($(date +%s) + $2))
    until vm_exec "$n" 20 "$3"; do
        [ "$(date +%s)" -lt "$deadline" ] || return 1
        sleep 0.5
    done
}

DATAPATH=auto     # what start_agent passes to --datapath (--bench changes it)
# The pod networks every agent bounds claims by: the wireseal.dev/pod-cidrs
# override (node-2's second CIDR) is honoured only inside them.
CLUSTER_CIDRS=10.244.0.0/16
CATCH_ALL_TABLE=51831

start_agent() { # start_agent VM [extra agent flags]
    local n=$1
    shift
    vm_must "$n" 20 "mkdir -p /var/lib/wireseal
NO_COLOR=1 WIRESEAL_LOG=info WIRESEAL_KEY_ROTATION_LEAD=$ROTATION_LEAD wireseal agent --datapath $DATAPATH --node-name node-$n --kubeconfig /etc/wsv/kubeconfig \
  --state-dir /var/lib/wireseal --resync-interval 5 --cluster-cidrs $CLUSTER_CIDRS $* >>/var/log/agent.log 2>&1 &
echo \$! >/run/agent.pid"
}

# A scheduled key rotation of node-2 (`wireseal keys rotate`) under a 10 ms
# ping from node-1's pod: the next key is announced with its switch time
# (ROTATION_LEAD seconds ahead) and both nodes switch at it. Records lost
# replies and the longest time without one (ping -D timestamps) in
# $RUN/rotation.txt.
rotation_under_ping() {
    vm_must 2 20 'wireseal keys public --state-dir /var/lib/wireseal'
    local old_key=${OUT//[[:space:]]/} next_key peers own r0 ok=0
    vm_must 1 20 "ip netns exec pod ping -n -D -i 0.01 -W 1 $(pod_ip 2) >/tmp/rotation.log 2>&1 &
echo \$! >/run/rotation.pid"
    sleep 1
    r0=$(date +%s)
    vm_must 2 20 'wireseal keys rotate --state-dir /var/lib/wireseal 2>/dev/null'
    next_key=${OUT//[[:space:]]/}
    local deadline=$((r0 + ROTATION_LEAD + 90))
    while [ "$(date +%s)" -lt "$deadline" ]; do
        vm_exec 1 20 "wg show $WG_IFACE peers" || true
        peers=$OUT
        vm_exec 2 20 "wg show $WG_IFACE public-key" || true
        own=${OUT//[[:space:]]/}
        if [[ "$peers" == *"$next_key"* ]] && [ "$own" = "$next_key" ]; then
            ok=1
            break
        fi
        sleep 1
    done
    local switched=$(($(date +%s) - r0))
    wait_encrypted 60 || ok=0
    sleep 2
    vm_must 1 30 "pid=\$(cat /run/rotation.pid); kill -INT \$pid
while kill -0 \$pid 2>/dev/null; do sleep 0.1; done; cat /tmp/rotation.log"
    local sent lost gap
    read -r sent lost gap < <(ping_gaps <<<"$OUT")
    check "scheduled key rotation: both nodes switch to node-2's next key" \
        "old ${old_key:0:8}, next ${next_key:0:8}, on every node ${switched} s after keys rotate (lead ${ROTATION_LEAD} s)" \
        test "$ok" -eq 1
    echo "kernel rotation: sent=$sent lost=$lost max_gap_ms=$gap lead_s=$ROTATION_LEAD switched_after_s=$switched accel=$ACCEL kernel=$KVER" \
        >>"$RUN/rotation.txt"
    say "key rotation under a 10 ms ping: $lost lost of $sent, longest gap $gap ms"
}

# The log of `ping -D` on stdin: packets sent, requests never answered (the
# last one may still be in flight when ping is stopped), and the longest time
# between two replies in ms.
ping_gaps() {
    awk '
        /bytes from/ {
            t = substr($1, 2, length($1) - 2) + 0
            if (prev != "" && (t - prev) * 1000 > gap) gap = (t - prev) * 1000
            prev = t
            for (i = 1; i <= NF; i++) if ($i ~ /^icmp_seq=/) { split($i, a, "="); got[a[2]] = 1 }
        }
        /packets transmitted/ { sent = $1 }
        END { lost = 0; for (s = 1; s < sent; s++) if (!(s in got)) lost++; printf "%d %d %.1f\n", sent, lost, gap }'
}

stop_agent() { # stop_agent VM SIGNAL
    vm_must "$1" 30 "pid=\$(cat /run/agent.pid); kill -$2 \$pid
for i in \$(seq 100); do kill -0 \$pid 2>/dev/null || break; sleep 0.1; done
! kill -0 \$pid 2>/dev/null"
}


# -------------------------------------------------------------------- main ----

# The kernel tests of the netlink crate, on node-3 before it joins: 5,000 peers
# set, read back and changed by difference; an allowed IP removed and a peer
# re-keyed with another session kept; then IPsec: ESP SAs with derived keys,
# policies and XFRM interfaces between two namespaces. In the background: they
# take a while under TCG, and the cluster checks go on meanwhile.
start_kernel_tests() {
    vm_must 3 20 "(wireseal-kernel-tests --ignored --test-threads 1 >/var/log/kernel-tests.log 2>&1
echo \$? >/run/kernel-tests.rc
modprobe -a $IPSEC_MODULES >/var/log/kernel-xfrm-tests.log 2>&1
wireseal-kernel-xfrm-tests --ignored --test-threads 1 >>/var/log/kernel-xfrm-tests.log 2>&1
echo \$? >/run/kernel-xfrm-tests.rc) >/dev/null 2>&1 &"
}

collect_kernel_tests() {
    if ! wait_for 3 "$1" 'test -s /run/kernel-xfrm-tests.rc'; then
        vm_exec 3 20 'tail -n 20 /var/log/kernel-tests.log; tail -n 20 /var/log/kernel-xfrm-tests.log' || true
        result FAIL "kernel tests (netlink crate) on node-3" "not finished within $1 s: $OUT"
        return 0
    fi
    local log rc summary what
    for log in kernel-tests kernel-xfrm-tests; do
        vm_exec 3 20 "cat /run/$log.rc; cat /var/log/$log.log" || true
        rc=$(head -n1 <<<"$OUT")
        summary=$(grep -o 'test result: .*' <<<"$OUT" | head -n1 || true)
        while IFS= read -r line; do printf '    %s\n' "$line"; done < <(grep -E '^test |panicked|assert' <<<"$OUT" || true)
        what="kernel tests: 5,000 peers, allowed-IP removal, re-key"
        [ "$log" = kernel-xfrm-tests ] && what="kernel tests: ESP with derived keys, XFRM interfaces, no SA drops"
        # Both tests must have run: an empty or filtered run must not pass.
        check "$what" "${summary:-no summary}" \
            test "$rc" = 0 -a -n "$(grep -o 'ok. 2 passed; 0 failed' <<<"$summary")"
    done
}

# node-3 joins the cluster under a running node-1 → node-2 ping.
join_node3() {
    bg_ping 1 2 join
    node_yaml 3 | kube create --validate=false -f - >/dev/null || die "kubectl create node-3 failed"
    start_agent 3
    ACTIVE=(1 2 3)
    expect_mesh "node-3 joins: $(mesh) on all three" 180 || true
    local n ok=1
    for n in 1 2; do
        vm_exec "$n" 20 "wg show $WG_IFACE allowed-ips" || true
        [ "$(grep -c . <<<"$OUT")" -eq 2 ] && [[ "$OUT" == *"$(pod_cidr 3)"* ]] || ok=0
    done
    check "node-1, node-2: kernel peer for node-3 added" "two peers each, node-3's with $(pod_cidr 3)" test "$ok" -eq 1
    start_capture join
    ok=1
    for n in 1 2; do pod_ping "$n" 3 3 -p "$(canary_hex)" || ok=0; pod_ping 3 "$n" 3 -p "$(canary_hex)" || ok=0; done
    stop_capture
    check "pods on node-3 reach node-1 and node-2" "3 pings each way" test "$ok" -eq 1
    wire_checks "node-3's traffic"
    bg_ping_stop 1 join
    check "node-3 joins: node-1 → node-2 lost nothing" "$PING_LOST lost of $PING_SENT" \
        test "$PING_LOST" -eq 0 -a "$PING_SENT" -gt 10
}

# node-2 announces a second pod CIDR, then withdraws it under a running ping to
# its first one.
allowed_ips() {
    local both n
    both="$(pod_cidr 2),$EXTRA_CIDR"
    kube annotate node node-2 "wireseal.dev/pod-cidrs=$both" --overwrite >/dev/null ||
        die "kubectl annotate node-2 failed"
    local ok=1
    for n in 1 3; do
        wait_for "$n" 60 "wg show $WG_IFACE allowed-ips | grep -q '$EXTRA_CIDR' && ip route show table $WG_TABLE | grep -q '^$EXTRA_CIDR dev $WG_IFACE'" || ok=0
    done
    start_capture extra
    pod_ping 1 "$EXTRA_POD_IP" 3 -p "$(canary_hex)" || ok=0
    stop_capture
    check "allowed IP added: node-2's second CIDR sealed" "$EXTRA_CIDR on node-1 and node-3, ping ok" test "$ok" -eq 1
    wire_checks "the second CIDR"

    bg_ping 1 2 narrow
    sleep 1
    kube annotate node node-2 "wireseal.dev/pod-cidrs=$(pod_cidr 2)" --overwrite >/dev/null ||
        die "kubectl annotate node-2 failed"
    ok=1
    for n in 1 3; do
        wait_for "$n" 60 "! wg show $WG_IFACE allowed-ips | grep -q '$EXTRA_CIDR' && ! ip route show table $WG_TABLE | grep -q '^$EXTRA_CIDR'" || ok=0
    done
    sleep 1
    bg_ping_stop 1 narrow
    check "allowed IP removed from the kernel peer" "node-1 and node-3 dropped $EXTRA_CIDR" test "$ok" -eq 1
    check "allowed IP removed: no gap to node-2's first CIDR" "$PING_LOST lost of $PING_SENT" \
        test "$PING_LOST" -eq 0 -a "$PING_SENT" -gt 10
    # node-1 sends to the withdrawn CIDR over the CNI again. (A ping would not
    # come back: node-2 still routes its replies into the tunnel, where their
    # source, no longer one of node-2's allowed IPs, is dropped by node-1.)
    vm_exec 1 20 "ip route get $EXTRA_POD_IP" || true
    check "withdrawn CIDR goes back to the CNI's plain route" "$(head -n1 <<<"$OUT")" \
        grep -q "via $(node_ip 2) dev eth0" <<<"$OUT"
    kube annotate node node-2 "wireseal.dev/pod-cidrs-" >/dev/null || die "kubectl annotate node-2 failed"
}

# node-3 leaves: its agent stops, cleanup runs, its Node is deleted.
leave_node3() {
    bg_ping 1 2 leave
    stop_agent 3 TERM
    vm_exec 3 60 "wireseal cleanup" || true
    kube delete node node-3 >/dev/null || die "kubectl delete node node-3 failed"
    ACTIVE=(1 2)
    local n ok=1
    for n in 1 2; do
        wait_for "$n" 60 "[ \"\$(wg show $WG_IFACE peers | wc -l)\" -eq 1 ] && ! ip route show table $WG_TABLE | grep -q '$(pod_cidr 3)'" || ok=0
    done
    wait_encrypted 60 || ok=0
    bg_ping_stop 1 leave
    check "node-3 leaves: its peer and route removed" "node-1 and node-2 back to $(mesh)" test "$ok" -eq 1
    check "node-3 leaves: node-1 → node-2 lost nothing" "$PING_LOST lost of $PING_SENT" \
        test "$PING_LOST" -eq 0 -a "$PING_SENT" -gt 10
}

# canary_check NAME: after a capture taken during a failure, with strict mode
# on: the canary never crossed in clear (the pings may well be lost).
canary_check() {
    local hits
    hits=$(canary_hits "$CAP")
    check "strict, $1: canary never in clear" "$hits hits; pings $PING_LOST lost of $PING_SENT" test "$hits" -eq 0
}

# Strict mode on kernel WireGuard: the agents restart with --strict; then the
# agent stops, the tunnel link vanishes, and a node joins whose WireGuard
# node-1 cannot reach, each under a canary ping with the underlay captured.
strict_mode() {
    local n ok
    for n in 1 2; do
        stop_agent "$n" TERM
        start_agent "$n" --strict
    done
    expect_mesh "strict mode: $(mesh) with --strict" 120 || return 0
    ok=1
    for n in 1 2; do
        vm_exec "$n" 20 "ip rule | grep -q 'lookup $CATCH_ALL_TABLE' && ip route show table $CATCH_ALL_TABLE | grep -q '^blackhole $CLUSTER_CIDRS' && ip route show table $CATCH_ALL_TABLE | grep -q '^throw $(pod_cidr "$n")'" || ok=0
    done
    check "strict: catch-all rule, blackhole and own throw on both" "table $CATCH_ALL_TABLE" test "$ok" -eq 1

    # The agent stops: kernel WireGuard keeps everything, nothing changes.
    start_capture strict-agent-stopped
    bg_ping 1 2 sstop
    stop_agent 1 TERM
    sleep 3
    bg_ping_stop 1 sstop
    stop_capture
    canary_check "agent stopped"
    check "strict, agent stopped: nothing lost" "$PING_LOST lost of $PING_SENT" test "$PING_LOST" -eq 0 -a "$PING_SENT" -gt 10
    start_agent 1 --strict

    # The tunnel link goes (the kernel flushes the routes through it): the
    # catch-all drops node-2's traffic until the agent makes the link again.
    wait_encrypted 60 || true
    start_capture strict-link-gone
    bg_ping 1 2 slink
    sleep 1
    vm_exec 1 20 "ip link del $WG_IFACE" || true
    wait_encrypted 60 || result FAIL "strict, link gone: the agent makes it again" "not $(mesh) within 60 s"
    sleep 1
    bg_ping_stop 1 slink
    stop_capture
    canary_check "tunnel link deleted"

    # node-3 joins, and node-1's WireGuard packets to it are dropped: their
    # handshake never completes. With strict mode node-1's pod traffic to
    # node-3 is dropped, not sent over the CNI's route in clear.
    vm_must 1 20 "ip rule add fwmark 0x10000000/0x10000000 to $(node_ip 3) prohibit priority 80"
    node_yaml 3 | kube create --validate=false -f - >/dev/null || die "kubectl create node-3 failed"
    start_agent 3 --strict
    wait_for 1 90 "wg show $WG_IFACE allowed-ips | grep -q '$(pod_cidr 3)'" || true
    start_capture strict-join-blocked
    bg_ping 1 3 sjoin
    sleep 4
    bg_ping_stop 1 sjoin
    stop_capture
    canary_check "node-3 joins, WireGuard blocked from node-1"
    vm_exec 1 20 "ip route get $(pod_ip 3) 2>&1" || true
    check "strict, join blocked: node-3's pods go into the tunnel, not the CNI" "$(head -n1 <<<"$OUT")" \
        grep -q "dev $WG_IFACE" <<<"$OUT"
    vm_must 1 20 "ip rule del fwmark 0x10000000/0x10000000 to $(node_ip 3) prohibit priority 80"
    stop_agent 3 TERM
    vm_exec 3 60 "wireseal cleanup" || true
    kube delete node node-3 >/dev/null || die "kubectl delete node node-3 failed"
    for n in 1 2; do wait_for "$n" 60 "! wg show $WG_IFACE allowed-ips | grep -q '$(pod_cidr 3)'" || true; done
}

# xfrm_stat NODE: the kernel's XFRM error counters that are not zero.
xfrm_stat() {
    vm_exec "$1" 20 "awk '\$2 != 0' /proc/net/xfrm_stat" || true
    echo "    node-$1 /proc/net/xfrm_stat (non-zero): ${OUT:-all zero}" | tr '\n' ' '
    echo
}

# IPsec mode (--encryption ipsec) on node-1 and node-2, after the WireGuard
# phases and their cleanup: ESP in tunnel mode between the node addresses,
# keys derived per pair, then the same proofs as for kernel WireGuard.
ipsec_mode() {
    local n ok line hex
    hex=$(canary_hex)
    for n in "${ACTIVE[@]}"; do start_agent "$n" --encryption ipsec; done
    expect_mesh "IPsec: agents up, $(mesh) on both" 120 || return 0
    local link
    for n in "${ACTIVE[@]}"; do
        vm_exec "$n" 20 "ip -d link show $WG_IFACE" || true
        link=$OUT
        # The SAs' keys are secret even in a lab: printed redacted.
        vm_exec "$n" 20 "wireseal status; ip xfrm state | sed -E 's/(aead [^ ]+) 0x[0-9a-f]+/\\1 <key>/'; ip xfrm policy" || true
        echo "    \$ wireseal status; ip xfrm state; ip xfrm policy   # node-$n"
        while IFS= read -r line; do printf '    %s\n' "$line"; done <<<"$OUT"
        check "node-$n: IPsec: status, XFRM interface, 2 AES-GCM ESP SAs, 3 policies" \
            "$(grep -o 'encryption [a-z]*' <<<"$OUT" | head -n1), $(grep -o 'xfrm if_id 0x[0-9a-f]*' <<<"$link"), $(grep -c 'proto esp spi' <<<"$OUT") SAs, $(grep -c 'dir ' <<<"$OUT") policies" \
            test "$(grep -c 'encryption ipsec' <<<"$OUT")" -eq 1 -a "$(grep -c 'xfrm if_id 0xca76' <<<"$link")" -eq 1 \
            -a "$(grep -c 'proto esp spi' <<<"$OUT")" -eq 2 -a "$(grep -c 'dir ' <<<"$OUT")" -eq 3 \
            -a "$(grep -c 'aead rfc4106(gcm(aes)) <key>' <<<"$OUT")" -eq 2
    done

    start_capture ipsec
    ok=1
    pod_ping 1 2 5 -p "$hex" || ok=0
    pod_ping 2 1 5 -p "$hex" || ok=0
    vm_exec 1 60 "ping -n -q -c 3 -i 0.2 -W 2 -p $hex $(pod_ip 2)" || ok=0
    stop_capture
    check "IPsec: pod-to-pod both ways, host network to a pod" "5 pings each way, 3 from node-1's host" test "$ok" -eq 1
    wire_checks "IPsec" esp

    # Agent restarts under a 10/s ping: the SAs stay in the kernel and are
    # adopted, sequence numbers and all (a re-installed SA would restart them
    # and the peer's replay window would drop its packets).
    bg_ping 1 2 ipsec-restart
    stop_agent 1 TERM
    stop_agent 2 KILL
    start_agent 1 --encryption ipsec
    start_agent 2 --encryption ipsec
    wait_encrypted 60 || true
    sleep 2
    bg_ping_stop 1 ipsec-restart
    ok=1
    for n in "${ACTIVE[@]}"; do
        vm_exec "$n" 20 "ip xfrm state | grep -c 'proto esp'" || true
        [ "$OUT" = 2 ] || ok=0
    done
    check "IPsec: agent restart: no packet lost, SAs adopted" "$PING_LOST lost of $PING_SENT; 2 SAs on each node" \
        test "$PING_LOST" -eq 0 -a "$PING_SENT" -gt 10 -a "$ok" -eq 1

    # node-3 joins under a node-1 → node-2 ping, its pods talk to both over
    # ESP, then it leaves: the others drop its SAs and policies.
    bg_ping 1 2 ipsec-join
    node_yaml 3 | kube create --validate=false -f - >/dev/null || die "kubectl create node-3 failed"
    start_agent 3 --encryption ipsec
    ACTIVE=(1 2 3)
    expect_mesh "IPsec: node-3 joins: $(mesh) on all three" 180 || true
    start_capture ipsec-join
    ok=1
    for n in 1 2; do pod_ping "$n" 3 3 -p "$hex" || ok=0; pod_ping 3 "$n" 3 -p "$hex" || ok=0; done
    stop_capture
    check "IPsec: pods on node-3 reach node-1 and node-2" "3 pings each way" test "$ok" -eq 1
    wire_checks "IPsec, node-3's traffic" esp
    bg_ping_stop 1 ipsec-join
    check "IPsec: node-3 joins: node-1 → node-2 lost nothing" "$PING_LOST lost of $PING_SENT" \
        test "$PING_LOST" -eq 0 -a "$PING_SENT" -gt 10
    bg_ping 1 2 ipsec-leave
    stop_agent 3 TERM
    vm_exec 3 60 "wireseal cleanup" || true
    kube delete node node-3 >/dev/null || die "kubectl delete node node-3 failed"
    ACTIVE=(1 2)
    ok=1
    for n in 1 2; do
        wait_for "$n" 60 "[ \"\$(ip xfrm state | grep -c 'proto esp spi')\" -eq 2 ] && [ \"\$(ip xfrm policy | grep -c 'dir ')\" -eq 3 ] && ! ip route show table $WG_TABLE | grep -q '$(pod_cidr 3)'" || ok=0
    done
    wait_encrypted 60 || ok=0
    bg_ping_stop 1 ipsec-leave
    check "IPsec: node-3 leaves: its SAs, policies and route removed" "node-1 and node-2 back to 2 SAs, 3 policies, $(mesh)" \
        test "$ok" -eq 1
    check "IPsec: node-3 leaves: node-1 → node-2 lost nothing" "$PING_LOST lost of $PING_SENT" \
        test "$PING_LOST" -eq 0 -a "$PING_SENT" -gt 10

    ipsec_rekey_under_ping

    # Strict mode, and node-1's outbound SA deleted by hand under a canary
    # ping: dropped, never in clear; the agent installs it again, starting
    # past its reserved sequence numbers, and node-2 takes its packets.
    for n in "${ACTIVE[@]}"; do
        stop_agent "$n" TERM
        start_agent "$n" --encryption ipsec --strict
    done
    expect_mesh "IPsec strict: $(mesh) with --strict" 120 || return 0
    vm_must 2 20 'wireseal keys public --state-dir /var/lib/wireseal'
    start_capture ipsec-sa-deleted
    bg_ping 1 2 ipsec-sa
    sleep 1
    vm_must 1 20 "ip xfrm state list src $(node_ip 1) dst $(node_ip 2) | awk '/proto esp spi/ { print \$4 }'"
    local spi=${OUT//[[:space:]]/}
    vm_must 1 20 "ip xfrm state delete src $(node_ip 1) dst $(node_ip 2) proto esp spi $spi"
    wait_for 1 60 "ip xfrm state list src $(node_ip 1) dst $(node_ip 2) | grep -q 'proto esp'" || true
    sleep 3
    bg_ping_stop 1 ipsec-sa
    stop_capture
    canary_check "IPsec, outbound SA deleted"
    vm_exec 1 20 "ip xfrm state list src $(node_ip 1) dst $(node_ip 2) | grep -o 'oseq 0x[0-9a-f]*'" || true
    local oseq
    oseq=$(grep -o 'oseq 0x[0-9a-f]*' <<<"$OUT" | head -n1)
    ok=1
    pod_ping 1 2 3 || ok=0
    check "IPsec: the deleted SA comes back past its reservation, node-2 accepts it" \
        "SA $spi again, $oseq; $PING_LOST of $PING_SENT lost while it was gone" test "$ok" -eq 1
    xfrm_stat 1
    xfrm_stat 2
    # The drops while the SA was gone, as the agent reports them.
    vm_exec 1 20 "wireseal status | grep '^ipsec:'; wget -q -O - http://127.0.0.1:9831/metrics | grep '^wireseal_ipsec_xfrm_errors{counter=\"XfrmOutNoStates\"}'" || true
    check "IPsec: status and metrics show the kernel's drops" "$(tr '\n' ' ' <<<"$OUT")" \
        test "$(grep -Ec 'XfrmOutNoStates"?\}? [1-9]' <<<"$OUT")" -eq 2

    # wireseal cleanup removes the XFRM interface, SAs and policies.
    for n in "${ACTIVE[@]}"; do
        stop_agent "$n" TERM
        vm_exec "$n" 60 "wireseal cleanup" || true
        local cleanup_rc=$RC
        vm_exec "$n" 20 "ip link show $WG_IFACE >/dev/null 2>&1 && echo link-left
[ -n \"\$(ip xfrm state)\" ] && echo sas-left
[ -n \"\$(ip xfrm policy)\" ] && echo policies-left
ip rule | grep -q 'lookup $WG_TABLE' && echo rule-left
true" || true
        check "node-$n: IPsec cleanup" "rc $cleanup_rc; left: ${OUT:-nothing}" test "$cleanup_rc" -eq 0 -a -z "$OUT"
    done
    ok=1
    pod_ping 1 2 3 || ok=0
    pod_ping 2 1 3 || ok=0
    check "after IPsec cleanup: pods reach each other over the CNI" "host-gw routes, plain" test "$ok" -eq 1
}

# IPsec rekey under a 10 ms ping from node-1's pod to node-2's: node-2's
# agent restarts with a short --ipsec-rekey-interval, installs its next
# epoch's inbound SAs beside the old ones and publishes the epoch; node-1
# moves its outbound SA to it; node-2 drops the old SAs after the grace
# period, and only then may rekey again: epoch 2 proves a whole cycle. Never
# more than two epochs of SAs (3 on node-2: two inbound, one outbound).
ipsec_rekey_under_ping() {
    local before after epoch ok=0 r0 most=0
    vm_must 1 20 "ip xfrm state list src $(node_ip 1) dst $(node_ip 2) | awk '/proto esp spi/ { print \$4 }'"
    before=${OUT//[[:space:]]/}
    vm_must 1 20 "ip netns exec pod ping -n -D -i 0.01 -W 1 $(pod_ip 2) >/tmp/ipsec-rekey.log 2>&1 &
echo \$! >/run/ipsec-rekey.pid"
    sleep 1
    r0=$(date +%s)
    stop_agent 2 TERM
    start_agent 2 --encryption ipsec --ipsec-rekey-interval 15
    local deadline=$((r0 + 120))
    while [ "$(date +%s)" -lt "$deadline" ]; do
        epoch=$(kube get node node-2 -o jsonpath='{.metadata.annotations.wireseal\.dev/ipsec-epoch}' 2>/dev/null || true)
        vm_exec 1 20 "ip xfrm state list src $(node_ip 1) dst $(node_ip 2) | awk '/proto esp spi/ { print \$4 }'" || true
        after=${OUT//[[:space:]]/}
        vm_exec 2 20 "ip xfrm state | grep -c 'proto esp spi'" || true
        [ "${OUT:-0}" -gt "$most" ] && most=$OUT
        if [ "${epoch:-0}" -ge 2 ] && [ -n "$after" ] && [ "$after" != "$before" ]; then
            ok=1
            break
        fi
        sleep 2
    done
    local settled=$(($(date +%s) - r0))
    sleep 2
    vm_must 1 30 "pid=\$(cat /run/ipsec-rekey.pid); kill -INT \$pid
while kill -0 \$pid 2>/dev/null; do sleep 0.1; done; cat /tmp/ipsec-rekey.log"
    local sent lost gap
    read -r sent lost gap < <(ping_gaps <<<"$OUT")
    check "IPsec rekey: two epochs on, node-1 on a new SA, never more than two epochs kept" \
        "node-2 at epoch ${epoch:-none} ${settled} s after its restart; node-1 → node-2 SA $before → $after; at most $most SAs on node-2" \
        test "$ok" -eq 1 -a "$most" -le 3
    check "IPsec rekey under a 10 ms ping: nothing lost" "$lost lost of $sent, longest gap $gap ms" \
        test "${lost:-1}" -eq 0 -a "${sent:-0}" -gt 100
    echo "ipsec rekey: sent=$sent lost=$lost max_gap_ms=$gap settled_s=$settled accel=$ACCEL kernel=$KVER" >>"$RUN/rotation.txt"
}

# The checks on a capture taken while pods talked through wireseal: between
# the nodes only the agents' control plane and WireGuard messages (data
# among them), or with `esp` as the second argument only ESP (IP protocol 50).
wire_checks() { # wire_checks WHAT [esp]
    local all ctl sealed data icmp other_frames hits name=WireGuard
    all=$(count_frames "$CAP" 'not arp')
    ctl=$(count_frames "$CAP" "$CTL_FILTER")
    if [ "${2:-}" = esp ]; then
        name=ESP
        sealed=$(count_frames "$CAP" 'ip proto 50')
        data=$sealed
    else
        sealed=$(count_frames "$CAP" "$WG_FILTER")
        data=$(count_frames "$CAP" "udp and dst port $WG_PORT and udp[8] = 4")
    fi
    icmp=$(count_frames "$CAP" 'icmp')
    hits=$(canary_hits "$CAP")
    other_frames=$((all - ctl - sealed))
    check "wire ($1): only $name" \
        "$sealed $name ($data data), $ctl control-plane TCP, $other_frames other, $icmp ICMP" \
        test "$other_frames" -eq 0 -a "$data" -gt 0 -a "$icmp" -eq 0
    check "wire ($1): canary never in clear" "$hits hits" test "$hits" -eq 0
}

main() {
    need_root
    mkdir -p "$WORK"
    trap teardown EXIT
    trap 'on_signal SIGINT 130' INT
    trap 'on_signal SIGTERM 143' TERM
    trap 'on_signal timeout 124' USR1
    start_watchdog
    install_tools
    check_binaries
    fetch_kernel
    build_base
    accel_args

    rm -rf "$RUN"
    mkdir -p "$RUN"
    net_up
    start_apiserver
    build_run_cpio
    say "booting ${#NODES[@]} VMs ($ACCEL, ${VM_MEM} MiB, 1 vCPU, kernel $KVER)"
    local n m boot0 hex line
    boot0=$(date +%s)
    for n in "${NODES[@]}"; do start_vm "$n"; done
    for n in "${NODES[@]}"; do wait_vm_ready "$n"; done
    say "VMs up in $(($(date +%s) - boot0)) s"

    # 1. Kernel WireGuard exists in the guest kernel (the module is loaded on demand).
    for n in "${NODES[@]}"; do
        if vm_exec "$n" 30 "ip link add wsv-probe type wireguard && ip link del wsv-probe"; then
            result PASS "node-$n: kernel WireGuard link" "ip link add … type wireguard"
        else
            result FAIL "node-$n: kernel WireGuard link" "$OUT"
            die "no kernel WireGuard in the guest; nothing else can be tested"
        fi
    done
    start_kernel_tests

    # 2. The pods and the CNI's host-gw routes.
    for n in "${NODES[@]}"; do setup_pods "$n"; done
    hex=$(canary_hex)

    # 3. Without wireseal the canary crosses in clear: the capture can see it.
    start_capture plain
    pod_ping 1 2 3 -p "$hex" || die "plain pod-to-pod ping from node-1 failed before wireseal: $OUT"
    pod_ping 2 1 3 -p "$hex" || die "plain pod-to-pod ping from node-2 failed before wireseal: $OUT"
    stop_capture
    local plain_hits plain_other
    plain_hits=$(canary_hits "$CAP")
    plain_other=$(($(count_frames "$CAP" 'not arp') - $(count_frames "$CAP" "$WG_FILTER") -
        $(count_frames "$CAP" "$CTL_FILTER")))
    check "capture flags plaintext without wireseal" \
        "canary in $plain_hits places, $plain_other non-WireGuard frames (so the checks can fail)" \
        test "$plain_hits" -gt 0 -a "$plain_other" -gt 0

    # 4. wireseal agents with the kernel datapath on node-1 and node-2.
    for n in "${ACTIVE[@]}"; do start_agent "$n"; done
    expect_mesh "agents up, $(mesh) on both" 180 || die "the mesh did not come up"
    for n in "${ACTIVE[@]}"; do
        vm_exec "$n" 20 'wireseal status' || true
        echo "    \$ wireseal status   # node-$n"
        while IFS= read -r line; do printf '    %s\n' "$line"; done <<<"$OUT"
        check "node-$n: wireseal status kernel, $(mesh)" "$(grep -o '[0-9]*/[0-9]* peers encrypted' <<<"$OUT" || true)" \
            grep -q "datapath kernel.*" <<<"$OUT"
        vm_exec "$n" 20 "now=\$(date +%s); wg show $WG_IFACE latest-handshakes | while read -r key at; do echo \"\$key \$((now - at))\"; done" || true
        local age
        age=$(awk 'NR == 1 {print $2}' <<<"$OUT")
        check "node-$n: wg show: peer with recent handshake" "handshake ${age:-?} s ago" \
            test "${age:-999999}" -lt 180
        vm_exec "$n" 20 "ip -d link show $WG_IFACE | grep -o wireguard" || true
        check "node-$n: $WG_IFACE is a kernel wireguard link" "$OUT" test "$OUT" = wireguard
    done

    # 4b. The evidence an auditor gets: each node's WiresealEncrypted
    # condition through the API server, and `wireseal verify` on node-1 (the
    # cluster from the API server, the local agent, and a canary probe to
    # node-2 with the underlay captured meanwhile).
    local conditions
    conditions=$(kube get nodes -o jsonpath='{range .items[*]}{.metadata.name}={.status.conditions[?(@.type=="WiresealEncrypted")].status} {end}' 2>&1 || true)
    local want_conditions=""
    for n in "${ACTIVE[@]}"; do want_conditions+="node-$n=True "; done
    check "WiresealEncrypted condition True on every node" "$conditions" \
        test "$conditions" = "$want_conditions"
    # The metrics listener (0.0.0.0:9831 by default), as Prometheus scrapes it.
    vm_exec 1 20 'wget -q -O - http://127.0.0.1:9831/metrics' || true
    check "node-1: metrics on kernel WireGuard" \
        "$(grep -E '^wireseal_peers_encrypted\{family="ipv4"\}|^wireseal_info\{' <<<"$OUT" | tr '\n' ' ')" \
        grep -q 'wireseal_peers_encrypted{family="ipv4"} 1' <<<"$OUT"
    vm_exec 1 60 'wireseal verify --kubeconfig /etc/wsv/kubeconfig' || true
    echo "    \$ wireseal verify   # node-1"
    while IFS= read -r line; do printf '    %s\n' "$line"; done <<<"$OUT"
    check "node-1: wireseal verify passes on kernel WireGuard" \
        "$(grep -o 'WireGuard out/in [0-9]*/[0-9]*' <<<"$OUT" | head -n1), $(grep -o 'canary in clear [0-9]*' <<<"$OUT" | head -n1)" \
        test "$RC" -eq 0

    # 5. Pod to pod across the VMs, and what the wire shows meanwhile.
    start_capture sealed
    local ok=1
    pod_ping 1 2 5 -p "$hex" || ok=0
    pod_ping 2 1 5 -p "$hex" || ok=0
    stop_capture
    check "pod-to-pod ping through kernel WireGuard" "both directions, 5 pings each" test "$ok" -eq 1
    wire_checks "node-1 ↔ node-2"

    # 5b. The node itself (host network: the kubelet, an apiserver calling a
    # webhook) to a pod on the other node. Its routes carry the node's address
    # inside its own pod CIDR as source, so the peer accepts the packets and
    # the replies come back through the tunnel.
    start_capture host
    ok=1
    vm_exec 1 60 "ping -n -q -c 3 -i 0.2 -W 2 -p $hex $(pod_ip 2)" || ok=0
    vm_exec 2 60 "ping -n -q -c 3 -i 0.2 -W 2 -p $hex $(pod_ip 1)" || ok=0
    stop_capture
    vm_exec 1 20 "ip route show table $WG_TABLE; ip -o -4 addr show dev $WG_IFACE" || true
    # The source is also on the tunnel link, so a masqueraded Service connection
    # (kube-proxy's MASQUERADE takes the output device's address) gets it too.
    [[ "$OUT" == *"src $(pod_gw 1)"* && "$OUT" == *"inet $(pod_gw 1)/32"* ]] || ok=0
    check "host network → pod on the other node" \
        "3 pings each way; node-1's route source: $(grep -o 'src [0-9.]*' <<<"$OUT" | sort -u | tr '\n' ' ')on $WG_IFACE: $(grep -o 'inet [0-9./]*' <<<"$OUT" | tr '\n' ' ')" \
        test "$ok" -eq 1
    wire_checks "host-originated"

    # 6. Agent restarts (SIGTERM on node-1, SIGKILL on node-2) under a running ping.
    # 25 s of pings: the restarts take 5-10 s under TCG; the check below fails if
    # the ping ended before both agents were back.
    vm_must 1 20 "ip netns exec pod ping -n -i 0.1 -c 250 -W 1 $(pod_ip 2) >/tmp/restart-ping.log 2>&1 &
echo \$! >/run/ping.pid"
    local r0
    r0=$(date +%s)
    stop_agent 1 TERM
    stop_agent 2 KILL
    start_agent 1
    start_agent 2
    wait_encrypted 60 || result FAIL "agents back after restart" "not $(mesh) within 60 s"
    local restarted=$(($(date +%s) - r0))
    vm_exec 1 60 'pid=$(cat /run/ping.pid); running=no; kill -0 $pid 2>/dev/null && running=yes
while kill -0 $pid 2>/dev/null; do sleep 0.2; done; echo "ping-running-after-restart=$running"; cat /tmp/restart-ping.log' || true
    local stats
    stats=$(grep -o '[0-9]* packets transmitted, [0-9]* received' <<<"$OUT" || true)
    if [[ "$OUT" == *"ping-running-after-restart=yes"* ]] && [[ "$OUT" == *" 0% packet loss"* ]]; then
        result PASS "agent restart: no packet lost" "$stats (ping at 10/s spanning both restarts, ${restarted} s)"
    else
        result FAIL "agent restart: no packet lost" "${stats:-no ping statistics}; $(grep -o 'ping-running-after-restart=[a-z]*' <<<"$OUT" || true)"
    fi

    # 7. node-2 is re-keyed: a new key file and a restarted agent. node-1 swaps
    # the peer entry (exactly one peer left, with the new key) and traffic flows.
    # A canary ping runs across it under capture: while the new key awaits its
    # handshake, node-2's CIDR stays in the tunnel and nothing crosses in clear.
    vm_must 2 20 'wireseal keys public --state-dir /var/lib/wireseal'
    local old_key=${OUT//[[:space:]]/}
    start_capture rekey
    bg_ping 1 2 rekey
    stop_agent 2 TERM
    vm_must 2 20 'rm -f /var/lib/wireseal/private.key'
    start_agent 2
    if wait_encrypted 60; then
        vm_must 2 20 'wireseal keys public --state-dir /var/lib/wireseal'
        local new_key=${OUT//[[:space:]]/}
        vm_exec 1 20 "wg show $WG_IFACE peers" || true
        local peers=$OUT
        ok=0
        if [ -n "$new_key" ] && [ "$new_key" != "$old_key" ] && [ "$(grep -c . <<<"$peers")" -eq 1 ] &&
            [[ "$peers" == *"$new_key"* ]] && pod_ping 1 2 3; then
            ok=1
        fi
        check "re-key: node-1 follows node-2's new key" \
            "old ${old_key:0:8}, new ${new_key:0:8}; node-1 peers: $(tr '\n' ' ' <<<"$peers" | cut -c1-100)" \
            test "$ok" -eq 1
    else
        result FAIL "re-key: node-1 follows node-2's new key" "not $(mesh) within 60 s"
    fi
    bg_ping_stop 1 rekey
    stop_capture
    say "re-key: node-1 → node-2 ping across it: $PING_LOST lost of $PING_SENT (held while the new key handshakes)"
    wire_checks "during the re-key"

    # 7b. A scheduled key rotation of node-2 under a 10 ms ping.
    rotation_under_ping

    # 8. node-3 has run the kernel tests; it joins, node-2's allowed IPs change,
    # and node-3 leaves, each under a running ping between the other two.
    collect_kernel_tests 300
    join_node3
    allowed_ips
    leave_node3
    strict_mode

    # 9. wireseal cleanup hands the traffic back to the CNI's routes.
    for n in "${ACTIVE[@]}"; do
        stop_agent "$n" TERM
        vm_exec "$n" 60 "wireseal cleanup" || true
        local cleanup_out=$OUT cleanup_rc=$RC
        vm_exec "$n" 20 "ip link show $WG_IFACE >/dev/null 2>&1 && echo link-left
ip rule | grep -q 'lookup $WG_TABLE' && echo rule-left
ip rule | grep -q 'lookup $CATCH_ALL_TABLE' && echo catch-all-rule-left
[ -n \"\$(ip route show table $WG_TABLE)\" ] && echo routes-left
[ -n \"\$(ip route show table $CATCH_ALL_TABLE)\" ] && echo catch-alls-left
true" || true
        check "node-$n: wireseal cleanup" "rc $cleanup_rc; left: ${OUT:-nothing}" \
            test "$cleanup_rc" -eq 0 -a -z "$OUT"
        [ "$cleanup_rc" -eq 0 ] || say "cleanup output: $cleanup_out"
    done
    ok=1
    pod_ping 1 2 3 || ok=0
    pod_ping 2 1 3 || ok=0
    check "after cleanup: pods reach each other over the CNI" "host-gw routes, plain" test "$ok" -eq 1

    # 10. IPsec mode on the same two nodes.
    ipsec_mode

    [ "$BENCH" -eq 1 ] && bench_rounds

    local total=$(($(date +%s) - T0))
    echo
    echo "== vmlab summary ($ACCEL, kernel $KVER, ${#NODES[@]} VMs, ${total} s)"
    printf '%s\n' "${RESULTS[@]}"
    if [ "$FAILED" -eq 0 ]; then
        echo "== PASS (${#RESULTS[@]} checks)"
    else
        echo "== FAIL ($FAILED of ${#RESULTS[@]} checks failed)"
        return 1
    fi
}

# ------------------------------------------------------------------- bench ----

# --bench: node-1's pod to node-2's pod through each datapath, in ROUNDS rounds
# that each run the three in a rotated order, so that a slow phase of the host
# (emulation feels everything else running) falls on all three alike. Ratios
# are taken within a round; the report gives their median over the rounds.
# VMLAB_BENCH_MODES="plain kernel ipsec" leaves a datapath out (the userspace
# one wants a release build of the tunnel to mean anything).
read -r -a MODES <<<"${VMLAB_BENCH_MODES:-plain kernel ipsec userspace}"
bench_userspace() { [ "$BENCH" -eq 1 ] && [[ " ${MODES[*]} " == *" userspace "* ]]; }
UDP_LEN=1300   # fits every datapath's MTU, so UDP compares like with like

mode_up() { # mode_up MODE
    local n extra=()
    case $1 in
        plain) return 0 ;;
        kernel) DATAPATH=kernel ;;
        ipsec) extra=(--encryption ipsec) ;;
        userspace)
            DATAPATH="userspace --spawn-tunnel /usr/bin/wireseal-tunnel"
            for n in 1 2; do vm_must "$n" 20 'modprobe tun && mkdir -p /var/run/wireguard'; done
            ;;
    esac
    for n in 1 2; do start_agent "$n" "${extra[@]}"; done
    DATAPATH=auto
    wait_encrypted 120
}

mode_down() { # mode_down MODE
    local n
    [ "$1" = plain ] && return 0
    for n in 1 2; do
        stop_agent "$n" TERM
        vm_exec "$n" 60 'wireseal cleanup' || die "node-$n: wireseal cleanup after the $1 round failed: $OUT"
    done
}

sample() { printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" >>"$RUN/bench.tsv"; } # MODE METRIC ROUND VALUE

measure() { # measure MODE ROUND
    local to v
    to=$(pod_ip 2)
    if vm_exec 1 60 "ip netns exec pod iperf3 -c $to -t 3 -f m"; then
        v=$(awk '/receiver/ {for (i = 1; i < NF; i++) if ($(i + 1) == "Mbits/sec") v = $i} END {print v + 0}' <<<"$OUT")
        sample "$1" tcp_mbps "$2" "$v"
    else
        result FAIL "bench: $1 TCP" "iperf3 failed: $(tail -n3 <<<"$OUT")"
    fi
    if vm_exec 1 60 "ip netns exec pod iperf3 -c $to -u -b 2000M -l $UDP_LEN -t 3 -f m"; then
        v=$(awk '/receiver/ {for (i = 1; i < NF; i++) if ($(i + 1) == "Mbits/sec") v = $i} END {print v + 0}' <<<"$OUT")
        sample "$1" udp_mbps "$2" "$v"
        v=$(awk '/receiver/ {for (i = 1; i <= NF; i++) if ($i ~ /^\([0-9.e+-]*%\)$/) { gsub(/[()%]/, "", $i); v = $i }} END {print v + 0}' <<<"$OUT")
        sample "$1" udp_loss_pct "$2" "$v"
    else
        result FAIL "bench: $1 UDP" "iperf3 -u failed: $(tail -n3 <<<"$OUT")"
    fi
    if vm_exec 1 60 "ip netns exec pod ping -n -q -c 40 -i 0.05 $to"; then
        v=$(sed -n 's|.*= [0-9.]*/\([0-9.]*\)/.*|\1|p' <<<"$OUT")
        sample "$1" rtt_ms "$2" "${v:-0}"
    else
        result FAIL "bench: $1 ping" "$(tail -n2 <<<"$OUT")"
    fi
}

median() { sort -g | awk '{ v[NR] = $1 } END { if (NR == 0) print "null"; else if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
values() { awk -F'\t' -v m="$1" -v k="$2" '$1 == m && $2 == k { print $4 }' "$RUN/bench.tsv"; }
# Per-round A/B (or A-B with op=diff), one line per round where both exist.
per_round() { # per_round A B METRIC [diff]
    awk -F'\t' -v a="$1" -v b="$2" -v k="$3" -v op="${4:-ratio}" '
        $2 == k && $1 == a { va[$3] = $4 } $2 == k && $1 == b { vb[$3] = $4 }
        END { for (r in va) if (r in vb) { if (op == "diff") printf "%.3f\n", va[r] - vb[r]; else if (vb[r] > 0) printf "%.3f\n", va[r] / vb[r] } }' "$RUN/bench.tsv"
}

bench_rounds() {
    : >"$RUN/bench.tsv"
    vm_must 2 20 'ip netns exec pod iperf3 -s -D --logfile /var/log/iperf3.log'
    local r i mode
    for ((r = 1; r <= ROUNDS; r++)); do
        for ((i = 0; i < ${#MODES[@]}; i++)); do
            mode=${MODES[(i + r - 1) % ${#MODES[@]}]}
            say "bench round $r/$ROUNDS: $mode"
            if mode_up "$mode"; then
                measure "$mode" "$r"
            else
                result FAIL "bench: $mode datapath up" "round $r: not $(mesh) within 120 s"
            fi
            mode_down "$mode"
        done
    done
    bench_report
}

bench_report() {
    local cpu qemu m k
    cpu=$(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)
    qemu=$(qemu-system-x86_64 --version | head -n1)
    echo
    echo "== bench: pod to pod, node-1 → node-2 ($ACCEL, 1 vCPU and $VM_MEM MiB per VM, guest kernel $KVER,"
    echo "   host: $(nproc) × $cpu; $ROUNDS rounds, rotated order; medians; ratios within a round)"
    printf '    %-22s %12s %12s %10s %10s\n' datapath 'TCP Mbit/s' 'UDP Mbit/s' 'UDP loss%' 'RTT ms'
    for m in "${MODES[@]}"; do
        printf '    %-22s %12s %12s %10s %10s\n' "$m" "$(values "$m" tcp_mbps | median)" \
            "$(values "$m" udp_mbps | median)" "$(values "$m" udp_loss_pct | median)" "$(values "$m" rtt_ms | median)"
    done
    printf '    %-22s %12s %12s %10s %10s\n' 'kernel / plain' "$(per_round kernel plain tcp_mbps | median)" \
        "$(per_round kernel plain udp_mbps | median)" '' "+$(per_round kernel plain rtt_ms diff | median)"
    printf '    %-22s %12s %12s %10s %10s\n' 'ipsec / plain' "$(per_round ipsec plain tcp_mbps | median)" \
        "$(per_round ipsec plain udp_mbps | median)" '' "+$(per_round ipsec plain rtt_ms diff | median)"
    printf '    %-22s %12s %12s\n' 'ipsec / kernel' "$(per_round ipsec kernel tcp_mbps | median)" \
        "$(per_round ipsec kernel udp_mbps | median)"
    printf '    %-22s %12s %12s %10s %10s\n' 'userspace / plain' "$(per_round userspace plain tcp_mbps | median)" \
        "$(per_round userspace plain udp_mbps | median)" '' "+$(per_round userspace plain rtt_ms diff | median)"
    printf '    %-22s %12s %12s\n' 'userspace / kernel' "$(per_round userspace kernel tcp_mbps | median)" \
        "$(per_round userspace kernel udp_mbps | median)"
    [ -n "$BENCH_OUT" ] || return 0
    {
        printf '{\n  "accelerator": "%s",\n  "guest_kernel": "%s",\n  "qemu": "%s",\n' "$ACCEL" "$KVER" "$qemu"
        printf '  "host_cpu": "%s",\n  "host_cpus": %s,\n  "vm": {"vcpus": 1, "memory_mib": %s, "cpu": "%s"},\n' \
            "$cpu" "$(nproc)" "$VM_MEM" "${ACCEL_ARGS[*]}"
        printf '  "tunnel_binary": "%s",\n  "rounds": %s,\n  "udp_payload_bytes": %s,\n' "$TUNNEL_BIN" "$ROUNDS" "$UDP_LEN"
        printf '  "iperf3_seconds": 3,\n  "samples": [\n'
        awk -F'\t' '{ printf "%s    {\"datapath\": \"%s\", \"metric\": \"%s\", \"round\": %s, \"value\": %s}", (NR > 1 ? ",\n" : ""), $1, $2, $3, $4 }' "$RUN/bench.tsv"
        printf '\n  ],\n  "medians": {\n'
        local first=1
        for m in "${MODES[@]}"; do
            [ $first -eq 1 ] || printf ',\n'
            first=0
            printf '    "%s": {' "$m"
            local sep=""
            for k in tcp_mbps udp_mbps udp_loss_pct rtt_ms; do
                printf '%s"%s": %s' "$sep" "$k" "$(values "$m" "$k" | median)"
                sep=", "
            done
            printf '}'
        done
        printf '\n  },\n  "median_ratio_within_round": {\n'
        printf '    "kernel_over_plain": {"tcp": %s, "udp": %s},\n' "$(per_round kernel plain tcp_mbps | median)" "$(per_round kernel plain udp_mbps | median)"
        printf '    "ipsec_over_plain": {"tcp": %s, "udp": %s},\n' "$(per_round ipsec plain tcp_mbps | median)" "$(per_round ipsec plain udp_mbps | median)"
        printf '    "ipsec_over_kernel": {"tcp": %s, "udp": %s},\n' "$(per_round ipsec kernel tcp_mbps | median)" "$(per_round ipsec kernel udp_mbps | median)"
        printf '    "userspace_over_plain": {"tcp": %s, "udp": %s},\n' "$(per_round userspace plain tcp_mbps | median)" "$(per_round userspace plain udp_mbps | median)"
        printf '    "userspace_over_kernel": {"tcp": %s, "udp": %s}\n  },\n' "$(per_round userspace kernel tcp_mbps | median)" "$(per_round userspace kernel udp_mbps | median)"
        printf '  "median_added_rtt_ms_within_round": {"kernel": %s, "ipsec": %s, "userspace": %s}\n}\n' \
            "$(per_round kernel plain rtt_ms diff | median)" "$(per_round ipsec plain rtt_ms diff | median)" \
            "$(per_round userspace plain rtt_ms diff | median)"
    } >"$BENCH_OUT"
    say "bench samples and medians written to $BENCH_OUT"
}

main
