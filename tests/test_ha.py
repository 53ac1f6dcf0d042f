"""The real sidecar against a real Patroni cluster: does `/ready` tell the truth through the
lifecycles a production PostgreSQL meets (switchover, failover, promotion, a read-only flip, a
server that closes idle sessions, DSN rotations)?

One cluster (tests/support/patroni.py: two members and an etcd) serves the whole run; the
`patroni` fixture hands it over settled and brings it back to a primary and a streaming replica
after each test. Each test runs `python -m sidecar` with a multi-host DSN over both members (in
a file, as a mounted Secret would hold it) and samples, at about 10 Hz, the sidecar's `/ready`
and the cluster's own view (Patroni's REST `/primary` and `/replica` on each member). It bounds
the longest window in which `/ready` is wrong (ready while no acceptable server exists, or not
ready while one does): a few seconds plus one check interval, never "no blip at all", since the
answer is by design one check old. Tests about a behaviour use short intervals; the switchover
and failover tests use the defaults, the experience nobody tuned.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Final

import pytest
from sidecar_proc import SidecarProcess
from support.faultproxy import FaultProxy, ProxyFactory
from support.patroni import SIDECAR_ROLE, PatroniCluster
from support.windows import Watch

pytestmark = [
    pytest.mark.slow,
    # In CI (CI=true) .ci/run installs them: there a missing tool is a failure, not a skip.
    pytest.mark.skipif(
        os.environ.get("CI") != "true"
        and (shutil.which("patroni") is None or shutil.which("etcd") is None),
        reason="patroni/etcd not installed: bash .ci/ha-tools.sh",
    ),
]

# Short timings for tests about a behaviour. Timeout 2 s: Patroni's members answer within
# milliseconds, but a loaded CI machine may not.
SHORT_ENV: Final[Mapping[str, str]] = {
    "SIDECAR_CHECK_INTERVAL": "1",
    "SIDECAR_CHECK_TIMEOUT": "2",
    "SIDECAR_BACKOFF_MAX": "2",
    "SIDECAR_DRAIN_SECONDS": "0",
    "SIDECAR_LOG_LEVEL": "debug",
}
# The contract's defaults (interval 5 s, timeout 2 s, backoff up to 30 s), only quicker to stop.
DEFAULT_ENV: Final[Mapping[str, str]] = {"SIDECAR_DRAIN_SECONDS": "0"}
DEFAULT_INTERVAL: Final = 5.0
# On top of one check interval: "a few seconds" for the sidecar to see a change and act on it.
SLACK_SECONDS: Final = 5.0
# How long a test holds a state (no primary, no standby, read-only) so that a sidecar that never
# notices it shows a window longer than the bound, not one cut short by the next event.
READY_TIMEOUT: Final = 60.0
FAILOVER_TIMEOUT: Final = 60.0


def bound(interval: float) -> float:
    return interval + SLACK_SECONDS


def write_dsn(path: Path, dsn: str) -> None:
    """Replace the DSN file in one rename, as a Secret volume's symlink swap does."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(dsn + "\n")
    tmp.replace(path)


@contextlib.contextmanager
def sidecar_on(
    dsn_file: Path, tmp_path: Path, env: Mapping[str, str], name: str = "sidecar"
) -> Iterator[SidecarProcess]:
    """A real sidecar reading `dsn_file`, ready before the block starts."""
    with SidecarProcess(
        {"SIDECAR_DATABASE_URL_FILE": str(dsn_file), **env},
        defaults={},
        log_dir=tmp_path,
        name=name,
    ) as sidecar:
        sidecar.wait_listening()
        wait_for(lambda: sidecar.status("/ready") == 200, READY_TIMEOUT, "sidecar ready", sidecar)
        yield sidecar


def wait_for(
    predicate: Callable[[], bool], timeout: float, what: str, sidecar: SidecarProcess | None = None
) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            tail = f"\n{sidecar.tail()}" if sidecar is not None else ""
            raise AssertionError(f"{what}: not within {timeout:g}s{tail}")
        time.sleep(0.1)


def agree(watch: Watch, sidecar: SidecarProcess, seconds: float) -> None:
    """Wait (at most `seconds`) until the sidecar's answer matches the truth and holds for 1 s;
    no failure here: the windows say what went wrong."""
    deadline = time.monotonic() + seconds
    agreed_since: float | None = None
    while time.monotonic() < deadline:
        truth = watch.truth_now()
        answer = sidecar.status("/ready") == 200
        if truth is not None and truth == answer:
            agreed_since = agreed_since or time.monotonic()
            if time.monotonic() - agreed_since >= 1.0:
                return
        else:
            agreed_since = None
        time.sleep(0.1)


