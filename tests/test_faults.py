"""Faults against the real thing: a sidecar subprocess, real PostgreSQL, a fault-injecting proxy.

Each test breaks one thing, then heals it, and checks what kubelet and Prometheus would see
(/health, /ready, /startup, /metrics), the `check.state_changed` log line and its reason, and
that exactly one `health-sidecar` session is open afterwards. Detection and recovery times are
measured and written to <out>/faults.json (see `Measurements`); docs/reliability.md quotes them.

Timings are scaled down (interval 0.5 s, timeout 1 s, backoff cap 2 s); every bound below adds
SLACK_SECONDS on top of what the settings imply, because CI machines are slow and busy.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sidecar_proc import (
    Measurements,
    Sampler,
    SidecarProcess,
    SidecarStarter,
    set_fault,
    timed_until,
)
from support import LOOPBACK, SLACK, free_port
from support.faultproxy import ProxyFactory
from support.pg import SUPERUSER, PgFactory, PostgresServer

INTERVAL = 0.5
TIMEOUT = 1.0
BACKOFF_MAX = 2.0
# A failure shows at the next check: at most one interval plus one timeout away.
DETECT_WITHIN = INTERVAL + TIMEOUT + SLACK
# A healed fault shows at the next retry: at most the backoff cap plus one check away.
RECOVER_WITHIN = BACKOFF_MAX + TIMEOUT + INTERVAL + SLACK
CHECK = "postgres"

StartSidecar = SidecarStarter


@pytest.fixture(scope="module")
def figures() -> Iterator[Measurements]:
    """Detection and recovery times of this module, written to faults.json at the end."""
    figures = Measurements("faults.json")
    yield figures
    path = figures.write()
    print(f"fault measurements: {path}")


@pytest.fixture
def start_sidecar(start_sidecar: SidecarStarter) -> Iterator[SidecarStarter]:
    """The shared starter; at teardown every sidecar must have lived until stopped and exited 0
    on SIGTERM, with JSON lines only and no traceback."""
    yield start_sidecar
    for end in start_sidecar.stop_all():
        sidecar = end.sidecar
        print(sidecar.tail())
        assert end.alive_until_stopped, f"the sidecar died during the test (exit {end.exit_code})"
        assert end.exit_code == 0, f"the sidecar exited {end.exit_code} on SIGTERM"
        assert "Traceback" not in sidecar.stderr()
        assert sidecar.non_json_lines() == []


# ---- helpers ---------------------------------------------------------------------------------


def expect(sidecar: SidecarProcess, *, health: int, ready: int, startup: int) -> None:
    assert sidecar.statuses() == {"/health": health, "/ready": ready, "/startup": startup}


def assert_one_session(pg: PostgresServer, *, pid_before: int | None = None) -> int:
    """Exactly one health-sidecar session, now and two checks later; return its backend PID.

    Each check starts a statement on the session, which moves its query_start: waiting for
    two new values waits for two checks, however slow the machine."""
    pg.wait_for_sessions(1, timeout=15)
    seen: set[object] = set()

    def two_more_checks() -> bool:
        seen.update(row["query_start"] for row in _sessions(pg))
        return len(seen) >= 3  # the one at the start, and two more

    timed_until(two_more_checks, timeout=SLACK, message="two more checks")
    rows = _sessions(pg)
    assert len(rows) == 1, f"sessions: {rows}"
    pid: int = rows[0]["pid"]
    if pid_before is not None:
        assert pid != pid_before, "the old session survived the fault"
    return pid


def _sessions(pg: PostgresServer) -> list[dict[str, Any]]:
    return pg.fetch(
        "SELECT pid, query_start FROM pg_stat_activity WHERE application_name = 'health-sidecar'",
        database="tests_support",
    )


def session_pid(pg: PostgresServer) -> int | None:
    rows = pg.fetch(
        "SELECT pid FROM pg_stat_activity WHERE application_name = 'health-sidecar'",
        database="tests_support",
    )
    return rows[0]["pid"] if len(rows) == 1 else None


def failing_event(sidecar: SidecarProcess, after: int = 0) -> dict[str, Any]:
    return sidecar.wait_event("check.state_changed", timeout=SLACK, to="failing", after=after)


def still_failing(sidecar: SidecarProcess) -> None:
    """Wait for the failed check after the one that turned the state to failing: the failure
    held, seen rather than slept for."""
    sidecar.wait_event("check.completed", timeout=SLACK, ok=False, after=1)


def passing_event(sidecar: SidecarProcess, after: int = 0) -> dict[str, Any]:
    return sidecar.wait_event("check.state_changed", timeout=SLACK, to="passing", after=after)


def assert_failing_metrics(sidecar: SidecarProcess, reason: str, *, started: bool) -> None:
    m = sidecar.metrics()

    def value(name: str, **labels: str) -> float:
        return m[(name, frozenset(labels.items()))]

    assert value("health_sidecar_check_up", check=CHECK) == 0
    assert value("health_sidecar_ready") == 0
    assert value("health_sidecar_started") == (1 if started else 0)
    assert value("health_sidecar_probe_loop_healthy") == 1
    assert value("health_sidecar_check_failures_total", check=CHECK, reason=reason) >= 1
    assert value("health_sidecar_check_total", check=CHECK, outcome="fail") >= 1
    assert value("health_sidecar_check_transitions_total", check=CHECK, to="failing") >= 1
    assert value("health_sidecar_check_consecutive_failures", check=CHECK) >= 1
    if not started:
        assert value("health_sidecar_check_last_success_timestamp_seconds", check=CHECK) == 0


def assert_passing_metrics(sidecar: SidecarProcess, *, healed_at_wall: float) -> None:
    m = sidecar.metrics()

    def value(name: str, **labels: str) -> float:
        return m[(name, frozenset(labels.items()))]

    assert value("health_sidecar_check_up", check=CHECK) == 1
    assert value("health_sidecar_ready") == 1
    assert value("health_sidecar_started") == 1
    assert value("health_sidecar_probe_loop_healthy") == 1
    assert value("health_sidecar_check_consecutive_failures", check=CHECK) == 0
    assert value("health_sidecar_check_transitions_total", check=CHECK, to="passing") >= 1
    assert value("health_sidecar_check_last_success_timestamp_seconds", check=CHECK) >= (
        healed_at_wall - 1
    )


@dataclass
class Outage:
    reason: str
    detect_seconds: float
    recover_seconds: float
    health_statuses: set[int]
    slowest_health_seconds: float


def outage(
    sidecar: SidecarProcess,
    *,
    inject: Callable[[], object],
    heal: Callable[[], object],
    reasons: set[str],
    hold: float = 1.5,
) -> Outage:
    """From ready: inject, see /ready fail with one of `reasons` while /health and /startup
    stay 200, heal, see /ready pass again. Times are from inject/heal to /ready's answer."""
    expect(sidecar, health=200, ready=200, startup=200)
    fds_before = sidecar.open_fds()

    def transitions(to: str) -> int:
        return len(sidecar.events("check.state_changed", to=to))

    # Ready, so the latest transition was to passing; the log writer thread may not have
    # written its line yet when /ready answers. Count once it has, or `after` is off by one.
    timed_until(
        lambda: transitions("passing") == transitions("failing") + 1,
        timeout=SLACK,
        message="the latest state change (to passing) logged",
    )
    failures_before = transitions("failing")
    passes_before = transitions("passing")
    with Sampler(sidecar, "/health") as health:
        injected = time.monotonic()
        inject()
        detect = sidecar.wait_status("/ready", 503, within=DETECT_WITHIN, since=injected)
        event = failing_event(sidecar, after=failures_before)
        assert event["from"] == "passing"
        assert event["reason"] in reasons, event
        assert event["level"] == "warning"
        time.sleep(hold)
        expect(sidecar, health=200, ready=503, startup=200)
        reply = sidecar.get("/ready?verbose")
        assert reply.headers["cache-control"] == "no-store"
        body = reply.json()
        assert body["checks"][CHECK][0]["output"] in reasons, body
        assert_failing_metrics(sidecar, event["reason"], started=True)
        healed = time.monotonic()
        healed_wall = time.time()
        heal()
        recover = sidecar.wait_status("/ready", 200, within=RECOVER_WITHIN, since=healed)
    back = passing_event(sidecar, after=passes_before)
    assert back["from"] == "failing"
    assert back["reason"] is None
    assert back["previous_state_seconds"] > 0
    expect(sidecar, health=200, ready=200, startup=200)
    assert_passing_metrics(sidecar, healed_at_wall=healed_wall)
    # No socket left behind by the failed attempts.
    timed_until(
        lambda: sidecar.open_fds() <= fds_before,
        timeout=SLACK,
        message=f"open fds back to {fds_before}",
    )
    # Liveness never depended on the database: every /health answer was a prompt 200.
    assert health.statuses() == {200}, health.samples
    assert health.slowest_seconds() < 1.0
    return Outage(
        reason=event["reason"],
        detect_seconds=detect,
        recover_seconds=recover,
        health_statuses=health.statuses(),
        slowest_health_seconds=health.slowest_seconds(),
    )


