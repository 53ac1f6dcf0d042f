"""The image itself, built with buildah from the unchanged Dockerfile on a local Debian base.

Checked as an image (config, history, files) and as a running container: numeric non-root USER,
HEALTHCHECK, OCI labels, nothing that installs or compiles in the runtime stage, the project's
layers within budget, and the entrypoint serving /health under the chart's hardening flags.
"""

from __future__ import annotations

import json

import pytest
from support.image import (
    BASE_IMAGE,
    IMAGE,
    Store,
)

# The layers the project adds on top of its base (the venv and the bytecode), in bytes.
ADDED_LAYERS_BUDGET = 40 * 1000 * 1000
CONFIGURED_USER = "65532:65532"

pytestmark = pytest.mark.slow


def python_in_image(image_store: Store, code: str) -> str:
    """Run `code` with the image's interpreter, as the image's user, without a network."""
    return image_store.run_in_image(IMAGE, "-c", code, entrypoint="python")


def test_project_layers_fit_the_budget(image_store: Store) -> None:
    """The layers the Dockerfile adds on top of its base weigh at most 40 MB (podman history)."""
    added = image_store.added_bytes(IMAGE, BASE_IMAGE)
    print(f"\nimage: {added / 1e6:.1f} MB added to the base")
    assert 1_000_000 < added <= ADDED_LAYERS_BUDGET


def test_config_has_numeric_user_healthcheck_and_oci_labels(image_store: Store) -> None:
    """USER is numeric and non-root, HEALTHCHECK runs the probe subcommand, OCI labels are set."""
    data = image_store.inspect(IMAGE)
    assert data["Config"]["User"] == CONFIGURED_USER
    assert data["Config"]["Entrypoint"] == ["health-sidecar"]
    check = data["Healthcheck"]
    assert check["Test"] == ["CMD", "health-sidecar", "probe", "health"]
    assert check["Retries"] == 3
    labels = data["Labels"]
    for key in ("title", "description", "version", "licenses"):
        assert labels[f"org.opencontainers.image.{key}"], key


def test_runtime_has_no_installer_compiler_or_curl(image_store: Store) -> None:
    """No pip, setuptools or wheel importable, no pip/compiler/curl on PATH, no C sources."""
    out = python_in_image(
        image_store,
        "import importlib.util, json, os, shutil, sys\n"
        "mods = [m for m in ('pip', 'setuptools', 'wheel') if importlib.util.find_spec(m)]\n"
        "tools = [t for t in ('pip', 'pip3', 'gcc', 'cc', 'curl', 'wget') if shutil.which(t)]\n"
        "sources = [os.path.join(d, f) for d, _, fs in os.walk('/opt/venv') for f in fs\n"
        "           if f.endswith(('.c', '.h', '.pyx', '.pxd'))]\n"
        "tests = [d for d, _, _ in os.walk('/opt/venv') if os.path.basename(d) == 'tests']\n"
        "print(json.dumps([os.getuid(), mods, tools, sources, tests]))\n",
    )
    uid, modules, tools, sources, tests = json.loads(out)
    assert uid == 65532
    assert modules == []
    assert tools == []
    assert sources == []
    assert tests == []


def test_every_module_is_compiled_and_imports_without_writing(image_store: Store) -> None:
    """The sidecar and its dependencies import from .pyc on a read-only root: nothing to write."""
    out = image_store.podman(
        "run", "--rm", "--network", "none", "--read-only", "--read-only-tmpfs=false",
        "--cap-drop=ALL", "--security-opt", "no-new-privileges", "--entrypoint", "python",
        IMAGE, "-X", "importtime", "-c",
        "import sys, importlib.util\n"
        "import sidecar.__main__, aiohttp, asyncpg, prometheus_client, structlog, yaml\n"
        "missing = [n for n, m in sorted(sys.modules.items())\n"
        "           if getattr(m, '__cached__', None) and m.__spec__ and m.__spec__.origin\n"
        "           and m.__spec__.origin.endswith('.py')\n"
        "           and not __import__('os').path.exists(m.__cached__)]\n"
        "print(len(sys.modules), missing)\n",
    )  # fmt: skip
    count, missing = out.strip().split(" ", 1)
    assert int(count) > 100
    assert missing == "[]"


def test_entrypoint_rejects_a_bad_setting_with_one_line(image_store: Store) -> None:
    """The image's entrypoint is the command: a bad setting exits 2 with one line naming it."""
    result = image_store.run(
        "podman", "run", "--rm", "--network", "none", "--no-healthcheck",
        # A database is named, so that the port is the one problem.
        "--env", "SIDECAR_PORT=eighty", "--env", "PGHOST=db.invalid",
        IMAGE, check=False, timeout=120,
    )  # fmt: skip
    stderr = result.stderr.decode().strip().splitlines()
    assert result.returncode == 2, result
    assert len(stderr) == 1, stderr
    assert "SIDECAR_PORT" in stderr[0]
    assert "Traceback" not in result.stdout.decode()
