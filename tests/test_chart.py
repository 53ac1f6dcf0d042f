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
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from support import REPO, fileaccess, missing_tool
from support.helmdeps import dependencies_updated

from sidecar.checks.http import HttpSpec
from sidecar.checks.postgres import PostgresSpec
from sidecar.checks.tcp import TcpSpec
from sidecar.config import Settings

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
TCP_CHECK = {"name": "cache", "kind": "tcp", "host": "redis", "port": 6379}
REPLICA_SECRET = {"name": "replica", "secretName": "replica-db", "key": "dsn"}
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
    "typo-two-levels-down-image": ({"sidecar": {"image": {"repositry": "x"}}}, "'repositry'"),
    "typo-two-levels-down-database": ({"database": {"existingSecrt": "db"}}, "'existingSecrt'"),
    "typo-three-levels-down-probe": (
        {"app": {"readinessProbe": {"periodSecond": 3}}},
        "'periodSecond'",
    ),
    "unknown-probe-type": ({"app": {"livenessProbe": {"type": "exec"}}}, "/app/livenessProbe"),
    "zero-probe-period": (
        {"app": {"readinessProbe": {"periodSeconds": 0}}},
        "/app/readinessProbe/periodSeconds",
    ),
    "bad-digest": ({"sidecar": {"image": {"digest": "latest"}}}, "/sidecar/image/digest"),
    "enabled-as-string": ({"serviceMonitor": {"enabled": "true"}}, "/serviceMonitor/enabled"),
    "pdb-as-word": ({"podDisruptionBudget": {"maxUnavailable": "one"}}, "maxUnavailable"),
    "uid-as-name": ({"podSecurityContext": {"runAsUser": "nobody"}}, "/podSecurityContext"),
    "unknown-check-kind": ({"checks": [{"name": "cache", "kind": "redis"}]}, "/checks/0/kind"),
    "name-override-not-a-dns-label": ({"nameOverride": "Health_Sidecar"}, "/nameOverride"),
    "fullname-override-not-a-dns-label": ({"fullnameOverride": "glucolens."}, "/fullnameOverride"),
    "check-name-with-capitals": (
        {"checks": [{"name": "Cache", "kind": "tcp", "host": "redis", "port": 6379}]},
        "/checks/0/name",
    ),
    "unknown-check-key": (
        {"checks": [{"name": "cache", "kind": "tcp", "host": "redis", "port": 6379, "hots": 1}]},
        "'hots'",
    ),
    "key-of-another-kind": (
        {"checks": [{"name": "db", "kind": "postgres", "url": "http://app/livez"}]},
        "'url'",
    ),
    "check-port-quoted": (
        {"checks": [{"name": "cache", "kind": "tcp", "host": "redis", "port": "6379"}]},
        "/checks/0/port",
    ),
    "check-interval-quoted": (
        {"checks": [{"name": "app", "kind": "http", "url": "http://a/", "interval_seconds": "5"}]},
        "/checks/0/interval_seconds",
    ),
    "unknown-criticality": (
        {"checks": [{"name": "app", "kind": "http", "url": "http://a/", "criticality": "page"}]},
        "/checks/0/criticality",
    ),
    "password-in-check-dsn": (
        {"checks": [{"name": "db", "kind": "postgres", "dsn": "postgresql://u:pw@db/app"}]},
        "/checks/0/dsn",
    ),
    "password-parameter-in-check-dsn": (
        {
            "checks": [
                {"name": "db", "kind": "postgres", "dsn": "postgresql://u@db/app?password=pw"}
            ]
        },
        "/checks/0/dsn",
    ),
    "raw-slash-password-in-check-dsn": (
        {"checks": [{"name": "db", "kind": "postgres", "dsn": "postgresql://u:p/w@db/app"}]},
        "/checks/0/dsn",
    ),
    "http-check-without-url": ({"checks": [{"name": "app", "kind": "http"}]}, "'url'"),
    "lag-without-allow-replica": (
        {"checks": [{"name": "db", "kind": "postgres", "max_replica_lag_seconds": 30}]},
        "'allow_replica'",
    ),
    "expect-without-query": (
        {"checks": [{"name": "db", "kind": "postgres", "expect": "t"}]},
        "'query'",
    ),
    "cert-without-key": (
        {"checks": [{"name": "db", "kind": "postgres", "cert_file": "/tls/tls.crt"}]},
        "'key_file'",
    ),
    "unknown-check-default": ({"checkDefaults": {"interval": 5}}, "'interval'"),
    "dsn-secret-without-key": (
        {"extraDatabaseSecrets": [{"name": "replica", "secretName": "replica-db"}]},
        "'key'",
    ),
    # A newline in a name written unquoted would add keys of its own to the pod spec.
    "service-account-newline": (
        {"serviceAccountName": "sa\nhostNetwork: true"},
        "serviceAccountName",
    ),
    "priority-class-newline": ({"priorityClassName": "pc\nhostPID: true"}, "priorityClassName"),
    "secret-key-newline": (
        {"database": {"existingSecretKey": "url\n  optional: true"}},
        "existingSecretKey",
    ),
    "probe-path-newline": (
        {"app": {"startupProbe": {"type": "httpGet", "path": "/livez#\n  scheme: HTTPS"}}},
        "path",
    ),
    # null drops a default; the sidecar's own probes have no pod-side default to fall back to.
    "null-startup-probe": ({"sidecar": {"startupProbe": None}}, "'startupProbe'"),
    "null-liveness-probe": ({"sidecar": {"livenessProbe": None}}, "'livenessProbe'"),
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


