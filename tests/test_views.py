"""Several named checks over HTTP (issue 7): criticality, per-check views, ?exclude, text/plain.

Scripted checks stand in for the dependencies (pure logic of the views); the real check kinds
are tested against real servers in test_check_*.py and test_postgres_*.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from fakes import ScriptedCheck, check_state
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from sidecar.app import create_app
from sidecar.checks.http import HttpSpec
from sidecar.checks.postgres import PostgresSpec
from sidecar.checks.tcp import TcpSpec
from sidecar.checkspec import CheckPolicy
from sidecar.config import Settings
from sidecar.handlers import prefers_text
from sidecar.health import readiness, startup
from sidecar.reasons import Reason
from sidecar.state import Board, CheckResult, CheckState

Client = TestClient[web.Request, web.Application]
MakeClient = Callable[[web.Application], Awaitable[Client]]

FAST = CheckPolicy(interval=0.05, timeout=0.5, backoff_max=0.1)
SETTINGS = Settings(
    file_specs=(
        PostgresSpec(name="primary", policy=FAST),
        PostgresSpec(name="replica", policy=FAST, critical=False),
        HttpSpec(name="app", policy=FAST, url="http://127.0.0.1:1/livez"),
        TcpSpec(name="cache", policy=FAST, host="127.0.0.1", port=1),
    )
)
SCHEMA = {"expected": "3f2a", "found": "1b9c"}


class Checks:
    """One scripted check per configured name, all passing to begin with."""

    def __init__(self) -> None:
        self.by_name = {
            spec.name: ScriptedCheck([None], name=spec.name) for spec in SETTINGS.check_specs
        }

    def __getitem__(self, name: str) -> ScriptedCheck:
        return self.by_name[name]


async def start(aiohttp_client: Any) -> tuple[Client, Checks, CollectorRegistry]:
    checks = Checks()
    registry = CollectorRegistry()
    pairs = [(spec, checks[spec.name]) for spec in SETTINGS.check_specs]
    app = create_app(SETTINGS, specs_and_checks=pairs, registry=registry)
    client: Client = await aiohttp_client(app)
    return client, checks, registry


async def until(
    client: Client, path: str, status: int, *, headers: dict[str, str] | None = None
) -> str:
    """Poll `path` until it answers `status` (bound 5 s); return the body text."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 5
    while True:
        response = await client.get(path, headers=headers)
        text = await response.text()
        if response.status == status:
            return text
        assert loop.time() < deadline, f"{path} never answered {status}; last: {text}"
        await asyncio.sleep(0.02)


async def test_failing_warn_check_shows_warn_and_keeps_ready(aiohttp_client: Any) -> None:
    """A failing `warn` check makes the body `warn`, never /ready 503."""
    client, checks, _ = await start(aiohttp_client)
    await until(client, "/ready", 200)
    checks["replica"].then(Reason.REPLICATION_LAG)
    response = await client.get("/ready")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 5
    while (await response.json(content_type=None))["status"] != "warn":
        assert loop.time() < deadline
        await asyncio.sleep(0.02)
        response = await client.get("/ready")
    assert response.status == 200
    body = await response.json(content_type=None)
    assert body["checks"]["replica"][0]["status"] == "warn"
    assert body["checks"]["replica"][0]["output"] == "replication_lag"
    assert body["checks"]["primary"][0]["status"] == "pass"
    # The check's own view does fail: it answers for that check alone.
    await until(client, "/ready/replica", 503)


async def test_failing_critical_check_fails_ready(aiohttp_client: Any) -> None:
    """Any critical check failing makes /ready 503, naming it."""
    client, checks, _ = await start(aiohttp_client)
    await until(client, "/ready", 200)
    checks["cache"].then(Reason.CONNECTION_REFUSED)
    body = await until(client, "/ready", 503)
    assert "cache: connection_refused" in body
    assert (await client.get("/ready/primary")).status == 200
    assert (await client.get("/ready/cache")).status == 503
    assert (await client.get("/readyz/cache")).status == 503


async def test_exclude_ignores_named_checks_and_reports_unknown(aiohttp_client: Any) -> None:
    """?exclude= drops a failing check from the verdict; unknown names are noted, not errors."""
    client, checks, _ = await start(aiohttp_client)
    checks["cache"].then(Reason.TIMEOUT)
    await until(client, "/ready", 503)
    response = await client.get("/ready?exclude=cache&exclude=nosuch&exclude=other")
    assert response.status == 200
    body = await response.json(content_type=None)
    assert "cache" not in body["checks"]
    assert body["notes"] == [
        'some health checks cannot be excluded: no matches for "nosuch", "other"'
    ]
    response = await client.get("/ready?exclude=app")
    assert response.status == 503
    response = await client.get("/ready?exclude=%3Cscript%3E&exclude=cache")
    assert response.status == 200
    assert "<script>" not in await response.text()
    body = await response.json(content_type=None)
    assert body["notes"] == ['some health checks cannot be excluded: no matches for "?"']


