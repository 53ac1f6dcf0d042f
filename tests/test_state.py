"""The state machine: thresholds, the startup latch, transitions (pure logic)."""

from __future__ import annotations

import pytest
from fakes import check_state

from sidecar.reasons import Reason
from sidecar.state import Board, CheckResult, CheckState, advance

OK = None
DOWN = Reason.CONNECTION_REFUSED


def run(outcomes: list[Reason | None], *, fail_at: int = 1, pass_at: int = 1) -> list[CheckState]:
    state = check_state("postgres", state_since_monotonic=0.0)
    states = []
    for i, outcome in enumerate(outcomes, start=1):
        result = CheckResult(
            ok=outcome is None,
            latency_seconds=0.001,
            finished_at=1e9 + i,
            finished_monotonic=float(i),
            reason=outcome,
        )
        state, _ = advance(state, result, failure_threshold=fail_at, success_threshold=pass_at)
        states.append(state)
    return states


def test_failure_threshold_keeps_passing_until_reached() -> None:
    """With a failure threshold of 3, two failures warn and the third fails."""
    states = run([OK, DOWN, DOWN, DOWN], fail_at=3)
    assert [s.passing for s in states] == [True, True, True, False]
    assert [s.status for s in states] == ["pass", "warn", "warn", "fail"]
    assert states[-1].consecutive_failures == 3


def test_success_threshold_delays_recovery() -> None:
    """With a success threshold of 2, one pass after a failure is not enough."""
    states = run([OK, DOWN, OK, OK], pass_at=2)
    assert [s.passing for s in states] == [False, False, False, True]


def test_startup_latch_never_goes_back() -> None:
    """ever_passed turns true with the first pass and stays true through failures."""
    states = run([DOWN, OK, DOWN, DOWN])
    assert [s.ever_passed for s in states] == [False, True, True, True]


def test_first_result_is_a_transition_out_of_unknown() -> None:
    """The first result, pass or fail, is reported as a transition from 'unknown'."""
    state = check_state("postgres", state_since_monotonic=0.0)
    failed = CheckResult(False, 0.1, 1e9, 2.5, DOWN)
    _, transition = advance(state, failed, failure_threshold=1, success_threshold=1)
    assert transition is not None
    assert (transition.previous, transition.current, transition.reason) == (
        "unknown",
        "failing",
        DOWN,
    )
    assert transition.previous_state_seconds == 2.5


def test_transition_carries_how_long_the_previous_state_lasted() -> None:
    """Passing for 3 checks (1 s apart) then failing reports 3 s of passing."""
    state = check_state("postgres", state_since_monotonic=0.0)
    transitions = []
    for t, outcome in enumerate([OK, OK, OK, DOWN], start=1):
        result = CheckResult(outcome is None, 0.001, 1e9 + t, float(t), outcome)
        state, transition = advance(state, result, failure_threshold=1, success_threshold=1)
        transitions.append(transition)
    assert transitions[1] is None
    assert transitions[2] is None
    last = transitions[3]
    assert last is not None
    assert (last.previous, last.current, last.previous_state_seconds) == ("passing", "failing", 3.0)


def test_last_success_time_survives_failures() -> None:
    """last_success_at keeps the wall time of the latest pass while failing."""
    states = run([OK, OK, DOWN])
    assert states[-1].last_success_at == 1e9 + 2


def test_board_lifecycle_flags_turn_on_only_through_its_methods() -> None:
    """draining and loop_stopped start off, turn on through the board's own methods, stay on,
    and cannot be assigned from outside (every state change goes through the board)."""
    board = Board()
    assert (board.draining, board.loop_stopped) == (False, False)
    for flag in ("draining", "loop_stopped"):
        with pytest.raises(AttributeError):
            setattr(board, flag, True)
    board.start_draining()
    board.mark_loop_stopped()
    board.start_draining()
    assert (board.draining, board.loop_stopped) == (True, True)
