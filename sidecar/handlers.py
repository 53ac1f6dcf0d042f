"""Request handlers: trivial reads of cached state. No I/O, no await on a dependency. Ever."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Final

from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy
from prometheus_client import CollectorRegistry
from prometheus_client.aiohttp import make_aiohttp_handler

from sidecar.metrics import RequestCounts
from sidecar.render import CONTENT_TYPE, Rendered, Views, encode

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# Probe answers must never be served from a cache between kubelet and the sidecar.
_HEADERS: Final = CIMultiDictProxy(
    CIMultiDict({"Content-Type": CONTENT_TYPE, "Cache-Control": "no-store"})
)
_FALSE_WORDS: Final = frozenset({"0", "false", "no", "off"})


def _respond(rendered: Rendered) -> web.Response:
    status, body = rendered
    return web.Response(body=body, status=status, headers=_HEADERS)


def _error(status: int, message: str) -> web.Response:
    return _respond((status, encode({"status": "fail", "output": message})))


def _verbose(request: web.Request) -> bool | web.Response:
    """Parse the query: `verbose` (a flag) is the only parameter; anything else is a 400."""
    query = request.query
    for key in query:
        if key != "verbose":
            shown = key[:40].encode("ascii", "replace").decode()
            return _error(400, f"unknown query parameter {shown!r}; only 'verbose' is accepted")
    value = query.get("verbose")
    return value is not None and value.lower() not in _FALSE_WORDS


def make_probe_handler(
    name: str,
    view: Callable[..., Rendered],
    counts: RequestCounts,
    monotonic: Callable[[], float],
) -> Handler:
    async def handler(request: web.Request) -> web.Response:
        if request.query_string:
            verbose = _verbose(request)
            if isinstance(verbose, web.Response):
                counts.hit(name, verbose.status)
                return verbose
            response = _respond(view(monotonic(), verbose=verbose))
        else:
            response = _respond(view(monotonic()))
        counts.hit(name, response.status)
        return response

    handler.__name__ = f"{name}_handler"
    return handler


def make_metrics_handler(registry: CollectorRegistry, counts: RequestCounts) -> Handler:
    # prometheus-client's own handler does the content negotiation (OpenMetrics on Accept).
    inner = make_aiohttp_handler(registry)

    async def metrics_handler(request: web.Request) -> web.StreamResponse:
        response = await inner(request)
        response.headers["Cache-Control"] = "no-store"
        counts.hit("metrics", response.status)
        return response

    return metrics_handler


def make_fallback_handlers(counts: RequestCounts) -> tuple[Handler, Handler]:
    """404 for unknown paths and 405 for other methods, with the same headers and counting."""

    async def not_found(request: web.Request) -> web.Response:
        counts.hit("other", 404)
        return _error(404, "not found; try /health, /ready, /startup or /metrics")

    async def not_allowed(request: web.Request) -> web.Response:
        counts.hit("other", 405)
        response = _error(405, "method not allowed; use GET or HEAD")
        response.headers["Allow"] = "GET, HEAD"
        return response

    return not_found, not_allowed


__all__ = ["Views", "make_fallback_handlers", "make_metrics_handler", "make_probe_handler"]
