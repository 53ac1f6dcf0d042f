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
- `start_sidecar(env, ready=True, ...)`: the real sidecar as a subprocess (`sidecar_proc`),
  listening, and ready unless `ready=False`; stopped after the test.
- `make_fault_proxy(host, port)`: a FaultProxy, stopped when the test ends; `fault_proxy` is one
  in front of `pg` (connect with `pg.dsn(port=fault_proxy.port)`).
- `patroni`: a real two-node Patroni cluster with its etcd (tests/support/patroni.py), started once
  per test run and shared; before and after each test that uses it, it is brought back to one
  primary and one streaming replica (members restarted, or the cluster rebuilt).

The classes live in `support` (tests/support), importable from any test module.

Running in parallel (`.ci/run` runs pytest-xdist with `-n N`): each test file runs whole on one
worker (its module fixtures and figures stay whole); files listed in `XDIST_GROUPS` under one
name share a worker (the image and pod tests: `support.image.IMAGE_GROUP`). Session fixtures
such as `pg` are per worker; a resource to make once per run for all workers (the image, a
Patroni cluster) goes through `support.once.once_per_run`. `RUN_FIRST` lists the longest
groups, started first.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator, Mapping
from pathlib import Path
from typing import Any, Final

import pytest
from hypothesis import settings
from sidecar_proc import SidecarStarter
from support import LOOPBACK, missing_tool
from support.faultproxy import FaultProxy, ProxyFactory
from support.image import IMAGE_GROUP, ImageToolMissing, Store, shared_store
from support.once import RUN_DIR_ENV, begin_run, end_run
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
    postgres_check,
)

from sidecar.checks.postgres import Credentials, PostgresCheck, PostgresSpec
from sidecar.checkspec import CheckPolicy, DatabaseTarget

# ---- the run: Hypothesis profile, parallel workers, once-per-run resources ------------------

# CI (HYPOTHESIS_PROFILE=ci, set by .ci/run): a quarter of the examples (a test that sets its own
# count asks `support.examples(n)`), and no per-example deadline, since a shared machine running
# several workers makes single examples slow now and then.
settings.register_profile("ci", max_examples=25, deadline=None, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

# Under xdist each test file runs whole on one worker (its module fixtures and figures stay
# whole); the files of a group share one worker: the image and pod tests, so that the worker
# that builds the image goes on with them, and no other worker waits for the build.
# (pytest-xdist's own `xdist_group` marks are ignored under pytest 9: the mark reaches the
# scheduler by rewriting the test's id, which pytest 9 no longer reads.)
XDIST_GROUPS: Final = {
    "tests/test_image.py": IMAGE_GROUP,
    "tests/test_pod.py": IMAGE_GROUP,
    "tests/test_sbom.py": IMAGE_GROUP,
}
# Groups that take a minute or more, started first so that no worker is left with one of them
# at the end; the others follow, those with more `slow` tests first.
# Measured serially on the shared 2-core machine: the image build alone took 85 s idle and 9 min
# under load, the bench smoke 3.5 min, the Dockerfile replay 2 min, the properties 1-4 min.
RUN_FIRST: Final = (
    IMAGE_GROUP,
    "tests/test_bench_smoke.py",
    "tests/test_dockerfile.py",
    "tests/test_faults.py",
    "tests/test_config_properties.py",
    "tests/test_surroundings.py",
    "tests/test_ha.py",
)
_RUN_DIR: Final = pytest.StashKey[Path]()


def xdist_group(nodeid: str) -> str:
    """The unit of scheduling a test belongs to: its file's group, else its file."""
    path = nodeid.split("::", 1)[0]
    return XDIST_GROUPS.get(path, path)


@pytest.hookimpl(tryfirst=True)
def pytest_cmdline_main(config: pytest.Config) -> None:
    """`-n N` distributes by file (or group of files), in our order, not test by test."""
    if getattr(config.option, "numprocesses", None) and config.option.dist in ("no", "loadfile"):
        config.option.dist = "loadfile"
        config.option.loadscopereorder = False  # RUN_FIRST and the slow tests decide the order


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """`--dist loadfile` with the files of a group (XDIST_GROUPS) as one unit."""
    if config.getvalue("dist") != "loadfile":
        return None
    # xdist ships no type information (no py.typed).
    from xdist.scheduler import (  # type: ignore[import-untyped]  # noqa: PLC0415 -- xdist only
        LoadFileScheduling,
    )

    class GroupedFileScheduling(LoadFileScheduling):  # type: ignore[misc]
        def _split_scope(self, nodeid: str) -> str:
            return xdist_group(nodeid)

    return GroupedFileScheduling(config, log)


def pytest_configure(config: pytest.Config) -> None:
    workerinput = getattr(config, "workerinput", None)
    if workerinput is None:  # the session's own process: xdist's controller, or a plain run
        config.stash[_RUN_DIR] = begin_run()
    else:
        os.environ[RUN_DIR_ENV] = workerinput[RUN_DIR_ENV]


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    """xdist: every worker joins the controller's run directory."""
    node.workerinput[RUN_DIR_ENV] = os.environ[RUN_DIR_ENV]


def pytest_unconfigure(config: pytest.Config) -> None:
    run = config.stash.get(_RUN_DIR, None)
    if run is not None:  # every worker is done: tear down what once_per_run made
        end_run(run)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under xdist, order the groups longest first (each worker collects the same order)."""
    if not hasattr(config, "workerinput"):
        return
    groups: dict[str, list[pytest.Item]] = {}
    for item in items:
        groups.setdefault(xdist_group(item.nodeid), []).append(item)

    def weight(group: str) -> tuple[int, int]:
        first = RUN_FIRST.index(group) if group in RUN_FIRST else len(RUN_FIRST)
        slow = sum(1 for item in groups[group] if item.get_closest_marker("slow"))
        return first, -slow

    items[:] = [item for group in sorted(groups, key=weight) for item in groups[group]]


@pytest.fixture(scope="session")
def image_store() -> Store:
    """The container store with the base, the project's image and the stand-in app, built once
    per run (support.image.shared_store); skipped outside CI when the tools are missing."""
    try:
        return shared_store()
    except ImageToolMissing as error:
        missing_tool(str(error))


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
        check = postgres_check(spec, credentials)
        checks.append(check)
        return check

    try:
        yield factory
    finally:
        for check in checks:
            await check.close()


@pytest.fixture
def start_sidecar(tmp_path: Path) -> Iterator[SidecarStarter]:
    """Start sidecar subprocesses: `start_sidecar(env, ready=True, **SidecarProcess options)`
    returns one listening (and ready); every one is stopped by PID after the test."""
    starter = SidecarStarter(tmp_path)
    yield starter
    starter.stop_all()


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
