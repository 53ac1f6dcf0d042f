#!/usr/bin/env bash
# Installs what the image and pod tests need (tests/test_image.py, tests/test_pod.py): buildah
# and podman with the runc runtime to build and run the image without a Docker engine,
# debootstrap to make the base locally (no registry is reachable), iproute2 and iptables for the
# pod's network namespaces and the database blackhole. Idempotent; meant for root on a fresh
# Debian 12 that reaches only PyPI and Debian.
#
# The containers.conf settings this machine needs (runc, rlimits, cgroupfs, file events) are
# written by the tests into their private store, not into /etc.
set -euo pipefail

sudo=""
if [[ $(id -u) -ne 0 ]]; then sudo="sudo"; fi

packages=(
    buildah podman runc uidmap fuse-overlayfs slirp4netns conmon catatonit debootstrap
    iproute2 iptables tar
)
missing=()
for pkg in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" \
        || missing+=("$pkg")
done
if ((${#missing[@]})); then
    $sudo apt-get -o DPkg::Lock::Timeout=600 update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive $sudo apt-get -o DPkg::Lock::Timeout=600 install -y -q \
        --no-install-recommends "${missing[@]}" >/dev/null
    echo "image-tools: installed ${missing[*]}"
else
    echo "image-tools: ${packages[*]} already installed"
fi
echo "image-tools: $(buildah --version); $(podman --version); $(runc --version | head -n1)"
