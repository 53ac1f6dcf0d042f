"""A kubelet for the test pods: a rendered pod spec run with kubelet's semantics, never kinder.

What it follows (kubernetes pkg/kubelet/prober, pkg/kubelet/kuberuntime, client-go flowcontrol):

- probes (tests/support/kubeprobe.py) run by one worker per probe and container instance, every
  `periodSeconds` from the container's start; a tick earlier than `initialDelaySeconds` after the
  start does not probe; liveness and readiness wait for the startup probe, which stops once it
  passed; readiness runs at once when the container has started (the status manager triggers
  it); a liveness or startup failure puts the worker on hold until a new container;
- native sidecars (initContainers with restartPolicy: Always) start first, in order, each once
  the previous one has started and passed its startupProbe; then the app containers;
- killing a container (`kill_container`, killContainer): the grace period is the pod's
  terminationGracePeriodSeconds (30 when unset), or a failed liveness/startup probe's own
  `terminationGracePeriodSeconds`; preStop runs first (within the grace; the time it took is
  taken from the grace); when the pod is deleted, a sidecar then waits for its turn (the app
  containers and later sidecars gone); at least 2 s are left; SIGTERM; SIGKILL when the grace runs
  out;
- restarts (exit, failed liveness or startup probe): restartPolicy (a native sidecar always); the
  first restart is at once, later ones back off (CrashLoopBackOff: 10 s doubling to 300 s,
  counted from the exit; the back-off is forgotten once a container ran 10 minutes), and a
  container in back-off is retried at kubelet's pod sync retries (10-15 s apart), not sooner;
- pod deletion: every running container killed at once, with the termination ordering above;
- Secret and ConfigMap updates reach the volume after kubelet's sync period (60-90 s with its
  jitter; the Watch cache adds next to nothing), `volume_delay` seconds here;
- anything in the spec this emulation does not model (postStart, regular init containers, exec
  and grpc probes, unknown fields) is refused when the Kubelet is built, never ignored.

The containers themselves are behind the `Runtime` protocol (podman in tests/support/pod.py).
The pure parts (ProbeState, CrashLoopBackOff, TerminationOrdering, kill_grace) are unit-tested in
tests/test_kubelet_logic.py.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

from .kubeprobe import (
    READ_LIMIT,
    USER_AGENT,
    Probe,
    ProbeResult,
    ProbeState,
    is_loopback,
    probe_once,
)
from .secretvolume import SecretVolume

__all__ = [
    "READ_LIMIT",
    "USER_AGENT",
    "CrashLoopBackOff",
    "Kubelet",
    "Probe",
    "ProbeResult",
    "ProbeState",
    "Runtime",
    "TerminationOrdering",
    "check_modelled",
    "kill_grace",
    "probe_once",
    "secret_sync_delay",
]

Obj = dict[str, Any]
PROBES: Final = ("startupProbe", "livenessProbe", "readinessProbe")
DEFAULT_GRACE_SECONDS: Final = 30.0  # the API server's default terminationGracePeriodSeconds
MINIMUM_GRACE_SECONDS: Final = 2.0  # kuberuntime minimumGracePeriodInSeconds
BACKOFF_INITIAL_SECONDS: Final = 10.0  # kubelet backOffPeriod
BACKOFF_MAX_SECONDS: Final = 300.0  # kubecontainer.MaxContainerBackOff
SYNC_RETRY_SECONDS: Final = 10.0  # a pod sync that failed (back-off) is retried after this ...
SYNC_RETRY_JITTER: Final = 0.5  # ... plus up to half of it (pod_workers.go)
SYNC_PERIOD_SECONDS: Final = 60.0  # --sync-frequency: a pod's volumes are refreshed this often ...
SYNC_JITTER: Final = 0.5  # ... plus up to half of it (workerResyncIntervalJitterFactor)

# What of a pod spec is modelled; a key in neither set is refused (NotImplementedError).
POD_MODELLED: Final = frozenset(
    {"containers", "initContainers", "volumes", "securityContext", "restartPolicy",
     "terminationGracePeriodSeconds"}
)  # fmt: skip
# No effect on one pod on one node with no API server: scheduling, identity, API access.
POD_IRRELEVANT: Final = frozenset(
    {"affinity", "nodeSelector", "tolerations", "topologySpreadConstraints", "priorityClassName",
     "serviceAccountName", "automountServiceAccountToken", "imagePullSecrets", "schedulerName",
     "enableServiceLinks"}  # no Service exists here, so there are no service links to add
)  # fmt: skip
CONTAINER_MODELLED: Final = frozenset(
    {"name", "image", "command", "args", "env", "ports", "volumeMounts", "securityContext",
     "resources", "lifecycle", "restartPolicy", "workingDir", *PROBES}
)  # fmt: skip
CONTAINER_IRRELEVANT: Final = frozenset(
    {"imagePullPolicy", "terminationMessagePath", "terminationMessagePolicy"}  # images are local
)
POD_SECURITY_MODELLED: Final = frozenset(
    {"runAsUser", "runAsGroup", "runAsNonRoot", "fsGroup", "supplementalGroups",
     "seccompProfile", "fsGroupChangePolicy"}  # seccomp: podman's default is RuntimeDefault's
)  # fmt: skip
CONTAINER_SECURITY_MODELLED: Final = frozenset(
    {"runAsUser", "runAsGroup", "runAsNonRoot", "readOnlyRootFilesystem",
     "allowPrivilegeEscalation", "capabilities", "privileged", "seccompProfile"}
)  # fmt: skip
VOLUME_KINDS: Final = frozenset({"secret", "configMap", "emptyDir"})
HOOK_HANDLERS: Final = frozenset({"exec", "httpGet", "sleep"})


def check_modelled(spec: Obj) -> None:
    """Refuse, naming it, anything of the pod spec this kubelet would silently not do."""
    problems: list[str] = []

    def unknown(where: str, keys: Iterable[str], *allowed: frozenset[str]) -> None:
        extra = sorted(set(keys) - set().union(*allowed))
        if extra:
            problems.append(f"{where}: {', '.join(extra)}")

    unknown("pod spec", spec, POD_MODELLED, POD_IRRELEVANT)
    unknown("pod securityContext", spec.get("securityContext", {}), POD_SECURITY_MODELLED)
    for volume in spec.get("volumes", []):
        unknown(f"volume {volume['name']}", set(volume) - {"name"}, VOLUME_KINDS)
    containers = [*spec.get("initContainers", []), *spec["containers"]]
    for c in containers:
        where = f"container {c['name']}"
        unknown(where, c, CONTAINER_MODELLED, CONTAINER_IRRELEVANT)
        unknown(f"{where} securityContext", c.get("securityContext", {}),
                CONTAINER_SECURITY_MODELLED)  # fmt: skip
        if c.get("securityContext", {}).get("privileged"):
            problems.append(f"{where}: privileged")
        unknown(f"{where} lifecycle", c.get("lifecycle", {}), frozenset({"preStop"}))
        unknown(f"{where} preStop", c.get("lifecycle", {}).get("preStop", {}), HOOK_HANDLERS)
        unknown(f"{where} resources.limits", c.get("resources", {}).get("limits", {}),
                frozenset({"memory", "cpu"}))  # fmt: skip
        for variable in c.get("env", []):
            if "value" not in variable:
                problems.append(f"{where} env {variable['name']}: only literal values")
        for kind in PROBES:
            Probe.from_container(c, kind)  # raises on what it does not model
    for c in spec.get("initContainers", []):
        if c.get("restartPolicy") != "Always":
            problems.append(f"init container {c['name']}: only native sidecars are run")
    for c in spec["containers"]:
        if "restartPolicy" in c:
            problems.append(f"container {c['name']}: restartPolicy on an app container")
    if problems:
        raise NotImplementedError("not modelled by the test kubelet: " + "; ".join(problems))


def kill_grace(spec: Obj, container: Obj, reason: str) -> float:
    """killContainer's grace period: the pod's, or a failed probe's own (liveness, startup)."""
    grace = float(spec.get("terminationGracePeriodSeconds", DEFAULT_GRACE_SECONDS))
    if reason in ("livenessProbe", "startupProbe"):
        own = container.get(reason, {}).get("terminationGracePeriodSeconds")
        if own is not None:
            grace = float(own)
    return grace


