"""The five sections of the bench (issue 6). Each returns plain data for results.json.

Layout on a 2-core machine: every server under test is pinned to the last CPU and every load
generator to the first, so a server's CPU per request is its own and the client never steals
from it. PostgreSQL, pgbouncer and the fleet float.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from bench import db as dbm
from bench import load, procs, servers, stats
from bench.servers import Server

KUBELET_TIMEOUT: Final = 1.0  # seconds; the kubelet's default probe timeoutSeconds is 1
# The contract's defaults (README.md, Settings): what a pod runs unless told otherwise.
DEFAULT_INTERVAL: Final = 5.0
DEFAULT_TIMEOUT: Final = 2.0
CHECK_TOTAL: Final = re.compile(r"^health_sidecar_check_total\{[^}]*\}\s+([0-9.eE+-]+)$", re.M)


@dataclass(frozen=True, slots=True)
class Plan:
    """How long and how often; `quick()` is the smoke run's tiny version."""

    quick: bool = False
    rounds: int = 5
    duration: float = 5.0
    warmup: float = 1.0
    concurrencies: tuple[int, ...] = (1, 50)
    db_rounds: int = 2
    db_duration: float = 15.0
    kubelet_rate: float = 10.0
    high_rate: float = 1000.0
    high_rate_connections: int = 64
    outage_rounds: int = 2
    outage_pre: float = 5.0
    outage_hang: float = 10.0
    outage_post: float = 20.0
    load_connections: int = 50
    # None = the sidecar's defaults (interval 5 s, timeout 2 s, backoff cap 30 s).
    outage_interval: float | None = None
    outage_timeout: float | None = None
    outage_backoff_max: float | None = None
    start_repeats: int = 5
    idle_seconds: float = 30.0
    fleet_size: int = 50
    fleet_settle: float = 6.0
    fleet_window: float = 30.0
    bouncer_pool: int = 5
    projected_pods: int = 1000

    @classmethod
    def quick_plan(cls) -> Plan:
        return cls(
            quick=True,
            rounds=1,
            duration=1.0,
            warmup=0.0,
            db_rounds=1,
            db_duration=1.5,
            high_rate=200.0,
            high_rate_connections=8,
            outage_rounds=1,
            outage_pre=1.0,
            outage_hang=2.5,
            outage_post=2.5,
            load_connections=8,
            outage_interval=0.5,
            outage_timeout=0.5,
            outage_backoff_max=1.0,
            start_repeats=1,
            idle_seconds=1.0,
            fleet_size=3,
            fleet_settle=1.0,
            fleet_window=2.0,
            bouncer_pool=2,
        )


@dataclass
class Context:
    plan: Plan
    db: dbm.Database
    workdir: Path
    logdir: Path
    server_cpu: int | None
    client_cpu: int | None
    body_file: Path
    servers: dict[str, Server] = field(default_factory=dict)
    log: list[str] = field(default_factory=list)

    def say(self, message: str) -> None:
        stamp = time.strftime("%H:%M:%S")
        line = f"[{stamp}] {message}"
        self.log.append(line)
        print(line, flush=True)


def _uvloop() -> bool:
    return servers.has_module("uvloop")


# ---- 1. throughput --------------------------------------------------------------------------


