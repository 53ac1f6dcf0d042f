"""The postgres kind: one dedicated, reused asyncpg connection, then the configured gates.

With no gate and no role asked, a check is `SELECT 1` and nothing else; a check that asks for a
role (`target_session_attrs`, `require_primary`) runs `pgrole.FACTS_QUERY` instead, judged on
every run. Gates run in this order, each its own statement: replica lag, schema (Alembic
revisions), custom query. The first that fails decides the reason.

What the connection goes through (README, "Database lifecycles"): a kept connection the server
closed is replaced within the same run, not reported; a server whose role changed is judged at
once, and with several hosts the run looks for the one that matches; a rotated DSN is tried with
the whole budget, and becomes the first choice as soon as the old one fails.
"""

from __future__ import annotations

import asyncio
import errno
import os
import re
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Final, Literal, Protocol, TypeAlias
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

import asyncpg

from sidecar.checks import reach
from sidecar.checks.failures import (
    Rules,
    cause_of,
    classify,
    close_within,
    failures_as_reasons,
)
from sidecar.checks.pgconnect import (
    LIBPQ_ARGUMENTS,
    Connector,
    NoServerSocket,
    RoleMismatch,
    Session,
    SocketForbidden,
    hosts_and_attrs,
)
from sidecar.checks.pgrole import FACTS_QUERY, Facts
from sidecar.checkspec import CheckSpec, DatabaseTarget
from sidecar.credentials import DsnFile
from sidecar.fields import ABSENT, Fields, is_text, kind_of, number_schema, shown
from sidecar.inputs import (
    TLS_ENVIRONMENT,
    dsn_passwords,
    dsn_problem,
    read_dsn_file,
    split_driver,
    without_ignored_parameters,
)
from sidecar.kinds import Built, Key, Kind, Needs
from sidecar.options import Value
from sidecar.reasons import CheckFailed, Reason
from sidecar.resolver import DaemonExecutor

if TYPE_CHECKING:
    # Generic only in asyncpg-stubs; at run time the class is not subscriptable.
    Conn: TypeAlias = asyncpg.Connection[asyncpg.Record]

# Of the check's timeout, what a connection attempt leaves unused so that it times out (and is
# reported) before the check loop's own bound cancels the whole run.
ATTEMPT_MARGIN_SHARE: Final = 0.05
# Bound of a reachability probe (a TCP connect), and never more than the check's timeout.
REACH_TIMEOUT_SECONDS: Final = 1.0
ASYNCPG_ERRORS: Final = (asyncpg.PostgresError, asyncpg.InterfaceError)
# What a kept session raises when its server ended it: the next run on a new connection tells
# whether the server is really gone (a query's own failure, a gate's verdict, is not here).
SESSION_LOST: Final = (
    OSError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.CannotConnectNowError,
)
# `found` of unexpected_result shows what the query returned; keep ?verbose bodies small.
FOUND_MAX_CHARS: Final = 64

# One statement for the lag gate. An idle replica that has replayed everything it received
# has lag 0: pg_last_xact_replay_timestamp() only moves when the primary commits, so without
# the LSN comparison a quiet but caught-up replica would look further behind every second.
ROLE_QUERY: Final = """
SELECT pg_is_in_recovery() AS in_recovery,
       CASE WHEN NOT pg_is_in_recovery() THEN NULL
            WHEN pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() THEN 0
            ELSE EXTRACT(EPOCH FROM now() - pg_last_xact_replay_timestamp())
       END AS lag_seconds
"""
ALEMBIC_QUERY: Final = "SELECT version_num FROM alembic_version"


@dataclass(frozen=True, slots=True, kw_only=True)
class PostgresSpec(CheckSpec):
    kind: ClassVar[Literal["postgres"]] = "postgres"
    target: DatabaseTarget = field(default_factory=DatabaseTarget)
    # A custom query run after connecting; with `expect`, its first column of the first row,
    # as text (NULL as "null"), must equal `expect`.
    query: str | None = None
    expect: str | None = None
    # Fail with not_primary when pg_is_in_recovery().
    require_primary: bool = False
    # Accept a server in recovery; with max_replica_lag_seconds, only while it is that close.
    allow_replica: bool = False
    max_replica_lag_seconds: float | None = None
    # Expected Alembic revision(s): the set of `version_num` rows must equal this set.
    alembic_revisions: tuple[str, ...] = ()
    # TLS files; sslmode itself comes from the DSN (or PGSSLMODE), as libpq does.
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None

    def secrets(self) -> tuple[str, ...]:
        return self.target.secrets()

    def uses(self, database: DatabaseTarget) -> bool:
        return self.target is database


