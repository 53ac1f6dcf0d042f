"""The DSN as people write it: an app's SQLAlchemy URL, typos in sslmode, TLS files that are not
there. Accepted as the same DSN, or refused at start with one line naming the key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from sidecar_proc import SidecarProcess
from support.pg import PostgresCheckFactory, PostgresServer

from sidecar.checks.postgres import PostgresSpec
from sidecar.config import ConfigError, Settings
from sidecar.credentials import DsnFile
from sidecar.reasons import CheckFailed, Reason

DRIVERS = ["postgresql+asyncpg", "postgresql+psycopg", "postgresql+psycopg2", "postgres+asyncpg"]
SECRET = "Zq8-dsn-forms-secret"


def problems_for(env: dict[str, str]) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        Settings.from_environ(env)
    return caught.value.problems


def with_scheme(dsn: str, scheme: str) -> str:
    return scheme + dsn[dsn.index("://") :]


def run_cli(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sidecar"],
        env={"PATH": "/usr/bin:/bin", **env},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


# ---- driver suffixes ---------------------------------------------------------------------------


@pytest.mark.parametrize("scheme", DRIVERS)
def test_driver_suffixed_url_is_accepted_wherever_a_dsn_is(scheme: str, tmp_path: Path) -> None:
    """postgresql+asyncpg:// and kin pass as SIDECAR_DATABASE_URL, its _FILE, dsn and dsn_file."""
    dsn = f"{scheme}://app:{SECRET}@db.example:5432/app"
    assert Settings.from_environ({"SIDECAR_DATABASE_URL": dsn}).database.dsn == dsn
    dsn_file = tmp_path / "dsn"
    dsn_file.write_text(dsn + "\n")
    assert Settings.from_environ({"SIDECAR_DATABASE_URL_FILE": str(dsn_file)}).database.dsn == dsn
    checks = tmp_path / "checks.yaml"
    checks.write_text(
        "checks:\n"
        f"  - {{name: inline, kind: postgres, dsn: '{scheme}://app@db.example/app'}}\n"
        f"  - {{name: file, kind: postgres, dsn_file: '{dsn_file}'}}\n"
    )
    specs = Settings.from_environ({"SIDECAR_CONFIG_FILE": str(checks)}).file_specs
    assert [s.target.dsn for s in specs if isinstance(s, PostgresSpec)] == [
        f"{scheme}://app@db.example/app",
        dsn,
    ]


@pytest.mark.parametrize("scheme", DRIVERS)
async def test_driver_suffixed_url_connects_as_the_plain_one(
    scheme: str, pg: PostgresServer, make_postgres_check: PostgresCheckFactory
) -> None:
    """A check given the app's postgresql+driver:// URL connects to the real server and passes."""
    check = make_postgres_check(with_scheme(pg.dsn(), scheme))
    await check.run()


def test_rotated_file_with_a_driver_suffix_is_a_candidate(tmp_path: Path) -> None:
    """A watched DSN file rotated to a postgresql+psycopg:// URL is offered, not refused."""
    path = tmp_path / "dsn"
    old = "postgresql://app:old@db.example/app"
    path.write_text(old)
    watcher = DsnFile(str(path), old)
    assert watcher.poll() is None
    new = "postgresql+psycopg://app:new@db.example/app"
    path.write_text(new)
    assert watcher.poll() == new
    assert watcher.reloads["invalid"] == 0


def test_app_url_runs_the_real_sidecar_and_says_so_once(pg: PostgresServer, tmp_path: Path) -> None:
    """The real process with a postgresql+asyncpg:// URL turns ready and logs the dropped driver
    once, at debug level, naming the driver and never the DSN."""
    with SidecarProcess(
        {"SIDECAR_DATABASE_URL": with_scheme(pg.dsn(), "postgresql+asyncpg")}, log_dir=tmp_path
    ) as sidecar:
        sidecar.wait_listening()
        sidecar.wait_event("check.state_changed", timeout=20)
        assert sidecar.get("/ready").status == 200
        [said] = sidecar.events("dsn.driver_dropped")
        assert (said["level"], said["driver"], said["source"]) == (
            "debug",
            "asyncpg",
            "SIDECAR_DATABASE_URL",
        )
        assert pg.password not in sidecar.log_text()


