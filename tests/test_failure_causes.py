"""details.cause: TLS and connection failures say why in a few fixed words, against real servers,
in ?verbose and in the state-change log; never a host, a user, a DSN or a password."""

from __future__ import annotations

import asyncio
import socket
import ssl
from pathlib import Path

import pytest
from sidecar_proc import SidecarProcess, timed_until
from support import free_port
from support.pg import PostgresCheckFactory, PostgresServer, TlsFiles, make_ca

from sidecar.checks.failures import cause_of
from sidecar.checks.pgconnect import NoServerSocket, unix_socket_failure
from sidecar.reasons import CheckFailed, Reason

RUN_BOUND = 5.0


async def failure_of(check: object) -> tuple[Reason, dict[str, str]]:
    """One failing run: its reason and details (the check is reset after)."""
    with pytest.raises(CheckFailed) as failed:
        async with asyncio.timeout(RUN_BOUND):
            await check.run()  # type: ignore[attr-defined]
    await check.reset()  # type: ignore[attr-defined]
    return failed.value.reason, dict(failed.value.details)


async def test_require_against_a_server_without_tls_says_so(
    pg: PostgresServer, make_postgres_check: PostgresCheckFactory
) -> None:
    """sslmode=require, the server has no TLS: tls_error, "server does not support TLS"."""
    check = make_postgres_check(f"{pg.dsn()}?sslmode=require")
    assert await failure_of(check) == (
        Reason.TLS_ERROR,
        {"cause": "server does not support TLS"},
    )


async def test_certificate_for_another_name_is_a_hostname_mismatch(
    pg_tls: PostgresServer, tls_files: TlsFiles, make_postgres_check: PostgresCheckFactory
) -> None:
    """verify-full to `localhost` with a certificate for 127.0.0.1 only: hostname mismatch."""
    dsn = pg_tls.dsn(host="localhost") + f"?sslmode=verify-full&sslrootcert={tls_files.ca}"
    reason, details = await failure_of(make_postgres_check(dsn))
    assert (reason, details) == (
        Reason.TLS_ERROR,
        {"cause": "certificate verify failed: hostname mismatch"},
    )


async def test_certificate_from_another_ca_is_an_unknown_issuer(
    pg_tls: PostgresServer, make_postgres_check: PostgresCheckFactory, tmp_path: Path
) -> None:
    """verify-ca with a CA that did not sign the server's certificate: the verification fails,
    and the cause says how, in OpenSSL's words."""
    other = make_ca(tmp_path, "other-ca")
    dsn = f"{pg_tls.dsn()}?sslmode=verify-ca&sslrootcert={other.cert}"
    reason, details = await failure_of(make_postgres_check(dsn))
    assert reason is Reason.TLS_ERROR
    assert details["cause"].startswith("certificate verify failed: ")
    assert "issuer" in details["cause"] or "self-signed" in details["cause"], details


async def test_sslrootcert_removed_after_start_names_the_key(
    pg_tls: PostgresServer,
    tls_files: TlsFiles,
    make_postgres_check: PostgresCheckFactory,
    tmp_path: Path,
) -> None:
    """The DSN's sslrootcert removed after start (an unmounted Secret): "file not found"."""
    ca = tmp_path / "ca.crt"
    ca.write_bytes(tls_files.ca.read_bytes())
    check = make_postgres_check(f"{pg_tls.dsn()}?sslmode=verify-full&sslrootcert={ca}")
    await check.run()
    await check.reset()
    ca.unlink()
    assert await failure_of(check) == (
        Reason.TLS_ERROR,
        {"unreadable": "sslrootcert", "cause": "file not found: sslrootcert"},
    )


async def test_refused_and_bad_password_say_why_without_names(
    pg: PostgresServer, make_postgres_check: PostgresCheckFactory
) -> None:
    """Nothing listening: "connection refused"; a wrong password: the SQLSTATE's words."""
    refused = make_postgres_check(pg.dsn(port=free_port()))
    assert await failure_of(refused) == (
        Reason.CONNECTION_REFUSED,
        {"cause": "connection refused"},
    )
    wrong = make_postgres_check(pg.dsn(password="not-the-password"))
    assert await failure_of(wrong) == (
        Reason.AUTH_FAILED,
        {"cause": "invalid password (28P01)"},
    )


def test_cause_never_quotes_an_exception_s_own_text() -> None:
    """Causes come from fixed vocabularies: an OSError's custom text and a verification
    message's quoted name are not repeated."""
    secret = "hunter2-cause"
    assert cause_of(OSError(111, f"connect to {secret} failed")) == "connection refused"
    assert cause_of(RuntimeError(secret)) is None
    verify = ssl.SSLCertVerificationError(1, "x")
    verify.verify_message = f"Hostname mismatch, certificate is not valid for '{secret}'."
    assert cause_of(verify) == "certificate verify failed: hostname mismatch"
    chained = RuntimeError(secret)
    chained.__cause__ = ConnectionResetError(104, secret)
    assert cause_of(chained) == "connection reset by peer"


