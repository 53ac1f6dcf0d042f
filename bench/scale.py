"""Many checks, many scrapers, the default pod's memory: this tree beside a base, in one run.

    .venv/bin/python -m bench.scale [--base REV] [--this REV] [--rounds N] [--out DIR]

Both trees' `sidecar/` come from git (bench.versions.export) and run on the same interpreter and
dependencies, with uvloop hidden (the image does not install it), in interleaved rounds (the
order swaps every round). Per tree and round:

- 1, 100 and 500 checks: one postgres check (the environment's database, through a FaultProxy)
  and, beyond it, tcp and http checks in turn (all `warn`) against local listeners. Once every
  check has run: RSS; then /health probed every 50 ms (a fresh connection each, as kubelet does)
  for PHASE_SECONDS while 0, 1 and 4 scrapers loop /metrics; then SCRAPES scrapes, spaced
  beyond the reuse window, for the bytes and the CPU of one scrape (the process's CPU over
  them, less its idle CPU over as long); then an outage (the proxy refuses, the listeners
  close) of OUTAGE_SECONDS; then the peak RSS of the whole life (VmHWM).
- the default start (DEFAULT_STARTS_PER_ROUND times), import by import: the RSS after
  `python -c pass`, after each dependency (cumulative: aiohttp.web, asyncpg,
  prometheus_client, structlog, backoff: the dependency floor), after the tree's own modules,
  after the first /ready 200, and after 100 rounds of /ready, /health, /startup, /metrics and
  IDLE_SECONDS idle. The same for a third program, bench/least_sidecar.py: the default pod's
  job in the fewest lines, with the same five dependencies, so the least any implementation
  pays above the floor is measured beside the two trees.

Figures are medians over rounds. Writes scale.json and the marked scale section of RESULTS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import re
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Final

from bench import procs
from bench.db import Database, FaultProxy
from bench.lifecycle import short_rev
from bench.versions import export

DEFAULT_BASE: Final = "341fe9d"
CHECK_COUNTS: Final = (1, 100, 500)
SCRAPER_COUNTS: Final = (0, 1, 4)
PHASE_SECONDS: Final = 5.0
MIN_PROBES: Final = 3
PROBE_PERIOD_SECONDS: Final = 0.05
PROBE_TIMEOUT_SECONDS: Final = 30.0
SCRAPES: Final = 3
# Longer than the new tree's longest reuse of a render (1 s): each scrape renders.
SCRAPE_SPACING_SECONDS: Final = 1.2
OUTAGE_SECONDS: Final = 6.0
IDLE_SECONDS: Final = 3.0
DEFAULT_STARTS_PER_ROUND: Final = 3
READY_TIMEOUT_SECONDS: Final = 120.0
DEPENDENCIES: Final = ("aiohttp.web", "asyncpg", "prometheus_client", "structlog", "backoff")
BEGIN: Final = "<!-- scale:begin -->"
END: Final = "<!-- scale:end -->"

# uvloop hidden: `import uvloop` raises ImportError, as in the image, which does not ship it.
RUN_SIDECAR: Final = (
    "import runpy, sys; sys.modules['uvloop'] = None; sys.argv = ['sidecar'];"
    " runpy.run_module('sidecar', run_name='__main__', alter_sys=True)"
)
# The least sidecar (bench/least_sidecar.py) runs from a directory of its own, as a tree's
# `sidecar` does from the tree.
LEAST: Final = "least_sidecar"
# What a default start imports of the program itself before it runs, and the module it runs.
PROGRAMS: Final = {
    "base": (("sidecar.__main__", "sidecar.app", "sidecar.server"), "sidecar"),
    "this": (("sidecar.__main__", "sidecar.app", "sidecar.server"), "sidecar"),
    "least": ((LEAST,), LEAST),
}
OWN_MODULES_STEP: Final = "import the program's own modules"
# The default start, import by import: one JSON line of (step, RSS KiB) on stderr per step,
# then the program itself. cwd is the tree, so its `sidecar` is the one imported.
STEPS: Final = (
    f"DEPENDENCIES_GIVEN = {DEPENDENCIES!r}\n"
    + f"OWN_STEP = {OWN_MODULES_STEP!r}\n"
    + """
