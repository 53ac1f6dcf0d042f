"""What is around the process cannot wedge it: a stalled log pipe, a silent resolver, too few
file descriptors, a server that refuses new sessions. Each against the real process.

Figures go to <out>/surroundings.json (see `Measurements`); docs/reliability.md quotes them."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import pytest
from sidecar_proc import Measurements, Sampler, SidecarProcess
from support import SLACK, free_port, missing_tool, wait_until
from support.faultproxy import FaultProxy, ProxyFactory
from support.once import LISTEN_QUEUES, exclusive
from support.pg import PostgresServer


@pytest.fixture(scope="module")
def figures() -> Iterator[Measurements]:
    """What this module measured, written to surroundings.json at the end."""
    figures = Measurements("surroundings.json")
    yield figures
    print(f"surroundings measurements: {figures.write()}")


@pytest.fixture(params=["asyncio", "uvloop"])
def loop_env(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, str]:
    """Environment for the sidecar to run on asyncio's loop (the image has no uvloop) or on
    uvloop (the `fast` extra): name resolution and accept errors go different ways in each."""
    if request.param == "uvloop":
        pytest.importorskip("uvloop")
        return {}
    shadow = tmp_path / "no-uvloop"
    shadow.mkdir()
    (shadow / "uvloop.py").write_text("raise ImportError('the image has no uvloop')\n")
    return {"PYTHONPATH": str(shadow)}


@pytest.fixture
def flapping(fault_proxy: FaultProxy) -> Iterator[FaultProxy]:
    """The proxy in front of `pg` switches between forwarding and resetting every 0.2 s."""
    stop = threading.Event()

    def flap() -> None:
        while not stop.wait(0.2):
            fault_proxy.reset()
            if stop.wait(0.2):
                break
            fault_proxy.forward()

    thread = threading.Thread(target=flap, daemon=True)
    thread.start()
    yield fault_proxy
    stop.set()
    thread.join(5)


STALLED_PIPE_CHECKS: Final = 6


def test_a_stalled_log_pipe_never_blocks_probes_or_exit(
    flapping: FaultProxy, pg: PostgresServer, tmp_path: Path, figures: Measurements
) -> None:
    """stdout a pipe nobody reads, database flapping at debug: probes answer, SIGTERM exits,
    drops are counted and reported in one line once the pipe moves."""
    host, port = flapping.address
    # Several checks of the one flapping database, each with its own loop: lines come several
    # times as fast, so the writer's buffer fills within seconds.
    dsn_file = tmp_path / "dsn"
    dsn_file.write_text(pg.dsn(host=host, port=port))
    check_file = tmp_path / "checks.yaml"
    check_file.write_text(
        "checks:\n"
        + "".join(
            f"  - {{name: flapping-{n}, kind: postgres, dsn_file: {json.dumps(str(dsn_file))}}}\n"
            for n in range(STALLED_PIPE_CHECKS)
        )
    )
    sidecar = SidecarProcess(
        {
            "SIDECAR_CONFIG_FILE": str(check_file),
            "SIDECAR_CHECK_INTERVAL": "0.01",
            "SIDECAR_BACKOFF_MAX": "0.05",
        },
        log_dir=tmp_path,
        unread_stdout=True,
    )
    with sidecar:
        sidecar.wait_listening()
        # Far more than the small pipe (UNREAD_PIPE_BYTES) plus the writer's buffer can hold.
        wait_until(
            lambda: sidecar.metric("health_sidecar_log_lines_dropped_total") > 0,
            timeout=90,
            interval=0.5,
            message="log lines dropped",
        )
        with Sampler(sidecar, "/health", period=0.1) as health:
            time.sleep(3)
        assert health.statuses() == {200}, health.samples
        assert health.slowest_seconds() < 1.0
        assert sidecar.status("/ready") in (200, 503)
        dropped = sidecar.metric("health_sidecar_log_lines_dropped_total")
        # The pipe moves again: the gap is marked in place, once per gap.
        text = sidecar.read_stdout_pipe(3)
        events = [json.loads(line) for line in text.splitlines()]
        notes = [e for e in events if e["event"] == "log.lines_dropped"]
        assert notes, text[-2000:]
        assert 0 < sum(e["dropped"] for e in notes) <= dropped + 1000
        assert all(e["level"] == "warning" for e in notes)
        # Stall it again and stop: exit 0 promptly, whatever is stuck in the pipe.
        wait_until(
            lambda: sidecar.metric("health_sidecar_log_lines_dropped_total") > dropped,
            timeout=90,
            interval=0.5,
            message="dropping again",
        )
        signalled = time.monotonic()
        os.kill(sidecar.pid, signal.SIGTERM)
        assert sidecar.wait_exit(10) == 0
        took = time.monotonic() - signalled
        assert took < 3.0
    assert "Traceback" not in sidecar.stderr()
    figures.add(
        case="stdout a pipe nobody reads, database flapping, debug",
        checks=STALLED_PIPE_CHECKS,
        health_samples=len(health.samples),
        health_slowest_seconds=health.slowest_seconds(),
        lines_dropped=dropped,
        sigterm_to_exit_seconds=took,
    )


def test_out_of_file_descriptors_keeps_answering_probes_and_logs_little(
    pg: PostgresServer, tmp_path: Path, figures: Measurements, loop_env: dict[str, str]
) -> None:
    """nofile lowered under a running sidecar, 300 idle clients: probes answered, accept
    errors counted and logged a few times, never a traceback; the idle ones are closed."""
    sidecar = SidecarProcess({"SIDECAR_DATABASE_URL": pg.dsn(), **loop_env}, log_dir=tmp_path)
    clients: list[socket.socket] = []
    with sidecar:
        sidecar.wait_listening()
        sidecar.wait_status("/ready", 200, within=20)
        subprocess.run(
            ["prlimit", f"--pid={sidecar.pid}", "--nofile=128:128"], check=True, timeout=10
        )
        # A burst of connects overflows the accept queue: not while another worker counts that.
        with exclusive(LISTEN_QUEUES):
            try:
                for _ in range(300):
                    with contextlib.suppress(OSError):
                        clients.append(socket.create_connection((sidecar.host, sidecar.port), 5))
                with Sampler(sidecar, "/health", period=0.1) as health:
                    time.sleep(4)
                answered = [s for s in health.samples if s.status == 200]
                assert len(answered) >= len(health.samples) * 0.8, health.samples
                assert sidecar.status("/ready") == 200
                fds = sidecar.open_fds()
                assert fds <= 128
                evicted = sidecar.metric("health_sidecar_connections_evicted_total")
                assert evicted > 0
            finally:
                for client in clients:
                    client.close()
        assert sidecar.stop() == 0
    text = sidecar.log_text()
    assert "Traceback" not in text
    assert "out of system resource" not in text
    errors = [e for e in sidecar.events() if e.get("level") in ("error", "critical")]
    assert errors == []
    assert len(sidecar.events("server.accept_failed")) <= 5
    figures.add(
        case="nofile 128 under a running sidecar, 300 idle clients",
        loop=sidecar.events("sidecar.starting")[0]["event_loop"],
        health_answered=len(answered),
        health_samples=len(health.samples),
        open_fds=fds,
        evicted=evicted,
        accept_failed_lines=len(sidecar.events("server.accept_failed")),
    )


def test_a_taken_port_exits_1_with_one_line(pg: PostgresServer, tmp_path: Path) -> None:
    """The port is taken: exit 1 with sidecar.listen_failed, no check ever started."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        sidecar = SidecarProcess(
            {"SIDECAR_DATABASE_URL": pg.dsn(), "SIDECAR_HOST": "127.0.0.1"},
            port=port,
            log_dir=tmp_path,
        )
        sidecar.start()
        assert sidecar.wait_exit(30) == 1
    assert sidecar.events("sidecar.listen_failed")
    assert sidecar.events("check.completed") == []
    text = sidecar.log_text()
    assert "Future exception was never retrieved" not in text
    assert "Traceback" not in text


