"""The sidecar in-process against a real PostgreSQL: readiness, outages, sessions, cost."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient
from prometheus_client import CollectorRegistry
from support import wait_until_async
from support.faultproxy import ProxyFactory
from support.pg import PostgresServer

from sidecar.app import create_app
from sidecar.config import Settings

Client = TestClient[web.Request, web.Application]

# The "done means" figures: interval 1 s, timeout 1 s.
FAST = {
    "SIDECAR_CHECK_INTERVAL": "1",
    "SIDECAR_CHECK_TIMEOUT": "1",
    "SIDECAR_BACKOFF_MAX": "2",
}


async def sidecar(aiohttp_client: Any, dsn: str, **extra: str) -> Client:
    settings = Settings.from_environ({"SIDECAR_DATABASE_URL": dsn, **FAST, **extra})
    app = create_app(settings, registry=CollectorRegistry())
    client: Client = await aiohttp_client(app)
    return client


async def until_status(client: Client, path: str, status: int, bound: float) -> float:
    """Poll `path` until it answers `status`; return the seconds it took."""
    started = time.monotonic()
    while True:
        response = await client.get(path)
        await response.read()
        if response.status == status:
            return time.monotonic() - started
        assert time.monotonic() - started < bound, f"{path} not {status} within {bound}s"
        await asyncio.sleep(0.05)


async def body(client: Client, path: str) -> Any:
    return await (await client.get(path)).json(content_type=None)


async def test_ready_with_exactly_one_named_session(
    aiohttp_client: Any, pg: PostgresServer
) -> None:
    """With the database up, /ready is 200 and one session named health-sidecar is held."""
    client = await sidecar(aiohttp_client, pg.dsn())
    await until_status(client, "/ready", 200, bound=10)
    await until_status(client, "/startup", 200, bound=1)
    assert (await body(client, "/ready"))["status"] == "pass"
    await wait_until_async(lambda: pg.sessions() == 1, timeout=10, message="one session")
    await asyncio.sleep(2.5)  # a few more checks reuse the connection rather than add one
    assert pg.sessions() == 1


async def test_probes_cost_the_database_nothing(
    aiohttp_client: Any, pg_private: PostgresServer
) -> None:
    """1000 /ready requests run no statement on the database beyond the checks themselves."""
    client = await sidecar(aiohttp_client, pg_private.dsn(), SIDECAR_CHECK_INTERVAL="3600")
    await until_status(client, "/ready", 200, bound=10)

    def select_one_calls() -> int:
        rows = pg_private.stat_statements()
        # pg_stat_statements normalises constants: the check shows up as "SELECT $1".
        checks = [r for r in rows if r["query"].strip().upper() in {"SELECT 1", "SELECT $1"}]
        return sum(int(r["calls"]) for r in checks)

    before = select_one_calls()
    assert before >= 1  # the check itself is visible: the measure works
    for _ in range(1000):
        response = await client.get("/ready")
        assert response.status == 200
        await response.read()
    assert select_one_calls() == before
    assert pg_private.sessions() == 1


async def test_outage_detected_and_recovered_within_bounds(
    aiohttp_client: Any, pg_private: PostgresServer
) -> None:
    """DB stops: /ready 503 within interval+timeout+1.5 s; back: 200 within the backoff bound."""
    client = await sidecar(aiohttp_client, pg_private.dsn())
    await until_status(client, "/ready", 200, bound=10)

    await asyncio.to_thread(pg_private.stop)
    await until_status(client, "/ready", 503, bound=1 + 1 + 1.5)
    failed = await body(client, "/ready")
    assert failed["status"] == "fail"
    assert (await client.get("/health")).status == 200
    assert (await client.get("/startup")).status == 200

    await asyncio.to_thread(pg_private.start)
    await until_status(client, "/ready", 200, bound=2 + 1 + 1 + 2.5)
    await wait_until_async(lambda: pg_private.sessions() == 1, timeout=5, message="one session")


async def test_hung_network_path_fails_readiness_not_liveness(
    aiohttp_client: Any, pg: PostgresServer, make_fault_proxy: ProxyFactory
) -> None:
    """A blackholed path makes /ready 503 with reason timeout; /health stays 200 throughout."""
    proxy = make_fault_proxy(pg.host, pg.port)
    client = await sidecar(aiohttp_client, pg.dsn(port=proxy.port))
    await until_status(client, "/ready", 200, bound=10)

    proxy.blackhole()
    await until_status(client, "/ready", 503, bound=1 + 1 + 1.5)
    assert (await body(client, "/ready?verbose"))["checks"]["postgres"][0]["reason"] == "timeout"
    for _ in range(20):  # liveness never depends on the database
        assert (await client.get("/health")).status == 200
        await asyncio.sleep(0.1)

    proxy.forward()
    await until_status(client, "/ready", 200, bound=2 + 1 + 1 + 2.5)
    await wait_until_async(lambda: pg.sessions() == 1, timeout=15, message="one session")


async def test_wrong_password_says_authentication_and_hides_the_password(
    aiohttp_client: Any, pg: PostgresServer
) -> None:
    """A wrong password gives 503 with reason auth_failed, and the password is nowhere."""
    password = "Wr0ng-Pa55word-Marker"
    client = await sidecar(aiohttp_client, pg.dsn(password=password))

    async def reason() -> Any:
        return (await body(client, "/ready?verbose"))["checks"]["postgres"][0]["reason"]

    started = time.monotonic()
    while await reason() is None and time.monotonic() - started < 10:  # noqa: ASYNC110
        await asyncio.sleep(0.05)
    assert await reason() == "auth_failed"
    assert (await client.get("/ready")).status == 503
    for path in ("/ready", "/ready?verbose", "/startup?verbose", "/health?verbose", "/metrics"):
        text = await (await client.get(path)).text()
        assert password not in text, path
    metrics = await (await client.get("/metrics")).text()
    assert 'health_sidecar_check_failures_total{check="postgres",reason="auth_failed"}' in metrics
