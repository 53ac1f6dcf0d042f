"""A fault-injecting TCP proxy for hangs, resets, refusals and latency.

`FaultProxy(target_host, target_port)` listens on a free 127.0.0.1 port and runs its own asyncio
loop in a daemon thread, so it serves an in-process aiohttp app under test and a sidecar
subprocess alike. The test thread switches modes at any time; each switch has taken effect when
the call returns:

- `forward()`: pass bytes both ways (the starting mode; also clears a delay and a blackhole).
- `blackhole()`: new connections are accepted but never connected upstream or answered; open
  connections stop forwarding in both directions (a stall mid-query). Nothing is dropped:
  `forward()` lets the held bytes through, like a healed network partition.
- `refuse()`: the listener is closed, so new connections get ECONNREFUSED; open ones carry on.
- `reset()`: every open connection is reset (RST: SO_LINGER 0, then close), and so is each new
  one as soon as it is accepted.
- `delay(seconds)`: each chunk is held `seconds` before it is passed on, in both directions, so a
  request/response round trip takes at least 2 x `seconds` longer.

`close_all()` closes every open connection normally (FIN). `stop()` (or leaving the `with`
block) tears everything down within a few seconds whatever the mode.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import socket
import struct
import threading
from collections.abc import Coroutine
from types import TracebackType
from typing import Any, Final, Protocol, Self, TypeVar

from . import LOOPBACK

__all__ = ["FaultProxy", "Mode", "ProxyFactory"]

CHUNK_BYTES: Final = 64 * 1024
# Chunks read ahead per direction while delayed or blackholed; then the reader waits (TCP
# backpressure reaches the sender).
QUEUE_CHUNKS: Final = 64
CONTROL_TIMEOUT_SECONDS: Final = 10.0
UPSTREAM_CONNECT_TIMEOUT_SECONDS: Final = 10.0
STOP_TIMEOUT_SECONDS: Final = 5.0
LINGER_ZERO: Final = struct.pack("ii", 1, 0)

T = TypeVar("T")

_log = logging.getLogger(__name__)


class Mode(enum.Enum):
    FORWARD = "forward"
    BLACKHOLE = "blackhole"
    REFUSE = "refuse"
    RESET = "reset"


class ProxyFactory(Protocol):
    """The `make_fault_proxy` fixture: a started proxy, stopped at teardown."""

    def __call__(self, target_host: str, target_port: int) -> FaultProxy: ...


def _abort(writer: asyncio.StreamWriter, *, rst: bool) -> None:
    """Close at once; with `rst`, SO_LINGER 0 makes the kernel send RST instead of FIN."""
    transport = writer.transport
    if transport.is_closing():
        return
    if rst:
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_ZERO)
    transport.abort()


class _Connection:
    """One client connection and, once made, its upstream connection."""

    __slots__ = ("client", "task", "upstream")

    def __init__(self, client: asyncio.StreamWriter) -> None:
        self.client = client
        self.upstream: asyncio.StreamWriter | None = None
        self.task: asyncio.Task[Any] | None = None

    def close_transports(self, *, rst: bool) -> None:
        _abort(self.client, rst=rst)
        if self.upstream is not None:
            _abort(self.upstream, rst=rst)

    def abort(self, *, rst: bool) -> None:
        """Close both ends and cancel the task serving them."""
        self.close_transports(rst=rst)
        if self.task is not None and not self.task.done():
            self.task.cancel()


class FaultProxy:
    """A TCP proxy to `target_host:target_port` on 127.0.0.1:`port`, started on construction."""

    def __init__(self, target_host: str, target_port: int, *, host: str = LOOPBACK) -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.host = host
        self.port = 0
        self._mode = Mode.FORWARD
        self._delay_seconds = 0.0
        self._accepted_total = 0
        self._connections: set[_Connection] = set()
        self._server: asyncio.Server | None = None
        self._stopped = False
        self._loop = asyncio.new_event_loop()
        self._flowing: asyncio.Event | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(
            target=self._run_loop, name=f"fault-proxy->{target_host}:{target_port}", daemon=True
        )
        self._thread.start()
        if not self._ready.wait(CONTROL_TIMEOUT_SECONDS):
            raise RuntimeError("fault proxy loop did not start")
        try:
            self._control(self._listen())
        except BaseException:
            self.stop()
            raise

    # ---- what tests read ---------------------------------------------------------------------

    @property
    def mode(self) -> Mode:
        return self._mode

    @property
    def delay_seconds(self) -> float:
        return self._delay_seconds

    @property
    def connection_count(self) -> int:
        """Client connections open through the proxy now."""
        return len(self._connections)

    @property
    def accepted_total(self) -> int:
        """Client connections accepted since the proxy started (whatever became of them)."""
        return self._accepted_total

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port)

    @property
    def is_running(self) -> bool:
        """True until stop() has ended the proxy's thread."""
        return self._thread.is_alive()

    def __repr__(self) -> str:
        return (
            f"<FaultProxy {self.host}:{self.port} -> {self.target_host}:{self.target_port}"
            f" mode={self._mode.value} delay={self._delay_seconds:g}s"
            f" open={self.connection_count}>"
        )

    # ---- switching modes (from any thread but the proxy's own) -------------------------------

    def forward(self) -> None:
        """Pass bytes through untouched; releases anything a blackhole held."""
        self._control(self._set(Mode.FORWARD, delay=0.0, flowing=True, listening=True))

    def blackhole(self) -> None:
        """Accept but never answer; stall open connections in both directions."""
        self._control(self._set(Mode.BLACKHOLE, delay=0.0, flowing=False, listening=True))

    def refuse(self) -> None:
        """Close the listener: new connections are refused, open ones keep forwarding."""
        self._control(self._set(Mode.REFUSE, delay=0.0, flowing=True, listening=False))

    def reset(self) -> None:
        """RST every open connection, and every new one as soon as it is accepted."""
        self._control(self._set(Mode.RESET, delay=0.0, flowing=True, listening=True))

    def delay(self, seconds: float) -> None:
        """Forward, holding each chunk `seconds` (per direction) before passing it on."""
        if seconds < 0:
            raise ValueError("delay must be >= 0")
        self._control(self._set(Mode.FORWARD, delay=seconds, flowing=True, listening=True))

    def close_all(self) -> None:
        """Close every open connection normally (FIN to both ends; the kernel still sends RST
        where received bytes were left unread); the mode stays."""
        self._control(self._abort_all(rst=False))

    def stop(self) -> None:
        """Close the listener and every connection, end the loop and its thread. Idempotent;
        bounded by a few seconds even with stalled connections."""
        if self._stopped:
            return
        self._stopped = True
        if self._loop.is_running():
            with contextlib.suppress(Exception):
                self._control(self._shutdown(), timeout=STOP_TIMEOUT_SECONDS, allow_stopped=True)
            self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(STOP_TIMEOUT_SECONDS)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # ---- the loop thread ---------------------------------------------------------------------

    def _run_loop(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._loop.call_soon(self._ready.set)
        try:
            self._loop.run_forever()
        finally:
            # Whatever stop() could not finish: cancel it, give it a moment, close the loop.
            pending = asyncio.all_tasks(self._loop)
            for task in pending:
                task.cancel()
            if pending:
                gathered = asyncio.gather(*pending, return_exceptions=True)
                with contextlib.suppress(Exception):
                    self._loop.run_until_complete(asyncio.wait_for(gathered, STOP_TIMEOUT_SECONDS))
            self._loop.close()

    def _control(
        self,
        coro: Coroutine[Any, Any, T],
        *,
        timeout: float = CONTROL_TIMEOUT_SECONDS,
        allow_stopped: bool = False,
    ) -> T:
        if threading.current_thread() is self._thread:
            coro.close()
            raise RuntimeError("FaultProxy is controlled from test code, not from its own loop")
        if self._stopped and not allow_stopped:
            coro.close()
            raise RuntimeError(f"{self!r} is stopped")
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return future.result(timeout)

    async def _set(self, mode: Mode, *, delay: float, flowing: bool, listening: bool) -> None:
        assert self._flowing is not None
        self._mode = mode
        self._delay_seconds = delay
        if mode is Mode.RESET:
            await self._abort_all(rst=True)
        if listening:
            await self._listen()
        else:
            self._close_listener()
        if flowing:
            self._flowing.set()
        else:
            self._flowing.clear()

    async def _listen(self) -> None:
        if self._server is not None:
            return
        # The first bind takes a free port; later ones (after refuse()) reuse it.
        self._server = await asyncio.start_server(
            self._accept, self.host, self.port, reuse_address=True
        )
        self.port = self._server.sockets[0].getsockname()[1]

    def _close_listener(self) -> None:
        if self._server is not None:
            # Not wait_closed(): on 3.12+ it waits for every open connection to end.
            self._server.close()
            self._server = None

    async def _abort_all(self, *, rst: bool) -> None:
        connections = list(self._connections)
        for connection in connections:
            connection.abort(rst=rst)
        tasks = [c.task for c in connections if c.task is not None]
        if tasks:
            await asyncio.wait(tasks, timeout=STOP_TIMEOUT_SECONDS)

    async def _shutdown(self) -> None:
        self._close_listener()
        await self._abort_all(rst=False)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connection = _Connection(writer)
        connection.task = asyncio.current_task()
        self._connections.add(connection)
        self._accepted_total += 1
        try:
            await self._serve(connection, reader)
        except asyncio.CancelledError:
            # close_all()/stop() cancel the task. It must still end normally: on 3.11 the
            # start_server callback calls task.exception(), which raises for a cancelled task.
            _log.debug("fault_proxy.connection_cancelled")
        finally:
            self._connections.discard(connection)
            connection.close_transports(rst=False)

    async def _serve(self, connection: _Connection, client_reader: asyncio.StreamReader) -> None:
        assert self._flowing is not None
        if self._mode is Mode.RESET:
            _abort(connection.client, rst=True)
            return
        # A blackhole holds new connections before they reach the server.
        await self._flowing.wait()
        try:
            upstream_reader, upstream = await asyncio.wait_for(
                asyncio.open_connection(self.target_host, self.target_port),
                UPSTREAM_CONNECT_TIMEOUT_SECONDS,
            )
        except (OSError, TimeoutError):
            # Nothing upstream: the nearest thing to a refusal we can give an accepted client.
            _abort(connection.client, rst=True)
            return
        connection.upstream = upstream
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self._pipe(client_reader, upstream))
                group.create_task(self._pipe(upstream_reader, connection.client))
        except* OSError as ended:
            # A peer reset or closed the socket under us: the connection just ends.
            _log.debug("fault_proxy.connection_ended: %r", ended.exceptions)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One direction: read chunks as they come, pass each on when its delay is up and the
        proxy is not blackholed; pass EOF on as a half-close."""
        assert self._flowing is not None
        flowing = self._flowing
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue(QUEUE_CHUNKS)

        async def read_side() -> None:
            while True:
                data = await reader.read(CHUNK_BYTES)
                await queue.put((loop.time() + self._delay_seconds, data))
                if not data:
                    return

        async def write_side() -> None:
            while True:
                due, data = await queue.get()
                if (wait := due - loop.time()) > 0:
                    await asyncio.sleep(wait)
                await flowing.wait()
                if not data:
                    if writer.can_write_eof():
                        writer.write_eof()
                    return
                writer.write(data)
                await writer.drain()

        async with asyncio.TaskGroup() as group:
            group.create_task(read_side())
            group.create_task(write_side())
