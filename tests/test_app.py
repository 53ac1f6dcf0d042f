"""The HTTP surface with scripted checks (no database): routes, bodies, headers, metrics."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import threading
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from fakes import FakeClock, ScriptedCheck, check_state
from prometheus_client import CollectorRegistry
from prometheus_client.core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector
from support import wait_until_async

from sidecar.app import BOARD, RENDER_ON_LOOP_AT_MOST, create_app
from sidecar.config import Settings
from sidecar.handlers import QUERY_PARAMETERS
from sidecar.health import STALL_GRACE_SECONDS
from sidecar.reasons import Reason
from sidecar.render import Answers
from sidecar.state import Board, CheckResult

Client = TestClient[web.Request, web.Application]
MakeClient = Callable[[web.Application], Awaitable[Client]]

FAST = Settings.from_environ(
    {
        "PGHOST": "db.invalid",
        "SIDECAR_CHECK_INTERVAL": "0.05",
        "SIDECAR_CHECK_TIMEOUT": "0.2",
        "SIDECAR_BACKOFF_MAX": "0.1",
    }
)


async def start(
    aiohttp_client: Any, script: list[object], settings: Settings = FAST
) -> tuple[Client, ScriptedCheck, CollectorRegistry]:
    check = ScriptedCheck(script)  # type: ignore[arg-type]
    registry = CollectorRegistry()
    app = create_app(
        settings, specs_and_checks=[(settings.check_specs[0], check)], registry=registry
    )
    client: Client = await aiohttp_client(app)
    return client, check, registry


async def wait_for_status(client: Client, path: str, status: int, bound: float = 5.0) -> Any:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + bound
    while True:
        response = await client.get(path)
        if response.status == status:
            return await response.json(content_type=None)
        assert loop.time() < deadline, f"{path} never answered {status}"
        await asyncio.sleep(0.02)


async def test_ready_passes_when_the_check_passes(aiohttp_client: Any) -> None:
    """/ready and its alias answer 200 with a health+json pass body."""
    client, _, _ = await start(aiohttp_client, [None])
    body = await wait_for_status(client, "/ready", 200)
    assert body["status"] == "pass"
    component = body["checks"]["postgres"][0]
    assert component["status"] == "pass"
    assert component["observedUnit"] == "ms"
    assert component["time"].endswith("Z")
    response = await client.get("/readyz")
    assert response.status == 200
    assert response.headers["Content-Type"] == "application/health+json"
    assert response.headers["Cache-Control"] == "no-store"


async def test_ready_fails_with_the_reason_while_health_stays_up(aiohttp_client: Any) -> None:
    """A failing check makes /ready 503 with its reason; /health stays 200."""
    client, _, _ = await start(aiohttp_client, [Reason.AUTH_FAILED])
    body = await wait_for_status(client, "/ready", 503)
    assert body["status"] == "fail"
    assert body["checks"]["postgres"][0]["output"] == "auth_failed"
    assert (await client.get("/health")).status == 200
    assert (await client.get("/livez")).status == 200


async def test_startup_latches_after_the_first_pass(aiohttp_client: Any) -> None:
    """/startup is 503 before any pass, then 200 for good even when the check fails again."""
    client, check, _ = await start(aiohttp_client, [Reason.TIMEOUT])
    await wait_for_status(client, "/startup", 503)
    check.then(None)
    await wait_for_status(client, "/startupz", 200)
    check.then(Reason.TIMEOUT)
    await wait_for_status(client, "/ready", 503)
    assert (await client.get("/startup")).status == 200


async def test_verbose_adds_detail(aiohttp_client: Any) -> None:
    """?verbose shows reason, latency, age and consecutive failures."""
    client, _, _ = await start(aiohttp_client, [Reason.CONNECTION_REFUSED])
    await wait_for_status(client, "/ready", 503)
    response = await client.get("/ready?verbose")
    body = await response.json(content_type=None)
    detail = body["checks"]["postgres"][0]
    assert detail["reason"] == "connection_refused"
    assert detail["consecutiveFailures"] >= 1
    assert detail["ageSeconds"] >= 0
    assert "latencySeconds" in detail
    plain = await (await client.get("/ready")).json(content_type=None)
    assert "consecutiveFailures" not in plain["checks"]["postgres"][0]


async def test_unknown_query_parameter_is_a_400(aiohttp_client: Any) -> None:
    """A query parameter other than verbose is refused with 400, not ignored."""
    client, _, _ = await start(aiohttp_client, [None])
    response = await client.get("/ready?verbos=1")
    assert response.status == 400
    assert "verbos" in (await response.json(content_type=None))["output"]


ENDPOINT_PATHS = {
    "/health": ("/health", "/livez"),
    "/ready": ("/ready", "/readyz"),
    "/startup": ("/startup", "/startupz"),
    "/ready/<name>": ("/ready/postgres", "/readyz/postgres"),
    "/health/<name>": ("/health/postgres", "/livez/postgres"),
    "/metrics": ("/metrics",),
}


async def test_each_endpoint_takes_its_query_parameters_and_refuses_others(
    aiohttp_client: Any,
) -> None:
    """Every path answers its declared query parameters and 400 to any other, /metrics too."""
    client, _, _ = await start(aiohttp_client, [None])
    await wait_for_status(client, "/ready", 200)
    assert set(ENDPOINT_PATHS) == set(QUERY_PARAMETERS)
    for endpoint, paths in ENDPOINT_PATHS.items():
        allowed = QUERY_PARAMETERS[endpoint]
        for path in paths:
            for name in allowed:
                value = "health_sidecar_ready" if name == "name[]" else "postgres"
                response = await client.get(path, params={name: value})
                assert response.status == 200, (path, name)
            for name in ("foo", "verbose", "exclude", "name[]"):
                if name in allowed:
                    continue
                response = await client.get(path, params={name: "1"})
                assert response.status == 400, (path, name)
                assert name in (await response.json(content_type=None))["output"]


async def test_head_is_answered_without_a_body(aiohttp_client: Any) -> None:
    """HEAD gets the GET status and no body."""
    client, _, _ = await start(aiohttp_client, [None])
    await wait_for_status(client, "/ready", 200)
    response = await client.head("/ready")
    assert response.status == 200
    assert await response.read() == b""


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "OPTIONS"])
async def test_other_methods_are_405(aiohttp_client: Any, method: str) -> None:
    """Methods other than GET and HEAD get 405 with an Allow header."""
    client, _, _ = await start(aiohttp_client, [None])
    for path in ("/health", "/ready", "/startup", "/metrics"):
        response = await client.request(method, path)
        assert response.status == 405, path
        assert response.headers["Allow"] == "GET, HEAD"


async def test_unknown_paths_are_404(aiohttp_client: Any) -> None:
    """Paths outside the contract answer 404 with no-store."""
    client, _, _ = await start(aiohttp_client, [None])
    for path in ("/", "/healthz", "/ready/extra", "/metrics2"):
        response = await client.get(path)
        assert response.status == 404, path
        assert response.headers["Cache-Control"] == "no-store"


async def test_draining_makes_ready_fail_at_once(aiohttp_client: Any) -> None:
    """Setting the board to draining turns /ready 503 ('draining'); /health stays 200."""
    client, _, _ = await start(aiohttp_client, [None])
    await wait_for_status(client, "/ready", 200)
    client.app[BOARD].start_draining()
    response = await client.get("/ready")
    assert response.status == 503
    assert (await response.json(content_type=None))["output"] == "draining"
    assert (await client.get("/health")).status == 200


async def test_stale_result_is_not_ready(aiohttp_client: Any) -> None:
    """A passing result older than the freshness window no longer makes the pod ready."""
    settings = Settings.from_environ(
        {"PGHOST": "db.invalid", "SIDECAR_CHECK_INTERVAL": "0.05", "SIDECAR_CHECK_TIMEOUT": "60"}
    )
    (spec,) = settings.check_specs
    held = asyncio.Event()  # never set: the second check is still running when we look
    check = ScriptedCheck([None, held.wait])
    clock = FakeClock()
    app = create_app(
        settings, specs_and_checks=[(spec, check)], registry=CollectorRegistry(), clock=clock
    )
    client: Client = await aiohttp_client(app)
    await wait_for_status(client, "/ready", 200)
    await wait_until_async(lambda: check.runs >= 2, message="the second check started")
    # Time passes (on the injected clock) while that check runs: no timeout fires, the one
    # pass simply ages past the window.
    clock.advance(spec.policy.freshness_seconds + 1)
    response = await client.get("/ready")
    assert response.status == 503
    assert (await response.json(content_type=None))["output"] == "postgres: stale result"


async def test_dead_probe_loop_turns_health_503(aiohttp_client: Any) -> None:
    """If the probe loop dies (a BaseException escapes it), /health answers 503."""

    class Fatal(BaseException):
        pass

    client, _, _ = await start(aiohttp_client, [None, Fatal()])
    body = await wait_for_status(client, "/health", 503)
    assert body["output"] == "probe loop stopped"
    # Nothing will refresh the last pass: /ready does not wait for it to go stale.
    ready = await client.get("/ready")
    assert ready.status == 503
    assert (await ready.json(content_type=None))["output"] == "probe loop stopped"


async def test_stalled_probe_loop_turns_health_503(aiohttp_client: Any) -> None:
    """A check that swallows its cancellation stalls the loop; /health turns 503 in bound."""

    async def wedge() -> None:
        # Swallows cancellation (the bug being simulated), but gives up after a bound so
        # that the test's own event loop can still close.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + STALL_GRACE_SECONDS + 8
        while loop.time() < deadline:
            try:
                await asyncio.sleep(deadline - loop.time())
            except asyncio.CancelledError:
                continue

    client, _, _ = await start(aiohttp_client, [None, wedge])
    await wait_for_status(client, "/health", 200)
    body = await wait_for_status(client, "/health", 503, bound=STALL_GRACE_SECONDS + 5)
    assert "stalled" in body["output"]


async def test_metrics_expose_the_contract(aiohttp_client: Any) -> None:
    """/metrics carries every contract metric with the postgres label and counts requests."""
    client, _, _ = await start(aiohttp_client, [None])
    await wait_for_status(client, "/ready", 200)
    await client.get("/health")
    response = await client.get("/metrics")
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(await response.text())}
    for name in (
        "health_sidecar_check_up",
        "health_sidecar_check_duration_seconds",
        "health_sidecar_check",
        "health_sidecar_check_last_success_timestamp_seconds",
        "health_sidecar_ready",
        "health_sidecar_http_requests",
        "health_sidecar_check_failures",
        "health_sidecar_check_transitions",
        "health_sidecar_check_consecutive_failures",
        "process_resident_memory_bytes",
    ):
        assert name in families, name
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in families.values()
        for s in f.samples
    }
    assert samples[("health_sidecar_check_up", (("check", "postgres"),))] == 1.0
    assert samples[("health_sidecar_ready", ())] == 1.0
    assert (
        samples[("health_sidecar_check_total", (("check", "postgres"), ("outcome", "pass")))] >= 1
    )
    assert (
        samples[("health_sidecar_http_requests_total", (("code", "200"), ("handler", "health")))]
        == 1.0
    )


@pytest.mark.parametrize("checks", [1, RENDER_ON_LOOP_AT_MOST, RENDER_ON_LOOP_AT_MOST + 1])
async def test_metrics_render_on_the_loop_only_for_a_few_checks(
    aiohttp_client: Any, checks: int
) -> None:
    """Up to RENDER_ON_LOOP_AT_MOST checks, /metrics is collected in the loop's thread (no render
    thread); with more, in a worker thread, never on the loop."""
    registry = CollectorRegistry()
    threads = ThreadNoting(registry)
    spec = FAST.check_specs[0]
    pairs = [
        (dataclasses.replace(spec, name=f"c{index}"), ScriptedCheck([True]))  # type: ignore[list-item]
        for index in range(checks)
    ]
    client: Client = await aiohttp_client(
        create_app(FAST, specs_and_checks=pairs, registry=registry)
    )
    assert (await client.get("/metrics")).status == 200
    on_loop = threading.current_thread().name in threads.seen
    assert on_loop is (checks <= RENDER_ON_LOOP_AT_MOST)
    assert len(threads.seen) == 1


class ThreadNoting(Collector):
    """Notes the thread each collection runs in; collects nothing."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.seen: set[str] = set()
        registry.register(self)

    def describe(self) -> Iterator[Metric]:
        return iter(())

    def collect(self) -> Iterator[Metric]:
        self.seen.add(threading.current_thread().name)
        return iter(())