def record(figures: Measurements, fault: str, result: Outage, sessions: int, **extra: Any) -> None:
    figures.add(
        fault=fault,
        reason=result.reason,
        detect_seconds=result.detect_seconds,
        recover_seconds=result.recover_seconds,
        health="200 throughout" if result.health_statuses == {200} else str(result.health_statuses),
        slowest_health_seconds=result.slowest_health_seconds,
        sessions_after=sessions,
        **extra,
    )


def dsn_env(dsn: str) -> dict[str, str]:
    return {"SIDECAR_DATABASE_URL": dsn}


# ---- the database itself ---------------------------------------------------------------------


@pytest.mark.slow
def test_database_down_at_start_comes_up_and_sidecar_starts(
    pg_private: PostgresServer, start_sidecar: StartSidecar, figures: Measurements
) -> None:
    """Database down at start: /startup and /ready 503, /health 200; once up, all 200."""
    pg_private.stop()
    launched = time.monotonic()
    sidecar = start_sidecar(dsn_env(pg_private.dsn()), ready=False)
    event = sidecar.wait_event("check.state_changed", timeout=SLACK, to="failing")
    detect = time.monotonic() - launched
    assert event["from"] == "unknown"
    assert event["reason"] == "connection_refused"
    still_failing(sidecar)
    expect(sidecar, health=200, ready=503, startup=503)
    assert_failing_metrics(sidecar, "connection_refused", started=False)
    assert sidecar.get("/startup").json()["checks"][CHECK][0]["output"] == "connection_refused"

    healed = time.monotonic()
    healed_wall = time.time()
    pg_private.start()
    recover = sidecar.wait_status("/startup", 200, within=RECOVER_WITHIN, since=healed)
    sidecar.wait_status("/ready", 200, within=SLACK)
    assert passing_event(sidecar)["from"] == "failing"
    assert_passing_metrics(sidecar, healed_at_wall=healed_wall)
    sessions = pg_private.sessions()
    assert_one_session(pg_private)
    figures.add(
        fault="database down at start, then up",
        reason=event["reason"],
        detect_seconds=detect,
        recover_seconds=recover,
        health="200 throughout",
        sessions_after=sessions,
        note="detect: from process start to the first failing state",
    )


