"""A real two-node Patroni cluster and one etcd on free loopback ports, for the real-HA tests.

`PatroniCluster()` is nothing until `start()`: it starts one etcd (v3 API, data in /dev/shm where
it exists, since etcd fsyncs every write and a slow disk would cost Patroni its leader lock), then
two Patroni members (`node0`, `node1`) with PostgreSQL 15, each in its own directory under one
`mkdtemp()`, and waits until it is *settled*: one member is the primary by Patroni's own REST
(`/primary` 200), the other a replica (`/replica` 200) that the primary sees streaming. `stop()`
ends every process it started, by PID.

Timings are short (`ttl` 10, `loop_wait` 1, `retry_timeout` 4: Patroni wants `loop_wait + 2 x
retry_timeout <= ttl`), so a failover takes about ten seconds and a switchover two or three.

Everything runs as the `postgres` OS user when we are root (initdb refuses root): Popen's
`user=`/`group=` switch users in the child before it execs, so the PID we hold is Patroni's own
(`runuser` would fork and sit between us, and `kill -9` of its PID would not be a Patroni crash).

The helpers speak SQL as the superuser over each member's Unix socket (`local all all trust`,
independent of any password a test changes). TCP logins need a password: `SUPERUSER_PASSWORD`,
or the `sidecar` role's (`SIDECAR_ROLE`, made once per cluster). `dsn(...)` builds a multi-host
DSN over both members, in member order, with `target_session_attrs` if asked.

Test-facing actions: `switchover()` (REST POST /switchover from the leader to the other member),
`kill_leader()` (`kill -9` of the leader's Patroni and then its postmaster, the failover that
crashes bring), `restart_member()`, `wait_settled()`, and `ensure_healthy()`: restart members
whose Patroni died, wait for the settled state, and if it does not come, rebuild the cluster from
scratch, so tests can run one after another on one cluster.
"""

from __future__ import annotations

import atexit
import contextlib
import http.client
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TypeAlias, TypeVar
from urllib.parse import quote

import asyncpg

from . import LOOPBACK, free_port
from .pg import (
    SUPERUSER,
    SUPERUSER_PASSWORD,
    PostgresSetupError,
    _children,
    _give_to_os_user,
    _os_user,
    _process_alive,
    _run_in_thread,
    _subprocess_env,
    _wait_gone,
    find_bindir,
)

if TYPE_CHECKING:
    Conn: TypeAlias = asyncpg.Connection[asyncpg.Record]

__all__ = [
    "SIDECAR_PASSWORD",
    "SIDECAR_ROLE",
    "Member",
    "PatroniCluster",
    "PatroniSetupError",
    "missing_tools",
]

TTL: Final = 10
LOOP_WAIT: Final = 1
RETRY_TIMEOUT: Final = 4
NAMESPACE: Final = "/health-sidecar-tests/"
SIDECAR_ROLE: Final = "sidecar"
SIDECAR_PASSWORD: Final = "sidecar-ha-password"
REPLICATION_USER: Final = "replicator"
REPLICATION_PASSWORD: Final = "replicator-ha-password"
REWIND_USER: Final = "rewinder"
REWIND_PASSWORD: Final = "rewinder-ha-password"
MEMBER_NAMES: Final = ("node0", "node1")
TOOLS: Final = ("patroni", "etcd")

# Generous: a loaded 2-core CI machine bootstraps, clones and promotes slowly.
ETCD_START_SECONDS: Final = 30.0
SETTLE_SECONDS: Final = 90.0
STOP_SECONDS: Final = 30.0
REST_TIMEOUT_SECONDS: Final = 2.0
# A REST request that timed out is asked again (Patroni answers in milliseconds, but a loaded
# machine can stall one now and then); a refused one is an answer: that Patroni is not running.
REST_ATTEMPTS: Final = 2
TIMED_OUT: Final = -1
SWITCHOVER_REQUEST_SECONDS: Final = 60.0
QUERY_TIMEOUT_SECONDS: Final = 30.0
LOG_TAIL_CHARS: Final = 3000

T = TypeVar("T")


