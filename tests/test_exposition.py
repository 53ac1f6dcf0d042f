"""The /metrics renderer: off the event loop, one render at a time, shared by concurrent scrapes."""

from __future__ import annotations

import asyncio
import gzip
import threading
from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from sidecar.exposition import MAX_REUSE_SECONDS, Exposition

OPENMETRICS = "application/openmetrics-text; version=1.0.0"


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