import json, re, runpy, sys
sys.modules['uvloop'] = None
def rss():
    return int(re.search(r'VmRSS:\\s+(\\d+)', open('/proc/self/status').read()).group(1))
def mark(step):
    sys.stderr.write(json.dumps([step, rss()]) + '\\n'); sys.stderr.flush()
mark('python')
DEPENDENCIES = DEPENDENCIES_GIVEN
for name in DEPENDENCIES:
    __import__(name); mark('import ' + name)
for name in OWN_MODULES:
    __import__(name)
mark(OWN_STEP)
sys.argv = [RUN]
runpy.run_module(RUN, run_name='__main__', alter_sys=True)
"""
)


class Listeners:
    """A TCP port that accepts and closes, and an HTTP/1.1 port that answers 200 with keep-alive,
    on one asyncio loop in a thread; `down()` closes both (connections refused), `up()` reopens
    them on the same ports."""

    def __init__(self) -> None:
        self.tcp_port = procs.free_port()
        self.http_port = procs.free_port()
        self._loop = asyncio.new_event_loop()
        self._servers: list[asyncio.Server] = []
        self._writers: set[asyncio.StreamWriter] = set()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(30)

    def up(self) -> None:
        async def start() -> list[asyncio.Server]:
            return [
                await asyncio.start_server(_accept_and_close, "127.0.0.1", self.tcp_port),
                await asyncio.start_server(self._answer_ok, "127.0.0.1", self.http_port),
            ]

        self._servers = self._call(start())

    def down(self) -> None:
        async def stop(servers: list[asyncio.Server]) -> None:
            for server in servers:
                server.close()
            for writer in list(self._writers):  # kept-alive connections too
                writer.close()

        self._call(stop(self._servers))
        self._servers = []

    async def _answer_ok(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            while await reader.readline():
                while (await reader.readline()) not in (b"\r\n", b""):
                    pass
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            self._writers.discard(writer)
            writer.close()

    def close(self) -> None:
        if self._servers:
            self.down()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


async def _accept_and_close(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.close()


def check_file(path: Path, count: int, listeners: Listeners) -> Path:
    lines = ["checks:", "  - {name: postgres, kind: postgres}"]
    for index in range(1, count):
        if index % 2:
            target = f"kind: tcp, host: 127.0.0.1, port: {listeners.tcp_port}"
        else:
            target = f"kind: http, url: 'http://127.0.0.1:{listeners.http_port}/'"
        lines.append(f"  - {{name: c{index}, criticality: warn, {target}}}")
    path.write_text("\n".join(lines) + "\n")
    return path


def get(port: int, path: str, timeout: float = PROBE_TIMEOUT_SECONDS) -> tuple[int, bytes, float]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    started = time.monotonic()
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read(), time.monotonic() - started
    finally:
        conn.close()


def status_kib(pid: int, field: str) -> int:
    text = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(rf"{field}:\s+(\d+)", text).group(1))  # type: ignore[union-attr]


def wait_until(predicate: Any, what: str, proc: Any) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_SECONDS
    while True:
        try:
            if predicate():
                return
        except OSError:
            pass
        if proc.poll() is not None:
            raise RuntimeError(f"the sidecar exited before {what}")
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.05)


def all_checks_ran(port: int, count: int) -> bool:
    status, body, _ = get(port, "/metrics?name[]=health_sidecar_check_total")
    if status != 200:
        return False
    ran = {
        match.group(1)
        for match in re.finditer(rb'check="([^"]+)",outcome="(?:pass|fail)"} ([1-9])', body)
    }
    return len(ran) >= count


def probe_phase(port: int, scrapers: int) -> dict[str, float]:
    stop = threading.Event()
    scraped: list[float] = []

    def scrape() -> None:
        while not stop.is_set():
            try:
                scraped.append(get(port, "/metrics")[2])
            except OSError:
                scraped.append(-1.0)

    threads = [threading.Thread(target=scrape, daemon=True) for _ in range(scrapers)]
    for thread in threads:
        thread.start()
    while scrapers and len(scraped) < scrapers:  # the scrapers are at it before probing
        time.sleep(0.01)
    latencies: list[float] = []
    started = time.monotonic()
    while time.monotonic() - started < PHASE_SECONDS or len(latencies) < MIN_PROBES:
        latencies.append(get(port, "/health")[2])
        time.sleep(PROBE_PERIOD_SECONDS)
    stop.set()
    for thread in threads:
        thread.join(60)
    latencies.sort()
    return {
        "p50_ms": 1000 * statistics.median(latencies),
        "p99_ms": 1000 * latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))],
        "max_ms": 1000 * latencies[-1],
        "probes": len(latencies),
        "scrapes": len(scraped),
    }


def scrape_cost(pid: int, port: int) -> dict[str, float]:
    """Bytes of one scrape, and its CPU: the process's CPU over SCRAPES spaced scrapes, less its
    CPU over an idle window as long."""
    window = SCRAPES * SCRAPE_SPACING_SECONDS
    before = procs.task_cpu_seconds(pid)
    time.sleep(window)
    idle = procs.task_cpu_seconds(pid) - before
    size = 0
    before = procs.task_cpu_seconds(pid)
    started = time.monotonic()
    for _ in range(SCRAPES):
        began = time.monotonic()
        _, body, _ = get(port, "/metrics")
        size = len(body)
        time.sleep(max(0.0, SCRAPE_SPACING_SECONDS - (time.monotonic() - began)))
    busy = procs.task_cpu_seconds(pid) - before
    idle_share = idle * (time.monotonic() - started) / window
    return {"metrics_bytes": size, "scrape_cpu_ms": 1000 * max(0.0, busy - idle_share) / SCRAPES}


def run_checks(
    tree: Path, count: int, env: dict[str, str], work: Path, side: dict[str, Any]
) -> dict[str, Any]:
    listeners, proxy = side["listeners"], side["proxy"]
    port = procs.free_port()
    env = {**env, "SIDECAR_PORT": str(port)}
    if count > 1:
        env["SIDECAR_CONFIG_FILE"] = str(
            check_file(work / f"checks-{count}.yaml", count, listeners)
        )
    proc = procs.spawn([sys.executable, "-c", RUN_SIDECAR], env=env, cwd=tree)
    try:
        wait_until(lambda: all_checks_ran(port, count), f"{count} checks ran", proc)
        row: dict[str, Any] = {"rss_mib": status_kib(proc.pid, "VmRSS") / 1024}
        for scrapers in SCRAPER_COUNTS:
            row[f"health_{scrapers}"] = probe_phase(port, scrapers)
        row.update(scrape_cost(proc.pid, port))
        proxy.refuse()
        listeners.down()
        time.sleep(OUTAGE_SECONDS)
        proxy.forward()
        listeners.up()
        time.sleep(2.0)
        row["peak_rss_mib"] = status_kib(proc.pid, "VmHWM") / 1024
        return row
    finally:
        procs.stop(proc)


def default_start(tree: Path, env: dict[str, str], program: str = "this") -> dict[str, float]:
    """The default sidecar's RSS, import by import, then after start and after traffic."""
    port = procs.free_port()
    err = tempfile.TemporaryFile()  # noqa: SIM115 -- read after the process ends
    own, run = PROGRAMS[program]
    proc = procs.spawn(
        [sys.executable, "-c", f"OWN_MODULES = {own!r}\nRUN = {run!r}\n{STEPS}"],
        env={**env, "SIDECAR_PORT": str(port)},
        cwd=tree,
        log=err,
    )
    try:
        wait_until(lambda: get(port, "/ready", 1.0)[0] == 200, "/ready 200", proc)
        steps: dict[str, float] = {"first /ready 200": status_kib(proc.pid, "VmRSS") / 1024}
        for _ in range(100):
            for path in ("/ready", "/health", "/startup", "/metrics"):
                get(port, path)
        time.sleep(IDLE_SECONDS)
        steps["after 400 requests and 3 s idle"] = status_kib(proc.pid, "VmRSS") / 1024
    finally:
        procs.stop(proc)
    err.seek(0)
    marks: dict[str, float] = {}
    for line in err.read().decode(errors="replace").splitlines():
        if line.startswith("["):
            step, kib = json.loads(line)
            marks[step] = kib / 1024
    return {**marks, **steps}