class Credentials(Protocol):
    """A DSN that may change while the sidecar runs (sidecar.credentials.DsnFile).

    `current` is the last DSN known to work; `pending` the file's newer content, not in use yet.
    `poll()` returns `pending` when it is due for a try (a rejected one waits out a growing
    delay), else None; the check answers every try with exactly one `accept` or `reject`.
    """

    @property
    def current(self) -> str: ...

    @property
    def pending(self) -> str | None: ...

    def poll(self) -> str | None: ...

    def accept(self, dsn: str) -> None: ...

    def reject(self, dsn: str, reason: Reason) -> None: ...


@dataclass(eq=False, slots=True)
class PostgresCheck:
    """Owns at most one connection; it is opened lazily and dropped after any failure."""

    spec: PostgresSpec
    # Name lookups run in the sidecar's resolver pool (sidecar.resolver).
    resolver: DaemonExecutor
    # A kept connection sees a server that stops taking new sessions (smart shutdown,
    # NOLOGIN, ALLOW_CONNECTIONS false, pg_hba) only when it is replaced: at this age.
    max_connection_age: float
    credentials: Credentials | None = None
    monotonic: Callable[[], float] = time.monotonic
    _session: Session | None = field(default=None, init=False)
    # The last run failed on the current DSN (not only on a candidate): a pending candidate
    # goes first, with the whole budget, as a fresh start would use it.
    _current_failed: bool = field(default=False, init=False)
    # This run: whether it tried the pending candidate, and whether that was its last attempt.
    _tried_candidate: bool = field(default=False, init=False)
    _tried_candidate_last: bool = field(default=False, init=False)
    _connector: Connector = field(init=False)
    # After a role mismatch: a session on each host that answered with the wrong role, asked
    # again while the check waits (`role_matches`); the first is used by the next run (the one
    # found with the role now, if any).
    _watches: tuple[Session, ...] = field(default=(), init=False)
    # ... and the hosts of that run where nothing listened: one that listens again may be the
    # member with the role (a primary restarted, a standby rejoined).
    _watch_refused: tuple[reach.Address, ...] = field(default=(), init=False)

    def __post_init__(self) -> None:
        self._connector = Connector(self.resolver, self.spec.require_primary, self.monotonic)

    @property
    def name(self) -> str:
        return self.spec.name

    async def run(self) -> None:
        # The check loop bounds this call by the same timeout, started a moment before.
        deadline = self.monotonic() + self.spec.policy.timeout * (1 - ATTEMPT_MARGIN_SHARE)
        self._tried_candidate = self._tried_candidate_last = False
        try:
            with failures_as_reasons(POSTGRES, _postgres_cause):
                await self._run(deadline)
        except BaseException:
            # Cancellation included: the check loop's timeout is a failure too. A candidate's own
            # failure is not the current DSN's (it is rejected, and retried later).
            if not self._tried_candidate_last:
                self._current_failed = True
            raise
        self._current_failed = False

    async def _run(self, deadline: float) -> None:
        candidate = self.credentials.poll() if self.credentials is not None else None
        if self._session is None and self._watches:
            # Judged like a kept connection: no login when its server has the role by now. The
            # others are let go: if it has not, the run asks every host again.
            self._session = self._watches[0]
            self._forget_watch(keep=self._watch_refused)
        session = self._session
        if session is not None and (session.conn.is_closed() or self._too_old(session)):
            await self._retire()
            session = None
        passed = False
        if session is not None:
            try:
                passed = await self._check_kept(session)
            except CheckFailed:
                raise
            except Exception as exc:
                if not (session.conn.is_closed() or isinstance(exc, SESSION_LOST)):
                    raise
                # Closed by the server (idle_session_timeout, pg_terminate_backend, a pooler
                # restart, a restart of the server) between runs or during this one: replaced
                # below, not reported. The error can arrive before asyncpg has seen the socket
                # close (an immediate shutdown sends its FATAL first), so its kind counts too.
            if not passed:
                await self._retire()
        if not passed:
            session = await self._open_first_working(deadline)
            self._session = session
            if not session.wanted.asks and not self._has_gates():
                # execute() without arguments uses the simple query protocol: one round trip,
                # no prepared statement, so it works behind pgbouncer in transaction mode too.
                await session.conn.execute("SELECT 1")
            await self._run_gates(session.conn)
        if candidate is not None and not self._tried_candidate:
            await self._try_candidate(candidate, deadline)
        self._forget_watch()
        if self.max_connection_age == 0:
            await self._retire()

    def _forget_watch(
        self, replacement: tuple[Session, ...] = (), keep: tuple[reach.Address, ...] = ()
    ) -> None:
        """Watch `replacement` (and `keep`'s refused hosts) instead; every other watched
        session, but the one in use as the kept session, is closed."""
        self._watch_refused = keep
        watches, self._watches = self._watches, replacement
        for watch in watches:
            if not any(watch is held for held in (*replacement, self._session)):
                watch.conn.terminate()

    def _too_old(self, session: Session) -> bool:
        return self.monotonic() - session.opened_at >= self.max_connection_age

    async def _retire(self) -> None:
        session, self._session = self._session, None
        if session is not None and not session.conn.is_closed():
            conn = session.conn
            await close_within(conn.close(), conn.terminate, (OSError, *ASYNCPG_ERRORS))

    async def _check_kept(self, session: Session) -> bool:
        """The check on the kept connection. False: its server no longer has the role the DSN
        asks for, and another of its hosts may have it (as libpq, look for that host)."""
        conn, wanted = session.conn, session.wanted
        if wanted.asks:
            facts = Facts.from_status(await conn.execute(FACTS_QUERY))
            reason = wanted.verdict(facts)
            if reason is not None:
                if not wanted.several_hosts:
                    self._session = None
                    self._forget_watch((session,))
                    raise CheckFailed(reason)
                return False
            # prefer-standby: a standby that was promoted under us; any other host may be a
            # standby now. A primary chosen for want of one is kept (until its age).
            was_preferred = session.facts is None or wanted.preferred(session.facts)
            if wanted.several_hosts and was_preferred and not wanted.preferred(facts):
                return False
        elif not self._has_gates():
            await conn.execute("SELECT 1")
        await self._run_gates(conn)
        return True

    async def _try_candidate(self, candidate: str | None, deadline: float) -> None:
        """After a pass on the kept connection: try a due candidate with the rest of the budget
        (nearly all of it: the check itself takes a round trip). Only a working one replaces
        the current DSN and its connection; the check has passed either way."""
        credentials = self.credentials
        if credentials is None or candidate is None:
            return
        try:
            session = await self._open(candidate, deadline - self.monotonic())
        except Exception as exc:  # noqa: BLE001 -- whatever went wrong, the old DSN goes on
            credentials.reject(candidate, _reason(exc))
            return
        credentials.accept(candidate)
        old, self._session = self._session, session
        if old is not None and not old.conn.is_closed():
            # Ours, idle and about to be forgotten: no need to wait for a polite goodbye.
            old.conn.terminate()

    async def _open_first_working(self, deadline: float) -> Session:
        """A new connection: with the current DSN, else with the file's newer content, which
        goes first (with the whole budget, as on a fresh start) once the current DSN has
        failed. The candidate's failure is the one reported: a fresh start would see it."""
        current = self._dsn()
        pending = self.credentials.pending if self.credentials is not None else None
        order: list[tuple[str | None, bool]] = [(current, False)]
        if pending is not None:
            order.insert(0 if self._current_failed else 1, (pending, True))
        failure: Exception | None = None
        for dsn, is_candidate in order:
            remaining = deadline - self.monotonic()
            if failure is not None and remaining <= 0:
                break
            self._tried_candidate_last = is_candidate
            self._tried_candidate |= is_candidate
            try:
                session = await self._open(dsn, remaining)
            except Exception as exc:  # noqa: BLE001 -- the other DSN; raised if none works
                if isinstance(exc, RoleMismatch):
                    if is_candidate:
                        # Only the DSN in use is watched: a candidate's session is not ours.
                        for watch in exc.watches:
                            watch.conn.terminate()
                    else:
                        self._forget_watch(exc.watches, exc.refused)
                if is_candidate and dsn is not None and self.credentials is not None:
                    self.credentials.reject(dsn, _reason(exc))
                if failure is None or is_candidate:
                    failure = exc
                continue
            if is_candidate and dsn is not None and self.credentials is not None:
                self.credentials.accept(dsn)
            return session
        assert failure is not None  # noqa: S101 -- the loop tried one DSN at least
        raise failure

    def _dsn(self) -> str | None:
        if self.credentials is not None:
            return self.credentials.current
        return self.spec.target.dsn

    async def _open(self, dsn: str | None, within: float) -> Session:
        # Checked at start, but a mounted Secret can go away later; asyncpg would then report a
        # bare FileNotFoundError, which says neither which file nor that it is about TLS.
        unreadable = _unreadable_tls_file(self.spec, dsn)
        if unreadable is not None:
            setting, missing = unreadable
            cause = f"file {'not found' if missing else 'not readable'}: {setting}"
            raise CheckFailed(Reason.TLS_ERROR, {"unreadable": setting, "cause": cause})
        target = self._target_kwargs(dsn)
        # postgresql+asyncpg:// and the like: the same DSN to asyncpg once the driver is dropped
        # (and libpq's timing parameters, which asyncpg would send to the server as settings).
        dsn = _with_tls_files(dsn and without_ignored_parameters(split_driver(dsn)[0]), self.spec)
        return await self._connector.open(dsn, target, within)

    def _target_kwargs(self, dsn: str | None) -> dict[str, Any]:
        """The libpq-style parameters, when there is no DSN (explicit arguments win over it)."""
        if dsn is not None:
            return {}
        return {key: getattr(self.spec.target, key) for key in LIBPQ_ARGUMENTS}

    def _has_gates(self) -> bool:
        spec = self.spec
        lag_gate = spec.allow_replica and spec.max_replica_lag_seconds is not None
        return bool(lag_gate or spec.alembic_revisions or spec.query)

    async def _run_gates(self, conn: Conn) -> None:
        if not self._has_gates():
            return
        spec = self.spec
        # The gates read rows, which asyncpg does with the extended protocol over several round
        # trips (parse, then bind/execute). A transaction pins one server connection behind a
        # transaction-mode pooler for all of them, and gives the gates one snapshot. Read-only:
        # a health check must never change data, whatever query an operator configures.
        async with conn.transaction(readonly=True):
            if spec.allow_replica and spec.max_replica_lag_seconds is not None:
                await self._lag_gate(conn, spec.max_replica_lag_seconds)
            if spec.alembic_revisions:
                await self._schema_gate(conn)
            if spec.query is not None:
                await self._query_gate(conn, spec.query)

    async def _lag_gate(self, conn: Conn, limit: float) -> None:
        row = await conn.fetchrow(ROLE_QUERY)
        if row is None or not row["in_recovery"]:  # None: cannot happen, no FROM clause
            return
        lag = row["lag_seconds"]
        # NULL: behind, and no transaction replayed since the replica started (the timestamp
        # is not kept across restarts): the lag is unknown, which is not within any bound.
        if lag is None or float(lag) > limit:
            raise CheckFailed(
                Reason.REPLICATION_LAG,
                {
                    "lag_seconds": "unknown" if lag is None else f"{float(lag):.1f}",
                    "max_seconds": f"{limit:g}",
                },
            )

    async def _schema_gate(self, conn: Conn) -> None:
        expected = set(self.spec.alembic_revisions)
        try:
            rows = await conn.fetch(ALEMBIC_QUERY)
        except asyncpg.UndefinedTableError:
            # No alembic_version table: no migration has ever run, the schema is behind.
            found: set[str] = set()
        else:
            found = {str(row[0]) for row in rows}
        if found != expected:
            raise CheckFailed(
                Reason.SCHEMA_MISMATCH,
                {
                    "expected": ",".join(sorted(expected)),
                    "found": ",".join(sorted(found)) or "none",
                },
            )

    async def _query_gate(self, conn: Conn, query: str) -> None:
        try:
            row = await conn.fetchrow(query)
        except asyncpg.InterfaceError as exc:
            # A client-side refusal of the query itself (say, `$1` with no argument) is the
            # query's fault; a lost connection is not, and is classified as usual.
            if isinstance(exc, asyncpg.ConnectionDoesNotExistError) or conn.is_closed():
                raise
            raise CheckFailed(Reason.QUERY_FAILED) from None
        expect = self.spec.expect
        if expect is None:
            return
        found = "no rows" if row is None or len(row) == 0 else as_text(row[0])
        if found != expect:
            raise CheckFailed(
                Reason.UNEXPECTED_RESULT, {"expected": expect, "found": found[:FOUND_MAX_CHARS]}
            )

    async def reset(self) -> None:
        """Drop the connection without a round trip: after a failure its state is unknown."""
        session, self._session = self._session, None
        if session is not None and not session.conn.is_closed():
            session.conn.terminate()

    async def close(self) -> None:
        self._forget_watch()
        await self._retire()

    async def role_matches(self) -> bool:
        """Whether a server the last run found with the wrong role has it now (one statement
        on each session kept from that run, no login), or a host where nothing listened then
        listens now (a connect) (sidecar.checks.pgconnect.RoleMismatch)."""
        watches = self._watches
        if not watches:
            return False
        within = min(REACH_TIMEOUT_SECONDS, self.spec.policy.timeout)
        if self._watch_refused and await reach.accepts_any(self._watch_refused, within):
            return True
        answers = await asyncio.gather(*(_has_role_now(watch, within) for watch in watches))
        alive = [
            watch for watch, answer in zip(watches, answers, strict=True) if answer is not None
        ]
        if not alive:  # all gone or stuck: nothing to watch any more
            self._forget_watch()
            return False
        matching = [watch for watch, answer in zip(watches, answers, strict=True) if answer]
        # The one with the role goes first: the next run uses it, without a login.
        first = matching[:1]
        rest = [watch for watch in alive if not any(watch is held for held in first)]
        self._forget_watch((*first, *rest), self._watch_refused)
        return bool(matching)

    async def reachable(self) -> bool:
        """Whether a host of the DSN (or of a pending one) accepts a TCP connection now: a
        connect closed at once, no login (sidecar.checks.reach)."""
        addresses: list[reach.Address] = []
        pending = self.credentials.pending if self.credentials is not None else None
        for dsn in (self._dsn(), pending) if pending is not None else (self._dsn(),):
            hosts, _ = hosts_and_attrs(dsn, self._target_kwargs(dsn))
            addresses.extend(host for host in hosts if host not in addresses)
        within = min(REACH_TIMEOUT_SECONDS, self.spec.policy.timeout)
        return await reach.accepts_any(addresses, within)


