"""results.json -> the targets verdict, RESULTS.md and the outage plot."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Final

from bench.stats import Spread, fmt, fmt_spread

MiB_TARGET: Final = 40.0
START_TARGET_MS: Final = 300.0
IDLE_TARGET_PERCENT: Final = 0.1
METRICS_CPU_TARGET_US: Final = 1000.0
HUNG_P99_TARGET_MS: Final = 5.0

LABELS: Final = {
    "nginx": "nginx `return 200`",
    "bare_aiohttp": "bare aiohttp",
    "bare_aiohttp_uvloop": "bare aiohttp + uvloop",
    "sidecar_ready": "sidecar /ready",
    "sidecar_ready_uvloop": "sidecar /ready + uvloop",
    "sidecar_metrics": "sidecar /metrics",
    "baseline_health": "baseline /health (FastAPI + SQLAlchemy)",
    "sidecar": "sidecar",
    "sidecar_uvloop": "sidecar + uvloop",
    "baseline": "baseline (FastAPI + SQLAlchemy)",
}


def _label(key: str) -> str:
    return LABELS.get(key, key)


def ratio(results: dict[str, Any], num: str, den: str, metric: str, conc: int) -> Spread | None:
    for row in results.get("throughput", {}).get("ratios", []):
        if (row["numerator"], row["denominator"], row["metric"], row["concurrency"]) == (
            num,
            den,
            metric,
            conc,
        ):
            spread: Spread = row["ratio"]
            return spread
    return None


def verdict(ok: bool | None) -> str:
    return {True: "met", False: "**missed**", None: "not measured"}[ok]


def evaluate_targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets, each with what this run measured and whether it was met."""
    out: list[dict[str, Any]] = []

    def add(name: str, target: str, measured: str, ok: bool | None) -> None:
        out.append({"name": name, "target": target, "measured": measured, "met": ok})

    def ratio_target(
        name: str,
        target: str,
        *,
        num: str,
        den: str,
        metric: str,
        bound: float,
        at_most: bool = False,
    ) -> None:
        parts: list[str] = []
        verdict: bool | None = None
        for conc in (50, 1):
            spread = ratio(results, num, den, metric, conc)
            if spread is None or spread["median"] is None:
                continue
            parts.append(f"c={conc}: {fmt_spread(spread, 2)}x")
            if conc == 50:
                med = spread["median"]
                verdict = med <= bound if at_most else med >= bound
        add(name, target, "; ".join(parts) or "n/a", verdict)

    ratio_target(
        "ready_rps",
        "/ready >= 1.0x bare aiohttp rps (judged at c=50)",
        num="sidecar_ready",
        den="bare_aiohttp",
        metric="rps",
        bound=1.0,
    )
    ratio_target(
        "ready_cpu",
        "/ready CPU per request <= bare aiohttp's (c=50)",
        num="sidecar_ready",
        den="bare_aiohttp",
        metric="cpu_us_per_req",
        bound=1.0,
        at_most=True,
    )
    ratio_target(
        "ready_uvloop_rps",
        "/ready with uvloop >= 1.15x bare aiohttp rps (c=50)",
        num="sidecar_ready_uvloop",
        den="bare_aiohttp",
        metric="rps",
        bound=1.15,
    )

    db = results.get("db_cost", {}).get("summary", {}).get("sidecar")
    if db:
        rates = sorted(db, key=float)
        low, high = db[rates[0]], db[rates[-1]]
        spm_low = low["statements_per_minute"]["median"]
        spm_high = high["statements_per_minute"]["median"]
        spp = high["statements_per_probe"]["median"]
        ok = (
            spm_low is not None
            and spm_high is not None
            and spp is not None
            and spm_high <= spm_low * 1.5 + 2
            and spp < 0.01
        )
        add(
            "db_cost",
            "probes cost the database nothing; statements/min independent of probe rate",
            f"{fmt(spm_low)} statements/min at {rates[0]}/s, {fmt(spm_high)} at {rates[-1]}/s "
            f"({fmt(spp, 4)} per probe)",
            ok,
        )
    else:
        add("db_cost", "probes cost the database nothing", "n/a", None)

    runs = [r for r in results.get("outage", {}).get("runs", []) if r["design"] == "sidecar"]
    settings = results.get("outage", {}).get("settings", {})
    if runs:
        timeouts = sum(r["timeouts"] for r in runs)
        add(
            "hung_timeouts",
            "database hung: 0 probe timeouts",
            f"{timeouts} timeouts in {sum(r['probes'] for r in runs)} probes over {len(runs)} runs",
            timeouts == 0,
        )
        refs = results["outage"].get("reference_bare_aiohttp_under_load", [])
        ref_p99 = [r["p99_ms"] for r in refs if r["p99_ms"] is not None]
        for mode in ("kubelet", "load"):
            p99s = [
                r["p99_ms_during_hang"]
                for r in runs
                if r["mode"] == mode and r["p99_ms_during_hang"] is not None
            ]
            worst = max(p99s) if p99s else None
            measured = f"worst {fmt(worst, 2)} ms over {len(p99s)} runs"
            if mode == "load" and ref_p99:
                measured += f" (bare aiohttp under the same load: worst {fmt(max(ref_p99), 2)} ms)"
            add(
                f"hung_p99_{mode}",
                f"database hung, {mode} probing: /ready p99 <= {HUNG_P99_TARGET_MS:g} ms",
                measured,
                None if worst is None else worst <= HUNG_P99_TARGET_MS,
            )
        bound = settings["sidecar_check_interval_s"] + settings["sidecar_check_timeout_s"]
        # Probes are 1/rate apart, so a 503 is seen up to one probe period after it began.
        slack = 1 / settings["probe_rate"]
        firsts = [r["first_503_after_hang_s"] for r in runs]
        known = [f for f in firsts if f is not None]
        add(
            "hung_first_503",
            f"first 503 within interval + timeout ({bound:g} s)",
            "worst "
            + (fmt(max(known), 2) + " s" if known else "n/a")
            + f" over {len(firsts)} runs"
            + ("; some runs saw no 503" if None in firsts else ""),
            bool(known) and None not in firsts and max(known) <= bound + slack,
        )
    else:
        add("hung_timeouts", "database hung: 0 probe timeouts", "n/a", None)

    foot = results.get("footprint", {}).get("designs", {}).get("sidecar")
    if foot:
        rss = foot.get("rss_after_load_mib")
        add(
            "rss",
            f"RSS after load <= {MiB_TARGET:g} MiB",
            f"{fmt(rss)} MiB",
            None if rss is None else rss <= MiB_TARGET,
        )
        start = foot["start_to_health_200_ms"]
        add(
            "start",
            f"start to listening (first 200 on /health) <= {START_TARGET_MS:g} ms",
            fmt_spread(start, 0, " ms"),
            None if start["median"] is None else start["median"] <= START_TARGET_MS,
        )
        idle = foot.get("cpu_percent_of_core")
        add(
            "idle_cpu",
            f"idle CPU < {IDLE_TARGET_PERCENT:g}% of a core (default interval)",
            f"{fmt(idle, 3)}% over {results['footprint']['idle_seconds']:g} s",
            None if idle is None else idle < IDLE_TARGET_PERCENT,
        )
    metrics = results.get("throughput", {}).get("summary", {}).get("sidecar_metrics")
    if metrics:
        cells = {c: m["cpu_us_per_req"] for c, m in metrics.items()}
        medians = [s["median"] for s in cells.values() if s["median"] is not None]
        add(
            "metrics_cpu",
            "a /metrics scrape <= 1 ms of CPU",
            "; ".join(f"c={c}: {fmt_spread(s, 0, ' us')}" for c, s in cells.items()),
            bool(medians) and max(medians) <= METRICS_CPU_TARGET_US,
        )
    return out


