"""The /metrics renderer: off the event loop, one render at a time, shared by concurrent scrapes."""

from __future__ import annotations

import asyncio
import concurrent.futures
import gzip
import threading
from collections.abc import Iterator
from typing import Any, Final

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sidecar_proc import SidecarStarter
from support import free_port

from sidecar.exposition import MAX_REUSE_SECONDS, Exposition

OPENMETRICS = "application/openmetrics-text; version=1.0.0"
# A database where nothing listens: /metrics answers all the same.
NOTHING_LISTENS: Final = f"postgresql://sidecar@127.0.0.1:{free_port()}/postgres"


class Timer:
    """A clock for the reuse window that moves only when told to."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Counting(Collector):
    """Counts its collections and notes the thread each ran in; `gate` holds a render open;
    each collection moves `timer` on by `takes` seconds (a render that takes that long)."""

    def __init__(self, registry: CollectorRegistry, timer: Timer) -> None:
        self.timer = timer
        self.takes = 0.0
        self.renders = 0
        self.threads: set[str] = set()
        self.gate = threading.Event()
        self.gate.set()
        self.fail = False
        registry.register(self)

    def describe(self) -> Iterator[Metric]:
        yield GaugeMetricFamily("demo_value", "A value.")
        yield GaugeMetricFamily("demo_other", "Another.")

    def collect(self) -> Iterator[Metric]:
        self.renders += 1
        self.timer.now += self.takes
        self.threads.add(threading.current_thread().name)
        if not self.gate.wait(10):
            raise RuntimeError("the gate was never opened")
        if self.fail:
            raise RuntimeError("collector broke")
        yield GaugeMetricFamily("demo_value", "A value.", value=self.renders)
        yield GaugeMetricFamily("demo_other", "Another.", value=1)


def make() -> tuple[Exposition, Counting, Timer]:
    registry = CollectorRegistry()
    timer = Timer()
    return Exposition(registry, timer=timer), Counting(registry, timer), timer


async def test_render_runs_in_a_worker_thread_not_on_the_event_loop() -> None:
    """The collection (the costly part) runs in the render thread, never in the loop's thread."""
    exposition, collector, _ = make()
    body = await exposition.render("")
    assert b"demo_value 1.0" in body.data
    assert threading.current_thread().name not in collector.threads
    assert collector.threads == {"metrics-render_0"}
    exposition.close()


async def test_a_small_registry_renders_on_the_loop_in_no_thread() -> None:
    """With `on_loop`, the collection runs in the loop's own thread and no worker is handed any
    render; a failed render still fails its scrape and is not reused."""
    registry = CollectorRegistry()
    timer = Timer()

    class NoThreads(concurrent.futures.ThreadPoolExecutor):
        def submit(self, *args: Any, **kwargs: Any) -> Any:
            raise AssertionError("a render was handed to the worker")

    exposition = Exposition(registry, executor=NoThreads(), on_loop=True, timer=timer)
    collector = Counting(registry, timer)
    body = await exposition.render("")
    assert b"demo_value 1.0" in body.data
    assert collector.threads == {threading.current_thread().name}
    collector.fail = True
    timer.now += 2 * MAX_REUSE_SECONDS
    with pytest.raises(RuntimeError, match="collector broke"):
        await exposition.render("")
    collector.fail = False
    assert b"demo_value 3.0" in (await exposition.render("")).data
    exposition.close()


async def test_concurrent_scrapes_share_one_render() -> None:
    """Scrapes that arrive while a render runs wait for it; it runs once for all of them."""
    exposition, collector, _ = make()
    collector.gate.clear()
    scrapes = [asyncio.create_task(exposition.render("")) for _ in range(5)]
    await asyncio.sleep(0.05)
    collector.gate.set()
    bodies = await asyncio.gather(*scrapes)
    assert collector.renders == 1
    assert len({body.data for body in bodies}) == 1
    exposition.close()