@pytest.mark.slow
def test_database_stop_and_start_unreadies_then_recovers(
    pg_private: PostgresServer, start_sidecar: StartSidecar, figures: Measurements
) -> None:
    """A stopped database makes /ready 503 within a check; started again, /ready 200."""
    sidecar = start_sidecar(dsn_env(pg_private.dsn()))
    before = session_pid(pg_private)
    result = outage(
        sidecar,
        inject=pg_private.stop,
        heal=pg_private.start,
        reasons={"connection_refused", "server_shutdown", "server_starting", "connection_reset"},
    )
    assert_one_session(pg_private, pid_before=before)
    record(figures, "database stopped (fast), then started", result, pg_private.sessions())


@pytest.mark.slow
def test_restart_storm_leaves_one_session_and_liveness_untouched(
    pg_private: PostgresServer, start_sidecar: StartSidecar, figures: Measurements
) -> None:
    """Ten restarts in twenty seconds: /health 200 all along, then ready with one session."""
    sidecar = start_sidecar(dsn_env(pg_private.dsn()))
    began = time.monotonic()
    with Sampler(sidecar, "/health") as health:
        for n in range(10):
            if n:
                time.sleep(max(0.0, began + 1.8 * n - time.monotonic()))
            pg_private.restart("immediate" if n % 2 else "fast")
        storm = time.monotonic() - began
        last_restart = time.monotonic()
        recover = sidecar.wait_status("/ready", 200, within=RECOVER_WITHIN, since=last_restart)
    assert storm <= 20 + SLACK
    assert health.statuses() == {200}, [s for s in health.samples if s.status != 200]
    assert health.slowest_seconds() < 1.0
    reasons = {e["reason"] for e in sidecar.events("check.state_changed", to="failing")}
    assert reasons <= {
        "connection_refused",
        "server_shutdown",
        "server_starting",
        "connection_reset",
    }, reasons
    assert reasons, "no restart was noticed"
    expect(sidecar, health=200, ready=200, startup=200)
    assert_one_session(pg_private)
    transitions = sidecar.metric(
        "health_sidecar_check_transitions_total", check=CHECK, to="failing"
    )
    assert transitions == len(sidecar.events("check.state_changed", to="failing"))
    figures.add(
        fault="restart storm: 10 restarts in 20 s (fast/immediate)",
        reason="/".join(sorted(reasons)),
        detect_seconds=None,
        recover_seconds=recover,
        health="200 throughout",
        slowest_health_seconds=health.slowest_seconds(),
        sessions_after=pg_private.sessions(),
        storm_seconds=storm,
        failing_transitions=transitions,
        note="recover: from the last restart's return to /ready 200",
    )


@pytest.mark.slow
def test_terminated_session_is_replaced_by_exactly_one_new_session(
    pg_private: PostgresServer, start_sidecar: StartSidecar, figures: Measurements
) -> None:
    """pg_terminate_backend: one new session replaces it at the next check; /health never moves."""
    sidecar = start_sidecar(dsn_env(pg_private.dsn()))
    before = session_pid(pg_private)
    assert before is not None
    with Sampler(sidecar, "/health") as health, Sampler(sidecar, "/ready", period=0.05) as ready:
        terminated = time.monotonic()
        assert pg_private.terminate() == 1
        _, replaced = timed_until(
            lambda: (pid := session_pid(pg_private)) is not None and pid != before,
            timeout=RECOVER_WITHIN,
            message="a new session",
            since=terminated,
        )
        sidecar.wait_status("/ready", 200, within=RECOVER_WITHIN)
        time.sleep(2 * INTERVAL)
    assert health.statuses() == {200}
    assert_one_session(pg_private, pid_before=before)
    # The idle connection's death is noticed before the next query: at most one failed check.
    failures = sidecar.metric("health_sidecar_check_total", check=CHECK, outcome="fail")
    assert failures <= 1
    fails = [e["reason"] for e in sidecar.events("check.state_changed", to="failing")]
    assert set(fails) <= {"server_shutdown", "connection_reset"}
    not_ready = [s for s in ready.samples if s.status != 200]
    figures.add(
        fault="session terminated (pg_terminate_backend)",
        reason="/".join(fails) or "none (reconnected before the next query)",
        detect_seconds=None,
        recover_seconds=replaced,
        health="200 throughout",
        sessions_after=pg_private.sessions(),
        failed_checks=failures,
        ready_503_samples=len(not_ready),
        note="recover: from the terminate to the new session",
    )


