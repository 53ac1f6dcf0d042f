"""The test kubelet against kubelet's own rules, one test per rule, without a container.

Probes are read from container specs and thresholded over made-up results; HTTP probes run
against a real aiohttp server on loopback; kills, restarts and termination run on a hand-written
runtime whose containers exit on SIGTERM (or ignore it); Secret volumes are projected into a
temporary directory. Each test names the kubelet source it follows.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import ssl as ssl_module
import stat
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from support import LOOPBACK
from support.image import Store
from support.kubelet import (
    CrashLoopBackOff,
    Kubelet,
    check_modelled,
    kill_grace,
    secret_sync_delay,
)
from support.kubeprobe import USER_AGENT, Probe, ProbeResult, ProbeState, probe_once
from support.pg import TlsFiles
from support.pod import PodmanRuntime, PodNetwork
from support.secretvolume import SecretVolume

Obj = dict[str, Any]
POD_IP = "10.244.0.7"  # never dialled: the prober is a fake wherever a Kubelet runs here

CONTAINER: Obj = {
    "name": "health-sidecar",
    "ports": [{"name": "sidecar", "containerPort": 8081}],
    "startupProbe": {"httpGet": {"path": "/health", "port": "sidecar"}, "failureThreshold": 30},
    "livenessProbe": {"tcpSocket": {"port": 8081}, "periodSeconds": 2},
    "readinessProbe": {
        "httpGet": {"path": "/ready", "port": 8081},
        "failureThreshold": 2,
        "successThreshold": 2,
    },
}


def results(state: ProbeState, outcomes: str) -> list[bool]:
    """Feed '+'/'-'/'?' (discarded) outcomes; the thresholded value after each."""
    seen = []
    for at, outcome in enumerate(outcomes):
        state.record(ProbeResult(float(at), outcome == "+", "", discarded=outcome == "?"))
        seen.append(state.passing)
    return seen


def probe(container: Obj, kind: str) -> Probe:
    found = Probe.from_container(container, kind)
    assert found is not None
    return found


# ---- probes read from the spec and thresholded (pkg/kubelet/prober/worker.go) --------------


def test_probe_reads_named_port_and_kubernetes_defaults() -> None:
    """A named port resolves to its containerPort; left-out fields take Kubernetes' defaults."""
    startup = probe(CONTAINER, "startupProbe")
    assert (startup.handler, startup.port, startup.path) == ("httpGet", 8081, "/health")
    assert (startup.period_seconds, startup.timeout_seconds) == (10, 1)
    assert (startup.failure_threshold, startup.success_threshold) == (30, 1)
    assert (startup.host, startup.scheme, startup.headers) == ("", "HTTP", ())
    assert startup.termination_grace_period_seconds is None
    liveness = probe(CONTAINER, "livenessProbe")
    assert (liveness.handler, liveness.path) == ("tcpSocket", "/")
    assert Probe.from_container({"name": "x"}, "readinessProbe") is None


@pytest.mark.parametrize(
    "spec",
    [
        {"exec": {"command": ["true"]}},
        {"grpc": {"port": 9000}},
        {"httpGet": {"port": 80}, "periodSecond": 5},
        {"httpGet": {"port": 80, "paht": "/ready"}},
        {"httpGet": {"port": 80, "scheme": "FTP"}},
    ],
    ids=["exec", "grpc", "typo-in-probe", "typo-in-httpGet", "bad-scheme"],
)
def test_probe_fields_it_does_not_run_are_refused(spec: Obj) -> None:
    """An exec or grpc probe, an unknown field or scheme: refused, never silently ignored."""
    with pytest.raises((NotImplementedError, ValueError)):
        Probe.from_container({"name": "x", "livenessProbe": spec}, "livenessProbe")


def test_readiness_starts_false_and_flips_only_on_consecutive_thresholds() -> None:
    """Readiness needs successThreshold successes in a row, failureThreshold failures in a row."""
    state = ProbeState.initial(probe(CONTAINER, "readinessProbe"))
    assert not state.passing
    assert results(state, "+-++-+--+") == [
        False,
        False,
        False,
        True,
        True,
        True,
        True,
        False,
        False,
    ]
    assert [value for _, value in state.transitions] == [True, False]


