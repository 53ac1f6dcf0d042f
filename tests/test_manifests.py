"""manifests/, the kustomize base for people without Helm, kept equal to the chart's defaults.

The chart is rendered with its defaults plus the one value it has no default for, the DSN of
the example Secret; every drift of the manifests from that render (probes, ports, env,
securityContext, resources, volumes, ...) fails with the paths that differ.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from support.helmdeps import dependencies_updated

try:
    import helm_python as helm
    import kubernetes_validate  # type: ignore[import-untyped]  # ships no type information
    from kubernetes_validate.utils import all_versions  # type: ignore[import-untyped]
except ImportError:
    if os.environ.get("CI") == "true":
        raise  # CI installs them (.ci/k8s-tools.sh): missing is a failure there
    pytest.skip(
        "helm-python-sdk / kubernetes-validate missing: run .ci/k8s-tools.sh",
        allow_module_level=True,
    )

REPO = Path(__file__).resolve().parent.parent
CHART = dependencies_updated(REPO / "charts" / "health-sidecar")
LIBRARY_USER = dependencies_updated(REPO / "tests" / "fixtures" / "foreign-chart")
MANIFESTS = REPO / "manifests"
COMPONENT = MANIFESTS / "components" / "health-sidecar"
FOREIGN_KUSTOMIZATION = REPO / "tests" / "fixtures" / "foreign-kustomization"
# The release name whose object names the manifests use ("health-sidecar", not
# "<release>-health-sidecar", since the name already holds the chart's).
RELEASE = "health-sidecar"
CHECKOV = REPO / ".venv-checkov" / "bin" / "checkov"
CHECKOV_CONFIG = REPO / ".checkov.yaml"
OLDEST_KUBERNETES = (1, 29)
# Labels only Helm puts on objects.
HELM_ONLY_LABELS = {"helm.sh/chart", "app.kubernetes.io/managed-by"}

Obj = dict[str, Any]

helm.disable_logging()


def missing_tool(what: str) -> None:
    """Fail in CI (CI=true), where .ci/k8s-tools.sh must have installed it; skip elsewhere."""
    message = f"{what} is not installed: run .ci/k8s-tools.sh"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


def kustomize(directory: Path) -> list[Obj]:
    """`kubectl kustomize directory`: the objects a user's `kubectl apply -k` would send."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        missing_tool("kubectl (with kustomize v5: components)")
    result = subprocess.run(
        [str(kubectl), "kustomize", str(directory)],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return [d for d in yaml.safe_load_all(result.stdout) if d]


def manifest_objects() -> list[Obj]:
    """The objects of manifests/, built by kustomize (the base plus the sidecar component)."""
    return kustomize(MANIFESTS)


def by_kind(objects: list[Obj]) -> dict[str, Obj]:
    kinds = [o["kind"] for o in objects]
    assert len(kinds) == len(set(kinds)), f"one object per kind expected: {kinds}"
    return {o["kind"]: o for o in objects}


def example_dsn(manifests: dict[str, Obj]) -> str:
    string_data: dict[str, str] = manifests["Secret"]["stringData"]
    (dsn,) = string_data.values()
    return dsn


def chart_defaults(dsn: str) -> dict[str, Obj]:
    """The chart rendered with its defaults and the example Secret's DSN."""
    with helm.Chart.load(CHART) as chart:
        rendered = chart.render({"database": {"url": dsn}}, name=RELEASE, namespace="default")
    objects = [
        doc
        for path, text in rendered.items()
        if not path.endswith(".txt")
        for doc in yaml.safe_load_all(text)
        if doc
    ]
    return by_kind(objects)


def differences(chart: Any, manifest: Any, path: str = "") -> list[str]:
    """Where two YAML trees differ, as 'path: chart=... manifests=...' lines."""
    if isinstance(chart, dict) and isinstance(manifest, dict):
        found: list[str] = []
        for key in sorted(set(chart) | set(manifest), key=str):
            found += differences(chart.get(key), manifest.get(key), f"{path}.{key}")
        return found
    if path.endswith(".volumes") and isinstance(chart, list) and isinstance(manifest, list):
        # Volumes match by name, in any order: kustomize's merge puts the component's first.
        chart = sorted(chart, key=lambda volume: str(volume["name"]))
        manifest = sorted(manifest, key=lambda volume: str(volume["name"]))
    if isinstance(chart, list) and isinstance(manifest, list) and len(chart) == len(manifest):
        found = []
        for index, (left, right) in enumerate(zip(chart, manifest, strict=True)):
            name = left.get("name", index) if isinstance(left, dict) else index
            found += differences(left, right, f"{path}[{name}]")
        return found
    if chart == manifest:
        return []
    return [f"{path or '.'}: chart={json.dumps(chart)} manifests={json.dumps(manifest)}"]


@pytest.fixture(scope="module")
def manifests() -> dict[str, Obj]:
    return by_kind(manifest_objects())


@pytest.fixture(scope="module")
def chart(manifests: dict[str, Obj]) -> dict[str, Obj]:
    return chart_defaults(example_dsn(manifests))


def test_kustomization_lists_every_manifest() -> None:
    """kustomization.yaml lists every YAML file of manifests/ (nothing left out of the base)."""
    kustomization = yaml.safe_load((MANIFESTS / "kustomization.yaml").read_text())
    files = {p.name for p in MANIFESTS.glob("*.yaml")} - {"kustomization.yaml"}
    assert sorted(kustomization["resources"]) == sorted(files)


def test_manifests_hold_the_chart_defaults_objects(
    manifests: dict[str, Obj], chart: dict[str, Obj]
) -> None:
    """The same kinds with the same names as the chart's default render."""
    assert sorted(manifests) == sorted(chart)
    for kind, obj in manifests.items():
        assert obj["apiVersion"] == chart[kind]["apiVersion"]
        assert obj["metadata"]["name"] == chart[kind]["metadata"]["name"], kind
        labels = {
            key: value
            for key, value in chart[kind]["metadata"]["labels"].items()
            if key not in HELM_ONLY_LABELS
        }
        assert obj["metadata"]["labels"] == labels, kind


def test_deployment_pod_spec_equals_chart_defaults(
    manifests: dict[str, Obj], chart: dict[str, Obj]
) -> None:
    """Probes, ports, env, securityContext, resources and volumes equal the chart's."""
    drift = differences(
        chart["Deployment"]["spec"]["template"]["spec"],
        manifests["Deployment"]["spec"]["template"]["spec"],
        "spec.template.spec",
    )
    assert not drift, "manifests/deployment.yaml drifted from the chart:\n" + "\n".join(drift)


def test_deployment_rollout_settings_equal_chart_defaults(
    manifests: dict[str, Obj], chart: dict[str, Obj]
) -> None:
    """Replicas, strategy, selector and pod labels equal the chart's."""
    chart_spec = dict(chart["Deployment"]["spec"])
    manifest_spec = dict(manifests["Deployment"]["spec"])
    # Pod annotations: the chart's checksum of its own Secret has no kustomize counterpart.
    chart_template = {k: v for k, v in chart_spec.pop("template").items() if k != "spec"}
    chart_template["metadata"] = {
        k: v for k, v in chart_template["metadata"].items() if k != "annotations"
    }
    manifest_template = {k: v for k, v in manifest_spec.pop("template").items() if k != "spec"}
    drift = differences(chart_spec, manifest_spec, "spec") + differences(
        chart_template, manifest_template, "spec.template"
    )
    assert not drift, "\n".join(drift)


def test_service_equals_chart_defaults(manifests: dict[str, Obj], chart: dict[str, Obj]) -> None:
    """The Service's type, selector and ports equal the chart's."""
    drift = differences(chart["Service"]["spec"], manifests["Service"]["spec"], "spec")
    assert not drift, "\n".join(drift)


def test_example_secret_matches_what_the_deployment_mounts(
    manifests: dict[str, Obj], chart: dict[str, Obj]
) -> None:
    """The example Secret has the chart Secret's type and key, the key the volume mounts."""
    secret = manifests["Secret"]
    assert secret["type"] == chart["Secret"]["type"]
    assert set(secret["stringData"]) == set(chart["Secret"]["data"])
    (key,) = secret["stringData"]
    decoded = base64.b64decode(chart["Secret"]["data"][key]).decode()
    assert decoded == secret["stringData"][key]
    volumes = manifests["Deployment"]["spec"]["template"]["spec"]["volumes"]
    mounted = next(v["secret"] for v in volumes if "secret" in v)
    assert mounted["secretName"] == secret["metadata"]["name"]
    assert [item["key"] for item in mounted["items"]] == [key]


def test_manifests_are_valid_for_every_kubernetes_minor() -> None:
    """Every manifest passes kubernetes-validate --strict for each minor from 1.29."""
    versions = sorted(
        {
            str(v)
            for v in all_versions()
            if tuple(int(p) for p in str(v).split(".")[:2]) >= OLDEST_KUBERNETES
        },
        key=lambda v: tuple(int(p) for p in v.split(".")),
    )
    assert versions
    assert versions[0].startswith("1.29")
    problems = []
    for obj in manifest_objects():
        for version in versions:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as error:
                where = ".".join(str(p) for p in error.path)
                problems.append(f"{obj['kind']} on {version}: {where}: {error.message}")
    assert not problems, "\n".join(problems)


def test_checkov_passes_on_manifests() -> None:
    """checkov's Kubernetes checks pass on manifests/ (skips justified in .checkov.yaml)."""
    if not CHECKOV.exists():
        missing_tool("checkov (in .venv-checkov)")
    # The built objects, not the files: the component's patches are fragments of a Deployment.
    built = Path(tempfile.mkdtemp(prefix="hs-manifests-"))
    (built / "all.yaml").write_text(yaml.safe_dump_all(manifest_objects()))
    result = subprocess.run(
        [
            str(CHECKOV),
            "--config-file",
            str(CHECKOV_CONFIG),
            "--framework",
            "kubernetes",
            "--output",
            "json",
            "--directory",
            str(built),
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
        env={**os.environ, "BC_SKIP_MAPPING": "TRUE"},
        cwd=REPO,
    )
    shutil.rmtree(built)
    assert result.returncode in {0, 1}, result.stderr[-3000:]
    reports = json.loads(result.stdout)
    reports = reports if isinstance(reports, list) else [reports]
    passed = sum(report["summary"]["passed"] for report in reports)
    failed = [
        f"{check['check_id']} {check['check_name']}: {check['resource']}"
        for report in reports
        for check in report["results"]["failed_checks"]
    ]
    assert passed > 0, "checkov checked nothing"
    assert not failed, "\n".join(failed)


# ---- the component, on a workload of someone else's ------------------------------------------


def deployment_of(objects: list[Obj]) -> Obj:
    (deployment,) = [o for o in objects if o["kind"] == "Deployment"]
    return deployment


def test_component_is_a_kustomize_component() -> None:
    """components/health-sidecar is a `kind: Component` and the glucolens base includes it."""
    component = yaml.safe_load((COMPONENT / "kustomization.yaml").read_text())
    assert component["apiVersion"] == "kustomize.config.k8s.io/v1alpha1"
    assert component["kind"] == "Component"
    base = yaml.safe_load((MANIFESTS / "kustomization.yaml").read_text())
    assert base["components"] == ["components/health-sidecar"]
    assert "initContainers" not in (MANIFESTS / "deployment.yaml").read_text()


def test_component_sidecar_equals_the_library_rendering() -> None:
    """The component's container and volume are the library chart's, byte for byte in YAML."""
    with helm.Chart.load(LIBRARY_USER) as chart:
        rendered = chart.render(
            {"healthSidecar": {"database": {"existingSecret": "health-sidecar-database"}}},
            name="any",
            namespace="default",
        )
    library = yaml.safe_load(rendered["inventory/templates/deployment.yaml"])["spec"]["template"][
        "spec"
    ]
    patch = yaml.safe_load((COMPONENT / "sidecar.yaml").read_text())["spec"]["template"]["spec"]
    assert patch["initContainers"] == library["initContainers"]
    assert patch["volumes"] == library["volumes"]
    (readiness,) = yaml.safe_load((COMPONENT / "readiness.yaml").read_text())
    assert readiness["path"] == "/spec/template/spec/containers/0/readinessProbe"
    assert readiness["value"] == library["containers"][0]["readinessProbe"]


def test_component_gives_a_foreign_deployment_the_sidecar() -> None:
    """kustomize + the component: a valid pod, the sidecar native, the first container's
    readinessProbe on /ready, the renamed Secret and the retagged image applied."""
    objects = kustomize(FOREIGN_KUSTOMIZATION)
    assert [o["kind"] for o in objects] == ["Deployment"]
    deployment = deployment_of(objects)
    for version in ("1.29", "1.33"):
        kubernetes_validate.validate(deployment, version, strict=True)
    spec = deployment["spec"]["template"]["spec"]
    (sidecar,) = spec["initContainers"]
    assert sidecar["name"] == "health-sidecar"
    assert sidecar["restartPolicy"] == "Always"
    assert sidecar["image"] == "glucolens/health-sidecar:0.2.1"
    env = {e["name"]: e["value"] for e in sidecar["env"]}
    assert env["SIDECAR_PORT"] == "8081"
    assert env["SIDECAR_HOST"] == "::"  # the pod's address, for kubelet
    first, second = spec["containers"]
    assert first["readinessProbe"]["httpGet"] == {"path": "/ready", "port": 8081}
    assert "readinessProbe" not in second
    assert {v["name"]: v["secret"]["secretName"] for v in spec["volumes"]} == {
        "database-url": "inventory-db"
    }


def test_base_pod_ignores_service_links_and_pins_sidecar_port() -> None:
    """manifests/ pods set enableServiceLinks: false and SIDECAR_PORT/HOST on the sidecar."""
    spec = deployment_of(manifest_objects())["spec"]["template"]["spec"]
    assert spec["enableServiceLinks"] is False
    env = {e["name"]: e["value"] for e in spec["initContainers"][0]["env"]}
    assert env["SIDECAR_PORT"] == "8081"
    assert "SIDECAR_HOST" in env
