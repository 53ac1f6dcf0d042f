"""The library chart (charts/health-sidecar-lib) through a chart of a foreign app
(tests/fixtures/foreign-chart): rendered by the real Helm engine after `helm dependency update`,
in both sidecar modes, validated strictly, and compared with the app chart's sidecar (one
definition of the container for both)."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from support import REPO, fileaccess
from support.helmdeps import dependencies_updated
from test_check_schema import LOADER_ONLY
from test_checkfile import EXAMPLES, REFUSALS, read_example, with_check

try:
    import helm_python as helm
    import kubernetes_validate  # type: ignore[import-untyped]  # ships no type information
except ImportError:
    if os.environ.get("CI") == "true":
        raise  # CI installs them (.ci/k8s-tools.sh): missing is a failure there
    pytest.skip("helm-python-sdk / kubernetes-validate missing", allow_module_level=True)

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


def container(spec: Obj, name: str) -> Obj:
    found: Obj = next(c for c in spec["containers"] if c["name"] == name)
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
    assert sidecar["image"] == f"ghcr.io/glucolens/health-sidecar:{meta['appVersion']}"


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
        assert names == ["log-shipper", "inventory"]
        assert sidecar_of(spec)["restartPolicy"] == "Always"
    else:
        assert init_names == []
        assert names == ["log-shipper", "inventory", "health-sidecar"]
        assert "restartPolicy" not in sidecar_of(spec)
    assert [v["name"] for v in spec["volumes"]] == ["database-url"]
    assert spec["volumes"][0]["secret"]["secretName"] == "inventory-db"


def test_foreign_app_readiness_reads_the_sidecar_ready_endpoint() -> None:
    """The app container's readinessProbe GETs /ready on the sidecar's port, by number."""
    spec = pod_spec(render(FOREIGN, {"healthSidecar": {"port": 9191}}))
    probe = container(spec, "inventory")["readinessProbe"]
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
        "configMap": {"name": "shop-health-sidecar-checks", "defaultMode": 0o444},
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
    foreign_app = container(pod_spec(foreign), "inventory")
    assert app_probe["readinessProbe"] == foreign_app["readinessProbe"]


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


# ---- a pod that is not ours: no fsGroup, any user, a log shipper first ------------------------

# The image's USER (Dockerfile): the sidecar's identity when nothing else sets one.
IMAGE_USER = (65532, 65532)
# Every kind of volume the library mounts: the DSN, the check file, an extra DSN, TLS files.
ALL_VOLUMES: Obj = {
    "checks": [
        {"name": "primary", "kind": "postgres"},
        {
            "name": "replica",
            "kind": "postgres",
            "dsn_file": "/etc/health-sidecar/db/replica/dsn",
            "ca_file": "/etc/health-sidecar/tls/db/ca.crt",
            "cert_file": "/etc/health-sidecar/tls/db/tls.crt",
            "key_file": "/etc/health-sidecar/tls/db/tls.key",
        },
    ],
    "extraDatabaseSecrets": [{"name": "replica", "secretName": "replica-db", "key": "dsn"}],
    "tlsSecrets": [{"name": "db", "secretName": "db-client-cert"}],
}
# OpenShift's restricted SCC: a uid from the namespace's range, group 0, and no uid of the
# chart's own on any container (null drops the library's default 65532).
OPENSHIFT_POD: Obj = {"runAsNonRoot": True, "runAsUser": 1000770000, "runAsGroup": 0}
OPENSHIFT_SIDECAR: Obj = {"securityContext": {"runAsUser": None, "runAsGroup": None}}
POD_SHAPES = {
    "no-fsgroup": ({}, {}),
    "openshift-restricted": ({"podSecurityContext": OPENSHIFT_POD}, OPENSHIFT_SIDECAR),
    "fsgroup": ({"podSecurityContext": {"runAsUser": 10001, "fsGroup": 10001}}, {}),
}


@pytest.mark.parametrize("shape", sorted(POD_SHAPES))
def test_sidecar_reads_every_mounted_file_whatever_the_pods_users(shape: str) -> None:
    """By kubelet's projection rules the sidecar's uid can read each file of each of its volumes,
    with or without fsGroup, as 65532 or as OpenShift's random uid; the pod stays valid."""
    pod_values, sidecar_values = POD_SHAPES[shape]
    objects = render(FOREIGN, {**pod_values, "healthSidecar": {**ALL_VOLUMES, **sidecar_values}})
    (deployment,) = [o for o in objects if o["kind"] == "Deployment"]
    for minor in KUBERNETES:
        kubernetes_validate.validate(deployment, minor, strict=True)
    spec = pod_spec(objects)
    sidecar = sidecar_of(spec)
    who = fileaccess.identity(spec, sidecar, IMAGE_USER)
    if shape == "openshift-restricted":
        assert (who.uid, who.gid) == (1000770000, 0)
    mounted = {m["name"] for m in sidecar["volumeMounts"]}
    assert mounted == {"database-url", "checks", "db-replica", "tls-db"}
    for volume in spec["volumes"]:
        for file in fileaccess.projected_files(spec, volume):
            assert fileaccess.can_read(who, file), (shape, volume["name"], oct(file.mode), who)