def secret_sync_delay(rng: random.Random | None = None) -> float:
    """How long after a Secret changes kubelet writes it to the volume: at the pod's next sync."""
    return SYNC_PERIOD_SECONDS * (1 + SYNC_JITTER * (rng or random).random())


@dataclass
class CrashLoopBackOff:
    """client-go flowcontrol.Backoff as kubelet uses it for restarts (no jitter), for one
    container; times are the caller's clock."""

    initial: float = BACKOFF_INITIAL_SECONDS
    maximum: float = BACKOFF_MAX_SECONDS
    backoff: float | None = None  # None: no entry
    last_update: float = 0.0

    def _expired(self, finished_at: float) -> bool:
        # "consider stable if it's ok for twice the maxDuration"
        return finished_at - self.last_update > 2 * self.maximum

    def in_backoff(self, finished_at: float, now: float) -> bool:
        """IsInBackOffSince: the exit at `finished_at` is still within the back-off window."""
        if self.backoff is None or self._expired(finished_at):
            return False
        return now - finished_at < self.backoff

    def next(self, finished_at: float, now: float) -> None:
        """Next: called when the container is restarted."""
        if self.backoff is None or self._expired(finished_at):
            self.backoff = self.initial
        else:
            self.backoff = min(self.backoff * 2, self.maximum)
        self.last_update = now