def assert_window(watch: Watch, limit: float, sidecar: SidecarProcess) -> None:
    longest = watch.longest()
    assert longest < limit, (
        f"/ready was wrong for {longest:.1f}s in one window (bound {limit:g}s)\n"
        f"{watch.describe()}\n{sidecar.tail(2000)}"
    )


def ready_probe(sidecar: SidecarProcess) -> Callable[[], bool]:
    return lambda: sidecar.status("/ready") == 200


# ---- the cluster itself -----------------------------------------------------------------------


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state == "Z"


def test_a_stopped_cluster_leaves_no_process_and_no_directory() -> None:
    """`PatroniCluster.stop()` ends etcd, both Patronis and both postmasters by PID and deletes
    their directories (a cluster of its own, not the shared one)."""
    cluster = PatroniCluster()
    try:
        cluster.start()
        assert cluster.etcd is not None
        assert cluster.etcd.process is not None
        pids = [cluster.etcd.process.pid]
        for member in cluster.members:
            pids += [pid for pid in (member.patroni_pid, member.postmaster_pid()) if pid]
        assert len(pids) == 5, pids
        directories = [cluster.etcd.directory, cluster.base_dir]
    finally:
        cluster.stop()
    assert [pid for pid in pids if not _gone(pid)] == []
    assert [d for d in directories if d is not None and d.exists()] == []


# ---- role changes ------------------------------------------------------------------------------


def test_switchover_under_a_read_write_dsn_is_followed_within_the_bound(
    patroni: PatroniCluster, tmp_path: Path
) -> None:
    """Default settings, read-write DSN over both members: a Patroni switchover leaves /ready
    wrong for less than one check interval plus a few seconds."""
    dsn_file = tmp_path / "dsn"
    write_dsn(dsn_file, patroni.dsn(target_session_attrs="read-write"))
    with sidecar_on(dsn_file, tmp_path, DEFAULT_ENV) as sidecar:
        with Watch(ready_probe(sidecar), patroni.has_primary) as watch:
            time.sleep(1.0)
            patroni.switchover()
            # At least one check after the switchover, which met the old primary's end.
            time.sleep(DEFAULT_INTERVAL + 2)
            agree(watch, sidecar, bound(DEFAULT_INTERVAL) + 10)
        assert_window(watch, bound(DEFAULT_INTERVAL), sidecar)


def test_failover_after_kill_9_is_followed_within_the_bound(
    patroni: PatroniCluster, tmp_path: Path
) -> None:
    """Default settings, read-write DSN: `kill -9` of the leader's Patroni and postmaster; /ready
    is wrong for less than one check interval plus a few seconds, before and after the replica's
    promotion (the session-attrs failures meanwhile must not delay the recovery)."""
    dsn_file = tmp_path / "dsn"
    write_dsn(dsn_file, patroni.dsn(target_session_attrs="read-write"))
    with sidecar_on(dsn_file, tmp_path, DEFAULT_ENV) as sidecar:
        with Watch(ready_probe(sidecar), patroni.has_primary) as watch:
            time.sleep(1.0)
            killed = patroni.kill_leader()
            survivor = patroni.other(killed)
            wait_for(survivor.is_primary, FAILOVER_TIMEOUT, "the replica promoted")
            time.sleep(DEFAULT_INTERVAL + 2)  # at least one check on the new primary
            agree(watch, sidecar, bound(DEFAULT_INTERVAL) + 10)
        assert_window(watch, bound(DEFAULT_INTERVAL), sidecar)


def test_standby_promoted_under_a_standby_dsn_is_not_ready_until_a_standby_returns(
    patroni: PatroniCluster, tmp_path: Path
) -> None:
    """`target_session_attrs=standby`: the replica the sidecar uses is promoted (the leader was
    killed) and no standby exists: /ready turns 503 within the bound; once the old leader
    rejoins as a replica, 200 again within the bound."""
    interval = float(SHORT_ENV["SIDECAR_CHECK_INTERVAL"])
    dsn_file = tmp_path / "dsn"
    write_dsn(dsn_file, patroni.dsn(target_session_attrs="standby"))
    with sidecar_on(dsn_file, tmp_path, SHORT_ENV) as sidecar:
        with Watch(ready_probe(sidecar), patroni.has_replica) as watch:
            time.sleep(1.0)
            killed = patroni.kill_leader()
            wait_for(patroni.other(killed).is_primary, FAILOVER_TIMEOUT, "the replica promoted")
            # No standby at all now: hold it longer than the bound.
            time.sleep(bound(interval) + 2)
            patroni.restart_member(killed)
            wait_for(killed.is_replica, FAILOVER_TIMEOUT, "the old leader back as a replica")
            agree(watch, sidecar, bound(interval) + 10)
        assert_window(watch, bound(interval), sidecar)