class PatroniSetupError(RuntimeError):
    """The cluster could not be started, settled or stopped; the message carries the log tails."""


def missing_tools() -> list[str]:
    """The binaries of Debian's patroni and etcd-server packages that are not on PATH."""
    return [tool for tool in TOOLS if shutil.which(tool) is None]


def _shm_parent() -> str | None:
    """/dev/shm for etcd's data when it is a writable directory (tmpfs: fsync costs nothing)."""
    shm = Path("/dev/shm")
    return str(shm) if shm.is_dir() and os.access(shm, os.W_OK | os.X_OK) else None


def _make_dir(prefix: str, parent: str | None = None) -> Path:
    # /tmp, not pytest's tmp_path (0700 root): the postgres user must reach it.
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=parent or "/tmp"))
    _give_to_os_user(path)
    return path


def _spawn(
    command: Sequence[str], *, log: Path, cwd: Path, env: dict[str, str]
) -> subprocess.Popen[bytes]:
    """Start `command` as the postgres OS user (when root), output appended to `log`."""
    user = _os_user()
    switch: dict[str, Any] = {}
    if user is not None:
        switch = {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}
    with log.open("ab") as out:
        _give_to_os_user(log)
        return subprocess.Popen(
            list(command),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env=env,
            # Its own session: a Ctrl-C at the terminal reaches pytest, whose teardown stops
            # these in order, not every process at once.
            start_new_session=True,
            **switch,
        )


def _end(process: subprocess.Popen[bytes] | None, timeout: float) -> None:
    """SIGTERM the process we started, SIGKILL it after `timeout`, and reap it."""
    if process is None or process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        process.wait(10)


def _tail(path: Path, chars: int = LOG_TAIL_CHARS) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return ""


def _http(
    port: int,
    path: str,
    *,
    method: str = "GET",
    body: dict[str, Any] | None = None,
    timeout: float = REST_TIMEOUT_SECONDS,
) -> tuple[int, bytes]:
    """(status, body) of one request to 127.0.0.1:`port`; (TIMED_OUT, b"") when it timed out,
    (0, b"") when it failed otherwise (refused, reset)."""
    conn = http.client.HTTPConnection(LOOPBACK, port, timeout=timeout)
    try:
        payload = None if body is None else json.dumps(body).encode()
        headers = {} if body is None else {"Content-Type": "application/json"}
        conn.request(method, path, body=payload, headers=headers)
        response = conn.getresponse()
        return response.status, response.read()
    except TimeoutError:
        return TIMED_OUT, b""
    except (OSError, http.client.HTTPException):
        return 0, b""
    finally:
        conn.close()


