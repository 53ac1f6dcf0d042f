"""manifests/, the kustomize base for people without Helm, kept equal to the chart's defaults.

The chart is rendered with its defaults plus the one value it has no default for, the DSN of
the example Secret; every drift of the manifests from that render (probes, ports, env,
securityContext, resources, volumes, ...) fails with the paths that differ.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from support import REPO, fileaccess, missing_tool
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

CHART = dependencies_updated(REPO / "charts" / "health-sidecar")
LIBRARY_USER = dependencies_updated(REPO / "tests" / "fixtures" / "foreign-chart")
MANIFESTS = REPO / "manifests"
COMPONENT = MANIFESTS / "components" / "health-sidecar"
INJECT = COMPONENT / "inject"
FOREIGN_KUSTOMIZATION = REPO / "tests" / "fixtures" / "foreign-kustomization"
# The release name whose object names the manifests use ("health-sidecar", not
# "<release>-health-sidecar", since the name already holds the chart's).
RELEASE = "health-sidecar"
CHECKOV = REPO / ".venv-checkov" / "bin" / "checkov"
CHECKOV_CONFIG = REPO / ".checkov.yaml"
OLDEST_KUBERNETES = (1, 29)
# Labels only Helm puts on objects.
HELM_ONLY_LABELS = {"helm.sh/chart", "app.kubernetes.io/managed-by"}
# Labels only the kustomize base carries: the component's opt-in.
KUSTOMIZE_ONLY_LABELS = {"health-sidecar/inject"}
# The image's USER (Dockerfile): the sidecar's identity when nothing else sets one.
IMAGE_USER = (65532, 65532)

Obj = dict[str, Any]

helm.disable_logging()


def kustomize(directory: Path) -> list[Obj]:
    """`kubectl kustomize directory`: the objects a user's `kubectl apply -k` would send."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        missing_tool("kubectl (with kustomize v5: components)", installer=".ci/k8s-tools.sh")
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
        manifest_labels = {
            key: value
            for key, value in obj["metadata"]["labels"].items()
            if key not in KUSTOMIZE_ONLY_LABELS
        }
        assert manifest_labels == labels, kind


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
        missing_tool("checkov (in .venv-checkov)", installer=".ci/k8s-tools.sh")
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
    """components/health-sidecar (settings plus inject/) and inject/ are `kind: Component`s; the
    glucolens base includes the first and opts its Deployment in."""
    for directory in (COMPONENT, INJECT):
        component = yaml.safe_load((directory / "kustomization.yaml").read_text())
        assert component["apiVersion"] == "kustomize.config.k8s.io/v1alpha1"
        assert component["kind"] == "Component"
    base = yaml.safe_load((MANIFESTS / "kustomization.yaml").read_text())
    assert base["components"] == ["components/health-sidecar"]
    assert "initContainers" not in (MANIFESTS / "deployment.yaml").read_text()
    deployment = yaml.safe_load((MANIFESTS / "deployment.yaml").read_text())
    assert deployment["metadata"]["labels"]["health-sidecar/inject"] == "true"


def library_pod_spec() -> Obj:
    """The foreign chart's pod, rendered with the component's default DSN Secret."""
    with helm.Chart.load(LIBRARY_USER) as chart:
        rendered = chart.render(
            {"healthSidecar": {"database": {"existingSecret": "health-sidecar-database"}}},
            name="any",
            namespace="default",
        )
    spec: Obj = yaml.safe_load(rendered["inventory/templates/deployment.yaml"])["spec"]["template"][
        "spec"
    ]
    return spec


def test_component_sidecar_equals_the_library_rendering() -> None:
    """The component's container, volume and readinessProbe, and its default settings, are the
    library chart's rendering, byte for byte in YAML."""
    library = library_pod_spec()
    patch = yaml.safe_load((INJECT / "sidecar.yaml").read_text())["spec"]["template"]["spec"]
    assert patch["initContainers"] == library["initContainers"]
    assert patch["volumes"] == library["volumes"]
    holder = yaml.safe_load((INJECT / "readiness.yaml").read_text())
    assert holder["metadata"]["annotations"]["config.kubernetes.io/local-config"] == "true"
    (probe_holder,) = holder["template"]["spec"]["containers"]
    library_app = next(c for c in library["containers"] if c["name"] == "inventory")
    assert probe_holder["readinessProbe"] == library_app["readinessProbe"]
    settings = yaml.safe_load((COMPONENT / "settings.yaml").read_text())["data"]
    (sidecar,) = library["initContainers"]
    assert int(settings["port"]) == sidecar["ports"][0]["containerPort"]
    assert settings["databaseSecret"] == library["volumes"][0]["secret"]["secretName"]