# ---- markdown -------------------------------------------------------------------------------


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _pct(value: float | None) -> float | None:
    return None if value is None else value * 100


def markdown(results: dict[str, Any]) -> str:
    meta = results["meta"]
    quick = "**Quick smoke run: durations too short to mean anything.**" if meta["quick"] else ""
    parts: list[str] = [
        "# Benchmark results",
        "",
        f"Produced by `{meta['command']}` on {meta['started']} ({meta['machine']}), sidecar "
        f"sources sha256 {meta.get('sidecar_source_sha256', '?')}, in "
        f"{meta.get('wall_seconds', 0) / 60:.0f} min. {quick}",
        "",
        f"Servers pinned to CPU {meta['server_cpu']}, load generators to CPU {meta['client_cpu']}; "
        f"load from {meta['load_tool']}. Figures are medians over interleaved rounds with "
        "(min-max); ratios are taken pair by pair within a round, then the median of those.",
        "",
        "## Targets (issue 6)",
        "",
        _table(
            ["target", "measured", "verdict"],
            [[t["target"], t["measured"], verdict(t["met"])] for t in results["targets"]],
        ),
    ]
    parts += _throughput_md(results.get("throughput"))
    parts += _db_md(results.get("db_cost"))
    parts += _outage_md(results.get("outage"))
    parts += _footprint_md(results.get("footprint"))
    parts += _fleet_md(results.get("fleet"), results.get("db_cost"))
    if results.get("profile"):
        parts += ["", "## Profile", "", results["profile"]]
    if results.get("skipped"):
        parts += ["", "## Skipped", ""] + [f"- {s}" for s in results["skipped"]]
    return "\n".join(parts) + "\n"


