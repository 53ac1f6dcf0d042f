"""Many checks and many scrapers: the real sidecar with 500 checks against local listeners."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import itertools
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from fakes import FakeClock, ScriptedCheck
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from sidecar_proc import SidecarProcess, timed_until
from support import LOOPBACK, REPO, free_port

from sidecar.app import START_SPACING_SECONDS, START_TOGETHER_AT_MOST, first_delay
from sidecar.config import Settings
from sidecar.health import liveness
from sidecar.loop import CheckLoop
from sidecar.metrics import Counts, Metrics
from sidecar.reasons import Reason
from sidecar.state import Board, CheckResult, CheckState, Transition

CHECKS = 500
SCRAPERS = 4
PROBES = 60
PROBE_PERIOD_SECONDS = 0.1
# A kubelet's probe timeout is 1 s; a quarter of it is generous for a cached answer.
SLOW_PROBE_SECONDS = 0.25
# A server with nothing to do (bench.bare_app) answers within this when the machine is not
# starved; a probe of the sidecar is judged only when the control's, sent at the same moment,
# came back within it. CI runs several test files at once on 2 cores, and a probe that waited
# for a CPU says nothing about the sidecar.
RESPONSIVE_SECONDS = 0.1


class Listeners:
    """A TCP port that accepts and closes, and an HTTP/1.1 port that answers 200 and keeps the
    connection: what the checks probe. One asyncio loop in one thread serves both."""

    def __init__(self) -> None:
        self.tcp_port = 0
        self.http_port = 0
        self._loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._run, name="listeners", daemon=True)

    def __enter__(self) -> Listeners:
        self._thread.start()
        if not self._started.wait(10):
            raise RuntimeError("the listeners did not start")
        return self

    def __exit__(self, *_: object) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        tcp = self._loop.run_until_complete(
            asyncio.start_server(_accept_and_close, LOOPBACK, 0, backlog=1024)
        )
        web = self._loop.run_until_complete(
            asyncio.start_server(_answer_ok, LOOPBACK, 0, backlog=1024)
        )
        self.tcp_port = tcp.sockets[0].getsockname()[1]
        self.http_port = web.sockets[0].getsockname()[1]
        self._started.set()
        self._loop.run_forever()
        tcp.close()
        web.close()


async def _accept_and_close(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.close()


async def _answer_ok(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while await reader.readline():  # the request line; then the headers up to a blank line
            while (await reader.readline()) not in (b"\r\n", b""):
                pass
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


def check_file(path: Path, listeners: Listeners, count: int) -> Path:
    """`count` warn checks, every other one tcp, the rest http."""
    lines = ["checks:"]
    for index in range(count):
        if index % 2 == 0:
            target = f"kind: tcp, host: {LOOPBACK}, port: {listeners.tcp_port}"
        else:
            target = f"kind: http, url: 'http://{LOOPBACK}:{listeners.http_port}/livez'"
        lines.append(f"  - {{name: c{index}, criticality: warn, {target}}}")
    path.write_text("\n".join(lines) + "\n")
    return path


@dataclass
class Scrapers:
    """Threads that GET /metrics back to back, as Prometheus replicas and curious people do."""

    sidecar: SidecarProcess
    count: int
    statuses: list[int] = field(default_factory=list)
    complete: list[bool] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def __enter__(self) -> Scrapers:
        self._threads = [
            threading.Thread(target=self._loop, name=f"scraper{n}", daemon=True)
            for n in range(self.count)
        ]
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)

    def _loop(self) -> None:
        last = f'health_sidecar_check_up{{check="c{CHECKS - 1}"}}'.encode()
        while not self._stop.is_set():
            try:
                reply = self.sidecar.get("/metrics", timeout=30)
            except (OSError, http.client.HTTPException):
                self.statuses.append(0)
                continue
            self.statuses.append(reply.status)
            self.complete.append(last in reply.body)


@pytest.fixture
def listeners() -> Iterator[Listeners]:
    with Listeners() as started:
        yield started


@contextlib.contextmanager
def control_server() -> Iterator[int]:
    """bench.bare_app in a process of its own, answering /health with a fixed body: the
    control probed beside the sidecar."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "bench.bare_app", "--port", str(port)],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        timed_until(lambda: control_get(port) is not None, timeout=30, message="the control")
        yield port
    finally:
        process.terminate()
        process.wait(10)


