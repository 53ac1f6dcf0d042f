"""What real database lifecycles do to a kept connection, against real servers: a role that
changes under it (default_transaction_read_only flipped, a standby promoted), several hosts of
which another now has the role, and a server that closes the session itself.

Each test drives a PostgresCheck as the prober does (run bounded, reset after a failure), or the
real CheckLoop where the schedule matters. README, "Database lifecycles".
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Final

import backoff
import pytest
from sidecar_proc import SidecarStarter
from support import wait_until, wait_until_async
from support.faultproxy import ProxyFactory
from support.pg import PostgresCheckFactory, PostgresServer, ReplicaFactory, postgres_check

from sidecar.checks.postgres import PostgresCheck, PostgresSpec
from sidecar.checkspec import CheckPolicy, DatabaseTarget
from sidecar.credentials import DsnFile
from sidecar.loop import CheckLoop
from sidecar.reasons import CheckFailed, Reason
from sidecar.state import Board, CheckResult, CheckState, Transition

# The prober's bound on one run, as a check's timeout would be; generous for CI.
RUN_BOUND: Final = 5.0
SLACK: Final = 20.0


async def outcome(check: PostgresCheck) -> Reason | None:
    """One run as the prober makes it: None on a pass, else the reason (and a reset)."""
    try:
        async with asyncio.timeout(RUN_BOUND):
            await check.run()
    except CheckFailed as exc:
        await check.reset()
        return exc.reason
    return None


async def until_outcome(check: PostgresCheck, reason: Reason | None, *, within: float) -> None:
    """Run the check every 0.1 s until it gives `reason` (None: a pass)."""
    deadline = time.monotonic() + within
    while (found := await outcome(check)) is not reason:
        assert time.monotonic() < deadline, f"not {reason} within {within}s, last {found}"
        await asyncio.sleep(0.1)


def several_hosts(*servers: PostgresServer, query: str = "") -> str:
    """One DSN listing every server as a host, in order (libpq's `h1:p1,h2:p2` form)."""
    first = servers[0]
    hosts = ",".join(f"{server.host}:{server.port}" for server in servers)
    dsn = first.dsn().replace(f"{first.host}:{first.port}", hosts, 1)
    return f"{dsn}?{query}" if query else dsn


def session_ports(*servers: PostgresServer) -> list[int]:
    """The ports of the servers on which the check holds a session now."""
    return [server.port for server in servers if server.sessions() > 0]


def read_only(server: PostgresServer, on: bool) -> None:
    """Flip default_transaction_read_only as an operator (or Patroni) does: a reload."""
    value = "on" if on else "DEFAULT"
    server.execute(f"ALTER SYSTEM SET default_transaction_read_only = {value}")
    server.execute("SELECT pg_reload_conf()")


# ---- the role, judged on every run -----------------------------------------------------------


async def test_read_only_flip_under_read_write_fails_on_the_kept_connection_then_heals(
    pg_private: PostgresServer, make_postgres_check: PostgresCheckFactory
) -> None:
    """target_session_attrs=read-write: a reload that makes the server read-only fails the very
    next runs with session_attrs_mismatch, though the kept connection opened read-write."""
    check = make_postgres_check(pg_private.dsn() + "?target_session_attrs=read-write")
    assert await outcome(check) is None
    read_only(pg_private, on=True)
    # A reload reaches the idle backend asynchronously: a moment, never the connection's age.
    await until_outcome(check, Reason.SESSION_ATTRS_MISMATCH, within=5)
    read_only(pg_private, on=False)
    await until_outcome(check, None, within=5)


async def test_promoted_standby_under_standby_fails_at_once(
    pg_private: PostgresServer,
    make_replica: ReplicaFactory,
    make_postgres_check: PostgresCheckFactory,
) -> None:
    """target_session_attrs=standby on the only host: promoting it fails the next run with
    session_attrs_mismatch, on the same kept connection."""
    replica = make_replica(pg_private)
    check = make_postgres_check(replica.dsn() + "?target_session_attrs=standby")
    assert await outcome(check) is None
    (backend,) = replica.backend_pids()
    await asyncio.to_thread(replica.promote)
    assert replica.backend_pids() == {backend}  # promotion keeps sessions open
    assert await outcome(check) is Reason.SESSION_ATTRS_MISMATCH


async def test_read_write_with_several_hosts_follows_the_new_primary(
    pg_private: PostgresServer,
    make_replica: ReplicaFactory,
    make_postgres_check: PostgresCheckFactory,
) -> None:
    """A switchover under target_session_attrs=read-write with two hosts: once the old primary
    is read-only and the standby promoted, the next run finds the new primary, and passes."""
    primary = pg_private
    replica = make_replica(primary)
    dsn = several_hosts(primary, replica, query="target_session_attrs=read-write")
    check = make_postgres_check(dsn)
    assert await outcome(check) is None
    assert session_ports(primary, replica) == [primary.port]
    await asyncio.to_thread(replica.promote)
    read_only(primary, on=True)
    # The reload reaches the old primary's backend a moment later; every run passes meanwhile.
    deadline = time.monotonic() + 5
    while session_ports(primary, replica) != [replica.port]:
        assert time.monotonic() < deadline, "still on the old primary"
        assert await outcome(check) is None
        await asyncio.sleep(0.1)


async def test_require_primary_with_several_hosts_looks_for_the_primary(
    pg_private: PostgresServer,
    make_replica: ReplicaFactory,
    make_postgres_check: PostgresCheckFactory,
) -> None:
    """require_primary with two hosts and no target_session_attrs passes when the second host
    is the primary (it means read-write); with no primary among them it is not_primary."""
    replica = make_replica(pg_private)
    check = make_postgres_check(several_hosts(replica, pg_private), require_primary=True)
    assert await outcome(check) is None
    assert session_ports(pg_private, replica) == [pg_private.port]
    only_replicas = make_postgres_check(several_hosts(replica, replica), require_primary=True)
    assert await outcome(only_replicas) is Reason.NOT_PRIMARY


async def test_prefer_standby_takes_the_standby_then_the_primary_when_promoted(
    pg_private: PostgresServer,
    make_replica: ReplicaFactory,
    make_postgres_check: PostgresCheckFactory,
) -> None:
    """prefer-standby with the primary listed first connects to the standby (as libpq); once
    that standby is promoted and none is left, the first host that answers will do."""
    replica = make_replica(pg_private)
    check = make_postgres_check(
        several_hosts(pg_private, replica, query="target_session_attrs=prefer-standby")
    )
    assert await outcome(check) is None
    assert session_ports(pg_private, replica) == [replica.port]
    await asyncio.to_thread(replica.promote)
    assert await outcome(check) is None
    assert session_ports(pg_private, replica) == [pg_private.port]


# ---- a kept connection the server closed -----------------------------------------------------


async def test_session_terminated_under_the_check_is_replaced_not_reported(
    pg_private: PostgresServer, make_postgres_check: PostgresCheckFactory
) -> None:
    """pg_terminate_backend of the kept session just before a run (before the client has seen
    it go): the run replaces the connection and passes."""
    check = make_postgres_check(pg_private.dsn())
    for _ in range(3):
        assert await outcome(check) is None
        (backend,) = pg_private.backend_pids()
        # Blocking on purpose: the check's loop does not run, so it cannot notice the close.
        assert pg_private.terminate() == 1
        assert await outcome(check) is None
        assert pg_private.backend_pids() != {backend}


async def test_session_killed_in_the_middle_of_a_query_is_replaced_not_reported(
    pg_private: PostgresServer, make_postgres_check: PostgresCheckFactory
) -> None:
    """The kept session terminated while its query runs (an immediate shutdown, an operator's
    pg_terminate_backend): the error arrives before the client has marked the connection
    closed, and the run still replaces the connection and passes."""
    check = make_postgres_check(
        pg_private.dsn(), query="SELECT pg_sleep(0.5)::text = ''", expect="true"
    )
    assert await outcome(check) is None
    for _ in range(3):
        (backend,) = pg_private.backend_pids()
        run = asyncio.create_task(outcome(check))
        await wait_until_async(
            lambda: pg_private.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'PgSleep'"
                " AND application_name = 'health-sidecar'"
            ),
            message="the check's query running",
        )
        assert pg_private.terminate() == 1
        assert await run is None
        assert pg_private.backend_pids() - {backend}