@pytest.mark.slow
def test_exhausted_max_connections_fails_as_too_many_connections(
    make_pg: PgFactory, start_sidecar: StartSidecar, figures: Measurements
) -> None:
    """A full server: too_many_connections until a slot frees; once connected, it stays ready."""
    pg = make_pg(max_connections=6, settings={"superuser_reserved_connections": 2})
    pg.create_role("app", "app-password")
    slots = 6 - 2
    hogs = Hogs(pg.dsn(user="app"))
    try:
        hogs.grow(pg, slots)
        launched = time.monotonic()
        sidecar = start_sidecar(dsn_env(pg.dsn(user="app")), ready=False)
        event = sidecar.wait_event("check.state_changed", timeout=SLACK, to="failing")
        detect = time.monotonic() - launched
        assert event["reason"] == "too_many_connections"
        still_failing(sidecar)
        expect(sidecar, health=200, ready=503, startup=503)
        assert_failing_metrics(sidecar, "too_many_connections", started=False)

        healed = time.monotonic()
        healed_wall = time.time()
        hogs.shrink(pg, slots - 1)
        recover = sidecar.wait_status("/ready", 200, within=RECOVER_WITHIN, since=healed)
        assert_passing_metrics(sidecar, healed_at_wall=healed_wall)
        # Full again, by others: the sidecar's own connection keeps it ready.
        hogs.grow(pg, slots - 1)
        assert hogs.refused_one(), "the server was not full"
        with Sampler(sidecar, "/ready") as ready:
            time.sleep(3 * INTERVAL + TIMEOUT)
        assert ready.statuses() == {200}
    finally:
        hogs.stop()
    assert_one_session(pg)
    figures.add(
        fault="max_connections exhausted by other clients",
        reason=event["reason"],
        detect_seconds=detect,
        recover_seconds=recover,
        health="200 throughout",
        sessions_after=pg.sessions(),
        note="detect: from process start; recover: from a slot freed; a connected sidecar "
        "stays ready when the server fills up",
    )


class Hogs:
    """psql processes that each hold one connection (as `application_name=hog`)."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn + "?application_name=hog"
        self.processes: list[subprocess.Popen[bytes]] = []
        self.psql = shutil.which("psql") or "/usr/bin/psql"

    def _spawn(self) -> subprocess.Popen[bytes]:
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
        return subprocess.Popen(
            [self.psql, "-X", "-q", "-d", self.dsn, "-c", "SELECT pg_sleep(300)"],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )

    def grow(self, pg: PostgresServer, total: int) -> None:
        """Until `total` hogs are connected. A hog may lose the race for the last slot to the
        test helpers' own short connections: then it exits and another one is started."""

        def connected() -> bool:
            if pg.sessions("hog") == total:
                return True
            self._reap()
            while len(self.processes) < total:
                self.processes.append(self._spawn())
            return False

        timed_until(connected, timeout=SLACK, interval=0.2, message=f"{total} hogs")

    def shrink(self, pg: PostgresServer, total: int) -> None:
        """Free slots server-side (a killed psql's backend would sleep on in pg_sleep)."""
        excess = len(self.processes) - total
        pg.execute(
            "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity"
            " WHERE application_name = 'hog' ORDER BY pid LIMIT $1",
            excess,
            database="tests_support",
        )
        timed_until(lambda: pg.sessions("hog") == total, timeout=SLACK, message=f"{total} hogs")
        timed_until(lambda: len(self._reap()) == total, timeout=SLACK, message="psql exited")

    def _reap(self) -> list[subprocess.Popen[bytes]]:
        for process in [p for p in self.processes if p.poll() is not None]:
            self.processes.remove(process)
            self._kill(process)
        return self.processes

    def refused_one(self) -> bool:
        """One more client is refused with "too many clients" / reserved slots."""
        extra = self._spawn()
        try:
            _, err = extra.communicate(timeout=SLACK)
        except subprocess.TimeoutExpired:
            self._kill(extra)
            return False
        text = err.decode(errors="replace")
        return extra.returncode != 0 and ("too many" in text or "reserved" in text)

    def _kill(self, process: subprocess.Popen[bytes]) -> None:
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=10)

    def stop(self) -> None:
        for process in self.processes:
            self._kill(process)
        self.processes.clear()


