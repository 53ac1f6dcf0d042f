"""Why a check failed: the fixed set of reasons, and the exception that carries one.

A leaf: every kind's check raises `CheckFailed`, the loop and the state read `Reason`, and
nothing here imports anything of ours.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import Final


class Reason(StrEnum):
    """Why a check failed: a small fixed set, safe as a metric label."""

    TIMEOUT = "timeout"
    CONNECTION_REFUSED = "connection_refused"
    CONNECTION_RESET = "connection_reset"
    AUTH_FAILED = "auth_failed"
    DATABASE_NOT_FOUND = "database_not_found"
    TOO_MANY_CONNECTIONS = "too_many_connections"
    DNS_FAILURE = "dns_failure"
    SERVER_SHUTDOWN = "server_shutdown"
    # 57P03: starting up, in crash recovery, or a standby with hot_standby=off.
    SERVER_STARTING = "server_starting"
    TLS_ERROR = "tls_error"
    QUERY_FAILED = "query_failed"
    NETWORK_ERROR = "network_error"
    INTERNAL_ERROR = "internal_error"
    # Gates: the dependency answered, but not what this pod needs.
    UNEXPECTED_RESULT = "unexpected_result"  # a custom query returned something else
    NOT_PRIMARY = "not_primary"  # require_primary, and the server is in recovery
    REPLICATION_LAG = "replication_lag"  # a replica further behind than allowed
    SCHEMA_MISMATCH = "schema_mismatch"  # Alembic revision differs from the expected one
    # target_session_attrs (primary, standby, read-write, ...) matched by no host of the DSN
    SESSION_ATTRS_MISMATCH = "session_attrs_mismatch"
    UNEXPECTED_STATUS = "unexpected_status"  # an http check got a status outside its range


ALL_REASONS: Final = tuple(r.value for r in Reason)


Details = tuple[tuple[str, str], ...]


class CheckFailed(Exception):
    """A check found its dependency unhealthy; `reason` is a fixed, label-safe word.

    `details` are short key/value facts for `?verbose` (for schema_mismatch: the expected and
    found revisions). They never go into a metric label, and must never hold a secret.
    """

    def __init__(self, reason: Reason, details: Mapping[str, str] | None = None) -> None:
        super().__init__(reason.value)
        self.reason = reason
        self.details: Details = tuple((details or {}).items())