def test_the_default_listens_on_ipv4_and_ipv6(pg: PostgresServer, tmp_path: Path) -> None:
    """SIDECAR_HOST=:: (the default) answers on 127.0.0.1 and on ::1."""
    sidecar = SidecarProcess(
        {"SIDECAR_DATABASE_URL": pg.dsn(), "SIDECAR_HOST": "::"}, log_dir=tmp_path
    )
    with sidecar:
        sidecar.wait_listening()
        assert sidecar.status("/health") == 200
        conn = http.client.HTTPConnection("::1", sidecar.port, timeout=5)
        try:
            conn.request("GET", "/health")
            assert conn.getresponse().status == 200
        finally:
            conn.close()


@pytest.mark.parametrize("sig", [signal.SIGHUP, signal.SIGUSR1])
def test_hup_and_usr1_are_logged_and_ignored(
    pg: PostgresServer, tmp_path: Path, sig: signal.Signals
) -> None:
    """HUP or USR1: one line, the process goes on serving; TERM still drains and exits 0."""
    sidecar = SidecarProcess({"SIDECAR_DATABASE_URL": pg.dsn()}, log_dir=tmp_path)
    with sidecar:
        sidecar.wait_listening()
        os.kill(sidecar.pid, sig)
        sidecar.wait_event("sidecar.signal_ignored", timeout=10, signal=sig.name)
        assert sidecar.status("/health") == 200
        assert sidecar.stop() == 0
    assert sidecar.events("sidecar.stopped")


