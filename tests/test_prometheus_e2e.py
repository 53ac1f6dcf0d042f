"""End to end with the real Prometheus: a server on loopback scrapes a running sidecar.

Every process started here (the sidecar, Prometheus) is stopped by its PID when the test ends,
and every wait is bounded. Both binaries come from .ci/prometheus-tools.sh (Debian's
`prometheus` package); without them these tests skip, except in CI (CI=true), where they fail.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlencode

import pytest
import yaml
from support import LOOPBACK, REPO, free_port
from support.pg import PostgresServer

pytestmark = pytest.mark.slow

ALERTS = REPO / "charts" / "health-sidecar" / "files" / "alerts.yaml"
DASHBOARD = REPO / "charts" / "health-sidecar" / "files" / "dashboard.json"
# A job name that says nothing of the sidecar: no rule may depend on the job's name.
JOB = "inventory"

# Generous bounds: a loaded CI machine is slow, and none of this measures speed.
START_TIMEOUT_SECONDS = 60.0
STATE_TIMEOUT_SECONDS = 60.0
STOP_TIMEOUT_SECONDS = 30.0
HTTP_TIMEOUT_SECONDS = 10.0
POLL_SECONDS = 0.25

T = TypeVar("T")


def find_binary(name: str) -> str:
    """Return the binary's path; skip without it, but fail in CI, where it must be installed."""
    found = shutil.which(name)
    if found is None:
        message = f"{name} is missing: run .ci/prometheus-tools.sh"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return found


def sidecar_command() -> list[str]:
    """The installed console script next to this interpreter (the venv under test)."""
    script = Path(sys.executable).parent / "health-sidecar"
    assert script.is_file(), f"{script} missing: install the package (pip install -e .)"
    return [str(script)]


def log_tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return f"({path} not written)"
    return "\n".join(text.splitlines()[-lines:])


def wait_for(
    predicate: Callable[[], T | None],
    *,
    timeout: float,
    what: str,
    context: Callable[[], str] = lambda: "",
) -> T:
    """Poll until `predicate` returns something other than None/False; fail after `timeout`."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = predicate()
        if last is not None and last is not False:
            return last
        time.sleep(POLL_SECONDS)
    pytest.fail(f"{what}: not within {timeout:g}s (last: {last!r})\n{context()}")


def http_get(port: int, path: str, *, accept: str | None = None) -> tuple[int, str]:
    """GET http://127.0.0.1:port/path: (status, body)."""
    connection = http.client.HTTPConnection(LOOPBACK, port, timeout=HTTP_TIMEOUT_SECONDS)
    try:
        connection.request("GET", path, headers={"Accept": accept} if accept else {})
        response = connection.getresponse()
        return response.status, response.read().decode("utf-8")
    finally:
        connection.close()


def http_status_or_none(port: int, path: str) -> int | None:
    """The status of GET path, or None while nothing answers."""
    try:
        return http_get(port, path)[0]
    except OSError:
        return None


def stop_process(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM by PID, bounded wait, then SIGKILL: never leave the process behind."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=STOP_TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=STOP_TIMEOUT_SECONDS)


@dataclass(frozen=True, slots=True)
class Running:
    """A started process: its PID-owning handle, its HTTP port and its log."""

    process: subprocess.Popen[bytes]
    port: int
    log: Path

    def log_tail(self) -> str:
        return f"--- {self.log} ---\n{log_tail(self.log)}"


@contextlib.contextmanager
def running_sidecar(dsn: str, workdir: Path) -> Iterator[Running]:
    """The sidecar as a subprocess on a free loopback port, checking `dsn` every second."""
    port = free_port()
    # Only what this test sets: no SIDECAR_*/PG* from the calling shell leaks in.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SIDECAR_", "PG"))}
    # From a file, as the chart mounts it: that also exports the DSN reload series.
    dsn_file = workdir / f"dsn-{port}"
    dsn_file.write_text(dsn + "\n")
    env |= {
        "SIDECAR_DATABASE_URL_FILE": str(dsn_file),
        "SIDECAR_HOST": LOOPBACK,
        "SIDECAR_PORT": str(port),
        "SIDECAR_CHECK_INTERVAL": "1",
        "SIDECAR_CHECK_TIMEOUT": "1",
        "SIDECAR_BACKOFF_MAX": "2",
        # Draining is not under test here; it would only slow every teardown down.
        "SIDECAR_DRAIN_SECONDS": "0",
    }
    log = workdir / f"sidecar-{port}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            sidecar_command(), env=env, stdout=out, stderr=subprocess.STDOUT, cwd=workdir
        )
    running = Running(process, port, log)
    try:

        def answering() -> bool:
            if process.poll() is not None:
                pytest.fail(f"sidecar exited with {process.returncode}\n{running.log_tail()}")
            return http_status_or_none(port, "/health") is not None

        wait_for(
            answering,
            timeout=START_TIMEOUT_SECONDS,
            what="sidecar answering on /health",
            context=running.log_tail,
        )
        yield running
    finally:
        stop_process(process)


