"""Where the sidecar's time and memory go: the profile behind RESULTS.md's verdicts.

    .venv/bin/python -m bench.profile [--duration 8] [--out bench/PROFILE.md]

- Request path: the sidecar's /ready, its /metrics, and bare aiohttp's /ready, each in its own
  process under pyinstrument while wrk (50 connections) loads it; every frame's time is divided
  by the requests served, so the three read side by side in microseconds per request.
- Start: `python -X importtime` of what the sidecar imports before it can listen.
- Memory: RSS after importing each dependency in turn, in a fresh interpreter.

py-spy would be the first choice for the request path (it samples from outside, at no cost to
the target), but it cannot read this interpreter's version (a pyenv build: "Failed to find
python version from target process"). pyinstrument samples from inside instead; its overhead
inflates absolute times, not the split between frames.
"""

from __future__ import annotations

import argparse
import json
import os
import pstats
import re
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Final

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import load, procs, servers
from bench.bare_app import DEFAULT_BODY

BENCH_DIR: Final = Path(__file__).resolve().parent
# What the sidecar has imported by the time it listens (sidecar/__main__.py's serve path).
SIDECAR_IMPORTS: Final = (
    "aiohttp.web",
    "asyncpg",
    "prometheus_client",
    "structlog",
    "uvloop",
    "sidecar.app",
    "sidecar.server",
)
RSS_PROBE: Final = """
import importlib, json, sys
def rss():
    with open('/proc/self/statm') as fh:
        return int(fh.read().split()[1]) * {page} / 1048576
out = [['python', rss()]]
for name in sys.argv[1:]:
    try:
        importlib.import_module(name)
    except ImportError:
        continue
    out.append([name, rss()])
print(json.dumps(out))
"""
# Frames worth naming in the per-request table, by function name.
KEY_FRAMES: Final = (
    "_handle_request",
    "_handle",
    "handler",
    "ready",
    "metrics_handler",
    "generate_latest",
    "_respond",
    "Answers.ready",
    "readiness",
    "hit",
    "__init__",
    "_start",
    "_prepare_hook",
    "data_received",
    "_read_ready",
)
TOP_SELF: Final = 18


@dataclass(frozen=True, slots=True)
class Phase:
    name: str
    requests: int
    rps: float
    stats: pstats.Stats


def _pyinstrument(code: str, argv_tail: list[str], out: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "pyinstrument",
        "-r",
        "pstats",
        "-o",
        str(out),
        "-i",
        "0.0005",
        "-c",
        code,
        *argv_tail,
    ]


def run_phase(
    name: str,
    server: servers.Server,
    *,
    path: str,
    duration: float,
    out: Path,
    client_cpu: int | None,
) -> Phase:
    """Serve under pyinstrument, load `path` for `duration`, stop with SIGINT, read pstats."""
    server.start(timeout=60)
    try:
        result = load.closed_loop(
            server.port, path, concurrency=50, duration=duration, cpu=client_cpu
        )
    finally:
        if server.proc is not None:
            os.kill(server.proc.pid, signal.SIGINT)
            try:
                server.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                server.stop()
    print(f"{name}: {result.requests} requests, {result.rps:,.0f} rps under pyinstrument")
    return Phase(name, result.requests, result.rps, pstats.Stats(str(out)))


def _label(func: tuple[str, int, str]) -> str:
    filename, line, funcname = func
    parts = Path(filename).parts
    short = "/".join(parts[-2:]) if len(parts) > 1 else filename
    return f"{funcname} ({short}:{line})"


def phase_table(phase: Phase) -> str:
    """Top frames by self time and the key frames by cumulative time, in us per request."""
    raw = phase.stats.stats  # type: ignore[attr-defined]  # pstats keeps this untyped
    entries: dict[tuple[str, int, str], tuple[float, float]] = {
        func: (float(row[2]), float(row[3])) for func, row in raw.items()
    }
    per = 1e6 / max(1, phase.requests)
    total = sum(tt for tt, _ in entries.values())
    lines = [
        f"{phase.requests:,} requests at {phase.rps:,.0f}/s under the profiler; "
        f"{total * per:.1f} us sampled per request.",
        "",
        "| frame (self time) | us/request | share |",
        "|---|---|---|",
    ]
    for func, (tt, _) in sorted(entries.items(), key=lambda kv: -kv[1][0])[:TOP_SELF]:
        lines.append(f"| {_label(func)} | {tt * per:.2f} | {tt / total:.1%} |")
    lines += ["", "| frame (cumulative) | us/request |", "|---|---|"]
    keyed = [
        (func, ct)
        for func, (_, ct) in entries.items()
        if func[2] in KEY_FRAMES
        and (
            "sidecar" in func[0]
            or "bench" in func[0]
            or "aiohttp" in func[0]
            or "prometheus" in func[0]
        )
    ]
    for func, ct in sorted(keyed, key=lambda kv: -kv[1])[:16]:
        lines.append(f"| {_label(func)} | {ct * per:.2f} |")
    return "\n".join(lines)


