"""The database password never leaves the process: not in logs, bodies, ?verbose or /metrics.

A recognisable password is given each way the sidecar accepts one (in SIDECAR_DATABASE_URL, as
PGPASSWORD, inside the SIDECAR_DATABASE_URL_FILE), and every failure path is driven while the
logs run at debug level: success, a terminated session, a blackholed and a reset network path,
a refused connection, a full role, a wrong password, a missing database, a name that does not
resolve, a check that crashes with the DSN in its message, a probe loop that dies, bad
configuration, a port already taken, SIGTERM. Then stdout, stderr, every response body (probes
plain and ?verbose, /metrics in both formats, 400/404/405) are searched for the password, its
percent-encoded form, and any 6-character piece of it (a truncated leak is still a leak).
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
from sidecar_proc import SidecarProcess, set_fault, timed_until
from support import LOOPBACK, SLACK, free_port
from support.faultproxy import FaultProxy, ProxyFactory
from support.pg import PostgresServer

PASSWORD = "Tr4c3r-S3cr3t#pw!Zq8"
ROLE = "tracer"
WINDOW = 6
FAST = {
    "SIDECAR_CHECK_INTERVAL": "0.3",
    "SIDECAR_CHECK_TIMEOUT": "0.5",
    "SIDECAR_BACKOFF_MAX": "0.5",
    "SIDECAR_LOG_LEVEL": "debug",
    "SIDECAR_DRAIN_SECONDS": "0",
}
SWEEP = [
    ("GET", "/health", {}),
    ("GET", "/ready", {}),
    ("GET", "/startup", {}),
    ("GET", "/health?verbose", {}),
    ("GET", "/ready?verbose", {}),
    ("GET", "/startup?verbose", {}),
    ("GET", "/readyz?verbose=1", {}),
    ("GET", "/metrics", {}),
    ("GET", "/metrics", {"Accept": "application/openmetrics-text; version=1.0.0"}),
    ("GET", "/nope", {}),
    ("GET", "/ready?password=1", {}),
    ("POST", "/ready", {}),
]


def secret_pieces() -> set[str]:
    """The password as written, percent-encoded, and every WINDOW-long piece of it."""
    pieces = {PASSWORD, quote(PASSWORD, safe="")}
    pieces |= {PASSWORD[i : i + WINDOW] for i in range(len(PASSWORD) - WINDOW + 1)}
    return pieces


def leaks(text: str) -> list[str]:
    """Every piece of the password found in `text`, with some context."""
    found = []
    for piece in sorted(secret_pieces(), key=len, reverse=True):
        at = text.find(piece)
        if at >= 0:
            found.append(f"{piece!r} in ...{text[max(0, at - 80) : at + 80]!r}...")
    return found


class Outputs:
    """Everything a sidecar showed the world: response bodies here, logs from the process."""

    def __init__(self) -> None:
        self.bodies: list[str] = []

    def sweep(self, sidecar: SidecarProcess) -> None:
        for method, path, headers in SWEEP:
            reply = sidecar.request(method, path, headers=headers)
            text = reply.body.decode(errors="replace")
            self.bodies.append(f"{method} {path} {reply.status} {reply.headers} {text}")

    def assert_clean(self, *sidecars: SidecarProcess) -> None:
        for sidecar in sidecars:
            assert leaks(sidecar.log_text()) == [], sidecar.tail()
        for body in self.bodies:
            assert leaks(body) == [], body[:500]


# ---- how the password is given ---------------------------------------------------------------


Source = Callable[[str, int, str, Path], dict[str, str]]


def via_url(host: str, port: int, database: str, tmp: Path) -> dict[str, str]:
    dsn = f"postgresql://{ROLE}:{quote(PASSWORD, safe='')}@{host}:{port}/{database}"
    return {"SIDECAR_DATABASE_URL": dsn}


def via_pgpassword(host: str, port: int, database: str, tmp: Path) -> dict[str, str]:
    return {
        "PGHOST": host,
        "PGPORT": str(port),
        "PGUSER": ROLE,
        "PGPASSWORD": PASSWORD,
        "PGDATABASE": database,
    }


def via_file(host: str, port: int, database: str, tmp: Path) -> dict[str, str]:
    path = tmp / f"dsn-{port}-{database}"
    path.write_text(via_url(host, port, database, tmp)["SIDECAR_DATABASE_URL"] + "\n")
    path.chmod(0o600)
    return {"SIDECAR_DATABASE_URL_FILE": str(path)}


SOURCES: dict[str, Source] = {
    "SIDECAR_DATABASE_URL": via_url,
    "PGPASSWORD": via_pgpassword,
    "SIDECAR_DATABASE_URL_FILE": via_file,
}


def crash_message(env: dict[str, str]) -> str:
    """An exception message holding the secret, padded so that a 200-character cut of it
    would fall inside the password."""
    secret = env.get("SIDECAR_DATABASE_URL") or PASSWORD
    if "SIDECAR_DATABASE_URL_FILE" in env:
        secret = Path(env["SIDECAR_DATABASE_URL_FILE"]).read_text().strip()
    cut_inside = secret.index(quote(PASSWORD, safe="")) if secret != PASSWORD else 0
    pad = "x" * (200 - cut_inside - WINDOW - 2)
    return f"{pad} {secret} and more"


@pytest.fixture
def role(pg_private: PostgresServer) -> PostgresServer:
    """A private server with a login role whose password is PASSWORD."""
    pg_private.create_role(ROLE, PASSWORD)
    return pg_private


@pytest.fixture
def sidecars(tmp_path: Path) -> Iterator[list[SidecarProcess]]:
    started: list[SidecarProcess] = []
    yield started
    for sidecar in started:
        sidecar.stop()


def start(
    started: list[SidecarProcess], env: dict[str, str], tmp: Path, **kwargs: object
) -> SidecarProcess:
    sidecar = SidecarProcess(
        env,
        defaults=FAST,
        log_dir=tmp,
        name=f"sidecar{len(started)}",
        **kwargs,  # type: ignore[arg-type]
    )
    started.append(sidecar)
    sidecar.start()
    sidecar.wait_listening()
    return sidecar


def wait_reason(sidecar: SidecarProcess, reason: str | None, after: int) -> int:
    """Wait for a state change to failing with `reason` (or to passing when None); return the
    count of state changes so far, for the next wait."""
    to = "passing" if reason is None else "failing"
    deadline = time.monotonic() + SLACK
    while True:
        changes = sidecar.events("check.state_changed")
        if any(c["to"] == to and c["reason"] == reason for c in changes[after:]):
            return len(changes)
        sidecar.assert_alive()
        assert time.monotonic() < deadline, f"no change to {to}/{reason}\n{sidecar.tail()}"
        time.sleep(0.05)


# ---- the tests -------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("source", list(SOURCES))
def test_password_never_shows_through_any_failure(
    source: str,
    role: PostgresServer,
    make_fault_proxy: ProxyFactory,
    sidecars: list[SidecarProcess],
    tmp_path: Path,
) -> None:
    """Through every failure path the password shows in no log, body, ?verbose or metric."""
    pg = role
    proxy: FaultProxy = make_fault_proxy(pg.host, pg.port)
    env = SOURCES[source](LOOPBACK, proxy.port, "postgres", tmp_path)
    fault = tmp_path / "fault"
    outputs = Outputs()
    sidecar = start(sidecars, env, tmp_path, fault_file=fault)
    seen = wait_reason(sidecar, None, 0)
    outputs.sweep(sidecar)

    def break_and_heal(
        breaks: Callable[[], object], reason: str, heals: Callable[[], object]
    ) -> None:
        nonlocal seen
        breaks()
        seen = wait_reason(sidecar, reason, seen)
        outputs.sweep(sidecar)
        heals()
        seen = wait_reason(sidecar, None, seen)

    # The server ends the session: at most a failed check, then a new session.
    pg.terminate()
    timed_until(lambda: pg.sessions() == 1, timeout=SLACK, message="reconnected")
    break_and_heal(proxy.blackhole, "timeout", proxy.forward)
    break_and_heal(proxy.reset, "connection_reset", proxy.forward)

    def refuse() -> None:
        proxy.reset()  # drop the open connection, then refuse new ones
        proxy.refuse()

    def role_full() -> None:
        pg.execute(f"ALTER ROLE {ROLE} CONNECTION LIMIT 0")
        pg.terminate()

    def password_rotated() -> None:
        pg.alter_password(ROLE, "another-password")
        pg.terminate()

    break_and_heal(refuse, "connection_refused", proxy.forward)
    break_and_heal(
        role_full,
        "too_many_connections",
        lambda: pg.execute(f"ALTER ROLE {ROLE} CONNECTION LIMIT -1"),
    )
    break_and_heal(password_rotated, "auth_failed", lambda: pg.alter_password(ROLE, PASSWORD))
    break_and_heal(
        lambda: set_fault(fault, "raise " + crash_message(env)),
        "internal_error",
        lambda: set_fault(fault, ""),
    )
    assert sidecar.events("check.crashed"), "the crash was not logged"
    assert sidecar.events("check.crashed_traceback"), "the debug traceback was not logged"
    set_fault(fault, "die " + crash_message(env))
    sidecar.wait_event("prober.stopped", timeout=SLACK)
    outputs.sweep(sidecar)
    assert sidecar.stop() == 0
    assert sidecar.events("sidecar.stopped")

    # Separate processes for the targets that never connect.
    missing_db = start(
        sidecars, SOURCES[source](LOOPBACK, pg.port, "no_such_db", tmp_path), tmp_path
    )
    wait_reason(missing_db, "database_not_found", 0)
    outputs.sweep(missing_db)
    no_dns = start(
        sidecars, SOURCES[source]("db.secret-test.invalid", pg.port, "postgres", tmp_path), tmp_path
    )
    wait_reason(no_dns, "dns_failure", 0)
    outputs.sweep(no_dns)
    for other in (missing_db, no_dns):
        assert other.stop() == 0

    # Debug logging really was on, and every line was JSON: the search covered everything.
    assert sidecar.events("check.completed")
    for process in (sidecar, missing_db, no_dns):
        assert process.non_json_lines() == []
    outputs.assert_clean(sidecar, missing_db, no_dns)


@pytest.mark.parametrize("source", list(SOURCES))
def test_password_never_shows_when_the_port_is_taken(
    source: str, sidecars: list[SidecarProcess], tmp_path: Path
) -> None:
    """Listening fails (port taken): exit 1 with one log line, no password in it."""
    with socket.socket() as taken:
        taken.bind((LOOPBACK, 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = SOURCES[source](LOOPBACK, free_port(), "postgres", tmp_path)
        sidecar = SidecarProcess(env, defaults=FAST, port=port, log_dir=tmp_path)
        sidecars.append(sidecar)
        sidecar.start()
        assert sidecar.wait_exit(SLACK) == 1
    assert sidecar.events("sidecar.listen_failed")
    assert leaks(sidecar.log_text()) == []


def run_cli(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sidecar"],
        env={"PATH": "/usr/bin:/bin", **env},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


BAD_CONFIGS: dict[str, Callable[[Path], dict[str, str]]] = {
    "port not a number": lambda _: {
        "SIDECAR_DATABASE_URL": f"postgresql://{ROLE}:{quote(PASSWORD, safe='')}@h:notaport/db"
    },
    "wrong scheme": lambda _: {"SIDECAR_DATABASE_URL": f"mysql://{ROLE}:{PASSWORD}@h/db"},
    "raw password with a space": lambda _: {
        "SIDECAR_DATABASE_URL": f"postgresql://{ROLE}:{PASSWORD} x@h/db"
    },
    "no scheme": lambda _: {"SIDECAR_DATABASE_URL": f"{ROLE}:{PASSWORD}@h/db"},
    "password in the query, bad brackets": lambda _: {
        "SIDECAR_DATABASE_URL": f"postgresql://[h/db?password={PASSWORD}"
    },
    "URL and URL file both": lambda tmp: {
        **via_file("h", 5432, "db", tmp),
        **via_url("h", 5432, "db", tmp),
    },
    "file with a wrong scheme": lambda tmp: _file(tmp, f"mysql://{ROLE}:{PASSWORD}@h/db"),
    "file holding only the password": lambda tmp: _file(tmp, PASSWORD),
    "PGPASSWORD with a bad PGPORT": lambda tmp: {
        **via_pgpassword("h", 5432, "db", tmp),
        "PGPORT": "not-a-port",
    },
    "PGPASSWORD with a bad interval": lambda tmp: {
        **via_pgpassword("h", 5432, "db", tmp),
        "SIDECAR_CHECK_INTERVAL": "fast",
    },
}


def _file(tmp: Path, text: str) -> dict[str, str]:
    path = tmp / "dsn-bad"
    path.write_text(text)
    return {"SIDECAR_DATABASE_URL_FILE": str(path)}


@pytest.mark.parametrize("case", list(BAD_CONFIGS))
def test_refused_configuration_never_quotes_the_password(case: str, tmp_path: Path) -> None:
    """A refused configuration exits 2 naming the variable, without the password."""
    env = BAD_CONFIGS[case](tmp_path)
    result = run_cli(env)
    assert result.returncode == 2, result
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("health-sidecar: bad setting: ")
    assert leaks(result.stderr) == [], result.stderr
