"""The PostgreSQL check: `SELECT 1` over one dedicated, reused asyncpg connection."""

from __future__ import annotations

import asyncio
import socket
import ssl
from typing import Any, Final

import asyncpg

from sidecar.checks import CheckFailed
from sidecar.checkspec import DatabaseTarget
from sidecar.state import Reason

APPLICATION_NAME: Final = "health-sidecar"
# Closing politely sends Terminate; bound it so shutdown never waits on a hung server.
CLOSE_TIMEOUT_SECONDS: Final = 1.0


class PostgresCheck:
    """Owns at most one connection; it is opened lazily and dropped after any failure."""

    def __init__(self, target: DatabaseTarget, *, name: str = "postgres") -> None:
        self._target = target
        self._name = name
        self._conn: asyncpg.Connection | None = None

    @property
    def name(self) -> str:
        return self._name

    @property
    def connected(self) -> bool:
        return self._conn is not None and not self._conn.is_closed()

    async def run(self) -> None:
        try:
            if self._conn is None or self._conn.is_closed():
                self._conn = None
                self._conn = await self._connect()
            # execute() without arguments uses the simple query protocol: one round trip, no
            # prepared statement, so it works behind pgbouncer in transaction mode too.
            await self._conn.execute("SELECT 1")
        except CheckFailed:
            raise
        except BaseException as exc:
            reason = classify(exc)
            if reason is None:
                raise
            raise CheckFailed(reason) from None

    async def _connect(self) -> asyncpg.Connection:
        target = self._target
        kwargs: dict[str, Any] = {
            # The prober bounds connect + query together; asyncpg's own connect timeout is
            # only a backstop and must not fire first.
            "timeout": 3600,
            # No statement cache: transaction-mode poolers cannot keep prepared statements.
            "statement_cache_size": 0,
            "server_settings": {"application_name": APPLICATION_NAME},
        }
        if target.dsn is not None:
            return await asyncpg.connect(target.dsn, **kwargs)
        return await asyncpg.connect(
            host=target.host,
            port=target.port,
            user=target.user,
            password=target.password,
            database=target.database,
            **kwargs,
        )

    async def reset(self) -> None:
        """Drop the connection without a round trip: after a failure its state is unknown."""
        conn, self._conn = self._conn, None
        if conn is not None and not conn.is_closed():
            conn.terminate()

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None or conn.is_closed():
            return
        try:
            await asyncio.wait_for(conn.close(), CLOSE_TIMEOUT_SECONDS)
        except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
            conn.terminate()


def classify(exc: BaseException) -> Reason | None:  # noqa: PLR0911, PLR0912 -- one flat table
    """Map a connection or query error to a fixed reason; None for what is not ours to judge.

    Cancellation and interpreter exits are never classified: they must propagate.
    """
    if isinstance(exc, asyncio.CancelledError | KeyboardInterrupt | SystemExit):
        return None
    match exc:
        case TimeoutError():
            return Reason.TIMEOUT
        case asyncpg.InvalidAuthorizationSpecificationError():
            # Covers InvalidPasswordError and "no pg_hba.conf entry": both are credentials.
            return Reason.AUTH_FAILED
        case asyncpg.InvalidCatalogNameError():
            return Reason.DATABASE_NOT_FOUND
        case asyncpg.TooManyConnectionsError():
            return Reason.TOO_MANY_CONNECTIONS
        case (
            asyncpg.AdminShutdownError()
            | asyncpg.CrashShutdownError()
            | asyncpg.CannotConnectNowError()
        ):
            return Reason.SERVER_SHUTDOWN
        case asyncpg.ConnectionDoesNotExistError() | ConnectionResetError() | BrokenPipeError():
            return Reason.CONNECTION_RESET
        case ConnectionRefusedError():
            return Reason.CONNECTION_REFUSED
        case socket.gaierror():
            return Reason.DNS_FAILURE
        case ssl.SSLError() | ssl.CertificateError():
            return Reason.TLS_ERROR
        case asyncpg.PostgresConnectionError() | asyncpg.InterfaceError():
            return Reason.NETWORK_ERROR
        case asyncpg.PostgresError():
            return Reason.QUERY_FAILED
        case OSError():
            # asyncpg raises a plain OSError listing every address it tried; refused is
            # by far the commonest cause, so look inside before giving up.
            errno_refused = 111
            if exc.errno == errno_refused or "Connect call failed" in str(exc):
                return Reason.CONNECTION_REFUSED
            return Reason.NETWORK_ERROR
    return None
