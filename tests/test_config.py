"""Settings: defaults, parsing, and every refusal named at once."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from sidecar.checks.postgres import PostgresSpec
from sidecar.config import ConfigError, Settings


def problems_for(env: dict[str, str], *, database: bool = True) -> list[str]:
    """The problem lines for `env`; with `database`, on top of a PGHOST (a database given)."""
    with pytest.raises(ConfigError) as caught:
        Settings.from_environ({"PGHOST": "db", **env} if database else env)
    return caught.value.problems


def test_defaults_match_the_contract() -> None:
    """An environment naming only the database host gives the documented defaults."""
    s = Settings.from_environ({"PGHOST": "db"})
    assert (s.host, s.port) == ("::", 8081)  # every address family, the documented default
    assert (s.policy.interval, s.policy.timeout, s.policy.backoff_max) == (5.0, 2.0, 30.0)
    assert (s.policy.failure_threshold, s.policy.success_threshold, s.drain_seconds) == (1, 1, 5.0)
    assert (s.log_level, s.log_format) == ("info", "json")
    assert s.database.dsn is None
    assert s.database.source == "libpq"
    assert s.policy.freshness_seconds == 14.0


def test_no_database_at_all_is_refused_naming_the_three_ways() -> None:
    """Without a DSN, a DSN file or PGHOST the sidecar could never be ready: one line says so."""
    (line,) = problems_for({"PGUSER": "app", "PGDATABASE": "x"}, database=False)
    for way in ("SIDECAR_DATABASE_URL", "SIDECAR_DATABASE_URL_FILE", "PGHOST"):
        assert way in line


def test_check_file_whose_checks_need_no_environment_database_is_enough(tmp_path: Path) -> None:
    """A check file with only tcp checks, or postgres checks with their own DSN, needs none."""
    path = tmp_path / "checks.yaml"
    path.write_text(
        "checks:\n"
        "  - {name: cache, kind: tcp, host: 127.0.0.1, port: 6379}\n"
        "  - {name: db, kind: postgres, dsn: 'postgresql://app@db/x'}\n"
    )
    settings = Settings.from_environ({"SIDECAR_CONFIG_FILE": str(path)})
    assert len(settings.file_specs) == 2
    assert not settings.uses_environment_database
    path.write_text("checks:\n  - {name: db, kind: postgres}\n")
    assert Settings.from_environ(
        {"SIDECAR_CONFIG_FILE": str(path), "PGHOST": "db"}
    ).uses_environment_database
    assert Settings.from_environ({"PGHOST": "db"}).uses_environment_database
    (line,) = problems_for({"SIDECAR_CONFIG_FILE": str(path)}, database=False)
    assert "no database given" in line


def test_every_setting_is_read() -> None:
    """Each SIDECAR_ variable lands in its field, parsed."""
    s = Settings.from_environ(
        {
            "SIDECAR_DATABASE_URL": "postgres://u:p@db:5432/app",
            "SIDECAR_HOST": "127.0.0.1",
            "SIDECAR_PORT": "9000",
            "SIDECAR_CHECK_INTERVAL": "1.5",
            "SIDECAR_CHECK_TIMEOUT": "0.5",
            "SIDECAR_BACKOFF_MAX": "10",
            "SIDECAR_FAILURE_THRESHOLD": "3",
            "SIDECAR_SUCCESS_THRESHOLD": "2",
            "SIDECAR_DRAIN_SECONDS": "0",
            "SIDECAR_LOG_LEVEL": "DEBUG",
            "SIDECAR_LOG_FORMAT": "console",
        }
    )
    assert s.database.dsn == "postgres://u:p@db:5432/app"
    assert (s.host, s.port, s.policy.interval, s.policy.timeout) == ("127.0.0.1", 9000, 1.5, 0.5)
    assert (s.policy.backoff_max, s.policy.failure_threshold, s.policy.success_threshold) == (
        10.0,
        3,
        2,
    )
    assert (s.drain_seconds, s.log_level, s.log_format) == (0.0, "debug", "console")


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("SIDECAR_PORT", "abc"),
        ("SIDECAR_PORT", "0"),
        ("SIDECAR_PORT", "65536"),
        ("SIDECAR_CHECK_INTERVAL", "soon"),
        ("SIDECAR_CHECK_INTERVAL", "0"),
        ("SIDECAR_CHECK_INTERVAL", "nan"),
        ("SIDECAR_CHECK_TIMEOUT", "-1"),
        ("SIDECAR_CHECK_TIMEOUT", "inf"),
        ("SIDECAR_BACKOFF_MAX", "0"),
        ("SIDECAR_FAILURE_THRESHOLD", "0"),
        ("SIDECAR_FAILURE_THRESHOLD", "1.5"),
        ("SIDECAR_SUCCESS_THRESHOLD", "x"),
        ("SIDECAR_DRAIN_SECONDS", "-0.1"),
        ("SIDECAR_LOG_LEVEL", "loud"),
        ("SIDECAR_LOG_FORMAT", "xml"),
        ("SIDECAR_HOST", "a b"),
        ("SIDECAR_HOST", "a\x01b"),
        ("PGPORT", "five"),
        ("SIDECAR_DATABASE_URL", "mysql://u:p@h/db"),
        ("SIDECAR_DATABASE_URL", "just-a-string"),
        ("SIDECAR_DATABASE_URL", "postgresql://u:p@h:notaport/db"),
    ],
)
def test_bad_value_is_refused_naming_the_variable(name: str, value: str) -> None:
    """A bad value gives exactly one problem, and it starts with the variable's name."""
    problems = problems_for({name: value})
    assert len(problems) == 1
    assert problems[0].startswith(f"{name}: ")


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("SIDECAR_PORT", "8_081"),
        ("SIDECAR_PORT", "\u0668\u0660\u0668\u0661"),  # 8081 in Arabic-Indic digits
        ("SIDECAR_CHECK_INTERVAL", "\uff11"),  # a fullwidth 1
        ("SIDECAR_FAILURE_THRESHOLD", "1_0"),
    ],
)
def test_python_only_number_spellings_are_refused(name: str, value: str) -> None:
    """Underscores and non-ASCII digits, which Python's int() and float() take, are no number
    to anyone else reading the manifest: refused, not read as 8081 or 10."""
    (problem,) = problems_for({name: value})
    assert problem.startswith(f"{name}: not a "), problem