class Recorder:
    """A ResultObserver keeping every result the prober produced."""

    def __init__(self) -> None:
        self.results: list[CheckResult] = []

    def observe(
        self, result: CheckResult, state: CheckState, transition: Transition | None
    ) -> None:
        self.results.append(result)


@contextlib.asynccontextmanager
async def probing(
    spec: PostgresSpec, *, jitter: Callable[[float], float] = backoff.full_jitter
) -> AsyncIterator[tuple[PostgresCheck, Recorder]]:
    """The real CheckLoop running a PostgresCheck of `spec` until the block ends (`jitter`:
    the backoff's draw, backoff's full jitter unless given)."""
    check = postgres_check(spec)
    recorder = Recorder()
    loop = CheckLoop(spec, check, Board(), observer=recorder, jitter=jitter)
    task = asyncio.create_task(loop.run())
    try:
        yield check, recorder
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await check.close()


@pytest.mark.slow
async def test_idle_session_timeout_equal_to_the_interval_fails_no_check(
    pg_private: PostgresServer,
) -> None:
    """ALTER ROLE ... SET idle_session_timeout to the check interval (the server closes the
    session just as the next check starts): not one check fails."""
    pg_private.create_role("idler", "idler-Passw0rd")
    pg_private.execute("ALTER ROLE idler SET idle_session_timeout = '1s'")
    spec = PostgresSpec(
        name="postgres",
        policy=CheckPolicy(interval=1.0, timeout=2.0, backoff_max=1.0),
        target=DatabaseTarget(dsn=pg_private.dsn("idler")),
    )
    async with probing(spec) as (_check, recorder):
        await wait_until_async(lambda: len(recorder.results) >= 8, timeout=SLACK)
    assert [r.reason for r in recorder.results if not r.ok] == []