def test_sidecar_volumes_are_mounted_into_the_sidecar_only() -> None:
    """No other container of the pod mounts the DSN, check or TLS volumes (0444 is safe so)."""
    spec = pod_spec(render(FOREIGN, {"healthSidecar": ALL_VOLUMES}))
    for other in spec["containers"]:
        assert not other.get("volumeMounts"), other["name"]


def test_null_drops_a_security_context_default_for_the_pod_to_set() -> None:
    """healthSidecar.securityContext.runAsUser: null leaves no runAsUser on the container (the
    pod's, or OpenShift's, applies); the other defaults stay."""
    spec = pod_spec(render(FOREIGN, {"healthSidecar": OPENSHIFT_SIDECAR}))
    context = sidecar_of(spec)["securityContext"]
    assert "runAsUser" not in context
    assert "runAsGroup" not in context
    assert context["runAsNonRoot"] is True
    assert context["capabilities"] == {"drop": ["ALL"]}


def default_paths(defaults: Obj, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every key of the library's defaults, at every depth, as a path of keys."""
    paths = []
    for key, value in defaults.items():
        paths.append((*prefix, key))
        if isinstance(value, dict):
            paths.extend(default_paths(value, (*prefix, key)))
    return paths


def nulled(path: tuple[str, ...]) -> Obj:
    """Values that set the key at `path` to null (a DSN Secret named, as every chart must)."""
    values: Obj = {"database": {"existingSecret": "inventory-db"}}
    here = values
    for key in path[:-1]:
        here = here.setdefault(key, {})
    here[path[-1]] = None
    return values


LIBRARY_DEFAULTS: Obj = yaml.safe_load(
    (LIBRARY / "templates" / "_defaults.tpl").read_text().split("-}}", 1)[1].rsplit("{{-", 1)[0]
)


@pytest.mark.parametrize("path", default_paths(LIBRARY_DEFAULTS), ids=".".join)
def test_null_for_any_default_renders_a_valid_pod_or_fails_naming_the_key(
    path: tuple[str, ...],
) -> None:
    """null removes a default: the pod is then strictly valid without it, or the render stops
    with a line naming healthSidecar.<key> (never a template error, never a broken object)."""
    name = "healthSidecar." + ".".join(path)
    try:
        objects = render(FOREIGN, {"healthSidecar": nulled(path)})
    except helm.HelmError as error:
        refusal = str(error)
    else:
        refusal = ""
    if refusal:
        assert f"{name}:" in refusal or f"{name}." in refusal, refusal
        assert "nil pointer" not in refusal
        return
    for obj in objects:
        for minor in KUBERNETES:
            kubernetes_validate.validate(obj, minor, strict=True)


def test_readiness_probe_goes_to_the_app_not_the_first_container() -> None:
    """The foreign pod's first container is a log shipper: it gets no readinessProbe, the app
    container named in the template does."""
    spec = pod_spec(render(FOREIGN, {}))
    first, app = spec["containers"]
    assert first["name"] == "log-shipper"
    assert "readinessProbe" not in first
    assert app["readinessProbe"]["httpGet"]["path"] == "/ready"


# ---- every key, at every depth, against the sidecar's own rules --------------------------------


@pytest.mark.parametrize(
    ("values", "named"),
    [
        ({"image": {"repositry": "mine/sidecar"}}, "healthSidecar.image.repositry"),
        ({"database": {"existingSecrt": "db"}}, "healthSidecar.database.existingSecrt"),
        ({"readinessProbe": {"periodSecond": 3}}, "healthSidecar.readinessProbe.periodSecond"),
        ({"livenessProbe": {"initialDelaySeconds": 3}}, "healthSidecar.livenessProbe"),
        (
            {"securityContext": {"capabilities": {"drp": ["ALL"]}}},
            "healthSidecar.securityContext.capabilities.drp",
        ),
        ({"resources": {"requests": {"memmory": "1Gi"}}}, "healthSidecar.resources.requests"),
        ({"extraEnv": [{"name": "A", "valu": "1"}]}, "healthSidecar.extraEnv[0].valu"),
        ({"image": {"pullPolicy": "Sometimes"}}, "healthSidecar.image.pullPolicy"),
        ({"readinessProbe": {"timeoutSeconds": 0}}, "healthSidecar.readinessProbe.timeoutSeconds"),
        ({"tlsSecrets": [{"name": "ca"}]}, "healthSidecar.tlsSecrets[0].secretName"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_typo_or_bad_value_at_any_depth_fails_naming_its_path(values: Obj, named: str) -> None:
    """A key the library does not know, or a bad value, two or three levels down, stops the
    render with a line naming its full path."""
    assert named in render_error({"healthSidecar": values})


# The container's own variables, each from one value (SIDECAR_DATABASE_URL: the DSN belongs in
# the Secret): an extraEnv entry of the same name would win over it in the pod and leave the
# ports, probes or files the chart set up pointing elsewhere.
OWN_VARIABLES = {
    "SIDECAR_PORT": "healthSidecar.port",
    "SIDECAR_HOST": "SIDECAR_HOST",
    "SIDECAR_DATABASE_URL_FILE": "healthSidecar.database.existingSecret",
    "SIDECAR_DATABASE_URL": "healthSidecar.database.existingSecret",
    "SIDECAR_CONFIG_FILE": "healthSidecar.checks",
    "SIDECAR_CHECK_INTERVAL": "healthSidecar.checkInterval",
    "SIDECAR_LOG_LEVEL": "healthSidecar.logLevel",
}


@pytest.mark.parametrize("variable", sorted(OWN_VARIABLES))
def test_extra_env_cannot_override_a_variable_the_library_sets(variable: str) -> None:
    """healthSidecar.extraEnv naming one of the container's own variables (SIDECAR_PORT=9000
    would move the listener away from the probes' 8081) fails, naming the value to set, and
    never quotes the value it was given."""
    secret = "postgresql://app:Sup3r-s3cret-pw@db/app"
    error = render_error(
        {
            "healthSidecar": {
                "extraEnv": [{"name": "A", "value": "1"}, {"name": variable, "value": secret}]
            }
        }
    )
    assert f"healthSidecar.extraEnv[1]: {variable}" in error
    assert OWN_VARIABLES[variable] in error
    assert "Sup3r-s3cret-pw" not in error


@pytest.mark.parametrize(
    ("values", "named"),
    [
        ({"database": {"existingSecret": "My_DB"}}, "healthSidecar.database.existingSecret"),
        ({"checksConfigMapName": "Shop Checks"}, "healthSidecar.checksConfigMapName"),
        (
            {"database": {"existingSecret": "db", "existingSecretKey": "url\n  optional: true"}},
            "healthSidecar.database.existingSecretKey",
        ),
        (
            {"database": {"existingSecret": "db"}, "resources": {"limits": {"memory": "lots"}}},
            "healthSidecar.resources.limits.memory",
        ),
    ],
    ids=["secret", "configmap", "secret-key", "quantity"],
)
def test_an_object_name_the_api_server_refuses_fails_the_render(values: Obj, named: str) -> None:
    """A Secret or ConfigMap name that is no DNS subdomain, a Secret key the API server refuses
    (a newline in it, written unquoted, added keys of its own to the pod spec), or a resource
    amount that is no quantity, stops the render naming the key (kubernetes-validate judges
    neither names nor quantities; the API server would refuse the pod at install)."""
    assert f"{named}:" in render_error({"healthSidecar": values})


@pytest.mark.parametrize("tag", [2, 20240101, 1_000_000_007])
def test_a_whole_number_image_tag_renders_as_its_digits(tag: int) -> None:
    """An unquoted date-style tag (20240101: a float64 to Helm) is the image's tag as written,
    not 2.0240101e+07."""
    sidecar = sidecar_of(pod_spec(render(FOREIGN, {"healthSidecar": {"image": {"tag": tag}}})))
    assert sidecar["image"] == f"ghcr.io/glucolens/health-sidecar:{tag}"


def test_a_fractional_image_tag_is_refused_as_ambiguous() -> None:
    """tag: 1.10 reaches Helm as the number 1.1: refused by name (quote it), never rendered as
    another tag."""
    error = render_error({"healthSidecar": {"image": {"tag": 1.10}}})
    assert "healthSidecar.image.tag:" in error


CHECK_REFUSALS = [
    ([{"name": "db", "kind": "postgress"}], "healthSidecar.checks[0].kind"),
    ([{"name": "db", "kind": "postgres", "url": "http://x/"}], "healthSidecar.checks[0].url"),
    ([{"name": "web", "kind": "http"}], "healthSidecar.checks[0].url"),
    ([{"name": "kv", "kind": "tcp", "host": "kv", "port": 70000}], "healthSidecar.checks[0].port"),
    (
        [{"name": "db", "kind": "postgres", "timeout_seconds": 0}],
        "healthSidecar.checks[0].timeout_seconds",
    ),
    (
        [{"name": "db", "kind": "postgres", "require_primary": True, "allow_replica": True}],
        "healthSidecar.checks[0]",
    ),
    (
        [{"name": "Bad Name", "kind": "tcp", "host": "kv", "port": 1}],
        "healthSidecar.checks[0].name",
    ),
    ([{"name": "db", "kind": "postgres", "expect": "t"}], "healthSidecar.checks[0].query"),
]


@pytest.mark.parametrize(("checks", "named"), CHECK_REFUSALS)
def test_checks_are_judged_by_the_check_file_rules_at_render_time(
    checks: list[Obj], named: str
) -> None:
    """healthSidecar.checks against the check file's schema (the loader's rules): an unknown
    kind, a key of another kind, a missing key, a range, a pair that excludes each other."""
    assert f"{named}" in render_error({"healthSidecar": {"checks": checks}})


def test_check_defaults_are_judged_by_the_check_file_rules() -> None:
    """healthSidecar.checkDefaults: an unknown key and an out-of-range number are refused."""
    checks = [{"name": "db", "kind": "postgres"}]
    message = render_error(
        {"healthSidecar": {"checks": checks, "checkDefaults": {"interval_second": 5}}}
    )
    assert "healthSidecar.checkDefaults.interval_second" in message
    message = render_error(
        {"healthSidecar": {"checks": checks, "checkDefaults": {"failure_threshold": 0}}}
    )
    assert "healthSidecar.checkDefaults.failure_threshold" in message


def test_valid_checks_of_every_kind_render() -> None:
    """The refusals are not blanket: the README's examples of each kind render."""
    checks = [
        {"name": "primary", "kind": "postgres", "require_primary": True},
        {
            "name": "replica",
            "kind": "postgres",
            "criticality": "warn",
            "dsn": "postgresql://health@replica.db:5432/app?sslmode=verify-full",
            "allow_replica": True,
            "max_replica_lag_seconds": 30,
            "alembic_revision": ["3f2a1b9c4d5e", "9d8c7b6a5f4e"],
        },
        {"name": "app", "kind": "http", "url": "http://127.0.0.1:8000/livez", "expect_status": 204},
        {"name": "cache", "kind": "tcp", "host": "redis", "port": 6379, "interval_seconds": 2.5},
    ]
    objects = render(FOREIGN, {"healthSidecar": {"checks": checks}})
    (configmap,) = [o for o in objects if o["kind"] == "ConfigMap"]
    assert yaml.safe_load(configmap["data"]["checks.yaml"]) == {"checks": checks}


PASSWORD = "Sup3r-s3cret-pw"
SECRET_BEARING = [
    {"kind": "postgres", "dsn": f"postgresql://health:{PASSWORD}@db:5432/app"},
    {"kind": "postgres", "dsn": f"postgres://db/app?user=health&password={PASSWORD}"},
    {"kind": "postgres", "dsn": f"mysql://health:{PASSWORD}@db/app"},
    {"kind": "http", "url": f"https://probe:{PASSWORD}@app.example/livez"},
    # A raw '/' in the password (base64 makes them): libpq reads no password, the loader
    # refuses it at start; the text still holds the password.
    {"kind": "postgres", "dsn": f"postgresql://health:{PASSWORD}/x@db:5432/app"},
]


@pytest.mark.parametrize(
    "check", SECRET_BEARING, ids=["userinfo", "query", "scheme", "url", "raw-slash"]
)
def test_inline_secret_in_a_check_is_refused_without_echo(check: Obj) -> None:
    """An inline dsn (or url) holding a password fails the render naming the key; the password
    appears nowhere in the message (a ConfigMap is not a Secret, and CI logs are read)."""
    key = "dsn" if "dsn" in check else "url"
    message = render_error({"healthSidecar": {"checks": [{"name": "db", **check}]}})
    assert f"healthSidecar.checks[0].{key}" in message
    assert PASSWORD not in message


def test_library_holds_the_generated_copy_of_the_check_file_schema() -> None:
    """_checkfile_schema.tpl (and the other copies) are what .ci/check-file-schema writes from
    the registry's schema (rerun it after changing a kind or a key)."""
    result = subprocess.run(
        [sys.executable, str(REPO / ".ci" / "check-file-schema"), "--check"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr


def finite(value: object) -> bool:
    """False for a NaN or an infinity anywhere in `value`: Helm takes values as JSON, which has
    neither (a YAML values file's .inf is out of every schema range anyway)."""
    if isinstance(value, dict):
        return all(finite(item) for item in value.values())
    if isinstance(value, list):
        return all(finite(item) for item in value)
    return not isinstance(value, float) or math.isfinite(value)


@pytest.mark.parametrize(
    ("name", "check"),
    [
        pytest.param(name, check, id=name)
        for name, check, _ in REFUSALS
        if name not in LOADER_ONLY and finite(check)
    ],
)
def test_library_refuses_every_check_the_loader_refuses(name: str, check: Obj) -> None:
    """Each check the sidecar's loader refuses (test_checkfile's list), but for the few rules
    only a loader can judge (files, non-finite numbers), fails the render naming checks[1]."""
    message = render_error({"healthSidecar": {"checks": with_check(check)["checks"]}})
    assert "healthSidecar.checks" in message, name


def test_library_renders_the_documented_check_file() -> None:
    """docs/examples/checks.yaml, as healthSidecar.checks and checkDefaults, renders unchanged."""
    example = read_example(EXAMPLES / "checks.yaml")
    assert isinstance(example, dict)
    values = {"checks": example["checks"], "checkDefaults": example.get("defaults", {})}
    objects = render(FOREIGN, {"healthSidecar": values})
    (configmap,) = [o for o in objects if o["kind"] == "ConfigMap"]
    rendered = yaml.safe_load(configmap["data"]["checks.yaml"])
    assert rendered["checks"] == example["checks"]
