"""The check file (SIDECAR_CONFIG_FILE): YAML and TOML, every refusal as one exact line naming
the check and the key, all at once, never a DSN or a password; and through the real CLI."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from sidecar_proc import SidecarProcess
from support import REPO

from sidecar.checkfile import MAX_CHECK_FILE_BYTES, load_check_file, parse_checks
from sidecar.checks.http import HttpSpec
from sidecar.checks.postgres import PostgresSpec
from sidecar.checks.tcp import TcpSpec
from sidecar.checkspec import CheckPolicy, CheckSpec, DatabaseTarget
from sidecar.config import ConfigError, Settings
from sidecar.logs import REDACTED

ENV_TARGET = DatabaseTarget(host="db.env", port=5432, user="env", source="libpq")
ENV_POLICY = CheckPolicy(
    interval=7.0, timeout=3.0, backoff_max=40.0, failure_threshold=2, success_threshold=3
)
SECRET = "hunter2-do-not-print"
P = "SIDECAR_CONFIG_FILE"
Doc = dict[str, Any]


def parse(document: object) -> tuple[tuple[CheckSpec, ...], list[str]]:
    problems: list[str] = []
    specs = parse_checks(document, defaults=ENV_POLICY, database=ENV_TARGET, problems=problems)
    return specs, problems


def load(path: Path) -> tuple[tuple[CheckSpec, ...], list[str]]:
    problems: list[str] = []
    specs = load_check_file(str(path), defaults=ENV_POLICY, database=ENV_TARGET, problems=problems)
    return specs, problems


def only_problem(document: object) -> str:
    _, problems = parse(document)
    assert len(problems) == 1, problems
    return problems[0]


@pytest.fixture
def files(tmp_path: Path) -> dict[str, str]:
    """A DSN Secret and TLS files, as a pod would mount them."""
    paths: dict[str, str] = {}
    for name, content in {
        "dsn": f"postgresql://app:{SECRET}@db.primary:5432/app?sslmode=verify-full\n",
        "ca": "-----BEGIN CERTIFICATE-----\n",
        "crt": "-----BEGIN CERTIFICATE-----\n",
        "key": "-----BEGIN PRIVATE KEY-----\n",
    }.items():
        path = tmp_path / name
        path.write_text(content)
        paths[name] = str(path)
    return paths


# ---- what a good file gives -------------------------------------------------------------------

YAML_FILE = """\
defaults:
  interval_seconds: 4
  timeout_seconds: 1.5
  failure_threshold: 3
checks:
  - name: primary
    kind: postgres
    dsn_file: {dsn}
    require_primary: true
    alembic_revision: 3f2a1b9c4d5e
    query: "SELECT count(*) > 0 FROM pg_stat_activity"
    expect: "true"
    ca_file: {ca}
    cert_file: {crt}
    key_file: {key}
  - name: replica
    kind: postgres
    criticality: warn
    allow_replica: true
    max_replica_lag_seconds: 30
    alembic_revision: [aaa111, bbb222]
    interval_seconds: 10
  - name: app
    kind: http
    url: http://127.0.0.1:8000/livez
    expect_status: "200-299"
    timeout_seconds: 0.5
  - name: cache
    kind: tcp
    host: 127.0.0.1
    port: 6379
    success_threshold: 2
"""

TOML_FILE = """\
[defaults]
interval_seconds = 4
timeout_seconds = 1.5
failure_threshold = 3

[[checks]]
name = "primary"
kind = "postgres"
dsn_file = "{dsn}"
require_primary = true
alembic_revision = "3f2a1b9c4d5e"
query = "SELECT count(*) > 0 FROM pg_stat_activity"
expect = "true"
ca_file = "{ca}"
cert_file = "{crt}"
key_file = "{key}"

[[checks]]
name = "replica"
kind = "postgres"
criticality = "warn"
allow_replica = true
max_replica_lag_seconds = 30
alembic_revision = ["aaa111", "bbb222"]
interval_seconds = 10

[[checks]]
name = "app"
kind = "http"
url = "http://127.0.0.1:8000/livez"
expect_status = "200-299"
timeout_seconds = 0.5