class Etcd:
    """One etcd member serving the v3 API on 127.0.0.1:`port`."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_port()
        self.peer_port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def log_path(self) -> Path:
        return self.directory / "etcd.log"

    def start(self) -> None:
        peer = f"http://{LOOPBACK}:{self.peer_port}"
        client = f"http://{LOOPBACK}:{self.port}"
        self.process = _spawn(
            [
                shutil.which("etcd") or "etcd",
                "--name", "tests",
                "--data-dir", str(self.directory / "data"),
                "--listen-client-urls", client,
                "--advertise-client-urls", client,
                "--listen-peer-urls", peer,
                "--initial-advertise-peer-urls", peer,
                "--initial-cluster", f"tests={peer}",
                "--initial-cluster-state", "new",
                "--logger", "zap",
                "--log-level", "warn",
            ],
            log=self.log_path,
            cwd=self.directory,
            env={"PATH": "/usr/bin:/bin", "HOME": str(self.directory)},
        )  # fmt: skip
        deadline = time.monotonic() + ETCD_START_SECONDS
        while True:
            status, body = _http(self.port, "/health")
            if status == 200 and b"true" in body:
                return
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise PatroniSetupError(
                    f"etcd did not become healthy on port {self.port}:\n{_tail(self.log_path)}"
                )
            time.sleep(0.1)

    def stop(self) -> None:
        _end(self.process, STOP_SECONDS)
        self.process = None


class Member:
    """One Patroni member and its PostgreSQL, in `directory`."""

    def __init__(
        self, name: str, directory: Path, config: Callable[[Member], dict[str, Any]]
    ) -> None:
        self.name = name
        self.directory = directory
        self.pg_port = free_port()
        self.rest_port = free_port()
        self._config = config
        self.process: subprocess.Popen[bytes] | None = None

    def __repr__(self) -> str:
        return f"<Member {self.name} pg={self.pg_port} rest={self.rest_port}>"

    # ---- paths -------------------------------------------------------------------------------

    @property
    def data_dir(self) -> Path:
        return self.directory / "data"

    @property
    def config_path(self) -> Path:
        return self.directory / "patroni.yml"

    @property
    def log_path(self) -> Path:
        """Patroni's log; the postmaster inherits Patroni's stdout, so PostgreSQL's is here too."""
        return self.directory / "patroni.log"

    # ---- processes ---------------------------------------------------------------------------

    def start(self) -> None:
        """Start this member's Patroni (which starts, clones or rewinds its PostgreSQL)."""
        if self.patroni_alive:
            return
        # JSON is YAML: Patroni reads it as its configuration file.
        self.config_path.write_text(json.dumps(self._config(self), indent=2) + "\n")
        self.config_path.chmod(0o600)
        _give_to_os_user(self.config_path)
        env = {
            **_subprocess_env(),
            "HOME": str(self.directory),
            "LC_ALL": "C.UTF-8",
            "PATH": f"{find_bindir()}:/usr/bin:/bin",
        }
        self.process = _spawn(
            [shutil.which("patroni") or "patroni", str(self.config_path)],
            log=self.log_path,
            cwd=self.directory,
            env=env,
        )

    @property
    def patroni_alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def patroni_pid(self) -> int | None:
        return self.process.pid if self.patroni_alive and self.process is not None else None

    def postmaster_pid(self) -> int | None:
        """The running postmaster's PID (from postmaster.pid), None when there is none."""
        try:
            first = (self.data_dir / "postmaster.pid").read_text().split("\n", 1)[0].strip()
        except OSError:
            return None
        if not first.isdigit():
            return None
        pid = int(first)
        return pid if _process_alive(pid) else None

    def kill(self) -> None:
        """`kill -9` of Patroni, then of its postmaster; returns once both (and the postmaster's
        children, which notice its death on their own) are gone."""
        postmaster = self.postmaster_pid()
        children = _children(postmaster) if postmaster is not None else []
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()
            self.process.wait(10)
        if postmaster is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(postmaster, signal.SIGKILL)
        pids = [pid for pid in (postmaster, *children) if pid is not None]
        if not _wait_gone(pids, STOP_SECONDS):
            raise PatroniSetupError(f"{self!r}: postgres processes {pids} still alive after kill")

    def stop(self) -> None:
        """SIGTERM Patroni (it stops PostgreSQL first), wait; then make sure the postmaster is
        gone too (SIGKILL to its PID if Patroni had to be killed)."""
        postmaster = self.postmaster_pid()
        _end(self.process, STOP_SECONDS)
        self.process = None
        if postmaster is not None and not _wait_gone([postmaster], 5):
            with contextlib.suppress(ProcessLookupError):
                os.kill(postmaster, signal.SIGKILL)
            _wait_gone([postmaster], 10)

    # ---- Patroni's view ----------------------------------------------------------------------

    def rest(self, path: str, *, timeout: float = REST_TIMEOUT_SECONDS) -> int:
        """The status of GET `path` on this member's REST API; 0 when nothing answered."""
        for _ in range(REST_ATTEMPTS):
            status = _http(self.rest_port, path, timeout=timeout)[0]
            if status != TIMED_OUT:
                return status
        return 0

    def is_primary(self) -> bool:
        """Patroni's own answer: `/primary` is 200 (it holds the leader lock, PostgreSQL runs)."""
        return self.rest("/primary") == 200

    def is_replica(self) -> bool:
        """Patroni's own answer: `/replica` is 200 (a running replica)."""
        return self.rest("/replica") == 200

    def log_tail(self) -> str:
        return _tail(self.log_path)

    # ---- SQL as the superuser, over the Unix socket -------------------------------------------

    def _query(self, run: Callable[[Conn], Awaitable[T]], timeout: float) -> T:
        socket_dir, port = str(self.directory), self.pg_port

        async def with_connection() -> T:
            conn = await asyncpg.connect(
                host=socket_dir,
                port=port,
                user=SUPERUSER,
                database="postgres",
                timeout=timeout,
                server_settings={"application_name": "tests.support"},
                ssl=False,
            )
            try:
                return await run(conn)
            finally:
                await conn.close(timeout=5)

        return _run_in_thread(with_connection, timeout)

    def execute(self, sql: str, *args: object, timeout: float = QUERY_TIMEOUT_SECONDS) -> str:
        """Run one statement as the superuser; returns the command status."""

        async def run(conn: Conn) -> str:
            return await conn.execute(sql, *args)

        return self._query(run, timeout)

    def fetch(
        self, sql: str, *args: object, timeout: float = QUERY_TIMEOUT_SECONDS
    ) -> list[dict[str, Any]]:
        """Rows as dicts."""

        async def run(conn: Conn) -> list[dict[str, Any]]:
            return [dict(row) for row in await conn.fetch(sql, *args)]

        return self._query(run, timeout)

    def fetchval(self, sql: str, *args: object, timeout: float = QUERY_TIMEOUT_SECONDS) -> Any:
        """First column of the first row."""

        async def run(conn: Conn) -> Any:
            return await conn.fetchval(sql, *args)

        return self._query(run, timeout)