def start_main_servers(ctx: Context) -> dict[str, dict[str, Any]]:
    """Start the servers sections 1 and 2 share; capture the sidecar's real /ready body first so
    the ceilings serve the very same bytes. Returns each one's fresh RSS."""
    cpu = ctx.server_cpu
    side = servers.sidecar(
        "sidecar", ctx.db.dsn("sidecar"), uvloop=False, cpu=cpu, logdir=ctx.logdir
    )
    side.start()
    _, _, body = procs.http_get(side.port, "/ready")
    ctx.body_file.write_bytes(body)
    ctx.servers["sidecar"] = side
    if _uvloop():
        ctx.servers["sidecar_uvloop"] = servers.sidecar(
            "sidecar_uvloop", ctx.db.dsn("sidecar_uv"), uvloop=True, cpu=cpu, logdir=ctx.logdir
        )
    ctx.servers["bare_aiohttp"] = servers.bare(
        "bare_aiohttp", ctx.body_file, uvloop=False, cpu=cpu, logdir=ctx.logdir
    )
    if _uvloop():
        ctx.servers["bare_aiohttp_uvloop"] = servers.bare(
            "bare_aiohttp_uvloop", ctx.body_file, uvloop=True, cpu=cpu, logdir=ctx.logdir
        )
    ng = servers.nginx("nginx", body, cpu=cpu, workdir=ctx.workdir, logdir=ctx.logdir)
    if ng is not None:
        ctx.servers["nginx"] = ng
    ctx.servers["baseline"] = servers.baseline(
        "baseline", ctx.db.dsn("baseline"), cpu=cpu, logdir=ctx.logdir
    )
    for name, server in ctx.servers.items():
        if server.proc is None:
            ctx.say(f"starting {name}")
            server.start()
    time.sleep(1.0)
    return {name: {"rss_mib": s.rss_bytes() / procs.MIB} for name, s in ctx.servers.items()}


def throughput_targets(ctx: Context) -> list[tuple[str, Server, str]]:
    """(label, server, path) in the order each round runs them: each design right next to
    the ceiling it is compared with, so a pair shares the machine's mood."""
    order = [
        ("nginx", "nginx", "/ready"),
        ("bare_aiohttp", "bare_aiohttp", "/ready"),
        ("sidecar_ready", "sidecar", "/ready"),
        ("bare_aiohttp_uvloop", "bare_aiohttp_uvloop", "/ready"),
        ("sidecar_ready_uvloop", "sidecar_uvloop", "/ready"),
        ("sidecar_metrics", "sidecar", "/metrics"),
        ("baseline_health", "baseline", "/health"),
    ]
    return [(label, ctx.servers[name], path) for label, name, path in order if name in ctx.servers]


# Pairs whose per-round ratio the report shows: (numerator, denominator, metric).
RATIO_PAIRS: Final = (
    ("sidecar_ready", "bare_aiohttp", "rps"),
    ("sidecar_ready", "bare_aiohttp", "cpu_us_per_req"),
    ("sidecar_ready_uvloop", "bare_aiohttp", "rps"),
    ("sidecar_ready_uvloop", "bare_aiohttp_uvloop", "rps"),
    ("sidecar_ready_uvloop", "bare_aiohttp", "cpu_us_per_req"),
    ("bare_aiohttp_uvloop", "bare_aiohttp", "rps"),
    ("bare_aiohttp", "nginx", "rps"),
    ("sidecar_ready", "nginx", "rps"),
    ("baseline_health", "sidecar_ready", "rps"),
    ("baseline_health", "sidecar_ready", "cpu_us_per_req"),
)


