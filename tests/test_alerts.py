"""The alert rules in the chart: checked and unit-tested by promtool, each tested both ways."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from support import REPO

ALERTS = REPO / "charts" / "health-sidecar" / "files" / "alerts.yaml"
RULE_TESTS = sorted((REPO / "tests" / "rules").glob("*.test.yaml"))
RUNBOOK = REPO / "docs" / "alerts.md"

# Alertmanager routes and silences name these: renaming one is a breaking change.
EXPECTED_ALERTS = {
    "HealthSidecarDatabaseUnreachable",
    "HealthSidecarProberStalled",
    "HealthSidecarCheckFlapping",
    "HealthSidecarTargetMissing",
    "HealthSidecarWarnCheckFailing",
    "HealthSidecarDsnReloadFailing",
}
# A check configured `criticality: warn` keeps /ready at 200, so it must never page.
WARN_CHECK_ALERT = "HealthSidecarWarnCheckFailing"
SEVERITIES = {"critical", "warning", "info"}
PROMTOOL_TIMEOUT_SECONDS = 120


def find_promtool() -> str:
    """Return promtool's path; skip without it, but fail in CI, where it must be installed."""
    found = shutil.which("promtool")
    if found is None:
        message = "promtool is missing: run .ci/prometheus-tools.sh"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return found


@pytest.fixture(scope="module")
def promtool() -> str:
    """The promtool binary."""
    return find_promtool()


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def alert_rules() -> list[dict[str, Any]]:
    rules: list[dict[str, Any]] = []
    for group in load_yaml(ALERTS)["groups"]:
        rules.extend(rule for rule in group["rules"] if "alert" in rule)
    return rules


def test_alert_rules_pass_promtool_check_rules(promtool: str) -> None:
    """`promtool check rules` accepts the chart's rules file, lint problems included."""
    result = subprocess.run(
        [promtool, "check", "rules", "--lint=all", "--lint-fatal", str(ALERTS)],
        capture_output=True,
        text=True,
        timeout=PROMTOOL_TIMEOUT_SECONDS,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_alert_rule_unit_tests_pass(promtool: str) -> None:
    """`promtool test rules tests/rules/*.test.yaml` passes."""
    assert RULE_TESTS, "no tests/rules/*.test.yaml found"
    result = subprocess.run(
        [promtool, "test", "rules", *map(str, RULE_TESTS)],
        capture_output=True,
        text=True,
        timeout=PROMTOOL_TIMEOUT_SECONDS,
        check=False,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_rule_unit_tests_load_the_chart_rules_file() -> None:
    """Every rule test loads the chart's file itself, not a copy that could drift."""
    for test_file in RULE_TESTS:
        loaded = [
            (test_file.parent / name).resolve() for name in load_yaml(test_file)["rule_files"]
        ]
        assert loaded == [ALERTS], f"{test_file.name} loads {loaded}"


def test_alert_group_holds_the_documented_alerts() -> None:
    """The file has one group, health-sidecar, with exactly the documented alerts."""
    groups = load_yaml(ALERTS)["groups"]
    assert [group["name"] for group in groups] == ["health-sidecar"]
    names = [rule["alert"] for rule in alert_rules()]
    assert sorted(names) == sorted(EXPECTED_ALERTS)


def test_every_alert_is_tested_firing_and_not_firing() -> None:
    """Each alert has a unit test where it fires and one where it must stay silent."""
    fires: set[str] = set()
    silent: set[str] = set()
    for test_file in RULE_TESTS:
        for group in load_yaml(test_file)["tests"]:
            for case in group.get("alert_rule_test", []):
                (fires if case.get("exp_alerts") else silent).add(case["alertname"])
    assert fires >= EXPECTED_ALERTS, f"never tested firing: {EXPECTED_ALERTS - fires}"
    assert silent >= EXPECTED_ALERTS, f"never tested silent: {EXPECTED_ALERTS - silent}"


def test_every_alert_has_severity_summary_description_and_runbook() -> None:
    """Each alert carries a severity label and summary, description and runbook annotations."""
    for rule in alert_rules():
        name = rule["alert"]
        assert rule.get("labels", {}).get("severity") in SEVERITIES, name
        annotations = rule.get("annotations", {})
        for key in ("summary", "description", "runbook"):
            assert str(annotations.get(key, "")).strip(), f"{name} has no {key}"


def test_every_runbook_points_at_a_section_of_the_runbook_doc() -> None:
    """Each runbook annotation names a heading that exists in docs/alerts.md."""
    headings = re.findall(r"^#+\s+(\S.*?)\s*$", RUNBOOK.read_text(encoding="utf-8"), re.MULTILINE)
    # GitHub's anchor for a heading made of one word is the word in lower case.
    anchors = {heading.lower() for heading in headings}
    for rule in alert_rules():
        path, _, anchor = rule["annotations"]["runbook"].partition("#")
        assert path == "docs/alerts.md", rule["alert"]
        assert anchor == rule["alert"].lower(), rule["alert"]
        assert anchor in anchors, f"docs/alerts.md has no heading {rule['alert']}"


def test_warn_checks_never_page() -> None:
    """Every critical alert on check_up leaves warn checks out; the warn-check alert is not
    critical and keeps only warn checks."""
    rules = {rule["alert"]: rule for rule in alert_rules()}
    warn_only = 'health_sidecar_check_info{criticality="warn"}'
    for name, rule in rules.items():
        expr = " ".join(str(rule["expr"]).split())
        if rule["labels"]["severity"] == "critical" and "health_sidecar_check_up" in expr:
            assert f"unless on(job, instance, check) {warn_only}" in expr, name
    warn_rule = rules[WARN_CHECK_ALERT]
    assert warn_rule["labels"]["severity"] != "critical"
    assert f"and on(job, instance, check) {warn_only}" in " ".join(warn_rule["expr"].split())


def test_runbook_table_lists_every_alert_with_its_severity() -> None:
    """docs/alerts.md's summary table names each alert with the severity the rule carries."""
    text = RUNBOOK.read_text(encoding="utf-8")
    for rule in alert_rules():
        row = f"| {rule['alert']} | {rule['labels']['severity']} |"
        assert row in text, f"docs/alerts.md has no row {row!r}"


def test_no_rule_selects_on_a_job_name() -> None:
    """Every rule selects on sidecar metrics, never on a job name built from a release."""
    for rule in alert_rules():
        expr = " ".join(rule["expr"].split())
        assert not re.search(r"\bjob\s*(=~|!~|!=|=)", expr), rule["alert"]
        assert "health_sidecar_" in expr, rule["alert"]
