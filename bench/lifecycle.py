"""This tree beside an earlier commit through database lifecycles, in one run: how long after an
outage each is ready again, how many connections each makes while the database refuses it, and
how long each answers wrong through a real Patroni switchover and failover.

    .venv/bin/python -m bench.lifecycle [--base REV] [--rounds N] [--outages 5,40,120]
        [--sidecars N] [--rate-seconds S] [--ha-rounds N] [--sections recovery,logins,ha]
        [--out DIR]                                     # about 30 minutes with the defaults

Both trees' `sidecar/` come from git (`git archive`: `--base`, 341fe9d by default, and `--this`,
HEAD by default), so a run measures commits and the work tree may change meanwhile; both run on
the same interpreter and dependencies. Every sidecar runs with the contract's default settings
(check every 5 s, timeout 2 s, backoff up to 30 s), `--sidecars` of each tree side by side, each
through a FaultProxy of its own (tests/support) in front of one PostgreSQL: every outage hits
all of them at the same moment, so the trees meet the same outages, interleaved by construction.

- recovery: every proxy resets its open connections and then refuses new ones (a server gone
  at the TCP level) for each of `--outages` seconds, `--rounds` times; the lag is from the moment
  a proxy forwards again to its sidecar's first 200 on /ready (polled every 10 ms). A sidecar
  that never turned 503 (no check fell inside a short outage) is counted apart, not as a 0.
- logins: for `--rate-seconds`, (a) refused logins: the role's password changes and its
  sessions are terminated, so every login is rejected by the server; (b) a TCP-level outage:
  each proxy accepts and at once resets every connection. The figure is connections per minute
  per sidecar, counted by its proxy: in (a) each is a login the database rejects; in (b) none
  reaches the database (a refused connection cannot be counted at all, so (b) resets instead).
- ha: a two-node Patroni cluster (tests/support/patroni.py); every sidecar's DSN names both
  members with `target_session_attrs=read-write`; per round a switchover, then a failover by
  `kill -9` of the leader's Patroni and postmaster. The figure is each sidecar's longest window
  in which /ready disagreed with Patroni's REST view (a `/primary` 200 on some member), sampled
  at 10 Hz (tests/support/windows.py).

Writes lifecycle.json and the marked lifecycle section of RESULTS.md in `--out` (bench/ by
default; other sections of RESULTS.md untouched). A run of some `--sections` keeps the others'
figures from the lifecycle.json already in `--out`, each with the commits and date it was
measured at (`--sections ""` only rewrites the report).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import functools
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from bench import procs
from bench.db import ROLE_PASSWORD, Database, FaultProxy
from bench.versions import export

# The cluster and the window function are the HA tests' own (tests/support, imported as
# `support`, as bench/db.py explains), so the bench and the tests measure the same thing.
if str(procs.REPO / "tests") not in sys.path:
    sys.path.append(str(procs.REPO / "tests"))

from support.patroni import PatroniCluster  # type: ignore[import-not-found, unused-ignore]
from support.windows import Poller, wrong_windows  # type: ignore[import-not-found, unused-ignore]

# The commit before database lifecycles were handled (role on every check, fast recovery, ...).
DEFAULT_BASE: Final = "341fe9d"
TREES: Final = ("base", "this")
ROLE: Final = "sidecar"
WRONG_PASSWORD: Final = "not-the-bench-password"
OUTAGES: Final = (5.0, 40.0, 120.0)
# Long enough for the slowest recovery: the base backs off up to 30 s between attempts.
READY_TIMEOUT: Final = 120.0
READY_POLL_SECONDS: Final = 0.01
HA_AGREE_TIMEOUT: Final = 90.0
FAILOVER_TIMEOUT: Final = 60.0
BEGIN: Final = "<!-- lifecycle:begin -->"
END: Final = "<!-- lifecycle:end -->"


@dataclass
class Sidecar:
    """One `python -m sidecar` of one tree; `proxy` is its own path to the database, if any."""

    tree: str
    index: int
    port: int
    proc: Any
    proxy: FaultProxy | None = None

    @property
    def label(self) -> str:
        return f"{self.tree}{self.index}"

    def status(self) -> int:
        try:
            return procs.http_get(self.port, "/ready", timeout=0.5)[0]
        except (OSError, ValueError, IndexError):
            return 0

    def ready(self) -> bool:
        return self.status() == 200


def start_sidecar(tree: str, index: int, tree_dir: Path, dsn_file: Path, logs: Path) -> Sidecar:
    port = procs.free_port()
    env = {
        "PATH": "/usr/bin:/bin",
        "SIDECAR_DATABASE_URL_FILE": str(dsn_file),
        "SIDECAR_HOST": "127.0.0.1",
        "SIDECAR_PORT": str(port),
        "SIDECAR_DRAIN_SECONDS": "0",
    }
    log = (logs / f"{tree}{index}-{dsn_file.stem}.log").open("ab")
    # cwd = the tree: `python -m` puts it first on sys.path, so its `sidecar` is the one imported.
    proc = procs.spawn([sys.executable, "-m", "sidecar"], env=env, cwd=tree_dir, log=log)
    procs.wait_for_port(port, timeout=30, proc=proc)
    return Sidecar(tree, index, port, proc)


def wait_all_ready(sidecars: Sequence[Sidecar], timeout: float = READY_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not all(s.ready() for s in sidecars):
        if time.monotonic() > deadline:
            late = [s.label for s in sidecars if not s.ready()]
            raise TimeoutError(f"not ready within {timeout:g}s: {late}")
        time.sleep(0.1)


def first_ready_after(sidecar: Sidecar, since: float, out: dict[str, float | None]) -> None:
    """Poll /ready until 200; store the seconds from `since` (None after READY_TIMEOUT)."""
    deadline = since + READY_TIMEOUT
    while time.monotonic() < deadline:
        if sidecar.ready():
            out[sidecar.label] = time.monotonic() - since
            return
        time.sleep(READY_POLL_SECONDS)
    out[sidecar.label] = None


def in_threads(targets: Sequence[Callable[[], None]]) -> None:
    threads = [threading.Thread(target=t, daemon=True) for t in targets]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(READY_TIMEOUT + 30)


# ---- recovery after a TCP-level outage ---------------------------------------------------------


def outage_round(sidecars: Sequence[Sidecar], seconds: float) -> list[dict[str, Any]]:
    """One outage of `seconds` for every proxy at once; one row per sidecar."""
    wait_all_ready(sidecars)
    proxies = [s.proxy for s in sidecars if s.proxy is not None]
    for proxy in proxies:
        proxy.reset()  # the open connections die as a stopped server's do...
    for proxy in proxies:
        proxy.refuse()  # ...and new ones are refused
    time.sleep(seconds)
    went_unready = {s.label: not s.ready() for s in sidecars}
    lags: dict[str, float | None] = {}
    targets: list[Callable[[], None]] = []
    for sidecar in sidecars:
        assert sidecar.proxy is not None
        sidecar.proxy.forward()
        targets.append(functools.partial(first_ready_after, sidecar, time.monotonic(), lags))
    in_threads(targets)
    return [
        {
            "tree": s.tree,
            "sidecar": s.label,
            "outage_s": seconds,
            "went_unready": went_unready[s.label],
            "lag_s": None if lags.get(s.label) is None else round(float(lags[s.label] or 0), 3),
        }
        for s in sidecars
    ]


# ---- connections while the database refuses ---------------------------------------------------


def login_rate(
    db: Database, sidecars: Sequence[Sidecar], mode: str, seconds: float
) -> list[dict[str, Any]]:
    """Connections per minute per sidecar during `seconds` of a `refused_login` or `tcp_reset`
    outage; the database is healthy again (and every sidecar ready) when this returns."""
    wait_all_ready(sidecars)
    proxies = [s.proxy for s in sidecars if s.proxy is not None]
    before = {s.label: s.proxy.accepted_total for s in sidecars if s.proxy is not None}
    if mode == "refused_login":
        db.server.alter_password(ROLE, WRONG_PASSWORD)
        db.server.terminate("health-sidecar")
    else:
        for proxy in proxies:
            proxy.reset()
    started = time.monotonic()
    time.sleep(seconds)
    counts = {s.label: s.proxy.accepted_total - before[s.label] for s in sidecars if s.proxy}
    elapsed = time.monotonic() - started
    if mode == "refused_login":
        db.server.alter_password(ROLE, ROLE_PASSWORD)
    else:
        for proxy in proxies:
            proxy.forward()
    wait_all_ready(sidecars)
    return [
        {
            "tree": s.tree,
            "sidecar": s.label,
            "mode": mode,
            "connections": counts[s.label],
            "per_minute": round(counts[s.label] * 60 / elapsed, 2),
        }
        for s in sidecars
    ]


# ---- Patroni switchover and failover -----------------------------------------------------------


def ha_round(
    cluster: PatroniCluster, sidecars: Sequence[Sidecar], action: str
) -> list[dict[str, Any]]:
    """One switchover or failover; each sidecar's longest and total wrong window."""
    cluster.ensure_healthy()
    wait_all_ready(sidecars)
    truth = Poller(cluster.has_primary, name="truth")
    answers = {s.label: Poller(s.ready, name=s.label) for s in sidecars}
    pollers = [truth, *answers.values()]
    for poller in pollers:
        poller.start()
    killed = None
    try:
        time.sleep(1.0)
        if action == "switchover":
            cluster.switchover()
        else:
            killed = cluster.kill_leader()
            survivor = cluster.other(killed)
            deadline = time.monotonic() + FAILOVER_TIMEOUT
            while not survivor.is_primary() and time.monotonic() < deadline:
                time.sleep(0.1)
        deadline = time.monotonic() + HA_AGREE_TIMEOUT
        while not all(s.ready() for s in sidecars) and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(1.0)
    finally:
        for poller in pollers:
            poller.stop()
        if killed is not None:
            cluster.restart_member(killed)
    rows = []
    for sidecar in sidecars:
        windows = wrong_windows(answers[sidecar.label].samples, truth.samples)
        rows.append(
            {
                "tree": sidecar.tree,
                "sidecar": sidecar.label,
                "action": action,
                "longest_wrong_s": round(max((w.seconds for w in windows), default=0.0), 3),
                "total_wrong_s": round(sum(w.seconds for w in windows), 3),
            }
        )
    return rows