def throughput(ctx: Context) -> dict[str, Any]:
    plan = ctx.plan
    targets = throughput_targets(ctx)
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {
        label: {str(c): [] for c in plan.concurrencies} for label, _, _ in targets
    }
    for rnd in range(plan.rounds):
        # A B A B within a round, and every other round backwards (A B B A over two rounds),
        # so a slow drift of the machine does not always favour whoever runs first.
        ordered = targets if rnd % 2 == 0 else targets[::-1]
        for conc in plan.concurrencies:
            for label, server, path in ordered:
                if plan.warmup > 0:
                    load.closed_loop(
                        server.port,
                        path,
                        concurrency=conc,
                        duration=plan.warmup,
                        cpu=ctx.client_cpu,
                    )
                cpu0 = server.cpu_seconds()
                result = load.closed_loop(
                    server.port,
                    path,
                    concurrency=conc,
                    duration=plan.duration,
                    cpu=ctx.client_cpu,
                )
                cpu1 = server.cpu_seconds()
                row = result.as_dict()
                row["round"] = rnd
                row["server_cpu_seconds"] = round(cpu1 - cpu0, 3)
                row["cpu_us_per_req"] = (
                    round((cpu1 - cpu0) / result.requests * 1e6, 2) if result.requests else None
                )
                runs[label][str(conc)].append(row)
                ctx.say(
                    f"round {rnd + 1}/{plan.rounds} c={conc} {label}: {row['rps']:,.0f} rps, "
                    f"p99 {row['p99_ms']:.2f} ms, {row['cpu_us_per_req']} us/req"
                )
    summary: dict[str, dict[str, Any]] = {}
    for label, by_conc in runs.items():
        summary[label] = {
            conc: {
                metric: stats.spread(r[metric] for r in rows)
                for metric in ("rps", "p50_ms", "p99_ms", "cpu_us_per_req")
            }
            for conc, rows in by_conc.items()
        }
    ratios: list[dict[str, Any]] = []
    for num, den, metric in RATIO_PAIRS:
        if num not in runs or den not in runs:
            continue
        for conc in plan.concurrencies:
            key = str(conc)
            per_round = stats.paired_ratios(
                [r[metric] for r in runs[num][key]], [r[metric] for r in runs[den][key]]
            )
            ratios.append(
                {
                    "numerator": num,
                    "denominator": den,
                    "metric": metric,
                    "concurrency": conc,
                    "per_round": per_round,
                    "ratio": stats.spread(per_round),
                }
            )
    return {
        "targets": {label: {"path": path, "server": s.name} for label, s, path in targets},
        "runs": runs,
        "summary": summary,
        "ratios": ratios,
    }


# ---- 2. database cost -----------------------------------------------------------------------


def db_cost(ctx: Context) -> dict[str, Any]:
    """Statements, sessions and CPU per probe for both designs at two probe rates.

    Bare aiohttp and nginx get the same probes as yardsticks for the app CPU a probe costs:
    kubelet opens a connection per probe, and that, not the handler, is most of the cost.
    """
    plan = ctx.plan
    designs: list[tuple[str, Server, str, str | None]] = [
        ("sidecar", ctx.servers["sidecar"], "/ready", "sidecar"),
        ("baseline", ctx.servers["baseline"], "/health", "baseline"),
    ]
    for name in ("bare_aiohttp", "nginx"):
        if name in ctx.servers:
            designs.append((name, ctx.servers[name], "/ready", None))
    rates = [(plan.kubelet_rate, 0), (plan.high_rate, plan.high_rate_connections)]
    runs: list[dict[str, Any]] = []
    for rnd in range(plan.db_rounds):
        for rate, keepalive in rates:
            for design, server, path, role in designs:
                time.sleep(0.5)
                texts0 = ctx.db.statement_texts(role) if role else {}
                ctx.db.settle()
                db0, app0 = ctx.db.cpu_seconds(), server.cpu_seconds()
                t0 = time.monotonic()
                out_file = ctx.workdir / f"db-{design}-{rate:g}-{rnd}.json"
                prober = load.start_prober(
                    server.port,
                    path,
                    rate=rate,
                    duration=plan.db_duration,
                    timeout=KUBELET_TIMEOUT,
                    keepalive=keepalive,
                    cpu=ctx.client_cpu,
                    out_file=out_file,
                )
                report = load.finish_prober(prober, out_file, timeout=plan.db_duration + 30)
                elapsed = time.monotonic() - t0
                db1, app1 = ctx.db.cpu_seconds(), server.cpu_seconds()
                held = ctx.db.sessions(role) if role else None
                texts1 = ctx.db.statement_texts(role) if role else {}
                by_text = {
                    q: texts1[q] - texts0.get(q, 0) for q in texts1 if texts1[q] - texts0.get(q, 0)
                }
                statements = sum(by_text.values())
                answered = int(report["answered"])
                # Per probe sent: a probe the client gave up on still ran its query.
                probes = max(1, int(report["sent"]))
                row: dict[str, Any] = {
                    "design": design,
                    "round": rnd,
                    "rate": rate,
                    "keepalive_connections": keepalive,
                    "achieved_rate": round(float(report["achieved_rate"]), 1),
                    "probes_sent": int(report["sent"]),
                    "probes_answered": answered,
                    "probe_timeouts": int(report["timeouts"]),
                    "answered_percent": round(answered / probes * 100, 1),
                    "seconds": round(elapsed, 2),
                    "statements": statements if role else None,
                    "statements_per_minute": round(statements / elapsed * 60, 1) if role else None,
                    "statements_per_probe": round(statements / probes, 3) if role else None,
                    "statements_by_text": by_text,
                    "sessions_held": held,
                    "db_cpu_us_per_probe": round((db1 - db0) / probes * 1e6, 1),
                    "app_cpu_us_per_probe": round((app1 - app0) / probes * 1e6, 1),
                    "db_cpu_percent_of_core": round((db1 - db0) / elapsed * 100, 2),
                }
                runs.append(row)
                ctx.say(
                    f"db round {rnd + 1} {design} @ {rate:g}/s: {row['statements_per_minute']} "
                    f"statements/min, {held} sessions, {row['db_cpu_us_per_probe']} us db CPU/probe"
                    f", {row['app_cpu_us_per_probe']} us app CPU/probe"
                )
    summary: dict[str, dict[str, Any]] = {}
    for design, *_ in designs:
        for rate, _ in rates:
            rows = [r for r in runs if r["design"] == design and r["rate"] == rate]
            summary.setdefault(design, {})[f"{rate:g}"] = {
                metric: stats.spread(r[metric] for r in rows)
                for metric in (
                    "achieved_rate",
                    "answered_percent",
                    "statements_per_minute",
                    "statements_per_probe",
                    "sessions_held",
                    "db_cpu_us_per_probe",
                    "app_cpu_us_per_probe",
                    "db_cpu_percent_of_core",
                )
            }
    return {"runs": runs, "summary": summary}


