"""kubelet's probes: read from a container spec, run once, thresholded.

Each rule follows kubelet's sources (kubernetes pkg/probe/http, pkg/kubelet/prober):

- the URL is `scheme://host:port/path`: `host` defaults to the pod's IP (never loopback: a
  container listening on 127.0.0.1 only fails every probe in a cluster), `scheme` to HTTP (HTTPS
  without verifying the certificate); `httpHeaders` are sent, a `Host` header is the request's
  host, and `User-Agent: kube-probe/<version>` and `Accept: */*` are added unless given;
- one fresh connection per request (keep-alives off), no proxy, no compression;
- redirects (301, 302, 303, 307, 308 with a Location) to the same host name are followed, at
  most 10 requests in all (Go's "stopped after 10 redirects" is a failure); a redirect to another
  host is not followed and its 3xx is judged (a success: kubelet's "Warning");
- the final answer's body is read to EOF or 10 KiB, all within `timeoutSeconds`; a status from 200
  to 399 is a success; a failure to connect or to get an answer in time is a failure;
- an error while reading the body (the timeout running out mid-body) is not a result: kubelet
  retries the probe up to 3 times, then throws the result away (worker.go: "Prober error,
  throw away the result"), so the thresholds neither advance nor reset.
"""

from __future__ import annotations

import asyncio
import ipaddress
import time
from dataclasses import dataclass, field
from typing import Any, Final

import aiohttp
from yarl import URL

__all__ = [
    "MAX_REQUESTS",
    "READ_LIMIT",
    "USER_AGENT",
    "Probe",
    "ProbeResult",
    "ProbeState",
    "probe_once",
]

Obj = dict[str, Any]
USER_AGENT: Final = "kube-probe/1.29"
READ_LIMIT: Final = 10 * 1024  # kubelet reads at most 10 KiB of a probe's answer
MAX_REQUESTS: Final = 10  # Go's client: "stopped after 10 redirects", the first request included
RETRIES: Final = 3  # prober.go maxProbeRetries: a probe that errors is run again, 3 times at most
REDIRECTS: Final = frozenset({301, 302, 303, 307, 308})  # what Go's client follows
HANDLERS: Final = ("httpGet", "tcpSocket", "exec", "grpc")
# Every field of a v1.Probe; anything else is a typo that kubelet would refuse at admission.
PROBE_FIELDS: Final = frozenset(
    {
        *HANDLERS,
        "initialDelaySeconds",
        "periodSeconds",
        "timeoutSeconds",
        "failureThreshold",
        "successThreshold",
        "terminationGracePeriodSeconds",
    }
)
HTTP_GET_FIELDS: Final = frozenset({"path", "port", "host", "scheme", "httpHeaders"})
TCP_SOCKET_FIELDS: Final = frozenset({"port", "host"})


def container_port(container: Obj, port: int | str) -> int:
    """A probe's port: a number, or the name of one of the container's ports."""
    if isinstance(port, int):
        return port
    ports = {p["name"]: p["containerPort"] for p in container.get("ports", []) if "name" in p}
    if port not in ports:
        raise ValueError(f"{container['name']}: no container port named {port!r}")
    return int(ports[port])


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
    host: str = ""  # empty: the pod's IP
    scheme: str = "HTTP"
    headers: tuple[tuple[str, str], ...] = ()
    # A liveness or startup probe's own grace period for the kill it causes (None: the pod's).
    termination_grace_period_seconds: float | None = None

    @classmethod
    def from_container(cls, container: Obj, kind: str) -> Probe | None:
        spec = container.get(kind)
        if spec is None:
            return None
        where = f"{container['name']}.{kind}"
        unknown = set(spec) - PROBE_FIELDS
        if unknown:
            raise NotImplementedError(f"{where}: unknown fields {sorted(unknown)}")
        handler = next(h for h in HANDLERS if h in spec)
        if handler not in ("httpGet", "tcpSocket"):
            raise NotImplementedError(f"{where}: {handler} probes are not emulated")
        action = spec[handler]
        allowed = HTTP_GET_FIELDS if handler == "httpGet" else TCP_SOCKET_FIELDS
        if set(action) - allowed:
            raise NotImplementedError(f"{where}.{handler}: unknown {sorted(set(action) - allowed)}")
        scheme = str(action.get("scheme", "HTTP")).upper()
        if scheme not in ("HTTP", "HTTPS"):
            raise ValueError(f"{where}: scheme {scheme!r}")
        return cls(
            kind=kind,
            container=container["name"],
            handler=handler,
            port=container_port(container, action["port"]),
            path=action.get("path", "/"),
            initial_delay_seconds=spec.get("initialDelaySeconds", 0),
            period_seconds=spec.get("periodSeconds", 10),
            timeout_seconds=spec.get("timeoutSeconds", 1),
            failure_threshold=spec.get("failureThreshold", 3),
            success_threshold=spec.get("successThreshold", 1),
            host=action.get("host", ""),
            scheme=scheme,
            headers=tuple((h["name"], h["value"]) for h in action.get("httpHeaders", [])),
            termination_grace_period_seconds=spec.get("terminationGracePeriodSeconds"),
        )


@dataclass(frozen=True)
class ProbeResult:
    at: float
    success: bool
    detail: str
    # An error kubelet throws away (after its retries): neither a success nor a failure.
    discarded: bool = False