PASSWORD = "Sup3r-s3cret-pw"


@pytest.mark.parametrize(
    ("values", "named"),
    [
        ({"database": {"url": f"mysql://u:{PASSWORD}@db/app"}}, "database.url"),
        ({"database": {"url": f"postgresql:/u:{PASSWORD}@db/app"}}, "database.url"),
        (
            {"checks": [{"name": "db", "kind": "postgres", "dsn": f"mysql://u:{PASSWORD}@db/a"}]},
            "checks[0].dsn",
        ),
        (
            {"checks": [{"name": "db", "kind": "postgres", "dsn": f"postgres://u:{PASSWORD}@db"}]},
            "checks/0/dsn",
        ),
        (
            {"checks": [{"name": "app", "kind": "http", "url": f"http://u:{PASSWORD}@app/"}]},
            "checks[0].url",
        ),
    ],
    ids=["url-scheme", "url-malformed", "dsn-scheme", "dsn-userinfo", "check-url-userinfo"],
)
def test_secret_bearing_values_are_refused_without_echo(values: Obj, named: str) -> None:
    """A DSN or URL that holds a password and is wrong (another scheme, a password where none
    may be) fails naming the key, and neither the schema's nor the templates' message quotes
    it: Helm prints the error to every CI log."""
    with pytest.raises(helm.HelmError) as refused:
        render(merged(BASE, values))
    assert named in str(refused.value)
    assert PASSWORD not in str(refused.value)


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
        (merged(BASE, {"checks": [TCP_CHECK, TCP_CHECK]}), 'name "cache" is used twice'),
        (merged(BASE, {"checkDefaults": {"interval_seconds": 2}}), "checks list, which is empty"),
        (
            merged(BASE, {"sidecar": {"drainSeconds": 30}, "terminationGracePeriodSeconds": 30}),
            "sidecar.drainSeconds (30) must be less than terminationGracePeriodSeconds (30)",
        ),
        (
            merged(BASE, {"extraDatabaseSecrets": [REPLICA_SECRET, REPLICA_SECRET]}),
            'extraDatabaseSecrets: the name "replica" is used twice',
        ),
    ],
    ids=[
        "no-database",
        "same-ports",
        "pdb-min-and-max",
        "app-without-version",
        "duplicate-check-names",
        "check-defaults-without-checks",
        "drain-as-long-as-the-grace-period",
        "duplicate-dsn-secret-names",
    ],
)
def test_render_refuses_values_only_templates_can_judge(values: Obj, message: str) -> None:
    """Cross-field mistakes stop the render with a message naming the values to fix."""
    with pytest.raises(helm.HelmError) as refused:
        render(values)
    assert message in str(refused.value)