[[checks]]
name = "cache"
kind = "tcp"
host = "127.0.0.1"
port = 6379
success_threshold = 2
"""


def expected_specs(files: dict[str, str]) -> tuple[CheckSpec, ...]:
    from_file = CheckPolicy(
        interval=4.0, timeout=1.5, backoff_max=40.0, failure_threshold=3, success_threshold=3
    )
    return (
        PostgresSpec(
            name="primary",
            policy=from_file,
            target=DatabaseTarget(
                dsn=f"postgresql://app:{SECRET}@db.primary:5432/app?sslmode=verify-full",
                source="dsn_file",
                file_path=files["dsn"],
            ),
            require_primary=True,
            alembic_revisions=("3f2a1b9c4d5e",),
            query="SELECT count(*) > 0 FROM pg_stat_activity",
            expect="true",
            ca_file=files["ca"],
            cert_file=files["crt"],
            key_file=files["key"],
        ),
        PostgresSpec(
            name="replica",
            policy=CheckPolicy(
                interval=10.0,
                timeout=1.5,
                backoff_max=40.0,
                failure_threshold=3,
                success_threshold=3,
            ),
            critical=False,
            target=ENV_TARGET,
            allow_replica=True,
            max_replica_lag_seconds=30.0,
            alembic_revisions=("aaa111", "bbb222"),
        ),
        HttpSpec(
            name="app",
            policy=CheckPolicy(
                interval=4.0,
                timeout=0.5,
                backoff_max=40.0,
                failure_threshold=3,
                success_threshold=3,
            ),
            url="http://127.0.0.1:8000/livez",
            status_min=200,
            status_max=299,
        ),
        TcpSpec(
            name="cache",
            policy=CheckPolicy(
                interval=4.0,
                timeout=1.5,
                backoff_max=40.0,
                failure_threshold=3,
                success_threshold=2,
            ),
            host="127.0.0.1",
            port=6379,
        ),
    )


def test_yaml_and_toml_files_give_the_same_specs(tmp_path: Path, files: dict[str, str]) -> None:
    """The same checks written in YAML and in TOML parse to equal, fully specified specs."""
    yaml_path = tmp_path / "checks.yaml"
    yaml_path.write_text(YAML_FILE.format(**files))
    toml_path = tmp_path / "checks.toml"
    toml_path.write_text(TOML_FILE.format(**files))
    from_yaml, yaml_problems = load(yaml_path)
    from_toml, toml_problems = load(toml_path)
    assert (yaml_problems, toml_problems) == ([], [])
    assert from_yaml == from_toml == expected_specs(files)


def test_yml_extension_and_uppercase_suffix_are_yaml(tmp_path: Path, files: dict[str, str]) -> None:
    """`.yml` and `.YAML` are read as YAML too."""
    for name in ("checks.yml", "checks.YAML"):
        path = tmp_path / name
        path.write_text(YAML_FILE.format(**files))
        assert load(path) == (expected_specs(files), [])


def test_timing_falls_back_from_check_to_defaults_to_environment() -> None:
    """A check's own timing wins over the file's defaults, which win over SIDECAR_*."""
    (spec,) = parse(
        {
            "defaults": {"timeout_seconds": 1, "success_threshold": 5},
            "checks": [{"name": "c", "kind": "tcp", "host": "h", "port": 1, "timeout_seconds": 9}],
        }
    )[0]
    assert spec.policy == CheckPolicy(
        interval=7.0, timeout=9.0, backoff_max=40.0, failure_threshold=2, success_threshold=5
    )
    assert isinstance(spec.policy.timeout, float)  # 9 in the file, seconds as a float


def test_postgres_check_without_a_dsn_uses_the_environment_target() -> None:
    """Neither dsn nor dsn_file: the check connects where SIDECAR_DATABASE_URL/PG* say."""
    (spec,) = parse({"checks": [{"name": "db", "kind": "postgres"}]})[0]
    assert isinstance(spec, PostgresSpec)
    assert spec.target == ENV_TARGET
    assert spec.critical
    assert (spec.require_primary, spec.allow_replica, spec.alembic_revisions) == (False, False, ())


def test_inline_dsn_without_a_password_is_accepted() -> None:
    """`dsn:` without a password is the check's own target (the password may come from libpq)."""
    (spec,) = parse(
        {"checks": [{"name": "db", "kind": "postgres", "dsn": " postgresql://app@db/x "}]}
    )[0]
    assert isinstance(spec, PostgresSpec)
    assert spec.target == DatabaseTarget(dsn="postgresql://app@db/x", source="dsn")


def test_http_status_may_be_one_code_or_default_to_kubelets_range() -> None:
    """expect_status: 204 or "204" is exactly 204; absent, it is 200-399 like kubelet's."""
    checks = [
        {"name": "a", "kind": "http", "url": "https://x.example/"},
        {"name": "b", "kind": "http", "url": "http://[::1]:8080/", "expect_status": 204},
        {"name": "c", "kind": "http", "url": "http://h/", "expect_status": "204"},
    ]
    specs, problems = parse({"checks": checks})
    assert problems == []
    assert [(s.status_min, s.status_max) for s in specs if isinstance(s, HttpSpec)] == [
        (200, 399),
        (204, 204),
        (204, 204),
    ]


def test_settings_secrets_include_every_check_dsn(files: dict[str, str], tmp_path: Path) -> None:
    """The password of a check's DSN file is registered for redaction at start."""
    path = tmp_path / "c.yaml"
    path.write_text(f"checks:\n  - {{name: p, kind: postgres, dsn_file: {files['dsn']}}}\n")
    settings = Settings.from_environ({P: str(path)})
    assert SECRET in settings.secrets()
    assert SECRET not in repr(settings)


# ---- each refusal: one exact line naming the check and the key --------------------------------


def with_check(check: object) -> Doc:
    """`check` as checks[1], after a good one: the index in the line must be the right one."""
    return {"checks": [{"name": "first", "kind": "tcp", "host": "h", "port": 1}, check]}