async def test_a_finished_render_is_reused_only_for_as_long_as_it_took() -> None:
    """Right after a render, a scrape gets the same body; past the window, a fresh render."""
    exposition, collector, timer = make()
    collector.takes = 0.2
    await exposition.render("")
    timer.now += 0.19
    await exposition.render("")
    assert collector.renders == 1  # reused within the 0.2 s the render took...
    timer.now += 0.01
    body = await exposition.render("")
    assert collector.renders == 2  # ...and not a moment longer
    assert b"demo_value 2.0" in body.data
    collector.takes = 60.0  # a very slow render is reused MAX_REUSE_SECONDS at most
    timer.now += 0.2
    await exposition.render("")
    assert collector.renders == 3
    timer.now += MAX_REUSE_SECONDS
    await exposition.render("")
    assert collector.renders == 4
    exposition.close()


async def test_formats_filters_and_gzip_are_rendered_apart() -> None:
    """OpenMetrics, text, a name[] filter and gzip each get their own body, correctly made."""
    exposition, collector, _ = make()
    collector.gate.clear()
    text, openmetrics, only, zipped = (
        asyncio.create_task(exposition.render("")),
        asyncio.create_task(exposition.render(OPENMETRICS)),
        asyncio.create_task(exposition.render("", ["demo_other"])),
        asyncio.create_task(exposition.render("", None, "gzip, deflate")),
    )
    await asyncio.sleep(0.05)
    collector.gate.set()
    assert (await openmetrics).data.rstrip().endswith(b"# EOF")
    assert (await openmetrics).content_type.startswith("application/openmetrics-text")
    assert (await text).content_type.startswith("text/plain")
    assert b"demo_value" not in (await only).data
    assert b"demo_other 1.0" in (await only).data
    assert (await zipped).gzipped
    assert b"# TYPE demo_value gauge" in gzip.decompress((await zipped).data)
    assert not (await text).gzipped
    exposition.close()


async def test_a_failed_render_fails_its_scrapes_and_is_not_reused() -> None:
    """A collector that raises fails the scrapes waiting for it; the next scrape renders anew."""
    exposition, collector, _ = make()
    collector.fail = True
    with pytest.raises(RuntimeError, match="collector broke"):
        await exposition.render("")
    collector.fail = False
    body = await exposition.render("")
    assert b"demo_value 2.0" in body.data
    exposition.close()


async def test_a_scrape_that_gives_up_does_not_cancel_the_shared_render() -> None:
    """One waiting scrape cancelled (its client left) leaves the render for the others."""
    exposition, collector, _ = make()
    collector.gate.clear()
    first = asyncio.create_task(exposition.render(""))
    second = asyncio.create_task(exposition.render(""))
    await asyncio.sleep(0.05)
    first.cancel()
    collector.gate.set()
    assert b"demo_value 1.0" in (await second).data
    assert collector.renders == 1
    exposition.close()


async def test_scrapes_share_a_render_by_what_was_decided_not_by_how_it_was_asked() -> None:
    """`gzip` and `GZIP ;q=0.8` share one gzipped render; `gzip;q=0` does not get it. An Accept
    that refuses OpenMetrics (q=0) shares the text render."""
    exposition, collector, _ = make()
    collector.gate.clear()
    zipped, zipped_too, refused, text, text_too = (
        asyncio.create_task(exposition.render("", None, "gzip")),
        asyncio.create_task(exposition.render("", None, "GZIP ;q=0.8")),
        asyncio.create_task(exposition.render("", None, "gzip;q=0")),
        asyncio.create_task(exposition.render("")),
        asyncio.create_task(exposition.render("application/openmetrics-text;q=0")),
    )
    await asyncio.sleep(0.05)
    collector.gate.set()
    assert (await zipped) is (await zipped_too)
    assert (await zipped).gzipped
    assert not (await refused).gzipped
    assert (await text_too) is (await text)
    assert (await text).content_type.startswith("text/plain")
    # One render per distinct body: gzipped text, plain text.
    assert collector.renders == 2
    exposition.close()