def test_read_only_flip_under_a_read_write_dsn_is_seen_on_the_kept_connection(
    patroni: PatroniCluster, tmp_path: Path
) -> None:
    """`target_session_attrs=read-write`: `ALTER SYSTEM SET default_transaction_read_only = on`
    and a reload on the primary leave no read-write server: /ready turns 503 within the bound
    (not after the connection's 300 s age), and 200 again within the bound after the reset."""
    interval = float(SHORT_ENV["SIDECAR_CHECK_INTERVAL"])
    dsn_file = tmp_path / "dsn"
    write_dsn(dsn_file, patroni.dsn(target_session_attrs="read-write"))
    leader = patroni.leader()
    assert leader is not None
    read_only = False

    def truth() -> bool:
        return not read_only and patroni.has_primary()

    try:
        with sidecar_on(dsn_file, tmp_path, SHORT_ENV) as sidecar:
            with Watch(ready_probe(sidecar), truth) as watch:
                time.sleep(1.0)
                leader.execute("ALTER SYSTEM SET default_transaction_read_only = on")
                leader.execute("SELECT pg_reload_conf()")
                read_only = True
                agree(watch, sidecar, bound(interval) + 2)
                time.sleep(1.0)
                leader.execute("ALTER SYSTEM RESET default_transaction_read_only")
                leader.execute("SELECT pg_reload_conf()")
                read_only = False
                agree(watch, sidecar, bound(interval) + 10)
            assert_window(watch, bound(interval), sidecar)
    finally:
        leader.execute("ALTER SYSTEM RESET default_transaction_read_only")
        leader.execute("SELECT pg_reload_conf()")


# ---- server-side limits ------------------------------------------------------------------------


def test_idle_session_timeout_on_the_role_does_not_make_ready_flap(
    patroni: PatroniCluster, tmp_path: Path
) -> None:
    """`ALTER ROLE ... SET idle_session_timeout` equal to the check interval (2 s): the server
    closes the kept session just as a check begins, the database is healthy throughout, and
    /ready is wrong for less than a second in total over 20 s (a kept connection the server
    closed is replaced, not reported)."""
    interval = 2
    env = {**SHORT_ENV, "SIDECAR_CHECK_INTERVAL": str(interval)}
    dsn_file = tmp_path / "dsn"
    write_dsn(dsn_file, patroni.dsn(target_session_attrs="read-write"))
    leader = patroni.leader()
    assert leader is not None
    # Equal to the interval, the server's close races the next check: about half the checks
    # met a closed session before it was replaced (a shorter timeout closes it well before the
    # check, which then sees it closed and reconnects).
    leader.execute(f"ALTER ROLE \"{SIDECAR_ROLE}\" SET idle_session_timeout = '{interval}s'")
    try:
        with sidecar_on(dsn_file, tmp_path, env) as sidecar:
            with Watch(ready_probe(sidecar), patroni.has_primary) as watch:
                time.sleep(20.0)
            total = watch.total()
            assert total < 1.0, (
                f"/ready was wrong for {total:.1f}s in total over 20 s of a healthy cluster\n"
                f"{watch.describe()}\n{sidecar.tail(2000)}"
            )
    finally:
        leader.execute(f'ALTER ROLE "{SIDECAR_ROLE}" RESET idle_session_timeout')


# ---- rotation ----------------------------------------------------------------------------------


# A FaultProxy delay of 0.2 s per chunk and direction makes a login (SSL request, startup, two
# SCRAM round trips) take about 1.6 s and a first query about 0.9 s more: within a 3 s check's
# budget, beyond half of it.
SLOW_DELAY_SECONDS: Final = 0.2
SLOW_TIMEOUT: Final = "3"