PG = {"name": "db", "kind": "postgres"}
HTTP = {"name": "web", "kind": "http", "url": "http://127.0.0.1:8000/livez"}
TCP = {"name": "cache", "kind": "tcp", "host": "127.0.0.1", "port": 6379}
POSTGRES_KEYS = (
    "alembic_revision, allow_replica, backoff_max_seconds, ca_file, cert_file, criticality, "
    "dsn, dsn_file, expect, failure_threshold, interval_seconds, key_file, kind, "
    "max_replica_lag_seconds, name, query, require_primary, success_threshold, timeout_seconds"
)

REFUSALS: list[tuple[str, Doc, str]] = [
    # keys
    (
        "unknown key",
        {**PG, "querry": "SELECT 1"},
        " (db): unknown key 'querry'; did you mean 'query'?",
    ),
    (
        "unknown key, no guess",
        {**PG, "zzz": 1},
        f" (db): unknown key 'zzz'; a postgres check takes: {POSTGRES_KEYS}",
    ),
    (
        "another kind's key",
        {**PG, "url": "http://x/"},
        " (db): url: not a postgres setting (it belongs to an http check)",
    ),
    (
        "tcp key on http",
        {**HTTP, "port": 80},
        " (web): port: not an http setting (it belongs to a tcp check)",
    ),
    # name and kind
    (
        "name missing",
        {"kind": "tcp", "host": "h", "port": 1},
        ": name: missing; every check needs one",
    ),
    (
        "name with capitals",
        {**TCP, "name": "Cache"},
        ": name: must be 1 to 63 lowercase letters, digits, '-' or '_', starting and ending "
        "with a letter or digit, got text 'Cache'",
    ),
    (
        "name too long",
        {**TCP, "name": "a" * 64},
        ": name: must be 1 to 63 lowercase letters, digits, '-' or '_', starting and ending "
        "with a letter or digit, got text 'aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa'...",
    ),
    (
        "name a number",
        {**TCP, "name": 5},
        ": name: must be 1 to 63 lowercase letters, digits, '-' or '_', starting and ending "
        "with a letter or digit, got 5",
    ),
    ("kind missing", {"name": "x"}, " (x): kind: missing; must be one of postgres, http, tcp"),
    (
        "kind unknown",
        {"name": "x", "kind": "redis"},
        " (x): kind: must be one of postgres, http, tcp, got text 'redis'",
    ),
    (
        "criticality unknown",
        {**TCP, "criticality": "fatal"},
        " (cache): criticality: must be one of critical, warn, got text 'fatal'",
    ),
    # timing: types and the SIDECAR_* ranges
    (
        "quoted number",
        {**TCP, "interval_seconds": "5"},
        " (cache): interval_seconds: must be a number, got text '5'",
    ),
    (
        "boolean as number",
        {**TCP, "timeout_seconds": True},
        " (cache): timeout_seconds: must be a number, got a boolean (true)",
    ),
    (
        "interval zero",
        {**TCP, "interval_seconds": 0},
        " (cache): interval_seconds: must be greater than 0 and at most 3600, got 0",
    ),
    (
        "interval not finite",
        {**TCP, "interval_seconds": float("nan")},
        " (cache): interval_seconds: must be greater than 0 and at most 3600, got nan",
    ),
    (
        "timeout too long",
        {**TCP, "timeout_seconds": 601},
        " (cache): timeout_seconds: must be greater than 0 and at most 600, got 601",
    ),
    (
        "backoff infinite",
        {**TCP, "backoff_max_seconds": float("inf")},
        " (cache): backoff_max_seconds: must be greater than 0 and at most 3600, got inf",
    ),
    (
        "threshold fractional",
        {**TCP, "failure_threshold": 1.5},
        " (cache): failure_threshold: must be a whole number, got 1.5",
    ),
    (
        "threshold zero",
        {**TCP, "success_threshold": 0},
        " (cache): success_threshold: must be between 1 and 1000, got 0",
    ),
    (
        "threshold too high",
        {**TCP, "failure_threshold": 1001},
        " (cache): failure_threshold: must be between 1 and 1000, got 1001",
    ),
    # http
    (
        "url missing",
        {"name": "web", "kind": "http"},
        " (web): url: missing; an http check needs one",
    ),
    (
        "url another scheme",
        {**HTTP, "url": "ftp://h/x"},
        " (web): url: must be an http:// or https:// URL; this one has another scheme or none",
    ),
    (
        "url without host",
        {**HTTP, "url": "http:///livez"},
        " (web): url: must be an http:// or https:// URL with a host name or address",
    ),
    (
        "url with spaces",
        {**HTTP, "url": "http://h/a b"},
        " (web): url: must be an http:// or https:// URL without whitespace or control characters",
    ),
    (
        "url bad port",
        {**HTTP, "url": "http://h:port/"},
        " (web): url: must be an http:// or https:// URL; this one is malformed (bad port or "
        "brackets)",
    ),
    (
        "url a number",
        {**HTTP, "url": 8000},
        " (web): url: must be an http:// or https:// URL, got a number",
    ),
    (
        "expect_status out of range",
        {**HTTP, "expect_status": 600},
        ' (web): expect_status: must be a status code (100-599) or a range "A-B" such as '
        '"200-399", got 600',
    ),
    (
        "expect_status not a range",
        {**HTTP, "expect_status": "2xx"},
        ' (web): expect_status: must be a status code (100-599) or a range "A-B" such as '
        "\"200-399\", got text '2xx'",
    ),
    (
        "expect_status reversed",
        {**HTTP, "expect_status": "400-200"},
        " (web): expect_status: the range starts at 400, above its end 200",
    ),
    (
        "expect_status boolean",
        {**HTTP, "expect_status": True},
        ' (web): expect_status: must be a status code (100-599) or a range "A-B" such as '
        '"200-399", got a boolean (true)',
    ),
    # tcp
    (
        "host missing",
        {"name": "cache", "kind": "tcp", "port": 1},
        " (cache): host: missing; a tcp check needs one",
    ),
    (
        "host with a space",
        {**TCP, "host": "a b"},
        " (cache): host: must be a host name or address, got text 'a b'",
    ),
    (
        "host with a control character",
        {**TCP, "host": "a\x01b"},
        " (cache): host: must be a host name or address, got text 'a\\x01b'",
    ),
    (
        "host with an empty label",
        {**TCP, "host": "a..b"},
        " (cache): host: must be a host name or address, got text 'a..b'",
    ),
    (
        "host empty",
        {**TCP, "host": ""},
        " (cache): host: must be a host name or address, got empty text",
    ),
    ("port zero", {**TCP, "port": 0}, " (cache): port: must be a port between 1 and 65535, got 0"),
    (
        "port too high",
        {**TCP, "port": 65536},
        " (cache): port: must be a port between 1 and 65535, got 65536",
    ),
    (
        "port quoted",
        {**TCP, "port": "6379"},
        " (cache): port: must be a port between 1 and 65535, got text '6379'",
    ),
    # postgres
    (
        "primary and replica",
        {**PG, "require_primary": True, "allow_replica": True},
        " (db): allow_replica: contradicts require_primary: true; set only one of them",
    ),
    (
        "lag without allow_replica",
        {**PG, "max_replica_lag_seconds": 30},
        " (db): max_replica_lag_seconds: only valid with allow_replica: true",
    ),
    (
        "lag with allow_replica false",
        {**PG, "allow_replica": False, "max_replica_lag_seconds": 30},
        " (db): max_replica_lag_seconds: only valid with allow_replica: true",
    ),
    (
        "lag zero",
        {**PG, "allow_replica": True, "max_replica_lag_seconds": 0},
        " (db): max_replica_lag_seconds: must be greater than 0 and at most 86400, got 0",
    ),
    (
        "boolean quoted",
        {**PG, "require_primary": "true"},
        " (db): require_primary: must be true or false, got text 'true'",
    ),
    (
        "boolean as number",
        {**PG, "allow_replica": 1},
        " (db): allow_replica: must be true or false, got 1",
    ),
    ("expect without query", {**PG, "expect": "1"}, " (db): expect: only valid with query"),
    (
        "expect not text",
        {**PG, "query": "SELECT true", "expect": True},
        ' (db): expect: must be text (quote it: expect: "..."), got a boolean (true)',
    ),
    (
        "query empty",
        {**PG, "query": "  "},
        " (db): query: must be an SQL query as text, got empty text",
    ),
    (
        "query a list",
        {**PG, "query": ["SELECT 1"]},
        " (db): query: must be an SQL query as text, got a list",
    ),
    (
        "revision a number",
        {**PG, "alembic_revision": 123456},
        " (db): alembic_revision: must be a revision id as text, or a list of them (quote one "
        "that looks like a number), got 123456",
    ),
    (
        "revision list empty",
        {**PG, "alembic_revision": []},
        " (db): alembic_revision: must be a revision id as text, or a list of them (quote one "
        "that looks like a number), got an empty list",
    ),
    (
        "revision list with an empty one",
        {**PG, "alembic_revision": ["abc", ""]},
        " (db): alembic_revision[1]: must be a revision id as text, or a list of them (quote "
        "one that looks like a number), got empty text",
    ),
    (
        "dsn and dsn_file",
        {**PG, "dsn": "postgresql://h/db", "dsn_file": "/x"},
        " (db): dsn_file: set together with dsn; set only one",
    ),
    (
        "dsn another scheme",
        {**PG, "dsn": "mysql://h/db"},
        " (db): dsn: scheme 'mysql' is not supported; use postgresql:// or postgres://",
    ),
    (
        "dsn with a percent-encoded password key",
        {**PG, "dsn": f"postgresql://app@db/x?%70assword={SECRET}"},
        " (db): dsn: holds a password, and a ConfigMap is not a Secret: put the DSN in a "
        "mounted Secret and name that file with dsn_file",
    ),
    (
        "dsn a number",
        {**PG, "dsn": 5432},
        " (db): dsn: must be a postgresql:// URL as text, got a number",
    ),
    (
        "dsn_file empty",
        {**PG, "dsn_file": ""},
        " (db): dsn_file: must be a file path, got empty text",
    ),
    (
        "dsn_file missing",
        {**PG, "dsn_file": "/nonexistent/dsn"},
        " (db): dsn_file: file '/nonexistent/dsn' does not exist",
    ),
    (
        "ca_file missing",
        {**PG, "ca_file": "/nonexistent/ca.crt"},
        " (db): ca_file: file '/nonexistent/ca.crt' does not exist",
    ),
    (
        "ca_file not text",
        {**PG, "ca_file": True},
        " (db): ca_file: must be a file path, got a boolean (true)",
    ),
]


