"""This tree's sidecar beside an earlier release's, in the same run: start to Ready, RSS, imports.

    .venv/bin/python -m bench.versions [--base REV] [--rounds N] [--out DIR]   # about two minutes

The earlier release's `sidecar/` is taken from git (`git archive REV`), so both run on the same
interpreter and the same installed dependencies; only the package differs. In interleaved
rounds (the order swaps every round), each starts as `python -m sidecar` against one local
PostgreSQL with the DSN in a file, and is timed from the start to the first 200 on /ready
(polled every 5 ms); its RSS is read after 3 s idle. Import time is `python -X importtime -c
"import sidecar.__main__, sidecar.app"` (the cumulative microseconds of the two). Figures are
medians, the ratio this/base taken round by round. Writes VERSIONS.md and versions.json.

A third figure separates live memory from heap that glibc keeps after it was freed: each tree
starts again under a small wrapper that, once the bench asks (a trigger file, after the same
3 s idle), calls malloc_trim(0), which hands free heap pages back; RSS is read 0.5 s later.
The wrapper (ctypes) adds the same to both; the difference of the two is what each one's
objects and code really hold, whereas the plain RSS also depends on where freed blocks lay.
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
FIGURES = ("start_s", "rss_mib", "trimmed_mib", "import_ms")
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


# Runs the sidecar (cwd: the tree) and, once the trigger file exists, calls malloc_trim(0).
TRIM_WRAPPER = """
import ctypes, os, runpy, sys, threading, time
def trim():
    while not os.path.exists(sys.argv[1]):
        time.sleep(0.05)
    ctypes.CDLL(None).malloc_trim(0)
threading.Thread(target=trim, daemon=True).start()
sys.argv = ["sidecar"]
runpy.run_module("sidecar", run_name="__main__", alter_sys=True)
"""


def start_to_ready(tree: Path, dsn_file: Path, trigger: Path | None = None) -> tuple[float, int]:
    """(seconds from spawn to the first /ready 200, RSS bytes after IDLE_SECONDS); with a
    `trigger`, the RSS 0.5 s after the process trimmed its heap instead."""
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
    if trigger is not None:
        trigger.unlink(missing_ok=True)
        command = [sys.executable, "-c", TRIM_WRAPPER, str(trigger)]
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
        if trigger is not None:
            trigger.touch()
            time.sleep(0.5)
        return seconds, procs.tree_rss_bytes(proc.pid)
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
                _, trimmed = start_to_ready(trees[name], dsn_file, work / "trim")
                row[f"{name}_trimmed_mib"] = trimmed / procs.MIB
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
        ("trimmed_mib", "RSS after malloc_trim(0): live memory, under the wrapper (MiB)"),
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
