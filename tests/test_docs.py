"""The README's tables say what the code does: every failure reason, log event and metric.

Each set is read from the code at test time (the Reason enum, an AST walk over sidecar/ for log
event names, a scrape of the production-built app for metrics), so a new reason, event or
metric that the README does not list fails here, and so does a README row the code dropped.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import prometheus_client
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from support import REPO

import sidecar
from sidecar.app import create_app
from sidecar.config import Settings
from sidecar.handlers import QUERY_PARAMETERS
from sidecar.reasons import ALL_REASONS

README = (REPO / "README.md").read_text()
PACKAGE = Path(sidecar.__file__).resolve().parent
EVENT = re.compile(r"^[a-z]+\.[a-z_]+$")


def section(text: str, heading: str) -> str:
    """The body of a `## heading` section, up to the next heading of the same level."""
    match = re.search(rf"^## {re.escape(heading)}\n(.*?)(?=^## )", text, re.S | re.M)
    assert match, f"README has no '## {heading}' section"
    return match.group(1)


def first_cells(text: str) -> list[str]:
    """The first cell of every table row (header and rule rows skipped)."""
    cells = []
    for line in text.splitlines():
        if line.startswith("|") and not line.startswith("|---"):
            cells.append(line.split("|")[1].strip())
    return cells[1:]  # the header row


def logged_events() -> set[str]:
    """Every dotted event name in sidecar/: string constants shaped `area.event`.

    Logger names (`get_logger("sidecar.app")`) and module paths are not events."""
    modules = {f"sidecar.{p.stem}" for p in PACKAGE.glob("*.py")}
    modules |= {f"sidecar.{p.name}" for p in PACKAGE.iterdir() if p.is_dir()}
    events: set[str] = set()
    for path in PACKAGE.rglob("*.py"):
        tree = ast.parse(path.read_text())
        logger_names = {
            id(arg)
            for node in ast.walk(tree)
            if isinstance(node, ast.Call)
            and getattr(node.func, "attr", getattr(node.func, "id", None)) == "get_logger"
            for arg in node.args
        }
        events |= {
            node.value
            for node in ast.walk(tree)
            if isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and EVENT.match(node.value)
            and id(node) not in logger_names
            and node.value not in modules
        }
    return events


def test_readme_lists_every_failure_reason_and_no_other() -> None:
    """The README's list of reasons is exactly the Reason enum."""
    match = re.search(r"^- Failures are classified.*?(?=^\S|^- |\n\n)", README, re.S | re.M)
    assert match, "README lost its list of failure reasons"
    # Words in parentheses explain a reason (`details.timed_out`, `hot_standby=off`).
    listed = set(re.findall(r"`([a-z_]+)`", re.sub(r"\([^()]*\)", "", match.group(0))))
    assert listed == set(ALL_REASONS), (
        f"missing from README: {sorted(set(ALL_REASONS) - listed)}; "
        f"not in the code: {sorted(listed - set(ALL_REASONS))}"
    )


def test_reliability_doc_counts_the_reasons_right() -> None:
    """docs/reliability.md states the number of reasons the code has, if it states one."""
    text = (REPO / "docs" / "reliability.md").read_text()
    numbers = re.findall(r"fixed set of (\w+)", text)
    words = {
        "ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13, "fourteen": 14, "fifteen": 15,
        "sixteen": 16, "seventeen": 17, "eighteen": 18, "nineteen": 19, "twenty": 20,
    }  # fmt: skip
    for number in numbers:
        count = int(number) if number.isdigit() else words.get(number)
        assert count == len(ALL_REASONS), f"reliability.md says {number} reasons"


def test_event_scan_finds_the_events_it_should() -> None:
    """The AST scan sees events however they are logged (a level chosen at run time too)."""
    events = logged_events()
    assert {"check.state_changed", "sidecar.starting", "credentials.reloaded"} <= events
    assert "sidecar.app" not in events


def test_readme_log_table_lists_every_event_and_no_other() -> None:
    """Every event the code logs has a row in the README's log table, and every row is logged."""
    rows = {cell.strip("`") for cell in first_cells(section(README, "Logs"))}
    code = logged_events()
    assert rows == code, (
        f"missing from README: {sorted(code - rows)}; not in the code: {sorted(rows - code)}"
    )


def scrape_families(text: str) -> dict[str, tuple[str, frozenset[str]]]:
    """name -> (type, label names) of every health_sidecar_* family in an exposition."""
    families = {}
    for family in text_string_to_metric_families(text):
        if not family.name.startswith("health_sidecar_"):
            continue
        labels: set[str] = set()
        for sample in family.samples:
            labels |= set(sample.labels) - {"le"}
        families[family.name] = (family.type, frozenset(labels))
    return families


def readme_metrics() -> dict[str, tuple[str, frozenset[str]]]:
    """name -> (type, label names) from the README's metrics table."""
    table: dict[str, tuple[str, frozenset[str]]] = {}
    for line in section(README, "Metrics").splitlines():
        match = re.match(r"^\| `(health_sidecar_\w+)(?:\{([\w,]*)\})?` \| (\w+) \|", line)
        if match:
            name, labels, kind = match.groups()
            # The exposition names a counter's family without `_total`.
            name = name.removesuffix("_total") if kind == "counter" else name
            table[name] = (kind, frozenset(labels.split(",")) if labels else frozenset())
    return table


@pytest.fixture
def as_served() -> Iterator[None]:
    """The registry as the process serves it: without `*_created` series (see __main__)."""
    prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]
    yield
    prometheus_client.enable_created_metrics()  # type: ignore[no-untyped-call]


@pytest.mark.usefixtures("as_served")
async def test_readme_metrics_table_matches_a_live_scrape(
    aiohttp_client: Any, tmp_path: Path
) -> None:
    """Name, type and labels of every health_sidecar_* metric: README table == live registry."""
    dsn_file = tmp_path / "dsn"
    # Nothing listens on port 1: the check fails, which is all a scrape needs.
    dsn_file.write_text("postgresql://health@127.0.0.1:1/postgres\n")
    settings = Settings.from_environ({"SIDECAR_DATABASE_URL_FILE": str(dsn_file)})
    registry = CollectorRegistry()
    client: TestClient[web.Request, web.Application] = await aiohttp_client(
        create_app(settings, registry=registry)
    )
    response = await client.get("/metrics")
    assert response.status == 200
    live = scrape_families(await response.text())
    documented = readme_metrics()
    assert len(documented) >= 10, "README metrics table not found"
    differing = sorted(n for n in live.keys() & documented.keys() if live[n] != documented[n])
    assert documented == live, (
        f"missing from README: {sorted(live.keys() - documented.keys())}; "
        f"not in the code: {sorted(documented.keys() - live.keys())}; differing: {differing}"
    )


def test_readme_query_parameter_table_is_the_code_s() -> None:
    """The README's table of query parameters per endpoint is exactly handlers.QUERY_PARAMETERS."""
    documented: dict[str, tuple[str, ...]] = {}
    table = re.search(
        r"^\| endpoint \| query parameters \|\n\|---\|---\|\n((?:\|.*\n)+)",
        section(README, "Endpoints"),
        re.M,
    )
    assert table, "README lost its table of query parameters"
    for row in table.group(1).splitlines():
        endpoint, parameters = (cell.strip() for cell in row.strip("|").split("|"))
        documented[endpoint.strip("`")] = tuple(re.findall(r"`([^`]+)`", parameters))
    assert documented == dict(QUERY_PARAMETERS)
