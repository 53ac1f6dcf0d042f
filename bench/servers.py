"""The servers under test, each a process on its own loopback port.

- `sidecar`: health-sidecar on asyncio's own event loop (uvloop kept out of its imports),
- `sidecar_uvloop`: health-sidecar as installed with the `fast` extra (it picks uvloop itself),
- `bare_aiohttp` (and `bare_aiohttp_uvloop`): bench.bare_app, the framework's ceiling,
- `nginx`: `return 200` with the same body, the machine's ceiling (when installed),
- `baseline`: bench.baseline_app, FastAPI + SQLAlchemy doing SELECT 1 per /health.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from bench import procs

# Run the sidecar's own entry point with `import uvloop` failing, so it falls back to asyncio's
# loop exactly as on an install without the `fast` extra.
NO_UVLOOP_BOOT: Final = (
    "import sys; sys.modules['uvloop'] = None; from sidecar.__main__ import main; sys.exit(main())"
)


@dataclass
class Server:
    name: str
    argv: list[str]
    port: int
    env: dict[str, str] | None = None
    health_path: str = "/health"
    ready_path: str = "/ready"
    workdir: Path | None = None
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    log_path: Path | None = None
    notes: dict[str, str] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise RuntimeError(f"{self.name} is not running")
        return self.proc.pid

    def start(self, *, wait_ready: bool = True, timeout: float = 60.0) -> None:
        log = self.log_path.open("ab") if self.log_path is not None else None
        self.started_at = time.monotonic()
        try:
            self.proc = procs.spawn(self.argv, env=self.env, log=log)
        finally:
            if log is not None:
                log.close()
        if wait_ready:
            self.wait_ready(timeout=timeout)

    def wait_ready(self, *, timeout: float = 60.0) -> float:
        try:
            return procs.wait_for_status(
                self.port, self.ready_path, timeout=timeout, proc=self.proc, poll_interval=0.01
            )
        except (RuntimeError, TimeoutError) as exc:
            raise RuntimeError(f"{self.name} not ready: {exc}{self.log_tail()}") from exc

    def log_tail(self) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        tail = self.log_path.read_text(errors="replace").splitlines()[-15:]
        return "\n--- log ---\n" + "\n".join(tail)

    def stop(self) -> None:
        if self.proc is not None:
            procs.stop(self.proc)
            self.proc = None

    def cpu_seconds(self) -> float:
        """The process and its workers (nginx forks them), reaped ones included."""
        return procs.tree_cpu_seconds(self.pid)

    def rss_bytes(self) -> int:
        return procs.tree_rss_bytes(self.pid)


def python() -> str:
    return sys.executable


def has_module(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


def sidecar_available() -> bool:
    return has_module("sidecar") and has_module("sidecar.app")


def sidecar_env(
    dsn: str,
    port: int,
    *,
    interval: float | None = None,
    timeout: float | None = None,
    backoff_max: float | None = None,
) -> dict[str, str]:
    env = {
        "PATH": "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin",
        "SIDECAR_DATABASE_URL": dsn,
        "SIDECAR_HOST": "127.0.0.1",
        "SIDECAR_PORT": str(port),
        "SIDECAR_LOG_LEVEL": "warning",
        # The bench stops sidecars between sections; draining would only add waiting.
        "SIDECAR_DRAIN_SECONDS": "0",
    }
    if interval is not None:
        env["SIDECAR_CHECK_INTERVAL"] = f"{interval:g}"
    if timeout is not None:
        env["SIDECAR_CHECK_TIMEOUT"] = f"{timeout:g}"
    if backoff_max is not None:
        env["SIDECAR_BACKOFF_MAX"] = f"{backoff_max:g}"
    return env


def sidecar(
    name: str,
    dsn: str,
    *,
    uvloop: bool,
    cpu: int | None,
    logdir: Path,
    interval: float | None = None,
    timeout: float | None = None,
    backoff_max: float | None = None,
) -> Server:
    port = procs.free_port()
    script = Path(python()).with_name("health-sidecar")
    if uvloop:
        argv = [str(script)] if script.exists() else [python(), "-m", "sidecar"]
    else:
        argv = [python(), "-c", NO_UVLOOP_BOOT]
    return Server(
        name=name,
        argv=procs.pinned(argv, cpu),
        port=port,
        env=sidecar_env(dsn, port, interval=interval, timeout=timeout, backoff_max=backoff_max),
        log_path=logdir / f"{name}-{port}.log",
    )


def bare(name: str, body_file: Path, *, uvloop: bool, cpu: int | None, logdir: Path) -> Server:
    port = procs.free_port()
    argv = [python(), "-m", "bench.bare_app", "--port", str(port), "--body-file", str(body_file)]
    if uvloop:
        argv.append("--uvloop")
    return Server(
        name=name,
        argv=procs.pinned(argv, cpu),
        port=port,
        health_path="/ready",
        log_path=logdir / f"{name}-{port}.log",
    )


def baseline(name: str, dsn: str, *, cpu: int | None, logdir: Path) -> Server:
    port = procs.free_port()
    argv = [python(), "-m", "bench.baseline_app", "--port", str(port)]
    return Server(
        name=name,
        argv=procs.pinned(argv, cpu),
        port=port,
        env={"PATH": "/usr/bin:/bin", "BASELINE_DATABASE_URL": dsn},
        ready_path="/health",
        log_path=logdir / f"{name}-{port}.log",
    )


def nginx_path() -> str | None:
    return shutil.which("nginx") or (
        "/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None
    )


def nginx(name: str, body: bytes, *, cpu: int | None, workdir: Path, logdir: Path) -> Server | None:
    binary = nginx_path()
    if binary is None:
        return None
    port = procs.free_port()
    prefix = workdir / f"nginx-{port}"
    prefix.mkdir(parents=True, exist_ok=True)
    literal = body.decode().replace("\\", "\\\\").replace("'", "\\'")
    temp = "".join(
        f"    {kind}_temp_path {prefix / kind};\n" for kind in ("client_body", "proxy", "fastcgi")
    )
    conf = prefix / "nginx.conf"
    conf.write_text(
        # One worker: a single-core ceiling, like the single-process Python servers.
        "worker_processes 1;\n"
        "daemon off;\n"
        f"pid {prefix / 'nginx.pid'};\n"
        "error_log stderr warn;\n"
        "events { worker_connections 4096; }\n"
        "http {\n"
        "    access_log off;\n"
        "    keepalive_requests 10000000;\n"
        f"{temp}"
        "    server {\n"
        f"        listen 127.0.0.1:{port};\n"
        "        location / {\n"
        "            default_type application/health+json;\n"
        "            add_header Cache-Control no-store;\n"
        f"            return 200 '{literal}';\n"
        "        }\n"
        "    }\n"
        "}\n"
    )
    argv = [binary, "-p", str(prefix), "-c", str(conf), "-e", "stderr"]
    return Server(
        name=name,
        argv=procs.pinned(argv, cpu),
        port=port,
        health_path="/ready",
        log_path=logdir / f"{name}-{port}.log",
    )