@pytest.mark.parametrize(
    ("scheme", "shown"),
    [("mysql+pymysql", "'mysql+pymysql'"), ("mssql", "'mssql'"), ("redis", "'redis'")],
)
def test_another_scheme_is_refused_by_name(scheme: str, shown: str) -> None:
    """A scheme that is no PostgreSQL one is refused naming it (it cannot be a secret)."""
    (problem,) = problems_for({"SIDECAR_DATABASE_URL": f"{scheme}://app:{SECRET}@h/db"})
    assert problem == (
        f"SIDECAR_DATABASE_URL: scheme {shown} is not supported; use postgresql:// or postgres://"
    )


def test_a_scheme_that_could_be_a_secret_is_not_quoted() -> None:
    """Text before :// that is no scheme (a password typed first) is never echoed."""
    (problem,) = problems_for({"SIDECAR_DATABASE_URL": f"app:{SECRET}://h/db"})
    assert SECRET not in problem
    assert "'" not in problem


# ---- special characters in the password --------------------------------------------------------


@pytest.mark.parametrize(
    "dsn",
    [
        f"postgresql://app:p@ss/w0rd{SECRET}@127.0.0.1:5432/postgres",
        f"postgresql://app:p@{SECRET}@127.0.0.1:5432/postgres",
        f"postgresql://app:/{SECRET}@127.0.0.1/postgres",
    ],
    ids=["raw @ and /", "raw @", "raw leading /"],
)
def test_raw_at_or_slash_in_the_password_is_refused_unquoted(dsn: str, tmp_path: Path) -> None:
    """libpq and Python read a raw @ or / in the password differently: refused, never quoted."""
    (problem,) = problems_for({"SIDECAR_DATABASE_URL": dsn})
    assert problem.startswith("SIDECAR_DATABASE_URL: an '@' or '/'")
    assert SECRET not in problem
    path = tmp_path / "dsn"
    path.write_text(dsn)
    (problem,) = problems_for({"SIDECAR_DATABASE_URL_FILE": str(path)})
    assert "percent-encoded" in problem
    assert SECRET not in problem


# ---- sslmode and TLS files ---------------------------------------------------------------------


def test_mistyped_sslmode_exits_2_with_one_line_and_a_guess() -> None:
    """sslmode=verfy-full is refused at start: exit 2, one line naming sslmode, a did-you-mean."""
    result = run_cli({"SIDECAR_DATABASE_URL": f"postgresql://app:{SECRET}@h/db?sslmode=verfy-full"})
    assert result.returncode == 2, result
    assert result.stderr.splitlines() == [
        "health-sidecar: bad setting: SIDECAR_DATABASE_URL: sslmode: 'verfy-full' is not one of "
        "disable, allow, prefer, require, verify-ca, verify-full; did you mean 'verify-full'?"
    ]


def test_bad_pgsslmode_is_refused_naming_it() -> None:
    """PGSSLMODE is checked as the DSN's sslmode is."""
    (problem,) = problems_for({"PGHOST": "db", "PGSSLMODE": "requre"})
    assert problem.startswith("PGSSLMODE: 'requre' is not one of")
    assert "did you mean 'require'?" in problem


@pytest.mark.parametrize("key", ["sslrootcert", "sslcert", "sslkey", "sslcrl"])
def test_missing_tls_file_in_the_dsn_is_refused_naming_the_key(key: str, tmp_path: Path) -> None:
    """A TLS file named in the DSN that does not exist is refused at start, naming the key."""
    missing = tmp_path / "nope.pem"
    dsn = f"postgresql://app:{SECRET}@h/db?sslmode=verify-full&{key}={missing}"
    (problem,) = problems_for({"SIDECAR_DATABASE_URL": dsn})
    assert problem == f"SIDECAR_DATABASE_URL: {key}: file '{missing}' does not exist"