async def _has_role_now(watch: Session, within: float) -> bool | None:
    """Whether a watched session's server has the role its DSN asks for now; None when the
    session is gone or does not answer within `within` seconds."""
    try:
        async with asyncio.timeout(within):
            facts = Facts.from_status(await watch.conn.execute(FACTS_QUERY))
    except Exception:  # noqa: BLE001 -- gone or stuck: not to be watched any more
        return None
    return watch.wanted.verdict(facts) is None and watch.wanted.preferred(facts)


def _reason(exc: BaseException) -> Reason:
    """A failure as a reason, for a candidate's rejection (the check itself has passed)."""
    if isinstance(exc, CheckFailed):
        return exc.reason
    return classify(exc, POSTGRES) or Reason.INTERNAL_ERROR


def as_text(value: object) -> str:
    """A value as psql would print it, near enough for `expect`: NULL as null, t/f spelt out."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _unreadable_tls_file(spec: PostgresSpec, dsn: str | None) -> tuple[str, bool] | None:
    """The setting (ca_file, cert_file, key_file; sslrootcert, ... of the DSN or PGSSL*) of a
    TLS file we cannot read, and whether it is missing altogether; None if all can be read."""
    named = [(setting, getattr(spec, setting)) for setting in ("ca_file", "cert_file", "key_file")]
    query = urlsplit(dsn).query if dsn else ""
    given = {k: v[-1] for k, v in parse_qs(query).items()}
    for variable, key in TLS_ENVIRONMENT.items():
        named.append((key, given.get(key) or os.environ.get(variable)))
    for setting, path in named:
        if path and not os.access(path, os.R_OK):
            return setting, not os.path.exists(path)
    return None


def _with_tls_files(dsn: str | None, spec: PostgresSpec) -> str | None:
    """The DSN with the spec's TLS files as libpq query parameters (sslrootcert, sslcert,
    sslkey), which asyncpg reads exactly as libpq does.

    Why parameters rather than an SSLContext of our own: asyncpg then keeps applying sslmode
    from the DSN or PGSSLMODE (prefer, require, verify-ca, verify-full, with libpq's rules for
    each), so there is nothing here to get subtly different. Appended last, they win over the
    same parameters written in the DSN. Without a DSN (libpq-parameter form) the DSN carries
    only these parameters; the host, user, ... passed as arguments take precedence over it.
    """
    files = {
        "sslrootcert": spec.ca_file,
        "sslcert": spec.cert_file,
        "sslkey": spec.key_file,
    }
    extra = urlencode({key: path for key, path in files.items() if path})
    if not extra:
        return dsn
    if dsn is None:
        return f"postgresql://?{extra}"
    parts = urlsplit(dsn)
    query = f"{parts.query}&{extra}" if parts.query else extra
    return urlunsplit(parts._replace(query=query))


# The failure table (sidecar.checks.failures): asyncpg's exceptions, then the socket's.
def _lost_connection(exc: BaseException) -> Reason:
    # A TLS alert from the server (it refused our client certificate, say) surfaces as a lost
    # connection whose cause is the SSLError: that is a TLS problem.
    return Reason.TLS_ERROR if isinstance(exc.__cause__, ssl.SSLError) else Reason.CONNECTION_RESET


def _postgres_os_error(exc: BaseException) -> Reason:
    # asyncpg raises a plain OSError listing every address it tried; refused is by far the
    # commonest cause, so look inside before giving up.
    if "rejected SSL upgrade" in str(exc):
        return Reason.TLS_ERROR  # sslmode=require (or stricter), and the server has no TLS
    refused = getattr(exc, "errno", None) == errno.ECONNREFUSED
    return (
        Reason.CONNECTION_REFUSED
        if refused or "Connect call failed" in str(exc)
        else (Reason.NETWORK_ERROR)
    )


def _cannot_connect_now(exc: BaseException) -> Reason:
    # 57P03 says "not now" for two opposite reasons: starting up (crash recovery, a standby
    # with hot_standby=off, "not yet accepting connections") or going away (a smart shutdown
    # waiting for sessions to end). Only the message tells them apart.
    return Reason.SERVER_SHUTDOWN if "shutting down" in str(exc) else Reason.SERVER_STARTING


# SQLSTATE classes of a refused connection or session: connection exception, invalid
# authorization, invalid catalog name, insufficient resources, operator intervention.
CONNECTION_SQLSTATE_CLASSES: Final = ("08", "28", "3D", "53", "57")


def _postgres_cause(exc: BaseException) -> str | None:
    """details.cause for asyncpg's own failures, in fixed words (its messages are looked at,
    never quoted: they may name hosts and users); the rest as every kind words them."""
    text = str(exc)
    if isinstance(exc, ConnectionError) and "rejected SSL upgrade" in text:
        return "server does not support TLS"
    if isinstance(exc, asyncpg.ClientConfigurationError) and "root certificate" in text:
        return "no CA file: sslmode verify-ca or verify-full needs sslrootcert"
    # A Unix socket's failures carry their own words (sidecar.checks.pgconnect).
    found = exc.cause if isinstance(exc, NoServerSocket | SocketForbidden) else cause_of(exc)
    sqlstate = getattr(exc, "sqlstate", None)
    if found is not None or not isinstance(exc, ASYNCPG_ERRORS):
        return found
    if isinstance(sqlstate, str) and not sqlstate.startswith(CONNECTION_SQLSTATE_CLASSES):
        return None  # a query's own error (query_failed): not a connection failure
    # InvalidPasswordError (28P01) -> "invalid password (28P01)"
    name = type(exc).__name__.removesuffix("Error")
    words = re.sub(r"(?<=[a-z])(?=[A-Z])", " ", name).lower()
    if isinstance(sqlstate, str) and re.fullmatch(r"[0-9A-Z]{5}", sqlstate):
        return f"{words} ({sqlstate})"
    return words


POSTGRES: Final[Rules] = (
    (TimeoutError, Reason.TIMEOUT),
    # Covers InvalidPasswordError and "no pg_hba.conf entry": both are credentials.
    (asyncpg.InvalidAuthorizationSpecificationError, Reason.AUTH_FAILED),
    (asyncpg.InvalidCatalogNameError, Reason.DATABASE_NOT_FOUND),
    (asyncpg.TooManyConnectionsError, Reason.TOO_MANY_CONNECTIONS),
    (asyncpg.CannotConnectNowError, _cannot_connect_now),
    ((asyncpg.AdminShutdownError, asyncpg.CrashShutdownError), Reason.SERVER_SHUTDOWN),
    (asyncpg.exceptions.TargetServerAttributeNotMatched, Reason.SESSION_ATTRS_MISMATCH),
    (
        (asyncpg.ConnectionDoesNotExistError, ConnectionResetError, BrokenPipeError),
        _lost_connection,
    ),
    (ConnectionRefusedError, Reason.CONNECTION_REFUSED),
    (socket.gaierror, Reason.DNS_FAILURE),
    ((ssl.SSLError, ssl.CertificateError), Reason.TLS_ERROR),
    # What the config check cannot see ahead: sslmode=verify-* with no CA bundle at all (nor
    # ~/.postgresql/root.crt), a bad PGSSLMODE. Everything else it refuses.
    (asyncpg.ClientConfigurationError, Reason.TLS_ERROR),
    ((asyncpg.PostgresConnectionError, asyncpg.InterfaceError), Reason.NETWORK_ERROR),
    (asyncpg.PostgresError, Reason.QUERY_FAILED),
    (OSError, _postgres_os_error),
    # Whatever else the client raises (a protocol error, a class added in a later release)
    # is about the conversation with the server, not a bug of ours.
    (asyncpg.exceptions.InternalClientError, Reason.NETWORK_ERROR),
)


# Up to a day: a replica further behind than that is broken, not lagging.
MAX_REPLICA_LAG: Final = Value(
    type="seconds",
    above_minimum=True,
    maximum=86400,
    help="largest replay lag accepted (with allow_replica)",
)
REVISION_RULE: Final = (
    "must be a revision id as text, or a list of them (quote one that looks like a number)"
)


def _parse(fields: Fields, common: dict[str, Any], database: DatabaseTarget) -> PostgresSpec | None:
    raw = fields.raw
    target = _postgres_target(fields, database)
    require_primary = fields.boolean("require_primary")
    allow_replica = fields.boolean("allow_replica")
    lag = fields.number("max_replica_lag_seconds", MAX_REPLICA_LAG)
    if require_primary and allow_replica:
        fields.problem("allow_replica", "contradicts require_primary: true; set only one of them")
    lag_alone = "max_replica_lag_seconds" in raw and not allow_replica
    if lag_alone and not {"allow_replica", "max_replica_lag_seconds"} & fields.refused:
        fields.problem("max_replica_lag_seconds", "only valid with allow_replica: true")
    query = fields.read(
        "query",
        lambda v: isinstance(v, str) and bool(v.strip()),
        "must be an SQL query as text",
        # Not quoted: a query is long, and the type is what went wrong.
        got=lambda v: "empty text" if isinstance(v, str) else kind_of(v),
    )
    # YAML reads `expect: true` as a boolean and `expect: 1` as a number; the check compares
    # text, so the quotes are required rather than guessed.
    expect = fields.read("expect", is_text, 'must be text (quote it: expect: "...")')
    if "expect" in raw and "query" not in raw:
        fields.problem("expect", "only valid with query")
    ca_file, cert_file, key_file = map(fields.readable_file, ("ca_file", "cert_file", "key_file"))
    for key, other, what in (
        ("cert_file", "key_file", "the client certificate's private key"),
        ("key_file", "cert_file", "the client certificate"),
    ):
        if key in raw and other not in raw:
            fields.problem(key, f"needs {other} too ({what})")
    revisions = _revisions(fields, "alembic_revision")
    if target is None:
        return None
    return PostgresSpec(
        **common,
        target=target,
        query=query,
        expect=expect,
        require_primary=require_primary,
        allow_replica=allow_replica,
        max_replica_lag_seconds=lag,
        alembic_revisions=revisions,
        ca_file=ca_file,
        cert_file=cert_file,
        key_file=key_file,
    )


def _postgres_target(fields: Fields, database: DatabaseTarget) -> DatabaseTarget | None:
    """The check's own DSN (a file, or inline without a password), else the environment's."""
    raw = fields.raw
    if "dsn" in raw and "dsn_file" in raw:
        fields.problem("dsn_file", "set together with dsn; set only one")
        return None
    if "dsn_file" in raw:
        return _dsn_file_target(fields)
    if "dsn" not in raw:
        return database
    dsn = raw["dsn"]
    # Never quoted, whatever it holds: a DSN may carry a password.
    if not isinstance(dsn, str) or not dsn.strip():
        fields.problem("dsn", f"must be a postgresql:// URL as text, got {kind_of(dsn)}")
        return None
    dsn = dsn.strip()
    problem = dsn_problem(dsn)
    if problem is None and dsn_passwords(dsn):
        problem = (
            "holds a password, and a ConfigMap is not a Secret: put the DSN in a "
            "mounted Secret and name that file with dsn_file"
        )
    if problem is not None:
        fields.problem("dsn", problem)
        return None
    return DatabaseTarget(dsn=dsn, source="dsn")


def _dsn_file_target(fields: Fields) -> DatabaseTarget | None:
    path = fields.path("dsn_file")
    if path is None:
        return None
    if "://" in path or "@" in path:
        # A DSN written where its file's path belongs: never quote it back.
        fields.problem("dsn_file", "must be the path of a file holding the DSN, not a DSN")
        return None
    try:
        return DatabaseTarget(dsn=read_dsn_file(path), source="dsn_file", file_path=path)
    except ValueError as exc:  # names the path and the problem, never the content
        fields.problem("dsn_file", str(exc))
        return None


def _revisions(fields: Fields, key: str) -> tuple[str, ...]:
    value = fields.raw.get(key, ABSENT)
    if value is ABSENT:
        return ()
    if not isinstance(value, str) and not (isinstance(value, list) and value):
        what = "an empty list" if isinstance(value, list) else shown(value)
        fields.problem(key, f"{REVISION_RULE}, got {what}")
        return ()
    items: list[object] = [value] if isinstance(value, str) else list(value)
    found: list[str] = []
    for index, item in enumerate(items):
        if not isinstance(item, str) or not item or any(ch.isspace() for ch in item):
            label = key if isinstance(value, str) else f"{key}[{index}]"
            fields.problem(label, f"{REVISION_RULE}, got {shown(item)}")
        else:
            found.append(item)
    return tuple(dict.fromkeys(found)) if len(found) == len(items) else ()


def _build(spec: PostgresSpec, needs: Needs) -> Built:
    """A DSN read from a file is watched for rotation."""
    target, credentials = spec.target, None
    if target.file_path is not None and target.dsn is not None:
        credentials = DsnFile(
            target.file_path, target.dsn, name=spec.name, on_secrets=needs.on_secrets
        )
    check = PostgresCheck(spec, needs.resolver, needs.max_connection_age, credentials)
    return Built(check, credentials)


def _path(description: str) -> dict[str, Any]:
    return {"type": "string", "pattern": "^/", "description": description}


def _boolean(description: str) -> dict[str, Any]:
    return {"type": "boolean", "description": description}


_REVISION: Final = {"type": "string", "pattern": r"^\S+$"}

KIND: Final[Kind[PostgresSpec]] = Kind(
    name="postgres",
    keys=(
        Key("dsn_file", _path("File holding the DSN (a mounted Secret; watched for rotation)")),
        Key(
            "dsn",
            {
                "type": "string",
                "description": "DSN without a password (a ConfigMap is not a Secret)",
                # JSON Schema's mark of a value that may be a secret: no copy of this schema
                # quotes it (sidecar.schema.chart_copy).
                "writeOnly": True,
                # A driver suffix (postgresql+asyncpg://) is dropped: the app's own URL works.
                "pattern": "^postgres(ql)?(\\+[A-Za-z0-9_]+)?://",
                "allOf": [
                    {"not": {"pattern": "^postgres(ql)?(\\+[A-Za-z0-9_]+)?://[^/?#@]*:[^/?#@]*@"}},
                    {"not": {"pattern": "[?&]password="}},
                    # A percent-encoded query key (`%70assword=`): no parameter needs one, and
                    # a pattern cannot decode it to see a password.
                    {"not": {"pattern": "[?&][^=&#]*%[^=&#]*="}},
                    # An '@' after the host list's end: a password with a raw '/', which
                    # the loader refuses too (it must be percent-encoded).
                    {"not": {"pattern": "^postgres(ql)?(\\+[A-Za-z0-9_]+)?://[^/?#]*/[^?#]*@"}},
                ],
            },
        ),
        Key("require_primary", _boolean("Fail with not_primary when the server is in recovery")),
        Key("allow_replica", _boolean("Accept a server in recovery")),
        Key("max_replica_lag_seconds", number_schema(MAX_REPLICA_LAG)),
        Key(
            "alembic_revision",
            {
                "description": "Expected Alembic revision, or a list of them (several heads)",
                "oneOf": [
                    _REVISION,
                    {"type": "array", "minItems": 1, "uniqueItems": True, "items": _REVISION},
                ],
            },
        ),
        Key(
            "query",
            {
                "type": "string",
                "description": "Custom query run after connecting",
                "pattern": r"\S",
            },
        ),
        Key(
            "expect",
            {
                "type": "string",
                "description": "First column of the first row, as text (with query)",
            },
        ),
        Key("ca_file", _path("CA bundle")),
        Key("cert_file", _path("Client certificate (with key_file)")),
        Key("key_file", _path("Client key (with cert_file)")),
    ),
    parse=_parse,
    build=_build,
    component_type="datastore",
    rules=(
        {"not": {"required": ["dsn", "dsn_file"]}},
        {
            "not": {
                "properties": {
                    "require_primary": {"const": True},
                    "allow_replica": {"const": True},
                },
                "required": ["require_primary", "allow_replica"],
            }
        },
        {"if": {"required": ["expect"]}, "then": {"required": ["query"]}},
        {"if": {"required": ["cert_file"]}, "then": {"required": ["key_file"]}},
        {"if": {"required": ["key_file"]}, "then": {"required": ["cert_file"]}},
        {
            "if": {"required": ["max_replica_lag_seconds"]},
            "then": {
                "properties": {"allow_replica": {"const": True}},
                "required": ["allow_replica"],
            },
        },
    ),
    loader_only=(
        "a dsn_file, ca_file, cert_file or key_file that cannot be read at start, or a DSN file "
        "whose content is not a postgresql:// URL",
    ),
)
