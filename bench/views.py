"""Cost of a plain /ready and /health answer, this tree beside an earlier one, in one run.

    .venv/bin/python -m bench.views [--base REV] [--rounds N]   # under a minute

Each tree (the earlier one from `git archive`, as bench.versions does) renders from one board of
1, 100 or 500 passing checks, in a fresh interpreter; a figure is the best of N rounds of
timeit's per-call microseconds, with `now` moving on every call (as a clock does). Only the
ratio this/base, taken in the same run on the same machine, is meant to be read.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

from bench import procs
from bench.versions import export

DEFAULT_BASE = "341fe9d"
SIZES = (1, 100, 500)

# Run with the tree as the working directory, so `sidecar` is that tree's.
CHILD = """
import itertools, sys, timeit
from sidecar import render
from sidecar.state import Board, CheckResult, CheckState
n, rounds = int(sys.argv[1]), int(sys.argv[2])
board = Board()
for i in range(n):
    result = CheckResult(ok=True, latency_seconds=0.001, finished_at=1.0, finished_monotonic=100.0)
    board.publish(CheckState(name=f"c{i}", kind="postgres", critical=True, timeout_seconds=2.0,
        freshness_seconds=14.0, passing=True, ever_passed=True, last=result,
        last_success_at=1.0, next_due_monotonic=105.0))
answers = getattr(render, "Answers", None) or render.Views  # Views before the rename
views = answers(board, names=[f"c{i}" for i in range(n)])
clock = itertools.count(100.0, 1e-6)
for endpoint in ("ready", "health"):
    call = getattr(views, endpoint)
    best = min(timeit.repeat(lambda: call(next(clock)), number=2000, repeat=rounds)) / 2000
    assert call(next(clock))[0] == 200
    print(endpoint, round(best * 1e6, 2))
"""


def measure(tree: Path, size: int, rounds: int) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(size), str(rounds)],
        cwd=tree,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return {line.split()[0]: float(line.split()[1]) for line in out.splitlines()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.views", description=__doc__)
    parser.add_argument("--base", default=DEFAULT_BASE, help="the earlier tree's git revision")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        base = export(args.base, Path(tmp))
        print(f"| checks | endpoint | this (us) | {args.base} (us) | ratio |")
        print("|---:|---|---:|---:|---:|")
        for size in SIZES:
            this = measure(procs.REPO, size, args.rounds)
            then = measure(base, size, args.rounds)
            for endpoint, value in this.items():
                ratio = value / then[endpoint]
                print(f"| {size} | /{endpoint} | {value} | {then[endpoint]} | {ratio:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
