"""The Grafana dashboard: valid JSON, one copy in docs/, every PromQL query passes promtool."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from support import REPO

DASHBOARD = REPO / "charts" / "health-sidecar" / "files" / "dashboard.json"
DOCS_COPY = REPO / "docs" / "grafana-dashboard.json"
PROMTOOL_TIMEOUT_SECONDS = 120

# What a Grafana variable stands for when the query is checked outside Grafana. Any `$name`
# not listed here fails the test: Grafana would send it to Prometheus verbatim.
VARIABLE_VALUES = {
    "job": ".+",
    "instance": ".+",
    "check": ".+",
    "__rate_interval": "1m",
    "__interval": "1m",
    "__range": "1h",
}
VARIABLE = re.compile(r"\$(?:\{(\w+)(?::\w+)?\}|(\w+))")
LABEL_VALUES = re.compile(r"^\s*label_values\((?P<selector>.+),\s*(?P<label>\w+)\s*\)\s*$")


def find_promtool() -> str:
    """Return promtool's path; skip without it, but fail in CI, where it must be installed."""
    found = shutil.which("promtool")
    if found is None:
        message = "promtool is missing: run .ci/prometheus-tools.sh"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return found


def load_dashboard() -> dict[str, Any]:
    dashboard: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return dashboard


def all_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Every panel, including those nested in (collapsed) rows."""
    for panel in panels:
        yield panel
        yield from all_panels(panel.get("panels", []))


def panel_queries(dashboard: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(where, expr) for every Prometheus query a panel makes."""
    for panel in all_panels(dashboard["panels"]):
        for target in panel.get("targets", []):
            yield f"panel {panel['id']} {panel['title']!r} {target['refId']}", target["expr"]


def variable_selectors(dashboard: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(where, selector) for every `label_values(selector, label)` variable query."""
    for variable in dashboard["templating"]["list"]:
        if variable["type"] != "query":
            continue
        match = LABEL_VALUES.match(variable["query"])
        assert match, f"variable {variable['name']}: not label_values(...): {variable['query']!r}"
        yield f"variable {variable['name']}", match["selector"]


def substitute(expr: str) -> str:
    def value(match: re.Match[str]) -> str:
        name = match[1] or match[2]
        if name not in VARIABLE_VALUES:
            raise KeyError(f"unknown Grafana variable ${name} in {expr!r}")
        return VARIABLE_VALUES[name]

    return VARIABLE.sub(value, expr)


def test_dashboard_is_a_grafana_dashboard() -> None:
    """The file parses as JSON with the fields Grafana needs to import it under a fixed uid."""
    dashboard = load_dashboard()
    assert dashboard["uid"] == "health-sidecar"
    assert dashboard["title"]
    assert isinstance(dashboard["schemaVersion"], int)
    assert dashboard["panels"]
    ids = [panel["id"] for panel in all_panels(dashboard["panels"])]
    assert len(ids) == len(set(ids)), f"duplicate panel ids: {ids}"
    for panel in all_panels(dashboard["panels"]):
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, f"panel {panel['id']} overflows the 24-column grid"


def test_docs_copy_is_identical_to_the_chart_copy() -> None:
    """docs/grafana-dashboard.json is byte for byte the chart's files/dashboard.json."""
    assert DOCS_COPY.read_bytes() == DASHBOARD.read_bytes(), (
        "docs/grafana-dashboard.json differs: cp charts/health-sidecar/files/dashboard.json "
        "docs/grafana-dashboard.json"
    )


def test_every_query_goes_through_the_datasource_variable() -> None:
    """Panels and queries use the ${datasource} variable, so the import works in any Grafana."""
    dashboard = load_dashboard()
    variables = {variable["name"]: variable for variable in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for panel in all_panels(dashboard["panels"]):
        sources = [target.get("datasource") for target in panel.get("targets", [])]
        if sources:
            sources.append(panel.get("datasource"))
        for source in sources:
            assert source == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]


def test_every_promql_expression_passes_promtool(tmp_path: Path) -> None:
    """Each panel query and variable selector, loaded as a recording rule, passes promtool."""
    promtool = find_promtool()
    dashboard = load_dashboard()
    queries = [*panel_queries(dashboard), *variable_selectors(dashboard)]
    assert queries
    rules = [
        {"record": f"dashboard:query_{index}:check", "expr": substitute(expr)}
        for index, (_, expr) in enumerate(queries)
    ]
    rules_file = tmp_path / "dashboard-queries.rules.yaml"
    rules_file.write_text(
        yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}), encoding="utf-8"
    )
    result = subprocess.run(
        [promtool, "check", "rules", str(rules_file)],
        capture_output=True,
        text=True,
        timeout=PROMTOOL_TIMEOUT_SECONDS,
        check=False,
    )
    where = "\n".join(f"dashboard:query_{i}:check = {w}" for i, (w, _) in enumerate(queries))
    assert result.returncode == 0, f"{result.stdout}{result.stderr}\n{where}"
    assert f"SUCCESS: {len(rules)} rules found" in result.stdout


def test_dashboard_uses_only_known_variables() -> None:
    """No query refers to a Grafana variable that the dashboard does not define."""
    dashboard = load_dashboard()
    defined = {variable["name"] for variable in dashboard["templating"]["list"]}
    builtin = {name for name in VARIABLE_VALUES if name.startswith("__")}
    for where, expr in [*panel_queries(dashboard), *variable_selectors(dashboard)]:
        for match in VARIABLE.finditer(expr):
            assert (match[1] or match[2]) in defined | builtin, f"{where}: {expr}"


def test_dashboard_shows_the_views_operators_need() -> None:
    """Readiness, latency quantiles, failures by reason, last-success age and HTTP codes."""
    exprs = [expr for _, expr in panel_queries(load_dashboard())]

    def shown(*fragments: str) -> bool:
        return any(all(fragment in expr for fragment in fragments) for expr in exprs)

    assert shown("health_sidecar_ready{")
    for quantile in ("0.5", "0.9", "0.99"):
        assert shown(
            f"histogram_quantile({quantile},", "health_sidecar_check_duration_seconds_bucket", "le"
        ), quantile
    assert shown("health_sidecar_check_failures_total", "reason")
    assert shown("time() -", "health_sidecar_check_last_success_timestamp_seconds")
    assert shown("health_sidecar_http_requests_total", "code")