def test_cause_shows_in_verbose_and_in_the_state_change_log(
    pg: PostgresServer, tmp_path: Path
) -> None:
    """The real process: ?verbose details and the check.state_changed line carry the cause."""
    env = {"SIDECAR_DATABASE_URL": f"{pg.dsn()}?sslmode=require"}
    with SidecarProcess(env, log_dir=tmp_path) as sidecar:
        sidecar.wait_listening()
        [changed], _ = timed_until(
            lambda: sidecar.events("check.state_changed", to="failing"),
            timeout=20,
            message="a state change to failing",
        )
        assert changed["reason"] == "tls_error"
        assert changed["details"] == {"cause": "server does not support TLS"}
        body = sidecar.get("/ready?verbose").json()
        assert body["checks"]["postgres"][0]["details"] == {"cause": "server does not support TLS"}
        assert pg.password not in sidecar.log_text()


async def test_unix_socket_with_no_server_behind_it_is_refused_and_says_why(
    pg_private: PostgresServer, make_postgres_check: PostgresCheckFactory, tmp_path: Path
) -> None:
    """A Unix-socket DSN: the stopped server's socket file gone, its directory gone, or a
    stale socket file a killed server left: each is connection_refused (nothing listens), with
    fixed words saying which."""
    dsn = pg_private.socket_dsn()
    pg_private.stop()
    assert await failure_of(make_postgres_check(dsn)) == (
        Reason.CONNECTION_REFUSED,
        {"cause": "no server socket in its directory"},
    )
    elsewhere = dsn.replace(str(pg_private.socket_dir), str(tmp_path / "no-such-dir"))
    assert await failure_of(make_postgres_check(elsewhere)) == (
        Reason.CONNECTION_REFUSED,
        {"cause": "socket directory not found"},
    )
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(pg_private.socket_path))  # bound, never listening: what SIGKILL leaves
    stale.close()
    assert await failure_of(make_postgres_check(dsn)) == (
        Reason.CONNECTION_REFUSED,
        {"cause": "connection refused"},
    )


async def test_missing_tls_file_over_a_unix_socket_stays_a_tls_error(
    pg: PostgresServer, make_postgres_check: PostgresCheckFactory, tmp_path: Path
) -> None:
    """A Unix-socket DSN naming an sslrootcert that is gone: still tls_error naming the key,
    not a missing socket (both are a bare ENOENT to asyncpg)."""
    dsn = f"{pg.socket_dsn()}&sslmode=verify-full&sslrootcert={tmp_path / 'gone.crt'}"
    assert await failure_of(make_postgres_check(dsn)) == (
        Reason.TLS_ERROR,
        {"unreadable": "sslrootcert", "cause": "file not found: sslrootcert"},
    )


def test_file_error_beside_a_live_unix_socket_stays_what_it_was(pg: PostgresServer) -> None:
    """A FileNotFoundError or PermissionError while the server's socket is there and usable
    (asyncpg failing to load a TLS file raises the same bare errors) is not read as a missing
    or forbidden socket; with the socket gone, the same error is NoServerSocket."""
    socket_path = str(pg.socket_path)
    for error in (FileNotFoundError(2, "x"), PermissionError(13, "x")):
        assert unix_socket_failure((socket_path, None), error) is error
        assert unix_socket_failure((pg.host, pg.port), error) is error
    gone = str(pg.socket_dir / ".s.PGSQL.1")
    assert isinstance(unix_socket_failure((gone, None), FileNotFoundError(2, "x")), NoServerSocket)


async def test_unix_socket_host_among_several_with_their_own_ports_is_used(
    pg_private: PostgresServer, make_postgres_check: PostgresCheckFactory
) -> None:
    """`host=SOCKET_DIR,127.0.0.1&port=P1,P2`: the socket host is tried with its own port (asyncpg
    alone refuses a port list beside one host), and the check passes over the socket."""
    nothing = free_port()
    dsn = (
        pg_private.socket_dsn().split("?", 1)[0]
        + f"?host={pg_private.socket_dir},{pg_private.host}&port={pg_private.port},{nothing}"
    )
    check = make_postgres_check(dsn)
    async with asyncio.timeout(RUN_BOUND):
        await check.run()
    [row] = pg_private.fetch(
        "SELECT client_addr IS NULL AS over_socket FROM pg_stat_activity "
        "WHERE application_name = 'health-sidecar'"
    )
    assert row["over_socket"] is True
