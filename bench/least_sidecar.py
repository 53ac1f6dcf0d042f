"""The least sidecar with the default pod's job and the same five dependencies: a yardstick.

    cd bench && python -m least_sidecar        (bench.scale runs it beside the trees)

What the default sidecar does, in the fewest lines that still do it: one asyncpg connection,
`SELECT 1` every SIDECAR_CHECK_INTERVAL (5 s) within a 2 s timeout, a new connection after a
failure, retries with backoff's jittered exponential delays (capped at 30 s); /health, /ready
and /startup answered from that cached state, /metrics from an explicit prometheus-client
registry (an up gauge, a duration histogram, a counter, the process and platform collectors);
structlog JSON lines; SIGTERM drains (/ready 503) for SIDECAR_DRAIN_SECONDS. It reads the
settings bench.scale sets (the DSN file, host, port, drain) and nothing else.

None of the sidecar's robustness (secrets scrubbed, a log pipe that cannot block, a connection
cap, bounded name lookups, several checks, a check file): its RSS above the five dependencies'
import floor is what any implementation of this job with these dependencies pays at least.
Not a product, and imported by nothing.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import asyncpg
import backoff
import prometheus_client
import structlog
from aiohttp import web
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)

INTERVAL_SECONDS = 5.0
TIMEOUT_SECONDS = 2.0
BACKOFF_MAX_SECONDS = 30.0


class Sidecar:
    """The cached state of the one postgres check, and its metrics."""

    def __init__(self, dsn: str, registry: CollectorRegistry) -> None:
        self.dsn = dsn
        self.passing: bool | None = None  # None until the first check ends
        self.started = False
        self.draining = False
        self.up = Gauge("sidecar_check_up", "1 when the last check passed", registry=registry)
        self.seconds = Histogram("sidecar_check_seconds", "check duration", registry=registry)
        self.total = Counter("sidecar_check", "checks run", ["outcome"], registry=registry)
        self.log = structlog.get_logger("sidecar")

    async def run(self) -> None:
        conn: Any = None
        delays = backoff.expo(max_value=BACKOFF_MAX_SECONDS)
        next(delays)  # the generator's first value is None
        while True:
            started = time.monotonic()
            try:
                if conn is None:
                    conn = await asyncpg.connect(self.dsn, timeout=TIMEOUT_SECONDS)
                await conn.execute("SELECT 1", timeout=TIMEOUT_SECONDS)
            except Exception as exc:  # noqa: BLE001 -- whatever fails, the check failed
                self._record(False, started, type(exc).__name__)
                if conn is not None:
                    conn.terminate()
                conn = None
                await asyncio.sleep(backoff.full_jitter(next(delays)))
                continue
            self._record(True, started, None)
            delays = backoff.expo(max_value=BACKOFF_MAX_SECONDS)
            next(delays)
            await asyncio.sleep(INTERVAL_SECONDS)

    def _record(self, passed: bool, started: float, error: str | None) -> None:
        self.seconds.observe(time.monotonic() - started)
        self.total.labels("pass" if passed else "fail").inc()
        self.up.set(passed)
        if passed != self.passing:
            self.log.info("check.changed", check="postgres", passing=passed, error=error)
        self.passing = passed
        self.started = self.started or passed


def routes(sidecar: Sidecar, registry: CollectorRegistry) -> list[web.RouteDef]:
    def answer(ok: bool) -> web.Response:
        return web.json_response({"status": "pass" if ok else "fail"}, status=200 if ok else 503)

    async def health(_: web.Request) -> web.Response:
        return answer(True)

    async def ready(_: web.Request) -> web.Response:
        return answer(bool(sidecar.passing) and not sidecar.draining)

    async def startup(_: web.Request) -> web.Response:
        return answer(sidecar.started)

    async def metrics(_: web.Request) -> web.Response:
        body = prometheus_client.generate_latest(registry)
        return web.Response(body=body, content_type="text/plain", charset="utf-8")

    return [
        web.get("/health", health),
        web.get("/ready", ready),
        web.get("/startup", startup),
        web.get("/metrics", metrics),
    ]


async def main(dsn: str) -> None:
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.JSONRenderer(),
        ],
        logger_factory=structlog.PrintLoggerFactory(sys.stdout),
    )
    prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    sidecar = Sidecar(dsn, registry)
    app = web.Application()
    app.add_routes(routes(sidecar, registry))
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    host = os.environ.get("SIDECAR_HOST", "::")
    await web.TCPSite(runner, host, int(os.environ.get("SIDECAR_PORT", "8081"))).start()
    check = asyncio.create_task(sidecar.run())
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    sidecar.log.info("sidecar.listening", host=host)
    await stop.wait()
    sidecar.draining = True
    await asyncio.sleep(float(os.environ.get("SIDECAR_DRAIN_SECONDS", "5")))
    check.cancel()
    await runner.cleanup()


if __name__ == "__main__":
    asyncio.run(main(Path(os.environ["SIDECAR_DATABASE_URL_FILE"]).read_text().strip()))
