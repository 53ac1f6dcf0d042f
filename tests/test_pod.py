"""The chart's pod, run for real: the sidecar image and a stand-in app in a pod network
namespace, PostgreSQL in a second namespace, and a kubelet (tests/support/kubelet.py) applying
the rendered probes, start order, restarts and termination.

The chart is rendered with the real Helm engine; only times are shortened, through values. Its
Secret is projected the way kubelet projects it (`..data` symlink swap, defaultMode, fsGroup).
The scenarios share one pod and run in file order (each starts from a Ready pod); the pod is
deleted last.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import shutil
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families
from sidecar_proc import Measurements
from support import REPO, SLACK, missing_tool
from support.helmdeps import dependencies_updated
from support.image import APP_IMAGE, IMAGE, Store
from support.kubelet import Kubelet, ProbeState
from support.pod import NetnsPostgres, PodmanRuntime, PodNetwork, project_volumes
from support.secretvolume import READ_ONLY_MASK

try:
    import helm_python as helm
except ImportError:
    if os.environ.get("CI") == "true":
        raise
    pytest.skip("helm-python-sdk missing: run .ci/k8s-tools.sh", allow_module_level=True)

CHART = REPO / "charts" / "health-sidecar"
ROLE = "glucolens_probe"
SECOND_ROLE = "glucolens_probe_b"  # the rotation with two roles used in turn
OLD_PASSWORD = "0ld-Pod#Rotation-Pw1"
NEW_PASSWORD = "n3w-Pod#Rotation-Pw2"
THIRD_PASSWORD = "th1rd-Pod#Rotation-Pw3"
SECOND_ROLE_PASSWORD = "b-Pod#Rotation-Pw4"
# A changed Secret reaches the volume at kubelet's next pod sync, 60-90 s later in a cluster;
# shortened here like every other time, but never instant. The dropped-session case needs a
# delay long enough for the pod to go NotReady within it.
SECRET_SYNC_SECONDS = 4.0
DROPPED_SESSION_SYNC_SECONDS = 8.0
# Times shortened through values only; thresholds and timeouts stay the chart's.
VALUES: dict[str, Any] = {
    "sidecar": {
        "checkInterval": 1,
        "checkTimeout": 1,
        "backoffMax": 2,
        "drainSeconds": 1,
        "livenessProbe": {"periodSeconds": 2},
    },
    "app": {
        "startupProbe": {"periodSeconds": 1},
        "livenessProbe": {"periodSeconds": 2},
        "readinessProbe": {"periodSeconds": 1},
    },
    "terminationGracePeriodSeconds": 10,
    # A check file, so the ConfigMap volume is run too: the database (the DSN Secret) and the
    # stand-in app over HTTP inside the pod.
    "checks": [
        {"name": "primary", "kind": "postgres"},
        {"name": "app", "kind": "http", "url": "http://127.0.0.1:8000/", "criticality": "warn"},
    ],
}
# Container start and podman calls on a busy 2-core machine: generous slack on every bound.
SLACK_SECONDS = 2 * SLACK  # a pod's waits chain containers, probes and a kubelet

pytestmark = pytest.mark.slow
# Figures for docs/reliability.md, written to $SIDECAR_TEST_OUT/pod.json.
FIGURES = Measurements("pod.json")
T = TypeVar("T")
Obj = dict[str, Any]


@dataclass(frozen=True)
class PodCase:
    """A workload that runs the sidecar beside an app, and how to run its pod here."""

    id: str
    render: Callable[[str], list[Obj]]  # DSN -> the rendered objects
    app: str  # the container whose readinessProbe is the sidecar's /ready
    sidecar: str = "health-sidecar"
    workload: str | None = None  # the Deployment to run, when there are several
    checks: tuple[str, ...] = ()  # the check file's checks, when the chart renders one
    # What the user's own chart or cluster changes in the pod (security, env), after rendering.
    patch: Callable[[Obj], None] = lambda spec: None


def helm_render(chart: Path, values: Callable[[str], Obj]) -> Callable[[str], list[Obj]]:
    def render(dsn: str) -> list[Obj]:
        # The charts take the sidecar from the library chart, vendored as `helm dependency
        # update` does it.
        with helm.Chart.load(dependencies_updated(chart)) as loaded:
            manifests = loaded.render(values(dsn), name="health-sidecar", namespace="glucolens")
        return [
            doc
            for path, text in sorted(manifests.items())
            if not path.endswith(".txt")
            for doc in yaml.safe_load_all(text)
            if doc
        ]

    return render


def kustomize_render(directory: Path) -> Callable[[str], list[Obj]]:
    def render(dsn: str) -> list[Obj]:
        kubectl = shutil.which("kubectl")
        if kubectl is None:
            missing_tool("kubectl (the kustomize pod)")
        built = subprocess.run(
            [str(kubectl), "kustomize", str(directory)],
            capture_output=True,
            text=True,
            check=True,
            timeout=120,
        )
        return [doc for doc in yaml.safe_load_all(built.stdout) if doc]

    return render


def user_secrets(spec: Obj, objects: list[Obj], dsn: str) -> list[Obj]:
    """The Secrets the user creates (named by the pod's volumes, not rendered): each key the
    DSN."""
    rendered = {o["metadata"]["name"] for o in objects if o["kind"] == "Secret"}
    made = []
    for volume in spec.get("volumes", []):
        source = volume.get("secret")
        if source is None or source["secretName"] in rendered:
            continue
        keys = [item["key"] for item in source.get("items", [])] or ["database-url"]
        made.append(
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "type": "Opaque",
                "metadata": {"name": source["secretName"]},
                "stringData": dict.fromkeys(keys, dsn),
            }
        )
    return made


# Times shortened the way the charts' values do it, for a kustomization (it has no values).
SHORT_TIMES = {
    "SIDECAR_CHECK_INTERVAL": "1",
    "SIDECAR_CHECK_TIMEOUT": "1",
    "SIDECAR_BACKOFF_MAX": "2",
    "SIDECAR_DRAIN_SECONDS": "1",
}


def shorten_times(spec: Obj) -> None:
    for c in [*spec.get("initContainers", []), *spec["containers"]]:
        for variable in c.get("env", []):
            variable["value"] = SHORT_TIMES.get(variable["name"], variable["value"])
        for kind, period in (("startupProbe", 1), ("livenessProbe", 2), ("readinessProbe", 1)):
            if kind in c:
                c[kind]["periodSeconds"] = period


def no_fs_group(spec: Obj) -> None:
    """The including chart owns the pod's securityContext and sets no fsGroup (the common case)."""
    spec["securityContext"].pop("fsGroup", None)


def random_uid(spec: Obj) -> None:
    """OpenShift's restricted SCC: a uid from the namespace's range, group 0, no fsGroup; the
    containers' own uid and gid dropped (as `runAsUser: null` in the values does)."""
    spec["securityContext"] = {"runAsNonRoot": True, "runAsUser": 1000770000, "runAsGroup": 0}
    for c in [*spec.get("initContainers", []), *spec["containers"]]:
        c.get("securityContext", {}).pop("runAsUser", None)
        c.get("securityContext", {}).pop("runAsGroup", None)


def unreadable_home(spec: Obj) -> None:
    """A random uid whose HOME is a directory it cannot read (root's, mode 0700)."""
    random_uid(spec)
    sidecar = next(c for c in spec["initContainers"] if c["name"] == "health-sidecar")
    sidecar["env"].append({"name": "HOME", "value": "/root"})


# A foreign app's chart that adds the sidecar through the library chart (README "Add it to
# your own workload"): its own container names, ports, pod securityContext, and a Secret of its
# own that the chart does not render. Times shortened the same way.
FOREIGN_CHART = REPO / "tests" / "fixtures" / "foreign-chart"
FOREIGN_KUSTOMIZATION = REPO / "tests" / "fixtures" / "foreign-kustomization"
FOREIGN_VALUES: Obj = {
    "healthSidecar": {
        "database": {"existingSecret": "inventory-db"},
        "checkInterval": 1,
        "checkTimeout": 1,
        "backoffMax": 2,
        "drainSeconds": 1,
        "livenessProbe": {"periodSeconds": 2},
        "readinessProbe": {"periodSeconds": 1},
    }
}
APP_CHART = helm_render(CHART, lambda dsn: {**VALUES, "database": {"url": dsn}})
FOREIGN = helm_render(FOREIGN_CHART, lambda dsn: FOREIGN_VALUES)
# Every scenario below runs on these.
CASES = [
    PodCase("app-chart", APP_CHART, "app", checks=tuple(c["name"] for c in VALUES["checks"])),
    PodCase("foreign-chart-no-fsgroup", FOREIGN, "inventory", patch=no_fs_group),
]
# Pods that are not ours: each must start, turn Ready, read its volumes and stop cleanly.
HOSTILE_CASES = [
    PodCase("random-uid-gid-0", FOREIGN, "inventory", patch=random_uid),
    PodCase("unreadable-home", FOREIGN, "inventory", patch=unreadable_home),
    PodCase(
        "kustomize-log-shipper-first",
        kustomize_render(FOREIGN_KUSTOMIZATION),
        "inventory",
        workload="inventory",
        patch=shorten_times,
    ),
]


def env_value(container: Obj, name: str) -> str:
    return str(next(e["value"] for e in container["env"] if e["name"] == name))


@dataclass
class RunningPod:
    """A pod whose kubelet runs in its own event loop thread, driven synchronously."""

    case: PodCase
    spec: Obj
    net: PodNetwork
    pg: NetnsPostgres
    runtime: PodmanRuntime
    kubelet: Kubelet
    loop: asyncio.AbstractEventLoop
    secret_payload: dict[str, str]
    secret_volume: str  # the DSN Secret's volume name

    def rotate(self, dsn: str) -> concurrent.futures.Future[float]:
        """The DSN Secret changed: kubelet writes it to the volume at its next sync (a future
        that ends when written)."""
        key = next(iter(self.secret_payload))
        coro = self.kubelet.update_volume(self.secret_volume, {key: dsn})
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 120) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def wait(self, condition: Callable[[], bool], within: float, what: str) -> float:
        """Poll `condition` until true; the time it became true."""
        deadline = time.monotonic() + within
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError(f"{what} not within {within:g}s; events {self.kubelet.events}")
            time.sleep(0.05)
        return time.monotonic()

    def container(self, name: str) -> Obj:
        return next(
            c
            for c in [*self.spec.get("initContainers", []), *self.spec["containers"]]
            if c["name"] == name
        )

    def sessions(self) -> int:
        value = self.pg.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE client_addr = $1::inet",
            self.net.pod_db_side_ip,
        )
        return int(value)

    @property
    def readiness(self) -> ProbeState:
        return self.kubelet.probe(self.case.app, "readinessProbe")

    def detection_bound(self) -> float:
        """The chart's comment: checkInterval + checkTimeout + failureThreshold x periodSeconds."""
        sidecar = self.container(self.case.sidecar)
        probe = self.readiness.probe
        return (
            float(env_value(sidecar, "SIDECAR_CHECK_INTERVAL"))
            + float(env_value(sidecar, "SIDECAR_CHECK_TIMEOUT"))
            + probe.failure_threshold * probe.period_seconds
        )