def test_liveness_starts_passing_and_reset_restores_initial_value() -> None:
    """Liveness starts true (kubelet's initial value); a restarted container starts afresh."""
    state = ProbeState.initial(probe(CONTAINER, "livenessProbe"))
    assert state.passing
    assert results(state, "--+---") == [True, True, True, True, True, False]
    assert state.failed
    state.reset()
    assert state.passing
    assert not state.failed
    assert results(state, "--") == [True, True]


def test_a_probe_error_neither_counts_nor_breaks_a_streak() -> None:
    """A discarded result (kubelet's prober error) is thrown away: streaks go on across it."""
    state = ProbeState.initial(probe(CONTAINER, "readinessProbe"))
    assert results(state, "+?+") == [False, False, True]
    assert results(state, "-??-") == [True, True, True, False]
    assert len(state.failures()) == 2


# ---- HTTP probes (pkg/probe/http) against a real server ---------------------------------------

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


Serve = Callable[..., Awaitable[int]]


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    """Start an aiohttp server on loopback with the given routes (over TLS with `ssl`); its
    port."""
    runners: list[web.AppRunner] = []

    async def start(routes: dict[str, Handler], ssl: ssl_module.SSLContext | None = None) -> int:
        app = web.Application()
        for path, handler in routes.items():
            app.router.add_get(path, handler)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, LOOPBACK, 0, ssl_context=ssl)
        await site.start()
        runners.append(runner)
        port: int = runner.addresses[0][1]
        return port

    yield start
    for runner in runners:
        await runner.cleanup()


def http_probe(port: int, path: str, **fields: Any) -> Probe:
    action = {"port": port, "path": path, **fields.pop("action", {})}
    spec = {"httpGet": action, "timeoutSeconds": fields.pop("timeout", 2), **fields}
    return probe({"name": "c", "readinessProbe": spec}, "readinessProbe")


def redirect_to(location: str) -> Handler:
    async def handler(request: web.Request) -> web.Response:
        raise web.HTTPFound(location)

    return handler


def answer(status: int, hits: list[str] | None = None) -> Handler:
    async def handler(request: web.Request) -> web.Response:
        if hits is not None:
            hits.append(request.path)
        return web.Response(status=status, text="ok")

    return handler


async def test_http_probe_follows_redirects_on_the_same_host_and_judges_the_last_answer(
    serve: Serve,
) -> None:
    """302 to a 404 on the same host fails; 302 to a 200 passes (the 3xx itself is not judged)."""
    port = await serve(
        {"/gone": redirect_to("/missing"), "/moved": redirect_to("/ok"), "/ok": answer(200)}
    )
    failed = await probe_once(http_probe(port, "/gone"), LOOPBACK)
    assert (failed.success, failed.detail) == (False, "404")
    passed = await probe_once(http_probe(port, "/moved"), LOOPBACK)
    assert (passed.success, passed.detail) == (True, "200")


async def test_http_probe_does_not_follow_a_redirect_to_another_host(
    serve: Serve,
) -> None:
    """A redirect to another host name ends the probe: its 3xx passes (kubelet's warning)."""
    hits: list[str] = []
    target = await serve({"/target": answer(500, hits)})
    port = await serve({"/away": redirect_to(f"http://localhost:{target}/target")})
    result = await probe_once(http_probe(port, "/away"), LOOPBACK)
    assert (result.success, result.detail) == (True, "302")
    assert hits == []


async def test_http_probe_stops_after_ten_requests(
    serve: Serve,
) -> None:
    """Nine redirects then 200 pass; ten redirects fail (Go's "stopped after 10 redirects")."""
    routes: dict[str, Handler] = {f"/{n}": redirect_to(f"/{n + 1}") for n in range(10)}
    routes["/10"] = answer(200)
    port = await serve(routes)
    assert (await probe_once(http_probe(port, "/1"), LOOPBACK)).success
    too_many = await probe_once(http_probe(port, "/0"), LOOPBACK)
    assert (too_many.success, too_many.detail) == (False, "stopped after 10 redirects")


