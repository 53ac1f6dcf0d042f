"""What is around the process cannot wedge it: a stalled log pipe, a silent resolver, too few
file descriptors, a server that refuses new sessions. Each against the real process."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sidecar_proc import Sampler, SidecarProcess
from support import wait_until
from support.faultproxy import FaultProxy
from support.pg import PostgresServer


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


def test_a_stalled_log_pipe_never_blocks_probes_or_exit(
    flapping: FaultProxy, pg: PostgresServer, tmp_path: Path
) -> None:
    """stdout a pipe nobody reads, database flapping at debug: probes answer, SIGTERM exits,
    drops are counted and reported in one line once the pipe moves."""
    host, port = flapping.address
    sidecar = SidecarProcess(
        {
            "SIDECAR_DATABASE_URL": pg.dsn(host=host, port=port),
            "SIDECAR_CHECK_INTERVAL": "0.01",
            "SIDECAR_BACKOFF_MAX": "0.05",
        },
        log_dir=tmp_path,
        unread_stdout=True,
    )
    with sidecar:
        sidecar.wait_listening()
        # Far more than a 64 KiB pipe plus the writer's buffer can hold.
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
        assert time.monotonic() - signalled < 3.0
    assert "Traceback" not in sidecar.stderr()


def test_out_of_file_descriptors_keeps_answering_probes_and_logs_little(
    pg: PostgresServer, tmp_path: Path
) -> None:
    """nofile lowered under a running sidecar, 300 idle clients: probes answered, accept
    errors counted and logged a few times, never a traceback; the idle ones are closed."""
    sidecar = SidecarProcess({"SIDECAR_DATABASE_URL": pg.dsn()}, log_dir=tmp_path)
    clients: list[socket.socket] = []
    with sidecar:
        sidecar.wait_listening()
        wait_until(lambda: sidecar.status("/ready") == 200, timeout=20, message="ready")
        subprocess.run(
            ["prlimit", f"--pid={sidecar.pid}", "--nofile=128:128"], check=True, timeout=10
        )
        try:
            for _ in range(300):
                with contextlib.suppress(OSError):
                    clients.append(socket.create_connection((sidecar.host, sidecar.port), 5))
            with Sampler(sidecar, "/health", period=0.1) as health:
                time.sleep(4)
            answered = [s for s in health.samples if s.status == 200]
            assert len(answered) >= len(health.samples) * 0.8, health.samples
            assert sidecar.status("/ready") == 200
            assert sidecar.open_fds() <= 128
            assert sidecar.metric("health_sidecar_connections_evicted_total") > 0
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
