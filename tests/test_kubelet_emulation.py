"""A kubelet emulation: the chart's probes, run against a real sidecar through a database outage.

The chart is rendered with its defaults, scaled down in time only (check interval, timeout,
backoff and probe periods); thresholds and timeouts of the probes stay the chart's. The sidecar
runs as a subprocess with the environment the chart gives its container (the DSN file and port
pointed at this machine), and each probe is run the way kubelet's prober does:

- (tests/support/kubelet.py, shared with the real-container pod tests) an HTTP GET with
  `User-Agent: kube-probe/1.29`, a fresh connection each time, `timeoutSeconds`
  for the whole request; any status from 200 to 399 is a success, anything else a failure;
- every `periodSeconds` after `initialDelaySeconds`; liveness and readiness only once the
  startup probe has passed (and, for a native sidecar, the app only starts after the sidecar's
  startup probe passed);
- `failureThreshold` consecutive failures flip the result (liveness/startup: the container would
  be restarted; readiness: the pod leaves the Service), `successThreshold` consecutive
  successes make a pod ready again.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from support import LOOPBACK, REPO, SLACK, free_port
from support.helmdeps import dependencies_updated
from support.kubelet import Probe, ProbeState, probe_once
from support.pg import PostgresServer

try:
    import helm_python as helm
except ImportError:
    if os.environ.get("CI") == "true":
        raise  # CI installs it (.ci/k8s-tools.sh): missing is a failure there
    pytest.skip("helm-python-sdk missing: run .ci/k8s-tools.sh", allow_module_level=True)

CHART = dependencies_updated(REPO / "charts" / "health-sidecar")
# A foreign app's chart that adds the sidecar through the library chart (README "Add it to your
# own workload"): its pod must behave exactly like the app chart's.
FOREIGN_CHART = dependencies_updated(REPO / "tests" / "fixtures" / "foreign-chart")
# A foreign app's Deployment given the sidecar by the kustomize component.
FOREIGN_KUSTOMIZATION = REPO / "tests" / "fixtures" / "foreign-kustomization"
# Time scaled down: the structure (thresholds, timeouts, which probe reads what) is the chart's.
CHECK_INTERVAL_SECONDS = 1
CHECK_TIMEOUT_SECONDS = 1
BACKOFF_MAX_SECONDS = 2
PROBE_PERIOD_SECONDS = 1
# Generous slack on every bound: CI machines are slow and busy.
SLACK_SECONDS = SLACK

Obj = dict[str, Any]

helm.disable_logging()


async def run_probe(state: ProbeState, host: str) -> None:
    """kubelet's worker for one probe: every `periodSeconds` after `initialDelaySeconds`."""
    await asyncio.sleep(state.probe.initial_delay_seconds)
    while True:
        started = time.monotonic()
        state.record(await probe_once(state.probe, host))
        await asyncio.sleep(max(0.0, state.probe.period_seconds - (time.monotonic() - started)))


def probe_of(container: Obj, kind: str) -> Probe:
    probe = Probe.from_container(container, kind)
    assert probe is not None, f"{container['name']} has no {kind}"
    assert probe.handler == "httpGet"
    return probe