# ---- 3. the database hangs ------------------------------------------------------------------


def analyse_outage(
    records: list[list[float]], t_hang: float, t_resume: float, timeout: float
) -> dict[str, Any]:
    """Answered share, latency and reaction times of one scripted outage, from probe records
    [sent_monotonic, latency_s, status]: status 0 = no answer within the timeout, -1 = error."""
    during = [r for r in records if t_hang <= r[0] < t_resume]
    answered = [r for r in records if r[2] > 0]
    answered_during = [r for r in during if r[2] > 0]

    def share(rows: list[list[float]], of: list[list[float]]) -> float | None:
        return len(rows) / len(of) if of else None

    def ms(rows: list[list[float]], q: float) -> float | None:
        value = stats.quantile([r[1] for r in rows], q)
        return None if value is None else value * 1000

    first_503 = [r[0] + r[1] - t_hang for r in records if r[0] >= t_hang and r[2] == 503]
    first_200 = [r[0] + r[1] - t_resume for r in records if r[0] + r[1] >= t_resume and r[2] == 200]
    statuses: dict[str, int] = {}
    for r in during:
        key = {0: "timeout", -1: "error"}.get(int(r[2]), str(int(r[2])))
        statuses[key] = statuses.get(key, 0) + 1
    return {
        "probes": len(records),
        "probes_during_hang": len(during),
        "timeouts": sum(1 for r in records if r[2] == 0),
        "timeouts_during_hang": sum(1 for r in during if r[2] == 0),
        "errors": sum(1 for r in records if r[2] < 0),
        "answered_share": share(answered, records),
        "answered_share_during_hang": share(answered_during, during),
        "p50_ms": ms(answered, 0.5),
        "p99_ms": ms(answered, 0.99),
        "p50_ms_during_hang": ms(answered_during, 0.5),
        "p99_ms_during_hang": ms(answered_during, 0.99),
        "statuses_during_hang": statuses,
        "first_503_after_hang_s": min(first_503) if first_503 else None,
        "first_200_after_resume_s": min(first_200) if first_200 else None,
        "timeout_s": timeout,
    }


