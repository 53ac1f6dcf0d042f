"""Run the whole benchmark in one command (issue 6) and write RESULTS.md, results.json, outage.png.

    .venv/bin/python -m bench.run            # the full run, about 20 minutes on 2 cores
    .venv/bin/python -m bench.run --quick    # the smoke run, about a minute, figures meaningless

Loopback only; every loop is bounded; every process it starts is stopped by its PID at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import hashlib
import importlib.metadata
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `python bench/run.py`: make `bench` and `tests` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import load, procs, report, sections, servers
from bench.sections import Plan

SECTIONS = ("throughput", "db", "outage", "footprint", "fleet")
BENCH_DIR = Path(__file__).resolve().parent


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _tool_version(argv: list[str]) -> str | None:
    if shutil.which(argv[0]) is None and not Path(argv[0]).exists():
        return None
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
        text = (done.stdout + done.stderr).strip().splitlines()
        return text[0] if text else None
    return None


def _machine() -> str:
    model = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    python = platform.python_version()
    return f"{os.cpu_count()} x {model}, Linux {platform.release()}, Python {python}"


def sidecar_source_digest() -> str:
    """A digest of sidecar/*.py as measured: the code moves, so results name what they saw."""
    digest = hashlib.sha256()
    for path in sorted((procs.REPO / "sidecar").rglob("*.py")):
        digest.update(path.relative_to(procs.REPO).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def meta(
    args: argparse.Namespace,
    plan: Plan,
    server_cpu: int | None,
    client_cpu: int | None,
    started: str,
) -> dict[str, Any]:
    from bench import db as dbm  # noqa: PLC0415 - imports tests.support (asyncpg) lazily

    pg_bin = Path("/usr/lib/postgresql/15/bin/postgres")
    nginx = servers.nginx_path()
    bouncer = dbm.pgbouncer_path()
    command = "python -m bench.run" + (" --quick" if plan.quick else "")
    extra = [a for a in sys.argv[1:] if a != "--quick"]
    if extra:
        command += " " + " ".join(extra)
    return {
        "command": command,
        "started": started,
        "machine": _machine(),
        "quick": plan.quick,
        "plan": dataclasses.asdict(plan),
        "server_cpu": server_cpu,
        "client_cpu": client_cpu,
        "sidecar_source_sha256": sidecar_source_digest(),
        "load_tool": "wrk" if load.wrk_path() and not args.no_wrk else "bench.loadgen",
        "versions": {
            "python": platform.python_version(),
            "health-sidecar": _version("health-sidecar"),
            "aiohttp": _version("aiohttp"),
            "asyncpg": _version("asyncpg"),
            "uvloop": _version("uvloop"),
            "fastapi": _version("fastapi"),
            "sqlalchemy": _version("sqlalchemy"),
            "uvicorn": _version("uvicorn"),
            "wrk": _tool_version(["wrk", "-v"]),
            "nginx": _tool_version([nginx, "-v"]) if nginx else None,
            "pgbouncer": _tool_version([bouncer, "--version"]) if bouncer else None,
            "postgres": _tool_version([str(pg_bin), "--version"]),
        },
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.run",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="tiny durations (the smoke test)")
    parser.add_argument(
        "--out",
        type=Path,
        default=BENCH_DIR,
        help="where RESULTS.md, results.json and outage.png go (default bench/)",
    )
    parser.add_argument(
        "--sections",
        default=",".join(SECTIONS),
        help=f"comma-separated subset of {','.join(SECTIONS)}",
    )
    parser.add_argument("--rounds", type=int, help="interleaved rounds in section 1 (default 5)")
    parser.add_argument("--duration", type=float, help="seconds per measured load run (5)")
    parser.add_argument("--fleet-size", type=int, help="sidecar processes in section 5 (50)")
    parser.add_argument("--no-wrk", action="store_true", help="use bench.loadgen even with wrk")
    parser.add_argument("--keep", action="store_true", help="keep the work dir (server logs)")
    args = parser.parse_args(argv)
    unknown = set(args.sections.split(",")) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections: {', '.join(sorted(unknown))}")
    if args.rounds is not None and not 1 <= args.rounds <= 50:
        parser.error("--rounds must be within 1..50")
    if args.duration is not None and not 0.5 <= args.duration <= 120:
        parser.error("--duration must be within 0.5..120 s")
    if args.fleet_size is not None and not 1 <= args.fleet_size <= 200:
        parser.error("--fleet-size must be within 1..200")
    return args


def make_plan(args: argparse.Namespace) -> Plan:
    plan = Plan.quick_plan() if args.quick else Plan()
    changes: dict[str, Any] = {}
    if args.rounds is not None:
        changes["rounds"] = args.rounds
    if args.duration is not None:
        changes["duration"] = args.duration
    if args.fleet_size is not None:
        changes["fleet_size"] = args.fleet_size
    return dataclasses.replace(plan, **changes)


def missing_prerequisites() -> list[str]:
    from bench import db as dbm  # noqa: PLC0415

    missing = []
    if not dbm.available():
        missing.append("PostgreSQL 15 server binaries (apt-get install postgresql-15)")
    if not servers.sidecar_available():
        missing.append("the sidecar package (pip install -e .)")
    for module in ("fastapi", "sqlalchemy", "uvicorn", "matplotlib"):
        if not servers.has_module(module):
            missing.append(f"python package {module} (bash .ci/bench-tools.sh)")
    return missing


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    plan = make_plan(args)
    wanted = set(args.sections.split(","))
    missing = missing_prerequisites()
    if missing:
        print("bench: missing " + "; ".join(missing), file=sys.stderr)
        return 2
    if args.no_wrk:
        os.environ["BENCH_NO_WRK"] = "1"
    from bench import db as dbm  # noqa: PLC0415

    cpus = procs.cpu_list()
    server_cpu, client_cpu = (cpus[-1], cpus[0]) if len(cpus) > 1 else (None, None)
    started = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    results: dict[str, Any] = {"meta": meta(args, plan, server_cpu, client_cpu, started)}
    skipped: list[str] = []
    workdir = Path(tempfile.mkdtemp(prefix="bench-run-"))
    logdir = workdir / "logs"
    logdir.mkdir()
    body_file = workdir / "ready-body.json"
    from bench.bare_app import DEFAULT_BODY  # noqa: PLC0415

    body_file.write_bytes(DEFAULT_BODY)
    t0 = time.monotonic()
    database = dbm.Database()
    ctx = sections.Context(
        plan=plan,
        db=database,
        workdir=workdir,
        logdir=logdir,
        server_cpu=server_cpu,
        client_cpu=client_cpu,
        body_file=body_file,
    )
    ok = False
    try:
        ctx.say(f"PostgreSQL starting; work dir {workdir}")
        database.start()
        rss_after_load: dict[str, float] = {}
        if wanted & {"throughput", "db"}:
            results["fresh_rss_mib"] = sections.start_main_servers(ctx)
            if "throughput" in wanted:
                ctx.say("section 1: throughput")
                results["throughput"] = sections.throughput(ctx)
            if "db" in wanted:
                ctx.say("section 2: database cost")
                results["db_cost"] = sections.db_cost(ctx)
            rss_after_load = {
                name: round(s.rss_bytes() / procs.MIB, 1) for name, s in ctx.servers.items()
            }
            for server in ctx.servers.values():
                server.stop()
            ctx.servers.clear()
        if "nginx" not in rss_after_load and servers.nginx_path() is None:
            skipped.append("nginx: not installed (bash .ci/bench-tools.sh)")
        if "outage" in wanted:
            ctx.say("section 3: the database hangs")
            results["outage"] = sections.outage(ctx)
        if "footprint" in wanted:
            ctx.say("section 4: footprint")
            results["footprint"] = sections.footprint(ctx, rss_after_load)
        if "fleet" in wanted:
            ctx.say("section 5: fleet")
            if dbm.pgbouncer_path() is None:
                skipped.append("pgbouncer: not installed, fleet measured direct only")
            results["fleet"] = sections.fleet(ctx)
        ok = True
    finally:
        for server in ctx.servers.values():
            server.stop()
        database.stop()
        procs.stop_all()
        if args.keep or not ok:
            print(f"bench: work dir kept at {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    results["skipped"] = skipped
    results["meta"]["wall_seconds"] = round(time.monotonic() - t0, 1)
    report.write_all(results, args.out)
    ctx.say(f"wrote {args.out / 'RESULTS.md'}, results.json, outage.png")
    for target in results["targets"]:
        print(f"  {report.verdict(target['met']):>12}  {target['target']}: {target['measured']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