def test_a_drain_of_zero_needs_no_grace_period() -> None:
    """drainSeconds 0 with a grace period of 0 renders: nothing is left to cut short."""
    values = merged(BASE, {"sidecar": {"drainSeconds": 0}, "terminationGracePeriodSeconds": 0})
    assert pod_spec(render(values))["terminationGracePeriodSeconds"] == 0


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
    # Read-only for everyone: readable by the sidecar with or without the pod's fsGroup; the
    # volume is mounted into the sidecar only.
    assert volume["defaultMode"] == 0o444


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


# ---- several checks (SIDECAR_CONFIG_FILE) ----------------------------------------------------

CHECKS_VALUES = CHART / "ci" / "checks-values.yaml"
EXAMPLES = REPO / "docs" / "examples"
CHECK_FILE_KEY = "checks.yaml"


def check_file_of(objects: list[Obj]) -> tuple[Obj, Obj]:
    """The check-file ConfigMap and its parsed checks.yaml."""
    config_maps = [o for o in objects if o["kind"] == "ConfigMap"]
    assert len(config_maps) == 1, [o["metadata"]["name"] for o in config_maps]
    (config_map,) = config_maps
    assert set(config_map["data"]) == {CHECK_FILE_KEY}
    parsed = yaml.safe_load(config_map["data"][CHECK_FILE_KEY])
    assert isinstance(parsed, dict)
    return config_map, parsed


def checks_checksum(values: Obj) -> str | None:
    template = one(render(values), "Deployment")["spec"]["template"]
    annotations: dict[str, str] = template["metadata"].get("annotations", {})
    return annotations.get("checksum/checks")


def test_checks_become_the_check_file_in_a_configmap() -> None:
    """checks and checkDefaults reach checks.yaml as `checks:` and `defaults:`, types intact."""
    values = load_yaml(CHECKS_VALUES)
    config_map, check_file = check_file_of(render(values))
    assert config_map["metadata"]["name"] == f"{RELEASE}-checks"
    assert config_map["metadata"]["namespace"] == NAMESPACE
    # Equality of the parsed trees: a number rendered as "5" or a flag as "true" would differ.
    assert check_file == {"defaults": values["checkDefaults"], "checks": values["checks"]}


def test_check_file_without_defaults_has_only_checks() -> None:
    """Without checkDefaults the file holds `checks:` alone (the sidecar's built-in defaults)."""
    _, check_file = check_file_of(render(merged(BASE, {"checks": [TCP_CHECK]})))
    assert check_file == {"checks": [TCP_CHECK]}


def test_sidecar_reads_the_mounted_check_file() -> None:
    """SIDECAR_CONFIG_FILE names checks.yaml in a read-only mount of the check-file ConfigMap."""
    objects = render(load_yaml(CHECKS_VALUES))
    config_map, _ = check_file_of(objects)
    spec = pod_spec(objects)
    sidecar = sidecar_container(spec)
    config_file = Path(env_of(sidecar)["SIDECAR_CONFIG_FILE"])
    assert config_file.name == CHECK_FILE_KEY
    (mount,) = [m for m in sidecar["volumeMounts"] if m["mountPath"] == str(config_file.parent)]
    assert mount["readOnly"] is True
    assert "subPath" not in mount
    volume = next(v for v in spec["volumes"] if v["name"] == mount["name"])
    assert volume["configMap"]["name"] == config_map["metadata"]["name"]
    assert "items" not in volume["configMap"]
    # The app has no business with the sidecar's configuration.
    app_mounts = {m["name"] for m in app_container(spec)["volumeMounts"]}
    assert mount["name"] not in app_mounts


