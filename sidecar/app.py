"""The app factory: routes, and one cleanup context that owns the check loops."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Final

import structlog
from aiohttp import web
from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector

from sidecar.checks import Check, CredentialsStatus
from sidecar.checkspec import CheckSpec
from sidecar.config import Settings
from sidecar.credentials import SecretsSink, ignore_secrets
from sidecar.exposition import Exposition
from sidecar.handlers import (
    Handler,
    make_check_handler,
    make_fallback_handlers,
    make_metrics_handler,
    make_probe_handler,
)
from sidecar.kinds import Needs, build
from sidecar.loop import CheckLoop, Clock, SystemClock
from sidecar.metrics import Counts, Metrics
from sidecar.render import Answers
from sidecar.resolver import DaemonExecutor
from sidecar.state import Board

BOARD: Final = web.AppKey("board", Board)
# A few checks start together, as the one check does: at once. More start this far apart (or
# closer, to all start within their first interval), so that hundreds of checks do not open
# hundreds of connections in the same millisecond, and stay spread out after (each loop keeps
# its own schedule).
START_TOGETHER_AT_MOST: Final = 16
START_SPACING_SECONDS: Final = 0.01
# With this many checks or fewer, /metrics renders on the event loop, in under 2 ms (0.8 ms for
# one check, 0.3 ms more for each other, on the bench's machine), and no render thread is started
# (sidecar.exposition). More render in a worker thread: 500 checks take 0.2 s of CPU a render.
RENDER_ON_LOOP_AT_MOST: Final = 4
COUNTS: Final = web.AppKey("counts", Counts)
# The resolver pool: the checks' name lookups, and the loop's default executor (server.serve).
RESOLVER: Final = web.AppKey("resolver", DaemonExecutor)

# Aliases follow the Kubernetes API server's own endpoint names.
ENDPOINT_ROUTES: Final = (
    ("health", ("/health", "/livez")),
    ("ready", ("/ready", "/readyz")),
    ("startup", ("/startup", "/startupz")),
)

log = structlog.get_logger("sidecar.app")


def create_app(
    settings: Settings,
    *,
    specs_and_checks: Sequence[tuple[CheckSpec, Check]] | None = None,
    registry: CollectorRegistry | None = None,
    clock: Clock | None = None,
    on_secrets: SecretsSink = ignore_secrets,
    dropped_log_lines: Callable[[], int] = lambda: 0,
) -> web.Application:
    """Build the application; nothing runs until the app starts (then the check loops do).

    `specs_and_checks` pairs each spec with the check that runs it; by default each check is
    built from the settings' specs by its kind (tests pass fakes). `on_secrets` learns every
    secret a rotated DSN file brings (logs.Pipeline.add_secrets). `dropped_log_lines` reads the
    log writer's drop count (logs.Pipeline.dropped_lines).
    """
    credentials: dict[str, CredentialsStatus] = {}
    resolver = DaemonExecutor()
    checks = specs_and_checks
    if checks is None:
        needs = Needs(
            resolver=resolver,
            max_connection_age=settings.max_connection_age,
            on_secrets=on_secrets,
        )
        built = [(spec, build(spec, needs)) for spec in settings.check_specs]
        checks = [(spec, b.check) for spec, b in built]
        credentials = {s.name: b.credentials for s, b in built if b.credentials is not None}
    # Unique: the check file's loader refuses a name used twice.
    names = [spec.name for spec, _ in checks]
    # auto_describe: prometheus-client's ?name[]= filter then finds the scrape-time families
    # (and the process ones) too, not only the metrics that describe themselves.
    registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
    clock = clock or SystemClock()
    board = Board()
    counts = Counts()
    metrics = Metrics(
        registry,
        board,
        check_names=names,
        monotonic=clock.monotonic,
        counts=counts,
        credentials=credentials,
        dropped_log_lines=dropped_log_lines,
    )
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    answers = Answers(board, names=names)

    app = web.Application()
    app[BOARD] = board
    app[COUNTS] = counts
    app[RESOLVER] = resolver
    exposition = Exposition(registry, on_loop=len(checks) <= RENDER_ON_LOOP_AT_MOST)
    _add_routes(app, answers, counts, exposition, clock, names)
    loops = [
        CheckLoop(
            spec,
            check,
            board,
            observer=metrics,
            clock=clock,
            first_delay=first_delay(index, len(checks), spec.policy.interval),
        )
        for index, (spec, check) in enumerate(checks)
    ]
    # Shutdown waits at most this long for the loops: the slowest check's timeout, plus slack.
    stop_timeout = max(spec.policy.timeout for spec, _ in checks) + 1

    async def run_loops(app: web.Application) -> AsyncIterator[None]:
        tasks: list[asyncio.Task[None]] = []
        for loop, name in zip(loops, names, strict=True):
            task = asyncio.create_task(loop.run(), name=f"prober:{name}")
            task.add_done_callback(_watch(board, name))
            tasks.append(task)
        yield
        for task in tasks:
            task.cancel()
        # A wedged check could ignore its cancellation; shutdown must not wait on it forever.
        _, pending = await asyncio.wait(tasks, timeout=stop_timeout)
        for task in pending:
            log.warning("prober.stop_timed_out", task=task.get_name())
        for name, (_, check) in zip(names, checks, strict=True):
            try:
                await check.close()
            except Exception as exc:  # noqa: BLE001 -- shutdown goes on whatever a check does
                log.warning("check.close_failed", check=name, error_type=type(exc).__name__)

    app.cleanup_ctx.append(run_loops)

    async def stop_renders(app: web.Application) -> None:
        exposition.close()

    app.on_cleanup.append(stop_renders)
    return app


def first_delay(index: int, count: int, interval: float) -> float:
    """Seconds before the first run of the `index`-th of `count` checks: none for a few
    checks; else START_SPACING_SECONDS apart, squeezed to fit within one `interval`."""
    if count <= START_TOGETHER_AT_MOST:
        return 0.0
    return index * min(START_SPACING_SECONDS, interval / count)


def _add_routes(  # noqa: PLR0917 -- one private call site
    app: web.Application,
    answers: Answers,
    counts: Counts,
    exposition: Exposition,
    clock: Clock,
    names: list[str],
) -> None:
    not_found, not_allowed = make_fallback_handlers(counts)
    view_for = {"health": answers.health, "ready": answers.ready, "startup": answers.startup}
    for name, paths in ENDPOINT_ROUTES:
        handler = make_probe_handler(name, view_for[name], counts, clock.monotonic)
        check_handler = None
        if name != "startup":  # one check's view, as kube-apiserver's /readyz/<check>
            check_handler = make_check_handler(
                name, functools.partial(answers.check, name), counts, clock.monotonic, tuple(names)
            )
        for path in paths:
            _add(app, path, handler, not_allowed)
            if check_handler is not None:
                _add(app, path + "/{check}", check_handler, not_allowed)
    metrics_handler = make_metrics_handler(exposition, counts)
    _add(app, "/metrics", metrics_handler, not_allowed)
    app.router.add_route("*", "/{tail:.*}", not_found)


def _add(app: web.Application, path: str, handler: Handler, not_allowed: Handler) -> None:
    resource = app.router.add_resource(path)
    resource.add_route("GET", handler)
    resource.add_route("HEAD", handler)  # aiohttp drops the body for HEAD
    resource.add_route("*", not_allowed)


def _watch(board: Board, name: str) -> Callable[[asyncio.Task[None]], None]:
    """Mark the board when a check loop ends for any reason but shutdown: /health goes 503."""

    def done(task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        board.mark_loop_stopped()
        exc = task.exception()
        log.error(
            "prober.stopped",
            check=name,
            error_type=type(exc).__name__ if exc else None,
        )

    return done
