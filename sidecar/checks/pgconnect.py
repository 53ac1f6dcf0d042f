"""Opening a postgres check's connection as libpq would, and knowing what it reached.

Each host of the DSN in turn, each with an equal share of the time (libpq's `connect_timeout` is
per host), until one has the role the DSN asks for (`target_session_attrs`, or `require_primary`
with several hosts: `pgrole.Wanted`). The role is judged here with `pgrole.FACTS_QUERY` rather
than by asyncpg, so that the check can judge it again, the same way, on every later run.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, TypeAlias

import asyncpg

from sidecar import resolver
from sidecar.checks.pgrole import FACTS_QUERY, Facts, Wanted
from sidecar.reasons import CheckFailed, Reason
from sidecar.resolver import DaemonExecutor

if TYPE_CHECKING:
    # Generic only in asyncpg-stubs; at run time the class is not subscriptable.
    Conn: TypeAlias = asyncpg.Connection[asyncpg.Record]

# A host as asyncpg's parser lists it: (name or address, port), or (socket path, None).
Address: TypeAlias = tuple[str, int | None]

APPLICATION_NAME: Final = "health-sidecar"
# How libpq (and asyncpg) name a server's Unix socket in its directory: `.s.PGSQL.<port>`.
SOCKET_MARKER: Final = ".s.PGSQL."
# Keeps the sidecar's own session from being closed by a server or role setting meant for idle
# apps. Only a help: a server or pooler that refuses the startup parameter (pgbouncer, servers
# before 14) gets a connection without it, and a closed kept connection is replaced anyway.
KEEP_SESSION_SETTINGS: Final = {"idle_session_timeout": "0"}
# Of a host's time budget, the part a name lookup may take: a silent resolver is reported as
# dns_failure (timed out) rather than as a plain timeout of the whole check.
RESOLVE_SHARE: Final = 0.8
# asyncpg.connect's arguments for a target given as libpq parameters (PGHOST, ...).
LIBPQ_ARGUMENTS: Final = ("host", "port", "user", "password", "database")
# The rest of what asyncpg's DSN parser takes; the host list and target_session_attrs are read.
_UNUSED_PARSE_ARGUMENTS: Final = [
    "passfile",
    "service",
    "servicefile",
    "direct_tls",
    "server_settings",
    "target_session_attrs",
    "krbsrvname",
    "gsslib",
]


@dataclass(frozen=True, slots=True)
class Session:
    """An open connection, the role its DSN asks for, and what its server was when opened."""

    conn: Conn
    wanted: Wanted
    facts: Facts | None
    opened_at: float


class NoServerSocket(ConnectionRefusedError):
    """A Unix-socket connect that found no socket file: nothing listens there, as a refused TCP
    connect says. A server that stops removes its socket, so ENOENT is how a stopped local
    server answers; it gets the fast recovery of a refusal (sidecar.loop, REACH_PROBE_SECONDS)."""

    def __init__(self, cause: str) -> None:
        super().__init__(errno.ECONNREFUSED, cause)
        self.cause = cause


class SocketForbidden(PermissionError):
    """A Unix-socket connect this process may not make (EACCES): a socket directory it may not
    enter, or a socket it may not write to. Not a refusal: retrying fast cannot change it."""

    def __init__(self, cause: str) -> None:
        super().__init__(errno.EACCES, cause)
        self.cause = cause


class RoleMismatch(CheckFailed):
    """No host has the role asked. `watches`: a session on each host that answered with the
    wrong role, in host order, kept so that the check can ask them again cheaply, without a
    login, while it waits to retry: whichever standby a failover promotes is seen within
    moments. `refused`: the hosts where nothing listened, which a TCP connect can see come
    back (a member that rejoins)."""

    def __init__(
        self, reason: Reason, watches: tuple[Session, ...], refused: tuple[Address, ...] = ()
    ) -> None:
        super().__init__(reason)
        self.watches = watches
        self.refused = refused


@dataclass(eq=False, slots=True)
class Connector:
    """Opens the connections of one check; remembers whether the server takes
    KEEP_SESSION_SETTINGS."""

    # The sidecar's resolver pool: a lookup that never returns cannot hold the exit.
    resolver: DaemonExecutor
    require_primary: bool = False
    monotonic: Callable[[], float] = time.monotonic
    # False once the server (or a pooler) refused KEEP_SESSION_SETTINGS.
    _keep_session_settings: bool = field(default=True, init=False)

    async def open(self, dsn: str | None, target: dict[str, Any], within: float) -> Session:
        """Connect as libpq would: each host in turn, each with an equal share of `within`,
        until one has the role the DSN asks for (prefer-standby: the first standby, else the
        first that answered). `target`: asyncpg.connect's own arguments, if any."""
        hosts, session_attrs = hosts_and_attrs(dsn, target)
        if session_attrs is not None:
            # Judged here, on this and every later run; asyncpg would judge it once, at connect
            # (and, for prefer-standby, pick a host at random). Unparsed: asyncpg says why.
            target = {**target, "target_session_attrs": "any"}
        wanted = Wanted(session_attrs or "any", self.require_primary, len(hosts) > 1)
        if len(hosts) <= 1:
            async with asyncio.timeout(within):
                if hosts:
                    await _resolve(self.resolver, hosts[0], within * RESOLVE_SHARE)
                session = await self._connect_judged(
                    dsn, target, wanted, hosts[0] if hosts else None
                )
            reason = wanted.verdict(session.facts) if session.facts is not None else None
            if reason is not None:
                raise RoleMismatch(reason, (session,))
            return session
        return await self._walk(dsn, target, wanted, hosts, within)

    async def _walk(
        self,
        dsn: str | None,
        target: dict[str, Any],
        wanted: Wanted,
        hosts: list[Address],
        within: float,
    ) -> Session:
        # As libpq's connect_timeout: each host gets its own share, so one that accepts and
        # never answers cannot spend the whole budget before the next is tried.
        per_host = within / len(hosts)
        # Hosts that answered but are not the one (yet): the first that will do (prefer-standby
        # wants a standby), every one with the wrong role (to watch). Never left open.
        fallback: Session | None = None
        wrong: list[tuple[Session, Reason]] = []
        chosen: Session | None = None
        failure: Exception | None = None
        refused: list[Address] = []
        done = False
        try:
            for host, port in hosts:
                try:
                    async with asyncio.timeout(per_host):
                        await _resolve(self.resolver, (host, port), per_host * RESOLVE_SHARE)
                        found = await self._connect_judged(
                            dsn,
                            {**target, "host": host, "port": port or socket_port(host)},
                            wanted,
                            (host, port),
                        )
                except Exception as exc:  # noqa: BLE001 -- the next host; the last one decides
                    failure = exc
                    if isinstance(exc, ConnectionRefusedError):
                        refused.append((host, port))
                    continue
                facts = found.facts
                reason = wanted.verdict(facts) if facts is not None else None
                if reason is None and (facts is None or wanted.preferred(facts)):
                    chosen = found
                    break
                if reason is not None:
                    wrong.append((found, reason))
                elif fallback is None:
                    fallback = found
                else:
                    found.conn.terminate()
            chosen = chosen or fallback
            done = True
        finally:
            # What is neither returned nor raised as watches is closed, whatever happened.
            kept = [chosen] if chosen is not None else [held for held, _ in wrong]
            for held in (fallback, *(held for held, _ in wrong)):
                if held is not None and not (done and any(held is k for k in kept)):
                    held.conn.terminate()
        if chosen is not None:
            return chosen
        if wrong:
            # A host answered with the wrong role: more telling than another host's silence.
            watches = tuple(held for held, _ in wrong)
            raise RoleMismatch(wrong[0][1], watches, tuple(refused))
        assert failure is not None  # noqa: S101 -- two hosts or more were tried
        raise failure

    async def _connect_judged(
        self, dsn: str | None, target: dict[str, Any], wanted: Wanted, address: Address | None
    ) -> Session:
        """A connection to `address` (None: whatever asyncpg makes of the DSN) and, when the
        DSN asks for a role, what its server is."""
        try:
            conn = await self._connect_one(dsn, target)
        except OSError as exc:
            meant = unix_socket_failure(address, exc)
            if meant is exc:
                raise
            raise meant from exc
        facts: Facts | None = None
        if wanted.asks:
            try:
                facts = Facts.from_status(await conn.execute(FACTS_QUERY))
            except BaseException:
                conn.terminate()
                raise
        return Session(conn, wanted, facts, self.monotonic())

    async def _connect_one(self, dsn: str | None, target: dict[str, Any]) -> Conn:
        settings = {"application_name": APPLICATION_NAME}
        if self._keep_session_settings:
            try:
                return await connect(dsn, target, {**settings, **KEEP_SESSION_SETTINGS})
            except asyncpg.PostgresError as exc:
                # pgbouncer: "unsupported startup parameter"; before 14: "unrecognized
                # configuration parameter". Asked once per process, then never again.
                if not any(name in str(exc) for name in KEEP_SESSION_SETTINGS):
                    raise
                self._keep_session_settings = False
        return await connect(dsn, target, settings)