# ---- files that are no files; no stdout ------------------------------------------------------

# Never connected to: the process must refuse its settings before any check starts.
NO_DATABASE: Final = "postgresql://health@127.0.0.1:1/app"


@pytest.mark.parametrize(
    ("variable", "name"),
    [
        ("SIDECAR_DATABASE_URL_FILE", "dsn"),
        ("SIDECAR_CONFIG_FILE", "checks.yaml"),
        ("PGSSLROOTCERT", "root.crt"),
    ],
)
def test_a_named_pipe_for_a_file_exits_2_naming_the_variable(
    tmp_path: Path, variable: str, name: str
) -> None:
    """A FIFO where a file belongs (DSN, check file, TLS file): exit 2 with one line naming the
    variable and what the path is, instead of waiting forever for a writer with no line."""
    fifo = tmp_path / name
    os.mkfifo(fifo)
    env = {variable: str(fifo)}
    if variable != "SIDECAR_DATABASE_URL_FILE":
        env["SIDECAR_DATABASE_URL"] = NO_DATABASE
    with SidecarProcess(env, log_dir=tmp_path) as sidecar:
        assert sidecar.wait_exit(30) == 2
    [line] = sidecar.stderr().splitlines()
    assert line.startswith(f"health-sidecar: bad setting: {variable}: "), line
    assert f"{str(fifo)!r} is a named pipe (FIFO), not a file" in line
    assert sidecar.stdout() == ""


def test_a_dsn_file_swapped_for_a_named_pipe_keeps_probes_answering(
    pg: PostgresServer, tmp_path: Path
) -> None:
    """The DSN file replaced by a FIFO while running: one credentials.reload_failed saying so,
    the check goes on with the last good DSN and probes keep answering (the read used to wait
    for a writer on the event loop: every probe hung and SIGTERM did nothing)."""
    dsn_file = tmp_path / "dsn"
    dsn_file.write_text(pg.dsn() + "\n")
    with SidecarProcess({"SIDECAR_DATABASE_URL_FILE": str(dsn_file)}, log_dir=tmp_path) as sidecar:
        sidecar.wait_listening()
        sidecar.wait_status("/ready", 200)
        dsn_file.unlink()
        os.mkfifo(dsn_file)
        failed = sidecar.wait_event("credentials.reload_failed", timeout=SLACK)
        assert "named pipe" in failed["problem"], failed
        done = len(sidecar.events("check.completed", ok=True))
        sidecar.wait_event("check.completed", timeout=SLACK, after=done + 1, ok=True)
        assert sidecar.status("/health") == 200
        assert sidecar.status("/ready") == 200
        assert sidecar.stop() == 0
    assert len(sidecar.events("credentials.reload_failed")) == 1
    assert "Traceback" not in sidecar.log_text()


