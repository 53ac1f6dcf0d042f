"""Drive load: wrk when installed (C, cheap per request), else bench.loadgen in its own process."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from bench import procs

WRK_REPORT: Final = Path(__file__).with_name("wrk_report.lua")
MARK: Final = "BENCHJSON "


@dataclass(frozen=True, slots=True)
class LoadResult:
    requests: int
    seconds: float
    rps: float
    p50_ms: float
    p99_ms: float
    non_2xx: int
    errors: int
    tool: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "seconds": round(self.seconds, 3),
            "rps": round(self.rps, 1),
            "p50_ms": round(self.p50_ms, 4),
            "p99_ms": round(self.p99_ms, 4),
            "non_2xx": self.non_2xx,
            "errors": self.errors,
            "tool": self.tool,
        }


def wrk_seconds(duration: float) -> int:
    """wrk takes whole seconds (its units are s, m, h): round, and run at least one."""
    return max(1, round(duration))


def wrk_path() -> str | None:
    """wrk, unless absent or BENCH_NO_WRK is set (then bench.loadgen drives the load)."""
    if os.environ.get("BENCH_NO_WRK"):
        return None
    return shutil.which("wrk")


def _python() -> str:
    return sys.executable


def closed_loop(
    port: int,
    path: str,
    *,
    concurrency: int,
    duration: float,
    cpu: int | None,
    use_wrk: bool = True,
) -> LoadResult:
    """Keep `concurrency` keep-alive connections busy for `duration` seconds."""
    wrk = wrk_path() if use_wrk else None
    if wrk is not None:
        return _wrk(wrk, port, path, concurrency=concurrency, duration=duration, cpu=cpu)
    argv = [
        _python(),
        "-m",
        "bench.loadgen",
        "closed",
        "--port",
        str(port),
        "--path",
        path,
        "--concurrency",
        str(concurrency),
        "--duration",
        str(duration),
    ]
    out = _run_json(procs.pinned(argv, cpu), timeout=duration + 60)
    return LoadResult(
        requests=int(out["requests"]),
        seconds=float(out["seconds"]),
        rps=float(out["rps"]),
        p50_ms=float(out["p50_ms"]),
        p99_ms=float(out["p99_ms"]),
        non_2xx=int(out["non_2xx"]),
        errors=int(out["errors"]),
        tool="bench.loadgen",
    )


def _wrk(
    wrk: str, port: int, path: str, *, concurrency: int, duration: float, cpu: int | None
) -> LoadResult:
    argv = [
        wrk,
        "-t1",
        f"-c{concurrency}",
        f"-d{wrk_seconds(duration)}s",
        "--timeout",
        "5s",
        "-s",
        str(WRK_REPORT),
        f"http://127.0.0.1:{port}{path}",
    ]
    done = subprocess.run(
        procs.pinned(argv, cpu),
        check=True,
        capture_output=True,
        text=True,
        timeout=duration + 60,
    )
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith(MARK)), None)
    if line is None:
        raise RuntimeError(f"wrk printed no report: {done.stdout}\n{done.stderr}")
    out = json.loads(line[len(MARK) :])
    seconds = out["duration_us"] / 1e6
    return LoadResult(
        requests=int(out["requests"]),
        seconds=seconds,
        rps=out["requests"] / seconds if seconds else 0.0,
        p50_ms=out["p50_us"] / 1000,
        p99_ms=out["p99_us"] / 1000,
        non_2xx=int(out["status"]),
        errors=int(out["connect"] + out["read"] + out["write"] + out["timeout"]),
        tool="wrk",
    )


def start_background_wrk(
    port: int,
    path: str,
    *,
    concurrency: int,
    duration: float,
    cpu: int | None,
    nice: int = 0,
) -> subprocess.Popen[bytes]:
    """Load in the background (the outage section); returns the process, output discarded."""
    wrk = wrk_path()
    if wrk is not None:
        argv = [
            wrk,
            "-t1",
            f"-c{concurrency}",
            f"-d{wrk_seconds(duration)}s",
            "--timeout",
            "2s",
            f"http://127.0.0.1:{port}{path}",
        ]
    else:
        argv = [
            _python(),
            "-m",
            "bench.loadgen",
            "closed",
            "--port",
            str(port),
            "--path",
            path,
            "--concurrency",
            str(concurrency),
            "--duration",
            str(duration),
        ]
    if nice:
        argv = ["nice", "-n", str(nice), *argv]
    return procs.spawn(procs.pinned(argv, cpu))


def start_prober(
    port: int,
    path: str,
    *,
    rate: float,
    duration: float,
    timeout: float,
    keepalive: int,
    cpu: int | None,
    out_file: Path,
) -> subprocess.Popen[bytes]:
    """The open-loop prober (bench.loadgen rate) writing its JSON to out_file."""
    argv = [
        _python(),
        "-m",
        "bench.loadgen",
        "rate",
        "--port",
        str(port),
        "--path",
        path,
        "--rate",
        str(rate),
        "--duration",
        str(duration),
        "--timeout",
        str(timeout),
        "--keepalive",
        str(keepalive),
    ]
    with out_file.open("wb") as handle:
        return procs.spawn(procs.pinned(argv, cpu), stdout=handle)


def finish_prober(proc: subprocess.Popen[bytes], out_file: Path, *, timeout: float) -> Any:
    try:
        proc.wait(timeout=timeout)
    finally:
        procs.stop(proc)
    return json.loads(out_file.read_text())


def _run_json(argv: Sequence[str], *, timeout: float) -> Any:
    done = subprocess.run(
        list(argv),
        check=True,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=procs.REPO,
    )
    return json.loads(done.stdout)