def control_get(port: int) -> int | None:
    connection = http.client.HTTPConnection(LOOPBACK, port, timeout=10)
    try:
        connection.request("GET", "/health")
        return connection.getresponse().status
    except OSError:
        return None
    finally:
        connection.close()


def timed(call: Callable[[], object]) -> tuple[float, object]:
    started = time.monotonic()
    result = call()
    return time.monotonic() - started, result


def test_probes_stay_prompt_while_four_scrapers_loop_metrics_over_500_checks(
    tmp_path: Path, listeners: Listeners
) -> None:
    """With 500 checks and 4 scrapers looping /metrics, no /health probe takes over 250 ms
    (counted over probes sent while an idle control server answered promptly)."""
    config = check_file(tmp_path / "checks.yaml", listeners, CHECKS)
    env = {"SIDECAR_CONFIG_FILE": str(config), "SIDECAR_DRAIN_SECONDS": "0"}
    with (
        control_server() as control,
        SidecarProcess(env, defaults={}, log_dir=tmp_path) as sidecar,
    ):
        sidecar.wait_listening()

        def all_checks_up() -> bool:
            samples = sidecar.metrics()
            return all(
                samples.get(("health_sidecar_check_up", frozenset({("check", f"c{n}")}))) == 1
                for n in range(CHECKS)
            )

        timed_until(all_checks_up, timeout=60, interval=0.5, message="every check passed once")
        judged: list[float] = []
        unjudged: list[float] = []
        statuses: list[object] = []
        with Scrapers(sidecar, SCRAPERS) as scrapers, ThreadPoolExecutor(2) as pool:
            # Probe only once the scrapers are at it, as kubelet would: a fresh connection each,
            # and the control's probe sent at the same moment.
            timed_until(lambda: len(scrapers.statuses) >= SCRAPERS, timeout=60, message="scrapes")
            while len(judged) < PROBES and len(judged) + len(unjudged) < 5 * PROBES:
                ours = pool.submit(timed, lambda: sidecar.get("/health", timeout=10).status)
                theirs = pool.submit(timed, lambda: control_get(control))
                (elapsed, status), (control_elapsed, _) = ours.result(), theirs.result()
                statuses.append(status)
                if control_elapsed <= RESPONSIVE_SECONDS:
                    judged.append(elapsed)
                else:
                    unjudged.append(elapsed)
                time.sleep(PROBE_PERIOD_SECONDS)
        scraped = len(scrapers.statuses)
        sidecar.assert_alive("after the scrapes")
    assert len(judged) >= PROBES // 2, (
        f"the machine was too busy to judge: {len(unjudged)} probes had a slow control"
    )
    slow = sorted(round(seconds, 3) for seconds in judged if seconds > SLOW_PROBE_SECONDS)
    assert not slow, (
        f"{len(slow)} of {len(judged)} /health probes took over {SLOW_PROBE_SECONDS}s: {slow}; "
        f"slowest {max(judged):.3f}s, {scraped} scrapes, {len(unjudged)} not judged"
    )
    assert set(statuses) == {200}
    assert set(scrapers.statuses) == {200}
    assert all(scrapers.complete), "a scrape lacked the last check's series"
    assert scraped >= 2 * SCRAPERS, f"only {scraped} scrapes ran beside the probes"


