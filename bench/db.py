"""The database side of the bench: the tests' PostgresServer and FaultProxy, plus what the bench
reads from them (statements and sessions per role, CPU of the whole cluster) and a pgbouncer.

Reused from tests/support (a throwaway PostgreSQL 15 with pg_stat_statements preloaded, and a
TCP proxy that can blackhole) rather than duplicated. tests/ has no __init__.py and pytest puts
tests/ itself on sys.path, so the package is `support`; the bench does the same, so the module has
one name everywhere (mypy included, when it checks bench and tests together).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Final

from bench import procs

if str(procs.REPO / "tests") not in sys.path:
    sys.path.append(str(procs.REPO / "tests"))

# `mypy bench` alone does not see tests/ (the project's mypy files are sidecar and tests), so the
# import may be unresolved there and resolved when both are checked: hence both codes.
from support.faultproxy import FaultProxy  # type: ignore[import-not-found, unused-ignore]
from support.pg import PostgresServer, find_bindir  # type: ignore[import-not-found, unused-ignore]

__all__ = ["Bouncer", "Database", "FaultProxy", "available", "pgbouncer_path"]

# One login role per design, so pg_stat_statements and pg_stat_activity tell them apart.
ROLES: Final = ("sidecar", "sidecar_uv", "baseline", "fleet")
ROLE_PASSWORD: Final = "bench-password"


def available() -> bool:
    try:
        find_bindir()
    except RuntimeError:
        return False
    return True


def pgbouncer_path() -> str | None:
    return shutil.which("pgbouncer") or (
        "/usr/sbin/pgbouncer" if Path("/usr/sbin/pgbouncer").exists() else None
    )


class Database:
    """One cluster for the whole run; max_connections stays at PostgreSQL's default of 100."""

    def __init__(self) -> None:
        # No autovacuum: nothing here writes, and its workers would add CPU no probe caused.
        self.server = PostgresServer(
            settings={"pg_stat_statements.track": "all", "autovacuum": False}
        )
        self.background: frozenset[int] = frozenset()

    def start(self) -> None:
        self.server.start()
        for role in ROLES:
            self.server.create_role(role, ROLE_PASSWORD)
        rows = self.server.fetch(
            "SELECT pid FROM pg_stat_activity WHERE backend_type <> 'client backend'"
        )
        self.background = frozenset(int(row["pid"]) for row in rows)

    def stop(self) -> None:
        self.server.cleanup()

    @property
    def port(self) -> int:
        return int(self.server.port)

    def dsn(self, role: str, *, port: int | None = None) -> str:
        return str(self.server.dsn(role, port=port))

    def cpu_seconds(self) -> float:
        """The postmaster, its live client backends, and every backend it has reaped; not the
        background processes (checkpointer, walwriter, ...), which no probe wakes.

        Reading pg_stat_* opens a backend of its own: callers settle (`settle()`) after such
        reads and before taking the first CPU reading, so that backend is reaped outside.
        """
        pid = self.server.pid
        if pid is None:
            raise RuntimeError("postgres is not running")
        return procs.tree_cpu_seconds(int(pid), exclude=self.background)

    @staticmethod
    def settle() -> None:
        """Let the backend of a helper query exit and be reaped before CPU is read."""
        time.sleep(0.3)

    def statements(self, role: str) -> int:
        """pg_stat_statements calls so far by one role, every statement kind together."""
        value = self.server.fetchval(
            "SELECT coalesce(sum(calls), 0) FROM pg_stat_statements s"
            " JOIN pg_roles r ON r.oid = s.userid WHERE r.rolname = $1",
            role,
        )
        return int(value)

    def statement_texts(self, role: str) -> dict[str, int]:
        rows = self.server.fetch(
            "SELECT query, sum(calls)::bigint AS calls FROM pg_stat_statements s"
            " JOIN pg_roles r ON r.oid = s.userid WHERE r.rolname = $1 GROUP BY query",
            role,
        )
        return {str(row["query"]): int(row["calls"]) for row in rows}

    def sessions(self, role: str) -> int:
        """Client backends held by one role right now."""
        value = self.server.fetchval(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE usename = $1 AND backend_type = 'client backend'",
            role,
        )
        return int(value)


class Bouncer:
    """pgbouncer in transaction mode in front of the cluster, as the postgres OS user."""

    def __init__(self, db: Database, *, pool_size: int, max_clients: int) -> None:
        self.db = db
        self.pool_size = pool_size
        self.max_clients = max_clients
        self.port = procs.free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.dir: Path | None = None

    def start(self) -> None:
        binary = pgbouncer_path()
        if binary is None:
            raise RuntimeError("pgbouncer is not installed (bash .ci/bench-tools.sh)")
        base = self.db.server.data_dir.parent
        self.dir = base / "pgbouncer"
        self.dir.mkdir(exist_ok=True)
        users = "".join(f'"{role}" "{ROLE_PASSWORD}"\n' for role in ROLES)
        (self.dir / "users.txt").write_text(users)
        (self.dir / "pgbouncer.ini").write_text(
            "[databases]\n"
            f"postgres = host=127.0.0.1 port={self.db.port} dbname=postgres\n"
            "[pgbouncer]\n"
            "listen_addr = 127.0.0.1\n"
            f"listen_port = {self.port}\n"
            "unix_socket_dir =\n"
            # Clients are local bench processes; the server side uses the role's password.
            "auth_type = trust\n"
            f"auth_file = {self.dir / 'users.txt'}\n"
            "pool_mode = transaction\n"
            f"default_pool_size = {self.pool_size}\n"
            f"max_client_conn = {self.max_clients}\n"
            "server_check_delay = 30\n"
            "log_connections = 0\n"
            "log_disconnections = 0\n"
            "log_pooler_errors = 1\n"
            f"logfile = {self.dir / 'pgbouncer.log'}\n"
        )
        owner = procs.os_user_for_postgres()
        if owner is not None:
            for path in (self.dir, *self.dir.iterdir()):
                shutil.chown(path, owner, owner)
        self.proc = procs.spawn(
            [binary, str(self.dir / "pgbouncer.ini")],
            user=owner,
            cwd=self.dir,
        )
        procs.wait_for_port(self.port, timeout=10, proc=self.proc)

    def cpu_seconds(self) -> float:
        return 0.0 if self.proc is None else procs.task_cpu_seconds(self.proc.pid)

    def stop(self) -> None:
        if self.proc is not None:
            procs.stop(self.proc, sig=2)
            self.proc = None
        # Give the server a moment to see the pooled sessions close.
        time.sleep(0.2)
