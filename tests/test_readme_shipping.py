"""README "Add it to your own workload": its plain YAML equals the library chart's rendering."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from support.helmdeps import dependencies_updated

try:
    import helm_python as helm
except ImportError:
    if os.environ.get("CI") == "true":
        raise  # CI installs it (.ci/k8s-tools.sh): missing is a failure there
    pytest.skip("helm-python-sdk missing", allow_module_level=True)

REPO = Path(__file__).resolve().parent.parent
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
    assert app["readinessProbe"] == library_spec["containers"][0]["readinessProbe"]