def objects_by_name(objects: list[Obj]) -> dict[str, Obj]:
    found = {o["metadata"]["name"]: o for o in objects}
    assert len(found) == len(objects), [o["metadata"]["name"] for o in objects]
    return found


def sidecar_port_places(workload: Obj, app: str) -> tuple[int, str, int]:
    """The sidecar's containerPort, its SIDECAR_PORT and the port of `app`'s readinessProbe."""
    spec = workload["spec"]["template"]["spec"]
    (sidecar,) = spec["initContainers"]
    env = {e["name"]: e["value"] for e in sidecar["env"]}
    app_container = next(c for c in spec["containers"] if c["name"] == app)
    return (
        sidecar["ports"][0]["containerPort"],
        env["SIDECAR_PORT"],
        app_container["readinessProbe"]["httpGet"]["port"],
    )


def test_component_gives_opted_in_workloads_the_sidecar() -> None:
    """kustomize + the component: a labelled Deployment and a labelled StatefulSet get a valid
    pod with the native sidecar, the kustomization's own settings (port, DSN Secret), the
    retagged image, and nothing of the component's holders is left in the output."""
    objects = kustomize(FOREIGN_KUSTOMIZATION)
    assert sorted((o["kind"], o["metadata"]["name"]) for o in objects) == [
        ("Deployment", "inventory"),
        ("Deployment", "redis"),
        ("StatefulSet", "ledger"),
    ]
    found = objects_by_name(objects)
    for name, app in (("inventory", "inventory"), ("ledger", "ledger")):
        workload = found[name]
        for version in ("1.29", "1.33"):
            kubernetes_validate.validate(workload, version, strict=True)
        spec = workload["spec"]["template"]["spec"]
        (sidecar,) = spec["initContainers"]
        assert sidecar["name"] == "health-sidecar"
        assert sidecar["restartPolicy"] == "Always"
        assert sidecar["image"] == "ghcr.io/glucolens/health-sidecar:0.2.1"
        assert sidecar_port_places(workload, app) == (9191, "9191", 9191)
        env = {e["name"]: e["value"] for e in sidecar["env"]}
        assert env["SIDECAR_HOST"] == "::"  # the pod's address, for kubelet
        assert {v["name"]: v["secret"]["secretName"] for v in spec["volumes"]} == {
            "database-url": "inventory-db"
        }


def test_component_probe_skips_a_log_shipper_that_comes_first() -> None:
    """inventory (labelled health-sidecar/readiness: manual) gets the probe on the container its
    kustomization names, the log shipper before it none; ledger's first container gets it."""
    found = objects_by_name(kustomize(FOREIGN_KUSTOMIZATION))
    shipper, app = found["inventory"]["spec"]["template"]["spec"]["containers"]
    assert shipper["name"] == "log-shipper"
    assert "readinessProbe" not in shipper
    assert app["readinessProbe"]["httpGet"] == {"path": "/ready", "port": 9191}
    (ledger,) = found["ledger"]["spec"]["template"]["spec"]["containers"]
    assert ledger["readinessProbe"] == app["readinessProbe"]


def test_component_leaves_a_deployment_that_does_not_opt_in_untouched() -> None:
    """redis, without the label, comes out exactly as written (its own exec probe, no sidecar),
    but for the kustomization's namespace."""
    found = objects_by_name(kustomize(FOREIGN_KUSTOMIZATION))
    written = yaml.safe_load((FOREIGN_KUSTOMIZATION / "redis.yaml").read_text())
    written["metadata"]["namespace"] = "stock"
    assert found["redis"] == written