# ---- fast recovery after a TCP-level outage ---------------------------------------------------


@pytest.mark.slow
async def test_recovery_after_a_refused_outage_does_not_wait_for_the_backoff(
    pg: PostgresServer, make_fault_proxy: ProxyFactory
) -> None:
    """The path refuses connections long enough for the backoff to reach 8 s; the moment it
    accepts again, a probe sees it and the check passes within a few seconds, not 8."""
    proxy = make_fault_proxy(pg.host, pg.port)
    spec = PostgresSpec(
        name="postgres",
        policy=CheckPolicy(interval=1.0, timeout=2.0, backoff_max=30.0),
        target=DatabaseTarget(dsn=pg.dsn(port=proxy.port)),
    )
    check = postgres_check(spec)
    recorder = Recorder()
    # No jitter: the backoff's bare ceilings, 1 s, 2 s, 4 s, 8 s, so the wait it would impose is
    # known.
    loop = CheckLoop(spec, check, Board(), observer=recorder, jitter=lambda ceiling: ceiling)
    task = asyncio.create_task(loop.run())
    try:
        await wait_until_async(lambda: recorder.results and recorder.results[-1].ok, timeout=SLACK)
        proxy.refuse()
        proxy.close_all()
        # The fourth failure in a row: the next check is due 8 s later.
        await wait_until_async(lambda: sum(not r.ok for r in recorder.results) >= 4, timeout=SLACK)
        assert {r.reason for r in recorder.results if not r.ok} <= {
            Reason.CONNECTION_REFUSED,
            Reason.CONNECTION_RESET,
            Reason.NETWORK_ERROR,
        }
        proxy.forward()
        back = time.monotonic()
        await wait_until_async(lambda: recorder.results[-1].ok, timeout=SLACK)
        assert time.monotonic() - back < 4.0
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await check.close()