async def test_http_probe_reads_the_body_to_its_end_within_the_timeout(
    serve: Serve,
) -> None:
    """A 200 whose body stalls past the timeout is not a success: an error, tried 3 times,
    thrown away; a body larger than 10 KiB is read up to the limit and passes."""
    calls: list[float] = []

    async def stalls(request: web.Request) -> web.StreamResponse:
        calls.append(time.monotonic())
        response = web.StreamResponse(status=200)
        response.content_length = 100
        await response.prepare(request)
        await response.write(b"x" * 10)
        await asyncio.sleep(2)
        return response

    async def large(request: web.Request) -> web.Response:
        return web.Response(body=b"y" * 100_000)

    port = await serve({"/stalls": stalls, "/large": large})
    result = await probe_once(http_probe(port, "/stalls", timeout=1), LOOPBACK)
    assert not result.success
    assert result.discarded, result
    assert len(calls) == 3
    assert (await probe_once(http_probe(port, "/large"), LOOPBACK)).success


async def test_http_probe_sends_the_specs_headers_and_kubelets_own(
    serve: Serve,
) -> None:
    """httpHeaders are sent, a Host header becomes the request's host, User-Agent and Accept
    default to kubelet's; the path's query string is kept."""
    seen: list[Obj] = []

    async def record(request: web.Request) -> web.Response:
        seen.append({**request.headers, "query": request.query_string})
        return web.Response(text="ok")

    port = await serve({"/h": record})
    headers = [{"name": "X-Probe", "value": "1"}, {"name": "Host", "value": "app.example"}]
    await probe_once(http_probe(port, "/h?deep=1", action={"httpHeaders": headers}), LOOPBACK)
    await probe_once(http_probe(port, "/h"), LOOPBACK)
    first, second = seen
    assert (first["X-Probe"], first["Host"], first["query"]) == ("1", "app.example", "deep=1")
    assert (second["User-Agent"], second["Accept"]) == (USER_AGENT, "*/*")
    assert second["Host"] == f"{LOOPBACK}:{port}"
    assert "Accept-Encoding" not in second


async def test_https_probe_skips_certificate_verification(
    serve: Serve, tls_files: TlsFiles
) -> None:
    """scheme: HTTPS speaks TLS and, like kubelet (InsecureSkipVerify), accepts a certificate
    no trusted CA signed; plain HTTP to that port fails."""
    context = ssl_module.create_default_context(ssl_module.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tls_files.server_cert, tls_files.server_key)
    port = await serve({"/ok": answer(200)}, context)
    secure = await probe_once(http_probe(port, "/ok", action={"scheme": "HTTPS"}), LOOPBACK)
    assert (secure.success, secure.detail) == (True, "200")
    assert not (await probe_once(http_probe(port, "/ok"), LOOPBACK)).success


def test_kubelet_dials_the_pod_ip_and_refuses_loopback() -> None:
    """The pod's IP is where kubelet probes; loopback would hide a container listening on
    127.0.0.1 only."""
    spec = {"containers": [{"name": "app"}]}
    for address in (LOOPBACK, "::1", "localhost"):
        with pytest.raises(ValueError, match="pod's IP"):
            Kubelet(spec, FakeRuntime(), address)
    assert Kubelet(spec, FakeRuntime(), POD_IP).pod_ip == POD_IP


# ---- the pod's lifecycle on a hand-written runtime -------------------------------------------


class FakeRuntime:
    """Containers that exit 0 `term_exit[name]` seconds after SIGTERM (None: never)."""

    def __init__(self, term_exit: dict[str, float | None] | None = None) -> None:
        self.term_exit = term_exit or {}
        self.alive: dict[str, bool] = {}
        self.codes: dict[str, int] = {}
        self.log: list[tuple[float, str]] = []
        self._exits: list[asyncio.Task[None]] = []

    def note(self, what: str) -> None:
        self.log.append((time.monotonic(), what))

    async def start(self, name: str) -> None:
        self.alive[name] = True
        self.note(f"start {name}")

    async def _exit_later(self, name: str, delay: float) -> None:
        await asyncio.sleep(delay)
        self.alive[name], self.codes[name] = False, 0

    async def signal(self, name: str, signal: str) -> None:
        self.note(f"{signal} {name}")
        if signal == "KILL":
            self.alive[name], self.codes[name] = False, 137
        elif (delay := self.term_exit.get(name, 0.0)) is not None:
            self._exits.append(asyncio.create_task(self._exit_later(name, delay)))

    async def running(self, name: str) -> bool:
        return self.alive.get(name, False)

    async def exit_code(self, name: str) -> int | None:
        return None if self.alive.get(name) else self.codes.get(name)

    async def exec(self, name: str, command: list[str]) -> int:
        self.note(f"exec {name} {' '.join(command)}")
        return 0