@pytest.fixture(scope="module")
def store(image_store: Store) -> Store:
    if os.geteuid() != 0:
        missing_tool("root (the pod tests make network namespaces, veth pairs, iptables rules)")
    return image_store


@contextlib.contextmanager
def running(store: Store, case: PodCase) -> Iterator[RunningPod]:
    """The case's pod started by the kubelet, PostgreSQL up in its namespace; deleted after."""
    net = PodNetwork.create()
    pg = NetnsPostgres(net)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    volumes_root = Path(tempfile.mkdtemp(prefix="hs12-volumes-"))
    volumes_root.chmod(0o755)
    runtime: PodmanRuntime | None = None
    kubelet: Kubelet | None = None
    try:
        pg.start()
        pg.create_role(ROLE, OLD_PASSWORD)
        dsn = pg.dsn(ROLE, host=net.db_ip)
        objects = case.render(dsn)
        deployment = next(
            o
            for o in objects
            if o["kind"] == "Deployment" and case.workload in (None, o["metadata"]["name"])
        )
        spec: Obj = deployment["spec"]["template"]["spec"]
        case.patch(spec)
        objects += user_secrets(spec, objects, dsn)
        volumes = project_volumes(spec, objects, volumes_root)
        dsn_volume = next(v for v in spec["volumes"] if "secret" in v)
        payload = {item["path"]: "" for item in dsn_volume["secret"]["items"]}
        containers = [*spec.get("initContainers", []), *spec["containers"]]
        # Every container but the sidecar runs the stand-in app, listening on its first port.
        app_args = {
            c["name"]: [str(c.get("ports", [{"containerPort": 0}])[0]["containerPort"])]
            for c in containers
            if c["name"] != case.sidecar
        }
        runtime = PodmanRuntime(
            store,
            spec,
            net,
            images={
                c["name"]: IMAGE if c["name"] == case.sidecar else APP_IMAGE for c in containers
            },
            volumes=volumes,
            app_args=app_args,
        )
        kubelet = Kubelet(
            spec, runtime, net.pod_ip, volumes=volumes, volume_delay=lambda: SECRET_SYNC_SECONDS
        )
        pod = RunningPod(case, spec, net, pg, runtime, kubelet, loop, payload, dsn_volume["name"])
        starting = asyncio.run_coroutine_threadsafe(kubelet.start(), loop)
        # A sidecar that never passes its startupProbe holds the app back, as in a cluster:
        # the scenario's wait for Ready then says what happened (the kubelet's events).
        with contextlib.suppress(concurrent.futures.TimeoutError):
            starting.result(60 + SLACK_SECONDS)
        yield pod
    finally:
        if kubelet is not None and not kubelet._terminating:
            # Deleted here when the test did not delete it (or failed before it did).
            asyncio.run_coroutine_threadsafe(kubelet.terminate(), loop).result(120)
        FIGURES.write()
        if runtime is not None:
            runtime.cleanup()
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        pg.cleanup()
        net.delete()
        shutil.rmtree(volumes_root, ignore_errors=True)


