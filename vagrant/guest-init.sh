#!/usr/bin/busybox sh
# shellcheck shell=dash
# /init of the wireseal VM lab's guests (see vmlab.sh). Runs under busybox sh, whose
# applets shadow real binaries of the same name, so the real tools are called by path.
#
# Kernel command line: wsv.name=NODE wsv.ip=ADDR/PREFIX
# It mounts the pseudo file systems, loads the virtio drivers, brings eth0 up with
# the node's address, then serves a control shell (bash) on the virtio-serial port
# wsv.ctl, which the host drives, and prints WSV-READY on the console (ttyS0).

BB=/usr/bin/busybox
PATH=/usr/sbin:/usr/bin:/bb
export PATH

$BB mount -t proc proc /proc
$BB mount -t sysfs sysfs /sys
$BB mount -t devtmpfs devtmpfs /dev
$BB mkdir -p /dev/pts /run /tmp /var/lib /var/log
$BB mount -t devpts devpts /dev/pts
$BB mount -t tmpfs -o mode=0755 tmpfs /run

fail() {
    echo "WSV-FAIL: $*" >/dev/console
    $BB poweroff -f
}

name=""
addr=""
for word in $($BB cat /proc/cmdline); do
    case "$word" in
        wsv.name=*) name=${word#wsv.name=} ;;
        wsv.ip=*) addr=${word#wsv.ip=} ;;
    esac
done
if [ -z "$name" ] || [ -z "$addr" ]; then
    fail "kernel command line lacks wsv.name= or wsv.ip="
fi
$BB hostname "$name"

for m in virtio_pci virtio_net virtio_rng virtio_console; do
    /usr/sbin/modprobe "$m" || fail "modprobe $m"
done

# No IPv6 on the underlay: every frame on the wire is then ARP or IPv4, which the
# host's capture classifies.
echo 1 >/proc/sys/net/ipv6/conf/all/disable_ipv6
echo 1 >/proc/sys/net/ipv6/conf/default/disable_ipv6
echo 1 >/proc/sys/net/ipv4/ip_forward

i=0
while [ ! -e /sys/class/net/eth0 ]; do
    i=$((i + 1))
    [ "$i" -gt 100 ] && fail "no eth0 after 10 s"
    $BB usleep 100000
done
echo 1 >/proc/sys/net/ipv6/conf/eth0/disable_ipv6
/usr/bin/ip link set lo up || fail "ip link set lo up"
/usr/bin/ip addr add "$addr" dev eth0 || fail "ip addr add $addr dev eth0"
/usr/bin/ip link set eth0 up || fail "ip link set eth0 up"

# The control shell reads commands from the virtio-serial port "wsv.ctl" and writes
# their output back to it (a plain character device: no tty line discipline, no
# hangups). Its output goes through a pipe: with stderr not a terminal, bash is not
# interactive (no prompts, no job control, no history expansion of '!'). If it ends,
# its exit status goes to the console and a new one starts.
ctl=""
i=0
while [ -z "$ctl" ]; do
    for p in /sys/class/virtio-ports/*; do
        [ "$($BB cat "$p/name" 2>/dev/null)" = wsv.ctl ] && ctl=/dev/${p##*/}
    done
    i=$((i + 1))
    [ "$i" -gt 100 ] && fail "no virtio-serial port wsv.ctl after 10 s"
    if [ -z "$ctl" ] || [ ! -c "$ctl" ]; then
        ctl=""
        $BB usleep 100000
    fi
done
# shellcheck disable=SC2016
$BB setsid $BB sh -c 'exec 4<>"$1"; while true; do
    { /usr/bin/bash --noprofile --norc -s <&4
      echo "WSV-CTL-EXIT bash status $? at $(/usr/bin/busybox date +%T)" >/dev/console; } 2>&1 |
        /usr/bin/busybox cat >&4
    echo "WSV-CTL-EXIT cat status $? at $(/usr/bin/busybox date +%T)" >/dev/console
done' ctl "$ctl" &
# A rescue shell on ttyS1 for post-mortems (vmlab.sh's VMLAB_HOLD), independent of
# the control shell.
$BB setsid $BB sh -c 'exec 0</dev/ttyS1 1>/dev/ttyS1 2>&1; /usr/bin/busybox stty 115200 raw -echo clocal; exec /usr/bin/bash --noprofile --norc -s' &
echo "WSV-READY $name" >/dev/console

# PID 1 must not exit; it reaps orphans.
while true; do
    wait
    $BB sleep 3600
done
