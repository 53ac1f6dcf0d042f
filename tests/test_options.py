"""The settings' one declaration (sidecar.options) against the README, --help and the loaders."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from sidecar_proc import SidecarProcess
from support import REPO

from sidecar import options
from sidecar.__main__ import _parser
from sidecar.checkspec import CheckPolicy
from sidecar.config import ConfigError, Settings
from sidecar.fields import TIMING
from sidecar.options import Setting

README = REPO / "README.md"
ROW = re.compile(r"^\| `(SIDECAR_[A-Z_]+)` \|(.*)\|\s*$")


def readme_rows() -> dict[str, list[str]]:
    """The README settings table: variable -> its cells (flag, default, accepted, meaning)."""
    section = README.read_text().split("\n## Settings\n", 1)[1].split("\n## ", 1)[0]
    rows: dict[str, list[str]] = {}
    for line in section.splitlines():
        if match := ROW.match(line):
            rows[match.group(1)] = [cell.strip() for cell in match.group(2).split("|")]
    return rows


def shown_default(setting: Setting) -> str:
    if setting.default is None:
        return "none"
    if isinstance(setting.default, float):
        return f"`{setting.default:g}`"
    return f"`{setting.default}`"


def accepted(setting: Setting) -> str:
    if setting.choices:
        return ", ".join(f"`{choice}`" for choice in setting.choices)
    if setting.type == "host":
        return "a host name or address"
    if setting.type == "text":
        return ""
    low, high = f"{setting.minimum:g}", f"{setting.maximum:g}"
    if setting.type == "whole":
        return f"{low} .. {high}"
    return f"{'>' if setting.above_minimum else '>='} {low}, <= {high}"


def test_readme_settings_table_matches_the_declarations() -> None:
    """Every declared setting has one README row with its flag, default and accepted values,
    and the README names no setting that is not declared."""
    rows = readme_rows()
    assert sorted(rows) == sorted(setting.env for setting in options.SETTINGS)
    for setting in options.SETTINGS:
        flag, default, allowed, _meaning = rows[setting.env]
        assert (flag, default, allowed) == (
            f"`{setting.flag}`",
            shown_default(setting),
            accepted(setting),
        ), setting.env


def test_help_lists_every_setting_with_its_variable_and_default() -> None:
    """--help names each declared flag, its variable and its default, and the probe command."""
    text = " ".join(_parser().format_help().split())
    for setting in options.SETTINGS:
        assert setting.flag in text
        assert f"{setting.help_line} [{setting.env}]" in text
    assert "health-sidecar probe {ready,health,startup}" in text


def test_check_file_timing_keys_are_the_per_check_settings() -> None:
    """The check file's timing keys, their ranges and CheckPolicy's defaults are the settings'."""
    assert {s.file_key for s in options.PER_CHECK} == set(TIMING)
    policy = CheckPolicy()
    for setting in options.PER_CHECK:
        assert getattr(policy, setting.field) == setting.default


# DSNs and files: test_config.py and test_checkfile.py read those.
VALUED = [setting for setting in options.SETTINGS if setting.type != "text"]


@pytest.mark.parametrize("setting", VALUED, ids=lambda s: s.env)
def test_every_setting_reaches_its_field(setting: Setting) -> None:
    """A good value of each declared setting lands on Settings (or its policy), parsed."""
    if setting.type == "host":
        good = "127.0.0.1"
    elif setting.type == "choice":
        good = setting.choices[-1]
    else:
        good = str(int(setting.maximum))
    env = {"PGHOST": "db", setting.env: good}
    found = Settings.from_environ(env)
    target = found.policy if setting.file_key else found
    value = getattr(target, setting.field)
    assert str(value) == good or value == float(good)


@pytest.mark.parametrize("name", ["SIDECAR_PORT", "SIDECAR_HOST"])
def test_service_link_value_is_refused_with_how_to_fix_it(name: str) -> None:
    """SIDECAR_PORT/HOST=tcp://ip:port (a Kubernetes service link) is refused, saying so."""
    with pytest.raises(ConfigError) as caught:
        Settings.from_environ({"PGHOST": "db", name: "tcp://10.96.0.12:8081"})
    (line,) = caught.value.problems
    assert line.startswith(f"{name}: ")
    assert "Kubernetes service link" in line
    assert "enableServiceLinks: false" in line