@pytest.fixture(scope="module", params=CASES, ids=[case.id for case in CASES])
def pod(store: Store, request: pytest.FixtureRequest) -> Iterator[RunningPod]:
    """The case's pod, shared by the scenarios below in file order."""
    with running(store, request.param) as started:
        yield started


def dump(pod: RunningPod) -> str:
    return "\n".join(
        f"--- {name} ---\n{pod.runtime.logs(name)[-3000:]}" for name in pod.runtime.containers
    )


def app_containers(pod: RunningPod) -> list[str]:
    return [c["name"] for c in pod.spec["containers"]]


def cold_start(pod: RunningPod) -> float:
    """Wait for Ready; check kubelet's order (the sidecar started and passed its startupProbe
    before any app container started), no restart, a session; the seconds it took."""
    began = pod.kubelet.events[0][0]
    within = max(1.0, began + 60 + SLACK_SECONDS - time.monotonic())
    try:
        ready_at = pod.wait(lambda: pod.kubelet.ready, within, "pod Ready after a cold start")
    except AssertionError as error:
        raise AssertionError(f"{error}\n{dump(pod)}") from None
    sidecar = pod.case.sidecar
    started = [what for _, what in pod.kubelet.events if what.startswith("started")]
    assert started == [f"started {name}" for name in [sidecar, *app_containers(pod)]]
    sidecar_startup = pod.kubelet.probe(sidecar, "startupProbe")
    assert sidecar_startup.passing
    first_app = next(t for t, what in pod.kubelet.events if what == started[1])
    assert sidecar_startup.transitions[0][0] <= first_app
    assert set(pod.kubelet.restarts().values()) == {0}, pod.kubelet.events
    assert pod.sessions() >= 1, "the sidecar holds no session on the database"
    return ready_at - began