@contextlib.contextmanager
def _background_load(
    ctx: Context, server: Server, path: str, duration: float, enabled: bool
) -> Iterator[None]:
    if not enabled:
        yield
        return
    # nice 19: the load shares the client CPU with the prober, which must not wait behind it.
    proc = load.start_background_wrk(
        server.port,
        path,
        concurrency=ctx.plan.load_connections,
        duration=duration,
        cpu=ctx.client_cpu,
        nice=19,
    )
    try:
        yield
    finally:
        procs.stop(proc)


def outage(ctx: Context) -> dict[str, Any]:
    plan = ctx.plan
    interval = plan.outage_interval if plan.outage_interval is not None else DEFAULT_INTERVAL
    check_timeout = plan.outage_timeout if plan.outage_timeout is not None else DEFAULT_TIMEOUT
    proxies: list[dbm.FaultProxy] = []
    designs: list[tuple[str, Server, str, dbm.FaultProxy]] = []
    # What the framework alone gives a probe under the same load: the yardstick for the sidecar's
    # latency under load (no database involved at all).
    reference = servers.bare(
        "outage_bare_aiohttp", ctx.body_file, uvloop=False, cpu=ctx.server_cpu, logdir=ctx.logdir
    )
    references: list[dict[str, Any]] = []
    try:
        reference.start()
        for design, role in (("sidecar", "sidecar"), ("baseline", "baseline")):
            proxy = dbm.FaultProxy("127.0.0.1", ctx.db.port)
            proxies.append(proxy)
            dsn = ctx.db.dsn(role, port=proxy.port)
            if design == "sidecar":
                server = servers.sidecar(
                    "outage_sidecar",
                    dsn,
                    uvloop=False,
                    cpu=ctx.server_cpu,
                    logdir=ctx.logdir,
                    interval=plan.outage_interval,
                    timeout=plan.outage_timeout,
                    backoff_max=plan.outage_backoff_max,
                )
                path = "/ready"
            else:
                server = servers.baseline(
                    "outage_baseline", dsn, cpu=ctx.server_cpu, logdir=ctx.logdir
                )
                path = "/health"
            server.start()
            designs.append((design, server, path, proxy))
        total = plan.outage_pre + plan.outage_hang + plan.outage_post
        runs: list[dict[str, Any]] = []
        for rnd in range(plan.outage_rounds):
            for mode in ("kubelet", "load"):
                for design, server, path, proxy in designs:
                    server.wait_ready(timeout=120)
                    out_file = ctx.workdir / f"outage-{design}-{mode}-{rnd}.json"
                    with _background_load(ctx, server, path, total + 1, mode == "load"):
                        prober = load.start_prober(
                            server.port,
                            path,
                            rate=plan.kubelet_rate,
                            duration=total,
                            timeout=KUBELET_TIMEOUT,
                            keepalive=0,
                            cpu=ctx.client_cpu,
                            out_file=out_file,
                        )
                        time.sleep(0.05 + plan.outage_pre)
                        t_hang = time.monotonic()
                        proxy.blackhole()
                        time.sleep(plan.outage_hang)
                        proxy.forward()
                        t_resume = time.monotonic()
                        report = load.finish_prober(prober, out_file, timeout=total + 30)
                    records: list[list[float]] = report["records"]
                    result = analyse_outage(records, t_hang, t_resume, KUBELET_TIMEOUT)
                    result.update({"design": design, "mode": mode, "round": rnd})
                    result["timeline"] = [
                        [round(r[0] - t_hang, 4), round(r[1] * 1000, 3), int(r[2])] for r in records
                    ]
                    runs.append(result)
                    ctx.say(
                        f"outage round {rnd + 1} {design}/{mode}: "
                        f"{result['timeouts']} timeouts, answered during hang "
                        f"{stats.fmt(_pct(result['answered_share_during_hang']), 0)}%, "
                        f"p99 {stats.fmt(result['p99_ms_during_hang'], 2)} ms, first 503 "
                        f"{stats.fmt(result['first_503_after_hang_s'], 2)} s, first 200 after "
                        f"resume {stats.fmt(result['first_200_after_resume_s'], 2)} s"
                    )
            ref = _probe_under_load(ctx, reference, "/ready", plan.outage_hang)
            ref["round"] = rnd
            references.append(ref)
            ctx.say(
                f"outage round {rnd + 1} bare aiohttp under the same load: p50 "
                f"{stats.fmt(ref['p50_ms'], 2)} ms, p99 {stats.fmt(ref['p99_ms'], 2)} ms"
            )
    finally:
        reference.stop()
        for _, server, _, _ in designs:
            server.stop()
        for proxy in proxies:
            proxy.stop()
    return {
        "settings": {
            "pre_s": plan.outage_pre,
            "hang_s": plan.outage_hang,
            "post_s": plan.outage_post,
            "probe_rate": plan.kubelet_rate,
            "probe_timeout_s": KUBELET_TIMEOUT,
            "load_connections": plan.load_connections,
            "sidecar_check_interval_s": interval,
            "sidecar_check_timeout_s": check_timeout,
            "sidecar_backoff_max_s": plan.outage_backoff_max,
        },
        "runs": runs,
        "reference_bare_aiohttp_under_load": references,
    }


