"""Settings: parsed once from the environment (and flags), frozen, all problems reported at once."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Literal
from urllib.parse import urlsplit

from sidecar.checkspec import AnySpec, DatabaseTarget, PostgresSpec, ProbePolicy

DSN_SCHEMES: Final = ("postgresql", "postgres")
LOG_LEVELS: Final = ("debug", "info", "warning", "error", "critical")
LOG_FORMATS: Final = ("json", "console")
# A DSN file is a mounted Secret holding one line; anything bigger is a wrong mount.
MAX_DSN_FILE_BYTES: Final = 64 * 1024
LIBPQ_VARIABLES: Final = ("PGHOST", "PGPORT", "PGUSER", "PGPASSWORD", "PGDATABASE")


class ConfigError(Exception):
    """One or more settings are wrong; `problems` holds one line per setting."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


@dataclass(frozen=True, slots=True)
class Settings:
    database: DatabaseTarget = field(default_factory=DatabaseTarget)
    host: str = "0.0.0.0"  # noqa: S104 -- a sidecar must be reachable by kubelet on the pod IP
    port: int = 8081
    check_interval: float = 5.0
    check_timeout: float = 2.0
    backoff_max: float = 30.0
    failure_threshold: int = 1
    success_threshold: int = 1
    drain_seconds: float = 5.0
    log_level: str = "info"
    log_format: Literal["json", "console"] = "json"
    # The checks to run (issue 7), from SIDECAR_CONFIG_FILE. Empty means the one `postgres`
    # check of the environment; otherwise `database` only serves the postgres checks of the
    # file that name no DSN of their own.
    checks: tuple[AnySpec, ...] = ()
    config_file: str | None = None

    @property
    def policy(self) -> ProbePolicy:
        """The schedule from the SIDECAR_CHECK_* variables: the default of every check."""
        return ProbePolicy(
            interval=self.check_interval,
            timeout=self.check_timeout,
            backoff_max=self.backoff_max,
            failure_threshold=self.failure_threshold,
            success_threshold=self.success_threshold,
        )

    @property
    def freshness_seconds(self) -> float:
        """A result older than this no longer makes the pod ready (see README, /ready)."""
        return self.policy.freshness_seconds

    @property
    def check_specs(self) -> tuple[AnySpec, ...]:
        """The configured checks, or the environment's single `postgres` check."""
        if self.checks:
            return self.checks
        return (PostgresSpec(name="postgres", policy=self.policy, target=self.database),)

    def secrets(self) -> tuple[str, ...]:
        """Every secret any check holds at start (rotated DSNs add theirs when they arrive)."""
        found = list(self.database.secrets())
        for spec in self.checks:
            if isinstance(spec, PostgresSpec):
                found.extend(spec.target.secrets())
        return tuple(dict.fromkeys(found))

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> Settings:
        """Build settings from a mapping of variables; raise ConfigError listing every problem."""
        problems: list[str] = []

        def get(name: str) -> str | None:
            value = environ.get(name)
            if value is None:
                return None
            value = value.strip()
            return value or None

        def number(
            name: str,
            default: float,
            *,
            minimum: float,
            maximum: float,
            allow_equal_min: bool = True,
        ) -> float:
            raw = get(name)
            if raw is None:
                return default
            try:
                value = float(raw)
            except ValueError:
                problems.append(f"{name}: not a number: {raw!r}")
                return default
            too_low = value < minimum if allow_equal_min else value <= minimum
            if not math.isfinite(value) or too_low or value > maximum:
                low = "at least" if allow_equal_min else "greater than"
                problems.append(
                    f"{name}: must be {low} {minimum:g} and at most {maximum:g}, got {raw!r}"
                )
                return default
            return value

        def integer(name: str, default: int, *, minimum: int, maximum: int) -> int:
            raw = get(name)
            if raw is None:
                return default
            try:
                value = int(raw, 10)
            except ValueError:
                problems.append(f"{name}: not a whole number: {raw!r}")
                return default
            if not minimum <= value <= maximum:
                problems.append(f"{name}: must be between {minimum} and {maximum}, got {raw!r}")
                return default
            return value

        def choice(name: str, default: str, allowed: tuple[str, ...]) -> str:
            raw = get(name)
            if raw is None:
                return default
            if raw.lower() not in allowed:
                problems.append(f"{name}: must be one of {', '.join(allowed)}, got {raw!r}")
                return default
            return raw.lower()

        interval = number(
            "SIDECAR_CHECK_INTERVAL", 5.0, minimum=0, maximum=3600, allow_equal_min=False
        )
        timeout = number(
            "SIDECAR_CHECK_TIMEOUT", 2.0, minimum=0, maximum=600, allow_equal_min=False
        )
        backoff_max = number(
            "SIDECAR_BACKOFF_MAX", 30.0, minimum=0, maximum=3600, allow_equal_min=False
        )
        drain = number("SIDECAR_DRAIN_SECONDS", 5.0, minimum=0, maximum=3600)
        failure_threshold = integer("SIDECAR_FAILURE_THRESHOLD", 1, minimum=1, maximum=1000)
        success_threshold = integer("SIDECAR_SUCCESS_THRESHOLD", 1, minimum=1, maximum=1000)
        port = integer("SIDECAR_PORT", 8081, minimum=1, maximum=65535)
        host = get("SIDECAR_HOST") or "0.0.0.0"  # noqa: S104 -- see Settings.host
        if not valid_host(host):
            problems.append(f"SIDECAR_HOST: not a host name or address: {host!r}")
        log_level = choice("SIDECAR_LOG_LEVEL", "info", LOG_LEVELS)
        log_format = choice("SIDECAR_LOG_FORMAT", "json", LOG_FORMATS)
        database = _database_target(environ, get, problems)
        config_file = get("SIDECAR_CONFIG_FILE")
        policy = ProbePolicy(
            interval=interval,
            timeout=timeout,
            backoff_max=backoff_max,
            failure_threshold=failure_threshold,
            success_threshold=success_threshold,
        )
        checks = _checks(config_file, policy, database, problems)

        if problems:
            raise ConfigError(problems)
        return cls(
            database=database,
            host=host,
            port=port,
            check_interval=interval,
            check_timeout=timeout,
            backoff_max=backoff_max,
            failure_threshold=failure_threshold,
            success_threshold=success_threshold,
            drain_seconds=drain,
            log_level=log_level,
            log_format="console" if log_format == "console" else "json",
            checks=checks,
            config_file=config_file,
        )