def _throughput_md(section: dict[str, Any] | None) -> list[str]:
    if not section:
        return []
    rows: list[list[str]] = []
    for label, by_conc in section["summary"].items():
        for conc, m in by_conc.items():
            rows.append(
                [
                    _label(label),
                    conc,
                    fmt_spread(m["rps"], 0),
                    fmt_spread(m["p50_ms"], 3),
                    fmt_spread(m["p99_ms"], 3),
                    fmt_spread(m["cpu_us_per_req"], 1),
                ]
            )
    ratio_rows = [
        [
            f"{_label(r['numerator'])} / {_label(r['denominator'])}",
            r["metric"],
            str(r["concurrency"]),
            fmt_spread(r["ratio"], 3),
        ]
        for r in section["ratios"]
    ]
    return [
        "",
        "## 1. Throughput, latency and CPU per request",
        "",
        _table(["server", "conc.", "requests/s", "p50 ms", "p99 ms", "server CPU us/req"], rows),
        "",
        "Ratios, pair by pair within each round:",
        "",
        _table(["pair", "metric", "conc.", "ratio"], ratio_rows),
    ]


def _db_md(section: dict[str, Any] | None) -> list[str]:
    if not section:
        return []
    rows: list[list[str]] = []
    for design, by_rate in section["summary"].items():
        for rate, m in by_rate.items():
            rows.append(
                [
                    _label(design),
                    f"{rate}/s",
                    fmt_spread(m["achieved_rate"], 0),
                    fmt_spread(m["answered_percent"], 0, "%"),
                    fmt_spread(m["statements_per_minute"], 1),
                    fmt_spread(m["statements_per_probe"], 3),
                    fmt_spread(m["sessions_held"], 0),
                    fmt_spread(m["db_cpu_us_per_probe"], 1),
                    fmt_spread(m["app_cpu_us_per_probe"], 1),
                    fmt_spread(m["db_cpu_percent_of_core"], 2),
                ]
            )
    texts: dict[str, int] = next(
        (r["statements_by_text"] for r in section["runs"] if r["design"] == "baseline"), {}
    )
    return [
        "",
        "## 2. What probes cost the database",
        "",
        _table(
            [
                "design",
                "probe rate",
                "achieved/s",
                "answered within 1 s",
                "statements/min",
                "statements/probe",
                "sessions held",
                "DB CPU us/probe",
                "app CPU us/probe",
                "DB CPU % of a core",
            ],
            rows,
        ),
        "",
        "Statements one baseline run caused (pg_stat_statements): "
        + ", ".join(f"`{q}` x{n}" for q, n in texts.items()),
        "",
        "Bare aiohttp and nginx get the same probes as yardsticks: at 10/s every probe is a new "
        "connection, as from kubelet, and the app CPU per probe is mostly the connection's, "
        "not the handler's (compare section 1's keep-alive CPU per request).",
    ]