async def test_metrics_negotiate_openmetrics(aiohttp_client: Any) -> None:
    """An OpenMetrics Accept header gets the OpenMetrics format, ending in # EOF."""
    client, _, _ = await start(aiohttp_client, [None])
    response = await client.get(
        "/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"}
    )
    assert response.headers["Content-Type"].startswith("application/openmetrics-text")
    assert (await response.text()).rstrip().endswith("# EOF")


async def test_metrics_name_filter_finds_every_kind_of_family(aiohttp_client: Any) -> None:
    """/metrics?name[]=... (prometheus-client's filter) returns exactly the families asked for:
    a scrape-time gauge and a process metric as well as a counter."""
    app = create_app(FAST, specs_and_checks=[(FAST.check_specs[0], ScriptedCheck([None]))])
    client = await aiohttp_client(app)
    await wait_for_status(client, "/ready", 200)
    names = ["health_sidecar_ready", "process_resident_memory_bytes", "health_sidecar_check_total"]
    response = await client.get("/metrics", params=[("name[]", name) for name in names])
    lines = (await response.text()).splitlines()
    assert {line.split("{")[0].split(" ")[0] for line in lines if not line.startswith("#")} == set(
        names
    )


async def test_shutdown_closes_the_check(aiohttp_client: Any) -> None:
    """Closing the app cancels the prober and closes the check."""
    client, check, _ = await start(aiohttp_client, [None])
    await wait_for_status(client, "/ready", 200)
    await client.close()
    assert check.closed