def test_a_huge_refused_value_is_quoted_cut() -> None:
    """A refused value is quoted in its line at most 80 characters long, then '...'."""
    (problem,) = problems_for({"SIDECAR_HOST": "h" * 100_000})
    assert problem == f"SIDECAR_HOST: not a host name or address: {'h' * 80!r}..."


def test_all_problems_are_reported_at_once() -> None:
    """Three bad settings give three problems, not the first one only."""
    problems = problems_for(
        {"SIDECAR_PORT": "x", "SIDECAR_CHECK_TIMEOUT": "0", "SIDECAR_LOG_FORMAT": "yaml"}
    )
    assert sorted(p.split(":")[0] for p in problems) == [
        "SIDECAR_CHECK_TIMEOUT",
        "SIDECAR_LOG_FORMAT",
        "SIDECAR_PORT",
    ]


def test_refused_dsn_is_never_quoted() -> None:
    """A refused DSN's message names the scheme but never repeats the password."""
    (problem,) = problems_for({"SIDECAR_DATABASE_URL": "mysql://app:hunter2secret@db/x"})
    assert "mysql" in problem
    assert "hunter2secret" not in problem


@pytest.mark.parametrize("char", [" ", "\n", "\x01", "\x7f"])
def test_dsn_with_whitespace_or_a_control_character_is_refused(char: str) -> None:
    """Whitespace, a C0 control or DEL in a DSN is refused at start, the DSN never quoted."""
    (problem,) = problems_for({"SIDECAR_DATABASE_URL": f"postgresql://u:pw@db{char}x/app"})
    assert problem == "SIDECAR_DATABASE_URL: contains whitespace or control characters"


def test_url_and_url_file_together_are_refused(tmp_path: Path) -> None:
    """Setting both DSN sources is ambiguous and refused."""
    dsn_file = tmp_path / "dsn"
    dsn_file.write_text("postgresql://u:p@h/db\n")
    (problem,) = problems_for(
        {
            "SIDECAR_DATABASE_URL": "postgresql://u:p@h/db",
            "SIDECAR_DATABASE_URL_FILE": str(dsn_file),
        }
    )
    assert problem.startswith("SIDECAR_DATABASE_URL_FILE: ")
    assert "only one" in problem


