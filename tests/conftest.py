"""Shared fixtures: real PostgreSQL servers and fault proxies in front of them.

- `pg`: one server for the whole session. Tests that stop it, restart it, change the superuser's
  password or terminate sessions they did not open use `pg_private` or `make_pg` instead.
- `make_pg(max_connections=..., password=..., settings=...)`: a fresh private server, started;
  `pg_private` is `make_pg()`. All are cleaned up when the test ends.
- `make_fault_proxy(host, port)`: a FaultProxy, stopped when the test ends; `fault_proxy` is one
  in front of `pg` (connect with `pg.dsn(port=fault_proxy.port)`).

The classes live in `support` (tests/support), importable from any test module.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import pytest
from support.faultproxy import FaultProxy, ProxyFactory
from support.pg import SUPERUSER_PASSWORD, PgFactory, PostgresServer, SettingValue


@pytest.fixture(scope="session")
def pg() -> Iterator[PostgresServer]:
    """A PostgreSQL server shared by the whole test session."""
    server = PostgresServer()
    try:
        server.start()
        yield server
    finally:
        server.cleanup()


@pytest.fixture
def make_pg() -> Iterator[PgFactory]:
    """Build and start private servers; every one is stopped and deleted after the test."""
    servers: list[PostgresServer] = []

    def factory(
        *,
        max_connections: int = 100,
        password: str = SUPERUSER_PASSWORD,
        settings: Mapping[str, SettingValue] | None = None,
    ) -> PostgresServer:
        server = PostgresServer(
            max_connections=max_connections, password=password, settings=settings
        )
        servers.append(server)
        server.start()
        return server

    try:
        yield factory
    finally:
        for server in servers:
            server.cleanup()


@pytest.fixture
def pg_private(make_pg: PgFactory) -> PostgresServer:
    """A fresh server of the test's own, free to stop, restart or break."""
    return make_pg()


@pytest.fixture
def make_fault_proxy() -> Iterator[ProxyFactory]:
    """Build fault proxies; every one is stopped after the test."""
    proxies: list[FaultProxy] = []

    def factory(target_host: str, target_port: int) -> FaultProxy:
        proxy = FaultProxy(target_host, target_port)
        proxies.append(proxy)
        return proxy

    try:
        yield factory
    finally:
        for proxy in proxies:
            proxy.stop()


@pytest.fixture
def fault_proxy(pg: PostgresServer, make_fault_proxy: ProxyFactory) -> FaultProxy:
    """A FaultProxy in front of the shared `pg`, forwarding to begin with."""
    return make_fault_proxy(pg.host, pg.port)