@pytest.mark.slow
def test_missing_database_fails_as_database_not_found_until_created(
    pg_private: PostgresServer, start_sidecar: StartSidecar, figures: Measurements
) -> None:
    """A missing database: database_not_found until CREATE DATABASE, then ready."""
    launched = time.monotonic()
    sidecar = start_sidecar(dsn_env(pg_private.dsn(database="glucolens")), ready=False)
    event = sidecar.wait_event("check.state_changed", timeout=SLACK, to="failing")
    detect = time.monotonic() - launched
    assert event["reason"] == "database_not_found"
    still_failing(sidecar)
    expect(sidecar, health=200, ready=503, startup=503)
    assert_failing_metrics(sidecar, "database_not_found", started=False)
    healed = time.monotonic()
    healed_wall = time.time()
    pg_private.create_database("glucolens")
    recover = sidecar.wait_status("/startup", 200, within=RECOVER_WITHIN, since=healed)
    sidecar.wait_status("/ready", 200, within=SLACK)
    assert_passing_metrics(sidecar, healed_at_wall=healed_wall)
    assert_one_session(pg_private)
    figures.add(
        fault="database does not exist (then created)",
        reason=event["reason"],
        detect_seconds=detect,
        recover_seconds=recover,
        health="200 throughout",
        sessions_after=pg_private.sessions(),
        note="detect: from process start",
    )


@pytest.mark.slow
def test_wrong_password_fails_as_auth_failed_until_it_matches(
    pg_private: PostgresServer, start_sidecar: StartSidecar, figures: Measurements
) -> None:
    """A wrong password: auth_failed, /startup 503; once the role has that password, ready."""
    password = "rotated-password"
    launched = time.monotonic()
    sidecar = start_sidecar(dsn_env(pg_private.dsn(password=password)), ready=False)
    event = sidecar.wait_event("check.state_changed", timeout=SLACK, to="failing")
    detect = time.monotonic() - launched
    assert event["reason"] == "auth_failed"
    still_failing(sidecar)
    expect(sidecar, health=200, ready=503, startup=503)
    assert_failing_metrics(sidecar, "auth_failed", started=False)
    healed = time.monotonic()
    healed_wall = time.time()
    pg_private.alter_password(SUPERUSER, password)
    recover = sidecar.wait_status("/startup", 200, within=RECOVER_WITHIN, since=healed)
    sidecar.wait_status("/ready", 200, within=SLACK)
    assert_passing_metrics(sidecar, healed_at_wall=healed_wall)
    assert_one_session(pg_private)
    figures.add(
        fault="wrong password (then the role's password changed to it)",
        reason=event["reason"],
        detect_seconds=detect,
        recover_seconds=recover,
        health="200 throughout",
        sessions_after=pg_private.sessions(),
        note="detect: from process start",
    )


@pytest.mark.slow
def test_unresolvable_host_fails_as_dns_failure_and_keeps_retrying(
    start_sidecar: StartSidecar, figures: Measurements
) -> None:
    """A host that does not resolve: dns_failure, /health 200, retried within the backoff cap."""
    launched = time.monotonic()
    sidecar = start_sidecar(
        {"PGHOST": "db.does-not-resolve.invalid", "PGUSER": "postgres", "PGPASSWORD": "x"},
        ready=False,
    )
    event = sidecar.wait_event("check.state_changed", timeout=SLACK, to="failing")
    detect = time.monotonic() - launched
    assert event["reason"] == "dns_failure"
    first = sidecar.metric("health_sidecar_check_failures_total", check=CHECK, reason="dns_failure")
    time.sleep(2 * BACKOFF_MAX + 1)
    expect(sidecar, health=200, ready=503, startup=503)
    assert_failing_metrics(sidecar, "dns_failure", started=False)
    retried = sidecar.metric(
        "health_sidecar_check_failures_total", check=CHECK, reason="dns_failure"
    )
    assert retried >= first + 2, "the sidecar stopped retrying"
    figures.add(
        fault="host name does not resolve",
        reason=event["reason"],
        detect_seconds=detect,
        recover_seconds=None,
        health="200 throughout",
        sessions_after=0,
        note="detect: from process start; no server, so no session",
    )


# ---- the network path (FaultProxy between the sidecar and PostgreSQL) -------------------------