def _outage_md(section: dict[str, Any] | None) -> list[str]:
    if not section:
        return []
    s = section["settings"]
    rows = [
        [
            _label(r["design"]),
            r["mode"],
            str(r["round"] + 1),
            str(r["probes_during_hang"]),
            fmt(_pct(r["answered_share_during_hang"]), 0) + "%",
            str(r["timeouts"]),
            fmt(r["p50_ms_during_hang"], 2),
            fmt(r["p99_ms_during_hang"], 2),
            fmt(r["first_503_after_hang_s"], 2),
            fmt(r["first_200_after_resume_s"], 2),
            ", ".join(f"{k}: {v}" for k, v in sorted(r["statuses_during_hang"].items())),
        ]
        for r in section["runs"]
    ]
    refs = section.get("reference_bare_aiohttp_under_load", [])
    ref_line = (
        "Reference, bare aiohttp serving the same body under the same load (no database): "
        + "; ".join(
            f"round {r['round'] + 1} p50 {fmt(r['p50_ms'], 2)} ms, p99 {fmt(r['p99_ms'], 2)} ms, "
            f"{r['timeouts']} timeouts in {r['probes']} probes"
            for r in refs
        )
        if refs
        else ""
    )
    return [
        "",
        "## 3. The database hangs",
        "",
        f"A FaultProxy between each design and PostgreSQL stops forwarding for {s['hang_s']:g} s "
        f"({s['pre_s']:g} s before, {s['post_s']:g} s after). Probes at {s['probe_rate']:g}/s, "
        f"each on a new connection with a {s['probe_timeout_s']:g} s timeout, like the kubelet; "
        f"`load` adds wrk with {s['load_connections']} connections on the same endpoint. "
        f"Sidecar check interval {s['sidecar_check_interval_s']:g} s, timeout "
        f"{s['sidecar_check_timeout_s']:g} s.",
        "",
        _table(
            [
                "design",
                "mode",
                "round",
                "probes in hang",
                "answered in hang",
                "timeouts (run)",
                "p50 ms in hang",
                "p99 ms in hang",
                "first 503 s",
                "first 200 after resume s",
                "statuses in hang",
            ],
            rows,
        ),
        "",
        ref_line,
        "",
        "![probe status and latency over the outage](outage.png)",
    ]


def _footprint_md(section: dict[str, Any] | None) -> list[str]:
    if not section:
        return []
    rows = [
        [
            _label(name),
            fmt_spread(d["start_to_health_200_ms"], 0),
            fmt_spread(d["start_to_ready_200_ms"], 0),
            fmt(d.get("rss_idle_mib")),
            fmt(d.get("uss_idle_mib")),
            fmt(d.get("rss_after_load_mib")),
            fmt(d.get("cpu_percent_of_core"), 3),
        ]
        for name, d in section["designs"].items()
    ]
    return [
        "",
        "## 4. Footprint",
        "",
        _table(
            [
                "design",
                "start to first 200 /health ms",
                "start to first 200 /ready ms",
                "RSS idle MiB",
                "USS idle MiB (private)",
                "RSS after load MiB",
                f"idle CPU % of a core ({section['idle_seconds']:g} s)",
            ],
            rows,
        ),
    ]


def _fleet_md(section: dict[str, Any] | None, db_cost: dict[str, Any] | None) -> list[str]:
    if not section:
        return []
    rows: list[list[str]] = []
    proj: list[list[str]] = []
    for mode, m in section["modes"].items():
        rows.append(
            [
                mode,
                str(m["pods"]),
                str(m["server_sessions"]),
                fmt(m["db_cpu_percent_of_core"], 2),
                fmt(m["pgbouncer_cpu_percent_of_core"], 2),
                fmt(m["sidecars_cpu_percent_of_core"], 2),
                fmt(m["checks_per_second"], 1),
                fmt(m["statements_per_second"], 1),
                fmt_spread(m["sidecar_rss_mib"], 1),
            ]
        )
        p = m["projected"]
        proj.append(
            [
                f"sidecar, {mode}",
                str(p["pods"]),
                fmt(p["server_sessions"], 0),
                fmt(p["db_cpu_percent_of_core"], 2),
                fmt(p["pgbouncer_cpu_percent_of_core"], 2),
                fmt(p["checks_per_second"], 0),
                "yes" if p["fits_default_max_connections"] else "no",
            ]
        )
    base = baseline_projection(db_cost, section)
    if base:
        proj.append(
            [
                "baseline (in-app), 0.3 probes/s/pod",
                str(base["pods"]),
                f">= {base['server_sessions']:.0f}",
                fmt(base["db_cpu_percent_of_core"], 2),
                "-",
                fmt(base["statements_per_second"], 0) + " statements/s",
                "no",
            ]
        )
    return [
        "",
        "## 5. Fleet",
        "",
        _table(
            [
                "mode",
                "pods",
                "server sessions",
                "DB CPU % core",
                "pgbouncer CPU % core",
                "sidecars CPU % core (all)",
                "checks/s",
                "statements/s",
                "RSS per sidecar MiB",
            ],
            rows,
        ),
        "",
        f"Projected to {section['modes'][next(iter(section['modes']))]['projected']['pods']} "
        "pods (linear in pods from the measured fleet; pgbouncer's server sessions are bounded "
        "by its pool, not by the fleet). PostgreSQL's default max_connections is 100.",
        "",
        _table(
            [
                "design",
                "pods",
                "server sessions",
                "DB CPU % core",
                "pgbouncer CPU % core",
                "checks/s",
                "fits max_connections=100",
            ],
            proj,
        ),
    ]


