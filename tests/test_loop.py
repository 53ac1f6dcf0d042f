"""The probe loop with a fake clock and a scripted check: delays, resets, resilience."""

from __future__ import annotations

import asyncio
import itertools

import pytest
from fakes import FakeClock, ScriptedCheck

from sidecar.checks.postgres import PostgresSpec
from sidecar.checkspec import CheckPolicy
from sidecar.loop import (
    BACKOFF_FACTOR_SECONDS,
    MIN_RETRY_DELAY_SECONDS,
    CheckLoop,
    backoff_delays,
)
from sidecar.reasons import Reason
from sidecar.state import Board, CheckResult, CheckState, Transition

DOWN = Reason.CONNECTION_REFUSED


class Recorder:
    def __init__(self) -> None:
        self.results: list[CheckResult] = []
        self.transitions: list[Transition] = []

    def observe(
        self, result: CheckResult, state: CheckState, transition: Transition | None
    ) -> None:
        self.results.append(result)
        if transition is not None:
            self.transitions.append(transition)


async def drive(prober: CheckLoop, clock: FakeClock, checks: int) -> None:
    """Run the loop until it has slept `checks` times, then cancel it."""
    task = asyncio.create_task(prober.run())
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10  # generous: only a hung check takes real time here
    while len(clock.sleeps) < checks and loop.time() < deadline:  # noqa: ASYNC110 -- polls a fake
        await asyncio.sleep(0.001)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert len(clock.sleeps) >= checks


def make(
    script: list[object], check: ScriptedCheck | None = None, **policy: float
) -> tuple[CheckLoop, ScriptedCheck, FakeClock, Board, Recorder]:
    clock = FakeClock()
    check = check or ScriptedCheck(script)  # type: ignore[arg-type]
    board = Board()
    recorder = Recorder()
    schedule = CheckPolicy(
        interval=policy.get("interval", 5.0),
        timeout=policy.get("timeout", 2.0),
        backoff_max=policy.get("backoff_max", 30.0),
    )
    prober = CheckLoop(
        PostgresSpec(name=check.name, policy=schedule),
        check,
        board,
        observer=recorder,
        clock=clock,
        sleep=clock.sleep,
        jitter=lambda value: value,  # no randomness: the bare exponential sequence
    )
    return prober, check, clock, board, recorder


def test_backoff_delays_grow_exponentially_and_are_capped() -> None:
    """Without jitter the delays are 1, 2, 4, 8 ... capped at backoff_max."""
    delays = list(itertools.islice(backoff_delays(10.0, jitter=lambda v: v), 6))
    f = BACKOFF_FACTOR_SECONDS
    assert delays == [f, 2 * f, 4 * f, 8 * f, 10.0, 10.0]


def test_backoff_jitter_stays_within_floor_and_cap() -> None:
    """With backoff's full jitter every delay is between the floor and the cap."""
    delays = list(itertools.islice(backoff_delays(3.0), 200))
    assert all(MIN_RETRY_DELAY_SECONDS <= d <= 3.0 for d in delays)
    assert len({round(d, 6) for d in delays}) > 50  # really jittered


async def test_healthy_loop_waits_the_interval() -> None:
    """While checks pass, the loop sleeps exactly the interval between them."""
    prober, check, clock, board, _ = make([None], interval=5.0)
    await drive(prober, clock, 4)
    assert clock.sleeps[:4] == [5.0, 5.0, 5.0, 5.0]
    assert board.states["postgres"].passing
    assert check.resets == 0


async def test_failing_loop_backs_off_then_returns_to_the_interval() -> None:
    """Failures back off 1, 2, 4; a pass goes back to the interval and restarts backoff."""
    prober, check, clock, _board, recorder = make([DOWN, DOWN, DOWN, None, DOWN], interval=5.0)
    await drive(prober, clock, 5)
    assert clock.sleeps[:5] == [1.0, 2.0, 4.0, 5.0, 1.0]
    # The connection is dropped after every failure, and only then.
    assert check.resets == sum(not r.ok for r in recorder.results)
    assert check.resets >= 4
    assert [t.current for t in recorder.transitions] == ["failing", "passing", "failing"]


async def test_unexpected_exception_is_counted_and_the_loop_goes_on() -> None:
    """A check raising an unexpected error yields internal_error and the next check runs."""
    prober, check, clock, _board, recorder = make([ValueError("bug"), None])
    await drive(prober, clock, 3)
    assert recorder.results[0].reason is Reason.INTERNAL_ERROR
    assert recorder.results[1].ok
    assert check.runs >= 3


async def test_a_hung_check_times_out() -> None:
    """A check that never returns is cut at the timeout and reported as timeout."""

    async def hang() -> None:
        await asyncio.Event().wait()

    prober, _, clock, _board, recorder = make([hang, None], timeout=0.05)
    await drive(prober, clock, 2)
    assert recorder.results[0].reason is Reason.TIMEOUT
    assert recorder.results[1].ok