def test_dsn_file_is_read_and_stripped(tmp_path: Path) -> None:
    """The DSN file's content, without the trailing newline, becomes the DSN."""
    dsn_file = tmp_path / "dsn"
    dsn_file.write_text("postgresql://u:p%40ss@h:5433/db\n")
    s = Settings.from_environ({"SIDECAR_DATABASE_URL_FILE": str(dsn_file)})
    assert s.database.dsn == "postgresql://u:p%40ss@h:5433/db"
    assert s.database.source == "SIDECAR_DATABASE_URL_FILE"


def test_dsn_file_with_a_byte_order_mark_is_read(tmp_path: Path) -> None:
    """A DSN file saved by a Windows editor (a byte order mark, CRLF) gives the same DSN; the
    invisible mark was refused as an unsupported scheme."""
    dsn_file = tmp_path / "dsn"
    dsn_file.write_bytes(b"\xef\xbb\xbfpostgresql://u:p%40ss@h:5433/db\r\n")
    s = Settings.from_environ({"SIDECAR_DATABASE_URL_FILE": str(dsn_file)})
    assert s.database.dsn == "postgresql://u:p%40ss@h:5433/db"


def test_dsn_variable_with_a_byte_order_mark_is_read() -> None:
    """SIDECAR_DATABASE_URL from a Secret made of an editor's file (a byte order mark, CRLF)
    gives the same DSN, as the DSN file does."""
    s = Settings.from_environ({"SIDECAR_DATABASE_URL": "\ufeffpostgresql://u@h:5433/db\r\n"})
    assert s.database.dsn == "postgresql://u@h:5433/db"


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (None, "does not exist"),
        (b"", "is empty"),
        (b"\xff\xfe\x00", "not UTF-8"),
        (b"redis://h/0\n", "not supported"),
        (b"x" * 70_000, "larger than"),
        ("dir", "directory"),
    ],
)
def test_unusable_dsn_file_is_refused(
    tmp_path: Path, content: bytes | str | None, expected: str
) -> None:
    """A missing, empty, binary, wrong-scheme, huge or directory DSN file is refused."""
    path = tmp_path / "dsn"
    if content == "dir":
        path.mkdir()
    elif isinstance(content, bytes):
        path.write_bytes(content)
    (problem,) = problems_for({"SIDECAR_DATABASE_URL_FILE": str(path)})
    assert problem.startswith("SIDECAR_DATABASE_URL_FILE: ")
    assert expected in problem


def test_libpq_variables_are_used_without_a_dsn() -> None:
    """With no DSN, PGHOST/PGPORT/PGUSER/PGPASSWORD/PGDATABASE describe the target."""
    s = Settings.from_environ(
        {"PGHOST": "db", "PGPORT": "6432", "PGUSER": "app", "PGPASSWORD": " pw ", "PGDATABASE": "x"}
    )
    db = s.database
    assert (db.host, db.port, db.user, db.password, db.database) == ("db", 6432, "app", " pw ", "x")


def test_secrets_stay_out_of_repr_and_are_listed_for_redaction() -> None:
    """repr() never shows the DSN or password; secrets() lists both forms of it."""
    s = Settings.from_environ({"SIDECAR_DATABASE_URL": "postgresql://u:p%40ssw0rd@h/db"})
    assert "p%40ssw0rd" not in repr(s)
    assert "p@ssw0rd" in s.database.secrets()
    assert "p%40ssw0rd" in s.database.secrets()
    libpq = Settings.from_environ({"PGHOST": "db", "PGPASSWORD": "libpq-secret"})
    assert "libpq-secret" not in repr(libpq)
    assert libpq.database.secrets() == ("libpq-secret",)


