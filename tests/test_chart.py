"""The Helm chart, through the real Helm engine (helm-python-sdk): lint, render, schema, and the
rendered objects checked by kubernetes-validate (strict, every minor from 1.29) and checkov.

Tools that .ci/k8s-tools.sh installs are required in CI (CI=true: a missing one fails the test)
and skipped elsewhere.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

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
CHART = REPO / "charts" / "health-sidecar"
CI_VALUES = sorted((CHART / "ci").glob("*-values.yaml"))
RELEASE = "health-sidecar"
NAMESPACE = "glucolens"
OLDEST_KUBERNETES = (1, 29)
# Prometheus Operator and Grafana objects: kubernetes-validate ships no schema for CRDs.
CRD_KINDS = {"ServiceMonitor", "PodMonitor", "PrometheusRule"}
CHECKOV = REPO / ".venv-checkov" / "bin" / "checkov"
CHECKOV_CONFIG = REPO / ".checkov.yaml"

Obj = dict[str, Any]

helm.disable_logging()


def missing_tool(what: str) -> None:
    """Fail in CI (CI=true), where .ci/k8s-tools.sh must have installed it; skip elsewhere."""
    message = f"{what} is not installed: run .ci/k8s-tools.sh"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


def load_yaml(path: Path) -> Obj:
    loaded = yaml.safe_load(path.read_text())
    assert isinstance(loaded, dict)
    return loaded


def render(values: Obj | None = None) -> list[Obj]:
    """Every object the chart renders for `values` (NOTES.txt left out)."""
    with helm.Chart.load(CHART) as chart:
        manifests = chart.render(values or {}, name=RELEASE, namespace=NAMESPACE)
    objects: list[Obj] = []
    for path, text in sorted(manifests.items()):
        if path.endswith(".txt"):
            continue
        objects.extend(doc for doc in yaml.safe_load_all(text) if doc)
    return objects


def render_ci(path: Path) -> list[Obj]:
    return render(load_yaml(path))


def one(objects: list[Obj], kind: str) -> Obj:
    found = [o for o in objects if o["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


def pod_spec(objects: list[Obj]) -> Obj:
    spec: Obj = one(objects, "Deployment")["spec"]["template"]["spec"]
    return spec


def sidecar_container(spec: Obj) -> Obj:
    containers = spec.get("initContainers", []) + spec["containers"]
    return next(c for c in containers if c["name"] == "health-sidecar")


def app_container(spec: Obj) -> Obj:
    return next(c for c in spec["containers"] if c["name"] == "app")


def env_of(container: Obj) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def kubernetes_minors() -> list[str]:
    """Every Kubernetes version kubernetes-validate ships schemas for, 1.29 and newer."""
    versions = {str(v) for v in all_versions()}
    keep = [v for v in versions if tuple(int(p) for p in v.split(".")[:2]) >= OLDEST_KUBERNETES]
    return sorted(keep, key=lambda v: tuple(int(p) for p in v.split(".")))


def ci_id(path: Path) -> str:
    return path.name.removesuffix("-values.yaml")


# ---- lint and render -------------------------------------------------------------------------


def test_ci_values_files_exist() -> None:
    """The chart ships ci/*-values.yaml files for the parametrized checks below."""
    assert len(CI_VALUES) >= 5


@pytest.mark.parametrize("values_file", CI_VALUES, ids=ci_id)
def test_chart_lints_without_warnings(values_file: Path) -> None:
    """helm lint --strict reports no warning or error for each ci values file."""
    report = helm.lint(CHART, load_yaml(values_file), strict=True, namespace=NAMESPACE)
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert not problems, problems
    assert not report["errors"], report["errors"]


@pytest.mark.parametrize("values_file", CI_VALUES, ids=ci_id)
def test_rendered_objects_are_valid_for_every_kubernetes_minor(values_file: Path) -> None:
    """Every rendered object passes kubernetes-validate --strict for each minor from 1.29."""
    minors = kubernetes_minors()
    assert minors[0].startswith("1.29")
    problems: list[str] = []
    for obj in render_ci(values_file):
        if obj["kind"] in CRD_KINDS:
            assert obj["apiVersion"] == "monitoring.coreos.com/v1"
            continue
        for minor in minors:
            try:
                kubernetes_validate.validate(obj, minor, strict=True)
            except kubernetes_validate.ValidationError as error:
                where = ".".join(str(p) for p in error.path)
                problems.append(f"{obj['kind']} on {minor}: {where}: {error.message}")
            except kubernetes_validate.SchemaNotFoundError as error:
                problems.append(f"{obj['kind']} on {minor}: no schema ({error.message})")
    assert not problems, "\n".join(problems)


def test_ci_values_cover_every_value() -> None:
    """Every leaf of values.yaml is set to something other than its default by some ci file."""
    # Turning any of these off or weakening them would fail the locked-down-pod test below, so
    # no ci file can change them; that test covers them for every ci file instead.
    hardening = re.compile(
        r"securityContext\.(runAsNonRoot|allowPrivilegeEscalation|readOnlyRootFilesystem|"
        r"privileged|capabilities\.drop|seccompProfile\.type)$|"
        r"podSecurityContext\.(runAsNonRoot|seccompProfile\.type)$"
    )
    defaults = load_yaml(CHART / "values.yaml")
    ci_files = [load_yaml(path) for path in CI_VALUES]

    def leaves(node: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
        if isinstance(node, dict) and node:
            for key, child in node.items():
                yield from leaves(child, (*path, key))
        else:
            yield path, node

    def lookup(node: Any, path: tuple[str, ...]) -> tuple[bool, Any]:
        for key in path:
            if not isinstance(node, dict) or key not in node:
                return False, None
            node = node[key]
        return True, node

    uncovered = []
    for path, default in leaves(defaults):
        dotted = ".".join(path)
        if hardening.search(dotted):
            continue
        if not any(
            found and value != default
            for found, value in (lookup(values, path) for values in ci_files)
        ):
            uncovered.append(dotted)
    assert not uncovered, f"no ci/*-values.yaml sets {uncovered}"


# ---- the schema ------------------------------------------------------------------------------

BASE = {"database": {"url": "postgresql://u:p@db:5432/app"}}
INVALID_VALUES = {
    "replicas-as-string": ({"replicaCount": "two"}, "/replicaCount"),
    "unknown-top-level-key": ({"replicas": 2}, "replicas"),
    "unknown-nested-key": ({"sidecar": {"checkIntervall": 5}}, "checkIntervall"),
    "misspelt-security-key": (
        {"app": {"securityContext": {"readOnlyRootFileSystem": True}}},
        "readOnlyRootFileSystem",
    ),
    "native-sidecar-as-string": ({"sidecar": {"nativeSidecar": "yes"}}, "/sidecar/nativeSidecar"),
    "zero-check-interval": ({"sidecar": {"checkInterval": 0}}, "/sidecar/checkInterval"),
    "timeout-as-string": ({"sidecar": {"checkTimeout": "2s"}}, "/sidecar/checkTimeout"),
    "fractional-threshold": ({"sidecar": {"failureThreshold": 1.5}}, "/sidecar/failureThreshold"),
    "unknown-log-level": ({"sidecar": {"logLevel": "loud"}}, "/sidecar/logLevel"),
    "port-out-of-range": ({"sidecar": {"port": 70000}}, "/sidecar/port"),
    "unknown-probe-type": ({"app": {"livenessProbe": {"type": "exec"}}}, "/app/livenessProbe"),
    "zero-probe-period": (
        {"app": {"readinessProbe": {"periodSeconds": 0}}},
        "/app/readinessProbe/periodSeconds",
    ),
    "mysql-dsn": ({"database": {"url": "mysql://u:p@db/app"}}, "/database/url"),
    "bad-digest": ({"sidecar": {"image": {"digest": "latest"}}}, "/sidecar/image/digest"),
    "enabled-as-string": ({"serviceMonitor": {"enabled": "true"}}, "/serviceMonitor/enabled"),
    "pdb-as-word": ({"podDisruptionBudget": {"maxUnavailable": "one"}}, "maxUnavailable"),
    "uid-as-name": ({"podSecurityContext": {"runAsUser": "nobody"}}, "/podSecurityContext"),
}


def merged(*layers: Obj) -> Obj:
    result: Obj = {}
    for layer in layers:
        for key, value in layer.items():
            if isinstance(value, dict) and isinstance(result.get(key), dict):
                result[key] = merged(result[key], value)
            else:
                result[key] = value
    return result


@pytest.mark.parametrize(
    ("values", "named"), INVALID_VALUES.values(), ids=list(INVALID_VALUES.keys())
)
def test_schema_refuses_invalid_values(values: Obj, named: str) -> None:
    """values.schema.json refuses wrong types, out-of-range numbers and unknown keys by name."""
    with pytest.raises(helm.HelmValuesError) as refused:
        render(merged(BASE, values))
    assert named in str(refused.value)


def test_schema_accepts_the_defaults_with_a_database() -> None:
    """The defaults plus a DSN source pass the schema (the refusals above are not blanket)."""
    with helm.Chart.load(CHART) as chart:
        chart.validate_schema(BASE)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({}, "database.existingSecret"),
        (merged(BASE, {"app": {"port": 8081}}), "must differ"),
        (
            merged(
                BASE,
                {"podDisruptionBudget": {"enabled": True, "minAvailable": 1, "maxUnavailable": 1}},
            ),
            "only one of",
        ),
        (merged(BASE, {"app": {"image": {"tag": ""}}}), "app.image.tag"),
    ],
    ids=["no-database", "same-ports", "pdb-min-and-max", "app-without-version"],
)
def test_render_refuses_values_only_templates_can_judge(values: Obj, message: str) -> None:
    """Cross-field mistakes stop the render with a message naming the values to fix."""
    with pytest.raises(helm.HelmError) as refused:
        render(values)
    assert message in str(refused.value)


# ---- what the rendered pod does --------------------------------------------------------------


def test_defaults_run_sidecar_as_native_sidecar() -> None:
    """By default the sidecar is an init container with restartPolicy Always, the app alone."""
    spec = pod_spec(render(BASE))
    assert [c["name"] for c in spec["initContainers"]] == ["health-sidecar"]
    assert spec["initContainers"][0]["restartPolicy"] == "Always"
    assert [c["name"] for c in spec["containers"]] == ["app"]


def test_native_sidecar_off_runs_plain_second_container() -> None:
    """sidecar.nativeSidecar=false puts the sidecar beside the app, without restartPolicy."""
    spec = pod_spec(render(merged(BASE, {"sidecar": {"nativeSidecar": False}})))
    assert "initContainers" not in spec
    assert [c["name"] for c in spec["containers"]] == ["app", "health-sidecar"]
    assert "restartPolicy" not in spec["containers"][1]


@pytest.mark.parametrize("values_file", CI_VALUES, ids=ci_id)
def test_readiness_reads_sidecar_and_liveness_never_does(values_file: Path) -> None:
    """App readiness is GET /ready on the sidecar port; no liveness or startup probe uses it."""
    spec = pod_spec(render_ci(values_file))
    app, sidecar = app_container(spec), sidecar_container(spec)
    sidecar_port = sidecar["ports"][0]["containerPort"]
    assert app["readinessProbe"]["httpGet"] == {"path": "/ready", "port": sidecar_port}
    app_port_names = {p["name"] for p in app["ports"]} | {p["containerPort"] for p in app["ports"]}
    for name in ("livenessProbe", "startupProbe"):
        probe = app[name]
        handler = probe.get("tcpSocket") or probe.get("httpGet")
        assert handler, f"app {name} must be tcpSocket or httpGet"
        assert handler["port"] in app_port_names, f"app {name} must target the app's own port"
        assert handler.get("path") != "/ready"
        assert sidecar[name]["httpGet"] == {"path": "/health", "port": "sidecar"}
    assert "readinessProbe" not in sidecar


@pytest.mark.parametrize("values_file", CI_VALUES, ids=ci_id)
def test_dsn_reaches_sidecar_only_as_mounted_secret_file(values_file: Path) -> None:
    """SIDECAR_DATABASE_URL_FILE points into a Secret volume; the DSN is never in the pod spec."""
    values = load_yaml(values_file)
    objects = render(values)
    deployment = one(objects, "Deployment")
    spec = pod_spec(objects)
    sidecar = sidecar_container(spec)
    env = env_of(sidecar)
    assert "SIDECAR_DATABASE_URL" not in env
    dsn_file = Path(env["SIDECAR_DATABASE_URL_FILE"])
    mount = next(m for m in sidecar["volumeMounts"] if m["mountPath"] == str(dsn_file.parent))
    assert mount["readOnly"] is True
    volume = next(v for v in spec["volumes"] if v["name"] == mount["name"])["secret"]
    database = values["database"]
    if database.get("existingSecret"):
        assert volume["secretName"] == database["existingSecret"]
        assert volume["items"] == [
            {"key": database.get("existingSecretKey", "database-url"), "path": dsn_file.name}
        ]
        assert not [o for o in objects if o["kind"] == "Secret"]
    else:
        secret = one(objects, "Secret")
        assert volume["secretName"] == secret["metadata"]["name"]
        (key,) = secret["data"]
        assert volume["items"] == [{"key": key, "path": dsn_file.name}]
        assert database["url"] not in json.dumps(deployment)
    # Group-readable only; the group is the pod's fsGroup.
    assert volume["defaultMode"] == 0o440
    assert spec["securityContext"]["fsGroup"] >= 1


def test_changed_dsn_rolls_the_pods() -> None:
    """The pod template's checksum annotation follows the chart-created Secret's content."""

    def checksum(values: Obj) -> str | None:
        template = one(render(values), "Deployment")["spec"]["template"]
        annotations: dict[str, str] = template["metadata"].get("annotations", {})
        return annotations.get("checksum/database-secret")

    first = checksum(BASE)
    second = checksum({"database": {"url": "postgresql://u:other@db:5432/app"}})
    assert first
    assert second
    assert first != second
    assert checksum({"database": {"existingSecret": "mine"}}) is None


@pytest.mark.parametrize("values_file", CI_VALUES, ids=ci_id)
def test_pod_is_locked_down(values_file: Path) -> None:
    """Numeric non-root uid/gid, read-only root, no escalation, drop ALL, RuntimeDefault."""
    spec = pod_spec(render_ci(values_file))
    pod = spec["securityContext"]
    assert pod["runAsNonRoot"] is True
    assert isinstance(pod["runAsUser"], int)
    assert pod["runAsUser"] > 0
    assert isinstance(pod["runAsGroup"], int)
    assert pod["seccompProfile"] == {"type": "RuntimeDefault"}
    assert spec["automountServiceAccountToken"] is False
    for container in spec.get("initContainers", []) + spec["containers"]:
        context = container["securityContext"]
        assert context["runAsNonRoot"] is True, container["name"]
        assert isinstance(context["runAsUser"], int)
        assert context["runAsUser"] > 0
        assert context["allowPrivilegeEscalation"] is False
        assert context["readOnlyRootFilesystem"] is True
        assert context["privileged"] is False
        assert context["capabilities"] == {"drop": ["ALL"]}
        assert context["seccompProfile"] == {"type": "RuntimeDefault"}


@pytest.mark.parametrize("values_file", CI_VALUES, ids=ci_id)
def test_containers_request_resources_and_limit_memory(values_file: Path) -> None:
    """Both containers have CPU and memory requests and a memory limit."""
    spec = pod_spec(render_ci(values_file))
    for container in spec.get("initContainers", []) + spec["containers"]:
        resources = container["resources"]
        assert {"cpu", "memory"} <= set(resources["requests"]), container["name"]
        assert "memory" in resources["limits"], container["name"]


def test_sidecar_values_become_its_environment() -> None:
    """Each sidecar.* setting reaches the sidecar as its SIDECAR_* variable, as a string."""
    values = load_yaml(CHART / "ci" / "http-probes-values.yaml")
    env = env_of(sidecar_container(pod_spec(render(values))))
    sidecar = values["sidecar"]
    expected = {
        "SIDECAR_PORT": sidecar["port"],
        "SIDECAR_CHECK_INTERVAL": sidecar["checkInterval"],
        "SIDECAR_CHECK_TIMEOUT": sidecar["checkTimeout"],
        "SIDECAR_BACKOFF_MAX": sidecar["backoffMax"],
        "SIDECAR_FAILURE_THRESHOLD": sidecar["failureThreshold"],
        "SIDECAR_SUCCESS_THRESHOLD": sidecar["successThreshold"],
        "SIDECAR_DRAIN_SECONDS": sidecar["drainSeconds"],
        "SIDECAR_LOG_LEVEL": sidecar["logLevel"],
        "SIDECAR_LOG_FORMAT": sidecar["logFormat"],
    }
    assert {name: env[name] for name in expected} == {k: str(v) for k, v in expected.items()}


def test_optional_objects_are_off_by_default() -> None:
    """Defaults render only the Deployment, the Service and the chart-created Secret."""
    assert sorted(o["kind"] for o in render(BASE)) == ["Deployment", "Secret", "Service"]


@pytest.mark.parametrize(
    ("toggle", "kind"),
    [
        ("serviceMonitor", "ServiceMonitor"),
        ("podMonitor", "PodMonitor"),
        ("prometheusRule", "PrometheusRule"),
        ("networkPolicy", "NetworkPolicy"),
        ("podDisruptionBudget", "PodDisruptionBudget"),
        ("grafanaDashboard", "ConfigMap"),
    ],
)
def test_each_optional_object_appears_when_enabled(toggle: str, kind: str) -> None:
    """<name>.enabled=true adds exactly that one object."""
    objects = render(merged(BASE, {toggle: {"enabled": True}}))
    assert sorted(o["kind"] for o in objects) == sorted(["Deployment", "Secret", "Service", kind])


def test_prometheus_rule_carries_the_alerts_file_verbatim() -> None:
    """The PrometheusRule's groups equal files/alerts.yaml's, Prometheus templates untouched."""
    rule = one(render(merged(BASE, {"prometheusRule": {"enabled": True}})), "PrometheusRule")
    alerts = load_yaml(CHART / "files" / "alerts.yaml")
    assert rule["spec"]["groups"] == alerts["groups"]
    assert "{{ $labels." in json.dumps(rule["spec"]["groups"])


def test_dashboard_configmap_carries_the_dashboard_json() -> None:
    """The dashboard ConfigMap holds files/dashboard.json and the grafana_dashboard label."""
    config_map = one(render(merged(BASE, {"grafanaDashboard": {"enabled": True}})), "ConfigMap")
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    (content,) = config_map["data"].values()
    assert json.loads(content) == json.loads((CHART / "files" / "dashboard.json").read_text())


def test_network_policy_opens_sidecar_port_only_to_sidecar_from() -> None:
    """The sidecar port is reachable only from networkPolicy.sidecarFrom, nobody when empty."""
    values = load_yaml(CHART / "ci" / "networkpolicy-values.yaml")
    sidecar_port = load_yaml(CHART / "values.yaml")["sidecar"]["port"]

    def rules_for_sidecar_port(policy: Obj) -> list[Obj]:
        return [
            rule
            for rule in policy["spec"]["ingress"]
            if any(p.get("port") == sidecar_port for p in rule.get("ports", []))
            or not rule.get("ports")
        ]

    policy = one(render(values), "NetworkPolicy")
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    (rule,) = rules_for_sidecar_port(policy)
    assert rule["from"] == values["networkPolicy"]["sidecarFrom"]
    closed = merged(values, {"networkPolicy": {"sidecarFrom": []}})
    assert rules_for_sidecar_port(one(render(closed), "NetworkPolicy")) == []


def test_every_probe_number_says_why() -> None:
    """Each probe number in values.yaml has an @param comment giving its reason."""
    lines = (CHART / "values.yaml").read_text().splitlines()
    probe_key = re.compile(
        r"^\s+(initialDelaySeconds|periodSeconds|timeoutSeconds|failureThreshold|"
        r"successThreshold):\s*\d+"
    )
    unexplained = []
    for index, line in enumerate(lines):
        if probe_key.match(line):
            comment = lines[index - 1].strip()
            reason = re.match(r"## @param \S+ \S.*:\s*\S+", comment)
            if not reason:
                unexplained.append(line.strip())
    assert not unexplained, unexplained


def test_readme_documents_every_value() -> None:
    """The chart README's values table lists every @param of values.yaml."""
    params = re.findall(r"## @param (\S+)", (CHART / "values.yaml").read_text())
    readme = (CHART / "README.md").read_text()
    assert params
    assert [p for p in params if f"| `{p}` |" not in readme] == []


# ---- checkov ---------------------------------------------------------------------------------


def run_checkov(*args: str) -> list[Obj]:
    """checkov with .checkov.yaml, JSON out; one report per framework."""
    if not CHECKOV.exists():
        missing_tool("checkov (in .venv-checkov)")
    result = subprocess.run(
        [str(CHECKOV), "--config-file", str(CHECKOV_CONFIG), "--output", "json", *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
        env={**os.environ, "BC_SKIP_MAPPING": "TRUE"},
        cwd=REPO,
    )
    assert result.returncode in {0, 1}, result.stderr[-3000:]
    reports = json.loads(result.stdout)
    return reports if isinstance(reports, list) else [reports]


def checkov_failures(reports: list[Obj]) -> tuple[int, list[str]]:
    passed = 0
    failed: list[str] = []
    for report in reports:
        passed += report["summary"]["passed"]
        for check in report["results"]["failed_checks"]:
            failed.append(
                f"{check['check_id']} {check['check_name']}: {check['resource']} "
                f"({check['file_path']})"
            )
    return passed, failed


def test_checkov_passes_on_every_rendered_ci_values_file() -> None:
    """checkov's Kubernetes checks pass on the chart rendered with each ci values file."""
    with tempfile.TemporaryDirectory() as directory:
        for values_file in CI_VALUES:
            objects = render_ci(values_file)
            (Path(directory) / f"{ci_id(values_file)}.yaml").write_text(yaml.safe_dump_all(objects))
        passed, failed = checkov_failures(
            run_checkov("--framework", "kubernetes", "--directory", directory)
        )
    assert passed > 0, "checkov checked nothing"
    assert not failed, "\n".join(failed)


def test_checkov_passes_on_dockerfile() -> None:
    """checkov's Dockerfile checks pass."""
    passed, failed = checkov_failures(
        run_checkov("--framework", "dockerfile", "--file", str(REPO / "Dockerfile"))
    )
    assert passed > 0, "checkov checked nothing"
    assert not failed, "\n".join(failed)
