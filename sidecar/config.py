"""Settings: parsed once from the environment (and flags), frozen, all problems reported at once.

Which variables exist, their types, defaults and ranges are declared in `sidecar.options`.
"""

from __future__ import annotations

import getpass
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Final, Literal

from sidecar import options
from sidecar.checkspec import CheckPolicy, CheckSpec, DatabaseTarget
from sidecar.inputs import dsn_names_user, dsn_problem, libpq_tls_problems, read_dsn_file

NO_DATABASE: Final = (
    "SIDECAR_DATABASE_URL: no database given; set SIDECAR_DATABASE_URL, "
    "SIDECAR_DATABASE_URL_FILE or PGHOST (or a dsn or dsn_file on every postgres check "
    "of SIDECAR_CONFIG_FILE)"
)


class ConfigError(Exception):
    """One or more settings are wrong; `problems` holds one line per setting."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


@dataclass(frozen=True, slots=True)
class Settings:
    database: DatabaseTarget = field(default_factory=DatabaseTarget)
    host: str = options.default("host")
    port: int = options.default("port")
    # The schedule of every check that does not set its own (SIDECAR_CHECK_*, ...).
    policy: CheckPolicy = field(default_factory=CheckPolicy)
    drain_seconds: float = options.default("drain_seconds")
    max_connections: int = options.default("max_connections")
    max_connection_age: float = options.default("max_connection_age")
    log_level: str = options.default("log_level")
    log_format: Literal["json", "console"] = "json"
    # The checks to run, from SIDECAR_CONFIG_FILE. Empty means the one `postgres` check of the
    # environment; otherwise `database` only serves the postgres checks of the file that name
    # no DSN of their own.
    file_specs: tuple[CheckSpec, ...] = ()
    config_file: str | None = None

    @property
    def check_specs(self) -> tuple[CheckSpec, ...]:
        """The configured checks, or the environment's single `postgres` check."""
        if self.file_specs:
            return self.file_specs
        # Imported here: reading settings (and refusing them) does not load the database client.
        from sidecar.checks.postgres import PostgresSpec  # noqa: PLC0415

        return (PostgresSpec(name="postgres", policy=self.policy, target=self.database),)

    @property
    def uses_environment_database(self) -> bool:
        """True when a postgres check connects to `database` (it names no DSN of its own)."""
        return any(spec.uses(self.database) for spec in self.check_specs)

    def secrets(self) -> tuple[str, ...]:
        """Every secret any check holds at start (rotated DSNs add theirs when they arrive)."""
        found = list(self.database.secrets())
        for spec in self.file_specs:
            found.extend(spec.secrets())
        return tuple(dict.fromkeys(found))

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> Settings:
        """Build settings from a mapping of variables; raise ConfigError listing every problem."""
        found, problems = options.values(environ)
        database = _database_target(environ, found, problems)
        problems.extend(libpq_tls_problems(environ))
        policy = CheckPolicy(**{s.field: found[s.field] for s in options.PER_CHECK})
        config_file = found["config_file"]
        specs: tuple[CheckSpec, ...] = ()
        if config_file is not None:
            # Imported here: only a deployment with a check file pays for its reader.
            from sidecar.checkfile import load_check_file  # noqa: PLC0415

            specs = load_check_file(
                config_file, defaults=policy, database=database, problems=problems
            )
        # Without a database, libpq's own fallback (a local socket) never exists in a pod: the
        # sidecar would start and quietly never become ready.
        needed = config_file is None or any(spec.uses(database) for spec in specs)
        given = (found["database_url"], found["database_url_file"], database.host)
        if needed and given == (None, None, None):
            problems.append(NO_DATABASE)
        elif not environ.get("PGUSER"):
            problems.extend(_nameless_user_problems(database if needed else None, specs))
        if problems:
            raise ConfigError(problems)
        # Every declared setting with a field of its own name lands there, as parsed.
        own = {name: found[name] for name in found if name in _FIELD_NAMES}
        return cls(database=database, policy=policy, file_specs=specs, **own)


_FIELD_NAMES: Final = frozenset(field.name for field in fields(Settings))


def _os_user_name() -> str | None:
    """The name libpq and asyncpg default the user to, or None when this UID has none."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no LOGNAME/USER and no passwd entry: a random UID
        return None


def _nameless_user_problems(
    database: DatabaseTarget | None, specs: tuple[CheckSpec, ...]
) -> list[str]:
    """A target that names no user, in a process whose UID has no name to default to (a
    random UID, as OpenShift runs containers): every connection would fail, so say it now."""
    if _os_user_name() is not None:
        return []
    targets = [(database, database.source if database else "")] if database else []
    for spec in specs:
        target = getattr(spec, "target", None)
        if isinstance(target, DatabaseTarget) and target is not database:
            targets.append((target, f"SIDECAR_CONFIG_FILE: check {spec.name!r}"))
    lines = []
    for target, where in targets:
        if target is None or (target.dsn is None and target.user) or dsn_names_user(target.dsn):
            continue
        what = "PGUSER: not set" if target.dsn is None else f"{where}: the DSN names no user"
        lines.append(
            f"{what}, and this process's UID {os.getuid()} has no user name to default to; "
            "name the user in the DSN (user@host) or set PGUSER"
        )
    return lines


def _database_target(
    environ: Mapping[str, str], found: Mapping[str, Any], problems: list[str]
) -> DatabaseTarget:
    url, url_file = found["database_url"], found["database_url_file"]

    def get(name: str) -> str | None:
        return (environ.get(name) or "").strip() or None

    # Read before the DSN: asyncpg takes PGPORT as the default port even for a DSN that names
    # its own, and fails on every connect when it is no number.
    port: int | None = None
    raw_port = get("PGPORT")
    if raw_port is not None:
        try:
            port = int(raw_port, 10)
        except ValueError:
            port = -1
        if not options.PORT.in_range(port):
            problems.append(f"PGPORT: {options.PORT_RULE}, got {raw_port!r}")
            port = None
    if url and url_file:
        problems.append(
            "SIDECAR_DATABASE_URL_FILE: set together with SIDECAR_DATABASE_URL; set only one"
        )
        return DatabaseTarget()
    if url:
        problem = dsn_problem(url)
        if problem:
            problems.append(f"SIDECAR_DATABASE_URL: {problem}")
            return DatabaseTarget()
        return DatabaseTarget(dsn=url, source="SIDECAR_DATABASE_URL")
    if url_file:
        try:
            dsn = read_dsn_file(url_file)
        except ValueError as exc:
            problems.append(f"SIDECAR_DATABASE_URL_FILE: {exc}")
            return DatabaseTarget()
        return DatabaseTarget(dsn=dsn, source="SIDECAR_DATABASE_URL_FILE", file_path=url_file)

    return DatabaseTarget(
        host=get("PGHOST"),
        port=port,
        user=get("PGUSER"),
        # Not stripped: a password may legitimately begin or end with spaces.
        password=environ.get("PGPASSWORD") or None,
        database=get("PGDATABASE"),
        source="libpq",
    )