async def test_text_plain_verbose_lists_every_check(aiohttp_client: Any) -> None:
    """Accept: text/plain gives kube-apiserver lines, with details and the final verdict."""
    client, checks, _ = await start(aiohttp_client)
    await until(client, "/ready", 200)
    checks["primary"].then(_raise_schema)
    text = await until(client, "/ready?verbose", 503, headers={"Accept": "text/plain"})
    lines = text.splitlines()
    assert "[-]primary failed: schema_mismatch (expected=3f2a, found=1b9c)" in lines
    assert "[+]app ok" in lines
    assert "[+]cache ok" in lines
    assert "[+]replica ok" in lines
    assert lines[-1] == "ready check failed"
    response = await client.get("/ready?verbose", headers={"Accept": "text/plain"})
    assert response.headers["Content-Type"] == "text/plain; charset=utf-8"
    assert response.headers["Cache-Control"] == "no-store"
    # Without text/plain in Accept: health+json, with both revisions in the details.
    body = await (await client.get("/ready?verbose")).json(content_type=None)
    assert body["checks"]["primary"][0]["details"] == SCHEMA
    assert body["checks"]["primary"][0]["reason"] == "schema_mismatch"


def _raise_schema() -> None:
    from sidecar.reasons import CheckFailed  # noqa: PLC0415

    raise CheckFailed(Reason.SCHEMA_MISMATCH, SCHEMA)


async def test_text_plain_pass_is_ok_and_verbose_lists(aiohttp_client: Any) -> None:
    """A passing text answer is `ok`; verbose lists `[+]` lines and `ready check passed`."""
    client, _, _ = await start(aiohttp_client)
    assert await until(client, "/ready", 200, headers={"Accept": "text/plain"}) == "ok\n"
    text = await until(client, "/readyz?verbose&exclude=app", 200, headers={"Accept": "text/*"})
    assert text.splitlines() == [
        "[+]primary ok",
        "[+]replica ok",
        "[+]app excluded: ok",
        "[+]cache ok",
        "ready check passed",
    ]
    text = await until(client, "/health/cache?verbose", 200, headers={"Accept": "text/plain"})
    assert text.splitlines() == ["[+]cache ok", "health check passed"]


async def test_warn_check_own_text_view_says_only_what_is_true(aiohttp_client: Any) -> None:
    """/ready/<warn check> in text fails that view, so it never claims readiness is unaffected."""
    client, checks, _ = await start(aiohttp_client)
    await until(client, "/ready", 200)
    checks["replica"].then(Reason.REPLICATION_LAG)
    text = await until(client, "/ready/replica", 503, headers={"Accept": "text/plain"})
    assert text.splitlines() == ["[-]replica failed: replication_lag", "ready check failed"]
    # The aggregate view is where the criticality matters, and says so.
    text = await until(client, "/ready?verbose", 200, headers={"Accept": "text/plain"})
    assert (
        "[-]replica failed: replication_lag (criticality warn: does not fail readiness)"
        in text.splitlines()
    )


async def test_text_answer_prints_the_unknown_exclude_note(aiohttp_client: Any) -> None:
    """?exclude=nope in text prints the note JSON carries, passing or not, verbose or not."""
    client, checks, _ = await start(aiohttp_client)
    note = 'warn: some health checks cannot be excluded: no matches for "nope"'
    text = await until(client, "/ready?exclude=nope", 200, headers={"Accept": "text/plain"})
    assert text.splitlines() == [note, "ok"]
    text = await until(client, "/health?exclude=nope", 200, headers={"Accept": "text/plain"})
    assert text.splitlines() == [note, "ok"]
    checks["cache"].then(Reason.TIMEOUT)
    text = await until(client, "/ready?exclude=nope", 503, headers={"Accept": "text/plain"})
    assert note in text.splitlines()
    assert text.splitlines()[-1] == "ready check failed"


async def test_unknown_check_is_404_naming_the_configured_ones(aiohttp_client: Any) -> None:
    """/ready/<unknown> is a 404 listing the configured names; nothing is echoed raw."""
    client, _, _ = await start(aiohttp_client)
    await until(client, "/ready", 200)
    response = await client.get("/ready/nosuch")
    assert response.status == 404
    body = await response.json(content_type=None)
    assert body["output"] == "no check named 'nosuch'; configured: primary, replica, app, cache"
    response = await client.get("/health/%3Cscript%3E")
    assert response.status == 404
    assert "<script>" not in await response.text()