def test_rotation_to_a_slower_endpoint_survives_the_old_one_going_away(
    patroni: PatroniCluster, make_fault_proxy: ProxyFactory, tmp_path: Path
) -> None:
    """The DSN file moves to an endpoint that takes ~2 s to log in (timeout 3 s), then the old
    endpoint goes away: /ready stays right (the new endpoint is tried with the check's whole
    budget), and a freshly started sidecar on the same file agrees."""
    interval = float(SHORT_ENV["SIDECAR_CHECK_INTERVAL"])
    env = {**SHORT_ENV, "SIDECAR_CHECK_TIMEOUT": SLOW_TIMEOUT}
    leader = patroni.leader()
    assert leader is not None
    old: FaultProxy = make_fault_proxy("127.0.0.1", leader.pg_port)
    new: FaultProxy = make_fault_proxy("127.0.0.1", leader.pg_port)
    new.delay(SLOW_DELAY_SECONDS)
    dsn_file = tmp_path / "dsn"
    write_dsn(dsn_file, patroni.dsn(hosts=[("127.0.0.1", old.port)]))
    with sidecar_on(dsn_file, tmp_path, env) as sidecar:
        with Watch(ready_probe(sidecar), patroni.has_primary) as watch:
            time.sleep(1.0)
            write_dsn(dsn_file, patroni.dsn(hosts=[("127.0.0.1", new.port)]))
            time.sleep(3 * interval + 3)
            old.reset()  # the old endpoint is gone: every connection, open or new, is reset
            time.sleep(bound(interval) + 2)
            agree(watch, sidecar, bound(interval))
        assert_window(watch, bound(interval), sidecar)
    with sidecar_on(dsn_file, tmp_path, env, name="fresh") as fresh:
        assert fresh.status("/ready") == 200


def test_rotation_to_a_wrong_password_is_retried_with_a_growing_delay(
    patroni: PatroniCluster, make_fault_proxy: ProxyFactory, tmp_path: Path
) -> None:
    """The DSN file is rotated to a wrong password while the kept connection works: /ready stays
    200, and the database sees the rejected login far less than once per check (a third at
    most over 30 s of 1 s checks)."""
    interval = float(SHORT_ENV["SIDECAR_CHECK_INTERVAL"])
    leader = patroni.leader()
    assert leader is not None
    proxy: FaultProxy = make_fault_proxy("127.0.0.1", leader.pg_port)
    dsn_file = tmp_path / "dsn"
    hosts = [("127.0.0.1", proxy.port)]
    write_dsn(dsn_file, patroni.dsn(hosts=hosts))
    seconds = 30.0
    with sidecar_on(dsn_file, tmp_path, SHORT_ENV) as sidecar:
        with Watch(ready_probe(sidecar), patroni.has_primary) as watch:
            before = proxy.accepted_total
            write_dsn(dsn_file, patroni.dsn(hosts=hosts, password="not-the-password"))
            time.sleep(seconds)
            attempts = proxy.accepted_total - before
        assert_window(watch, bound(interval), sidecar)
    checks = seconds / interval
    assert attempts <= checks / 3, (
        f"{attempts} logins with the rejected DSN in {seconds:g}s of {interval:g}s checks"
        f"\n{sidecar.tail(3000)}"
    )


def test_password_rotation_with_a_silent_first_host_recovers_when_the_old_session_ends(
    patroni: PatroniCluster, make_fault_proxy: ProxyFactory, tmp_path: Path
) -> None:
    """A DSN over a silent host (it accepts and never answers) and the primary: the file gets a
    new password, then `ALTER ROLE`, then the kept session ends. The new DSN must not spend its
    whole budget on the silent host: /ready is 200 again within the bound."""
    interval = float(SHORT_ENV["SIDECAR_CHECK_INTERVAL"])
    env = {**SHORT_ENV, "SIDECAR_CHECK_TIMEOUT": "3"}
    leader = patroni.leader()
    assert leader is not None
    role, old_password, new_password = "rotor", "rotor-old-password", "rotor-new-password"
    leader.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{old_password}'")
    silent: FaultProxy = make_fault_proxy("127.0.0.1", leader.pg_port)
    silent.blackhole()
    hosts = [("127.0.0.1", silent.port), ("127.0.0.1", leader.pg_port)]
    dsn_file = tmp_path / "dsn"
    write_dsn(dsn_file, patroni.dsn(user=role, password=old_password, hosts=hosts))
    try:
        with sidecar_on(dsn_file, tmp_path, env) as sidecar:
            with Watch(ready_probe(sidecar), patroni.has_primary) as watch:
                write_dsn(dsn_file, patroni.dsn(user=role, password=new_password, hosts=hosts))
                time.sleep(2 * interval)
                leader.execute(f"ALTER ROLE {role} PASSWORD '{new_password}'")
                time.sleep(2 * interval)
                # The kept session ends (a restart, a DBA, the connection's age): only the new
                # password opens a new one now.
                leader.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1",
                    role,
                )
                time.sleep(bound(interval) + 2)
                agree(watch, sidecar, bound(interval))
            assert_window(watch, bound(interval), sidecar)
    finally:
        leader.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1", role
        )
        leader.execute(f"DROP ROLE IF EXISTS {role}")