@pytest.mark.parametrize(
    ("check", "line"),
    [pytest.param(check, line, id=name) for name, check, line in REFUSALS],
)
def test_each_refusal_is_one_exact_line_naming_the_key(check: Doc, line: str) -> None:
    """A bad check gives exactly one line: the file, the check's index and name, and the key
    that differs from a good check of its kind."""
    specs, problems = parse(with_check(check))
    assert problems == [f"{P}: checks[1]{line}"]
    assert [spec.name for spec in specs] == ["first"]  # the refused check is not built
    problem = problems[0]
    base = {"postgres": PG, "http": HTTP}.get(check.get("kind", ""), TCP)
    changed = {k for k in check if k not in base or base[k] != check[k]}
    changed |= {k for k in base if k not in check}
    forms = [(f": {k}: ", f": {k}[", f"key {k!r}") for k in changed]
    assert any(form in problem for key_forms in forms for form in key_forms), changed


def test_tls_files_must_come_in_pairs(files: dict[str, str]) -> None:
    """cert_file without key_file is refused, and key_file without cert_file."""
    assert only_problem(with_check({**PG, "cert_file": files["crt"]})) == (
        f"{P}: checks[1] (db): cert_file: needs key_file too (the client certificate's private key)"
    )
    assert only_problem(with_check({**PG, "key_file": files["key"]})) == (
        f"{P}: checks[1] (db): key_file: needs cert_file too (the client certificate)"
    )


