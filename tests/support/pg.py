"""A throwaway PostgreSQL cluster, started by the tests themselves on a free loopback port.

The first server in a process runs initdb once into a *template* data directory (superuser
password, `pg_stat_statements` and the helpers' own database already set up); every server after
that is a `cp -a` of it, which takes a fraction of initdb's second.

initdb and postgres refuse to run as root, and CI runs as root: then every PostgreSQL binary runs
as the `postgres` OS user through `runuser`, in a `tempfile.mkdtemp()` directory chowned to it
(pytest's `tmp_path` is 0700 root and unusable by that user).

Host (TCP) connections need the SCRAM password; the helpers here (`execute`, `fetch`,
`sessions`, ...) talk over the Unix socket in the data directory, where initdb's `trust` applies,
so they keep working after a test changes the superuser's password. They connect to a database of
their own (`tests_support`) with `application_name='tests.support'`, so they never show up in
`sessions(...)` and never move `xact_commit_total('postgres')` or the `postgres` rows of
`stat_statements()`.

TLS (`PostgresServer(tls=make_tls_files(dir))`): `make_tls_files` makes a CA, a server certificate
for 127.0.0.1 (only) and a client certificate for one role, all with the `openssl` CLI; the
server then runs with ssl=on and trusts that CA for client certificates. `hba_lines` go before
initdb's own pg_hba.conf lines (say `hostssl all <role> 127.0.0.1/32 cert`).

Streaming replicas (`PostgresServer(replica_of=primary)`): `pg_basebackup -R` of the running
primary over its Unix socket, started like any other server on its own free port;
`wait_caught_up()` waits until it has replayed everything the primary has committed (through a
marker row in `tests_support`); `promote()` makes it a primary (`pg_ctl promote`).
"""

from __future__ import annotations

import asyncio
import atexit
import functools
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, Literal, Protocol, Self, TypeAlias, TypeVar
from urllib.parse import quote

import asyncpg

from . import LOOPBACK, free_port

__all__ = [
    "DEFAULT_BINDIR",
    "SUPERUSER",
    "SUPERUSER_PASSWORD",
    "SUPPORT_APPLICATION_NAME",
    "SUPPORT_DATABASE",
    "CertificateAuthority",
    "PgFactory",
    "PostgresCheckFactory",
    "PostgresServer",
    "PostgresSetupError",
    "ReplicaFactory",
    "SettingValue",
    "StopMode",
    "TlsFiles",
    "find_bindir",
    "issue_certificate",
    "make_ca",
    "make_tls_files",
]

PG_MAJOR: Final = 15
DEFAULT_BINDIR: Final = Path(f"/usr/lib/postgresql/{PG_MAJOR}/bin")
SUPERUSER: Final = "postgres"
SUPERUSER_PASSWORD: Final = "postgres-test-password"
OS_USER: Final = "postgres"
SUPPORT_DATABASE: Final = "tests_support"
SUPPORT_APPLICATION_NAME: Final = "tests.support"
SETTINGS_FILE: Final = "test_settings.conf"

# Generous: a loaded CI machine can take many seconds to start or checkpoint.
PG_CTL_TIMEOUT_SECONDS: Final = 60
SUBPROCESS_TIMEOUT_SECONDS: Final = 120.0
QUERY_TIMEOUT_SECONDS: Final = 30.0
BIND_FAILURE_MARKERS: Final = (
    "could not bind",
    "Address already in use",
    "could not create any TCP/IP sockets",
)
START_ATTEMPTS: Final = 3
HBA_FILE: Final = "test_hba.conf"
# Certificates outlive any test run by a day; enough, and an expired one is obvious.
CERT_DAYS: Final = 2

StopMode = Literal["smart", "fast", "immediate"]
SettingValue = str | int | float | bool
T = TypeVar("T")
if TYPE_CHECKING:
    # Generic only in asyncpg-stubs; at run time the class is not subscriptable.
    Conn: TypeAlias = asyncpg.Connection[asyncpg.Record]

    from sidecar.checks.postgres import Credentials, PostgresCheck, PostgresSpec
    from sidecar.checkspec import DatabaseTarget


def postgres_check(spec: PostgresSpec, credentials: Credentials | None = None) -> PostgresCheck:
    """A PostgresCheck as the app builds one: the default connection age, and a resolver pool
    of its own (the app's is one per process)."""
    from sidecar.checks.postgres import PostgresCheck  # noqa: PLC0415 -- as the fixtures do
    from sidecar.options import default  # noqa: PLC0415
    from sidecar.resolver import DaemonExecutor  # noqa: PLC0415

    return PostgresCheck(spec, DaemonExecutor(), default("max_connection_age"), credentials)


class PostgresSetupError(RuntimeError):
    """The cluster could not be created, started or stopped; the message carries the log tail."""


