"""A kubelet for the test pods: the rendered probes applied with kubelet's semantics.

What it follows (kubernetes pkg/kubelet/prober and kuberuntime):

- a probe is read from the container spec: handler (httpGet, tcpSocket), port (a number or a
  named containerPort), path, initialDelaySeconds, periodSeconds, timeoutSeconds,
  failureThreshold, successThreshold, with Kubernetes' defaults for fields left out;
- a probe that times out is a failure; an HTTP status from 200 to 399 is a success;
- thresholds count consecutive results; readiness starts false, liveness starts true, startup
  starts false and never runs again once it passed;
- liveness and readiness run only after startup passed;
- native sidecars (initContainers with restartPolicy: Always) start first, in order, each
  once the previous one has started and passed its startupProbe; then the app containers;
- a failed liveness or startup probe, or an exit, restarts the container (restartPolicy: a
  native sidecar always; an app container per the pod's restartPolicy, Always by default);
- termination: SIGTERM to the app containers first; once they have exited, SIGTERM to the
  native sidecars in reverse order; SIGKILL to anything left at terminationGracePeriodSeconds.

The containers themselves are behind the `Runtime` protocol (podman in tests/support/pod.py).
The threshold logic (`ProbeState`) is pure and unit-tested with made-up results.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

__all__ = ["Kubelet", "Probe", "ProbeResult", "ProbeState", "Runtime", "probe_once"]

Obj = dict[str, Any]
USER_AGENT: Final = "kube-probe/1.29"
READ_LIMIT: Final = 10 * 1024  # kubelet reads at most 10 KiB of a probe's answer


@dataclass(frozen=True)
class Probe:
    """One probe of a rendered container, its port resolved to a number."""

    kind: str  # startupProbe, livenessProbe, readinessProbe
    container: str
    handler: str  # httpGet, tcpSocket
    port: int
    path: str
    initial_delay_seconds: float
    period_seconds: float
    timeout_seconds: float
    failure_threshold: int
    success_threshold: int

    @classmethod
    def from_container(cls, container: Obj, kind: str) -> Probe | None:
        spec = container.get(kind)
        if spec is None:
            return None
        ports = {p["name"]: p["containerPort"] for p in container.get("ports", []) if "name" in p}
        handler = next(h for h in ("httpGet", "tcpSocket", "exec", "grpc") if h in spec)
        if handler not in ("httpGet", "tcpSocket"):
            raise NotImplementedError(f"{container['name']}.{kind}: {handler} probes")
        action = spec[handler]
        port = action["port"] if isinstance(action["port"], int) else ports[action["port"]]
        return cls(
            kind=kind,
            container=container["name"],
            handler=handler,
            port=int(port),
            path=action.get("path", "/"),
            initial_delay_seconds=spec.get("initialDelaySeconds", 0),
            period_seconds=spec.get("periodSeconds", 10),
            timeout_seconds=spec.get("timeoutSeconds", 1),
            failure_threshold=spec.get("failureThreshold", 3),
            success_threshold=spec.get("successThreshold", 1),
        )


@dataclass(frozen=True)
class ProbeResult:
    at: float
    success: bool
    detail: str


@dataclass
class ProbeState:
    """The thresholded result of one probe: flips after `threshold` consecutive results."""

    probe: Probe
    passing: bool
    results: list[ProbeResult] = field(default_factory=list)
    transitions: list[tuple[float, bool]] = field(default_factory=list)
    _streak: int = 0
    _streak_success: bool = True

    @classmethod
    def initial(cls, probe: Probe) -> ProbeState:
        # kubelet's initial values: liveness success, readiness and startup not yet.
        return cls(probe, passing=probe.kind == "livenessProbe")

    def record(self, result: ProbeResult) -> bool:
        """Add a result; True when the thresholded value flipped."""
        self.results.append(result)
        if result.success == self._streak_success:
            self._streak += 1
        else:
            self._streak_success, self._streak = result.success, 1
        threshold = self.probe.success_threshold if result.success else self.probe.failure_threshold
        if self._streak >= threshold and self.passing != result.success:
            self.passing = result.success
            self.transitions.append((result.at, result.success))
            return True
        return False

    @property
    def failure_streak(self) -> int:
        """Consecutive failures up to now (0 after a success or a reset)."""
        return 0 if self._streak_success else self._streak

    def reset(self) -> None:
        """A restarted container starts with fresh probe state."""
        self.passing = self.probe.kind == "livenessProbe"
        self._streak, self._streak_success = 0, True

    def failures(self) -> list[ProbeResult]:
        return [r for r in self.results if not r.success]


async def probe_once(probe: Probe, host: str) -> ProbeResult:
    """One probe as kubelet runs it: a fresh connection, `timeoutSeconds` for all of it."""
    started = time.monotonic()
    try:
        async with asyncio.timeout(probe.timeout_seconds):
            reader, writer = await asyncio.open_connection(host, probe.port)
            try:
                if probe.handler == "tcpSocket":
                    return ProbeResult(started, True, "connected")
                writer.write(
                    f"GET {probe.path} HTTP/1.1\r\nHost: {host}:{probe.port}\r\n"
                    f"User-Agent: {USER_AGENT}\r\nAccept: */*\r\nConnection: close\r\n\r\n".encode()
                )
                await writer.drain()
                status_line = await reader.readline()
                await reader.read(READ_LIMIT)
            finally:
                writer.close()
    except TimeoutError:
        return ProbeResult(started, False, "timeout")
    except OSError as error:
        return ProbeResult(started, False, type(error).__name__)
    parts = status_line.split()
    status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
    return ProbeResult(started, 200 <= status < 400, str(status))


class Runtime(Protocol):
    """What the kubelet needs of a container runtime; names are the pod spec's."""

    async def start(self, name: str) -> None: ...
    async def signal(self, name: str, signal: str) -> None: ...
    async def running(self, name: str) -> bool: ...
    async def exit_code(self, name: str) -> int | None: ...


