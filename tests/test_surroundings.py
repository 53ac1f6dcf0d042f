"""What is around the process cannot wedge it: a stalled log pipe, a silent resolver, too few
file descriptors, a server that refuses new sessions. Each against the real process."""

from __future__ import annotations

import json
import os
import signal
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