@pytest.mark.parametrize("fd", [0, 1], ids=["stdin", "stdout"])
def test_a_closed_standard_descriptor_neither_crashes_nor_aborts(
    pg: PostgresServer, tmp_path: Path, fd: int
) -> None:
    """Started without stdin or stdout (`<&-`, `>&-`): it serves, SIGTERM exits 0, the JSON
    lines go to stdout, or to stderr when stdout is closed. It used to die at start with a
    traceback (stdout), or abort at exit in libuv, whose socket had been given fd 0."""
    sidecar = SidecarProcess({"SIDECAR_DATABASE_URL": pg.dsn()}, log_dir=tmp_path, closed_fds=[fd])
    with sidecar:
        sidecar.wait_status("/ready", 200, within=30)
        assert sidecar.stop() == 0
    lines = sidecar.stderr() if fd == 1 else sidecar.stdout()
    events = [json.loads(line)["event"] for line in lines.splitlines()]
    assert "sidecar.listening" in events
    assert events[-1] == "sidecar.stopped"
    assert "Traceback" not in sidecar.log_text()


def test_ctrl_c_during_start_ends_it_without_a_traceback(tmp_path: Path) -> None:
    """SIGINT once start-up has begun and before the server's handlers are in place (its first
    line is out, the rest is still importing and building): the process ends by the signal,
    as with SIGTERM, and prints no KeyboardInterrupt traceback."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "SIDECAR_DATABASE_URL": NO_DATABASE}
    process = subprocess.Popen(
        [sys.executable, "-m", "sidecar"],
        env={**env, "SIDECAR_PORT": str(free_port()), "SIDECAR_HOST": "127.0.0.1"},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        first = process.stdout.readline()
        assert b'"sidecar.starting"' in first, first
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
    assert b"Traceback" not in err, err.decode()[-2000:]
    assert b"KeyboardInterrupt" not in err
    assert process.returncode in (-signal.SIGINT, 0, 130), (process.returncode, err[-2000:])


@pytest.mark.parametrize("sig", [signal.SIGHUP, signal.SIGUSR1])
def test_hup_during_start_neither_kills_it_nor_stops_the_start(
    pg: PostgresServer, tmp_path: Path, sig: signal.Signals
) -> None:
    """HUP or USR1 once start-up has begun, before the server's handlers are in place: the
    process goes on to serve (their default action used to end it at once, with no line)."""
    sidecar = SidecarProcess({"SIDECAR_DATABASE_URL": pg.dsn()}, log_dir=tmp_path)
    with sidecar:
        wait_until(
            lambda: b'"sidecar.starting"' in sidecar.stdout_path.read_bytes(),
            timeout=30,
            interval=0.005,
            message="sidecar.starting",
        )
        os.kill(sidecar.pid, sig)
        sidecar.wait_status("/ready", 200, within=30)
        assert sidecar.stop() == 0


# ---- name resolution -----------------------------------------------------------------------

# A name of this process's own: parallel workers each make theirs.
NETNS_PREFIX: Final = "hs15-dns"
# A Kubernetes-like resolv.conf: three search domains and ndots:5 multiply every retry.
SILENT_RESOLV_CONF: Final = (
    "nameserver 127.0.0.1\n"
    "search ns.svc.cluster.local svc.cluster.local cluster.local\n"
    "options ndots:5 timeout:5 attempts:2\n"
)
SILENT_LISTENER: Final = (
    "import socket, time\n"
    "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
    "s.bind(('127.0.0.1', 53))\n"
    "t = time.monotonic()\n"
    "while time.monotonic() - t < 300:\n"
    "    s.recv(4096)\n"
)


@pytest.fixture
def silent_resolver_netns() -> Iterator[str]:
    """A network namespace of our own whose resolv.conf names a UDP listener that never
    answers; removed afterwards."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        missing_tool("root and iproute2 (network namespaces)")
    netns = f"{NETNS_PREFIX}-{os.getpid()}"
    subprocess.run(["ip", "netns", "del", netns], capture_output=True, check=False)
    subprocess.run(["ip", "netns", "add", netns], check=True, timeout=10)
    etc = Path("/etc/netns") / netns
    listener: subprocess.Popen[bytes] | None = None
    try:
        subprocess.run(["ip", "-n", netns, "link", "set", "lo", "up"], check=True, timeout=10)
        etc.mkdir(parents=True, exist_ok=True)
        (etc / "resolv.conf").write_text(SILENT_RESOLV_CONF)
        listener = subprocess.Popen(
            ["ip", "netns", "exec", netns, sys.executable, "-c", SILENT_LISTENER]
        )
        yield netns
    finally:
        if listener is not None:
            listener.kill()
            listener.wait(10)
        shutil.rmtree(etc, ignore_errors=True)
        subprocess.run(["ip", "netns", "del", netns], capture_output=True, check=False)