def test_missing_tls_file_in_the_environment_is_refused(tmp_path: Path) -> None:
    """PGSSLROOTCERT naming a missing file is refused at start, naming the variable."""
    missing = tmp_path / "ca.pem"
    (problem,) = problems_for({"PGHOST": "db", "PGSSLROOTCERT": str(missing)})
    assert problem == f"PGSSLROOTCERT: file '{missing}' does not exist"


def test_bad_sslmode_in_a_check_file_dsn_is_refused(tmp_path: Path) -> None:
    """The check file's inline dsn gets the same sslmode check, naming the check and key."""
    checks = tmp_path / "checks.yaml"
    checks.write_text(
        "checks:\n  - {name: db, kind: postgres, dsn: 'postgresql://app@h/db?sslmode=on'}\n"
    )
    (problem,) = problems_for({"SIDECAR_CONFIG_FILE": str(checks)})
    assert "(db): dsn: sslmode: 'on' is not one of" in problem


def test_rotated_file_with_a_bad_sslmode_keeps_the_last_good_dsn(tmp_path: Path) -> None:
    """A rotation to a DSN with a mistyped sslmode is invalid: the old DSN stays, nothing tried."""
    path = tmp_path / "dsn"
    old = "postgresql://app:old@db.example/app"
    path.write_text(old)
    watcher = DsnFile(str(path), old)
    assert watcher.poll() is None
    path.write_text(f"postgresql://app:{SECRET}@db.example/app?sslmode=verfy-full")
    assert watcher.poll() is None
    assert watcher.reloads["invalid"] == 1
    assert not watcher.last_reload_ok
    assert watcher.current == old


async def test_asyncpg_dialect_ssl_parameter_is_read_as_sslmode(
    pg: PostgresServer, pg_tls: PostgresServer, make_postgres_check: PostgresCheckFactory
) -> None:
    """SQLAlchemy's postgresql+asyncpg://...?ssl=require means sslmode=require: it passes over
    TLS, fails as tls_error where the server has none, and ssl=disable connects in the clear."""
    asyncpg_url = with_scheme(pg_tls.dsn(), "postgresql+asyncpg")
    await make_postgres_check(f"{asyncpg_url}?ssl=require").run()
    assert True in pg_tls.ssl_in_use()
    no_tls = make_postgres_check(with_scheme(pg.dsn(), "postgresql+asyncpg") + "?ssl=require")
    with pytest.raises(CheckFailed) as failed:
        await no_tls.run()
    assert failed.value.reason is Reason.TLS_ERROR
    plain = with_scheme(pg.dsn(), "postgresql+asyncpg") + "?ssl=disable"
    await make_postgres_check(plain).run()


# ---- libpq parameters asyncpg does not know ----------------------------------------------------


def test_libpq_timing_parameters_in_the_app_url_still_turn_ready(
    pg: PostgresServer, tmp_path: Path
) -> None:
    """?connect_timeout=10&keepalives=1 (a psycopg app's URL) reaches no server as a setting:
    the real sidecar turns ready, where the server used to refuse every session (42704)."""
    dsn = with_scheme(pg.dsn(), "postgresql+psycopg2") + "?connect_timeout=10&keepalives=1"
    with SidecarProcess({"SIDECAR_DATABASE_URL": dsn}, log_dir=tmp_path) as sidecar:
        sidecar.wait_listening()
        sidecar.wait_event("check.state_changed", timeout=20)
        assert sidecar.get("/ready").status == 200
        assert pg.password not in sidecar.log_text()


