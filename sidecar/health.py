"""Verdicts: what /health, /ready and /startup (and their gauges) say, from one snapshot.

Pure functions of the board and a monotonic `now`: no I/O, shared by the handlers and the
metrics collector so the two can never disagree. Each check's snapshot carries its own
timeout, freshness and criticality, so no setting is needed here. Freshness, the stall bound
and a stopped loop are judged here and nowhere else: with each verdict comes the moment until
which it holds (time alone changes a verdict only there), so the renderer can reuse an answer
without knowing why it stays true.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass, replace
from typing import Final

from sidecar.state import Board, CheckState

# How late a check may finish, beyond its timeout, before the check loop counts as stalled.
# Covers event-loop lag and the connection reset that follows a failure.
STALL_GRACE_SECONDS: Final = 2.0


# A verdict that time alone cannot change: it holds until the next snapshot.
FOREVER: Final = float("inf")


@dataclass(frozen=True, slots=True)
class Verdict:
    ok: bool
    output: str | None = None  # why not ok, in a few words; never holds a secret
    # The monotonic moment until which it holds, unless a new snapshot is published.
    until: float = FOREVER


PASS: Final = Verdict(ok=True)
# Once a check loop has ended, nothing refreshes any result: judged before anything else.
STOPPED: Final = Verdict(False, "probe loop stopped")
NO_EXCLUDES: Final[frozenset[str]] = frozenset()


def stall_deadline(state: CheckState) -> float:
    """The monotonic moment after which this check's loop counts as stalled."""
    return state.next_due_monotonic + state.timeout_seconds + STALL_GRACE_SECONDS


def check_liveness(state: CheckState, *, now: float) -> Verdict:
    """One check loop: alive while it keeps its own schedule."""
    deadline = stall_deadline(state)
    if now > deadline:
        return Verdict(False, f"probe loop stalled: {state.name} check overdue")
    return Verdict(True, until=deadline)


def loop_liveness(board: Board, state: CheckState, *, now: float) -> Verdict:
    """/health/<name>: that check's loop keeps its schedule, and no loop has stopped."""
    return STOPPED if board.loop_stopped else check_liveness(state, now=now)


def liveness(board: Board, *, now: float, exclude: Collection[str] = NO_EXCLUDES) -> Verdict:
    """The sidecar itself: alive unless a check loop died or missed its own schedule."""
    if board.loop_stopped:
        return STOPPED
    return _first_failure(
        check_liveness(s, now=now) for s in board.states.values() if s.name not in exclude
    )


def check_readiness(state: CheckState, *, now: float) -> Verdict:
    """One check, whatever its criticality: passing and fresh."""
    last = state.last
    if last is None:
        return Verdict(False, f"{state.name}: no result yet")
    if not state.passing:
        reason = last.reason.value if last.reason else "failing"
        return Verdict(False, f"{state.name}: {reason}")
    fresh_until = last.finished_monotonic + state.freshness_seconds
    if now > fresh_until:
        return Verdict(False, f"{state.name}: stale result")
    return Verdict(True, until=fresh_until)


def readiness(board: Board, *, now: float, exclude: Collection[str] = NO_EXCLUDES) -> Verdict:
    """The dependencies: ready when every critical check passes and is fresh, and the
    sidecar is not draining. `warn` checks and excluded ones never make it fail."""
    if board.draining:
        return Verdict(False, "draining")
    if board.loop_stopped:
        # Nothing will refresh the result: do not wait for it to go stale.
        return STOPPED
    if not board.states:
        return Verdict(False, "no check has run yet")
    return _first_failure(
        check_readiness(s, now=now)
        for s in board.states.values()
        if s.critical and s.name not in exclude
    )


def _first_failure(verdicts: Iterable[Verdict]) -> Verdict:
    """The first failing verdict, else a pass; either holds until the first of the passing
    verdicts before it expires (one that goes stale would come first)."""
    until = FOREVER
    for verdict in verdicts:
        if not verdict.ok:
            return replace(verdict, until=until) if until < verdict.until else verdict
        until = min(until, verdict.until)
    return PASS if until == FOREVER else Verdict(True, until=until)


def startup(board: Board) -> Verdict:
    """Started once every critical check has passed once; a one-way latch."""
    if not board.states:
        return Verdict(False, "no check has run yet")
    for state in board.states.values():
        if state.critical and not state.ever_passed:
            return Verdict(False, f"{state.name}: not passed yet")
    return PASS
