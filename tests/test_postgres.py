"""The sidecar in-process against a real PostgreSQL: readiness, outages, sessions, cost; and
PostgresCheck's credentials hook (the order of try, accept or reject, swap) on a real server."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient
from prometheus_client import CollectorRegistry
from support import wait_until_async
from support.faultproxy import ProxyFactory
from support.pg import PostgresCheckFactory, PostgresServer

from sidecar.app import create_app
from sidecar.checks.postgres import PostgresCheck
from sidecar.config import Settings
from sidecar.reasons import CheckFailed, Reason

Client = TestClient[web.Request, web.Application]

# The "done means" figures: interval 1 s, timeout 1 s.
FAST = {
    "SIDECAR_CHECK_INTERVAL": "1",
    "SIDECAR_CHECK_TIMEOUT": "1",
    "SIDECAR_BACKOFF_MAX": "2",
}


async def sidecar(
    aiohttp_client: Any, dsn: str, registry: CollectorRegistry | None = None, **extra: str
) -> Client:
    settings = Settings.from_environ({"SIDECAR_DATABASE_URL": dsn, **FAST, **extra})
    app = create_app(settings, registry=registry or CollectorRegistry())
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
    registry = CollectorRegistry()
    client = await sidecar(aiohttp_client, pg.dsn(), registry)
    await until_status(client, "/ready", 200, bound=10)
    await until_status(client, "/startup", 200, bound=1)
    assert (await body(client, "/ready"))["status"] == "pass"
    await wait_until_async(lambda: pg.sessions() == 1, timeout=10, message="one session")

    def passed() -> float:
        labels = {"check": "postgres", "outcome": "pass"}
        return registry.get_sample_value("health_sidecar_check_total", labels) or 0.0

    # A few more checks reuse the connection rather than add one.
    before = passed()
    await wait_until_async(lambda: passed() >= before + 2, timeout=10, message="2 more checks")
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


# ---- the credentials hook: PostgresCheck against a real server, a hand-written Credentials ----
# Only the swap logic is tested here; sidecar.credentials.DsnFile and rotation through a real
# file are tested in tests/test_rotation.py.

ROLE = "app"
OLD_PASSWORD = "old-Passw0rd"
NEW_PASSWORD = "new-Passw0rd"


class HandCredentials:
    """The Credentials protocol's methods and nothing else; `offer` is polled once, and stays
    pending until accepted."""

    def __init__(self, current: str) -> None:
        self._current = current
        self.offer: str | None = None
        self._pending: str | None = None
        self.polls = 0
        self.accepted: list[str] = []
        self.rejected: list[tuple[str, Reason]] = []

    @property
    def current(self) -> str:
        return self._current

    @property
    def pending(self) -> str | None:
        return self._pending

    def poll(self) -> str | None:
        self.polls += 1
        candidate, self.offer = self.offer, None
        if candidate is not None:
            self._pending = candidate
        return candidate

    def accept(self, dsn: str) -> None:
        self.accepted.append(dsn)
        self._current = dsn
        self._pending = None

    def reject(self, dsn: str, reason: Reason) -> None:
        self.rejected.append((dsn, reason))


async def passes(check: PostgresCheck, bound: float = 5.0) -> bool:
    """One run bounded as the prober bounds it; True on a pass, False (and a reset) on a fail."""
    try:
        async with asyncio.timeout(bound):
            await check.run()
    except CheckFailed:
        await check.reset()
        return False
    return True


async def test_credentials_current_dsn_is_used_rather_than_the_spec_dsn(
    pg_private: PostgresServer, make_postgres_check: PostgresCheckFactory
) -> None:
    """With credentials, the check connects with credentials.current, not the spec's DSN."""
    pg_private.create_role(ROLE, OLD_PASSWORD)
    credentials = HandCredentials(pg_private.dsn(ROLE))
    check = make_postgres_check(pg_private.dsn(ROLE, "stale-password"), credentials=credentials)
    assert await passes(check)
    assert credentials.polls == 1