@pytest.mark.parametrize("pair", ["channel_binding=require", "gssencmode=require", "hostaddr=::1"])
def test_libpq_parameter_asyncpg_cannot_honour_exits_2_naming_it(pair: str) -> None:
    """A libpq parameter that would change which connection is acceptable, and that asyncpg
    would send to the server as a setting, is refused at start: exit 2, one line, its name."""
    key = pair.partition("=")[0]
    result = run_cli({"SIDECAR_DATABASE_URL": f"postgresql://app:{SECRET}@h/db?{pair}"})
    assert result.returncode == 2, result
    [line] = result.stderr.splitlines()
    assert line.startswith(f"health-sidecar: bad setting: SIDECAR_DATABASE_URL: {key}: "), line
    assert SECRET not in result.stderr


def test_mistyped_target_session_attrs_exits_2_with_one_line() -> None:
    """target_session_attrs=read_write is refused at start naming the key and a guess, instead of
    a sidecar that never turns ready with a misleading tls_error."""
    dsn = f"postgresql://app:{SECRET}@h/db?target_session_attrs=read_write"
    result = run_cli({"SIDECAR_DATABASE_URL": dsn})
    assert result.returncode == 2, result
    assert result.stderr.splitlines() == [
        "health-sidecar: bad setting: SIDECAR_DATABASE_URL: target_session_attrs: 'read_write' "
        "is not one of any, primary, standby, prefer-standby, read-write, read-only; "
        "did you mean 'read-write'?"
    ]


def test_bad_pgtargetsessionattrs_is_refused_naming_it() -> None:
    """PGTARGETSESSIONATTRS is checked as the DSN's target_session_attrs is."""
    (problem,) = problems_for({"PGHOST": "db", "PGTARGETSESSIONATTRS": "primry"})
    assert problem.startswith("PGTARGETSESSIONATTRS: 'primry' is not one of")
    assert "did you mean 'primary'?" in problem


def test_bad_pgport_beside_a_dsn_exits_2_naming_it() -> None:
    """asyncpg reads PGPORT even when the DSN names its port: a PGPORT that is no port is
    refused at start, not a check that crashes on every run."""
    result = run_cli(
        {"SIDECAR_DATABASE_URL": f"postgresql://app:{SECRET}@h:5432/db", "PGPORT": "0x10"}
    )
    assert result.returncode == 2, result
    assert result.stderr.splitlines() == [
        "health-sidecar: bad setting: PGPORT: must be a port between 1 and 65535, got '0x10'"
    ]


@pytest.mark.parametrize(
    "query", ["port=abc", "port=70000", "port=5432,0", "port=5432,", "port=%D9%A8"]
)
def test_a_query_port_that_is_no_port_exits_2_naming_it(query: str) -> None:
    """`?port=` that is no port (one per host) is refused at start like PGPORT, instead of a
    check that crashes on every run (abc) or dials a port that cannot exist (70000)."""
    dsn = f"postgresql://app:{SECRET}@/db?host=h1,h2&{query}"
    result = run_cli({"SIDECAR_DATABASE_URL": dsn})
    assert result.returncode == 2, result
    assert result.stderr.splitlines() == [
        "health-sidecar: bad setting: SIDECAR_DATABASE_URL: port: must be a port between 1 "
        "and 65535, or one per host joined by ','"
    ]