def median_of(rows: list[dict[str, Any]], *path: str) -> float:
    values = []
    for row in rows:
        value: Any = row
        for key in path:
            value = value[key]
        values.append(float(value))
    return statistics.median(values)


def section(meta: dict[str, Any], results: dict[str, list[dict[str, Any]]]) -> str:
    base, this = meta["base"], meta["this"]
    lines = [
        BEGIN,
        "## Scale: many checks, many scrapers, the default pod (`python -m bench.scale`)",
        "",
        f"Run of {meta['finished']} ({meta['minutes']:g} min): base `{base}` beside this tree"
        f" `{this}`, {meta['rounds']} interleaved rounds, medians; uvloop hidden (as in the"
        " image). n checks: one postgres check plus tcp and http checks in turn (all `warn`)"
        " against local listeners. The machine is shared with other jobs (2 cores): latencies"
        f" moved by {meta['noise']} between rounds; read the columns side by side.",
        "",
        "### /health while scrapers loop /metrics (p50 / p99 / max, ms)",
        "",
        f"Probes every {PROBE_PERIOD_SECONDS * 1000:g} ms for {PHASE_SECONDS:g} s (at least"
        f" {MIN_PROBES}), a fresh connection each: under 100 a phase, so p99 is the slowest"
        " probe but one, or the slowest.",
        "",
        "| checks | scrapers | base | this |",
        "|---|---|---|---|",
    ]
    for count in CHECK_COUNTS:
        for scrapers in SCRAPER_COUNTS:
            cells = []
            for side in ("base", "this"):
                rows = results[f"{side}_{count}"]
                key = f"health_{scrapers}"
                cells.append(
                    " / ".join(
                        f"{median_of(rows, key, figure):.1f}"
                        for figure in ("p50_ms", "p99_ms", "max_ms")
                    )
                )
            lines.append(f"| {count} | {scrapers} | {cells[0]} | {cells[1]} |")
    lines += [
        "",
        "### /metrics and memory",
        "",
        "| checks | figure | base | this |",
        "|---|---|---|---|",
    ]
    for count in CHECK_COUNTS:
        for label, key, digits in (
            ("/metrics bytes", "metrics_bytes", 0),
            ("CPU per scrape (ms)", "scrape_cpu_ms", 1),
            ("RSS once every check ran (MiB)", "rss_mib", 2),
            ("peak RSS: start, scrapes, outage (MiB)", "peak_rss_mib", 2),
        ):
            base_value = median_of(results[f"base_{count}"], key)
            this_value = median_of(results[f"this_{count}"], key)
            lines.append(
                f"| {count} | {label} | {base_value:,.{digits}f} | {this_value:,.{digits}f} |"
            )
    for side in ("base", "this"):
        one = median_of(results[f"{side}_1"], "rss_mib")
        many = median_of(results[f"{side}_500"], "rss_mib")
        meta[f"{side}_per_check_kib"] = (many - one) * 1024 / 499
    lines += [
        "",
        f"Per extra check (RSS at 500 less at 1, over 499): base {meta['base_per_check_kib']:.1f}"
        f" KiB, this {meta['this_per_check_kib']:.1f} KiB.",
        "",
        "### The default start, import by import (RSS, MiB; cumulative)",
        "",
        "The two trees, and the least sidecar (`bench/least_sidecar.py`): the default pod's job"
        " (one postgres check, probes, /metrics, JSON logs, a drain) with the same five"
        " dependencies in the fewest lines, none of the sidecar's robustness. Its own modules"
        " are that one file; the sidecar's are `__main__`, `app` and `server` and what they"
        " import.",
        "",
        "| step | base | this | least |",
        "|---|---|---|---|",
    ]
    programs = ("base", "this", "least")
    for step in results["base_default"][0]:
        mib = " | ".join(f"{median_of(results[f'{p}_default'], step):.2f}" for p in programs)
        lines.append(f"| {step} | {mib} |")
    floor = f"import {DEPENDENCIES[-1]}"
    for program in programs:
        meta[f"{program}_over_floor_mib"] = median_of(
            [
                {"d": r["after 400 requests and 3 s idle"] - r[floor]}
                for r in results[f"{program}_default"]
            ],
            "d",
        )
    lines += [
        "",
        "The dependency floor is the row `import backoff` (all five imported). After start and"
        f" traffic the default sidecar is {meta['base_over_floor_mib']:.2f} MiB over it on the"
        f" base, {meta['this_over_floor_mib']:.2f} MiB on this tree, and the least sidecar"
        f" {meta['least_over_floor_mib']:.2f} MiB (the difference taken within each process,"
        " then the median). The least sidecar's share is what any program doing this job with"
        " these dependencies pays: the pages of asyncpg's, aiohttp's and libc's compiled code"
        " that the first connection and the first requests touch, and the objects an app, a"
        " registry and a connection hold. So the achievable figure is about that, and this"
        f" tree's own overhead is {meta['this_over_floor_mib'] - meta['least_over_floor_mib']:.2f}"
        " MiB beyond it.",
        "",
        END,
        "",
    ]
    return "\n".join(lines)


