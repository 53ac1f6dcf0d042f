"""Serving and draining.

aiohttp's `run_app` stops listening as soon as SIGTERM arrives; the contract here is the
opposite: keep answering (with /ready 503) for SIDECAR_DRAIN_SECONDS so kubelet and the
endpoints controller see the pod go unready before the sidecar disappears. So the signals
are ours, and aiohttp's runner does the graceful close afterwards.

The sockets are bound before the app starts (and with it the check loops): a taken port ends
the process before anything else has begun.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import gc
import resource
import signal
import socket
import time
from collections.abc import Callable
from typing import Any, Final

import structlog
from aiohttp import web

from sidecar import __version__
from sidecar.app import BOARD, COUNTS, RESOLVER
from sidecar.config import Settings
from sidecar.metrics import Counts

# Requests here take microseconds; this only bounds a client that never reads its answer.
SHUTDOWN_TIMEOUT_SECONDS: Final = 2.0
# How long a connection may sit idle, or stuck in a half-sent request, before it is closed.
# AppRunner's default is 3630 s (run_app's is 75 s), so any client that connects and sends
# nothing held a socket for an hour (tests/test_hostile_http.py, half-open slow clients).
# kubelet opens a connection per probe and Prometheus reconnects cheaply between scrapes.
KEEPALIVE_TIMEOUT_SECONDS: Final = 10.0
# Connections the kernel queues before we accept them (capped by net.core.somaxconn). With
# aiohttp's 128, a burst of a few hundred connects overflowed the queue; a dropped SYN is
# retried after 1 s, which is kubelet's default probe timeout (tests/test_hostile_http.py).
LISTEN_BACKLOG: Final = 1024
# File descriptors kept out of the connection cap: the database connection, the log pipe,
# the listening sockets, the DSN file, the interpreter's own.
FD_RESERVE: Final = 64
MIN_CONNECTIONS: Final = 8
# Connections closed at once when accept runs out of descriptors (the limit was lowered under
# us, or something else holds descriptors): room for the next few probes.
FD_SLACK: Final = 8
# A cap lowered by accept errors goes back up after this long without them.
CEILING_RESET_SECONDS: Final = 60.0
# Accept errors (out of file descriptors) come in bursts of hundreds a second; one line per
# interval with the count says the same.
ACCEPT_ERROR_LOG_INTERVAL_SECONDS: Final = 10.0
_ACCEPT_ERRNOS: Final = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
# TERM (kubelet), INT (a terminal) and QUIT (a graceful stop elsewhere, nginx's) drain; the
# others that would end the process with no drain and no line are logged and ignored.
DRAIN_SIGNALS: Final = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT)
IGNORED_SIGNALS: Final = (signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2)

log = structlog.get_logger("sidecar.server")


def bind(host: str, port: int) -> list[socket.socket]:
    """Listening sockets for `host`: `::` is every address family on one socket."""
    if host == "::":
        try:
            sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        except OSError:  # a kernel without IPv6 (ipv6.disable=1)
            return [_listen(socket.AF_INET, ("0.0.0.0", port))]  # noqa: S104 -- see SIDECAR_HOST
        with _closed_on_error(sock):
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            return [_listen(socket.AF_INET6, ("::", port), sock)]
    found = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE | socket.AI_ADDRCONFIG
    )
    sockets: list[socket.socket] = []
    try:
        for family, _, _, _, address in dict.fromkeys((f, 0, 0, "", a) for f, _, _, _, a in found):
            sockets.append(_listen(family, address))
    except OSError:
        for sock in sockets:
            sock.close()
        raise
    return sockets


@contextlib.contextmanager
def _closed_on_error(sock: socket.socket) -> Any:
    try:
        yield
    except BaseException:
        sock.close()
        raise


def _listen(family: int, address: Any, sock: socket.socket | None = None) -> socket.socket:
    sock = sock or socket.socket(family, socket.SOCK_STREAM)
    with _closed_on_error(sock):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6 and address[0] != "::":
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(address)
        sock.listen(LISTEN_BACKLOG)
        sock.setblocking(False)
    return sock


def connection_limit(wanted: int) -> int:
    """`wanted`, lowered so that the connections fit the open-files limit with room to spare."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return wanted
    return max(MIN_CONNECTIONS, min(wanted, soft - FD_RESERVE))