# A retry delay at least this long before the stopped server comes back: the backoff would keep
# /ready at 503 for most of it; the probes make it 200 within RECOVERED_WITHIN.
LONG_DELAY: Final = 10.0
RECOVERED_WITHIN: Final = 5.0


@pytest.mark.slow
def test_stopped_server_on_a_unix_socket_is_ready_again_without_waiting_for_the_backoff(
    pg_private: PostgresServer, start_sidecar: SidecarStarter
) -> None:
    """A Unix-socket DSN: the stopped server leaves no socket file, which is connection_refused
    (nothing listens), so the first probe that finds the socket again brings /ready back, even
    when that is the first probe after a failure (a network_error waited out the delay then)."""
    server = pg_private
    env = {
        "SIDECAR_DATABASE_URL": server.socket_dsn(),
        "SIDECAR_CHECK_INTERVAL": "1",
        "SIDECAR_CHECK_TIMEOUT": "2",
        "SIDECAR_BACKOFF_MAX": "60",
    }
    sidecar = start_sidecar(env)
    server.stop()
    failing = sidecar.wait_event("check.state_changed", timeout=SLACK, to="failing")
    assert (failing["reason"], failing["details"]) == (
        "connection_refused",
        {"cause": "no server socket in its directory"},
    )

    def long_delay() -> bool:
        delays = [e["delay_seconds"] for e in sidecar.events("prober.backing_off")]
        return bool(delays) and delays[-1] >= LONG_DELAY

    # Full jitter: the delays are random, a long one comes within a few failures.
    wait_until(long_delay, timeout=120, interval=0.02, message="a retry delay of 10 s or more")
    # The server back before the sidecar's first probe of that delay (a second after the
    # failure): the sidecar is held still while it starts, so no probe can see it gone first.
    os.kill(sidecar.pid, signal.SIGSTOP)
    try:
        server.start()
    finally:
        os.kill(sidecar.pid, signal.SIGCONT)
    elapsed = sidecar.wait_status("/ready", 200, within=LONG_DELAY + SLACK)
    assert elapsed < RECOVERED_WITHIN, sidecar.tail()


# ---- rotation: the whole budget, no wedge, a growing retry delay ------------------------------

ROLE: Final = "rotor"
OLD_PASSWORD: Final = "0ld-Lifecycle-Pw7"
NEW_PASSWORD: Final = "n3w-Lifecycle-Pw9"


async def as_the_loop_runs_it(check: PostgresCheck) -> Reason | None:
    """One run bounded by the check's own timeout, as the check loop bounds it."""
    try:
        async with asyncio.timeout(check.spec.policy.timeout):
            await check.run()
    except CheckFailed as exc:
        await check.reset()
        return exc.reason
    except TimeoutError:
        await check.reset()
        return Reason.TIMEOUT
    return None


def watched(path: Path, dsn: str, timeout: float) -> tuple[PostgresCheck, DsnFile]:
    """A check on the DSN in file `path` (written here), watching it as the sidecar does."""
    path.write_text(dsn + "\n")
    target = DatabaseTarget(dsn=dsn, source="dsn_file", file_path=str(path))
    spec = PostgresSpec(name="postgres", policy=CheckPolicy(timeout=timeout), target=target)
    credentials = DsnFile(str(path), dsn)
    return postgres_check(spec, credentials), credentials


def with_host(dsn: str, host: str) -> str:
    """`dsn` with its host:port part replaced by `host` (one, or a libpq list)."""
    head, rest = dsn.split("@", 1)
    return f"{head}@{host}/{rest.split('/', 1)[1]}"