def test_no_checks_keeps_the_single_check_of_the_environment() -> None:
    """checks: [] renders no check file, no SIDECAR_CONFIG_FILE and no checks checksum."""
    objects = render(BASE)
    assert not [o for o in objects if o["kind"] == "ConfigMap"]
    assert "SIDECAR_CONFIG_FILE" not in env_of(sidecar_container(pod_spec(objects)))
    assert checks_checksum(BASE) is None


def test_changed_checks_roll_the_pods() -> None:
    """The checksum/checks annotation follows the check file, and nothing else."""
    values = merged(BASE, {"checks": [TCP_CHECK], "checkDefaults": {"interval_seconds": 5}})
    first = checks_checksum(values)
    assert first
    assert re.fullmatch(r"[0-9a-f]{64}", first)
    changed_check = merged(values, {"checks": [{**TCP_CHECK, "port": 6380}]})
    added_check = merged(values, {"checks": [TCP_CHECK, {**TCP_CHECK, "name": "cache2"}]})
    changed_defaults = merged(values, {"checkDefaults": {"interval_seconds": 10}})
    assert len({first} | {checks_checksum(v) for v in (changed_check, added_check)}) == 3
    assert checks_checksum(changed_defaults) not in {first, None}
    # Settings outside the check file leave it alone (no needless rollout of the sidecar's
    # configuration; other annotations may roll the pods for their own reasons).
    for unrelated in (
        {"replicaCount": 5},
        {"commonLabels": {"team": "platform"}},
        {"sidecar": {"checkInterval": 9}},
        {"extraDatabaseSecrets": [REPLICA_SECRET]},
    ):
        assert checks_checksum(merged(values, unrelated)) == first, unrelated


def test_dsn_secrets_are_directory_mounts_at_their_documented_path() -> None:
    """extraDatabaseSecrets[i] appears at /etc/health-sidecar/db/<name>/<key>, read-only, no
    subPath, holding only the DSN key, mode 0444; the ci file's replica check points there."""
    values = load_yaml(CHECKS_VALUES)
    spec = pod_spec(render(values))
    sidecar = sidecar_container(spec)
    dsn_files = {c["dsn_file"] for c in values["checks"] if "dsn_file" in c}
    assert values["extraDatabaseSecrets"]
    for secret in values["extraDatabaseSecrets"]:
        directory = f"/etc/health-sidecar/db/{secret['name']}"
        (mount,) = [m for m in sidecar["volumeMounts"] if m["mountPath"] == directory]
        assert mount["readOnly"] is True
        assert "subPath" not in mount
        volume = next(v for v in spec["volumes"] if v["name"] == mount["name"])["secret"]
        assert volume["secretName"] == secret["secretName"]
        assert volume["items"] == [{"key": secret["key"], "path": secret["key"]}]
        assert volume["defaultMode"] == 0o444
        assert f"{directory}/{secret['key']}" in dsn_files


def test_tls_secrets_mount_every_key_for_the_checks() -> None:
    """tlsSecrets[i] appears whole at /etc/health-sidecar/tls/<name>/, read-only, mode 0444,
    where the ci file's ca_file, cert_file and key_file point."""
    values = load_yaml(CHECKS_VALUES)
    spec = pod_spec(render(values))
    sidecar = sidecar_container(spec)
    tls_files = {
        Path(c[key]).parent
        for c in values["checks"]
        for key in ("ca_file", "cert_file", "key_file")
        if key in c
    }
    assert values["tlsSecrets"]
    for secret in values["tlsSecrets"]:
        directory = Path(f"/etc/health-sidecar/tls/{secret['name']}")
        (mount,) = [m for m in sidecar["volumeMounts"] if m["mountPath"] == str(directory)]
        assert mount["readOnly"] is True
        assert "subPath" not in mount
        volume = next(v for v in spec["volumes"] if v["name"] == mount["name"])["secret"]
        assert volume == {"secretName": secret["secretName"], "defaultMode": 0o444}
        assert directory in tls_files