def kustomized_pod_spec(sidecar_port: int) -> Obj:
    """The component's pod spec from `kubectl kustomize`, scaled down in time and moved to a free
    port the way render_pod_spec's values do it (kustomize has no values to set)."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        if os.environ.get("CI") == "true":
            pytest.fail("kubectl is missing")
        pytest.skip("kubectl is missing")
    built = subprocess.run(
        [kubectl, "kustomize", str(FOREIGN_KUSTOMIZATION)],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    # The Deployment that opts in (the fixture's redis does not, and is left alone).
    (deployment,) = [
        d
        for d in yaml.safe_load_all(built.stdout)
        if d and d["kind"] == "Deployment" and d["metadata"]["name"] == "inventory"
    ]
    spec: Obj = deployment["spec"]["template"]["spec"]
    scaled = {
        "SIDECAR_PORT": str(sidecar_port),
        "SIDECAR_CHECK_INTERVAL": str(CHECK_INTERVAL_SECONDS),
        "SIDECAR_CHECK_TIMEOUT": str(CHECK_TIMEOUT_SECONDS),
        "SIDECAR_BACKOFF_MAX": str(BACKOFF_MAX_SECONDS),
        "SIDECAR_DRAIN_SECONDS": "0",
    }
    sidecar = spec["initContainers"][0]
    for variable in sidecar["env"]:
        variable["value"] = scaled.get(variable["name"], variable["value"])
    sidecar["ports"][0]["containerPort"] = sidecar_port
    for probe in (sidecar["startupProbe"], sidecar["livenessProbe"]):
        probe["periodSeconds"] = PROBE_PERIOD_SECONDS
    readiness = app_container(spec)["readinessProbe"]
    readiness["periodSeconds"] = PROBE_PERIOD_SECONDS
    readiness["httpGet"]["port"] = sidecar_port
    return spec


def render_pod_spec(chart: Path, sidecar_port: int) -> Obj:
    """The chart's pod spec: defaults, times scaled down, the sidecar on a free port."""
    if chart == FOREIGN_KUSTOMIZATION:
        return kustomized_pod_spec(sidecar_port)
    sidecar = {
        "port": sidecar_port,
        "checkInterval": CHECK_INTERVAL_SECONDS,
        "checkTimeout": CHECK_TIMEOUT_SECONDS,
        "backoffMax": BACKOFF_MAX_SECONDS,
        "drainSeconds": 0,
        "startupProbe": {"periodSeconds": PROBE_PERIOD_SECONDS},
        "livenessProbe": {"periodSeconds": PROBE_PERIOD_SECONDS},
    }
    readiness = {"periodSeconds": PROBE_PERIOD_SECONDS}
    values: Obj
    if chart == CHART:
        values = {
            "database": {"url": "postgresql://replaced-by-the-test@localhost/db"},
            "sidecar": sidecar,
            "app": {"readinessProbe": readiness},
        }
    else:
        values = {"healthSidecar": {**sidecar, "readinessProbe": readiness}}
    with helm.Chart.load(chart) as loaded:
        rendered = loaded.render(values, name="health-sidecar", namespace="glucolens")
    (deployment,) = [
        doc
        for path, text in rendered.items()
        if path.endswith("/deployment.yaml")
        for doc in yaml.safe_load_all(text)
        if doc
    ]
    spec: Obj = deployment["spec"]["template"]["spec"]
    return spec


def app_container(spec: Obj) -> Obj:
    """The workload's own container: the one whose readinessProbe is the sidecar's /ready (the
    first container, unless a log shipper comes first)."""
    app: Obj
    (app,) = [
        c
        for c in spec["containers"]
        if c["name"] != "health-sidecar"
        and c.get("readinessProbe", {}).get("httpGet", {}).get("path") == "/ready"
    ]
    return app


def container(spec: Obj, name: str) -> Obj:
    containers = spec.get("initContainers", []) + spec["containers"]
    found: Obj = next(c for c in containers if c["name"] == name)
    return found


def sidecar_environment(sidecar: Obj, dsn_file: Path) -> dict[str, str]:
    """The container's env as the chart renders it, the mounted DSN file mapped to `dsn_file`."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    for variable in sidecar["env"]:
        assert "value" in variable, f"{variable['name']}: only literal values are emulated"
        env[variable["name"]] = variable["value"]
    # The pod's address becomes loopback here: nothing outside this machine may reach it.
    assert "SIDECAR_HOST" in env
    env["SIDECAR_HOST"] = "127.0.0.1"
    assert "SIDECAR_DATABASE_URL" not in env
    assert env["SIDECAR_DATABASE_URL_FILE"].startswith(sidecar["volumeMounts"][0]["mountPath"])
    env["SIDECAR_DATABASE_URL_FILE"] = str(dsn_file)
    return env


@pytest.fixture
def dsn_file(pg_private: PostgresServer) -> Iterator[Path]:
    """The private server's DSN in a file, as the mounted Secret would hold it."""
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "url"
        path.write_text(pg_private.dsn())
        yield path


@dataclass
class Pod:
    """The rendered pod spec and its sidecar container running as a subprocess."""

    spec: Obj
    sidecar_port: int
    process: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-5000:]


