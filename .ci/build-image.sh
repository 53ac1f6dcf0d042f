#!/usr/bin/env bash
# Builds the image from the unchanged Dockerfile without pulling anything from a registry: the
# base its FROM names (python:3.11-slim-bookworm) is made locally with debootstrap (a minimal
# Debian 12 with python3-venv and pip, and a `python` command as the official image has) and
# imported under that name, then buildah builds the Dockerfile on it. This is how CI builds the
# image (tests/support/image.py calls this script for the base).
#
#   bash .ci/build-image.sh [TAG]        the base if missing, then the image (default tag:
#                                        health-sidecar:<package version>)
#   bash .ci/build-image.sh --base-only  the base alone
#
# Root on Debian 12 with .ci/image-tools.sh's packages. podman/buildah use the machine's store
# unless CONTAINERS_CONF / CONTAINERS_STORAGE_CONF say otherwise (the tests use a private one).
# MIRROR overrides the Debian mirror (default: the one apt uses here). The machine's pip settings
# and CA bundle are copied into the base, so pip inside the build reaches the package index the
# way this machine does.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

base_only=0
if [[ ${1:-} == "--base-only" ]]; then
    base_only=1
    shift
fi
version="$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' "$repo/sidecar/__init__.py")"
tag="${1:-health-sidecar:$version}"
base="$(sed -n 's/^FROM \([^ ]*\) AS build$/\1/p' "$repo/Dockerfile")"
[[ -n $base ]] || { echo "build-image: no 'FROM <base> AS build' in the Dockerfile" >&2; exit 2; }

mirror() {
    # The first non-security Debian mirror apt is configured with (deb822 or one-line sources).
    local found
    found="$(cat /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '$1 == "URIs:" && $2 !~ /security/ {print $2; exit}')"
    [[ -n $found ]] || found="$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null \
        | awk '$1 == "deb" {for (i = 2; i <= NF; i++) if ($i ~ /:\/\//) {if ($i !~ /security/) {print $i; exit}; break}}')"
    # Debian's cloud images name a file listing mirrors (mirror+file:), which apt reads and
    # debootstrap cannot: take the first mirror it lists.
    if [[ $found == mirror+file:* ]]; then
        found="$(awk '$1 ~ /:\/\// {print $1; exit}' "${found#mirror+file://}" 2>/dev/null || true)"
    fi
    [[ $found == *://* && $found != mirror+* ]] || found=""
    echo "${found:-http://deb.debian.org/debian}"
}

if podman image exists "$base"; then
    echo "build-image: base $base already in the store"
else
    rootfs="$(mktemp -d "${TMPDIR:-/tmp}/hs-base-XXXXXX")"
    trap 'rm -rf "$rootfs"' EXIT
    # python3-pip: the official image has pip, and the Dockerfile must remove it.
    debootstrap --variant=minbase --include=python3-venv,python3-pip,ca-certificates \
        bookworm "$rootfs" "${MIRROR:-$(mirror)}" >/dev/null
    for conf in /etc/pip.conf /etc/xdg/pip; do
        if [[ -e $conf ]]; then
            mkdir -p "$rootfs$(dirname "$conf")"
            cp -a "$conf" "$rootfs$conf"
        fi
    done
    if [[ -f /etc/ssl/certs/ca-certificates.crt ]]; then
        cp /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/ca-certificates.crt"
    fi
    mkdir -p "$rootfs/usr/local/bin"
    ln -sfn /usr/bin/python3 "$rootfs/usr/local/bin/python"
    # apt's cache and package lists are not part of any real base image.
    rm -rf "$rootfs/var/cache/apt/archives" "$rootfs/var/lib/apt/lists"
    changes=(--change "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
             --change "ENV LANG=C.UTF-8")
    while IFS='=' read -r name value; do
        [[ $name == PIP_* && $name != *FIND_LINKS* ]] && changes+=(--change "ENV $name=$value")
    done < <(env)
    tar -C "$rootfs" --numeric-owner -c . | podman import "${changes[@]}" - "$base" >/dev/null
    echo "build-image: base $base imported"
fi
((base_only)) && exit 0

# --format docker keeps the HEALTHCHECK (the OCI format has none); --pull=never: the base is ours.
buildah bud --isolation chroot --pull=never --format docker --layers -t "$tag" "$repo"
echo "build-image: $tag built"