# ---- the run -----------------------------------------------------------------------------------


@contextlib.contextmanager
def sidecars_through_proxies(
    db: Database, trees: dict[str, Path], count: int, work: Path
) -> Iterator[list[Sidecar]]:
    """`count` sidecars per tree, each with a proxy of its own and a DSN file naming it."""
    sidecars: list[Sidecar] = []
    proxies: list[FaultProxy] = []
    try:
        for index in range(count):
            for tree in TREES:
                proxy = FaultProxy("127.0.0.1", db.port)
                proxies.append(proxy)
                dsn_file = work / f"dsn-{tree}{index}"
                dsn_file.write_text(db.dsn(ROLE, port=proxy.port) + "\n")
                sidecar = start_sidecar(tree, index, trees[tree], dsn_file, work)
                sidecar.proxy = proxy
                sidecars.append(sidecar)
        wait_all_ready(sidecars)
        yield sidecars
    finally:
        procs.stop_many([s.proc for s in sidecars])
        for proxy in proxies:
            proxy.stop()


def summarize(values: Sequence[float]) -> dict[str, float | int | None]:
    if not values:
        return {"n": 0, "median": None, "max": None}
    return {
        "n": len(values),
        "median": round(statistics.median(values), 3),
        "max": round(max(values), 3),
    }