@pytest.fixture(
    params=[CHART, FOREIGN_CHART, FOREIGN_KUSTOMIZATION],
    ids=["app-chart", "foreign-chart", "foreign-kustomization"],
)
def pod(request: pytest.FixtureRequest, dsn_file: Path) -> Iterator[Pod]:
    """The chart's sidecar container started with its rendered environment."""
    port = free_port()
    spec = render_pod_spec(request.param, port)
    log = dsn_file.parent / "sidecar.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "sidecar"],
            env=sidecar_environment(container(spec, "health-sidecar"), dsn_file),
            stdout=sink,
            stderr=subprocess.STDOUT,
            cwd=REPO,
        )
    try:
        yield Pod(spec, port, process, log)
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


async def wait_for(condition: Any, within: float, what: str) -> float:
    """Poll `condition()` until true; return the time it became true."""
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not within {within:g}s")
        await asyncio.sleep(0.05)
    return time.monotonic()


@pytest.mark.slow
async def test_database_outage_unreadies_pod_without_restarting_anything(
    pg_private: PostgresServer,
    pod: Pod,
) -> None:
    """Probed like kubelet: unready ~failureThreshold x period after the DB stops, no liveness
    failure ever, ready again after the DB returns."""
    sidecar, app = container(pod.spec, "health-sidecar"), app_container(pod.spec)
    startup = probe_of(sidecar, "startupProbe")
    liveness = probe_of(sidecar, "livenessProbe")
    readiness = probe_of(app, "readinessProbe")
    assert readiness.path == "/ready"
    assert readiness.port == pod.sidecar_port

    tasks: list[asyncio.Task[None]] = []
    try:
        # The startup probe runs alone until it passes; failureThreshold failures = a restart.
        starter = ProbeState.initial(startup)
        for _ in range(startup.failure_threshold):
            starter.record(await probe_once(startup, LOOPBACK))
            if starter.passing:
                break
            await asyncio.sleep(startup.period_seconds)
        assert starter.passing, f"startup probe never passed: {starter.results}"

        # Then (native sidecar: the app starts now) liveness and readiness run side by side.
        live, ready = ProbeState.initial(liveness), ProbeState.initial(readiness)
        tasks = [
            asyncio.create_task(run_probe(live, LOOPBACK)),
            asyncio.create_task(run_probe(ready, LOOPBACK)),
        ]
        await wait_for(lambda: ready.passing, 15 + SLACK_SECONDS, "pod ready with the DB up")

        stopped_at = time.monotonic()
        await asyncio.to_thread(pg_private.stop)
        detection = CHECK_INTERVAL_SECONDS + CHECK_TIMEOUT_SECONDS
        unready_bound = detection + readiness.failure_threshold * readiness.period_seconds
        unready_at = await wait_for(
            lambda: not ready.passing, unready_bound + SLACK_SECONDS, "pod unready after DB stop"
        )
        # The flip needed failureThreshold failed probes in a row, all after the stop.
        flip_failures = [r for r in ready.results if r.at >= stopped_at and not r.success]
        assert len(flip_failures) >= readiness.failure_threshold
        assert unready_at - stopped_at >= (readiness.failure_threshold - 1) * (
            readiness.period_seconds
        )
        # The sidecar answered every readiness probe during the outage, promptly, with 503.
        assert {r.detail for r in flip_failures} == {"503"}

        # Stay down for a few liveness periods: liveness must keep passing.
        await asyncio.sleep(3 * liveness.period_seconds)
        assert not ready.passing

        restarted_at = time.monotonic()
        await asyncio.to_thread(pg_private.start)
        back_bound = (
            BACKOFF_MAX_SECONDS + detection + readiness.success_threshold * readiness.period_seconds
        )
        await wait_for(lambda: ready.passing, back_bound + SLACK_SECONDS, "pod ready again")
        assert ready.transitions[-1][0] >= restarted_at

        assert live.failures() == [], "a liveness probe failed: kubelet would restart the sidecar"
        assert live.transitions == []
        assert len(live.results) >= 5
        assert pod.process.poll() is None, "the sidecar exited"
    except BaseException:
        sys.stderr.write(f"--- sidecar output ---\n{pod.output()}\n")
        raise
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
