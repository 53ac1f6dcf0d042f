"""This tree's sidecar beside an earlier release's, in the same run: start to Ready, RSS, imports.

    .venv/bin/python -m bench.versions [--base REV] [--rounds N] [--out DIR]   # a few minutes

The earlier release's `sidecar/` is taken from git (`git archive REV`), so both run on the same
interpreter and the same installed dependencies; only the package differs. In interleaved
rounds (the order swaps every round), each starts as `python -m sidecar` against one local
PostgreSQL with the DSN in a file, and is timed from the start to the first 200 on /ready
(polled every 5 ms); its RSS is read after 3 s idle. Import time is `python -X importtime -c
"import sidecar.__main__, sidecar.app"` (the cumulative microseconds of the two). Figures are
medians, the ratio this/base taken round by round. Writes VERSIONS.md and versions.json.

A third figure separates live memory from how the process's pages happen to be laid out: each
tree starts again with PYTHONTRACEMALLOC=1 under a small wrapper that, once the bench asks (a
trigger file, after the same 3 s idle), reports tracemalloc's traced total: the bytes of every
Python allocation still alive, whatever arenas and heap pages they sit in. The plain RSS also
moves with layout: a few kilobytes more of live objects can open one more of pymalloc's 1 MiB
arenas, or not.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.request
from io import BytesIO
from pathlib import Path

from bench import procs
from bench.db import Database

# The commit that released 0.2.0, the version before settings were declared once.
DEFAULT_BASE = "68eb16c"
IDLE_SECONDS = 3.0
FIGURES = ("start_s", "rss_mib", "traced_mib", "import_ms")
READY_TIMEOUT = 60.0


def export(rev: str, into: Path) -> Path:
    """`sidecar/` as it was at `rev`, in a directory of its own."""
    archive = subprocess.run(
        ["git", "archive", "--format=tar", rev, "sidecar"],
        cwd=procs.REPO,
        check=True,
        capture_output=True,
    ).stdout
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return into


# Runs the sidecar (cwd: the tree) under tracemalloc and, once the trigger file exists, writes
# the traced total to "<trigger>.done". The path is read before sys.argv becomes the sidecar's.
TRACE_WRAPPER = """
import os, runpy, sys, threading, time, tracemalloc
trigger = sys.argv[1]
def report():
    while not os.path.exists(trigger):
        time.sleep(0.05)
    with open(trigger + ".part", "w") as out:
        out.write(str(tracemalloc.get_traced_memory()[0]))
    os.rename(trigger + ".part", trigger + ".done")