class PgFactory(Protocol):
    """The `make_pg` fixture: builds, starts and (at teardown) cleans up a private server."""

    def __call__(
        self,
        *,
        max_connections: int = 100,
        password: str = SUPERUSER_PASSWORD,
        settings: Mapping[str, SettingValue] | None = None,
    ) -> PostgresServer: ...


class PostgresCheckFactory(Protocol):
    """The `make_postgres_check` fixture: a PostgresCheck of a spec made of the arguments (a DSN
    or a DatabaseTarget, and PostgresSpec fields), closed after the test."""

    def __call__(
        self,
        target: str | DatabaseTarget,
        *,
        credentials: Credentials | None = None,
        timeout: float = 5.0,
        **fields: Any,
    ) -> PostgresCheck: ...


class ReplicaFactory(Protocol):
    """The `make_replica` fixture: a started streaming replica of `primary`, cleaned up after
    the test."""

    def __call__(self, primary: PostgresServer) -> PostgresServer: ...


# ---- TLS material, made with the openssl CLI ------------------------------------------------


@dataclass(frozen=True, slots=True)
class CertificateAuthority:
    cert: Path
    key: Path


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """Everything a TLS-enabled test server and its clients need; all PEM files.

    `ca` signed both the server's certificate (for 127.0.0.1, so verify-full passes there,
    and for no other name) and the client's (CN = `client_user`, for `cert` authentication)."""

    ca: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    client_user: str