def import_times() -> str:
    """Cumulative import time per top-level package, from -X importtime."""
    code = "; ".join(f"import {m}" for m in SIDECAR_IMPORTS)
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", code],
        capture_output=True,
        text=True,
        check=False,
        cwd=procs.REPO,
        timeout=120,
    )
    rows: dict[str, int] = {}
    pattern = re.compile(r"^import time:\s+(\d+)\s+\|\s+(\d+)\s+\|(\s*)(\S+)$")
    for line in done.stderr.splitlines():
        match = pattern.match(line)
        if match is None:
            continue
        cumulative, indent, module = int(match.group(2)), len(match.group(3)), match.group(4)
        if indent == 1:  # imported at top level, by the program or by the first importer
            top = module.split(".")[0]
            rows[top] = rows.get(top, 0) + cumulative
    total = sum(rows.values())
    lines = [
        f"{total / 1000:.0f} ms of imports in all (one cold-ish run; the interpreter's own "
        "start, about 15 ms, comes on top):",
        "",
        "| package | cumulative import ms |",
        "|---|---|",
    ]
    for top, micros in sorted(rows.items(), key=lambda kv: -kv[1])[:15]:
        lines.append(f"| {top} | {micros / 1000:.1f} |")
    return "\n".join(lines)


def rss_by_import() -> str:
    code = RSS_PROBE.format(page=procs.PAGE_SIZE)
    done = subprocess.run(
        [sys.executable, "-c", code, *SIDECAR_IMPORTS],
        capture_output=True,
        text=True,
        check=True,
        cwd=procs.REPO,
        timeout=120,
    )
    steps: list[list[float | str]] = json.loads(done.stdout)
    lines = ["| after importing | RSS MiB | added MiB |", "|---|---|---|"]
    previous = 0.0
    for name, rss in steps:
        value = float(rss)
        lines.append(f"| {name} | {value:.1f} | {value - previous:+.1f} |")
        previous = value
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile")
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--out", type=Path, default=BENCH_DIR / "PROFILE.md")
    args = parser.parse_args(argv)
    if not 1 <= args.duration <= 120:
        parser.error("--duration must be within 1..120 s")
    from bench import db as dbm  # noqa: PLC0415 - imports tests/support lazily

    cpus = procs.cpu_list()
    cpu, client_cpu = (cpus[-1], cpus[0]) if len(cpus) > 1 else (None, None)
    work = Path(tempfile.mkdtemp(prefix="bench-profile-"))
    body_file = work / "body.json"
    body_file.write_bytes(DEFAULT_BODY)
    database = dbm.Database()
    doc: list[str] = [
        "# Profile of the sidecar",
        "",
        f"Produced by `python -m bench.profile --duration {args.duration:g}` on "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: pyinstrument every 0.5 ms, "
        "wrk with 50 connections, server pinned to one CPU. Times are per request and include "
        "the profiler's own overhead; compare frames, not totals with RESULTS.md.",
    ]
    phases: list[Phase] = []
    try:
        database.start()
        for name, path in (("sidecar /ready", "/ready"), ("sidecar /metrics", "/metrics")):
            port = procs.free_port()
            env = servers.sidecar_env(database.dsn("sidecar"), port)
            env["PYTHONPATH"] = str(procs.REPO)
            out = work / f"{len(phases)}.pstats"
            argv_ = _pyinstrument(servers.NO_UVLOOP_BOOT, [], out)
            server = servers.Server(name=name, argv=procs.pinned(argv_, cpu), port=port, env=env)
            phases.append(
                run_phase(
                    name, server, path=path, duration=args.duration, out=out, client_cpu=client_cpu
                )
            )
        port = procs.free_port()
        out = work / "bare.pstats"
        boot = "from bench.bare_app import main; main()"
        tail = ["--port", str(port), "--body-file", str(body_file)]
        server = servers.Server(
            name="bare", argv=procs.pinned(_pyinstrument(boot, tail, out), cpu), port=port
        )
        phases.append(
            run_phase(
                "bare aiohttp /ready",
                server,
                path="/ready",
                duration=args.duration,
                out=out,
                client_cpu=client_cpu,
            )
        )
    finally:
        database.stop()
        procs.stop_all()
    for phase in phases:
        doc += ["", f"## {phase.name}", "", phase_table(phase)]
    doc += ["", "## Start: imports before the sidecar can listen", "", import_times()]
    doc += ["", "## Memory: RSS as the sidecar's dependencies load", "", rss_by_import()]
    args.out.write_text("\n".join(doc) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