class TerminationOrdering:
    """kuberuntime_termination_order.go: a native sidecar waits until every app container and
    every later sidecar has terminated (or its grace runs out) before it is stopped."""

    def __init__(self, spec: Obj, running: Iterable[str]) -> None:
        running = set(running)
        self.terminated: dict[str, asyncio.Event] = {}
        self.prereqs: dict[str, list[asyncio.Event]] = {}
        apps = []
        for c in spec["containers"]:
            event = self.terminated[c["name"]] = asyncio.Event()
            apps.append(event)
            if c["name"] not in running:
                event.set()
        later: str | None = None
        for c in reversed(spec.get("initContainers", [])):
            event = self.terminated[c["name"]] = asyncio.Event()
            if c["name"] not in running:
                event.set()
            if c.get("restartPolicy") == "Always":
                self.prereqs[c["name"]] = [*apps, *([self.terminated[later]] if later else [])]
                later = c["name"]

    async def wait_for_turn(self, name: str, grace: float) -> float:
        """Wait for the prerequisites, `grace` seconds at most; the seconds waited."""
        if grace <= 0:
            return 0.0
        started = time.monotonic()
        try:
            async with asyncio.timeout(grace):
                for event in self.prereqs.get(name, []):
                    await event.wait()
        except TimeoutError:
            pass
        return time.monotonic() - started

    def container_terminated(self, name: str) -> None:
        self.terminated[name].set()


class Runtime(Protocol):
    """What the kubelet needs of a container runtime; names are the pod spec's."""

    async def start(self, name: str) -> None: ...
    async def signal(self, name: str, signal: str) -> None: ...
    async def running(self, name: str) -> bool: ...
    async def exit_code(self, name: str) -> int | None: ...
    async def exec(self, name: str, command: list[str]) -> int: ...


Prober = Callable[[Probe, str], Awaitable[ProbeResult]]


