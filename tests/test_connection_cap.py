"""The connection cap's bookkeeping, with fake transports and a fake clock (pure logic)."""

from __future__ import annotations

import asyncio

from sidecar.metrics import Counts
from sidecar.server import CEILING_RESET_SECONDS, ConnectionCap


class FakeTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.aborted = False

    def abort(self) -> None:
        self.aborted = True


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def open_many(cap: ConnectionCap, count: int) -> list[FakeTransport]:
    transports = []
    for _ in range(count):
        transport = FakeTransport()
        cap.opened(object(), transport)
        transports.append(transport)
    return transports


def test_beyond_the_cap_the_oldest_connection_is_closed() -> None:
    """The 11th connection under a cap of 10 closes the first, and only it."""
    counts = Counts()
    cap = ConnectionCap(10, counts)
    transports = open_many(cap, 11)
    assert [t.aborted for t in transports] == [True] + [False] * 10
    assert counts.connections_evicted == 1


def test_accept_errors_lower_the_cap_once_per_burst_and_it_recovers() -> None:
    """Out of descriptors: the cap drops under what is open, once per burst; back after a
    quiet minute."""
    clock = Clock()
    cap = ConnectionCap(100, Counts(), monotonic=clock)
    transports = open_many(cap, 40)
    for _ in range(50):  # one burst of failed accepts
        cap.out_of_descriptors()
    assert cap.limit == 32
    assert sum(t.aborted for t in transports) == 8
    clock.now += CEILING_RESET_SECONDS
    assert cap.limit == 100
