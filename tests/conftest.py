"""Shared fixtures: real PostgreSQL servers and fault proxies in front of them.

- `pg`: one server for the whole session. Tests that stop it, restart it, change the superuser's
  password or terminate sessions they did not open use `pg_private` or `make_pg` instead.
- `make_pg(max_connections=..., password=..., settings=...)`: a fresh private server, started;
  `pg_private` is `make_pg()`. All are cleaned up when the test ends.
- `make_replica(primary)`: a streaming replica of a running server (pg_basebackup -R), started,
  cleaned up when the test ends. Use a private primary: the replica follows whatever it does.
- `tls_files`: a CA, a server certificate and a client certificate for role `cert_user`
  (session-wide); `pg_tls`: a session server with ssl=on using them, where `cert_user` exists
  and may log in only over TLS with its client certificate (`hostssl ... cert`).
- `make_postgres_check(dsn_or_target, **spec_fields)`: a PostgresCheck of a PostgresSpec built from
  the arguments (timeout 5 s unless `timeout=`), closed when the test ends.
- `make_fault_proxy(host, port)`: a FaultProxy, stopped when the test ends; `fault_proxy` is one
  in front of `pg` (connect with `pg.dsn(port=fault_proxy.port)`).
- `patroni`: a real two-node Patroni cluster with its etcd (tests/support/patroni.py), started once
  per test run and shared; before and after each test that uses it, it is brought back to one
  primary and one streaming replica (members restarted, or the cluster rebuilt).

The classes live in `support` (tests/support), importable from any test module.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Mapping
from typing import Any

import pytest
from support import LOOPBACK
from support.faultproxy import FaultProxy, ProxyFactory
from support.patroni import PatroniCluster
from support.pg import (
    SUPERUSER_PASSWORD,
    PgFactory,
    PostgresCheckFactory,
    PostgresServer,
    ReplicaFactory,
    SettingValue,
    TlsFiles,
    make_tls_files,
)

from sidecar.checks.postgres import Credentials, PostgresCheck, PostgresSpec
from sidecar.checkspec import CheckPolicy, DatabaseTarget


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
def make_replica() -> Iterator[ReplicaFactory]:
    """Build and start streaming replicas; every one is stopped and deleted after the test."""
    replicas: list[PostgresServer] = []

    def factory(primary: PostgresServer) -> PostgresServer:
        replica = PostgresServer(replica_of=primary)
        replicas.append(replica)
        replica.start()
        return replica

    try:
        yield factory
    finally:
        for replica in replicas:
            replica.cleanup()


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    """A CA with a server certificate (for 127.0.0.1 only) and a client one (cert_user)."""
    return make_tls_files(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="session")
def pg_tls(tls_files: TlsFiles) -> Iterator[PostgresServer]:
    """A session server with ssl=on; `cert_user` logs in only with its client certificate."""
    user = tls_files.client_user
    server = PostgresServer(tls=tls_files, hba_lines=[f"hostssl all {user} {LOOPBACK}/32 cert"])
    try:
        server.start()
        server.create_role(user, None)
        yield server
    finally:
        server.cleanup()


@pytest.fixture
async def make_postgres_check() -> AsyncIterator[PostgresCheckFactory]:
    """Build PostgresChecks straight from spec fields; every one is closed after the test."""
    checks: list[PostgresCheck] = []

    def factory(
        target: str | DatabaseTarget,
        *,
        credentials: Credentials | None = None,
        timeout: float = 5.0,
        **fields: Any,
    ) -> PostgresCheck:
        spec = PostgresSpec(
            name=fields.pop("name", "postgres"),
            policy=CheckPolicy(timeout=timeout),
            target=DatabaseTarget(dsn=target) if isinstance(target, str) else target,
            **fields,
        )
        check = PostgresCheck(spec, credentials=credentials)
        checks.append(check)
        return check

    try:
        yield factory
    finally:
        for check in checks:
            await check.close()


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


@pytest.fixture(scope="session")
def patroni_session() -> Iterator[PatroniCluster]:
    """The run's one Patroni cluster, started on first use and stopped (by PID) at the end."""
    cluster = PatroniCluster()
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def patroni(patroni_session: PatroniCluster) -> Iterator[PatroniCluster]:
    """The shared Patroni cluster, settled (a primary and a streaming replica) before the test
    and brought back to that state after it, whatever the test did to it."""
    patroni_session.ensure_healthy()
    yield patroni_session
    patroni_session.ensure_healthy()