@pytest.mark.slow
def test_blackholed_connect_times_out_then_recovers(
    pg_private: PostgresServer,
    make_fault_proxy: ProxyFactory,
    start_sidecar: StartSidecar,
    figures: Measurements,
) -> None:
    """Connect hangs from the start: timeout; healed, ready with one session, hung attempts gone."""
    proxy = make_fault_proxy(pg_private.host, pg_private.port)
    proxy.blackhole()
    launched = time.monotonic()
    sidecar = start_sidecar(dsn_env(pg_private.dsn(port=proxy.port)), ready=False)
    event = sidecar.wait_event("check.state_changed", timeout=SLACK, to="failing")
    detect = time.monotonic() - launched
    assert event["reason"] == "timeout"
    time.sleep(2 * BACKOFF_MAX)
    expect(sidecar, health=200, ready=503, startup=503)
    assert_failing_metrics(sidecar, "timeout", started=False)
    attempts = proxy.accepted_total
    assert attempts >= 2
    healed = time.monotonic()
    healed_wall = time.time()
    proxy.forward()
    recover = sidecar.wait_status("/startup", 200, within=RECOVER_WITHIN, since=healed)
    sidecar.wait_status("/ready", 200, within=SLACK)
    assert_passing_metrics(sidecar, healed_at_wall=healed_wall)
    assert_one_session(pg_private)
    # The hung attempts were abandoned by the sidecar: only one connection stays open.
    timed_until(lambda: proxy.connection_count == 1, timeout=SLACK, message="one proxied conn")
    figures.add(
        fault="connect blackholed (hangs) from the start",
        reason=event["reason"],
        detect_seconds=detect,
        recover_seconds=recover,
        health="200 throughout",
        sessions_after=pg_private.sessions(),
        connect_attempts=attempts,
        note="detect: from process start",
    )


@pytest.mark.slow
def test_stall_mid_query_times_out_then_recovers(
    pg_private: PostgresServer,
    make_fault_proxy: ProxyFactory,
    start_sidecar: StartSidecar,
    figures: Measurements,
) -> None:
    """The established connection stalls mid-query: timeout; healed, one new session."""
    proxy = make_fault_proxy(pg_private.host, pg_private.port)
    sidecar = start_sidecar(dsn_env(pg_private.dsn(port=proxy.port)))
    before = session_pid(pg_private)
    result = outage(sidecar, inject=proxy.blackhole, heal=proxy.forward, reasons={"timeout"})
    assert result.detect_seconds <= INTERVAL + TIMEOUT + SLACK
    assert_one_session(pg_private, pid_before=before)
    record(figures, "established connection stalls mid-query", result, pg_private.sessions())


@pytest.mark.slow
def test_tcp_reset_fails_as_connection_reset_then_recovers(
    pg_private: PostgresServer,
    make_fault_proxy: ProxyFactory,
    start_sidecar: StartSidecar,
    figures: Measurements,
) -> None:
    """RST of the connection and of every reconnect: connection_reset; healed, one new session."""
    proxy = make_fault_proxy(pg_private.host, pg_private.port)
    sidecar = start_sidecar(dsn_env(pg_private.dsn(port=proxy.port)))
    before = session_pid(pg_private)
    result = outage(sidecar, inject=proxy.reset, heal=proxy.forward, reasons={"connection_reset"})
    assert_one_session(pg_private, pid_before=before)
    record(
        figures, "TCP reset of the connection (and of reconnects)", result, pg_private.sessions()
    )


@pytest.mark.slow
def test_answer_slower_than_timeout_fails_as_timeout_then_recovers(
    pg_private: PostgresServer,
    make_fault_proxy: ProxyFactory,
    start_sidecar: StartSidecar,
    figures: Measurements,
) -> None:
    """Round trips 1.6 s slower than usual (timeout 1 s): timeout; healed, ready, one session."""
    proxy = make_fault_proxy(pg_private.host, pg_private.port)
    sidecar = start_sidecar(dsn_env(pg_private.dsn(port=proxy.port)))
    result = outage(
        sidecar, inject=lambda: proxy.delay(0.8), heal=proxy.forward, reasons={"timeout"}
    )
    assert_one_session(pg_private)
    record(figures, "answers slower than the timeout (+1.6 s a round trip)", result, 1)


@pytest.mark.slow
def test_latency_below_the_timeout_keeps_the_pod_ready(
    pg_private: PostgresServer, make_fault_proxy: ProxyFactory, start_sidecar: StartSidecar
) -> None:
    """Round trips 0.3 s slower (under the 1 s timeout): never unready, latency visible."""
    proxy = make_fault_proxy(pg_private.host, pg_private.port)
    sidecar = start_sidecar(dsn_env(pg_private.dsn(port=proxy.port)))
    proxy.delay(0.15)
    with Sampler(sidecar, "/ready") as ready:
        time.sleep(6 * INTERVAL + 1)
    assert ready.statuses() == {200}
    assert sidecar.metric("health_sidecar_check_total", check=CHECK, outcome="fail") == 0
    body = sidecar.get("/ready").json()
    assert body["checks"][CHECK][0]["observedValue"] >= 300  # ms: the latency is visible
    assert_one_session(pg_private)