async def test_per_check_views_refuse_exclude_and_unknown_params(aiohttp_client: Any) -> None:
    """exclude makes no sense on one check: 400; so does any unknown parameter."""
    client, _, _ = await start(aiohttp_client)
    await until(client, "/ready", 200)
    assert (await client.get("/ready/primary?exclude=app")).status == 400
    assert (await client.get("/ready?bogus=1")).status == 400
    assert (await client.get("/ready?exclude=")).status == 400
    assert (await client.get("/startup?exclude=app")).status == 400
    too_many = "&".join(f"exclude=c{i}" for i in range(65))
    assert (await client.get(f"/ready?{too_many}")).status == 400
    assert (await client.post("/ready/primary")).status == 405
    assert (await client.head("/ready/primary")).status == 200


async def test_per_check_health_follows_that_loop(aiohttp_client: Any) -> None:
    """/health/<name> is 200 while that check's loop keeps its schedule, even if it fails."""
    client, checks, _ = await start(aiohttp_client)
    checks["app"].then(Reason.UNEXPECTED_STATUS)
    await until(client, "/ready/app", 503)
    assert (await client.get("/health/app")).status == 200
    assert (await client.get("/livez/app")).status == 200


async def test_metrics_carry_check_info_for_configured_checks_only(aiohttp_client: Any) -> None:
    """check_info has one series per configured check, with kind and criticality labels."""
    client, _, _ = await start(aiohttp_client)
    await until(client, "/ready", 200)
    text = await (await client.get("/metrics")).text()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    info = {
        (s.labels["check"], s.labels["kind"], s.labels["criticality"])
        for s in families["health_sidecar_check_info"].samples
    }
    assert info == {
        ("primary", "postgres", "critical"),
        ("replica", "postgres", "warn"),
        ("app", "http", "critical"),
        ("cache", "tcp", "critical"),
    }
    checks_seen = {s.labels["check"] for s in families["health_sidecar_check_up"].samples}
    assert checks_seen == {"primary", "replica", "app", "cache"}
    # No DSN file is watched here, so no reload series at all.
    assert "health_sidecar_dsn_reloads" not in families


async def test_ready_request_for_a_check_does_not_make_a_label(aiohttp_client: Any) -> None:
    """Requests for unknown names are counted under the fixed `ready` handler label."""
    client, _, registry = await start(aiohttp_client)
    await until(client, "/ready", 200)
    for i in range(5):
        await client.get(f"/ready/random{i}")
    value = registry.get_sample_value(
        "health_sidecar_http_requests_total", {"handler": "ready", "code": "404"}
    )
    assert value == 5
    text = await (await client.get("/metrics")).text()
    assert "random" not in text


def _state(name: str, *, critical: bool, ok: bool, ever: bool = True) -> CheckState:
    result = CheckResult(ok, 0.001, 1e9, 10.0, None if ok else Reason.TIMEOUT)
    return check_state(name, critical=critical, passing=ok, ever_passed=ever, last=result)


def test_startup_waits_for_critical_checks_only() -> None:
    """A warn check that never passed does not hold /startup back."""
    board = Board()
    board.publish(_state("primary", critical=True, ok=True))
    board.publish(_state("replica", critical=False, ok=False, ever=False))
    assert startup(board).ok
    board.publish(_state("cache", critical=True, ok=False, ever=False))
    assert not startup(board).ok


def test_readiness_with_everything_excluded_is_ready() -> None:
    """Excluding every failing check leaves nothing to fail (kube-apiserver does the same)."""
    board = Board()
    board.publish(_state("primary", critical=True, ok=False))
    assert not readiness(board, now=11.0).ok
    assert readiness(board, now=11.0, exclude={"primary"}).ok
    board.start_draining()
    assert not readiness(board, now=11.0, exclude={"primary"}).ok


@pytest.mark.parametrize(
    ("accept", "text"),
    [
        ("text/plain", True),
        ("text/*", True),
        ("text/plain, */*;q=0.8", True),
        ("*/*", False),
        ("application/json, text/plain", False),
        ("text/plain;q=0.5, application/health+json", False),
        ("application/health+json;q=0.1, text/plain;q=0.9", True),
        ("text/plain;q=bogus", False),
        ("text/plain;q=7", False),
        ("", False),
    ],
)
def test_accept_header_picks_text_only_when_preferred(accept: str, text: bool) -> None:
    """text/plain wins only when ranked above every JSON type; ties go to health+json."""
    assert prefers_text(accept) is text