@contextlib.contextmanager
def running_prometheus(sidecar_port: int, workdir: Path) -> Iterator[Running]:
    """A Prometheus server on a free loopback port, scraping the sidecar every second and
    evaluating the chart's alert rules every second, with its TSDB in `workdir`."""
    binary = find_binary("prometheus")
    port = free_port()
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(ALERTS)],
        "scrape_configs": [
            {"job_name": JOB, "static_configs": [{"targets": [f"{LOOPBACK}:{sidecar_port}"]}]}
        ],
    }
    config_file = workdir / "prometheus.yml"
    config_file.write_text(yaml.safe_dump(config), encoding="utf-8")
    log = workdir / "prometheus.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                binary,
                f"--config.file={config_file}",
                f"--storage.tsdb.path={workdir / 'tsdb'}",
                f"--web.listen-address={LOOPBACK}:{port}",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=workdir,
        )
    running = Running(process, port, log)
    try:

        def ready() -> bool:
            if process.poll() is not None:
                pytest.fail(f"prometheus exited with {process.returncode}\n{running.log_tail()}")
            return http_status_or_none(port, "/-/ready") == 200

        wait_for(
            ready,
            timeout=START_TIMEOUT_SECONDS,
            what="prometheus ready",
            context=running.log_tail,
        )
        yield running
    finally:
        stop_process(process)


def api(prometheus: Running, path: str, **params: str) -> Any:
    """GET a Prometheus HTTP API endpoint and return its `data`."""
    query = f"?{urlencode(params)}" if params else ""
    status, body = http_get(prometheus.port, f"/api/v1/{path}{query}")
    payload = json.loads(body)
    assert status == 200, payload
    assert payload["status"] == "success", payload
    return payload["data"]


def instant_value(prometheus: Running, promql: str) -> float | None:
    """The single sample an instant query returns now, or None when it returns nothing."""
    result = api(prometheus, "query", query=promql)["result"]
    assert len(result) <= 1, result
    return float(result[0]["value"][1]) if result else None


def wait_for_value(prometheus: Running, promql: str, expected: float, context: str) -> None:
    wait_for(
        lambda: instant_value(prometheus, promql) == expected,
        timeout=STATE_TIMEOUT_SECONDS,
        what=f"{promql} == {expected:g} via the query API ({context})",
        context=prometheus.log_tail,
    )


def active_alerts(prometheus: Running) -> list[dict[str, Any]]:
    alerts: list[dict[str, Any]] = api(prometheus, "alerts")["alerts"]
    return alerts


def evaluated_rules(prometheus: Running) -> list[dict[str, Any]] | None:
    """Every alerting rule once each has been evaluated at least once, else None."""
    rules = [rule for group in api(prometheus, "rules")["groups"] for rule in group["rules"]]
    return rules if rules and all(rule["health"] != "unknown" for rule in rules) else None


def scrape(port: int) -> str:
    """The sidecar's /metrics in the classic text format (what promtool parses)."""
    status, body = http_get(port, "/metrics", accept="text/plain")
    assert status == 200, body
    return body


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """A per-test directory for configs, logs and the TSDB."""
    return tmp_path


def test_prometheus_sees_readiness_follow_the_database(
    pg_private: PostgresServer, workdir: Path
) -> None:
    """Through the query API, health_sidecar_ready goes 1, then 0 without the database, then 1."""
    ready = f'health_sidecar_ready{{job="{JOB}"}}'
    unreachable = 'ALERTS{alertname="HealthSidecarDatabaseUnreachable", alertstate="pending"}'
    with (
        running_sidecar(pg_private.dsn(), workdir) as sidecar,
        running_prometheus(sidecar.port, workdir) as prometheus,
    ):
        wait_for_value(prometheus, ready, 1, "database up")

        pg_private.stop()
        wait_for_value(prometheus, ready, 0, "database stopped")
        # The rule sees the real series: pending (its 2m hold is longer than this test).
        wait_for_value(prometheus, unreachable, 1, "database stopped")

        pg_private.start()
        wait_for_value(prometheus, ready, 1, "database started again")
        wait_for(
            lambda: instant_value(prometheus, unreachable) is None,
            timeout=STATE_TIMEOUT_SECONDS,
            what="HealthSidecarDatabaseUnreachable no longer pending",
            context=prometheus.log_tail,
        )