@dataclass
class ProbeState:
    """The thresholded result of one probe: flips after `threshold` consecutive results."""

    probe: Probe
    passing: bool
    results: list[ProbeResult] = field(default_factory=list)
    transitions: list[tuple[float, bool]] = field(default_factory=list)
    failed: bool = False  # failureThreshold reached: a liveness/startup probe kills now
    _streak: int = 0
    _streak_success: bool = True

    @classmethod
    def initial(cls, probe: Probe) -> ProbeState:
        # kubelet's initial values: liveness success, readiness failure, startup unknown.
        return cls(probe, passing=probe.kind == "livenessProbe")

    def record(self, result: ProbeResult) -> bool:
        """Add a result; True when the thresholded value flipped."""
        self.results.append(result)
        if result.discarded:
            return False
        if result.success == self._streak_success:
            self._streak += 1
        else:
            self._streak_success, self._streak = result.success, 1
        threshold = self.probe.success_threshold if result.success else self.probe.failure_threshold
        if self._streak < threshold:
            return False
        self.failed = not result.success
        if self.failed and self.probe.kind != "readinessProbe":
            # worker.go: after a liveness/startup failure the count starts again (onHold).
            self._streak = 0
        if self.passing != result.success:
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
        self.failed = False
        self._streak, self._streak_success = 0, True

    def failures(self) -> list[ProbeResult]:
        return [r for r in self.results if not r.success and not r.discarded]


class _BodyError(Exception):
    """The answer's body could not be read in time: kubelet's prober error."""


def probe_url(probe: Probe, pod_ip: str) -> URL:
    """GetProbeUrl: scheme, host (the pod's IP unless set), port, and the path as given."""
    path = URL(probe.path)
    return URL.build(
        scheme=probe.scheme.lower(),
        host=probe.host or pod_ip,
        port=probe.port,
        path=path.path or "/",
        query_string=path.query_string,
    )


def request_headers(probe: Probe) -> dict[str, str]:
    """httpHeaders as given; User-Agent and Accept added unless given (an empty Accept removed)."""
    given = {name.title(): value for name, value in probe.headers}
    headers = {"User-Agent": USER_AGENT, "Accept": "*/*", **given}
    if headers["Accept"] == "":
        del headers["Accept"]
    return headers


async def _read_at_most(response: aiohttp.ClientResponse, limit: int) -> bytes:
    """ReadAtMost: to EOF or `limit` bytes, whichever comes first."""
    body = b""
    try:
        while len(body) < limit:
            chunk = await response.content.read(limit - len(body))
            if not chunk:
                break
            body += chunk
    except (aiohttp.ClientError, OSError) as error:
        raise _BodyError(type(error).__name__) from error
    return body


async def http_get(probe: Probe, pod_ip: str, stage: list[str]) -> tuple[int, str]:
    """The GET and its redirects; (final status, detail). Raises on a connection failure;
    appends "body" to `stage` once the final answer's headers are in."""
    first = probe_url(probe, pod_ip)
    headers = request_headers(probe)
    connector = aiohttp.TCPConnector(force_close=True, ssl=False)
    async with aiohttp.ClientSession(
        connector=connector,
        skip_auto_headers=("User-Agent", "Accept-Encoding"),
        auto_decompress=False,
        trust_env=False,
    ) as session:
        url = first
        for request in range(1, MAX_REQUESTS + 1):
            async with session.get(url, headers=headers, allow_redirects=False) as response:
                location = response.headers.get("Location")
                if response.status in REDIRECTS and location:
                    target = url.join(URL(location))
                    if target.host == first.host:
                        if request == MAX_REQUESTS:
                            return 0, "stopped after 10 redirects"
                        url = target
                        continue
                    # CheckRedirect's ErrUseLastResponse: this 3xx is the answer.
                stage.append("body")
                await _read_at_most(response, READ_LIMIT)
                return response.status, str(response.status)
    raise AssertionError("unreachable: the loop returns")  # pragma: no cover


async def _attempt(probe: Probe, pod_ip: str) -> ProbeResult:
    started = time.monotonic()
    host = probe.host or pod_ip
    stage: list[str] = []
    try:
        async with asyncio.timeout(probe.timeout_seconds):
            if probe.handler == "tcpSocket":
                _, writer = await asyncio.open_connection(host, probe.port)
                writer.close()
                return ProbeResult(started, True, "connected")
            status, detail = await http_get(probe, pod_ip, stage)
    except _BodyError as error:
        return ProbeResult(started, False, f"error reading the body: {error}", discarded=True)
    except TimeoutError:
        if stage:  # Go's client timeout while reading the body is an error, not a failure
            return ProbeResult(started, False, "error reading the body: timeout", discarded=True)
        return ProbeResult(started, False, "timeout")
    except (OSError, aiohttp.ClientError) as error:
        return ProbeResult(started, False, type(error).__name__)
    return ProbeResult(started, 200 <= status < 400, detail)


async def probe_once(probe: Probe, pod_ip: str) -> ProbeResult:
    """One probe as kubelet runs it (with its retries when the prober errors)."""
    result = await _attempt(probe, pod_ip)
    for _ in range(RETRIES - 1):
        if not result.discarded:
            break
        result = await _attempt(probe, pod_ip)
    return result


def is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return address == "localhost"
