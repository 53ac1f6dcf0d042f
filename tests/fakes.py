"""Hand-written fakes for pure-logic tests: a clock, a scripted check. No database here."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from typing import Any

from sidecar.checkspec import CheckPolicy
from sidecar.reasons import CheckFailed, Reason
from sidecar.state import CheckState


class FakeClock:
    """Monotonic and wall clocks that move only when told to (or when fake-slept)."""

    def __init__(self, start: float = 1000.0, wall: float = 1_800_000_000.0) -> None:
        self.now = start
        self.wall_offset = wall - start
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def time(self) -> float:
        return self.now + self.wall_offset

    def advance(self, seconds: float) -> None:
        self.now += seconds

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)


Outcome = Reason | None | BaseException | Callable[[], object]


class ScriptedCheck:
    """Plays a script of outcomes: None passes, a Reason fails, an exception is raised.

    After the script runs out it repeats the last outcome.
    """

    def __init__(self, script: Iterable[Outcome], *, name: str = "postgres") -> None:
        self._script = list(script)
        self._name = name
        self.runs = 0
        self.resets = 0
        self.closed = False

    @property
    def name(self) -> str:
        return self._name

    def then(self, *outcomes: Outcome) -> None:
        self._script = self._script[: self.runs] + list(outcomes)

    async def run(self) -> None:
        index = min(self.runs, len(self._script) - 1)
        self.runs += 1
        outcome = self._script[index]
        if outcome is None:
            return
        if isinstance(outcome, Reason):
            raise CheckFailed(outcome)
        if isinstance(outcome, BaseException):
            raise outcome
        result = outcome()
        if asyncio.iscoroutine(result):
            await result

    async def reset(self) -> None:
        self.resets += 1

    async def close(self) -> None:
        self.closed = True


def check_state(name: str, **fields: Any) -> CheckState:
    """A critical postgres check's state on the default schedule; `fields` override any of it."""
    policy = CheckPolicy()
    known = {
        "kind": "postgres",
        "critical": True,
        "timeout_seconds": policy.timeout,
        "freshness_seconds": policy.freshness_seconds,
    }
    return CheckState(name=name, **{**known, **fields})