def _probe_under_load(ctx: Context, server: Server, path: str, duration: float) -> dict[str, Any]:
    """Kubelet-like probes against `server` while wrk loads it; latency and timeouts."""
    out_file = ctx.workdir / f"reference-{server.port}-{time.monotonic_ns()}.json"
    with _background_load(ctx, server, path, duration + 1, enabled=True):
        time.sleep(0.3)
        prober = load.start_prober(
            server.port,
            path,
            rate=ctx.plan.kubelet_rate,
            duration=duration,
            timeout=KUBELET_TIMEOUT,
            keepalive=0,
            cpu=ctx.client_cpu,
            out_file=out_file,
        )
        report = load.finish_prober(prober, out_file, timeout=duration + 30)
    records: list[list[float]] = report["records"]
    answered = [r[1] for r in records if r[2] > 0]
    p50, p99 = stats.quantile(answered, 0.5), stats.quantile(answered, 0.99)
    return {
        "probes": len(records),
        "timeouts": sum(1 for r in records if r[2] == 0),
        "p50_ms": None if p50 is None else p50 * 1000,
        "p99_ms": None if p99 is None else p99 * 1000,
    }


def _pct(share: float | None) -> float | None:
    return None if share is None else share * 100


# ---- 4. footprint ---------------------------------------------------------------------------


def _fresh(ctx: Context, name: str) -> Server | None:
    cpu, logdir = ctx.server_cpu, ctx.logdir
    match name:
        case "sidecar":
            return servers.sidecar(
                name, ctx.db.dsn("sidecar"), uvloop=False, cpu=cpu, logdir=logdir
            )
        case "sidecar_uvloop":
            if not _uvloop():
                return None
            return servers.sidecar(
                name, ctx.db.dsn("sidecar_uv"), uvloop=True, cpu=cpu, logdir=logdir
            )
        case "bare_aiohttp":
            return servers.bare(name, ctx.body_file, uvloop=False, cpu=cpu, logdir=logdir)
        case "baseline":
            return servers.baseline(name, ctx.db.dsn("baseline"), cpu=cpu, logdir=logdir)
        case "nginx":
            body = ctx.body_file.read_bytes()
            return servers.nginx(name, body, cpu=cpu, workdir=ctx.workdir, logdir=logdir)
    raise ValueError(name)