def test_component_port_is_set_in_one_place(tmp_path: Path) -> None:
    """The port is one value of the settings ConfigMap: the fixture writes it nowhere else, and
    changing only that value moves the sidecar's port, SIDECAR_PORT and the app's probe."""
    mentions = [
        p.name for p in sorted(FOREIGN_KUSTOMIZATION.glob("*.yaml")) if "9191" in p.read_text()
    ]
    assert mentions == ["settings.yaml"]
    for name in ("deployment.yaml", "statefulset.yaml", "redis.yaml"):
        shutil.copy(FOREIGN_KUSTOMIZATION / name, tmp_path / name)
    settings = yaml.safe_load((FOREIGN_KUSTOMIZATION / "settings.yaml").read_text())
    settings["data"]["port"] = "7070"
    (tmp_path / "settings.yaml").write_text(yaml.safe_dump(settings))
    kustomization = yaml.safe_load((FOREIGN_KUSTOMIZATION / "kustomization.yaml").read_text())
    kustomization["components"] = [os.path.relpath(INJECT, tmp_path)]
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
    found = objects_by_name(kustomize(tmp_path))
    assert sidecar_port_places(found["inventory"], "inventory") == (7070, "7070", 7070)
    assert sidecar_port_places(found["ledger"], "ledger") == (7070, "7070", 7070)


def test_component_sidecar_reads_its_dsn_in_pods_without_fs_group() -> None:
    """The foreign pods set no fsGroup (ledger runs as a random uid with group 0): by kubelet's
    projection rules the sidecar can read the DSN file, and only the sidecar mounts it."""
    found = objects_by_name(kustomize(FOREIGN_KUSTOMIZATION))
    for name in ("inventory", "ledger"):
        spec = found[name]["spec"]["template"]["spec"]
        assert "fsGroup" not in spec["securityContext"]
        (sidecar,) = spec["initContainers"]
        who = fileaccess.identity(spec, sidecar, IMAGE_USER)
        if name == "ledger":  # OpenShift's shape: the pod's uid, group 0
            assert (who.uid, who.gid) == (1000770000, 0)
        for volume in spec["volumes"]:
            for file in fileaccess.projected_files(spec, volume):
                assert fileaccess.can_read(who, file), (name, volume["name"], oct(file.mode))
        for other in spec["containers"]:
            assert not other.get("volumeMounts"), (name, other["name"])


def test_readme_shows_the_fixtures_readiness_replacement() -> None:
    """README's replacement that points /ready at a container other than the first is the one
    the foreign kustomization uses (and the tests above check)."""
    text = (REPO / "README.md").read_text()
    found = re.search(r"<!-- kustomize-readiness-snippet -->\n```yaml\n(.*?)```", text, re.DOTALL)
    assert found, "README lost its kustomize readiness snippet"
    kustomization = yaml.safe_load((FOREIGN_KUSTOMIZATION / "kustomization.yaml").read_text())
    assert yaml.safe_load(found.group(1)) == {"replacements": kustomization["replacements"]}


def test_base_pod_ignores_service_links_and_pins_sidecar_port() -> None:
    """manifests/ pods set enableServiceLinks: false and SIDECAR_PORT/HOST on the sidecar."""
    spec = deployment_of(manifest_objects())["spec"]["template"]["spec"]
    assert spec["enableServiceLinks"] is False
    env = {e["name"]: e["value"] for e in spec["initContainers"][0]["env"]}
    assert env["SIDECAR_PORT"] == "8081"
    assert "SIDECAR_HOST" in env


def test_k8s_tools_installs_a_kubectl_with_components_where_there_is_none(tmp_path: Path) -> None:
    """On a fresh Debian 12 (CI's container: no kubectl; Debian's own is 1.20, too old for
    components) .ci/k8s-tools.sh leaves a kubectl in the venv, which .ci/run puts on PATH, that
    renders the component (run with the machine's kubectl hidden in a mount namespace)."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        missing_tool("root and unshare (util-linux), to hide the machine's kubectl")
    venv_bin = Path(sys.prefix) / "bin"
    path = os.pathsep.join(
        p for p in os.environ.get("PATH", "").split(os.pathsep) if Path(p) != venv_bin
    )
    stand_in = tmp_path / "not-kubectl"  # a regular file without x bits: no command
    stand_in.write_text("")
    machine = shutil.which("kubectl", path=path)
    hide = f'mount --bind {stand_in} "$(readlink -f {machine})" && ' if machine else ""
    run = subprocess.run(
        [
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "bash",
            "-c",
            f'{hide}! kubectl version --client && VENV="$1" bash "$2" && "$3" kustomize "$4"',
            "k8s-tools",
            sys.prefix,
            str(REPO / ".ci" / "k8s-tools.sh"),
            str(venv_bin / "kubectl"),
            str(MANIFESTS),
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
        env={**os.environ, "PATH": path},
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert "name: health-sidecar\n" in run.stdout
