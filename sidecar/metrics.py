"""Every metric, built against an injected registry (never the global one).

A check's counters and histogram are one plain record (CheckCounts) that its loop replaces
after each result; every family is built at scrape time, in the render thread
(sidecar.exposition). Gauges that depend on time (ready, check loop healthy) come from the
same verdicts the handlers use, so /metrics and /ready never disagree.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Final

from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from sidecar import __version__
from sidecar.checks import CredentialsStatus
from sidecar.credentials import OUTCOMES
from sidecar.health import liveness, readiness, startup
from sidecar.reasons import ALL_REASONS
from sidecar.state import Board, CheckResult, CheckState, Transition

# A database ping on loopback takes ~0.2 ms, across a zone a few ms; timeouts go to 10 s.
DURATION_BUCKETS: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
# `le` as prometheus-client's own Histogram writes it ("0.001", ..., "10.0", "+Inf").
_LE: Final = (*(floatToGoString(b) for b in DURATION_BUCKETS), "+Inf")  # type: ignore[no-untyped-call]
_OUTCOME: Final = ("check", "outcome")
_REASON: Final = ("check", "reason")
_TO: Final = ("check", "to")
# Per-check gauges read from the snapshot: (name, help, value of a state).
_CHECK_GAUGES: Final[tuple[tuple[str, str, Callable[[CheckState], float]], ...]] = (
    (
        "health_sidecar_check_up",
        "1 if the latest check passed, 0 if it failed or none has finished yet.",
        lambda state: float(state.last is not None and state.last.ok),
    ),
    (
        "health_sidecar_check_last_success_timestamp_seconds",
        "Unix time of the latest passing check; 0 if none has passed yet.",
        lambda state: state.last_success_at or 0.0,
    ),
    (
        "health_sidecar_check_consecutive_failures",
        "Checks failed in a row; 0 after a pass.",
        lambda state: float(state.consecutive_failures),
    ),
)


class Counts:
    """What the server counts on its own paths, read at scrape time: requests by handler and
    status, and what the surroundings did to the process (accept errors, evictions at the cap).

    A plain attribute bump on the request path: cheaper than a labelled prometheus Counter (no
    lock, no child lookup); exposed as counter families at scrape time.
    """

    __slots__ = ("accept_errors", "connections_evicted", "requests")

    def __init__(self) -> None:
        self.requests: dict[tuple[str, int], int] = {}
        self.accept_errors = 0
        self.connections_evicted = 0

    def hit(self, handler: str, status: int) -> None:
        key = (handler, status)
        self.requests[key] = self.requests.get(key, 0) + 1


@dataclass(frozen=True, slots=True)
class CheckCounts:
    """One check's counters and its duration histogram, replaced whole after each result.

    Plain numbers instead of prometheus-client's labelled Counter and Histogram children (a
    lock and a value object per series, 40 series a check): a few hundred bytes a check
    instead of kilobytes, and a scrape (in the render thread) reads one consistent record
    per check, never a histogram whose count and buckets disagree.
    """

    # Observations per bucket, not cumulative; the last one is +Inf.
    buckets: tuple[int, ...] = (0,) * (len(DURATION_BUCKETS) + 1)
    duration_sum: float = 0.0
    passes: int = 0
    fails: int = 0
    failures: Mapping[str, int] = field(default_factory=dict)  # by reason; a fresh dict each
    to_passing: int = 0
    to_failing: int = 0

    def add(self, result: CheckResult, transition: Transition | None) -> CheckCounts:
        buckets = list(self.buckets)
        buckets[bisect.bisect_left(DURATION_BUCKETS, result.latency_seconds)] += 1
        failures = self.failures
        if result.reason is not None:
            reason = result.reason.value
            failures = {**failures, reason: failures.get(reason, 0) + 1}
        return CheckCounts(
            buckets=tuple(buckets),
            duration_sum=self.duration_sum + result.latency_seconds,
            passes=self.passes + result.ok,
            fails=self.fails + (not result.ok),
            failures=failures,
            to_passing=self.to_passing + (transition is not None and transition.passing),
            to_failing=self.to_failing + (transition is not None and not transition.passing),
        )


class Metrics(Collector):
    """The check loops' observer, and the scrape-time collector of every sidecar metric."""

    def __init__(
        self,
        registry: CollectorRegistry,
        board: Board,
        *,
        check_names: Iterable[str],
        monotonic: Callable[[], float],
        counts: Counts,
        credentials: Mapping[str, CredentialsStatus] | None = None,
        dropped_log_lines: Callable[[], int] = lambda: 0,
    ) -> None:
        self._board = board
        self._monotonic = monotonic
        self._counts = counts
        self._dropped_log_lines = dropped_log_lines
        self._credentials = credentials or {}
        # Every series exists from the first scrape (zeros), so rate() and absent() behave.
        # Written on the event loop by one reference swap per result; read by the renderer.
        empty = CheckCounts()
        self._per_check: dict[str, CheckCounts] = dict.fromkeys(check_names, empty)
        registry.register(self)

    def observe(
        self, result: CheckResult, state: CheckState, transition: Transition | None
    ) -> None:
        per_check = self._per_check
        per_check[state.name] = per_check[state.name].add(result, transition)

    def collect(self) -> Iterator[Metric]:
        yield from self._check_counters()
        board = self._board
        now = self._monotonic()
        states = board.states.values()
        for name, help_text, value in _CHECK_GAUGES:
            gauge = GaugeMetricFamily(name, help_text, labels=["check"])
            for state in states:
                gauge.add_metric([state.name], value(state))
            yield gauge
        info = GaugeMetricFamily(
            "health_sidecar_check_info",
            "Always 1 per configured check; its kind and criticality (critical or warn) are "
            "labels, for joins that page on critical checks only.",
            labels=["check", "kind", "criticality"],
        )
        for state in states:
            info.add_metric([state.name, state.kind, state.criticality], 1)
        yield info
        yield from self._credential_metrics()
        for name, help_text, on in (
            (
                "health_sidecar_ready",
                "1 if /ready answers 200 (checks passing, fresh, not draining), 0 if it answers "
                "503.",
                readiness(board, now=now).ok,
            ),
            (
                "health_sidecar_started",
                "1 once every check has passed once (/startup answers 200), 0 before.",
                startup(board).ok,
            ),
            (
                "health_sidecar_draining",
                "1 after SIGTERM or SIGINT while the sidecar drains, 0 otherwise.",
                board.draining,
            ),
            (
                "health_sidecar_probe_loop_healthy",
                "1 if the probe loop keeps its schedule (/health answers 200), 0 if stalled or "
                "dead.",
                liveness(board, now=now).ok,
            ),
        ):
            yield GaugeMetricFamily(name, help_text, value=float(on))
        requests = CounterMetricFamily(
            "health_sidecar_http_requests",
            "HTTP requests answered, by handler and status code.",
            labels=["handler", "code"],
        )
        counts = self._counts
        for (handler, status), count in sorted(counts.requests.items()):
            requests.add_metric([handler, str(status)], count)
        # The scrape that reads this is itself not counted yet; keep the family non-empty.
        if not any(handler == "metrics" for handler, _ in counts.requests):
            requests.add_metric(["metrics", "200"], 0)
        yield requests
        build = GaugeMetricFamily(
            "health_sidecar_build_info", "Always 1; the version is a label.", labels=["version"]
        )
        build.add_metric([__version__], 1)
        yield build
        for name, help_text, total in (
            (
                "health_sidecar_log_lines_dropped",
                "Log lines dropped because stdout did not keep up (a stalled log pipe).",
                self._dropped_log_lines(),
            ),
            (
                "health_sidecar_accept_errors",
                "Connections the server could not accept (out of file descriptors, memory).",
                counts.accept_errors,
            ),
            (
                "health_sidecar_connections_evicted",
                "Idle connections closed early to make room under the connection cap.",
                counts.connections_evicted,
            ),
        ):
            yield CounterMetricFamily(name, help_text, value=total)

    def _check_counters(self) -> Iterator[Metric]:
        # One copy of the table: each record in it is immutable, so the whole scrape sees
        # each check at one moment (dict() copies in one step under the GIL). Each family is
        # yielded as soon as it is built: the encoder holds one family's samples at a time.
        per_check = dict(self._per_check)
        duration = HistogramMetricFamily(
            "health_sidecar_check_duration_seconds",
            "Time one check took, connect and query together, in seconds.",
            labels=["check"],
        )
        for name, record in per_check.items():
            duration.add_metric(
                [name],
                list(zip(_LE, itertools.accumulate(record.buckets), strict=True)),
                record.duration_sum,
            )
        yield duration
        del duration
        outcomes = CounterMetricFamily(
            "health_sidecar_check", "Checks run, by outcome (pass or fail).", labels=_OUTCOME
        )
        for name, record in per_check.items():
            outcomes.add_metric([name, "pass"], record.passes)
            outcomes.add_metric([name, "fail"], record.fails)
        yield outcomes
        del outcomes
        failures = CounterMetricFamily(
            "health_sidecar_check_failures",
            "Failed checks by reason (timeout, connection_refused, auth_failed, ...).",
            labels=_REASON,
        )
        for name, record in per_check.items():
            failed = record.failures
            for reason in ALL_REASONS:
                failures.add_metric([name, reason], failed.get(reason, 0))
        yield failures
        del failures
        transitions = CounterMetricFamily(
            "health_sidecar_check_transitions",
            "Changes of a check's state, by the state entered (passing or failing).",
            labels=_TO,
        )
        for name, record in per_check.items():
            transitions.add_metric([name, "passing"], record.to_passing)
            transitions.add_metric([name, "failing"], record.to_failing)
        yield transitions

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
                reloads.add_metric([name, outcome], status.reloads.get(outcome, 0))
            last_ok.add_metric([name], float(status.last_reload_ok))
        yield reloads
        yield last_ok
