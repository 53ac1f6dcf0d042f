"""A soak: the real sidecar against a flapping database, probed and scraped, for --minutes.

Samples the process's RSS, open descriptors, threads and asyncio tasks every --sample-seconds,
fits a least-squares line to each over the second half of the run (the first half includes
warm-up: imports, first connections, allocator arenas), and reports the slope per hour into a
marked section of bench/RESULTS.md (other sections untouched).

    python -m bench.soak --minutes 60

Not in CI: an hour is the point. The database flaps through a FaultProxy: forwarding, then
resetting every connection, then refusing, in a cycle of --flap-seconds.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Final

from bench import procs
from bench.db import Database, FaultProxy

RESULTS: Final = procs.REPO / "bench" / "RESULTS.md"
BEGIN: Final = "<!-- soak:begin -->"
END: Final = "<!-- soak:end -->"


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def slope_per_hour(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, value), per hour."""
    if len(points) < 2:
        return 0.0
    xs = [x for x, _ in points]
    ys = [y for _, y in points]
    return statistics.linear_regression(xs, ys).slope * 3600


def flap(proxy: FaultProxy, period: float, stop: threading.Event) -> None:
    modes = (proxy.forward, proxy.reset, proxy.forward, proxy.refuse)
    i = 0
    while not stop.wait(period / len(modes)):
        modes[i % len(modes)]()
        i += 1
    proxy.forward()


def probe(port: int, stop: threading.Event, counts: dict[str, int]) -> None:
    paths = ("/health", "/ready", "/startup", "/ready?verbose", "/health", "/ready")
    i = 0
    while not stop.wait(0.1):
        path = "/metrics" if i % 20 == 0 else paths[i % len(paths)]
        try:
            status, _, _ = procs.http_get(port, path, timeout=2)
            counts[str(status)] = counts.get(str(status), 0) + 1
        except OSError:
            counts["no answer"] = counts.get("no answer", 0) + 1
        i += 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.soak")
    parser.add_argument("--minutes", type=float, default=60.0)
    parser.add_argument("--sample-seconds", type=float, default=10.0)
    parser.add_argument("--flap-seconds", type=float, default=20.0)
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="hs-soak-"))
    tasks_file = work / "tasks"
    db = Database()
    db.start()
    proxy = FaultProxy("127.0.0.1", db.port)
    port = procs.free_port()
    stop = threading.Event()
    counts: dict[str, int] = {}
    samples: list[dict[str, float]] = []
    alive = False
    started_at = dt.datetime.now(dt.UTC)
    try:
        _, proxy_port = proxy.address
        env = {
            "PATH": os.environ.get("PATH", ""),
            "SIDECAR_DATABASE_URL": db.dsn("sidecar", port=proxy_port),
            "SIDECAR_HOST": "127.0.0.1",
            "SIDECAR_PORT": str(port),
            "SIDECAR_CHECK_INTERVAL": "1",
            "SIDECAR_BACKOFF_MAX": "2",
            "SIDECAR_DATABASE_MAX_CONNECTION_AGE": "30",
            "SIDECAR_LOG_LEVEL": "info",
        }
        with (work / "sidecar.log").open("wb") as log:
            sidecar = procs.spawn(
                [sys.executable, "-m", "bench.soak_entry", str(tasks_file)], env=env, log=log
            )
            procs.wait_for_port(port, timeout=30, proc=sidecar)
            threads = [
                threading.Thread(target=flap, args=(proxy, args.flap_seconds, stop), daemon=True),
                threading.Thread(target=probe, args=(port, stop, counts), daemon=True),
            ]
            for thread in threads:
                thread.start()
            begin = time.monotonic()
            end = begin + args.minutes * 60
            while time.monotonic() < end and sidecar.poll() is None:
                pid = sidecar.pid
                tasks = tasks_file.read_text().strip() if tasks_file.exists() else "0"
                samples.append(
                    {
                        "t": time.monotonic() - begin,
                        "rss_kib": rss_kib(pid),
                        "fds": len(os.listdir(f"/proc/{pid}/fd")),
                        "threads": len(os.listdir(f"/proc/{pid}/task")),
                        "tasks": int(tasks or 0),
                    }
                )
                time.sleep(args.sample_seconds)
            stop.set()
            for thread in threads:
                thread.join(10)
            alive = sidecar.poll() is None
            procs.stop(sidecar)
    finally:
        stop.set()
        proxy.stop()
        db.stop()

    duration = samples[-1]["t"] if samples else 0.0
    second_half = [s for s in samples if s["t"] >= duration / 2]
    keys = ("rss_kib", "fds", "threads", "tasks")
    slopes = {k: slope_per_hour([(s["t"], s[k]) for s in second_half]) for k in keys}
    first: dict[str, float] = samples[0] if samples else {}
    last: dict[str, float] = samples[-1] if samples else {}
    report = {
        "started": started_at.strftime("%Y-%m-%d %H:%M UTC"),
        "minutes": round(duration / 60, 1),
        "alive_at_end": alive,
        "requests": counts,
        "first": first,
        "last": last,
        "slope_per_hour_second_half": {k: round(v, 2) for k, v in slopes.items()},
    }
    print(json.dumps(report, indent=2))
    if not args.no_write:
        write_section(report, slopes, first, last)
    (work / "samples.json").write_text(json.dumps(samples))
    return 0 if alive else 1


def write_section(
    report: dict[str, object],
    slopes: dict[str, float],
    first: dict[str, float],
    last: dict[str, float],
) -> None:
    rows = "\n".join(
        f"| {name} | {first.get(key, 0):g} | {last.get(key, 0):g} | {slopes[key]:+.2f} |"
        for name, key in (
            ("RSS (KiB)", "rss_kib"),
            ("open fds", "fds"),
            ("threads", "threads"),
            ("asyncio tasks", "tasks"),
        )
    )
    section = (
        f"{BEGIN}\n## Soak (`python -m bench.soak`)\n\n"
        f"Run on {report['started']} ({platform.python_version()}), {report['minutes']} min: "
        "database flapping through a FaultProxy (forward, reset, forward, refuse; 20 s cycle), "
        "kept connection recycled every 30 s, probes every 0.1 s with a /metrics scrape every "
        f"2 s; answers {report['requests']}; process alive at the end: {report['alive_at_end']}. "
        "Slope: least squares over the second half of the run.\n\n"
        "| resource | first sample | last sample | slope per hour |\n|---|---|---|---|\n"
        f"{rows}\n{END}\n"
    )
    text = RESULTS.read_text()
    if BEGIN in text and END in text:
        head, _, rest = text.partition(BEGIN)
        _, _, tail = rest.partition(END + "\n")
        text = head + section + tail
    else:
        text = text.rstrip("\n") + "\n\n" + section
    RESULTS.write_text(text)


if __name__ == "__main__":
    sys.exit(main())