async def connect(dsn: str | None, target: dict[str, Any], settings: dict[str, str]) -> Conn:
    conn: Conn = await asyncpg.connect(
        dsn,
        # The check loop bounds connect + query together; asyncpg's own connect timeout is
        # only a backstop and must not fire first.
        timeout=3600,
        # No statement cache: transaction-mode poolers cannot keep prepared statements.
        statement_cache_size=0,
        server_settings=settings,
        **target,
    )
    return conn


def socket_port(path: str) -> int | None:
    """The port a Unix socket's path names (`/run/postgresql/.s.PGSQL.5433`: 5433), as one
    host's port to pass with it: with no port, asyncpg would take the DSN's port list, whose
    length is that of the host list, and refuse it for one host ("could not match 2 port
    numbers to 1 hosts"). It is also the port libpq matches in .pgpass for a socket."""
    _, marker, port = path.rpartition(SOCKET_MARKER)
    return int(port) if marker and port.isdigit() else None


def unix_socket_failure(address: Address | None, exc: OSError) -> OSError:
    """What a failed connect to `address` means when it is a Unix socket: NoServerSocket when
    the socket file is not there, SocketForbidden for EACCES on the socket or its directory;
    else `exc` itself.

    The error alone cannot tell: a TLS file asyncpg fails to load (sslrootcert, ...) raises the
    same bare FileNotFoundError or PermissionError, with no file name, before any connect. So
    the socket path itself is looked at: a file error while the socket is there and usable stays
    what it was. (A stale socket file, no server behind it, already gives ECONNREFUSED.)
    """
    if address is None or address[1] is not None or not address[0].startswith("/"):
        return exc
    path = address[0]
    directory = os.path.dirname(path)
    if isinstance(exc, FileNotFoundError) and not os.path.lexists(path):
        if os.path.isdir(directory):
            return NoServerSocket("no server socket in its directory")
        if not os.path.lexists(directory):
            return NoServerSocket("socket directory not found")
    if isinstance(exc, PermissionError):
        if not os.access(directory, os.X_OK):
            return SocketForbidden("permission denied: socket directory")
        if not os.access(path, os.W_OK):
            return SocketForbidden("permission denied: server socket")
    return exc


