#!/usr/bin/env bash
# Install what bench/ needs, idempotently: Debian packages (wrk for load, nginx for the machine's
# ceiling, pgbouncer for the fleet section, PostgreSQL 15 + contrib for pg_stat_statements) and
# the Python packages of the `bench` extra into the project's venv.
#
# Usage: bash .ci/bench-tools.sh            (from the repo root; root or sudo for apt)
#        VENV=/path/to/venv bash .ci/bench-tools.sh
# Safe to run again: it installs only what is missing and starts no service.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${VENV:-$here/.venv}"

debs=(wrk nginx-light pgbouncer postgresql-15 postgresql-contrib procps)
missing=()
for pkg in "${debs[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$pkg")
    fi
done

if ((${#missing[@]})); then
    sudo=""
    if [[ $(id -u) -ne 0 ]]; then sudo="sudo"; fi
    # Debian's maintainer scripts would start nginx on :80 and pgbouncer on :6432; the bench runs
    # its own instances on free loopback ports, so keep the packaged services stopped: a
    # policy-rc.d that says "no" for the length of this install (only if none exists already).
    policy=/usr/sbin/policy-rc.d
    made_policy=0
    if [[ ! -e $policy ]]; then
        printf '#!/bin/sh\nexit 101\n' | $sudo tee "$policy" >/dev/null
        $sudo chmod 755 "$policy"
        made_policy=1
    fi
    trap '[[ $made_policy -eq 1 ]] && $sudo rm -f "$policy"' EXIT
    # Wait for a concurrent apt run rather than failing on its lock.
    $sudo apt-get -o DPkg::Lock::Timeout=600 update -q
    DEBIAN_FRONTEND=noninteractive $sudo apt-get -o DPkg::Lock::Timeout=600 install -y -q \
        --no-install-recommends "${missing[@]}"
fi

# The bench extra (mirrors [project.optional-dependencies] bench in pyproject.toml).
bench_pips=(
    "fastapi>=0.110"
    "sqlalchemy[asyncio]>=2.0.30"
    "uvicorn>=0.29"
    "httptools>=0.6"
    "matplotlib>=3.8"
    "py-spy>=0.3.14"
    "pyinstrument>=4.6"
    "uvloop>=0.19"
)
if [[ -x "$venv/bin/pip" ]]; then
    "$venv/bin/pip" install -q --disable-pip-version-check "${bench_pips[@]}"
else
    echo "bench-tools: no venv at $venv; create it first (python3 -m venv $venv)" >&2
    exit 1
fi

for tool in wrk nginx pgbouncer; do
    command -v "$tool" >/dev/null || [[ -x /usr/sbin/$tool ]] || {
        echo "bench-tools: $tool missing after install" >&2
        exit 1
    }
done
echo "bench-tools: ok"
