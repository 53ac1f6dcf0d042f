"""Immutable check state, advanced by a pure function and published by swapping one reference.

The check loops are the only writers; request handlers and the metrics collector only read
`Board.states`, so a reader always sees one consistent state without locks.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from sidecar.reasons import Details, Reason


@dataclass(frozen=True, slots=True)
class CheckResult:
    """The outcome of one check."""

    ok: bool
    latency_seconds: float
    finished_at: float  # wall clock, seconds since the epoch: shown to people and Prometheus
    finished_monotonic: float  # for ages and freshness: immune to wall-clock jumps
    reason: Reason | None = None
    # Short facts for ?verbose (schema_mismatch: expected and found revisions). Never a label.
    details: Details = ()


@dataclass(frozen=True, slots=True)
class CheckState:
    """Everything known about one check at one moment."""

    name: str
    # Fixed for the life of the check; carried in every snapshot so verdicts need nothing else.
    kind: str
    critical: bool  # False: `warn` criticality, never fails readiness
    timeout_seconds: float
    freshness_seconds: float
    passing: bool = False  # after thresholds: what readiness uses
    ever_passed: bool = False  # startup latch: once true, never false again
    last: CheckResult | None = None
    last_success_at: float | None = None  # wall clock
    consecutive_failures: int = 0
    consecutive_successes: int = 0
    state_since_monotonic: float = 0.0  # when `passing` last changed (or the loop started)
    # The moment the next check is due; liveness turns 503 when no check has finished
    # within timeout + grace after it.
    next_due_monotonic: float = 0.0

    @property
    def criticality(self) -> str:
        return "critical" if self.critical else "warn"

    @property
    def status(self) -> str:
        """IETF health-check status: pass, warn (passing but the latest check failed, or a
        failing check of `warn` criticality), fail."""
        if not self.passing:
            return "fail" if self.critical else "warn"
        if self.last is not None and not self.last.ok:
            return "warn"
        return "pass"


@dataclass(frozen=True, slots=True)
class Transition:
    """A change of state, for the state-change log and the transitions counter.

    The first result is always a transition (out of "unknown"), so that a sidecar that
    starts against a dead database says so at once.
    """

    name: str
    previous: str  # "unknown", "passing" or "failing"
    current: str  # "passing" or "failing"
    reason: Reason | None
    previous_state_seconds: float

    @property
    def passing(self) -> bool:
        return self.current == "passing"


def advance(
    state: CheckState,
    result: CheckResult,
    *,
    failure_threshold: int,
    success_threshold: int,
) -> tuple[CheckState, Transition | None]:
    """Fold one result into the state; return the new state and the transition, if any."""
    if result.ok:
        successes = state.consecutive_successes + 1
        failures = 0
        passing = state.passing or successes >= success_threshold
    else:
        successes = 0
        failures = state.consecutive_failures + 1
        # Before the first pass the check is not ready anyway: no threshold to wait for.
        passing = state.passing and failures < failure_threshold
    transition = None
    since = state.state_since_monotonic
    if passing != state.passing or state.last is None:
        transition = Transition(
            name=state.name,
            previous=state_word(state),
            current="passing" if passing else "failing",
            reason=result.reason,
            previous_state_seconds=max(0.0, result.finished_monotonic - since),
        )
        since = result.finished_monotonic
    new = replace(
        state,
        passing=passing,
        ever_passed=state.ever_passed or passing,
        last=result,
        last_success_at=result.finished_at if result.ok else state.last_success_at,
        consecutive_failures=failures,
        consecutive_successes=successes,
        state_since_monotonic=since,
    )
    return new, transition


def state_word(state: CheckState) -> str:
    """unknown (no result yet), passing or failing."""
    if state.last is None:
        return "unknown"
    return "passing" if state.passing else "failing"


@dataclass(slots=True)
class Board:
    """The one mutable holder: the latest snapshot per check, plus lifecycle flags.

    Written only from the event loop thread, and only through its methods: by the check loops
    (`publish`), the server (`start_draining`) and the app's supervisor (`mark_loop_stopped`);
    each write is a single reference assignment. The flags only ever turn on.
    """

    # The latest state of each check, by name.
    states: dict[str, CheckState] = field(default_factory=dict)
    _draining: bool = field(default=False, init=False)
    _loop_stopped: bool = field(default=False, init=False)

    @property
    def draining(self) -> bool:
        """The server got its stop signal: /ready answers 503 from now on."""
        return self._draining

    @property
    def loop_stopped(self) -> bool:
        """A check loop has ended for good: /health answers 503 from now on."""
        return self._loop_stopped

    def publish(self, state: CheckState) -> None:
        # A fresh dict per publish keeps readers iterating over a consistent mapping.
        states = dict(self.states)
        states[state.name] = state
        self.states = states

    def start_draining(self) -> None:
        self._draining = True

    def mark_loop_stopped(self) -> None:
        self._loop_stopped = True
