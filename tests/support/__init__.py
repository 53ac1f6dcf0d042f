"""Real-component test helpers: a throwaway PostgreSQL (`support.pg`) and a fault proxy
(`support.faultproxy`).

`tests/` has no `__init__.py`, so pytest puts `tests/` itself on `sys.path` and this package is
imported as `support` (and mypy names it the same way). Import it as
`from support.pg import PostgresServer`. Modules inside the package import each other
relatively, so nothing here imports `conftest` and no import cycle can form.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable
from typing import Final, TypeVar

__all__ = ["LOOPBACK", "free_port", "wait_until", "wait_until_async"]

LOOPBACK: Final = "127.0.0.1"

T = TypeVar("T")


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port that was free on `host` a moment ago.

    Another process may take it before the caller binds it; callers that bind later (PostgreSQL)
    retry with a new port when the bind fails.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def wait_until(
    predicate: Callable[[], T],
    *,
    timeout: float = 10.0,
    interval: float = 0.05,
    message: str = "condition",
) -> T:
    """Poll `predicate` until it returns something truthy and return that; TimeoutError after
    `timeout` seconds.

    Blocking: in an async test the event loop stands still meanwhile, so a condition that needs
    the test's own loop to make progress (a socket it closed, a task) never comes true there;
    use `wait_until_async`."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{message} not reached within {timeout:g}s (last: {result!r})")
        time.sleep(interval)


async def wait_until_async(
    predicate: Callable[[], T],
    *,
    # A parameter, not asyncio.timeout(): the predicate is blocking and cannot be cancelled.
    timeout: float = 10.0,  # noqa: ASYNC109
    interval: float = 0.05,
    message: str = "condition",
) -> T:
    """`wait_until` for async tests: the loop keeps running between polls. `predicate` may be
    a blocking helper such as `PostgresServer.sessions` (each call is short)."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{message} not reached within {timeout:g}s (last: {result!r})")
        await asyncio.sleep(interval)
