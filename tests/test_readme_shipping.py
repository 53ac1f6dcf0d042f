"""README "Add it to your own workload": its plain YAML equals the library chart's rendering."""

from __future__ import annotations

import os
import re
import shlex
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from support import REPO
from support.helmdeps import dependencies_updated

try:
    import helm_python as helm
except ImportError:
    if os.environ.get("CI") == "true":
        raise  # CI installs it (.ci/k8s-tools.sh): missing is a failure there
    pytest.skip("helm-python-sdk missing", allow_module_level=True)

FOREIGN = dependencies_updated(REPO / "tests" / "fixtures" / "foreign-chart")

helm.disable_logging()


def readme_snippet() -> Any:
    text = (REPO / "README.md").read_text()
    found = re.search(r"<!-- workload-snippet -->\n```yaml\n(.*?)```", text, re.DOTALL)
    assert found, "README lost its workload snippet"
    return yaml.safe_load(found.group(1))


def test_readme_plain_yaml_equals_the_library_rendering() -> None:
    """The sidecar, volume and app readinessProbe in the README are what the library renders."""
    with helm.Chart.load(FOREIGN) as chart:
        rendered = chart.render(
            {"healthSidecar": {"database": {"existingSecret": "health-sidecar-database"}}},
            name="any",
            namespace="default",
        )
    library = yaml.safe_load(rendered["inventory/templates/deployment.yaml"])
    library_spec = library["spec"]["template"]["spec"]
    snippet = readme_snippet()["spec"]["template"]["spec"]
    assert snippet["initContainers"] == library_spec["initContainers"]
    assert snippet["volumes"] == library_spec["volumes"]
    (app,) = snippet["containers"]
    library_app = next(c for c in library_spec["containers"] if c["name"] == "inventory")
    assert app["readinessProbe"] == library_app["readinessProbe"]


def readme_helm_commands() -> list[list[str]]:
    text = (REPO / "README.md").read_text()
    found = re.search(r"<!-- helm-cli -->\n```sh\n(.*?)```", text, re.DOTALL)
    assert found, "README lost its helm CLI steps"
    return [shlex.split(line, comments=True) for line in found.group(1).splitlines()]


def test_readme_helm_cli_steps_render_a_chart_of_your_own(tmp_path: Path) -> None:
    """The README's `helm` commands, run in order on a copy of the foreign chart through the
    same Helm library: update writes Chart.lock, build restores charts/ from it, template
    renders the pod with the sidecar; upgrade --install names the same release and chart."""
    chart = tmp_path / "my-chart"
    shutil.copytree(FOREIGN, chart, ignore=shutil.ignore_patterns("charts", "Chart.lock"))
    meta = yaml.safe_load((chart / "Chart.yaml").read_text())
    (dependency,) = meta["dependencies"]
    dependency["repository"] = (REPO / "charts" / "health-sidecar-lib").as_uri()
    (chart / "Chart.yaml").write_text(yaml.safe_dump(meta))
    steps = readme_helm_commands()
    assert [step[:3] for step in steps] == [
        ["helm", "dependency", "update"],
        ["helm", "dependency", "build"],
        ["helm", "template", "my-app"],
        ["helm", "upgrade", "--install"],
    ]
    for step in steps:
        assert "./my-chart" in step, step
    helm.dependency_update(chart, skip_refresh=True)
    assert (chart / "Chart.lock").is_file()
    shutil.rmtree(chart / "charts")
    helm.dependency_build(chart, skip_refresh=True)
    library = yaml.safe_load((REPO / "charts" / "health-sidecar-lib" / "Chart.yaml").read_text())
    built = [p.name for p in (chart / "charts").iterdir()]
    assert built == [f"health-sidecar-lib-{library['version']}.tgz"]
    template = steps[2]
    namespace = template[template.index("--namespace") + 1]
    with helm.Chart.load(chart) as loaded:
        rendered = loaded.render({}, name=template[2], namespace=namespace)
    deployment = yaml.safe_load(rendered["inventory/templates/deployment.yaml"])
    assert deployment["metadata"]["namespace"] == namespace
    (sidecar,) = deployment["spec"]["template"]["spec"]["initContainers"]
    assert sidecar["name"] == "health-sidecar"
    install = steps[3]
    assert install[3:] == template[2:]