def test_tls_file_that_is_a_directory_or_under_a_file_is_refused(tmp_path: Path) -> None:
    """A TLS path that names a directory, or goes through a file, cannot be opened: refused."""
    (tmp_path / "plain").write_text("x")
    assert only_problem(with_check({**PG, "ca_file": str(tmp_path)})) == (
        f"{P}: checks[1] (db): ca_file: file {str(tmp_path)!r} is a directory, not a file"
    )
    under = str(tmp_path / "plain" / "ca.crt")
    assert only_problem(with_check({**PG, "ca_file": under})) == (
        f"{P}: checks[1] (db): ca_file: file {under!r} cannot be read (Not a directory)"
    )


def test_duplicate_names_are_refused_naming_the_first() -> None:
    """A second check with a taken name is refused, pointing at the first one."""
    document = {"checks": [TCP, {**HTTP, "name": "other"}, {**HTTP, "name": "cache"}]}
    assert only_problem(document) == f"{P}: checks[2] (cache): name: already used by checks[0]"


@pytest.mark.parametrize(
    ("document", "line"),
    [
        (None, "the file is empty; it must hold a 'checks' list"),
        ([TCP], "must be a mapping with a 'checks' list, got a list"),
        ({"checks": [TCP], "check": []}, "unknown key 'check'; allowed: checks, defaults"),
        ({}, "checks: missing; list at least one check"),
        ({"checks": []}, "checks: must list at least one check, got an empty list"),
        ({"checks": TCP}, "checks: must be a list of checks, got a mapping"),
        ({"checks": ["cache"]}, "checks[0]: must be a mapping, got text 'cache'"),
        ({"checks": [TCP], "defaults": [1]}, "defaults: must be a mapping, got a list"),
        (
            {"checks": [TCP], "defaults": {"name": "x"}},
            "defaults: unknown key 'name'; allowed: backoff_max_seconds, failure_threshold, "
            "interval_seconds, success_threshold, timeout_seconds",
        ),
        (
            {"checks": [TCP], "defaults": {"interval_seconds": 3601}},
            "defaults: interval_seconds: must be greater than 0 and at most 3600, got 3601",
        ),
    ],
)
def test_bad_document_shape_is_one_exact_line(document: object, line: str) -> None:
    """The top level: a mapping of `checks` (a non-empty list) and optional `defaults`."""
    assert only_problem(document) == f"{P}: {line}"