def _openssl(*args: str) -> None:
    openssl = shutil.which("openssl")
    if openssl is None:
        raise PostgresSetupError("the TLS helpers need the `openssl` CLI (Debian package openssl)")
    result = subprocess.run(
        [openssl, *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=SUBPROCESS_TIMEOUT_SECONDS,
    )
    if result.returncode != 0:
        raise PostgresSetupError(f"openssl {args[0]} failed:\n{result.stdout}{result.stderr}")


# P-256 keys: generated in milliseconds, where RSA takes a noticeable fraction of a second.
_NEW_KEY: Final = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")


def make_ca(directory: Path, name: str = "tests-ca") -> CertificateAuthority:
    """A self-signed CA certificate and key in `directory` (`<name>.crt`, `<name>.key`)."""
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = directory / f"{name}.crt", directory / f"{name}.key"
    _openssl(
        "req", "-x509", *_NEW_KEY,
        "-keyout", str(key), "-out", str(cert),
        "-days", str(CERT_DAYS), "-subj", f"/CN={name}",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
    )  # fmt: skip
    return CertificateAuthority(cert=cert, key=key)


def issue_certificate(
    ca: CertificateAuthority, directory: Path, name: str, *, common_name: str, server: bool
) -> tuple[Path, Path]:
    """A certificate signed by `ca`: (cert, key). A server one names 127.0.0.1, and only that,
    in subjectAltName (verify-full checks it); a client one carries `common_name`, which
    PostgreSQL's `cert` authentication compares with the role name."""
    directory.mkdir(parents=True, exist_ok=True)
    cert, key, csr = (directory / f"{name}.{ext}" for ext in ("crt", "key", "csr"))
    extensions = directory / f"{name}.ext"
    lines = [
        "basicConstraints=critical,CA:FALSE",
        "keyUsage=critical,digitalSignature",
        "subjectKeyIdentifier=hash",
        "authorityKeyIdentifier=keyid",
        f"extendedKeyUsage={'serverAuth' if server else 'clientAuth'}",
    ]
    if server:
        # Not `localhost`: a test connects by that name to see verify-full refuse it.
        lines.append(f"subjectAltName=IP:{LOOPBACK}")
    extensions.write_text("\n".join(lines) + "\n")
    _openssl("req", "-new", *_NEW_KEY, "-keyout", str(key), "-out", str(csr),
             "-subj", f"/CN={common_name}")  # fmt: skip
    _openssl(
        "x509", "-req", "-in", str(csr),
        "-CA", str(ca.cert), "-CAkey", str(ca.key), "-set_serial", str(time.time_ns()),
        "-days", str(CERT_DAYS), "-extfile", str(extensions), "-out", str(cert),
    )  # fmt: skip
    csr.unlink()
    extensions.unlink()
    key.chmod(0o600)
    return cert, key


def make_tls_files(directory: Path, *, client_user: str = "cert_user") -> TlsFiles:
    """A CA, a server certificate and a client certificate for `client_user`, in `directory`."""
    ca = make_ca(directory)
    server_cert, server_key = issue_certificate(
        ca, directory, "server", common_name="tests-server", server=True
    )
    client_cert, client_key = issue_certificate(
        ca, directory, "client", common_name=client_user, server=False
    )
    return TlsFiles(
        ca=ca.cert,
        ca_key=ca.key,
        server_cert=server_cert,
        server_key=server_key,
        client_cert=client_cert,
        client_key=client_key,
        client_user=client_user,
    )


@functools.cache
def find_bindir() -> Path:
    """The PostgreSQL 15 binaries: /usr/lib/postgresql/15/bin, else what `pg_config --bindir`
    says. Fails with an install hint when neither has initdb/pg_ctl/postgres."""
    candidates = [DEFAULT_BINDIR]
    pg_config = shutil.which("pg_config")
    if pg_config:
        out = subprocess.run(
            [pg_config, "--bindir"], capture_output=True, text=True, check=False, timeout=30
        )
        if out.returncode == 0 and out.stdout.strip():
            candidates.append(Path(out.stdout.strip()))
    for bindir in candidates:
        if all((bindir / tool).is_file() for tool in ("initdb", "pg_ctl", "postgres")):
            return bindir
    raise PostgresSetupError(
        f"PostgreSQL {PG_MAJOR} server binaries not found in "
        f"{', '.join(map(str, candidates))}: install them with "
        f"`apt-get install postgresql-{PG_MAJOR} postgresql-contrib` (Debian/Ubuntu)"
    )


@functools.cache
def _check_pg_stat_statements(bindir: Path) -> None:
    """shared_preload_libraries='pg_stat_statements' makes postgres refuse to start without it;
    say so up front rather than through a log tail."""
    pg_config = bindir / "pg_config"
    if not pg_config.is_file():
        return  # Cannot tell; a missing library still fails start() with the log tail.
    out = subprocess.run(
        [str(pg_config), "--sharedir", "--pkglibdir"],
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
    if out.returncode != 0:
        return
    sharedir, pkglibdir = out.stdout.splitlines()[:2]
    control = Path(sharedir) / "extension" / "pg_stat_statements.control"
    library = Path(pkglibdir) / "pg_stat_statements.so"
    if not (control.is_file() and library.is_file()):
        raise PostgresSetupError(
            f"pg_stat_statements is missing ({control}, {library}): "
            f"install it with `apt-get install postgresql-contrib`"
        )


@functools.cache
def _os_user() -> pwd.struct_passwd | None:
    """The account PostgreSQL runs as when we are root; None when we are not root."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(OS_USER)
    except KeyError:
        raise PostgresSetupError(
            f"running as root, and initdb refuses root, but there is no {OS_USER!r} OS user to "
            f"run it as (the postgresql-{PG_MAJOR} package creates one)"
        ) from None


@functools.cache
def _as_os_user() -> tuple[str, ...]:
    """The command prefix that runs a PostgreSQL binary as the right user."""
    if _os_user() is None:
        return ()
    runuser = shutil.which("runuser") or "/usr/sbin/runuser"
    if not Path(runuser).is_file():
        raise PostgresSetupError("running as root needs `runuser` (Debian package util-linux)")
    return (runuser, "-u", OS_USER, "--")


def _tempdir_parent() -> str | None:
    """Where mkdtemp may put a directory the postgres user can reach: the default temp dir unless
    some ancestor of it is closed to others (say TMPDIR under /root), then /tmp."""
    if _os_user() is None:
        return None
    default = Path(tempfile.gettempdir()).resolve()
    for directory in (default, *default.parents):
        if not directory.stat().st_mode & 0o001:
            return "/tmp"
    return None


def _make_base_dir(prefix: str) -> Path:
    base = Path(tempfile.mkdtemp(prefix=prefix, dir=_tempdir_parent()))
    _give_to_os_user(base)
    return base


def _give_to_os_user(path: Path) -> None:
    user = _os_user()
    if user is not None:
        os.chown(path, user.pw_uid, user.pw_gid)


def _subprocess_env() -> dict[str, str]:
    # A test that sets PGPORT/PGHOST/... for the sidecar must not steer initdb or postgres
    # (postgres reads PGPORT as its default port).
    return {k: v for k, v in os.environ.items() if not k.startswith("PG")}


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _literal(value: str) -> str:
    # standard_conforming_strings is on (the default since 9.1): only quotes need doubling.
    return "'" + value.replace("'", "''") + "'"


def _guc(value: SettingValue) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, int | float):
        return str(value)
    return _literal(value)


def _process_alive(pid: int) -> bool:
    """True while `pid` is a live (not zombie) postgres process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True
    # "<pid> (<comm>) <state> ..."; comm may contain spaces, so split at the last ')'.
    comm = stat[stat.index("(") + 1 : stat.rindex(")")]
    state = stat[stat.rindex(")") + 2 :].split(" ", 1)[0]
    return state != "Z" and comm.startswith(("postgres", "postmaster"))


def _children(pid: int) -> list[int]:
    """PIDs whose parent is `pid` (the postmaster's backends and auxiliary processes)."""
    found: list[int] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split(" ")
        if len(fields) > 1 and fields[1] == str(pid):
            found.append(int(entry.name))
    return found


def _wait_gone(pids: list[int], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while any(_process_alive(pid) for pid in pids):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


def _run_in_thread(factory: Callable[[], Coroutine[Any, Any, T]], timeout: float) -> T:
    """Run a coroutine to completion in a fresh thread with its own event loop.

    Callable from sync tests and from inside a running loop alike (an async test, an in-process
    aiohttp app): the caller's loop is blocked for the query's few milliseconds, never reused.
    """
    values: list[T] = []
    errors: list[BaseException] = []

    def target() -> None:
        try:
            values.append(asyncio.run(asyncio.wait_for(factory(), timeout)))
        except BaseException as exc:  # noqa: BLE001 -- re-raised in the calling thread
            errors.append(exc)

    thread = threading.Thread(target=target, name="pg-support-query", daemon=True)
    thread.start()
    thread.join(timeout + 10)
    if thread.is_alive():
        raise TimeoutError(f"support query still running after {timeout + 10:g}s")
    if errors:
        raise errors[0]
    return values[0]


class PostgresServer:
    """One PostgreSQL cluster in its own temporary directory, listening on 127.0.0.1:`port`.

    Nothing happens until `start()`. `cleanup()` stops it and deletes the directory; an atexit
    hook does the same for any server a crashed test run left behind.
    """

    host: str = LOOPBACK

    def __init__(
        self,
        *,
        max_connections: int = 100,
        password: str = SUPERUSER_PASSWORD,
        settings: Mapping[str, SettingValue] | None = None,
        bindir: Path | None = None,
        use_template: bool = True,
        tls: TlsFiles | None = None,
        hba_lines: Sequence[str] = (),
        replica_of: PostgresServer | None = None,
    ) -> None:
        self.bindir = bindir or find_bindir()
        _check_pg_stat_statements(self.bindir)
        self.max_connections = max_connections
        # A replica's roles are its primary's: so is the superuser's password.
        self.password: str = replica_of.password if replica_of is not None else password
        self.settings: dict[str, SettingValue] = dict(settings or {})
        self.tls = tls
        self.hba_lines = tuple(hba_lines)
        self.replica_of = replica_of
        self.port = 0
        self.base_dir: Path | None = None
        self._use_template = use_template
        self._created = False
        self._bootstrapped = False
        self._pid: int | None = None
        # Passwords of roles made through this object, so dsn(user=...) can fill them in.
        self._passwords: dict[str, str] = {SUPERUSER: self.password}
        if replica_of is not None:
            self._passwords.update(replica_of._passwords)

    # ---- paths -------------------------------------------------------------------------------

    @property
    def data_dir(self) -> Path:
        if self.base_dir is None:
            raise PostgresSetupError("server not created yet: call start()")
        return self.base_dir / "data"

    @property
    def log_path(self) -> Path:
        return self.data_dir.parent / "postgres.log"

    @property
    def socket_dir(self) -> Path:
        """unix_socket_directories: the data directory, never /var/run/postgresql."""
        return self.data_dir

    # ---- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Create the cluster on first use, then start it and wait until it accepts connections.

        The first start picks a free port (and retries with another if someone takes it first);
        later starts reuse the same port so clients can reconnect."""
        if self.is_running:
            return
        first_start = not self._created
        if first_start:
            self._create()
            self.port = free_port()
        for attempt in range(1, START_ATTEMPTS + 1):
            self._write_settings()
            log_offset = self._log_size()
            result = self._pg_ctl("start", "-l", str(self.log_path), "-w")
            if result.returncode == 0:
                break
            log = self._log_since(log_offset)
            bind_failed = any(marker in log for marker in BIND_FAILURE_MARKERS)
            if first_start and bind_failed and attempt < START_ATTEMPTS:
                self.port = free_port()
                continue
            raise PostgresSetupError(
                f"pg_ctl start failed (exit {result.returncode}) on port {self.port}:\n"
                f"{result.stdout}{result.stderr}\n--- {self.log_path} ---\n{log}"
            )
        self._pid = self._read_pid()
        _live_servers.add(self)
        if not self._bootstrapped:
            self._bootstrap()
        if first_start and self.password != SUPERUSER_PASSWORD and self.replica_of is None:
            self.alter_password(SUPERUSER, self.password)

    def stop(self, mode: StopMode = "fast") -> None:
        """Stop the postmaster we started (pg_ctl, then signals to its PID if pg_ctl fails) and
        wait until it and its children are gone. A no-op when it is not running."""
        pid = self._read_pid() or self._pid
        if pid is None or not _process_alive(pid):
            self._pid = None
            return
        children = _children(pid)
        result = self._pg_ctl("stop", "-m", mode, "-w")
        if result.returncode != 0 or not _wait_gone([pid], 10):
            # pg_ctl gave up: immediate shutdown, then the hard way. Only our postmaster's PID.
            for sig, wait in ((signal.SIGQUIT, 10.0), (signal.SIGKILL, 10.0)):
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    break
                if _wait_gone([pid], wait):
                    break
        # Backends notice the postmaster's death on their own; wait so the next start does not
        # find the old shared memory still attached.
        if not _wait_gone([pid, *children], 30):
            raise PostgresSetupError(
                f"postgres (pid {pid}) still running after stop; log:\n{self.log_tail()}"
            )
        pid_file = self.data_dir / "postmaster.pid"
        if pid_file.exists() and self._read_pid() == pid:
            pid_file.unlink()  # stale after a kill; pg_ctl would otherwise warn
        self._pid = None

    def restart(self, mode: StopMode = "fast") -> None:
        """Stop then start on the same port; existing sessions are dropped."""
        self.stop(mode)
        self.start()

    def cleanup(self) -> None:
        """Stop the server (if running) and delete its directory. Idempotent."""
        try:
            if self.base_dir is not None:
                self.stop("fast")
        finally:
            _live_servers.discard(self)
            if self.base_dir is not None:
                shutil.rmtree(self.base_dir, ignore_errors=True)
                self.base_dir = None
                self._created = False

    @property
    def is_running(self) -> bool:
        """True while our postmaster process is alive."""
        if self.base_dir is None:
            return False
        pid = self._read_pid() or self._pid
        return pid is not None and _process_alive(pid)

    @property
    def pid(self) -> int | None:
        """The postmaster's PID while running."""
        return self._read_pid() if self.is_running else None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cleanup()

    def __repr__(self) -> str:
        return f"<PostgresServer {self.host}:{self.port} dir={self.base_dir} pid={self._pid}>"

    # ---- connection strings ------------------------------------------------------------------

    def dsn(
        self,
        user: str = SUPERUSER,
        password: str | None = None,
        database: str = "postgres",
        *,
        host: str | None = None,
        port: int | None = None,
    ) -> str:
        """`postgresql://user:pass@127.0.0.1:PORT/db`. The password defaults to the one this
        object knows for `user` (the superuser's, or one set by create_role/alter_password);
        `host`/`port` point it elsewhere, say at a FaultProxy in front of this server."""
        secret = password if password is not None else self._passwords.get(user)
        auth = quote(user, safe="")
        if secret is not None:
            auth += ":" + quote(secret, safe="")
        return (
            f"postgresql://{auth}@{host or self.host}:{port or self.port}/"
            f"{quote(database, safe='')}"
        )

    def socket_dsn(self, user: str = SUPERUSER, database: str = "postgres") -> str:
        """`postgresql://user:pass@/db?host=SOCKET_DIR&port=PORT`: this server over its Unix
        socket (the directory as libpq's `host`, the port naming the socket file)."""
        tcp = self.dsn(user, database=database)
        return (
            tcp.replace(f"@{self.host}:{self.port}/", "@/", 1)
            + f"?host={quote(str(self.socket_dir), safe='/')}&port={self.port}"
        )

    @property
    def socket_path(self) -> Path:
        """The server's Unix socket file (there only while it runs)."""
        return self.socket_dir / f".s.PGSQL.{self.port}"

    # ---- SQL helpers (synchronous; usable from sync and async tests) -------------------------

    def execute(
        self,
        sql: str,
        *args: object,
        database: str = "postgres",
        timeout: float = QUERY_TIMEOUT_SECONDS,
    ) -> str:
        """Run one statement as the superuser; returns the command status ("CREATE ROLE")."""

        async def run(conn: Conn) -> str:
            return await conn.execute(sql, *args)

        return self._query(database, run, timeout)

    def fetch(
        self,
        sql: str,
        *args: object,
        database: str = "postgres",
        timeout: float = QUERY_TIMEOUT_SECONDS,
    ) -> list[dict[str, Any]]:
        """Rows as dicts."""

        async def run(conn: Conn) -> list[dict[str, Any]]:
            return [dict(row) for row in await conn.fetch(sql, *args)]

        return self._query(database, run, timeout)

    def fetchval(
        self,
        sql: str,
        *args: object,
        database: str = "postgres",
        timeout: float = QUERY_TIMEOUT_SECONDS,
    ) -> Any:
        """First column of the first row."""

        async def run(conn: Conn) -> Any:
            return await conn.fetchval(sql, *args)

        return self._query(database, run, timeout)

    def sessions(self, application_name: str = "health-sidecar") -> int:
        """Client sessions open now with this application_name (the helper's own excluded)."""
        count = self.fetchval(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE application_name = $1 AND pid <> pg_backend_pid()",
            application_name,
            database=SUPPORT_DATABASE,
        )
        return int(count)

    def wait_for_sessions(
        self, expected: int, application_name: str = "health-sidecar", timeout: float = 15
    ) -> None:
        """Poll sessions() until it equals `expected`; TimeoutError with the last count.
        Blocking: from an async test whose own loop holds the connections, use
        `support.wait_until_async(lambda: pg.sessions(name) == n)`."""
        deadline = time.monotonic() + timeout
        while (seen := self.sessions(application_name)) != expected:
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"{application_name!r} sessions: wanted {expected}, still {seen} "
                    f"after {timeout:g}s"
                )
            time.sleep(0.05)

    def terminate(self, application_name: str = "health-sidecar") -> int:
        """pg_terminate_backend every session with this application_name and wait (up to 5 s
        each) until they are gone; returns how many were terminated."""
        count = self.fetchval(
            "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid, 5000))"
            " FROM pg_stat_activity WHERE application_name = $1 AND pid <> pg_backend_pid()",
            application_name,
            database=SUPPORT_DATABASE,
        )
        return int(count)

    def create_role(self, name: str, password: str | None, *, superuser: bool = False) -> None:
        """A login role with a SCRAM password (dsn(user=name) then fills the password in).
        None: no password at all, for a role that logs in with a client certificate."""
        kind = "SUPERUSER" if superuser else "NOSUPERUSER"
        secret = f" PASSWORD {_literal(password)}" if password is not None else ""
        self.execute(f"CREATE ROLE {_ident(name)} LOGIN {kind}{secret}")
        if password is not None:
            self._passwords[name] = password

    def alter_password(self, role: str, password: str) -> None:
        """Change a role's password (the old one stops working for new connections)."""
        self.execute(f"ALTER ROLE {_ident(role)} PASSWORD {_literal(password)}")
        self._passwords[role] = password
        if role == SUPERUSER:
            self.password = password

    def create_database(self, name: str, *, owner: str | None = None) -> None:
        """CREATE DATABASE, optionally owned by `owner`."""
        owned = f" OWNER {_ident(owner)}" if owner else ""
        self.execute(f"CREATE DATABASE {_ident(name)}{owned}")

    def xact_commit_total(self, database: str | None = "postgres") -> int:
        """pg_stat_database.xact_commit for `database` (all databases when None).

        Backends flush these counters about once a second and on disconnect, so compare
        before/after values a moment apart, not instantly."""
        total = self.fetchval(
            "SELECT coalesce(sum(xact_commit), 0) FROM pg_stat_database"
            " WHERE $1::text IS NULL OR datname = $1",
            database,
            database=SUPPORT_DATABASE,
        )
        return int(total)

    def stat_statements(self, database: str | None = "postgres") -> list[dict[str, Any]]:
        """pg_stat_statements rows for `database` (all when None), most-called first: keys
        query, calls, rows, total_exec_time, mean_exec_time (ms), username, database."""
        return self.fetch(
            "SELECT s.query, s.calls, s.rows, s.total_exec_time, s.mean_exec_time,"
            " pg_get_userbyid(s.userid) AS username, d.datname AS database"
            " FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid"
            " WHERE $1::text IS NULL OR d.datname = $1"
            " ORDER BY s.calls DESC, s.query",
            database,
            database=SUPPORT_DATABASE,
        )

    def reset_stat_statements(self) -> None:
        """Forget every pg_stat_statements entry."""
        self.execute("SELECT pg_stat_statements_reset()", database=SUPPORT_DATABASE)

    def log_tail(self, lines: int = 50) -> str:
        """The last lines of the server log (for assertion messages)."""
        try:
            text = self.log_path.read_text(errors="replace")
        except (OSError, PostgresSetupError):
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def ssl_in_use(self, application_name: str = "health-sidecar") -> list[bool]:
        """pg_stat_ssl.ssl of every session with this application_name."""
        rows = self.fetch(
            "SELECT s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid)"
            " WHERE a.application_name = $1 AND a.pid <> pg_backend_pid()",
            application_name,
            database=SUPPORT_DATABASE,
        )
        return [bool(row["ssl"]) for row in rows]

    def backend_pids(self, application_name: str = "health-sidecar") -> set[int]:
        """The backend PIDs of the sessions with this application_name."""
        rows = self.fetch(
            "SELECT pid FROM pg_stat_activity WHERE application_name = $1"
            " AND pid <> pg_backend_pid()",
            application_name,
            database=SUPPORT_DATABASE,
        )
        return {int(row["pid"]) for row in rows}

    def wait_caught_up(self, timeout: float = 30) -> None:
        """On a replica: wait until it has replayed everything its primary committed so far.

        A marker row committed on the primary (synchronously, so it is flushed and sent at once)
        and waited for here: replay is in WAL order, so seeing it means everything before it has
        been replayed. Comparing LSNs instead is fragile: with synchronous_commit off the last
        records may sit unflushed, and the insert position can lie past any record's end."""
        primary = self.replica_of
        if primary is None:
            raise PostgresSetupError(f"{self!r} is not a replica")
        token = f"{time.time_ns()}-{id(self)}"
        primary.execute(
            "CREATE TABLE IF NOT EXISTS replication_marker (token text)",
            database=SUPPORT_DATABASE,
        )
        # Simple query protocol (no arguments): both statements in one round trip, one session.
        marker = f"INSERT INTO replication_marker VALUES ({_literal(token)})"  # noqa: S608 -- ours
        primary.execute(f"SET synchronous_commit = on; {marker}", database=SUPPORT_DATABASE)
        deadline = time.monotonic() + timeout
        seen = "SELECT EXISTS (SELECT 1 FROM replication_marker WHERE token = $1)"
        while True:
            try:
                found = bool(self.fetchval(seen, token, database=SUPPORT_DATABASE))
            except asyncpg.UndefinedTableError:
                found = False  # the CREATE TABLE itself is not replayed yet
            if found:
                return
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"replica has not replayed the primary's last commit after {timeout:g}s;"
                    f" log:\n{self.log_tail()}"
                )
            time.sleep(0.05)

    def promote(self) -> None:
        """On a replica: `pg_ctl promote`, and wait until it is a primary that takes writes
        (as a failover or a Patroni switchover leaves it)."""
        if self.replica_of is None:
            raise PostgresSetupError(f"{self!r} is not a replica")
        result = self._pg_ctl("promote", "-w")
        if result.returncode != 0:
            raise PostgresSetupError(
                f"pg_ctl promote failed:\n{result.stdout}{result.stderr}\n{self.log_tail()}"
            )

    # ---- internals ---------------------------------------------------------------------------

    def _query(self, database: str, run: Callable[[Conn], Awaitable[T]], timeout: float) -> T:
        if not self.is_running:
            raise PostgresSetupError(f"{self!r} is not running")
        socket_dir, port = str(self.socket_dir), self.port

        async def with_connection() -> T:
            # Unix socket + trust: independent of the superuser's current password.
            conn = await asyncpg.connect(
                host=socket_dir,
                port=port,
                user=SUPERUSER,
                database=database,
                timeout=timeout,
                server_settings={"application_name": SUPPORT_APPLICATION_NAME},
                # No TLS on the socket, whatever PGSSLMODE a test sets for the sidecar.
                ssl=False,
            )
            try:
                return await run(conn)
            finally:
                await conn.close(timeout=5)

        return _run_in_thread(with_connection, timeout)

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*_as_os_user(), *args],
            cwd=self.data_dir.parent,  # the postgres user may not be able to read our cwd
            env=_subprocess_env(),
            capture_output=True,
            text=True,
            check=False,
            timeout=SUBPROCESS_TIMEOUT_SECONDS,
        )

    def _pg_ctl(self, action: str, *args: str) -> subprocess.CompletedProcess[str]:
        # pg_ctl starts postgres with its output sent to -l, so it does not hold our pipes open.
        return self._run(
            str(self.bindir / "pg_ctl"),
            action,
            "-D",
            str(self.data_dir),
            "-t",
            str(PG_CTL_TIMEOUT_SECONDS),
            *args,
        )

    def _create(self) -> None:
        self.base_dir = _make_base_dir("pg-test-")
        if self.replica_of is not None:
            self._base_backup(self.replica_of)
        elif self._use_template:
            template = _template_data_dir(self.bindir)
            # As root, cp -a keeps the postgres ownership; otherwise everything is ours anyway.
            copied = subprocess.run(
                ["cp", "-a", str(template), str(self.data_dir)],
                capture_output=True,
                text=True,
                check=False,
                timeout=SUBPROCESS_TIMEOUT_SECONDS,
            )
            if copied.returncode != 0:
                raise PostgresSetupError(f"copying the template cluster failed: {copied.stderr}")
            self._bootstrapped = True
        else:
            self._initdb()
        self._created = True

    def _base_backup(self, primary: PostgresServer) -> None:
        """The primary's data directory, streamed: -R writes standby.signal and a
        primary_conninfo that reaches the primary over its Unix socket (trust, no password)."""
        result = self._run(
            str(self.bindir / "pg_basebackup"),
            "-D",
            str(self.data_dir),
            "-h",
            str(primary.socket_dir),
            "-p",
            str(primary.port),
            "-U",
            SUPERUSER,
            "-R",
            "-X",
            "stream",
            "-c",
            "fast",  # an immediate checkpoint, not a spread one
            "--no-sync",
        )
        if result.returncode != 0:
            raise PostgresSetupError(f"pg_basebackup failed:\n{result.stdout}{result.stderr}")
        # Copied from a bootstrapped primary, and read-only anyway.
        self._bootstrapped = True

    def _initdb(self) -> None:
        assert self.base_dir is not None
        pwfile = self.base_dir / "superuser-password"
        pwfile.write_text(SUPERUSER_PASSWORD + "\n")
        pwfile.chmod(0o600)
        _give_to_os_user(pwfile)
        try:
            result = self._run(
                str(self.bindir / "initdb"),
                "-D",
                str(self.data_dir),
                "--username",
                SUPERUSER,
                f"--pwfile={pwfile}",
                "--auth-host=scram-sha-256",
                # Only the helpers use the socket, which lives in the 0700 data directory.
                "--auth-local=trust",
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",  # throwaway data: durability buys nothing
                "--no-instructions",
            )
        finally:
            pwfile.unlink()
        if result.returncode != 0:
            raise PostgresSetupError(f"initdb failed:\n{result.stdout}{result.stderr}")
        with (self.data_dir / "postgresql.conf").open("a") as conf:
            conf.write(
                f"\n# Written by tests/support/pg.py for every start.\ninclude '{SETTINGS_FILE}'\n"
            )

    def _write_settings(self) -> None:
        values: dict[str, SettingValue] = {
            "listen_addresses": self.host,
            "port": self.port,
            "unix_socket_directories": str(self.socket_dir),
            "max_connections": self.max_connections,
            # Throwaway data: no durability, much less I/O.
            "fsync": False,
            "synchronous_commit": False,
            "full_page_writes": False,
            "shared_preload_libraries": "pg_stat_statements",
            "shared_buffers": "32MB",
            "dynamic_shared_memory_type": "mmap",
            "logging_collector": False,
            **self._tls_settings(),
            **self._hba_settings(),
            **self.settings,
        }
        path = self.data_dir / SETTINGS_FILE
        path.write_text("".join(f"{key} = {_guc(value)}\n" for key, value in values.items()))
        _give_to_os_user(path)

    def _tls_settings(self) -> dict[str, SettingValue]:
        if self.tls is None:
            return {}
        # Copies the postgres user owns: it refuses a key that others can read, and may not be
        # able to reach the test's own directory at all.
        installed: dict[str, SettingValue] = {"ssl": True}
        for setting, source in (
            ("ssl_cert_file", self.tls.server_cert),
            ("ssl_key_file", self.tls.server_key),
            ("ssl_ca_file", self.tls.ca),
        ):
            copy = self.data_dir / f"test_{source.name}"
            shutil.copyfile(source, copy)
            copy.chmod(0o600)
            _give_to_os_user(copy)
            installed[setting] = str(copy)
        return installed

    def _hba_settings(self) -> dict[str, SettingValue]:
        if not self.hba_lines:
            return {}
        # First match wins: ours go before initdb's catch-all `host all all ... scram` line.
        original = (self.data_dir / "pg_hba.conf").read_text()
        path = self.data_dir / HBA_FILE
        path.write_text("".join(f"{line}\n" for line in self.hba_lines) + original)
        _give_to_os_user(path)
        return {"hba_file": str(path)}

    def _bootstrap(self) -> None:
        """What every cluster needs once: pg_stat_statements (the benchmark reads it) and the
        helpers' own database."""
        self.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        self.execute(f"CREATE DATABASE {_ident(SUPPORT_DATABASE)}")
        self.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements", database=SUPPORT_DATABASE)
        self._bootstrapped = True

    def _read_pid(self) -> int | None:
        try:
            first = (self.data_dir / "postmaster.pid").read_text().split("\n", 1)[0]
        except (OSError, PostgresSetupError):
            return None
        return int(first) if first.strip().isdigit() else None

    def _log_size(self) -> int:
        try:
            return self.log_path.stat().st_size
        except OSError:
            return 0

    def _log_since(self, offset: int) -> str:
        try:
            with self.log_path.open("rb") as log:
                log.seek(offset)
                return log.read().decode(errors="replace")
        except OSError:
            return ""


# ---- the per-process template and the last-resort cleanup ----------------------------------

_template_lock = threading.Lock()
_templates: dict[Path, PostgresServer] = {}
_live_servers: set[PostgresServer] = set()


def _template_data_dir(bindir: Path) -> Path:
    """initdb + bootstrap once per process (and bindir); later clusters copy this directory."""
    with _template_lock:
        template = _templates.get(bindir)
        if template is None:
            template = PostgresServer(bindir=bindir, use_template=False)
            try:
                template.start()
                template.stop("fast")
                # Start the copies with empty statistics and pg_stat_statements.
                for stats in (template.data_dir / "pg_stat").iterdir():
                    stats.unlink()
            except BaseException:
                template.cleanup()
                raise
            _templates[bindir] = template
        return template.data_dir


@atexit.register
def _cleanup_everything() -> None:
    for server in [*_live_servers, *_templates.values()]:
        try:
            server.cleanup()
        except Exception:  # noqa: BLE001, S112 -- best effort at interpreter exit
            continue