@pytest.mark.slow
async def test_rotation_to_a_slow_endpoint_is_taken_with_the_whole_budget(
    pg: PostgresServer, make_fault_proxy: ProxyFactory, tmp_path: Path
) -> None:
    """The file moves to an endpoint that takes more than half the timeout to log in; then the
    old endpoint goes silent. The new one is taken, and checks pass."""
    old, slow = make_fault_proxy(pg.host, pg.port), make_fault_proxy(pg.host, pg.port)
    # A login is four round trips (the TLS request, then SCRAM's three), each 0.4 s longer:
    # about 1.6 s of the 3 s timeout, more than half of it; a fresh start passes in about 2 s.
    slow.delay(0.2)
    check, credentials = watched(tmp_path / "dsn", pg.dsn(port=old.port), timeout=3.0)
    try:
        assert await as_the_loop_runs_it(check) is None
        (tmp_path / "dsn").write_text(pg.dsn(port=slow.port) + "\n")
        assert await as_the_loop_runs_it(check) is None
        old.blackhole()
        for _ in range(3):
            assert await as_the_loop_runs_it(check) is None
        assert credentials.current == pg.dsn(port=slow.port)
    finally:
        await check.close()


@pytest.mark.slow
async def test_old_endpoint_going_silent_makes_the_pending_dsn_the_one_used(
    pg: PostgresServer, make_fault_proxy: ProxyFactory, tmp_path: Path
) -> None:
    """The new endpoint is slow and was refused while it hung; then the old endpoint goes
    silent. At most one check fails: the next gives the pending DSN the whole timeout, as a
    fresh start would, and passes."""
    old, new = make_fault_proxy(pg.host, pg.port), make_fault_proxy(pg.host, pg.port)
    new.blackhole()
    check, credentials = watched(tmp_path / "dsn", pg.dsn(port=old.port), timeout=3.0)
    try:
        assert await as_the_loop_runs_it(check) is None
        (tmp_path / "dsn").write_text(pg.dsn(port=new.port) + "\n")
        assert await as_the_loop_runs_it(check) is None  # the candidate hung: rejected
        assert credentials.current == pg.dsn(port=old.port)
        assert not credentials.last_reload_ok
        new.delay(0.2)  # slow as above: a fresh start passes in about 2 s of 3
        old.blackhole()
        outcomes = [await as_the_loop_runs_it(check) for _ in range(4)]
        assert outcomes[0] in (None, Reason.TIMEOUT)
        assert outcomes[1:] == [None, None, None]
        assert credentials.current == pg.dsn(port=new.port)
    finally:
        await check.close()


@pytest.mark.slow
async def test_password_rotation_behind_a_silent_first_host_completes(
    pg_private: PostgresServer, make_fault_proxy: ProxyFactory, tmp_path: Path
) -> None:
    """Two hosts, the first silent: after the file gets a new password (refused at first) and
    then ALTER ROLE, the new DSN is taken, its second host reached with its own share."""
    pg = pg_private
    pg.create_role(ROLE, OLD_PASSWORD)
    silent = make_fault_proxy(pg.host, pg.port)
    silent.blackhole()
    hosts = f"{silent.host}:{silent.port},{pg.host}:{pg.port}"
    old_dsn = with_host(pg.dsn(ROLE, OLD_PASSWORD), hosts)
    new_dsn = with_host(pg.dsn(ROLE, NEW_PASSWORD), hosts)
    check, credentials = watched(tmp_path / "dsn", old_dsn, timeout=2.0)
    try:
        assert await as_the_loop_runs_it(check) is None
        (tmp_path / "dsn").write_text(new_dsn + "\n")
        assert await as_the_loop_runs_it(check) is None
        assert credentials.reloads["rejected"] == 1
        pg.alter_password(ROLE, NEW_PASSWORD)
        deadline = time.monotonic() + SLACK
        while credentials.current != new_dsn:
            assert time.monotonic() < deadline, "the new DSN was never taken"
            assert await as_the_loop_runs_it(check) is None
            await asyncio.sleep(0.2)
    finally:
        await check.close()