def test_all_problems_are_reported_at_once() -> None:
    """Problems in several checks and keys are all listed, in file order, and no spec is built."""
    specs, problems = parse(
        {
            "defaults": {"timeout_seconds": "2"},
            "checks": [
                {**TCP, "port": 0, "host": ""},
                {**PG, "max_replica_lag_seconds": 5},
                {**HTTP, "url": "ftp://x/"},
                HTTP,
                {**TCP, "name": "fine"},
            ],
        }
    )
    assert [spec.name for spec in specs] == ["fine"]  # only a check without a problem
    assert [p.split(": ")[1:3] for p in problems] == [
        ["defaults", "timeout_seconds"],
        ["checks[0] (cache)", "host"],
        ["checks[0] (cache)", "port"],
        ["checks[1] (db)", "max_replica_lag_seconds"],
        ["checks[2] (web)", "url"],
        ["checks[3] (web)", "name"],
    ]


# ---- never a DSN or a password ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("check", "key"),
    [
        ({**PG, "dsn": f"postgresql://app:{SECRET}@db/x"}, "dsn"),
        ({**PG, "dsn": f"postgresql://app@db/x?sslmode=require&password={SECRET}"}, "dsn"),
        ({**PG, "dsn": f"postgresql://app@db/x?sslmode=require&pass%77ord={SECRET}"}, "dsn"),
        ({**PG, "dsn": f"mysql://app:{SECRET}@db/x"}, "dsn"),
        ({**PG, "dsn": f"postgresql://app:{SECRET}@db:port/x"}, "dsn"),
        ({**PG, "dsn_file": f"postgresql://app:{SECRET}@db/x"}, "dsn_file"),
        ({**PG, "dsn_file": f"app:{SECRET}@db/x"}, "dsn_file"),
        ({**HTTP, "url": f"http://app:{SECRET}@127.0.0.1:8000/livez"}, "url"),
        ({**HTTP, "url": f"gopher://app:{SECRET}@h/"}, "url"),
        ({**HTTP, "url": f"http://h/?token={SECRET} x"}, "url"),
    ],
)
def test_refused_dsn_or_url_is_never_quoted(check: Doc, key: str) -> None:
    """A refused DSN, DSN path or URL is named by its key; the password never appears."""
    line = only_problem(with_check(check))
    assert line.startswith(f"{P}: checks[1] ({check['name']}): {key}: ")
    assert SECRET not in line


def test_inline_dsn_with_a_password_is_refused_pointing_at_dsn_file() -> None:
    """An inline DSN with a password is refused: a ConfigMap is not a Secret."""
    line = only_problem(with_check({**PG, "dsn": f"postgresql://app:{SECRET}@db/x"}))
    assert line == (
        f"{P}: checks[1] (db): dsn: holds a password, and a ConfigMap is not a Secret: put the "
        "DSN in a mounted Secret and name that file with dsn_file"
    )


# ---- the file itself -----------------------------------------------------------------------------


def write(tmp_path: Path, name: str, content: str | bytes) -> Path:
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    return path


@pytest.mark.parametrize(
    ("name", "content", "why"),
    [
        (
            "checks.json",
            '{"checks": []}',
            "has '.json'; name it .yaml, .yml (YAML) or .toml (TOML)",
        ),
        ("checks", "checks: []", "has no extension; name it .yaml, .yml (YAML) or .toml (TOML)"),
        ("checks.yaml", b"checks:\n  - name: \xff\n", "is not UTF-8 text"),
        (
            "checks.yaml",
            "# " + "x" * MAX_CHECK_FILE_BYTES,
            f"is larger than {MAX_CHECK_FILE_BYTES} bytes",
        ),
        (
            "checks.yaml",
            "checks:\n  - name: a\n    kind: tcp\n   host: h\n",
            "is not valid YAML: line 4, column 4: expected <block end>, but found '<block mapping "
            "start>'",
        ),
        (
            "checks.yaml",
            "checks:\n  - name: a\n    name: b\n",
            "is not valid YAML: line 3, column 5: duplicate key 'name'",
        ),
        ("checks.yaml", "checks: [" * 5000, "is not usable YAML: nested too deeply"),
        (
            "checks.yaml",
            "checks:\n  - name: a\x01\n",
            "is not valid YAML: line 2, column 12: control character '\\x01'",
        ),
        (
            "checks.yaml",
            "checks:\n  - {name: a, kind: tcp, host: h, port: 1" + "0" * 5000 + "}\n",
            "is not usable YAML: an integer has too many digits",
        ),
        (
            "checks.toml",
            "[[checks]]\nport = 1" + "0" * 5000 + "\n",
            "is not usable TOML: an integer has too many digits",
        ),
        (
            "checks.yaml",
            "a: !!python/name:os.system x\n",
            "is not valid YAML: line 1, column 4: could not determine a constructor for the tag "
            "'tag:yaml.org,2002:python/name:os.system'",
        ),
        (
            "checks.toml",
            '[[checks]]\nname = "a"\nkind = tcp\n',
            "is not valid TOML: Invalid value (at line 3, column 8)",
        ),
        (
            "checks.toml",
            '[[checks]]\nname = "a"\nname = "b"\n',
            "is not valid TOML: Cannot overwrite a value (at line 3, column 11)",
        ),
    ],
)
def test_unusable_file_is_one_line(
    tmp_path: Path, name: str, content: str | bytes, why: str
) -> None:
    """A wrong extension, bad encoding, huge file or syntax error: one line with the position."""
    path = write(tmp_path, name, content)
    assert load(path) == ((), [f"{P}: file {str(path)!r} {why}"])


