"""Every metric, built against an injected registry (never the global one).

Counters and the histogram are updated by the prober once per check. Gauges that depend on
time (ready, check loop healthy) are computed at scrape time from the same verdicts the
handlers use, so /metrics and /ready never disagree.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Final

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from sidecar import __version__
from sidecar.checks import CredentialsStatus
from sidecar.credentials import OUTCOMES
from sidecar.health import liveness, readiness, startup
from sidecar.state import ALL_REASONS, Board, CheckResult, CheckState, Transition

# A database ping on loopback takes ~0.2 ms, across a zone a few ms; timeouts go to 10 s.
DURATION_BUCKETS: Final = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
HANDLERS: Final = ("health", "ready", "startup", "metrics", "other")


class RequestCounts:
    """HTTP requests by handler and status: a plain dict bump on the request path.

    Cheaper than a labelled prometheus Counter (no lock, no child lookup); exposed as a
    counter family at scrape time.
    """

    __slots__ = ("counts",)

    def __init__(self) -> None:
        self.counts: dict[tuple[str, int], int] = {}

    def hit(self, handler: str, status: int) -> None:
        key = (handler, status)
        self.counts[key] = self.counts.get(key, 0) + 1


class Metrics:
    """The prober's observer, plus the scrape-time collector for state gauges."""

    def __init__(
        self,
        registry: CollectorRegistry,
        board: Board,
        *,
        check_names: Iterable[str],
        monotonic: Callable[[], float],
        requests: RequestCounts,
        credentials: Mapping[str, CredentialsStatus] | None = None,
    ) -> None:
        names = tuple(check_names)
        self.duration = Histogram(
            "health_sidecar_check_duration_seconds",
            "Time one check took, connect and query together, in seconds.",
            ["check"],
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self.checks = Counter(
            "health_sidecar_check_total",
            "Checks run, by outcome (pass or fail).",
            ["check", "outcome"],
            registry=registry,
        )
        self.failures = Counter(
            "health_sidecar_check_failures_total",
            "Failed checks by reason (timeout, connection_refused, auth_failed, ...).",
            ["check", "reason"],
            registry=registry,
        )
        self.transitions = Counter(
            "health_sidecar_check_transitions_total",
            "Changes of a check's state, by the state entered (passing or failing).",
            ["check", "to"],
            registry=registry,
        )
        # Every series exists from the first scrape, so rate() and absent() behave.
        for name in names:
            self.duration.labels(name)
            for outcome in ("pass", "fail"):
                self.checks.labels(name, outcome)
            for reason in ALL_REASONS:
                self.failures.labels(name, reason)
            for to in ("passing", "failing"):
                self.transitions.labels(name, to)
        registry.register(
            StateCollector(
                board,
                monotonic=monotonic,
                requests=requests,
                credentials=credentials or {},
            )
        )

    def observe(
        self, result: CheckResult, state: CheckState, transition: Transition | None
    ) -> None:
        name = state.name
        self.duration.labels(name).observe(result.latency_seconds)
        self.checks.labels(name, "pass" if result.ok else "fail").inc()
        if result.reason is not None:
            self.failures.labels(name, result.reason.value).inc()
        if transition is not None:
            self.transitions.labels(name, transition.current).inc()


class StateCollector(Collector):
    """Gauges read from the current snapshot at scrape time."""

    def __init__(
        self,
        board: Board,
        *,
        monotonic: Callable[[], float],
        requests: RequestCounts,
        credentials: Mapping[str, CredentialsStatus],
    ) -> None:
        self._board = board
        self._monotonic = monotonic
        self._requests = requests
        self._credentials = credentials

    def collect(self) -> Iterator[Metric]:
        board = self._board
        now = self._monotonic()
        up = GaugeMetricFamily(
            "health_sidecar_check_up",
            "1 if the latest check passed, 0 if it failed or none has finished yet.",
            labels=["check"],
        )
        last_success = GaugeMetricFamily(
            "health_sidecar_check_last_success_timestamp_seconds",
            "Unix time of the latest passing check; 0 if none has passed yet.",
            labels=["check"],
        )
        failures = GaugeMetricFamily(
            "health_sidecar_check_consecutive_failures",
            "Checks failed in a row; 0 after a pass.",
            labels=["check"],
        )
        info = GaugeMetricFamily(
            "health_sidecar_check_info",
            "Always 1 per configured check; its kind and criticality (critical or warn) are "
            "labels, for joins that page on critical checks only.",
            labels=["check", "kind", "criticality"],
        )
        for state in board.checks.values():
            ok = state.last is not None and state.last.ok
            up.add_metric([state.name], 1.0 if ok else 0.0)
            last_success.add_metric([state.name], state.last_success_at or 0.0)
            failures.add_metric([state.name], float(state.consecutive_failures))
            criticality = "critical" if state.critical else "warn"
            info.add_metric([state.name, state.kind, criticality], 1.0)
        yield up
        yield last_success
        yield failures
        yield info
        yield from self._credential_metrics()
        ready = readiness(board, now=now).ok
        yield GaugeMetricFamily(
            "health_sidecar_ready",
            "1 if /ready answers 200 (checks passing, fresh, not draining), 0 if it answers 503.",
            value=1.0 if ready else 0.0,
        )
        yield GaugeMetricFamily(
            "health_sidecar_started",
            "1 once every check has passed once (/startup answers 200), 0 before.",
            value=1.0 if startup(board).ok else 0.0,
        )
        yield GaugeMetricFamily(
            "health_sidecar_draining",
            "1 after SIGTERM or SIGINT while the sidecar drains, 0 otherwise.",
            value=1.0 if board.draining else 0.0,
        )
        alive = liveness(board, now=now).ok
        yield GaugeMetricFamily(
            "health_sidecar_probe_loop_healthy",
            "1 if the probe loop keeps its schedule (/health answers 200), 0 if stalled or dead.",
            value=1.0 if alive else 0.0,
        )
        requests = CounterMetricFamily(
            "health_sidecar_http_requests",
            "HTTP requests answered, by handler and status code.",
            labels=["handler", "code"],
        )
        seen = set()
        for (handler, status), count in sorted(self._requests.counts.items()):
            requests.add_metric([handler, str(status)], float(count))
            seen.add(handler)
        # The scrape that reads this is itself not counted yet; keep the family non-empty.
        if "metrics" not in seen:
            requests.add_metric(["metrics", "200"], 0.0)
        yield requests
        build = GaugeMetricFamily(
            "health_sidecar_build_info", "Always 1; the version is a label.", labels=["version"]
        )
        build.add_metric([__version__], 1.0)
        yield build

    def _credential_metrics(self) -> Iterator[Metric]:
        """Only for checks whose DSN comes from a watched file (rotation)."""
        if not self._credentials:
            return
        reloads = CounterMetricFamily(
            "health_sidecar_dsn_reloads",
            "Changes of a watched DSN file, by outcome: applied (in use), invalid (unreadable "
            "or malformed, last good DSN kept), rejected (the server refused it, old one kept).",
            labels=["check", "outcome"],
        )
        last_ok = GaugeMetricFamily(
            "health_sidecar_dsn_last_reload_successful",
            "1 if the DSN file's current content is in use, 0 if it is invalid or was refused "
            "and the check still runs on the last good DSN.",
            labels=["check"],
        )
        for name, status in sorted(self._credentials.items()):
            for outcome in OUTCOMES:
                reloads.add_metric([name, outcome], float(status.reloads.get(outcome, 0)))
            last_ok.add_metric([name], 1.0 if status.last_reload_ok else 0.0)
        yield reloads
        yield last_ok


class ServerCounts:
    """What the process's surroundings did to it: counted by the server, read at scrape time."""

    __slots__ = ("accept_errors", "connections_evicted")

    def __init__(self) -> None:
        self.accept_errors = 0
        self.connections_evicted = 0


class SurroundingsCollector(Collector):
    """Counters of the server (accept errors, evictions at the cap) and of the log writer."""

    def __init__(self, counts: ServerCounts, dropped_log_lines: Callable[[], int]) -> None:
        self._counts = counts
        self._dropped_log_lines = dropped_log_lines

    def collect(self) -> Iterator[Metric]:
        yield CounterMetricFamily(
            "health_sidecar_log_lines_dropped",
            "Log lines dropped because stdout did not keep up (a stalled log pipe).",
            value=float(self._dropped_log_lines()),
        )
        yield CounterMetricFamily(
            "health_sidecar_accept_errors",
            "Connections the server could not accept (out of file descriptors, memory).",
            value=float(self._counts.accept_errors),
        )
        yield CounterMetricFamily(
            "health_sidecar_connections_evicted",
            "Idle connections closed early to make room under the connection cap.",
            value=float(self._counts.connections_evicted),
        )
