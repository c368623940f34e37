#!/usr/bin/env bash
# ws-1 only, before k3s: builds the wireseal image from the repository's
# Containerfile and the lab's test-pod image with Debian's podman, and saves both
# to the shared folder, where every node picks them up (preload.sh).
# The release build takes a while on 2 vCPUs (tens of minutes; crates.io and the
# base images come from the internet).
set -euo pipefail
repo=/wireseal
share=/share/images
# The name the DaemonSet runs, so what is built is what is deployed.
image=$(awk '$1 == "image:" { print $2; exit }' "$repo/deploy/kubernetes/20-daemonset.yaml")
lab_image=localhost/wireseal-lab-pod:1
[ -n "$image" ] || { echo "no image: in deploy/kubernetes/20-daemonset.yaml" >&2; exit 1; }

export DEBIAN_FRONTEND=noninteractive
apt-get install -y -q --no-install-recommends podman

# rustc and the linker need more memory than a lab VM spares: swap as a cushion.
if ! swapon --show=NAME --noheadings | grep -qx /swapfile; then
    [ -f /swapfile ] || { fallocate -l 4G /swapfile && chmod 600 /swapfile && mkswap /swapfile; }
    swapon /swapfile
fi

# Nodes provisioned later must not pick up a tarball of an earlier `vagrant up`.
rm -f "$share/wireseal.tar" "$share/lab-pod.tar"
mkdir -p "$share"
podman build --tag "$image" --file "$repo/Containerfile" "$repo"
podman build --tag "$lab_image" --file "$repo/vagrant/k3s/lab-pod.Containerfile" "$repo/vagrant/k3s"
podman save --format docker-archive --output "$share/lab-pod.tar.tmp" "$lab_image"
mv "$share/lab-pod.tar.tmp" "$share/lab-pod.tar"
podman save --format docker-archive --output "$share/wireseal.tar.tmp" "$image"
mv "$share/wireseal.tar.tmp" "$share/wireseal.tar"
echo "saved $image and $lab_image to $share"
