"""Request handlers: trivial reads of cached state. No I/O, no await on a dependency. Ever."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Final

from aiohttp import hdrs, web
from multidict import CIMultiDict, CIMultiDictProxy

from sidecar.checkspec import NAME_PATTERN
from sidecar.exposition import Body, Exposition
from sidecar.metrics import Counts
from sidecar.negotiation import name_of, weighted
from sidecar.render import CONTENT_TYPE, PLAIN, TEXT_CONTENT_TYPE, Query, Rendered, encode

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
View = Callable[[float, Query], Rendered]
CheckView = Callable[[str, float, Query], Rendered | None]


def _headers(content_type: str) -> CIMultiDictProxy[str]:
    # Probe answers must never be served from a cache between kubelet and the sidecar.
    return CIMultiDictProxy(
        CIMultiDict({"Content-Type": content_type, "Cache-Control": "no-store"})
    )


_HEADERS: Final = {
    CONTENT_TYPE: _headers(CONTENT_TYPE),
    TEXT_CONTENT_TYPE: _headers(TEXT_CONTENT_TYPE),
}
# The query parameters each endpoint accepts (aliases alike); any other gets 400, never a
# silent ignore. Said once here; the README's Endpoints table is compared with it by a test.
QUERY_PARAMETERS: Final[Mapping[str, tuple[str, ...]]] = {
    "/health": ("verbose", "exclude"),
    "/ready": ("verbose", "exclude"),
    # A one-way latch over the critical checks: nothing to exclude there.
    "/startup": ("verbose",),
    "/ready/<name>": ("verbose",),
    "/health/<name>": ("verbose",),
    # prometheus-client's own filter, by family name.
    "/metrics": ("name[]",),
}
_FALSE_WORDS: Final = frozenset({"0", "false", "no", "off"})
# More than any sane check list; bounds the work a hostile query can ask for.
MAX_EXCLUDES: Final = 64
_TEXT_TYPES: Final = ("text/plain", "text/*")
_JSON_TYPES: Final = ("application/health+json", "application/json", "application/*", "*/*")


def _respond(rendered: Rendered) -> web.Response:
    status, body, content_type = rendered
    return web.Response(body=body, status=status, headers=_HEADERS[content_type])


def _error(status: int, message: str) -> web.Response:
    return _respond((status, encode({"status": "fail", "output": message}), CONTENT_TYPE))


def _shown(value: str) -> str:
    """A client-supplied string, safe and short enough to echo in an error body."""
    return value[:40].encode("ascii", "replace").decode()


def prefers_text(accept: str) -> bool:
    """True when the Accept header ranks text/plain above every JSON type we could send.

    Ties go to health+json (our default, and what a bare `*/*` gets).
    """
    best_text = best_json = 0.0
    for element, quality in weighted(accept):
        media = name_of(element)
        if media in _TEXT_TYPES:
            best_text = max(best_text, quality)
        elif media in _JSON_TYPES:
            best_json = max(best_json, quality)
    return best_text > best_json


def unknown_parameter(request: web.Request, allowed: tuple[str, ...]) -> web.Response | None:
    """A 400 naming the first query parameter not in `allowed`, or None."""
    for key in request.query:
        if key not in allowed:
            names = " and ".join(repr(a) for a in allowed)
            return _error(400, f"unknown query parameter {_shown(key)!r}; only {names} accepted")
    return None


def parse_query(request: web.Request, allowed: tuple[str, ...]) -> Query | web.Response:
    """`verbose` (a flag) and, where allowed, `exclude` (repeatable); else a 400."""
    refused = unknown_parameter(request, allowed)
    if refused is not None:
        return refused
    query = request.query
    excludes = tuple(query.getall("exclude", ()))
    if len(excludes) > MAX_EXCLUDES:
        return _error(400, f"too many 'exclude' parameters (at most {MAX_EXCLUDES})")
    if any(not name for name in excludes):
        return _error(400, "'exclude' needs a check name")
    value = query.get("verbose")
    verbose = value is not None and value.lower() not in _FALSE_WORDS
    return Query(verbose=verbose, exclude=excludes, text=_wants_text(request))


def _wants_text(request: web.Request) -> bool:
    accept = request.headers.get("Accept")
    return accept is not None and "text/" in accept and prefers_text(accept)


def make_probe_handler(
    name: str,
    view: View,
    counts: Counts,
    monotonic: Callable[[], float],
) -> Handler:
    allowed = QUERY_PARAMETERS[f"/{name}"]

    async def handler(request: web.Request) -> web.Response:
        if request.query_string or _wants_text(request):
            query = parse_query(request, allowed)
            if isinstance(query, web.Response):
                counts.hit(name, query.status)
                return query
            response = _respond(view(monotonic(), query))
        else:
            # The kubelet path: no query, JSON. One memoised answer, no parsing.
            response = _respond(view(monotonic(), PLAIN))
        counts.hit(name, response.status)
        return response

    handler.__name__ = f"{name}_handler"
    return handler


def make_check_handler(
    name: str,
    view: CheckView,
    counts: Counts,
    monotonic: Callable[[], float],
    known: tuple[str, ...],
) -> Handler:
    """/ready/<check> and /health/<check>: one check's view; 404 naming the known checks."""
    allowed = QUERY_PARAMETERS[f"/{name}/<name>"]

    async def handler(request: web.Request) -> web.Response:
        query = parse_query(request, allowed)
        if isinstance(query, web.Response):
            counts.hit(name, query.status)
            return query
        check = request.match_info["check"]
        rendered = view(check, monotonic(), query)
        if rendered is None:
            # Echo the name only when it could be a check name: nothing odd goes back out.
            shown = f" {check!r}" if NAME_PATTERN.match(check) else " like that"
            response = _error(404, f"no check named{shown}; configured: {', '.join(known)}")
        else:
            response = _respond(rendered)
        counts.hit(name, response.status)
        return response

    handler.__name__ = f"{name}_check_handler"
    return handler


def make_metrics_handler(exposition: Exposition, counts: Counts) -> Handler:
    """/metrics: prometheus-client's negotiation (OpenMetrics on Accept) and `name[]` filter,
    rendered off the event loop (sidecar.exposition), gzipped when the scraper accepts it."""

    allowed = QUERY_PARAMETERS["/metrics"]

    async def metrics_handler(request: web.Request) -> web.StreamResponse:
        refused = unknown_parameter(request, allowed) if request.query_string else None
        if refused is not None:
            counts.hit("metrics", refused.status)
            return refused
        headers = request.headers
        body = await exposition.render(
            ",".join(headers.getall(hdrs.ACCEPT, [])),
            request.query.getall("name[]", None),
            headers.get(hdrs.ACCEPT_ENCODING, ""),
        )
        response = web.Response(body=body.data, headers=_metrics_headers(body))
        counts.hit("metrics", response.status)
        return response

    return metrics_handler


def _metrics_headers(body: Body) -> dict[str, str]:
    headers = {"Content-Type": body.content_type, "Cache-Control": "no-store"}
    if body.gzipped:
        headers["Content-Encoding"] = "gzip"
    return headers


def make_fallback_handlers(counts: Counts) -> tuple[Handler, Handler]:
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