def baseline_projection(
    db_cost: dict[str, Any] | None, fleet: dict[str, Any]
) -> dict[str, float] | None:
    """The in-app check at the glucolens manifest's probe rate (readiness every 5 s and liveness
    every 10 s, both on /health: 0.3 probes/s per pod), priced with section 2's per-probe
    figures. Every pod's pool keeps at least one session open."""
    if not db_cost or "baseline" not in db_cost["summary"]:
        return None
    low = min(db_cost["summary"]["baseline"], key=float)
    m = db_cost["summary"]["baseline"][low]
    pods = next(iter(fleet["modes"].values()))["projected"]["pods"]
    probes_per_s = 0.3 * pods
    spp = m["statements_per_probe"]["median"] or 0.0
    db_us = m["db_cpu_us_per_probe"]["median"] or 0.0
    # The pool keeps what it once opened (5 here after section 1's load); one per pod is the
    # floor any app with a pool pays, so that is what is projected.
    return {
        "pods": pods,
        "server_sessions": 1.0 * pods,
        "statements_per_second": spp * probes_per_s,
        "db_cpu_percent_of_core": db_us * probes_per_s / 1e4,
    }


# ---- plot -----------------------------------------------------------------------------------


def plot_outage(results: dict[str, Any], path: Path) -> None:
    """Probe latency over the scripted outage, coloured by outcome, one panel per design and
    mode (first round)."""
    import matplotlib  # noqa: PLC0415 - heavy; only the report needs it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    section = results["outage"]
    s = section["settings"]
    first = {(r["design"], r["mode"]): r for r in reversed(section["runs"])}
    designs = ["sidecar", "baseline"]
    modes = ["kubelet", "load"]
    fig, axes = plt.subplots(
        len(designs), len(modes), figsize=(13, 7.5), sharex=True, squeeze=False
    )
    colours = {
        200: ("tab:green", "200"),
        503: ("tab:orange", "503"),
        0: ("tab:red", "timeout"),
        -1: ("tab:gray", "error"),
    }
    timeout_ms = s["probe_timeout_s"] * 1000
    for i, design in enumerate(designs):
        for j, mode in enumerate(modes):
            ax = axes[i][j]
            run = first.get((design, mode))
            ax.axvspan(0, s["hang_s"], color="tab:red", alpha=0.08, label="database hung")
            ax.axhline(timeout_ms, color="tab:red", lw=0.6, ls="--")
            if run is not None:
                points = run["timeline"]
                for status, (colour, name) in colours.items():
                    xs = [p[0] for p in points if p[2] == status]
                    ys = [
                        max(0.01, p[1] if status > 0 else timeout_ms)
                        for p in points
                        if p[2] == status
                    ]
                    if xs:
                        ax.scatter(xs, ys, s=9, color=colour, label=f"{name} ({len(xs)})")
                if run["first_503_after_hang_s"] is not None:
                    ax.axvline(run["first_503_after_hang_s"], color="tab:orange", lw=0.8)
            ax.set_yscale("log")
            ax.set_title(f"{_label(design)}: {mode} probing", fontsize=10)
            ax.grid(True, which="both", alpha=0.2)
            if j == 0:
                ax.set_ylabel("probe latency, ms (log)")
            if i == len(designs) - 1:
                ax.set_xlabel("seconds since the database hung")
            ax.legend(fontsize=7, loc="upper left")
    fig.suptitle(
        f"Probes at {s['probe_rate']:g}/s with a {s['probe_timeout_s']:g} s timeout while the "
        f"database hangs for {s['hang_s']:g} s (shaded); timeouts drawn at the timeout",
        fontsize=11,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_all(results: dict[str, Any], out_dir: Path) -> None:
    results["targets"] = evaluate_targets(results)
    out_dir.mkdir(parents=True, exist_ok=True)
    if results.get("outage"):
        plot_outage(results, out_dir / "outage.png")
    (out_dir / "results.json").write_text(json.dumps(results, indent=1, sort_keys=False) + "\n")
    (out_dir / "RESULTS.md").write_text(markdown(results))
