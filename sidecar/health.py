"""Verdicts: what /health, /ready and /startup (and their gauges) say, from one snapshot.

Pure functions of the board and a monotonic `now`: no I/O, shared by the handlers and the
metrics collector so the two can never disagree. Each check's snapshot carries its own
timeout, freshness and criticality, so no setting is needed here.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Final

from sidecar.state import Board, CheckState

# How late a check may finish, beyond its timeout, before the check loop counts as stalled.
# Covers event-loop lag and the connection reset that follows a failure.
STALL_GRACE_SECONDS: Final = 2.0


@dataclass(frozen=True, slots=True)
class Verdict:
    ok: bool
    output: str | None = None  # why not ok, in a few words; never holds a secret


PASS: Final = Verdict(ok=True)
NO_EXCLUDES: Final[frozenset[str]] = frozenset()


def stall_deadline(state: CheckState) -> float:
    """The monotonic moment after which this check's loop counts as stalled."""
    return state.next_due_monotonic + state.timeout_seconds + STALL_GRACE_SECONDS


def check_liveness(state: CheckState, *, now: float) -> Verdict:
    """One probe loop: alive while it keeps its own schedule."""
    if now > stall_deadline(state):
        return Verdict(False, f"probe loop stalled: {state.name} check overdue")
    return PASS


def liveness(board: Board, *, now: float, exclude: Collection[str] = NO_EXCLUDES) -> Verdict:
    """The sidecar itself: alive unless a probe loop died or missed its own schedule."""
    if board.prober_stopped:
        return Verdict(False, "probe loop stopped")
    for state in board.checks.values():
        if state.name in exclude:
            continue
        verdict = check_liveness(state, now=now)
        if not verdict.ok:
            return verdict
    return PASS


def check_readiness(state: CheckState, *, now: float) -> Verdict:
    """One check, whatever its criticality: passing and fresh."""
    last = state.last
    if last is None:
        return Verdict(False, f"{state.name}: no result yet")
    if not state.passing:
        reason = last.reason.value if last.reason else "failing"
        return Verdict(False, f"{state.name}: {reason}")
    if now - last.finished_monotonic > state.freshness_seconds:
        return Verdict(False, f"{state.name}: stale result")
    return PASS


def readiness(board: Board, *, now: float, exclude: Collection[str] = NO_EXCLUDES) -> Verdict:
    """The dependencies: ready when every critical check passes and is fresh, and the
    sidecar is not draining. `warn` checks and excluded ones never make it fail."""
    if board.draining:
        return Verdict(False, "draining")
    if board.prober_stopped:
        # Nothing will refresh the result: do not wait for it to go stale.
        return Verdict(False, "probe loop stopped")
    if not board.checks:
        return Verdict(False, "no check has run yet")
    for state in board.checks.values():
        if not state.critical or state.name in exclude:
            continue
        verdict = check_readiness(state, now=now)
        if not verdict.ok:
            return verdict
    return PASS


def startup(board: Board) -> Verdict:
    """Started once every critical check has passed once; a one-way latch."""
    if not board.checks:
        return Verdict(False, "no check has run yet")
    for state in board.checks.values():
        if state.critical and not state.ever_passed:
            return Verdict(False, f"{state.name}: not passed yet")
    return PASS