# Accept-Encoding as scrapers send it, and whether the body comes back gzipped (RFC 9110 12.5.3).
ENCODINGS: Final = (
    ("gzip", True),
    ("gzip, deflate, br", True),
    ("GZip", True),
    ("x-gzip", True),
    ("*", True),
    ("gzip;q=0.001", True),
    ("identity;q=0, gzip;q=0.1", True),
    ("gzip;q=0", False),
    ("gzip ; q=0.000", False),
    ("gzip;q=0, *", False),
    ("*;q=0", False),
    ("gzip;q=0.5, identity", False),
    ("identity", False),
    ("deflate", False),
    ("", False),
)
OPENMETRICS_CONTENT: Final = "application/openmetrics-text; version=1.0.0"
PROMETHEUS_3_ACCEPT: Final = (
    "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.5,"
    "application/openmetrics-text;version=0.0.1;q=0.4,"
    "text/plain;version=1.0.0;escaping=allow-utf-8;q=0.3,"
    "text/plain;version=0.0.4;q=0.2,*/*;q=0.1"
)
# Accept as scrapers send it, and the Content-Type the body comes with (its start).
MEDIA: Final = (
    (PROMETHEUS_3_ACCEPT, OPENMETRICS_CONTENT),
    ("Application/OpenMetrics-Text; Version=1.0.0", OPENMETRICS_CONTENT),
    ("text/plain;version=0.0.4;q=0.9, application/openmetrics-text;q=0.5", "text/plain"),
    ("application/openmetrics-text;q=0", "text/plain; version=0.0.4"),
    ("application/openmetrics-text;q=0, text/plain;version=1.0.0", "text/plain; version=1.0.0"),
    ("application/openmetrics-text;version=0.0.1, */*;q=0.1", "text/plain; version=0.0.4"),
    ("application/openmetrics-text;version=abc", "text/plain; version=0.0.4"),
    ("", "text/plain; version=0.0.4"),
)


def test_metrics_are_gzipped_only_where_the_scraper_accepts_gzip(
    start_sidecar: SidecarStarter,
) -> None:
    """The real process: a body is gzipped (and says so) only for an Accept-Encoding that
    accepts gzip with a weight above 0 and no lower than identity's; `gzip;q=0` gets text."""
    sidecar = start_sidecar({"SIDECAR_DATABASE_URL": NOTHING_LISTENS}, ready=False)
    seen = {}
    for accept_encoding, gzipped in ENCODINGS:
        reply = sidecar.get("/metrics", headers={"Accept-Encoding": accept_encoding})
        assert reply.status == 200
        body = gzip.decompress(reply.body) if gzipped else reply.body
        assert b"# TYPE health_sidecar_ready gauge" in body, accept_encoding
        seen[accept_encoding] = reply.headers.get("content-encoding")
    assert seen == {a: "gzip" if gzipped else None for a, gzipped in ENCODINGS}


def test_openmetrics_is_sent_only_where_the_scraper_weights_it_highest(
    start_sidecar: SidecarStarter,
) -> None:
    """The real process: the format the Accept header weights highest among those it can have
    (q=0 is "not acceptable"), Prometheus 3's own header included; an unreadable version is
    passed over, not a server error."""
    sidecar = start_sidecar({"SIDECAR_DATABASE_URL": NOTHING_LISTENS}, ready=False)
    seen = {}
    for accept, _ in MEDIA:
        reply = sidecar.get("/metrics", headers={"Accept": accept})
        assert reply.status == 200, (accept, reply.body)
        seen[accept] = reply.headers["content-type"]
        ends = reply.body.rstrip().endswith(b"# EOF")
        assert ends is seen[accept].startswith("application/openmetrics-text"), accept
    assert {a: seen[a][: len(start)] for a, start in MEDIA} == dict(MEDIA)
