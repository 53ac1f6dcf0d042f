"""The role a postgres check asks of its server, and the one statement that tells it.

libpq judges `target_session_attrs` once, when a connection opens; a kept connection outlives
role changes (a promotion, a switchover, `default_transaction_read_only` flipped by a reload).
So a check that asks for a role judges it again on every run, on the connection it uses, with
one statement that replaces `SELECT 1` (README, "Database lifecycles").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from sidecar.reasons import Reason

# libpq's values (PostgreSQL 14); `any` asks nothing.
SESSION_ATTRS: Final = ("any", "read-write", "read-only", "primary", "standby", "prefer-standby")

# The answer is the row count, which asyncpg returns in the command tag ("SELECT 3"): bit 0 in
# recovery, bit 1 read-only. asyncpg returns rows only through the extended protocol (parse,
# then bind: two round trips, which a transaction-mode pooler may send to two servers); the
# simple protocol is one round trip and no prepared statement, exactly as `SELECT 1`.
# transaction_read_only is what libpq reads for read-write/read-only: on in a hot standby, and
# on wherever default_transaction_read_only is.
FACTS_QUERY: Final = (
    "SELECT FROM generate_series(1, pg_is_in_recovery()::int"
    " + 2 * current_setting('transaction_read_only')::bool::int)"
)


@dataclass(frozen=True, slots=True)
class Facts:
    """What the server said about itself in answer to FACTS_QUERY."""

    in_recovery: bool
    read_only: bool

    @classmethod
    def from_status(cls, status: str) -> Facts:
        """From the command tag of FACTS_QUERY, `SELECT <rows>`."""
        rows = int(status.rsplit(" ", 1)[-1])
        return cls(in_recovery=bool(rows & 1), read_only=bool(rows & 2))


@dataclass(frozen=True, slots=True)
class Wanted:
    """The role one DSN asks for: its `target_session_attrs` and the check's `require_primary`.

    `require_primary` with several hosts and no `target_session_attrs` means
    `target_session_attrs=read-write`: the check looks for the host that takes writes, as libpq
    would, instead of failing on whichever host is first (a failover moves the primary).
    """

    session_attrs: str = "any"
    require_primary: bool = False
    several_hosts: bool = False

    @property
    def asks(self) -> bool:
        """Whether the check must read the facts at all."""
        return self.session_attrs != "any" or self.require_primary

    @property
    def _effective(self) -> str:
        if self.session_attrs == "any" and self.require_primary and self.several_hosts:
            return "read-write"
        return self.session_attrs

    def verdict(self, facts: Facts) -> Reason | None:
        """The reason this server fails the role, or None when it will do."""
        attrs = self._effective
        if not _satisfies(attrs, facts):
            if attrs != self.session_attrs:
                return Reason.NOT_PRIMARY  # implied by require_primary: in the key's own word
            return Reason.SESSION_ATTRS_MISMATCH
        if self.require_primary and facts.in_recovery:
            return Reason.NOT_PRIMARY
        return None

    def preferred(self, facts: Facts) -> bool:
        """For `prefer-standby`: a standby is preferred, any other server only will do."""
        return self.session_attrs != "prefer-standby" or facts.in_recovery


def _satisfies(attrs: str, facts: Facts) -> bool:
    if attrs == "read-write":
        return not facts.read_only
    if attrs == "read-only":
        return facts.read_only
    if attrs == "primary":
        return not facts.in_recovery
    if attrs == "standby":
        return facts.in_recovery
    # any, prefer-standby: every server will do (prefer-standby only prefers).
    return True