@dataclass
class ContainerStatus:
    name: str
    native_sidecar: bool
    probes: dict[str, ProbeState]
    restarts: int = 0
    started: bool = False
    exit_codes: list[int] = field(default_factory=list)
    exited_at: float | None = None

    @property
    def startup_passed(self) -> bool:
        state = self.probes.get("startupProbe")
        return self.started and (state is None or state.passing)

    @property
    def ready(self) -> bool:
        state = self.probes.get("readinessProbe")
        # A container without readinessProbe is ready once it has started (and passed startup).
        return self.startup_passed and (state is None or state.passing)


class Kubelet:
    """Runs one pod spec on `runtime`, probing containers at `host` (the pod's address)."""

    def __init__(
        self, spec: Obj, runtime: Runtime, host: str, *, relist: float = 1.0, poll: float = 0.05
    ) -> None:
        self.spec = spec
        self.runtime = runtime
        self.host = host
        # Container state is read from the runtime every `relist` seconds (kubelet's PLEG
        # relists every second); in-memory conditions are polled every `poll` seconds.
        self.relist = relist
        self.poll = poll
        self.restart_policy = spec.get("restartPolicy", "Always")
        self.grace_seconds = float(spec.get("terminationGracePeriodSeconds", 30))
        sidecars = [c for c in spec.get("initContainers", []) if c.get("restartPolicy") == "Always"]
        self.order: list[Obj] = [*sidecars, *spec["containers"]]
        self.status: dict[str, ContainerStatus] = {}
        for c in self.order:
            probes = {}
            for kind in ("startupProbe", "livenessProbe", "readinessProbe"):
                probe = Probe.from_container(c, kind)
                if probe is not None:
                    probes[kind] = ProbeState.initial(probe)
            self.status[c["name"]] = ContainerStatus(c["name"], c in sidecars, probes)
        self.events: list[tuple[float, str]] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._terminating = False

    # ---- what the tests read ----------------------------------------------------------------

    @property
    def ready(self) -> bool:
        """The pod's Ready condition: every container ready."""
        return all(s.ready for s in self.status.values())

    def restarts(self) -> dict[str, int]:
        return {name: s.restarts for name, s in self.status.items()}

    def event(self, what: str) -> None:
        self.events.append((time.monotonic(), what))

    def probe(self, container: str, kind: str) -> ProbeState:
        return self.status[container].probes[kind]

    # ---- running ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the containers in kubelet's order; return once all have started."""
        for c in self.order:
            name = c["name"]
            await self._start_container(name)
            self._tasks.append(asyncio.create_task(self._supervise(name)))
            if self.status[name].native_sidecar:
                await self._wait(lambda n=name: self.status[n].startup_passed)  # type: ignore[misc]

    async def _wait(self, condition: Callable[[], bool]) -> None:
        # Conditions are probe results and runtime state, polled: no event is there to wait on.
        while not condition():  # noqa: ASYNC110
            await asyncio.sleep(self.poll)

    async def _start_container(self, name: str) -> None:
        status = self.status[name]
        for state in status.probes.values():
            state.reset()
        await self.runtime.start(name)
        status.started = True
        self.event(f"started {name}")

    async def _supervise(self, name: str) -> None:
        """Probe one container; restart it on exit or a failed liveness/startup probe."""
        status = self.status[name]
        while True:
            workers = [asyncio.create_task(self._probe_loop(name, kind)) for kind in status.probes]
            try:
                reason = await self._until_restart_needed(name)
            finally:
                for worker in workers:
                    worker.cancel()
                await asyncio.gather(*workers, return_exceptions=True)
            if self._terminating:
                return
            code = await self.runtime.exit_code(name)
            if reason != "exited":
                await self.runtime.signal(name, "KILL")
                code = await self.runtime.exit_code(name)
            if code is not None:
                status.exit_codes.append(code)
            self.event(f"{name} {reason} (exit {code})")
            if not status.native_sidecar and (
                self.restart_policy == "Never" or (self.restart_policy == "OnFailure" and code == 0)
            ):
                return
            status.restarts += 1
            status.started = False
            await self._start_container(name)

    async def _until_restart_needed(self, name: str) -> str:
        status = self.status[name]
        while not self._terminating:
            if not await self.runtime.running(name):
                return "exited"
            liveness = status.probes.get("livenessProbe")
            if liveness is not None and not liveness.passing:
                return "liveness failed"
            startup = status.probes.get("startupProbe")
            if (
                startup is not None
                and not startup.passing
                and startup.failure_streak >= startup.probe.failure_threshold
            ):
                return "startup failed"
            await asyncio.sleep(self.relist)
        return "terminating"

    async def _probe_loop(self, name: str, kind: str) -> None:
        status = self.status[name]
        state = status.probes[kind]
        probe = state.probe
        if kind != "startupProbe":
            await self._wait(lambda: status.startup_passed)
        await asyncio.sleep(probe.initial_delay_seconds)
        while True:
            if kind == "startupProbe" and state.passing:
                return  # startup never runs again once it passed
            started = time.monotonic()
            state.record(await probe_once(probe, self.host))
            await asyncio.sleep(max(0.0, probe.period_seconds - (time.monotonic() - started)))

    async def terminate(self) -> dict[str, int | None]:
        """Delete the pod: app containers SIGTERM first, then native sidecars in reverse order;
        SIGKILL at the grace period. Returns each container's exit code."""
        self._terminating = True
        deadline = time.monotonic() + self.grace_seconds
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        apps = [c["name"] for c in self.order if not self.status[c["name"]].native_sidecar]
        sidecars = [c["name"] for c in self.order if self.status[c["name"]].native_sidecar]
        codes: dict[str, int | None] = {}
        for group in (apps, *([s] for s in reversed(sidecars))):
            for name in group:
                self.event(f"SIGTERM {name}")
                await self.runtime.signal(name, "TERM")
            await self._exited(group, deadline)
            for name in group:
                codes[name] = await self.runtime.exit_code(name)
                self.event(f"exited {name} ({codes[name]})")
        return codes

    async def _exited(self, names: Sequence[str], deadline: float) -> None:
        while True:
            alive = [n for n in names if await self.runtime.running(n)]
            if not alive:
                return
            if time.monotonic() >= deadline:
                for name in alive:
                    self.event(f"SIGKILL {name}")
                    await self.runtime.signal(name, "KILL")
                deadline = float("inf")
            # Exits are timed to about this: fine next to a grace period of seconds.
            await asyncio.sleep(0.2)