def when(log: list[tuple[float, str]], what: str) -> float:
    return next(at for at, seen in log if seen == what)


def always(success: bool) -> Callable[[Probe, str], Awaitable[ProbeResult]]:
    async def prober(probe: Probe, pod_ip: str) -> ProbeResult:
        assert pod_ip == POD_IP
        return ProbeResult(time.monotonic(), success, "fake")

    return prober


def test_initial_delay_counts_from_the_containers_start() -> None:
    """worker.go: a tick within initialDelaySeconds of the container's start does not probe;
    after it, the probe runs whenever startup has passed (not initialDelay after that)."""
    container = {
        "name": "app",
        "startupProbe": {"tcpSocket": {"port": 80}},
        "readinessProbe": {"tcpSocket": {"port": 80}, "initialDelaySeconds": 10},
    }
    kubelet = Kubelet({"containers": [container]}, FakeRuntime(), POD_IP)
    status = kubelet.status["app"]
    status.started, status.started_at = True, 100.0
    status.probes["startupProbe"].passing = True  # startup passed at 108, say
    readiness = status.probes["readinessProbe"]
    assert not kubelet._due("readinessProbe", readiness, 109.9)
    assert kubelet._due("readinessProbe", readiness, 110.0)
    startup = status.probes["startupProbe"]
    assert not kubelet._due("startupProbe", startup, 110.0)  # never again once it passed


def test_kill_grace_is_the_pods_or_a_failed_probes_own() -> None:
    """killContainer: terminationGracePeriodSeconds (30 when unset); a failed liveness or
    startup probe's own terminationGracePeriodSeconds wins for the kill it causes."""
    container = {"name": "app", "livenessProbe": {"terminationGracePeriodSeconds": 3}}
    assert kill_grace({}, container, "deleted") == 30
    spec = {"terminationGracePeriodSeconds": 45}
    assert kill_grace(spec, container, "livenessProbe") == 3
    assert kill_grace(spec, container, "startupProbe") == 45
    assert kill_grace(spec, container, "deleted") == 45


async def test_failed_liveness_runs_prestop_then_sigterm_and_sigkill_after_the_probes_grace() -> (
    None
):
    """A container ignoring SIGTERM: preStop first, then SIGTERM, then SIGKILL once the
    liveness probe's own grace (3 s, not the pod's 30) ran out; then it is restarted."""
    container = {
        "name": "app",
        "lifecycle": {"preStop": {"exec": {"command": ["drain"]}}},
        "livenessProbe": {
            "tcpSocket": {"port": 80},
            "periodSeconds": 1,
            "failureThreshold": 1,
            "terminationGracePeriodSeconds": 3,
        },
    }
    runtime = FakeRuntime({"app": None})
    kubelet = Kubelet(
        {"containers": [container]}, runtime, POD_IP, prober=always(False), relist=0.05
    )
    await kubelet.start()
    deadline = time.monotonic() + 30
    while kubelet.restarts()["app"] < 1:
        assert time.monotonic() < deadline, kubelet.events
        await asyncio.sleep(0.05)
    runtime.term_exit["app"] = 0.0  # the deletion need not wait out a grace period
    await kubelet.terminate()
    seen = [what for _, what in runtime.log]
    assert seen[:4] == ["start app", "exec app drain", "TERM app", "KILL app"]
    killed_after = when(runtime.log, "KILL app") - when(runtime.log, "TERM app")
    assert 3 <= killed_after < 30
    assert seen[4] == "start app"  # the first restart is at once
    assert kubelet.status["app"].exit_codes[0] == 137


