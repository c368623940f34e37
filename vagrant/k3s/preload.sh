#!/usr/bin/env bash
# Every node, before k3s starts: puts ws-1's image tarballs into k3s's image
# directory, which k3s imports into its containerd when it starts, so the
# DaemonSet's pods find the image (imagePullPolicy IfNotPresent) as soon as the
# node joins. On a re-provision, with k3s already running, imports them now.
set -euo pipefail
share=/share/images
dir=/var/lib/rancher/k3s/agent/images
# ws-1 builds them; with a parallel `vagrant up` (libvirt) the others wait.
for _ in $(seq 1080); do
    [ -s "$share/wireseal.tar" ] && [ -s "$share/lab-pod.tar" ] && break
    sleep 5
done
for f in wireseal.tar lab-pod.tar; do
    [ -s "$share/$f" ] || { echo "no $share/$f after 90 min: did images.sh on ws-1 fail?" >&2; exit 1; }
done
install -d "$dir"
install -m 0644 "$share/wireseal.tar" "$share/lab-pod.tar" "$dir/"
if systemctl is-active --quiet k3s || systemctl is-active --quiet k3s-agent; then
    k3s ctr images import "$dir/wireseal.tar"
    k3s ctr images import "$dir/lab-pod.tar"
fi
