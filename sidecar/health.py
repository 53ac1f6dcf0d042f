"""Verdicts: what /health, /ready and /startup (and their gauges) say, from one snapshot.

Pure functions of the board and a monotonic `now`: no I/O, shared by the handlers and the
metrics collector so the two can never disagree.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from sidecar.state import Board

# How late a check may finish, beyond its timeout, before the probe loop counts as stalled.
# Covers event-loop lag and the connection reset that follows a failure.
STALL_GRACE_SECONDS: Final = 2.0


@dataclass(frozen=True, slots=True)
class Verdict:
    ok: bool
    output: str | None = None  # why not ok, in a few words; never holds a secret


PASS: Final = Verdict(ok=True)


def liveness(board: Board, *, check_timeout: float, now: float) -> Verdict:
    """The sidecar itself: alive unless the probe loop died or missed its own schedule."""
    if board.prober_stopped:
        return Verdict(False, "probe loop stopped")
    for state in board.checks.values():
        if now > state.next_due_monotonic + check_timeout + STALL_GRACE_SECONDS:
            return Verdict(False, f"probe loop stalled: {state.name} check overdue")
    return PASS


def readiness(board: Board, *, freshness: float, now: float) -> Verdict:  # noqa: PLR0911 -- flat
    """The dependencies: ready when every check passes, is fresh, and we are not draining."""
    if board.draining:
        return Verdict(False, "draining")
    if board.prober_stopped:
        # Nothing will refresh the result: do not wait for it to go stale.
        return Verdict(False, "probe loop stopped")
    if not board.checks:
        return Verdict(False, "no check has run yet")
    for state in board.checks.values():
        last = state.last
        if last is None:
            return Verdict(False, f"{state.name}: no result yet")
        if not state.passing:
            reason = last.reason.value if last.reason else "failing"
            return Verdict(False, f"{state.name}: {reason}")
        if now - last.finished_monotonic > freshness:
            return Verdict(False, f"{state.name}: stale result")
    return PASS


def startup(board: Board) -> Verdict:
    """Started once every check has passed once; a one-way latch."""
    if not board.checks:
        return Verdict(False, "no check has run yet")
    for state in board.checks.values():
        if not state.ever_passed:
            return Verdict(False, f"{state.name}: not passed yet")
    return PASS