class NetnsSidecar(SidecarProcess):
    """The sidecar started inside a network namespace (its logs still come out here)."""

    def __init__(self, netns: str, env: dict[str, str], **kwargs: Any) -> None:
        super().__init__(env, **kwargs)
        self.netns = netns

    def command(self) -> list[str]:
        return ["ip", "netns", "exec", self.netns, *super().command()]


def test_a_silent_resolver_is_dns_failure_and_cannot_hold_the_exit(
    silent_resolver_netns: str, tmp_path: Path, figures: Measurements, loop_env: dict[str, str]
) -> None:
    """The DSN's host is a name the resolver never answers: checks fail as dns_failure
    (timed out), lookups do not pile up, and SIGTERM exits 0 within drain + 1 s."""
    drain = 1.0
    sidecar = NetnsSidecar(
        silent_resolver_netns,
        {
            "SIDECAR_DATABASE_URL": "postgresql://u:secret@db.example.internal:5432/postgres",
            "SIDECAR_CHECK_TIMEOUT": "2",
            "SIDECAR_DRAIN_SECONDS": str(drain),
            **loop_env,
        },
        log_dir=tmp_path,
    )
    with sidecar:
        sidecar.wait_event("sidecar.listening", timeout=30)
        changed = sidecar.wait_event("check.state_changed", timeout=30, to="failing")
        assert changed["reason"] == "dns_failure", changed
        assert changed["details"] == {"timed_out": "true"}, changed
        # Several failed checks later, the stuck lookups are bounded by the pool.
        sidecar.wait_event("check.completed", timeout=30, after=4, ok=False)
        threads = len(os.listdir(f"/proc/{sidecar.pid}/task"))
        assert threads <= 12, threads
        signalled = time.monotonic()
        os.kill(sidecar.pid, signal.SIGTERM)
        assert sidecar.wait_exit(drain + 20) == 0
        took = time.monotonic() - signalled
    assert took < drain + 1.0 + 0.5, took  # half a second for a loaded machine
    reasons = {e["reason"] for e in sidecar.events("check.completed", ok=False)}
    assert reasons == {"dns_failure"}, reasons
    assert "Traceback" not in sidecar.log_text()
    figures.add(
        case="resolver never answers (netns, ndots:5, 3 search domains)",
        loop=sidecar.events("sidecar.starting")[0]["event_loop"],
        drain_seconds=drain,
        sigterm_to_exit_seconds=took,
        threads=threads,
    )


# ---- the database: kept connection, multi-host, session attributes, 57P03 ----------------


def test_a_smart_shutdown_is_seen_within_the_connection_age(
    pg_private: PostgresServer, tmp_path: Path, figures: Measurements
) -> None:
    """pg_ctl stop -m smart waits for sessions to end; the sidecar's kept connection is
    replaced within SIDECAR_DATABASE_MAX_CONNECTION_AGE, so /ready turns 503 and the server
    can finish stopping."""
    age = 2.0
    sidecar = SidecarProcess(
        {
            "SIDECAR_DATABASE_URL": pg_private.dsn(),
            "SIDECAR_DATABASE_MAX_CONNECTION_AGE": str(age),
        },
        log_dir=tmp_path,
    )
    with sidecar:
        sidecar.wait_listening()
        sidecar.wait_status("/ready", 200, within=20)
        started = time.monotonic()
        stopper = threading.Thread(target=pg_private.stop, args=("smart",), daemon=True)
        stopper.start()
        sidecar.wait_status("/ready", 503, within=age + 10)
        seen = time.monotonic() - started
        assert seen < age + 5
        stopper.join(30)
        assert not stopper.is_alive()
        assert not pg_private.is_running
    reasons = {e["reason"] for e in sidecar.events("check.completed", ok=False)}
    # connection_reset: a connect that reaches the postmaster as it exits (seen on a busy
    # machine), as in test_faults' stopped database.
    assert reasons <= {"server_shutdown", "connection_refused", "connection_reset"}, reasons
    figures.add(case="pg_ctl stop -m smart", max_age_seconds=age, ready_503_after_seconds=seen)