@pytest.mark.slow
def test_sigterm_while_the_path_is_blackholed_exits_promptly_leaving_no_session(
    pg_private: PostgresServer,
    make_fault_proxy: ProxyFactory,
    tmp_path: Path,
    figures: Measurements,
) -> None:
    """SIGTERM while the connection stalls: exit 0 promptly, no session left once healed."""
    proxy = make_fault_proxy(pg_private.host, pg_private.port)
    sidecar = SidecarProcess(dsn_env(pg_private.dsn(port=proxy.port)), log_dir=tmp_path)
    with sidecar:
        sidecar.wait_listening()
        sidecar.wait_status("/ready", 200, within=15)
        proxy.blackhole()
        failing_event(sidecar)
        stopping = time.monotonic()
        code = sidecar.stop()
        took = time.monotonic() - stopping
    assert code == 0, sidecar.tail()
    assert took < TIMEOUT + 5, f"shutdown took {took:.1f}s"
    assert sidecar.events("sidecar.stopped")
    proxy.forward()  # the held bytes, and the sidecar's FIN, reach the server
    pg_private.wait_for_sessions(0, timeout=15)
    figures.add(
        fault="SIGTERM while the connection stalls (drain 0)",
        reason="timeout",
        detect_seconds=None,
        recover_seconds=None,
        health="n/a",
        sessions_after=pg_private.sessions(),
        shutdown_seconds=took,
        note="the process exits 0 without waiting on the database; no session left",
    )


# ---- pgbouncer in transaction pooling mode ---------------------------------------------------


