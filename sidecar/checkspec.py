"""What every check has: a name, a schedule, a criticality; and where a database is.

Each kind's spec extends `CheckSpec` in its own module (`sidecar.kinds` lists them). Built by
`sidecar.checkfile` from SIDECAR_CONFIG_FILE, or by `Settings` from the environment alone
(one `postgres` check named "postgres"). Pure data: no I/O here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import ClassVar, Final

from sidecar.inputs import dsn_passwords
from sidecar.options import default

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

    def secrets(self) -> tuple[str, ...]:
        """Every string of the spec that must never reach a log, a body or a metric."""
        return ()

    def uses(self, database: DatabaseTarget) -> bool:
        """True when the check connects to `database` (the environment's)."""
        return False