@dataclass
class ContainerStatus:
    name: str
    native_sidecar: bool
    probes: dict[str, ProbeState]
    restarts: int = 0
    started: bool = False  # created and running (kubelet's State.Running)
    started_at: float = 0.0
    exit_codes: list[int] = field(default_factory=list)
    exited_at: float | None = None
    backoff: CrashLoopBackOff = field(default_factory=CrashLoopBackOff)

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
    """Runs one pod spec on `runtime`, probing its containers at `pod_ip`."""

    def __init__(
        self,
        spec: Obj,
        runtime: Runtime,
        pod_ip: str,
        *,
        volumes: Mapping[str, SecretVolume] | None = None,
        volume_delay: Callable[[], float] = secret_sync_delay,
        relist: float = 1.0,
        poll: float = 0.05,
        prober: Prober = probe_once,
        backoff: Callable[[], CrashLoopBackOff] = CrashLoopBackOff,
        sync_retry: Callable[[], float] | None = None,
    ) -> None:
        check_modelled(spec)
        if is_loopback(pod_ip):
            raise ValueError(f"{pod_ip}: kubelet dials the pod's IP, never loopback")
        self.spec = spec
        self.runtime = runtime
        self.pod_ip = pod_ip
        self.volumes = dict(volumes or {})
        self.volume_delay = volume_delay
        # Container state is read from the runtime every `relist` seconds (kubelet's PLEG
        # relists every second); in-memory conditions are polled every `poll` seconds.
        self.relist = relist
        self.poll = poll
        self.prober = prober
        self.sync_retry = sync_retry or (
            lambda: SYNC_RETRY_SECONDS * (1 + SYNC_RETRY_JITTER * random.random())
        )
        self.restart_policy = spec.get("restartPolicy", "Always")
        self.grace_seconds = float(spec.get("terminationGracePeriodSeconds", DEFAULT_GRACE_SECONDS))
        sidecars = [c for c in spec.get("initContainers", []) if c.get("restartPolicy") == "Always"]
        self.order: list[Obj] = [*sidecars, *spec["containers"]]
        self.containers = {c["name"]: c for c in self.order}
        self.status: dict[str, ContainerStatus] = {}
        for c in self.order:
            probes = {}
            for kind in PROBES:
                probe = Probe.from_container(c, kind)
                if probe is not None:
                    probes[kind] = ProbeState.initial(probe)
            self.status[c["name"]] = ContainerStatus(
                c["name"], c in sidecars, probes, backoff=backoff()
            )
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

    # ---- volumes ----------------------------------------------------------------------------

    async def update_volume(self, name: str, payload: Mapping[str, str]) -> float:
        """A changed Secret or ConfigMap: written to the volume at kubelet's next sync of the
        pod, `volume_delay()` seconds from now. Returns the delay once written."""
        delay = self.volume_delay()
        self.event(f"volume {name} changed (written in {delay:.1f}s)")
        await asyncio.sleep(delay)
        await asyncio.to_thread(self.volumes[name].write, dict(payload))
        self.event(f"volume {name} written")
        return delay

    # ---- running ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the containers in kubelet's order; return once all have started (never, while
        a native sidecar does not pass its startupProbe: `terminate` ends the wait)."""
        task = asyncio.current_task()
        assert task is not None
        self._tasks.append(task)
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
        security = self._security(name)
        if security.get("runAsNonRoot") and security.get("runAsUser") == 0:
            # kubelet refuses to create it (CreateContainerConfigError): so do we, loudly.
            raise RuntimeError(f"{name}: runAsNonRoot with runAsUser 0")
        await self.runtime.start(name)
        status.started, status.started_at = True, time.monotonic()
        self.event(f"started {name}")

    def _security(self, name: str) -> Obj:
        return {**self.spec.get("securityContext", {}),
                **self.containers[name].get("securityContext", {})}  # fmt: skip

    async def _supervise(self, name: str) -> None:
        """Probe one container; on exit or a failed liveness/startup probe, kill it and restart
        it (with kubelet's back-off) as the restart policy says."""
        status = self.status[name]
        while True:
            workers = [
                asyncio.create_task(self._probe_worker(name, kind)) for kind in status.probes
            ]
            try:
                reason = await self._until_restart_needed(name)
            finally:
                for worker in workers:
                    worker.cancel()
                await asyncio.gather(*workers, return_exceptions=True)
            if self._terminating:
                return
            if reason == "exited":
                code = await self.runtime.exit_code(name)
            else:
                code = await self.kill_container(name, reason)
            status.started = False
            finished_at = time.monotonic()
            if code is not None:
                status.exit_codes.append(code)
            self.event(f"{name} {reason} (exit {code})")
            if not status.native_sidecar and (
                self.restart_policy == "Never" or (self.restart_policy == "OnFailure" and code == 0)
            ):
                return
            while status.backoff.in_backoff(finished_at, time.monotonic()):
                self.event(f"back-off restarting {name}")
                await asyncio.sleep(self.sync_retry())
            status.backoff.next(finished_at, time.monotonic())
            status.restarts += 1
            await self._start_container(name)

    async def _until_restart_needed(self, name: str) -> str:
        status = self.status[name]
        while not self._terminating:
            if not await self.runtime.running(name):
                return "exited"
            for kind in ("livenessProbe", "startupProbe"):
                state = status.probes.get(kind)
                if state is not None and state.failed:
                    return kind
            await asyncio.sleep(self.relist)
        return "terminating"

    def _due(self, kind: str, state: ProbeState, now: float) -> bool:
        """worker.go doProbe's gates for one tick."""
        status = self.status[state.probe.container]
        if now - status.started_at < state.probe.initial_delay_seconds:
            return False  # "Probe disabled for InitialDelaySeconds", from the container's start
        if kind == "startupProbe":
            return not status.startup_passed
        return status.startup_passed

    async def _probe_worker(self, name: str, kind: str) -> None:
        """One probe's worker for this container instance: a tick every periodSeconds."""
        status = self.status[name]
        state = status.probes[kind]
        period = state.probe.period_seconds
        begun = status.started_at
        while True:
            if self._due(kind, state, time.monotonic()):
                state.record(await self.prober(state.probe, self.pod_ip))
                if state.failed and kind != "readinessProbe":
                    return  # on hold until a new container
                if kind == "startupProbe" and state.passing:
                    return  # startup never runs again once it passed
            elapsed = time.monotonic() - begun
            next_tick = begun + (int(elapsed / period) + 1) * period
            # prober_manager's UpdatePodStatus triggers a readiness probe at once when a
            # container has started and is not ready yet: do not wait for the tick then.
            trigger = kind == "readinessProbe" and not status.startup_passed
            while (now := time.monotonic()) < next_tick:
                if trigger and status.startup_passed:
                    break
                await asyncio.sleep(min(self.poll, next_tick - now) if trigger else next_tick - now)

    # ---- killing ----------------------------------------------------------------------------

    async def _run_hook(self, name: str, hook: Obj) -> None:
        if "sleep" in hook:
            await asyncio.sleep(float(hook["sleep"]["seconds"]))
        elif "exec" in hook:
            await self.runtime.exec(name, list(hook["exec"]["command"]))
        else:
            action = hook["httpGet"]
            container = self.containers[name]
            probe = Probe.from_container({**container, "hook": {"httpGet": action}}, "hook")
            assert probe is not None
            # A hook has no timeout of its own: the grace period bounds it.
            await self.prober(dataclasses.replace(probe, timeout_seconds=3600), self.pod_ip)

    async def kill_container(
        self,
        name: str,
        reason: str,
        *,
        ordering: TerminationOrdering | None = None,
        grace_override: float | None = None,
    ) -> int | None:
        """killContainer: preStop, the sidecar's turn, SIGTERM, SIGKILL when the grace is out."""
        container = self.containers[name]
        grace = kill_grace(self.spec, container, reason)
        if grace_override is not None:
            grace = grace_override
        pre_stop = container.get("lifecycle", {}).get("preStop")
        if pre_stop is not None and grace > 0:
            self.event(f"preStop {name}")
            began = time.monotonic()
            try:
                async with asyncio.timeout(grace):
                    await self._run_hook(name, pre_stop)
            except TimeoutError:
                self.event(f"preStop {name} cut at the grace period")
            grace -= int(time.monotonic() - began)  # kubelet counts whole seconds
        if ordering is not None and grace > 0:
            grace -= int(await ordering.wait_for_turn(name, grace))
        grace = max(grace, MINIMUM_GRACE_SECONDS)
        self.event(f"SIGTERM {name}")
        await self.runtime.signal(name, "TERM")
        if not await self._exits_within(name, grace):
            self.event(f"SIGKILL {name}")
            await self.runtime.signal(name, "KILL")
            await self._exits_within(name, float("inf"))
        code = await self.runtime.exit_code(name)
        self.event(f"exited {name} ({code})")
        if ordering is not None:
            ordering.container_terminated(name)
        return code

    async def _exits_within(self, name: str, seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        while await self.runtime.running(name):
            if time.monotonic() >= deadline:
                return False
            # Exits are timed to about this: fine next to a grace period of seconds.
            await asyncio.sleep(min(0.2, max(0.0, deadline - time.monotonic())))
        return True

    async def terminate(self) -> dict[str, int | None]:
        """Delete the pod: every running container killed at once, native sidecars in their
        turn; returns each container's exit code."""
        self._terminating = True
        tasks = [task for task in self._tasks if task is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        names = [c["name"] for c in self.order]
        running = [n for n in names if await self.runtime.running(n)]
        ordering = TerminationOrdering(self.spec, running)
        codes = await asyncio.gather(
            *(
                self.kill_container(
                    n, "deleted", ordering=ordering, grace_override=self.grace_seconds
                )
                for n in running
            )
        )
        found = dict(zip(running, codes, strict=True))
        return {n: found[n] if n in found else await self.runtime.exit_code(n) for n in names}