def test_bodies_are_serialised_once_per_state() -> None:
    """Two requests against the same snapshot get the very same bytes object."""
    board = Board()
    result = CheckResult(True, 0.001, 1e9, 10.0)
    board.publish(check_state("postgres", passing=True, ever_passed=True, last=result))
    views = Answers(board)
    first, second = views.ready(11.0), views.ready(12.0)
    assert first[0] == 200
    assert first[1] is second[1]
    board.publish(check_state("postgres", passing=True, ever_passed=True, last=result))
    assert views.ready(12.0)[1] is not first[1]
    assert json.loads(first[1])["status"] == "pass"


def test_cached_pass_expires_exactly_at_the_freshness_bound() -> None:
    """A cached 200 is not served past the freshness window, nor while draining."""
    board = Board()
    result = CheckResult(True, 0.001, 1e9, 10.0)
    board.publish(
        check_state(
            "postgres",
            timeout_seconds=1,
            freshness_seconds=10,
            passing=True,
            ever_passed=True,
            last=result,
            next_due_monotonic=15,
        )
    )
    views = Answers(board)
    assert views.ready(11.0)[0] == 200  # fills the cache
    assert views.ready(20.0)[0] == 200
    assert views.ready(20.001)[0] == 503
    assert views.health(15 + 1 + STALL_GRACE_SECONDS)[0] == 200
    assert views.health(15 + 1 + STALL_GRACE_SECONDS + 0.001)[0] == 503
    board.start_draining()
    assert views.ready(11.0)[0] == 503