def test_missing_or_directory_file_is_one_line(tmp_path: Path) -> None:
    """A missing check file, or a directory in its place, is one line naming the path."""
    missing = tmp_path / "nope.yaml"
    assert load(missing)[1] == [f"{P}: file {str(missing)!r} does not exist"]
    folder = tmp_path / "dir.toml"
    folder.mkdir()
    assert load(folder)[1] == [f"{P}: file {str(folder)!r} is a directory, not a file"]


def test_syntax_error_never_dumps_the_file(tmp_path: Path) -> None:
    """A YAML syntax error near a DSN gives its position, not the surrounding lines."""
    path = write(
        tmp_path,
        "c.yaml",
        f"checks:\n  - name: db\n    dsn: postgresql://u:{SECRET}@h/db\n   kind: [\n",
    )
    ((), (line,)) = load(path)
    assert line.startswith(f"{P}: file {str(path)!r} is not valid YAML: line 4, column ")
    assert SECRET not in line


def test_empty_file_and_byte_order_mark(tmp_path: Path) -> None:
    """An empty file says so; an editor's UTF-8 byte order mark is not an error."""
    assert load(write(tmp_path, "e.yaml", ""))[1] == [
        f"{P}: the file is empty; it must hold a 'checks' list"
    ]
    bom_yaml = "\ufeffchecks:\n  - {name: c, kind: tcp, host: h, port: 1}\n"
    bom_toml = '\ufeff[[checks]]\nname = "c"\nkind = "tcp"\nhost = "h"\nport = 1\n'
    for name, text in (("b.yaml", bom_yaml), ("b.toml", bom_toml)):
        path = tmp_path / name
        path.write_bytes(text.encode("utf-8"))
        specs, problems = load(path)
        assert problems == []
        assert [spec.name for spec in specs] == ["c"]


@pytest.mark.parametrize("word", ["yes", "no", "on", "off", "Yes", "OFF"])
def test_yaml_reads_booleans_by_the_1_2_core_rules(tmp_path: Path, word: str) -> None:
    """Only true/false are booleans (YAML 1.2 core): `yes`, `on`, ... are text and refused
    where a boolean belongs; `"5"` is text and refused as a number."""
    path = write(
        tmp_path,
        "c.yaml",
        "checks:\n  - {name: db, kind: postgres, require_primary: "
        + word
        + ', interval_seconds: "5", allow_replica: FALSE}\n',
    )
    assert load(path)[1] == [
        f"{P}: checks[0] (db): interval_seconds: must be a number, got text '5'",
        f"{P}: checks[0] (db): require_primary: must be true or false, got text {word!r}",
    ]


# ---- settings and the real CLI -------------------------------------------------------------------


def test_settings_take_the_checks_of_the_file(tmp_path: Path, files: dict[str, str]) -> None:
    """With SIDECAR_CONFIG_FILE, Settings hold the file's checks, on SIDECAR_* timing."""
    path = write(tmp_path, "checks.yaml", YAML_FILE.format(**files))
    env = {
        P: f" {path} ",
        "SIDECAR_CHECK_INTERVAL": "7",
        "SIDECAR_CHECK_TIMEOUT": "3",
        "SIDECAR_BACKOFF_MAX": "40",
        "SIDECAR_FAILURE_THRESHOLD": "2",
        "SIDECAR_SUCCESS_THRESHOLD": "3",
        "PGHOST": "db.env",
        "PGPORT": "5432",
        "PGUSER": "env",
    }
    settings = Settings.from_environ(env)
    assert settings.config_file == str(path)
    assert settings.file_specs == settings.check_specs == expected_specs(files)


def test_file_problems_and_variable_problems_come_together(tmp_path: Path) -> None:
    """A bad variable and a bad check file are refused in one ConfigError, every line kept."""
    path = write(tmp_path, "c.toml", '[[checks]]\nname = "c"\nkind = "tcp"\nhost = "h"\nport = 0\n')
    with pytest.raises(ConfigError) as caught:
        Settings.from_environ({P: str(path), "SIDECAR_PORT": "x"})
    assert caught.value.problems == [
        "SIDECAR_PORT: not a whole number: 'x'",
        f"{P}: checks[0] (c): port: must be a port between 1 and 65535, got 0",
    ]


CLI = [sys.executable, "-m", "sidecar"]


