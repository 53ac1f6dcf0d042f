"""SIGTERM and SIGINT on a real sidecar process against a real PostgreSQL: drain, then exit 0."""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from support import free_port, wait_until
from support.pg import PostgresServer


def get(port: int, path: str) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


class Sidecar:
    def __init__(self, proc: subprocess.Popen[bytes], port: int, log: Path) -> None:
        self.proc, self.port, self.log = proc, port, log

    def events(self) -> list[dict[str, object]]:
        return [json.loads(line) for line in self.log.read_text().splitlines() if line]


StartSidecar = Callable[..., Sidecar]


@pytest.fixture
def start_sidecar(tmp_path: Path) -> Iterator[StartSidecar]:
    started: list[subprocess.Popen[bytes]] = []

    def start(dsn: str, **env: str) -> Sidecar:
        port = free_port()
        log = tmp_path / f"sidecar-{port}.log"
        clean = {k: v for k, v in os.environ.items() if not k.startswith(("SIDECAR_", "PG"))}
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "sidecar"],
                env={
                    **clean,
                    "SIDECAR_DATABASE_URL": dsn,
                    "SIDECAR_HOST": "127.0.0.1",
                    "SIDECAR_PORT": str(port),
                    "SIDECAR_CHECK_INTERVAL": "1",
                    "SIDECAR_CHECK_TIMEOUT": "1",
                    **env,
                },
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        started.append(proc)
        sidecar = Sidecar(proc, port, log)
        wait_until(lambda: _status(sidecar, "/ready") == 200, timeout=20, message="ready")
        return sidecar

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


def _status(sidecar: Sidecar, path: str) -> int:
    assert sidecar.proc.poll() is None, sidecar.log.read_text()
    try:
        return get(sidecar.port, path)
    except OSError:
        return 0


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_drains_then_exits_zero(
    start_sidecar: StartSidecar, pg: PostgresServer, sig: signal.Signals
) -> None:
    """On a signal /ready turns 503 within 0.5 s, /health answers during the drain, exit 0."""
    drain = 2.0
    sidecar = start_sidecar(pg.dsn(), SIDECAR_DRAIN_SECONDS=str(drain))
    signalled = time.monotonic()
    sidecar.proc.send_signal(sig)
    wait_until(lambda: get(sidecar.port, "/ready") == 503, timeout=0.5, interval=0.01)
    assert time.monotonic() - signalled < 0.5
    while time.monotonic() - signalled < drain - 0.5:  # still answering during the drain
        assert get(sidecar.port, "/health") == 200
        assert get(sidecar.port, "/ready") == 503
        time.sleep(0.1)
    assert sidecar.proc.wait(timeout=drain + 10) == 0
    elapsed = time.monotonic() - signalled
    assert elapsed >= drain - 0.1
    output = sidecar.log.read_text()
    assert "Traceback" not in output
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
    sidecar.proc.send_signal(signal.SIGTERM)
    wait_until(lambda: get(sidecar.port, "/ready") == 503, timeout=2)
    sidecar.proc.send_signal(signal.SIGTERM)
    assert sidecar.proc.wait(timeout=15) == 0
    assert "sidecar.drain_cut_short" in [e["event"] for e in sidecar.events()]


def test_zero_drain_exits_promptly(start_sidecar: StartSidecar, pg: PostgresServer) -> None:
    """With SIDECAR_DRAIN_SECONDS=0 the sidecar exits 0 right after the signal."""
    sidecar = start_sidecar(pg.dsn(), SIDECAR_DRAIN_SECONDS="0")
    sidecar.proc.send_signal(signal.SIGTERM)
    assert sidecar.proc.wait(timeout=10) == 0


def test_port_in_use_exits_1_without_traceback(
    start_sidecar: StartSidecar, pg: PostgresServer
) -> None:
    """A second sidecar on a taken port logs one error event and exits 1, no traceback."""
    first = start_sidecar(pg.dsn())
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("SIDECAR_", "PG"))}
    result = subprocess.run(
        [sys.executable, "-m", "sidecar"],
        env={
            **clean,
            "SIDECAR_DATABASE_URL": pg.dsn(),
            "SIDECAR_HOST": "127.0.0.1",
            "SIDECAR_PORT": str(first.port),
        },
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stdout + result.stderr
    assert "sidecar.listen_failed" in result.stdout
