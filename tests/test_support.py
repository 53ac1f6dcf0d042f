"""The test infrastructure itself: the throwaway PostgreSQL server and the fault proxy."""

from __future__ import annotations

import asyncio
import ipaddress
import os
import pwd
import socket
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, TypeAlias

import asyncpg
import pytest
from support import wait_until, wait_until_async
from support.faultproxy import FaultProxy, ProxyFactory
from support.pg import PgFactory, PostgresServer

if TYPE_CHECKING:
    # Generic only in asyncpg-stubs; at run time the class is not subscriptable.
    Conn: TypeAlias = asyncpg.Connection[asyncpg.Record]


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@asynccontextmanager
async def connected(dsn: str, application_name: str = "tests") -> AsyncIterator[Conn]:
    conn = await asyncpg.connect(
        dsn, timeout=10, server_settings={"application_name": application_name}
    )
    try:
        yield conn
    finally:
        # terminate(): no network round trip, so it cannot hang on a blackholed proxy.
        conn.terminate()


def first_byte(address: tuple[str, int]) -> bytes:
    with socket.create_connection(address, timeout=10) as sock:
        return sock.recv(1)


def children_of(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        if text[text.rindex(")") + 2 :].split(" ")[1] == str(pid):
            found.append(int(stat.parent.name))
    return found


def alive(pid: int) -> bool:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return text[text.rindex(")") + 2] != "Z"


# ---- PostgresServer --------------------------------------------------------------------------


def test_server_runs_as_the_postgres_os_user_when_root(pg: PostgresServer) -> None:
    """As root the postmaster runs as the postgres OS user (runuser); otherwise as us."""
    expected = pwd.getpwnam("postgres").pw_uid if os.geteuid() == 0 else os.geteuid()
    assert pg.pid is not None
    assert os.stat(f"/proc/{pg.pid}").st_uid == expected


async def test_superuser_password_logs_in_over_tcp(pg: PostgresServer) -> None:
    """dsn() reaches 127.0.0.1:port over TCP and its password is accepted."""
    assert pg.dsn().startswith(f"postgresql://postgres:{pg.password}@127.0.0.1:{pg.port}/")
    async with connected(pg.dsn()) as conn:
        assert await conn.fetchval("SELECT current_user") == "postgres"
        assert await conn.fetchval("SELECT inet_server_addr()") == ipaddress.ip_address("127.0.0.1")


async def test_wrong_password_is_refused(pg: PostgresServer) -> None:
    """Host connections need the right SCRAM password."""
    with pytest.raises(asyncpg.InvalidPasswordError):
        await asyncpg.connect(pg.dsn(password="not-the-password"), timeout=10)


def test_settings_are_applied(make_pg: PgFactory) -> None:
    """max_connections, the speed settings, pg_stat_statements and extra settings are in force."""
    server = make_pg(max_connections=7, settings={"work_mem": "8MB"})
    shown = {
        name: server.fetchval(f"SHOW {name}")
        for name in (
            "max_connections",
            "fsync",
            "synchronous_commit",
            "full_page_writes",
            "shared_preload_libraries",
            "listen_addresses",
            "unix_socket_directories",
            "work_mem",
        )
    }
    assert shown == {
        "max_connections": "7",
        "fsync": "off",
        "synchronous_commit": "off",
        "full_page_writes": "off",
        "shared_preload_libraries": "pg_stat_statements",
        "listen_addresses": "127.0.0.1",
        "unix_socket_directories": str(server.data_dir),
        "work_mem": "8MB",
    }
    assert (
        server.fetchval("SELECT count(*) FROM pg_extension WHERE extname = 'pg_stat_statements'")
        == 1
    )


async def test_custom_superuser_password_replaces_the_default(make_pg: PgFactory) -> None:
    """make_pg(password=...) sets the superuser's password; dsn() carries it."""
    server = make_pg(password="another secret/@:")
    async with connected(server.dsn()) as conn:
        assert await conn.fetchval("SELECT 1") == 1
    with pytest.raises(asyncpg.InvalidPasswordError):
        await asyncpg.connect(server.dsn(password="postgres-test-password"), timeout=10)


async def test_helpers_work_inside_a_running_event_loop(pg: PostgresServer) -> None:
    """The sync helpers run their own loop, so async tests can call them directly."""
    assert pg.fetchval("SELECT 41 + 1") == 42
    assert pg.fetch("SELECT 1 AS one") == [{"one": 1}]


async def test_sessions_counts_connections_by_application_name(pg: PostgresServer) -> None:
    """sessions(name) counts open connections with that application_name, and only those."""
    name = unique("selftest")
    assert pg.sessions(name) == 0
    async with (
        connected(pg.dsn(), name),
        connected(pg.dsn(), name),
        connected(pg.dsn(), unique("bystander")),
    ):
        assert pg.sessions(name) == 2
    await wait_until_async(lambda: pg.sessions(name) == 0, message="sessions closed")


async def test_terminate_ends_only_sessions_with_that_application_name(
    pg: PostgresServer,
) -> None:
    """terminate(name) kills those sessions, reports how many, and spares the others."""
    name, bystander = unique("victim"), unique("bystander")
    async with connected(pg.dsn(), name) as victim, connected(pg.dsn(), bystander) as other:
        assert pg.terminate(name) == 1
        assert pg.sessions(name) == 0
        with pytest.raises((asyncpg.AdminShutdownError, asyncpg.ConnectionDoesNotExistError)):
            await victim.fetchval("SELECT 1")
        assert await other.fetchval("SELECT 1") == 1


async def test_created_role_logs_in_until_its_password_changes(pg: PostgresServer) -> None:
    """create_role() makes a login role dsn() can use; alter_password() retires the old one."""
    role, old = unique("app"), "first p@ss:w/rd'"
    pg.create_role(role, old)
    async with connected(pg.dsn(user=role)) as conn:
        assert await conn.fetchval("SELECT current_user") == role
    pg.alter_password(role, "second")
    with pytest.raises(asyncpg.InvalidPasswordError):
        await asyncpg.connect(pg.dsn(user=role, password=old), timeout=10)
    async with connected(pg.dsn(user=role)) as conn:
        assert await conn.fetchval("SELECT 1") == 1


async def test_statistics_see_client_queries_but_not_the_helpers(make_pg: PgFactory) -> None:
    """xact_commit_total and stat_statements count client work in `postgres`, not helper calls."""
    # Autovacuum workers commit in `postgres` too; keep them out of the count.
    pg_private = make_pg(settings={"autovacuum": False})
    before = pg_private.xact_commit_total()
    async with connected(pg_private.dsn()) as conn:
        for _ in range(5):
            await conn.fetchval("SELECT 42 AS answer")
    # Backends flush their counters on disconnect; allow for that to land.
    await wait_until_async(lambda: pg_private.xact_commit_total() >= before + 5, message="commits")
    after = pg_private.xact_commit_total()
    for _ in range(3):
        pg_private.sessions()
        pg_private.stat_statements()
    await asyncio.sleep(1.5)  # past the backends' one-second stats flush interval
    assert pg_private.xact_commit_total() == after
    calls = {row["query"]: row["calls"] for row in pg_private.stat_statements()}
    assert calls.get("SELECT $1 AS answer") == 5
    pg_private.reset_stat_statements()
    assert pg_private.stat_statements() == []


async def test_stop_refuses_connections_and_start_serves_the_same_port(
    pg_private: PostgresServer,
) -> None:
    """stop() takes the server down (connections refused); start() brings it back on its port."""
    port = pg_private.port
    pg_private.stop()
    assert not pg_private.is_running
    with pytest.raises(ConnectionRefusedError):
        await asyncpg.connect(pg_private.dsn(), timeout=10)
    pg_private.start()
    assert pg_private.is_running
    assert pg_private.port == port
    async with connected(pg_private.dsn()) as conn:
        assert await conn.fetchval("SELECT 1") == 1


async def test_restart_drops_sessions_and_keeps_the_port(pg_private: PostgresServer) -> None:
    """restart() ends open sessions; new ones connect to the same port."""
    port, old_pid = pg_private.port, pg_private.pid
    async with connected(pg_private.dsn()) as conn:
        pg_private.restart()
        with pytest.raises((asyncpg.AdminShutdownError, asyncpg.ConnectionDoesNotExistError)):
            await conn.fetchval("SELECT 1")
    assert pg_private.port == port
    assert pg_private.pid not in (None, old_pid)
    async with connected(pg_private.dsn()) as conn:
        assert await conn.fetchval("SELECT 1") == 1


def test_cleanup_leaves_no_process_and_no_directory(make_pg: PgFactory) -> None:
    """cleanup() ends the postmaster and all its children and deletes the directory."""
    server = make_pg()
    pid, base_dir = server.pid, server.base_dir
    assert pid is not None
    assert base_dir is not None
    processes = [pid, *children_of(pid)]
    assert len(processes) > 1  # checkpointer, walwriter, ... are there to be checked
    server.cleanup()
    assert [p for p in processes if alive(p)] == []
    assert not base_dir.exists()
    assert not server.is_running


# ---- FaultProxy ------------------------------------------------------------------------------


async def test_proxy_forwards_queries_and_counts_connections(
    pg: PostgresServer, fault_proxy: FaultProxy
) -> None:
    """In forward mode queries pass through, and connection_count follows open connections."""
    async with connected(pg.dsn(port=fault_proxy.port)) as conn:
        assert await conn.fetchval("SELECT 'through the proxy'") == "through the proxy"
        assert fault_proxy.connection_count == 1
    await wait_until_async(
        lambda: fault_proxy.connection_count == 0, message="proxy connections closed"
    )
    assert fault_proxy.accepted_total == 1


async def test_blackhole_stalls_an_open_connection_mid_query(
    pg: PostgresServer, fault_proxy: FaultProxy
) -> None:
    """A blackholed connection gets no answer, and the query never reaches the server."""
    async with connected(pg.dsn(port=fault_proxy.port)) as conn:
        backend = await conn.fetchval("SELECT pg_backend_pid()")
        fault_proxy.blackhole()
        with pytest.raises(TimeoutError):
            await conn.fetchval("SELECT 'stalled marker'", timeout=1)
        last_query = pg.fetchval("SELECT query FROM pg_stat_activity WHERE pid = $1", backend)
        assert last_query == "SELECT pg_backend_pid()"


async def test_blackhole_accepts_new_connections_and_forward_releases_them(
    pg: PostgresServer, fault_proxy: FaultProxy
) -> None:
    """A new connection is accepted but unanswered while blackholed; forward() lets it finish."""
    fault_proxy.blackhole()
    connecting = asyncio.ensure_future(asyncpg.connect(pg.dsn(port=fault_proxy.port), timeout=30))
    try:
        await asyncio.sleep(1)
        assert not connecting.done()
        assert fault_proxy.connection_count == 1
        fault_proxy.forward()
        conn = await asyncio.wait_for(connecting, 10)
    finally:
        connecting.cancel()
    try:
        assert await conn.fetchval("SELECT 1") == 1
    finally:
        conn.terminate()


def test_reset_sends_rst_to_open_and_new_connections(fault_proxy: FaultProxy) -> None:
    """reset() resets (not closes) open connections, and new ones as soon as they arrive."""
    with socket.create_connection(fault_proxy.address, timeout=10) as sock:
        wait_until(lambda: fault_proxy.connection_count == 1, message="proxy accepted")
        fault_proxy.reset()
        with pytest.raises(ConnectionResetError):
            sock.recv(1)
    # The RST may beat connect()'s return, so the reset shows at connect or at the first read.
    with pytest.raises(ConnectionResetError):
        first_byte(fault_proxy.address)


async def test_reset_breaks_an_open_database_connection(
    pg: PostgresServer, fault_proxy: FaultProxy
) -> None:
    """A database client behind a reset sees its connection reset."""
    async with connected(pg.dsn(port=fault_proxy.port)) as conn:
        fault_proxy.reset()
        with pytest.raises(asyncpg.ConnectionDoesNotExistError) as raised:
            await conn.fetchval("SELECT 1", timeout=10)
        assert isinstance(raised.value.__cause__, ConnectionResetError)


async def test_delay_adds_latency_in_each_direction(
    pg: PostgresServer, fault_proxy: FaultProxy
) -> None:
    """delay(s) holds each direction s seconds: a round trip takes about 2 x s longer."""

    async def round_trip(conn: Conn) -> float:
        started = time.monotonic()
        await conn.fetchval("SELECT 1")
        return time.monotonic() - started

    async with connected(pg.dsn(port=fault_proxy.port)) as conn:
        fault_proxy.delay(0.3)
        delayed = await round_trip(conn)
        fault_proxy.forward()
        undelayed = await round_trip(conn)
    assert 0.55 <= delayed < 5
    assert undelayed < delayed - 0.3


async def test_refuse_closes_the_listener_until_forward(
    pg: PostgresServer, fault_proxy: FaultProxy
) -> None:
    """refuse() makes new connections fail with ECONNREFUSED; forward() reopens the same port."""
    fault_proxy.refuse()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(fault_proxy.address, timeout=10).close()
    with pytest.raises(ConnectionRefusedError):
        await asyncpg.connect(pg.dsn(port=fault_proxy.port), timeout=10)
    fault_proxy.forward()
    async with connected(pg.dsn(port=fault_proxy.port)) as conn:
        assert await conn.fetchval("SELECT 1") == 1


def test_close_all_closes_connections_cleanly(fault_proxy: FaultProxy) -> None:
    """close_all() ends open connections with a normal close (EOF, not a reset)."""
    with socket.create_connection(fault_proxy.address, timeout=10) as sock:
        wait_until(lambda: fault_proxy.connection_count == 1, message="proxy accepted")
        fault_proxy.close_all()
        assert sock.recv(1) == b""
    assert fault_proxy.connection_count == 0


def test_stop_is_prompt_with_stalled_connections(
    pg: PostgresServer, make_fault_proxy: ProxyFactory
) -> None:
    """stop() ends a blackholed proxy, its connections and its thread within seconds."""
    proxy = make_fault_proxy(pg.host, pg.port)
    with socket.create_connection(proxy.address, timeout=10) as before:
        wait_until(lambda: proxy.connection_count == 1, message="proxy accepted")
        proxy.blackhole()
        with socket.create_connection(proxy.address, timeout=10) as during:
            wait_until(lambda: proxy.connection_count == 2, message="proxy accepted")
            started = time.monotonic()
            proxy.stop()
            assert time.monotonic() - started < 5
            assert not proxy.is_running
            assert before.recv(1) == b""
            assert during.recv(1) == b""
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(proxy.address, timeout=10).close()