class PgBouncer:
    """A pgbouncer process of our own on a free port, transaction pooling, in front of `pg`.

    pgbouncer refuses to run as root: then it runs as the `postgres` OS user (setpriv execs,
    so the PID we hold is pgbouncer's own)."""

    def __init__(self, pg: PostgresServer) -> None:
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="pgbouncer-test-", dir="/tmp"))
        password = pg.password
        (self.dir / "userlist.txt").write_text(f'"{SUPERUSER}" "{password}"\n')
        (self.dir / "pgbouncer.ini").write_text(
            "[databases]\n"
            f"postgres = host={pg.host} port={pg.port} dbname=postgres\n"
            "[pgbouncer]\n"
            f"listen_addr = {LOOPBACK}\n"
            f"listen_port = {self.port}\n"
            "unix_socket_dir =\n"
            "auth_type = scram-sha-256\n"
            f"auth_file = {self.dir / 'userlist.txt'}\n"
            "pool_mode = transaction\n"
            "default_pool_size = 4\n"
            "max_client_conn = 20\n"
            "server_connect_timeout = 2\n"
            "server_login_retry = 1\n"
            # A check that timed out while pgbouncer was still logging in leaves that server
            # connection idle in the pool (two sessions for a while, on a busy machine); it
            # goes within seconds, not the default ten minutes.
            "server_idle_timeout = 3\n"
            f"logfile = {self.dir / 'pgbouncer.log'}\n"
        )
        prefix: list[str] = []
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres", "postgres")
            for path in self.dir.iterdir():
                shutil.chown(path, "postgres", "postgres")
                path.chmod(0o600)
            prefix = ["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups"]
        binary = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
        self.process = subprocess.Popen(
            [*prefix, binary, str(self.dir / "pgbouncer.ini")],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=self.dir,
        )
        timed_until(self._listening, timeout=SLACK, message=f"pgbouncer on {self.port}")

    def _listening(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(f"pgbouncer exited {self.process.returncode}: {self.log()}")
        import socket  # noqa: PLC0415 -- only here

        try:
            socket.create_connection((LOOPBACK, self.port), timeout=1).close()
        except OSError:
            return False
        return True

    def log(self) -> str:
        try:
            return (self.dir / "pgbouncer.log").read_text(errors="replace")[-3000:]
        except OSError:
            return ""

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def pgbouncer(pg_private: PostgresServer) -> Iterator[PgBouncer]:
    bouncer = PgBouncer(pg_private)
    try:
        yield bouncer
    finally:
        bouncer.stop()


@pytest.mark.slow
def test_checks_pass_through_pgbouncer_in_transaction_mode(
    pg_private: PostgresServer,
    pgbouncer: PgBouncer,
    start_sidecar: StartSidecar,
    figures: Measurements,
) -> None:
    """Through pgbouncer in transaction mode: checks pass, one server session, outages seen."""
    dsn = pg_private.dsn(port=pgbouncer.port)
    sidecar = start_sidecar(dsn_env(dsn))
    with Sampler(sidecar, "/ready") as ready:
        time.sleep(6 * INTERVAL)
    assert ready.statuses() == {200}, pgbouncer.log()
    assert sidecar.metric("health_sidecar_check_total", check=CHECK, outcome="fail") == 0
    assert sidecar.metric("health_sidecar_check_total", check=CHECK, outcome="pass") >= 5
    # pgbouncer forwards application_name; one server connection serves the sidecar.
    assert_one_session(pg_private)
    result = outage(
        sidecar,
        inject=pg_private.stop,
        heal=pg_private.start,
        # pgbouncer holds a query while no server is up (query_wait_timeout): a timeout here.
        reasons={"timeout", "server_shutdown", "connection_reset", "query_failed"},
    )
    assert_one_session(pg_private)
    record(figures, "PostgreSQL stopped behind pgbouncer (transaction mode)", result, 1)


# ---- inside the sidecar ----------------------------------------------------------------------


@pytest.mark.slow
def test_crashing_check_is_internal_error_and_the_loop_goes_on(
    pg_private: PostgresServer,
    start_sidecar: StartSidecar,
    tmp_path: Path,
    figures: Measurements,
) -> None:
    """A check raising an unexpected exception: internal_error, logged, and probing goes on."""
    fault = tmp_path / "fault"
    sidecar = start_sidecar(dsn_env(pg_private.dsn()), fault_file=fault)
    result = outage(
        sidecar,
        inject=lambda: set_fault(fault, "raise KeyError-like bug in a check"),
        heal=lambda: set_fault(fault, ""),
        reasons={"internal_error"},
    )
    crashes = sidecar.events("check.crashed")
    assert len(crashes) >= 2, "the loop did not go on probing"
    assert crashes[0]["level"] == "error"
    assert crashes[0]["error_type"] == "RuntimeError"
    assert sidecar.events("prober.stopped") == []
    assert_one_session(pg_private)
    record(figures, "check raises an unexpected exception", result, 1, crashes=len(crashes))


@pytest.mark.slow
def test_stalled_probe_loop_turns_health_503_then_recovers(
    pg_private: PostgresServer,
    start_sidecar: StartSidecar,
    tmp_path: Path,
    figures: Measurements,
) -> None:
    """A wedged probe loop turns /health 503 after timeout + grace; unwedged, 200 again."""
    # The injected check swallows its cancellation, so the prober's timeout cannot end it:
    # no check finishes, and /health must say so once timeout + grace are past the due time
    # (kubelet then restarts the container).
    fault = tmp_path / "fault"
    sidecar = start_sidecar(dsn_env(pg_private.dsn()), fault_file=fault)
    stalled = time.monotonic()
    set_fault(fault, "stall")
    detect = sidecar.wait_status(
        "/health", 503, within=INTERVAL + TIMEOUT + 2 + SLACK, since=stalled
    )
    # Not before the bound: interval (due) + timeout + grace, less one interval of slop.
    assert detect >= TIMEOUT + 2 - INTERVAL
    body = sidecar.get("/health").json()
    assert body["status"] == "fail"
    assert "stalled" in body["output"]
    assert sidecar.metric("health_sidecar_probe_loop_healthy") == 0
    # /ready goes stale soon after: no result for 2 x (interval + timeout).
    sidecar.wait_status("/ready", 503, within=SLACK)
    assert sidecar.metric("health_sidecar_ready") == 0
    healed = time.monotonic()
    set_fault(fault, "")
    recover = sidecar.wait_status("/health", 200, within=SLACK, since=healed)
    sidecar.wait_status("/ready", 200, within=SLACK)
    assert sidecar.metric("health_sidecar_probe_loop_healthy") == 1
    assert_one_session(pg_private)
    figures.add(
        fault="probe loop stalled (check swallows cancellation)",
        reason="/health 503: probe loop stalled",
        detect_seconds=detect,
        recover_seconds=recover,
        health="503 after the bound (by design)",
        sessions_after=pg_private.sessions(),
        note="detect: from the stall to /health 503 (bound: interval + timeout + 2 s grace)",
    )


@pytest.mark.slow
def test_dead_probe_loop_turns_health_503_for_good(
    pg_private: PostgresServer,
    start_sidecar: StartSidecar,
    tmp_path: Path,
    figures: Measurements,
) -> None:
    """A dead probe loop: prober.stopped logged, /health and /ready 503 at once, for good."""
    # A BaseException escapes every `except Exception` in the prober and ends its task.
    fault = tmp_path / "fault"
    sidecar = start_sidecar(dsn_env(pg_private.dsn()), fault_file=fault)
    killed = time.monotonic()
    set_fault(fault, "die")
    detect = sidecar.wait_status("/health", 503, within=DETECT_WITHIN, since=killed)
    stopped = sidecar.wait_event("prober.stopped", timeout=SLACK)
    assert stopped["level"] == "error"
    assert stopped["error_type"] == "InjectedDeath"
    assert sidecar.get("/health").json()["output"] == "probe loop stopped"
    set_fault(fault, "")  # the loop is gone: nothing brings it back
    # Nothing will refresh the last result, so /ready does not wait for it to go stale.
    unready = sidecar.wait_status("/ready", 503, within=DETECT_WITHIN, since=killed)
    assert sidecar.get("/ready").json()["output"] == "probe loop stopped"
    expect(sidecar, health=503, ready=503, startup=200)
    assert sidecar.metric("health_sidecar_probe_loop_healthy") == 0
    assert sidecar.metric("health_sidecar_ready") == 0
    figures.add(
        fault="probe loop dead (BaseException escapes)",
        reason="/health 503: probe loop stopped",
        detect_seconds=detect,
        recover_seconds=None,
        health="503 for good (kubelet restarts the container)",
        sessions_after=pg_private.sessions(),
        ready_503_after_seconds=unready,
        note="/ready turns 503 with /health: a dead loop publishes nothing more",
    )