@pytest.mark.slow
async def test_wrong_password_in_the_file_is_retried_at_a_growing_delay(
    pg_private: PostgresServer, tmp_path: Path
) -> None:
    """A file rotated to a wrong password, checks every 0.2 s for 6 s: the server sees a
    handful of failed logins (1 s, 2 s, 4 s apart at most), not one per check; every check
    passes on the kept connection."""
    pg = pg_private
    pg.create_role(ROLE, OLD_PASSWORD)
    check, credentials = watched(tmp_path / "dsn", pg.dsn(ROLE, OLD_PASSWORD), timeout=2.0)

    def failed_logins() -> int:
        return pg.log_path.read_text(errors="replace").count(
            f'password authentication failed for user "{ROLE}"'
        )

    try:
        assert await as_the_loop_runs_it(check) is None
        (tmp_path / "dsn").write_text(pg.dsn(ROLE, "not-the-password") + "\n")
        runs = 0
        started = time.monotonic()
        while time.monotonic() - started < 6.0:
            assert await as_the_loop_runs_it(check) is None
            runs += 1
            await asyncio.sleep(0.2)
        # The server logs each failed login; give the last line a moment to land.
        await asyncio.sleep(0.5)
        assert runs >= 20
        assert 2 <= failed_logins() <= 5
        assert credentials.reloads["rejected"] == 1
    finally:
        await check.close()


def backing_off_to_8s(dsn: str) -> PostgresSpec:
    """A check every second whose backoff, without jitter, reaches 8 s at the fourth failure."""
    return PostgresSpec(
        name="postgres",
        policy=CheckPolicy(interval=1.0, timeout=2.0, backoff_max=30.0),
        target=DatabaseTarget(dsn=dsn),
    )


def no_jitter(ceiling: float) -> float:
    return ceiling


@pytest.mark.slow
async def test_failover_is_followed_as_soon_as_the_standby_is_promoted(
    pg_private: PostgresServer, make_replica: ReplicaFactory, make_fault_proxy: ProxyFactory
) -> None:
    """read-write over two hosts, the first gone (refused), the second a standby: checks fail
    with session_attrs_mismatch while the backoff grows to 8 s; promoting the standby makes
    the check pass within a few seconds, on the session it kept there (no new login)."""
    replica = make_replica(pg_private)
    gone = make_fault_proxy(pg_private.host, pg_private.port)
    gone.refuse()
    hosts = f"{gone.host}:{gone.port},{replica.host}:{replica.port}"
    dsn = with_host(replica.dsn(), hosts) + "?target_session_attrs=read-write"
    async with probing(backing_off_to_8s(dsn), jitter=no_jitter) as (_, recorder):
        # The fourth failure in a row: the next check is due 8 s later.
        await wait_until_async(lambda: len(recorder.results) >= 4, timeout=SLACK)
        assert {r.reason for r in recorder.results} == {Reason.SESSION_ATTRS_MISMATCH}
        watched_backends = replica.backend_pids()
        await asyncio.to_thread(replica.promote)
        promoted = time.monotonic()
        await wait_until_async(lambda: recorder.results[-1].ok, timeout=SLACK)
        assert time.monotonic() - promoted < 4.0
        assert replica.backend_pids() == watched_backends