async def test_next_due_is_published_for_liveness() -> None:
    """After each check the snapshot says when the next one is due."""
    prober, _, clock, board, _ = make([None], interval=5.0)
    await drive(prober, clock, 1)
    state = board.states["postgres"]
    assert state.last is not None
    assert state.next_due_monotonic == pytest.approx(state.last.finished_monotonic + 5.0)


# ---- an unreachable dependency: probed, and checked again as soon as it listens -------------


class ProbedCheck(ScriptedCheck):
    """A scripted check that also answers the loop's reachability probes from a script (the
    last answer repeats)."""

    def __init__(self, script: list[object], answers: list[bool]) -> None:
        super().__init__(script)  # type: ignore[arg-type]
        self.answers = answers
        self.probes = 0

    async def reachable(self) -> bool:
        answer = self.answers[min(self.probes, len(self.answers) - 1)]
        self.probes += 1
        return answer


async def test_refused_dependency_is_checked_again_as_soon_as_a_probe_connects() -> None:
    """Connection refused: while the loop waits out a backoff delay it probes once a second,
    and the check runs at once when a probe connects (here 1 s into a 4 s delay)."""
    check = ProbedCheck([DOWN, DOWN, DOWN, None], answers=[False, True])
    prober, _, clock, _board, recorder = make([], check, interval=5.0)
    await drive(prober, clock, 5)
    assert clock.sleeps[:5] == [1.0, 1.0, 1.0, 1.0, 5.0]
    assert check.probes == 2
    assert [r.ok for r in recorder.results[:4]] == [False, False, False, True]


async def test_host_that_listened_all_along_keeps_the_backoff() -> None:
    """A timeout while a probe connects at once (a hung server, not a dead one): one probe per
    delay, and the delay is waited out in full, so no login comes sooner."""
    check = ProbedCheck([Reason.TIMEOUT, Reason.TIMEOUT, Reason.TIMEOUT, None], answers=[True])
    prober, _, clock, _board, _recorder = make([], check, interval=5.0)
    await drive(prober, clock, 6)
    assert clock.sleeps[:6] == [1.0, 1.0, 1.0, 1.0, 3.0, 5.0]
    assert sum(clock.sleeps[:5]) == 1.0 + 2.0 + 4.0
    assert check.probes == 2


async def test_refused_login_is_never_probed() -> None:
    """auth_failed: the server listens and said no; the backoff alone spaces the logins."""
    check = ProbedCheck([Reason.AUTH_FAILED], answers=[True])
    prober, _, clock, _board, _recorder = make([], check)
    await drive(prober, clock, 4)
    assert clock.sleeps[:4] == [1.0, 2.0, 4.0, 8.0]
    assert check.probes == 0


async def test_server_starting_after_coming_back_is_retried_each_probe_interval() -> None:
    """Back at the TCP level but still starting (57P03, refused before any login): retried
    once a second rather than at the backoff's growing delays; without a comeback seen, the
    backoff stands."""
    starting = Reason.SERVER_STARTING
    check = ProbedCheck([DOWN, DOWN, DOWN, starting, starting, None], answers=[False, True])
    prober, _, clock, _board, recorder = make([], check, interval=5.0)
    await drive(prober, clock, 7)
    assert clock.sleeps[:7] == [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 5.0]
    assert recorder.results[5].ok
    still = ProbedCheck([starting], answers=[True])
    prober, _, clock, _board, _recorder = make([], still)
    await drive(prober, clock, 3)
    assert clock.sleeps[:3] == [1.0, 2.0, 4.0]


class RoleWatchedCheck(ScriptedCheck):
    """A scripted check whose server's role is asked again from a script while it waits."""

    def __init__(self, script: list[object], answers: list[bool]) -> None:
        super().__init__(script)  # type: ignore[arg-type]
        self.answers = answers
        self.asked = 0

    async def role_matches(self) -> bool:
        answer = self.answers[min(self.asked, len(self.answers) - 1)]
        self.asked += 1
        return answer


async def test_wrong_role_is_checked_again_as_soon_as_the_server_has_it() -> None:
    """session_attrs_mismatch: the loop asks the server's role once a second while it waits,
    and runs the check as soon as it matches (here 1 s into an 8 s delay)."""
    wrong = Reason.SESSION_ATTRS_MISMATCH
    check = RoleWatchedCheck([wrong, wrong, wrong, wrong, None], answers=[False] * 4 + [True])
    prober, _, clock, _board, recorder = make([], check, interval=5.0)
    await drive(prober, clock, 9)
    # Delays 1 (no time to ask), 2 (asked once), 4 (asked three times), then 8 cut after 1 s.
    assert clock.sleeps[:9] == [1.0] * 8 + [5.0]
    assert check.asked == 5
    assert recorder.results[4].ok