def test_cold_start_reaches_ready_in_kubelet_order(pod: RunningPod) -> None:
    """The sidecar starts first and passes its startupProbe, then the app; the pod turns Ready."""
    FIGURES.add(chart=pod.case.id, scenario="cold start", ready_s=cold_start(pod))


def test_volumes_have_the_charts_mode_and_group_and_are_read(pod: RunningPod) -> None:
    """The DSN Secret and the check ConfigMap are projected behind ..data as kubelet projects
    them (defaultMode, ORed with 0440 and the group set to fsGroup when the pod has one), and the
    sidecar runs the checks the ConfigMap lists."""
    kinds = [v for v in pod.spec["volumes"] if "secret" in v or "configMap" in v]
    expected = {"secret", "configMap"} if pod.case.checks else {"secret"}
    assert expected <= {k for v in kinds for k in v}
    fs_group = pod.spec.get("securityContext", {}).get("fsGroup")
    for volume in kinds:
        source = volume.get("secret") or volume["configMap"]
        root = pod.runtime.volumes[volume["name"]].root
        mode = source["defaultMode"] | (READ_ONLY_MASK if fs_group is not None else 0)
        for entry in root.iterdir():
            if entry.name.startswith(".."):
                continue
            assert entry.is_symlink()
            target = entry.resolve()
            assert target.parent.name.startswith("..")
            assert target.stat().st_mode & 0o777 == mode
            assert target.stat().st_gid == (fs_group if fs_group is not None else 0)
    port = pod.readiness.probe.port
    names = pod.case.checks or ("postgres",)  # without a check file: the one check, postgres
    urls = [f"http://{pod.net.pod_ip}:{port}/ready/{name}" for name in names]
    # The app starts after the sidecar, so its check may still be in backoff: wait for it.
    pod.wait(
        lambda: [http_status(url) for url in urls] == [200] * len(urls),
        15 + SLACK_SECONDS,
        f"every check of the ConfigMap passing ({urls})",
    )