def test_without_a_check_file_there_is_one_postgres_check() -> None:
    """No SIDECAR_CONFIG_FILE: one check named `postgres` on the environment's target."""
    s = Settings.from_environ({"SIDECAR_DATABASE_URL": "postgresql://u:p@h/db", "PGPORT": ""})
    assert (s.file_specs, s.config_file) == ((), None)
    assert s.check_specs == (PostgresSpec(name="postgres", policy=s.policy, target=s.database),)
    blank = Settings.from_environ({"PGHOST": "db", "SIDECAR_CONFIG_FILE": "   "})
    assert (blank.file_specs, blank.config_file) == ((), None)


def test_check_file_replaces_the_single_check(tmp_path: Path) -> None:
    """With SIDECAR_CONFIG_FILE the file's checks are the checks; no DB variable is needed
    when none of them is a postgres check using the environment's target."""
    path = tmp_path / "checks.toml"
    path.write_text(
        '[[checks]]\nname = "cache"\nkind = "tcp"\nhost = "127.0.0.1"\nport = 6379\n'
        '[[checks]]\nname = "app"\nkind = "http"\nurl = "http://127.0.0.1:8000/livez"\n'
    )
    s = Settings.from_environ({"SIDECAR_CONFIG_FILE": str(path), "SIDECAR_CHECK_INTERVAL": "9"})
    assert s.config_file == str(path)
    assert [(c.name, c.kind) for c in s.check_specs] == [("cache", "tcp"), ("app", "http")]
    assert s.file_specs == s.check_specs
    assert {c.policy for c in s.file_specs} == {s.policy}
    assert s.policy.interval == 9.0


def test_bad_database_variable_is_refused_even_with_a_check_file(tmp_path: Path) -> None:
    """A set but bad SIDECAR_DATABASE_URL is still a bad setting when a check file is used."""
    path = tmp_path / "checks.yaml"
    path.write_text("checks:\n  - {name: cache, kind: tcp, host: h, port: 1}\n")
    (problem,) = problems_for(
        {"SIDECAR_CONFIG_FILE": str(path), "SIDECAR_DATABASE_URL": "mysql://u:pw@h/db"}
    )
    assert problem.startswith("SIDECAR_DATABASE_URL: ")


def test_missing_check_file_is_refused_naming_the_variable(tmp_path: Path) -> None:
    """A check file that is not there is one problem naming SIDECAR_CONFIG_FILE."""
    path = tmp_path / "nope.yaml"
    assert problems_for({"SIDECAR_CONFIG_FILE": str(path)}) == [
        f"SIDECAR_CONFIG_FILE: file {str(path)!r} does not exist"
    ]


UNPRIVILEGED = 65532  # the image's USER; root reads a file whatever its mode


@contextlib.contextmanager
def running_as(uid: int, gid: int) -> Iterator[None]:
    """This process's effective uid/gid (and no supplementary groups) for the block."""
    groups = os.getgroups()
    os.setgroups([])
    os.setegid(gid)
    os.seteuid(uid)
    try:
        yield
    finally:
        os.seteuid(0)
        os.setegid(0)
        os.setgroups(groups)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to read a file as another uid")
def test_unreadable_dsn_file_says_why_and_what_to_set() -> None:
    """A root-owned 0440 DSN file (a Secret volume without fsGroup) read as uid 65532 is
    refused in one line naming the setting, the file's mode and owner, defaultMode and fsGroup."""
    # Not tmp_path: pytest's base directory is root's alone, so the uid could not even reach it.
    with tempfile.TemporaryDirectory(prefix="hs-unreadable-") as directory:
        Path(directory).chmod(0o755)
        dsn_file = Path(directory) / "url"
        dsn_file.write_text("postgresql://health:secretpw@db/app\n")
        dsn_file.chmod(0o440)
        with running_as(UNPRIVILEGED, UNPRIVILEGED), pytest.raises(ConfigError) as refused:
            Settings.from_environ({"SIDECAR_DATABASE_URL_FILE": str(dsn_file)})
    (line,) = refused.value.problems
    assert line.startswith("SIDECAR_DATABASE_URL_FILE: ")
    assert "permission denied" in line
    assert "mode 0440, owner 0:0" in line
    assert f"this process {UNPRIVILEGED}:{UNPRIVILEGED}" in line
    assert "defaultMode 0444" in line
    assert "fsGroup" in line
    assert "secretpw" not in line
