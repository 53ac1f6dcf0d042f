"""The bench's smoke run: tiny durations, so it never rots. No timing assertions."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from support import REPO

BENCH_EXTRA = ("fastapi", "sqlalchemy", "uvicorn", "matplotlib")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SECTIONS = ("throughput", "db_cost", "outage", "footprint", "fleet")

missing = [name for name in BENCH_EXTRA if importlib.util.find_spec(name) is None]

# In CI (CI=true) .ci/run installs both: there a missing one is a failure, not a skip.
IN_CI = os.environ.get("CI") == "true"
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        bool(missing) and not IN_CI,
        reason=f"bench extra not installed ({', '.join(missing)}): bash .ci/bench-tools.sh",
    ),
    pytest.mark.skipif(
        not Path("/usr/lib/postgresql/15/bin/postgres").exists() and not IN_CI,
        reason="PostgreSQL 15 server binaries not installed",
    ),
]


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Run `python -m bench.run --quick` once into a temporary directory."""
    out = tmp_path_factory.mktemp("bench")
    run_bench("bench.run", "--quick", "--out", str(out))
    return out


def run_bench(module: str, *args: str) -> None:
    """`python -m <module> <args>` from the repository; it must exit 0."""
    done = subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert done.returncode == 0, f"bench failed:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"


def _results(out: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((out / "results.json").read_text())
    return data


def test_quick_run_writes_json_with_every_section(quick_run: Path) -> None:
    """results.json parses and holds the five sections, the targets and the run's metadata."""
    results = _results(quick_run)
    assert results["meta"]["quick"] is True
    for section in SECTIONS:
        assert results[section], section
    assert results["targets"], "no targets"
    for target in results["targets"]:
        assert set(target) == {"name", "target", "measured", "met"}
        assert target["met"] in (True, False, None)


def test_throughput_pairs_every_design_with_its_ceiling(quick_run: Path) -> None:
    """Section 1 measured the sidecar, bare aiohttp and the baseline at both concurrencies."""
    throughput = _results(quick_run)["throughput"]
    for label in ("sidecar_ready", "sidecar_metrics", "bare_aiohttp", "baseline_health"):
        for conc in ("1", "50"):
            rows = throughput["runs"][label][conc]
            assert rows, (label, conc)
            assert all(row["requests"] > 0 for row in rows)
            assert all(row["non_2xx"] == 0 for row in rows), (label, conc)
    pairs = {(r["numerator"], r["denominator"], r["metric"]) for r in throughput["ratios"]}
    assert ("sidecar_ready", "bare_aiohttp", "rps") in pairs


def test_database_cost_counts_the_baselines_statements(quick_run: Path) -> None:
    """pg_stat_statements saw the baseline's BEGIN / SELECT 1 / ROLLBACK for its probes."""
    runs = _results(quick_run)["db_cost"]["runs"]
    baseline = [r for r in runs if r["design"] == "baseline"]
    assert baseline
    assert all(r["statements"] > 0 for r in baseline)
    assert {"sidecar", "baseline", "bare_aiohttp"} <= {r["design"] for r in runs}
    assert all(r["statements"] is None for r in runs if r["design"] == "bare_aiohttp")


def test_outage_timeline_covers_both_designs_and_modes(quick_run: Path) -> None:
    """Section 3 recorded a probe timeline per design and mode, with outcomes from a fixed set."""
    runs = _results(quick_run)["outage"]["runs"]
    assert {(r["design"], r["mode"]) for r in runs} == {
        (d, m) for d in ("sidecar", "baseline") for m in ("kubelet", "load")
    }
    for run in runs:
        assert run["timeline"]
        assert {point[2] for point in run["timeline"]} <= {200, 503, 0, -1}


def test_footprint_and_fleet_are_filled_in(quick_run: Path) -> None:
    """Footprint has start times and RSS for the sidecar; the fleet ran directly at least."""
    results = _results(quick_run)
    sidecar = results["footprint"]["designs"]["sidecar"]
    assert sidecar["start_to_ready_200_ms"]["median"] is not None
    assert sidecar["rss_idle_mib"] > 0
    fleet = results["fleet"]["modes"]
    assert fleet["direct"]["server_sessions"] >= 1
    assert fleet["direct"]["projected"]["pods"] == 1000


def test_markdown_and_plot_are_written(quick_run: Path) -> None:
    """RESULTS.md has the targets and every section; outage.png is a PNG."""
    markdown = (quick_run / "RESULTS.md").read_text()
    for heading in ("## Targets", "## 1.", "## 2.", "## 3.", "## 4.", "## 5."):
        assert heading in markdown, heading
    assert (quick_run / "outage.png").read_bytes()[:8] == PNG_SIGNATURE


def test_versions_reports_every_figure_for_both_trees(tmp_path: Path) -> None:
    """bench.versions, one round: every figure of both trees is measured (the live-heap wrapper
    really reports), and the live Python heap is a part of the RSS."""
    run_bench("bench.versions", "--rounds", "1", "--out", str(tmp_path))
    summary = json.loads((tmp_path / "versions.json").read_text())["summary"]
    for tree in ("base", "this"):
        figures = {what: summary[f"{tree}_{what}"] for what in ("start_s", "rss_mib", "import_ms")}
        assert all(value > 0 for value in figures.values()), figures
        assert 1 < summary[f"{tree}_traced_mib"] < summary[f"{tree}_rss_mib"]
    assert "live Python heap" in (tmp_path / "VERSIONS.md").read_text()


@pytest.mark.skipif(
    not IN_CI and (shutil.which("patroni") is None or shutil.which("etcd") is None),
    reason="patroni/etcd not installed: bash .ci/ha-tools.sh",
)
def test_lifecycle_reports_every_section_for_both_trees(tmp_path: Path) -> None:
    """bench.lifecycle with tiny durations: recovery lags, connection rates and Patroni windows
    are measured for the earlier commit and this tree, and the RESULTS.md section is written."""
    run_bench(
        "bench.lifecycle",
        *("--rounds", "1", "--outages", "3", "--sidecars", "1", "--rate-seconds", "3"),
        *("--ha-rounds", "1", "--out", str(tmp_path)),
    )
    report = json.loads((tmp_path / "lifecycle.json").read_text())
    for section, key in (("recovery", "outage_s"), ("logins", "mode"), ("ha", "action")):
        rows = report[section]
        assert {row["tree"] for row in rows} == {"base", "this"}, section
        assert all(key in row for row in rows), section
    assert {row["mode"] for row in report["logins"]} == {"refused_login", "tcp_reset"}
    assert {row["action"] for row in report["ha"]} == {"switchover", "failover"}
    assert all(row["longest_wrong_s"] >= 0 for row in report["ha"])
    markdown = (tmp_path / "RESULTS.md").read_text()
    assert "<!-- lifecycle:begin -->" in markdown
    assert "<!-- lifecycle:end -->" in markdown
    assert "Patroni failover" in markdown