def test_alert_rules_evaluate_cleanly_and_stay_silent_on_a_healthy_sidecar(
    pg: PostgresServer, workdir: Path
) -> None:
    """On live metrics every rule evaluates without error and no alert is pending or firing."""
    with (
        running_sidecar(pg.dsn(), workdir) as sidecar,
        running_prometheus(sidecar.port, workdir) as prometheus,
    ):
        wait_for_value(prometheus, f'health_sidecar_ready{{job="{JOB}"}}', 1, "database up")
        # What HealthSidecarTargetMissing recognises a sidecar by, whatever the job's name.
        wait_for_value(prometheus, f'health_sidecar_build_info{{job="{JOB}"}}', 1, "target scraped")
        rules = wait_for(
            lambda: evaluated_rules(prometheus),
            timeout=STATE_TIMEOUT_SECONDS,
            what="every rule evaluated",
            context=prometheus.log_tail,
        )
        assert {rule["name"] for rule in rules} >= {
            "HealthSidecarDatabaseUnreachable",
            "HealthSidecarProberStalled",
            "HealthSidecarCheckFlapping",
            "HealthSidecarTargetMissing",
        }
        broken = [(rule["name"], rule.get("lastError")) for rule in rules if rule["health"] != "ok"]
        assert not broken, broken
        # Before the first scrape absent(health_sidecar_build_info) holds, so wait for that to
        # clear; anything still active after the bound is an alert a healthy sidecar sets off.
        wait_for(
            lambda: not active_alerts(prometheus),
            timeout=STATE_TIMEOUT_SECONDS,
            what="no active alerts",
            context=lambda: json.dumps(active_alerts(prometheus), indent=1),
        )


def test_live_metrics_pass_promtool_check_metrics(
    pg_private: PostgresServer, workdir: Path
) -> None:
    """A scrape with every series populated (passes, failures, requests) draws no promtool lint."""
    promtool = find_binary("promtool")
    with running_sidecar(pg_private.dsn(), workdir) as sidecar:
        wait_for(
            lambda: http_status_or_none(sidecar.port, "/ready") == 200,
            timeout=STATE_TIMEOUT_SECONDS,
            what="sidecar ready",
            context=sidecar.log_tail,
        )
        for path in ("/health", "/startup", "/no-such-path"):
            http_get(sidecar.port, path)
        pg_private.stop()
        wait_for(
            lambda: http_status_or_none(sidecar.port, "/ready") == 503,
            timeout=STATE_TIMEOUT_SECONDS,
            what="sidecar not ready without the database",
            context=sidecar.log_tail,
        )
        exposition = scrape(sidecar.port)
    assert 'health_sidecar_check_failures_total{check="postgres",reason=' in exposition
    result = subprocess.run(
        [promtool, "check", "metrics"],
        input=exposition,
        capture_output=True,
        text=True,
        timeout=STOP_TIMEOUT_SECONDS,
        check=False,
    )
    complaints = (result.stdout + result.stderr).strip()
    assert result.returncode == 0, complaints
    assert not complaints, complaints


# Names as they appear in PromQL: `health_sidecar_*`, `process_*`, `python_*`. `up` and ALERTS
# come from Prometheus itself.
METRIC_NAME = re.compile(r"\b(?:health_sidecar|process|python)_[a-z0-9_]+\b")
SUFFIXES = {"histogram": ("_bucket", "_count", "_sum"), "summary": ("_count", "_sum")}


def exported_series_names(exposition: str) -> set[str]:
    """Every sample name a scrape can hold, from its `# TYPE` lines."""
    names: set[str] = set()
    for family, kind in re.findall(r"^# TYPE (\S+) (\S+)$", exposition, re.MULTILINE):
        names.add(family)
        names.update(family + suffix for suffix in SUFFIXES.get(kind, ()))
    return names


def test_alerts_and_dashboard_query_only_metrics_the_sidecar_exports(
    pg: PostgresServer, workdir: Path
) -> None:
    """Every metric name in the alert rules and the dashboard is on the live /metrics."""
    with running_sidecar(pg.dsn(), workdir) as sidecar:
        exported = exported_series_names(scrape(sidecar.port))
    assert "health_sidecar_ready" in exported, sorted(exported)
    for source in (ALERTS, DASHBOARD):
        used = set(METRIC_NAME.findall(source.read_text(encoding="utf-8")))
        # Names that only appear in prose (comments, descriptions) count too: they point
        # operators at series that must exist.
        assert used, source
        missing = used - exported
        assert not missing, f"{source.name} uses {sorted(missing)}, not in {sorted(exported)}"
