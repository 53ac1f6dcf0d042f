"""Any user: the sidecar as a random UID with group 0 (OpenShift's restricted SCC) and a HOME it
may not read. No look-up under HOME may fail a check that asked for no client certificate, and
one that did ask keeps working, with a key file libpq's permission rule would refuse."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Final

import pytest
from sidecar_proc import SidecarProcess, timed_until
from support.pg import PostgresServer, TlsFiles

from sidecar import pghome

RANDOM_UID: Final = 1000770000
SLACK: Final = 20.0


class AsRandomUser(SidecarProcess):
    """The real sidecar, started as RANDOM_UID:0 with no supplementary groups (setpriv)."""

    def command(self) -> list[str]:
        setpriv = shutil.which("setpriv") or "/usr/bin/setpriv"
        return [setpriv, f"--reuid={RANDOM_UID}", "--regid=0", "--clear-groups", *super().command()]


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory under /tmp that the random UID can read (the test's tmp_path is root's)."""
    path = Path(tempfile.mkdtemp(prefix="any-user-", dir="/tmp"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def foreign_home(shared_dir: Path) -> Path:
    """Another user's home, mode 0700: the random UID cannot even look inside."""
    home = shared_dir / "home"
    (home / ".postgresql").mkdir(parents=True)
    (home / ".postgresql" / "postgresql.key").write_text("not ours\n")
    postgres = Path("/var/lib/postgresql")  # the `postgres` OS user of the tests' servers
    uid, gid = postgres.stat().st_uid, postgres.stat().st_gid
    for path in (home, home / ".postgresql", home / ".postgresql" / "postgresql.key"):
        os.chown(path, uid, gid)
    home.chmod(0o700)
    return home


def test_unreadable_home_fails_no_check_that_asked_for_no_certificate(
    pg: PostgresServer, foreign_home: Path, shared_dir: Path
) -> None:
    """Random UID, HOME another user's 0700 directory, default sslmode: the check passes."""
    env = {"SIDECAR_DATABASE_URL": pg.dsn(), "HOME": str(foreign_home)}
    with AsRandomUser(env, log_dir=shared_dir) as sidecar:
        sidecar.wait_listening()
        timed_until(
            lambda: sidecar.get("/ready").status == 200,
            timeout=SLACK,
            message=f"ready as uid {RANDOM_UID}\n{sidecar.tail()}",
        )
        [moved] = sidecar.events("sidecar.home_moved")
        assert (moved["home"], moved["to"]) == (str(foreign_home), pghome.HARMLESS_HOME)
        assert moved["problem"] == "Permission denied"
        assert not sidecar.events("check.state_changed", to="failing")


def test_client_certificate_asked_for_works_with_an_unreadable_home(
    pg_tls: PostgresServer, tls_files: TlsFiles, foreign_home: Path, shared_dir: Path
) -> None:
    """verify-full with a client certificate named in the DSN, its key mode 0644 (libpq would
    refuse it): the random UID with an unreadable HOME logs in by certificate."""
    tls = shared_dir / "tls"
    tls.mkdir()
    copies = {}
    for name, source in (
        ("ca", tls_files.ca),
        ("cert", tls_files.client_cert),
        ("key", tls_files.client_key),
    ):
        copies[name] = tls / f"{name}.pem"
        shutil.copyfile(source, copies[name])
        copies[name].chmod(0o644)
    dsn = (
        f"postgresql://{tls_files.client_user}@{pg_tls.host}:{pg_tls.port}/postgres"
        f"?sslmode=verify-full&sslrootcert={copies['ca']}&sslcert={copies['cert']}"
        f"&sslkey={copies['key']}"
    )
    env = {"SIDECAR_DATABASE_URL": dsn, "HOME": str(foreign_home)}
    with AsRandomUser(env, log_dir=shared_dir) as sidecar:
        sidecar.wait_listening()
        timed_until(
            lambda: sidecar.get("/ready").status == 200,
            timeout=SLACK,
            message=f"ready by certificate as uid {RANDOM_UID}\n{sidecar.tail()}",
        )


def test_home_is_moved_only_when_a_lookup_would_fail(tmp_path: Path) -> None:
    """A HOME without ~/.postgresql stays; one whose look-up fails (a symlink loop) is moved,
    keeping its readable ~/.pgpass through PGPASSFILE."""
    plain = tmp_path / "plain"
    plain.mkdir()
    environ = {"HOME": str(plain)}
    assert pghome.make_harmless(environ) is None
    assert environ == {"HOME": str(plain)}
    looping = tmp_path / "looping"
    looping.mkdir()
    (looping / ".postgresql").symlink_to(looping / ".postgresql")
    (looping / ".pgpass").write_text("*:*:*:app:secret\n")
    environ = {"HOME": str(looping)}
    moved = pghome.make_harmless(environ)
    assert moved is not None
    assert moved.home == str(looping)
    assert environ == {
        "HOME": pghome.HARMLESS_HOME,
        "PGPASSFILE": str(looping / ".pgpass"),
    }
    environ = {"HOME": str(looping), "PGPASSFILE": "/etc/pgpass"}
    pghome.make_harmless(environ)
    assert environ["PGPASSFILE"] == "/etc/pgpass"  # an explicit one is never overridden


def test_dsn_without_a_user_is_refused_when_the_uid_has_no_name(shared_dir: Path) -> None:
    """A random UID has no user name for libpq's default: a DSN naming no user exits 2 with one
    line saying so, instead of a check that crashes on every try."""
    env = {"SIDECAR_DATABASE_URL": "postgresql://127.0.0.1:1/postgres"}
    sidecar = AsRandomUser(env, log_dir=shared_dir)
    sidecar.start()
    assert sidecar.wait_exit(SLACK) == 2
    assert sidecar.stderr().splitlines() == [
        "health-sidecar: bad setting: SIDECAR_DATABASE_URL: the DSN names no user, and this "
        f"process's UID {RANDOM_UID} has no user name to default to; name the user in the DSN "
        "(user@host) or set PGUSER"
    ]
    named = AsRandomUser(
        {**env, "PGUSER": "app", "SIDECAR_LOG_LEVEL": "info"}, log_dir=shared_dir, name="named"
    )
    with named:
        named.wait_listening()  # PGUSER names one: nothing to refuse


def test_warning_about_a_shared_password_file_is_a_json_line(
    pg: PostgresServer, shared_dir: Path
) -> None:
    """A password file readable by others (a Secret mounted 0644): asyncpg's warning about it
    is a JSON log line, not a bare line on stderr."""
    passfile = shared_dir / "pgpass"
    passfile.write_text(f"*:*:*:postgres:{pg.password}\n")
    passfile.chmod(0o644)
    dsn = f"postgresql://postgres@{pg.host}:{pg.port}/postgres"
    with SidecarProcess({"SIDECAR_DATABASE_URL": dsn, "PGPASSFILE": str(passfile)}) as sidecar:
        sidecar.wait_listening()
        [warned], _ = timed_until(
            lambda: sidecar.events(logger="py.warnings"), timeout=SLACK, message="the warning"
        )
        assert "group or world access" in warned["event"]
        assert warned["level"] == "warning"
        assert sidecar.stderr() == ""
        assert sidecar.non_json_lines() == []


def test_socket_directory_the_uid_may_not_enter_says_so(
    pg: PostgresServer, shared_dir: Path
) -> None:
    """A Unix-socket DSN whose directory (the server's 0700 data directory) the random UID may
    not enter: network_error with a cause naming the directory's permission, not a refusal to
    retry fast forever, and no traceback."""
    env = {"SIDECAR_DATABASE_URL": pg.socket_dsn()}
    with AsRandomUser(env, log_dir=shared_dir) as sidecar:
        sidecar.wait_listening()
        changed = sidecar.wait_event("check.state_changed", timeout=SLACK, to="failing")
        assert (changed["reason"], changed["details"]) == (
            "network_error",
            {"cause": "permission denied: socket directory"},
        )
        [check] = sidecar.get("/ready?verbose").json()["checks"]["postgres"]
        assert check["output"] == "network_error"
        assert check["details"] == {"cause": "permission denied: socket directory"}
        assert not sidecar.events("check.crashed")
        assert sidecar.non_json_lines() == []
        assert "Traceback" not in sidecar.log_text()