def summary(results: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for tree in TREES:
        for row_outage in sorted({r["outage_s"] for r in results.get("recovery", [])}):
            rows = [
                r
                for r in results["recovery"]
                if r["tree"] == tree and r["outage_s"] == row_outage and r["went_unready"]
            ]
            lags = [r["lag_s"] for r in rows if r["lag_s"] is not None]
            stats = summarize(lags)
            stats["never_ready"] = sum(1 for r in rows if r["lag_s"] is None)
            stats["never_unready"] = sum(
                1
                for r in results["recovery"]
                if r["tree"] == tree and r["outage_s"] == row_outage and not r["went_unready"]
            )
            out[f"{tree}_recovery_{row_outage:g}s"] = stats
        for mode in ("refused_login", "tcp_reset"):
            rates = [
                r["per_minute"]
                for r in results.get("logins", [])
                if r["tree"] == tree and r["mode"] == mode
            ]
            out[f"{tree}_{mode}_per_minute"] = summarize(rates)
        for action in ("switchover", "failover"):
            windows = [
                r["longest_wrong_s"]
                for r in results.get("ha", [])
                if r["tree"] == tree and r["action"] == action
            ]
            out[f"{tree}_{action}_longest_wrong_s"] = summarize(windows)
    return out


def cell(stats: dict[str, Any] | None) -> str:
    if not stats:
        return "-"
    parts = []
    if stats.get("n"):
        parts.append(f"{stats['median']:g} / {stats['max']:g} (n={stats['n']})")
    if stats.get("never_ready"):
        parts.append(f"{stats['never_ready']} not ready within {READY_TIMEOUT:g} s")
    if stats.get("never_unready"):
        parts.append(f"{stats['never_unready']} never turned 503")
    return "; ".join(parts) or "-"


def markdown(runs: dict[str, dict[str, Any]], figures: dict[str, Any]) -> str:
    rows = []
    outages = runs.get("recovery", {}).get("outages", [])
    for outage in outages:
        key = f"recovery_{outage:g}s"
        rows.append((f"ready again after a {outage:g} s TCP-level outage (s)", key))
    rows += [
        (
            "connections per minute per sidecar, logins refused by the server",
            "refused_login_per_minute",
        ),
        (
            "connections per minute per sidecar, TCP-level outage (none reaches the database)",
            "tcp_reset_per_minute",
        ),
        ("longest wrong /ready window, Patroni switchover (s)", "switchover_longest_wrong_s"),
        (
            "longest wrong /ready window, Patroni failover by kill -9 (s)",
            "failover_longest_wrong_s",
        ),
    ]
    bases = sorted({run["base"] for run in runs.values()})
    lines = [
        BEGIN,
        "## Database lifecycles (`python -m bench.lifecycle`)",
        "",
        "Both trees' sidecars side by side with the default settings, in one run per section."
        " Cells: median / max (n = samples).",
        "",
    ]
    for name, run in runs.items():
        what = {
            "recovery": f"{run.get('rounds')} outages of each length",
            "logins": f"{run.get('rate_seconds', 0):g} s per mode",
            "ha": f"{run.get('ha_rounds')} switchovers and failovers",
        }[name]
        lines.append(
            f"- {name}: base `{run['base']}`, this `{run['this']}`, {run['sidecars']} sidecars"
            f" of each, {what}; {run['finished']} ({run['minutes']:g} min)"
        )
    lines += [
        "",
        f"| figure | base `{', '.join(bases)}` | this tree |",
        "|---|---|---|",
    ]
    for label, key in rows:
        lines.append(
            f"| {label} | {cell(figures.get(f'base_{key}'))} | {cell(figures.get(f'this_{key}'))} |"
        )
    lines += ["", END, ""]
    return "\n".join(lines)


def write_section(path: Path, section: str) -> None:
    """Replace the marked section of `path` (or append it; create the file if need be)."""
    text = path.read_text() if path.exists() else ""
    if BEGIN in text and END in text:
        head, _, rest = text.partition(BEGIN)
        _, _, tail = rest.partition(END + "\n")
        text = head + section + tail
    else:
        text = (text.rstrip("\n") + "\n\n" if text else "") + section
    path.write_text(text)


def short_rev(rev: str) -> str:
    done = subprocess.run(
        ["git", "rev-parse", "--short", rev],
        cwd=procs.REPO,
        check=True,
        capture_output=True,
        text=True,
    )
    return done.stdout.strip()


def parse_outages(text: str) -> list[float]:
    return [float(part) for part in text.split(",") if part.strip()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--base", default=DEFAULT_BASE, help="the earlier commit")
    parser.add_argument("--this", default="HEAD", help="this tree's commit")
    parser.add_argument("--rounds", type=int, default=5, help="outages of each length")
    parser.add_argument("--outages", type=parse_outages, default=list(OUTAGES))
    parser.add_argument("--sidecars", type=int, default=2, help="sidecars of each tree")
    parser.add_argument("--rate-seconds", type=float, default=120.0)
    parser.add_argument("--ha-rounds", type=int, default=3)
    parser.add_argument("--sections", default="recovery,logins,ha")
    parser.add_argument("--out", type=Path, default=procs.REPO / "bench")
    args = parser.parse_args(argv)
    sections = set(args.sections.split(","))
    work = Path(tempfile.mkdtemp(prefix="hs-lifecycle-"))
    this = short_rev(args.this)
    trees = {"base": export(args.base, work / "base"), "this": export(args.this, work / "this")}
    results: dict[str, Any] = {"recovery": [], "logins": [], "ha": []}

    def note(rows: list[dict[str, Any]]) -> None:
        for row in rows:
            print(json.dumps(row), flush=True)

    runs: dict[str, dict[str, Any]] = {}
    common = {"base": args.base, "this": this, "sidecars": args.sidecars}

    def done(name: str, since: float, **params: Any) -> None:
        runs[name] = {
            **common,
            **params,
            "python": sys.version.split()[0],
            "finished": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "minutes": round((time.monotonic() - since) / 60, 1),
        }

    try:
        if sections & {"recovery", "logins"}:
            db = Database()
            try:
                db.start()
                with sidecars_through_proxies(db, trees, args.sidecars, work) as sidecars:
                    if "logins" in sections:
                        since = time.monotonic()
                        for mode in ("refused_login", "tcp_reset"):
                            rows = login_rate(db, sidecars, mode, args.rate_seconds)
                            results["logins"] += rows
                            note(rows)
                        done("logins", since, rate_seconds=args.rate_seconds)
                    if "recovery" in sections:
                        since = time.monotonic()
                        for round_no in range(args.rounds):
                            for outage in args.outages:
                                rows = outage_round(sidecars, outage)
                                results["recovery"] += rows
                                note(rows)
                                # A pause of varying length: the next outage meets each
                                # sidecar at another point of its check cycle.
                                time.sleep(1.0 + (round_no % 5))
                        done("recovery", since, rounds=args.rounds, outages=args.outages)
            finally:
                db.stop()
        if "ha" in sections:
            since = time.monotonic()
            cluster = PatroniCluster()
            ha_sidecars: list[Sidecar] = []
            try:
                cluster.start()
                dsn_file = work / "dsn-ha"
                dsn_file.write_text(cluster.dsn(target_session_attrs="read-write") + "\n")
                for index in range(args.sidecars):
                    for tree in TREES:
                        ha_sidecars.append(start_sidecar(tree, index, trees[tree], dsn_file, work))
                for _ in range(args.ha_rounds):
                    for action in ("switchover", "failover"):
                        rows = ha_round(cluster, ha_sidecars, action)
                        results["ha"] += rows
                        note(rows)
            finally:
                procs.stop_many([s.proc for s in ha_sidecars])
                cluster.stop()
            done("ha", since, ha_rounds=args.ha_rounds)
    finally:
        procs.stop_all()
    # Sections not run this time are kept from the last report in --out, with their own runs.
    report_path = args.out / "lifecycle.json"
    if report_path.exists():
        previous = json.loads(report_path.read_text())
        for name, run in previous.get("runs", {}).items():
            if name not in runs:
                runs[name] = run
                results[name] = previous.get(name, [])
    runs = {name: runs[name] for name in ("recovery", "logins", "ha") if name in runs}
    figures = summary(results)
    args.out.mkdir(parents=True, exist_ok=True)
    report_path.write_text(
        json.dumps({"runs": runs, "summary": figures, **results}, indent=2) + "\n"
    )
    section = markdown(runs, figures)
    write_section(args.out / "RESULTS.md", section)
    print(section)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