def test_a_few_checks_start_at_once_and_many_are_spread_over_the_first_interval() -> None:
    """One check (the default) or a handful start at once; 500 start 10 ms apart within 5 s."""
    assert first_delay(0, 1, 5.0) == 0.0
    assert {first_delay(n, START_TOGETHER_AT_MOST, 5.0) for n in range(16)} == {0.0}
    delays = [first_delay(n, 500, 5.0) for n in range(500)]
    assert delays[0] == 0.0
    assert all(b - a == pytest.approx(START_SPACING_SECONDS) for a, b in itertools.pairwise(delays))
    assert delays[-1] < 5.0
    # Too many for the spacing: squeezed to fit within the interval, still evenly apart.
    squeezed = [first_delay(n, 500, 1.0) for n in range(500)]
    assert squeezed[-1] < 1.0
    assert squeezed[1] == pytest.approx(1.0 / 500)


async def test_a_delayed_first_check_waits_and_does_not_count_as_a_stalled_loop() -> None:
    """The loop sleeps its first delay before the first check, due at its end: /health stays 200."""
    spec = Settings.from_environ({"PGHOST": "db.invalid"}).check_specs[0]
    clock, board, check = FakeClock(), Board(), ScriptedCheck([None])
    loop = CheckLoop(spec, check, board, clock=clock, sleep=_never(clock), first_delay=4.0)
    task = asyncio.create_task(loop.run())
    await asyncio.sleep(0.01)
    assert clock.sleeps == [4.0]
    assert check.runs == 0
    state = board.states[spec.name]
    assert state.next_due_monotonic == clock.now + 4.0
    # Past the timeout + stall grace of an undelayed check, still before the delayed one's due.
    clock.advance(3.9)
    assert liveness(board, now=clock.now).ok
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


def _never(clock: FakeClock) -> Callable[[float], Awaitable[None]]:
    """A sleep that records its delay on `clock` and then never returns."""

    async def sleep(seconds: float) -> None:
        clock.sleeps.append(seconds)
        await asyncio.Event().wait()

    return sleep


def test_duration_histogram_and_counters_count_each_result_where_it_belongs() -> None:
    """A 5 ms pass lands in le=0.005 (bounds are inclusive), a failure counts by reason, a
    state change by the state entered; every series of a check exists before its result."""
    registry = CollectorRegistry()
    metrics = Metrics(
        registry, Board(), check_names=["a", "b"], monotonic=lambda: 0.0, counts=Counts()
    )
    metrics.observe(
        CheckResult(True, 0.005, 1e9, 1.0),
        _state("a"),
        Transition("a", "unknown", "passing", None, 0.0),
    )
    metrics.observe(CheckResult(False, 20.0, 1e9, 2.0, Reason.TIMEOUT), _state("a"), None)
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(generate_latest(registry).decode())
        for s in family.samples
    }
    bucket = "health_sidecar_check_duration_seconds_bucket"
    assert samples[(bucket, (("check", "a"), ("le", "0.0025")))] == 0
    assert samples[(bucket, (("check", "a"), ("le", "0.005")))] == 1
    assert samples[(bucket, (("check", "a"), ("le", "10.0")))] == 1
    assert samples[(bucket, (("check", "a"), ("le", "+Inf")))] == 2
    assert samples[("health_sidecar_check_duration_seconds_count", (("check", "a"),))] == 2
    assert samples[
        ("health_sidecar_check_duration_seconds_sum", (("check", "a"),))
    ] == pytest.approx(20.005)
    assert samples[("health_sidecar_check_total", (("check", "a"), ("outcome", "fail")))] == 1
    failures = "health_sidecar_check_failures_total"
    assert samples[(failures, (("check", "a"), ("reason", "timeout")))] == 1
    assert samples[(failures, (("check", "a"), ("reason", "auth_failed")))] == 0
    to_passing = (("check", "a"), ("to", "passing"))
    assert samples[("health_sidecar_check_transitions_total", to_passing)] == 1
    assert samples[(bucket, (("check", "b"), ("le", "+Inf")))] == 0
    assert samples[(failures, (("check", "b"), ("reason", "timeout")))] == 0


def _state(name: str) -> CheckState:
    return CheckState(
        name=name, kind="tcp", critical=True, timeout_seconds=2.0, freshness_seconds=14.0
    )
