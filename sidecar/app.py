"""The app factory: routes, and one cleanup context that owns the probe loops."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Final

import structlog
from aiohttp import web
from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector

from sidecar.checks import Check
from sidecar.checks.postgres import PostgresCheck
from sidecar.checkspec import ProbePolicy
from sidecar.config import Settings
from sidecar.handlers import (
    make_fallback_handlers,
    make_metrics_handler,
    make_probe_handler,
)
from sidecar.metrics import Metrics, RequestCounts
from sidecar.prober import Clock, Prober, SystemClock
from sidecar.render import Views
from sidecar.state import Board

BOARD: Final = web.AppKey("board", Board)
REGISTRY: Final = web.AppKey("registry", CollectorRegistry)
SETTINGS: Final = web.AppKey("settings", Settings)
PROBER_TASKS: Final = web.AppKey("prober_tasks", list["asyncio.Task[None]"])

# Aliases follow the Kubernetes API server's own endpoint names.
PROBE_ROUTES: Final = (
    ("health", ("/health", "/livez")),
    ("ready", ("/ready", "/readyz")),
    ("startup", ("/startup", "/startupz")),
)

log = structlog.get_logger("sidecar.app")


def create_app(
    settings: Settings,
    *,
    checks: Sequence[Check] | None = None,
    registry: CollectorRegistry | None = None,
    clock: Clock | None = None,
    board: Board | None = None,
) -> web.Application:
    """Build the application; nothing runs until the app starts (then the probers do)."""
    checks = list(checks) if checks is not None else [PostgresCheck(settings.database)]
    registry = registry if registry is not None else CollectorRegistry()
    clock = clock or SystemClock()
    board = board if board is not None else Board()
    counts = RequestCounts()
    metrics = Metrics(
        registry,
        board,
        check_names=[check.name for check in checks],
        check_timeout=settings.check_timeout,
        freshness=settings.freshness_seconds,
        monotonic=clock.monotonic,
        requests=counts,
    )
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    views = Views(board, check_timeout=settings.check_timeout, freshness=settings.freshness_seconds)

    app = web.Application()
    app[BOARD] = board
    app[REGISTRY] = registry
    app[SETTINGS] = settings
    app[PROBER_TASKS] = []

    not_found, not_allowed = make_fallback_handlers(counts)
    view_for = {"health": views.health, "ready": views.ready, "startup": views.startup}
    for name, paths in PROBE_ROUTES:
        handler = make_probe_handler(name, view_for[name], counts, clock.monotonic)
        for path in paths:
            resource = app.router.add_resource(path, name=path.strip("/"))
            resource.add_route("GET", handler)
            resource.add_route("HEAD", handler)  # aiohttp drops the body for HEAD
            resource.add_route("*", not_allowed)
    metrics_resource = app.router.add_resource("/metrics", name="metrics")
    metrics_handler = make_metrics_handler(registry, counts)
    metrics_resource.add_route("GET", metrics_handler)
    metrics_resource.add_route("HEAD", metrics_handler)
    metrics_resource.add_route("*", not_allowed)
    app.router.add_route("*", "/{tail:.*}", not_found)

    policy = ProbePolicy(
        interval=settings.check_interval,
        timeout=settings.check_timeout,
        backoff_max=settings.backoff_max,
        failure_threshold=settings.failure_threshold,
        success_threshold=settings.success_threshold,
    )
    probers = [Prober(c, board, policy, observer=metrics, clock=clock) for c in checks]

    async def run_probers(app: web.Application) -> AsyncIterator[None]:
        tasks = app[PROBER_TASKS]
        for prober, check in zip(probers, checks, strict=True):
            task = asyncio.create_task(prober.run(), name=f"prober:{check.name}")
            task.add_done_callback(_watch(board, check.name))
            tasks.append(task)
        yield
        for task in tasks:
            task.cancel()
        # A wedged check could ignore its cancellation; shutdown must not wait on it forever.
        _, pending = await asyncio.wait(tasks, timeout=settings.check_timeout + 1)
        for task in pending:
            log.warning("prober.stop_timed_out", task=task.get_name())
        for check in checks:
            try:
                await check.close()
            except Exception as exc:  # noqa: BLE001 -- shutdown goes on whatever a check does
                log.warning("check.close_failed", check=check.name, error_type=type(exc).__name__)

    app.cleanup_ctx.append(run_probers)
    return app


def _watch(board: Board, name: str) -> Callable[[asyncio.Task[None]], None]:
    """Mark the board when a probe loop ends for any reason but shutdown: /health goes 503."""

    def done(task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        board.prober_stopped = True
        exc = task.exception()
        log.error(
            "prober.stopped",
            check=name,
            error_type=type(exc).__name__ if exc else None,
        )

    return done