def test_documented_example_is_chart_values_as_it_is() -> None:
    """docs/examples/checks.yaml and .toml hold the same document, and its checks and defaults,
    given to the chart as checks and checkDefaults, come out as the same check file."""
    example = load_yaml(EXAMPLES / "checks.yaml")
    assert tomllib.loads((EXAMPLES / "checks.toml").read_text()) == example
    values = merged(BASE, {"checks": example["checks"], "checkDefaults": example["defaults"]})
    _, check_file = check_file_of(render(values))
    assert check_file == example


@pytest.mark.parametrize("values_file", CI_VALUES, ids=ci_id)
def test_no_sidecar_mount_uses_subpath(values_file: Path) -> None:
    """No sidecar mount is a subPath: those never see a Secret update, so rotation would break."""
    sidecar = sidecar_container(pod_spec(render_ci(values_file)))
    assert [m["name"] for m in sidecar["volumeMounts"] if "subPath" in m] == []


def test_rendered_check_file_loads_in_the_sidecar(tmp_path: Path) -> None:
    """The sidecar's own loader accepts the chart's checks.yaml: names, kinds, criticality,
    per-check and default timing, and every kind's keys arrive as written in the values."""
    # The ci file's mounted paths, moved under tmp_path: the loader wants the files to exist.
    mounts = tmp_path / "etc"
    text = CHECKS_VALUES.read_text().replace("/etc/health-sidecar/", f"{mounts}/")
    values = yaml.safe_load(text)
    replica_dsn = mounts / "db" / "replica" / "dsn"
    replica_dsn.parent.mkdir(parents=True)
    replica_dsn.write_text("postgresql://health@replica.db:5432/glucolens\n")
    for name in ("ca.crt", "tls.crt", "tls.key"):
        tls_file = mounts / "tls" / "replica" / name
        tls_file.parent.mkdir(parents=True, exist_ok=True)
        tls_file.write_text(f"placeholder {name}\n")
    config_map, _ = check_file_of(render(values))
    config_file = tmp_path / CHECK_FILE_KEY
    # Byte for byte what the pod sees at SIDECAR_CONFIG_FILE.
    config_file.write_text(config_map["data"][CHECK_FILE_KEY])

    # The pod's primary takes its database from SIDECAR_DATABASE_URL_FILE; a host stands in.
    settings = Settings.from_environ({"SIDECAR_CONFIG_FILE": str(config_file), "PGHOST": "db"})

    specs = {spec.name: spec for spec in settings.check_specs}
    assert [(s.name, s.kind, s.critical) for s in settings.check_specs] == [
        ("primary", "postgres", True),
        ("replica", "postgres", False),
        ("app", "http", True),
        ("cache", "tcp", False),
    ]
    primary, replica, app, cache = (specs[n] for n in ("primary", "replica", "app", "cache"))
    assert isinstance(primary, PostgresSpec)
    assert primary.require_primary is True
    assert primary.alembic_revisions == ("3f2a1b9c4d5e",)
    assert isinstance(replica, PostgresSpec)
    assert replica.target.file_path == str(replica_dsn)
    assert replica.allow_replica is True
    assert replica.max_replica_lag_seconds == 30
    assert (replica.query, replica.expect) == (values["checks"][1]["query"], "true")
    assert replica.key_file == str(mounts / "tls" / "replica" / "tls.key")
    assert isinstance(app, HttpSpec)
    assert (app.url, app.status_min, app.status_max) == ("http://127.0.0.1:8000/livez", 200, 299)
    assert isinstance(cache, TcpSpec)
    assert (cache.host, cache.port) == ("redis.glucolens.svc", 6379)
    # checkDefaults apply where a check sets nothing; a check's own key wins.
    assert (primary.policy.interval, primary.policy.failure_threshold) == (5, 2)
    assert (replica.policy.interval, replica.policy.failure_threshold) == (15, 2)
    assert (app.policy.timeout, cache.policy.timeout) == (1, 2)


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
        missing_tool("checkov (in .venv-checkov)", installer=".ci/k8s-tools.sh")
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