class ConnectionCap:
    """At most `wanted` open connections, fewer when the open-files limit is lower: a new one
    beyond the cap closes the oldest.

    The oldest is almost always an idle client (kubelet's requests take microseconds), so
    probes keep being answered at the cap, and the process does not run out of descriptors.
    The limit is read again at every connection (one getrlimit call): it can be lowered under
    a running process (prlimit), and an accept that fails anyway lowers the cap further.
    """

    def __init__(
        self,
        wanted: int,
        counts: Counts,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._wanted = wanted
        self._ceiling = wanted
        self._lowered_at = 0.0
        self._counts = counts
        self._monotonic = monotonic
        self._open: dict[object, asyncio.BaseTransport] = {}

    @property
    def limit(self) -> int:
        if self._ceiling < self._wanted and (
            self._monotonic() - self._lowered_at >= CEILING_RESET_SECONDS
        ):
            self._ceiling = self._wanted  # whatever held the descriptors has had time to go
        return min(self._ceiling, connection_limit(self._wanted))

    def watch(self, server: web.Server) -> None:
        """Count `server`'s connections: its own bookkeeping hooks, extended."""
        made, lost = server.connection_made, server.connection_lost

        def connection_made(handler: Any, transport: asyncio.Transport) -> None:
            made(handler, transport)
            self.opened(handler, transport)

        def connection_lost(handler: Any, exc: BaseException | None = None) -> None:
            self._open.pop(handler, None)
            lost(handler, exc)

        server.connection_made = connection_made  # type: ignore[method-assign]
        server.connection_lost = connection_lost  # type: ignore[method-assign]

    def opened(self, connection: object, transport: asyncio.BaseTransport) -> None:
        self._open[connection] = transport
        self._close_beyond(self.limit)

    def out_of_descriptors(self) -> None:
        """Accept failed for want of descriptors: something else holds them. Lower the cap
        under what is open now and close the oldest, so the next probe can be accepted.
        Once per burst: asyncio reports every failed accept of one readiness event."""
        now = self._monotonic()
        if self._ceiling < self._wanted and now - self._lowered_at < 1.0:
            return
        self._ceiling = max(MIN_CONNECTIONS, len(self._open) - FD_SLACK)
        self._lowered_at = now
        self._close_beyond(self._ceiling)

    def _close_beyond(self, limit: int) -> None:
        while len(self._open) > limit:
            oldest, oldest_transport = next(iter(self._open.items()))
            del self._open[oldest]
            self._counts.connections_evicted += 1
            with contextlib.suppress(Exception):
                oldest_transport.abort()  # type: ignore[attr-defined]


class AcceptErrors:
    """A loop exception handler: accept errors are counted, and logged once an interval."""

    def __init__(
        self,
        counts: Counts,
        on_error: Callable[[], None],
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._counts = counts
        self._on_error = on_error
        self._monotonic = monotonic
        self._unlogged = 0
        self._logged_at: float | None = None

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        if not (isinstance(exc, OSError) and exc.errno in _ACCEPT_ERRNOS):
            loop.default_exception_handler(context)
            return
        self._counts.accept_errors += 1
        self._on_error()
        self._unlogged += 1
        now = self._monotonic()
        if self._logged_at is None or now - self._logged_at >= ACCEPT_ERROR_LOG_INTERVAL_SECONDS:
            log.warning(
                "server.accept_failed",
                error=exc.strerror or type(exc).__name__,
                count=self._unlogged,
                interval_seconds=ACCEPT_ERROR_LOG_INTERVAL_SECONDS,
            )
            self._logged_at = now
            self._unlogged = 0


async def serve(app: web.Application, settings: Settings) -> None:
    """Bind, start, serve until TERM/INT/QUIT, drain, then close cleanly."""
    sockets = bind(settings.host, settings.port)
    loop = asyncio.get_running_loop()
    # asyncio resolves names in the default executor, whose threads exit would wait for.
    loop.set_default_executor(app[RESOLVER])
    counts = app[COUNTS]
    cap = ConnectionCap(connection_limit(settings.max_connections), counts)
    loop.set_exception_handler(AcceptErrors(counts, cap.out_of_descriptors))
    signals: asyncio.Queue[str] = asyncio.Queue()
    for sig in DRAIN_SIGNALS:
        loop.add_signal_handler(sig, signals.put_nowait, sig.name)
    for sig in IGNORED_SIGNALS:
        loop.add_signal_handler(sig, _ignored, sig.name)

    runner = web.AppRunner(
        app,
        handle_signals=False,
        access_log=None,
        shutdown_timeout=SHUTDOWN_TIMEOUT_SECONDS,
        keepalive_timeout=KEEPALIVE_TIMEOUT_SECONDS,
    )
    try:
        await runner.setup()
        if runner.server is None:
            raise RuntimeError("the runner is not set up")
        cap.watch(runner.server)
        for sock in sockets:
            site = web.SockSite(
                runner, sock, shutdown_timeout=SHUTDOWN_TIMEOUT_SECONDS, backlog=LISTEN_BACKLOG
            )
            await site.start()
        # What start-up built (modules, settings, the checks, the app) lives as long as the
        # process: out of the collector's sight, a full collection no longer walks it again,
        # which with hundreds of checks held the GIL (and every probe) for a few 100 ms. Start-up's
        # garbage (import-time cycles, the classes dataclass(slots=True) replaces) is collected
        # first: frozen, it would be kept for the life of the process.
        gc.collect()
        gc.freeze()
        log.info(
            "sidecar.listening",
            host=settings.host,
            port=settings.port,
            addresses=[sock.getsockname()[0] for sock in sockets],
            max_connections=cap.limit,
            version=__version__,
            # Where the environment's database comes from, when a check uses it.
            database=settings.database.source if settings.uses_environment_database else None,
        )
        received = await signals.get()
        app[BOARD].start_draining()
        log.info("sidecar.draining", signal=received, drain_seconds=settings.drain_seconds)
        try:
            # A second signal cuts the drain short: the operator means it.
            second = await asyncio.wait_for(signals.get(), settings.drain_seconds)
            log.info("sidecar.drain_cut_short", signal=second)
        except TimeoutError:
            pass
    finally:
        await runner.cleanup()
        for sock in sockets:
            sock.close()
        for sig in (*DRAIN_SIGNALS, *IGNORED_SIGNALS):
            loop.remove_signal_handler(sig)
    log.info("sidecar.stopped")


def _ignored(name: str) -> None:
    # No configuration to reload: settings are read once, a DSN file is watched anyway.
    log.info("sidecar.signal_ignored", signal=name)