FOOTPRINT_DESIGNS: Final = ("sidecar", "sidecar_uvloop", "bare_aiohttp", "baseline", "nginx")


def footprint(ctx: Context, rss_after_load: dict[str, float]) -> dict[str, Any]:
    plan = ctx.plan
    starts: dict[str, list[dict[str, float]]] = {}
    for rnd in range(plan.start_repeats):
        for name in FOOTPRINT_DESIGNS:
            server = _fresh(ctx, name)
            if server is None:
                continue
            try:
                t0 = time.monotonic()
                server.start(wait_ready=False)
                t_health = procs.wait_for_status(
                    server.port, server.health_path, timeout=60, proc=server.proc
                )
                t_ready = procs.wait_for_status(
                    server.port, server.ready_path, timeout=60, proc=server.proc
                )
            finally:
                server.stop()
            starts.setdefault(name, []).append(
                {
                    "round": rnd,
                    "health_ms": (t_health - t0) * 1000,
                    "ready_ms": (t_ready - t0) * 1000,
                }
            )
        ctx.say(
            f"start round {rnd + 1}: "
            + ", ".join(f"{n} {v[-1]['ready_ms']:.0f} ms" for n, v in starts.items())
        )
    idle: dict[str, dict[str, float]] = {}
    running: list[tuple[str, Server]] = []
    try:
        for name in FOOTPRINT_DESIGNS:
            server = _fresh(ctx, name)
            if server is not None:
                server.start()
                running.append((name, server))
        time.sleep(1.0)
        before = {name: s.cpu_seconds() for name, s in running}
        time.sleep(plan.idle_seconds)
        for name, server in running:
            used = server.cpu_seconds() - before[name]
            idle[name] = {
                "cpu_seconds": round(used, 3),
                "cpu_percent_of_core": round(used / plan.idle_seconds * 100, 3),
                "rss_idle_mib": round(server.rss_bytes() / procs.MIB, 1),
                "uss_idle_mib": round(procs.tree_private_bytes(server.pid) / procs.MIB, 1),
            }
    finally:
        for _, server in running:
            server.stop()
    ctx.say("idle: " + ", ".join(f"{n} {v['cpu_percent_of_core']}%" for n, v in idle.items()))
    out: dict[str, Any] = {"designs": {}}
    for name in FOOTPRINT_DESIGNS:
        if name not in starts:
            continue
        out["designs"][name] = {
            "start_to_health_200_ms": stats.spread(s["health_ms"] for s in starts[name]),
            "start_to_ready_200_ms": stats.spread(s["ready_ms"] for s in starts[name]),
            "starts": starts[name],
            **idle.get(name, {}),
            "rss_after_load_mib": rss_after_load.get(name),
        }
    out["idle_seconds"] = plan.idle_seconds
    out["sidecar_check_interval_s"] = DEFAULT_INTERVAL
    return out


# ---- 5. fleet -------------------------------------------------------------------------------


def _checks_total(port: int) -> float:
    try:
        _, _, body = procs.http_get(port, "/metrics", timeout=5)
    except (OSError, ValueError, IndexError):
        return 0.0
    return sum(float(m) for m in CHECK_TOTAL.findall(body.decode()))