def hosts_and_attrs(
    dsn: str | None, target: dict[str, Any]
) -> tuple[list[tuple[str, int | None]], str | None]:
    """Every host to try, in order, and the DSN's target_session_attrs, as libpq reads them:
    a URL's host list (`h1:5432,h2`), `?host=h1,h2&port=...`, explicit arguments, PGHOST;
    `?target_session_attrs=`, PGTARGETSESSIONATTRS. Read by asyncpg's own parser, so the list
    is exactly the one asyncpg would walk; a Unix socket path has no port."""
    try:
        # Private, but the very function asyncpg.connect parses with: no second reading of
        # the DSN to drift from it. Any change of it lands in the except below.
        parse = asyncpg.connect_utils._parse_connect_dsn_and_args  # type: ignore[attr-defined]
        addrs, params = parse(
            dsn=dsn,
            # Only the hosts and attributes are read: no SSLContext to build (and drop).
            ssl=False,
            **{key: target.get(key) for key in LIBPQ_ARGUMENTS},
            **dict.fromkeys(_UNUSED_PARSE_ARGUMENTS),
        )
    except Exception:  # noqa: BLE001 -- asyncpg.connect will say what is wrong, classified
        return [], None
    hosts = [(addr, None) if isinstance(addr, str) else (addr[0], addr[1]) for addr in addrs]
    return hosts, str(params.target_session_attrs.value)


async def _resolve(pool: DaemonExecutor, address: tuple[str, int | None], within: float) -> None:
    """Look a host name up in the sidecar's resolver pool first, bounded: a resolver that
    fails or never answers is a dns_failure (`timed_out` says which), and its stuck thread
    cannot hold the exit. Addresses and socket paths need no lookup."""
    host, port = address
    if not host or host.startswith("/") or _is_address(host):
        return
    try:
        await resolver.resolve(pool, host, port or 5432, within=within)
    except resolver.LookupTimedOut:
        raise CheckFailed(Reason.DNS_FAILURE, {"timed_out": "true"}) from None
    except socket.gaierror:
        raise CheckFailed(Reason.DNS_FAILURE, {"timed_out": "false"}) from None


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    return True
