#!/usr/bin/env bash
# Installs Patroni and etcd from Debian (bookworm: patroni 3.0, etcd-server 3.4) for the real-HA
# tests (tests/test_ha.py), which start their own two-node Patroni cluster and one etcd on free
# loopback ports. Idempotent; meant for root on a fresh Debian 12 (sudo for anyone else).
#
# The packages' maintainer scripts would start system services (etcd on :2379, Patroni on :8008
# with a PostgreSQL on :5432). The tests run their own, so a policy-rc.d that answers 101
# ("action forbidden") keeps invoke-rc.d from starting them, and whatever started anyway is
# stopped and disabled for later boots.
set -euo pipefail

sudo=""
if [[ $(id -u) -ne 0 ]]; then sudo="sudo"; fi

# python3-etcd: Patroni's Debian dependency is "python3-etcd | python3-consul | ...", and its
# etcd3 client imports the v2 client's exceptions; name it so no other alternative is picked.
packages=(patroni etcd-server python3-etcd)

installed() {
    dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"
}

missing=()
for pkg in "${packages[@]}"; do
    installed "$pkg" || missing+=("$pkg")
done

if ((${#missing[@]})); then
    policy=/usr/sbin/policy-rc.d
    created_policy=0
    if [[ ! -e $policy ]]; then
        printf '#!/bin/sh\n# written by .ci/ha-tools.sh while installing patroni and etcd\nexit 101\n' \
            | $sudo tee "$policy" >/dev/null
        $sudo chmod 0755 "$policy"
        created_policy=1
    fi
    cleanup() {
        if ((created_policy)); then $sudo rm -f "$policy"; fi
    }
    trap cleanup EXIT
    # An update first: a fresh image has no package lists. Recommends are not needed.
    $sudo apt-get -o DPkg::Lock::Timeout=600 update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get -o DPkg::Lock::Timeout=600 install -y -qq \
        --no-install-recommends "${missing[@]}" >/dev/null
fi

# Belt and braces: no packaged etcd or Patroni should run, now or after a reboot. Only the
# packages' own services are touched: systemd knows its units' processes; without systemd only
# the PID in the package's pidfile is signalled. Never `/etc/init.d/etcd stop`: its generic
# init-d-script also stops every process running /usr/bin/etcd, the tests' own included.
for service in etcd patroni; do
    if command -v systemctl >/dev/null 2>&1 && [[ -d /run/systemd/system ]]; then
        $sudo systemctl disable --now "$service.service" >/dev/null 2>&1 || true
        continue
    fi
    pidfile=/run/$service.pid
    if [[ -f $pidfile ]]; then
        pid="$(cat "$pidfile")"
        if [[ $pid =~ ^[0-9]+$ ]]; then
            # The Patroni script's pidfile names a shell whose child is Patroni.
            for child in $(ps --ppid "$pid" -o pid= 2>/dev/null); do
                $sudo kill "$child" 2>/dev/null || true
            done
            $sudo kill "$pid" 2>/dev/null || true
        fi
        $sudo rm -f "$pidfile"
    fi
    if command -v update-rc.d >/dev/null 2>&1 && [[ -x /etc/init.d/$service ]]; then
        $sudo update-rc.d "$service" disable >/dev/null 2>&1 || true
    fi
done

for tool in patroni patronictl etcd; do
    command -v "$tool" >/dev/null || { echo "ha-tools: $tool missing after install" >&2; exit 1; }
done
echo "ha-tools: $(patroni --version 2>&1 | head -n1), $(etcd --version 2>&1 | head -n1)"