async def test_a_startup_probe_that_never_passes_kills_and_restarts_the_container() -> None:
    """failureThreshold failed startup probes in a row: the container is killed (SIGTERM, it
    exits 0) and restarted, and its liveness and readiness probes never ran."""
    container = {
        "name": "app",
        "startupProbe": {"tcpSocket": {"port": 80}, "periodSeconds": 1, "failureThreshold": 2},
        "livenessProbe": {"tcpSocket": {"port": 80}},
        "readinessProbe": {"tcpSocket": {"port": 80}},
    }
    probed: list[str] = []

    async def prober(probe: Probe, pod_ip: str) -> ProbeResult:
        probed.append(probe.kind)
        return ProbeResult(time.monotonic(), False, "refused")

    runtime = FakeRuntime()
    kubelet = Kubelet({"containers": [container]}, runtime, POD_IP, prober=prober, relist=0.05)
    starting = asyncio.create_task(kubelet.start())
    deadline = time.monotonic() + 30
    while kubelet.restarts()["app"] < 1:
        assert time.monotonic() < deadline, kubelet.events
        await asyncio.sleep(0.05)
    await kubelet.terminate()
    assert starting.done()
    assert [what for _, what in runtime.log][:3] == ["start app", "TERM app", "start app"]
    assert kubelet.status["app"].exit_codes == [0]
    assert set(probed) == {"startupProbe"}
    assert probed.count("startupProbe") >= 2


def test_crash_loop_backoff_doubles_from_10s_to_300s_and_resets_after_10_minutes() -> None:
    """flowcontrol.Backoff as kubelet uses it: the first restart at once, then 10, 20, 40 ...
    300 s after each exit; a container that ran more than 10 minutes starts over."""
    backoff = CrashLoopBackOff()
    now, waits = 0.0, []
    for _ in range(8):
        finished = now + 1  # each run lasts a second
        wait = 0.0
        while backoff.in_backoff(finished, finished + wait):
            wait += 1
        waits.append(wait)
        now = finished + wait
        backoff.next(finished, now)
    assert waits == [0, 10, 20, 40, 80, 160, 300, 300]
    long_run = now + 601
    assert not backoff.in_backoff(long_run, long_run)
    backoff.next(long_run, long_run)
    assert backoff.backoff == 10


async def test_a_restart_in_backoff_waits_for_a_sync_retry() -> None:
    """A container that exits again within its back-off is not restarted before the back-off
    is over, and then only at a pod sync retry."""
    container = {"name": "app"}
    runtime = FakeRuntime()
    retries: list[float] = []

    def retry() -> float:
        retries.append(time.monotonic())
        return 0.3

    kubelet = Kubelet(
        {"containers": [container]},
        runtime,
        POD_IP,
        relist=0.05,
        backoff=lambda: CrashLoopBackOff(initial=1.0, maximum=4.0),
        sync_retry=retry,
    )
    await kubelet.start()
    for restarts in (1, 2):
        runtime.alive["app"], runtime.codes["app"] = False, 1
        exited = time.monotonic()
        deadline = exited + 30
        while kubelet.restarts()["app"] < restarts:
            assert time.monotonic() < deadline, kubelet.events
            await asyncio.sleep(0.02)
        waited = time.monotonic() - exited
    await kubelet.terminate()
    assert len(retries) >= 3  # the second exit waited 1 s in 0.3 s sync retries
    assert waited >= 1.0


async def test_a_sidecars_prestop_runs_at_once_and_its_sigterm_after_the_app_exits() -> None:
    """Pod deletion: every container's preStop starts at once; a native sidecar gets SIGTERM
    only after the app container has exited."""
    spec = {
        "terminationGracePeriodSeconds": 20,
        "initContainers": [
            {
                "name": "sidecar",
                "restartPolicy": "Always",
                "lifecycle": {"preStop": {"exec": {"command": ["stop-accepting"]}}},
            }
        ],
        "containers": [{"name": "app"}],
    }
    runtime = FakeRuntime({"app": 1.0, "sidecar": 0.0})
    kubelet = Kubelet(spec, runtime, POD_IP, relist=0.05)
    await kubelet.start()
    codes = await kubelet.terminate()
    assert codes == {"sidecar": 0, "app": 0}
    app_exit = when(kubelet.events, "exited app (0)")
    assert when(runtime.log, "exec sidecar stop-accepting") < app_exit
    assert when(runtime.log, "TERM app") < app_exit < when(runtime.log, "TERM sidecar")
    assert not any(what.startswith("KILL") for _, what in runtime.log)


