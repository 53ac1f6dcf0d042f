"""The library chart (charts/health-sidecar-lib) through a chart of a foreign app
(tests/fixtures/foreign-chart): rendered by the real Helm engine after `helm dependency update`,
in both sidecar modes, validated strictly, and compared with the app chart's sidecar (one
definition of the container for both)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import yaml
from support.helmdeps import dependencies_updated

try:
    import helm_python as helm
    import kubernetes_validate  # type: ignore[import-untyped]  # ships no type information
except ImportError:
    if os.environ.get("CI") == "true":
        raise  # CI installs them (.ci/k8s-tools.sh): missing is a failure there
    pytest.skip("helm-python-sdk / kubernetes-validate missing", allow_module_level=True)

REPO = Path(__file__).resolve().parent.parent
LIBRARY = REPO / "charts" / "health-sidecar-lib"
FOREIGN = dependencies_updated(Path(__file__).resolve().parent / "fixtures" / "foreign-chart")
APP_CHART = dependencies_updated(REPO / "charts" / "health-sidecar")
KUBERNETES = ("1.29", "1.33")

Obj = dict[str, Any]

helm.disable_logging()


def render(chart: Path, values: Obj, release: str = "shop") -> list[Obj]:
    with helm.Chart.load(chart) as loaded:
        manifests = loaded.render(values, name=release, namespace="stock")
    return [
        doc
        for path, text in sorted(manifests.items())
        if not path.endswith(".txt")
        for doc in yaml.safe_load_all(text)
        if doc
    ]


def pod_spec(objects: list[Obj]) -> Obj:
    (deployment,) = [o for o in objects if o["kind"] == "Deployment"]
    spec: Obj = deployment["spec"]["template"]["spec"]
    return spec


def sidecar_of(spec: Obj) -> Obj:
    found: Obj = next(
        c
        for c in (spec.get("initContainers") or []) + spec["containers"]
        if c["name"] == "health-sidecar"
    )
    return found


def render_error(values: Obj) -> str:
    with pytest.raises(helm.HelmError) as caught:
        render(FOREIGN, values)
    return str(caught.value)


def test_library_chart_is_a_library() -> None:
    """charts/health-sidecar-lib is `type: library` and its appVersion is the default image tag."""
    meta = yaml.safe_load((LIBRARY / "Chart.yaml").read_text())
    app_meta = yaml.safe_load((REPO / "charts" / "health-sidecar" / "Chart.yaml").read_text())
    assert meta["type"] == "library"
    assert meta["appVersion"] == app_meta["appVersion"]
    sidecar = sidecar_of(pod_spec(render(FOREIGN, {})))
    assert sidecar["image"] == f"glucolens/health-sidecar:{meta['appVersion']}"


@pytest.mark.parametrize("native", [True, False], ids=["native", "plain"])
def test_foreign_chart_renders_valid_objects_in_both_modes(native: bool) -> None:
    """The four includes give a strictly valid Deployment, the sidecar where the mode puts it."""
    objects = render(FOREIGN, {"healthSidecar": {"nativeSidecar": native}})
    for obj in objects:
        for minor in KUBERNETES:
            kubernetes_validate.validate(obj, minor, strict=True)
    spec = pod_spec(objects)
    init_names = [c["name"] for c in spec.get("initContainers") or []]
    names = [c["name"] for c in spec["containers"]]
    if native:
        assert init_names == ["health-sidecar"]
        assert names == ["inventory"]
        assert sidecar_of(spec)["restartPolicy"] == "Always"
    else:
        assert init_names == []
        assert names == ["inventory", "health-sidecar"]
        assert "restartPolicy" not in sidecar_of(spec)
    assert [v["name"] for v in spec["volumes"]] == ["database-url"]
    assert spec["volumes"][0]["secret"]["secretName"] == "inventory-db"


def test_foreign_app_readiness_reads_the_sidecar_ready_endpoint() -> None:
    """The app container's readinessProbe GETs /ready on the sidecar's port, by number."""
    spec = pod_spec(render(FOREIGN, {"healthSidecar": {"port": 9191}}))
    probe = spec["containers"][0]["readinessProbe"]
    assert probe["httpGet"] == {"path": "/ready", "port": 9191}
    assert sidecar_of(spec)["ports"][0]["containerPort"] == 9191
    assert (probe["periodSeconds"], probe["failureThreshold"]) == (5, 2)


def test_library_sets_sidecar_port_and_host_explicitly() -> None:
    """SIDECAR_PORT and SIDECAR_HOST are always in the env, so service links cannot set them."""
    env = {e["name"]: e["value"] for e in sidecar_of(pod_spec(render(FOREIGN, {})))["env"]}
    assert env["SIDECAR_PORT"] == "8081"
    assert env["SIDECAR_HOST"] == "::"  # what the sidecar listens on in a pod


def test_checks_give_a_configmap_mount_and_a_rolling_checksum() -> None:
    """healthSidecar.checks: the ConfigMap, its volume and mount, and a checksum that changes."""
    checks = [{"name": "cache", "kind": "tcp", "host": "redis", "port": 6379}]
    objects = render(FOREIGN, {"healthSidecar": {"checks": checks}})
    (configmap,) = [o for o in objects if o["kind"] == "ConfigMap"]
    assert configmap["metadata"]["name"] == "shop-health-sidecar-checks"
    assert yaml.safe_load(configmap["data"]["checks.yaml"]) == {"checks": checks}
    spec = pod_spec(objects)
    assert {
        "name": "checks",
        "configMap": {"name": "shop-health-sidecar-checks", "defaultMode": 0o440},
    } in spec["volumes"]
    env = {e["name"]: e["value"] for e in sidecar_of(spec)["env"]}
    assert env["SIDECAR_CONFIG_FILE"] == "/etc/health-sidecar/checks/checks.yaml"

    def checksum(objs: list[Obj]) -> str:
        (deployment,) = [o for o in objs if o["kind"] == "Deployment"]
        value: str = deployment["spec"]["template"]["metadata"]["annotations"][
            "checksum/health-sidecar-checks"
        ]
        return value

    changed = [{**checks[0], "port": 6380}]
    assert checksum(objects) != checksum(render(FOREIGN, {"healthSidecar": {"checks": changed}}))


@pytest.mark.parametrize(
    ("values", "named"),
    [
        ({"database": {"existingSecret": ""}}, "healthSidecar.database.existingSecret"),
        ({"port": 70000}, "healthSidecar.port"),
        ({"port": "8081x"}, "healthSidecar.port"),
        ({"nativeSidecar": "yes"}, "healthSidecar.nativeSidecar"),
        ({"logLevel": "loud"}, "healthSidecar.logLevel"),
        ({"checkIntervall": 5}, "healthSidecar.checkIntervall"),
        ({"checkDefaults": {"interval_seconds": 3}}, "healthSidecar.checkDefaults"),
        (
            {"tlsSecrets": [{"name": "ca", "secretName": "a"}, {"name": "ca", "secretName": "b"}]},
            "healthSidecar.tlsSecrets",
        ),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_bad_library_value_fails_naming_it(values: Obj, named: str) -> None:
    """A bad healthSidecar value stops the render with a message that names it."""
    assert f"{named}:" in render_error({"healthSidecar": values})


def test_app_chart_and_library_render_the_same_sidecar() -> None:
    """The app chart's sidecar is the library's: same values in, the same container out."""
    app = render(APP_CHART, {"database": {"existingSecret": "inventory-db"}})
    foreign = render(FOREIGN, {})
    assert sidecar_of(pod_spec(app)) == sidecar_of(pod_spec(foreign))
    app_probe = next(c for c in pod_spec(app)["containers"] if c["name"] == "app")
    assert app_probe["readinessProbe"] == pod_spec(foreign)["containers"][0]["readinessProbe"]


def test_app_chart_holds_no_copy_of_the_sidecar_container() -> None:
    """The sidecar's probes and env are defined in the library only, not in the app chart."""
    templates = REPO / "charts" / "health-sidecar" / "templates"
    for path in templates.iterdir():
        text = path.read_text()
        assert "SIDECAR_CHECK_INTERVAL" not in text, path
        assert "path: /health" not in text, path


def test_library_and_foreign_chart_lint_without_warnings() -> None:
    """helm lint --strict passes on the library chart and on the chart that uses it."""
    for chart in (LIBRARY, FOREIGN):
        report = helm.lint(chart, {}, strict=True, namespace="stock")
        problems = [m for m in report["messages"] if m["severity"] >= 2]
        assert not problems, (chart.name, problems)
        assert not report["errors"], report["errors"]
