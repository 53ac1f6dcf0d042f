"""The tcp check against real sockets: listeners, refusals, a full accept queue, bad names."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import socket
import ssl
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field

import pytest
from support import LOOPBACK, SLACK, free_port, wait_until_async
from support.faultproxy import ProxyFactory

from sidecar.checks.failures import SOCKET, classify
from sidecar.checks.tcp import TcpCheck, TcpSpec
from sidecar.checkspec import CheckPolicy
from sidecar.loop import CheckLoop
from sidecar.reasons import CheckFailed, Reason
from sidecar.state import Board


@dataclass
class Listener:
    """A real TCP server that records each connection and what was sent on it."""

    port: int = 0
    accepted: int = 0
    closed_by_peer: int = 0
    received: bytearray = field(default_factory=bytearray)
    handlers: set[asyncio.Task[None]] = field(default_factory=set)
    writers: list[asyncio.StreamWriter] = field(default_factory=list)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        self.writers.append(writer)
        task = asyncio.current_task()
        assert task is not None
        self.handlers.add(task)
        try:
            # Read until the check closes its end: EOF means it hung up politely.
            while data := await reader.read(1024):
                self.received += data
            self.closed_by_peer += 1
        except OSError:
            pass
        finally:
            writer.close()

    async def close_connections(self) -> None:
        """Close what is still open and let every handler finish while the loop still runs
        (a socket left to the garbage collector would be an unclosed-resource warning)."""
        for writer in self.writers:
            writer.close()
        if self.handlers:
            await asyncio.wait(self.handlers, timeout=5)
        for writer in self.writers:
            with contextlib.suppress(OSError):
                await asyncio.wait_for(writer.wait_closed(), 5)


@pytest.fixture
async def listener() -> AsyncIterator[Listener]:
    """A listener on a free loopback port; it and its connections are closed after the test."""
    state = Listener()
    server = await asyncio.start_server(state.handle, LOOPBACK, 0)
    state.port = server.sockets[0].getsockname()[1]
    try:
        yield state
    finally:
        server.close()
        await state.close_connections()


@pytest.fixture
def unanswered_port() -> Iterator[int]:
    """A port whose SYNs the kernel drops: a listener with a full accept queue.

    A real blackhole at the handshake. (FaultProxy's blackhole accepts the connection and
    stalls only the bytes after it, which a check that sends nothing cannot see.)
    """
    with contextlib.ExitStack() as stack:
        server = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
        server.bind((LOOPBACK, 0))
        server.listen(0)  # never accept(): one queued connection fills a backlog of 0
        port: int = server.getsockname()[1]
        for _ in range(2):
            filler = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            filler.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                filler.connect((LOOPBACK, port))
        yield port


def passing(board: Board, name: str) -> bool:
    """Whether the board shows `name` passing (False before its first result)."""
    state = board.states.get(name)
    return state is not None and state.passing


def tcp(host: str, port: int) -> TcpCheck:
    return TcpCheck(TcpSpec(name="cache", host=host, port=port))


async def failure(check: TcpCheck) -> CheckFailed:
    """Run the check, which must fail, and return how."""
    with pytest.raises(CheckFailed) as caught:
        async with asyncio.timeout(10):
            await check.run()
    return caught.value


async def test_passes_against_a_listener_and_hangs_up_each_time(listener: Listener) -> None:
    """Each run opens one connection, sends nothing, and closes it: nothing is left open."""
    check = tcp(LOOPBACK, listener.port)
    assert check.name == "cache"
    for _ in range(3):
        await check.run()
    await wait_until_async(lambda: listener.closed_by_peer == 3, timeout=5, message="3 hang-ups")
    assert listener.accepted == 3
    assert bytes(listener.received) == b""


async def test_nothing_listening_is_connection_refused() -> None:
    """A free port with no listener fails with connection_refused."""
    assert (await failure(tcp(LOOPBACK, free_port()))).reason is Reason.CONNECTION_REFUSED


async def test_unresolvable_name_is_dns_failure() -> None:
    """A name in the reserved .invalid domain fails with dns_failure."""
    failed = await failure(tcp("no-such-host.invalid", 6379))
    assert failed.reason is Reason.DNS_FAILURE


async def test_dropped_handshake_times_out_within_the_bound(unanswered_port: int) -> None:
    """A connect the network never answers ends as timeout at the prober's bound."""
    board = Board()
    spec = TcpSpec(
        name="cache", host=LOOPBACK, port=unanswered_port, policy=CheckPolicy(timeout=0.5)
    )
    prober = CheckLoop(spec, TcpCheck(spec), board)
    started = time.monotonic()
    result = await prober.run_once()
    assert result.reason is Reason.TIMEOUT
    assert 0.4 <= time.monotonic() - started < 0.5 + SLACK


