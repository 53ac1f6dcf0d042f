"""Several checks in the real process (issue 7): a check file with postgres, http and tcp
checks against real servers; independence of the probe loops; one connection per check."""

from __future__ import annotations

import http.server
import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sidecar_proc import SidecarProcess
from support import LOOPBACK, wait_until
from support.faultproxy import FaultProxy, ProxyFactory
from support.pg import PostgresServer


class _AppHandler(http.server.BaseHTTPRequestHandler):
    """The app's cheap liveness path; `AppServer.hang` makes it sleep before answering."""

    server: AppServer

    def do_GET(self) -> None:
        self.server.hits += 1
        if self.server.hang.is_set():
            self.server.release.wait(30)
        status = self.server.status
        self.send_response(status)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the test reads hits, not logs."""


class AppServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    status = 200
    hits = 0

    def __init__(self) -> None:
        super().__init__((LOOPBACK, 0), _AppHandler)
        self.hang = threading.Event()
        self.release = threading.Event()

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.server_address[1]}/livez"


@pytest.fixture
def app_server() -> Iterator[AppServer]:
    """A real HTTP server standing in for the app's own liveness path."""
    server = AppServer()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.release.set()
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture
def listener() -> Iterator[int]:
    """A TCP port that accepts (the kernel completes the handshake; nobody reads)."""
    sock = socket.socket()
    sock.bind((LOOPBACK, 0))
    sock.listen(16)
    try:
        yield sock.getsockname()[1]
    finally:
        sock.close()


def write_checks(path: Path, checks: list[dict[str, Any]], **defaults: float) -> Path:
    # JSON is YAML: the loader reads it through yaml.safe_load like any .yaml file.
    path.write_text(json.dumps({"defaults": defaults, "checks": checks}))
    return path


def dsn_file(tmp_path: Path, dsn: str, name: str) -> str:
    path = tmp_path / f"{name}.dsn"
    path.write_text(dsn + "\n")
    return str(path)


def test_every_kind_passes_and_each_has_its_view(
    tmp_path: Path, pg: PostgresServer, app_server: AppServer, listener: int
) -> None:
    """postgres + http + tcp from one file: all ready, per-check views, one session."""
    config = write_checks(
        tmp_path / "checks.yaml",
        [
            {"name": "primary", "kind": "postgres", "dsn_file": dsn_file(tmp_path, pg.dsn(), "p")},
            {"name": "app", "kind": "http", "url": app_server.url},
            {"name": "cache", "kind": "tcp", "host": LOOPBACK, "port": listener},
        ],
        interval_seconds=0.3,
        timeout_seconds=2,
    )
    with SidecarProcess({"SIDECAR_CONFIG_FILE": str(config)}, log_dir=tmp_path) as sidecar:
        sidecar.wait_listening()
        sidecar.wait_status("/ready", 200, within=15)
        for name in ("primary", "app", "cache"):
            assert sidecar.status(f"/ready/{name}") == 200
            assert sidecar.status(f"/health/{name}") == 200
            kind = {"primary": "postgres", "app": "http", "cache": "tcp"}[name]
            assert (
                sidecar.metric(
                    "health_sidecar_check_info", check=name, kind=kind, criticality="critical"
                )
                == 1
            )
        assert app_server.hits >= 1
        assert pg.sessions() == 1
        started = sidecar.events("sidecar.starting")[0]
        assert "primary" in json.dumps(started)
        # Every check names its own target: the environment's database is not in use.
        assert sidecar.events("sidecar.listening")[0]["database"] is None


def test_a_hung_check_never_delays_another(
    tmp_path: Path, pg: PostgresServer, app_server: AppServer
) -> None:
    """While the http check hangs for its whole 4 s timeout, postgres keeps its 0.2 s pace."""
    config = write_checks(
        tmp_path / "checks.yaml",
        [
            {
                "name": "primary",
                "kind": "postgres",
                "dsn_file": dsn_file(tmp_path, pg.dsn(), "p"),
                "interval_seconds": 0.2,
            },
            {"name": "app", "kind": "http", "url": app_server.url, "timeout_seconds": 4},
        ],
        interval_seconds=0.2,
        timeout_seconds=1,
    )
    with SidecarProcess({"SIDECAR_CONFIG_FILE": str(config)}, log_dir=tmp_path) as sidecar:
        sidecar.wait_listening()
        sidecar.wait_status("/ready", 200, within=15)
        app_server.hang.set()
        hits = app_server.hits
        wait_until(lambda: app_server.hits > hits, timeout=5, message="a hung request")
        before = sidecar.metric("health_sidecar_check_total", check="primary", outcome="pass")
        # A loop blocked by the hung one would do no check at all; its own does five.
        wait_until(
            lambda: (
                sidecar.metric("health_sidecar_check_total", check="primary", outcome="pass")
                >= before + 5
            ),
            timeout=10,
            message="five more primary checks while app hangs",
        )
        assert sidecar.status("/ready/primary") == 200
        sidecar.wait_status("/ready/app", 503, within=10)
        assert sidecar.status("/ready") == 503
        assert sidecar.status("/health") == 200
        reply = sidecar.get("/ready/app?verbose")
        assert reply.json()["checks"]["app"][0]["reason"] == "timeout"
        app_server.release.set()
        app_server.hang.clear()
        sidecar.wait_status("/ready", 200, within=15)


def test_warn_check_down_keeps_ready_and_shows_warn(
    tmp_path: Path, pg: PostgresServer, make_fault_proxy: ProxyFactory
) -> None:
    """A `warn` replica that is unreachable: /ready 200 with status warn, text lines say so."""
    proxy: FaultProxy = make_fault_proxy(pg.host, pg.port)
    config = tmp_path / "checks.toml"
    config.write_text(
        "[defaults]\ninterval_seconds = 0.3\ntimeout_seconds = 1\n\n"
        '[[checks]]\nname = "primary"\nkind = "postgres"\n'
        f'dsn_file = "{dsn_file(tmp_path, pg.dsn(), "p")}"\n\n'
        '[[checks]]\nname = "replica"\nkind = "postgres"\ncriticality = "warn"\n'
        f'dsn_file = "{dsn_file(tmp_path, pg.dsn(port=proxy.port), "r")}"\n'
    )
    with SidecarProcess({"SIDECAR_CONFIG_FILE": str(config)}, log_dir=tmp_path) as sidecar:
        sidecar.wait_listening()
        sidecar.wait_status("/ready/replica", 200, within=15)
        # One dedicated connection per postgres check.
        wait_until(lambda: pg.sessions() == 2, timeout=10, message="two sessions")
        proxy.blackhole()
        sidecar.wait_status("/ready/replica", 503, within=10)
        reply = sidecar.get("/ready")
        assert reply.status == 200
        assert reply.json()["status"] == "warn"
        assert reply.json()["checks"]["replica"][0]["status"] == "warn"
        text = sidecar.get("/ready?verbose", headers={"Accept": "text/plain"})
        assert text.status == 200
        lines = text.body.decode().splitlines()
        assert "[+]primary ok" in lines
        assert any(
            line.startswith("[-]replica failed: timeout") and "warn" in line for line in lines
        )
        assert lines[-1] == "ready check passed"
        assert sidecar.metric("health_sidecar_ready") == 1
        assert sidecar.metric("health_sidecar_check_up", check="replica") == 0