def run_cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("SIDECAR_", "PG"))}
    return subprocess.run(
        [*CLI, *args],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


BAD_FILE = f"""\
checks:
  - name: primary
    kind: postgres
    dsn: postgresql://app:{SECRET}@db/app
  - name: replica
    kind: postgres
    max_replica_lag_seconds: 30
  - name: app
    kind: http
    url: http://u:{SECRET}@127.0.0.1/
    expect_status: 99
"""


@pytest.mark.parametrize(
    ("via", "named"),
    [("flag", f"{P} (--config-file)"), ("variable", P)],
)
def test_cli_refuses_a_bad_file_with_one_line_per_problem(
    tmp_path: Path, via: str, named: str
) -> None:
    """Through `python -m sidecar`: exit 2, one `bad setting` line per problem, no secret."""
    path = write(tmp_path, "bad.yaml", BAD_FILE)
    args, env = (["--config-file", str(path)], {}) if via == "flag" else ([], {P: str(path)})
    result = run_cli(args, env)
    assert result.returncode == 2
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    assert SECRET not in result.stderr
    prefix = f"health-sidecar: bad setting: {named}: "
    assert result.stderr.splitlines() == [
        prefix + "checks[0] (primary): dsn: holds a password, and a ConfigMap is not a Secret: "
        "put the DSN in a mounted Secret and name that file with dsn_file",
        prefix
        + "checks[1] (replica): max_replica_lag_seconds: only valid with allow_replica: true",
        prefix + "checks[2] (app): url: must not hold user:password@: the check file is not a "
        "Secret (serve the probe path without authentication)",
        prefix + 'checks[2] (app): expect_status: must be a status code (100-599) or a range "A-B" '
        'such as "200-399", got 99',
    ]


def test_cli_starts_with_a_good_file_and_logs_its_checks(
    tmp_path: Path, files: dict[str, str]
) -> None:
    """`--config-file` with good checks: the sidecar starts, serves /health, logs the check
    names, kinds and effective timings in sidecar.starting, and redacts the DSN file's
    password from its logs."""
    # The check file sits in a directory named like that password: the logged `config_file`
    # then carries it, which shows that the checks' secrets reach the redactor at start.
    (tmp_path / SECRET).mkdir()
    path = write(
        tmp_path / SECRET,
        "checks.toml",
        f"""\
[[checks]]
name = "primary"
kind = "postgres"
dsn_file = "{files["dsn"]}"
timeout_seconds = 0.5

[[checks]]
name = "cache"
kind = "tcp"
host = "127.0.0.1"
port = 1
criticality = "warn"
""",
    )
    env = {"SIDECAR_CHECK_TIMEOUT": "3"}
    with SidecarProcess(env, args=["--config-file", str(path)], log_dir=tmp_path) as sidecar:
        sidecar.wait_listening()
        assert sidecar.get("/health").status == 200
        (starting,) = sidecar.events("sidecar.starting")
        assert starting["config_file"] == str(path).replace(SECRET, REDACTED)
        shown = ("name", "kind", "critical", "timeout_seconds")
        assert [{key: check[key] for key in shown} for check in starting["checks"]] == [
            # Each check's effective timing: its own key, else the environment's.
            {"name": "primary", "kind": "postgres", "critical": True, "timeout_seconds": 0.5},
            {"name": "cache", "kind": "tcp", "critical": False, "timeout_seconds": 3.0},
        ]
        assert "check_timeout" not in starting  # not the environment's alone
    assert SECRET not in sidecar.log_text()
    assert "Traceback" not in sidecar.log_text()


# ---- the documented examples ---------------------------------------------------------------------

EXAMPLES = REPO / "docs" / "examples"
FILE_KEYS = ("dsn_file", "ca_file", "cert_file", "key_file")


def read_example(path: Path) -> object:
    if path.suffix == ".toml":
        return tomllib.loads(path.read_text())
    return yaml.safe_load(path.read_text())


def with_local_files(document: object, files: dict[str, str]) -> tuple[object, int]:
    """The example with each mounted file's path pointing at a local one instead."""
    local = {"dsn_file": files["dsn"], "ca_file": files["ca"], "cert_file": files["crt"]}
    local["key_file"] = files["key"]
    rewritten = 0
    assert isinstance(document, dict)
    for check in document.get("checks", []):
        for key in FILE_KEYS:
            if key in check:
                check[key] = local[key]
                rewritten += 1
    return document, rewritten


@pytest.mark.parametrize("name", ["checks.yaml", "checks.toml"])
def test_documented_example_loads_without_problems(name: str, files: dict[str, str]) -> None:
    """docs/examples: every check loads once its mounted files exist (paths made local)."""
    path = EXAMPLES / name
    document, rewritten = with_local_files(read_example(path), files)
    specs, problems = parse(document)
    assert problems == []
    assert [spec.kind for spec in specs] == ["postgres", "postgres", "http", "tcp"]
    # As shipped, the only problems are the mounted files this machine does not have.
    _, as_shipped = load(path)
    assert len(as_shipped) == rewritten, as_shipped
    for problem in as_shipped:
        assert any(f": {key}: file " in problem for key in FILE_KEYS), problem
        assert problem.endswith("does not exist"), problem


def test_documented_examples_agree(files: dict[str, str]) -> None:
    """docs/examples/checks.yaml and checks.toml describe the same checks."""
    specs: list[tuple[CheckSpec, ...]] = []
    for name in ("checks.yaml", "checks.toml"):
        document, _ = with_local_files(read_example(EXAMPLES / name), files)
        specs.append(parse(document)[0])
    assert specs[0] == specs[1]