@pytest.mark.slow
async def test_failover_to_any_of_several_standbys_is_followed_at_once(
    pg_private: PostgresServer, make_replica: ReplicaFactory, make_fault_proxy: ProxyFactory
) -> None:
    """read-write over three hosts (Patroni's shape), the primary gone, two standbys: each
    standby's session is watched, so promoting the second one (not the first that answered)
    makes the check pass within a few seconds, on the session it kept there (no new login)."""
    first, second = make_replica(pg_private), make_replica(pg_private)
    gone = make_fault_proxy(pg_private.host, pg_private.port)
    gone.refuse()
    hosts = ",".join(f"{s.host}:{s.port}" for s in (gone, first, second))
    dsn = with_host(first.dsn(), hosts) + "?target_session_attrs=read-write"
    async with probing(backing_off_to_8s(dsn), jitter=no_jitter) as (_, recorder):
        # The fourth failure in a row: the next check is due 8 s later.
        await wait_until_async(lambda: len(recorder.results) >= 4, timeout=SLACK)
        assert {r.reason for r in recorder.results} == {Reason.SESSION_ATTRS_MISMATCH}
        # The sessions of earlier runs, let go, leave the server a moment after.
        await wait_until_async(lambda: len(second.backend_pids()) == 1, timeout=SLACK)
        watched_backends = second.backend_pids()
        await asyncio.to_thread(second.promote)
        promoted = time.monotonic()
        await wait_until_async(lambda: recorder.results[-1].ok, timeout=SLACK)
        assert time.monotonic() - promoted < 4.0
        assert second.backend_pids() == watched_backends
        # The other standby's watch is let go.
        await wait_until_async(lambda: first.sessions() == 0, timeout=SLACK)


@pytest.mark.slow
async def test_member_coming_back_with_the_role_is_taken_at_once(
    pg_private: PostgresServer, make_replica: ReplicaFactory, make_fault_proxy: ProxyFactory
) -> None:
    """read-write over two hosts: the primary's path refuses, the standby answers with the
    wrong role, and the backoff grows to 8 s; when the primary listens again, a probe sees it
    and the check passes within a few seconds."""
    replica = make_replica(pg_private)
    primary_path = make_fault_proxy(pg_private.host, pg_private.port)
    primary_path.refuse()
    hosts = f"{primary_path.host}:{primary_path.port},{replica.host}:{replica.port}"
    dsn = with_host(pg_private.dsn(), hosts) + "?target_session_attrs=read-write"
    async with probing(backing_off_to_8s(dsn), jitter=no_jitter) as (_, recorder):
        await wait_until_async(lambda: len(recorder.results) >= 4, timeout=SLACK)
        assert {r.reason for r in recorder.results} == {Reason.SESSION_ATTRS_MISMATCH}
        primary_path.forward()
        back = time.monotonic()
        await wait_until_async(lambda: recorder.results[-1].ok, timeout=SLACK)
        assert time.monotonic() - back < 4.0
        assert pg_private.sessions() == 1


@pytest.mark.slow
async def test_primary_on_a_unix_socket_coming_back_is_taken_at_once(
    pg_private: PostgresServer, make_replica: ReplicaFactory
) -> None:
    """read-write over the stopped primary's Unix socket and the standby's TCP address, each
    with its own port: the missing socket counts as refused, so when the primary starts again
    a probe sees its socket and the check passes within a few seconds, over that socket."""
    primary = pg_private
    replica = make_replica(primary)
    dsn = (
        primary.socket_dsn().split("?", 1)[0]
        + f"?host={primary.socket_dir},{replica.host}&port={primary.port},{replica.port}"
        + "&target_session_attrs=read-write"
    )
    await asyncio.to_thread(primary.stop)
    async with probing(backing_off_to_8s(dsn), jitter=no_jitter) as (_, recorder):
        await wait_until_async(lambda: len(recorder.results) >= 4, timeout=SLACK)
        assert {r.reason for r in recorder.results} == {Reason.SESSION_ATTRS_MISMATCH}
        await asyncio.to_thread(primary.start)
        back = time.monotonic()
        await wait_until_async(lambda: recorder.results[-1].ok, timeout=SLACK)
        assert time.monotonic() - back < 4.0
        assert primary.sessions() == 1