threading.Thread(target=report, daemon=True).start()
sys.argv = ["sidecar"]
runpy.run_module("sidecar", run_name="__main__", alter_sys=True)
"""
TRACE_WAIT_SECONDS = 5.0


def start_to_ready(tree: Path, dsn_file: Path, trigger: Path | None = None) -> tuple[float, int]:
    """(seconds from spawn to the first /ready 200, RSS bytes after IDLE_SECONDS); with a
    `trigger`, under tracemalloc, the traced bytes after IDLE_SECONDS instead of the RSS."""
    port = procs.free_port()
    env = {
        "PATH": "/usr/bin:/bin",
        "SIDECAR_DATABASE_URL_FILE": str(dsn_file),
        "SIDECAR_HOST": "127.0.0.1",
        "SIDECAR_PORT": str(port),
        "SIDECAR_LOG_LEVEL": "warning",
    }
    started = time.monotonic()
    # cwd = the tree: `python -m` puts it first on sys.path, so its `sidecar` is the one imported.
    command = [sys.executable, "-m", "sidecar"]
    done = Path(f"{trigger}.done")
    if trigger is not None:
        trigger.unlink(missing_ok=True)
        done.unlink(missing_ok=True)
        env["PYTHONTRACEMALLOC"] = "1"
        command = [sys.executable, "-c", TRACE_WRAPPER, str(trigger)]
    proc = procs.spawn(command, env=env, cwd=tree)
    try:
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=0.5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() - started > READY_TIMEOUT:
                raise TimeoutError(f"{tree}: /ready not 200 within {READY_TIMEOUT}s")
            time.sleep(0.005)
        seconds = time.monotonic() - started
        time.sleep(IDLE_SECONDS)
        if trigger is None:
            return seconds, procs.tree_rss_bytes(proc.pid)
        trigger.touch()
        deadline = time.monotonic() + TRACE_WAIT_SECONDS
        while not done.exists():  # no figure unless the wrapper really reported one
            if time.monotonic() > deadline:
                raise RuntimeError(f"{tree}: the tracemalloc wrapper did not report")
            time.sleep(0.05)
        return seconds, int(done.read_text())
    finally:
        procs.stop(proc)


def import_microseconds(tree: Path) -> int:
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "import sidecar.__main__, sidecar.app"],
        cwd=tree,
        check=True,
        capture_output=True,
        text=True,
    )
    total = 0
    for line in result.stderr.splitlines():
        match = re.match(r"import time:\s+\d+ \|\s+(\d+) \| (\S+)$", line.rstrip())
        if match and match.group(2) in {"sidecar.__main__", "sidecar.app"}:
            total += int(match.group(1))
    return total


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--base", default=DEFAULT_BASE, help="the earlier release's git revision")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--out", type=Path, default=procs.REPO / "bench")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="hs-versions-"))
    trees = {"base": export(args.base, work / "base"), "this": procs.REPO}
    db = Database()
    rows: list[dict[str, float]] = []
    try:
        db.start()
        dsn_file = work / "dsn"
        dsn_file.write_text(db.dsn("sidecar") + "\n")
        for round_no in range(args.rounds):
            row: dict[str, float] = {}
            for name in ("base", "this") if round_no % 2 == 0 else ("this", "base"):
                seconds, rss = start_to_ready(trees[name], dsn_file)
                row[f"{name}_start_s"] = seconds
                row[f"{name}_rss_mib"] = rss / procs.MIB
                _, traced = start_to_ready(trees[name], dsn_file, work / "trace")
                row[f"{name}_traced_mib"] = traced / procs.MIB
                row[f"{name}_import_ms"] = import_microseconds(trees[name]) / 1000
            rows.append(row)
            print(json.dumps(row), flush=True)
    finally:
        db.stop()
        procs.stop_all()

    def median(key: str) -> float:
        return statistics.median(r[key] for r in rows)

    def ratio(what: str) -> float:
        return statistics.median(r[f"this_{what}"] / r[f"base_{what}"] for r in rows)

    summary = {
        "base": args.base,
        "rounds": args.rounds,
        "python": sys.version.split()[0],
        **{
            f"{name}_{what}": round(median(f"{name}_{what}"), 3)
            for name in ("base", "this")
            for what in FIGURES
        },
        **{f"ratio_{what}": round(ratio(what), 3) for what in FIGURES},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    report = {"summary": summary, "rounds": rows}
    (args.out / "versions.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [
        "# This tree beside an earlier release, in one run",
        "",
        f"`python -m bench.versions`: base `{args.base}` (0.2.0 by default), {args.rounds}"
        f" interleaved rounds, Python {summary['python']}, medians; ratio = this / base, taken"
        " round by round.",
        "",
        "| figure | base | this | ratio |",
        "|---|---|---|---|",
    ]
    for what, label in (
        ("start_s", "start to the first /ready 200 (s)"),
        ("rss_mib", "RSS after start, 3 s idle (MiB)"),
        ("traced_mib", "live Python heap after 3 s idle: tracemalloc's traced total (MiB)"),
        ("import_ms", "import of `sidecar.__main__` + `sidecar.app` (ms)"),
    ):
        lines.append(
            f"| {label} | {summary[f'base_{what}']} | {summary[f'this_{what}']} |"
            f" {summary[f'ratio_{what}']} |"
        )
    (args.out / "VERSIONS.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
