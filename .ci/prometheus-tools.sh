#!/usr/bin/env bash
# Installs promtool and the prometheus server binary from Debian's `prometheus` package, for the
# alert-rule, dashboard and end-to-end tests (tests/test_alerts.py, tests/test_dashboard.py,
# tests/test_prometheus_e2e.py). Idempotent; meant for root on a fresh Debian 12.
#
# The package's maintainer scripts would start the system service. The tests start their own
# server on a free loopback port with a temp TSDB, so a system one is only in the way: a
# policy-rc.d that answers 101 ("action forbidden") keeps invoke-rc.d from starting it, and in
# case something did start it anyway we stop it and disable it for later boots.
set -euo pipefail

if command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1; then
    echo "prometheus-tools: already installed: $(promtool --version 2>&1 | head -n1)"
    exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
    echo "prometheus-tools: must run as root to apt-get install prometheus" >&2
    exit 1
fi

policy=/usr/sbin/policy-rc.d
created_policy=0
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\n# written by .ci/prometheus-tools.sh while installing prometheus\nexit 101\n' >"$policy"
    chmod 0755 "$policy"
    created_policy=1
fi
cleanup() {
    if [ "$created_policy" -eq 1 ]; then
        rm -f "$policy"
    fi
}
trap cleanup EXIT

export DEBIAN_FRONTEND=noninteractive
# An update first: a fresh image has no package lists. Recommends would pull node-exporter.
apt-get update -qq
apt-get install -y -qq --no-install-recommends prometheus >/dev/null

# Belt and braces: no system Prometheus should be left listening on :9090.
if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
    systemctl disable --now prometheus.service >/dev/null 2>&1 || true
else
    if [ -x /etc/init.d/prometheus ]; then
        /etc/init.d/prometheus stop >/dev/null 2>&1 || true
    fi
    if command -v update-rc.d >/dev/null 2>&1; then
        update-rc.d prometheus disable >/dev/null 2>&1 || true
    fi
fi

command -v promtool >/dev/null
command -v prometheus >/dev/null
echo "prometheus-tools: installed: $(promtool --version 2>&1 | head -n1)"
