"""What to check: one immutable spec per configured check.

Built by `sidecar.checkfile` from SIDECAR_CONFIG_FILE, or by `Settings.from_environ` from the
environment alone (one `postgres` check named "postgres"). Pure data: no I/O here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import ClassVar, Final, Literal

from sidecar.inputs import dsn_passwords
from sidecar.options import default

KINDS: Final = ("postgres", "http", "tcp")
# An http check's passing status codes unless it says otherwise: kubelet's own httpGet rule.
DEFAULT_STATUS: Final = (200, 399)
CRITICALITIES: Final = ("critical", "warn")
# A check name is a URL path segment (/ready/<name>) and a metric label value: keep it to a
# DNS-label-like shape so neither needs escaping.
NAME_PATTERN: Final = re.compile(r"^[a-z0-9]([a-z0-9_-]{0,61}[a-z0-9])?$")


@dataclass(frozen=True, slots=True)
class DatabaseTarget:
    """Where and how to connect. `repr` never shows the DSN or the password."""

    dsn: str | None = field(default=None, repr=False)
    # libpq-style parameters, used when no DSN is given (PGHOST, PGPORT, ...).
    host: str | None = None
    port: int | None = None
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    database: str | None = None
    # Where the target came from, for logs: "SIDECAR_DATABASE_URL", "..._FILE" or "libpq".
    source: str = "libpq"
    file_path: str | None = None

    def secrets(self) -> tuple[str, ...]:
        """Every string that must never reach a log, a body or a metric."""
        found: list[str] = []
        if self.password:
            found.append(self.password)
        if self.dsn:
            found.append(self.dsn)
            found.extend(dsn_passwords(self.dsn))
        return tuple(s for s in found if s)


@dataclass(frozen=True, slots=True)
class CheckPolicy:
    """How one check is scheduled and judged."""

    # The defaults are the SIDECAR_* settings' (sidecar.options declares them).
    interval: float = default("interval")
    timeout: float = default("timeout")
    backoff_max: float = default("backoff_max")
    failure_threshold: int = default("failure_threshold")
    success_threshold: int = default("success_threshold")

    @property
    def freshness_seconds(self) -> float:
        """A result older than this no longer makes the check ready (README, /ready)."""
        return 2 * (self.interval + self.timeout)


@dataclass(frozen=True, slots=True, kw_only=True)
class CheckSpec:
    """Common to every kind."""

    name: str
    policy: CheckPolicy = field(default_factory=CheckPolicy)
    # critical: a failure makes /ready 503. warn: shown as `warn`, /ready stays 200.
    critical: bool = True
    kind: ClassVar[str]


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


@dataclass(frozen=True, slots=True, kw_only=True)
class HttpSpec(CheckSpec):
    kind: ClassVar[Literal["http"]] = "http"
    url: str
    # Inclusive range of passing status codes.
    status_min: int = DEFAULT_STATUS[0]
    status_max: int = DEFAULT_STATUS[1]


@dataclass(frozen=True, slots=True, kw_only=True)
class TcpSpec(CheckSpec):
    kind: ClassVar[Literal["tcp"]] = "tcp"
    host: str
    port: int


AnySpec = PostgresSpec | HttpSpec | TcpSpec