def test_pods_ignore_service_links_and_pin_sidecar_port_and_host() -> None:
    """enableServiceLinks is off and SIDECAR_PORT/SIDECAR_HOST are set explicitly on the sidecar,
    so a Service named `sidecar` cannot inject SIDECAR_PORT=tcp://... into it."""
    for native in (True, False):
        spec = pod_spec(render({**BASE, "sidecar": {"nativeSidecar": native, "port": 8181}}))
        assert spec["enableServiceLinks"] is False
        env = env_of(sidecar_container(spec))
        assert env["SIDECAR_PORT"] == "8181"
        assert env["SIDECAR_HOST"] == "::"  # the pod's address, for kubelet


def test_null_tmp_size_limit_renders_an_unlimited_valid_emptydir() -> None:
    """app.tmpSizeLimit: null drops the limit (it rendered `sizeLimit: null`, no valid pod)."""
    deployment = one(render(merged(BASE, {"app": {"tmpSizeLimit": None}})), "Deployment")
    kubernetes_validate.validate(deployment, "1.29", strict=True)
    volumes = deployment["spec"]["template"]["spec"]["volumes"]
    assert next(v for v in volumes if v["name"] == "tmp")["emptyDir"] == {}


def test_numbers_of_a_million_and_more_render_as_digits() -> None:
    """Whole numbers Helm holds as float64 are written as digits, not 1e+06, which no
    Kubernetes integer field takes."""
    million = 1_000_000
    probe = {"initialDelaySeconds": million, "periodSeconds": million}
    values = merged(
        BASE,
        {
            "replicaCount": million,
            "revisionHistoryLimit": million,
            "terminationGracePeriodSeconds": million,
            "app": {"startupProbe": probe, "livenessProbe": probe},
        },
    )
    deployment = one(render(values), "Deployment")
    kubernetes_validate.validate(deployment, "1.29", strict=True)
    assert deployment["spec"]["replicas"] == million
    assert deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == million
    app = app_container(deployment["spec"]["template"]["spec"])
    assert app["livenessProbe"]["periodSeconds"] == million


def test_sidecar_reads_its_files_in_a_pod_without_fs_group_under_a_random_uid() -> None:
    """podSecurityContext without fsGroup, OpenShift's random uid, and the sidecar's own uid
    nulled: a valid pod whose sidecar runs as the pod's uid and, by kubelet's projection rules,
    reads every file of every volume it mounts (the DSN, the check file, DSN and TLS Secrets)."""
    values = merged(
        load_yaml(CHECKS_VALUES),
        {
            "podSecurityContext": {"runAsUser": 1000770000, "runAsGroup": None, "fsGroup": None},
            "sidecar": {"securityContext": {"runAsUser": None, "runAsGroup": None}},
        },
    )
    deployment = one(render(values), "Deployment")
    for minor in ("1.29", "1.33"):
        kubernetes_validate.validate(deployment, minor, strict=True)
    spec = deployment["spec"]["template"]["spec"]
    assert "fsGroup" not in spec["securityContext"]
    sidecar = sidecar_container(spec)
    assert "runAsUser" not in sidecar["securityContext"]
    who = fileaccess.identity(spec, sidecar, (65532, 65532))
    assert who.uid == 1000770000
    mounted = {m["name"] for m in sidecar["volumeMounts"]}
    for volume in spec["volumes"]:
        if volume["name"] in mounted:
            for file in fileaccess.projected_files(spec, volume):
                assert fileaccess.can_read(who, file), (volume["name"], oct(file.mode), who)