@pytest.mark.parametrize("key", ["host", "port"])
def test_query_host_or_port_beside_a_url_host_exits_2_naming_it(
    pg: PostgresServer, key: str
) -> None:
    """`postgresql://u@h/db?port=P` (or `?host=`): libpq connects to the query's, asyncpg
    silently to the URL's, so the check probed another server than the app's. Refused at
    start, naming the key; the hostless form with the same host and port turns ready."""
    wrong = {"host": f"@nowhere.invalid:{pg.port}/", "port": f"@{pg.host}/"}[key]
    right = {"host": pg.host, "port": str(pg.port)}[key]
    dsn = pg.dsn().replace(f"@{pg.host}:{pg.port}/", wrong) + f"?{key}={right}"
    result = run_cli({"SIDECAR_DATABASE_URL": dsn})
    assert result.returncode == 2, result
    [line] = result.stderr.splitlines()
    assert line.startswith(
        f"health-sidecar: bad setting: SIDECAR_DATABASE_URL: {key}: ?{key}= beside a host"
    ), line
    assert pg.password not in result.stderr
    hostless = pg.dsn().replace(f"@{pg.host}:{pg.port}/", "@/") + (
        f"?host={pg.host}&port={pg.port}"
    )
    with SidecarProcess({"SIDECAR_DATABASE_URL": hostless}) as sidecar:
        sidecar.wait_status("/ready", 200)


def test_port_zero_after_the_host_is_malformed() -> None:
    """`h:0` is no port: refused at start like `h:99999`, not a connection_refused forever."""
    (problem,) = problems_for({"SIDECAR_DATABASE_URL": f"postgresql://app:{SECRET}@h:0/db"})
    assert problem.startswith("SIDECAR_DATABASE_URL: malformed URL (bad port")


def test_asyncpg_dialect_url_with_its_own_parameters_turns_ready(
    pg: PostgresServer, tmp_path: Path
) -> None:
    """SQLAlchemy's asyncpg URL as written for pgbouncer (?prepared_statement_cache_size=0, and
    asyncpg.connect's command_timeout) reaches no server as a setting: the real sidecar turns
    ready, where the server used to refuse every session (42704)."""
    dsn = with_scheme(pg.dsn(), "postgresql+asyncpg")
    dsn += "?prepared_statement_cache_size=0&command_timeout=60"
    with SidecarProcess({"SIDECAR_DATABASE_URL": dsn}, log_dir=tmp_path) as sidecar:
        sidecar.wait_listening()
        sidecar.wait_event("check.state_changed", timeout=20)
        assert sidecar.get("/ready").status == 200


@pytest.mark.parametrize(
    ("key", "variable", "value"),
    [
        ("ssl_min_protocol_version", "PGSSLMINPROTOCOLVERSION", "TLSv1_2"),
        ("ssl_max_protocol_version", "PGSSLMAXPROTOCOLVERSION", "tls1.3"),
        ("sslnegotiation", "PGSSLNEGOTIATION", "directly"),
        ("gsslib", "PGGSSLIB", "kerberos"),
    ],
)
def test_bad_tls_choice_is_refused_at_start_in_dsn_and_environment(
    key: str, variable: str, value: str
) -> None:
    """A value asyncpg refuses for a TLS or GSS parameter exits 2 naming the key (DSN) or the
    variable, instead of a sidecar that never turns ready with tls_error."""
    result = run_cli({"SIDECAR_DATABASE_URL": f"postgresql://app:{SECRET}@h/db?{key}={value}"})
    assert result.returncode == 2, result
    [line] = result.stderr.splitlines()
    assert line.startswith(f"health-sidecar: bad setting: SIDECAR_DATABASE_URL: {key}: "), line
    assert SECRET not in result.stderr
    (problem,) = problems_for({"PGHOST": "db", variable: value})
    assert problem.startswith(f"{variable}: "), problem


def test_inline_dsn_with_a_key_passphrase_is_refused_unquoted(tmp_path: Path) -> None:
    """?sslpassword= (the client key's passphrase) is a secret too: an inline dsn holding it is
    refused as one holding a password, and the refusal never quotes it."""
    checks = tmp_path / "checks.yaml"
    checks.write_text(
        "checks:\n"
        f"  - {{name: db, kind: postgres, dsn: 'postgresql://app@h/db?sslpassword={SECRET}'}}\n"
    )
    (problem,) = problems_for({"SIDECAR_CONFIG_FILE": str(checks)})
    assert "(db): dsn: holds a password, and a ConfigMap is not a Secret" in problem
    assert SECRET not in problem