def write_section(path: Path, text: str) -> None:
    """Replace the marked section of `path`, or append it."""
    old = path.read_text() if path.exists() else ""
    if BEGIN in old and END in old:
        head, _, rest = old.partition(BEGIN)
        _, _, tail = rest.partition(END + "\n")
        old = head + text + tail
    else:
        old = (old.rstrip("\n") + "\n\n" if old else "") + text
    path.write_text(old)


def rewrite(path: Path, out: Path) -> None:
    """Write the RESULTS.md section again from a scale.json (no new run)."""
    saved = json.loads(path.read_text())
    write_section(out / "RESULTS.md", section(saved["meta"], saved["results"]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--base", default=DEFAULT_BASE, help="the earlier commit")
    parser.add_argument("--this", default="HEAD", help="this tree's commit")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", type=Path, default=procs.REPO / "bench")
    parser.add_argument("--from-json", type=Path, help="only rewrite the section from this file")
    args = parser.parse_args(argv)
    if args.from_json is not None:
        rewrite(args.from_json, args.out)
        return 0
    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="hs-scale-"))
    trees = {"base": export(args.base, work / "base"), "this": export(args.this, work / "this")}
    least = work / "least"
    least.mkdir()
    shutil.copy(procs.REPO / "bench" / f"{LEAST}.py", least)
    results: dict[str, list[dict[str, Any]]] = {}
    db = Database()
    listeners = Listeners()
    try:
        db.start()
        proxy = FaultProxy("127.0.0.1", db.port)
        dsn_file = work / "dsn"
        dsn_file.write_text(db.dsn("sidecar", port=proxy.port) + "\n")
        listeners.up()
        env = {
            "PATH": "/usr/bin:/bin",
            "SIDECAR_DATABASE_URL_FILE": str(dsn_file),
            "SIDECAR_HOST": "127.0.0.1",
            "SIDECAR_LOG_LEVEL": "warning",
            "SIDECAR_DRAIN_SECONDS": "0",
        }
        side = {"listeners": listeners, "proxy": proxy}
        for round_no in range(args.rounds):
            order = ("base", "this") if round_no % 2 == 0 else ("this", "base")
            # Cheap and noisy (the start's layout of the heap varies): several per round.
            for _ in range(DEFAULT_STARTS_PER_ROUND):
                for name in (*order, "least"):
                    tree = least if name == "least" else trees[name]
                    row = default_start(tree, {**env, "SIDECAR_LOG_LEVEL": "info"}, name)
                    results.setdefault(f"{name}_default", []).append(row)
                    print(json.dumps({name: row}), flush=True)
            for name in order:
                for count in CHECK_COUNTS:
                    row = run_checks(trees[name], count, env, work, side)
                    results.setdefault(f"{name}_{count}", []).append(row)
                    print(json.dumps({f"{name}_{count}": row}), flush=True)
        proxy.stop()
    finally:
        listeners.close()
        db.stop()
        procs.stop_all()
    spread = [
        max(r["health_4"]["p50_ms"] for r in results["this_500"])
        / max(0.001, min(r["health_4"]["p50_ms"] for r in results["this_500"]))
    ]
    meta = {
        "base": short_rev(args.base),
        "this": short_rev(args.this),
        "rounds": args.rounds,
        "finished": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "minutes": round((time.monotonic() - started) / 60, 1),
        "noise": f"up to {spread[0]:.1f}x (this tree's p50 at 500 checks and 4 scrapers)",
    }
    text = section(meta, results)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "scale.json").write_text(
        json.dumps({"meta": meta, "results": results}, indent=2) + "\n"
    )
    write_section(args.out / "RESULTS.md", text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
