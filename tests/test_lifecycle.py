"""SIGTERM and SIGINT on a real sidecar process against a real PostgreSQL: drain, then exit 0."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable

import pytest
from sidecar_proc import SidecarProcess, SidecarStarter
from support import wait_until
from support.pg import PostgresServer

StartSidecar = Callable[..., SidecarProcess]


@pytest.fixture
def start_sidecar(start_sidecar: SidecarStarter) -> StartSidecar:
    """The shared starter, as `start_sidecar(dsn, **env)`: ready sidecars (interval 1 s,
    timeout 1 s), stopped at teardown."""

    def start(dsn: str, **env: str) -> SidecarProcess:
        return start_sidecar({"SIDECAR_DATABASE_URL": dsn, "SIDECAR_CHECK_INTERVAL": "1", **env})

    return start


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_drains_then_exits_zero(
    start_sidecar: StartSidecar, pg: PostgresServer, sig: signal.Signals
) -> None:
    """On a signal /ready turns 503 within 0.5 s, /health answers during the drain, exit 0."""
    drain = 2.0
    sidecar = start_sidecar(pg.dsn(), SIDECAR_DRAIN_SECONDS=str(drain))
    signalled = time.monotonic()
    os.kill(sidecar.pid, sig)
    wait_until(lambda: sidecar.status("/ready") == 503, timeout=0.5, interval=0.01)
    assert time.monotonic() - signalled < 0.5
    while time.monotonic() - signalled < drain - 0.5:  # still answering during the drain
        assert sidecar.status("/health") == 200
        assert sidecar.status("/ready") == 503
        time.sleep(0.1)
    assert sidecar.wait_exit(drain + 10) == 0
    assert time.monotonic() - signalled >= drain - 0.1
    assert "Traceback" not in sidecar.log_text()
    assert sidecar.non_json_lines() == []
    events = [e["event"] for e in sidecar.events()]
    assert "sidecar.draining" in events
    assert events[-1] == "sidecar.stopped"
    # The connection was closed politely: no session is left behind.
    wait_until(lambda: pg.sessions() == 0, timeout=5, message="session closed")


def test_second_signal_cuts_the_drain_short(
    start_sidecar: StartSidecar, pg: PostgresServer
) -> None:
    """A second SIGTERM during a long drain makes the sidecar exit 0 at once."""
    sidecar = start_sidecar(pg.dsn(), SIDECAR_DRAIN_SECONDS="60")
    os.kill(sidecar.pid, signal.SIGTERM)
    wait_until(lambda: sidecar.status("/ready") == 503, timeout=2)
    os.kill(sidecar.pid, signal.SIGTERM)
    assert sidecar.wait_exit(15) == 0
    assert sidecar.events("sidecar.drain_cut_short")


def test_zero_drain_exits_promptly(start_sidecar: StartSidecar, pg: PostgresServer) -> None:
    """With SIDECAR_DRAIN_SECONDS=0 the sidecar exits 0 right after the signal."""
    sidecar = start_sidecar(pg.dsn(), SIDECAR_DRAIN_SECONDS="0")
    os.kill(sidecar.pid, signal.SIGTERM)
    assert sidecar.wait_exit(10) == 0


def test_port_in_use_exits_1_without_traceback(
    start_sidecar: StartSidecar, pg: PostgresServer
) -> None:
    """A second sidecar on a taken port logs one error event and exits 1, no traceback."""
    first = start_sidecar(pg.dsn())
    second = SidecarProcess({"SIDECAR_DATABASE_URL": pg.dsn()}, port=first.port)
    result = subprocess.run(
        [sys.executable, "-m", "sidecar"],
        env=second.env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stdout + result.stderr
    assert "sidecar.listen_failed" in result.stdout