def _checks(
    config_file: str | None, policy: ProbePolicy, database: DatabaseTarget, problems: list[str]
) -> tuple[AnySpec, ...]:
    """The checks of SIDECAR_CONFIG_FILE; none without it (the one `postgres` check)."""
    if config_file is None:
        return ()
    # Imported here: checkfile uses this module's DSN helpers (an import cycle otherwise),
    # and only a deployment with a check file pays for reading one.
    from sidecar.checkfile import load_check_file  # noqa: PLC0415

    return load_check_file(config_file, defaults=policy, database=database, problems=problems)


def _database_target(
    environ: Mapping[str, str], get: Callable[[str], str | None], problems: list[str]
) -> DatabaseTarget:
    url = get("SIDECAR_DATABASE_URL")
    url_file = get("SIDECAR_DATABASE_URL_FILE")
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

    port: int | None = None
    raw_port = get("PGPORT")
    if raw_port is not None:
        try:
            port = int(raw_port, 10)
        except ValueError:
            port = -1
        if not 1 <= port <= 65535:
            problems.append(f"PGPORT: must be a port between 1 and 65535, got {raw_port!r}")
            port = None
    return DatabaseTarget(
        host=get("PGHOST"),
        port=port,
        user=get("PGUSER"),
        # Not stripped: a password may legitimately begin or end with spaces.
        password=environ.get("PGPASSWORD") or None,
        database=get("PGDATABASE"),
        source="libpq",
    )


def valid_host(host: str) -> bool:
    """False for whitespace, a slash, or a name the resolver cannot even encode (an empty or
    64+ character label): binding or connecting to it would raise UnicodeError, a traceback
    instead of exit 2 (tests/test_config_properties.py)."""
    if any(ch.isspace() for ch in host) or "/" in host:
        return False
    try:
        host.encode("idna")
    except UnicodeError:
        return False
    return True


def dsn_problem(dsn: str) -> str | None:
    """Why this DSN is refused, without ever quoting it (it may hold a password)."""
    scheme, sep, _rest = dsn.partition("://")
    if not sep:
        return "not a URL: expected postgresql://user:password@host:port/database"
    if scheme.lower() not in DSN_SCHEMES:
        shown = scheme if scheme.isascii() and scheme.isalnum() and len(scheme) <= 20 else "?"
        return f"scheme {shown!r} is not supported; use postgresql:// or postgres://"
    if any(ch.isspace() or ord(ch) < 32 for ch in dsn):
        return "contains whitespace or control characters"
    try:
        parts = urlsplit(dsn)
        _ = parts.port  # raises ValueError on a port that is not a number
    except ValueError:
        return "malformed URL (bad port or brackets)"
    return None


def read_text_file(path: str, limit: int, *, encoding: str = "utf-8") -> str:
    """A small text file's content; ValueError says why there is none, as the rest of a
    sentence that begins with the file's name ("does not exist", "is a directory, ...")."""
    try:
        with Path(path).open("rb") as handle:
            data = handle.read(limit + 1)
    except FileNotFoundError:
        raise ValueError("does not exist") from None
    except IsADirectoryError:
        raise ValueError("is a directory, not a file") from None
    except PermissionError:
        raise ValueError("is not readable (permission denied)") from None
    except OSError as exc:
        raise ValueError(f"cannot be read ({exc.strerror or type(exc).__name__})") from None
    except ValueError:  # a NUL in the path: open() refuses it before asking the system
        raise ValueError("is not a valid path") from None
    if len(data) > limit:
        raise ValueError(f"is larger than {limit} bytes")
    try:
        return data.decode(encoding)
    except UnicodeDecodeError:
        raise ValueError("is not UTF-8 text") from None


def read_dsn_file(path: str) -> str:
    """Read a DSN from a mounted Secret file; ValueError says why it is unusable."""
    try:
        dsn = read_text_file(path, MAX_DSN_FILE_BYTES).strip()
    except ValueError as exc:
        raise ValueError(f"file {path!r} {exc}") from None
    if not dsn:
        raise ValueError(f"file {path!r} is empty")
    problem = dsn_problem(dsn)
    if problem:
        raise ValueError(f"file {path!r}: {problem}")
    return dsn