def metrics(pod: RunningPod) -> dict[str, dict[frozenset[tuple[str, str]], float]]:
    """The sidecar's /metrics samples: name -> labels -> value."""
    url = f"http://{pod.net.pod_ip}:{pod.readiness.probe.port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as answer:  # http:// built here
        text = answer.read().decode()
    samples: dict[str, dict[frozenset[tuple[str, str]], float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[frozenset(sample.labels.items())] = sample.value
    return samples


def http_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as answer:  # noqa: S310  # http:// built here
            return int(answer.status)
    except urllib.error.HTTPError as error:
        return error.code
    except OSError:
        return 0


def outage(pod: RunningPod, name: str, start: Callable[[], None], end: Callable[[], None]) -> None:
    """Take the database away, expect NotReady within the chart's bound and no restart; give it
    back, expect Ready again."""
    pod.wait(lambda: pod.kubelet.ready, 30 + SLACK_SECONDS, "pod Ready before the outage")
    restarts = pod.kubelet.restarts()
    began = time.monotonic()
    start()
    unready_at = pod.wait(
        lambda: not pod.kubelet.ready,
        pod.detection_bound() + SLACK_SECONDS,
        "pod NotReady after the database went away",
    )
    print(f"\nNotReady after {unready_at - began:.1f}s (chart bound {pod.detection_bound():g}s)")
    flips = [r for r in pod.readiness.results if r.at >= began and not r.success]
    assert len(flips) >= pod.readiness.probe.failure_threshold
    assert {r.detail for r in flips} == {"503"}, "the sidecar must answer, 503, during an outage"
    # Several liveness periods down: nothing restarts.
    time.sleep(3 * pod.kubelet.probe(pod.case.sidecar, "livenessProbe").probe.period_seconds)
    assert not pod.kubelet.ready
    back = time.monotonic()
    end()
    ready_at = pod.wait(lambda: pod.kubelet.ready, 10 + SLACK_SECONDS, "pod Ready again")
    print(f"Ready again {ready_at - back:.1f}s after the database came back")
    assert pod.kubelet.restarts() == restarts
    assert pod.kubelet.probe(pod.case.sidecar, "livenessProbe").passing
    FIGURES.add(
        chart=pod.case.id,
        scenario=name,
        not_ready_s=unready_at - began,
        chart_bound_s=pod.detection_bound(),
        ready_again_s=ready_at - back,
        restarts=sum(pod.kubelet.restarts().values()) - sum(restarts.values()),
    )


def test_database_stopped_unreadies_pod_without_restarts(pod: RunningPod) -> None:
    """PostgreSQL stopped in its namespace: NotReady within the chart's bound, zero restarts,
    Ready again once it is back."""
    outage(pod, "database stopped", pod.pg.stop, pod.pg.start)


def test_database_blackholed_unreadies_pod_without_restarts(pod: RunningPod) -> None:
    """Packets from the pod dropped at the database host: the same as a stop."""
    outage(
        pod,
        "database blackholed",
        lambda: pod.net.blackhole(True),
        lambda: pod.net.blackhole(False),
    )


def sessions_since(pod: RunningPod, began: float, role: str | None = None) -> int:
    """The pod's sessions that logged in after `began` (as `role`, when given)."""
    value = pod.pg.fetchval(
        "SELECT count(*) FROM pg_stat_activity WHERE client_addr = $1::inet"
        " AND backend_start > now() - make_interval(secs => $2)"
        " AND ($3::text IS NULL OR usename = $3)",
        pod.net.pod_db_side_ip,
        float(time.monotonic() - began),
        role,
    )
    return int(value)


def failure_counts(pod: RunningPod) -> dict[frozenset[tuple[str, str]], float]:
    return metrics(pod).get("health_sidecar_check_failures_total", {})


def test_rotated_secret_with_changed_password_fails_no_check(pod: RunningPod) -> None:
    """ALTER ROLE, then the Secret volume swapped as kubelet swaps it, seconds later: the kept
    session goes on passing meanwhile, then a new one logs in; no probe fails."""
    pod.wait(lambda: pod.kubelet.ready, 30 + SLACK_SECONDS, "pod Ready before the rotation")
    before = failure_counts(pod)
    began = time.monotonic()
    pod.pg.alter_password(ROLE, NEW_PASSWORD)
    pod.rotate(pod.pg.dsn(ROLE, NEW_PASSWORD, host=pod.net.db_ip)).result(120)
    pod.wait(
        lambda: sessions_since(pod, began) > 0,
        30 + SLACK_SECONDS,
        "a session with the new password",
    )
    time.sleep(3 * pod.readiness.probe.period_seconds)
    failed = [r for r in pod.readiness.results if r.at >= began and not r.success]
    probed = [r for r in pod.readiness.results if r.at >= began]
    assert failed == []
    assert pod.kubelet.ready
    after = metrics(pod)
    assert after.get("health_sidecar_check_failures_total", {}) == before, "a check failed"
    applied = after["health_sidecar_dsn_reloads_total"]
    assert sum(v for labels, v in applied.items() if ("outcome", "applied") in labels) >= 1
    FIGURES.add(
        chart=pod.case.id,
        scenario="secret rotated",
        sync_delay_s=SECRET_SYNC_SECONDS,
        probes=len(probed),
        failed=len(failed),
    )


def test_session_dropped_between_alter_role_and_the_swap_unreadies_the_pod(
    pod: RunningPod,
) -> None:
    """The kept session drops after ALTER ROLE and before kubelet writes the new Secret: the
    sidecar can only log in with the old password, so the pod is NotReady until the swap
    (never restarted), then Ready again. One role cannot be rotated in place without this risk."""
    pod.wait(lambda: pod.kubelet.ready, 30 + SLACK_SECONDS, "pod Ready before the rotation")
    restarts = pod.kubelet.restarts()
    pod.kubelet.volume_delay = lambda: DROPPED_SESSION_SYNC_SECONDS
    try:
        began = time.monotonic()
        pod.pg.alter_password(ROLE, THIRD_PASSWORD)
        swap = pod.rotate(pod.pg.dsn(ROLE, THIRD_PASSWORD, host=pod.net.db_ip))
        assert pod.pg.terminate() >= 1, "the sidecar held no session to drop"
        unready_at = pod.wait(
            lambda: not pod.kubelet.ready,
            DROPPED_SESSION_SYNC_SECONDS + SLACK_SECONDS,
            "pod NotReady after its session dropped",
        )
        swap.result(120)
        swapped_at = time.monotonic()
        assert unready_at < swapped_at, "the pod stayed Ready until the swap"
        ready_at = pod.wait(lambda: pod.kubelet.ready, 30 + SLACK_SECONDS, "pod Ready again")
    finally:
        pod.kubelet.volume_delay = lambda: SECRET_SYNC_SECONDS
    failed = [r for r in pod.readiness.results if r.at >= began and not r.success]
    assert failed
    assert {r.detail for r in failed} == {"503"}, "the sidecar must answer, 503, meanwhile"
    assert pod.kubelet.restarts() == restarts
    FIGURES.add(
        chart=pod.case.id,
        scenario="session dropped between ALTER ROLE and the swap",
        sync_delay_s=DROPPED_SESSION_SYNC_SECONDS,
        not_ready_s=ready_at - unready_at,
        ready_again_after_swap_s=ready_at - swapped_at,
        failed_probes=len(failed),
    )


def test_two_roles_used_in_turn_survive_a_dropped_session(pod: RunningPod) -> None:
    """The rotation docs/reliability.md recommends: the Secret moves to a second role whose
    password is already valid, and the first role's password changes only after the swap. A
    session dropped before the swap and another after it fail no probe and no check."""
    pod.wait(lambda: pod.kubelet.ready, 30 + SLACK_SECONDS, "pod Ready before the rotation")
    pod.pg.create_role(SECOND_ROLE, SECOND_ROLE_PASSWORD)
    before = failure_counts(pod)
    began = time.monotonic()
    swap = pod.rotate(pod.pg.dsn(SECOND_ROLE, SECOND_ROLE_PASSWORD, host=pod.net.db_ip))
    assert pod.pg.terminate() >= 1, "the sidecar held no session to drop"
    swap.result(120)
    pod.wait(
        lambda: sessions_since(pod, began, SECOND_ROLE) > 0,
        30 + SLACK_SECONDS,
        "a session as the second role",
    )
    pod.pg.alter_password(ROLE, OLD_PASSWORD)  # the idle role's turn, at leisure
    assert pod.pg.terminate() >= 1
    pod.wait(lambda: pod.sessions() >= 1, 30 + SLACK_SECONDS, "the session back")
    time.sleep(3 * pod.readiness.probe.period_seconds)
    probed = [r for r in pod.readiness.results if r.at >= began]
    failed = [r for r in probed if not r.success]
    assert failed == []
    assert pod.kubelet.ready
    assert failure_counts(pod) == before, "a check failed"
    FIGURES.add(
        chart=pod.case.id,
        scenario="two roles in turn, sessions dropped",
        sync_delay_s=SECRET_SYNC_SECONDS,
        probes=len(probed),
        failed=len(failed),
    )


def test_killed_sidecar_process_is_restarted_and_pod_ready_again(pod: RunningPod) -> None:
    """SIGKILL to the sidecar's process: its container is restarted, the pod Ready again."""
    pod.wait(lambda: pod.kubelet.ready, 30 + SLACK_SECONDS, "pod Ready before the kill")
    killed = time.monotonic()
    os.kill(pod.runtime.pid(pod.case.sidecar), 9)
    pod.wait(
        lambda: pod.kubelet.restarts()[pod.case.sidecar] == 1,
        30 + SLACK_SECONDS,
        "sidecar container restarted",
    )
    assert pod.kubelet.status[pod.case.sidecar].exit_codes[-1] == 137
    ready_at = pod.wait(
        lambda: pod.kubelet.ready, 30 + SLACK_SECONDS, "pod Ready after the restart"
    )
    assert pod.kubelet.restarts()[pod.case.app] == 0
    FIGURES.add(
        chart=pod.case.id, scenario="sidecar killed", ready_again_s=ready_at - killed, restarts=1
    )


def delete(pod: RunningPod) -> float:
    """Delete the pod: every app container SIGTERMed and exited before the sidecar's SIGTERM;
    all exit 0, no SIGKILL, within the grace period, no session left; the seconds it took."""
    began = time.monotonic()
    codes = pod.call(pod.kubelet.terminate())
    took = time.monotonic() - began
    events = [(t, what) for t, what in pod.kubelet.events if t >= began]
    sidecar = pod.case.sidecar
    sidecar_term = next(t for t, what in events if what == f"SIGTERM {sidecar}")
    for app in app_containers(pod):
        assert next(t for t, what in events if what == f"exited {app} (0)") <= sidecar_term, (
            f"{events}\n{dump(pod)}"
        )
    assert set(codes.values()) == {0}, f"{codes}\n{dump(pod)}"
    assert not any(what.startswith("SIGKILL") for _, what in pod.kubelet.events)
    assert took < pod.kubelet.grace_seconds
    pod.wait(lambda: pod.sessions() == 0, 10, "no session of the pod left on the database")
    return took


def test_pod_deleted_stops_app_first_then_sidecar_cleanly(pod: RunningPod) -> None:
    """Deletion: the app containers SIGTERMed first, the sidecar after they exited; all exit 0
    within the grace period and no session of the pod is left on the database."""
    pod.wait(lambda: pod.kubelet.ready, 30 + SLACK_SECONDS, "pod Ready before deletion")
    took = delete(pod)
    FIGURES.add(
        chart=pod.case.id,
        scenario="pod deleted",
        terminated_s=took,
        grace_s=pod.kubelet.grace_seconds,
    )


@pytest.mark.parametrize("case", HOSTILE_CASES, ids=[case.id for case in HOSTILE_CASES])
def test_a_pod_that_is_not_ours_turns_ready_and_stops_cleanly(store: Store, case: PodCase) -> None:
    """A random uid with group 0, an unreadable HOME, a kustomization whose first container is
    a log shipper: the pod starts in kubelet's order, turns Ready with no restart, every check
    passes, only the app container probes /ready, and deletion stops it cleanly."""
    with running(store, case) as pod:
        ready_s = cold_start(pod)
        port = pod.readiness.probe.port
        for name in app_containers(pod):
            probe = pod.kubelet.status[name].probes.get("readinessProbe")
            points_at_sidecar = probe is not None and probe.probe.path == "/ready"
            assert points_at_sidecar == (name == pod.case.app), f"{name}: {probe}"
        url = f"http://{pod.net.pod_ip}:{port}/ready"
        assert http_status(url) == 200
        assert "Traceback" not in pod.runtime.logs(pod.case.sidecar)
        took = delete(pod)
        FIGURES.add(chart=case.id, scenario="hostile pod", ready_s=ready_s, terminated_s=took)