async def test_each_container_gets_its_remaining_grace_with_a_two_second_minimum() -> None:
    """Grace 3 s, an app and a sidecar that both ignore SIGTERM: the app is killed at 3 s; the
    sidecar, whose grace was spent waiting, still gets 2 s between SIGTERM and SIGKILL."""
    spec = {
        "terminationGracePeriodSeconds": 3,
        "initContainers": [{"name": "sidecar", "restartPolicy": "Always"}],
        "containers": [{"name": "app"}],
    }
    runtime = FakeRuntime({"app": None, "sidecar": None})
    kubelet = Kubelet(spec, runtime, POD_IP, relist=0.05)
    await kubelet.start()
    codes = await kubelet.terminate()
    assert codes == {"sidecar": 137, "app": 137}
    log = runtime.log
    assert when(log, "KILL app") - when(log, "TERM app") >= 3 - 0.05
    assert when(log, "TERM sidecar") - when(log, "TERM app") >= 3 - 0.05  # its turn, or the grace
    assert when(log, "KILL sidecar") - when(log, "TERM sidecar") >= 2 - 0.05


# ---- volumes (pkg/volume/util/atomic_writer.go, pkg/volume/volume_linux.go) ----------------


async def test_a_secret_update_reaches_the_volume_after_the_sync_delay(tmp_path: Path) -> None:
    """The volume keeps the old content until kubelet's next sync (60-90 s by default)."""
    volume = SecretVolume(tmp_path / "secret")
    volume.write({"url": "old"})
    spec = {"containers": [{"name": "app"}]}
    kubelet = Kubelet(spec, FakeRuntime(), POD_IP, volumes={"db": volume}, volume_delay=lambda: 0.5)
    update = asyncio.create_task(kubelet.update_volume("db", {"url": "new"}))
    await asyncio.sleep(0.1)
    assert volume.path("url").read_text() == "old"
    assert await update == 0.5
    assert volume.path("url").read_text() == "new"
    delays = [secret_sync_delay() for _ in range(200)]
    assert all(60 <= delay <= 90 for delay in delays)
    assert max(delays) - min(delays) > 10  # jittered, not one fixed value


def test_with_fs_group_files_get_group_read_and_directories_setgid(tmp_path: Path) -> None:
    """SetVolumeOwnership: group fsGroup everywhere, a file's mode ORed with 0440 (0400 becomes
    0440), directories setgid; the symlinks' targets keep their mode."""
    volume = SecretVolume(tmp_path / "secret", mode=0o400, fs_group=4242)
    volume.write({"url": "postgresql://x"})
    data = volume.root / "..data"
    target = volume.path("url").resolve()
    assert stat.S_IMODE(target.stat().st_mode) == 0o440
    assert target.stat().st_gid == 4242
    assert stat.S_IMODE(data.resolve().stat().st_mode) == 0o2755
    assert stat.S_IMODE(volume.root.stat().st_mode) == 0o3777
    for path in (volume.root, data, volume.path("url"), data.resolve()):
        assert path.lstat().st_gid == 4242, path
    assert target.stat().st_uid == 0


def test_permissions_are_set_before_the_data_link_points_at_them(tmp_path: Path) -> None:
    """AtomicWriter calls setPerms on the new directory before renaming `..data` onto it, so a
    reader never sees the new file with the wrong group or mode."""
    seen: list[tuple[str, int, int]] = []

    class Recording(SecretVolume):
        def set_permissions(self, new_dir: str) -> None:
            super().set_permissions(new_dir)
            current = os.readlink(self.root / "..data") if (self.root / "..data").exists() else ""
            file = (self.root / new_dir / "url").stat()
            seen.append((current, stat.S_IMODE(file.st_mode), file.st_gid))

    volume = Recording(tmp_path / "secret", mode=0o400, fs_group=4242)
    volume.write({"url": "one"})
    first = os.readlink(volume.root / "..data")
    volume.write({"url": "two"})
    assert seen == [("", 0o440, 4242), (first, 0o440, 4242)]