def fleet(ctx: Context) -> dict[str, Any]:
    plan = ctx.plan
    results: dict[str, Any] = {"size": plan.fleet_size, "modes": {}}
    modes = ["direct"]
    if dbm.pgbouncer_path() is not None:
        modes.append("pgbouncer")
    for mode in modes:
        bouncer: dbm.Bouncer | None = None
        fleet_servers: list[Server] = []
        try:
            port = ctx.db.port
            if mode == "pgbouncer":
                bouncer = dbm.Bouncer(
                    ctx.db, pool_size=plan.bouncer_pool, max_clients=max(2000, plan.fleet_size * 2)
                )
                bouncer.start()
                port = bouncer.port
            dsn = ctx.db.dsn("fleet", port=port)
            ctx.say(f"fleet {mode}: starting {plan.fleet_size} sidecars")
            for _ in range(plan.fleet_size):
                # Unpinned, default interval and timeout: 50 pods' sidecars as they would run.
                server = servers.sidecar(
                    f"fleet-{mode}", dsn, uvloop=False, cpu=None, logdir=ctx.logdir
                )
                server.start(wait_ready=False)
                fleet_servers.append(server)
            for server in fleet_servers:
                server.wait_ready(timeout=120 + plan.fleet_size)
            time.sleep(plan.fleet_settle)
            checks0 = sum(_checks_total(s.port) for s in fleet_servers)
            stmts0 = ctx.db.statements("fleet")
            ctx.db.settle()
            db0 = ctx.db.cpu_seconds()
            bouncer0 = bouncer.cpu_seconds() if bouncer else 0.0
            side0 = procs.cpu_seconds([s.pid for s in fleet_servers])
            t0 = time.monotonic()
            time.sleep(plan.fleet_window)
            elapsed = time.monotonic() - t0
            db1 = ctx.db.cpu_seconds()
            bouncer1 = bouncer.cpu_seconds() if bouncer else 0.0
            side1 = procs.cpu_seconds([s.pid for s in fleet_servers])
            sessions = ctx.db.sessions("fleet")
            stmts1 = ctx.db.statements("fleet")
            checks1 = sum(_checks_total(s.port) for s in fleet_servers)
            alive = [s for s in fleet_servers if s.proc is not None and s.proc.poll() is None]
            for dead in (s for s in fleet_servers if s not in alive):
                ctx.say(f"fleet {mode}: sidecar on port {dead.port} exited: {dead.log_tail()}")
            rss = [s.rss_bytes() / procs.MIB for s in alive]
            row: dict[str, Any] = {
                "pods": plan.fleet_size,
                "alive_at_end": len(alive),
                "window_s": round(elapsed, 2),
                "server_sessions": sessions,
                "sessions_per_pod": sessions / plan.fleet_size,
                "db_cpu_seconds_per_second": (db1 - db0) / elapsed,
                "db_cpu_percent_of_core": (db1 - db0) / elapsed * 100,
                "pgbouncer_cpu_percent_of_core": (bouncer1 - bouncer0) / elapsed * 100,
                "sidecars_cpu_percent_of_core": (side1 - side0) / elapsed * 100,
                "checks_per_second": (checks1 - checks0) / elapsed,
                "statements_per_second": (stmts1 - stmts0) / elapsed,
                "sidecar_rss_mib": stats.spread(rss),
            }
            scale = plan.projected_pods / plan.fleet_size
            row["projected"] = {
                "pods": plan.projected_pods,
                # Direct: one session per pod. Through pgbouncer: at most the pool, whatever the
                # fleet (checks are ~0.1 ms transactions; one server connection carries many).
                "server_sessions": (
                    sessions * scale if mode == "direct" else float(plan.bouncer_pool)
                ),
                "db_cpu_percent_of_core": row["db_cpu_percent_of_core"] * scale,
                "pgbouncer_cpu_percent_of_core": row["pgbouncer_cpu_percent_of_core"] * scale,
                "checks_per_second": row["checks_per_second"] * scale,
                # PostgreSQL's default max_connections is 100, 3 of them kept for superusers.
                "fits_default_max_connections": (
                    sessions * scale if mode == "direct" else plan.bouncer_pool
                )
                <= 100 - 3,
            }
            results["modes"][mode] = row
            ctx.say(
                f"fleet {mode}: {sessions} sessions, db CPU "
                f"{row['db_cpu_percent_of_core']:.2f}% of a core, "
                f"{row['checks_per_second']:.1f} checks/s"
            )
        finally:
            procs.stop_many([s.proc for s in fleet_servers if s.proc is not None])
            if bouncer is not None:
                bouncer.stop()
    return results