async def test_wrong_candidate_is_rejected_and_the_old_connection_goes_on(
    pg_private: PostgresServer, make_postgres_check: PostgresCheckFactory
) -> None:
    """After ALTER ROLE, a wrong candidate is rejected as auth_failed; the check still passes
    on its old session, which is kept."""
    pg_private.create_role(ROLE, OLD_PASSWORD)
    old_dsn = pg_private.dsn(ROLE)
    credentials = HandCredentials(old_dsn)
    check = make_postgres_check(old_dsn, credentials=credentials)
    assert await passes(check)
    (backend,) = pg_private.backend_pids()

    pg_private.alter_password(ROLE, NEW_PASSWORD)  # sessions already open stay open
    wrong = pg_private.dsn(ROLE, "neither-old-nor-new")
    credentials.offer = wrong
    assert await passes(check)
    assert credentials.rejected == [(wrong, Reason.AUTH_FAILED)]
    assert credentials.accepted == []
    assert credentials.current == old_dsn
    assert pg_private.backend_pids() == {backend}


async def test_right_candidate_is_accepted_and_replaces_the_session(
    pg_private: PostgresServer, make_postgres_check: PostgresCheckFactory
) -> None:
    """After ALTER ROLE, the right candidate is accepted: a new backend serves the check, the
    old one is gone, and later reconnects use the new DSN."""
    pg_private.create_role(ROLE, OLD_PASSWORD)
    credentials = HandCredentials(pg_private.dsn(ROLE))
    check = make_postgres_check(pg_private.dsn(ROLE), credentials=credentials)
    assert await passes(check)
    (old_backend,) = pg_private.backend_pids()

    pg_private.alter_password(ROLE, NEW_PASSWORD)
    new_dsn = pg_private.dsn(ROLE)
    credentials.offer = new_dsn
    assert await passes(check)
    assert credentials.accepted == [new_dsn]
    assert credentials.rejected == []
    await wait_until_async(
        lambda: len(pg_private.backend_pids()) == 1, timeout=10, message="one session"
    )
    (new_backend,) = pg_private.backend_pids()
    assert new_backend != old_backend

    await check.reset()  # the next run connects afresh: with the accepted DSN
    assert await passes(check)
    assert credentials.rejected == []


async def test_rejected_candidate_before_any_connection_falls_back_to_the_current_dsn(
    pg_private: PostgresServer, make_postgres_check: PostgresCheckFactory
) -> None:
    """A candidate that fails on the very first run is rejected; the run connects with the
    current DSN and passes."""
    pg_private.create_role(ROLE, OLD_PASSWORD)
    credentials = HandCredentials(pg_private.dsn(ROLE))
    credentials.offer = pg_private.dsn(ROLE, "wrong")
    check = make_postgres_check(pg_private.dsn(ROLE), credentials=credentials)
    assert await passes(check)
    assert [reason for _, reason in credentials.rejected] == [Reason.AUTH_FAILED]
    assert pg_private.sessions() == 1


async def test_hanging_candidate_is_given_the_rest_of_the_timeout_and_the_check_still_passes(
    pg: PostgresServer,
    make_fault_proxy: ProxyFactory,
    make_postgres_check: PostgresCheckFactory,
) -> None:
    """A candidate whose server never answers is tried after the check passed on the current
    DSN, with what is left of the timeout (nearly all of it), and rejected as timeout before
    the prober's bound."""
    proxy = make_fault_proxy(pg.host, pg.port)
    proxy.blackhole()
    credentials = HandCredentials(pg.dsn())
    credentials.offer = pg.dsn(port=proxy.port)
    check = make_postgres_check(pg.dsn(), credentials=credentials, timeout=2.0)
    started = time.monotonic()
    assert await passes(check, bound=2.0)
    elapsed = time.monotonic() - started
    assert credentials.rejected == [(pg.dsn(port=proxy.port), Reason.TIMEOUT)]
    assert 1.5 <= elapsed < 2.0