def test_without_fs_group_files_are_root_owned_with_the_mode_as_given(tmp_path: Path) -> None:
    """No fsGroup: nothing is chowned or chmodded: root:root and exactly defaultMode."""
    volume = SecretVolume(tmp_path / "secret", mode=0o400)
    volume.write({"url": "postgresql://x"})
    target = volume.path("url").resolve()
    assert stat.S_IMODE(target.stat().st_mode) == 0o400
    assert (target.stat().st_uid, target.stat().st_gid) == (0, 0)
    assert stat.S_IMODE(volume.root.stat().st_mode) == 0o1777


def podman_runtime(tmp_path: Path, spec: Obj, volumes: dict[str, SecretVolume]) -> PodmanRuntime:
    net = PodNetwork("10.200", "pod-ns", "db-ns", "", "", "", "", ())
    images = {c["name"]: "img" for c in spec["containers"]}
    return PodmanRuntime(Store(tmp_path / "store"), spec, net, images=images, volumes=volumes)


def test_secret_volumes_are_mounted_read_only_and_the_whole_command_runs(tmp_path: Path) -> None:
    """makeMounts: a Secret or ConfigMap volume is read-only whatever the volumeMount says; the
    container's whole `command` replaces the entrypoint, `args` follow the image."""
    container = {
        "name": "app",
        "command": ["python3", "-c", "print(1)"],
        "args": ["--flag"],
        "volumeMounts": [{"name": "db", "mountPath": "/db"}, {"name": "tmp", "mountPath": "/t"}],
    }
    spec = {
        "containers": [container],
        "volumes": [{"name": "db", "secret": {"secretName": "s"}}, {"name": "tmp", "emptyDir": {}}],
    }
    volume = SecretVolume(tmp_path / "db")
    runtime = podman_runtime(tmp_path, spec, {"db": volume})
    try:
        args = runtime.run_args("app")
    finally:
        shutil.rmtree(runtime.scratch)
    mounts = [args[i + 1] for i, arg in enumerate(args) if arg == "--volume"]
    assert mounts[0] == f"{volume.root}:/db:ro"
    assert mounts[1].endswith(":/t")
    entrypoint = args[args.index("--entrypoint") + 1]
    assert json.loads(entrypoint) == ["python3", "-c", "print(1)"]
    assert args[-2:] == ["img", "--flag"]


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"lifecycle": {"postStart": {"exec": {"command": ["x"]}}}}, "postStart"),
        ({"envFrom": [{"secretRef": {"name": "s"}}]}, "envFrom"),
        ({"env": [{"name": "A", "valueFrom": {"fieldRef": {"fieldPath": "x"}}}]}, "env A"),
        ({"securityContext": {"privileged": True}}, "privileged"),
        ({"lifecycle": {"preStop": {"tcpSocket": {"port": 1}}}}, "tcpSocket"),
    ],
    ids=["postStart", "envFrom", "env-valueFrom", "privileged", "preStop-tcpSocket"],
)
def test_what_the_emulation_does_not_model_is_refused(change: Obj, named: str) -> None:
    """A field that would change what a real kubelet does, and is not modelled, is refused
    with its name."""
    spec = {"containers": [{"name": "app", **change}]}
    with pytest.raises(NotImplementedError, match=named):
        check_modelled(spec)


def test_regular_init_containers_and_other_volumes_are_refused() -> None:
    """A run-to-completion init container and a hostPath volume are refused; the modelled
    spec passes."""
    init = {"initContainers": [{"name": "migrate"}], "containers": [{"name": "app"}]}
    with pytest.raises(NotImplementedError, match="migrate"):
        check_modelled(init)
    host = {"containers": [{"name": "app"}], "volumes": [{"name": "h", "hostPath": {"path": "/"}}]}
    with pytest.raises(NotImplementedError, match="hostPath"):
        check_modelled(host)
    check_modelled({"containers": [CONTAINER], "terminationGracePeriodSeconds": 5})
