"""The /metrics body: rendered in one worker thread, and shared by the scrapes that ask meanwhile.

prometheus-client renders in pure Python, about 20 us a series: with hundreds of checks a render
takes a good part of a second. On the event loop that would hold every probe for as long, so a
few scrapers looping /metrics could make a kubelet time out a healthy sidecar. Here:

- the render (collect and encode, then gzip when asked) runs in one worker thread, never on the
  loop; the loop only waits for it. The thread still takes the GIL, but in switch-interval slices
  (5 ms), so a probe waits a few slices at worst instead of the whole render. Except for a
  registry the app knows to be small (`on_loop`, a few checks): its render takes a millisecond
  or two, no longer than a probe waits for a worker's slice, and then no thread is started
  (a thread's stack and state are about 0.1 MiB of RSS);
- one render at a time (one worker): that is the bound on concurrent renders;
- scrapes asking for the same body (format, `name[]` filter, gzip) while it renders wait for that
  render; and a finished body is reused for as long as it took to render (at most
  MAX_REUSE_SECONDS), so however many scrapers loop, rendering takes at most about half of the
  worker's time. A small registry renders in a millisecond or two: its bodies are never older.

Collection in a thread is safe: prometheus-client guards its metrics with locks, and our own
collector reads immutable snapshots (sidecar.metrics).

What to render is negotiated here, by RFC 9110's rules (12.4.2, 12.5.1, 12.5.3), before
prometheus-client is asked: its own negotiation takes the first media range it knows and any
`gzip` in Accept-Encoding, weights ignored, so `gzip;q=0` ("not acceptable") got gzip and
`application/openmetrics-text;q=0` got OpenMetrics.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import gc
import gzip
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, choose_encoder

from sidecar.negotiation import name_of, ranked, weighted

# A slow render is reused at most this long: a scrape never sees a body older than this.
MAX_REUSE_SECONDS: Final = 1.0
# Distinct bodies (formats x filters) kept at once; beyond it a render is not kept for sharing,
# so odd `name[]` lists cannot grow the table.
MAX_KEPT: Final = 32
RENDER_SWITCH_INTERVAL_SECONDS: Final = 0.001
# zlib's default: level 9 (gzip.compress's default) costs about twice the CPU for ~3% less.
GZIP_LEVEL: Final = 6

Key = tuple[str, tuple[str, ...] | None, bool]

# Media ranges that the classic text format (prometheus-client's default) satisfies.
TEXT_RANGES: Final = frozenset({"text/plain", "text/*", "*/*"})
# RFC 9110 8.4.1.3: x-gzip is gzip.
GZIP_CODINGS: Final = ("gzip", "x-gzip")


@dataclass(frozen=True, slots=True)
class Body:
    """One rendered exposition."""

    data: bytes
    content_type: str
    gzipped: bool


@dataclass(slots=True)
class _Entry:
    future: asyncio.Future[Body]
    # time.monotonic() until which a finished body is served again; +inf while rendering.
    fresh_until: float = float("inf")


class Exposition:
    """Renders the registry for /metrics off the event loop, one render at a time, shared."""

    def __init__(
        self,
        registry: CollectorRegistry,
        *,
        executor: concurrent.futures.Executor | None = None,
        on_loop: bool = False,
        timer: Callable[[], float] = time.monotonic,
    ) -> None:
        self._registry = registry
        self._on_loop = on_loop
        # One worker: renders queue rather than run side by side, each fighting for the GIL.
        # Its thread starts at the first render it is given, so never with `on_loop`.
        self._executor = executor or concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="metrics-render"
        )
        self._timer = timer
        self._kept: dict[Key, _Entry] = {}

    async def render(
        self, accept: str, names: Sequence[str] | None = None, accept_encoding: str = ""
    ) -> Body:
        """The body for these Accept and Accept-Encoding headers (the format and coding the
        scraper weights highest among those it accepts), restricted to the families `names`
        (the `name[]` filter) if given."""
        accept = preferred_media(accept)
        _, content_type = choose_encoder(accept)
        key: Key = (
            content_type,
            None if names is None else tuple(sorted(set(names))),
            gzip_preferred(accept_encoding),
        )
        now = self._timer()
        self._forget_stale(now)
        entry = self._kept.get(key)
        if entry is None:
            loop = asyncio.get_running_loop()
            entry = _Entry(loop.create_future())
            if len(self._kept) < MAX_KEPT:
                self._kept[key] = entry
            self._start(loop, entry, accept, key)
        # A scrape that gives up (client gone) must not cancel the render others wait for.
        return await asyncio.shield(entry.future)

    def close(self) -> None:
        """Stop the worker once its render (if any) is done; never waits here."""
        self._executor.shutdown(wait=False, cancel_futures=True)

    def _forget_stale(self, now: float) -> None:
        stale = [key for key, entry in self._kept.items() if entry.fresh_until <= now]
        for key in stale:
            del self._kept[key]

    def _start(self, loop: asyncio.AbstractEventLoop, entry: _Entry, accept: str, key: Key) -> None:
        _, names, gzipped = key
        running: asyncio.Future[tuple[Body, float]]
        if self._on_loop:
            running = loop.create_future()
            try:
                running.set_result(self._render(accept, names, gzipped))
            except Exception as exc:  # noqa: BLE001 -- handed to the scrapes, as the worker's are
                running.set_exception(exc)
        else:
            running = loop.run_in_executor(self._executor, self._render, accept, names, gzipped)

        def done(finished: asyncio.Future[tuple[Body, float]]) -> None:
            if finished.cancelled():
                entry.future.cancel()
                entry.fresh_until = 0.0
                return
            error = finished.exception()
            if error is not None:
                entry.future.set_exception(error)
                entry.fresh_until = 0.0  # a failed render is never reused
                return
            body, seconds = finished.result()
            entry.future.set_result(body)
            entry.fresh_until = self._timer() + min(seconds, MAX_REUSE_SECONDS)

        running.add_done_callback(done)

    def _render(
        self, accept: str, names: tuple[str, ...] | None, gzipped: bool
    ) -> tuple[Body, float]:
        """In the worker thread (or on the loop, `on_loop`): (the body, seconds it took)."""
        started = self._timer()
        encoder, content_type = choose_encoder(accept)
        registry = self._registry if names is None else self._registry.restricted_registry(names)
        # A render makes tens of thousands of samples that live until it ends: counted as
        # survivors, they set off full collections, which hold the GIL (and so the event loop)
        # for 100s of ms with hundreds of checks. Reference counting frees them all at the end;
        # the collector resumes then, for the whole process.
        # And the event loop thread, when it wants the GIL back, waits one switch interval at
        # most: 1 ms during a render rather than the default 5 ms, for every probe it answers.
        switch_interval = sys.getswitchinterval()
        sys.setswitchinterval(RENDER_SWITCH_INTERVAL_SECONDS)
        gc.disable()
        try:
            data = encoder(registry)
        finally:
            gc.enable()
            sys.setswitchinterval(switch_interval)
        if gzipped:
            data = gzip.compress(data, compresslevel=GZIP_LEVEL)
        return Body(data, content_type, gzipped), self._timer() - started


def preferred_media(accept: str) -> str:
    """The one media range of an Accept header to hand to prometheus-client's choose_encoder:
    the highest-weighted one it can serve (ties: the first listed), "" (its default, text) for
    none. A range with q=0 is refused (RFC 9110 12.4.2), and so is one with a version
    prometheus-client cannot make (OpenMetrics 0.0.1) or cannot read."""
    for media, _ in ranked(accept):
        try:
            _, content_type = choose_encoder(media)
        except (TypeError, ValueError):
            continue  # `version=abc`: prometheus-client compares it as a number
        if content_type != CONTENT_TYPE_PLAIN_0_0_4 or name_of(media) in TEXT_RANGES:
            return media
    return ""


def gzip_preferred(accept_encoding: str) -> bool:
    """Whether to gzip for this Accept-Encoding (RFC 9110 12.5.3): gzip (or x-gzip; else `*`)
    listed with q > 0, and not below identity (else `*`) when that is listed; an unlisted
    identity is the last resort. No header, an empty one, or only other codings: identity."""
    weights: dict[str, float] = {}
    for coding, weight in weighted(accept_encoding):
        weights.setdefault(name_of(coding), weight)  # a repeated coding: the first
    gzip_weight = next((weights[c] for c in GZIP_CODINGS if c in weights), weights.get("*", 0.0))
    identity = weights.get("identity", weights.get("*", 0.0))
    return gzip_weight > 0 and gzip_weight >= identity