class PatroniCluster:
    """etcd plus two Patroni members; see the module docstring."""

    def __init__(self) -> None:
        missing = missing_tools()
        if missing:
            raise PatroniSetupError(
                f"{', '.join(missing)} not installed: bash .ci/ha-tools.sh "
                "(Debian's patroni and etcd-server)"
            )
        self.bindir = find_bindir()
        self.base_dir: Path | None = None
        self.etcd: Etcd | None = None
        self.members: tuple[Member, ...] = ()
        self.scope = ""
        self.builds = 0

    # ---- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Create and start etcd and both members; return once settled, with the sidecar role."""
        self.builds += 1
        self.scope = f"hs-{uuid.uuid4().hex[:8]}"
        self.base_dir = _make_dir("patroni-test-")
        _live_clusters.add(self)
        etcd_dir = _make_dir("etcd-test-", _shm_parent())
        self.etcd = Etcd(etcd_dir)
        self.etcd.start()
        self.members = tuple(
            Member(name, self._member_dir(name), self._config) for name in MEMBER_NAMES
        )
        # node0 first, so it bootstraps and node1 clones it (both at once also works, but then
        # the loser's first attempt waits a loop for the winner's initialize key).
        self.members[0].start()
        self._wait(self.members[0].is_primary, "node0 bootstrapped as primary")
        self.members[1].start()
        self.wait_settled()
        leader = self.leader()
        assert leader is not None
        leader.execute(f"CREATE ROLE \"{SIDECAR_ROLE}\" LOGIN PASSWORD '{SIDECAR_PASSWORD}'")

    def stop(self) -> None:
        """Stop every member and etcd by PID, and delete their directories. Idempotent."""
        try:
            for member in self.members:
                member.stop()
            if self.etcd is not None:
                self.etcd.stop()
        finally:
            _live_clusters.discard(self)
            if self.etcd is not None:
                shutil.rmtree(self.etcd.directory, ignore_errors=True)
                self.etcd = None
            if self.base_dir is not None:
                shutil.rmtree(self.base_dir, ignore_errors=True)
                self.base_dir = None
            self.members = ()

    def rebuild(self) -> None:
        """Throw the cluster away and start a new one (new ports, new data)."""
        self.stop()
        self.start()

    def ensure_healthy(self, timeout: float = SETTLE_SECONDS) -> None:
        """Restart members whose Patroni is gone, wait for the settled state; rebuild the whole
        cluster when it does not come within `timeout`."""
        if self.etcd is None or self.etcd.process is None or self.etcd.process.poll() is not None:
            self.rebuild()
            return
        for member in self.members:
            member.start()
        try:
            self.wait_settled(timeout)
        except PatroniSetupError:
            self.rebuild()

    # ---- Patroni's view ----------------------------------------------------------------------

    def leader(self) -> Member | None:
        """The member whose `/primary` says 200 (the first, should two ever say so)."""
        return next((m for m in self.members if m.is_primary()), None)

    def replica(self) -> Member | None:
        """The member whose `/replica` says 200."""
        return next((m for m in self.members if m.is_replica()), None)

    def has_primary(self) -> bool:
        """Some member's Patroni says it is the primary."""
        return any(m.is_primary() for m in self.members)

    def has_replica(self) -> bool:
        """Some member's Patroni says it is a running replica."""
        return any(m.is_replica() for m in self.members)

    def other(self, member: Member) -> Member:
        return next(m for m in self.members if m is not member)

    def settled(self) -> bool:
        """One primary, one replica, and the primary sees the replica streaming."""
        leader = self.leader()
        if leader is None:
            return False
        replica = self.other(leader)
        if not replica.is_replica():
            return False
        try:
            streaming = leader.fetchval(
                "SELECT count(*) FROM pg_stat_replication"
                " WHERE application_name = $1 AND state = 'streaming'",
                replica.name,
                timeout=5,
            )
        except (OSError, asyncpg.PostgresError, TimeoutError, PostgresSetupError):
            return False
        return bool(streaming)

    def wait_settled(self, timeout: float = SETTLE_SECONDS) -> None:
        self._wait(self.settled, "cluster settled (a primary and a streaming replica)", timeout)

    # ---- what tests do to it -----------------------------------------------------------------

    def switchover(self) -> Member:
        """A planned switchover from the leader to the other member; returns the new leader once
        its Patroni says it is the primary."""
        leader = self._need_leader()
        candidate = self.other(leader)
        status, body = _http(
            leader.rest_port,
            "/switchover",
            method="POST",
            body={"leader": leader.name, "candidate": candidate.name},
            timeout=SWITCHOVER_REQUEST_SECONDS,
        )
        # 503 "status unknown": Patroni stopped polling for the result; we wait for it instead.
        if status != 200 and b"unknown" not in body:
            raise PatroniSetupError(
                f"switchover refused ({status}): {body.decode(errors='replace')}"
            )
        self._wait(candidate.is_primary, f"{candidate.name} primary after switchover")
        return candidate

    def kill_leader(self) -> Member:
        """`kill -9` of the leader's Patroni and postmaster; returns the killed member."""
        leader = self._need_leader()
        leader.kill()
        return leader

    def restart_member(self, member: Member) -> None:
        """Start a stopped or killed member again: it rejoins as a replica (rewound if need be)."""
        member.start()

    # ---- connection strings ------------------------------------------------------------------

    def dsn(
        self,
        *,
        user: str = SIDECAR_ROLE,
        password: str = SIDECAR_PASSWORD,
        database: str = "postgres",
        target_session_attrs: str | None = None,
        hosts: Sequence[tuple[str, int]] | None = None,
    ) -> str:
        """`postgresql://user:pass@127.0.0.1:p0,127.0.0.1:p1/db[?target_session_attrs=...]`:
        both members in member order, or `hosts` (say, fault proxies in front of them)."""
        pairs = hosts if hosts is not None else [(LOOPBACK, m.pg_port) for m in self.members]
        netloc = ",".join(f"{host}:{port}" for host, port in pairs)
        query = f"?target_session_attrs={target_session_attrs}" if target_session_attrs else ""
        auth = f"{quote(user, safe='')}:{quote(password, safe='')}"
        return f"postgresql://{auth}@{netloc}/{quote(database, safe='')}{query}"

    def log_tails(self) -> str:
        parts = [f"--- {m.name} ({m.log_path}) ---\n{m.log_tail()}" for m in self.members]
        if self.etcd is not None:
            parts.append(f"--- etcd ---\n{_tail(self.etcd.log_path)}")
        return "\n".join(parts)

    # ---- internals ---------------------------------------------------------------------------

    def _need_leader(self) -> Member:
        leader = self.leader()
        if leader is None:
            raise PatroniSetupError(f"no leader\n{self.log_tails()}")
        return leader

    def _wait(
        self, predicate: Callable[[], bool], what: str, timeout: float = SETTLE_SECONDS
    ) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise PatroniSetupError(f"{what}: not within {timeout:g}s\n{self.log_tails()}")
            time.sleep(0.2)

    def _member_dir(self, name: str) -> Path:
        assert self.base_dir is not None
        directory = self.base_dir / name
        directory.mkdir()
        _give_to_os_user(directory)
        return directory

    def _config(self, member: Member) -> dict[str, Any]:
        assert self.etcd is not None
        return {
            "scope": self.scope,
            "namespace": NAMESPACE,
            "name": member.name,
            "log": {"level": "INFO"},
            "restapi": {
                "listen": f"{LOOPBACK}:{member.rest_port}",
                "connect_address": f"{LOOPBACK}:{member.rest_port}",
            },
            # etcd 3.4 serves v2 only with --enable-v2; Patroni 3.0 speaks v3 as `etcd3`.
            "etcd3": {"hosts": [f"{LOOPBACK}:{self.etcd.port}"]},
            "bootstrap": {
                "dcs": {
                    "ttl": TTL,
                    "loop_wait": LOOP_WAIT,
                    "retry_timeout": RETRY_TIMEOUT,
                    "maximum_lag_on_failover": 64 * 1024 * 1024,
                    "postgresql": {
                        "use_pg_rewind": True,
                        "use_slots": True,
                        "parameters": {
                            "max_connections": 100,
                            "wal_level": "replica",
                            "hot_standby": "on",
                            "max_wal_senders": 10,
                            "max_replication_slots": 10,
                            "wal_keep_size": "128MB",
                            # pg_rewind needs hint bits logged (and full page writes, kept on).
                            "wal_log_hints": "on",
                            # Throwaway data: a process crash keeps the OS page cache anyway.
                            "fsync": "off",
                            "synchronous_commit": "off",
                            "shared_buffers": "32MB",
                            "dynamic_shared_memory_type": "mmap",
                        },
                    },
                },
                "initdb": [{"encoding": "UTF8"}, {"locale": "C"}],
            },
            "postgresql": {
                "listen": f"{LOOPBACK}:{member.pg_port}",
                "connect_address": f"{LOOPBACK}:{member.pg_port}",
                "data_dir": str(member.data_dir),
                "bin_dir": str(self.bindir),
                "pgpass": str(member.directory / "pgpass"),
                "use_unix_socket": True,
                "authentication": {
                    "superuser": {"username": SUPERUSER, "password": SUPERUSER_PASSWORD},
                    "replication": {
                        "username": REPLICATION_USER,
                        "password": REPLICATION_PASSWORD,
                    },
                    "rewind": {"username": REWIND_USER, "password": REWIND_PASSWORD},
                },
                "parameters": {"unix_socket_directories": str(member.directory)},
                "pg_hba": [
                    "local all all trust",
                    f"host replication {REPLICATION_USER} {LOOPBACK}/32 scram-sha-256",
                    f"host all all {LOOPBACK}/32 scram-sha-256",
                ],
                # A crashed primary that cannot be rewound is cloned again instead of stuck.
                "remove_data_directory_on_rewind_failure": True,
                "remove_data_directory_on_diverged_timelines": True,
                "basebackup": [{"checkpoint": "fast"}],
            },
            "tags": {"nofailover": False, "noloadbalance": False, "clonefrom": False},
        }


_live_clusters: set[PatroniCluster] = set()


@atexit.register
def _cleanup_everything() -> None:
    for cluster in list(_live_clusters):
        try:
            cluster.stop()
        except Exception:  # noqa: BLE001, S112 -- best effort at interpreter exit
            continue
