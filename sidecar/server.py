"""Serving and draining.

aiohttp's `run_app` stops listening as soon as SIGTERM arrives; the contract here is the
opposite: keep answering (with /ready 503) for SIDECAR_DRAIN_SECONDS so kubelet and the
endpoints controller see the pod go unready before the sidecar disappears. So the signals
are ours, and aiohttp's runner does the graceful close afterwards.
"""

from __future__ import annotations

import asyncio
import signal
from typing import Final

import structlog
from aiohttp import web

from sidecar import __version__
from sidecar.app import BOARD
from sidecar.config import Settings

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

log = structlog.get_logger("sidecar.server")


async def serve(app: web.Application, settings: Settings) -> None:
    """Serve until SIGTERM/SIGINT, drain, then close cleanly."""
    loop = asyncio.get_running_loop()
    signals: asyncio.Queue[str] = asyncio.Queue()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, signals.put_nowait, sig.name)

    runner = web.AppRunner(
        app,
        handle_signals=False,
        access_log=None,
        shutdown_timeout=SHUTDOWN_TIMEOUT_SECONDS,
        keepalive_timeout=KEEPALIVE_TIMEOUT_SECONDS,
    )
    await runner.setup()
    try:
        site = web.TCPSite(
            runner, settings.host, settings.port, reuse_address=True, backlog=LISTEN_BACKLOG
        )
        await site.start()
        log.info(
            "sidecar.listening",
            host=settings.host,
            port=settings.port,
            version=__version__,
            database=settings.database.source,
        )
        received = await signals.get()
        app[BOARD].draining = True
        log.info("sidecar.draining", signal=received, drain_seconds=settings.drain_seconds)
        try:
            # A second signal cuts the drain short: the operator means it.
            second = await asyncio.wait_for(signals.get(), settings.drain_seconds)
            log.info("sidecar.drain_cut_short", signal=second)
        except TimeoutError:
            pass
    finally:
        await runner.cleanup()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
    log.info("sidecar.stopped")