def test_unknown_variables_warn_with_a_guess_and_service_links_are_quiet() -> None:
    """A typo'd SIDECAR_* name is found with the closest setting; service-link names are not."""
    environ = {
        "SIDECAR_CHEK_INTERVAL": "2",
        "SIDECAR_SERVICE_HOST": "10.96.0.12",
        "SIDECAR_SERVICE_PORT": "8081",
        "SIDECAR_SERVICE_PORT_HTTP": "8081",
        "SIDECAR_PORT_8081_TCP": "tcp://10.96.0.12:8081",
        "SIDECAR_PORT_8081_TCP_ADDR": "10.96.0.12",
        "SIDECAR_DB_PORT": "tcp://10.96.0.13:5432",
        "SIDECAR_CHECK_INTERVAL": "2",
        "SIDECAR_ZZZ": "1",
    }
    assert options.unknown_variables(environ) == [
        ("SIDECAR_CHEK_INTERVAL", "SIDECAR_CHECK_INTERVAL"),
        ("SIDECAR_ZZZ", None),
    ]
    # Never refused.
    Settings.from_environ({"PGHOST": "db", **environ})


def test_a_slip_in_the_prefix_warns_too_and_look_alikes_stay_quiet() -> None:
    """A setting whose SIDECAR_ prefix is off (case, a letter, the underscore, more in front)
    was silently ignored: it warns with the setting meant. Other names ending like ours
    (POSTGRES_PORT, DATABASE_URL, service links) stay quiet."""
    environ = dict.fromkeys(
        [
            "sidecar_port",
            "SIDCAR_CHECK_INTERVAL",
            "SIDECARPORT",
            "SIDECAR-LOG-LEVEL",
            "HEALTH_SIDECAR_DRAIN_SECONDS",
            "POSTGRES_PORT",
            "DATABASE_URL",
            "APP_HOST",
            "HOST",
            "SIDECAR_SERVICE_PORT",
        ],
        "1",
    )
    assert options.unknown_variables(environ) == [
        ("HEALTH_SIDECAR_DRAIN_SECONDS", "SIDECAR_DRAIN_SECONDS"),
        ("SIDCAR_CHECK_INTERVAL", "SIDECAR_CHECK_INTERVAL"),
        ("SIDECAR-LOG-LEVEL", "SIDECAR_LOG_LEVEL"),
        ("SIDECARPORT", "SIDECAR_PORT"),
        ("sidecar_port", "SIDECAR_PORT"),
    ]


def test_cli_warns_once_per_unknown_variable_and_starts(tmp_path: Path) -> None:
    """A typo'd SIDECAR_* name is one warning at start naming the closest setting; service
    links are not mentioned; the sidecar starts all the same."""
    env = {
        "PGHOST": "127.0.0.1",
        "PGPORT": "1",
        "SIDECAR_CHEK_INTERVAL": "2",
        "SIDECAR_SERVICE_HOST": "10.96.0.12",
        "SIDECAR_PORT_8081_TCP": "tcp://10.96.0.12:8081",
    }
    with SidecarProcess(env, log_dir=tmp_path) as sidecar:
        sidecar.wait_listening()
        warnings = sidecar.events("sidecar.unknown_setting")
    assert [(w["variable"], w["did_you_mean"]) for w in warnings] == [
        ("SIDECAR_CHEK_INTERVAL", "SIDECAR_CHECK_INTERVAL")
    ]
    assert warnings[0]["level"] == "warning"


def test_cli_refuses_no_database_with_one_line() -> None:
    """No DSN, DSN file nor PGHOST: exit 2, one line naming the three ways, no traceback."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("SIDECAR_", "PG"))}
    result = subprocess.run(
        [sys.executable, "-m", "sidecar"],
        env=clean,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    (line,) = result.stderr.splitlines()
    assert "no database given" in line
    assert "SIDECAR_DATABASE_URL_FILE" in line
    assert "PGHOST" in line
