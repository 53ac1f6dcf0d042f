"""Real-component test helpers: a throwaway PostgreSQL (`support.pg`), a fault proxy
(`support.faultproxy`), resources made once per run (`support.once`); here, what every test
shares: the repository's path, the slack policy, the one poller, `missing_tool`, and
`examples` (how many Hypothesis examples a property test draws under the loaded profile).

`tests/` has no `__init__.py`, so pytest puts `tests/` itself on `sys.path` and this package is
imported as `support` (and mypy names it the same way). Import it as
`from support.pg import PostgresServer`. Modules inside the package import each other
relatively, so nothing here imports `conftest` and no import cycle can form.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Final, NoReturn, TypeVar

import pytest
from hypothesis import settings

__all__ = [
    "LOOPBACK",
    "REPO",
    "SLACK",
    "NotWithin",
    "examples",
    "free_port",
    "missing_tool",
    "timed_until",
    "wait_until",
    "wait_until_async",
]

LOOPBACK: Final = "127.0.0.1"
# The repository's root: the tests read its README, chart, Dockerfile and docs.
REPO: Final = Path(__file__).resolve().parents[2]
# The one slack policy: seconds added to every timing bound a test derives from its settings,
# and the bound of a wait for something that should come at once. The machine is shared (two
# cores, several xdist workers, other jobs), so a process may wait seconds for a core; a wait
# ends as soon as its condition holds, so a generous bound costs nothing when all is well.
# Chains of waits (a pod's containers) use multiples. SIDECAR_TEST_SLACK: on a slower machine.
SLACK: Final = float(os.environ.get("SIDECAR_TEST_SLACK", "10"))
POLL_SECONDS: Final = 0.05
HYPOTHESIS_DEFAULT_EXAMPLES: Final = 100  # max_examples of Hypothesis' default profile

T = TypeVar("T")


class NotWithin(AssertionError, TimeoutError):
    """A condition polled for did not come true within its bound (a test failure)."""


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port that was free on `host` a moment ago.

    Another process may take it before the caller binds it; callers that bind later (PostgreSQL)
    retry with a new port when the bind fails.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def examples(count: int) -> int:
    """A property test's `max_examples`: `count` under Hypothesis' default profile, scaled by
    the loaded profile's own (`ci`, set by .ci/run: a quarter), never under 5. Read when the test
    module is imported, after tests/conftest.py has loaded the profile."""
    loaded = settings.default
    profile_examples = HYPOTHESIS_DEFAULT_EXAMPLES if loaded is None else loaded.max_examples
    return max(5, count * profile_examples // HYPOTHESIS_DEFAULT_EXAMPLES)


def missing_tool(what: str, *, installer: str | None = None) -> NoReturn:
    """A tool a test needs is not here: fail in CI (CI=true), where `.ci/run`'s installers must
    have put it there; skip elsewhere, naming the installer."""
    message = f"{what} is not installed: run {installer}" if installer else what
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


class _Deadline:
    def __init__(self, timeout: float, message: str, since: float | None) -> None:
        now = time.monotonic()
        self.start = now if since is None else since
        self.deadline = now + timeout
        self.timeout = timeout
        self.message = message

    def reached(self, result: object) -> bool:
        """True once `result` is truthy; NotWithin once the deadline has passed without."""
        if result:
            return True
        if time.monotonic() >= self.deadline:
            raise NotWithin(f"{self.message}: not within {self.timeout:g}s (last: {result!r})")
        return False


def timed_until(
    predicate: Callable[[], T],
    *,
    timeout: float = SLACK,
    interval: float = POLL_SECONDS,
    message: str = "condition",
    since: float | None = None,
) -> tuple[T, float]:
    """The one poller: call `predicate` until it returns something truthy; return that and the
    seconds since `since` (a time.monotonic(), else the call). NotWithin after `timeout` s.

    Blocking: in an async test the event loop stands still meanwhile, so a condition that needs
    the test's own loop to make progress (a socket it closed, a task) never comes true there;
    use `wait_until_async`."""
    deadline = _Deadline(timeout, message, since)
    while not deadline.reached(result := predicate()):
        time.sleep(interval)
    return result, time.monotonic() - deadline.start


def wait_until(
    predicate: Callable[[], T],
    *,
    timeout: float = SLACK,
    interval: float = POLL_SECONDS,
    message: str = "condition",
) -> T:
    """`timed_until` without the time: what `predicate` returned once truthy."""
    return timed_until(predicate, timeout=timeout, interval=interval, message=message)[0]


async def wait_until_async(
    predicate: Callable[[], T],
    *,
    # A parameter, not asyncio.timeout(): the predicate is blocking and cannot be cancelled.
    timeout: float = SLACK,  # noqa: ASYNC109
    interval: float = POLL_SECONDS,
    message: str = "condition",
) -> T:
    """`wait_until` for async tests: the loop keeps running between polls. `predicate` may be
    a blocking helper such as `PostgresServer.sessions` (each call is short)."""
    deadline = _Deadline(timeout, message, None)
    while True:
        result = predicate()
        if deadline.reached(result):
            return result
        await asyncio.sleep(interval)
