"""The SBOM of the image's Python environment (.ci/sbom.py, as the release workflow makes it):
generated from the image CI builds, valid CycloneDX, every runtime package with its version and
licence; and the completeness check fails on an SBOM that leaves one out."""

from __future__ import annotations

import copy
import json
import tomllib
from typing import Any

import pytest
from support.ciscripts import CI, load
from support.image import IMAGE, Store

import sidecar

pytestmark = pytest.mark.slow
sbom = load("sbom")


@pytest.fixture(scope="module")
def image_sbom(image_store: Store, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The SBOM of the image, its problems, and what the image itself says is installed."""
    output = tmp_path_factory.mktemp("sbom") / "sbom.cdx.json"
    problems = sbom.build(["podman"], IMAGE, output, image_store.env)
    _, installed = sbom.inspect_image(["podman"], IMAGE, image_store.env)
    return {
        "problems": problems,
        "document": json.loads(output.read_text()),
        "installed": installed,
    }


def names(document: dict[str, Any]) -> set[str]:
    return {sbom.normalized(c["name"]) for c in document["components"]}


def test_image_sbom_lists_every_runtime_package_with_version_and_licence(
    image_sbom: dict[str, Any],
) -> None:
    """Each distribution in the image's venv is in the SBOM with its version and a licence."""
    assert image_sbom["problems"] == []
    document = image_sbom["document"]
    assert document["bomFormat"] == "CycloneDX"
    main = document["metadata"]["component"]
    assert (main["name"], main["version"]) == ("health-sidecar", sidecar.__version__)
    installed = {sbom.normalized(n) for n in image_sbom["installed"]} - {"health-sidecar"}
    assert installed == names(document)
    for component in document["components"]:
        assert component["version"] == image_sbom["installed"][component["name"]]
        assert sbom.licences(component), component["name"]


def test_image_sbom_covers_every_declared_runtime_dependency(image_sbom: dict[str, Any]) -> None:
    """pyproject's runtime dependencies (and none of the test extra) are in the image's SBOM."""
    project = tomllib.loads((CI.parent / "pyproject.toml").read_text())["project"]
    listed = names(image_sbom["document"])
    for requirement in project["dependencies"]:
        name = requirement.split(";")[0].split("[")[0]
        name = name.split(">")[0].split("<")[0].split("=")[0].split("!")[0].strip()
        assert sbom.normalized(name) in listed, name
    assert not {"pytest", "mypy", "cyclonedx-bom", "zizmor"} & listed


@pytest.mark.parametrize("broken", ["missing", "version", "licence"])
def test_completeness_check_fails_on_a_broken_sbom(image_sbom: dict[str, Any], broken: str) -> None:
    """An SBOM without asyncpg, with another asyncpg version, or without its licence is refused."""
    document = copy.deepcopy(image_sbom["document"])
    (asyncpg,) = [c for c in document["components"] if c["name"] == "asyncpg"]
    if broken == "missing":
        document["components"].remove(asyncpg)
    elif broken == "version":
        asyncpg["version"] = "0.0.1"
    else:
        asyncpg.pop("licenses")
    found = sbom.problems(document, image_sbom["installed"], root="health-sidecar")
    assert len(found) == 1
    assert found[0].startswith("asyncpg")