def test_a_role_set_nologin_is_seen_within_the_connection_age(
    pg: PostgresServer, tmp_path: Path
) -> None:
    """ALTER ROLE ... NOLOGIN leaves the kept session working; the next one within the
    connection age is refused: auth_failed."""
    pg.create_role("hs15_nologin", "pw15")
    sidecar = SidecarProcess(
        {
            "SIDECAR_DATABASE_URL": pg.dsn("hs15_nologin", "pw15"),
            "SIDECAR_DATABASE_MAX_CONNECTION_AGE": "2",
        },
        log_dir=tmp_path,
    )
    with sidecar:
        sidecar.wait_listening()
        sidecar.wait_status("/ready", 200, within=20)
        pg.execute("ALTER ROLE hs15_nologin NOLOGIN")
        try:
            changed = sidecar.wait_event("check.state_changed", timeout=15, to="failing")
        finally:
            pg.execute("ALTER ROLE hs15_nologin LOGIN")
    assert changed["reason"] == "auth_failed", changed


def test_a_silent_first_host_does_not_hide_the_second(
    pg: PostgresServer, make_fault_proxy: ProxyFactory, tmp_path: Path
) -> None:
    """postgresql://u@h1,h2/db with h1 accepting TCP and never answering: ready on h2, each
    host getting its share of the check timeout as libpq's connect_timeout."""
    silent = make_fault_proxy(pg.host, pg.port)
    silent.blackhole()
    host, port = silent.address
    password = pg.dsn().split(":")[2].split("@")[0]
    dsn = f"postgresql://postgres:{password}@{host}:{port},{pg.host}:{pg.port}/postgres"
    sidecar = SidecarProcess(
        {"SIDECAR_DATABASE_URL": dsn, "SIDECAR_CHECK_TIMEOUT": "2"}, log_dir=tmp_path
    )
    with sidecar:
        sidecar.wait_listening()
        sidecar.wait_status("/ready", 200, within=20)
        assert silent.accepted_total >= 1


def test_target_session_attrs_standby_against_a_primary_has_its_own_reason(
    pg: PostgresServer, tmp_path: Path
) -> None:
    """target_session_attrs=standby on a primary: session_attrs_mismatch, no crash line."""
    sidecar = SidecarProcess(
        {"SIDECAR_DATABASE_URL": pg.dsn() + "?target_session_attrs=standby"}, log_dir=tmp_path
    )
    with sidecar:
        sidecar.wait_listening()
        changed = sidecar.wait_event("check.state_changed", timeout=20, to="failing")
    assert changed["reason"] == "session_attrs_mismatch", changed
    assert sidecar.events("check.crashed") == []


def test_a_standby_without_hot_standby_is_server_starting(
    pg: PostgresServer, tmp_path: Path
) -> None:
    """57P03 from a standby with hot_standby=off: server_starting, not server_shutdown."""
    standby = PostgresServer(replica_of=pg, settings={"hot_standby": "off"})
    try:
        standby.start()
        sidecar = SidecarProcess({"SIDECAR_DATABASE_URL": standby.dsn()}, log_dir=tmp_path)
        with sidecar:
            sidecar.wait_listening()
            changed = sidecar.wait_event("check.state_changed", timeout=30, to="failing")
    finally:
        standby.cleanup()
    assert changed["reason"] == "server_starting", changed