async def test_cancellation_is_not_turned_into_a_failure(unanswered_port: int) -> None:
    """Cancelling a run mid-connect propagates CancelledError, never a CheckFailed."""
    task = asyncio.create_task(tcp(LOOPBACK, unanswered_port).run())
    await asyncio.sleep(0.2)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_prober_shows_refusal_and_recovery_on_the_board(
    listener: Listener, make_fault_proxy: ProxyFactory
) -> None:
    """End to end: passing, then connection_refused while the path refuses, then passing."""
    proxy = make_fault_proxy(LOOPBACK, listener.port)
    board = Board()
    policy = CheckPolicy(interval=0.1, timeout=1.0, backoff_max=0.2)
    spec = TcpSpec(name="cache", host=LOOPBACK, port=proxy.port, policy=policy)
    prober = CheckLoop(spec, TcpCheck(spec), board)
    task = asyncio.create_task(prober.run())
    try:
        await wait_until_async(lambda: passing(board, "cache"), timeout=5, message="pass")
        await asyncio.to_thread(proxy.refuse)
        await wait_until_async(lambda: not passing(board, "cache"), timeout=5, message="fail")
        last = board.states["cache"].last
        assert last is not None
        assert last.reason is Reason.CONNECTION_REFUSED
        await asyncio.to_thread(proxy.forward)
        await wait_until_async(lambda: passing(board, "cache"), timeout=5, message="heal")
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        # A connection the proxy is accepting at the instant it stops is never closed (a
        # resource warning later): let it take in and finish the check's last one first.
        await asyncio.sleep(0.3)
        await wait_until_async(lambda: proxy.connection_count == 0, timeout=5, message="idle")


@pytest.mark.parametrize(
    ("exc", "reason"),
    [
        (TimeoutError(), Reason.TIMEOUT),
        (ConnectionRefusedError(errno.ECONNREFUSED, "refused"), Reason.CONNECTION_REFUSED),
        (ConnectionResetError(errno.ECONNRESET, "reset"), Reason.CONNECTION_RESET),
        (BrokenPipeError(errno.EPIPE, "pipe"), Reason.CONNECTION_RESET),
        (OSError(errno.ECONNRESET, "reset, as a library's own OSError"), Reason.CONNECTION_RESET),
        (OSError(errno.ETIMEDOUT, "kernel gave up"), Reason.TIMEOUT),
        (socket.gaierror(socket.EAI_NONAME, "unknown"), Reason.DNS_FAILURE),
        (ssl.SSLError(1, "handshake"), Reason.TLS_ERROR),
        (ssl.SSLCertVerificationError(1, "self-signed"), Reason.TLS_ERROR),
        (
            OSError(
                "Multiple exceptions: [Errno 111] Connect call failed ('127.0.0.1', 1), "
                "[Errno 99] Cannot assign requested address"
            ),
            Reason.CONNECTION_REFUSED,
        ),
        (OSError(errno.EHOSTUNREACH, "no route"), Reason.NETWORK_ERROR),
    ],
)
def test_socket_errors_map_to_fixed_reasons(exc: BaseException, reason: Reason) -> None:
    """Each socket-level error maps to its one reason (the table http.py reuses)."""
    assert classify(exc, SOCKET) is reason


@pytest.mark.parametrize(
    "exc", [asyncio.CancelledError(), KeyboardInterrupt(), SystemExit(0), ValueError("bug")]
)
def test_cancellation_exits_and_bugs_are_never_classified(exc: BaseException) -> None:
    """Cancellation and exits must propagate, and a bug is not a network fault."""
    assert classify(exc, SOCKET) is None
